//! keyturn webhook's Prometheus metrics: a registry of its own (the webhook runs no rotation,
//! so none of the daemon's series), served on `/metrics` of `--metrics-listen` in the classic
//! text format, as the daemon's are.
//!
//! Labels carry outcomes and operation names only: never a pod, a namespace or a message.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::review::Outcome;

/// `{outcome}` of an admission.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `injected`, `skipped`, `denied`, `malformed`.
    pub outcome: String,
}

/// `{op}` of a Kubernetes request the caBundle loop makes.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// `membership` (this replica's Lease), `writer` (the caBundle writer's Lease),
    /// `configuration` (reading or writing the MutatingWebhookConfiguration).
    pub op: String,
}

/// `{listener}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// `https` (admissions) or `metrics`.
    pub listener: String,
}

/// Every admission outcome; each series exists from the start at 0, so the first denial is
/// a rate change on an existing series.
const OUTCOMES: [Outcome; 4] = [
    Outcome::Injected,
    Outcome::Skipped,
    Outcome::Denied,
    Outcome::Malformed,
];

/// Every operation the caBundle loop counts failures of.
pub const OPS: [&str; 3] = ["membership", "writer", "configuration"];

/// The webhook's metrics. Cheap to clone; clones share the series.
#[derive(Debug, Clone)]
pub struct WebhookMetrics {
    /// `keyturn_webhook_admissions_total{outcome}`.
    pub admissions: Family<OutcomeLabel, Counter>,
    /// `keyturn_webhook_admission_duration_seconds`: from the request's headers to its answer,
    /// body read included.
    pub admission_duration: Histogram,
    /// `keyturn_webhook_certificate_expiry_timestamp_seconds`: the serving certificate's
    /// notAfter (Unix time).
    pub certificate_expiry: Gauge,
    /// `keyturn_webhook_certificate_reload_failures_total`: certificate files (`--tls-cert`,
    /// `--tls-key`) that changed but could not be loaded; the previous pair keeps serving.
    pub certificate_reload_failures: Counter,
    /// `keyturn_webhook_ca_bundle_current`: 1 when every webhook of the configuration
    /// carries this replica's CA.
    pub ca_bundle_current: Gauge,
    /// `keyturn_webhook_kubernetes_failures_total{op}`: failed Kubernetes requests of the
    /// caBundle loop.
    pub kubernetes_failures: Family<OpLabel, Counter>,
    /// `keyturn_webhook_events_dropped_total`: Events not recorded because the queue to the
    /// recorder was full (an admission never waits for one).
    pub events_dropped: Counter,
    /// `keyturn_webhook_events_failed_total`: Events the API server did not accept.
    pub events_failed: Counter,
    /// `keyturn_webhook_connections_shed_total{listener}`: connections closed at a listener's
    /// connection cap.
    pub connections_shed: Family<ListenerLabel, Counter>,
    registry: Arc<Registry>,
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WebhookMetrics {
    /// Registers every series, counters at 0.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let admissions = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "keyturn_webhook_admissions",
            "Admission requests to /mutate by outcome",
            admissions.clone(),
        );
        for outcome in OUTCOMES {
            let _ = admissions.get_or_create(&OutcomeLabel {
                outcome: outcome.as_str().to_owned(),
            });
        }
        // From 0.1 ms to about 3 s: an answer (a JSON parse and a patch) takes ~0.15 ms, and
        // the API server's default webhook timeout is 10 s.
        let admission_duration = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        registry.register(
            "keyturn_webhook_admission_duration_seconds",
            "Time to answer one admission request, its body read included",
            admission_duration.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "keyturn_webhook_certificate_expiry_timestamp_seconds",
            "When the serving certificate expires (Unix time)",
            certificate_expiry.clone(),
        );
        let certificate_reload_failures = Counter::default();
        registry.register(
            "keyturn_webhook_certificate_reload_failures",
            "Changed certificate files that could not be loaded (the previous certificate keeps serving)",
            certificate_reload_failures.clone(),
        );
        let ca_bundle_current = Gauge::default();
        registry.register(
            "keyturn_webhook_ca_bundle_current",
            "1 when the MutatingWebhookConfiguration's caBundle carries this replica's CA",
            ca_bundle_current.clone(),
        );
        let kubernetes_failures = Family::<OpLabel, Counter>::default();
        registry.register(
            "keyturn_webhook_kubernetes_failures",
            "Failed Kubernetes requests keeping the caBundle, by operation",
            kubernetes_failures.clone(),
        );
        for op in OPS {
            let _ = kubernetes_failures.get_or_create(&OpLabel { op: op.to_owned() });
        }
        let events_dropped = Counter::default();
        registry.register(
            "keyturn_webhook_events_dropped",
            "Events not recorded because the recorder's queue was full",
            events_dropped.clone(),
        );
        let events_failed = Counter::default();
        registry.register(
            "keyturn_webhook_events_failed",
            "Events the Kubernetes API did not accept",
            events_failed.clone(),
        );
        let connections_shed = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "keyturn_webhook_connections_shed",
            "Connections closed at a listener's connection cap",
            connections_shed.clone(),
        );
        for listener in ["https", "metrics"] {
            let _ = connections_shed.get_or_create(&ListenerLabel {
                listener: listener.to_owned(),
            });
        }
        crate::daemon::metrics::register_build_info(&mut registry);
        Self {
            admissions,
            admission_duration,
            certificate_expiry,
            certificate_reload_failures,
            ca_bundle_current,
            kubernetes_failures,
            events_dropped,
            events_failed,
            connections_shed,
            registry: Arc::new(registry),
        }
    }

    /// Counts one admission.
    pub fn admission(&self, outcome: Outcome, seconds: f64) {
        self.admissions
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str().to_owned(),
            })
            .inc();
        self.admission_duration.observe(seconds);
    }

    /// Counts one failed Kubernetes request of `op` (one of [`OPS`]).
    pub fn kubernetes_failure(&self, op: &str) {
        self.kubernetes_failures
            .get_or_create(&OpLabel { op: op.to_owned() })
            .inc();
    }

    /// The shed counter of `listener` (`https` or `metrics`).
    #[must_use]
    pub fn shed(&self, listener: &str) -> Counter {
        self.connections_shed
            .get_or_create(&ListenerLabel {
                listener: listener.to_owned(),
            })
            .clone()
    }

    /// The Prometheus text exposition format 0.0.4 (what `/metrics` declares).
    #[must_use]
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        crate::daemon::metrics::openmetrics_to_text(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_admission_outcome_and_counter_starts_at_zero_in_the_classic_text_format() {
        let m = WebhookMetrics::new();
        let text = m.encode();
        for outcome in ["injected", "skipped", "denied", "malformed"] {
            assert!(
                text.contains(&format!(
                    "keyturn_webhook_admissions_total{{outcome=\"{outcome}\"}} 0\n"
                )),
                "{text}"
            );
        }
        for line in [
            "# TYPE keyturn_webhook_admissions_total counter",
            "# TYPE keyturn_webhook_admission_duration_seconds histogram",
            "keyturn_webhook_events_dropped_total 0\n",
            "keyturn_webhook_events_failed_total 0\n",
            "keyturn_webhook_ca_bundle_current 0\n",
            "keyturn_webhook_certificate_expiry_timestamp_seconds 0\n",
            "keyturn_webhook_certificate_reload_failures_total 0\n",
            "keyturn_webhook_kubernetes_failures_total{op=\"writer\"} 0\n",
            "keyturn_webhook_connections_shed_total{listener=\"https\"} 0\n",
            "keyturn_build_info{version=",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
        assert!(!text.contains("# EOF"), "{text}");
        // None of the daemon's series.
        assert!(!text.contains("keyturn_rotations_total"), "{text}");
    }

    #[test]
    fn an_admission_counts_its_outcome_and_its_duration() {
        let m = WebhookMetrics::new();
        m.admission(Outcome::Malformed, 0.001);
        m.admission(Outcome::Malformed, 0.002);
        m.admission(Outcome::Injected, 0.01);
        let text = m.encode();
        assert!(
            text.contains("keyturn_webhook_admissions_total{outcome=\"malformed\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("keyturn_webhook_admissions_total{outcome=\"injected\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("keyturn_webhook_admission_duration_seconds_count 3\n"),
            "{text}"
        );
    }

    /// `promtool check metrics` (when installed: `dev/setup.sh` puts it in `.keyturn/bin`)
    /// reads the exposition as Prometheus does.
    #[test]
    fn promtool_accepts_the_exposition() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let promtool = std::env::var_os("KEYTURN_PROMTOOL")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                [".keyturn/bin/promtool", ".venv/bin/promtool"]
                    .iter()
                    .map(|p| root.join(p))
                    .find(|p| p.is_file())
            })
            .or_else(|| {
                std::env::split_paths(&std::env::var_os("PATH")?)
                    .map(|d| d.join("promtool"))
                    .find(|p| p.is_file())
            })
            .expect("promtool not found (set KEYTURN_PROMTOOL, or run dev/setup.sh)");
        let m = WebhookMetrics::new();
        m.admission(Outcome::Denied, 0.003);
        m.events_dropped.inc();
        let mut child = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(m.encode().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            m.encode()
        );
    }
}

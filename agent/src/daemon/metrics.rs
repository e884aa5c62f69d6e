//! The daemon's Prometheus metrics (`prometheus-client`), served on `/metrics`.
//!
//! Labels carry policy names, store kinds, operations and outcomes: never a value, a path's
//! content or an error message (those go to logs and the audit log).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use keyturn_core::audit::AuditLog;

/// `{policy, outcome}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyOutcome {
    /// The policy.
    pub policy: String,
    /// `rotated`, `failed`, `busy`, `already-done`, `error`.
    pub outcome: String,
}

/// `{policy}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    /// The policy.
    pub policy: String,
}

/// `{store, op, outcome}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreOp {
    /// `vault-kv`, `aws-secretsmanager`.
    pub store: String,
    /// `view`, `write-state`, `promote`.
    pub op: String,
    /// `ok`, `conflict`, `error`.
    pub outcome: String,
}

/// `{action}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    /// `rotate`, `revoke`, `reveal`.
    pub action: String,
}

/// Every metric the daemon exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// `keyturn_rotations_total{policy,outcome}`.
    pub rotations: Family<PolicyOutcome, Counter>,
    /// `keyturn_rotation_duration_seconds`.
    pub rotation_duration: Histogram,
    /// `keyturn_fire_delay_seconds`: how late after its (jittered) start time a slot fired.
    pub fire_delay: Histogram,
    /// `keyturn_next_rotation_timestamp_seconds{policy}`.
    pub next_rotation: Family<PolicyLabel, Gauge>,
    /// `keyturn_store_requests_total{store,op,outcome}`.
    pub store_requests: Family<StoreOp, Counter>,
    /// `keyturn_breakglass_total{action}`.
    pub breakglass: Family<ActionLabel, Counter>,
    /// `keyturn_http_connections_shed_total`: connections to this listener closed at its
    /// connection cap (see `server`).
    pub http_shed: Counter,
    /// Last successful rotation per policy, for `keyturn_secret_age_seconds`.
    last_rotated: Arc<Mutex<HashMap<String, DateTime<Utc>>>>,
    registry: Arc<Registry>,
}

impl Metrics {
    /// Registers everything; `audit` feeds the audit counters at scrape time.
    #[must_use]
    pub fn new(audit: Option<Arc<AuditLog>>) -> Self {
        let mut registry = Registry::default();
        let rotations = Family::<PolicyOutcome, Counter>::default();
        registry.register(
            "keyturn_rotations",
            "Rotations by policy and outcome",
            rotations.clone(),
        );
        let rotation_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "keyturn_rotation_duration_seconds",
            "Time from a rotation's start to its end",
            rotation_duration.clone(),
        );
        let fire_delay = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "keyturn_fire_delay_seconds",
            "How late after its start time a due slot fired",
            fire_delay.clone(),
        );
        let next_rotation = Family::<PolicyLabel, Gauge>::default();
        registry.register(
            "keyturn_next_rotation_timestamp_seconds",
            "When each policy's next rotation starts (Unix time)",
            next_rotation.clone(),
        );
        let store_requests = Family::<StoreOp, Counter>::default();
        registry.register(
            "keyturn_store_requests",
            "Store requests by store, operation and outcome",
            store_requests.clone(),
        );
        let breakglass = Family::<ActionLabel, Counter>::default();
        registry.register(
            "keyturn_breakglass",
            "Break-glass actions seen in the audit log",
            breakglass.clone(),
        );
        let http_shed = Counter::default();
        registry.register(
            "keyturn_http_connections_shed",
            "Connections to /metrics, /healthz and /readyz closed at the connection cap",
            http_shed.clone(),
        );
        let last_rotated = Arc::new(Mutex::new(HashMap::new()));
        registry.register_collector(Box::new(Scraped {
            last_rotated: last_rotated.clone(),
            audit,
        }));
        Self {
            rotations,
            rotation_duration,
            fire_delay,
            next_rotation,
            store_requests,
            breakglass,
            http_shed,
            last_rotated,
            registry: Arc::new(registry),
        }
    }

    /// Notes that `policy`'s CURRENT value dates from `at`.
    pub fn rotated_at(&self, policy: &str, at: DateTime<Utc>) {
        self.last_rotated
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(policy.to_owned(), at);
    }

    /// Forgets a policy that left the policy set.
    pub fn forget(&self, policy: &str) {
        self.last_rotated
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(policy);
        self.next_rotation.remove(&PolicyLabel {
            policy: policy.to_owned(),
        });
    }

    /// Counts one rotation outcome.
    pub fn outcome(&self, policy: &str, outcome: &str) {
        self.rotations
            .get_or_create(&PolicyOutcome {
                policy: policy.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The text exposition format.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

/// Metrics computed when scraped, so nothing ticks while the daemon is idle.
#[derive(Debug)]
struct Scraped {
    last_rotated: Arc<Mutex<HashMap<String, DateTime<Utc>>>>,
    audit: Option<Arc<AuditLog>>,
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = Utc::now();
        let ages: Vec<(String, f64)> = self
            .last_rotated
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(p, t)| (p.clone(), (now - *t).num_milliseconds() as f64 / 1000.0))
            .collect();
        let g = ConstGauge::new(0.0f64);
        let mut fam = encoder.encode_descriptor(
            "keyturn_secret_age_seconds",
            "Age of each policy's CURRENT value",
            None,
            g.metric_type(),
        )?;
        for (policy, age) in ages {
            ConstGauge::new(age).encode(fam.encode_family(&PolicyLabel { policy })?)?;
        }
        if let Some(a) = &self.audit {
            let stats = a.stats();
            let c = prometheus_client::metrics::counter::ConstCounter::new(stats.events);
            c.encode(encoder.encode_descriptor(
                "keyturn_audit_events",
                "Audit events durably written",
                None,
                c.metric_type(),
            )?)?;
            let f = prometheus_client::metrics::counter::ConstCounter::new(stats.write_failures);
            f.encode(encoder.encode_descriptor(
                "keyturn_audit_write_failures",
                "Audit writes that failed",
                None,
                f.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

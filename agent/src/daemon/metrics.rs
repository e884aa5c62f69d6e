//! The daemon's Prometheus metrics (`prometheus-client`), served on `/metrics`.
//!
//! Labels carry policy names, store kinds, operations and outcomes: never a value, a path's
//! content or an error message (those go to logs and the audit log).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use keyturn_core::audit::AuditLog;

use super::status::StatusMetrics;
use crate::policy::Policy;
use crate::policy::kube_source::{Failure, SourceStats};
use crate::schedule::Schedule;

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

/// `{version}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    /// The crate version.
    pub version: String,
}

/// Registers `keyturn_build_info{version} 1`, which the daemon and the webhook both export.
pub fn register_build_info(registry: &mut Registry) {
    let build_info = Family::<BuildLabel, Gauge>::default();
    registry.register(
        "keyturn_build_info",
        "The running keyturn's version (always 1)",
        build_info.clone(),
    );
    build_info
        .get_or_create(&BuildLabel {
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
        .set(1);
}

/// Every outcome `keyturn_rotations_total` counts; each starts at 0 for every loaded policy,
/// so the first failure is a rate change on an existing series, not a new series.
pub const OUTCOMES: [&str; 5] = ["rotated", "failed", "busy", "already-done", "error"];

/// Every outcome a policy's record counts: [`OUTCOMES`], then `fenced` (an attempt this
/// replica deferred or stopped because its fence was closed), whose series appears at its
/// first count.
const COUNTED: [&str; 6] = [
    "rotated",
    "failed",
    "busy",
    "already-done",
    "error",
    "fenced",
];

/// `{resource, verb, outcome}` of a Kubernetes API request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeOp {
    /// `secrets`, `deployments.apps`, `statefulsets.apps`, `daemonsets.apps`.
    pub resource: String,
    /// `get`, `create`, `patch`.
    pub verb: String,
    /// `ok`, `forbidden`, `not-found`, `invalid`, `conflict`, `throttled`, `server-error`,
    /// `error` (another HTTP answer), `unreachable`, `protocol`.
    pub outcome: String,
}

/// `keyturn_kubernetes_requests_total`: one family for the whole process. Distribution has no
/// handle on the daemon's [`Metrics`] (it also runs under `keyturn rotate` and break-glass),
/// and threading one through every delivery and restart call would be a far larger change than
/// a counter deserves; every [`Metrics`] registers this same family.
static KUBE_REQUESTS: LazyLock<Family<KubeOp, Counter>> = LazyLock::new(Family::default);

/// Counts one Kubernetes API request (`Ok`, or the failure it met) for
/// `keyturn_kubernetes_requests_total`. Only the resource, verb and an outcome class are
/// labels: never an object's name (cardinality) nor anything of a body.
pub fn kube_request(
    resource: &str,
    verb: &str,
    result: Result<(), &crate::distribute::DistributeError>,
) {
    use crate::distribute::DistributeError as E;
    let outcome = match result {
        Ok(()) => "ok",
        Err(E::Forbidden { .. }) => "forbidden",
        Err(E::NotFound { .. }) => "not-found",
        Err(E::Invalid { .. }) => "invalid",
        Err(E::Conflict { .. }) => "conflict",
        Err(E::Api { code: 429, .. }) => "throttled",
        Err(E::Api { code, .. }) if *code >= 500 => "server-error",
        Err(E::Unreachable { .. }) => "unreachable",
        Err(E::Protocol { .. }) => "protocol",
        Err(_) => "error",
    };
    KUBE_REQUESTS
        .get_or_create(&KubeOp {
            resource: resource.to_owned(),
            verb: verb.to_owned(),
            outcome: outcome.to_owned(),
        })
        .inc();
}

/// The break-glass actions `keyturn_breakglass_total` counts; each series starts at 0, so a
/// dashboard shows them and `increase()` sees the first one.
pub const BREAKGLASS_ACTIONS: [&str; 3] = ["rotate", "revoke", "reveal"];

/// `{outcome}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok`, `mismatch` (the file does not continue the anchor), `error`.
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
    /// `keyturn_rotation_duration_seconds`.
    pub rotation_duration: Histogram,
    /// `keyturn_fire_delay_seconds`: how late after its (jittered) start time a slot fired.
    pub fire_delay: Histogram,
    /// `keyturn_store_requests_total{store,op,outcome}`.
    pub store_requests: Family<StoreOp, Counter>,
    /// `keyturn_breakglass_total{action}`.
    pub breakglass: Family<ActionLabel, Counter>,
    /// `keyturn_http_connections_shed_total`: connections to this listener closed at its
    /// connection cap (see `server`).
    pub http_shed: Counter,
    /// `keyturn_audit_anchor_writes_total{outcome}`: attempts to record the audit head.
    pub audit_anchor: Family<OutcomeLabel, Counter>,
    /// `keyturn_daemon_members`: the live replicas this one sees (0 without membership).
    pub members: Gauge,
    /// `keyturn_daemon_policies_owned`: the policies this replica schedules.
    pub policies_owned: Gauge,
    /// `keyturn_daemon_fence_open`: 1 while this replica may act (its membership Lease is
    /// valid with the margin; always 1 without membership).
    pub fence_open: Gauge,
    /// `keyturn_daemon_fenced_total`: rotations deferred or stopped before a side effect
    /// because the fence was closed.
    pub fenced: Counter,
    /// `keyturn_daemon_membership_failures_total`: membership requests (Lease renewals and
    /// lists) that failed after their retries.
    pub membership_failures: Counter,
    /// `keyturn_policy_objects_rejected`: RotationPolicy objects that yield no policy (an
    /// invalid spec, a name or store another policy has), each named in the log and in its
    /// status.
    pub objects_rejected: Gauge,
    /// What the RotationPolicy watch counts: `keyturn_policy_watch_lists_total` and
    /// `keyturn_policy_watch_failures_total{kind}`, read when scraped.
    pub source: Arc<SourceStats>,
    /// The RotationPolicy status reporter's `keyturn_status_*`.
    pub status: StatusMetrics,
    /// Every policy's per-policy series (`keyturn_rotations_total{policy,outcome}` and the
    /// `{policy}` gauges), one small record each, encoded when scraped (see [`PolicySeries`]).
    series: Arc<Mutex<Series>>,
    /// The audit log, for its counters and for whether it has failed.
    audit: Option<Arc<AuditLog>>,
    registry: Arc<Registry>,
}

impl Metrics {
    /// Registers everything; `audit` feeds the audit counters at scrape time.
    #[must_use]
    pub fn new(audit: Option<Arc<AuditLog>>) -> Self {
        let mut registry = Registry::default();
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
        let store_requests = Family::<StoreOp, Counter>::default();
        registry.register(
            "keyturn_store_requests",
            "Store requests by store, operation and outcome",
            store_requests.clone(),
        );
        let breakglass = Family::<ActionLabel, Counter>::default();
        registry.register(
            "keyturn_breakglass",
            "Break-glass actions seen in the break-glass journal in Vault",
            breakglass.clone(),
        );
        let http_shed = Counter::default();
        registry.register(
            "keyturn_http_connections_shed",
            "Connections to /metrics, /healthz and /readyz closed at the connection cap",
            http_shed.clone(),
        );
        let audit_anchor = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "keyturn_audit_anchor_writes",
            "Attempts to record the audit log's head in its anchor, by outcome",
            audit_anchor.clone(),
        );
        for outcome in ["ok", "mismatch", "error"] {
            let _ = audit_anchor.get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            });
        }
        for action in BREAKGLASS_ACTIONS {
            let _ = breakglass.get_or_create(&ActionLabel {
                action: action.to_owned(),
            });
        }
        registry.register(
            "keyturn_kubernetes_requests",
            "Kubernetes API requests by resource, verb and outcome",
            KUBE_REQUESTS.clone(),
        );
        let members = Gauge::default();
        registry.register(
            "keyturn_daemon_members",
            "Live daemon replicas this replica sees through their membership Leases",
            members.clone(),
        );
        let policies_owned = Gauge::default();
        registry.register(
            "keyturn_daemon_policies_owned",
            "Policies this replica owns and schedules",
            policies_owned.clone(),
        );
        let fence_open = Gauge::default();
        fence_open.set(1);
        registry.register(
            "keyturn_daemon_fence_open",
            "1 while this replica may act on its policies (membership Lease valid with its margin)",
            fence_open.clone(),
        );
        let fenced = Counter::default();
        registry.register(
            "keyturn_daemon_fenced",
            "Rotations deferred or stopped before a side effect because this replica's fence was closed",
            fenced.clone(),
        );
        let membership_failures = Counter::default();
        registry.register(
            "keyturn_daemon_membership_failures",
            "Membership Lease renewals and lists that failed after their retries",
            membership_failures.clone(),
        );
        let objects_rejected = Gauge::default();
        registry.register(
            "keyturn_policy_objects_rejected",
            "RotationPolicy objects that yield no policy (invalid, or a name or store taken)",
            objects_rejected.clone(),
        );
        let status = StatusMetrics::default();
        status.register(&mut registry);
        register_build_info(&mut registry);
        let series = Arc::default();
        let source = Arc::new(SourceStats::default());
        registry.register_collector(Box::new(Scraped {
            series: Arc::clone(&series),
            audit: audit.clone(),
            source: source.clone(),
        }));
        Self {
            rotation_duration,
            fire_delay,
            store_requests,
            breakglass,
            http_shed,
            audit_anchor,
            members,
            policies_owned,
            fence_open,
            fenced,
            membership_failures,
            objects_rejected,
            source,
            status,
            series,
            audit,
            registry: Arc::new(registry),
        }
    }

    /// Whether the audit log has failed a write. It then refuses every event until the
    /// process restarts (see [`AuditLog`]: a failed write or sync leaves the file's end
    /// unknown, and only reopening it reads what is really there), so no rotation can run:
    /// `/healthz` and `/readyz` answer 503 and the kubelet restarts the container.
    #[must_use]
    pub fn audit_failed(&self) -> bool {
        self.audit.as_ref().is_some_and(|a| a.is_poisoned())
    }

    /// Creates every per-policy series at its resting value, so dashboards and alerts see
    /// a policy from the moment it is loaded, and notes the age its schedule allows.
    pub fn register_policy(&self, p: &Policy) {
        let allowed = max_age(&p.schedule, p.window, Utc::now())
            .map(|age| i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
        self.register(&p.name, allowed);
    }

    /// [`Metrics::register_policy`] for a policy whose schedule allows CURRENT `max_age`
    /// seconds (`None`: no bound, and no `keyturn_policy_max_age_seconds` series).
    fn register(&self, policy: &str, max_age: Option<i64>) {
        self.update(policy, |s| {
            match max_age {
                Some(secs) => {
                    s.max_age = secs;
                    s.has |= HAS_MAX_AGE;
                }
                None => {
                    s.max_age = 0;
                    s.has &= !HAS_MAX_AGE;
                }
            }
            // A reload keeps an attempt in flight (`spawn` owns it) and a failing policy's
            // count and queued retry (the daemon keeps both); only a new policy starts at 0.
            s.has |= HAS_IN_FLIGHT | HAS_OUTCOMES | HAS_FAILURES | HAS_UNSCHEDULABLE;
            s.unschedulable = false;
        });
    }

    /// Notes that an attempt at `policy` starts now; the returned guard sets the gauge back
    /// to 0 when the attempt ends, however it ends (a panic or an abort included).
    #[must_use]
    pub fn in_flight(&self, policy: &str) -> InFlightGuard {
        let now = Utc::now().timestamp();
        let name = self.update(policy, |s| {
            s.in_flight_since = now;
            s.has |= HAS_IN_FLIGHT;
        });
        InFlightGuard {
            series: Arc::clone(&self.series),
            policy: name,
        }
    }

    /// Notes when the store created `policy`'s CURRENT value (`None`: it does not say).
    pub fn current_since(&self, policy: &str, created: Option<DateTime<Utc>>) {
        if let Some(at) = created {
            self.update(policy, |s| s.current_since = Some(at));
        }
    }

    /// Notes a completed rotation of `policy`, whose CURRENT value dates from `at`: the
    /// failure series go back to rest. The last failure goes to 0 rather than staying to be
    /// compared with `at`: a resumed rotation's `at` is its first attempt's start, earlier
    /// than the failed attempts it recovers from.
    pub fn succeeded(&self, policy: &str, at: DateTime<Utc>) {
        self.update(policy, |s| {
            s.current_since = Some(at);
            s.last_success = at.timestamp();
            s.last_failure = 0;
            s.consecutive_failures = 0;
            s.backoff_seconds = 0;
            s.has |= HAS_LAST_SUCCESS | HAS_LAST_FAILURE | HAS_FAILURES;
        });
    }

    /// Notes a failing policy's count of failures in a row and the wait before its retry.
    pub fn backoff(&self, policy: &str, failures: u32, wait: std::time::Duration) {
        let wait = i64::try_from(wait.as_secs()).unwrap_or(i64::MAX);
        self.update(policy, |s| {
            s.consecutive_failures = failures;
            s.backoff_seconds = wait;
            s.has |= HAS_FAILURES;
        });
    }

    /// Notes when `policy`'s next attempt starts.
    pub fn next_rotation(&self, policy: &str, at: DateTime<Utc>) {
        self.update(policy, |s| {
            s.next_rotation = at.timestamp();
            s.unschedulable = false;
            s.has |= HAS_NEXT_ROTATION | HAS_UNSCHEDULABLE;
        });
    }

    /// Counts one attempt to record the audit head in its anchor.
    pub fn audit_anchor(&self, outcome: &str) {
        self.audit_anchor
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Notes that `policy` has no computable next time: it is out of the queue.
    pub fn unschedulable(&self, policy: &str) {
        self.update(policy, |s| {
            s.next_rotation = 0;
            s.has &= !HAS_NEXT_ROTATION;
            s.unschedulable = true;
            s.has |= HAS_UNSCHEDULABLE;
        });
    }

    /// Forgets a policy that left the policy set.
    pub fn forget(&self, policy: &str) {
        lock(&self.series).remove(policy);
    }

    /// Counts one rotation outcome; a `failed` or `error` one is also the policy's last
    /// failure.
    pub fn outcome(&self, policy: &str, outcome: &'static str) {
        let slot = COUNTED.iter().position(|o| *o == outcome);
        // Every outcome the daemon gives has a slot; one without would be lost, not counted.
        debug_assert!(slot.is_some(), "no slot for outcome {outcome:?} in COUNTED");
        if slot.is_none() {
            tracing::warn!(
                policy,
                outcome,
                "keyturn_rotations_total has no series for this outcome; it is not counted"
            );
        }
        let now = Utc::now().timestamp();
        self.update(policy, |s| {
            if matches!(outcome, "failed" | "error") {
                s.last_failure = now;
                s.has |= HAS_LAST_FAILURE;
            }
            if let Some(i) = slot {
                s.rotations[i] = s.rotations[i].saturating_add(1);
            }
        });
    }

    /// Applies `f` to `policy`'s record, which it creates (with no series) for a policy that
    /// has none, as each per-policy series once came into being at its first use; returns
    /// the name the record is kept under.
    fn update(&self, policy: &str, f: impl FnOnce(&mut PolicySeries)) -> Arc<str> {
        let mut series = lock(&self.series);
        if let Some((name, _)) = series.get_key_value(policy) {
            let name = Arc::clone(name);
            f(series.get_mut(policy).expect("just found"));
            return name;
        }
        let mut s = PolicySeries::default();
        f(&mut s);
        let name: Arc<str> = Arc::from(policy);
        series.insert(Arc::clone(&name), s);
        name
    }

    /// The Prometheus text exposition format 0.0.4, which `/metrics` declares and every
    /// scraper and `promtool check metrics` read, whole: [`Self::encode_chunks`]'s pieces
    /// joined (`/metrics` streams them instead).
    #[must_use]
    pub fn encode(&self) -> String {
        let mut text = String::new();
        self.encode_chunks(64 * 1024, &mut |piece| {
            text.push_str(&piece);
            true
        });
        text
    }

    /// The exposition in pieces of about `chunk` bytes, each handed to `send` as soon as it
    /// is written, for `/metrics` to stream: a scrape then holds a piece of the text, not all
    /// of it (17 MB at 25,000 policies, which the allocator kept resident after the scrape).
    /// The OpenMetrics text `prometheus-client` writes is rewritten to the classic format as
    /// it is written (see [`ClassicText`]). Stops early when `send` returns false (the
    /// scraper went away).
    pub fn encode_chunks(&self, chunk: usize, send: &mut dyn FnMut(String) -> bool) {
        let mut text = ClassicText::with_capacity(chunk.saturating_add(chunk / 4));
        text.sink = Some(Sink { chunk, send });
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            return;
        }
        let rest = text.finish();
        if !rest.is_empty() {
            send(rest);
        }
    }
}

/// Every policy's record, by name: sorted, so the exposition lists policies in one stable
/// order.
type Series = BTreeMap<Arc<str>, PolicySeries>;

fn lock(series: &Mutex<Series>) -> MutexGuard<'_, Series> {
    // The records hold plain numbers, whole after any panic: a poisoned lock is still usable.
    series
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `HAS_*`: which of a policy's series exist (a policy's series appear and go one by one,
/// as each method's doc says, and an absent one is not a 0).
///
/// The five [`OUTCOMES`] counters at rest: [`Metrics::register_policy`] creates them at 0.
/// A counter above 0 exists without it.
const HAS_OUTCOMES: u16 = 1;
/// `keyturn_next_rotation_timestamp_seconds`.
const HAS_NEXT_ROTATION: u16 = 1 << 1;
/// `keyturn_last_success_timestamp_seconds`.
const HAS_LAST_SUCCESS: u16 = 1 << 2;
/// `keyturn_consecutive_failures` and `keyturn_backoff_seconds`, which always come together.
const HAS_FAILURES: u16 = 1 << 3;
/// `keyturn_policy_unschedulable`.
const HAS_UNSCHEDULABLE: u16 = 1 << 4;
/// `keyturn_policy_max_age_seconds`.
const HAS_MAX_AGE: u16 = 1 << 5;
/// `keyturn_rotation_started_timestamp_seconds`.
const HAS_IN_FLIGHT: u16 = 1 << 6;
/// `keyturn_last_failure_timestamp_seconds`.
const HAS_LAST_FAILURE: u16 = 1 << 7;

/// One policy's per-policy series, as plain values encoded when scraped.
///
/// A replica owning 25,000 policies held them as ~16 labelled series each in
/// `prometheus-client` families, a hash-map entry and an `Arc`'d atomic per series: 1,260
/// bytes of resident memory a policy, measured. This record has no allocation of its own,
/// and its map entry shares one `Arc<str>` name: 340 bytes a policy, measured the same way.
#[derive(Debug, Clone, Copy, Default)]
struct PolicySeries {
    /// `keyturn_rotations_total{policy,outcome}`, by [`COUNTED`] outcome.
    rotations: [u64; COUNTED.len()],
    /// `keyturn_next_rotation_timestamp_seconds{policy}`: when the next attempt starts.
    next_rotation: i64,
    /// `keyturn_last_success_timestamp_seconds{policy}`: when the last successful rotation
    /// (this process's or, found in the store, another's) started.
    last_success: i64,
    /// `keyturn_backoff_seconds{policy}`: how long the daemon waits before retrying a
    /// failing policy (0 when it is not failing).
    backoff_seconds: i64,
    /// `keyturn_policy_max_age_seconds{policy}`: the oldest CURRENT may be while the policy
    /// is on schedule: the longest gap between two of its slots plus its window.
    max_age: i64,
    /// `keyturn_rotation_started_timestamp_seconds{policy}`: when the attempt in flight in
    /// this process started (Unix time), 0 when none is.
    in_flight_since: i64,
    /// `keyturn_last_failure_timestamp_seconds{policy}`: when this process's last failed or
    /// stopped attempt since the last success ended (outcomes `failed` and `error`; `busy`,
    /// another process holding the rotation, is not a failure of the policy); 0 when none.
    /// A success clears it: a resumed rotation's success dates from its first attempt's
    /// start, before the failures it recovers from.
    last_failure: i64,
    /// When the store created CURRENT, for `keyturn_secret_age_seconds{policy}` (`None`: no
    /// series).
    current_since: Option<DateTime<Utc>>,
    /// `keyturn_consecutive_failures{policy}`: failed or stopped attempts since the last
    /// success.
    consecutive_failures: u32,
    /// `keyturn_policy_unschedulable{policy}`: a policy with no computable next time.
    unschedulable: bool,
    /// Which series exist: `HAS_*` bits.
    has: u16,
}

impl PolicySeries {
    /// `bit`'s series' value if it exists.
    fn when(&self, bit: u16, value: i64) -> Option<i64> {
        (self.has & bit != 0).then_some(value)
    }

    /// The `keyturn_rotations_total` series: each counted outcome's count, the five
    /// [`OUTCOMES`] at rest for a registered policy, any outcome once counted.
    fn outcomes(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        let at_rest = self.has & HAS_OUTCOMES != 0;
        COUNTED
            .into_iter()
            .zip(self.rotations)
            .enumerate()
            .filter(move |&(i, (_, count))| count > 0 || (at_rest && i < OUTCOMES.len()))
            .map(|(_, series)| series)
    }
}

/// The per-policy gauges in the order they are exposed: name, HELP (ending with the period
/// `Registry` adds to what is registered with it, as when they were registered families),
/// and a record's value (`None`: no series).
type GaugeOf = fn(&PolicySeries) -> Option<i64>;
const POLICY_GAUGES: [(&str, &str, GaugeOf); 8] = [
    (
        "keyturn_next_rotation_timestamp_seconds",
        "When each policy's next rotation starts (Unix time).",
        |s| s.when(HAS_NEXT_ROTATION, s.next_rotation),
    ),
    (
        "keyturn_last_success_timestamp_seconds",
        "When each policy's last successful rotation started (Unix time).",
        |s| s.when(HAS_LAST_SUCCESS, s.last_success),
    ),
    (
        "keyturn_consecutive_failures",
        "Failed or stopped rotation attempts of each policy since its last success.",
        |s| s.when(HAS_FAILURES, i64::from(s.consecutive_failures)),
    ),
    (
        "keyturn_backoff_seconds",
        "How long the daemon waits before retrying each failing policy.",
        |s| s.when(HAS_FAILURES, s.backoff_seconds),
    ),
    (
        "keyturn_policy_unschedulable",
        "1 for a policy whose next rotation time cannot be computed.",
        |s| s.when(HAS_UNSCHEDULABLE, i64::from(s.unschedulable)),
    ),
    (
        "keyturn_policy_max_age_seconds",
        "The oldest each policy's CURRENT value may be on schedule: its longest gap between slots plus its window.",
        |s| s.when(HAS_MAX_AGE, s.max_age),
    ),
    (
        "keyturn_rotation_started_timestamp_seconds",
        "When each policy's attempt in flight started (Unix time; 0 when none is).",
        |s| s.when(HAS_IN_FLIGHT, s.in_flight_since),
    ),
    (
        "keyturn_last_failure_timestamp_seconds",
        "When each policy's last failed or stopped attempt ended (Unix time): the end of the last failed attempt since the last success; 0 when none.",
        |s| s.when(HAS_LAST_FAILURE, s.last_failure),
    ),
];

/// Rewrites `prometheus-client`'s OpenMetrics output as the classic text format: a counter
/// family is named by its sample (`x_total`) in `# HELP` and `# TYPE`, where OpenMetrics uses
/// the bare family name (so a classic parser found no HELP for `x_total`); `# UNIT` and
/// `# EOF` do not exist there, and `unknown` is spelled `untyped`.
pub(crate) fn openmetrics_to_text(om: &str) -> String {
    let mut text = ClassicText::with_capacity(om.len());
    let _ = text.write_str(om);
    text.finish()
}

/// [`openmetrics_to_text`] as the OpenMetrics text is written: sample lines pass straight
/// into the output, and only the metadata line being written and a family's `# HELP` line
/// are held apart, so the OpenMetrics text never exists whole beside its rewrite.
///
/// `prometheus-client` writes a family's `# HELP` line just before its `# TYPE` line, which
/// says whether it is a counter, so the `# HELP` line waits for it.
#[derive(Default)]
struct ClassicText<'a> {
    out: String,
    /// Where full pieces of `out` go, for a streamed exposition; `None`: all of it stays.
    sink: Option<Sink<'a>>,
    /// What has come of the `# ...` line being written.
    meta: String,
    /// The last `# HELP` line, until the next line says how to name its family.
    help: Option<String>,
    /// Where the writer is: at a line's start, or in a metadata or a sample line.
    line: Line,
}

/// Takes `out` away in pieces of at least `chunk` bytes (see [`Metrics::encode_chunks`]).
struct Sink<'a> {
    chunk: usize,
    send: &'a mut dyn FnMut(String) -> bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Line {
    #[default]
    Start,
    Meta,
    Sample,
}

impl ClassicText<'_> {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            out: String::with_capacity(capacity),
            ..Self::default()
        }
    }

    /// The classic text, its last line ended.
    fn finish(mut self) -> String {
        match self.line {
            Line::Meta => self.end_meta(),
            Line::Sample => self.out.push('\n'),
            Line::Start => {}
        }
        self.release_help();
        self.out
    }

    /// A whole `# ...` line has been written.
    fn end_meta(&mut self) {
        let line = std::mem::take(&mut self.meta);
        if line == "# EOF" || line.starts_with("# UNIT ") {
            // Neither exists in the classic format.
        } else if line.starts_with("# HELP ") {
            self.release_help();
            self.help = Some(line);
            return;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let counter = kind == "counter";
            if let Some(help) = self.help.take() {
                let same = help["# HELP ".len()..].split(' ').next() == Some(name);
                self.push_meta(&help, counter && same);
            }
            self.push_meta(&line, counter);
        } else {
            self.release_help();
            self.out.push_str(&line);
            self.out.push('\n');
        }
        // The buffer serves the next metadata line.
        self.meta = line;
        self.meta.clear();
    }

    /// Writes a held `# HELP` line whose family is no counter.
    fn release_help(&mut self) {
        if let Some(help) = self.help.take() {
            self.push_meta(&help, false);
        }
    }

    /// Writes a `# HELP` or `# TYPE` line, its family named `x_total` for a counter.
    fn push_meta(&mut self, line: &str, counter: bool) {
        let (prefix, rest) = line.split_at("# HELP ".len());
        let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        let tail = if prefix == "# TYPE " && tail == "unknown" {
            "untyped"
        } else {
            tail
        };
        self.out.push_str(prefix);
        self.out.push_str(name);
        if counter {
            self.out.push_str("_total");
        }
        self.out.push(' ');
        self.out.push_str(tail);
        self.out.push('\n');
    }
}

impl std::fmt::Write for ClassicText<'_> {
    fn write_str(&mut self, mut s: &str) -> std::fmt::Result {
        while !s.is_empty() {
            if self.line == Line::Start {
                self.line = if s.starts_with('#') {
                    Line::Meta
                } else {
                    self.release_help();
                    Line::Sample
                };
            }
            let (part, rest) = match s.split_once('\n') {
                Some((part, rest)) => (part, Some(rest)),
                None => (s, None),
            };
            match self.line {
                Line::Sample => self.out.push_str(part),
                _ => self.meta.push_str(part),
            }
            let Some(rest) = rest else { break };
            match self.line {
                Line::Sample => self.out.push('\n'),
                _ => self.end_meta(),
            }
            self.line = Line::Start;
            s = rest;
        }
        if let Some(sink) = &mut self.sink
            && self.out.len() >= sink.chunk
        {
            let piece = std::mem::replace(&mut self.out, String::with_capacity(sink.chunk * 5 / 4));
            if !(sink.send)(piece) {
                return Err(std::fmt::Error);
            }
        }
        Ok(())
    }
}

/// Sets `keyturn_rotation_started_timestamp_seconds` back to 0 when dropped: in the record
/// the attempt started under, if the policy still has it (a policy forgotten meanwhile has
/// no series, and one registered again since has a new record, which another attempt may be
/// using).
#[derive(Debug)]
pub struct InFlightGuard {
    series: Arc<Mutex<Series>>,
    /// The key of the record: the same allocation for as long as the record exists.
    policy: Arc<str>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut series = lock(&self.series);
        let same = series
            .get_key_value(&*self.policy)
            .is_some_and(|(name, _)| Arc::ptr_eq(name, &self.policy));
        if same && let Some(s) = series.get_mut(&*self.policy) {
            s.in_flight_since = 0;
        }
    }
}

/// How many of a cron schedule's coming slots [`max_age`] looks at: a year of a daily
/// schedule, and every weekday pattern many times over.
const MAX_AGE_SAMPLE: usize = 400;

/// The oldest a policy's CURRENT value may be while the schedule is kept: the longest gap
/// between two consecutive slots (the interval of `every`; for cron, among the next
/// [`MAX_AGE_SAMPLE`] slots after `now`, so `0 3 * * 1-5` allows a weekend) plus the window,
/// since a slot's rotation may start anywhere in `[slot, slot + window)`. `None` when the
/// schedule has fewer than two slots left.
#[must_use]
pub fn max_age(schedule: &Schedule, window: Duration, now: DateTime<Utc>) -> Option<Duration> {
    let gap = match schedule {
        Schedule::Every(d) => *d,
        Schedule::Cron { .. } => {
            let mut at = schedule.next_due(Some(now))?;
            let mut longest = None;
            for _ in 1..MAX_AGE_SAMPLE {
                let Some(next) = schedule.next_due(Some(at)) else {
                    break;
                };
                let gap = (next - at).to_std().ok()?;
                longest = longest.max(Some(gap));
                at = next;
            }
            longest?
        }
    };
    gap.checked_add(window)
}

/// Metrics computed when scraped, so nothing ticks while the daemon is idle.
#[derive(Debug)]
struct Scraped {
    series: Arc<Mutex<Series>>,
    audit: Option<Arc<AuditLog>>,
    source: Arc<SourceStats>,
}

/// `{kind}` of a RotationPolicy watch failure.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

impl Scraped {
    /// The per-policy families, from a copy of the records taken at once: the daemon's
    /// updates wait for the copy (~3 MB at 25,000 policies), not for the encoding.
    fn encode_policies(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = Utc::now();
        let records: Vec<(Arc<str>, PolicySeries)> = lock(&self.series)
            .iter()
            .map(|(name, s)| (Arc::clone(name), *s))
            .collect();
        // A family without a series has no HELP and TYPE either, as `Registry` leaves out an
        // empty registered family.
        if records.iter().any(|(_, s)| s.outcomes().next().is_some()) {
            let mut fam = encoder.encode_descriptor(
                "keyturn_rotations",
                "Rotations by policy and outcome.",
                None,
                MetricType::Counter,
            )?;
            for (policy, s) in &records {
                for (outcome, count) in s.outcomes() {
                    ConstCounter::new(count).encode(
                        fam.encode_family(&[("policy", &**policy), ("outcome", outcome)])?,
                    )?;
                }
            }
        }
        for (name, help, value) in POLICY_GAUGES {
            if !records.iter().any(|(_, s)| value(s).is_some()) {
                continue;
            }
            let mut fam = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (policy, s) in &records {
                if let Some(v) = value(s) {
                    ConstGauge::new(v).encode(fam.encode_family(&[("policy", &**policy)])?)?;
                }
            }
        }
        // Always described: it was a collected family from the start.
        let mut fam = encoder.encode_descriptor(
            "keyturn_secret_age_seconds",
            "Age of each policy's CURRENT value",
            None,
            MetricType::Gauge,
        )?;
        for (policy, s) in &records {
            if let Some(at) = s.current_since {
                let age = (now - at).num_milliseconds() as f64 / 1000.0;
                ConstGauge::new(age).encode(fam.encode_family(&[("policy", &**policy)])?)?;
            }
        }
        Ok(())
    }
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_policies(&mut encoder)?;
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
            // A counter resets with the restart a failed log forces; this says the running
            // process's log refuses events now.
            let p = ConstGauge::new(i64::from(a.is_poisoned()));
            p.encode(encoder.encode_descriptor(
                "keyturn_audit_log_failed",
                "1 when the audit log has failed a write and refuses every event until a restart",
                None,
                p.metric_type(),
            )?)?;
        }
        let lists = prometheus_client::metrics::counter::ConstCounter::new(self.source.lists());
        lists.encode(encoder.encode_descriptor(
            "keyturn_policy_watch_lists",
            "Complete lists of RotationPolicy objects (the first, and one after each 410 Gone)",
            None,
            lists.metric_type(),
        )?)?;
        let c = prometheus_client::metrics::counter::ConstCounter::new(0u64);
        let mut fam = encoder.encode_descriptor(
            "keyturn_policy_watch_failures",
            "RotationPolicy watch failures by kind, each retried with backoff",
            None,
            c.metric_type(),
        )?;
        for kind in Failure::ALL {
            prometheus_client::metrics::counter::ConstCounter::new(self.source.failures(kind))
                .encode(fam.encode_family(&KindLabel {
                    kind: kind.as_str(),
                })?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `policy`'s record.
    fn record(m: &Metrics, policy: &str) -> PolicySeries {
        lock(&m.series)[policy]
    }

    /// A policy `name` on `schedule` (a `spec:` line) with a 1h window.
    fn policy(name: &str, schedule: &str) -> Policy {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(
            &file,
            format!(
                "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: {name} }}\nspec:\n  {schedule}\n  window: 1h\n  store: {{ vault-kv: {{ path: keyturn/{name} }} }}\n  target: {{ generated: {{}} }}\n"
            ),
        )
        .unwrap();
        crate::policy::load(&file).unwrap().remove(0)
    }

    #[test]
    fn a_streamed_exposition_is_the_whole_one_in_pieces_and_stops_when_refused() {
        let m = Metrics::new(None);
        for i in 0..200 {
            let p = policy(&format!("p{i:03}"), "every: 24h");
            m.register_policy(&p);
            m.succeeded(&p.name, Utc::now());
        }
        let whole = m.encode();
        let mut pieces = Vec::new();
        m.encode_chunks(4096, &mut |piece| {
            pieces.push(piece);
            true
        });
        assert!(pieces.len() > 10, "{} pieces", pieces.len());
        let (last, full) = pieces.split_last().unwrap();
        assert!(
            full.iter().all(|p| p.len() >= 4096),
            "a piece is sent once full"
        );
        assert!(!last.is_empty());
        // The ages move with the clock; everything else is the same text.
        let steady = |t: &str| -> String {
            t.lines()
                .filter(|l| !l.starts_with("keyturn_secret_age_seconds{"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(steady(&pieces.concat()), steady(&whole));
        // A scraper gone: the writing stops at the next piece.
        let mut sent = 0;
        m.encode_chunks(4096, &mut |_| {
            sent += 1;
            false
        });
        assert_eq!(sent, 1);
    }

    #[test]
    fn the_allowed_age_is_the_longest_gap_between_slots_plus_the_window() {
        let now = crate::schedule::utc(2025, 1, 1, 0, 0);
        let hour = Duration::from_secs(3600);
        let every = Schedule::every("24h").unwrap();
        assert_eq!(max_age(&every, hour, now), Some(25 * hour));
        let daily = Schedule::cron("0 3 * * *", None).unwrap();
        assert_eq!(max_age(&daily, hour, now), Some(25 * hour));
        // Weekdays only: Friday's rotation has to last until Monday's.
        let weekdays = Schedule::cron("0 3 * * 1-5", None).unwrap();
        assert_eq!(max_age(&weekdays, hour, now), Some(73 * hour));
        let m = Metrics::new(None);
        m.register_policy(&policy("nightly", "schedule: \"0 3 * * 1-5\""));
        assert!(
            m.encode()
                .contains(r#"keyturn_policy_max_age_seconds{policy="nightly"} 262800"#),
            "{}",
            m.encode()
        );
    }

    #[test]
    fn an_attempt_in_flight_shows_its_start_until_it_ends_and_a_failure_its_time() {
        let m = Metrics::new(None);
        m.register_policy(&policy("api", "every: 24h"));
        let text = m.encode();
        assert!(
            text.contains(r#"keyturn_rotation_started_timestamp_seconds{policy="api"} 0"#),
            "{text}"
        );
        assert!(
            !text.contains("keyturn_last_failure_timestamp_seconds{"),
            "{text}"
        );
        let before = Utc::now().timestamp();
        let guard = m.in_flight("api");
        let started = record(&m, "api").in_flight_since;
        assert!(started >= before, "{started} < {before}");
        m.outcome("api", "busy");
        assert!(
            !m.encode()
                .contains("keyturn_last_failure_timestamp_seconds{")
        );
        m.outcome("api", "failed");
        drop(guard);
        let text = m.encode();
        assert!(
            text.contains(r#"keyturn_rotation_started_timestamp_seconds{policy="api"} 0"#),
            "{text}"
        );
        assert!(record(&m, "api").last_failure >= before, "{text}");
        m.forget("api");
        let text = m.encode();
        assert!(!text.contains(r#"policy="api""#), "{text}");
    }

    #[test]
    fn a_resumed_rotation_that_succeeds_clears_the_failure_it_started_before() {
        let m = Metrics::new(None);
        m.register_policy(&policy("api", "every: 24h"));
        // The resumed order: an attempt fails and ends at t=100; the retry resumes the
        // rotation that started at t=50 and succeeds, which dates the success from t=50.
        m.outcome("api", "failed");
        let _ = m.update("api", |s| s.last_failure = 100);
        m.succeeded("api", DateTime::from_timestamp(50, 0).unwrap());
        let (failure, success) = (
            record(&m, "api").last_failure,
            record(&m, "api").last_success,
        );
        assert_eq!(success, 50);
        // KeyturnRotationFailing's first condition, `last_failure > last_success`.
        assert!(failure <= success, "{failure} > {success}");
        assert!(
            m.encode()
                .contains(r#"keyturn_last_failure_timestamp_seconds{policy="api"} 0"#),
            "{}",
            m.encode()
        );
        // A later failure is the last failure again.
        let before = Utc::now().timestamp();
        m.outcome("api", "error");
        assert!(record(&m, "api").last_failure >= before);
    }

    #[test]
    fn reloading_a_failing_policy_keeps_its_failure_count_and_backoff() {
        let m = Metrics::new(None);
        let p = policy("api", "every: 24h");
        m.register_policy(&p);
        let text = m.encode();
        assert!(
            text.contains(r#"keyturn_consecutive_failures{policy="api"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"keyturn_backoff_seconds{policy="api"} 0"#),
            "{text}"
        );
        m.backoff("api", 2, std::time::Duration::from_secs(60));
        m.register_policy(&policy("api", "every: 12h"));
        let text = m.encode();
        assert!(
            text.contains(r#"keyturn_consecutive_failures{policy="api"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"keyturn_backoff_seconds{policy="api"} 60"#),
            "{text}"
        );
    }

    #[test]
    fn break_glass_series_start_at_zero_and_kubernetes_requests_are_counted_by_outcome() {
        let m = Metrics::new(None);
        let text = m.encode();
        for action in BREAKGLASS_ACTIONS {
            assert!(
                text.contains(&format!(
                    r#"keyturn_breakglass_total{{action="{action}"}} 0"#
                )),
                "{text}"
            );
        }
        // A resource no real delivery uses, so other tests in this process cannot add to it.
        let forbidden = crate::distribute::DistributeError::Forbidden {
            object: Box::new(crate::distribute::ObjectRef {
                resource: "widgets.test".into(),
                namespace: "ns".into(),
                name: "w".into(),
            }),
            verb: "patch".into(),
            code: 403,
            message: "no".into(),
        };
        kube_request("widgets.test", "get", Ok(()));
        kube_request("widgets.test", "patch", Err(&forbidden));
        let text = m.encode();
        assert!(
            text.contains(r#"keyturn_kubernetes_requests_total{resource="widgets.test",verb="get",outcome="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"keyturn_kubernetes_requests_total{resource="widgets.test",verb="patch",outcome="forbidden"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn the_exposition_is_the_classic_text_format_with_help_on_every_sample_family() {
        let m = Metrics::new(None);
        m.register_policy(&policy("api", "every: 24h"));
        m.outcome("api", "rotated");
        m.rotation_duration.observe(0.1);
        let text = m.encode();
        assert!(
            text.contains("# HELP keyturn_rotations_total Rotations by policy and outcome"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE keyturn_rotations_total counter"),
            "{text}"
        );
        assert!(
            text.contains(r#"keyturn_rotations_total{policy="api",outcome="rotated"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"keyturn_rotations_total{policy="api",outcome="failed"} 0"#),
            "{text}"
        );
        assert!(
            text.contains("# TYPE keyturn_rotation_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.contains("keyturn_build_info{version="), "{text}");
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        // Every sample's family has HELP and TYPE under the name a classic parser looks for.
        for sample in text.lines().filter(|l| !l.starts_with('#')) {
            let name = sample.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
                .unwrap_or(name);
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family}: {text}"
            );
        }
    }

    /// The exposition's lines that name `policy`, in order.
    fn lines_of(m: &Metrics, policy: &str) -> Vec<String> {
        let label = format!("policy=\"{policy}\"");
        m.encode()
            .lines()
            .filter(|l| l.contains(&label))
            .map(str::to_owned)
            .collect()
    }

    /// `lines` with the `keyturn_secret_age_seconds` line taken out and its value, which
    /// depends on when the scrape ran, checked against the age of `created`.
    fn without_age(mut lines: Vec<String>, created: DateTime<Utc>) -> Vec<String> {
        let i = lines
            .iter()
            .position(|l| l.starts_with("keyturn_secret_age_seconds{"))
            .expect("an age line");
        let line = lines.remove(i);
        let age: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        let lo = (Utc::now() - created).num_seconds() as f64 - 60.0;
        assert!(
            age > lo && age <= (Utc::now() - created).num_seconds() as f64 + 1.0,
            "{line}"
        );
        lines
    }

    #[test]
    fn every_series_of_a_policy_has_the_value_each_method_gives_it() {
        let at = |t| DateTime::from_timestamp(t, 0).unwrap();
        let m = Metrics::new(None);
        m.register_policy(&policy("other", "every: 12h"));
        m.outcome("other", "busy");
        m.register_policy(&policy("api", "every: 24h"));
        // At rest: the counters at 0, the failure series at rest, nothing scheduled yet.
        assert_eq!(
            lines_of(&m, "api"),
            [
                r#"keyturn_rotations_total{policy="api",outcome="rotated"} 0"#,
                r#"keyturn_rotations_total{policy="api",outcome="failed"} 0"#,
                r#"keyturn_rotations_total{policy="api",outcome="busy"} 0"#,
                r#"keyturn_rotations_total{policy="api",outcome="already-done"} 0"#,
                r#"keyturn_rotations_total{policy="api",outcome="error"} 0"#,
                r#"keyturn_consecutive_failures{policy="api"} 0"#,
                r#"keyturn_backoff_seconds{policy="api"} 0"#,
                r#"keyturn_policy_unschedulable{policy="api"} 0"#,
                r#"keyturn_policy_max_age_seconds{policy="api"} 90000"#,
                r#"keyturn_rotation_started_timestamp_seconds{policy="api"} 0"#,
            ]
        );

        let guard = m.in_flight("api");
        m.outcome("api", "rotated");
        m.outcome("api", "failed");
        m.outcome("api", "fenced");
        m.outcome("api", "fenced");
        m.backoff("api", 3, Duration::from_secs(90));
        m.next_rotation("api", at(1_800_000_000));
        m.current_since("api", None);
        let created = at(1_700_000_000);
        m.current_since("api", Some(created));
        let (started, failed) = (
            record(&m, "api").in_flight_since,
            record(&m, "api").last_failure,
        );
        assert!(
            started > 1_700_000_000 && failed >= started,
            "{started} {failed}"
        );
        assert_eq!(
            without_age(lines_of(&m, "api"), created),
            [
                r#"keyturn_rotations_total{policy="api",outcome="rotated"} 1"#.to_owned(),
                r#"keyturn_rotations_total{policy="api",outcome="failed"} 1"#.to_owned(),
                r#"keyturn_rotations_total{policy="api",outcome="busy"} 0"#.to_owned(),
                r#"keyturn_rotations_total{policy="api",outcome="already-done"} 0"#.to_owned(),
                r#"keyturn_rotations_total{policy="api",outcome="error"} 0"#.to_owned(),
                r#"keyturn_rotations_total{policy="api",outcome="fenced"} 2"#.to_owned(),
                r#"keyturn_next_rotation_timestamp_seconds{policy="api"} 1800000000"#.to_owned(),
                r#"keyturn_consecutive_failures{policy="api"} 3"#.to_owned(),
                r#"keyturn_backoff_seconds{policy="api"} 90"#.to_owned(),
                r#"keyturn_policy_unschedulable{policy="api"} 0"#.to_owned(),
                r#"keyturn_policy_max_age_seconds{policy="api"} 90000"#.to_owned(),
                format!(r#"keyturn_rotation_started_timestamp_seconds{{policy="api"}} {started}"#),
                format!(r#"keyturn_last_failure_timestamp_seconds{{policy="api"}} {failed}"#),
            ]
        );

        // A success puts the failure series back to rest; an unschedulable policy has no
        // next time; the attempt's end sets its start back to 0.
        let rotated = at(1_750_000_000);
        m.succeeded("api", rotated);
        m.unschedulable("api");
        drop(guard);
        assert_eq!(
            without_age(lines_of(&m, "api"), rotated),
            [
                r#"keyturn_rotations_total{policy="api",outcome="rotated"} 1"#,
                r#"keyturn_rotations_total{policy="api",outcome="failed"} 1"#,
                r#"keyturn_rotations_total{policy="api",outcome="busy"} 0"#,
                r#"keyturn_rotations_total{policy="api",outcome="already-done"} 0"#,
                r#"keyturn_rotations_total{policy="api",outcome="error"} 0"#,
                r#"keyturn_rotations_total{policy="api",outcome="fenced"} 2"#,
                r#"keyturn_last_success_timestamp_seconds{policy="api"} 1750000000"#,
                r#"keyturn_consecutive_failures{policy="api"} 0"#,
                r#"keyturn_backoff_seconds{policy="api"} 0"#,
                r#"keyturn_policy_unschedulable{policy="api"} 1"#,
                r#"keyturn_policy_max_age_seconds{policy="api"} 90000"#,
                r#"keyturn_rotation_started_timestamp_seconds{policy="api"} 0"#,
                r#"keyturn_last_failure_timestamp_seconds{policy="api"} 0"#,
            ]
        );

        // Scheduled again; a reload to a schedule with no bound keeps the counts and drops
        // the allowed age; an error is the last failure.
        m.next_rotation("api", at(1_800_000_001));
        m.backoff("api", 1, Duration::from_secs(30));
        m.register("api", None);
        m.outcome("api", "error");
        let failed = record(&m, "api").last_failure;
        assert_eq!(
            without_age(lines_of(&m, "api"), rotated),
            [
                r#"keyturn_rotations_total{policy="api",outcome="rotated"} 1"#.to_owned(),
                r#"keyturn_rotations_total{policy="api",outcome="failed"} 1"#.to_owned(),
                r#"keyturn_rotations_total{policy="api",outcome="busy"} 0"#.to_owned(),
                r#"keyturn_rotations_total{policy="api",outcome="already-done"} 0"#.to_owned(),
                r#"keyturn_rotations_total{policy="api",outcome="error"} 1"#.to_owned(),
                r#"keyturn_rotations_total{policy="api",outcome="fenced"} 2"#.to_owned(),
                r#"keyturn_next_rotation_timestamp_seconds{policy="api"} 1800000001"#.to_owned(),
                r#"keyturn_last_success_timestamp_seconds{policy="api"} 1750000000"#.to_owned(),
                r#"keyturn_consecutive_failures{policy="api"} 1"#.to_owned(),
                r#"keyturn_backoff_seconds{policy="api"} 30"#.to_owned(),
                r#"keyturn_policy_unschedulable{policy="api"} 0"#.to_owned(),
                r#"keyturn_rotation_started_timestamp_seconds{policy="api"} 0"#.to_owned(),
                format!(r#"keyturn_last_failure_timestamp_seconds{{policy="api"}} {failed}"#),
            ]
        );
        // The other policy kept its own series throughout.
        assert_eq!(
            lines_of(&m, "other")[..5],
            [
                r#"keyturn_rotations_total{policy="other",outcome="rotated"} 0"#,
                r#"keyturn_rotations_total{policy="other",outcome="failed"} 0"#,
                r#"keyturn_rotations_total{policy="other",outcome="busy"} 1"#,
                r#"keyturn_rotations_total{policy="other",outcome="already-done"} 0"#,
                r#"keyturn_rotations_total{policy="other",outcome="error"} 0"#,
            ]
        );
    }

    #[test]
    fn a_forgotten_policy_leaves_no_series_and_its_families_go_with_their_last() {
        let at = |t| DateTime::from_timestamp(t, 0).unwrap();
        let m = Metrics::new(None);
        m.register_policy(&policy("api", "every: 24h"));
        m.register_policy(&policy("api-2", "every: 24h"));
        let guard = m.in_flight("api");
        m.outcome("api", "failed");
        m.outcome("api", "fenced");
        m.backoff("api", 2, Duration::from_secs(60));
        m.next_rotation("api", at(1_800_000_000));
        m.succeeded("api", at(1_700_000_000));
        m.current_since("api", Some(at(1_700_000_000)));
        // Six counters, eight gauges and the age.
        assert_eq!(lines_of(&m, "api").len(), 15, "{}", m.encode());
        m.forget("api");
        // The attempt in flight ends after its policy left: nothing comes back.
        drop(guard);
        let text = m.encode();
        assert!(!text.contains(r#"policy="api""#), "{text}");
        assert!(
            text.contains(r#"keyturn_backoff_seconds{policy="api-2"} 0"#),
            "{text}"
        );
        // Families with no series left have no HELP or TYPE either, as before.
        assert!(
            !text.contains("keyturn_last_success_timestamp_seconds"),
            "{text}"
        );
        assert!(
            !text.contains("keyturn_next_rotation_timestamp_seconds"),
            "{text}"
        );
        m.forget("api-2");
        let text = m.encode();
        assert!(!text.contains("policy="), "{text}");
        assert!(!text.contains("# TYPE keyturn_rotations_total"), "{text}");
        // Only the collected age family stays described.
        assert!(
            text.contains("# TYPE keyturn_secret_age_seconds gauge"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_attempt_sets_its_start_back_to_0_however_it_ends() {
        let m = Metrics::new(None);
        m.register_policy(&policy("api", "every: 24h"));
        let started = |m: &Metrics| record(m, "api").in_flight_since;

        drop(m.in_flight("api"));
        assert_eq!(started(&m), 0);

        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = m.in_flight("api");
            assert_ne!(started(&m), 0);
            panic!("the attempt panics");
        }));
        assert!(panicked.is_err());
        assert_eq!(started(&m), 0);

        // An aborted task drops its guard.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn({
            let m = m.clone();
            async move {
                let _guard = m.in_flight("api");
                let _ = tx.send(());
                std::future::pending::<()>().await;
            }
        });
        rx.await.unwrap();
        assert_ne!(started(&m), 0);
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(started(&m), 0);
        assert!(
            m.encode()
                .contains(r#"keyturn_rotation_started_timestamp_seconds{policy="api"} 0"#)
        );

        // A guard from before the policy was forgotten and loaded again leaves the new
        // attempt's start alone.
        let old = m.in_flight("api");
        m.forget("api");
        m.register_policy(&policy("api", "every: 24h"));
        let new = m.in_flight("api");
        drop(old);
        assert_ne!(started(&m), 0);
        drop(new);
        assert_eq!(started(&m), 0);
    }

    #[test]
    fn a_policy_record_is_small_and_owns_no_allocation() {
        // 6 counters, 6 gauges as i64, CURRENT's creation time (12 bytes), the failure count
        // and the flags: 114 bytes, aligned to 120. Its map entry adds the `Arc<str>` name
        // (16 bytes), and the tree's nodes about a third again: some 200 bytes a policy,
        // against ~1 KB in families.
        assert_eq!(size_of::<Option<DateTime<Utc>>>(), 12);
        assert!(
            size_of::<PolicySeries>() <= 120,
            "{}",
            size_of::<PolicySeries>()
        );
        // `Copy` means no field owns heap memory.
        fn is_copy<T: Copy>() {}
        is_copy::<PolicySeries>();
        assert_eq!(COUNTED[..OUTCOMES.len()], OUTCOMES);
    }

    #[test]
    fn the_classic_rewrite_is_the_same_however_the_text_is_written() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\n\
                  a_requests_total{x=\"1\"} 2\n# HELP b Bytes.\n# TYPE b gauge\n# UNIT b bytes\n\
                  b 3\n# HELP c C.\n# TYPE c unknown\nc 1\n# HELP d D.\n# TYPE d counter\n\
                  d_total 0\n# EOF\n";
        let want = "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\n\
                    a_requests_total{x=\"1\"} 2\n# HELP b Bytes.\n# TYPE b gauge\nb 3\n\
                    # HELP c C.\n# TYPE c untyped\nc 1\n# HELP d_total D.\n\
                    # TYPE d_total counter\nd_total 0\n";
        assert_eq!(openmetrics_to_text(om), want);
        // However `prometheus-client` cuts its writes: here one character at a time.
        let mut text = ClassicText::default();
        for c in om.chars() {
            text.write_str(c.encode_utf8(&mut [0; 4])).unwrap();
        }
        assert_eq!(text.finish(), want);
        // A last line without its newline still ends with one.
        assert_eq!(openmetrics_to_text("x 1"), "x 1\n");
    }
}

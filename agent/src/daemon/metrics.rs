//! The daemon's Prometheus metrics (`prometheus-client`), served on `/metrics`.
//!
//! Labels carry policy names, store kinds, operations and outcomes: never a value, a path's
//! content or an error message (those go to logs and the audit log).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use keyturn_core::audit::AuditLog;

use super::status::StatusMetrics;
use crate::policy::Policy;
use crate::policy::kube_source::{Failure, SourceStats};
use crate::schedule::Schedule;

/// `{policy, outcome}`.
///
/// The policy's name is shared (`Arc<str>`) by all of a policy's series, and the outcome is
/// a constant: a replica owning 25,000 policies holds 16 series for each, and a `String`
/// per label was a third of their memory.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyOutcome {
    /// The policy.
    pub policy: Arc<str>,
    /// `rotated`, `failed`, `busy`, `already-done`, `error`.
    pub outcome: &'static str,
}

/// `{policy}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    /// The policy.
    pub policy: Arc<str>,
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
    /// `keyturn_last_success_timestamp_seconds{policy}`: when the last successful rotation
    /// (this process's or, found in the store, another's) started.
    pub last_success: Family<PolicyLabel, Gauge>,
    /// `keyturn_consecutive_failures{policy}`: failed or stopped attempts since the last
    /// success.
    pub consecutive_failures: Family<PolicyLabel, Gauge>,
    /// `keyturn_backoff_seconds{policy}`: how long the daemon waits before retrying a failing
    /// policy (0 when it is not failing).
    pub backoff_seconds: Family<PolicyLabel, Gauge>,
    /// `keyturn_policy_unschedulable{policy}`: 1 for a policy with no computable next time.
    pub unschedulable: Family<PolicyLabel, Gauge>,
    /// `keyturn_audit_anchor_writes_total{outcome}`: attempts to record the audit head.
    pub audit_anchor: Family<OutcomeLabel, Counter>,
    /// `keyturn_policy_max_age_seconds{policy}`: the oldest CURRENT may be while the policy
    /// is on schedule: the longest gap between two of its slots plus its window.
    pub max_age: Family<PolicyLabel, Gauge>,
    /// `keyturn_rotation_started_timestamp_seconds{policy}`: when the attempt in flight in
    /// this process started (Unix time), 0 when none is.
    pub in_flight_since: Family<PolicyLabel, Gauge>,
    /// `keyturn_last_failure_timestamp_seconds{policy}`: when this process's last failed or
    /// stopped attempt since the last success ended (outcomes `failed` and `error`; `busy`,
    /// another process holding the rotation, is not a failure of the policy); 0 when none.
    /// A success clears it: a resumed rotation's success dates from its first attempt's
    /// start, before the failures it recovers from.
    pub last_failure: Family<PolicyLabel, Gauge>,
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
    /// Each policy's name, shared by its series' labels.
    names: Arc<Mutex<HashSet<Arc<str>>>>,
    /// When each policy's CURRENT value was created, for `keyturn_secret_age_seconds`.
    last_rotated: Arc<Mutex<HashMap<Arc<str>, DateTime<Utc>>>>,
    /// The audit log, for its counters and for whether it has failed.
    audit: Option<Arc<AuditLog>>,
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
            "Break-glass actions seen in the break-glass journal in Vault",
            breakglass.clone(),
        );
        let http_shed = Counter::default();
        registry.register(
            "keyturn_http_connections_shed",
            "Connections to /metrics, /healthz and /readyz closed at the connection cap",
            http_shed.clone(),
        );
        let last_success = Family::<PolicyLabel, Gauge>::default();
        registry.register(
            "keyturn_last_success_timestamp_seconds",
            "When each policy's last successful rotation started (Unix time)",
            last_success.clone(),
        );
        let consecutive_failures = Family::<PolicyLabel, Gauge>::default();
        registry.register(
            "keyturn_consecutive_failures",
            "Failed or stopped rotation attempts of each policy since its last success",
            consecutive_failures.clone(),
        );
        let backoff_seconds = Family::<PolicyLabel, Gauge>::default();
        registry.register(
            "keyturn_backoff_seconds",
            "How long the daemon waits before retrying each failing policy",
            backoff_seconds.clone(),
        );
        let unschedulable = Family::<PolicyLabel, Gauge>::default();
        registry.register(
            "keyturn_policy_unschedulable",
            "1 for a policy whose next rotation time cannot be computed",
            unschedulable.clone(),
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
        let max_age = Family::<PolicyLabel, Gauge>::default();
        registry.register(
            "keyturn_policy_max_age_seconds",
            "The oldest each policy's CURRENT value may be on schedule: its longest gap between slots plus its window",
            max_age.clone(),
        );
        let in_flight_since = Family::<PolicyLabel, Gauge>::default();
        registry.register(
            "keyturn_rotation_started_timestamp_seconds",
            "When each policy's attempt in flight started (Unix time; 0 when none is)",
            in_flight_since.clone(),
        );
        let last_failure = Family::<PolicyLabel, Gauge>::default();
        registry.register(
            "keyturn_last_failure_timestamp_seconds",
            "When each policy's last failed or stopped attempt ended (Unix time): the end of the last failed attempt since the last success; 0 when none",
            last_failure.clone(),
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
        let last_rotated = Arc::new(Mutex::new(HashMap::new()));
        let source = Arc::new(SourceStats::default());
        registry.register_collector(Box::new(Scraped {
            last_rotated: last_rotated.clone(),
            audit: audit.clone(),
            source: source.clone(),
        }));
        Self {
            rotations,
            rotation_duration,
            fire_delay,
            next_rotation,
            store_requests,
            breakglass,
            http_shed,
            last_success,
            consecutive_failures,
            backoff_seconds,
            unschedulable,
            audit_anchor,
            max_age,
            in_flight_since,
            last_failure,
            members,
            policies_owned,
            fence_open,
            fenced,
            membership_failures,
            objects_rejected,
            source,
            status,
            last_rotated,
            names: Arc::default(),
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
        let l = self.label(&p.name);
        let policy = &l.policy;
        match max_age(&p.schedule, p.window, Utc::now()) {
            Some(age) => {
                let secs = i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
                self.max_age.get_or_create(&l).set(secs);
            }
            None => {
                self.max_age.remove(&l);
            }
        }
        // A reload keeps an attempt in flight (`spawn` owns it); only a new policy starts at 0.
        let _ = self.in_flight_since.get_or_create(&l);
        for outcome in OUTCOMES {
            let _ = self.rotations.get_or_create(&PolicyOutcome {
                policy: Arc::clone(policy),
                outcome,
            });
        }
        // Likewise a reload keeps a failing policy's count and its queued retry (the daemon
        // keeps both); only a new policy starts at 0.
        let _ = self.consecutive_failures.get_or_create(&l);
        let _ = self.backoff_seconds.get_or_create(&l);
        self.unschedulable.get_or_create(&l).set(0);
    }

    /// Notes that an attempt at `policy` starts now; the returned guard sets the gauge back
    /// to 0 when the attempt ends, however it ends (a panic or an abort included).
    #[must_use]
    pub fn in_flight(&self, policy: &str) -> InFlightGuard {
        let gauge = self
            .in_flight_since
            .get_or_create(&self.label(policy))
            .clone();
        gauge.set(Utc::now().timestamp());
        InFlightGuard(gauge)
    }

    /// Notes when the store created `policy`'s CURRENT value (`None`: it does not say).
    pub fn current_since(&self, policy: &str, created: Option<DateTime<Utc>>) {
        if let Some(at) = created {
            self.ages().insert(self.name(policy), at);
        }
    }

    /// Notes a completed rotation of `policy`, whose CURRENT value dates from `at`: the
    /// failure series go back to rest. The last failure goes to 0 rather than staying to be
    /// compared with `at`: a resumed rotation's `at` is its first attempt's start, earlier
    /// than the failed attempts it recovers from.
    pub fn succeeded(&self, policy: &str, at: DateTime<Utc>) {
        self.ages().insert(self.name(policy), at);
        let l = self.label(policy);
        self.last_success.get_or_create(&l).set(at.timestamp());
        self.last_failure.get_or_create(&l).set(0);
        self.consecutive_failures.get_or_create(&l).set(0);
        self.backoff_seconds.get_or_create(&l).set(0);
    }

    /// Notes a failing policy's count of failures in a row and the wait before its retry.
    pub fn backoff(&self, policy: &str, failures: u32, wait: std::time::Duration) {
        let l = self.label(policy);
        self.consecutive_failures
            .get_or_create(&l)
            .set(i64::from(failures));
        self.backoff_seconds
            .get_or_create(&l)
            .set(i64::try_from(wait.as_secs()).unwrap_or(i64::MAX));
    }

    /// Notes when `policy`'s next attempt starts.
    pub fn next_rotation(&self, policy: &str, at: DateTime<Utc>) {
        self.next_rotation
            .get_or_create(&self.label(policy))
            .set(at.timestamp());
        self.unschedulable.get_or_create(&self.label(policy)).set(0);
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
        self.next_rotation.remove(&self.label(policy));
        self.unschedulable.get_or_create(&self.label(policy)).set(1);
    }

    /// Forgets a policy that left the policy set.
    pub fn forget(&self, policy: &str) {
        self.ages().remove(policy);
        let l = self.label(policy);
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(policy);
        for f in [
            &self.next_rotation,
            &self.last_success,
            &self.last_failure,
            &self.max_age,
            &self.in_flight_since,
            &self.consecutive_failures,
            &self.backoff_seconds,
            &self.unschedulable,
        ] {
            f.remove(&l);
        }
        for outcome in OUTCOMES {
            self.rotations.remove(&PolicyOutcome {
                policy: Arc::clone(&l.policy),
                outcome,
            });
        }
    }

    /// `policy`'s name as every series of it shares it: one allocation per policy, not one
    /// per series.
    fn name(&self, policy: &str) -> Arc<str> {
        let mut names = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = names.get(policy) {
            return Arc::clone(n);
        }
        let n: Arc<str> = Arc::from(policy);
        names.insert(Arc::clone(&n));
        n
    }

    fn label(&self, policy: &str) -> PolicyLabel {
        PolicyLabel {
            policy: self.name(policy),
        }
    }

    fn ages(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, DateTime<Utc>>> {
        self.last_rotated
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one rotation outcome; a `failed` or `error` one is also the policy's last
    /// failure.
    pub fn outcome(&self, policy: &str, outcome: &'static str) {
        if matches!(outcome, "failed" | "error") {
            self.last_failure
                .get_or_create(&self.label(policy))
                .set(Utc::now().timestamp());
        }
        self.rotations
            .get_or_create(&PolicyOutcome {
                policy: self.name(policy),
                outcome,
            })
            .inc();
    }

    /// The Prometheus text exposition format 0.0.4, which `/metrics` declares and every
    /// scraper and `promtool check metrics` read.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        openmetrics_to_text(&s)
    }
}

/// Rewrites `prometheus-client`'s OpenMetrics output as the classic text format: a counter
/// family is named by its sample (`x_total`) in `# HELP` and `# TYPE`, where OpenMetrics uses
/// the bare family name (so a classic parser found no HELP for `x_total`); `# UNIT` and
/// `# EOF` do not exist there, and `unknown` is spelled `untyped`.
pub(crate) fn openmetrics_to_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                };
                let tail = if prefix == "# TYPE " && tail == "unknown" {
                    "untyped"
                } else {
                    tail
                };
                out.push_str(prefix);
                out.push_str(&name);
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Sets `keyturn_rotation_started_timestamp_seconds` back to 0 when dropped.
#[derive(Debug)]
pub struct InFlightGuard(Gauge);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.set(0);
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
    last_rotated: Arc<Mutex<HashMap<Arc<str>, DateTime<Utc>>>>,
    audit: Option<Arc<AuditLog>>,
    source: Arc<SourceStats>,
}

/// `{kind}` of a RotationPolicy watch failure.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = Utc::now();
        let ages: Vec<(Arc<str>, f64)> = self
            .last_rotated
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(p, t)| (Arc::clone(p), (now - *t).num_milliseconds() as f64 / 1000.0))
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
        let started: i64 = m.in_flight_since.get_or_create(&m.label("api")).get();
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
        assert!(
            m.last_failure.get_or_create(&m.label("api")).get() >= before,
            "{text}"
        );
        m.forget("api");
        let text = m.encode();
        assert!(!text.contains(r#"policy="api""#), "{text}");
    }

    #[test]
    fn a_resumed_rotation_that_succeeds_clears_the_failure_it_started_before() {
        let m = Metrics::new(None);
        m.register_policy(&policy("api", "every: 24h"));
        let l = m.label("api");
        // The resumed order: an attempt fails and ends at t=100; the retry resumes the
        // rotation that started at t=50 and succeeds, which dates the success from t=50.
        m.outcome("api", "failed");
        m.last_failure.get_or_create(&l).set(100);
        m.succeeded("api", DateTime::from_timestamp(50, 0).unwrap());
        let failure = m.last_failure.get_or_create(&l).get();
        let success = m.last_success.get_or_create(&l).get();
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
        assert!(m.last_failure.get_or_create(&l).get() >= before);
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
}

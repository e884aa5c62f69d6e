//! RotationPolicy status and Events: what the daemon tells Kubernetes about each policy it
//! rotates, so `kubectl get rotationpolicies` (the Ready, Reason, Last rotation and Next
//! rotation columns) and `kubectl describe rotationpolicy` (its Events) answer "is this
//! credential rotating, and if not, why" without reading the daemon's logs.
//!
//! The daemon hands facts to a [`StatusReporter`] (cheap to clone; its methods never wait):
//! a rotation started, finished or failed, a policy was scheduled or rejected, a value was
//! distributed, restarts were requested, break-glass was used. A background task turns them
//! into writes:
//!
//! - **Status** through the `status` subresource (a JSON merge patch of `.status` on
//!   `…/rotationpolicies/NAME/status`, field manager [`FIELD_MANAGER`]): `observedGeneration`,
//!   `lastRotation` {time, rotationId, outcome}, `nextRotation`, `consecutiveFailures` and the
//!   conditions below. Conditions of other types (written by someone else) are kept. Times
//!   are whole seconds, as metav1 times are.
//! - **Events** (events.k8s.io/v1) on the RotationPolicy object through kube-runtime's
//!   `Recorder`, reporting controller [`CONTROLLER`], which folds a repeat of the same
//!   (type, reason, action, object) within 6 minutes into a series, as client-go's recorder
//!   does: the series keeps the first note.
//!
//! | condition | status | reason | when |
//! |---|---|---|---|
//! | `Ready` | True | `Rotated` | the last rotation succeeded and none failed since |
//! | `Ready` | True | `Scheduled` | valid and scheduled, no rotation recorded yet |
//! | `Ready` | False | `InvalidSpec` | the spec is invalid ([`RejectReason::InvalidSpec`]) |
//! | `Ready` | False | `NameConflict` | another policy has its name ([`RejectReason::NameConflict`]) |
//! | `Ready` | False | `StoreConflict` | another policy writes its store path ([`RejectReason::StoreConflict`]) |
//! | `Ready` | False | `RotationFailed` | the last attempts failed (the message says why) |
//! | `Degraded` | True | `RotationFailing` | `consecutiveFailures` > 0 |
//! | `Degraded` | False | `Healthy` | no failure since the last success |
//! | `Rotating` | True | `InProgress` | a rotation is in flight in this daemon |
//! | `Rotating` | False | `Idle` | none is |
//!
//! | Event reason | type | fact |
//! |---|---|---|
//! | `Rotated` | Normal | [`StatusReporter::rotated`] |
//! | `RotationFailed` | Warning | [`StatusReporter::failed`] |
//! | `Distributed` | Normal | [`StatusReporter::distributed`] |
//! | `RestartRequested` | Normal | [`StatusReporter::restart_requested`] |
//! | `BreakGlass` | Warning | [`StatusReporter::break_glass`] |
//!
//! `lastTransitionTime` changes only when a condition's status changes (metav1 conventions),
//! compared with what the API server holds, so a restarted daemon keeps the times it wrote.
//!
//! **Coalescing.** Each policy has one entry: facts update its wanted state (the latest fact
//! wins, field by field) and queue it once; at most one write per policy is in flight, a
//! bounded number ([`StatusSettings::concurrency`]) overall, so 100k policies whose facts
//! arrive faster than the API server answers cost 100k entries, never a backlog of stale
//! writes. The first write of a policy reads the object (its uid, for Events, and its status,
//! for the transition times); a write whose status
//! would not change is skipped (`keyturn_status_writes_total{outcome="unchanged"}`).
//!
//! **Failures.** A write that fails for want of an answer (throttling, a server error, no
//! connection, no answer within [`StatusSettings::request_timeout`]) is retried under capped
//! exponential backoff with jitter, per policy, and all writes pause while the API server is
//! failing ([`StatusSettings::retry_base`] to [`StatusSettings::retry_max`]): never a tight
//! loop. A conflict re-reads the object and is tried again at most [`MAX_CONFLICTS`] times; a
//! 404 (the object was deleted) drops the policy's entry and is never retried; a refusal
//! (403, 422) waits for the next fact. An Event the API server did not answer is kept for
//! the policy's retry (the same backoff and pause; at most
//! [`StatusSettings::events_per_policy`] kept, the oldest dropped first), so it may be
//! recorded twice if an unanswered attempt did land; one refused is counted and logged, not
//! retried. Failures are logged at warn when their kind changes, else at debug; never with a
//! request body.
//!
//! **Fencing.** Every write (status patch, Event) first asks the [`WriteFence`] the daemon
//! supplies: a replica that lost its membership Lease (or does not own the policy) must not
//! write. A refused write is dropped, counted (`outcome="fenced"`) and logged at debug; the
//! next fact, once the fence opens again, writes the whole wanted state.
//!
//! Notes and messages carry rotation ids, times, counts, object names and the daemon's error
//! messages, which never hold a secret value; nothing here reads one.
//!
//! RBAC the daemon needs for this: `get` on `rotationpolicies`, `patch` on
//! `rotationpolicies/status` (group [`crate::policy::crd::GROUP`]), and `create`, `patch` on
//! `events` in `events.k8s.io`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Timelike as _, Utc};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::kube_request::KubeRequestError;
use crate::policy::crd::{self, Condition, ConditionStatus, LastRotation, RotationPolicyStatus};
use crate::policy::kube_source::RejectReason;

/// The `reportingController` of every Event.
pub const CONTROLLER: &str = "keyturn-daemon";

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "keyturn-daemon";

/// How many conflicts in a row a policy's write survives before it waits for the next fact.
pub const MAX_CONFLICTS: u32 = 3;

/// The longest Event note the Events API accepts (1 kB).
const MAX_NOTE: usize = 1024;

/// The longest condition message metav1 allows.
const MAX_MESSAGE: usize = 32 * 1024;

/// Condition types.
pub mod condition {
    /// Valid and rotating on schedule.
    pub const READY: &str = "Ready";
    /// A rotation is in flight.
    pub const ROTATING: &str = "Rotating";
    /// Rotations are failing.
    pub const DEGRADED: &str = "Degraded";
}

/// Condition reasons (see the module's table).
pub mod reason {
    /// Ready True: the last rotation succeeded.
    pub const ROTATED: &str = "Rotated";
    /// Ready True: scheduled, no rotation recorded yet.
    pub const SCHEDULED: &str = "Scheduled";
    // Ready False for an object that yields no policy: `RejectReason::as_str`.
    /// Ready False: the last attempts failed.
    pub const ROTATION_FAILED: &str = "RotationFailed";
    /// Degraded True.
    pub const ROTATION_FAILING: &str = "RotationFailing";
    /// Degraded False.
    pub const HEALTHY: &str = "Healthy";
    /// Rotating True.
    pub const IN_PROGRESS: &str = "InProgress";
    /// Rotating False.
    pub const IDLE: &str = "Idle";
}

/// Event reasons (see the module's table).
pub mod event_reason {
    /// Normal: a rotation finished.
    pub const ROTATED: &str = "Rotated";
    /// Warning: a rotation attempt failed.
    pub const ROTATION_FAILED: &str = "RotationFailed";
    /// Normal: the new value was delivered.
    pub const DISTRIBUTED: &str = "Distributed";
    /// Normal: workload restarts were requested.
    pub const RESTART_REQUESTED: &str = "RestartRequested";
    /// Warning: break-glass was used on the policy.
    pub const BREAK_GLASS: &str = "BreakGlass";
}

/// `lastRotation.outcome` of a success and of a failure, as `keyturn_rotations_total`'s
/// `outcome` label says them.
const OUTCOME_ROTATED: &str = "rotated";
const OUTCOME_FAILED: &str = "failed";

/// The RotationPolicy object a fact is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The `metadata.generation` of the spec the daemon acted on (`observedGeneration`).
    pub generation: i64,
    /// Its `metadata.uid`, when the daemon knows it (saves a read before the first Event;
    /// a different uid than the API server's means the object was replaced, and facts about
    /// the old one are dropped).
    pub uid: Option<String>,
}

impl PolicyRef {
    /// `namespace/name` at `generation`, uid unknown.
    #[must_use]
    pub fn new(namespace: &str, name: &str, generation: i64) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            generation,
            uid: None,
        }
    }

    /// With its uid.
    #[must_use]
    pub fn with_uid(mut self, uid: &str) -> Self {
        self.uid = Some(uid.to_owned());
        self
    }

    fn key(&self) -> Key {
        (self.namespace.clone(), self.name.clone())
    }
}

/// Whether this replica may write to Kubernetes about a policy now; asked before every
/// write. The daemon's answer is its membership fence (and, when it shares policies, whether
/// it owns this one). Any `Fn(&str, &str) -> bool` (namespace, name) is one.
pub trait WriteFence: Send + Sync {
    /// `true`: the write may go out.
    fn permits(&self, namespace: &str, name: &str) -> bool;
}

impl<F> WriteFence for F
where
    F: Fn(&str, &str) -> bool + Send + Sync,
{
    fn permits(&self, namespace: &str, name: &str) -> bool {
        self(namespace, name)
    }
}

/// How the reporter writes.
#[derive(Debug, Clone)]
pub struct StatusSettings {
    /// The RotationPolicy API group ([`crd::GROUP`]; tests on a shared cluster use their own).
    pub group: String,
    /// The Events' `reportingInstance`: this replica (its pod name).
    pub instance: String,
    /// Policies whose writes may be in flight at once.
    pub concurrency: usize,
    /// The first retry's delay after a failed write; doubles per failure.
    pub retry_base: Duration,
    /// The longest delay between retries (per policy, and of the pause of all writes while
    /// the API server is failing).
    pub retry_max: Duration,
    /// Events waiting per policy at most; older ones are dropped (counted) past that.
    pub events_per_policy: usize,
    /// The longest one request may take; past it the request counts as unanswered
    /// (`unreachable`) and is retried under backoff. kube's client sets no read timeout, and
    /// [`Self::concurrency`] hung requests would otherwise stop every write for good.
    pub request_timeout: Duration,
}

impl StatusSettings {
    /// Defaults for replica `instance`: 4 writes at once, retries from 1 s up to 5 min, 8
    /// Events waiting per policy.
    #[must_use]
    pub fn new(instance: &str) -> Self {
        Self {
            group: crd::GROUP.to_owned(),
            instance: instance.to_owned(),
            concurrency: 4,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            events_per_policy: 8,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// `{outcome}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// See [`StatusMetrics`].
    pub outcome: String,
}

/// `{reason, outcome}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventOutcome {
    /// The Event's reason.
    pub reason: String,
    /// `ok`, `fenced`, `retry`, `failed`, `dropped`.
    pub outcome: String,
}

/// How a sent request (a status write or a read) ended.
const SENT_OUTCOMES: [&str; 9] = [
    "ok",
    "not-found",
    "conflict",
    "forbidden",
    "invalid",
    "throttled",
    "server-error",
    "error",
    "unreachable",
];

/// Status writes that were not sent.
const UNSENT_OUTCOMES: [&str; 2] = ["unchanged", "fenced"];

/// The reporter's metrics; [`Self::register`] adds them to the daemon's registry.
#[derive(Debug, Clone, Default)]
pub struct StatusMetrics {
    /// `keyturn_status_writes_total{outcome}`: status writes by outcome. `ok`, `not-found`,
    /// `conflict`, `forbidden`, `invalid`, `throttled`, `server-error`, `error`,
    /// `unreachable` were sent; `unchanged` (nothing to write) and `fenced` (refused by the
    /// fence) were not.
    pub writes: Family<OutcomeLabel, Counter>,
    /// `keyturn_status_reads_total{outcome}`: reads of an object before its first write.
    pub reads: Family<OutcomeLabel, Counter>,
    /// `keyturn_status_events_total{reason,outcome}`: Events `ok` (recorded), `fenced`,
    /// `retry` (unanswered, kept to be sent again), `failed` (refused, not sent again),
    /// `dropped` (queue full or object gone).
    pub events: Family<EventOutcome, Counter>,
    /// `keyturn_status_pending`: policies with a write queued, in flight or waiting to retry.
    pub pending: Gauge,
}

impl StatusMetrics {
    /// Registers every metric in `registry`, each outcome series starting at 0.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "keyturn_status_writes",
            "RotationPolicy status writes by outcome (unchanged and fenced ones are not sent)",
            self.writes.clone(),
        );
        registry.register(
            "keyturn_status_reads",
            "Reads of a RotationPolicy before its first status write, by outcome",
            self.reads.clone(),
        );
        registry.register(
            "keyturn_status_events",
            "Kubernetes Events about RotationPolicies by reason and outcome",
            self.events.clone(),
        );
        registry.register(
            "keyturn_status_pending",
            "RotationPolicies with a status write queued, in flight or waiting to retry",
            self.pending.clone(),
        );
        for outcome in SENT_OUTCOMES {
            let _ = self.writes.get_or_create(&label(outcome));
            let _ = self.reads.get_or_create(&label(outcome));
        }
        for outcome in UNSENT_OUTCOMES {
            let _ = self.writes.get_or_create(&label(outcome));
        }
    }

    fn write(&self, outcome: &str) {
        self.writes.get_or_create(&label(outcome)).inc();
    }

    fn read(&self, outcome: &str) {
        self.reads.get_or_create(&label(outcome)).inc();
    }

    fn event(&self, reason: &str, outcome: &str) {
        self.events
            .get_or_create(&EventOutcome {
                reason: reason.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

fn label(outcome: &str) -> OutcomeLabel {
    OutcomeLabel {
        outcome: outcome.to_owned(),
    }
}

/// (namespace, name).
type Key = (String, String);

/// What the facts say, field by field; `None`: no fact yet, the API server's value stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Facts {
    generation: Option<i64>,
    last_rotation: Option<Option<LastRotation>>,
    next_rotation: Option<Option<DateTime<Utc>>>,
    failures: Option<u32>,
    /// Why the last attempt failed (with `failures` > 0).
    failure: Option<String>,
    rejection: Option<Option<(RejectReason, String)>>,
    /// The rotation in flight (`Some(None)`: none).
    rotating: Option<Option<String>>,
}

impl Facts {
    /// Whether any fact bears on the status (Event-only facts do not).
    fn any(&self) -> bool {
        *self != Self::default()
    }

    /// Takes `generation`; `false` for a spec fact older than one already seen (a stale
    /// rejection must not undo a newer scheduling).
    fn spec_generation(&mut self, generation: i64) -> bool {
        if self.generation.is_some_and(|g| g > generation) {
            return false;
        }
        self.generation = Some(generation);
        true
    }

    fn generation(&mut self, generation: i64) {
        self.generation = Some(self.generation.map_or(generation, |g| g.max(generation)));
    }
}

/// What the API server holds for a policy, as of the last read or write.
#[derive(Debug, Clone, Default)]
struct Known {
    uid: Option<String>,
    status: Option<RotationPolicyStatus>,
}

impl Known {
    fn of(obj: &DynamicObject) -> Self {
        Self {
            uid: obj.metadata.uid.clone(),
            status: obj
                .data
                .get("status")
                .and_then(|s| serde_json::from_value(s.clone()).ok()),
        }
    }
}

/// An Event waiting to be recorded.
#[derive(Debug, Clone)]
struct PendingEvent {
    warning: bool,
    reason: &'static str,
    action: &'static str,
    note: String,
}

#[derive(Debug, Default)]
struct Entry {
    facts: Facts,
    /// `None`: not read yet (or to be read again after a conflict).
    known: Option<Known>,
    uid_hint: Option<String>,
    events: VecDeque<PendingEvent>,
    /// Facts or Events not yet written.
    dirty: bool,
    /// In the ready queue or waiting to retry.
    queued: bool,
    in_flight: bool,
    forgotten: bool,
    /// Failed attempts in a row, for the backoff.
    attempt: u32,
    conflicts: u32,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Key, Entry>,
    ready: VecDeque<Key>,
    /// Retries by due time (with a sequence number for equal times).
    delayed: BTreeMap<(Instant, u64), Key>,
    seq: u64,
    running: usize,
    /// No reporter handle is left: finish what is ready, then stop.
    closed: bool,
    /// Every write waits until then (the API server is failing).
    hold_until: Option<Instant>,
    /// Unanswered writes in a row, across policies.
    outages: u32,
    /// The kind of the last failure logged at warn.
    last_failure: Option<String>,
}

impl State {
    fn busy(&self) -> usize {
        self.ready.len() + self.delayed.len() + self.running
    }
}

struct Inner {
    client: kube::Client,
    resource: ApiResource,
    settings: StatusSettings,
    fence: Arc<dyn WriteFence>,
    metrics: StatusMetrics,
    recorder: Recorder,
    state: Mutex<State>,
    wake: Notify,
    idle: watch::Sender<bool>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes whether anything is left to do (under the state lock).
    fn publish(&self, st: &State) {
        let busy = st.busy();
        self.metrics
            .pending
            .set(i64::try_from(busy).unwrap_or(i64::MAX));
        self.idle.send_if_modified(|idle| {
            let now = busy == 0;
            std::mem::replace(idle, now) != now
        });
    }

    fn api(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &self.resource)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        backoff(
            self.settings.retry_base,
            self.settings.retry_max,
            attempt,
            rand::random::<f64>(),
        )
    }

    /// Logs a failure at warn when its kind differs from the last one's, else at debug.
    fn log_failure(&self, key: &Key, what: &str, e: &KubeRequestError) {
        let kind = format!(
            "{what}: {}",
            e.code()
                .map_or_else(|| "no answer".to_owned(), |c| c.to_string())
        );
        let changed = {
            let mut st = self.state();
            if st.last_failure.as_deref() == Some(kind.as_str()) {
                false
            } else {
                st.last_failure = Some(kind);
                true
            }
        };
        if changed {
            tracing::warn!(namespace = %key.0, name = %key.1, error = %e, "{what} failed (further failures of this kind are logged at debug)");
        } else {
            tracing::debug!(namespace = %key.0, name = %key.1, error = %e, "{what} failed");
        }
    }

    fn recovered(&self) {
        let was = self.state().last_failure.take();
        if was.is_some() {
            tracing::info!("RotationPolicy status writes work again");
        }
    }
}

/// Reports RotationPolicy status and Events from the daemon's facts; see the module docs.
/// Cheap to clone; the background task stops once every clone is dropped and what was ready
/// is written.
#[derive(Clone)]
pub struct StatusReporter {
    inner: Arc<Inner>,
    _handle: Arc<Handle>,
}

impl std::fmt::Debug for StatusReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusReporter")
            .field("group", &self.inner.settings.group)
            .field("instance", &self.inner.settings.instance)
            .finish_non_exhaustive()
    }
}

/// Closes the reporter when the last [`StatusReporter`] clone goes.
struct Handle(Arc<Inner>);

impl Drop for Handle {
    fn drop(&mut self) {
        let inner = &self.0;
        inner.state().closed = true;
        inner.wake.notify_one();
    }
}

impl StatusReporter {
    /// A reporter writing through `client` (which needs the RBAC in the module docs), asking
    /// `fence` before every write, counting in `metrics`; and its background task.
    #[must_use]
    pub fn spawn(
        client: kube::Client,
        settings: StatusSettings,
        fence: Arc<dyn WriteFence>,
        metrics: StatusMetrics,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let gvk = GroupVersionKind::gvk(&settings.group, crd::VERSION, crate::policy::KIND);
        let resource = ApiResource::from_gvk_with_plural(&gvk, crd::PLURAL);
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: CONTROLLER.to_owned(),
                instance: Some(settings.instance.clone()),
            },
        );
        let inner = Arc::new(Inner {
            client,
            resource,
            settings,
            fence,
            metrics,
            recorder,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            idle: watch::channel(true).0,
        });
        let task = tokio::spawn(run(Arc::clone(&inner)));
        let handle = Arc::new(Handle(Arc::clone(&inner)));
        (
            Self {
                inner,
                _handle: handle,
            },
            task,
        )
    }

    /// The reporter's metrics.
    #[must_use]
    pub fn metrics(&self) -> &StatusMetrics {
        &self.inner.metrics
    }

    /// Resolves once nothing is queued, in flight or waiting to retry (tests, and a graceful
    /// shutdown that wants the last status out).
    pub async fn settled(&self) {
        let mut rx = self.inner.idle.subscribe();
        let _ = rx.wait_for(|idle| *idle).await;
    }

    /// A rotation of `obj` started (Rotating True).
    pub fn rotation_started(&self, obj: &PolicyRef, rotation_id: &str) {
        self.note(obj, None, |f| {
            f.generation(obj.generation);
            f.rotating = Some(Some(rotation_id.to_owned()));
        });
    }

    /// A rotation of `obj` finished: Ready True `Rotated`, the failures cleared, `lastRotation`
    /// and `nextRotation` set, and a `Rotated` Event.
    pub fn rotated(
        &self,
        obj: &PolicyRef,
        rotation_id: &str,
        started: DateTime<Utc>,
        finished: DateTime<Utc>,
        next_rotation: Option<DateTime<Utc>>,
    ) {
        let took = (finished - started)
            .to_std()
            .map(|d| Duration::from_secs(d.as_secs()))
            .unwrap_or_default();
        let note = format!(
            "rotation {rotation_id} finished in {}; {}",
            humantime::format_duration(took),
            next_note(next_rotation)
        );
        let event = PendingEvent {
            warning: false,
            reason: event_reason::ROTATED,
            action: "Rotate",
            note,
        };
        self.note(obj, Some(event), |f| {
            f.generation(obj.generation);
            f.last_rotation = Some(Some(LastRotation {
                time: whole_seconds(finished),
                rotation_id: rotation_id.to_owned(),
                outcome: OUTCOME_ROTATED.to_owned(),
            }));
            f.next_rotation = Some(next_rotation.map(whole_seconds));
            f.failures = Some(0);
            f.failure = None;
            f.rejection = Some(None);
            f.rotating = Some(None);
        });
    }

    /// An attempt at `obj` failed, the `consecutive_failures`-th in a row, for `message` (an
    /// error's text, which never holds a secret value); the next attempt is at `next_retry`.
    /// Ready False `RotationFailed`, Degraded True, a `RotationFailed` Event; with a
    /// `rotation_id`, also `lastRotation` with outcome `failed`.
    pub fn failed(
        &self,
        obj: &PolicyRef,
        rotation_id: Option<&str>,
        consecutive_failures: u32,
        message: &str,
        next_retry: Option<DateTime<Utc>>,
    ) {
        let failures = consecutive_failures.max(1);
        let now = whole_seconds(Utc::now());
        let note = format!(
            "rotation {} failed ({failures} in a row): {message}; {}",
            rotation_id.unwrap_or("attempt"),
            next_note(next_retry)
        );
        let event = PendingEvent {
            warning: true,
            reason: event_reason::ROTATION_FAILED,
            action: "Rotate",
            note,
        };
        self.note(obj, Some(event), |f| {
            f.generation(obj.generation);
            if let Some(id) = rotation_id {
                f.last_rotation = Some(Some(LastRotation {
                    time: now,
                    rotation_id: id.to_owned(),
                    outcome: OUTCOME_FAILED.to_owned(),
                }));
            }
            f.next_rotation = Some(next_retry.map(whole_seconds));
            f.failures = Some(failures);
            f.failure = Some(truncate(message, MAX_MESSAGE).to_owned());
            f.rejection = Some(None);
            f.rotating = Some(None);
        });
    }

    /// `obj` (at its generation) is valid and its next rotation is at `next_rotation`: a
    /// rejection is lifted (Ready True `Scheduled` until a rotation says more); failures
    /// stand until a rotation succeeds. Ignored for a generation older than one reported,
    /// except that a scheduled policy is not rotating: Rotating False, whatever the replica
    /// that ran its last rotation (killed, or fenced before it could report) left there.
    pub fn scheduled(&self, obj: &PolicyRef, next_rotation: DateTime<Utc>) {
        self.note(obj, None, |f| {
            f.rotating = Some(None);
            if f.spec_generation(obj.generation) {
                f.next_rotation = Some(Some(whole_seconds(next_rotation)));
                f.rejection = Some(None);
            }
        });
    }

    /// `obj` (at its generation) cannot be rotated: Ready False with the rejection's reason
    /// and `message`, no next rotation. Ignored for a generation older than one reported.
    pub fn rejected(&self, obj: &PolicyRef, rejection: RejectReason, message: &str) {
        self.note(obj, None, |f| {
            if f.spec_generation(obj.generation) {
                f.rejection = Some(Some((rejection, truncate(message, MAX_MESSAGE).to_owned())));
                f.next_rotation = Some(None);
                f.rotating = Some(None);
            }
        });
    }

    /// The new value of `obj` was delivered: a `Distributed` Event saying `summary` (which
    /// Secrets, e.g. `2 Secrets: shop/db, shop/db-ro`; never a value).
    pub fn distributed(&self, obj: &PolicyRef, summary: &str) {
        let note = format!("delivered the new value to {summary}");
        self.event(obj, false, event_reason::DISTRIBUTED, "Distribute", note);
    }

    /// Rollout restarts were requested after a delivery of `obj`: a `RestartRequested` Event
    /// saying `summary` (which workloads).
    pub fn restart_requested(&self, obj: &PolicyRef, summary: &str) {
        let note = format!("requested rollout restarts of {summary}");
        self.event(obj, false, event_reason::RESTART_REQUESTED, "Restart", note);
    }

    /// Break-glass `action` (`rotate`, `revoke`, `reveal`) was used on `obj`: a `BreakGlass`
    /// Warning Event.
    pub fn break_glass(&self, obj: &PolicyRef, action: &str) {
        let note = format!("break-glass {action} recorded in the break-glass journal");
        self.event(obj, true, event_reason::BREAK_GLASS, "BreakGlass", note);
    }

    /// An Event on `obj` that changes nothing in its status.
    fn event(
        &self,
        obj: &PolicyRef,
        warning: bool,
        reason: &'static str,
        action: &'static str,
        note: String,
    ) {
        let event = PendingEvent {
            warning,
            reason,
            action,
            note,
        };
        self.note(obj, Some(event), |_| {});
    }

    /// `obj` left the daemon's policy set: whatever is queued for it is dropped (its status
    /// is left as it is).
    pub fn forget(&self, obj: &PolicyRef) {
        let mut st = self.inner.state();
        let key = obj.key();
        let Some(entry) = st.entries.get_mut(&key) else {
            return;
        };
        if entry.in_flight || entry.queued {
            // The worker drops it when it next sees it.
            entry.forgotten = true;
            entry.dirty = false;
            entry.facts = Facts::default();
            entry.events.clear();
        } else {
            st.entries.remove(&key);
        }
    }

    /// Applies a fact to `obj`'s entry and queues the entry (once).
    fn note(&self, obj: &PolicyRef, event: Option<PendingEvent>, apply: impl FnOnce(&mut Facts)) {
        let inner = &self.inner;
        let mut st = inner.state();
        let key = obj.key();
        let entry = st.entries.entry(key.clone()).or_default();
        if entry.forgotten {
            *entry = Entry {
                in_flight: entry.in_flight,
                queued: entry.queued,
                ..Entry::default()
            };
        }
        if let Some(uid) = &obj.uid
            && entry.uid_hint.as_ref() != Some(uid)
        {
            // Another object by that name: what was known and wanted was about the old.
            if entry
                .known
                .as_ref()
                .is_some_and(|k| k.uid.as_ref() != Some(uid))
            {
                entry.known = None;
                entry.facts = Facts::default();
            }
            entry.uid_hint = Some(uid.clone());
        }
        apply(&mut entry.facts);
        if let Some(event) = event {
            if entry.events.len() >= inner.settings.events_per_policy.max(1)
                && let Some(old) = entry.events.pop_front()
            {
                inner.metrics.event(old.reason, "dropped");
            }
            entry.events.push_back(event);
        }
        entry.dirty = true;
        if !entry.queued && !entry.in_flight {
            entry.queued = true;
            st.ready.push_back(key);
        }
        inner.publish(&st);
        drop(st);
        inner.wake.notify_one();
    }
}

/// `next rotation at …` for a note.
fn next_note(next: Option<DateTime<Utc>>) -> String {
    next.map_or_else(
        || "no next rotation scheduled".to_owned(),
        |t| format!("next at {}", t.to_rfc3339_opts(SecondsFormat::Secs, true)),
    )
}

fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_nanosecond(0).unwrap_or(t)
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The delay before retry `attempt` (1-based): `base` doubled per attempt, capped at `max`,
/// then drawn from its upper half by `jitter` in [0, 1) so retries of many policies spread.
fn backoff(base: Duration, max: Duration, attempt: u32, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let full = base.saturating_mul(1u32 << exp).min(max);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// The status `facts` make of `current` (the API server's), with `now` as the transition
/// time of every condition whose status changes.
fn render(
    facts: &Facts,
    current: Option<&RotationPolicyStatus>,
    now: DateTime<Utc>,
) -> RotationPolicyStatus {
    let empty = RotationPolicyStatus::default();
    let cur = current.unwrap_or(&empty);
    let find = |t: &str| cur.conditions.iter().find(|c| c.type_ == t);
    let last_rotation = facts
        .last_rotation
        .clone()
        .unwrap_or_else(|| cur.last_rotation.clone());
    let next_rotation = facts.next_rotation.unwrap_or(cur.next_rotation);
    let failures = facts
        .failures
        .unwrap_or_else(|| cur.consecutive_failures.unwrap_or(0));
    let ready_now = find(condition::READY);
    let rejection: Option<(&str, String)> = match &facts.rejection {
        Some(r) => r.as_ref().map(|(r, m)| (r.as_str(), m.clone())),
        None => ready_now
            .filter(|c| c.status == ConditionStatus::False)
            .and_then(|c| {
                RejectReason::from_condition_reason(&c.reason)
                    .map(|r| (r.as_str(), c.message.clone()))
            }),
    };
    let failure = facts.failure.clone().or_else(|| {
        ready_now
            .filter(|c| c.reason == reason::ROTATION_FAILED)
            .map(|c| c.message.clone())
    });
    let ready = if let Some((why, message)) = rejection {
        (ConditionStatus::False, why, message)
    } else if failures > 0 {
        (
            ConditionStatus::False,
            reason::ROTATION_FAILED,
            failure
                .clone()
                .unwrap_or_else(|| "the last rotation attempts failed".to_owned()),
        )
    } else if let Some(last) = last_rotation
        .as_ref()
        .filter(|l| l.outcome == OUTCOME_ROTATED)
    {
        (
            ConditionStatus::True,
            reason::ROTATED,
            format!(
                "rotation {} finished at {}",
                last.rotation_id,
                last.time.to_rfc3339_opts(SecondsFormat::Secs, true)
            ),
        )
    } else {
        (
            ConditionStatus::True,
            reason::SCHEDULED,
            "valid and scheduled; no rotation recorded yet".to_owned(),
        )
    };
    let degraded = if failures > 0 {
        (
            ConditionStatus::True,
            reason::ROTATION_FAILING,
            format!("{failures} rotation attempts failed in a row since the last success"),
        )
    } else {
        (
            ConditionStatus::False,
            reason::HEALTHY,
            "no rotation attempt failed since the last success".to_owned(),
        )
    };
    let rotating = match &facts.rotating {
        Some(Some(id)) => (
            ConditionStatus::True,
            reason::IN_PROGRESS,
            format!("rotation {id} in progress"),
        ),
        Some(None) => idle(),
        None => find(condition::ROTATING).map_or_else(idle, |c| {
            let why = if c.status == ConditionStatus::True {
                reason::IN_PROGRESS
            } else {
                reason::IDLE
            };
            (c.status, why, c.message.clone())
        }),
    };
    let generation = facts.generation.or(cur.observed_generation);
    let mut conditions = Vec::new();
    for (type_, (status, why, message)) in [
        (condition::READY, ready),
        (condition::ROTATING, rotating),
        (condition::DEGRADED, degraded),
    ] {
        let since = find(type_)
            .filter(|c| c.status == status)
            .map_or(whole_seconds(now), |c| c.last_transition_time);
        conditions.push(Condition {
            type_: type_.to_owned(),
            status,
            observed_generation: generation,
            last_transition_time: since,
            reason: why.to_owned(),
            message: truncate(&message, MAX_MESSAGE).to_owned(),
        });
    }
    // Conditions someone else sets are theirs.
    conditions.extend(
        cur.conditions
            .iter()
            .filter(|c| {
                ![condition::READY, condition::ROTATING, condition::DEGRADED]
                    .contains(&c.type_.as_str())
            })
            .cloned(),
    );
    RotationPolicyStatus {
        observed_generation: generation,
        last_rotation,
        next_rotation,
        consecutive_failures: Some(failures),
        conditions,
    }
}

fn idle() -> (ConditionStatus, &'static str, String) {
    (
        ConditionStatus::False,
        reason::IDLE,
        "no rotation in progress".to_owned(),
    )
}

/// The merge patch that makes `.status` `status`: every field named, `null` for one unset
/// (a merge patch removes a field only when told so).
fn status_patch(status: &RotationPolicyStatus) -> Value {
    let mut body = serde_json::to_value(status).unwrap_or_else(|_| json!({}));
    if let Some(map) = body.as_object_mut() {
        for field in [
            "observedGeneration",
            "lastRotation",
            "nextRotation",
            "consecutiveFailures",
            "conditions",
        ] {
            map.entry(field).or_insert(Value::Null);
        }
    }
    json!({ "status": body })
}

/// One policy's work, taken from its entry.
#[derive(Debug)]
struct Job {
    key: Key,
    facts: Facts,
    known: Option<Known>,
    uid_hint: Option<String>,
    events: Vec<PendingEvent>,
}

/// How a job ended.
#[derive(Debug)]
enum End {
    /// Written, or nothing to write.
    Done,
    /// The object is gone (404, or replaced by another of that name).
    Gone,
    /// The fence refused.
    Fenced,
    /// Refused for a reason a retry would not change (403, 422): wait for the next fact.
    GaveUp,
    /// Try again after a backoff; `outage`: the API server did not answer properly.
    Retry { conflict: bool, outage: bool },
}

#[derive(Debug)]
struct JobResult {
    known: Option<Known>,
    end: End,
    /// Events not sent because the object could not be read (sent with the retry).
    unsent: Vec<PendingEvent>,
}

/// The outcome label of a failed request.
fn outcome(e: &KubeRequestError) -> &'static str {
    match e.code() {
        Some(403) => "forbidden",
        Some(404) => "not-found",
        Some(409) => "conflict",
        Some(400 | 422) => "invalid",
        Some(429) => "throttled",
        Some(c) if c >= 500 => "server-error",
        Some(_) => "error",
        None => "unreachable",
    }
}

/// How a failed request ends its job.
fn failure_end(e: &KubeRequestError) -> End {
    match e.code() {
        Some(404) => End::Gone,
        Some(409) => End::Retry {
            conflict: true,
            outage: false,
        },
        _ if e.is_retryable() => End::Retry {
            conflict: false,
            outage: true,
        },
        _ => End::GaveUp,
    }
}

/// `request`, or a transport error once `timeout` has passed without an answer.
async fn bounded<T>(
    timeout: Duration,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    tokio::time::timeout(timeout, request)
        .await
        .unwrap_or_else(|elapsed| Err(kube::Error::Service(Box::new(elapsed))))
}

async fn run_job(inner: Arc<Inner>, job: Job) -> JobResult {
    let Job {
        key,
        facts,
        mut known,
        uid_hint,
        events,
    } = job;
    let (namespace, name) = (&key.0, &key.1);
    let object = format!("rotationpolicies {name:?} in namespace {namespace:?}");
    let api = inner.api(namespace);
    let wants_status = facts.any();
    if known.is_none() && (wants_status || uid_hint.is_none()) {
        match bounded(inner.settings.request_timeout, api.get(name)).await {
            Ok(obj) => {
                inner.metrics.read("ok");
                known = Some(Known::of(&obj));
            }
            Err(e) => {
                let e = KubeRequestError::new(e, "get", &object);
                inner.metrics.read(outcome(&e));
                let end = failure_end(&e);
                if matches!(end, End::Gone) {
                    tracing::debug!(%namespace, %name, "RotationPolicy gone: its status and Events are dropped");
                    drop_events(&inner, &events);
                    return JobResult {
                        known: None,
                        end,
                        unsent: Vec::new(),
                    };
                }
                inner.log_failure(&key, "reading a RotationPolicy", &e);
                return JobResult {
                    known: None,
                    end,
                    unsent: events,
                };
            }
        }
    }
    let known_uid = known.as_ref().and_then(|k| k.uid.clone());
    if let (Some(hint), Some(uid)) = (&uid_hint, &known_uid)
        && hint != uid
    {
        tracing::debug!(%namespace, %name, "RotationPolicy replaced by another of that name: facts about the old one dropped");
        drop_events(&inner, &events);
        return JobResult {
            known,
            end: End::Gone,
            unsent: Vec::new(),
        };
    }
    // The uid for the Events' reference, kept when a conflict makes the status unknown.
    let mut uid = known_uid.or_else(|| uid_hint.clone());
    let mut end = End::Done;
    if wants_status {
        let current = known.as_ref().and_then(|k| k.status.clone());
        let wanted = render(&facts, current.as_ref(), Utc::now());
        if current.as_ref() == Some(&wanted) {
            inner.metrics.write("unchanged");
        } else if !inner.fence.permits(namespace, name) {
            inner.metrics.write("fenced");
            for e in &events {
                inner.metrics.event(e.reason, "fenced");
            }
            tracing::debug!(%namespace, %name, "fenced: RotationPolicy status and Events not written");
            return JobResult {
                known,
                end: End::Fenced,
                unsent: Vec::new(),
            };
        } else {
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            };
            let patch = Patch::Merge(status_patch(&wanted));
            match bounded(
                inner.settings.request_timeout,
                api.patch_status(name, &params, &patch),
            )
            .await
            {
                Ok(obj) => {
                    inner.metrics.write("ok");
                    inner.recovered();
                    known = Some(Known::of(&obj));
                    uid = known.as_ref().and_then(|k| k.uid.clone()).or(uid);
                }
                Err(e) => {
                    let e = KubeRequestError::new(e, "patch", &format!("{object} (status)"));
                    inner.metrics.write(outcome(&e));
                    end = failure_end(&e);
                    match end {
                        End::Gone => {
                            tracing::debug!(%namespace, %name, "RotationPolicy gone: its status and Events are dropped");
                            drop_events(&inner, &events);
                            return JobResult {
                                known: None,
                                end,
                                unsent: Vec::new(),
                            };
                        }
                        End::Retry { conflict: true, .. } => {
                            tracing::debug!(%namespace, %name, "RotationPolicy status write conflicted: reading it again");
                            known = None;
                        }
                        _ => inner.log_failure(&key, "writing a RotationPolicy's status", &e),
                    }
                }
            }
        }
    }
    let reference = ObjectReference {
        api_version: Some(inner.resource.api_version.clone()),
        kind: Some(inner.resource.kind.clone()),
        name: Some(name.clone()),
        namespace: Some(namespace.clone()),
        uid,
        ..ObjectReference::default()
    };
    let mut unsent = Vec::new();
    let mut events = events.into_iter();
    while let Some(pending) = events.next() {
        if !inner.fence.permits(namespace, name) {
            inner.metrics.event(pending.reason, "fenced");
            tracing::debug!(%namespace, %name, reason = pending.reason, "fenced: Event not recorded");
            continue;
        }
        let event = Event {
            type_: if pending.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: pending.reason.to_owned(),
            note: Some(truncate(&pending.note, MAX_NOTE).to_owned()),
            action: pending.action.to_owned(),
            secondary: None,
        };
        let published = inner.recorder.publish(&event, &reference);
        match bounded(inner.settings.request_timeout, published).await {
            Ok(()) => inner.metrics.event(pending.reason, "ok"),
            Err(e) => {
                let e = KubeRequestError::new(e, "create", &format!("events for {object}"));
                inner.log_failure(&key, "recording an Event", &e);
                if event_unanswered(&e) {
                    // Kept, with the ones after it, for the policy's retry: the same backoff
                    // and pause as a status write, and at most `events_per_policy` kept.
                    inner.metrics.event(pending.reason, "retry");
                    unsent.push(pending);
                    unsent.extend(events);
                    end = End::Retry {
                        conflict: matches!(end, End::Retry { conflict: true, .. }),
                        outage: true,
                    };
                    break;
                }
                inner.metrics.event(pending.reason, "failed");
            }
        }
    }
    JobResult { known, end, unsent }
}

/// Whether an Event the API server did not record is worth sending again: it did not answer
/// (throttling, a server error, no connection, no answer in time). A refusal (403, 422, or a
/// 409 for a name already taken) would be refused again, and a 404 means the namespace or the
/// series' Event is gone.
fn event_unanswered(e: &KubeRequestError) -> bool {
    e.is_retryable() && e.code() != Some(409)
}

fn drop_events(inner: &Inner, events: &[PendingEvent]) {
    for e in events {
        inner.metrics.event(e.reason, "dropped");
    }
}

/// The background task: starts ready jobs (up to the concurrency, none while writes are
/// held), moves due retries to the ready queue, and files each job's end.
async fn run(inner: Arc<Inner>) {
    let mut jobs: JoinSet<JobResult> = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, Key> = HashMap::new();
    loop {
        let next_wake = {
            let mut st = inner.state();
            let now = Instant::now();
            while let Some((&(at, seq), _)) = st.delayed.first_key_value() {
                if at > now {
                    break;
                }
                if let Some(key) = st.delayed.remove(&(at, seq)) {
                    st.ready.push_back(key);
                }
            }
            let held = st.hold_until.filter(|h| *h > now);
            if held.is_none() {
                while st.running < inner.settings.concurrency.max(1) {
                    let Some(key) = st.ready.pop_front() else {
                        break;
                    };
                    let Some(entry) = st.entries.get_mut(&key) else {
                        continue;
                    };
                    entry.queued = false;
                    if entry.forgotten {
                        if !entry.in_flight {
                            st.entries.remove(&key);
                        }
                        continue;
                    }
                    if entry.in_flight || !entry.dirty {
                        continue;
                    }
                    entry.in_flight = true;
                    entry.dirty = false;
                    let job = Job {
                        key: key.clone(),
                        facts: entry.facts.clone(),
                        known: entry.known.clone(),
                        uid_hint: entry.uid_hint.clone(),
                        events: entry.events.drain(..).collect(),
                    };
                    st.running += 1;
                    let id = jobs.spawn(run_job(Arc::clone(&inner), job)).id();
                    running.insert(id, key);
                }
            }
            inner.publish(&st);
            if st.closed && st.running == 0 && (st.ready.is_empty() || held.is_some()) {
                break;
            }
            // While held, nothing starts before the hold ends, retries included.
            held.or_else(|| st.delayed.first_key_value().map(|(&(at, _), _)| at))
        };
        tokio::select! {
            () = inner.wake.notified() => {}
            Some(done) = jobs.join_next_with_id(), if !jobs.is_empty() => {
                let (id, result) = match done {
                    Ok((id, result)) => (id, Some(result)),
                    Err(e) => (e.id(), None),
                };
                let key = running.remove(&id);
                finish(&inner, key, result);
            }
            () = sleep_until(next_wake), if next_wake.is_some() => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Files a job's end in its entry: the new knowledge, a retry, or the entry's removal.
fn finish(inner: &Inner, key: Option<Key>, result: Option<JobResult>) {
    let mut st = inner.state();
    st.running = st.running.saturating_sub(1);
    let Some(key) = key else {
        inner.publish(&st);
        return;
    };
    let now = Instant::now();
    // Whether the API server failed to answer (`Some(true)`) or answered (`Some(false)`).
    let outage = match result.as_ref().map(|r| &r.end) {
        Some(End::Retry { outage: true, .. }) => Some(true),
        Some(End::Fenced) | None => None,
        Some(_) => Some(false),
    };
    let retry_in = {
        let Some(entry) = st.entries.get_mut(&key) else {
            inner.publish(&st);
            return;
        };
        entry.in_flight = false;
        let Some(result) = result else {
            // The job panicked: what it held is lost; the next fact writes the whole state.
            tracing::warn!(namespace = %key.0, name = %key.1, "RotationPolicy status job failed");
            entry.known = None;
            inner.publish(&st);
            return;
        };
        for e in result.unsent.into_iter().rev() {
            entry.events.push_front(e);
        }
        while entry.events.len() > inner.settings.events_per_policy.max(1) {
            if let Some(old) = entry.events.pop_front() {
                inner.metrics.event(old.reason, "dropped");
            }
        }
        let mut retry_in = None;
        match result.end {
            End::Done | End::Fenced | End::GaveUp => {
                entry.known = result.known;
                entry.attempt = 0;
                entry.conflicts = 0;
            }
            End::Gone => {
                entry.known = None;
                entry.attempt = 0;
                entry.conflicts = 0;
                // Facts that came in meanwhile get one read of their own (which finds the
                // object gone again, or a new one by that name).
                if !entry.dirty {
                    entry.forgotten = true;
                }
            }
            End::Retry { conflict, .. } => {
                entry.known = result.known;
                if conflict {
                    entry.conflicts += 1;
                }
                if conflict && entry.conflicts > MAX_CONFLICTS {
                    tracing::debug!(namespace = %key.0, name = %key.1, "RotationPolicy status kept conflicting: waiting for the next fact");
                    entry.conflicts = 0;
                    entry.attempt = 0;
                } else {
                    entry.attempt += 1;
                    entry.dirty = true;
                    retry_in = Some(inner.backoff(entry.attempt));
                }
            }
        }
        if entry.forgotten && !entry.dirty {
            st.entries.remove(&key);
            None
        } else {
            retry_in
        }
    };
    match outage {
        Some(true) => {
            // The API server is failing: every policy's writes wait, so an outage costs a
            // request per pause, not one per policy.
            st.outages += 1;
            st.hold_until = Some(now + inner.backoff(st.outages));
        }
        Some(false) => {
            st.outages = 0;
            st.hold_until = None;
        }
        None => {}
    }
    if let Some(wait) = retry_in {
        st.seq += 1;
        let seq = st.seq;
        st.delayed.insert((now + wait, seq), key.clone());
        if let Some(entry) = st.entries.get_mut(&key) {
            entry.queued = true;
        }
    } else if let Some(entry) = st.entries.get_mut(&key)
        && entry.dirty
        && !entry.queued
    {
        entry.queued = true;
        st.ready.push_back(key);
    }
    inner.publish(&st);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(h: u32, m: u32) -> DateTime<Utc> {
        crate::schedule::utc(2025, 1, 1, h, m)
    }

    fn rotated_facts(id: &str, at: DateTime<Utc>, next: DateTime<Utc>) -> Facts {
        Facts {
            generation: Some(1),
            last_rotation: Some(Some(LastRotation {
                time: at,
                rotation_id: id.into(),
                outcome: OUTCOME_ROTATED.into(),
            })),
            next_rotation: Some(Some(next)),
            failures: Some(0),
            failure: None,
            rejection: Some(None),
            rotating: Some(None),
        }
    }

    fn cond<'a>(s: &'a RotationPolicyStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn a_transition_time_moves_only_when_its_condition_changes_status() {
        let first = render(&rotated_facts("r-1", t(1, 0), t(2, 0)), None, t(1, 0));
        assert_eq!(cond(&first, condition::READY).reason, reason::ROTATED);
        assert_eq!(cond(&first, condition::READY).last_transition_time, t(1, 0));
        // The next rotation: Ready stays True (its time stays), the message changes.
        let second = render(
            &rotated_facts("r-2", t(2, 0), t(3, 0)),
            Some(&first),
            t(2, 0),
        );
        let ready = cond(&second, condition::READY);
        assert_eq!(ready.last_transition_time, t(1, 0));
        assert!(ready.message.contains("r-2"), "{}", ready.message);
        // A failure flips Ready and Degraded (new times), Rotating stays False (old time).
        let mut failed = rotated_facts("r-2", t(2, 0), t(3, 0));
        failed.failures = Some(2);
        failed.failure = Some("target refused the new password".into());
        let third = render(&failed, Some(&second), t(3, 5));
        let ready = cond(&third, condition::READY);
        assert_eq!(
            (ready.status, ready.reason.as_str()),
            (ConditionStatus::False, reason::ROTATION_FAILED)
        );
        assert_eq!(ready.message, "target refused the new password");
        assert_eq!(ready.last_transition_time, t(3, 5));
        let degraded = cond(&third, condition::DEGRADED);
        assert_eq!(
            (degraded.status, degraded.reason.as_str()),
            (ConditionStatus::True, reason::ROTATION_FAILING)
        );
        assert_eq!(degraded.last_transition_time, t(3, 5));
        assert_eq!(
            cond(&third, condition::ROTATING).last_transition_time,
            t(1, 0)
        );
        assert_eq!(third.consecutive_failures, Some(2));
        // The same facts again make the same status: nothing to write.
        assert_eq!(render(&failed, Some(&third), t(4, 0)), third);
    }

    #[test]
    fn unknown_fields_keep_the_servers_values_and_a_rejection_wins_over_everything() {
        let server = render(&rotated_facts("r-1", t(1, 0), t(2, 0)), None, t(1, 0));
        // A restarted daemon that only knows the next time keeps Rotated and lastRotation.
        let scheduled = Facts {
            generation: Some(1),
            next_rotation: Some(Some(t(5, 0))),
            rejection: Some(None),
            ..Facts::default()
        };
        let s = render(&scheduled, Some(&server), t(1, 30));
        assert_eq!(cond(&s, condition::READY).reason, reason::ROTATED);
        assert_eq!(s.last_rotation, server.last_rotation);
        assert_eq!(s.next_rotation, Some(t(5, 0)));
        // A new object: Scheduled.
        let s = render(&scheduled, None, t(1, 30));
        assert_eq!(cond(&s, condition::READY).reason, reason::SCHEDULED);
        assert_eq!(cond(&s, condition::READY).status, ConditionStatus::True);
        // Rejected at generation 2: Ready False with the reason; the next time is cleared.
        let rejected = Facts {
            generation: Some(2),
            next_rotation: Some(None),
            rejection: Some(Some((
                RejectReason::StoreConflict,
                "shares keyturn/a".into(),
            ))),
            ..Facts::default()
        };
        let s = render(&rejected, Some(&server), t(1, 30));
        let ready = cond(&s, condition::READY);
        assert_eq!(
            (ready.status, ready.reason.as_str(), ready.message.as_str()),
            (ConditionStatus::False, "StoreConflict", "shares keyturn/a")
        );
        assert_eq!(ready.observed_generation, Some(2));
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(s.next_rotation, None);
        // Read back by a restarted daemon with no facts, the rejection stands.
        let again = render(
            &Facts {
                generation: Some(2),
                ..Facts::default()
            },
            Some(&s),
            t(2, 0),
        );
        assert_eq!(again, s);
    }

    #[test]
    fn a_stale_spec_fact_does_not_undo_a_newer_one() {
        let mut f = Facts::default();
        assert!(f.spec_generation(3));
        assert!(!f.spec_generation(2));
        assert!(f.spec_generation(3));
        f.generation(1);
        assert_eq!(f.generation, Some(3));
    }

    #[test]
    fn other_controllers_conditions_are_kept() {
        let mut server = render(&rotated_facts("r-1", t(1, 0), t(2, 0)), None, t(1, 0));
        server.conditions.push(Condition {
            type_: "Synced".into(),
            status: ConditionStatus::True,
            observed_generation: None,
            last_transition_time: t(0, 1),
            reason: "GitOps".into(),
            message: "synced".into(),
        });
        let s = render(
            &rotated_facts("r-2", t(2, 0), t(3, 0)),
            Some(&server),
            t(2, 0),
        );
        assert_eq!(s.conditions.len(), 4);
        assert_eq!(cond(&s, "Synced").reason, "GitOps");
    }

    #[test]
    fn the_patch_names_every_field_and_nulls_the_unset_ones() {
        let s = RotationPolicyStatus {
            observed_generation: Some(4),
            ..RotationPolicyStatus::default()
        };
        let patch = status_patch(&s);
        assert_eq!(patch["status"]["observedGeneration"], 4);
        for field in ["lastRotation", "nextRotation", "consecutiveFailures"] {
            assert_eq!(patch["status"][field], Value::Null, "{field}");
            assert!(
                patch["status"].as_object().unwrap().contains_key(field),
                "{field}"
            );
        }
    }

    #[test]
    fn the_backoff_doubles_to_its_cap_within_its_upper_half() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(300));
        assert_eq!(backoff(base, max, 1, 0.999_999).as_secs(), 0);
        assert_eq!(backoff(base, max, 1, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(base, max, 4, 0.0), Duration::from_secs(4));
        assert_eq!(backoff(base, max, 30, 0.0), Duration::from_secs(150));
        assert_eq!(backoff(base, max, u32::MAX, 1.0), max);
        assert!(backoff(base, max, 2, 0.5) < Duration::from_secs(2));
    }

    #[test]
    fn notes_are_cut_at_a_character_and_rejections_name_their_reasons() {
        assert_eq!(truncate("ééé", 3), "é");
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(RejectReason::NameConflict.as_str(), "NameConflict");
        for r in RejectReason::ALL {
            assert_eq!(RejectReason::from_condition_reason(r.as_str()), Some(r));
        }
        assert_eq!(
            RejectReason::from_condition_reason(reason::ROTATION_FAILED),
            None
        );
    }

    #[test]
    fn metrics_start_every_outcome_at_zero() {
        let m = StatusMetrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        m.write("ok");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"keyturn_status_writes_total{outcome="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"keyturn_status_writes_total{outcome="fenced"} 0"#),
            "{text}"
        );
        assert!(text.contains("keyturn_status_pending 0"), "{text}");
    }

    #[test]
    fn any_closure_over_namespace_and_name_is_a_fence() {
        let fence: Arc<dyn WriteFence> = Arc::new(|ns: &str, _: &str| ns == "shop");
        assert!(fence.permits("shop", "a"));
        assert!(!fence.permits("other", "a"));
    }
}

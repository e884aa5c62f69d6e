//! The engine without servers: the in-memory store with scripted faults, a scripted target
//! that records its calls, and an audit sink that keeps its lines in memory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use keyturn_core::audit::{AuditLogOptions, AuditSink, Entry, HmacKey, SinkError};

use super::*;
use crate::distribute::ObjectRef;
use crate::rotation::store::memory::{Fault, FaultKind, MemoryStore, Op};
use crate::rotation::store::{Failures, Taint};

// ---- the scripted target ----------------------------------------------------------------

/// A call the target received, with the `value` field of the credentials it was given (test
/// values only, made by the generator).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Set(String),
    Test(String),
    Revert {
        current: Option<String>,
        pending: String,
    },
}

/// A target that records its calls and fails `set`, `test` or `revert` as scripted.
#[derive(Debug, Default)]
struct Scripted {
    calls: Mutex<Vec<Call>>,
    fail_set: Mutex<VecDeque<TargetError>>,
    fail_test: Mutex<VecDeque<TargetError>>,
    fail_revert: Mutex<VecDeque<TargetError>>,
}

fn refused(what: &str) -> TargetError {
    TargetError::Refused {
        target: "scripted".into(),
        what: what.into(),
    }
}

fn unreachable() -> TargetError {
    TargetError::Unreachable {
        target: "scripted".into(),
        cause: "connection refused".into(),
    }
}

fn value_of(d: &SecretData) -> String {
    d.get("value")
        .and_then(|v| v.expose_str().ok())
        .unwrap_or_default()
        .to_owned()
}

impl Scripted {
    fn failing_set(n: usize, e: impl Fn() -> TargetError) -> Self {
        let t = Self::default();
        t.fail_set.lock().unwrap().extend((0..n).map(|_| e()));
        t
    }

    fn failing_test(n: usize, e: impl Fn() -> TargetError) -> Self {
        let t = Self::default();
        t.fail_test.lock().unwrap().extend((0..n).map(|_| e()));
        t
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn count(&self, f: impl Fn(&Call) -> bool) -> usize {
        self.calls().iter().filter(|c| f(c)).count()
    }

    fn sets(&self) -> usize {
        self.count(|c| matches!(c, Call::Set(_)))
    }

    fn tests(&self) -> usize {
        self.count(|c| matches!(c, Call::Test(_)))
    }

    fn reverts(&self) -> usize {
        self.count(|c| matches!(c, Call::Revert { .. }))
    }

    fn answer(&self, call: Call, fail: &Mutex<VecDeque<TargetError>>) -> Result<(), TargetError> {
        self.calls.lock().unwrap().push(call);
        fail.lock().unwrap().pop_front().map_or(Ok(()), Err)
    }
}

#[async_trait]
impl Target for Scripted {
    fn describe(&self) -> String {
        "scripted".into()
    }

    fn compose(&self, value: SecretValue, _current: Option<&SecretData>) -> SecretData {
        let mut d = SecretData::new();
        d.insert("value", value);
        d
    }

    async fn set(&self, pending: &SecretData) -> Result<(), TargetError> {
        self.answer(Call::Set(value_of(pending)), &self.fail_set)
    }

    async fn test(&self, pending: &SecretData) -> Result<(), TargetError> {
        self.answer(Call::Test(value_of(pending)), &self.fail_test)
    }

    async fn revert(
        &self,
        current: Option<&SecretData>,
        pending: &SecretData,
    ) -> Result<(), TargetError> {
        let call = Call::Revert {
            current: current.map(value_of),
            pending: value_of(pending),
        };
        self.answer(call, &self.fail_revert)
    }
}

// ---- the scripted sink ------------------------------------------------------------------

/// A delivery sink that records the `value` it was given and fails writes as scripted.
#[derive(Debug, Default)]
struct Delivered {
    writes: Mutex<Vec<String>>,
    fail: Mutex<VecDeque<DistributeError>>,
}

#[async_trait]
impl Sink for Delivered {
    fn describe(&self) -> String {
        "scripted-sink".into()
    }

    async fn write(
        &self,
        delivery: &Delivery<'_>,
    ) -> Result<crate::distribute::SecretReport, DistributeError> {
        self.writes
            .lock()
            .unwrap()
            .push(value_of(delivery.credential));
        if let Some(e) = self.fail.lock().unwrap().pop_front() {
            return Err(e);
        }
        Ok(crate::distribute::SecretReport {
            object: ObjectRef::secret(
                &delivery.distribution.namespace,
                &delivery.distribution.secret,
            ),
            outcome: SecretOutcome::Updated {
                keys: vec!["TOKEN".into()],
            },
            resource_version: None,
        })
    }

    async fn restart(
        &self,
        _delivery: &Delivery<'_>,
    ) -> Result<Vec<crate::distribute::RestartReport>, DistributeError> {
        Ok(Vec::new())
    }
}

fn writes(sink: &Delivered) -> Vec<String> {
    sink.writes.lock().unwrap().clone()
}

// ---- the audit log, in memory -----------------------------------------------------------

/// Keeps the lines; refuses every write after the first `accept` events.
#[derive(Debug, Clone)]
struct Lines {
    bytes: Arc<Mutex<Vec<u8>>>,
    accept: Arc<AtomicUsize>,
}

impl AuditSink for Lines {
    fn name(&self) -> &str {
        "memory"
    }

    fn write_durably(&mut self, lines: &[u8]) -> Result<(), SinkError> {
        let n = lines.iter().filter(|b| **b == b'\n').count();
        let left = self.accept.load(Ordering::SeqCst);
        if n > left {
            return Err(SinkError::Write {
                sink: "memory".into(),
                source: std::io::Error::other("refused by the test"),
            });
        }
        self.accept.fetch_sub(n, Ordering::SeqCst);
        self.bytes.lock().unwrap().extend_from_slice(lines);
        Ok(())
    }
}

/// One test's world: a policy, an engine auditing into memory, a store.
struct World {
    policy: Policy,
    audit: Arc<AuditLog>,
    lines: Lines,
    store: MemoryStore,
    _dir: tempfile::TempDir,
}

const HOLDER: &str = "agent-a";

fn world(max_attempts: u32) -> World {
    world_accepting(max_attempts, usize::MAX)
}

fn world_accepting(max_attempts: u32, accept: usize) -> World {
    world_with(max_attempts, accept, "")
}

/// A world whose policy distributes to one Secret.
fn world_distributing() -> World {
    world_with(
        3,
        usize::MAX,
        "  distribute:\n    - kubernetes: { namespace: apps, secret: api-token, keys: { TOKEN: value } }\n",
    )
}

fn world_with(max_attempts: u32, accept: usize, extra: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: api-token }}\nspec:\n  schedule: \"@daily\"\n  store: {{ vault-kv: {{ mount: secret, path: apps/api-token }} }}\n  target: {{ generated: {{}} }}\n  generator: {{ length: 24 }}\n  max-attempts: {max_attempts}\n{extra}"
        ),
    )
    .unwrap();
    let policy = crate::policy::load(&file).unwrap().remove(0);
    assert_eq!(policy.max_attempts, max_attempts);
    let lines = Lines {
        bytes: Arc::default(),
        accept: Arc::new(AtomicUsize::new(accept)),
    };
    let audit = Arc::new(
        AuditLog::open(
            AuditLogOptions::new(HmacKey::generate().unwrap()).sink(Box::new(lines.clone())),
        )
        .unwrap(),
    );
    World {
        policy,
        audit,
        lines,
        store: MemoryStore::with_current("api-token", credential("value-0")),
        _dir: dir,
    }
}

impl World {
    fn engine(&self, holder: &str) -> Engine {
        Engine::new(self.audit.clone(), Actor::agent(holder), holder)
            .with_backoff(Duration::from_millis(1), Duration::from_millis(2))
    }

    async fn rotate(&self, target: &Scripted) -> Result<RotationOutcome, RotationError> {
        self.rotate_as(HOLDER, target, &Trigger::Manual { reason: None })
            .await
    }

    async fn rotate_as(
        &self,
        holder: &str,
        target: &Scripted,
        trigger: &Trigger,
    ) -> Result<RotationOutcome, RotationError> {
        self.engine(holder)
            .rotate(&self.policy, &self.store, target, trigger)
            .await
    }

    async fn rotate_delivering(
        &self,
        target: &Scripted,
        sink: &Arc<Delivered>,
    ) -> Result<RotationOutcome, RotationError> {
        self.engine(HOLDER)
            .with_sink(sink.clone())
            .rotate(
                &self.policy,
                &self.store,
                target,
                &Trigger::Manual { reason: None },
            )
            .await
    }

    fn entries(&self) -> Vec<Entry> {
        let bytes = self.lines.bytes.lock().unwrap().clone();
        bytes
            .split_inclusive(|b| *b == b'\n')
            .map(|l| Entry::parse(l).unwrap())
            .collect()
    }

    /// `(action, outcome)` of every event, in order.
    fn events(&self) -> Vec<(String, String)> {
        self.entries()
            .iter()
            .map(|e| (e.action.clone(), e.outcome.as_str().to_owned()))
            .collect()
    }

    /// The detail of the last event of `action` with `outcome`.
    fn detail(&self, action: &str, outcome: &str) -> String {
        self.entries()
            .iter()
            .rev()
            .find(|e| e.action == action && serde_json::to_value(e.outcome).unwrap() == outcome)
            .and_then(|e| e.detail.clone())
            .unwrap_or_else(|| panic!("no {action} {outcome} event with a detail"))
    }

    fn current_value(&self) -> String {
        value_of(&self.store.versions().last().unwrap().fields)
    }

    /// Plants a rotation `holder` started and drove to `step`, its lease running for
    /// `lease_secs` more seconds (negative: run out).
    fn plant(&self, holder: &str, lease_secs: i64, step: Step, attempts: u32) -> InFlight {
        let rec = InFlight {
            rotation_id: uuid::Uuid::new_v4().to_string(),
            step,
            pending: credential("planted-pending"),
            started_at: Utc::now() - chrono::Duration::minutes(10),
            holder: holder.into(),
            lease_until: Utc::now() + chrono::Duration::seconds(lease_secs),
            attempts,
        };
        self.store.put_state(StateRecord {
            in_flight: Some(rec.clone()),
            ..self.store.peek_state()
        });
        rec
    }
}

fn credential(v: &str) -> SecretData {
    let mut d = SecretData::new();
    d.insert("value", SecretValue::from_str_copy(v));
    d
}

fn ev(action: &str, outcome: &str) -> (String, String) {
    (format!("rotate.{action}"), outcome.to_owned())
}

fn failures() -> Failures {
    Failures {
        count: 2,
        last_at: Utc::now() - chrono::Duration::minutes(5),
        retry_at: Utc::now() + chrono::Duration::minutes(5),
    }
}

// ---- a rotation that completes ----------------------------------------------------------

#[tokio::test]
async fn a_rotation_sets_tests_and_promotes_once_each_with_an_intent_and_outcome_around_each() {
    let w = world(3);
    let failed = failures();
    w.store.put_state(StateRecord {
        failures: Some(failed.clone()),
        ..StateRecord::default()
    });
    let t = Scripted::default();
    let out = w.rotate(&t).await.unwrap();
    let RotationOutcome::Rotated {
        rotation_id,
        resumed: false,
        ..
    } = out
    else {
        panic!("{out:?}")
    };
    let new = w.current_value();
    assert_eq!(new.len(), 24);
    assert_eq!(t.calls(), [Call::Set(new.clone()), Call::Test(new)]);
    assert_eq!(w.store.calls(Op::Promote), 1);
    assert_eq!(w.store.versions().len(), 2);
    assert_eq!(value_of(&w.store.previous().unwrap().fields), "value-0");
    // Two state writes: the claim, and the clear.
    let writes = w.store.state_writes();
    assert_eq!(writes.len(), 2, "{writes:?}");
    let claimed = writes[0].in_flight.as_ref().unwrap();
    assert_eq!(
        (claimed.step, claimed.holder.as_str(), claimed.attempts),
        (Step::Created, HOLDER, 0)
    );
    // The claim keeps the recorded failures; the completed rotation ends them.
    assert_eq!(writes[0].failures, Some(failed));
    let end = w.store.peek_state();
    assert!(end.in_flight.is_none() && end.failures.is_none());
    assert_eq!(end.last.unwrap().rotation_id, rotation_id);
    let mut want = Vec::new();
    for step in ["create", "set", "test", "finish"] {
        want.extend([ev(step, "started"), ev(step, "ok")]);
    }
    want.push(ev("done", "ok"));
    assert_eq!(w.events(), want);
    assert!(
        w.entries()
            .iter()
            .all(|e| e.rotation_id.as_deref() == Some(rotation_id.as_str()))
    );
    // The value is in the log only as its HMAC.
    let log = String::from_utf8(w.lines.bytes.lock().unwrap().clone()).unwrap();
    assert!(!log.contains(&w.current_value()));
    assert!(w.entries()[0].value_hmac.is_some());
}

#[tokio::test]
async fn a_failed_attempt_is_retried_and_recorded_with_its_count() {
    let w = world(3);
    let t = Scripted::failing_test(1, unreachable);
    let out = w.rotate(&t).await.unwrap();
    assert!(matches!(out, RotationOutcome::Rotated { .. }), "{out:?}");
    assert_eq!((t.sets(), t.tests(), t.reverts()), (1, 2, 0));
    // claim, the failed test's attempt (at step set), clear
    let writes = w.store.state_writes();
    assert_eq!(writes.len(), 3, "{writes:?}");
    let saved = writes[1].in_flight.as_ref().unwrap();
    assert_eq!((saved.step, saved.attempts), (Step::Set, 1));
    assert!(
        w.detail("rotate.test", "error")
            .starts_with("test failed (unreachable), attempt 1 of 3: scripted: unreachable"),
        "{}",
        w.detail("rotate.test", "error")
    );
    assert_eq!(w.store.calls(Op::Promote), 1);
}

// ---- give-up and revert -----------------------------------------------------------------

#[tokio::test]
async fn set_failing_every_attempt_gives_up_and_reverts_to_current() {
    let w = world(3);
    let t = Scripted::failing_set(3, || refused("password rejected"));
    let out = w.rotate(&t).await.unwrap();
    let RotationOutcome::Failed { rotation_id, error } = out else {
        panic!("{out:?}")
    };
    assert_eq!(error, "scripted: password rejected");
    // Three sets of one PENDING value, no test, one revert naming CURRENT and that PENDING.
    let calls = t.calls();
    let Call::Set(pending) = calls[0].clone() else {
        panic!("{calls:?}")
    };
    assert_eq!(
        calls,
        [
            Call::Set(pending.clone()),
            Call::Set(pending.clone()),
            Call::Set(pending.clone()),
            Call::Revert {
                current: Some("value-0".into()),
                pending
            }
        ]
    );
    // CURRENT is untouched and nothing was promoted.
    assert_eq!(w.store.calls(Op::Promote), 0);
    assert_eq!(w.store.versions().len(), 1);
    // claim, two failed attempts saved (the third gives up), the give-up.
    let writes = w.store.state_writes();
    let attempts: Vec<Option<u32>> = writes
        .iter()
        .map(|s| s.in_flight.as_ref().map(|f| f.attempts))
        .collect();
    assert_eq!(attempts, [Some(0), Some(1), Some(2), None]);
    let end = w.store.peek_state();
    let last = end.last.unwrap();
    assert_eq!(
        (last.rotation_id.as_str(), last.outcome.as_str()),
        (rotation_id.as_str(), "failed")
    );
    let mut want = vec![ev("create", "started"), ev("create", "ok")];
    for _ in 0..3 {
        want.extend([ev("set", "started"), ev("set", "error")]);
    }
    want.extend([
        ev("revert", "started"),
        ev("revert", "ok"),
        ev("failed", "error"),
    ]);
    assert_eq!(w.events(), want);
    assert_eq!(
        w.detail("rotate.revert", "ok"),
        "put scripted back to CURRENT after 3 failed attempts"
    );
}

#[tokio::test]
async fn test_failing_every_attempt_gives_up_after_one_set() {
    let w = world(2);
    let t = Scripted::failing_test(2, unreachable);
    let out = w.rotate(&t).await.unwrap();
    assert!(matches!(out, RotationOutcome::Failed { .. }), "{out:?}");
    assert_eq!((t.sets(), t.tests(), t.reverts()), (1, 2, 1));
    assert_eq!(w.store.calls(Op::Promote), 0);
    assert_eq!(w.current_value(), "value-0");
}

#[tokio::test]
async fn a_first_rotation_given_up_reverts_with_no_current() {
    let mut w = world(1);
    w.store = MemoryStore::new("api-token");
    let t = Scripted::failing_set(1, unreachable);
    let out = w.rotate(&t).await.unwrap();
    assert!(matches!(out, RotationOutcome::Failed { .. }), "{out:?}");
    assert!(matches!(
        t.calls().last(),
        Some(Call::Revert { current: None, .. })
    ));
    assert!(w.store.versions().is_empty());
}

#[tokio::test]
async fn a_failed_revert_is_audited_as_an_error_and_the_rotation_still_ends_failed() {
    let w = world(1);
    let t = Scripted::failing_set(1, || refused("password rejected"));
    t.fail_revert.lock().unwrap().push_back(unreachable());
    let out = w.rotate(&t).await.unwrap();
    assert!(matches!(out, RotationOutcome::Failed { .. }), "{out:?}");
    assert_eq!(t.reverts(), 1);
    let events = w.events();
    assert_eq!(
        events[events.len() - 3..],
        [
            ev("revert", "started"),
            ev("revert", "error"),
            ev("failed", "error")
        ]
    );
    assert_eq!(
        w.detail("rotate.revert", "error"),
        "revert failed (unreachable): scripted: unreachable: connection refused"
    );
    let end = w.store.peek_state();
    assert!(end.in_flight.is_none());
    assert_eq!(end.last.unwrap().outcome, "failed");
}

/// The daemon counts the run of failures and records it after a give-up; the engine's own
/// give-up write used to reset it to none in between (a record lost if the daemon's write
/// failed, or when no daemon ran the rotation).
#[tokio::test]
async fn a_give_up_keeps_the_recorded_run_of_failures_and_the_taint() {
    let w = world(1);
    let taint = Taint {
        at: Utc::now() - chrono::Duration::hours(1),
        rotate_after: Utc::now() - chrono::Duration::minutes(1),
        by: "operator-1".into(),
    };
    let failed = failures();
    w.store.put_state(StateRecord {
        failures: Some(failed.clone()),
        taint: Some(taint.clone()),
        ..StateRecord::default()
    });
    let t = Scripted::failing_set(1, unreachable);
    let out = w.rotate(&t).await.unwrap();
    assert!(matches!(out, RotationOutcome::Failed { .. }), "{out:?}");
    let end = w.store.peek_state();
    assert_eq!(end.failures, Some(failed));
    assert_eq!(end.taint, Some(taint), "the value is still revealed");
    assert_eq!(end.last.unwrap().outcome, "failed");
}

#[tokio::test]
async fn a_rotation_given_up_and_resumed_later_is_not_resumed_but_started_anew() {
    // After a give-up nothing is in flight: the next run makes a new PENDING value.
    let w = world(1);
    let t = Scripted::failing_set(1, unreachable);
    let RotationOutcome::Failed { rotation_id, .. } = w.rotate(&t).await.unwrap() else {
        panic!()
    };
    let out = w.rotate(&t).await.unwrap();
    let RotationOutcome::Rotated {
        rotation_id: second,
        resumed: false,
        ..
    } = out
    else {
        panic!("{out:?}")
    };
    assert_ne!(second, rotation_id);
    let Call::Set(first_pending) = t.calls()[0].clone() else {
        panic!()
    };
    assert_ne!(w.current_value(), first_pending);
}

// ---- compare-and-set conflicts ----------------------------------------------------------

#[tokio::test]
async fn a_claim_another_writer_got_first_is_busy_and_touches_nothing() {
    let w = world(3);
    let other = InFlight {
        rotation_id: uuid::Uuid::new_v4().to_string(),
        step: Step::Created,
        pending: credential("other-pending"),
        started_at: Utc::now(),
        holder: "agent-b".into(),
        lease_until: Utc::now() + chrono::Duration::minutes(5),
        attempts: 0,
    };
    w.store.inject(
        Op::WriteState,
        Fault::StateRaced(Box::new(StateRecord {
            in_flight: Some(other),
            ..StateRecord::default()
        })),
    );
    let t = Scripted::default();
    let out = w.rotate(&t).await.unwrap();
    assert_eq!(
        out,
        RotationOutcome::Busy {
            holder: "another process".into()
        }
    );
    assert!(t.calls().is_empty());
    assert_eq!(w.store.calls(Op::Promote), 0);
    assert_eq!(
        w.store.peek_state().in_flight.unwrap().holder,
        "agent-b",
        "the other writer's claim stands"
    );
    assert_eq!(w.events(), [ev("create", "started"), ev("create", "error")]);
    assert!(
        w.detail("rotate.create", "error")
            .starts_with("create failed (conflict): memory:api-token")
    );
}

#[tokio::test]
async fn a_promote_that_meets_a_current_written_since_is_a_conflict_and_promotes_nothing() {
    let w = world(3);
    w.store
        .inject(Op::Promote, Fault::CurrentRaced(credential("by-hand")));
    let t = Scripted::default();
    let err = w.rotate(&t).await.unwrap_err();
    assert!(
        matches!(
            &err,
            RotationError::Store {
                source: StoreError::Conflict { .. },
                ..
            }
        ),
        "{err}"
    );
    let values: Vec<String> = w
        .store
        .versions()
        .iter()
        .map(|v| value_of(&v.fields))
        .collect();
    assert_eq!(values, ["value-0", "by-hand"], "PENDING was not promoted");
    // Left in flight, resumable, with its PENDING value.
    let rec = w.store.peek_state().in_flight.unwrap();
    assert_eq!(rec.step, Step::Created);
    assert_eq!(t.calls()[0], Call::Set(value_of(&rec.pending)));
    assert_eq!(
        w.events()[w.events().len() - 2..],
        [ev("finish", "started"), ev("finish", "error")]
    );
}

#[tokio::test]
async fn a_clear_refused_after_the_promote_is_an_error_and_the_resume_finishes_without_promoting_again()
 {
    let w = world(3);
    // The claim goes through; the clear after the promote meets a moved fence.
    w.store.inject(Op::WriteState, Fault::Pass);
    w.store
        .inject(Op::WriteState, Fault::Fail(FaultKind::Conflict));
    let t = Scripted::default();
    let err = w.rotate(&t).await.unwrap_err();
    assert!(
        matches!(
            &err,
            RotationError::Store {
                source: StoreError::Conflict { .. },
                ..
            }
        ),
        "{err}"
    );
    let rec = w.store.peek_state().in_flight.unwrap();
    assert_eq!(w.current_value(), value_of(&rec.pending), "promoted");
    // The next run finds CURRENT is PENDING: it ends the rotation, nothing else.
    let out = w.rotate(&t).await.unwrap();
    assert_eq!(
        out,
        RotationOutcome::Rotated {
            rotation_id: rec.rotation_id.clone(),
            started_at: rec.started_at,
            resumed: true
        }
    );
    assert_eq!((t.sets(), t.tests()), (1, 1));
    assert_eq!(w.store.calls(Op::Promote), 1);
    assert_eq!(w.store.versions().len(), 2);
    assert!(w.store.peek_state().in_flight.is_none());
}

#[tokio::test]
async fn an_unreadable_store_stops_the_rotation_before_anything() {
    let w = world(3);
    w.store
        .inject(Op::View, Fault::Fail(FaultKind::Unavailable));
    let t = Scripted::default();
    let err = w.rotate(&t).await.unwrap_err();
    assert!(
        matches!(&err, RotationError::Store { source, .. } if source.is_retryable()),
        "{err}"
    );
    assert!(t.calls().is_empty());
    assert!(w.store.state_writes().is_empty());
    assert!(w.events().is_empty());
}

// ---- leases -----------------------------------------------------------------------------

#[tokio::test]
async fn a_live_claim_of_another_holder_is_busy_and_nothing_is_written_or_audited() {
    let w = world(3);
    let rec = w.plant("agent-b", 300, Step::Set, 0);
    let t = Scripted::default();
    let out = w.rotate(&t).await.unwrap();
    assert_eq!(
        out,
        RotationOutcome::Busy {
            holder: "agent-b".into()
        }
    );
    assert!(t.calls().is_empty());
    assert!(w.store.state_writes().is_empty());
    assert!(w.events().is_empty());
    assert_eq!(
        w.store.peek_state().in_flight.unwrap().rotation_id,
        rec.rotation_id
    );
}

#[tokio::test]
async fn an_expired_claim_of_another_holder_is_taken_over_and_resumed_at_its_step() {
    let w = world(3);
    let rec = w.plant("agent-dead", -1, Step::Set, 1);
    let t = Scripted::default();
    let out = w.rotate(&t).await.unwrap();
    assert_eq!(
        out,
        RotationOutcome::Rotated {
            rotation_id: rec.rotation_id.clone(),
            started_at: rec.started_at,
            resumed: true
        }
    );
    // At `set`: only the test runs again, with the planted PENDING value.
    assert_eq!(t.calls(), [Call::Test("planted-pending".into())]);
    assert_eq!(w.current_value(), "planted-pending");
    assert_eq!(w.store.calls(Op::Promote), 1);
    // The take-over is a state write naming the new holder, with a fresh lease and the
    // attempts so far.
    let taken = w.store.state_writes()[0].in_flight.clone().unwrap();
    assert_eq!(
        (
            taken.rotation_id.as_str(),
            taken.holder.as_str(),
            taken.step,
            taken.attempts
        ),
        (rec.rotation_id.as_str(), HOLDER, Step::Set, 1)
    );
    assert!(taken.lease_until > Utc::now() + chrono::Duration::seconds(200));
    assert_eq!(
        w.events()[..2],
        [ev("resume", "started"), ev("resume", "ok")]
    );
    assert_eq!(
        w.detail("rotate.resume", "started"),
        "at step set (was held by agent-dead)"
    );
}

#[tokio::test]
async fn a_restarted_holder_resumes_its_own_live_claim_at_once() {
    let w = world(3);
    let rec = w.plant(HOLDER, 300, Step::Created, 0);
    let t = Scripted::default();
    let out = w.rotate(&t).await.unwrap();
    assert!(
        matches!(&out, RotationOutcome::Rotated { rotation_id, resumed: true, .. } if *rotation_id == rec.rotation_id),
        "{out:?}"
    );
    assert_eq!(
        t.calls(),
        [
            Call::Set("planted-pending".into()),
            Call::Test("planted-pending".into())
        ]
    );
}

#[tokio::test]
async fn a_take_over_that_loses_to_another_taker_is_busy_and_touches_nothing() {
    let w = world(3);
    let rec = w.plant("agent-dead", -1, Step::Set, 0);
    let mut other = rec.clone();
    other.holder = "agent-c".into();
    w.store.inject(
        Op::WriteState,
        Fault::StateRaced(Box::new(StateRecord {
            in_flight: Some(other),
            ..StateRecord::default()
        })),
    );
    let t = Scripted::default();
    let out = w.rotate(&t).await.unwrap();
    assert_eq!(
        out,
        RotationOutcome::Busy {
            holder: "another process".into()
        }
    );
    assert!(t.calls().is_empty());
    assert_eq!(w.store.calls(Op::Promote), 0);
}

// ---- resume after a crash after the promote ---------------------------------------------

#[tokio::test]
async fn a_crash_after_the_promote_resumes_straight_to_the_end_without_setting_or_promoting_again()
{
    for step in [Step::Created, Step::Set, Step::Tested] {
        let w = world(3);
        let rec = w.plant(HOLDER, 300, step, 0);
        // The promote happened; the process died before the state was cleared.
        w.store.put_current(rec.pending.clone());
        let versions = w.store.versions().len();
        let t = Scripted::default();
        let out = w.rotate(&t).await.unwrap();
        assert_eq!(
            out,
            RotationOutcome::Rotated {
                rotation_id: rec.rotation_id.clone(),
                started_at: rec.started_at,
                resumed: true
            },
            "{step:?}"
        );
        assert!(t.calls().is_empty(), "{step:?}: {:?}", t.calls());
        assert_eq!(w.store.calls(Op::Promote), 0, "{step:?}");
        assert_eq!(w.store.versions().len(), versions, "{step:?}");
        assert_eq!(
            value_of(&w.store.previous().unwrap().fields),
            "value-0",
            "{step:?}: PREVIOUS is still the old value"
        );
        let end = w.store.peek_state();
        assert!(end.in_flight.is_none(), "{step:?}");
        assert_eq!(end.last.unwrap().rotation_id, rec.rotation_id, "{step:?}");
        assert_eq!(
            w.events(),
            [
                ev("resume", "started"),
                ev("resume", "ok"),
                ev("done", "ok")
            ],
            "{step:?}"
        );
    }
}

#[tokio::test]
async fn a_crash_after_the_promote_resumes_straight_to_delivery() {
    let w = world_distributing();
    let rec = w.plant(HOLDER, 300, Step::Tested, 0);
    w.store.put_current(rec.pending.clone());
    let (t, sink) = (Scripted::default(), Arc::new(Delivered::default()));
    let out = w.rotate_delivering(&t, &sink).await.unwrap();
    assert!(
        matches!(out, RotationOutcome::Rotated { resumed: true, .. }),
        "{out:?}"
    );
    assert!(t.calls().is_empty());
    assert_eq!(w.store.calls(Op::Promote), 0);
    assert_eq!(writes(&sink), ["planted-pending"]);
    assert_eq!(
        w.events(),
        [
            ev("resume", "started"),
            ev("resume", "ok"),
            ev("distribute", "started"),
            ev("distribute", "ok"),
            ev("done", "ok")
        ]
    );
}

#[tokio::test]
async fn a_failed_delivery_stays_in_flight_at_finished_and_the_next_run_only_delivers() {
    let w = world_distributing();
    let (t, sink) = (Scripted::default(), Arc::new(Delivered::default()));
    sink.fail
        .lock()
        .unwrap()
        .push_back(DistributeError::MissingField {
            policy: "api-token".into(),
            secret: Box::new(ObjectRef::secret("apps", "api-token")),
            key: "TOKEN".into(),
            field: "value".into(),
        });
    let err = w.rotate_delivering(&t, &sink).await.unwrap_err();
    assert!(matches!(err, RotationError::Distribute { .. }), "{err}");
    let rec = w.store.peek_state().in_flight.unwrap();
    assert_eq!(
        rec.step,
        Step::Finished,
        "recorded as promoted, not delivered"
    );
    assert_eq!(w.current_value(), value_of(&rec.pending));
    let out = w.rotate_delivering(&t, &sink).await.unwrap();
    assert!(
        matches!(&out, RotationOutcome::Rotated { rotation_id, resumed: true, .. } if *rotation_id == rec.rotation_id),
        "{out:?}"
    );
    let pending = value_of(&rec.pending);
    assert_eq!(writes(&sink), [pending.clone(), pending]);
    assert_eq!((t.sets(), t.tests()), (1, 1), "nothing set or tested again");
    assert_eq!(w.store.calls(Op::Promote), 1);
    assert!(w.store.peek_state().in_flight.is_none());
}

#[tokio::test]
async fn a_crash_before_the_promote_resumes_and_promotes_once() {
    let w = world(3);
    let rec = w.plant(HOLDER, 300, Step::Tested, 0);
    let t = Scripted::default();
    let out = w.rotate(&t).await.unwrap();
    assert!(
        matches!(out, RotationOutcome::Rotated { resumed: true, .. }),
        "{out:?}"
    );
    assert!(t.calls().is_empty(), "tested: straight to the promote");
    assert_eq!(w.store.calls(Op::Promote), 1);
    assert_eq!(w.current_value(), value_of(&rec.pending));
    assert_eq!(w.store.versions().len(), 2);
}

// ---- slots and taints -------------------------------------------------------------------

#[tokio::test]
async fn a_slot_served_by_a_later_successful_rotation_is_already_done_unless_a_taint_fell_due() {
    let w = world(3);
    let due = Utc::now() - chrono::Duration::minutes(5);
    let trigger = Trigger::Schedule { due };
    let t = Scripted::default();
    assert!(matches!(
        w.rotate_as(HOLDER, &t, &trigger).await.unwrap(),
        RotationOutcome::Rotated { .. }
    ));
    let calls = t.calls().len();
    assert_eq!(
        w.rotate_as("agent-b", &t, &trigger).await.unwrap(),
        RotationOutcome::AlreadyDone
    );
    assert_eq!(t.calls().len(), calls, "nothing touched");
    // A taint that has fallen due makes the slot due again, and the rotation clears it.
    w.store.put_state(StateRecord {
        taint: Some(Taint {
            at: Utc::now() - chrono::Duration::seconds(2),
            rotate_after: Utc::now() - chrono::Duration::seconds(1),
            by: "operator-1".into(),
        }),
        ..w.store.peek_state()
    });
    assert!(matches!(
        w.rotate_as("agent-b", &t, &trigger).await.unwrap(),
        RotationOutcome::Rotated { .. }
    ));
    assert!(w.store.peek_state().taint.is_none());
}

#[tokio::test]
async fn a_slot_whose_last_rotation_failed_is_still_due() {
    let w = world(1);
    let due = Utc::now() - chrono::Duration::minutes(5);
    let trigger = Trigger::Schedule { due };
    let t = Scripted::failing_set(1, unreachable);
    assert!(matches!(
        w.rotate_as(HOLDER, &t, &trigger).await.unwrap(),
        RotationOutcome::Failed { .. }
    ));
    assert!(matches!(
        w.rotate_as(HOLDER, &t, &trigger).await.unwrap(),
        RotationOutcome::Rotated { .. }
    ));
}

// ---- audit and store failures stop the rotation before its effect -----------------------

#[tokio::test]
async fn an_unwritable_intent_stops_the_rotation_before_its_effect() {
    // The log takes the two `create` events, then refuses `set`'s intent.
    let w = world_accepting(3, 2);
    let t = Scripted::default();
    let err = w.rotate(&t).await.unwrap_err();
    assert!(
        matches!(
            err,
            RotationError::Audit {
                step: "rotate.set",
                ..
            }
        ),
        "{err}"
    );
    assert!(t.calls().is_empty(), "set ran without its intent");
    let rec = w.store.peek_state().in_flight.unwrap();
    assert_eq!(rec.step, Step::Created, "left resumable");
    assert_eq!(w.events(), [ev("create", "started"), ev("create", "ok")]);
}

#[tokio::test]
async fn an_unwritable_first_intent_writes_nothing() {
    let w = world_accepting(3, 0);
    let t = Scripted::default();
    let err = w.rotate(&t).await.unwrap_err();
    assert!(
        matches!(
            err,
            RotationError::Audit {
                step: "rotate.create",
                ..
            }
        ),
        "{err}"
    );
    assert!(w.store.state_writes().is_empty());
    assert!(t.calls().is_empty());
}

#[tokio::test]
async fn a_store_refusing_for_permission_is_audited_as_denied_and_nothing_runs() {
    let w = world(3);
    w.store
        .inject(Op::WriteState, Fault::Fail(FaultKind::PermissionDenied));
    let t = Scripted::default();
    let err = w.rotate(&t).await.unwrap_err();
    assert!(
        matches!(&err, RotationError::Store { source, .. } if source.is_permission_denied()),
        "{err}"
    );
    assert!(t.calls().is_empty());
    assert_eq!(
        w.events(),
        [ev("create", "started"), ev("create", "denied")]
    );
    assert!(
        w.detail("rotate.create", "denied")
            .starts_with("create failed (permission denied)")
    );
}

#[tokio::test]
async fn a_failed_attempt_that_cannot_be_recorded_stops_the_rotation_before_the_next_one() {
    let w = world(3);
    let t = Scripted::failing_set(1, unreachable);
    // The claim goes through; the failed attempt's write does not.
    w.store.inject(Op::WriteState, Fault::Pass);
    w.store
        .inject(Op::WriteState, Fault::Fail(FaultKind::Unavailable));
    let err = w.rotate(&t).await.unwrap_err();
    assert!(
        matches!(&err, RotationError::Store { source, .. } if source.is_retryable()),
        "{err}"
    );
    assert_eq!(
        t.calls().len(),
        1,
        "no second attempt after an unrecorded failure"
    );
    let rec = w.store.peek_state().in_flight.unwrap();
    assert_eq!(
        (rec.step, rec.attempts),
        (Step::Created, 0),
        "the claim as written"
    );
}

// ---- the guard: a replica that may not act stops before the side effect ----------------

/// A guard that allows its first `allow` checks and refuses every later one, counting them.
#[derive(Debug)]
struct Closing {
    allow: usize,
    checks: AtomicUsize,
}

impl Closing {
    fn after(allow: usize) -> Arc<Self> {
        Arc::new(Self {
            allow,
            checks: AtomicUsize::new(0),
        })
    }
}

impl crate::fence::Guard for Closing {
    fn check(&self) -> Result<(), crate::fence::Fenced> {
        let n = self.checks.fetch_add(1, Ordering::SeqCst);
        if n < self.allow {
            Ok(())
        } else {
            Err(crate::fence::Fenced::Expired {
                since: Duration::from_secs(20),
            })
        }
    }
}

/// Side effects a rotation performed: state writes, promotes and target calls.
fn effects(w: &World, t: &Scripted) -> usize {
    w.store.state_writes().len() + w.store.calls(Op::Promote) + t.calls().len()
}

#[tokio::test]
async fn a_guard_that_closes_stops_the_rotation_before_its_next_effect_and_a_later_run_finishes_it()
{
    // An open guard: how many checks a whole rotation makes, and its effects.
    let w = world(3);
    let t = Scripted::default();
    let open = Closing::after(usize::MAX);
    w.engine(HOLDER)
        .with_guard(open.clone())
        .rotate(&w.policy, &w.store, &t, &Trigger::Manual { reason: None })
        .await
        .unwrap();
    let checks = open.checks.load(Ordering::SeqCst);
    // claim, set, test, promote, clear: one check before each.
    assert_eq!((checks, effects(&w, &t)), (5, 5));

    // Closed after each number of checks in turn: the effects stop exactly there.
    for allow in 0..checks {
        let w = world(3);
        let t = Scripted::default();
        let guard = Closing::after(allow);
        let e = w
            .engine(HOLDER)
            .with_guard(guard)
            .rotate(&w.policy, &w.store, &t, &Trigger::Manual { reason: None })
            .await
            .unwrap_err();
        assert!(matches!(e, RotationError::Fenced { .. }), "{e}");
        assert_eq!(effects(&w, &t), allow, "allowed {allow} checks");
        // Every intent the log holds has its outcome: nothing was started and left.
        let events = w.events();
        let started = events.iter().filter(|(_, o)| o == "started").count();
        assert_eq!(started * 2, events.len(), "{events:?}");
        // The same holder, allowed again, finishes the rotation: one new CURRENT.
        let done = w.rotate(&t).await.unwrap();
        assert!(matches!(done, RotationOutcome::Rotated { .. }), "{done:?}");
        assert_eq!(w.store.versions().len(), 2);
        assert!(w.store.peek_state().in_flight.is_none());
    }
}

#[tokio::test]
async fn a_claim_with_less_than_half_its_lease_left_is_renewed_before_each_effect() {
    let w = world(3);
    let t = Scripted::default();
    // A lease of zero is always less than half left: every effect renews the claim first.
    w.engine(HOLDER)
        .with_lease(Duration::ZERO)
        .rotate(&w.policy, &w.store, &t, &Trigger::Manual { reason: None })
        .await
        .unwrap();
    let writes = w.store.state_writes();
    // claim, renewals before set, test and promote, clear.
    assert_eq!(writes.len(), 5, "{writes:?}");
    assert!(
        writes[..4]
            .iter()
            .all(|s| s.in_flight.as_ref().is_some_and(|f| f.holder == HOLDER))
    );

    // A renewal that meets another writer's claim stops the rotation before the effect.
    let w = world(3);
    let t = Scripted::default();
    let other = InFlight {
        rotation_id: uuid::Uuid::new_v4().to_string(),
        step: Step::Created,
        pending: credential("other-pending"),
        started_at: Utc::now(),
        holder: "agent-b".into(),
        lease_until: Utc::now() + chrono::Duration::minutes(5),
        attempts: 0,
    };
    // The claim goes through; the renewal before `set` meets a moved fence.
    w.store.inject(Op::WriteState, Fault::Pass);
    w.store.inject(
        Op::WriteState,
        Fault::StateRaced(Box::new(StateRecord {
            in_flight: Some(other),
            ..StateRecord::default()
        })),
    );
    let e = w
        .engine(HOLDER)
        .with_lease(Duration::ZERO)
        .rotate(&w.policy, &w.store, &t, &Trigger::Manual { reason: None })
        .await
        .unwrap_err();
    assert!(matches!(e, RotationError::Store { .. }), "{e}");
    assert!(t.calls().is_empty(), "the target was not touched");
    assert_eq!(w.store.peek_state().in_flight.unwrap().holder, "agent-b");
}

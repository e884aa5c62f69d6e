//! The store contract: what every [`Store`] must do, as one suite of checks run alike against
//! the in-memory store (unit tests), Vault KV v2 (OpenBao) and AWS Secrets Manager (moto)
//! (the `rotation` integration tests, modules `vault` and `aws`).
//!
//! Not for production use: the checks panic on the first broken rule, naming the check and
//! the store location (never a value). Each check runs on a store of its own, made by the
//! caller's `fresh(name)`, which must return an empty store (no CURRENT, no state) for every
//! new `name` (a path or a secret id derived from it).
//!
//! - [`check_store`]: the [`Store`] methods themselves: what an empty store reads as, the
//!   state record's round trip (in-flight record, PENDING value, last rotation, taint and run
//!   of failures), compare-and-set between writers, claim and take-over of an in-flight
//!   rotation, and promote (versions, idempotence, compare-and-set on CURRENT).
//! - [`check_engine`]: the rotation engine over the store with a generated target: rotations
//!   that complete, a slot served once, two racing engines, a live holder left alone, an
//!   expired one taken over.
//!
//! What only one store does (Vault's version history, Secrets Manager's staging labels) is
//! tested beside that store.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyturn_core::SecretValue;
use keyturn_core::audit::{Actor, AuditLog, AuditLogOptions, AuditSink, HmacKey, SinkError};
use keyturn_core::vault::SecretData;

use super::{
    Current, Failures, Fence, InFlight, LastRotation, StateRecord, Step, Store, StoreError,
    StoreView, Taint, same_fields,
};
use crate::policy::Policy;
use crate::rotation::target::generated::Generated;
use crate::rotation::{Engine, RotationOutcome, Trigger};

/// Makes an empty store for a check: a new `name` must give a new, empty store.
pub trait Fresh: Fn(&str) -> Arc<dyn Store> {}
impl<F: Fn(&str) -> Arc<dyn Store>> Fresh for F {}

/// Runs [`check_store`] and [`check_engine`].
pub async fn check_all(fresh: impl Fresh, policy: &Policy) {
    check_store(&fresh).await;
    check_engine(&fresh, policy).await;
}

/// The checks of the [`Store`] methods. See the [module](self).
pub async fn check_store(fresh: impl Fresh) {
    empty_store(fresh("empty")).await;
    state_round_trip(fresh("state-round-trip")).await;
    concurrent_writers(fresh("concurrent-writers")).await;
    claim_and_take_over(fresh("claim-take-over")).await;
    promote(fresh("promote")).await;
}

/// The checks of the rotation engine over the store. `policy` gives the name, generator and
/// attempt bound (its store and target are not used: the store is `fresh`'s, the target a
/// generated value), and must have no `distribute` entries.
pub async fn check_engine(fresh: impl Fresh, policy: &Policy) {
    assert!(
        policy.distribute.is_empty(),
        "the engine contract needs a policy without distribute entries"
    );
    let audit = audit();
    rotations_complete(fresh("engine-rotations"), policy, &audit).await;
    a_served_slot_is_not_rotated_again(fresh("engine-slot"), policy, &audit).await;
    racing_engines_rotate_once(fresh("engine-race"), policy, &audit).await;
    a_live_holder_is_left_alone(fresh("engine-live-holder"), policy, &audit).await;
    an_expired_holder_is_taken_over(fresh("engine-takeover"), policy, &audit).await;
}

// ---- helpers ----------------------------------------------------------------------------

/// An audit log that keeps nothing: the engine checks are about the store.
fn audit() -> Arc<AuditLog> {
    #[derive(Debug)]
    struct Discard;
    impl AuditSink for Discard {
        fn name(&self) -> &str {
            "discard"
        }
        fn write_durably(&mut self, _: &[u8]) -> Result<(), SinkError> {
            Ok(())
        }
    }
    let key = HmacKey::generate().expect("an audit key");
    Arc::new(
        AuditLog::open(AuditLogOptions::new(key).sink(Box::new(Discard))).expect("an audit log"),
    )
}

fn engine(audit: &Arc<AuditLog>, holder: &str) -> Engine {
    Engine::new(audit.clone(), Actor::agent(holder), holder)
        .with_backoff(Duration::from_millis(1), Duration::from_millis(5))
}

fn manual() -> Trigger {
    Trigger::Manual { reason: None }
}

/// A credential with a fresh random value (never printed).
fn credential(fields: &[&str]) -> SecretData {
    let mut d = SecretData::new();
    for f in fields {
        d.insert(
            *f,
            SecretValue::from(format!("contract-{f}-{}", uuid::Uuid::new_v4().simple())),
        );
    }
    d
}

fn in_flight(holder: &str, lease: chrono::Duration, step: Step) -> InFlight {
    InFlight {
        rotation_id: uuid::Uuid::new_v4().to_string(),
        step,
        pending: credential(&["value"]),
        started_at: Utc::now(),
        holder: holder.into(),
        lease_until: Utc::now() + lease,
        attempts: 0,
    }
}

fn with(rec: &InFlight) -> StateRecord {
    StateRecord {
        in_flight: Some(rec.clone()),
        ..StateRecord::default()
    }
}

fn at(s: &dyn Store, check: &str) -> String {
    format!("store contract, {check}, {}", s.location())
}

async fn view(s: &dyn Store, check: &str) -> StoreView {
    match s.view().await {
        Ok(v) => v,
        Err(e) => panic!("{}: view: {e}", at(s, check)),
    }
}

async fn write(s: &dyn Store, check: &str, fence: &Fence, state: &StateRecord) -> Fence {
    match s.write_state(fence, state).await {
        Ok(f) => f,
        Err(e) => panic!("{}: write_state: {e}", at(s, check)),
    }
}

async fn current(s: &dyn Store, check: &str) -> Option<Current> {
    match s.current().await {
        Ok(c) => c,
        Err(e) => panic!("{}: current: {e}", at(s, check)),
    }
}

fn assert_conflict<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) {
    assert!(
        matches!(r, Err(StoreError::Conflict { .. })),
        "{what}: expected a conflict, got {r:?}"
    );
}

/// Asserts two state records are the same, field by field (values compared, not shown).
fn assert_same_state(got: &StateRecord, want: &StateRecord, what: &str) {
    assert_same_record(got, want, true, what);
}

/// [`assert_same_state`], the PENDING value compared only if `pending`.
fn assert_same_record(got: &StateRecord, want: &StateRecord, pending: bool, what: &str) {
    assert_eq!(got.last, want.last, "{what}: last rotation");
    assert_eq!(got.taint, want.taint, "{what}: taint");
    assert_eq!(got.failures, want.failures, "{what}: failures");
    match (&got.in_flight, &want.in_flight) {
        (None, None) => {}
        (Some(g), Some(w)) => {
            assert_eq!(g.rotation_id, w.rotation_id, "{what}: rotation id");
            assert_eq!(g.step, w.step, "{what}: step");
            assert_eq!(g.started_at, w.started_at, "{what}: started_at");
            assert_eq!(g.holder, w.holder, "{what}: holder");
            assert_eq!(g.lease_until, w.lease_until, "{what}: lease_until");
            assert_eq!(g.attempts, w.attempts, "{what}: attempts");
            assert!(
                !pending || same_fields(&g.pending, &w.pending),
                "{what}: the PENDING value read back is not the one written (fields {:?}, wrote {:?})",
                g.pending,
                w.pending
            );
        }
        (g, w) => panic!(
            "{what}: in flight: got {:?}, want {:?}",
            g.as_ref().map(|f| &f.rotation_id),
            w.as_ref().map(|f| &f.rotation_id)
        ),
    }
}

fn time(secs_ago: i64) -> DateTime<Utc> {
    // Sub-second precision included: a store must keep times as written.
    Utc::now() - chrono::Duration::seconds(secs_ago)
}

// ---- store checks -----------------------------------------------------------------------

/// A store where nothing was ever written reads as no CURRENT and an empty state, through
/// every read.
async fn empty_store(s: Arc<dyn Store>) {
    let s = s.as_ref();
    let c = "empty store";
    let v = view(s, c).await;
    assert!(v.current.is_none(), "{}: view has a CURRENT", at(s, c));
    assert_same_state(&v.state, &StateRecord::default(), &at(s, c));
    assert!(current(s, c).await.is_none(), "{}: current()", at(s, c));
    let st = s
        .state()
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", at(s, c)));
    assert_same_state(&st, &StateRecord::default(), &at(s, c));
    assert_eq!(
        view(s, c).await.fence,
        v.fence,
        "{}: reads move the fence",
        at(s, c)
    );
}

/// Everything in a state record reads back as written, and a record without an in-flight
/// rotation holds no PENDING value.
async fn state_round_trip(s: Arc<dyn Store>) {
    let s = s.as_ref();
    let c = "state round trip";
    let f0 = view(s, c).await.fence;
    let mut rec = in_flight("agent-a", chrono::Duration::seconds(300), Step::Created);
    rec.pending = credential(&["username", "password"]);
    rec.attempts = 2;
    let full = StateRecord {
        in_flight: Some(rec.clone()),
        last: Some(LastRotation {
            rotation_id: uuid::Uuid::new_v4().to_string(),
            started_at: time(86_400),
            outcome: "failed".into(),
        }),
        taint: Some(Taint {
            at: time(3_600),
            rotate_after: time(-3_600),
            by: "operator-1".into(),
        }),
        failures: Some(Failures {
            count: 3,
            last_at: time(60),
            retry_at: time(-600),
        }),
    };
    let f1 = write(s, c, &f0, &full).await;
    assert_ne!(f1, f0, "{}: a write must move the fence", at(s, c));
    let v = view(s, c).await;
    assert_eq!(v.fence, f1, "{}: view's fence is the write's", at(s, c));
    assert!(
        v.current.is_none(),
        "{}: a state write made a CURRENT",
        at(s, c)
    );
    assert_same_state(&v.state, &full, &format!("{}: view", at(s, c)));
    let st = s
        .state()
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", at(s, c)));
    // `state()` is for `status`, which needs no credential: it may leave PENDING out.
    assert_same_record(&st, &full, false, &format!("{}: state()", at(s, c)));

    // The next step, as a failed attempt records it.
    rec.step = Step::Set;
    rec.attempts = 3;
    let next = StateRecord {
        in_flight: Some(rec.clone()),
        ..full.clone()
    };
    let f2 = write(s, c, &f1, &next).await;
    assert_same_state(
        &view(s, c).await.state,
        &next,
        &format!("{}: step set", at(s, c)),
    );

    // Nothing in flight: the rest stays, failures cleared stay cleared.
    let idle = StateRecord {
        in_flight: None,
        failures: None,
        ..full.clone()
    };
    let f3 = write(s, c, &f2, &idle).await;
    let v = view(s, c).await;
    assert_eq!(v.fence, f3, "{}", at(s, c));
    assert_same_state(&v.state, &idle, &format!("{}: idle", at(s, c)));

    // And an empty record is writable too.
    write(s, c, &f3, &StateRecord::default()).await;
    assert_same_state(
        &view(s, c).await.state,
        &StateRecord::default(),
        &format!("{}: empty", at(s, c)),
    );
}

/// Of two writers from one fence exactly one wins, and a write from a fence that has moved
/// on is refused and changes nothing.
async fn concurrent_writers(s: Arc<dyn Store>) {
    let s = s.as_ref();
    let c = "concurrent writers";
    // Twice: from the state that was never written, then from one that was.
    for round in 0..2 {
        let ctx = format!("{}, round {round}", at(s, c));
        let f0 = view(s, c).await.fence;
        let lease = chrono::Duration::seconds(300);
        let (a, b) = (
            in_flight("agent-a", lease, Step::Created),
            in_flight("agent-b", lease, Step::Created),
        );
        let (sa, sb) = (with(&a), with(&b));
        let (ra, rb) = tokio::join!(s.write_state(&f0, &sa), s.write_state(&f0, &sb));
        let (won, winner) = match (ra, rb) {
            (Ok(f), Err(StoreError::Conflict { .. })) => (f, &a),
            (Err(StoreError::Conflict { .. }), Ok(f)) => (f, &b),
            other => panic!("{ctx}: expected one winner and one conflict, got {other:?}"),
        };
        let v = view(s, c).await;
        assert_eq!(v.fence, won, "{ctx}");
        assert_same_state(
            &v.state,
            &with(winner),
            &format!("{ctx}: the winner's record"),
        );
        // A writer from the old fence loses, whatever it writes, and changes nothing.
        assert_conflict(
            s.write_state(&f0, &StateRecord::default()).await,
            &format!("{ctx}: stale write"),
        );
        let after = view(s, c).await;
        assert_eq!(after.fence, won, "{ctx}: a refused write moved the fence");
        assert_same_state(
            &after.state,
            &with(winner),
            &format!("{ctx}: after a refused write"),
        );
        if round == 0 {
            continue;
        }
        write(s, c, &won, &StateRecord::default()).await;
    }
}

/// A rotation is claimed by writing its in-flight record; once its holder's lease has run
/// out, another process takes it over by writing from the fence it read, and the old holder
/// is fenced out.
async fn claim_and_take_over(s: Arc<dyn Store>) {
    let s = s.as_ref();
    let c = "claim and take over";
    let f0 = view(s, c).await.fence;
    let mut rec = in_flight("agent-a", chrono::Duration::seconds(300), Step::Created);
    let fa = write(s, c, &f0, &with(&rec)).await;
    // A failed attempt renews the claim (its lease, here already run out) and records the
    // step.
    rec.step = Step::Set;
    rec.attempts = 1;
    rec.lease_until = Utc::now() - chrono::Duration::seconds(1);
    let fa = write(s, c, &fa, &with(&rec)).await;

    // Another process finds it, held by a lapsed lease, and takes it over.
    let v = view(s, c).await;
    let found = v
        .state
        .in_flight
        .clone()
        .unwrap_or_else(|| panic!("{}: the claim is not visible", at(s, c)));
    assert_same_state(&v.state, &with(&rec), &format!("{}: claimed", at(s, c)));
    assert!(found.lease_until < Utc::now(), "{}", at(s, c));
    let mut taken = found;
    taken.holder = "agent-b".into();
    taken.lease_until = Utc::now() + chrono::Duration::seconds(300);
    let fb = write(s, c, &v.fence, &with(&taken)).await;
    // The old holder comes back: its fence is stale.
    let mut late = rec.clone();
    late.step = Step::Tested;
    assert_conflict(
        s.write_state(&fa, &with(&late)).await,
        &format!("{}: the old holder's write", at(s, c)),
    );
    let v = view(s, c).await;
    assert_eq!(v.fence, fb, "{}", at(s, c));
    assert_same_state(
        &v.state,
        &with(&taken),
        &format!("{}: taken over", at(s, c)),
    );
    // The new holder ends it.
    let done = StateRecord {
        last: Some(LastRotation {
            rotation_id: taken.rotation_id.clone(),
            started_at: taken.started_at,
            outcome: "ok".into(),
        }),
        ..StateRecord::default()
    };
    write(s, c, &fb, &done).await;
    assert_same_state(
        &view(s, c).await.state,
        &done,
        &format!("{}: ended", at(s, c)),
    );
}

/// Promote makes PENDING CURRENT under a new version, does nothing when it already is, and
/// refuses when CURRENT was replaced since the rotation read it; it never moves the state's
/// fence.
async fn promote(s: Arc<dyn Store>) {
    let s = s.as_ref();
    let c = "promote";
    let lease = chrono::Duration::seconds(300);

    // The first credential.
    let v = view(s, c).await;
    let r1 = in_flight("agent-a", lease, Step::Created);
    let f = write(s, c, &v.fence, &with(&r1)).await;
    s.promote(&r1, None)
        .await
        .unwrap_or_else(|e| panic!("{}: first promote: {e}", at(s, c)));
    let c1 = current(s, c)
        .await
        .unwrap_or_else(|| panic!("{}: no CURRENT after a promote", at(s, c)));
    assert!(
        same_fields(&c1.fields, &r1.pending),
        "{}: CURRENT is not PENDING",
        at(s, c)
    );
    assert!(
        c1.created.is_some(),
        "{}: CURRENT has no creation time",
        at(s, c)
    );
    assert_eq!(
        view(s, c).await.fence,
        f,
        "{}: promote moved the state's fence",
        at(s, c)
    );
    // Again, from the same base (a resume after a crash after the promote): nothing changes.
    s.promote(&r1, None)
        .await
        .unwrap_or_else(|e| panic!("{}: repeated first promote: {e}", at(s, c)));
    s.promote(&r1, Some(&c1))
        .await
        .unwrap_or_else(|e| panic!("{}: promote of CURRENT itself: {e}", at(s, c)));
    assert_eq!(
        current(s, c).await.map(|c| c.version),
        Some(c1.version.clone()),
        "{}: a repeated promote made a new version",
        at(s, c)
    );
    let f = write(s, c, &f, &StateRecord::default()).await;

    // The next rotation, based on it.
    let r2 = in_flight("agent-a", lease, Step::Created);
    let f = write(s, c, &f, &with(&r2)).await;
    s.promote(&r2, Some(&c1))
        .await
        .unwrap_or_else(|e| panic!("{}: second promote: {e}", at(s, c)));
    let c2 = current(s, c).await.unwrap();
    assert!(
        same_fields(&c2.fields, &r2.pending),
        "{}: CURRENT is not PENDING",
        at(s, c)
    );
    assert_ne!(
        c2.version,
        c1.version,
        "{}: a promote keeps the version",
        at(s, c)
    );
    s.promote(&r2, Some(&c1))
        .await
        .unwrap_or_else(|e| panic!("{}: repeated second promote: {e}", at(s, c)));
    assert_eq!(
        current(s, c).await.unwrap().version,
        c2.version,
        "{}",
        at(s, c)
    );

    // Another rotation promotes first from the same base: this one is refused.
    let r3 = in_flight("agent-a", lease, Step::Created);
    let f = write(s, c, &f, &with(&r3)).await;
    let r4 = in_flight("agent-b", lease, Step::Created);
    write(s, c, &f, &with(&r4)).await;
    s.promote(&r4, Some(&c2))
        .await
        .unwrap_or_else(|e| panic!("{}: the other rotation's promote: {e}", at(s, c)));
    let c4 = current(s, c).await.unwrap();
    assert_conflict(
        s.promote(&r3, Some(&c2)).await,
        &format!("{}: a promote whose CURRENT was replaced", at(s, c)),
    );
    let now = current(s, c).await.unwrap();
    assert_eq!(
        now.version,
        c4.version,
        "{}: the refused promote wrote",
        at(s, c)
    );
    assert!(same_fields(&now.fields, &r4.pending), "{}", at(s, c));
    // A promote with no base when there is a CURRENT is refused as well.
    assert_conflict(
        s.promote(&r3, None).await,
        &format!("{}: a first promote over an existing CURRENT", at(s, c)),
    );
}

// ---- engine checks ----------------------------------------------------------------------

/// Counts the promotes that succeeded, to prove a race promoted once.
#[derive(Debug)]
struct Counted {
    inner: Arc<dyn Store>,
    promotes: AtomicUsize,
}

#[async_trait]
impl Store for Counted {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn view(&self) -> Result<StoreView, StoreError> {
        self.inner.view().await
    }
    async fn state(&self) -> Result<StateRecord, StoreError> {
        self.inner.state().await
    }
    async fn current(&self) -> Result<Option<Current>, StoreError> {
        self.inner.current().await
    }
    async fn write_state(&self, fence: &Fence, state: &StateRecord) -> Result<Fence, StoreError> {
        self.inner.write_state(fence, state).await
    }
    async fn promote(&self, rec: &InFlight, base: Option<&Current>) -> Result<(), StoreError> {
        let r = self.inner.promote(rec, base).await;
        if r.is_ok() {
            self.promotes.fetch_add(1, Ordering::SeqCst);
        }
        r
    }
}

async fn rotate(
    eng: &Engine,
    policy: &Policy,
    s: &dyn Store,
    trigger: &Trigger,
    c: &str,
) -> RotationOutcome {
    match eng.rotate(policy, s, &Generated, trigger).await {
        Ok(o) => o,
        Err(e) => panic!("{}: rotate: {e}", at(s, c)),
    }
}

/// Rotations complete: each makes a new CURRENT and leaves only the last rotation recorded.
async fn rotations_complete(s: Arc<dyn Store>, policy: &Policy, audit: &Arc<AuditLog>) {
    let s = s.as_ref();
    let c = "engine: rotations complete";
    let eng = engine(audit, "agent-a");
    let mut seen: Vec<String> = Vec::new();
    for round in 0..2 {
        let out = rotate(&eng, policy, s, &manual(), c).await;
        let RotationOutcome::Rotated {
            rotation_id,
            resumed: false,
            ..
        } = out
        else {
            panic!("{}, round {round}: {out:?}", at(s, c))
        };
        let v = view(s, c).await;
        let cur = v
            .current
            .unwrap_or_else(|| panic!("{}: no CURRENT after a rotation", at(s, c)));
        assert!(
            !seen.contains(&cur.version),
            "{}, round {round}: CURRENT's version did not change",
            at(s, c)
        );
        seen.push(cur.version);
        assert!(v.state.in_flight.is_none(), "{}: left in flight", at(s, c));
        let last = v.state.last.unwrap();
        assert_eq!(
            (last.rotation_id, last.outcome.as_str()),
            (rotation_id, "ok")
        );
    }
}

/// A scheduled slot is served once: a second process finding it served does nothing.
async fn a_served_slot_is_not_rotated_again(
    s: Arc<dyn Store>,
    policy: &Policy,
    audit: &Arc<AuditLog>,
) {
    let s = s.as_ref();
    let c = "engine: a served slot";
    let trigger = Trigger::Schedule {
        due: Utc::now() - chrono::Duration::minutes(5),
    };
    let out = rotate(&engine(audit, "agent-a"), policy, s, &trigger, c).await;
    assert!(
        matches!(out, RotationOutcome::Rotated { .. }),
        "{}: {out:?}",
        at(s, c)
    );
    let before = current(s, c).await.map(|c| c.version);
    let again = rotate(&engine(audit, "agent-b"), policy, s, &trigger, c).await;
    assert_eq!(again, RotationOutcome::AlreadyDone, "{}", at(s, c));
    assert_eq!(
        current(s, c).await.map(|c| c.version),
        before,
        "{}",
        at(s, c)
    );
}

/// Two engines racing for one slot: exactly one rotates, and CURRENT is promoted once.
async fn racing_engines_rotate_once(s: Arc<dyn Store>, policy: &Policy, audit: &Arc<AuditLog>) {
    let c = "engine: racing engines";
    let counted = Counted {
        inner: s,
        promotes: AtomicUsize::new(0),
    };
    let s: &dyn Store = &counted;
    let trigger = Trigger::Schedule {
        due: Utc::now() - chrono::Duration::seconds(1),
    };
    let (a, b) = (engine(audit, "agent-a"), engine(audit, "agent-b"));
    let (ra, rb) = tokio::join!(
        a.rotate(policy, s, &Generated, &trigger),
        b.rotate(policy, s, &Generated, &trigger)
    );
    let outcomes = [
        ra.unwrap_or_else(|e| panic!("{}: {e}", at(s, c))),
        rb.unwrap_or_else(|e| panic!("{}: {e}", at(s, c))),
    ];
    let winners: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| match o {
            RotationOutcome::Rotated { rotation_id, .. } => Some(rotation_id),
            _ => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "{}: {outcomes:?}", at(s, c));
    assert!(
        outcomes.iter().all(|o| matches!(
            o,
            RotationOutcome::Rotated { .. }
                | RotationOutcome::Busy { .. }
                | RotationOutcome::AlreadyDone
        )),
        "{}: {outcomes:?}",
        at(s, c)
    );
    assert_eq!(
        counted.promotes.load(Ordering::SeqCst),
        1,
        "{}: promoted other than once",
        at(s, c)
    );
    let v = view(s, c).await;
    assert!(v.state.in_flight.is_none(), "{}", at(s, c));
    assert_eq!(
        v.state.last.unwrap().rotation_id,
        *winners[0],
        "{}",
        at(s, c)
    );
}

/// Plants a rotation that `holder` started and drove to `step`, through the store's own
/// writes (create first, as the engine does).
async fn plant(s: &dyn Store, c: &str, holder: &str, lease_secs: i64, step: Step) -> InFlight {
    let mut rec = in_flight(holder, chrono::Duration::seconds(lease_secs), Step::Created);
    let mut fence = view(s, c).await.fence;
    for st in [Step::Created, Step::Set, Step::Tested] {
        if st > step {
            break;
        }
        rec.step = st;
        fence = write(s, c, &fence, &with(&rec)).await;
    }
    rec
}

/// A rotation whose holder's lease still runs is left alone.
async fn a_live_holder_is_left_alone(s: Arc<dyn Store>, policy: &Policy, audit: &Arc<AuditLog>) {
    let s = s.as_ref();
    let c = "engine: a live holder";
    let rec = plant(s, c, "agent-other", 300, Step::Set).await;
    let before = view(s, c).await;
    let out = rotate(&engine(audit, "agent-a"), policy, s, &manual(), c).await;
    assert_eq!(
        out,
        RotationOutcome::Busy {
            holder: "agent-other".into()
        },
        "{}",
        at(s, c)
    );
    let after = view(s, c).await;
    assert!(
        after.current.is_none(),
        "{}: something was promoted",
        at(s, c)
    );
    assert_eq!(
        after.fence,
        before.fence,
        "{}: the state was written",
        at(s, c)
    );
    assert_same_state(&after.state, &with(&rec), &at(s, c));
}

/// A rotation whose holder's lease ran out is taken over and finished with its own PENDING
/// value, not a fresh one.
async fn an_expired_holder_is_taken_over(
    s: Arc<dyn Store>,
    policy: &Policy,
    audit: &Arc<AuditLog>,
) {
    let s = s.as_ref();
    let c = "engine: an expired holder";
    let rec = plant(s, c, "agent-dead", -1, Step::Set).await;
    let out = rotate(&engine(audit, "agent-a"), policy, s, &manual(), c).await;
    assert_eq!(
        out,
        RotationOutcome::Rotated {
            rotation_id: rec.rotation_id.clone(),
            started_at: rec.started_at,
            resumed: true
        },
        "{}",
        at(s, c)
    );
    let cur = current(s, c).await.unwrap();
    assert!(
        same_fields(&cur.fields, &rec.pending),
        "{}: the planted PENDING value did not become CURRENT",
        at(s, c)
    );
    let st = view(s, c).await.state;
    assert!(st.in_flight.is_none(), "{}", at(s, c));
    assert_eq!(
        st.last.unwrap().rotation_id,
        rec.rotation_id,
        "{}",
        at(s, c)
    );
}

#[cfg(test)]
mod tests {
    use super::super::memory::MemoryStore;
    use super::*;

    #[tokio::test]
    async fn the_memory_store_keeps_the_store_contract() {
        check_store(|name: &str| Arc::new(MemoryStore::new(name)) as Arc<dyn Store>).await;
    }

    #[tokio::test]
    async fn the_engine_contract_holds_over_the_memory_store() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(
            &file,
            "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: { name: api-token }\nspec:\n  schedule: \"@daily\"\n  store: { vault-kv: { mount: secret, path: apps/api-token } }\n  target: { generated: {} }\n  generator: { length: 24 }\n",
        )
        .unwrap();
        let policy = crate::policy::load(&file).unwrap().remove(0);
        check_engine(
            |name: &str| Arc::new(MemoryStore::new(name)) as Arc<dyn Store>,
            &policy,
        )
        .await;
    }
}

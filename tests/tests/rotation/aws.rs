//! The rotation engine over AWS Secrets Manager and a generated target, against a real moto
//! server. The SDK is built with moto's endpoint, a region and static test credentials, so
//! nothing here can reach AWS.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use keyturn_agent::policy::{self, Policy};
use keyturn_agent::rotation::store::aws_sm::{AwsSmStore, default_state_id, sdk};
use keyturn_agent::rotation::store::{InFlight, StateRecord, Step, Store, StoreError, contract};
use keyturn_agent::rotation::target::generated::Generated;
use keyturn_agent::rotation::{Engine, RotationOutcome, Trigger};
use keyturn_core::SecretValue;
use keyturn_core::audit::{Actor, AuditLog, AuditLogOptions, HmacKey};
use keyturn_core::vault::SecretData;
use keyturn_tests::canary::{assert_absent, canary};
use keyturn_tests::moto::{Moto, REGION};
use serde_json::{Value, json};

const SECRET: &str = "apps/api-token";

struct Env {
    moto: Moto,
    client: sdk::Client,
    policy: Policy,
    audit: Arc<AuditLog>,
    audit_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn client_for(endpoint_url: &str) -> sdk::Client {
    let conf = sdk::Config::builder()
        .behavior_version(sdk::config::BehaviorVersion::latest())
        .endpoint_url(endpoint_url)
        .region(sdk::config::Region::new(REGION))
        .credentials_provider(sdk::config::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "keyturn-tests",
        ))
        .build();
    sdk::Client::from_conf(conf)
}

async fn env() -> Env {
    let moto = Moto::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pfile = dir.path().join("p.yaml");
    std::fs::write(
        &pfile,
        format!(
            "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: api-token }}\nspec:\n  schedule: \"@daily\"\n  store: {{ aws-secretsmanager: {{ secret-id: {SECRET} }} }}\n  target: {{ generated: {{}} }}\n  generator: {{ length: 24 }}\n"
        ),
    )
    .unwrap();
    let policy = policy::load(&pfile).unwrap().remove(0);
    let audit_file = dir.path().join("audit.jsonl");
    let audit = Arc::new(
        AuditLog::open(AuditLogOptions::new(HmacKey::generate().unwrap()).file(&audit_file))
            .unwrap(),
    );
    let client = client_for(&moto.endpoint_url());
    Env {
        moto,
        client,
        policy,
        audit,
        audit_file,
        _dir: dir,
    }
}

fn engine(e: &Env, holder: &str) -> Engine {
    Engine::new(e.audit.clone(), Actor::agent(holder), holder)
}

fn store(e: &Env) -> AwsSmStore {
    AwsSmStore::for_secret(e.client.clone(), SECRET)
}

fn manual() -> Trigger {
    Trigger::Manual { reason: None }
}

/// Creates the secret as an operator would, with a first value; returns its version id.
async fn seed(e: &Env, value: &str) -> String {
    let out = e
        .moto
        .secretsmanager(
            "CreateSecret",
            json!({ "Name": SECRET, "SecretString": json!({ "value": value }).to_string() }),
        )
        .await
        .unwrap();
    out["VersionId"].as_str().unwrap().to_owned()
}

/// Version id → labels, as Secrets Manager reports them.
async fn labels(e: &Env) -> HashMap<String, Vec<String>> {
    let out = e
        .moto
        .secretsmanager("DescribeSecret", json!({ "SecretId": SECRET }))
        .await
        .unwrap();
    serde_json::from_value(out["VersionIdsToStages"].clone()).unwrap()
}

fn holders(labels: &HashMap<String, Vec<String>>, label: &str) -> Vec<String> {
    let mut v: Vec<String> = labels
        .iter()
        .filter(|(_, l)| l.iter().any(|l| l == label))
        .map(|(id, _)| id.clone())
        .collect();
    v.sort();
    v
}

/// The `value` field and version id of the version carrying `stage`.
async fn at_stage(e: &Env, stage: &str) -> (String, String) {
    let out = e
        .moto
        .secretsmanager(
            "GetSecretValue",
            json!({ "SecretId": SECRET, "VersionStage": stage }),
        )
        .await
        .unwrap();
    let fields: Value = serde_json::from_str(out["SecretString"].as_str().unwrap()).unwrap();
    let value = fields
        .get("value")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    (value, out["VersionId"].as_str().unwrap().to_owned())
}

async fn assert_no_pending(e: &Env) {
    assert_eq!(
        holders(&labels(e).await, "AWSPENDING"),
        Vec::<String>::new(),
        "AWSPENDING left"
    );
}

fn in_flight(holder: &str, lease_secs: i64, value: &SecretValue) -> InFlight {
    let mut pending = SecretData::new();
    pending.insert("value", value.clone());
    InFlight {
        rotation_id: uuid::Uuid::new_v4().to_string(),
        step: Step::Created,
        pending,
        started_at: Utc::now(),
        holder: holder.into(),
        lease_until: Utc::now() + chrono::Duration::seconds(lease_secs),
        attempts: 0,
    }
}

/// Plants a rotation that a process started and then stopped driving at `step`, through the
/// store's own writes (create first, as the engine does, so its PENDING version exists).
async fn plant_in_flight(e: &Env, holder: &str, lease_secs: i64, step: Step) -> InFlight {
    let value = SecretValue::from_str_copy(&canary("planted-pending"));
    let mut rec = in_flight(holder, lease_secs, &value);
    let s = store(e);
    let mut fence = s.view().await.unwrap().fence;
    for st in [Step::Created, Step::Set, Step::Tested] {
        if st > step {
            break;
        }
        rec.step = st;
        let state = StateRecord {
            in_flight: Some(rec.clone()),
            ..StateRecord::default()
        };
        fence = s.write_state(&fence, &state).await.unwrap();
    }
    rec
}

fn value_of(rec: &InFlight) -> String {
    rec.pending
        .get("value")
        .unwrap()
        .expose_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_rotation_makes_a_new_awscurrent_keeps_the_old_one_as_awsprevious_and_leaves_no_awspending()
 {
    let e = env().await;
    let v0 = canary("seed");
    let seed_version = seed(&e, &v0).await;
    let eng = engine(&e, "agent-a");
    let first = eng
        .rotate(&e.policy, &store(&e), &Generated, &manual())
        .await
        .unwrap();
    let RotationOutcome::Rotated {
        rotation_id: r1,
        resumed: false,
        ..
    } = first
    else {
        panic!("{first:?}")
    };
    let (v1, cur1) = at_stage(&e, "AWSCURRENT").await;
    assert_eq!(
        (v1.len(), cur1.as_str()),
        (24, r1.as_str()),
        "the rotation id is the version id"
    );
    assert_eq!(
        at_stage(&e, "AWSPREVIOUS").await,
        (v0.clone(), seed_version)
    );
    assert_no_pending(&e).await;

    let second = eng
        .rotate(&e.policy, &store(&e), &Generated, &manual())
        .await
        .unwrap();
    let RotationOutcome::Rotated {
        rotation_id: r2, ..
    } = second
    else {
        panic!("{second:?}")
    };
    let (v2, cur2) = at_stage(&e, "AWSCURRENT").await;
    assert_eq!(cur2, r2);
    assert_ne!(v2, v1);
    assert_eq!(at_stage(&e, "AWSPREVIOUS").await, (v1.clone(), r1));
    assert_no_pending(&e).await;
    // The state holds no pending rotation any more, only the last one.
    let view = store(&e).view().await.unwrap();
    assert!(view.state.in_flight.is_none());
    assert_eq!(view.state.last.unwrap().rotation_id, r2);
    assert_eq!(view.current.unwrap().version, r2);

    // The audit log holds every step, chained, and no value.
    let report = keyturn_core::audit::verify(std::slice::from_ref(&e.audit_file));
    assert!(report.is_ok(), "{report:?}");
    let text = std::fs::read(&e.audit_file).unwrap();
    for action in [
        "rotate.create",
        "rotate.set",
        "rotate.test",
        "rotate.finish",
        "rotate.done",
    ] {
        assert!(
            String::from_utf8_lossy(&text).contains(action),
            "no {action} event"
        );
    }
    let values = [v0.as_str(), v1.as_str(), v2.as_str()];
    assert_absent("audit log", &text, &values);
    assert_absent("moto server log", e.moto.log().as_bytes(), &values);
    // The state secret holds ids and times, never a value.
    let state = e
        .moto
        .secretsmanager(
            "GetSecretValue",
            json!({ "SecretId": default_state_id(SECRET) }),
        )
        .await
        .unwrap();
    assert_absent("state secret", state.to_string().as_bytes(), &values);
}

#[tokio::test]
async fn a_first_rotation_creates_the_secret_with_an_empty_placeholder_as_awsprevious() {
    let e = env().await;
    let out = engine(&e, "agent-a")
        .rotate(&e.policy, &store(&e), &Generated, &manual())
        .await;
    let RotationOutcome::Rotated { rotation_id, .. } = out.unwrap() else {
        panic!()
    };
    let (v1, cur) = at_stage(&e, "AWSCURRENT").await;
    assert_eq!((v1.len(), cur), (24, rotation_id));
    let prev = e
        .moto
        .secretsmanager(
            "GetSecretValue",
            json!({ "SecretId": SECRET, "VersionStage": "AWSPREVIOUS" }),
        )
        .await
        .unwrap();
    assert_eq!(
        prev["SecretString"], "{}",
        "no credential before the first one"
    );
    assert_no_pending(&e).await;
    assert_eq!(labels(&e).await.len(), 2);
}

#[tokio::test]
async fn two_engines_racing_for_one_slot_rotate_it_exactly_once() {
    let e = env().await;
    let v0 = canary("seed");
    let seed_version = seed(&e, &v0).await;
    let due = Utc::now() - chrono::Duration::seconds(1);
    let (a, b) = (engine(&e, "agent-a"), engine(&e, "agent-b"));
    let (sa, sb) = (store(&e), store(&e));
    let trigger = Trigger::Schedule { due };
    let (ra, rb) = tokio::join!(
        a.rotate(&e.policy, &sa, &Generated, &trigger),
        b.rotate(&e.policy, &sb, &Generated, &trigger)
    );
    let outcomes = [ra.unwrap(), rb.unwrap()];
    let winners: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| match o {
            RotationOutcome::Rotated { rotation_id, .. } => Some(rotation_id),
            _ => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    // One new version became CURRENT, the seed is PREVIOUS, nothing is PENDING. A loser
    // that got as far as putting its PENDING version leaves it unlabelled (deprecated, and
    // removed by Secrets Manager in time): never CURRENT, PREVIOUS or PENDING.
    let l = labels(&e).await;
    assert_eq!(holders(&l, "AWSCURRENT"), vec![winners[0].clone()]);
    assert_eq!(holders(&l, "AWSPREVIOUS"), vec![seed_version]);
    assert_no_pending(&e).await;
    assert_eq!(l.values().filter(|l| !l.is_empty()).count(), 2, "{l:?}");
    assert_eq!(
        store(&e)
            .view()
            .await
            .unwrap()
            .state
            .last
            .unwrap()
            .rotation_id,
        *winners[0]
    );
}

#[tokio::test]
async fn two_engines_racing_for_a_first_rotation_create_the_secret_once() {
    let e = env().await;
    let (a, b) = (engine(&e, "agent-a"), engine(&e, "agent-b"));
    let (sa, sb) = (store(&e), store(&e));
    let trigger = Trigger::Schedule {
        due: Utc::now() - chrono::Duration::seconds(1),
    };
    let (ra, rb) = tokio::join!(
        a.rotate(&e.policy, &sa, &Generated, &trigger),
        b.rotate(&e.policy, &sb, &Generated, &trigger)
    );
    let outcomes = [ra.unwrap(), rb.unwrap()];
    let winners: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| match o {
            RotationOutcome::Rotated { rotation_id, .. } => Some(rotation_id),
            _ => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    assert_eq!(at_stage(&e, "AWSCURRENT").await.1, *winners[0]);
    let prev = e
        .moto
        .secretsmanager(
            "GetSecretValue",
            json!({ "SecretId": SECRET, "VersionStage": "AWSPREVIOUS" }),
        )
        .await
        .unwrap();
    assert_eq!(prev["SecretString"], "{}");
    assert_no_pending(&e).await;
}

/// That one of two writers from one fence wins is the store contract's; here, what it leaves
/// in Secrets Manager.
#[tokio::test]
async fn of_two_state_writers_only_the_winner_keeps_awspending_and_its_retried_write_is_no_conflict()
 {
    let e = env().await;
    seed(&e, &canary("seed")).await;
    let (sa, sb) = (store(&e), store(&e));
    let value = SecretValue::from_str_copy(&canary("pending"));
    // Twice: from the absent state secret (CreateSecret), then from an existing version (the
    // AWSCURRENT label move).
    for round in 0..2 {
        let fence = sa.view().await.unwrap().fence;
        let ra = StateRecord {
            in_flight: Some(in_flight("agent-a", 300, &value)),
            ..StateRecord::default()
        };
        let rb = StateRecord {
            in_flight: Some(in_flight("agent-b", 300, &value)),
            ..StateRecord::default()
        };
        let (wa, wb) = tokio::join!(sa.write_state(&fence, &ra), sb.write_state(&fence, &rb));
        assert!(wa.is_ok() != wb.is_ok(), "round {round}: {wa:?} {wb:?}");
        // Only one version carries AWSPENDING: the winner's.
        let view = sa.view().await.unwrap();
        let winner = view.state.in_flight.unwrap();
        assert_eq!(
            holders(&labels(&e).await, "AWSPENDING"),
            vec![winner.rotation_id.clone()],
            "round {round}"
        );
        // The winner repeating its own write (a retry after a lost answer) is not a conflict.
        let again = StateRecord {
            in_flight: Some(winner.clone()),
            ..StateRecord::default()
        };
        let f2 = sa.write_state(&view.fence, &again).await.unwrap();
        assert_eq!(sa.write_state(&view.fence, &again).await.unwrap(), f2);
        sa.write_state(&f2, &StateRecord::default()).await.unwrap();
    }
}

#[tokio::test]
async fn a_state_write_with_nothing_in_flight_leaves_no_awspending() {
    let e = env().await;
    seed(&e, &canary("seed")).await;
    let rec = plant_in_flight(&e, "agent-a", 300, Step::Created).await;
    assert_eq!(
        holders(&labels(&e).await, "AWSPENDING"),
        vec![rec.rotation_id.clone()]
    );
    let s = store(&e);
    let fence = s.view().await.unwrap().fence;
    s.write_state(&fence, &StateRecord::default())
        .await
        .unwrap();
    assert_no_pending(&e).await;
    assert!(s.view().await.unwrap().state.in_flight.is_none());
}

/// That a live holder's rotation is left alone is the store contract's; here, that its
/// PENDING version keeps its label.
#[tokio::test]
async fn a_rotation_held_by_a_live_process_keeps_its_awspending_version() {
    let e = env().await;
    let v0 = canary("seed");
    seed(&e, &v0).await;
    let rec = plant_in_flight(&e, "agent-other", 300, Step::Set).await;
    let out = engine(&e, "agent-a")
        .rotate(&e.policy, &store(&e), &Generated, &manual())
        .await;
    assert!(matches!(out, Ok(RotationOutcome::Busy { .. })), "{out:?}");
    assert_eq!(at_stage(&e, "AWSCURRENT").await.0, v0, "nothing promoted");
    assert_eq!(
        holders(&labels(&e).await, "AWSPENDING"),
        vec![rec.rotation_id]
    );
}

#[tokio::test]
async fn a_rotation_whose_holder_lease_expired_is_taken_over_and_finishes_with_its_pending_value() {
    let e = env().await;
    let v0 = canary("seed");
    let seed_version = seed(&e, &v0).await;
    let rec = plant_in_flight(&e, "agent-dead", -1, Step::Set).await;
    let out = engine(&e, "agent-a")
        .rotate(&e.policy, &store(&e), &Generated, &manual())
        .await;
    let out = out.unwrap();
    assert!(
        matches!(&out, RotationOutcome::Rotated { rotation_id, resumed: true, started_at }
            if *rotation_id == rec.rotation_id && *started_at == rec.started_at),
        "the planted rotation, resumed: {out:?}"
    );
    assert_eq!(
        at_stage(&e, "AWSCURRENT").await,
        (value_of(&rec), rec.rotation_id),
        "the pending value, not a fresh one, became current"
    );
    assert_eq!(at_stage(&e, "AWSPREVIOUS").await, (v0, seed_version));
    assert_no_pending(&e).await;
}

#[tokio::test]
async fn a_stale_awspending_unknown_to_the_state_is_cleared_and_a_new_rotation_completes() {
    let e = env().await;
    let v0 = canary("seed");
    let seed_version = seed(&e, &v0).await;
    // A rotation that crashed after putting its PENDING version and before its state write.
    let stale = canary("stale-pending");
    let stale_version = uuid::Uuid::new_v4().to_string();
    e.moto
        .secretsmanager(
            "PutSecretValue",
            json!({
                "SecretId": SECRET,
                "ClientRequestToken": stale_version,
                "SecretString": json!({ "value": stale }).to_string(),
                "VersionStages": ["AWSPENDING"],
            }),
        )
        .await
        .unwrap();
    assert!(
        store(&e).view().await.unwrap().state.in_flight.is_none(),
        "the state does not know it"
    );
    let out = engine(&e, "agent-a")
        .rotate(&e.policy, &store(&e), &Generated, &manual())
        .await;
    let RotationOutcome::Rotated {
        rotation_id,
        resumed: false,
        ..
    } = out.unwrap()
    else {
        panic!()
    };
    let (v1, cur) = at_stage(&e, "AWSCURRENT").await;
    assert_eq!(cur, rotation_id);
    assert_ne!(v1, stale);
    assert_eq!(at_stage(&e, "AWSPREVIOUS").await, (v0, seed_version));
    assert_no_pending(&e).await;
    assert!(
        labels(&e).await[&stale_version].is_empty(),
        "the stale version is left unlabelled"
    );
}

#[tokio::test]
async fn resuming_a_promote_that_already_happened_leaves_the_old_value_as_awsprevious() {
    let e = env().await;
    let v0 = canary("seed");
    let seed_version = seed(&e, &v0).await;
    let rec = plant_in_flight(&e, "agent-a", 300, Step::Tested).await;
    // The process promoted, then died before recording `finished`.
    let s = store(&e);
    let base = s.view().await.unwrap().current;
    s.promote(&rec, base.as_ref()).await.unwrap();
    assert_eq!(at_stage(&e, "AWSCURRENT").await.1, rec.rotation_id);
    // It restarts, finds its own rotation at `tested`, and promotes again.
    let out = engine(&e, "agent-a")
        .rotate(&e.policy, &store(&e), &Generated, &manual())
        .await;
    let out = out.unwrap();
    assert!(
        matches!(&out, RotationOutcome::Rotated { rotation_id, resumed: true, started_at }
            if *rotation_id == rec.rotation_id && *started_at == rec.started_at),
        "{out:?}"
    );
    assert_eq!(
        at_stage(&e, "AWSCURRENT").await,
        (value_of(&rec), rec.rotation_id.clone())
    );
    assert_eq!(
        at_stage(&e, "AWSPREVIOUS").await,
        (v0, seed_version),
        "the old value, still"
    );
    assert_no_pending(&e).await;
    // And a promote with a stale base after that is still a no-op, not a conflict.
    s.promote(&rec, base.as_ref()).await.unwrap();
    assert_eq!(at_stage(&e, "AWSCURRENT").await.1, rec.rotation_id);
}

#[tokio::test]
async fn a_promote_whose_current_was_replaced_behind_its_back_is_a_conflict() {
    let e = env().await;
    seed(&e, &canary("seed")).await;
    let rec = plant_in_flight(&e, "agent-a", 300, Step::Tested).await;
    let s = store(&e);
    let base = s.view().await.unwrap().current;
    // An operator writes a new value by hand mid-rotation.
    let manual = canary("manual");
    e.moto
        .secretsmanager(
            "PutSecretValue",
            json!({ "SecretId": SECRET, "SecretString": json!({ "value": manual }).to_string() }),
        )
        .await
        .unwrap();
    let manual_version = holders(&labels(&e).await, "AWSCURRENT");
    let out = s.promote(&rec, base.as_ref()).await;
    assert!(matches!(out, Err(StoreError::Conflict { .. })), "{out:?}");
    assert_eq!(
        holders(&labels(&e).await, "AWSCURRENT"),
        manual_version,
        "the operator's value stays"
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_retryable_error_that_names_the_secret() {
    let closed = keyturn_tests::process::ClosedPort::new();
    let port = closed.port();
    let s = AwsSmStore::for_secret(client_for(&format!("http://127.0.0.1:{port}")), SECRET);
    let err = s.view().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains(SECRET), "{err}");
}

#[tokio::test]
async fn a_value_that_is_not_a_json_object_is_corrupt_and_not_quoted_in_the_error() {
    let e = env().await;
    let plain = canary("plain-text-secret");
    e.moto
        .secretsmanager(
            "CreateSecret",
            json!({ "Name": SECRET, "SecretString": plain }),
        )
        .await
        .unwrap();
    let err = store(&e).view().await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(!err.is_retryable());
    assert_absent("the error", err.to_string().as_bytes(), &[plain.as_str()]);
}

/// The checks every store shares (`keyturn_agent::rotation::store::contract`), each on a
/// secret of its own in this moto: reads of an empty store, the state record's round trip,
/// compare-and-set between writers, claim and take-over, promote; and the engine over the
/// store: a slot served once, two racing engines, a live holder left alone, an expired one
/// taken over.
#[tokio::test]
async fn aws_sm_keeps_the_store_contract() {
    let e = env().await;
    let client = e.client.clone();
    contract::check_all(
        move |name: &str| {
            Arc::new(AwsSmStore::for_secret(
                client.clone(),
                &format!("contract/{name}"),
            )) as Arc<dyn Store>
        },
        &e.policy,
    )
    .await;
}

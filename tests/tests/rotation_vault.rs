//! The rotation engine over Vault KV v2 and a generated target, against a real OpenBao.

use std::sync::Arc;

use chrono::Utc;
use keyturn_agent::policy::{self, Policy};
use keyturn_agent::rotation::store::vault_kv::VaultKvStore;
use keyturn_agent::rotation::store::{Fence, InFlight, StateRecord, Step, Store};
use keyturn_agent::rotation::target::generated::Generated;
use keyturn_agent::rotation::{Engine, RotationOutcome, Trigger};
use keyturn_core::SecretValue;
use keyturn_core::audit::{Actor, AuditLog, AuditLogOptions, HmacKey};
use keyturn_core::vault::{SecretData, Vault};
use keyturn_tests::canary::assert_absent;
use keyturn_tests::openbao::OpenBao;

struct Env {
    bao: OpenBao,
    vault: Arc<Vault>,
    policy: Policy,
    audit: Arc<AuditLog>,
    audit_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    let bao = OpenBao::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pfile = dir.path().join("p.yaml");
    std::fs::write(
        &pfile,
        "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: { name: api-token }\nspec:\n  schedule: \"@daily\"\n  store: { vault-kv: { mount: secret, path: apps/api-token } }\n  target: { generated: {} }\n  generator: { length: 24 }\n",
    )
    .unwrap();
    let policy = policy::load(&pfile).unwrap().remove(0);
    let audit_file = dir.path().join("audit.jsonl");
    let audit = Arc::new(
        AuditLog::open(AuditLogOptions::new(HmacKey::generate().unwrap()).file(&audit_file))
            .unwrap(),
    );
    let vault = Arc::new(bao.root_client().unwrap());
    Env {
        bao,
        vault,
        policy,
        audit,
        audit_file,
        _dir: dir,
    }
}

fn engine(e: &Env, holder: &str) -> Engine {
    Engine::new(e.audit.clone(), Actor::agent(holder), holder)
}

fn store(e: &Env) -> VaultKvStore {
    VaultKvStore::new(e.vault.clone(), "secret", "apps/api-token")
}

async fn value_at(e: &Env, version: Option<u64>) -> (SecretValue, u64) {
    let v = e
        .vault
        .kv2_read("secret", "apps/api-token", version)
        .await
        .unwrap();
    (v.data.get("value").unwrap().clone(), v.version)
}

#[tokio::test]
async fn a_rotation_makes_a_new_current_keeps_the_previous_and_clears_its_state() {
    let e = env().await;
    let eng = engine(&e, "agent-a");
    let first = eng
        .rotate(
            &e.policy,
            &store(&e),
            &Generated,
            &Trigger::Manual { reason: None },
        )
        .await
        .unwrap();
    assert!(
        matches!(first, RotationOutcome::Rotated { resumed: false, .. }),
        "{first:?}"
    );
    let (v1, ver1) = value_at(&e, None).await;
    assert_eq!(v1.len(), 24);
    let second = eng
        .rotate(
            &e.policy,
            &store(&e),
            &Generated,
            &Trigger::Manual { reason: None },
        )
        .await
        .unwrap();
    let RotationOutcome::Rotated { rotation_id, .. } = second else {
        panic!("{second:?}")
    };
    let (v2, ver2) = value_at(&e, None).await;
    assert_eq!(ver2, ver1 + 1);
    assert!(!v2.ct_eq(&v1));
    // PREVIOUS is the version before CURRENT, and it is the first value.
    assert!(value_at(&e, Some(ver2 - 1)).await.0.ct_eq(&v1));
    // The state holds no pending value any more, only the last rotation.
    let view = store(&e).view().await.unwrap();
    assert!(view.state.in_flight.is_none());
    assert_eq!(view.state.last.unwrap().rotation_id, rotation_id);
    // The audit log holds every step, chained, and neither value: each side effect has its
    // intent before it and its outcome after it.
    let report = keyturn_core::audit::verify(std::slice::from_ref(&e.audit_file));
    assert!(report.is_ok(), "{report:?}");
    let text = std::fs::read(&e.audit_file).unwrap();
    let second: Vec<(String, String)> = String::from_utf8_lossy(&text)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["rotation_id"] == rotation_id.as_str())
        .map(|v| {
            (
                v["action"].as_str().unwrap().to_owned(),
                v["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut expected = Vec::new();
    for step in ["create", "set", "test", "finish"] {
        for outcome in ["started", "ok"] {
            expected.push((format!("rotate.{step}"), outcome.to_owned()));
        }
    }
    expected.push(("rotate.done".to_owned(), "ok".to_owned()));
    assert_eq!(second, expected);
    assert_absent(
        "audit log",
        &text,
        &[v1.expose_str().unwrap(), v2.expose_str().unwrap()],
    );
    assert_absent(
        "vault server log",
        e.bao.log().as_bytes(),
        &[v1.expose_str().unwrap(), v2.expose_str().unwrap()],
    );
}

#[tokio::test]
async fn a_slot_already_served_by_a_later_rotation_is_not_rotated_again() {
    let e = env().await;
    let due = Utc::now() - chrono::Duration::minutes(5);
    let eng = engine(&e, "agent-a");
    assert!(matches!(
        eng.rotate(
            &e.policy,
            &store(&e),
            &Generated,
            &Trigger::Schedule { due }
        )
        .await
        .unwrap(),
        RotationOutcome::Rotated { .. }
    ));
    let (_, ver) = value_at(&e, None).await;
    let again = engine(&e, "agent-b")
        .rotate(
            &e.policy,
            &store(&e),
            &Generated,
            &Trigger::Schedule { due },
        )
        .await
        .unwrap();
    assert_eq!(again, RotationOutcome::AlreadyDone);
    assert_eq!(value_at(&e, None).await.1, ver);
}

#[tokio::test]
async fn two_engines_racing_for_one_slot_rotate_it_exactly_once() {
    let e = env().await;
    let due = Utc::now() - chrono::Duration::seconds(1);
    let (a, b) = (engine(&e, "agent-a"), engine(&e, "agent-b"));
    let (sa, sb) = (store(&e), store(&e));
    let trigger = Trigger::Schedule { due };
    let (ra, rb) = tokio::join!(
        a.rotate(&e.policy, &sa, &Generated, &trigger),
        b.rotate(&e.policy, &sb, &Generated, &trigger)
    );
    let outcomes = [ra.unwrap(), rb.unwrap()];
    let rotated = outcomes
        .iter()
        .filter(|o| matches!(o, RotationOutcome::Rotated { .. }))
        .count();
    assert_eq!(rotated, 1, "{outcomes:?}");
    assert_eq!(value_at(&e, None).await.1, 1, "exactly one version written");
}

async fn plant_in_flight(e: &Env, holder: &str, lease_secs: i64, step: Step) -> SecretValue {
    let mut pending = SecretData::new();
    let v = SecretValue::from_str_copy("planted-pending-value-0123");
    pending.insert("value", v.clone());
    let rec = InFlight {
        rotation_id: uuid::Uuid::new_v4().to_string(),
        step,
        pending,
        started_at: Utc::now(),
        holder: holder.into(),
        lease_until: Utc::now() + chrono::Duration::seconds(lease_secs),
        attempts: 0,
    };
    store(e)
        .write_state(
            &Fence("0".into()),
            &StateRecord {
                in_flight: Some(rec),
                ..StateRecord::default()
            },
        )
        .await
        .unwrap();
    v
}

#[tokio::test]
async fn a_rotation_held_by_a_live_process_is_left_alone() {
    let e = env().await;
    plant_in_flight(&e, "agent-other", 300, Step::Set).await;
    let out = engine(&e, "agent-a")
        .rotate(
            &e.policy,
            &store(&e),
            &Generated,
            &Trigger::Manual { reason: None },
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        RotationOutcome::Busy {
            holder: "agent-other".into()
        }
    );
    assert!(
        e.vault
            .kv2_read("secret", "apps/api-token", None)
            .await
            .is_err(),
        "nothing promoted"
    );
}

#[tokio::test]
async fn a_rotation_whose_holder_lease_expired_is_taken_over_and_finishes_with_its_pending_value() {
    let e = env().await;
    let pending = plant_in_flight(&e, "agent-dead", -1, Step::Set).await;
    let out = engine(&e, "agent-a")
        .rotate(
            &e.policy,
            &store(&e),
            &Generated,
            &Trigger::Manual { reason: None },
        )
        .await
        .unwrap();
    assert!(
        matches!(out, RotationOutcome::Rotated { resumed: true, .. }),
        "{out:?}"
    );
    assert!(
        value_at(&e, None).await.0.ct_eq(&pending),
        "the pending value, not a fresh one, became current"
    );
}

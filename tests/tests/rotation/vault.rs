//! The rotation engine over Vault KV v2 and a generated target, against a real OpenBao.

use std::sync::Arc;

use keyturn_agent::policy::{self, Policy};
use keyturn_agent::rotation::store::vault_kv::VaultKvStore;
use keyturn_agent::rotation::store::{Store, contract};
use keyturn_agent::rotation::target::generated::Generated;
use keyturn_agent::rotation::{Engine, RotationOutcome, Trigger};
use keyturn_core::SecretValue;
use keyturn_core::audit::{Actor, AuditLog, AuditLogOptions, HmacKey};
use keyturn_core::vault::Vault;
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

/// The checks every store shares (`keyturn_agent::rotation::store::contract`), each on a
/// path of its own in this OpenBao: reads of an empty store, the state record's round trip,
/// compare-and-set between writers, claim and take-over, promote; and the engine over the
/// store: a slot served once, two racing engines, a live holder left alone, an expired one
/// taken over.
#[tokio::test]
async fn vault_kv_keeps_the_store_contract() {
    let e = env().await;
    let vault = e.vault.clone();
    contract::check_all(
        move |name: &str| {
            Arc::new(VaultKvStore::new(
                vault.clone(),
                "secret",
                &format!("contract/{name}"),
            )) as Arc<dyn Store>
        },
        &e.policy,
    )
    .await;
}

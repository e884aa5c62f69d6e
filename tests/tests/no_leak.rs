//! Canary secret values never reach logs or errors, even with every library's tracing
//! turned up to TRACE.

use std::io::Write;
use std::sync::{Arc, Mutex};

use keyturn_core::SecretValue;
use keyturn_core::vault::auth::AppRole;
use keyturn_core::vault::{SecretData, Vault};
use keyturn_tests::canary::{assert_absent, canary};
use keyturn_tests::openbao::OpenBao;
use serde_json::json;

/// A tracing writer that keeps everything in memory for inspection.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn trace_level_logs_of_login_write_read_and_failures_hold_no_secret() {
    let capture = Capture::default();
    let sink = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let bao = OpenBao::start().await.unwrap();
    bao.enable_auth("approle", "approle").await.unwrap();
    bao.put_policy(
        "rw",
        r#"path "secret/data/app/*" { capabilities = ["create", "read", "update"] }"#,
    )
    .await
    .unwrap();
    bao.api(
        "POST",
        "auth/approle/role/app",
        Some(json!({"token_policies": ["rw"]})),
    )
    .await
    .unwrap();
    let role_id = bao
        .api("GET", "auth/approle/role/app/role-id", None)
        .await
        .unwrap()["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_id = bao
        .api("POST", "auth/approle/role/app/secret-id", None)
        .await
        .unwrap()["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let value = canary("trace");
    let mut v = Vault::connect(&bao.config(None)).unwrap();
    let info = v
        .login(&AppRole {
            mount: "approle".into(),
            role_id,
            secret_id: SecretValue::from_str_copy(&secret_id),
        })
        .await
        .unwrap();
    let token = info.token.expose_str().unwrap().to_owned();
    let mut d = SecretData::new();
    d.insert("password", SecretValue::from_str_copy(&value));
    v.kv2_write("secret", "app/db", &d, None).await.unwrap();
    let got = v.kv2_read("secret", "app/db", None).await.unwrap();
    assert_eq!(got.data.get("password").unwrap().expose(), value.as_bytes());
    // Failures on the way: a CAS conflict, a denied path, a missing one.
    let mut errors = String::new();
    for e in [
        v.kv2_write("secret", "app/db", &d, Some(0))
            .await
            .unwrap_err(),
        v.kv2_read("secret", "other/db", None).await.unwrap_err(),
        v.kv2_read("secret", "app/missing", None).await.unwrap_err(),
    ] {
        errors.push_str(&format!("{e}\n{e:?}\n"));
    }
    tracing::info!(data = ?got, "read done");

    let logs = capture.0.lock().unwrap().clone();
    assert!(
        logs.len() > 1000,
        "expected trace output from the libraries, got {} bytes",
        logs.len()
    );
    for (place, text) in [
        ("trace logs", logs.as_slice()),
        ("errors", errors.as_bytes()),
    ] {
        assert_absent(place, text, &[&value, &secret_id, &token]);
    }
}

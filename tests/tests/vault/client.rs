//! Vault access against a real OpenBao server: auth methods, KV v1/v2, CAS, retries, and
//! errors that name the path but never the value.

use std::time::Duration;

use keyturn_core::SecretValue;
use keyturn_core::exit::HasExitCode as _;
use keyturn_core::vault::auth::{AppRole, TokenAuth};
use keyturn_core::vault::{RetryPolicy, SecretData, Vault, VaultError};
use keyturn_tests::canary::{assert_absent, canary};
use keyturn_tests::openbao::OpenBao;
use serde_json::json;

fn data(pairs: &[(&str, &str)]) -> SecretData {
    let mut d = SecretData::new();
    for (k, v) in pairs {
        d.insert(*k, SecretValue::from_str_copy(v));
    }
    d
}

#[tokio::test]
async fn kv2_write_then_read_returns_the_same_fields_and_version() {
    let bao = OpenBao::start().await.unwrap();
    let v = bao.root_client().unwrap();
    let c = canary("kv2");
    let ver = v
        .kv2_write(
            "secret",
            "app/db",
            &data(&[("user", "app"), ("password", &c)]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(ver, 1);
    let got = v.kv2_read("secret", "app/db", None).await.unwrap();
    assert_eq!(got.version, 1);
    assert_eq!(got.data.get("user").unwrap().expose(), b"app");
    assert_eq!(got.data.get("password").unwrap().expose(), c.as_bytes());
    assert_absent("SecretData Debug", format!("{:?}", got).as_bytes(), &[&c]);
}

#[tokio::test]
async fn kv2_reads_a_pinned_older_version() {
    let bao = OpenBao::start().await.unwrap();
    let v = bao.root_client().unwrap();
    v.kv2_write("secret", "p", &data(&[("k", "one")]), None)
        .await
        .unwrap();
    v.kv2_write("secret", "p", &data(&[("k", "two")]), None)
        .await
        .unwrap();
    assert_eq!(
        v.kv2_read("secret", "p", Some(1))
            .await
            .unwrap()
            .data
            .get("k")
            .unwrap()
            .expose(),
        b"one"
    );
    assert_eq!(v.kv2_read("secret", "p", None).await.unwrap().version, 2);
    assert_eq!(v.kv2_current_version("secret", "p").await.unwrap(), Some(2));
    assert_eq!(
        v.kv2_current_version("secret", "never-written")
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn kv2_check_and_set_conflict_is_reported_and_changes_nothing() {
    let bao = OpenBao::start().await.unwrap();
    let v = bao.root_client().unwrap();
    assert_eq!(
        v.kv2_write("secret", "cas", &data(&[("k", "a")]), Some(0))
            .await
            .unwrap(),
        1
    );
    // cas=0 means "only if absent": the secret now exists.
    let e = v
        .kv2_write("secret", "cas", &data(&[("k", "b")]), Some(0))
        .await
        .unwrap_err();
    assert!(
        matches!(e, VaultError::CasConflict { expected: 0, .. }),
        "{e}"
    );
    let e = v
        .kv2_write("secret", "cas", &data(&[("k", "b")]), Some(7))
        .await
        .unwrap_err();
    assert!(
        matches!(e, VaultError::CasConflict { expected: 7, .. }),
        "{e}"
    );
    assert_eq!(
        v.kv2_write("secret", "cas", &data(&[("k", "c")]), Some(1))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        v.kv2_read("secret", "cas", None)
            .await
            .unwrap()
            .data
            .get("k")
            .unwrap()
            .expose(),
        b"c"
    );
}

#[tokio::test]
async fn kv1_write_then_read_round_trips() {
    let bao = OpenBao::start().await.unwrap();
    bao.mount("kv1", "kv", Some(json!({"version": "1"})))
        .await
        .unwrap();
    let v = bao.root_client().unwrap();
    v.kv1_write("kv1", "team/api", &data(&[("token", "t-1"), ("n", "2")]))
        .await
        .unwrap();
    let got = v.kv1_read("kv1", "team/api").await.unwrap();
    assert_eq!(got.get("token").unwrap().expose(), b"t-1");
    assert_eq!(got.len(), 2);
}

#[tokio::test]
async fn reading_a_missing_secret_names_the_path_and_is_not_retried() {
    let bao = OpenBao::start().await.unwrap();
    let v = bao.root_client().unwrap();
    let e = v.kv2_read("secret", "nope/here", None).await.unwrap_err();
    assert!(matches!(e, VaultError::NotFound { .. }), "{e}");
    assert_eq!(e.to_string(), "vault read secret/nope/here: not found");
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn token_auth_accepts_a_valid_token_and_refuses_a_bogus_one() {
    let bao = OpenBao::start().await.unwrap();
    bao.put_policy(
        "reader",
        r#"path "secret/data/app/*" { capabilities = ["read"] }"#,
    )
    .await
    .unwrap();
    let tok = bao.create_token(&["reader"]).await.unwrap();
    let mut v = Vault::connect(&bao.config(None)).unwrap();
    let info = v
        .login(&TokenAuth {
            token: SecretValue::from_str_copy(&tok),
        })
        .await
        .unwrap();
    assert!(
        info.policies.iter().any(|p| p == "reader"),
        "{:?}",
        info.policies
    );
    let who = v.lookup_self().await.unwrap();
    assert!(who.policies.iter().any(|p| p == "reader"));

    let mut bad = Vault::connect(&bao.config(None)).unwrap();
    let e = bad
        .login(&TokenAuth {
            token: SecretValue::from_str_copy("s.bogus"),
        })
        .await
        .unwrap_err();
    assert!(matches!(e, VaultError::PermissionDenied { .. }), "{e}");
    assert_eq!(e.exit_code(), 77);
}

#[tokio::test]
async fn approle_login_reads_allowed_paths_and_is_denied_others_without_retry() {
    let bao = OpenBao::start().await.unwrap();
    bao.enable_auth("approle", "approle").await.unwrap();
    bao.put_policy(
        "orders",
        r#"path "secret/data/orders/*" { capabilities = ["read"] }"#,
    )
    .await
    .unwrap();
    bao.api(
        "POST",
        "auth/approle/role/orders",
        Some(json!({"token_policies": ["orders"]})),
    )
    .await
    .unwrap();
    let role_id = bao
        .api("GET", "auth/approle/role/orders/role-id", None)
        .await
        .unwrap()["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_id = bao
        .api("POST", "auth/approle/role/orders/secret-id", None)
        .await
        .unwrap()["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let root = bao.root_client().unwrap();
    let c = canary("approle");
    root.kv2_write("secret", "orders/db", &data(&[("password", &c)]), None)
        .await
        .unwrap();
    root.kv2_write("secret", "billing/db", &data(&[("password", &c)]), None)
        .await
        .unwrap();

    let mut v = Vault::connect(&bao.config(None)).unwrap();
    let method = AppRole {
        mount: "approle".into(),
        role_id,
        secret_id: SecretValue::from(secret_id),
    };
    assert_absent("AppRole Debug", format!("{method:?}").as_bytes(), &[&c]);
    let info = v.login(&method).await.unwrap();
    assert!(info.policies.iter().any(|p| p == "orders"));
    assert!(!format!("{info:?}").contains(info.token.expose_str().unwrap()));

    assert_eq!(
        v.kv2_read("secret", "orders/db", None)
            .await
            .unwrap()
            .data
            .get("password")
            .unwrap()
            .expose(),
        c.as_bytes()
    );
    let e = v.kv2_read("secret", "billing/db", None).await.unwrap_err();
    assert!(matches!(e, VaultError::PermissionDenied { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "vault read secret/billing/db: permission denied"
    );
    assert_absent("error message", e.to_string().as_bytes(), &[&c]);
    // The server saw exactly one request for the denied path: a 403 is final.
    assert_eq!(bao.requests_for("read", "secret/data/billing/db"), 1);
}

#[tokio::test]
async fn a_read_retries_while_the_server_is_down_and_succeeds_once_it_comes_up() {
    let port = keyturn_tests::process::free_port();
    let token = format!("root-{}", uuid::Uuid::new_v4().simple());
    let mut cfg =
        keyturn_core::vault::VaultConfig::for_addr(&format!("http://127.0.0.1:{port}")).unwrap();
    cfg.token = Some(SecretValue::from_str_copy(&token));
    let v = Vault::connect(&cfg).unwrap().with_retry(RetryPolicy {
        min_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(500),
        max_retries: 100,
    });
    // Before the server exists, something on its port that accepts and hangs up at once:
    // each attempt is one connection, so the attempts can be counted.
    let refuser = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let reader = tokio::spawn(async move { v.lookup_self().await });
    for _ in 0..3 {
        let (conn, _) = refuser.accept().await.unwrap();
        drop(conn);
    }
    assert!(!reader.is_finished(), "the call must still be retrying");
    drop(refuser);
    let _bao = OpenBao::start_with_token(port, &token).await.unwrap();
    let info = reader.await.unwrap().unwrap();
    assert!(info.policies.iter().any(|p| p == "root"));
}

#[tokio::test]
async fn an_unreachable_server_gives_a_retryable_error_naming_the_address() {
    let closed = keyturn_tests::process::ClosedPort::new();
    let port = closed.port();
    let cfg =
        keyturn_core::vault::VaultConfig::for_addr(&format!("http://127.0.0.1:{port}")).unwrap();
    let v = Vault::connect(&cfg)
        .unwrap()
        .with_retry(RetryPolicy::none());
    let e = v.kv2_read("secret", "x", None).await.unwrap_err();
    assert!(e.is_retryable());
    assert_eq!(e.exit_code(), 69);
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "vault read secret/x: cannot reach http://127.0.0.1:{port}"
        )),
        "{msg}"
    );
}

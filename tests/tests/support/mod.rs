//! What the PostgreSQL rotation end-to-end tests share: the admin set-up, reads of CURRENT
//! and of the rotation state, and process output as text.

#![allow(dead_code)] // Each test binary uses its own subset.

use keyturn_agent::backends::StoreSpec;
use keyturn_agent::rotation::store::vault_kv;
use keyturn_agent::rotation::target::postgres::{self, Postgres, TlsSpec};
use keyturn_agent::rotation::target::users::{Strategy, Users};
use keyturn_core::SecretValue;
use keyturn_core::vault::SecretData;
use keyturn_tests::agent_env;
use keyturn_tests::canary::canary;
use keyturn_tests::openbao::OpenBao;
use keyturn_tests::postgres::Postgres as PgServer;

/// The admin role the tests create.
pub const ADMIN_ROLE: &str = "keyturn_admin";

/// `{username, password}`.
pub fn login(user: &str, password: &str) -> SecretData {
    let mut d = SecretData::new();
    d.insert("username", SecretValue::from_str_copy(user));
    d.insert("password", SecretValue::from_str_copy(password));
    d
}

/// Creates the roles `app_a`, `app_b` and an admin with CREATEROLE whose password, a
/// canary, is stored in OpenBao at `secret/keyturn/pg-admin`; returns that password. It is
/// planted the way keyturn sets passwords (a SCRAM verifier), so planting it does not put it
/// in the server log.
pub async fn plant_admin(bao: &OpenBao, pg: &PgServer) -> String {
    pg.admin()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE ROLE {ADMIN_ROLE} LOGIN CREATEROLE; CREATE ROLE app_a LOGIN; CREATE ROLE app_b LOGIN"
        ))
        .await
        .unwrap();
    let admin_password = canary("pg-admin");
    let spec = postgres::Spec {
        host: "127.0.0.1".into(),
        port: pg.port(),
        database: "postgres".into(),
        admin: StoreSpec::VaultKv(vault_kv::Spec {
            mount: "secret".into(),
            path: "keyturn/pg-admin".into(),
        }),
        users: Users::new(vec![ADMIN_ROLE.into()], Strategy::Single),
        tls: TlsSpec::default(),
    };
    Postgres::new(&spec, login("postgres", pg.password()))
        .reset_password(ADMIN_ROLE, &SecretValue::from_str_copy(&admin_password))
        .await
        .unwrap();
    bao.root_client()
        .unwrap()
        .kv2_write(
            "secret",
            "keyturn/pg-admin",
            &login(ADMIN_ROLE, &admin_password),
            None,
        )
        .await
        .unwrap();
    admin_password
}

/// `(username, password, version)` of CURRENT at `secret/keyturn/NAME`.
pub async fn current(bao: &OpenBao, name: &str) -> (String, String, u64) {
    agent_env::login_at(bao, name, None).await
}

/// The rotation state entry of `secret/keyturn/NAME` (empty when there is none).
pub async fn state(bao: &OpenBao, name: &str) -> serde_json::Value {
    agent_env::state(bao, name).await.unwrap_or_default()
}

/// Whether `user`/`password` logs in.
pub async fn logs_in(pg: &PgServer, user: &str, password: &str) -> bool {
    match pg.connect_as(user, password).await {
        Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    }
}

/// stdout then stderr, as text (the harness's, under the short name the tests use).
pub use keyturn_tests::agent_env::output_text as text;

//! The PostgreSQL target driven by the rotation engine, against a real PostgreSQL 15 with
//! `log_statement=all` and a real OpenBao holding the credential and the admin credential.

use std::sync::Arc;
use std::time::Duration;

use keyturn_agent::backends::{StoreSpec, TargetSpec};
use keyturn_agent::policy::{self, Policy};
use keyturn_agent::rotation::store::Step;
use keyturn_agent::rotation::store::Store;
use keyturn_agent::rotation::store::vault_kv;
use keyturn_agent::rotation::store::vault_kv::VaultKvStore;
use keyturn_agent::rotation::target::postgres::{self, AdminPool, Postgres, TlsMode, TlsSpec};
use keyturn_agent::rotation::target::users::{Strategy, Users};
use keyturn_agent::rotation::target::{AdminFn, Target, TargetError};
use keyturn_agent::rotation::{Engine, RotationError, RotationOutcome, Trigger};
use keyturn_core::SecretValue;
use keyturn_core::audit::{
    Actor, AuditLog, AuditLogOptions, AuditSink, ChainHead, FileSink, HmacKey, SinkError,
};
use keyturn_core::vault::{SecretData, Vault};
use keyturn_tests::canary::{assert_absent, canary};
use keyturn_tests::looping_app::LoopingApp;
use keyturn_tests::openbao::OpenBao;
use keyturn_tests::postgres::Postgres as PgServer;

const MOUNT: &str = "secret";
const PATH: &str = "apps/orders-db";
const ADMIN_PATH: &str = "apps/pg-admin";
const ADMIN_ROLE: &str = "keyturn_admin";

struct Env {
    bao: OpenBao,
    vault: Arc<Vault>,
    pg: PgServer,
    policy: Policy,
    target: Postgres,
    audit: Arc<AuditLog>,
    audit_file: std::path::PathBuf,
    /// The planted admin password: a canary that must never leave Vault and keyturn.
    admin_password: String,
    _dir: tempfile::TempDir,
}

fn cred(user: &str, password: &str) -> SecretData {
    let mut d = SecretData::new();
    d.insert("username", SecretValue::from_str_copy(user));
    d.insert("password", SecretValue::from_str_copy(password));
    d
}

/// A PostgreSQL with the roles `roles` (LOGIN, no password yet) and a least-privilege admin
/// (CREATEROLE, not superuser) whose password is a canary kept in Vault; an OpenBao; and the
/// policy over them, with the target reading its admin from Vault at every use.
async fn env(strategy: &str, users: &[&str], roles: &[&str], max_attempts: u32) -> Env {
    let (bao, pg) = tokio::join!(
        OpenBao::start(),
        PgServer::start_with(&[("log_statement", "all")])
    );
    let (bao, pg) = (bao.unwrap(), pg.unwrap());
    let su = pg.admin().await.unwrap();
    su.batch_execute(&format!("CREATE ROLE {ADMIN_ROLE} LOGIN CREATEROLE"))
        .await
        .unwrap();
    for r in roles {
        su.batch_execute(&format!("CREATE ROLE {r} LOGIN"))
            .await
            .unwrap();
    }
    // The admin's own password is set the way keyturn sets every password (a verifier), so
    // planting it does not itself put it in the server log.
    let admin_password = canary("pg-admin");
    let bootstrap = PostgresSpec {
        host: "127.0.0.1",
        port: pg.port(),
        users: &[ADMIN_ROLE],
        strategy: "single",
    }
    .target(cred("postgres", pg.password()));
    bootstrap
        .reset_password(ADMIN_ROLE, &SecretValue::from_str_copy(&admin_password))
        .await
        .unwrap();

    let vault = Arc::new(bao.root_client().unwrap());
    vault
        .kv2_write(MOUNT, ADMIN_PATH, &cred(ADMIN_ROLE, &admin_password), None)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let pfile = dir.path().join("p.yaml");
    std::fs::write(
        &pfile,
        format!(
            "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: orders-db }}\nspec:\n  schedule: \"@daily\"\n  store: {{ vault-kv: {{ mount: {MOUNT}, path: {PATH} }} }}\n  target:\n    postgres:\n      host: 127.0.0.1\n      port: {}\n      database: postgres\n      admin: {{ vault-kv: {{ mount: {MOUNT}, path: {ADMIN_PATH} }} }}\n      users: [{}]\n      strategy: {strategy}\n  generator: {{ length: 32, charset: alphanumeric-symbols }}\n  max-attempts: {max_attempts}\n",
            pg.port(),
            users.join(", "),
        ),
    )
    .unwrap();
    let policy = policy::load(&pfile).unwrap().remove(0);
    let TargetSpec::Postgres(spec) = &policy.target else {
        panic!("a postgres policy")
    };
    let v = vault.clone();
    let admin = AdminFn(move || {
        let v = v.clone();
        async move { Ok(v.kv2_read(MOUNT, ADMIN_PATH, None).await?.data) }
    });
    let target = Postgres::with_admin_source(spec, Arc::new(admin));
    let audit_file = dir.path().join("audit.jsonl");
    let audit = Arc::new(
        AuditLog::open(AuditLogOptions::new(HmacKey::generate().unwrap()).file(&audit_file))
            .unwrap(),
    );
    Env {
        bao,
        vault,
        pg,
        policy,
        target,
        audit,
        audit_file,
        admin_password,
        _dir: dir,
    }
}

/// A target built by hand (no policy file), for the tests that need no store.
struct PostgresSpec<'a> {
    host: &'a str,
    port: u16,
    users: &'a [&'a str],
    strategy: &'a str,
}

impl PostgresSpec<'_> {
    fn target(&self, admin: SecretData) -> Postgres {
        let spec = postgres::Spec {
            host: self.host.into(),
            port: self.port,
            database: "postgres".into(),
            admin: StoreSpec::VaultKv(vault_kv::Spec {
                mount: MOUNT.into(),
                path: ADMIN_PATH.into(),
            }),
            users: Users::new(
                self.users.iter().map(|u| (*u).to_owned()).collect(),
                if self.strategy == "alternating" {
                    Strategy::Alternating
                } else {
                    Strategy::Single
                },
            ),
            tls: TlsSpec::default(),
        };
        Postgres::new(&spec, admin)
    }
}

fn engine(e: &Env) -> Engine {
    Engine::new(e.audit.clone(), Actor::agent("agent-a"), "agent-a")
        .with_backoff(Duration::from_millis(10), Duration::from_millis(50))
}

async fn rotate(e: &Env) -> RotationOutcome {
    let store = VaultKvStore::new(e.vault.clone(), MOUNT, PATH);
    engine(e)
        .rotate(
            &e.policy,
            &store,
            &e.target,
            &Trigger::Manual { reason: None },
        )
        .await
        .unwrap()
}

/// A stored credential as (username, password, version).
async fn stored(vault: &Vault, version: Option<u64>) -> (String, String, u64) {
    let v = vault.kv2_read(MOUNT, PATH, version).await.unwrap();
    let text = |k: &str| v.data.get(k).unwrap().expose_str().unwrap().to_owned();
    (text("username"), text("password"), v.version)
}

/// Logs in as `user` with `password` and runs `SELECT 1`, as an app would.
async fn login(port: u16, user: &str, password: &str) -> Result<(), tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(port)
        .dbname("postgres")
        .user(user)
        .password(password)
        .connect_timeout(Duration::from_secs(10));
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    client.simple_query("SELECT 1").await.map(drop)
}

/// Asserts that none of `passwords`, the planted admin password or the superuser's password
/// is in PostgreSQL's log, keyturn's audit log or OpenBao's log, and that the server log did
/// record the password changes (so the absence means something).
fn assert_no_password_leaked(e: &Env, passwords: &[String]) {
    let log = e.pg.log();
    assert!(
        log.contains("ALTER ROLE \""),
        "log_statement=all recorded no ALTER ROLE; the check below would prove nothing"
    );
    assert!(
        log.contains("WITH PASSWORD 'SCRAM-SHA-256$4096:"),
        "the server saw something other than a SCRAM verifier"
    );
    let mut canaries: Vec<&str> = passwords.iter().map(String::as_str).collect();
    canaries.push(&e.admin_password);
    canaries.push(e.pg.password());
    assert_absent("the PostgreSQL server log", log.as_bytes(), &canaries);
    assert_absent(
        "keyturn's audit log",
        &std::fs::read(&e.audit_file).unwrap(),
        &canaries,
    );
    assert_absent("the OpenBao server log", e.bao.log().as_bytes(), &canaries);
}

#[tokio::test]
async fn a_single_rotation_makes_the_new_password_log_in_and_the_old_one_not() {
    let e = env("single", &["app"], &["app"], 3).await;
    assert!(matches!(rotate(&e).await, RotationOutcome::Rotated { .. }));
    let (user, first, _) = stored(&e.vault, None).await;
    assert_eq!(user, "app");
    login(e.pg.port(), "app", &first).await.unwrap();

    assert!(matches!(rotate(&e).await, RotationOutcome::Rotated { .. }));
    let (user, second, _) = stored(&e.vault, None).await;
    assert_eq!(user, "app");
    assert_ne!(first, second);
    login(e.pg.port(), "app", &second).await.unwrap();
    let old = login(e.pg.port(), "app", &first).await.unwrap_err();
    assert_eq!(
        old.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
        "{old}"
    );
    assert_no_password_leaked(&e, &[first, second]);
}

#[tokio::test]
async fn alternating_rotations_switch_users_and_the_previous_credential_keeps_working() {
    let e = env(
        "alternating",
        &["orders_a", "orders_b"],
        &["orders_a", "orders_b"],
        3,
    )
    .await;
    let mut seen: Vec<(String, String)> = Vec::new();
    for i in 0..5 {
        assert!(
            matches!(rotate(&e).await, RotationOutcome::Rotated { .. }),
            "rotation {i}"
        );
        let (user, password, version) = stored(&e.vault, None).await;
        assert_eq!(
            user,
            if i % 2 == 0 { "orders_a" } else { "orders_b" },
            "rotation {i}: CURRENT names the other user"
        );
        login(e.pg.port(), &user, &password).await.unwrap();
        if i > 0 {
            // Zero downtime: PREVIOUS, which apps that have not reloaded yet still use, works.
            let (prev_user, prev_password, _) = stored(&e.vault, Some(version - 1)).await;
            assert_ne!(prev_user, user);
            login(e.pg.port(), &prev_user, &prev_password)
                .await
                .unwrap();
        }
        if i > 1 {
            // The credential before PREVIOUS named this rotation's user: it is gone.
            let (old_user, old_password) = &seen[i - 2];
            assert_eq!(old_user, &user);
            assert!(
                login(e.pg.port(), old_user, old_password).await.is_err(),
                "rotation {i}: a superseded password still logs in"
            );
        }
        seen.push((user, password));
    }
    assert_no_password_leaked(&e, &seen.into_iter().map(|(_, p)| p).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_client_logging_in_with_whatever_current_says_never_fails_during_ten_alternating_rotations()
 {
    let e = env(
        "alternating",
        &["orders_a", "orders_b"],
        &["orders_a", "orders_b"],
        3,
    )
    .await;
    assert!(matches!(rotate(&e).await, RotationOutcome::Rotated { .. }));

    // The client logs in with whatever CURRENT says between rotations; LoopingApp starts
    // rotation n+1 only after a login that read CURRENT after rotation n, so every
    // interleaving of one rotation with the client's read-then-login happens without timing.
    let mut client = LoopingApp::spawn("client", {
        let (vault, port) = (e.vault.clone(), e.pg.port());
        move || {
            let vault = vault.clone();
            async move {
                let (user, password, version) = stored(&vault, None).await;
                login(port, &user, &password)
                    .await
                    .map_err(|err| format!("login as {user} (version {version}): {err}"))
            }
        }
    });
    let mut passwords = Vec::new();
    for n in 1..=10u64 {
        assert!(
            matches!(rotate(&e).await, RotationOutcome::Rotated { .. }),
            "rotation {n}"
        );
        passwords.push(stored(&e.vault, None).await.1);
        client.rotated(n).await;
    }
    client.stop(10).await;
    assert_no_password_leaked(&e, &passwords);
}

#[tokio::test]
async fn a_failing_test_gives_up_and_single_puts_the_current_password_back() {
    let e = env("single", &["app"], &["app"], 2).await;
    assert!(matches!(rotate(&e).await, RotationOutcome::Rotated { .. }));
    let (_, current, version) = stored(&e.vault, None).await;
    // `set` still works on a role without LOGIN; the login of `test` does not.
    let su = e.pg.admin().await.unwrap();
    su.batch_execute("ALTER ROLE app NOLOGIN").await.unwrap();
    let out = rotate(&e).await;
    let RotationOutcome::Failed { error, .. } = &out else {
        panic!("{out:?}")
    };
    assert!(
        error.contains("role \"app\"") && error.contains("not permitted to log in"),
        "{error}"
    );
    assert!(
        error.contains(&format!("127.0.0.1:{}", e.pg.port())),
        "{error}"
    );
    assert_eq!(
        stored(&e.vault, None).await.2,
        version,
        "CURRENT is unchanged"
    );
    // Reverted: once the role may log in again, CURRENT's password is the one that works.
    su.batch_execute("ALTER ROLE app LOGIN").await.unwrap();
    login(e.pg.port(), "app", &current).await.unwrap();
    assert!(
        String::from_utf8_lossy(&std::fs::read(&e.audit_file).unwrap()).contains("rotate.failed")
    );
    assert_no_password_leaked(&e, &[current]);
}

#[tokio::test]
async fn a_failing_test_gives_up_and_alternating_leaves_the_current_user_working() {
    let e = env(
        "alternating",
        &["orders_a", "orders_b"],
        &["orders_a", "orders_b"],
        2,
    )
    .await;
    assert!(matches!(rotate(&e).await, RotationOutcome::Rotated { .. }));
    let (user, current, version) = stored(&e.vault, None).await;
    assert_eq!(user, "orders_a");
    e.pg.admin()
        .await
        .unwrap()
        .batch_execute("ALTER ROLE orders_b NOLOGIN")
        .await
        .unwrap();
    let out = rotate(&e).await;
    let RotationOutcome::Failed { error, .. } = &out else {
        panic!("{out:?}")
    };
    assert!(error.contains("role \"orders_b\""), "{error}");
    assert_eq!(stored(&e.vault, None).await.2, version);
    login(e.pg.port(), "orders_a", &current).await.unwrap();
    assert_no_password_leaked(&e, &[current]);
}

#[tokio::test]
async fn a_missing_role_is_refused_with_an_error_naming_it() {
    let e = env("single", &["ghost"], &[], 2).await;
    let out = rotate(&e).await;
    let RotationOutcome::Failed { error, .. } = &out else {
        panic!("{out:?}")
    };
    assert!(error.contains("role \"ghost\" does not exist"), "{error}");

    let password = canary("pending");
    let err = e.target.set(&cred("ghost", &password)).await.unwrap_err();
    assert!(
        matches!(err, TargetError::Refused { .. }) && !err.is_retryable(),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{}", e.pg.port())) && text.contains("\"ghost\""),
        "{text}"
    );
    assert!(!text.contains(&password));
}

#[tokio::test]
async fn a_wrong_admin_password_is_refused_naming_the_admin_role_and_not_the_password() {
    let pg = PgServer::start_with(&[("log_statement", "all")])
        .await
        .unwrap();
    pg.admin()
        .await
        .unwrap()
        .batch_execute("CREATE ROLE app LOGIN")
        .await
        .unwrap();
    let wrong = canary("wrong-admin");
    let t = PostgresSpec {
        host: "127.0.0.1",
        port: pg.port(),
        users: &["app"],
        strategy: "single",
    }
    .target(cred("postgres", &wrong));
    let err = t.set(&cred("app", &canary("pending"))).await.unwrap_err();
    assert!(matches!(err, TargetError::Refused { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("admin login as role \"postgres\""), "{text}");
    assert_absent("the error", text.as_bytes(), &[&wrong]);
}

#[tokio::test]
async fn an_unreachable_server_is_a_retryable_error() {
    let closed = keyturn_tests::process::ClosedPort::new();
    let port = closed.port();
    let t = PostgresSpec {
        host: "127.0.0.1",
        port,
        users: &["app"],
        strategy: "single",
    }
    .target(cred("postgres", "unused"))
    .with_timeout(Duration::from_secs(5));
    let pending = cred("app", &canary("pending"));
    for err in [
        t.set(&pending).await.unwrap_err(),
        t.test(&pending).await.unwrap_err(),
    ] {
        assert!(
            matches!(err, TargetError::Unreachable { .. }) && err.is_retryable(),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }
}

#[tokio::test]
async fn requiring_tls_from_a_plaintext_server_is_refused_and_prefer_falls_back() {
    let pg = PgServer::start().await.unwrap();
    pg.admin()
        .await
        .unwrap()
        .batch_execute("CREATE ROLE app LOGIN")
        .await
        .unwrap();
    let admin = cred("postgres", pg.password());
    let spec = PostgresSpec {
        host: "127.0.0.1",
        port: pg.port(),
        users: &["app"],
        strategy: "single",
    };
    let pending = cred("app", &canary("pending"));
    let err = spec
        .target(admin.clone())
        .with_tls(TlsMode::Require)
        .set(&pending)
        .await
        .unwrap_err();
    assert!(matches!(err, TargetError::Refused { .. }), "{err:?}");
    assert!(err.to_string().contains("TLS"), "{err}");
    let prefer = spec.target(admin).with_tls(TlsMode::Prefer);
    prefer.set(&pending).await.unwrap();
    prefer.test(&pending).await.unwrap();
}

/// A CA and a server certificate for `localhost` signed by it, written where a PostgreSQL
/// server (running as the `postgres` user when the tests run as root) may read them.
struct TlsFiles {
    dir: tempfile::TempDir,
    ca_pem: String,
}

impl TlsFiles {
    fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "keyturn-test-pg-ca");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let dir = tempfile::Builder::new()
            .prefix("keyturn-pg-tls-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("server.crt"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .unwrap()
            .stdout
            .trim_ascii()
            == b"0";
        if root {
            let st = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(st.success(), "chown the TLS files to postgres");
        }
        Self {
            dir,
            ca_pem: ca.pem(),
        }
    }

    fn settings(&self) -> Vec<(String, String)> {
        let p = |f: &str| self.dir.path().join(f).display().to_string();
        vec![
            ("ssl".into(), "on".into()),
            ("ssl_cert_file".into(), p("server.crt")),
            ("ssl_key_file".into(), p("server.key")),
            ("log_connections".into(), "on".into()),
        ]
    }
}

#[tokio::test]
async fn over_tls_prefer_encrypts_and_verify_full_checks_the_ca_and_the_host_name() {
    let files = TlsFiles::new();
    let settings = files.settings();
    let settings: Vec<(&str, &str)> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let pg = PgServer::start_with(&settings).await.unwrap();
    pg.admin()
        .await
        .unwrap()
        .batch_execute("CREATE ROLE app LOGIN")
        .await
        .unwrap();
    let admin = cred("postgres", pg.password());
    let spec = |host| PostgresSpec {
        host,
        port: pg.port(),
        users: &["app"],
        strategy: "single",
    };
    let pending = cred("app", &canary("pending"));

    // prefer: the server offers TLS, so it is used (without checking the certificate).
    let prefer = spec("127.0.0.1").target(admin.clone());
    prefer.set(&pending).await.unwrap();
    prefer.test(&pending).await.unwrap();
    assert!(
        pg.log()
            .contains("user=app database=postgres application_name=keyturn SSL enabled"),
        "the login was not over TLS"
    );

    // verify-full: the right CA and the certificate's name.
    let verified = spec("localhost")
        .target(admin.clone())
        .with_tls(TlsMode::VerifyFull)
        .with_ca_pem(files.ca_pem.as_bytes())
        .unwrap();
    verified.set(&pending).await.unwrap();
    verified.test(&pending).await.unwrap();

    // verify-full: a name the certificate does not carry.
    let wrong_name = spec("127.0.0.1")
        .target(admin.clone())
        .with_tls(TlsMode::VerifyFull)
        .with_ca_pem(files.ca_pem.as_bytes())
        .unwrap();
    let err = wrong_name.set(&pending).await.unwrap_err();
    assert!(
        matches!(err, TargetError::Refused { .. }) && err.to_string().contains("certificate"),
        "{err}"
    );

    // verify-full: a CA that did not sign it.
    let other_ca = TlsFiles::new().ca_pem;
    let wrong_ca = spec("localhost")
        .target(admin)
        .with_tls(TlsMode::VerifyFull)
        .with_ca_pem(other_ca.as_bytes())
        .unwrap();
    let err = wrong_ca.set(&pending).await.unwrap_err();
    assert!(
        matches!(err, TargetError::Refused { .. }) && err.to_string().contains("certificate"),
        "{err}"
    );
    assert_absent(
        "the PostgreSQL server log",
        pg.log().as_bytes(),
        &[
            pending.get("password").unwrap().expose_str().unwrap(),
            pg.password(),
        ],
    );
}

/// A burst of password changes through one admin shares at most `AdminPool::MAX_OPEN`
/// admin connections (kept open between uses) instead of starting a backend per change, and
/// every change lands.
#[tokio::test]
async fn a_burst_of_changes_shares_a_bounded_set_of_admin_connections() {
    const ROLES: usize = 24;
    let names: Vec<String> = (0..ROLES).map(|i| format!("burst_{i:02}")).collect();
    let roles: Vec<&str> = names.iter().map(String::as_str).collect();
    let e = env("single", &["app"], &roles, 3).await;
    let target = PostgresSpec {
        host: "127.0.0.1",
        port: e.pg.port(),
        users: &roles,
        strategy: "single",
    }
    .target(cred(ADMIN_ROLE, &e.admin_password))
    .with_pool(Arc::new(AdminPool::default()));
    let passwords: Vec<String> = names.iter().map(|n| canary(n)).collect();
    let mut changes = tokio::task::JoinSet::new();
    for (role, pw) in names.iter().zip(&passwords) {
        let (target, role, pw) = (target.clone(), role.clone(), pw.clone());
        changes.spawn(async move {
            target
                .reset_password(&role, &SecretValue::from_str_copy(&pw))
                .await
        });
    }
    while let Some(r) = changes.join_next().await {
        r.unwrap().unwrap();
    }
    for (role, pw) in names.iter().zip(&passwords) {
        login(e.pg.port(), role, pw).await.unwrap();
    }
    let su = e.pg.admin().await.unwrap();
    let open: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
            &[&ADMIN_ROLE],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        (1..=i64::try_from(AdminPool::MAX_OPEN).unwrap()).contains(&open),
        "{open} admin connections open after {ROLES} concurrent changes"
    );
    assert_no_password_leaked(&e, &passwords);
}

/// The audit events of `action` in `file`, in order, as (outcome, detail).
fn events(file: &std::path::Path, action: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["action"] == action)
        .map(|v| {
            (
                v["outcome"].as_str().unwrap().to_owned(),
                v["detail"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// A `set` the admin may not make fails on every attempt, and the audit log says so: one
/// intent and one error per attempt, each naming the step, the attempt, the target and the
/// role, and not a single `ok` for `set`.
#[tokio::test]
async fn a_set_that_fails_five_times_is_audited_as_five_intents_and_five_errors_and_no_ok() {
    let e = env("single", &["app"], &[], 5).await;
    // PostgreSQL 15: an admin with CREATEROLE may not alter a superuser.
    e.pg.admin()
        .await
        .unwrap()
        .batch_execute("CREATE ROLE app LOGIN SUPERUSER")
        .await
        .unwrap();
    let out = rotate(&e).await;
    let RotationOutcome::Failed { error, .. } = &out else {
        panic!("{out:?}")
    };
    assert!(error.contains("\"app\""), "{error}");

    let set = events(&e.audit_file, "rotate.set");
    let outcomes: Vec<&str> = set.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(outcomes, ["started", "error"].repeat(5), "{set:#?}");
    for (i, pair) in set.chunks(2).enumerate() {
        let attempt = format!("attempt {} of 5", i + 1);
        let (intent, failure) = (&pair[0].1, &pair[1].1);
        assert!(intent.contains(&attempt), "{intent}");
        for part in [
            "set failed (refused)",
            attempt.as_str(),
            &format!("127.0.0.1:{}", e.pg.port()),
            "role \"app\"",
        ] {
            assert!(failure.contains(part), "{part:?} not in {failure}");
        }
    }
    // Nothing after `set` ran, and the end is recorded as a failure.
    for later in [
        "rotate.test",
        "rotate.finish",
        "rotate.distribute",
        "rotate.done",
    ] {
        assert!(events(&e.audit_file, later).is_empty(), "{later} recorded");
    }
    let failed = events(&e.audit_file, "rotate.failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, "error");
    assert!(
        keyturn_core::audit::verify(std::slice::from_ref(&e.audit_file)).is_ok(),
        "audit chain"
    );
    assert_no_password_leaked(&e, &[]);

    // The failed rotation did not serve its slot: once the cause is gone, the same slot's
    // retry rotates (it used to count as served, leaving the policy a whole period late).
    e.pg.admin()
        .await
        .unwrap()
        .batch_execute("ALTER ROLE app NOSUPERUSER")
        .await
        .unwrap();
    let due = chrono::Utc::now() - chrono::Duration::hours(1);
    let store = VaultKvStore::new(e.vault.clone(), MOUNT, PATH);
    let retried = engine(&e)
        .rotate(&e.policy, &store, &e.target, &Trigger::Schedule { due })
        .await
        .unwrap();
    assert!(
        matches!(retried, RotationOutcome::Rotated { .. }),
        "{retried:?}"
    );
}

/// An audit file that fails as a full disk does (`ENOSPC`) on the first batch that holds the
/// intent of `action`, and writes everything before it.
#[derive(Debug)]
struct FullAt {
    file: FileSink,
    trigger: String,
}

impl AuditSink for FullAt {
    fn name(&self) -> &str {
        "file that fills up"
    }

    fn head(&self) -> Option<ChainHead> {
        self.file.head()
    }

    fn write_durably(&mut self, lines: &[u8]) -> Result<(), SinkError> {
        if String::from_utf8_lossy(lines).contains(&self.trigger) {
            return Err(SinkError::Write {
                sink: self.name().to_owned(),
                source: std::io::Error::from_raw_os_error(28),
            });
        }
        self.file.write_durably(lines)
    }
}

/// An engine whose audit log fills up at `action`'s intent, and that log's file.
fn engine_full_at(e: &Env, action: &str) -> (Engine, std::path::PathBuf) {
    let file = e
        .audit_file
        .with_file_name(format!("full-at-{action}.jsonl"));
    let sink = FullAt {
        file: FileSink::open(&file).unwrap(),
        trigger: format!(
            r#""action":"{action}","resource":"policy/{}","outcome":"started""#,
            e.policy.name
        ),
    };
    let audit =
        AuditLog::open(AuditLogOptions::new(HmacKey::generate().unwrap()).sink(Box::new(sink)))
            .unwrap();
    let engine = Engine::new(Arc::new(audit), Actor::agent("agent-a"), "agent-a")
        .with_backoff(Duration::from_millis(10), Duration::from_millis(50));
    (engine, file)
}

/// Fail closed: when the intent of `set` cannot be written, the password is not changed
/// and the rotation stays in flight at `created`, resumable.
#[tokio::test]
async fn an_audit_log_that_cannot_take_the_set_intent_stops_the_rotation_before_the_password_changes()
 {
    let e = env("single", &["app"], &["app"], 3).await;
    let store = VaultKvStore::new(e.vault.clone(), MOUNT, PATH);
    let (engine, file) = engine_full_at(&e, "rotate.set");
    let err = engine
        .rotate(
            &e.policy,
            &store,
            &e.target,
            &Trigger::Manual { reason: None },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RotationError::Audit {
                step: "rotate.set",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        !e.pg.log().contains("ALTER ROLE \"app\""),
        "the password was changed without its audit record"
    );
    let in_flight = store
        .view()
        .await
        .unwrap()
        .state
        .in_flight
        .expect("in flight");
    assert_eq!(in_flight.step, Step::Created);
    assert!(
        e.vault.kv2_read(MOUNT, PATH, None).await.is_err(),
        "no CURRENT"
    );
    // What was written ends with the create step's outcome, and it is a sound chain.
    assert_eq!(
        events(&file, "rotate.create")
            .iter()
            .map(|(o, _)| o.as_str())
            .collect::<Vec<_>>(),
        ["started", "ok"]
    );
    assert!(events(&file, "rotate.set").is_empty());
    assert!(keyturn_core::audit::verify(&[file]).is_ok());

    // With a working audit log the same rotation resumes and completes.
    let resumed = rotate(&e).await;
    assert!(
        matches!(resumed, RotationOutcome::Rotated { resumed: true, .. }),
        "{resumed:?}"
    );
    let (_, password, _) = stored(&e.vault, None).await;
    login(e.pg.port(), "app", &password).await.unwrap();
    assert_no_password_leaked(&e, &[password]);
}

/// Fail closed at the promote: `set` and `test` ran, but without the intent of `finish` on
/// record CURRENT is not replaced.
#[tokio::test]
async fn an_audit_log_that_cannot_take_the_finish_intent_stops_the_rotation_before_the_promote() {
    let e = env("single", &["app"], &["app"], 3).await;
    assert!(matches!(rotate(&e).await, RotationOutcome::Rotated { .. }));
    let (_, first, version) = stored(&e.vault, None).await;
    let store = VaultKvStore::new(e.vault.clone(), MOUNT, PATH);
    let (engine, file) = engine_full_at(&e, "rotate.finish");
    let err = engine
        .rotate(
            &e.policy,
            &store,
            &e.target,
            &Trigger::Manual { reason: None },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RotationError::Audit {
                step: "rotate.finish",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(stored(&e.vault, None).await.2, version, "CURRENT replaced");
    for action in ["rotate.set", "rotate.test"] {
        assert_eq!(
            events(&file, action)
                .iter()
                .map(|(o, _)| o.as_str())
                .collect::<Vec<_>>(),
            ["started", "ok"],
            "{action}"
        );
    }
    assert!(events(&file, "rotate.finish").is_empty());

    let resumed = rotate(&e).await;
    assert!(
        matches!(resumed, RotationOutcome::Rotated { resumed: true, .. }),
        "{resumed:?}"
    );
    let (_, second, _) = stored(&e.vault, None).await;
    login(e.pg.port(), "app", &second).await.unwrap();
    assert_no_password_leaked(&e, &[first, second]);
}

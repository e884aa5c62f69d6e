//! MySQL/MariaDB users (see main.rs): `keyturn rotate` as a real process against a real
//! MariaDB 10.11 (general, slow and binary logs on, every statement in the slow log) and a
//! real OpenBao holding the credential and the admin credential, the admin holding exactly
//! the privilege the target's `needs` names (`CREATE USER`).

use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use keyturn_agent::backends::StoreSpec;
use keyturn_agent::rotation::store::vault_kv;
use keyturn_agent::rotation::target::mysql::{self, Mysql, TlsMode, TlsSpec, native_password_hash};
use keyturn_agent::rotation::target::users::{Strategy, Users};
use keyturn_agent::rotation::target::{Target, TargetError};
use keyturn_core::SecretValue;
use keyturn_core::vault::SecretData;
use keyturn_tests::agent_env::{self, AgentEnv};
use keyturn_tests::canary::{assert_absent, canary};
use keyturn_tests::kube::TestCluster;
use keyturn_tests::login_env::{self, LoginEnv};
use keyturn_tests::looping_app::LoopingApp;
use keyturn_tests::mariadb::{MariaDb, SUPERUSER};
use keyturn_tests::openbao::OpenBao;
use mysql_async::prelude::Queryable;

use crate::support::text;

const POLICY: &str = "shop-db";
const ADMIN_PATH: &str = "keyturn/mysql-admin";
/// The least-privilege admin the tests create: `CREATE USER`, what the target's needs name.
const ADMIN_USER: &str = "keyturn_admin";
const SECRET: &str = "shop-db";

/// The MariaDB beside the shared keyturn set-up ([`AgentEnv`], as `agent`).
struct Env {
    agent: AgentEnv,
    db: MariaDb,
    /// The planted admin password: a canary that must never leave Vault and keyturn.
    admin_password: String,
}

fn login(user: &str, password: &str) -> SecretData {
    let mut d = SecretData::new();
    d.insert("username", SecretValue::from_str_copy(user));
    d.insert("password", SecretValue::from_str_copy(password));
    d
}

/// A target built by hand (no policy file), with a fixed admin credential.
fn target(port: u16, users: &[&str], user_host: &str, admin: SecretData) -> Mysql {
    let spec = mysql::Spec {
        host: "127.0.0.1".into(),
        port,
        admin: StoreSpec::VaultKv(vault_kv::Spec {
            mount: "secret".into(),
            path: ADMIN_PATH.into(),
        }),
        users: Users::new(
            users.iter().map(|u| (*u).to_owned()).collect(),
            if users.len() == 2 {
                Strategy::Alternating
            } else {
                Strategy::Single
            },
        ),
        user_host: user_host.into(),
        tls: TlsSpec {
            mode: TlsMode::Disable,
            ca_file: None,
        },
    };
    Mysql::new(&spec, admin)
}

/// A hash nobody knows a password for: accounts are created unusable until keyturn sets them.
fn unknown_hash() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("*{}{}", a, &b[..8]).to_uppercase()
}

/// Creates `'user'@'host'` with an unknown password (no privileges: logging in is enough).
async fn create_account(db: &MariaDb, user: &str, host: &str) {
    db.exec(&format!(
        "CREATE USER `{}`@`{host}` IDENTIFIED WITH mysql_native_password AS '{}'",
        user.replace('`', "``"),
        unknown_hash()
    ))
    .await
    .unwrap();
}

impl Env {
    /// OpenBao (the agent's own Vault policy for keyturn), MariaDB with the accounts
    /// `users@'%'` and the admin (`CREATE USER` only), whose password (a canary) is set the
    /// way keyturn sets passwords and kept in OpenBao at `secret/keyturn/mysql-admin`; and
    /// the Kubernetes stand-in (or a real cluster) when `cluster`.
    async fn new(users: &[&str], cluster: bool) -> Self {
        let (bao, db, cluster) = tokio::join!(OpenBao::start(), MariaDb::start(), async {
            if cluster {
                Some(TestCluster::start().await.unwrap())
            } else {
                None
            }
        });
        let (bao, db) = (bao.unwrap(), db.unwrap());
        create_account(&db, ADMIN_USER, "%").await;
        db.exec(&format!("GRANT CREATE USER ON *.* TO `{ADMIN_USER}`@`%`"))
            .await
            .unwrap();
        for u in users {
            create_account(&db, u, "%").await;
        }
        // Planted as keyturn plants every password (only its hash reaches the server), so
        // planting it puts it in no log.
        let admin_password = canary("mysql-admin");
        target(
            db.port(),
            &[ADMIN_USER],
            "%",
            login(SUPERUSER, db.password()),
        )
        .reset_password(ADMIN_USER, &SecretValue::from_str_copy(&admin_password))
        .await
        .unwrap();
        bao.root_client()
            .unwrap()
            .kv2_write(
                "secret",
                ADMIN_PATH,
                &login(ADMIN_USER, &admin_password),
                None,
            )
            .await
            .unwrap();
        // Every command at debug level, so the leak checks cover keyturn's most detailed log.
        let agent = AgentEnv::new(bao, cluster, 5).await.log_level("debug");
        Self {
            agent,
            db,
            admin_password,
        }
    }

    /// The policy: CURRENT at `secret/keyturn/shop-db`, delivered to a Secret when there is
    /// a cluster.
    fn write_policy(&self, strategy: &str, users: &str, max_attempts: u32) {
        let distribute = self.agent.cluster.as_ref().map_or_else(String::new, |c| {
            format!(
                "  distribute:\n    - kubernetes: {{ namespace: {}, secret: {SECRET}, keys: {{ DB_USER: username, DB_PASSWORD: password }} }}\n",
                c.namespace()
            )
        });
        std::fs::write(
            self.agent.policy_file(POLICY),
            format!(
                "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: {POLICY} }}\nspec:\n  every: 24h\n  store: {{ vault-kv: {{ path: keyturn/{POLICY} }} }}\n  target:\n    mysql:\n      host: 127.0.0.1\n      port: {}\n      admin: {{ vault-kv: {{ path: {ADMIN_PATH} }} }}\n      users: [{users}]\n      strategy: {strategy}\n  generator: {{ length: 32, charset: alphanumeric-symbols }}\n  max-attempts: {max_attempts}\n{distribute}",
                self.db.port()
            ),
        )
        .unwrap();
    }

    /// `keyturn rotate shop-db`, run to its end.
    async fn rotate(&self) -> Output {
        self.agent.rotate(POLICY, None).await
    }

    /// `(username, password, version)` of CURRENT.
    async fn current(&self) -> (String, String, u64) {
        self.agent.login_at(POLICY, None).await
    }

    /// The rotation state entry (empty when there is none).
    async fn state(&self) -> serde_json::Value {
        self.agent.state(POLICY).await.unwrap_or_default()
    }

    fn audit_actions(&self) -> Vec<(String, String)> {
        self.agent.audit_actions()
    }

    /// The hash the server keeps for `'user'@'%'`.
    async fn stored_hash(&self, user: &str) -> Option<String> {
        let mut c = self.db.admin().await.unwrap();
        let h: Option<String> = c
            .exec_first(
                "SELECT authentication_string FROM mysql.user WHERE user = ? AND host = '%'",
                (user,),
            )
            .await
            .unwrap();
        let _ = c.disconnect().await;
        h
    }

    /// Checks the audit chain, and that none of `values`, the admin's or the superuser's
    /// password is anywhere keyturn or MariaDB writes: keyturn's output and audit log, the
    /// general, slow, binary and error logs, and OpenBao's log. The general, slow and binary
    /// logs must have recorded keyturn's `ALTER USER`, or their check would prove nothing.
    fn assert_clean(&self, outputs: &[&Output], values: &[String]) {
        let mut canaries: Vec<&str> = values.iter().map(String::as_str).collect();
        canaries.push(&self.admin_password);
        canaries.push(self.db.password());
        self.agent.assert_keyturn_clean(outputs, &canaries);
        let logs = self.db.logs();
        for (name, bytes) in &logs {
            assert_absent(name, bytes, &canaries);
        }
        let statement = b"IDENTIFIED WITH mysql_native_password AS '*";
        for want in ["general query log", "slow query log", "binary log"] {
            let (name, bytes) = logs.iter().find(|(n, _)| n.starts_with(want)).unwrap();
            assert!(
                bytes.windows(statement.len()).any(|w| w == statement),
                "the {name} recorded no ALTER USER with a hash; its check would prove nothing"
            );
        }
        assert_absent(
            "the OpenBao log",
            self.agent.bao.log().as_bytes(),
            &canaries,
        );
    }
}

/// What the shared checks ([`login_env`]) need of this Env.
impl LoginEnv for Env {
    fn agent(&self) -> &AgentEnv {
        &self.agent
    }

    fn policy(&self) -> &str {
        POLICY
    }

    async fn logs_in(&self, user: &str, password: &str) -> bool {
        self.db.logs_in(user, password).await
    }

    /// `(username, password)` in the Kubernetes Secret.
    async fn secret(&self) -> Option<(String, String)> {
        self.agent
            .secret_login(SECRET, "DB_USER", "DB_PASSWORD")
            .await
    }

    async fn assert_clean(&self, outputs: &[&Output], values: &[String]) {
        Env::assert_clean(self, outputs, values);
    }
}

// ---- policy check ----------------------------------------------------------------------

#[tokio::test]
async fn policy_check_accepts_a_mysql_target_and_locates_each_mistake() {
    let dir = agent_env::home(1);
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: { name: shop-db }\nspec:\n  every: 24h\n  store: { vault-kv: { path: keyturn/shop-db } }\n  target:\n    mysql:\n      host: db.shop.svc\n      admin: { vault-kv: { path: keyturn/mysql-admin } }\n      users: [shop_a, shop_b]\n      user-host: 10.0.%\n      strategy: alternating\n      tls: require\n",
    )
    .unwrap();
    let run = |path: &PathBuf, sub: &str| {
        std::process::Command::new(keyturn_tests::bins::keyturn())
            .args(["policy", sub])
            .arg(path)
            .env_clear()
            .output()
            .unwrap()
    };
    let ok = run(&good, "check");
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    // The admin's privilege, in the server's own words, for each account; the default port.
    let needs = run(&good, "needs");
    assert_eq!(needs.status.code(), Some(0), "{}", text(&needs));
    let needs = text(&needs);
    for account in ["'shop_a'@'10.0.%'", "'shop_b'@'10.0.%'"] {
        assert!(
            needs.contains(&format!(
                "mysql:db.shop.svc:3306 admin: ALTER USER {account}"
            )) && needs.contains("the CREATE USER privilege"),
            "{needs}"
        );
    }

    let bad = dir.path().join("bad.yaml");
    let long = "x".repeat(129);
    std::fs::write(
        &bad,
        format!(
            "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: shop-db }}\nspec:\n  every: 24h\n  store: {{ vault-kv: {{ path: keyturn/shop-db }} }}\n  target:\n    mysql:\n      host: \"\"\n      admin: {{ vault-kv: {{ path: keyturn/mysql-admin }} }}\n      users: [{long}, \"\"]\n      strategy: alternating\n      user-host: \"\"\n      tls: verify-ca\n---\napiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: shop-db-2 }}\nspec:\n  every: 24h\n  store: {{ vault-kv: {{ path: keyturn/shop-db-2 }} }}\n  target:\n    mysql:\n      host: db\n      admin: {{ vault-kv: {{ path: keyturn/mysql-admin }} }}\n      users: [a]\n      strategy: round-robin\n      ca-file: /etc/ca.pem\n"
        ),
    )
    .unwrap();
    let out = run(&bad, "check");
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let msg = String::from_utf8_lossy(&out.stderr).into_owned();
    let f = bad.display().to_string();
    for want in [
        format!("{f}:9:13: spec.target.mysql.host: must not be empty"),
        format!(
            "{f}:11:15: spec.target.mysql.users: an account name must be 1 to 128 characters without NUL"
        ),
        format!(
            "{f}:11:146: spec.target.mysql.users: an account name must be 1 to 128 characters without NUL"
        ),
        format!(
            "{f}:13:18: spec.target.mysql.user-host: an account host must be 1 to 255 characters without NUL (% for any host)"
        ),
        format!(
            "{f}:14:12: spec.target.mysql.tls: unknown TLS mode \"verify-ca\" (disable, prefer, require or verify-full)"
        ),
    ] {
        assert!(msg.contains(&want), "missing {want:?} in:\n{msg}");
    }
    for want in [
        format!(
            "{f}:27:17: spec.target.mysql.strategy: unknown strategy \"round-robin\" (single or alternating)"
        ),
        format!("{f}:28:16: spec.target.mysql.ca-file: is only used with tls: verify-full"),
    ] {
        assert!(msg.contains(&want), "missing {want:?} in:\n{msg}");
    }
    // An unknown field (an account has no `database` here) is located too.
    let unknown = dir.path().join("unknown.yaml");
    std::fs::write(
        &unknown,
        "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: { name: shop-db }\nspec:\n  every: 24h\n  store: { vault-kv: { path: keyturn/shop-db } }\n  target:\n    mysql:\n      host: db\n      admin: { vault-kv: { path: keyturn/mysql-admin } }\n      users: [a]\n      database: shop\n",
    )
    .unwrap();
    let out = run(&unknown, "check");
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let msg = String::from_utf8_lossy(&out.stderr).into_owned();
    let f = unknown.display().to_string();
    assert!(
        msg.lines()
            .any(|l| l.starts_with(&format!("{f}:12:")) && l.contains("database")),
        "{msg}"
    );
}

// ---- rotations ---------------------------------------------------------------------------

#[tokio::test]
async fn a_single_rotation_sets_the_hash_the_new_password_logs_in_and_nothing_leaks() {
    let e = Env::new(&["app"], false).await;
    e.write_policy("single", "app", 3);
    let first = e.rotate().await;
    assert!(first.status.success(), "{}", text(&first));
    let (user, p1, _) = e.current().await;
    assert_eq!(user, "app");
    assert!(e.db.logs_in("app", &p1).await);
    let second = e.rotate().await;
    assert!(second.status.success(), "{}", text(&second));
    let (_, p2, _) = e.current().await;
    assert_ne!(p1, p2);
    assert!(e.db.logs_in("app", &p2).await);
    assert!(
        !e.db.logs_in("app", &p1).await,
        "the old password still logs in"
    );
    // What the server keeps is the hash keyturn computed, and the statement that set it
    // carried that hash: in the general log, as sent.
    let hash = native_password_hash(p2.as_bytes());
    assert_eq!(e.stored_hash("app").await.as_deref(), Some(hash.as_str()));
    let general = std::fs::read_to_string(e.db.general_log_path()).unwrap();
    assert!(
        general.contains(&format!(
            "ALTER USER `app`@`%` IDENTIFIED WITH mysql_native_password AS '{}'",
            hash.as_str()
        )),
        "{general}"
    );
    e.assert_clean(&[&first, &second], &[p1, p2]);
}

#[tokio::test]
async fn alternating_rotations_switch_users_and_the_previous_credential_keeps_working() {
    let e = Env::new(&["app_a", "app_b"], true).await;
    e.write_policy("alternating", "app_a, app_b", 3);
    login_env::alternating_rotations_switch_users(&e).await;
}

/// The app: reads CURRENT from Vault and logs in with it (`SELECT 1`), again and again,
/// through ten alternating rotations by `keyturn rotate`, and never fails. The next rotation
/// starts only after a login that read CURRENT after the last one, so every interleaving of a
/// rotation with the app's read-then-login happens without timing in the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_logging_in_with_whatever_current_says_never_fails_through_ten_alternating_rotations()
 {
    let e = Env::new(&["app_a", "app_b"], false).await;
    e.write_policy("alternating", "app_a, app_b", 3);
    let first = e.rotate().await;
    assert!(first.status.success(), "{}", text(&first));

    let mut app = LoopingApp::spawn("app", {
        let vault = Arc::new(e.agent.bao.root_client().unwrap());
        let port = e.db.port();
        move || {
            let vault = vault.clone();
            async move {
                let r = vault
                    .kv2_read("secret", &format!("keyturn/{POLICY}"), None)
                    .await
                    .unwrap();
                let f = |k: &str| r.data.get(k).unwrap().expose_str().unwrap().to_owned();
                let (user, password) = (f("username"), f("password"));
                let opts = mysql_async::OptsBuilder::default()
                    .ip_or_hostname("127.0.0.1")
                    .tcp_port(port)
                    .user(Some(&user))
                    .pass(Some(&password))
                    .prefer_socket(false);
                let result = match mysql_async::Conn::new(opts).await {
                    Ok(mut c) => {
                        let r = c.query_drop("SELECT 1").await;
                        let _ = c.disconnect().await;
                        r
                    }
                    Err(err) => Err(err),
                };
                // A refused login's text names the account, not the password.
                result.map_err(|err| format!("login as {user} (version {}): {err}", r.version))
            }
        }
    });
    let mut outputs = vec![first];
    let mut passwords = vec![e.current().await.1];
    for n in 1..=10u64 {
        let out = e.rotate().await;
        assert!(out.status.success(), "rotation {n}: {}", text(&out));
        outputs.push(out);
        passwords.push(e.current().await.1);
        app.rotated(n).await;
    }
    app.stop(10).await;
    assert_eq!(e.current().await.2, 11, "eleven rotations, eleven versions");
    let refs: Vec<&Output> = outputs.iter().collect();
    e.assert_clean(&refs, &passwords);
}

// ---- the crash matrix ----------------------------------------------------------------------

/// Kills `keyturn rotate` right after `step`, checks what the app holds still works where it
/// must, then runs it again and checks it converged: exactly one new CURRENT (the persisted
/// PENDING value), which logs in and is in the Secret, and no rotation left in flight.
async fn crash_and_resume(strategy: &str, step: &str) {
    let e = Env::new(&["app_a", "app_b"], true).await;
    if strategy == "alternating" {
        e.write_policy("alternating", "app_a, app_b", 2);
    } else {
        e.write_policy("single", "app_a", 2);
    }
    login_env::crash_and_resume(&e, strategy, step).await;
}

#[tokio::test]
async fn alternating_kill_after_create_converges() {
    crash_and_resume("alternating", "create").await;
}

#[tokio::test]
async fn alternating_kill_after_set_converges() {
    crash_and_resume("alternating", "set").await;
}

#[tokio::test]
async fn alternating_kill_after_test_converges() {
    crash_and_resume("alternating", "test").await;
}

#[tokio::test]
async fn alternating_kill_after_finish_converges() {
    crash_and_resume("alternating", "finish").await;
}

#[tokio::test]
async fn alternating_kill_after_distribute_converges() {
    crash_and_resume("alternating", "distribute").await;
}

#[tokio::test]
async fn single_kill_after_create_converges() {
    crash_and_resume("single", "create").await;
}

#[tokio::test]
async fn single_kill_after_set_converges() {
    crash_and_resume("single", "set").await;
}

#[tokio::test]
async fn single_kill_after_test_converges() {
    crash_and_resume("single", "test").await;
}

#[tokio::test]
async fn single_kill_after_finish_converges() {
    crash_and_resume("single", "finish").await;
}

#[tokio::test]
async fn single_kill_after_distribute_converges() {
    crash_and_resume("single", "distribute").await;
}

// ---- refusals ------------------------------------------------------------------------------

#[tokio::test]
async fn an_account_that_does_not_exist_is_a_clear_failure_and_is_not_created() {
    let e = Env::new(&[], false).await;
    e.write_policy("single", "ghost", 2);
    let out = e.rotate().await;
    // README's table: 1, a rotation given up and rolled back.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("account 'ghost'@'%' does not exist")
            && msg.contains("keyturn does not create accounts")
            && msg.contains(&format!("mysql:127.0.0.1:{}", e.db.port())),
        "{msg}"
    );
    assert_eq!(e.stored_hash("ghost").await, None, "keyturn created it");
    assert!(
        e.audit_actions()
            .iter()
            .any(|(a, o)| a == "rotate.failed" && o == "error")
    );
    let state = e.state().await;
    assert!(state.get("pending.password").is_none(), "{state}");
    assert_absent(
        "keyturn output",
        text(&out).as_bytes(),
        &[&e.admin_password, e.db.password()],
    );
}

#[tokio::test]
async fn a_wrong_admin_password_is_refused_once_per_attempt_and_not_retried_forever() {
    let e = Env::new(&["app"], false).await;
    e.write_policy("single", "app", 3);
    let wrong = canary("wrong-admin");
    e.agent
        .bao
        .root_client()
        .unwrap()
        .kv2_write("secret", ADMIN_PATH, &login(ADMIN_USER, &wrong), None)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let out = e.rotate().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains(&format!(
            "admin login as user '{ADMIN_USER}' refused: Access denied for user '{ADMIN_USER}'@'127.0.0.1' (using password: YES) (server error 1045)"
        )),
        "{msg}"
    );
    // max-attempts: 3 → three set attempts, each one login, as the server counts them.
    let general = std::fs::read_to_string(e.db.general_log_path()).unwrap();
    assert_eq!(
        general
            .matches(&format!("Access denied for user '{ADMIN_USER}'"))
            .count(),
        3,
        "{general}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    let sets: Vec<String> = e
        .audit_actions()
        .into_iter()
        .filter(|(a, _)| a == "rotate.set")
        .map(|(_, o)| o)
        .collect();
    assert_eq!(sets, ["started", "error"].repeat(3));
    // The error log says so too (log_warnings=4), by account, so its canary check below
    // looks where a password would have been written.
    let error_log = std::fs::read_to_string(e.db.error_log_path()).unwrap();
    assert!(
        error_log.contains(&format!(
            "Access denied for user '{ADMIN_USER}'@'127.0.0.1' (using password: YES)"
        )),
        "{error_log}"
    );
    let canaries = [wrong.as_str(), e.admin_password.as_str(), e.db.password()];
    for (name, bytes) in e.db.logs() {
        assert_absent(&name, &bytes, &canaries);
    }
    assert_absent("keyturn output", msg.as_bytes(), &canaries);
}

#[tokio::test]
async fn an_admin_without_create_user_is_refused_in_the_servers_words() {
    let e = Env::new(&["app"], false).await;
    e.db.exec(&format!(
        "REVOKE CREATE USER ON *.* FROM `{ADMIN_USER}`@`%`"
    ))
    .await
    .unwrap();
    e.write_policy("single", "app", 1);
    let out = e.rotate().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("changing the password of account 'app'@'%' as 'keyturn_admin' refused")
            && msg.contains("CREATE USER privilege")
            && msg.contains("server error 1227"),
        "{msg}"
    );
}

// ---- the target itself, without the engine -----------------------------------------------

/// Names the server must take exactly as written: quotes of every kind, a backslash, a
/// space, and an account host other than `%`; and `invalidate_others` leaves the standby
/// account with a password nobody holds.
#[tokio::test]
async fn awkward_account_names_and_hosts_are_quoted_exactly() {
    let db = MariaDb::start().await.unwrap();
    let users = ["o'brien `x` \\ \"q\"", "plain user"];
    for u in users {
        create_account(&db, u, "127.0.0.1").await;
    }
    let t = target(
        db.port(),
        &users,
        "127.0.0.1",
        login(SUPERUSER, db.password()),
    );
    let (a, b) = (canary("awkward-a"), canary("awkward-b"));
    for (u, p) in users.iter().zip([&a, &b]) {
        let cred = login(u, p);
        t.set(&cred).await.unwrap();
        t.test(&cred).await.unwrap();
        assert!(db.logs_in(u, p).await, "{u}");
    }
    // CURRENT is the first; break-glass makes the second useless.
    let what = t
        .invalidate_others(&login(users[0], &a))
        .await
        .unwrap()
        .unwrap();
    assert!(what.contains("plain user"), "{what}");
    assert!(!db.logs_in(users[1], &b).await);
    assert!(db.logs_in(users[0], &a).await);
    // The same account at another host is another account: not there, refused by name.
    let elsewhere = target(
        db.port(),
        &["plain user"],
        "%",
        login(SUPERUSER, db.password()),
    );
    let err = elsewhere.set(&login("plain user", &b)).await.unwrap_err();
    assert!(
        matches!(err, TargetError::Refused { .. })
            && err
                .to_string()
                .contains("account 'plain user'@'%' does not exist"),
        "{err}"
    );
    for (name, bytes) in db.logs() {
        assert_absent(&name, &bytes, &[&a, &b, db.password()]);
    }
}

// ---- TLS -------------------------------------------------------------------------------------

/// A CA and a certificate for `localhost` it signed: (CA PEM, certificate PEM, key PEM).
fn tls_files() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "keyturn-test-mysql-ca");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// A single-user target for `app` at `host` with TLS `mode`, trusting `ca_file` for
/// `verify-full`.
fn tls_target(
    db: &MariaDb,
    host: &str,
    mode: TlsMode,
    ca_file: Option<PathBuf>,
    admin: SecretData,
) -> Mysql {
    let spec = mysql::Spec {
        host: host.into(),
        port: db.port(),
        admin: StoreSpec::VaultKv(vault_kv::Spec {
            mount: "secret".into(),
            path: ADMIN_PATH.into(),
        }),
        users: Users::new(vec!["app".into()], Strategy::Single),
        user_host: "%".into(),
        tls: TlsSpec { mode, ca_file },
    };
    Mysql::new(&spec, admin)
}

/// `prefer` falls back to plaintext only when the server has no TLS, `require` does not,
/// and against a server with TLS whose admin and app accounts `REQUIRE SSL` (so a plaintext
/// connection of keyturn's would be refused) every mode that encrypts works, while
/// `verify-full` also checks the CA and the host name.
#[tokio::test]
async fn tls_prefer_falls_back_require_insists_and_verify_full_checks_the_ca_and_the_name() {
    let plain = MariaDb::start().await.unwrap();
    create_account(&plain, "app", "%").await;
    let root = login(SUPERUSER, plain.password());
    let pending = login("app", &canary("tls-plain"));
    let prefer = tls_target(&plain, "127.0.0.1", TlsMode::Prefer, None, root.clone());
    prefer.set(&pending).await.unwrap();
    prefer.test(&pending).await.unwrap();
    let err = tls_target(&plain, "127.0.0.1", TlsMode::Require, None, root)
        .test(&pending)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TargetError::Refused { .. })
            && err.to_string().contains("the server does not offer TLS"),
        "{err}"
    );

    let (ca, cert, key) = tls_files();
    let db = MariaDb::start_tls(&cert, &key).await.unwrap();
    create_account(&db, "app", "%").await;
    create_account(&db, "tls_admin", "%").await;
    db.exec(
        "GRANT CREATE USER ON *.* TO `tls_admin`@`%`; ALTER USER `app`@`%` REQUIRE SSL; ALTER USER `tls_admin`@`%` REQUIRE SSL",
    )
    .await
    .unwrap();
    let admin_password = canary("tls-admin");
    target(
        db.port(),
        &["tls_admin"],
        "%",
        login(SUPERUSER, db.password()),
    )
    .reset_password("tls_admin", &SecretValue::from_str_copy(&admin_password))
    .await
    .unwrap();
    let admin = login("tls_admin", &admin_password);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let mut values = vec![admin_password.clone()];
    for (host, mode, ca) in [
        ("127.0.0.1", TlsMode::Prefer, None),
        ("127.0.0.1", TlsMode::Require, None),
        ("localhost", TlsMode::VerifyFull, Some(ca_file.clone())),
    ] {
        let password = canary("tls");
        let pending = login("app", &password);
        let t = tls_target(&db, host, mode, ca, admin.clone());
        t.set(&pending)
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        t.test(&pending)
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert!(
            !db.logs_in("app", &password).await,
            "a plaintext login worked: REQUIRE SSL is not in force, the check proves nothing"
        );
        values.push(password);
    }
    // verify-full: a name the certificate does not carry, and a CA that did not sign it.
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, tls_files().0).unwrap();
    for (host, ca) in [("127.0.0.1", ca_file), ("localhost", other_ca)] {
        let err = tls_target(&db, host, TlsMode::VerifyFull, Some(ca), admin.clone())
            .set(&login("app", &canary("never-set")))
            .await
            .unwrap_err();
        assert!(
            matches!(err, TargetError::Refused { .. }) && err.to_string().contains("certificate"),
            "{host}: {err}"
        );
    }
    let canaries: Vec<&str> = values.iter().map(String::as_str).collect();
    for (name, bytes) in db.logs() {
        assert_absent(&name, &bytes, &canaries);
    }
}

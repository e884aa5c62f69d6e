//! Redis ACL users (see main.rs): `keyturn rotate` as a real process against a real
//! `redis-server` (an ACL file, every command in the slow log) and a real OpenBao holding the
//! credential and the admin credential, the admin being an ACL user with exactly the rules the
//! target's `needs` names.

use std::path::PathBuf;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyturn_agent::backends::StoreSpec;
use keyturn_agent::rotation::store::vault_kv;
use keyturn_agent::rotation::target::redis::{self as redis_target, Redis};
use keyturn_agent::rotation::target::users::{Strategy, Users};
use keyturn_agent::rotation::target::{Target, TargetError};
use keyturn_core::SecretValue;
use keyturn_core::vault::SecretData;
use keyturn_tests::agent_env::{self, AgentEnv};
use keyturn_tests::canary::{assert_absent, canary};
use keyturn_tests::fault::{FaultProxy, Mode};
use keyturn_tests::kube::TestCluster;
use keyturn_tests::login_env::{self, LoginEnv};
use keyturn_tests::looping_app::LoopingApp;
use keyturn_tests::openbao::OpenBao;
use keyturn_tests::redis::{Monitor, Redis as RedisServer, hash_rule};

use crate::support::text;

const POLICY: &str = "cache";
const ADMIN_PATH: &str = "keyturn/redis-admin";
/// The least-privilege admin the tests create: only the rules the target's needs name.
const ADMIN_USER: &str = "keyturn_admin";
const ADMIN_RULES: [&str; 3] = ["+acl|getuser", "+acl|setuser", "+acl|save"];
/// The app users' own rules, which a rotation must leave exactly as they were.
const APP_RULES: [&str; 4] = ["on", "~cache:*", "+@read", "+ping"];
const SECRET: &str = "cache-redis";

/// The Redis server beside the shared keyturn set-up ([`AgentEnv`], as `agent`).
struct Env {
    agent: AgentEnv,
    redis: RedisServer,
    /// The planted admin password: a canary that must never leave Vault and keyturn.
    admin_password: String,
}

fn login(user: &str, password: &str) -> SecretData {
    let mut d = SecretData::new();
    d.insert("username", SecretValue::from_str_copy(user));
    d.insert("password", SecretValue::from_str_copy(password));
    d
}

impl Env {
    /// OpenBao (the agent's own Vault policy for keyturn), Redis with the ACL users `users`
    /// (on, no password yet) and the admin, whose password (a canary) is planted as a hash
    /// and kept in OpenBao at `secret/keyturn/redis-admin`; and the Kubernetes stand-in (or a
    /// real cluster) when `cluster`.
    async fn new(users: &[&str], cluster: bool) -> Self {
        let default_password = canary("redis-default");
        let (bao, redis, cluster) = tokio::join!(
            OpenBao::start(),
            RedisServer::start(&default_password),
            async {
                if cluster {
                    Some(TestCluster::start().await.unwrap())
                } else {
                    None
                }
            }
        );
        let (bao, redis) = (bao.unwrap(), redis.unwrap());
        let admin_password = canary("redis-admin");
        let mut rules = vec!["on".to_owned(), hash_rule(&admin_password)];
        rules.extend(ADMIN_RULES.iter().map(|r| (*r).to_owned()));
        let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
        redis.acl_setuser(ADMIN_USER, &rules).await.unwrap();
        for u in users {
            redis.acl_setuser(u, &APP_RULES).await.unwrap();
        }
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
        let agent = AgentEnv::new(bao, cluster, 7).await;
        Self {
            agent,
            redis,
            admin_password,
        }
    }

    fn policy_file(&self) -> PathBuf {
        self.agent.policy_file(POLICY)
    }

    /// The policy: CURRENT at `secret/keyturn/cache`, delivered to a Secret when there is a
    /// cluster.
    fn write_policy(&self, strategy: &str, users: &str, max_attempts: u32) {
        let distribute = self.agent.cluster.as_ref().map_or_else(String::new, |c| {
            format!(
                "  distribute:\n    - kubernetes: {{ namespace: {}, secret: {SECRET}, keys: {{ REDIS_USER: username, REDIS_PASSWORD: password }} }}\n",
                c.namespace()
            )
        });
        std::fs::write(
            self.policy_file(),
            format!(
                "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: {POLICY} }}\nspec:\n  every: 24h\n  store: {{ vault-kv: {{ path: keyturn/{POLICY} }} }}\n  target:\n    redis:\n      host: 127.0.0.1\n      port: {}\n      admin: {{ vault-kv: {{ path: {ADMIN_PATH} }} }}\n      users: [{users}]\n      strategy: {strategy}\n  generator: {{ length: 32, charset: alphanumeric-symbols }}\n  max-attempts: {max_attempts}\n{distribute}",
                self.redis.port()
            ),
        )
        .unwrap();
    }

    /// `keyturn rotate cache`, run to its end.
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

    /// A user's ACL entry without its password hashes: what a rotation must not change.
    async fn rules_of(&self, user: &str) -> String {
        let entry = self.redis.acl_getuser(user).await.unwrap().unwrap();
        entry
            .lines()
            .filter(|l| !(l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit())))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Checks the audit chain, and that none of `values`, the admin's or the `default` user's
    /// password is anywhere keyturn or Redis writes: keyturn's output and audit log, Redis's
    /// log (every start), slow log, ACL LOG, ACL file and `monitor`'s stream (when given),
    /// and OpenBao's log. The slow log and the monitor must have recorded keyturn's commands,
    /// or their check would prove nothing.
    async fn assert_clean(
        &self,
        outputs: &[&Output],
        values: &[String],
        monitor: Option<&Monitor>,
    ) {
        let mut canaries: Vec<&str> = values.iter().map(String::as_str).collect();
        canaries.push(&self.admin_password);
        canaries.push(self.redis.admin_password());
        self.agent.assert_keyturn_clean(outputs, &canaries);
        let slowlog = self.redis.slowlog().await.unwrap();
        assert!(
            String::from_utf8_lossy(&slowlog).contains("SETUSER"),
            "the slow log recorded no ACL SETUSER; its check would prove nothing"
        );
        assert_absent("the Redis slow log", &slowlog, &canaries);
        assert_absent("ACL LOG", &self.redis.acl_log().await.unwrap(), &canaries);
        assert_absent("the Redis log", self.redis.all_logs().as_bytes(), &canaries);
        assert_absent("the ACL file", self.redis.acl_file().as_bytes(), &canaries);
        assert_absent(
            "the OpenBao log",
            self.agent.bao.log().as_bytes(),
            &canaries,
        );
        if let Some(m) = monitor {
            let seen = m.seen();
            assert!(
                String::from_utf8_lossy(&seen).contains("\"AUTH\" \"(redacted)\" \"(redacted)\""),
                "MONITOR saw no login; its check would prove nothing"
            );
            assert_absent("MONITOR output", &seen, &canaries);
        }
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
        self.redis.logs_in(user, password).await
    }

    /// `(username, password)` in the Kubernetes Secret.
    async fn secret(&self) -> Option<(String, String)> {
        self.agent
            .secret_login(SECRET, "REDIS_USER", "REDIS_PASSWORD")
            .await
    }

    /// [`Env::assert_clean`] without a MONITOR stream.
    async fn assert_clean(&self, outputs: &[&Output], values: &[String]) {
        Env::assert_clean(self, outputs, values, None).await;
    }
}

// ---- policy check ----------------------------------------------------------------------

#[tokio::test]
async fn policy_check_accepts_a_redis_target_and_locates_each_mistake() {
    let dir = agent_env::home(1);
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: { name: cache }\nspec:\n  every: 24h\n  store: { vault-kv: { path: keyturn/cache } }\n  target:\n    redis:\n      host: cache.shop.svc\n      admin: { vault-kv: { path: keyturn/redis-admin } }\n      users: [cache_a, cache_b]\n      strategy: alternating\n",
    )
    .unwrap();
    let check = |path: &PathBuf, sub: &str| {
        std::process::Command::new(keyturn_tests::bins::keyturn())
            .args(["policy", sub])
            .arg(path)
            .env_clear()
            .output()
            .unwrap()
    };
    let ok = check(&good, "check");
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    // The admin's rules, in Redis's own words, and the default port.
    let needs = check(&good, "needs");
    assert_eq!(needs.status.code(), Some(0), "{}", text(&needs));
    let needs = text(&needs);
    assert!(
        needs.contains("redis:cache.shop.svc:6379")
            && needs.contains("+acl|getuser +acl|setuser +acl|save")
            && needs.contains("\"cache_b\" exists"),
        "{needs}"
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: { name: cache }\nspec:\n  every: 24h\n  store: { vault-kv: { path: keyturn/cache } }\n  target:\n    redis:\n      host: \"\"\n      port: 0\n      admin: { vault-kv: { path: keyturn/redis-admin } }\n      users: [\"two words\", \"\"]\n      strategy: alternating\n---\napiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: { name: cache-2 }\nspec:\n  every: 24h\n  store: { vault-kv: { path: keyturn/cache-2 } }\n  target:\n    redis:\n      host: cache\n      admin: { vault-kv: { path: keyturn/redis-admin } }\n      users: [a]\n      strategy: round-robin\n",
    )
    .unwrap();
    let out = check(&bad, "check");
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let msg = String::from_utf8_lossy(&out.stderr).into_owned();
    let f = bad.display().to_string();
    for want in [
        format!("{f}:9:13: spec.target.redis.host: must not be empty"),
        format!("{f}:10:13: spec.target.redis.port: must be 1 to 65535"),
        format!(
            "{f}:12:15: spec.target.redis.users: an ACL user name may not contain spaces or control characters"
        ),
        format!("{f}:12:28: spec.target.redis.users: an ACL user name must be 1 to 128 bytes"),
        format!(
            "{f}:26:17: spec.target.redis.strategy: unknown strategy \"round-robin\" (single or alternating)"
        ),
    ] {
        assert!(msg.contains(&want), "missing {want:?} in:\n{msg}");
    }
    // An unknown field (a Redis ACL user has no `database`) is located too.
    let unknown = dir.path().join("unknown.yaml");
    std::fs::write(
        &unknown,
        "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: { name: cache }\nspec:\n  every: 24h\n  store: { vault-kv: { path: keyturn/cache } }\n  target:\n    redis:\n      host: cache\n      admin: { vault-kv: { path: keyturn/redis-admin } }\n      users: [a]\n      database: 3\n",
    )
    .unwrap();
    let out = check(&unknown, "check");
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
async fn a_single_rotation_changes_only_the_password_persists_it_and_leaks_nothing() {
    let e = Env::new(&["app"], false).await;
    e.write_policy("single", "app", 3);
    let rules_before = e.rules_of("app").await;
    let monitor = e.redis.monitor().await.unwrap();

    let first = e.rotate().await;
    assert!(first.status.success(), "{}", text(&first));
    let (user, p1, _) = e.current().await;
    assert_eq!(user, "app");
    assert!(e.redis.logs_in("app", &p1).await);
    let second = e.rotate().await;
    assert!(second.status.success(), "{}", text(&second));
    let (_, p2, _) = e.current().await;
    assert_ne!(p1, p2);
    assert!(e.redis.logs_in("app", &p2).await);
    assert!(
        !e.redis.logs_in("app", &p1).await,
        "the old password still logs in"
    );

    // Only the password changed: the user's keys, commands and state are as they were, and
    // it has exactly one password, whose hash is what the ACL file holds.
    assert_eq!(e.rules_of("app").await, rules_before);
    let entry = e.redis.acl_getuser("app").await.unwrap().unwrap();
    let hash = &hash_rule(&p2)[1..];
    assert!(entry.contains(hash), "{entry}");
    assert!(!entry.contains(&hash_rule(&p1)[1..]), "{entry}");
    assert!(
        e.redis
            .acl_file()
            .lines()
            .any(|l| l.starts_with("user app ") && l.contains(hash)),
        "ACL SAVE did not write the new hash: {}",
        e.redis.acl_file()
    );
    e.assert_clean(&[&first, &second], &[p1, p2.clone()], Some(&monitor))
        .await;
    drop(monitor);

    // Saved, so a restart keeps it: the server reloads its ACL file.
    let mut e = e;
    e.redis.restart().await.unwrap();
    assert!(
        e.redis.logs_in("app", &p2).await,
        "a restart reverted the password"
    );
}

#[tokio::test]
async fn alternating_rotations_switch_users_and_the_previous_credential_keeps_working() {
    let e = Env::new(&["app_a", "app_b"], true).await;
    e.write_policy("alternating", "app_a, app_b", 3);
    login_env::alternating_rotations_switch_users(&e).await;
}

/// The app: reads CURRENT from Vault and logs in with it, again and again, through ten
/// alternating rotations by `keyturn rotate`, and never fails. As in the PostgreSQL test, the
/// next rotation starts only after a login that read CURRENT after the last one, so every
/// interleaving of a rotation with the app's read-then-login happens without timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_logging_in_with_whatever_current_says_never_fails_through_ten_alternating_rotations()
 {
    let e = Env::new(&["app_a", "app_b"], false).await;
    e.write_policy("alternating", "app_a, app_b", 3);
    let monitor = e.redis.monitor().await.unwrap();
    let first = e.rotate().await;
    assert!(first.status.success(), "{}", text(&first));

    let mut app = LoopingApp::spawn("app", {
        let vault = Arc::new(e.agent.bao.root_client().unwrap());
        let port = e.redis.port();
        move || {
            let vault = vault.clone();
            async move {
                let r = vault
                    .kv2_read("secret", &format!("keyturn/{POLICY}"), None)
                    .await
                    .unwrap();
                let f = |k: &str| r.data.get(k).unwrap().expose_str().unwrap().to_owned();
                let (user, password) = (f("username"), f("password"));
                let result = match keyturn_tests::redis::connect(port, &user, &password).await {
                    Ok(mut c) => redis::cmd("PING").query_async::<String>(&mut c).await,
                    Err(err) => Err(err),
                };
                // A refused AUTH's text holds no password.
                result
                    .map(drop)
                    .map_err(|err| format!("login as {user} (version {}): {err}", r.version))
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
    e.assert_clean(&refs, &passwords, Some(&monitor)).await;
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
async fn single_kill_after_set_converges() {
    crash_and_resume("single", "set").await;
}

#[tokio::test]
async fn single_kill_after_test_converges() {
    crash_and_resume("single", "test").await;
}

// ---- refusals ------------------------------------------------------------------------------

#[tokio::test]
async fn a_user_that_does_not_exist_is_a_clear_failure_and_is_not_created() {
    let e = Env::new(&[], false).await;
    e.write_policy("single", "ghost", 2);
    let out = e.rotate().await;
    // README's table: 1, a rotation given up and rolled back.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("user \"ghost\" does not exist")
            && msg.contains("keyturn does not create users")
            && msg.contains(&format!("redis:127.0.0.1:{}", e.redis.port())),
        "{msg}"
    );
    assert_eq!(
        e.redis.acl_getuser("ghost").await.unwrap(),
        None,
        "keyturn created the user"
    );
    assert!(
        e.audit_actions()
            .iter()
            .any(|(a, o)| a == "rotate.failed" && o == "error")
    );
    let state = e.state().await;
    e.assert_clean(&[&out], &[], None).await;
    assert!(state.get("pending.password").is_none(), "{state}");
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
            "admin login as user \"{ADMIN_USER}\" refused: WRONGPASS"
        )),
        "{msg}"
    );
    // max-attempts: 3 → three set attempts, each one AUTH (no client-side fallback login).
    assert_eq!(e.redis.failed_logins(ADMIN_USER).await.unwrap(), 3);
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
    e.assert_clean(&[&out], &[wrong], None).await;
}

#[tokio::test]
async fn an_admin_without_acl_setuser_is_refused_with_the_rules_it_needs() {
    let e = Env::new(&["app"], false).await;
    e.redis
        .acl_setuser(ADMIN_USER, &["-acl|setuser"])
        .await
        .unwrap();
    e.write_policy("single", "app", 1);
    let out = e.rotate().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("NOPERM") && msg.contains("+acl|getuser +acl|setuser +acl|save"),
        "{msg}"
    );
    e.assert_clean(&[&out], &[], None).await;
}

// ---- on the wire ---------------------------------------------------------------------------

/// A TCP relay to `upstream` on loopback that records every byte its clients send.
async fn recording_relay(upstream: u16) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let record = sent.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let server = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                    .await
                    .unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut sr, &mut cw).await });
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (port, sent)
}

fn target_at(port: u16, user: &str, admin: SecretData) -> Redis {
    let spec = redis_target::Spec {
        host: "127.0.0.1".into(),
        port,
        admin: StoreSpec::VaultKv(vault_kv::Spec {
            mount: "secret".into(),
            path: ADMIN_PATH.into(),
        }),
        users: Users::new(vec![user.to_owned()], Strategy::Single),
    };
    Redis::new(&spec, admin).with_timeout(Duration::from_secs(5))
}

/// What keyturn sends, read off the wire rather than from what Redis chooses to log (which
/// redacts ACL SETUSER anyway): `set` sends the SHA-256 of the new password and never the
/// password; the one place the cleartext goes is `test`'s own AUTH.
#[tokio::test]
async fn only_a_hash_of_the_new_password_crosses_the_wire_to_set_it() {
    let admin_password = canary("redis-default");
    let server = RedisServer::start(&admin_password).await.unwrap();
    server.acl_setuser("app", &APP_RULES).await.unwrap();
    let (port, sent) = recording_relay(server.port()).await;
    let t = target_at(port, "app", login("default", &admin_password));
    let password = canary("pending");
    let pending = login("app", &password);

    t.set(&pending).await.unwrap();
    let wire = sent.lock().unwrap().clone();
    let text = String::from_utf8_lossy(&wire).into_owned();
    for part in [
        "GETUSER",
        "SETUSER",
        "resetpass",
        &hash_rule(&password),
        "SAVE",
    ] {
        assert!(text.contains(part), "{part} not sent: {text}");
    }
    assert_absent("what set sent", &wire, &[&password]);
    assert!(server.logs_in("app", &password).await);

    t.test(&pending).await.unwrap();
    let wire = String::from_utf8_lossy(&sent.lock().unwrap()).into_owned();
    assert_eq!(
        wire.matches(&password).count(),
        1,
        "the cleartext went out other than in test's one AUTH"
    );
    assert!(wire.contains(&format!(
        "AUTH\r\n$3\r\napp\r\n${}\r\n{password}",
        password.len()
    )));
}

/// A server that resets every connection is unreachable (retryable) for the target; through
/// `keyturn rotate` each of max-attempts `set` attempts makes exactly one connection and
/// then the rotation is given up, and no message holds a value.
#[tokio::test]
async fn a_server_that_resets_connections_is_retried_max_attempts_times_then_given_up() {
    let e = Env::new(&["app"], false).await;
    let proxy = FaultProxy::tcp(([127, 0, 0, 1], e.redis.port()).into())
        .await
        .unwrap();
    proxy.set(Mode::Refuse);
    // The policy names the proxy's port.
    let policy = std::fs::read_to_string({
        e.write_policy("single", "app", 3);
        e.policy_file()
    })
    .unwrap()
    .replace(
        &format!("port: {}", e.redis.port()),
        &format!("port: {}", proxy.port()),
    );
    std::fs::write(e.policy_file(), policy).unwrap();

    let t = target_at(proxy.port(), "app", login(ADMIN_USER, &e.admin_password));
    let err = t.set(&login("app", &canary("x"))).await.unwrap_err();
    assert!(
        matches!(err, TargetError::Unreachable { .. }) && err.is_retryable(),
        "{err:?}"
    );
    assert_eq!(proxy.counts(Mode::Refuse).connections, 1);

    let out = e.rotate().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("unreachable") && msg.contains(&format!("redis:127.0.0.1:{}", proxy.port())),
        "{msg}"
    );
    assert_eq!(
        proxy.counts(Mode::Refuse).connections,
        1 + 3,
        "one connection per set attempt"
    );
    let sets: Vec<String> = e
        .audit_actions()
        .into_iter()
        .filter(|(a, _)| a == "rotate.set")
        .map(|(_, o)| o)
        .collect();
    assert_eq!(sets, ["started", "error"].repeat(3));
    e.assert_clean(&[&out], &[], None).await;
}

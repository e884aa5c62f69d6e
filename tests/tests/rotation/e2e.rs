//! The whole job end to end, with `keyturn rotate` as a real process: a PostgreSQL password
//! is rotated (alternating users), the new credential is promoted in OpenBao, delivered into
//! a Kubernetes Secret and the Deployment that reads it is rolled.
//!
//! Real PostgreSQL 15 (`log_statement=all`), real OpenBao with the agent's own policy, and
//! the Kubernetes stand-in — or a real cluster when `KEYTURN_TEST_KUBECONFIG` is set
//! (stand-in-only assertions say so).

use std::collections::BTreeSet;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use keyturn_tests::agent_env::AgentEnv;
use keyturn_tests::canary::assert_absent;
use keyturn_tests::kube::TestCluster;
use keyturn_tests::login_env::{self, LoginEnv};
use keyturn_tests::openbao::OpenBao;
use keyturn_tests::postgres::Postgres as PgServer;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::sync::Mutex;

use crate::support::text;

const POLICY: &str = "orders-db";
const SECRET: &str = "orders-db";
const DEPLOYMENT: &str = "orders-api";

/// PostgreSQL beside the shared keyturn set-up ([`AgentEnv`], as `agent`, always with a
/// cluster).
struct Env {
    agent: AgentEnv,
    pg: PgServer,
    admin_password: String,
}

impl Env {
    /// The three servers; roles `app_a`, `app_b` and an admin with CREATEROLE whose password
    /// (a canary) is in OpenBao at `keyturn/pg-admin`; a Deployment to roll; a token with
    /// only `keyturn-agent.hcl`.
    async fn new() -> Self {
        let (bao, pg, cluster) = tokio::join!(
            OpenBao::start(),
            PgServer::start_with(&[("log_statement", "all")]),
            TestCluster::start()
        );
        let (bao, pg, cluster) = (bao.unwrap(), pg.unwrap(), cluster.unwrap());
        let admin_password = crate::support::plant_admin(&bao, &pg).await;

        let d: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": DEPLOYMENT},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": DEPLOYMENT}},
                "template": {
                    "metadata": {"labels": {"app": DEPLOYMENT}},
                    "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}
                }
            }
        }))
        .unwrap();
        Api::<Deployment>::namespaced(cluster.client(), cluster.namespace())
            .create(&PostParams::default(), &d)
            .await
            .unwrap();

        Self {
            agent: AgentEnv::new(bao, Some(cluster), 9).await,
            pg,
            admin_password,
        }
    }

    fn cluster(&self) -> &TestCluster {
        self.agent
            .cluster
            .as_ref()
            .expect("Env::new starts a cluster")
    }

    fn write_policy(&self, strategy: &str, users: &str) {
        std::fs::write(
            self.agent.policy_file(POLICY),
            format!(
                "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: orders-db }}\nspec:\n  every: 24h\n  store: {{ vault-kv: {{ path: keyturn/orders-db }} }}\n  target:\n    postgres:\n      host: 127.0.0.1\n      port: {}\n      database: postgres\n      admin: {{ vault-kv: {{ path: keyturn/pg-admin }} }}\n      users: [{users}]\n      strategy: {strategy}\n  generator: {{ length: 32, charset: alphanumeric-symbols }}\n  max-attempts: 2\n  distribute:\n    - kubernetes: {{ namespace: {}, secret: {SECRET}, keys: {{ DB_USER: username, DB_PASSWORD: password }} }}\n      restart: [ {{ kind: Deployment, name: {DEPLOYMENT} }} ]\n",
                self.pg.port(),
                self.cluster().namespace(),
            ),
        )
        .unwrap();
    }

    /// `keyturn ARGS` as the agent, on tokio's process API (the stand-in serves from this
    /// test process) and without a restart window, as [`AgentEnv::rotate`] runs it.
    fn cmd(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::from(self.agent.cmd(args, "agent-1"));
        c.env("KEYTURN_RESTART_WINDOW", "0s");
        c
    }

    /// `keyturn rotate orders-db`, run to its end.
    async fn rotate(&self) -> Output {
        self.agent.rotate(POLICY, None).await
    }

    async fn current(&self) -> (String, String, u64) {
        self.agent.login_at(POLICY, None).await
    }

    async fn state(&self) -> serde_json::Value {
        self.agent.state(POLICY).await.unwrap_or_default()
    }

    async fn version_annotation(&self) -> Option<String> {
        let d = Api::<Deployment>::namespaced(self.cluster().client(), self.cluster().namespace())
            .get(DEPLOYMENT)
            .await
            .unwrap();
        d.spec?
            .template
            .metadata?
            .annotations?
            .get("keyturn.dev/version")
            .cloned()
    }

    fn audit_actions(&self) -> Vec<(String, String)> {
        self.agent.audit_actions()
    }

    /// Checks the audit chain and that no value seen in the test leaked into any output.
    fn assert_clean(&self, outputs: &[&Output], values: &[String]) {
        let mut canaries: Vec<&str> = values.iter().map(String::as_str).collect();
        canaries.push(&self.admin_password);
        self.agent.assert_keyturn_clean(outputs, &canaries);
        assert_absent("PostgreSQL log", self.pg.log().as_bytes(), &canaries);
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
        crate::support::logs_in(&self.pg, user, password).await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_following_the_secret_never_fails_through_twenty_alternating_rotations() {
    let e = Env::new().await;
    e.write_policy("alternating", "app_a, app_b");
    let first = e.rotate().await;
    assert!(first.status.success(), "{}", text(&first));
    let (user, password) = e.secret().await.expect("the Secret was created");
    assert_eq!(user, "app_a");
    assert!(e.logs_in(&user, &password).await);

    // The app: reads whatever the Secret says and logs in with it, over and over, the way a
    // pod restarted onto a new Secret would. It must never fail.
    let stop = Arc::new(AtomicBool::new(false));
    let logins = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let client = {
        let (stop, logins, failures) = (stop.clone(), logins.clone(), failures.clone());
        let cluster_client = e.cluster().client();
        let ns = e.cluster().namespace().to_owned();
        let port = e.pg.port();
        tokio::spawn(async move {
            let secrets = Api::<Secret>::namespaced(cluster_client, &ns);
            while !stop.load(Ordering::Relaxed) {
                let s = secrets.get(SECRET).await.unwrap();
                let data = s.data.unwrap();
                let user = String::from_utf8(data["DB_USER"].0.clone()).unwrap();
                let pw = String::from_utf8(data["DB_PASSWORD"].0.clone()).unwrap();
                let conn = format!(
                    "host=127.0.0.1 port={port} user={user} password={pw} dbname=postgres connect_timeout=5"
                );
                match tokio_postgres::connect(&conn, tokio_postgres::NoTls).await {
                    Ok((c, conn)) => {
                        tokio::spawn(conn);
                        if c.simple_query("SELECT 1").await.is_ok() {
                            logins.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failures.lock().await.push(format!("{user}: query failed"));
                        }
                    }
                    // The error text of a failed login does not include the password.
                    Err(err) => failures.lock().await.push(format!("{user}: {err}")),
                }
            }
        })
    };

    let mut outputs = vec![first];
    let mut seen_passwords = vec![password];
    let mut users = vec![user];
    let mut versions = BTreeSet::new();
    versions.insert(
        e.version_annotation()
            .await
            .expect("rolled on the first rotation"),
    );
    for i in 0..20 {
        let out = e.rotate().await;
        assert!(out.status.success(), "rotation {i}: {}", text(&out));
        let (u, p) = e.secret().await.unwrap();
        let (cu, cp, _) = e.current().await;
        assert_eq!((&u, &p), (&cu, &cp), "the Secret holds CURRENT");
        assert_ne!(&u, users.last().unwrap(), "alternates users");
        assert!(
            e.logs_in(users.last().unwrap(), seen_passwords.last().unwrap())
                .await,
            "the previous user keeps working until the next rotation"
        );
        assert!(
            versions.insert(e.version_annotation().await.unwrap()),
            "every rotation rolls the Deployment with a new version"
        );
        users.push(u);
        seen_passwords.push(p);
        outputs.push(out);
        // Let the app log in with each credential at least once.
        let before = logins.load(Ordering::Relaxed);
        let caught_up = tokio::time::timeout(Duration::from_secs(30), async {
            while logins.load(Ordering::Relaxed) < before + 2 && !client.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            caught_up.is_ok() && !client.is_finished(),
            "the app stopped logging in"
        );
    }
    stop.store(true, Ordering::Relaxed);
    client.await.unwrap();
    let failures = failures.lock().await;
    assert!(
        failures.is_empty(),
        "the app failed to log in {} times: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(logins.load(Ordering::Relaxed) >= 40);
    assert_eq!(versions.len(), 21);
    let actions = e.audit_actions();
    assert_eq!(
        actions
            .iter()
            .filter(|(a, o)| a == "rotate.distribute" && o == "ok")
            .count(),
        21
    );
    let refs: Vec<&Output> = outputs.iter().collect();
    e.assert_clean(&refs, &seen_passwords);
}

/// The crash matrix of [`login_env`] (kill `keyturn rotate` right after `step`, check
/// the app's credential still works, restart it and check it converged: one new CURRENT, the
/// Secret holding it, no rotation left in flight), plus what only this test has: the
/// Deployment is rolled once onto the new CURRENT and not before distribute.
async fn crash_and_resume(strategy: &str, step: &str) {
    let e = Env::new().await;
    if strategy == "alternating" {
        e.write_policy("alternating", "app_a, app_b");
    } else {
        e.write_policy("single", "app_a");
    }
    let before = login_env::first_rotation(&e).await;
    assert_eq!(
        e.secret().await,
        Some((before.old_user.clone(), before.old_password.clone())),
        "the first rotation was distributed"
    );
    let old_annotation = e.version_annotation().await.unwrap();

    let crashed = login_env::crash_after(&e, strategy, step, before).await;
    if step != "distribute" {
        assert_eq!(e.version_annotation().await.unwrap(), old_annotation);
    }

    let r = login_env::resume(&e, crashed).await;
    let new_annotation = e.version_annotation().await.unwrap();
    assert_ne!(
        new_annotation, old_annotation,
        "the Deployment rolled onto it"
    );
    if let Some(s) = e.cluster().standin() {
        // The Deployment was patched at most once per rotation: the resumed distribute step
        // found it already current when the crash came after it.
        let rolls = s
            .requests()
            .iter()
            .filter(|r| r.resource == "deployments" && r.verb == "patch" && r.code < 300)
            .count();
        assert_eq!(rolls, 2, "one roll per rotation");
    }
    let values = [r.crashed.before.old_password.clone(), r.password.clone()];
    e.assert_clean(&r.outputs(), &values);
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
async fn alternating_kill_after_distribute_converges_without_a_second_roll() {
    crash_and_resume("alternating", "distribute").await;
}

#[tokio::test]
async fn single_kill_after_set_converges() {
    crash_and_resume("single", "set").await;
}

#[tokio::test]
async fn single_kill_after_distribute_converges() {
    crash_and_resume("single", "distribute").await;
}

#[tokio::test]
async fn a_denied_secret_patch_is_reported_audited_and_left_resumable() {
    let e = Env::new().await;
    let Some(standin) = e.cluster().standin_or_skip(
        "a_denied_secret_patch_is_reported_audited_and_left_resumable",
        "the deny switch is the stand-in's; the generated Role's denial is tested below",
    ) else {
        return;
    };
    e.write_policy("alternating", "app_a, app_b");
    let first = e.rotate().await;
    assert!(first.status.success(), "{}", text(&first));
    let (old_user, old_password) = e.secret().await.unwrap();

    standin.deny("patch", "secrets");
    let denied = e.rotate().await;
    assert_eq!(denied.status.code(), Some(77), "{}", text(&denied));
    let msg = text(&denied);
    assert!(
        msg.contains(&format!("secrets \"{SECRET}\"")) && msg.contains("patch"),
        "names the Secret and the verb: {msg}"
    );
    assert!(msg.contains("not distributed"), "{msg}");
    assert_eq!(
        e.state().await["step"],
        "finished",
        "left in flight at distribute"
    );
    assert_eq!(
        e.secret().await.unwrap(),
        (old_user.clone(), old_password.clone())
    );
    assert!(
        e.logs_in(&old_user, &old_password).await,
        "the app keeps working"
    );
    assert!(
        e.audit_actions()
            .iter()
            .any(|(a, o)| a == "rotate.distribute" && o == "denied"),
        "the denial is audited"
    );

    standin.allow_all();
    let resumed = e.rotate().await;
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(text(&resumed).contains("resumed"), "{}", text(&resumed));
    let (user, password, _) = e.current().await;
    assert_eq!(e.secret().await.unwrap(), (user, password.clone()));
    e.assert_clean(&[&first, &denied, &resumed], &[old_password, password]);
}

#[tokio::test]
async fn under_the_generated_role_a_missing_secret_is_a_clear_audited_403_and_resumes_once_it_exists()
 {
    let e = Env::new().await;
    e.write_policy("alternating", "app_a, app_b");
    // The Role keyturn itself prints for these policies, enforced by the stand-in (or the
    // real cluster) for the service account keyturn runs as below.
    let role = e
        .cmd(&["policy", "rbac"])
        .arg(e.agent.policies())
        .output()
        .await
        .unwrap();
    assert!(role.status.success(), "{}", text(&role));
    e.cluster()
        .client_with_role_as(&String::from_utf8(role.stdout).unwrap(), "keyturn-agent")
        .await
        .unwrap();
    if let Some(standin) = e.cluster().standin() {
        assert!(standin.rbac_enforced());
    }
    let token = e
        .cluster()
        .service_account_token(e.cluster().namespace(), "keyturn-agent")
        .await
        .unwrap();
    let kubeconfig = e.agent.home.path().join("agent-kubeconfig");
    std::fs::write(
        &kubeconfig,
        e.cluster().kubeconfig_for_token("agent", &token),
    )
    .unwrap();
    let rotate = || {
        let mut c = e.cmd(&["rotate", "orders-db"]);
        c.env("KUBECONFIG", &kubeconfig);
        c
    };

    // No create in the generated Role: the absent Secret cannot be made.
    let denied = rotate().output().await.unwrap();
    assert_eq!(denied.status.code(), Some(77), "{}", text(&denied));
    let msg = text(&denied);
    assert!(
        msg.contains("forbidden") && msg.contains("system:serviceaccount") && msg.contains(SECRET),
        "names who, what and which object: {msg}"
    );
    assert_eq!(e.state().await["step"], "finished", "left resumable");
    assert!(
        e.audit_actions()
            .iter()
            .any(|(a, o)| a == "rotate.distribute" && o == "denied")
    );

    // An operator pre-creates the (empty) Secret, as the Role's header says; the next run
    // resumes the same rotation and delivers it.
    let empty: Secret = serde_json::from_value(json!({"metadata": {"name": SECRET}})).unwrap();
    Api::<Secret>::namespaced(e.cluster().client(), e.cluster().namespace())
        .create(&PostParams::default(), &empty)
        .await
        .unwrap();
    let resumed = rotate().output().await.unwrap();
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(text(&resumed).contains("resumed"), "{}", text(&resumed));
    let (user, password, _) = e.current().await;
    assert_eq!(e.secret().await.unwrap(), (user.clone(), password.clone()));
    assert!(e.logs_in(&user, &password).await);
    assert!(
        e.version_annotation().await.is_some(),
        "the Deployment rolled"
    );
    e.assert_clean(&[&denied, &resumed], &[password]);
}

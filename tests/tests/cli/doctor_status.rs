//! `keyturn doctor` and `keyturn status` as real processes against a real OpenBao (and the
//! Kubernetes stand-in, or a real cluster when `KEYTURN_TEST_KUBECONFIG` is set, where a
//! policy distributes): doctor passes a sound setup, names the policy and the Vault path a
//! narrower token lacks, reports an unreachable Vault and an RBAC denial; status shows the
//! last rotation, the next due time, a never-rotated policy and an in-flight step. No
//! credential (canary) ever appears in their output.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use chrono::{DateTime, SecondsFormat, Utc};
use keyturn_core::SecretValue;
use keyturn_core::vault::SecretData;
use keyturn_tests::agent_env;
use keyturn_tests::canary::{assert_absent, canary};
use keyturn_tests::kube::TestCluster;
use keyturn_tests::openbao::OpenBao;
use keyturn_tests::process::ClosedPort;

struct Env {
    bao: OpenBao,
    /// A token with only `policies/vault/keyturn-agent.hcl` (and Vault's `default`).
    agent_token: String,
    dir: tempfile::TempDir,
}

impl Env {
    async fn new() -> Self {
        let bao = OpenBao::start().await.unwrap();
        let agent_token = agent_env::agent_token(&bao).await;
        let dir = agent_env::home(7);
        std::fs::create_dir(dir.path().join("audit")).unwrap();
        Self {
            bao,
            agent_token,
            dir,
        }
    }

    fn policies(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    fn audit(&self) -> PathBuf {
        self.dir.path().join("audit").join("audit.jsonl")
    }

    fn write_policy(&self, name: &str, extra: &str) {
        agent_env::write_generated_policy(&self.policies(), name, extra);
    }

    /// `keyturn ARGS` with a clean environment: this OpenBao and `token`, no audit options.
    fn cmd(&self, args: &[&str], token: &str) -> Command {
        keyturn(args, &self.bao.addr(), token, self.dir.path())
    }

    /// [`Env::cmd`] plus the audit options `keyturn rotate` needs.
    fn audited(&self, args: &[&str], token: &str) -> Command {
        let mut c = self.cmd(args, token);
        c.env("KEYTURN_AUDIT_FILE", self.audit()).env(
            "KEYTURN_AUDIT_HMAC_KEY_FILE",
            self.dir.path().join("hmac.key"),
        );
        c
    }

    fn rotate(&self, policy: &str, crash_after: Option<&str>) -> Output {
        let mut c = self.audited(&["rotate", policy], &self.agent_token);
        c.env("KEYTURN_HOLDER", "agent-1");
        if let Some(step) = crash_after {
            c.env("KEYTURN_CRASH_AFTER", step);
        }
        c.output().unwrap()
    }

    fn status(&self, json: bool) -> Output {
        let mut args = vec!["status"];
        if json {
            args.push("--json");
        }
        self.cmd(&args, &self.agent_token).output().unwrap()
    }

    async fn state(&self, name: &str) -> serde_json::Value {
        self.bao
            .api(
                "GET",
                &format!("secret/data/keyturn-state/keyturn/{name}"),
                None,
            )
            .await
            .unwrap()["data"]["data"]
            .clone()
    }

    async fn current(&self, name: &str) -> String {
        let r = self
            .bao
            .root_client()
            .unwrap()
            .kv2_read("secret", &format!("keyturn/{name}"), None)
            .await
            .unwrap();
        r.data
            .get("value")
            .unwrap()
            .expose_str()
            .unwrap()
            .to_owned()
    }

    /// Plants `value` as CURRENT of `name`, as an operator seeding a store would.
    async fn plant(&self, name: &str, value: &str) {
        let mut d = SecretData::new();
        d.insert("value", SecretValue::from_str_copy(value));
        self.bao
            .root_client()
            .unwrap()
            .kv2_write("secret", &format!("keyturn/{name}"), &d, None)
            .await
            .unwrap();
    }
}

fn keyturn(args: &[&str], vault_addr: &str, token: &str, home: &std::path::Path) -> Command {
    let mut c = agent_env::keyturn(args, home, vault_addr, token);
    c.env("KEYTURN_LOG", "warn");
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The line of `out` that starts with `prefix`.
fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{out}"))
}

fn secs(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn distribute(cluster: &TestCluster, secret: &str) -> String {
    format!(
        "  distribute:\n    - kubernetes: {{ namespace: {}, secret: {secret}, keys: {{ TOKEN: value }} }}\n      restart: [ {{ kind: Deployment, name: orders-api }} ]\n",
        cluster.namespace()
    )
}

#[tokio::test]
async fn doctor_passes_every_check_with_the_root_token_and_a_valid_setup() {
    let e = Env::new().await;
    let cluster = TestCluster::start().await.unwrap();
    e.write_policy("orders", &distribute(&cluster, "orders"));
    let value = canary("doctor-current");
    e.plant("orders", &value).await;
    // An init output directory on tmpfs, where this machine has one.
    let shm = std::path::Path::new("/dev/shm");
    let init_out = keyturn_core::sys::is_memory_backed(shm)
        .unwrap_or(false)
        .then(|| tempfile::tempdir_in(shm).unwrap());

    let mut c = e.audited(&["doctor"], e.bao.root_token());
    c.env("KUBECONFIG", cluster.kubeconfig_path());
    if let Some(d) = &init_out {
        c.arg("--init-out").arg(d.path());
    }
    // The stand-in serves from this test's runtime: wait without blocking it.
    let out = tokio::process::Command::from(c).output().await.unwrap();
    let s = stdout(&out);
    assert!(out.status.success(), "{}", text(&out));
    for l in s.lines() {
        assert!(
            l.starts_with("ok   ") || l.starts_with("skip "),
            "unexpected line {l:?} in:\n{s}"
        );
    }
    line(&s, "ok   vault reachable: ");
    assert!(line(&s, "ok   vault token: ").contains("no expiry"), "{s}");
    assert!(
        line(&s, "ok   vault capabilities (policy orders): ")
            .contains("secret/data/keyturn-state/keyturn/orders"),
        "{s}"
    );
    line(&s, "skip aws secrets manager: no policy uses AWS");
    line(&s, "ok   kubernetes api: ");
    line(
        &s,
        "ok   kubernetes rbac (policy orders): 4 accesses allowed",
    );
    line(&s, "ok   audit sink: ");
    if init_out.is_some() {
        line(&s, "ok   init output: ");
    } else {
        line(&s, "skip init output: ");
    }
    line(&s, "ok   clock: within");
    // The audit directory was probed, not written: no event, no leftover probe file.
    assert_eq!(
        std::fs::read_dir(e.audit().parent().unwrap())
            .unwrap()
            .count(),
        0
    );
    assert_absent("doctor output", text(&out).as_bytes(), &[&value]);
}

#[tokio::test]
async fn doctor_with_a_narrower_token_names_the_policy_and_the_path_it_lacks() {
    let e = Env::new().await;
    e.write_policy("api", "");
    e.bao
        .put_policy(
            "narrow",
            "path \"secret/data/keyturn/*\" { capabilities = [\"create\", \"read\", \"update\"] }\npath \"secret/data/keyturn-state/*\" { capabilities = [\"read\"] }\n",
        )
        .await
        .unwrap();
    let narrow = e.bao.create_token(&["narrow"]).await.unwrap();

    let out = e.audited(&["doctor"], &narrow).output().unwrap();
    let s = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(line(&s, "ok   vault token: ").contains("narrow"), "{s}");
    let fail = line(&s, "FAIL vault capabilities (policy api): ");
    assert!(
        fail.contains(
            "secret/data/keyturn-state/keyturn/api needs create, update (token has read)"
        ),
        "{fail}"
    );
    assert!(
        fail.contains("— fix: ") && fail.contains("keyturn-agent.hcl"),
        "{fail}"
    );
    assert!(!fail.contains("secret/data/keyturn/api needs"), "{fail}");
    line(&s, "skip kubernetes rbac: no policy distributes");

    // The agent's own policy grants exactly what is needed.
    let out = e.audited(&["doctor"], &e.agent_token).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    line(&stdout(&out), "ok   vault capabilities (policy api): ");
}

#[tokio::test]
async fn doctor_reports_vault_unreachable_on_a_closed_port() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    agent_env::write_generated_policy(&dir.path().join("policies"), "api", "");
    let token = canary("vault-token");
    let closed = ClosedPort::new();
    let addr = closed.url();
    let out = keyturn(&["doctor"], &addr, &token, dir.path())
        .env("KEYTURN_AUDIT_STDOUT", "true")
        .output()
        .unwrap();
    let s = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let fail = line(&s, "FAIL vault reachable: ");
    assert!(
        fail.contains(&format!("cannot reach {addr}")) && fail.contains("— fix: "),
        "{fail}"
    );
    line(&s, "skip vault token: Vault is not reachable");
    line(&s, "skip vault capabilities: Vault is not reachable");
    line(&s, "ok   audit sink: stdout");
    line(&s, "skip clock: ");
    assert_absent("doctor output", text(&out).as_bytes(), &[&token]);
}

#[tokio::test]
async fn doctor_refuses_an_invalid_policy_directory_with_64_before_any_network_call() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/bad.yaml"),
        "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: { name: bad }\nspec:\n  every: soon\n",
    )
    .unwrap();
    let closed = ClosedPort::new();
    let addr = closed.url();
    let out = keyturn(&["doctor"], &addr, "t", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(stdout(&out).is_empty(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.yaml"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn doctor_reports_a_kubernetes_rbac_denial_by_verb_and_object() {
    let cluster = TestCluster::start().await.unwrap();
    let Some(standin) = cluster.standin() else {
        eprintln!("note: deny rules are a stand-in feature; skipped on a real cluster");
        return;
    };
    let e = Env::new().await;
    e.write_policy("orders", &distribute(&cluster, "orders"));
    standin.deny("patch", "secrets");
    let mut c = e.audited(&["doctor"], e.bao.root_token());
    c.env("KUBECONFIG", cluster.kubeconfig_path());
    let out = tokio::process::Command::from(c).output().await.unwrap();
    let s = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let fail = line(&s, "FAIL kubernetes rbac (policy orders): ");
    assert!(
        fail.contains(&format!(
            "denied: patch secrets {}/orders",
            cluster.namespace()
        )),
        "{fail}"
    );
    assert!(!fail.contains("get secrets"), "{fail}");
    assert!(fail.contains("keyturn policy rbac"), "{fail}");
}

#[tokio::test]
async fn status_after_one_rotate_shows_the_last_rotation_ok_and_a_next_due_time() {
    let e = Env::new().await;
    e.write_policy("api", "");
    let rotated = e.rotate("api", None);
    assert!(rotated.status.success(), "{}", text(&rotated));
    let value = e.current("api").await;
    let started: DateTime<Utc> = e.state("api").await["last_started_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let due = started + chrono::Duration::hours(24);
    let audit_before = std::fs::read(e.audit()).unwrap();

    let out = e.status(false);
    assert!(out.status.success(), "{}", text(&out));
    let s = stdout(&out);
    line(&s, "POLICY ");
    let row = line(&s, "api ");
    assert!(row.contains("vault-kv:secret/keyturn/api"), "{row}");
    assert!(row.contains(&format!("{} ok", secs(started))), "{row}");
    assert!(row.contains(&secs(due)), "{row}");
    assert!(
        !row.contains("in flight") && !row.contains("failed"),
        "{row}"
    );

    let out = e.status(true);
    assert!(out.status.success(), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &doc["policies"][0];
    assert_eq!(p["policy"], "api");
    assert_eq!(p["last_rotation"]["outcome"], "ok");
    let next: DateTime<Utc> = p["next_due"].as_str().unwrap().parse().unwrap();
    assert_eq!(secs(next), secs(due));
    assert!(p["current_age_seconds"].as_i64().unwrap() >= 0);
    assert!(p["in_flight"].is_null() && p["failed"] == false, "{p}");

    // Status needs no audit log and writes none.
    assert_eq!(std::fs::read(e.audit()).unwrap(), audit_before);
    for o in [&rotated, &e.status(false), &out] {
        assert_absent("keyturn output", text(o).as_bytes(), &[&value]);
    }
}

#[tokio::test]
async fn status_of_a_never_rotated_policy_says_never() {
    let e = Env::new().await;
    e.write_policy("fresh", "");
    let out = e.status(false);
    assert!(out.status.success(), "{}", text(&out));
    let s = stdout(&out);
    let row = line(&s, "fresh ");
    assert!(row.contains(" never "), "{row}");
    assert!(row.contains(" now "), "due at once: {row}");

    let doc: serde_json::Value = serde_json::from_slice(&e.status(true).stdout).unwrap();
    let p = &doc["policies"][0];
    assert!(p["last_rotation"].is_null(), "{p}");
    assert!(p["current_age_seconds"].is_null(), "{p}");
}

#[tokio::test]
async fn status_shows_the_step_and_holder_of_an_in_flight_rotation() {
    let e = Env::new().await;
    e.write_policy("api", "");
    let first = e.rotate("api", None);
    assert!(first.status.success(), "{}", text(&first));
    let current = e.current("api").await;
    let crashed = e.rotate("api", Some("set"));
    assert_eq!(crashed.status.signal(), Some(9), "{}", text(&crashed));
    let state = e.state("api").await;
    let pending = state["pending.value"].as_str().unwrap().to_owned();
    let rotation_id = state["rotation_id"].as_str().unwrap().to_owned();

    let out = e.status(false);
    assert!(out.status.success(), "{}", text(&out));
    let s = stdout(&out);
    let row = line(&s, "api ");
    assert!(
        row.contains(&format!(
            "in flight: step created held by agent-1 (rotation {rotation_id}"
        )),
        "{row}"
    );
    assert!(row.contains(" ok "), "the last completed rotation: {row}");

    let json = e.status(true);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let f = &doc["policies"][0]["in_flight"];
    // The last persisted step: `set` itself is not recorded, it runs again on a resume.
    assert_eq!(f["step"], "created");
    assert_eq!(f["holder"], "agent-1");
    assert_eq!(f["rotation_id"], rotation_id.as_str());
    for o in [&out, &json] {
        assert_absent(
            "keyturn status output",
            text(o).as_bytes(),
            &[&pending, &current],
        );
    }
}

#[tokio::test]
async fn status_with_vault_unreachable_exits_69_and_still_prints_every_row() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    agent_env::write_generated_policy(&dir.path().join("policies"), "one", "");
    agent_env::write_generated_policy(&dir.path().join("policies"), "two", "");
    let closed = ClosedPort::new();
    let addr = closed.url();
    let out = keyturn(&["status"], &addr, "t", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69), "{}", text(&out));
    let s = stdout(&out);
    for name in ["one ", "two "] {
        assert!(line(&s, name).contains("unreadable: vault"), "{s}");
    }
}

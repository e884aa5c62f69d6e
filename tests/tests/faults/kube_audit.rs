//! Kubernetes API and audit-disk faults.
//!
//! `keyturn run` rotates [`POLICIES`] generated values kept in Vault KV of a real OpenBao,
//! each delivered into a Kubernetes Secret of the stand-in (some also rolling a Deployment),
//! with `--retry-max 30s` so that every retry after a failure comes exactly 30 s later and a
//! scenario fits in a test. The Secrets exist before the daemon starts, with a placeholder,
//! as Helm or a person usually creates them; the fault is on from the daemon's first
//! rotation, so every policy meets it.
//!
//! Kubernetes faults (403 on Secrets, a 409 storm on every Secret write, 500 on Secrets):
//! the fault holds until every policy has failed twice (its first attempt and its first
//! retry), then clears. Each scenario checks that the requests the stand-in received during
//! the fault stay within what the backoff allows, that metrics and `/readyz` said what was
//! going on, that every policy converges on its next attempt after the fault clears, that no
//! credential was lost (each Secret holds the store's CURRENT, promoted once), and that the
//! audit chain verifies under its key.
//!
//! The audit disk: the audit file lives on a small tmpfs that fills up while the daemon
//! runs. A failed audit write poisons the log for the life of the process (see
//! `keyturn_core::audit::AuditLog`: the file's end is unknown after a failed write or sync),
//! so the daemon keeps failing closed after the space is freed and says so on `/healthz` and
//! `/readyz` (503) and in its log, for the kubelet to restart it; the restarted daemon reopens
//! the log and converges.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use keyturn_core::audit::{HmacKey, VerifyOptions, verify_with};
use keyturn_tests::agent_env::{self, Daemon};
use keyturn_tests::canary::assert_absent;
use keyturn_tests::kube::{KubeStandin, RecordedRequest};
use keyturn_tests::openbao::OpenBao;
use keyturn_tests::process::{eventually, free_port};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

/// The policies every scenario runs.
const POLICIES: usize = 20;
/// The namespace of every Secret and Deployment.
const NS: &str = "faults";
/// Every policy's `max-attempts`: how many deliveries one daemon attempt makes when the
/// failure is retryable (the engine retries a retryable delivery within the attempt, 2 s then
/// 4 s apart; a 403 is not retried).
const MAX_ATTEMPTS: u64 = 3;
/// `--retry-max`: with the minimum cap, every retry comes exactly this long after a failure
/// (`keyturn::schedule::retry_delay` never goes below 30 s nor above the cap).
const RETRY: Duration = Duration::from_secs(30);
/// How many times the Kubernetes sink writes one Secret when every write conflicts
/// (`distribute::api::MAX_ATTEMPTS`), each a GET and a PATCH.
const CONFLICT_WRITES: u64 = 8;

fn policy_names() -> Vec<String> {
    (0..POLICIES).map(|i| format!("p{i:02}")).collect()
}

fn secret_name(policy: &str) -> String {
    format!("s-{policy}")
}

/// The Deployment `policy` rolls, if any: every fourth policy, two Deployments between them,
/// so restarts requested by several policies are debounced into one.
fn deployment_of(policy: &str) -> Option<&'static str> {
    let i: usize = policy
        .trim_start_matches(|c: char| c.is_ascii_alphabetic())
        .parse()
        .ok()?;
    match (policy.starts_with('p'), i % 4, i < POLICIES / 2) {
        (true, 0, true) => Some("web-a"),
        (true, 0, false) => Some("web-b"),
        _ => None,
    }
}

/// OpenBao with an agent-policy token, the Kubernetes stand-in with the Secrets and
/// Deployments in place, and a keyturn home with the policies.
struct Rig {
    bao: OpenBao,
    token: String,
    kube: KubeStandin,
    dir: tempfile::TempDir,
    listen: String,
}

impl Rig {
    async fn new() -> Self {
        let bao = OpenBao::start().await.unwrap();
        let token = agent_env::agent_token(&bao).await;
        let kube = KubeStandin::start().await.unwrap();
        let dir = agent_env::home(11);
        kube.write_kubeconfig(&dir.path().join("kubeconfig"))
            .unwrap();
        let rig = Self {
            bao,
            token,
            kube,
            dir,
            listen: format!("127.0.0.1:{}", free_port()),
        };
        let client = rig.kube.client().await.unwrap();
        for name in ["web-a", "web-b"] {
            let d: Deployment = serde_json::from_value(deployment_json(name)).unwrap();
            Api::<Deployment>::namespaced(client.clone(), NS)
                .create(&PostParams::default(), &d)
                .await
                .unwrap();
        }
        for p in policy_names() {
            rig.add_policy(&p);
            let s = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(secret_name(&p)),
                    ..Default::default()
                },
                data: Some(
                    [("TOKEN".to_owned(), ByteString(b"placeholder".to_vec()))]
                        .into_iter()
                        .collect(),
                ),
                ..Default::default()
            };
            Api::<Secret>::namespaced(client.clone(), NS)
                .create(&PostParams::default(), &s)
                .await
                .unwrap();
        }
        rig
    }

    /// Writes the policy file of `name`: a generated value at `keyturn/NAME`, delivered as
    /// `TOKEN` of Secret `s-NAME`, rolling its Deployment if it has one.
    fn add_policy(&self, name: &str) {
        let restart = deployment_of(name)
            .map(|d| format!("      restart: [ {{ kind: Deployment, name: {d} }} ]\n"))
            .unwrap_or_default();
        agent_env::write_generated_policy(
            &self.dir.path().join("policies"),
            name,
            &format!(
                "  max-attempts: {MAX_ATTEMPTS}\n  distribute:\n    - kubernetes: {{ namespace: {NS}, secret: {}, keys: {{ TOKEN: value }} }}\n{restart}",
                secret_name(name)
            ),
        );
    }

    fn start_daemon(&self, audit: &Path, log_name: &str) -> Daemon {
        let home = self.dir.path();
        // `setpriv --pdeathsig`: the daemon dies with the test even if the runner kills it.
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--"])
            .arg(keyturn_tests::bins::keyturn())
            .args([
                "run",
                "--grace",
                "10s",
                "--listen",
                &self.listen,
                "--retry-max",
                "30s",
            ])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("VAULT_ADDR", self.bao.addr())
            .env("VAULT_TOKEN", &self.token)
            .env("KEYTURN_POLICIES", home.join("policies"))
            .env("KEYTURN_HOLDER", "agent-1")
            .env("KEYTURN_AUDIT_FILE", audit)
            .env("KEYTURN_AUDIT_HMAC_KEY_FILE", home.join("hmac.key"))
            .env("KEYTURN_LOG", "info")
            .env("KUBECONFIG", home.join("kubeconfig"));
        Daemon::spawn(cmd, home.join(log_name))
    }

    async fn get(&self, path: &str) -> (u16, String) {
        match reqwest::get(format!("http://{}{path}", self.listen)).await {
            Ok(r) => {
                let code = r.status().as_u16();
                (code, r.text().await.unwrap_or_default())
            }
            Err(_) => (0, String::new()),
        }
    }

    async fn metrics(&self) -> Metrics {
        Metrics(self.get("/metrics").await.1)
    }

    /// The store's CURRENT value of `policy` and its KV version.
    async fn current(&self, policy: &str) -> Option<(String, u64)> {
        let v = self.bao.root_client().unwrap();
        let r = v
            .kv2_read("secret", &format!("keyturn/{policy}"), None)
            .await
            .ok()?;
        let value = r.data.get("value")?.expose_str().ok()?.to_owned();
        Some((value, r.version))
    }

    /// The rotation state record of `policy` (`{}` when there is none).
    async fn state(&self, policy: &str) -> Value {
        self.bao
            .api(
                "GET",
                &format!("secret/data/keyturn-state/keyturn/{policy}"),
                None,
            )
            .await
            .map(|v| v["data"]["data"].clone())
            .unwrap_or(json!({}))
    }

    async fn secret_value(&self, policy: &str) -> Option<Vec<u8>> {
        let client = self.kube.client().await.unwrap();
        let s = Api::<Secret>::namespaced(client, NS)
            .get(&secret_name(policy))
            .await
            .ok()?;
        s.data?.get("TOKEN").map(|b| b.0.clone())
    }

    async fn template_versions(&self, deployment: &str) -> Value {
        let client = self.kube.client().await.unwrap();
        let d = Api::<Deployment>::namespaced(client, NS)
            .get(deployment)
            .await
            .unwrap();
        let annotations = d
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .unwrap_or_default();
        annotations
            .get("keyturn.dev/versions")
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or(Value::Null)
    }

    /// No credential lost: every Secret of `policies` holds exactly the store's CURRENT,
    /// which is the first and only version (the rotation that met the fault was resumed and
    /// delivered, not replaced by another), no rotation is left in flight, and each
    /// Deployment's pod template names the version of every policy feeding it (it rolled
    /// after the Secrets were written). Returns every CURRENT value, for leak checks.
    async fn assert_converged(&self, policies: &[String]) -> Vec<String> {
        let mut values = Vec::new();
        for p in policies {
            let (current, version) = self.current(p).await.expect("a CURRENT value");
            assert_eq!(version, 1, "{p}: promoted exactly once");
            let delivered = self.secret_value(p).await.expect("the Secret");
            assert!(
                delivered == current.as_bytes(),
                "{p}: the Secret does not hold the store's CURRENT value"
            );
            let state = self.state(p).await;
            assert!(
                state.get("rotation_id").is_none() && state.get("failures_count").is_none(),
                "{p}: left in flight or failing: {:?}",
                state.as_object().map(|o| o.keys().collect::<Vec<_>>())
            );
            if let Some(d) = deployment_of(p) {
                let versions = self.template_versions(d).await;
                assert!(
                    versions.get(p).is_some(),
                    "{d} did not roll for {p}: {versions}"
                );
            }
            values.push(current);
        }
        values
    }
}

fn deployment_json(name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}
            }
        }
    })
}

/// A scrape of `/metrics`.
struct Metrics(String);

impl Metrics {
    /// The value of one series, written as `name{labels}`.
    fn get(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    }

    fn policy(&self, name: &str, policy: &str) -> f64 {
        self.get(&format!("{name}{{policy=\"{policy}\"}}"))
            .unwrap_or(-1.0)
    }

    fn failures(&self, policy: &str) -> f64 {
        self.policy("keyturn_consecutive_failures", policy)
    }

    fn outcome(&self, policy: &str, outcome: &str) -> f64 {
        self.get(&format!(
            "keyturn_rotations_total{{policy=\"{policy}\",outcome=\"{outcome}\"}}"
        ))
        .unwrap_or(-1.0)
    }

    fn audit_write_failures(&self) -> f64 {
        self.get("keyturn_audit_write_failures_total")
            .unwrap_or(-1.0)
    }
}

/// Verifies the audit file as one chain under the audit key (MACs checked).
fn assert_audit_verifies(dir: &Path, audit: &Path) {
    let key = HmacKey::load(&dir.join("hmac.key")).unwrap();
    let report = verify_with(
        &[audit.to_owned()],
        &VerifyOptions {
            key: Some(key.chain_key()),
            ..VerifyOptions::default()
        },
    );
    assert!(report.is_ok(), "audit chain: {report:?}");
    assert!(report.macs_checked && report.keyed_events == report.events);
}

/// Requests the stand-in logged after the first `from`.
fn since(kube: &KubeStandin, from: usize) -> Vec<RecordedRequest> {
    kube.requests().into_iter().skip(from).collect()
}

/// The most Kubernetes requests the daemon may send for one policy in `elapsed` of a fault:
/// attempts × deliveries per attempt × requests per delivery.
///
/// - Attempts: the first at start-up, each later one at least [`RETRY`] after the previous
///   one failed (`retry_delay` with `--retry-max 30s` is exactly 30 s, and the next slot is a
///   day away), so at most `1 + elapsed / 30 s`.
/// - Deliveries per attempt: `deliveries` (1 for a failure the engine does not retry within
///   an attempt, [`MAX_ATTEMPTS`] for a retryable one).
/// - Requests per delivery: `per_delivery`, from how the sink writes a Secret.
fn bound_per_policy(elapsed: Duration, deliveries: u64, per_delivery: u64) -> u64 {
    let attempts = 1 + elapsed.as_secs() / RETRY.as_secs();
    attempts * deliveries * per_delivery
}

/// One Kubernetes fault: `apply` switches it on before the daemon starts, `clear` off once
/// every policy has failed twice. `deliveries` and `per_delivery` feed
/// [`bound_per_policy`]; `failed_outcome` is the audit outcome of a failed delivery.
async fn kube_fault(
    scenario: &str,
    apply: impl Fn(&KubeStandin),
    clear: impl Fn(&KubeStandin),
    deliveries: u64,
    per_delivery: u64,
    failed_outcome: &str,
) {
    let rig = Rig::new().await;
    let names = policy_names();
    let audit = rig.dir.path().join("audit.jsonl");
    apply(&rig.kube);
    let before = rig.kube.requests().len();
    let started = Instant::now();
    let d = rig.start_daemon(&audit, "daemon.log");

    // The fault holds until every policy has failed its first attempt and its first retry
    // (30 s later): the backoff is exercised, not just the first failure.
    eventually("every policy failed twice", || async {
        let m = rig.metrics().await;
        names.iter().all(|p| m.failures(p) >= 2.0)
    })
    .await;
    // The truth during the fault: every policy is failing with a backoff; the failures are
    // counted as errors; the audit log is healthy and keeps recording them; the daemon is
    // ready and healthy (the Kubernetes API failing is no reason to restart it).
    let m = rig.metrics().await;
    for p in &names {
        assert!(m.failures(p) >= 2.0, "{p}");
        assert!(
            m.policy("keyturn_backoff_seconds", p) > 0.0,
            "{p} has no backoff:\n{}",
            m.0
        );
        assert!(m.outcome(p, "error") >= 2.0, "{p}:\n{}", m.0);
        assert_eq!(m.outcome(p, "rotated"), 0.0, "{p}");
    }
    assert_eq!(m.audit_write_failures(), 0.0, "{}", m.0);
    assert_eq!(rig.get("/readyz").await.0, 200);
    assert_eq!(rig.get("/healthz").await.0, 200);

    let elapsed = started.elapsed();
    clear(&rig.kube);
    let during = since(&rig.kube, before);
    let cleared_at = before + during.len();
    let errors_at_clear: BTreeMap<&String, f64> =
        names.iter().map(|p| (p, m.outcome(p, "error"))).collect();

    // Every request during the fault was the daemon's, on a Secret, and answered with the
    // fault (nothing reached a Deployment: no workload rolls before its Secret is written).
    assert!(
        during.iter().all(|r| r.resource == "secrets"),
        "{:?}",
        during.iter().find(|r| r.resource != "secrets")
    );
    let per_policy = bound_per_policy(elapsed, deliveries, per_delivery);
    let mut counts = Vec::new();
    for p in &names {
        let s = secret_name(p);
        let n = during
            .iter()
            .filter(|r| r.name.as_deref() == Some(&s))
            .count() as u64;
        // At least the two failed attempts reached the server; at most what the backoff
        // allows in the time the fault lasted.
        assert!(n >= 2, "{p}: {n} requests");
        assert!(
            n <= per_policy,
            "{p}: {n} requests in {elapsed:?}, the backoff allows {per_policy}"
        );
        counts.push(n);
    }
    let total = during.len() as u64;
    let bound = per_policy * POLICIES as u64;
    assert!(total <= bound, "{total} requests, bound {bound}");
    let codes: BTreeMap<u16, usize> = during.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.code).or_default() += 1;
        m
    });

    // After the fault: each policy converges on its next attempt. The attempt running when
    // the fault cleared may still fail; the one after it (30 s later, one backoff cap) must
    // not: so at most one more error per policy, and no failure count beyond it.
    eventually("every policy delivered after the fault", || async {
        let m = rig.metrics().await;
        names
            .iter()
            .all(|p| m.failures(p) == 0.0 && m.outcome(p, "rotated") == 1.0)
    })
    .await;
    let m = rig.metrics().await;
    for p in &names {
        let more = m.outcome(p, "error") - errors_at_clear[p];
        assert!(
            more <= 1.0,
            "{p}: {more} more failures after the fault cleared"
        );
        assert_eq!(m.policy("keyturn_backoff_seconds", p), 0.0, "{p}");
    }
    assert_eq!(rig.get("/readyz").await.0, 200);
    let to_converge = rig.kube.requests().len() - cleared_at;
    let metrics_text = m.0;

    let (status, log) = d.stop();
    assert!(status.success(), "{status:?}\n{}", tail(&log));
    let values = rig.assert_converged(&names).await;
    assert_audit_verifies(rig.dir.path(), &audit);
    // Each failed delivery is in the audit log with its outcome.
    let failed_events = audit_lines(&audit)
        .iter()
        .filter(|e| e["action"] == "rotate.distribute" && e["outcome"] == failed_outcome)
        .count();
    assert!(
        failed_events >= 2 * POLICIES,
        "{failed_events} failed deliveries audited as {failed_outcome}"
    );
    let value_refs: Vec<&str> = values.iter().map(String::as_str).collect();
    assert_absent("daemon log", log.as_bytes(), &value_refs);
    assert_absent("/metrics", metrics_text.as_bytes(), &value_refs);
    assert_absent("audit log", &std::fs::read(&audit).unwrap(), &value_refs);

    eprintln!(
        "fault-counts: {scenario}: {total} Kubernetes requests during {:.0} s of fault from {POLICIES} policies (bound {bound}: {per_policy} per policy = (1 + {} s / {} s) attempts x {deliveries} deliveries x {per_delivery} requests); per Secret {}..{}; answers {codes:?}; {failed_events} failed deliveries audited; {to_converge} requests to converge after the fault cleared",
        elapsed.as_secs_f64(),
        elapsed.as_secs(),
        RETRY.as_secs(),
        counts.iter().min().unwrap_or(&0),
        counts.iter().max().unwrap_or(&0),
    );
}

fn tail(s: &str) -> String {
    keyturn_tests::process::tail(s, 40)
}

/// The audit file's complete lines, parsed (an unterminated last line, left by a write
/// that failed part-way, is not an entry).
fn audit_lines(audit: &Path) -> Vec<Value> {
    let bytes = std::fs::read(audit).unwrap_or_default();
    let complete = match bytes.iter().rposition(|b| *b == b'\n') {
        Some(end) => &bytes[..=end],
        None => &[][..],
    };
    complete
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("an audit entry"))
        .collect()
}

#[tokio::test]
async fn kube_403_on_secrets_then_allowed_converges_under_backoff() {
    // A 403 is not retried within an attempt (it needs a person, not a retry): one
    // delivery per attempt, whose first request (the GET) is refused.
    kube_fault(
        "kube 403 on secrets",
        |k| k.deny("*", "secrets"),
        KubeStandin::allow_all,
        1,
        1,
        "denied",
    )
    .await;
}

#[tokio::test]
async fn kube_409_storm_on_every_secret_write_converges_under_backoff() {
    // Every write conflicts: the sink reads and patches again up to CONFLICT_WRITES times
    // (a GET and a PATCH each, tens of milliseconds to a second apart) before it reports the
    // conflict, which the engine retries within the attempt up to MAX_ATTEMPTS deliveries.
    kube_fault(
        "kube 409 storm on secret writes",
        |k| {
            for verb in ["create", "update", "patch"] {
                k.fail(verb, "secrets", 409);
            }
        },
        KubeStandin::clear_failures,
        MAX_ATTEMPTS,
        2 * CONFLICT_WRITES,
        "error",
    )
    .await;
}

#[tokio::test]
async fn kube_500_on_secrets_converges_under_backoff() {
    // A 500 is retryable: up to MAX_ATTEMPTS deliveries per attempt, each one GET (kube-rs's
    // retry layer retries only 429, 503 and 504; the sink retries only conflicts).
    kube_fault(
        "kube 500 on secrets",
        |k| k.fail("*", "secrets", 500),
        KubeStandin::clear_failures,
        MAX_ATTEMPTS,
        1,
        "error",
    )
    .await;
}

/// A tmpfs mounted on a directory for the life of the value.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// Writes a file until the filesystem is full; returns how many bytes fitted.
    fn fill(&self) -> u64 {
        let mut f = std::fs::File::create(self.dir.join("filler")).unwrap();
        let chunk = [0u8; 4096];
        let mut total = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        total
    }

    fn free(&self) {
        std::fs::remove_file(self.dir.join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Busy (a daemon that has not exited yet): detach it now, gone once unused.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Whether the audit entries in `lines` hold a durable intent (`started`) of `action` by
/// `policy`.
fn intent(lines: &[Value], policy: &str, action: &str) -> bool {
    let resource = format!("policy/{policy}");
    lines.iter().any(|e| {
        e["resource"] == resource.as_str() && e["action"] == action && e["outcome"] == "started"
    })
}

#[tokio::test]
async fn audit_disk_full_fails_closed_until_restarted_then_converges() {
    let rig = Rig::new().await;
    let names = policy_names();
    // Room for the first rotation of every policy (about 11 entries of ~600 bytes each), and
    // not much more.
    let fs = match Tmpfs::mount(&rig.dir.path().join("auditfs"), "256k") {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!(
                "SKIPPED audit_disk_full_fails_closed_until_restarted_then_converges: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {e}"
            );
            return;
        }
    };
    let audit = fs.dir.join("audit.jsonl");
    let d = rig.start_daemon(&audit, "daemon-1.log");
    eventually("every policy rotated and delivered", || async {
        let m = rig.metrics().await;
        names
            .iter()
            .all(|p| m.outcome(p, "rotated") == 1.0 && m.failures(p) == 0.0)
    })
    .await;

    // The disk fills up. Then four new policies arrive (a hot reload): each would rotate at
    // once, and the audit log cannot take their events.
    let filled = fs.fill();
    let fault_start = Instant::now();
    let size_at_fill = std::fs::metadata(&audit).unwrap().len();
    let before = rig.kube.requests().len();
    let added: Vec<String> = (0..4).map(|i| format!("n{i:02}")).collect();
    for p in &added {
        rig.add_policy(p);
    }
    eventually(
        "the audit log failed and the new policies stopped",
        || async {
            let m = rig.metrics().await;
            m.audit_write_failures() == 1.0
                && added
                    .iter()
                    .all(|p| m.failures(p) >= 1.0 || m.outcome(p, "rotated") == 1.0)
        },
    )
    .await;
    // The truth: the write failure is counted, both probes fail with the reason, the
    // policies that stopped are failing, and the log says why and what it takes.
    let (ready, why) = rig.get("/readyz").await;
    assert_eq!(ready, 503, "{why}");
    assert!(why.contains("audit log failed"), "{why}");
    assert_eq!(rig.get("/healthz").await.0, 503);
    let m = rig.metrics().await;
    let stopped: Vec<&String> = added.iter().filter(|p| m.failures(p) >= 1.0).collect();
    assert!(!stopped.is_empty(), "no rotation met the full disk");
    for p in &names {
        assert_eq!(m.failures(p), 0.0, "{p} was idle and is not failing");
    }
    eventually("the daemon log says the audit log failed", || async {
        d.log().contains("audit write failed")
            && d.log().contains("accepts no event until keyturn restarts")
    })
    .await;

    // Space comes back. The log stays failed (its file's end is unknown after the failed
    // write): the next retry of every stopped policy (30 s later) fails closed too, and
    // nothing more is written to the file.
    fs.free();
    let size_after_failure = std::fs::metadata(&audit).unwrap().len();
    eventually(
        "every stopped policy retried and failed closed again",
        || async {
            let m = rig.metrics().await;
            stopped.iter().all(|p| m.failures(p) >= 2.0)
        },
    )
    .await;
    assert_eq!(
        std::fs::metadata(&audit).unwrap().len(),
        size_after_failure,
        "nothing is written to a failed audit log"
    );
    assert_eq!(
        rig.get("/healthz").await.0,
        503,
        "still failed after the space came back"
    );
    assert_eq!(rig.metrics().await.audit_write_failures(), 1.0);

    // Fail closed: whatever a stopped rotation did has its intent durable in the file.
    let lines = audit_lines(&audit);
    let during = since(&rig.kube, before);
    for p in &added {
        let s = secret_name(p);
        let touched = during
            .iter()
            .filter(|r| r.name.as_deref() == Some(&s))
            .count();
        assert!(
            touched == 0 || intent(&lines, p, "rotate.distribute"),
            "{p}: {touched} Kubernetes requests without a durable distribute intent"
        );
        assert!(
            rig.current(p).await.is_none() || intent(&lines, p, "rotate.finish"),
            "{p}: promoted without a durable finish intent"
        );
        assert!(
            rig.state(p).await.get("rotation_id").is_none() || intent(&lines, p, "rotate.create"),
            "{p}: a pending value stored without a durable create intent"
        );
    }
    let fault_requests = during.len();
    // The failing "server" here is the disk: one failed batch, then not a byte more.
    // Each failed attempt costs a state read and a failure record in Vault and nothing else;
    // they come no more often than the backoff allows: the first at once, then one per 30 s.
    let elapsed = fault_start.elapsed();
    let allowed = (1 + elapsed.as_secs() / RETRY.as_secs()) as f64;
    let m = rig.metrics().await;
    for p in &stopped {
        assert!(
            m.failures(p) <= allowed,
            "{p}: {} attempts in {elapsed:?}, the backoff allows {allowed}",
            m.failures(p)
        );
    }
    let attempts_during: f64 = stopped.iter().map(|p| m.failures(p)).sum();

    // The kubelet restarts the container (its liveness probe fails). The new process reopens
    // the log (a line cut short by the full disk is dropped) and converges: the stopped
    // rotations resume once their recorded backoff (30 s at most) has passed.
    let (status, log1) = d.stop();
    assert!(status.success(), "{status:?}\n{}", tail(&log1));
    let d2 = rig.start_daemon(&audit, "daemon-2.log");
    let all: Vec<String> = names.iter().chain(&added).cloned().collect();
    eventually("everything delivered after the restart", || async {
        let m = rig.metrics().await;
        all.iter().all(|p| m.failures(p) == 0.0)
            && stopped.iter().all(|p| m.outcome(p, "rotated") == 1.0)
    })
    .await;
    let m = rig.metrics().await;
    assert_eq!(m.audit_write_failures(), 0.0);
    assert_eq!(rig.get("/readyz").await.0, 200);
    assert_eq!(rig.get("/healthz").await.0, 200);
    let (status, log2) = d2.stop();
    assert!(status.success(), "{status:?}\n{}", tail(&log2));
    let values = rig.assert_converged(&all).await;
    assert_audit_verifies(rig.dir.path(), &audit);
    let value_refs: Vec<&str> = values.iter().map(String::as_str).collect();
    for (what, text) in [("first daemon log", &log1), ("second daemon log", &log2)] {
        assert_absent(what, text.as_bytes(), &value_refs);
    }
    assert_absent("audit log", &std::fs::read(&audit).unwrap(), &value_refs);
    eprintln!(
        "fault-counts: audit disk full: {filled} bytes filled the tmpfs with the audit file at {size_at_fill} bytes; 1 failed audit write, then 0 bytes written ({} bytes before and after the space came back); {} of {} new policies stopped, {attempts_during} failed attempts between them in {:.0} s (at most {allowed} each); {fault_requests} Kubernetes requests while the log was failed",
        size_after_failure,
        stopped.len(),
        added.len(),
        elapsed.as_secs_f64(),
    );
}

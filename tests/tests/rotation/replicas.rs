//! `keyturn run` as three replicas sharing 300 policies through membership Leases on the
//! Kubernetes API stand-in, against a real OpenBao, for minutes of a one-minute schedule,
//! through what a Deployment's pods live through, one event after the other:
//!
//! 1. all three start, and every policy is rotated once;
//! 2. one replica is SIGKILLed in the middle of a rotation (after its claim, before the
//!    promote), and a replacement with a new name starts once the others have taken over;
//! 3. one replica is cut off from the API server (a TCP fault proxy in front of the
//!    stand-in refuses its connections), then healed;
//! 4. one replica is paused with SIGSTOP for twice its lease, then resumed;
//! 5. a rolling restart: each replica in turn gets SIGTERM and a successor joins.
//!
//! At the end every slot of every policy must have been rotated exactly once: the KV
//! versions are the completed rotations, no slot was doubled (two rotations less than an
//! interval apart) or lost (a gap longer than a disruption can explain), and no replica acted
//! while its fence was closed. Every audit chain verifies.
//!
//! The membership itself (live members, fence arithmetic) is tested in-process in
//! `tests/kube/membership.rs`; this is the whole daemon through real processes, signals and
//! sockets.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use keyturn_agent::daemon::membership::MEMBER_PREFIX;
use keyturn_tests::agent_env::{AgentEnv, Daemon};
use keyturn_tests::canary::assert_absent;
use keyturn_tests::fault::{FaultProxy, Mode};
use keyturn_tests::kube::TestCluster;
use keyturn_tests::openbao::OpenBao;
use keyturn_tests::process::{free_port, tail};

/// Policies shared by the replicas.
const POLICIES: usize = 300;
/// Their schedule (`every: 1m`, the shortest allowed).
const EVERY: Duration = Duration::from_secs(60);
/// Their `window`: each slot starts at a point of `[due, due + 20 s)`, so fires spread.
const WINDOW: Duration = Duration::from_secs(20);
/// `--membership-lease`; the fence closes a quarter of it before the Lease can expire.
const LEASE: Duration = Duration::from_secs(6);
/// The fence's margin: a quarter of the lease (`MembershipSettings::new`).
const MARGIN: Duration = Duration::from_millis(LEASE.as_millis() as u64 / 4);
/// The first retry of a policy that could not rotate (a claim still held by a replica that
/// is gone): 30 s plus up to half of that as jitter (`schedule::retry_delay`).
const FIRST_RETRY_MAX: Duration = Duration::from_secs(45);
/// What the bound below leaves for the rest: the membership's renewal and list period (a
/// third of the lease), the new owner's read of the policy's state, the concurrency limit's
/// queue and fsyncs of the audit log on a loaded two-core machine.
const SLACK: Duration = Duration::from_secs(10);
/// The longest a policy may go between two successful rotation starts without a slot having
/// been lost. The next slot is due one interval after the last start (`EVERY`) and starts
/// within the window after it (`WINDOW`). If its owner is lost right then (killed, cut off,
/// paused), the others take its policies once they have seen its Lease unchanged for one
/// lease (`LEASE`). If the policy was in flight when its owner was lost, the new owner finds
/// the claim still held and retries under the first backoff (`FIRST_RETRY_MAX`), by which
/// time the claim (one lease long) has run out and the retry resumes it. Anything longer
/// is a slot no replica served.
const MAX_GAP: Duration = Duration::from_secs(
    EVERY.as_secs()
        + WINDOW.as_secs()
        + LEASE.as_secs()
        + FIRST_RETRY_MAX.as_secs()
        + SLACK.as_secs(),
);
/// Two rotations of one policy that start closer than this served one slot twice. A slot is
/// due one interval after the last start; the audit time of a rotation's `create` intent is
/// sealed a moment after the start the schedule counts from (an fsync, maybe behind other
/// rotations' ones), so a second of that interval is left for the difference.
const MIN_SPACING: Duration = Duration::from_secs(59);
/// How long a synchronisation point may take before the test gives up: a hang, not a speed.
const DEADLINE: Duration = Duration::from_secs(120);
/// How long the cut-off replica stays cut off, and the paused one paused: both longer than a
/// lease, so the others take their policies meanwhile.
const CUT_OFF: Duration = Duration::from_secs(15);
const PAUSE: Duration = Duration::from_secs(12);

fn policy_name(i: usize) -> String {
    format!("p{i:03}")
}

/// `policies/NAME.yaml`: a generated value at `keyturn/NAME`, every minute in a 20 s window.
fn write_policy(policies: &Path, name: &str) {
    std::fs::write(
        policies.join(format!("{name}.yaml")),
        format!(
            "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: {name} }}\nspec:\n  every: {}s\n  window: {}s\n  store: {{ vault-kv: {{ path: keyturn/{name} }} }}\n  target: {{ generated: {{}} }}\n",
            EVERY.as_secs(),
            WINDOW.as_secs()
        ),
    )
    .unwrap();
}

/// One audit event, as far as this test reads it.
#[derive(Debug, Clone)]
struct Event {
    time: DateTime<Utc>,
    action: String,
    outcome: String,
    policy: String,
    rotation: String,
    value_hmac: Option<String>,
    /// Why a rotation started (on `rotate.create`), what a step did.
    detail: String,
}

impl Event {
    fn parse(line: &str) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let s = |k: &str| v[k].as_str().map(str::to_owned);
        Some(Self {
            time: DateTime::parse_from_rfc3339(v["time"].as_str()?)
                .ok()?
                .with_timezone(&Utc),
            action: s("action")?,
            outcome: s("outcome")?,
            policy: s("resource")?.strip_prefix("policy/")?.to_owned(),
            rotation: s("rotation_id")?,
            value_hmac: s("value_hmac"),
            detail: s("detail").unwrap_or_default(),
        })
    }

    fn is(&self, action: &str, outcome: &str) -> bool {
        self.action == action && self.outcome == outcome
    }
}

/// One replica's audit file, read as it grows (only the new bytes each time).
#[derive(Debug)]
struct AuditFile {
    path: PathBuf,
    offset: u64,
    partial: String,
    events: Vec<Event>,
}

impl AuditFile {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            partial: String::new(),
            events: Vec::new(),
        }
    }

    /// Reads what was appended since the last call; a line still being written waits.
    fn refresh(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        let mut new = String::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_string(&mut new).is_err() {
            return;
        }
        self.offset += new.len() as u64;
        self.partial.push_str(&new);
        let Some(end) = self.partial.rfind('\n') else {
            return;
        };
        let complete: String = self.partial.drain(..=end).collect();
        self.events
            .extend(complete.lines().filter_map(Event::parse));
    }

    /// Rotations this replica has claimed and not yet promoted, last heard of within 5 s
    /// before `now` and not stopped by an error: one it is in the middle of, which a kill
    /// leaves in flight with its PENDING value durable and CURRENT untouched.
    fn claimed_not_promoted(&self, now: DateTime<Utc>) -> BTreeSet<String> {
        let mut by_rotation: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
        for e in &self.events {
            by_rotation.entry(&e.rotation).or_default().push(e);
        }
        by_rotation
            .into_iter()
            .filter(|(_, evs)| {
                let claimed = evs
                    .iter()
                    .any(|e| e.is("rotate.create", "ok") || e.is("rotate.resume", "ok"));
                let promoting = evs.iter().any(|e| {
                    matches!(
                        e.action.as_str(),
                        "rotate.finish" | "rotate.done" | "rotate.distribute"
                    )
                });
                let last = evs[evs.len() - 1];
                claimed
                    && !promoting
                    && !matches!(last.outcome.as_str(), "error" | "denied")
                    && now - last.time < chrono::Duration::seconds(5)
            })
            .map(|(r, _)| r.to_owned())
            .collect()
    }

    /// Rotations whose last event is not `rotate.done`, last heard of within 10 s before
    /// `now`: work this replica may be doing.
    fn busy(&self, now: DateTime<Utc>) -> BTreeSet<String> {
        let mut last: BTreeMap<&str, &Event> = BTreeMap::new();
        for e in &self.events {
            last.insert(&e.rotation, e);
        }
        last.into_iter()
            .filter(|(_, e)| {
                e.action != "rotate.done" && now - e.time < chrono::Duration::seconds(10)
            })
            .map(|(r, _)| r.to_owned())
            .collect()
    }
}

/// One `keyturn run` process.
#[derive(Debug)]
struct Replica {
    holder: String,
    daemon: Daemon,
    /// Its /metrics address.
    listen: String,
}

impl Replica {
    /// The JSON log lines whose `msg` is `msg`.
    fn logged(&self, msg: &str) -> Vec<serde_json::Value> {
        self.daemon
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["msg"] == msg)
            .collect()
    }

    /// Whether it logged that it joined and took its share.
    fn joined(&self) -> bool {
        !self.logged("policies owned by this replica").is_empty()
    }

    async fn metrics(&self) -> Option<String> {
        let r = reqwest::get(format!("http://{}/metrics", self.listen))
            .await
            .ok()?;
        r.text().await.ok()
    }

    /// The unlabelled sample `name`.
    async fn metric(&self, name: &str) -> Option<f64> {
        sample(&self.metrics().await?, name)
    }
}

fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The whole scenario's state: the servers, every replica ever started, their audit files.
struct Scenario {
    e: AgentEnv,
    live: Vec<Replica>,
    /// Audit files by holder, of every replica ever started (the gone ones' stay).
    audits: Mutex<BTreeMap<String, AuditFile>>,
    /// Logs of replicas that are gone, for failure messages.
    gone_logs: Vec<(String, String)>,
}

impl Scenario {
    fn cluster(&self) -> &TestCluster {
        self.e.cluster.as_ref().unwrap()
    }

    fn audit_path(&self, holder: &str) -> PathBuf {
        self.e.home.path().join(format!("{holder}-audit.jsonl"))
    }

    /// Starts `keyturn run` as `holder`, its own audit file and log, `/metrics` on a port of
    /// its own, and `kubeconfig` instead of the cluster's when given.
    fn start(&mut self, holder: &str, kubeconfig: Option<&Path>) {
        let listen = format!("127.0.0.1:{}", free_port());
        let ns = self.cluster().namespace().to_owned();
        let lease = format!("{}s", LEASE.as_secs());
        let args = [
            "run",
            "--grace",
            "10s",
            "--membership-namespace",
            &ns,
            "--membership-lease",
            &lease,
            "--listen",
            &listen,
        ];
        let mut cmd = self.e.cmd(&args, holder);
        cmd.env("KEYTURN_AUDIT_FILE", self.audit_path(holder));
        if let Some(k) = kubeconfig {
            cmd.env("KUBECONFIG", k);
        }
        let daemon = Daemon::spawn(cmd, self.e.home.path().join(format!("{holder}.log")));
        self.audits
            .lock()
            .unwrap()
            .insert(holder.to_owned(), AuditFile::new(self.audit_path(holder)));
        self.live.push(Replica {
            holder: holder.to_owned(),
            daemon,
            listen,
        });
    }

    fn replica(&self, holder: &str) -> &Replica {
        self.live.iter().find(|r| r.holder == holder).unwrap()
    }

    fn take(&mut self, holder: &str) -> Replica {
        let i = self.live.iter().position(|r| r.holder == holder).unwrap();
        self.live.remove(i)
    }

    /// Every audit event so far, with its holder.
    fn events(&self) -> Vec<(String, Event)> {
        let mut audits = self.audits.lock().unwrap();
        audits
            .iter_mut()
            .flat_map(|(h, f)| {
                f.refresh();
                f.events
                    .iter()
                    .map(|e| (h.clone(), e.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn with_audit<T>(&self, holder: &str, f: impl FnOnce(&AuditFile) -> T) -> T {
        let mut audits = self.audits.lock().unwrap();
        let a = audits.get_mut(holder).unwrap();
        a.refresh();
        f(a)
    }

    /// Policies with a completed rotation that started (its `create` intent) at or after
    /// `since`.
    fn rotated_since(&self, since: DateTime<Utc>) -> BTreeSet<String> {
        let events = self.events();
        let started: BTreeMap<&str, DateTime<Utc>> = events
            .iter()
            .filter(|(_, e)| e.is("rotate.create", "started"))
            .map(|(_, e)| (e.rotation.as_str(), e.time))
            .collect();
        events
            .iter()
            .filter(|(_, e)| e.is("rotate.done", "ok"))
            .filter(|(_, e)| {
                started
                    .get(e.rotation.as_str())
                    .is_some_and(|t| *t >= since)
            })
            .map(|(_, e)| e.policy.clone())
            .collect()
    }

    /// The tail of every replica's log, for a failure message.
    fn logs(&self) -> String {
        let mut out = String::new();
        for (h, log) in &self.gone_logs {
            out.push_str(&format!("--- {h} (gone) ---\n{}\n", tail(log, 25)));
        }
        for r in &self.live {
            out.push_str(&format!(
                "--- {} ---\n{}\n",
                r.holder,
                tail(&r.daemon.log(), 25)
            ));
        }
        out
    }

    /// Waits until `cond` holds, failing with `what` and the replicas' logs after
    /// [`DEADLINE`]: a synchronisation point, not a measure of speed.
    async fn until<F, Fut>(&self, what: &str, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let end = Instant::now() + DEADLINE;
        while !cond().await {
            assert!(Instant::now() < end, "never: {what}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether every live replica sees `n` members and they own every policy between them
    /// (each policy once: rendezvous hashing over the same members).
    async fn settled(&self, n: usize) -> bool {
        let mut owned = 0.0;
        for r in &self.live {
            let Some(m) = r.metrics().await else {
                return false;
            };
            if sample(&m, "keyturn_daemon_members") != Some(n as f64)
                || sample(&m, "keyturn_daemon_fence_open") != Some(1.0)
            {
                return false;
            }
            owned += sample(&m, "keyturn_daemon_policies_owned").unwrap_or(0.0);
        }
        self.live.len() == n && owned == POLICIES as f64
    }

    /// The `renewTime` of `holder`'s member Lease, as the API server holds it.
    async fn renewed(&self, holder: &str) -> Option<DateTime<Utc>> {
        let c = self.cluster();
        let leases: kube::Api<Lease> = kube::Api::namespaced(c.client(), c.namespace());
        let l = leases
            .get_opt(&format!("{MEMBER_PREFIX}{holder}"))
            .await
            .ok()??;
        let t = l.spec?.renew_time?;
        DateTime::from_timestamp_micros(t.0.as_microsecond())
    }

    /// The first `renewTime` of `holder`'s Lease later than `after`, looked for every 20 ms
    /// (a renewal comes every third of the lease), so it is the first renewal after `after`.
    async fn renewal_after(&self, holder: &str, after: DateTime<Utc>) -> DateTime<Utc> {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(t) = self.renewed(holder).await.filter(|t| *t > after) {
                return t;
            }
            assert!(
                Instant::now() < end,
                "{holder} never renewed after {after}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops `holder` with SIGTERM, as a rolling update does: it must exit 0 after releasing
    /// its Lease, and the Lease must be gone.
    async fn stop(&mut self, holder: &str) {
        let r = self.take(holder);
        let (status, log) = r.daemon.stop_async().await;
        self.gone_logs.push((holder.to_owned(), log.clone()));
        assert!(
            status.success(),
            "{holder} exited {status:?}\n{}",
            tail(&log, 40)
        );
        assert!(
            log.contains("membership Lease released"),
            "{holder} did not release its Lease:\n{}",
            tail(&log, 40)
        );
        assert_eq!(
            self.renewed(holder).await,
            None,
            "{holder}'s Lease is still there"
        );
    }
}

/// A kubeconfig for the stand-in whose server is `proxy` (same CA and token: the stand-in's
/// certificate names the loopback address, whatever the port).
fn proxied_kubeconfig(c: &TestCluster, proxy: &FaultProxy, path: &Path) {
    let original = std::fs::read_to_string(c.kubeconfig_path()).unwrap();
    let host = c.kubernetes_host();
    assert!(original.contains(&host), "{host} not in the kubeconfig");
    let proxied = original.replace(&host, &format!("https://{}", proxy.addr()));
    std::fs::write(path, proxied).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// `holder`'s intents (or, with `all`, any of its events) sealed in `(from, to)`: side
/// effects it started while its fence was closed.
fn acted_between(
    events: &[(String, Event)],
    holder: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    all: bool,
) -> Vec<String> {
    events
        .iter()
        .filter(|(h, e)| h == holder && e.time > from && e.time < to)
        .filter(|(_, e)| all || e.outcome == "started")
        .map(|(_, e)| {
            format!(
                "{} {} {} {} {}",
                e.time, e.policy, e.action, e.outcome, e.rotation
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_rotate_every_slot_once_through_a_kill_a_partition_a_pause_and_a_rolling_restart()
 {
    let cluster = TestCluster::start_standin().await.unwrap();
    let standin_addr = cluster.standin().unwrap().addr();
    let e = AgentEnv::new(OpenBao::start().await.unwrap(), Some(cluster), 7).await;
    let names: Vec<String> = (0..POLICIES).map(policy_name).collect();
    for n in &names {
        write_policy(&e.policies(), n);
    }
    // replica-b reaches the API server through a proxy that can cut it off (TCP level: the
    // stand-in speaks TLS, which passes through untouched).
    let proxy = FaultProxy::tcp(standin_addr).await.unwrap();
    let b_kubeconfig = e.home.path().join("kubeconfig-b");
    proxied_kubeconfig(e.cluster.as_ref().unwrap(), &proxy, &b_kubeconfig);
    let mut s = Scenario {
        e,
        live: Vec::new(),
        audits: Mutex::new(BTreeMap::new()),
        gone_logs: Vec::new(),
    };
    let began = Utc::now();
    eprintln!(
        "replicas: logs and audit files in {}",
        s.e.home.path().display()
    );

    // 1. All three start; every policy is rotated once.
    s.start("replica-a", None);
    s.start("replica-b", Some(&b_kubeconfig));
    s.start("replica-c", None);
    s.until("every policy rotated once", || async {
        s.rotated_since(began).len() == POLICIES
    })
    .await;
    s.until("three members sharing every policy", || s.settled(3))
        .await;

    progress(began, "2 (kill)");
    // 2. replica-c is killed in the middle of a rotation: claimed, PENDING durable, not yet
    // promoted. Seen in its audit log, then frozen (SIGSTOP) and looked at again, so the kill
    // lands where the frozen log says it is; if the rotation moved on meanwhile, the replica
    // goes on (SIGCONT) until the next one.
    let killed: BTreeSet<String> = {
        let c = s.replica("replica-c");
        let end = Instant::now() + DEADLINE;
        loop {
            assert!(
                Instant::now() < end,
                "replica-c never seen mid-rotation\n{}",
                s.logs()
            );
            if s.with_audit("replica-c", |a| {
                a.claimed_not_promoted(Utc::now()).is_empty()
            }) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            c.daemon.signal("STOP");
            // The signal takes effect at the threads' next kernel entry: let it.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let open = s.with_audit("replica-c", |a| a.claimed_not_promoted(Utc::now()));
            if open.is_empty() {
                c.daemon.signal("CONT");
                continue;
            }
            c.daemon.signal("KILL");
            break open;
        }
    };
    let killed_at = Utc::now();
    let mut c = s.take("replica-c");
    let status = c.daemon.exited().await;
    assert_eq!(status.signal(), Some(9), "{status:?}");
    s.gone_logs.push(("replica-c".into(), c.daemon.log()));
    // The others see its Lease expire and take its policies; the rotation it left is resumed
    // (same rotation, same PENDING value) once its claim has run out (checked at the end).
    for h in ["replica-a", "replica-b"] {
        s.until(&format!("{h} rebalanced without replica-c"), || async {
            s.replica(h)
                .logged("daemon replicas changed; policies rebalanced")
                .iter()
                .any(|v| v["members"] == 2 && log_time(v) > killed_at)
        })
        .await;
    }
    progress(began, "2: replica-c killed; the others took over");
    s.start("replica-d", None);
    s.until("replica-d joined", || async {
        s.replica("replica-d").joined()
    })
    .await;
    s.until("three members again", || s.settled(3)).await;

    progress(began, "3 (partition)");
    // 3. replica-b is cut off from the API server: it cannot renew, its fence closes before
    // the others consider its Lease expired, and they take its policies. Then it is healed.
    let b_failures = s
        .replica("replica-b")
        .metric("keyturn_daemon_membership_failures_total")
        .await;
    let b_fenced = s
        .replica("replica-b")
        .metric("keyturn_daemon_fenced_total")
        .await;
    proxy.set(Mode::Refuse);
    let cut_at = Instant::now();
    s.until("replica-b fenced", || async {
        s.replica("replica-b")
            .metric("keyturn_daemon_fence_open")
            .await
            == Some(0.0)
    })
    .await;
    for h in ["replica-a", "replica-d"] {
        s.until(&format!("{h} rebalanced without replica-b"), || async {
            s.replica(h).metric("keyturn_daemon_members").await == Some(2.0)
        })
        .await;
    }
    // Its last renewal, as the API server holds it: its fence closed at most a lease minus
    // the margin after that (the renewal's send time, which follows its renewTime).
    let b_last = s.renewed("replica-b").await.unwrap();
    // The partition lasts a while longer, so that slots of replica-b's policies fall in it.
    tokio::time::sleep(CUT_OFF.saturating_sub(cut_at.elapsed())).await;
    proxy.set(Mode::Pass);
    let b_back = s.renewal_after("replica-b", b_last).await;
    s.until("three members after the partition", || s.settled(3))
        .await;
    let b = s.replica("replica-b");
    assert!(
        !b.logged("daemon membership works again").is_empty(),
        "{}",
        tail(&b.daemon.log(), 40)
    );
    let failures = b.metric("keyturn_daemon_membership_failures_total").await;
    let b_fenced = b
        .metric("keyturn_daemon_fenced_total")
        .await
        .unwrap_or_default()
        - b_fenced.unwrap_or_default();
    assert!(
        failures > b_failures,
        "membership failures not counted: {b_failures:?} then {failures:?}"
    );
    // Nothing started between the fence's close (with half a second for an intent whose
    // check came just before it) and the first renewal after the partition.
    let closed =
        b_last + chrono::Duration::from_std(LEASE - MARGIN + Duration::from_millis(500)).unwrap();
    let acted = acted_between(&s.events(), "replica-b", closed, b_back, false);
    assert!(
        acted.is_empty(),
        "replica-b started side effects while cut off (fence closed after {closed}, renewed at {b_back}):\n{}",
        acted.join("\n")
    );

    progress(began, "4 (pause)");
    // 4. replica-a is paused (SIGSTOP) for twice its lease while idle and with a slot falling
    // due in the pause, then resumed: its fence is closed when it wakes (the monotonic clock
    // ran on), so the slot that fell due is deferred, not run, until it has renewed.
    let fenced_before = s
        .replica("replica-a")
        .metric("keyturn_daemon_fenced_total")
        .await;
    let (stopped_at, resumed_at) = {
        let a = s.replica("replica-a");
        let end = Instant::now() + DEADLINE;
        loop {
            assert!(
                Instant::now() < end,
                "replica-a never idle before a slot\n{}",
                s.logs()
            );
            let now = Utc::now().timestamp_millis() as f64 / 1000.0;
            let next = a
                .metrics()
                .await
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("keyturn_next_rotation_timestamp_seconds{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .filter(|t| *t > now + 1.0)
                .fold(f64::INFINITY, f64::min);
            if next > now + (PAUSE - LEASE).as_secs_f64() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            a.daemon.signal("STOP");
            let stopped_at = Utc::now();
            tokio::time::sleep(Duration::from_millis(20)).await;
            if !s.with_audit("replica-a", |f| f.busy(stopped_at).is_empty()) {
                a.daemon.signal("CONT");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            tokio::time::sleep(PAUSE).await;
            let resumed_at = Utc::now();
            a.daemon.signal("CONT");
            break (stopped_at, resumed_at);
        }
    };
    let a_back = s.renewal_after("replica-a", resumed_at).await;
    s.until("three members after the pause", || s.settled(3))
        .await;
    let a = s.replica("replica-a");
    let fenced_after = a.metric("keyturn_daemon_fenced_total").await;
    // Two orders are legal on waking: the event loop takes the due slot first and meets the
    // closed fence (counted, or logged), or the renewal (its own task, already in flight)
    // completes first and the slot then starts behind it, as a machine under load does.
    // Either shows what the pause did; a slot started before the renewal is the failure
    // the check after this one catches.
    let fenced = fenced_after > fenced_before
        || !a
            .logged(
                "rotation paused: this replica may not act until its membership Lease is renewed",
            )
            .is_empty();
    // A slot that starts behind the renewal either starts a rotation or finds that one of the
    // replicas that covered the pause holds it.
    let started_after_renewal = !acted_between(&s.events(), "replica-a", a_back, Utc::now(), false)
        .is_empty()
        || a.logged("another process is rotating this policy")
            .iter()
            .any(|v| log_time(v) > a_back);
    assert!(
        fenced || started_after_renewal,
        "replica-a resumed with a slot due and its fence closed, yet nothing was fenced and nothing started after its renewal ({fenced_before:?} then {fenced_after:?})\n{}",
        tail(&a.daemon.log(), 40)
    );
    // It was idle when stopped, so every event it sealed after resuming followed a fence
    // check made after resuming: none may precede the renewal that reopened the fence.
    let acted = acted_between(
        &s.events(),
        "replica-a",
        stopped_at + chrono::Duration::seconds(1),
        a_back,
        true,
    );
    assert!(
        acted.is_empty(),
        "replica-a acted after SIGCONT ({resumed_at}) before renewing ({a_back}):\n{}",
        acted.join("\n")
    );
    for h in ["replica-b", "replica-d"] {
        assert!(
            s.replica(h)
                .logged("daemon replicas changed; policies rebalanced")
                .iter()
                .any(|v| v["members"] == 2 && log_time(v) > stopped_at),
            "{h} never dropped the paused replica\n{}",
            tail(&s.replica(h).daemon.log(), 40)
        );
    }

    progress(began, "5 (rolling restart)");
    // 5. A rolling restart: each replica gets SIGTERM (finishes its rotations, releases its
    // Lease), then its successor starts under a new name and joins before the next goes.
    for (old, new) in [
        ("replica-a", "replica-e"),
        ("replica-b", "replica-f"),
        ("replica-d", "replica-g"),
    ] {
        s.stop(old).await;
        s.start(new, None);
        s.until(&format!("{new} joined"), || async {
            s.replica(new).joined()
        })
        .await;
        s.until(&format!("three members with {new}"), || s.settled(3))
            .await;
    }

    progress(began, "settling");
    // The schedule runs on until every policy has started a rotation since the restart (or
    // the bound for a lost slot has passed: the check below then names the policies).
    let restarted = Utc::now();
    let end = Instant::now() + MAX_GAP;
    while s.rotated_since(restarted).len() < POLICIES && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ended = Utc::now();
    for r in &s.live {
        r.daemon.signal("TERM");
    }
    for r in std::mem::take(&mut s.live) {
        let mut d = r.daemon;
        let status = d.exited().await;
        let log = d.log();
        assert!(
            status.success(),
            "{} exited {status:?}\n{}",
            r.holder,
            tail(&log, 40)
        );
        s.gone_logs.push((r.holder.clone(), log));
    }

    // Every slot of every policy rotated exactly once.
    let events = s.events();
    let mut starts: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
    for (_, e) in events
        .iter()
        .filter(|(_, e)| e.is("rotate.create", "started"))
    {
        starts.entry(&e.rotation).or_insert(e.time);
    }
    let mut done: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (_, e) in events.iter().filter(|(_, e)| e.is("rotate.done", "ok")) {
        done.entry(&e.policy).or_default().insert(&e.rotation);
    }
    let mut problems = Vec::new();
    let mut max_gap = chrono::Duration::zero();
    let mut counted = 0;
    let mut values = BTreeSet::new();
    let min_spacing = chrono::Duration::from_std(MIN_SPACING).unwrap();
    let max_allowed = chrono::Duration::from_std(MAX_GAP).unwrap();
    for n in &names {
        let rotations = done.get(n.as_str()).cloned().unwrap_or_default();
        counted += rotations.len();
        let (value, version) = s.e.value_at(n, None).await.unwrap_or_default();
        if version != rotations.len() as u64 {
            problems.push(format!(
                "{n}: {version} KV versions, {} completed rotations",
                rotations.len()
            ));
        }
        if value.is_empty() {
            problems.push(format!("{n}: no value"));
        }
        values.insert(value);
        let mut times = Vec::new();
        for r in &rotations {
            match starts.get(r) {
                Some(t) => times.push(*t),
                None => problems.push(format!("{n}: rotation {r} done but never created")),
            }
        }
        times.sort();
        for w in times.windows(2) {
            let gap = w[1] - w[0];
            if gap < min_spacing {
                problems.push(format!(
                    "{n}: doubled slot, rotations started {} and {}",
                    w[0], w[1]
                ));
            }
        }
        times.push(ended);
        for w in times.windows(2) {
            let gap = w[1] - w[0];
            max_gap = max_gap.max(gap);
            if gap > max_allowed {
                problems.push(format!(
                    "{n}: lost slot, nothing started between {} and {}",
                    w[0], w[1]
                ));
            }
        }
    }
    let detail = |problems: &[String]| {
        let mut out = problems
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        // The audit trail of the first policies concerned, and what each replica logged of
        // them.
        let concerned: BTreeSet<&str> = problems
            .iter()
            .filter_map(|p| p.split(':').next())
            .collect();
        for p in concerned.into_iter().take(3) {
            out.push_str(&format!("\naudit events of {p}:\n"));
            for (h, e) in events.iter().filter(|(_, e)| e.policy == p) {
                out.push_str(&format!(
                    "  {} {h} {} {} {} {}\n",
                    e.time, e.action, e.outcome, e.rotation, e.detail
                ));
            }
            out.push_str(&format!("log lines about {p}:\n"));
            let about = format!("\"policy\":\"{p}\"");
            for (h, log) in &s.gone_logs {
                for l in log.lines().filter(|l| l.contains(&about)) {
                    out.push_str(&format!("  {h}: {l}\n"));
                }
            }
        }
        out
    };
    assert_eq!(values.len(), POLICIES, "latest values are not all distinct");
    for holder in s.audits.lock().unwrap().keys() {
        let report = keyturn_core::audit::verify(&[s.audit_path(holder)]);
        assert!(report.is_ok(), "{holder}'s audit chain: {report:?}");
    }
    // The rotation the kill cut off was resumed by another replica, as the same rotation:
    // its PENDING value, made durable by replica-c, is the one promoted.
    for r in &killed {
        let of = |action: &str, outcome: &str| {
            events
                .iter()
                .filter(|(_, e)| e.rotation == *r && e.is(action, outcome))
                .map(|(h, e)| (h.clone(), e.clone()))
                .collect::<Vec<_>>()
        };
        let created = of("rotate.create", "started");
        let resumed = of("rotate.resume", "ok");
        let done = of("rotate.done", "ok");
        assert_eq!(created.len(), 1, "{r}: {created:?}");
        assert!(
            resumed.iter().any(|(h, _)| h != "replica-c"),
            "{r}, cut off by the kill, was not resumed by another replica: {resumed:?}"
        );
        assert_eq!(done.len(), 1, "{r}: {done:?}");
        assert!(
            created[0].1.value_hmac.is_some() && created[0].1.value_hmac == done[0].1.value_hmac,
            "{r}: the value promoted is not the PENDING value the killed replica made durable"
        );
    }
    // The values never reach a log (a sample: each check scans every log).
    let logs: String = s.gone_logs.iter().map(|(_, l)| l.as_str()).collect();
    let sample_values: Vec<&str> = values.iter().take(10).map(String::as_str).collect();
    assert_absent("daemon logs", logs.as_bytes(), &sample_values);
    eprintln!(
        "replicas: {counted} rotations of {POLICIES} policies over {}s, max gap between starts {:.1}s (bound {}s); killed mid-rotation: {}; slots deferred by a closed fence: {b_fenced} while cut off, {} after the pause",
        (ended - began).num_seconds(),
        max_gap.num_milliseconds() as f64 / 1000.0,
        MAX_GAP.as_secs(),
        killed.len(),
        fenced_after.unwrap_or_default() - fenced_before.unwrap_or_default()
    );
    // Last, so that a failing run still reports the checks above and the summary.
    assert!(
        problems.is_empty(),
        "{} problems (killed at {killed_at}, partition healed at {b_back}, paused {stopped_at}..{resumed_at}, rolling restart done at {restarted}):\n{}\n{}",
        problems.len(),
        detail(&problems),
        s.logs()
    );
}

/// A line in the captured output saying where the scenario is, for a failure's timeline.
fn progress(began: DateTime<Utc>, phase: &str) {
    eprintln!(
        "replicas: phase {phase} at {}s",
        (Utc::now() - began).num_seconds()
    );
}

/// A JSON log line's `time`.
fn log_time(v: &serde_json::Value) -> DateTime<Utc> {
    v["time"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or(DateTime::<Utc>::UNIX_EPOCH, |t| t.with_timezone(&Utc))
}

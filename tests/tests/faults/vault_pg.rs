//! Vault and PostgreSQL faults, and kills at random points.
//!
//! Each test builds a [`Rig`]: OpenBao with file storage (so a restart keeps its data) behind
//! an HTTP fault proxy that `VAULT_ADDR` points at, PostgreSQL behind a TCP fault proxy that
//! the policies' `host`/`port` point at, moto for AWS Secrets Manager when it is installed,
//! and `keyturn run --retry-max 30s` with 20 policies rotating `every: 1m`: generated values
//! in Vault KV, generated values in AWS Secrets Manager, PostgreSQL single users and
//! alternating pairs. A one-minute schedule puts a slot of every policy inside each fault,
//! and a 30 s cap makes every retry come exactly 30 s after a failure (the floor and the cap
//! coincide), so convergence fits a test.
//!
//! Each scenario counts at the proxy what the failing server received while it failed and
//! holds it against what the backoff allows ([`vault_bound`], [`pg_bound`]); checks that the
//! metrics and `/readyz` tell the truth during the fault; waits, with `eventually` (never a
//! clock), until every policy has rotated again and none is failing; then stops the daemon
//! and checks that no credential was lost, that the keyed audit chain verifies, and that no
//! value reached the daemon's log. The counts are printed on `fault-counts:` lines.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use keyturn_core::SecretValue;
use keyturn_core::audit::{HmacKey, VerifyOptions, verify_with};
use keyturn_core::vault::SecretData;
use keyturn_tests::agent_env;
use keyturn_tests::canary::assert_absent;
use keyturn_tests::fault::{Counts, FaultProxy, Mode};
use keyturn_tests::moto::Moto;
use keyturn_tests::openbao::OpenBao;
use keyturn_tests::postgres::Postgres;
use keyturn_tests::process::{eventually, free_port};
use serde_json::{Value, json};

/// Where the PostgreSQL admin credential lives (inside the agent policy's `keyturn/`).
const ADMIN_PATH: &str = "keyturn/pg-admin";
const ADMIN_ROLE: &str = "keyturn_admin";
/// `max-attempts` of the PostgreSQL policies: how often one attempt tries `set` and `test`.
const PG_MAX_ATTEMPTS: u64 = 3;

#[derive(Debug, Clone)]
enum Kind {
    /// A generated value in Vault KV.
    VaultGenerated,
    /// A generated value in AWS Secrets Manager (moto), at this secret id.
    Aws(String),
    /// A PostgreSQL user whose password is rotated in place.
    PgSingle(String),
    /// Two PostgreSQL users taking turns.
    PgAlternating([String; 2]),
}

#[derive(Debug, Clone)]
struct Pol {
    name: String,
    kind: Kind,
}

impl Pol {
    fn uses_vault(&self) -> bool {
        !matches!(self.kind, Kind::Aws(_))
    }
    fn uses_pg(&self) -> bool {
        matches!(self.kind, Kind::PgSingle(_) | Kind::PgAlternating(_))
    }
}

struct Rig {
    bao: OpenBao,
    pg: Postgres,
    moto: Option<Moto>,
    vault_proxy: FaultProxy,
    pg_proxy: FaultProxy,
    token: String,
    home: tempfile::TempDir,
    listen: String,
    policies: Vec<Pol>,
    daemon: Option<Child>,
    /// Daemon processes started so far (each one logs in and scans every policy).
    starts: u64,
}

fn cred(user: &str, password: &str) -> SecretData {
    let mut d = SecretData::new();
    d.insert("username", SecretValue::from_str_copy(user));
    d.insert("password", SecretValue::from_str_copy(password));
    d
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Rig {
    async fn new() -> Self {
        let want_moto = keyturn_tests::tools::moto_server().is_ok();
        let (bao, pg, moto) = tokio::join!(OpenBao::start_persistent(), Postgres::start(), async {
            if want_moto {
                Some(Moto::start().await.unwrap())
            } else {
                None
            }
        });
        let (bao, pg) = (bao.unwrap(), pg.unwrap());
        if moto.is_none() {
            eprintln!("moto_server is not installed: AWS policies are replaced by Vault ones");
        }
        let vault_proxy = FaultProxy::http(loopback(bao.port())).await.unwrap();
        let pg_proxy = FaultProxy::tcp(loopback(pg.port())).await.unwrap();
        let token = agent_env::agent_token(&bao).await;
        let home = agent_env::home(11);

        // PostgreSQL: a least-privilege admin (CREATEROLE, not superuser) whose password is
        // kept in Vault, and the users the policies rotate.
        let su = pg.admin().await.unwrap();
        let admin_password = format!("adm-{}", uuid::Uuid::new_v4().simple());
        su.batch_execute(&format!(
            "CREATE ROLE {ADMIN_ROLE} LOGIN CREATEROLE PASSWORD '{admin_password}'"
        ))
        .await
        .unwrap();
        let root = bao.root_client().unwrap();
        root.kv2_write(
            "secret",
            ADMIN_PATH,
            &cred(ADMIN_ROLE, &admin_password),
            None,
        )
        .await
        .unwrap();

        let mut policies = Vec::new();
        let vault_generated = if moto.is_some() { 12 } else { 14 };
        for i in 1..=vault_generated {
            policies.push(Pol {
                name: format!("gen-{i:02}"),
                kind: Kind::VaultGenerated,
            });
        }
        if let Some(m) = &moto {
            for i in 1..=2 {
                let id = format!("faults/aws-{i:02}");
                // An operator creates the secret; keyturn rotates it from there.
                m.secretsmanager(
                    "CreateSecret",
                    json!({ "Name": id, "SecretString": json!({ "value": "seed" }).to_string() }),
                )
                .await
                .unwrap();
                policies.push(Pol {
                    name: format!("aws-{i:02}"),
                    kind: Kind::Aws(id),
                });
            }
        }
        for i in 1..=4 {
            let user = format!("single_{i}");
            su.batch_execute(&format!("CREATE ROLE {user} LOGIN"))
                .await
                .unwrap();
            policies.push(Pol {
                name: format!("pg-single-{i:02}"),
                kind: Kind::PgSingle(user),
            });
        }
        for i in 1..=2 {
            let users = [format!("alt{i}_a"), format!("alt{i}_b")];
            for u in &users {
                su.batch_execute(&format!("CREATE ROLE {u} LOGIN"))
                    .await
                    .unwrap();
            }
            policies.push(Pol {
                name: format!("pg-alt-{i:02}"),
                kind: Kind::PgAlternating(users),
            });
        }
        assert_eq!(policies.len(), 20);

        let rig = Self {
            bao,
            pg,
            moto,
            vault_proxy,
            pg_proxy,
            token,
            home,
            listen: format!("127.0.0.1:{}", free_port()),
            policies,
            daemon: None,
            starts: 0,
        };
        for p in &rig.policies {
            rig.write_policy(p);
        }
        rig
    }

    fn write_policy(&self, p: &Pol) {
        let store = match &p.kind {
            Kind::Aws(id) => format!("{{ aws-secretsmanager: {{ secret-id: {id} }} }}"),
            _ => format!("{{ vault-kv: {{ path: keyturn/{} }} }}", p.name),
        };
        let target = match &p.kind {
            Kind::VaultGenerated | Kind::Aws(_) => "  target: { generated: {} }\n".to_owned(),
            Kind::PgSingle(u) => self.pg_target(&[u.as_str()], "single"),
            Kind::PgAlternating([a, b]) => self.pg_target(&[a.as_str(), b.as_str()], "alternating"),
        };
        std::fs::write(
            self.home
                .path()
                .join("policies")
                .join(format!("{}.yaml", p.name)),
            format!(
                "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: {} }}\nspec:\n  every: 1m\n  store: {store}\n{target}",
                p.name
            ),
        )
        .unwrap();
    }

    fn pg_target(&self, users: &[&str], strategy: &str) -> String {
        format!(
            "  target:\n    postgres:\n      host: 127.0.0.1\n      port: {}\n      database: postgres\n      admin: {{ vault-kv: {{ path: {ADMIN_PATH} }} }}\n      users: [{}]\n      strategy: {strategy}\n  max-attempts: {PG_MAX_ATTEMPTS}\n",
            self.pg_proxy.port(),
            users.join(", ")
        )
    }

    fn audit(&self) -> PathBuf {
        self.home.path().join("audit.jsonl")
    }

    fn log_path(&self) -> PathBuf {
        self.home.path().join("daemon.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn start_daemon(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let args = [
            "run",
            "--grace",
            "10s",
            "--listen",
            &self.listen,
            "--retry-max",
            "30s",
        ];
        let mut c = agent_env::keyturn(
            &args,
            self.home.path(),
            &self.vault_proxy.url(),
            &self.token,
        );
        c.env("KEYTURN_HOLDER", "agent-1")
            .env("KEYTURN_AUDIT_FILE", self.audit())
            .env(
                "KEYTURN_AUDIT_HMAC_KEY_FILE",
                self.home.path().join("hmac.key"),
            )
            .env("KEYTURN_LOG", "info");
        if let Some(m) = &self.moto {
            c.envs(m.aws_env());
        }
        // Through `setpriv --pdeathsig KILL`, like the harness's servers: a test that dies
        // (a timeout, a panic that aborts) takes its daemon with it.
        let mut c2 = Command::new("setpriv");
        c2.args(["--pdeathsig", "KILL", "--"])
            .arg(c.get_program())
            .args(c.get_args())
            .env_clear();
        for (k, v) in c.get_envs() {
            if let Some(v) = v {
                c2.env(k, v);
            }
        }
        let child = c2
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        self.starts += 1;
    }

    /// SIGKILL: no grace, no shutdown anchoring, whatever was in flight is cut off.
    fn kill_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: rotations in flight get the grace period.
    fn stop_daemon(&mut self) -> ExitStatus {
        let mut c = self.daemon.take().expect("a running daemon");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        c.wait().unwrap()
    }

    /// Starts the daemon again if it exited on its own, as a kubelet would (a daemon started
    /// while Vault is unreachable gives up logging in after its retries and exits 69).
    fn supervise(&mut self) {
        let exited = self
            .daemon
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some());
        if exited {
            let status = self.daemon.take().unwrap().wait().unwrap();
            eprintln!("the daemon exited on its own ({status}); starting it again");
            self.start_daemon();
        }
    }

    /// Lets `secs` pass while supervising the daemon; at `kill_at` seconds (if given), kills
    /// it with SIGKILL and starts it again at once.
    async fn run_for(&mut self, secs: f64, kill_at: Option<f64>) {
        let start = Instant::now();
        let mut kill_at = kill_at;
        while start.elapsed().as_secs_f64() < secs {
            self.supervise();
            if kill_at.is_some_and(|k| start.elapsed().as_secs_f64() >= k) {
                kill_at = None;
                eprintln!(
                    "killing the daemon (SIGKILL) {:.1} s into the phase",
                    start.elapsed().as_secs_f64()
                );
                self.kill_daemon();
                self.start_daemon();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = reqwest::get(format!("http://{}{path}", self.listen))
            .await
            .ok()?;
        let code = r.status().as_u16();
        Some((code, r.text().await.ok()?))
    }

    async fn metrics(&self) -> Option<String> {
        self.get("/metrics").await.map(|(_, t)| t)
    }

    fn vault_policies(&self) -> usize {
        self.policies.iter().filter(|p| p.uses_vault()).count()
    }

    fn pg_policies(&self) -> usize {
        self.policies.iter().filter(|p| p.uses_pg()).count()
    }

    /// Waits until the daemon has rotated every policy once more than `since` says and none
    /// is failing. `since` is `None` for a daemon that has not rotated anything yet.
    async fn wait_converged(&mut self, what: &str, since: Option<&BTreeMap<String, f64>>) {
        let names: Vec<String> = self.policies.iter().map(|p| p.name.clone()).collect();
        let mut polls = 0u64;
        loop {
            self.supervise();
            if let Some(m) = self.metrics().await {
                let rotated = rotated_counts(&m, &names);
                let behind: Vec<&String> = names
                    .iter()
                    .filter(|n| {
                        let before = since.and_then(|s| s.get(*n)).copied().unwrap_or(0.0);
                        rotated.get(*n).copied().unwrap_or(0.0) <= before
                            || sample(
                                &m,
                                &format!("keyturn_consecutive_failures{{policy=\"{n}\"}}"),
                            ) != Some(0.0)
                    })
                    .collect();
                if behind.is_empty() {
                    return;
                }
                polls += 1;
                if polls.is_multiple_of(100) {
                    eprintln!("{what}: still waiting for {behind:?}");
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sleeps until `lead` before the next slot of any of `policies` (from
    /// `keyturn_next_rotation_timestamp_seconds`), so a fault begun next meets a wave of
    /// rotations rather than a quiet minute. A synchronisation point, not an assertion.
    async fn until_next_wave(&self, policies: &[&Pol], lead: Duration) {
        let m = self.metrics().await.expect("metrics");
        let next = policies
            .iter()
            .filter_map(|p| {
                sample(
                    &m,
                    &format!(
                        "keyturn_next_rotation_timestamp_seconds{{policy=\"{}\"}}",
                        p.name
                    ),
                )
            })
            .fold(f64::INFINITY, f64::min);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let wait = (next - now - lead.as_secs_f64()).clamp(0.0, 120.0);
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }

    fn audit_events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.audit())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// How many times the audit log records the intent of `action` for one of `policies`.
    fn intents(&self, action: &str, policies: &[&Pol]) -> usize {
        self.audit_events()
            .iter()
            .filter(|e| {
                e["action"] == action
                    && e["outcome"] == "started"
                    && policies
                        .iter()
                        .any(|p| e["resource"] == format!("policy/{}", p.name))
            })
            .count()
    }

    /// Checks every policy's credential after the daemon has stopped, and returns every
    /// CURRENT and PREVIOUS value seen (for the leak check).
    async fn check_no_credential_lost(&self) -> Vec<String> {
        let key = HmacKey::load(&self.home.path().join("hmac.key")).unwrap();
        let events = self.audit_events();
        let root = self.bao.root_client().unwrap();
        let mut seen = Vec::new();
        for p in &self.policies {
            let (current, previous): (SecretData, Option<SecretData>) = match &p.kind {
                Kind::Aws(id) => {
                    let m = self.moto.as_ref().unwrap();
                    let get = |stage: &'static str| {
                        m.secretsmanager(
                            "GetSecretValue",
                            json!({ "SecretId": id, "VersionStage": stage }),
                        )
                    };
                    let fields = |v: Value| {
                        let obj: BTreeMap<String, String> =
                            serde_json::from_str(v["SecretString"].as_str().unwrap()).unwrap();
                        let mut d = SecretData::new();
                        for (k, v) in obj {
                            d.insert(&k, SecretValue::from_str_copy(&v));
                        }
                        d
                    };
                    let cur = fields(get("AWSCURRENT").await.unwrap());
                    let prev = get("AWSPREVIOUS").await.ok().map(fields);
                    (cur, prev)
                }
                _ => {
                    let path = format!("keyturn/{}", p.name);
                    let cur = root.kv2_read("secret", &path, None).await.unwrap();
                    let prev = if cur.version > 1 {
                        Some(
                            root.kv2_read("secret", &path, Some(cur.version - 1))
                                .await
                                .unwrap()
                                .data,
                        )
                    } else {
                        None
                    };
                    // No rotation is left half-done: the state holds no PENDING value.
                    let state = self
                        .bao
                        .api(
                            "GET",
                            &format!("secret/data/keyturn-state/keyturn/{}", p.name),
                            None,
                        )
                        .await
                        .unwrap();
                    assert!(
                        state["data"]["data"].get("rotation_id").is_none(),
                        "{}: a rotation is still in flight after a clean stop",
                        p.name
                    );
                    (cur.data, prev)
                }
            };
            let text = |d: &SecretData, k: &str| d.get(k).unwrap().expose_str().unwrap().to_owned();
            let main = if current.get("password").is_some() {
                "password"
            } else {
                "value"
            };
            let value = text(&current, main);
            assert!(
                value.len() >= 16,
                "{}: CURRENT is not a rotated value",
                p.name
            );
            // What the store says is CURRENT is what the daemon last promoted: the HMAC of the
            // last successful rotation's value in the audit log matches it.
            let promoted = events
                .iter()
                .rev()
                .find(|e| {
                    e["resource"] == format!("policy/{}", p.name)
                        && e["action"] == "rotate.done"
                        && e["outcome"] == "ok"
                })
                .unwrap_or_else(|| panic!("{}: no completed rotation in the audit log", p.name));
            assert_eq!(
                promoted["value_hmac"].as_str(),
                Some(key.hmac_hex(&SecretValue::from_str_copy(&value)).as_str()),
                "{}: the store's CURRENT is not the value the daemon promoted",
                p.name
            );
            seen.push(value.clone());
            match &p.kind {
                Kind::VaultGenerated | Kind::Aws(_) => {
                    if let Some(prev) = &previous {
                        assert_ne!(text(prev, main), value, "{}: PREVIOUS is CURRENT", p.name);
                    }
                }
                Kind::PgSingle(user) => {
                    assert_eq!(&text(&current, "username"), user, "{}", p.name);
                    // Straight to PostgreSQL, not through the proxy.
                    self.pg
                        .connect_as(user, &value)
                        .await
                        .unwrap_or_else(|e| panic!("{}: CURRENT does not log in: {e}", p.name));
                }
                Kind::PgAlternating(users) => {
                    let user = text(&current, "username");
                    assert!(users.contains(&user), "{}: {user}", p.name);
                    self.pg
                        .connect_as(&user, &value)
                        .await
                        .unwrap_or_else(|e| panic!("{}: CURRENT does not log in: {e}", p.name));
                    // The README's promise for alternating users: PREVIOUS, the other user,
                    // keeps working until the next rotation, so apps that have not reloaded
                    // yet are not locked out.
                    let prev = previous
                        .as_ref()
                        .expect("alternating policies rotated twice");
                    let prev_user = text(prev, "username");
                    assert_ne!(prev_user, user, "{}: both versions name one user", p.name);
                    let prev_password = text(prev, "password");
                    self.pg
                        .connect_as(&prev_user, &prev_password)
                        .await
                        .unwrap_or_else(|e| {
                            panic!("{}: the standby (PREVIOUS) does not log in: {e}", p.name)
                        });
                    seen.push(prev_password);
                }
            }
        }
        seen
    }

    fn verify_audit(&self) {
        let key = HmacKey::load(&self.home.path().join("hmac.key")).unwrap();
        let report = verify_with(
            &[self.audit()],
            &VerifyOptions {
                key: Some(key.chain_key()),
                ..VerifyOptions::default()
            },
        );
        assert!(report.is_ok(), "audit chain: {report:?}");
    }

    /// The end of every scenario: a clean stop, then nothing lost, the chain intact, no value
    /// in the log.
    async fn finish(mut self, scenario: &str) {
        let stopped = self.metrics().await.map_or(0.0, |m| stopped_attempts(&m));
        eprintln!(
            "fault-counts: {scenario}: totals: vault proxy {:?}; postgres proxy {:?}; {stopped} rotation attempts stopped or failed under the last daemon; {} daemon starts",
            self.vault_proxy.all_counts(),
            self.pg_proxy.all_counts(),
            self.starts
        );
        let status = self.stop_daemon();
        assert!(status.success(), "{status}\n{}", tail(&self.log()));
        let values = self.check_no_credential_lost().await;
        self.verify_audit();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        assert_absent("daemon log", self.log().as_bytes(), &refs);
        assert!(
            !self.log().contains("panicked"),
            "the daemon panicked:\n{}",
            tail(&self.log())
        );
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.kill_daemon();
    }
}

fn tail(s: &str) -> String {
    keyturn_tests::process::tail(s, 60)
}

/// The value of one series (`name{labels}`) in a Prometheus text exposition.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn rotated_counts(metrics: &str, names: &[String]) -> BTreeMap<String, f64> {
    names
        .iter()
        .filter_map(|n| {
            let v = sample(
                metrics,
                &format!("keyturn_rotations_total{{policy=\"{n}\",outcome=\"rotated\"}}"),
            )?;
            Some((n.clone(), v))
        })
        .collect()
}

/// The sum of `keyturn_store_requests_total` for Vault KV with outcome `error`.
fn vault_store_errors(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("keyturn_store_requests_total{")
                && l.contains("store=\"vault-kv\"")
                && l.contains("outcome=\"error\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Rotation attempts that did not complete (`failed` or `error`), over every policy.
fn stopped_attempts(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("keyturn_rotations_total{")
                && (l.contains("outcome=\"failed\"") || l.contains("outcome=\"error\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn failing(metrics: &str, names: &[&Pol]) -> usize {
    names
        .iter()
        .filter(|p| {
            sample(
                metrics,
                &format!("keyturn_consecutive_failures{{policy=\"{}\"}}", p.name),
            )
            .is_some_and(|v| v > 0.0)
        })
        .count()
}

/// How many requests Vault can receive from the daemon in a fault lasting `secs` seconds,
/// during which `starts` daemon processes started, when every request fails (refused, reset
/// or answered 5xx/sealed):
///
/// - Each Vault call is tried at most 13 times by the client (`core/src/vault/retry.rs`: the
///   first try and 12 retries): `TRIES`.
/// - While every call fails, a rotation attempt ends at its first failed store call. Before
///   that it makes at most 2 (the view: CURRENT and state, in parallel); a PostgreSQL
///   target's failed admin read is a target error, after which the engine saves the attempt
///   count (1 write) and that failure ends it; an attempt the fault caught mid-way has one
///   more (the step's write). After a failed attempt the daemon records the failure (a view
///   of 2 reads and 1 write). So at most 6 calls per attempt: `CALLS_PER_ATTEMPT`.
/// - A policy's attempts start at least 30 s apart within one daemon run: a failure is
///   retried no sooner than 30 s later (`RETRY_MIN`, here also the cap) and a success waits
///   for the next slot a minute on. So at most `1 + secs/30` attempts per policy, plus one
///   per daemon start (its start-up scan reads every policy's state and may resume at once).
/// - Each daemon start logs in once (token lookup), and each run reads the break-glass
///   journal at start and every 15 s: `starts + 1 + secs/15` calls.
///
/// A storm (a failed slot retried at once, as before the backoff) makes hundreds of
/// attempts a second and overshoots this by orders of magnitude.
fn vault_bound(policies: usize, secs: f64, starts: u64) -> u64 {
    const TRIES: u64 = 13;
    const CALLS_PER_ATTEMPT: u64 = 6;
    let attempts_per_policy = 1 + (secs / 30.0).ceil() as u64 + starts;
    let housekeeping = starts + 1 + (secs / 15.0).ceil() as u64 + starts;
    TRIES * (policies as u64 * attempts_per_policy * CALLS_PER_ATTEMPT + housekeeping)
}

/// How many connections PostgreSQL can receive from the daemon in a fault lasting `secs`
/// seconds with `starts` daemon starts: attempts per policy as in [`vault_bound`]; within an
/// attempt, `set` and `test` are each tried up to `max-attempts` times, a try opening at
/// most two connections (an admin connection when the pooled one is gone, and the user's
/// login for `test`), and a given-up rotation opens one more to put the password back.
fn pg_bound(policies: usize, secs: f64, starts: u64) -> u64 {
    let attempts_per_policy = 1 + (secs / 30.0).ceil() as u64 + starts;
    let per_attempt = 2 * PG_MAX_ATTEMPTS * 2 + 1;
    policies as u64 * attempts_per_policy * per_attempt
}

fn delta(after: Counts, before: Counts) -> Counts {
    Counts {
        connections: after.connections - before.connections,
        requests: after.requests - before.requests,
    }
}

/// Starts the rig and its daemon and waits until every policy has rotated once.
async fn running_rig() -> Rig {
    let mut rig = Rig::new().await;
    rig.start_daemon();
    rig.wait_converged("first rotations", None).await;
    rig
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_down_for_a_minute_costs_what_the_backoff_allows_and_everything_converges() {
    let mut rig = running_rig().await;
    let vault_pols: Vec<Pol> = rig
        .policies
        .iter()
        .filter(|p| p.uses_vault())
        .cloned()
        .collect();
    let vault_refs: Vec<&Pol> = vault_pols.iter().collect();
    let aws: Vec<String> = rig
        .policies
        .iter()
        .filter(|p| !p.uses_vault())
        .map(|p| p.name.clone())
        .collect();
    let before = rig.metrics().await.unwrap();
    let errors_before = vault_store_errors(&before);
    let aws_before = rotated_counts(&before, &aws);

    // Begin just before the next wave of slots, so the minute of downtime meets rotations.
    rig.until_next_wave(&vault_refs, Duration::from_secs(5))
        .await;
    let fault = Instant::now();
    rig.vault_proxy.set(Mode::Refuse);
    // During the fault the metrics say so: policies failing, the store's error count rising.
    eventually("failures show in the metrics", || async {
        rig.metrics()
            .await
            .is_some_and(|m| failing(&m, &vault_refs) > 0 && vault_store_errors(&m) > errors_before)
    })
    .await;
    // Readiness means "policies loaded and their state scanned", not "Vault reachable": a
    // daemon that cannot reach Vault is still the one that should retry, and restarting it
    // (what an unready pod invites) would only add a login and a scan to Vault's load.
    assert_eq!(rig.get("/readyz").await.unwrap().0, 200);
    assert_eq!(rig.get("/healthz").await.unwrap().0, 200);
    // Policies whose store is not Vault keep rotating meanwhile.
    eventually("AWS policies rotate during the Vault outage", || async {
        rig.metrics().await.is_some_and(|m| {
            let now = rotated_counts(&m, &aws);
            aws.iter().all(|n| now.get(n) > aws_before.get(n))
        })
    })
    .await;
    // The fault lasts a minute (how long it lasts is the scenario, not an assertion).
    let left = Duration::from_secs(60).saturating_sub(fault.elapsed());
    tokio::time::sleep(left).await;
    let m = rig.metrics().await.unwrap();
    let failing_now = failing(&m, &vault_refs);
    assert!(failing_now > 0, "{m}");
    rig.vault_proxy.set(Mode::Pass);
    let secs = fault.elapsed().as_secs_f64();
    let got = rig.vault_proxy.counts(Mode::Refuse);
    let bound = vault_bound(rig.vault_policies(), secs, 0);
    eprintln!(
        "fault-counts: vault-down-60s: {} connections refused in {secs:.0} s from {} policies ({} using Vault), {failing_now} failing at the end; bound {bound}",
        got.connections,
        rig.policies.len(),
        rig.vault_policies()
    );
    assert!(got.connections > 0, "the fault was not exercised");
    assert!(
        got.connections <= bound,
        "{} connections to a down Vault, more than the backoff allows ({bound})",
        got.connections
    );

    let since = rotated_counts(&rig.metrics().await.unwrap(), &names(&rig));
    rig.wait_converged("convergence after Vault came back", Some(&since))
        .await;
    rig.finish("vault-down-60s").await;
}

fn names(rig: &Rig) -> Vec<String> {
    rig.policies.iter().map(|p| p.name.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_5xx_storm_is_met_with_backoff_not_with_a_storm_of_requests() {
    let mut rig = running_rig().await;
    let vault_pols: Vec<Pol> = rig
        .policies
        .iter()
        .filter(|p| p.uses_vault())
        .cloned()
        .collect();
    let vault_refs: Vec<&Pol> = vault_pols.iter().collect();
    let errors_before = vault_store_errors(&rig.metrics().await.unwrap());

    rig.until_next_wave(&vault_refs, Duration::from_secs(5))
        .await;
    let fault = Instant::now();
    rig.vault_proxy.set(Mode::Status(500));
    tokio::time::sleep(Duration::from_secs(25)).await;
    rig.vault_proxy.set(Mode::Status(503));
    // A call is retried for about 40 s before its attempt counts as failed.
    eventually("failures show in the metrics", || async {
        rig.metrics()
            .await
            .is_some_and(|m| failing(&m, &vault_refs) > 0 && vault_store_errors(&m) > errors_before)
    })
    .await;
    // Unready would not help: see the Vault-down scenario.
    assert_eq!(rig.get("/readyz").await.unwrap().0, 200);
    tokio::time::sleep(Duration::from_secs(50).saturating_sub(fault.elapsed())).await;
    rig.vault_proxy.set(Mode::Pass);
    let secs = fault.elapsed().as_secs_f64();
    let (r500, r503) = (
        rig.vault_proxy.counts(Mode::Status(500)).requests,
        rig.vault_proxy.counts(Mode::Status(503)).requests,
    );
    let bound = vault_bound(rig.vault_policies(), secs, 0);
    eprintln!(
        "fault-counts: vault-5xx-storm: {r500} requests answered 500 then {r503} answered 503 in {secs:.0} s from {} policies ({} using Vault); bound {bound}",
        rig.policies.len(),
        rig.vault_policies()
    );
    assert!(r500 > 0 && r503 > 0, "the fault was not exercised");
    assert!(
        r500 + r503 <= bound,
        "{} requests to a failing Vault, more than the backoff allows ({bound})",
        r500 + r503
    );
    let since = rotated_counts(&rig.metrics().await.unwrap(), &names(&rig));
    rig.wait_converged("convergence after the storm", Some(&since))
        .await;
    rig.finish("vault-5xx-storm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_restarted_mid_rotation_loses_no_credential_and_everything_converges() {
    let mut rig = running_rig().await;
    let vault_pols: Vec<Pol> = rig
        .policies
        .iter()
        .filter(|p| p.uses_vault())
        .cloned()
        .collect();
    let vault_refs: Vec<&Pol> = vault_pols.iter().collect();
    // Slow Vault down so that rotations spend seconds between their steps, then restart it
    // as soon as one has begun: it is caught between its PENDING write and its promote.
    let slow = Mode::Delay(Duration::from_millis(300));
    rig.until_next_wave(&vault_refs, Duration::from_secs(1))
        .await;
    let started = rig.intents("rotate.create", &vault_refs);
    rig.vault_proxy.set(slow);
    eventually("a rotation has begun", || async {
        rig.intents("rotate.create", &vault_refs) > started
    })
    .await;
    let before = rig.vault_proxy.total();
    let fault = Instant::now();
    // Stopped, started on the same port with the same data, sealed until the API unseals it:
    // keyturn sees refused connections, then 503 "Vault is sealed".
    rig.bao.restart().await.unwrap();
    rig.vault_proxy.set(Mode::Pass);
    let secs = fault.elapsed().as_secs_f64();
    // Every request during the restart either rode a connection (a request) or was refused
    // with the connection: the sum over-counts, which is the safe side of a bound.
    let got = delta(rig.vault_proxy.total(), before);
    let bound = vault_bound(rig.vault_policies(), secs, 0);
    eprintln!(
        "fault-counts: vault-restart: {} connections and {} requests during a {secs:.1} s restart from {} policies ({} using Vault); bound {bound}",
        got.connections,
        got.requests,
        rig.policies.len(),
        rig.vault_policies()
    );
    assert!(got.connections > 0, "the restart met no request");
    assert!(
        got.connections + got.requests <= bound,
        "more than the backoff allows ({bound})"
    );
    assert_eq!(rig.get("/readyz").await.unwrap().0, 200);
    let since = rotated_counts(&rig.metrics().await.unwrap(), &names(&rig));
    rig.wait_converged("convergence after the Vault restart", Some(&since))
        .await;
    rig.finish("vault-restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_rotation_loses_no_credential_and_everything_converges() {
    let mut rig = running_rig().await;
    let pg_pols: Vec<Pol> = rig
        .policies
        .iter()
        .filter(|p| p.uses_pg())
        .cloned()
        .collect();
    let pg_refs: Vec<&Pol> = pg_pols.iter().collect();
    // As for Vault: slow PostgreSQL so a rotation is caught between `set` and `test`. Two
    // seconds a chunk: between seeing the `set` intent in the audit log and stopping the
    // server the test itself takes a few hundred milliseconds on a loaded machine, and a
    // `set` over a pooled admin connection must not finish in that gap.
    let slow = Mode::Delay(Duration::from_secs(2));
    rig.until_next_wave(&pg_refs, Duration::from_secs(1)).await;
    let started = rig.intents("rotate.set", &pg_refs);
    rig.pg_proxy.set(slow);
    eventually("a PostgreSQL rotation has begun", || async {
        rig.intents("rotate.set", &pg_refs) > started
    })
    .await;
    let before = rig.pg_proxy.total();
    let fault = Instant::now();
    rig.pg.restart().await.unwrap();
    rig.pg_proxy.set(Mode::Pass);
    let secs = fault.elapsed().as_secs_f64();
    let got = delta(rig.pg_proxy.total(), before);
    let bound = pg_bound(rig.pg_policies(), secs, 0);
    eprintln!(
        "fault-counts: postgres-restart: {} connections during a {secs:.1} s restart from {} PostgreSQL policies; bound {bound}",
        got.connections,
        rig.pg_policies()
    );
    assert!(
        got.connections <= bound,
        "more than the backoff allows ({bound})"
    );
    // The restart did cut a rotation: a `set` or `test` that was running failed (and was
    // tried again inside the attempt, or the attempt was retried under backoff). The error
    // is audited once the daemon sees the cut connection, which the slowed proxy may pass on
    // after the restart is over: waited for, up to a bound.
    let cut_steps = || {
        rig.audit_events()
            .iter()
            .filter(|e| {
                matches!(e["action"].as_str(), Some("rotate.set" | "rotate.test"))
                    && e["outcome"] == "error"
                    && pg_refs
                        .iter()
                        .any(|p| e["resource"] == format!("policy/{}", p.name))
            })
            .count()
    };
    let waited = Instant::now();
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        eventually("a set or test cut by the restart, audited", || async {
            cut_steps() > 0
        }),
    )
    .await;
    let cut = cut_steps();
    eprintln!(
        "fault-counts: postgres-restart: {cut} set/test steps cut by the restart (audited {:.1} s after it)",
        waited.elapsed().as_secs_f64()
    );
    assert!(cut > 0, "the restart did not meet a rotation");
    assert_eq!(rig.get("/readyz").await.unwrap().0, 200);
    let since = rotated_counts(&rig.metrics().await.unwrap(), &names(&rig));
    rig.wait_converged("convergence after the PostgreSQL restart", Some(&since))
        .await;
    rig.finish("postgres-restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_killed_at_random_points_through_every_fault_converges_and_loses_nothing() {
    let mut rig = running_rig().await;
    let mut kills = Vec::new();
    let mut kill_in = |phase: f64| {
        let at = rand::random_range(0.0..phase);
        kills.push(at);
        Some(at)
    };

    // Vault down, with a kill somewhere in it: the new daemon's login and scan meet the
    // refused Vault too (and if its login gives up, it is started again).
    // No wait for a wave here: each kill's new daemon logs in and scans every policy, so
    // the faults meet traffic anyway.
    let starts = rig.starts;
    let fault = Instant::now();
    rig.vault_proxy.set(Mode::Refuse);
    rig.run_for(20.0, kill_in(20.0)).await;
    // Then a 503 storm, with another kill.
    rig.vault_proxy.set(Mode::Status(503));
    rig.run_for(15.0, kill_in(15.0)).await;
    rig.vault_proxy.set(Mode::Pass);
    let secs = fault.elapsed().as_secs_f64();
    let during = rig.starts - starts;
    let refused = rig.vault_proxy.counts(Mode::Refuse).connections;
    let r503 = rig.vault_proxy.counts(Mode::Status(503)).requests;
    let bound = vault_bound(rig.vault_policies(), secs, during);
    eprintln!(
        "fault-counts: kills-during-vault-faults: {refused} connections refused and {r503} requests answered 503 in {secs:.0} s, {during} daemon starts; bound {bound}"
    );
    assert!(
        refused + r503 <= bound,
        "{} requests to a failing Vault, more than the backoff allows ({bound})",
        refused + r503
    );

    // Vault restarted with a rotation slowed down in flight, and a kill right after.
    rig.vault_proxy.set(Mode::Delay(Duration::from_millis(200)));
    rig.run_for(rand::random_range(1.0..4.0), None).await;
    rig.bao.restart().await.unwrap();
    rig.vault_proxy.set(Mode::Pass);
    rig.run_for(3.0, kill_in(3.0)).await;
    // PostgreSQL restarted likewise.
    rig.pg_proxy.set(Mode::Delay(Duration::from_millis(200)));
    rig.run_for(rand::random_range(1.0..4.0), None).await;
    rig.pg.restart().await.unwrap();
    rig.pg_proxy.set(Mode::Pass);
    rig.run_for(3.0, kill_in(3.0)).await;
    eprintln!(
        "fault-counts: kills: at {kills:.1?} s into their phases, {} daemon starts in all",
        rig.starts
    );

    // The last daemon started from zero: every policy must rotate under it, and stop failing.
    rig.wait_converged("convergence after the kills", None)
        .await;
    rig.finish("kills").await;
}

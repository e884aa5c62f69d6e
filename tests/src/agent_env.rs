//! What the tests that run the `keyturn` binary against a real OpenBao share: a token holding
//! only the repository's agent policy, a home directory with a policy directory and an audit
//! HMAC key, and the `keyturn` command with a cleared environment; [`AgentEnv`], which holds
//! them for a test (with reads of what keyturn wrote and its leak checks), and [`Daemon`], a
//! `keyturn run` process.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use k8s_openapi::api::core::v1::Secret;

use crate::canary::assert_absent;
use crate::kube::TestCluster;
use crate::openbao::OpenBao;

/// The agent's own Vault policy, relative to the repository root.
pub const AGENT_POLICY: &str = "policies/vault/keyturn-agent.hcl";

/// Writes the repository's Vault policy `file` (relative to the repository root) into `bao`
/// as `name`.
///
/// # Panics
/// When the file cannot be read or OpenBao refuses it.
pub async fn put_repo_policy(bao: &OpenBao, name: &str, file: &str) {
    let hcl = std::fs::read_to_string(crate::tools::repo_root().join(file)).unwrap();
    bao.put_policy(name, &hcl).await.unwrap();
}

/// A token holding only [`AGENT_POLICY`] (as `keyturn-agent`) and Vault's `default`.
///
/// # Panics
/// When OpenBao refuses.
pub async fn agent_token(bao: &OpenBao) -> String {
    put_repo_policy(bao, "keyturn-agent", AGENT_POLICY).await;
    bao.create_token(&["keyturn-agent"]).await.unwrap()
}

/// A fresh home directory for `keyturn`: an empty `policies/` and a 32-byte `hmac.key` of
/// `key_byte`s.
///
/// # Panics
/// When the temp directory cannot be written.
pub fn home(key_byte: u8) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("hmac.key"), [key_byte; 32]).unwrap();
    dir
}

/// `keyturn ARGS` with a cleared environment but for `PATH`, `HOME` (`home`), `VAULT_ADDR`,
/// `VAULT_TOKEN` and `KEYTURN_POLICIES` (`home/policies`). Callers add the rest (audit,
/// holder, log level).
pub fn keyturn(args: &[&str], home: &Path, vault_addr: &str, token: &str) -> Command {
    let mut c = Command::new(crate::bins::keyturn());
    c.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("VAULT_ADDR", vault_addr)
        .env("VAULT_TOKEN", token)
        .env("KEYTURN_POLICIES", home.join("policies"));
    c
}

/// Writes `policies/NAME.yaml`: a rotation policy every 24h of a generated value stored at
/// `keyturn/NAME`, with `extra` (YAML under `spec:`) appended.
///
/// # Panics
/// When the file cannot be written.
pub fn write_generated_policy(policies: &Path, name: &str, extra: &str) {
    std::fs::write(
        policies.join(format!("{name}.yaml")),
        format!(
            "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: {name} }}\nspec:\n  every: 24h\n  store: {{ vault-kv: {{ path: keyturn/{name} }} }}\n  target: {{ generated: {{}} }}\n{extra}"
        ),
    )
    .unwrap();
}

/// The shared set-up of the tests that run `keyturn` as a process: an OpenBao, a token with
/// only [`AGENT_POLICY`], a keyturn [`home`], and optionally a Kubernetes cluster whose
/// kubeconfig every command gets. Each test file wraps it in its own `Env` with its server
/// (PostgreSQL, MariaDB, Redis) beside it.
#[derive(Debug)]
pub struct AgentEnv {
    /// The real OpenBao; its root client is the test's view of the store.
    pub bao: OpenBao,
    /// A token holding only [`AGENT_POLICY`]: keyturn runs with what the repository grants it.
    pub token: String,
    /// Where policies that distribute deliver; `KUBECONFIG` names it when there is one.
    pub cluster: Option<TestCluster>,
    /// keyturn's home: `policies/`, `hmac.key` and the audit file `audit.jsonl`.
    pub home: tempfile::TempDir,
    /// `KEYTURN_LOG` of every command (`info` unless [`AgentEnv::log_level`] says otherwise).
    log: &'static str,
}

impl AgentEnv {
    /// Over a started `bao` (and `cluster`): puts the agent policy, mints its token and makes
    /// a [`home`] whose HMAC key is 32 `key_byte`s.
    ///
    /// # Panics
    /// When OpenBao refuses or the temp directory cannot be written.
    pub async fn new(bao: OpenBao, cluster: Option<TestCluster>, key_byte: u8) -> Self {
        let token = agent_token(&bao).await;
        Self {
            bao,
            token,
            cluster,
            home: home(key_byte),
            log: "info",
        }
    }

    /// [`AgentEnv::new`] over a fresh OpenBao, without a cluster.
    ///
    /// # Panics
    /// When OpenBao does not start.
    pub async fn start(key_byte: u8) -> Self {
        Self::new(OpenBao::start().await.unwrap(), None, key_byte).await
    }

    /// Runs every command at `KEYTURN_LOG=level`: `debug` makes the leak checks cover what
    /// keyturn logs only when asked for detail.
    #[must_use]
    pub fn log_level(mut self, level: &'static str) -> Self {
        self.log = level;
        self
    }

    /// The policy directory (`KEYTURN_POLICIES`).
    #[must_use]
    pub fn policies(&self) -> PathBuf {
        self.home.path().join("policies")
    }

    /// `policies/NAME.yaml`.
    #[must_use]
    pub fn policy_file(&self, name: &str) -> PathBuf {
        self.policies().join(format!("{name}.yaml"))
    }

    /// Writes `policies/NAME.yaml` as [`write_generated_policy`] does.
    pub fn write_generated_policy(&self, name: &str, extra: &str) {
        write_generated_policy(&self.policies(), name, extra);
    }

    /// The audit file every command writes (`KEYTURN_AUDIT_FILE`).
    #[must_use]
    pub fn audit(&self) -> PathBuf {
        self.home.path().join("audit.jsonl")
    }

    /// The audit HMAC key (`KEYTURN_AUDIT_HMAC_KEY_FILE`).
    #[must_use]
    pub fn hmac_key(&self) -> PathBuf {
        self.home.path().join("hmac.key")
    }

    /// `keyturn ARGS` as [`keyturn`] makes it, plus `KEYTURN_HOLDER=holder`, the audit file
    /// and key, `KEYTURN_LOG`, and `KUBECONFIG` when there is a cluster. A test changes any
    /// of these by setting the variable again.
    #[must_use]
    pub fn cmd(&self, args: &[&str], holder: &str) -> Command {
        let mut c = keyturn(args, self.home.path(), &self.bao.addr(), &self.token);
        c.env("KEYTURN_HOLDER", holder)
            .env("KEYTURN_AUDIT_FILE", self.audit())
            .env("KEYTURN_AUDIT_HMAC_KEY_FILE", self.hmac_key())
            .env("KEYTURN_LOG", self.log);
        if let Some(cluster) = &self.cluster {
            c.env("KUBECONFIG", cluster.kubeconfig_path());
        }
        c
    }

    /// `keyturn rotate POLICY` as `agent-1`, killed by its own crash point right after
    /// `crash_after` (`KEYTURN_CRASH_AFTER`) when given. Run on tokio's process API, not
    /// `std`'s: a Kubernetes stand-in in this test process must keep serving while it waits.
    /// `KEYTURN_RESTART_WINDOW=0s`: one policy per process, nothing to batch restarts with.
    ///
    /// # Panics
    /// When the process cannot be started.
    pub async fn rotate(&self, policy: &str, crash_after: Option<&str>) -> Output {
        let mut c = tokio::process::Command::from(self.cmd(&["rotate", policy], "agent-1"));
        c.env("KEYTURN_RESTART_WINDOW", "0s");
        if let Some(step) = crash_after {
            c.env("KEYTURN_CRASH_AFTER", step);
        }
        c.output().await.unwrap()
    }

    /// [`AgentEnv::rotate`] killed right after `step`, checking that it was: the process
    /// died of SIGKILL (its crash point), not of an error on the way.
    ///
    /// # Panics
    /// When it exited any other way.
    pub async fn rotate_killed_after(&self, policy: &str, step: &str) -> Output {
        let crashed = self.rotate(policy, Some(step)).await;
        assert_eq!(
            crashed.status.signal(),
            Some(9),
            "expected a SIGKILL after {step}: {}",
            output_text(&crashed)
        );
        crashed
    }

    /// The rotation state entry of `secret/keyturn/NAME`; `None` when there is none (or
    /// OpenBao would not say). Callers choose whether absence is a failure.
    pub async fn state(&self, name: &str) -> Option<serde_json::Value> {
        state(&self.bao, name).await
    }

    /// `(username, password, version)` at `secret/keyturn/NAME`: CURRENT, or `version`.
    pub async fn login_at(&self, name: &str, version: Option<u64>) -> (String, String, u64) {
        login_at(&self.bao, name, version).await
    }

    /// `(value, version)` at `secret/keyturn/NAME` (CURRENT, or `version`) of a generated
    /// target; `None` while there is none.
    pub async fn value_at(&self, name: &str, version: Option<u64>) -> Option<(String, u64)> {
        let v = self.bao.root_client().unwrap();
        let r = v
            .kv2_read("secret", &format!("keyturn/{name}"), version)
            .await
            .ok()?;
        let value = r
            .data
            .get("value")
            .unwrap()
            .expose_str()
            .unwrap()
            .to_owned();
        Some((value, r.version))
    }

    /// `(username, password)` in the Secret `secret` of the cluster, under the keys `user`
    /// and `password`; `None` without a cluster, a Secret or either key.
    pub async fn secret_login(
        &self,
        secret: &str,
        user: &str,
        password: &str,
    ) -> Option<(String, String)> {
        let c = self.cluster.as_ref()?;
        let s = kube::Api::<Secret>::namespaced(c.client(), c.namespace())
            .get_opt(secret)
            .await
            .ok()??;
        let data = s.data?;
        let f = |k: &str| data.get(k).map(|b| String::from_utf8(b.0.clone()).unwrap());
        Some((f(user)?, f(password)?))
    }

    /// `(action, outcome)` of every event in the audit file, in order.
    ///
    /// # Panics
    /// When a line is not JSON.
    #[must_use]
    pub fn audit_actions(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(self.audit())
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["action"].as_str().unwrap_or_default().to_owned(),
                    v["outcome"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Checks that the audit file's HMAC chain verifies.
    ///
    /// # Panics
    /// When it does not.
    pub fn verify_audit(&self) {
        let report = keyturn_core::audit::verify(&[self.audit()]);
        assert!(report.is_ok(), "audit chain: {report:?}");
    }

    /// What every process test checks of keyturn itself: the audit chain verifies, and no
    /// canary is in keyturn's stdout or stderr (each of `outputs`) or in the audit log. The
    /// test adds the logs of its own servers.
    ///
    /// # Panics
    /// When a check fails or there is no audit file.
    pub fn assert_keyturn_clean(&self, outputs: &[&Output], canaries: &[&str]) {
        self.verify_audit();
        for o in outputs {
            assert_absent("keyturn stdout", &o.stdout, canaries);
            assert_absent("keyturn stderr", &o.stderr, canaries);
        }
        assert_absent("audit log", &std::fs::read(self.audit()).unwrap(), canaries);
    }
}

/// `(username, password, version)` at `secret/keyturn/NAME` (CURRENT, or `version`), read
/// with OpenBao's root token.
///
/// # Panics
/// When there is no such version or either field is missing.
pub async fn login_at(bao: &OpenBao, name: &str, version: Option<u64>) -> (String, String, u64) {
    let r = bao
        .root_client()
        .unwrap()
        .kv2_read("secret", &format!("keyturn/{name}"), version)
        .await
        .unwrap();
    let f = |k: &str| r.data.get(k).unwrap().expose_str().unwrap().to_owned();
    (f("username"), f("password"), r.version)
}

/// The rotation state entry of `secret/keyturn/NAME`, read with OpenBao's root token;
/// `None` when there is none (or OpenBao would not say).
pub async fn state(bao: &OpenBao, name: &str) -> Option<serde_json::Value> {
    bao.api(
        "GET",
        &format!("secret/data/keyturn-state/keyturn/{name}"),
        None,
    )
    .await
    .ok()
    .map(|v| v["data"]["data"].clone())
}

/// A process's stdout then stderr, as text: what an assertion message shows.
#[must_use]
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts that `o` exited with `code` and that its stderr says each of `parts`; returns the
/// stderr, for whatever else the test checks in it.
#[track_caller]
pub fn assert_exit(o: &Output, code: i32, parts: &[&str]) -> String {
    assert_eq!(o.status.code(), Some(code), "{}", output_text(o));
    let said = String::from_utf8_lossy(&o.stderr).into_owned();
    for part in parts {
        assert!(said.contains(part), "{part:?} in {said}");
    }
    said
}

/// A `keyturn run` process writing stdout and stderr to one log file; killed (and reaped)
/// if the test ends without [`Daemon::stop`], so no daemon outlives its test.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Spawns `cmd` (which the caller built: `keyturn run …`, maybe under `setpriv`) with
    /// stdin closed and stdout and stderr to `log`.
    ///
    /// # Panics
    /// When the log cannot be created or the process cannot be started.
    #[must_use]
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        Self { child, log }
    }

    /// What it has logged so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as the kubelet stops a container; returns the exit status and the log.
    ///
    /// # Panics
    /// When the process cannot be waited for.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        (status, self.log())
    }

    /// Sends `signal`, named as `kill` takes it (`STOP`, `CONT`, `KILL`, `TERM`): a test's
    /// own pause, resume or crash of the daemon.
    ///
    /// # Panics
    /// When `kill` cannot be run or refuses (the process is gone and reaped).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.child.id());
    }

    /// The exit status once it has exited; `None` while it runs.
    ///
    /// # Panics
    /// When the process cannot be waited for.
    pub fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for the exit without blocking the async runtime (every 50 ms a look), so that
    /// a server in the test's own process (the Kubernetes stand-in) keeps answering the
    /// daemon's last requests, such as the release of its membership Lease.
    ///
    /// # Panics
    /// When the process cannot be waited for.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// [`Daemon::stop`] without blocking the async runtime (see [`Daemon::exited`]).
    ///
    /// # Panics
    /// When the process cannot be signalled or waited for.
    pub async fn stop_async(mut self) -> (std::process::ExitStatus, String) {
        self.signal("TERM");
        let status = self.exited().await;
        (status, self.log())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

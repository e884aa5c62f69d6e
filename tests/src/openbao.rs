//! A real OpenBao server on a loopback port of its own: `bao server -dev` (in-memory) by
//! default, or with persistent (Raft) storage in a temp dir ([`OpenBao::start_persistent`]) for tests that
//! restart it and need its state to survive.

use std::time::Duration;

use anyhow::{Context, bail};
use keyturn_core::SecretValue;
use keyturn_core::vault::{Vault, VaultConfig};
use serde_json::Value;

use crate::process::{ServerProcess, Spawn, free_port};

/// A running OpenBao: unsealed, KV v2 at `secret/`, and a root token of its own. By default
/// `bao server -dev` with in-memory storage; [`OpenBao::start_persistent`] gives one with file
/// storage that [`OpenBao::restart`] can stop and start again. Dropping it stops the server.
#[derive(Debug)]
pub struct OpenBao {
    proc: ServerProcess,
    port: u16,
    root_token: String,
    http: reqwest::Client,
    audit_log: std::path::PathBuf,
    /// How to start it again, for a server with persistent storage.
    persistent: Option<Persistent>,
    _dir: tempfile::TempDir,
}

/// What a restart of a file-storage server needs: its command line and its unseal key.
#[derive(Debug)]
struct Persistent {
    args: Vec<String>,
    /// The single unseal key share (a test credential).
    unseal_key: String,
    /// How many times the server has been started, to name each run's log.
    starts: u32,
}

impl OpenBao {
    /// Starts a server on a free port and waits until it answers health checks.
    ///
    /// # Errors
    /// When `bao` is missing or the server does not come up.
    pub async fn start() -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..3 {
            match Self::start_on(free_port()).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("openbao did not start")))
    }

    /// Starts a server on `port` (used to test a server that comes up late).
    ///
    /// # Errors
    /// As [`OpenBao::start`].
    pub async fn start_on(port: u16) -> anyhow::Result<Self> {
        Self::start_with_token(port, &format!("root-{}", uuid::Uuid::new_v4().simple())).await
    }

    /// Starts a server on `port` whose root token is `root_token`, so a client can be
    /// configured before the server exists.
    ///
    /// # Errors
    /// As [`OpenBao::start`].
    pub async fn start_with_token(port: u16, root_token: &str) -> anyhow::Result<Self> {
        let bao = crate::tools::bao()?;
        let dir = tempfile::tempdir()?;
        let root_token = root_token.to_owned();
        // Every request is written to a server-side audit log, so tests can count what
        // keyturn actually sent (OpenBao only allows declaring audit devices in config).
        let audit_log = dir.path().join("bao-audit.log");
        let config = dir.path().join("audit.hcl");
        std::fs::write(
            &config,
            format!(
                "audit \"file\" \"test\" {{\n  options {{\n    file_path = {:?}\n  }}\n}}\n",
                audit_log.display().to_string()
            ),
        )?;
        let mut proc = Spawn {
            name: "openbao",
            program: &bao,
            args: vec![
                "server".into(),
                "-dev".into(),
                format!("-dev-listen-address=127.0.0.1:{port}"),
                format!("-dev-root-token-id={root_token}"),
                // Never touch the developer's ~/.vault-token.
                "-dev-no-store-token".into(),
                format!("-config={}", config.display()),
                "-log-level=warn".into(),
            ],
            // The dev server reads HOME for its token helper; keep it in the temp dir.
            env: vec![("HOME".into(), dir.path().display().to_string())],
            user: None,
            log: dir.path().join("openbao.log"),
            stop_signal: "TERM",
        }
        .start()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let health = format!("http://127.0.0.1:{port}/v1/sys/health");
        proc.wait_ready(Duration::from_secs(30), || {
            let http = http.clone();
            let health = health.clone();
            async move {
                matches!(http.get(&health).send().await, Ok(r) if r.status().is_success())
            }
        })
        .await?;
        Ok(Self {
            proc,
            port,
            root_token,
            http,
            audit_log,
            persistent: None,
            _dir: dir,
        })
    }

    /// Starts a server with persistent storage in a temp dir (not `-dev`; OpenBao's integrated
    /// Raft storage with one node, as it has no `file` backend): initialised with one
    /// unseal key share, unsealed through the API, KV v2 enabled at `secret/`. Its data
    /// survives [`OpenBao::restart`], on the same port.
    ///
    /// # Errors
    /// When `bao` is missing or the server does not come up, initialise or unseal.
    pub async fn start_persistent() -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..3 {
            match Self::start_persistent_on(free_port()).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("openbao did not start")))
    }

    async fn start_persistent_on(port: u16) -> anyhow::Result<Self> {
        let bao = crate::tools::bao()?;
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        let audit_log = dir.path().join("bao-audit.log");
        let config = dir.path().join("server.hcl");
        // OpenBao has no `file` storage backend; integrated storage (Raft) with one node is
        // its persistent one. The cluster port is fixed in the config so a restart finds it.
        let cluster_port = free_port();
        std::fs::write(
            &config,
            format!(
                "storage \"raft\" {{\n  path = {data:?}\n  node_id = \"node1\"\n}}\n\
                 listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cluster_port}\"\n  tls_disable = true\n}}\n\
                 api_addr = \"http://127.0.0.1:{port}\"\n\
                 cluster_addr = \"http://127.0.0.1:{cluster_port}\"\n\
                 audit \"file\" \"test\" {{\n  options {{\n    file_path = {audit:?}\n  }}\n}}\n",
                data = data.display().to_string(),
                audit = audit_log.display().to_string(),
            ),
        )?;
        let args = vec![
            "server".to_owned(),
            format!("-config={}", config.display()),
            "-log-level=warn".into(),
        ];
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let proc = spawn_persistent(&bao, &args, dir.path(), 0, port, &http).await?;
        let init: Value = http
            .put(format!("http://127.0.0.1:{port}/v1/sys/init"))
            .json(&serde_json::json!({ "secret_shares": 1, "secret_threshold": 1 }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let unseal_key = init["keys_base64"][0]
            .as_str()
            .context("no unseal key in the init answer")?
            .to_owned();
        let root_token = init["root_token"]
            .as_str()
            .context("no root token in the init answer")?
            .to_owned();
        let mut s = Self {
            proc,
            port,
            root_token,
            http,
            audit_log,
            persistent: Some(Persistent {
                args,
                unseal_key,
                starts: 1,
            }),
            _dir: dir,
        };
        s.unseal().await?;
        s.mount("secret", "kv", Some(serde_json::json!({ "version": "2" })))
            .await?;
        // A new KV v2 mount upgrades itself in the background and answers errors until done.
        let probe = "secret/data/openbao-harness-probe";
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while s
            .api(
                "POST",
                probe,
                Some(serde_json::json!({ "data": { "ok": "1" } })),
            )
            .await
            .is_err()
        {
            if std::time::Instant::now() > deadline {
                bail!("KV v2 at secret/ did not become writable");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(s)
    }

    /// Stops a server started by [`OpenBao::start_persistent`] (its graceful signal, then
    /// SIGKILL after 10 s). Its port refuses connections until [`OpenBao::restart`].
    ///
    /// # Panics
    /// For a `-dev` server, whose state would be lost.
    pub fn stop(&mut self) {
        assert!(
            self.persistent.is_some(),
            "only a server with persistent storage can be stopped and started again"
        );
        self.proc.stop();
    }

    /// Stops the server if it runs, starts it again on the same port with the same data,
    /// and unseals it; returns once it answers as active and unsealed.
    ///
    /// # Errors
    /// When it does not come back or does not unseal.
    ///
    /// # Panics
    /// For a `-dev` server.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let bao = crate::tools::bao()?;
        let p = self
            .persistent
            .as_mut()
            .expect("only a server with persistent storage can be restarted");
        self.proc.stop();
        let run = p.starts;
        p.starts += 1;
        let args = p.args.clone();
        self.proc =
            spawn_persistent(&bao, &args, self._dir.path(), run, self.port, &self.http).await?;
        self.unseal().await
    }

    async fn unseal(&mut self) -> anyhow::Result<()> {
        let key = self
            .persistent
            .as_ref()
            .map(|p| p.unseal_key.clone())
            .context("not a server with persistent storage")?;
        self.http
            .put(format!("{}/v1/sys/unseal", self.addr()))
            .json(&serde_json::json!({ "key": key }))
            .send()
            .await?
            .error_for_status()?;
        // 200 from sys/health means initialised, unsealed and active: mounts are loaded.
        let health = format!("{}/v1/sys/health", self.addr());
        let http = self.http.clone();
        self.proc
            .wait_ready(Duration::from_secs(30), || {
                let http = http.clone();
                let health = health.clone();
                async move {
                    matches!(http.get(&health).send().await, Ok(r) if r.status().is_success())
                }
            })
            .await
    }

    /// `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The root token (a test credential, not a secret under test).
    #[must_use]
    pub fn root_token(&self) -> &str {
        &self.root_token
    }

    /// How many `operation` requests (`read`, `update`, …) for `path` (as Vault names it:
    /// `secret/data/x`) the server has answered, from its own audit log.
    #[must_use]
    pub fn requests_for(&self, operation: &str, path: &str) -> usize {
        std::fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| {
                v["type"] == "request"
                    && v["request"]["path"] == path
                    && v["request"]["operation"] == operation
            })
            .count()
    }

    /// The server's log so far (since its last start).
    #[must_use]
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// The process id of the running server.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// A keyturn Vault configuration pointing here, carrying `token` if given.
    ///
    /// # Panics
    /// Never for the loopback address this server has.
    #[must_use]
    pub fn config(&self, token: Option<&str>) -> VaultConfig {
        let mut c = VaultConfig::for_addr(&self.addr()).expect("loopback address");
        c.token = token.map(SecretValue::from_str_copy);
        c
    }

    /// A keyturn client logged in as root.
    ///
    /// # Errors
    /// Never in practice: building a client makes no call.
    pub fn root_client(&self) -> anyhow::Result<Vault> {
        Ok(Vault::connect(&self.config(Some(&self.root_token)))?)
    }

    /// Calls the HTTP API as root: `api("POST", "sys/auth/approle", json!({"type":"approle"}))`.
    /// For test setup (mounts, policies, roles); keyturn's own calls go through `vaultrs`.
    ///
    /// # Errors
    /// On a non-2xx answer, with Vault's error text.
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        self.api_as(&self.root_token, method, path, body).await
    }

    /// [`OpenBao::api`] with another token.
    ///
    /// # Errors
    /// As [`OpenBao::api`].
    pub async fn api_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/v1/{}", self.addr(), path.trim_start_matches('/'));
        let m = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self.http.request(m, &url).header("X-Vault-Token", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{method} {path}: {status}: {text}");
        }
        Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    }

    /// Writes a policy.
    ///
    /// # Errors
    /// When Vault rejects it.
    pub async fn put_policy(&self, name: &str, hcl: &str) -> anyhow::Result<()> {
        self.api(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            Some(serde_json::json!({ "policy": hcl })),
        )
        .await
        .map(drop)
    }

    /// Creates a token with `policies` (no default policy beyond Vault's `default`).
    ///
    /// # Errors
    /// When Vault refuses.
    pub async fn create_token(&self, policies: &[&str]) -> anyhow::Result<String> {
        let v = self
            .api(
                "POST",
                "auth/token/create",
                Some(serde_json::json!({ "policies": policies, "ttl": "1h" })),
            )
            .await?;
        v["auth"]["client_token"]
            .as_str()
            .map(str::to_owned)
            .context("no client_token in answer")
    }

    /// Mounts a secrets engine (`kv` with version 1 or 2, `database`, …) at `path`.
    ///
    /// # Errors
    /// When Vault refuses.
    pub async fn mount(
        &self,
        path: &str,
        engine: &str,
        options: Option<Value>,
    ) -> anyhow::Result<()> {
        let mut body = serde_json::json!({ "type": engine });
        if let Some(o) = options {
            body["options"] = o;
        }
        self.api("POST", &format!("sys/mounts/{path}"), Some(body))
            .await
            .map(drop)
    }

    /// Enables an auth method at `path`.
    ///
    /// # Errors
    /// When Vault refuses.
    pub async fn enable_auth(&self, path: &str, method: &str) -> anyhow::Result<()> {
        self.api(
            "POST",
            &format!("sys/auth/{path}"),
            Some(serde_json::json!({ "type": method })),
        )
        .await
        .map(drop)
    }

    /// Enables the kubernetes auth method at `kubernetes`, checking service-account tokens
    /// through `cluster`'s TokenReview. Outside a pod OpenBao wants `disable_local_ca_jwt`, and
    /// that wants a CA: both are set when the cluster has one.
    ///
    /// # Errors
    /// When the cluster has no reviewer token or Vault refuses.
    pub async fn enable_kubernetes_auth(
        &self,
        cluster: &crate::kube::TestCluster,
    ) -> anyhow::Result<()> {
        self.enable_auth("kubernetes", "kubernetes").await?;
        let mut config = serde_json::json!({
            "kubernetes_host": cluster.kubernetes_host(),
            "token_reviewer_jwt": cluster.token_reviewer_jwt().await?,
        });
        if let Some(ca) = cluster.kubernetes_ca_pem() {
            config["kubernetes_ca_cert"] = serde_json::json!(ca);
            config["disable_local_ca_jwt"] = serde_json::json!(true);
        }
        self.api("POST", "auth/kubernetes/config", Some(config))
            .await
            .map(drop)
    }
}

/// Starts `bao ARGS` (a file-storage server) and waits until its API answers at all: sealed
/// or not initialised is an answer (sys/seal-status is open to everyone).
async fn spawn_persistent(
    bao: &std::path::Path,
    args: &[String],
    dir: &std::path::Path,
    run: u32,
    port: u16,
    http: &reqwest::Client,
) -> anyhow::Result<ServerProcess> {
    let mut proc = Spawn {
        name: "openbao",
        program: bao,
        args: args.to_vec(),
        env: vec![("HOME".into(), dir.display().to_string())],
        user: None,
        log: dir.join(format!("openbao-{run}.log")),
        stop_signal: "TERM",
    }
    .start()?;
    let status = format!("http://127.0.0.1:{port}/v1/sys/seal-status");
    proc.wait_ready(Duration::from_secs(30), || {
        let http = http.clone();
        let status = status.clone();
        async move { matches!(http.get(&status).send().await, Ok(r) if r.status().is_success()) }
    })
    .await?;
    Ok(proc)
}

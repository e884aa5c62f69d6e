//! A real OpenBao dev server on a loopback port of its own.

use std::time::Duration;

use anyhow::{Context, bail};
use keyturn_core::SecretValue;
use keyturn_core::vault::{Vault, VaultConfig};
use serde_json::Value;

use crate::process::{ServerProcess, Spawn, free_port};

/// A running `bao server -dev`: in-memory storage, unsealed, KV v2 at `secret/`, and a root
/// token of its own. Dropping it stops the server.
#[derive(Debug)]
pub struct OpenBao {
    proc: ServerProcess,
    port: u16,
    root_token: String,
    http: reqwest::Client,
    audit_log: std::path::PathBuf,
    _dir: tempfile::TempDir,
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
            _dir: dir,
        })
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

    /// The server's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        self.proc.log()
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

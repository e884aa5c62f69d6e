//! The moto server: a real HTTP emulator of the AWS APIs (Secrets Manager for keyturn), on a
//! loopback port of its own.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::process::{ServerProcess, Spawn, free_port};

/// A running `moto_server`. Dropping it stops the server.
#[derive(Debug)]
pub struct Moto {
    proc: ServerProcess,
    port: u16,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// The region the tests use.
pub const REGION: &str = "us-east-1";

impl Moto {
    /// Starts a server on a free port and waits until it answers.
    ///
    /// # Errors
    /// When `moto_server` is missing or does not come up.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = crate::tools::moto_server()?;
        let dir = tempfile::tempdir()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut last = None;
        for _ in 0..3 {
            let port = free_port();
            let mut proc = Spawn {
                name: "moto",
                program: &bin,
                args: vec![
                    "-H".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string(),
                ],
                env: vec![],
                user: None,
                log: dir.path().join(format!("moto-{port}.log")),
                stop_signal: "TERM",
            }
            .start()?;
            let url = format!("http://127.0.0.1:{port}/moto-api/");
            let ready = proc
                .wait_ready(Duration::from_secs(60), || {
                    let http = http.clone();
                    let url = url.clone();
                    async move { http.get(&url).send().await.is_ok() }
                })
                .await;
            match ready {
                Ok(()) => {
                    return Ok(Self {
                        proc,
                        port,
                        http,
                        _dir: dir,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("moto did not start")))
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL`.
    #[must_use]
    pub fn endpoint_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment an AWS SDK client needs to talk to this server and nowhere else.
    #[must_use]
    pub fn aws_env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint_url()),
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }

    /// Calls a Secrets Manager action with the AWS JSON protocol, for test setup and
    /// inspection (`call("GetSecretValue", json!({"SecretId": "x"}))`).
    ///
    /// # Errors
    /// On an error answer, with its type and message.
    pub async fn secretsmanager(&self, action: &str, body: Value) -> anyhow::Result<Value> {
        let resp = self
            .http
            .post(self.endpoint_url())
            .header("Content-Type", "application/x-amz-json-1.1")
            .header("X-Amz-Target", format!("secretsmanager.{action}"))
            // moto routes by the credential scope in the signature header; it does not check it.
            .header(
                "Authorization",
                format!("AWS4-HMAC-SHA256 Credential=testing/20260101/{REGION}/secretsmanager/aws4_request, SignedHeaders=host, Signature=0"),
            )
            .json(&body)
            .send()
            .await
            .with_context(|| format!("secretsmanager {action}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("secretsmanager {action}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// The server's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        self.proc.log()
    }
}

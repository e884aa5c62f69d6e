//! Vault and OpenBao access over `vaultrs`.
//!
//! [`Vault`] wraps a `vaultrs` client with the things keyturn needs around every call: the
//! server address for error messages, retries of transient failures only, and errors that
//! name the path but never the value. KV reads and writes are in [`kv`]; auth methods, one
//! file each, in [`auth`].

pub mod auth;
pub mod config;
pub mod error;
pub mod kv;
pub mod leases;
pub mod retry;
pub mod sys;
mod tls;

use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};

pub use auth::{AuthMethod, LoginInfo};
pub use config::{ConfigError, VaultConfig};
pub use error::VaultError;
pub use kv::{KvVersion, SecretData, Versioned};
pub use retry::RetryPolicy;
pub use sys::Health;

/// A connected (not necessarily logged-in) Vault client.
pub struct Vault {
    client: VaultClient,
    addr: String,
    retry: RetryPolicy,
}

impl std::fmt::Debug for Vault {
    // vaultrs' client Debug would print the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// What Vault says about the token in use (`auth/token/lookup-self`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct TokenInfo {
    /// The token's display name (e.g. `token`, `approle`, `kubernetes-shop-orders`).
    #[serde(default)]
    pub display_name: String,
    /// The identity entity, empty for a root token.
    #[serde(default)]
    pub entity_id: String,
    /// Attached policies.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Remaining TTL in seconds (0 for a root token).
    #[serde(default)]
    pub ttl: u64,
}

impl Vault {
    /// Builds the client. Makes no network call.
    ///
    /// # Errors
    /// [`VaultError::Config`] for an unusable address or CA file, or no CA certificate at
    /// all for an https address.
    pub fn connect(cfg: &VaultConfig) -> Result<Self, VaultError> {
        config::check_addr("address", &cfg.addr)?;
        if cfg.skip_verify {
            tracing::warn!(addr = %cfg.addr, "VAULT_SKIP_VERIFY is set: the server's certificate is not checked");
        }
        let mut b = VaultClientSettingsBuilder::default();
        b.address(&cfg.addr)
            .verify(!cfg.skip_verify)
            .timeout(Some(cfg.request_timeout))
            // The roots are keyturn's (`tls::trust`, from `cfg.ca_cert`); vaultrs's copy of
            // them would go unused. Set empty, so its builder does not read VAULT_CACERT and
            // list VAULT_CAPATH by itself (it unwraps each entry's path as UTF-8).
            .ca_certs(Vec::new())
            .token(cfg.token.as_ref().map(token_text).unwrap_or_default());
        if let Some(ns) = &cfg.namespace {
            b.set_namespace(ns.clone());
        }
        let settings = b.build().map_err(|e| ConfigError::BadAddress {
            source_name: e.to_string(),
            addr: cfg.addr.clone(),
        })?;
        // Not `VaultClient::new`: the HTTP client it builds follows redirects (reqwest strips
        // only the standard credential headers on a redirect to another host, so
        // `X-Vault-Token` would go wherever a 3xx points), and it trusts only the system's CA
        // store, which a scratch image does not have (see `tls.rs`). The same fields, with
        // keyturn's client.
        let http = http_client(&settings, cfg)?;
        let middle = vaultrs::api::EndpointMiddleware {
            token: settings.token.clone(),
            version: format!("v{}", settings.version),
            wrap: None,
            namespace: settings.namespace.clone(),
        };
        let client = VaultClient {
            http: rustify::clients::reqwest::Client::new(cfg.addr.as_str(), http),
            middle,
            settings,
        };
        Ok(Self {
            client,
            addr: cfg.addr.clone(),
            retry: RetryPolicy::default(),
        })
    }

    /// Replaces the retry policy used for every later call.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The server address.
    #[must_use]
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The underlying `vaultrs` client, for endpoints this wrapper does not cover.
    #[must_use]
    pub fn client(&self) -> &VaultClient {
        &self.client
    }

    /// Uses `token` for every later call.
    pub fn set_token(&mut self, token: &crate::SecretValue) {
        self.client.set_token(&token_text(token));
    }

    /// Logs in with `method` (retrying transient failures) and uses the resulting token.
    ///
    /// # Errors
    /// The classified failure; [`VaultError::PermissionDenied`] when the role refuses.
    pub async fn login(&mut self, method: &dyn AuthMethod) -> Result<LoginInfo, VaultError> {
        if let Some(t) = method.preset_token() {
            self.set_token(t);
        }
        let info = self.retry.run(|| method.login(self)).await?;
        self.set_token(&info.token);
        tracing::info!(method = method.name(), mount = method.mount(), accessor = %info.accessor, "logged in to vault");
        Ok(info)
    }

    /// Looks up the token in use.
    ///
    /// # Errors
    /// The classified failure; [`VaultError::PermissionDenied`] for an invalid token.
    pub async fn lookup_self(&self) -> Result<TokenInfo, VaultError> {
        let path = "auth/token/lookup-self";
        self.retry
            .run(|| async {
                let r = vaultrs::token::lookup_self(&self.client)
                    .await
                    .map_err(|e| VaultError::classify(e, "lookup", path, &self.addr, None))?;
                Ok(TokenInfo {
                    display_name: r.display_name,
                    entity_id: r.entity_id,
                    policies: r.policies,
                    ttl: r.ttl,
                })
            })
            .await
    }

    /// Revokes the token in use (`auth/token/revoke-self`). Not retried beyond the policy:
    /// a token that cannot be revoked still expires with its TTL.
    ///
    /// # Errors
    /// The classified failure.
    pub async fn revoke_self(&self) -> Result<(), VaultError> {
        let path = "auth/token/revoke-self";
        self.retry
            .run(|| async {
                vaultrs::token::revoke_self(&self.client)
                    .await
                    .map_err(|e| VaultError::classify(e, "revoke", path, &self.addr, None))
            })
            .await
    }

    pub(crate) fn classify(
        &self,
        e: vaultrs::error::ClientError,
        op: &'static str,
        path: &str,
    ) -> VaultError {
        VaultError::classify(e, op, path, &self.addr, None)
    }
}

/// The HTTP client for `s` (client identity, timeout, proxy) and `cfg` (the roots to trust:
/// [`tls::trust`]), with redirects never followed.
fn http_client(
    s: &vaultrs::client::VaultClientSettings,
    cfg: &VaultConfig,
) -> Result<reqwest::Client, ConfigError> {
    let bad = |e: &dyn std::error::Error| ConfigError::HttpClient {
        cause: crate::text::error_chain(e),
    };
    let mut b = reqwest::ClientBuilder::new()
        .tls_backend_rustls()
        .redirect(reqwest::redirect::Policy::none());
    if let Some(t) = s.timeout {
        b = b.timeout(t);
    }
    if s.address.scheme() == "http" {
        // As vaultrs does: no roots are needed, and loading the platform's may fail.
        b = b.tls_certs_only(Vec::new());
    } else if !s.verify {
        // VAULT_SKIP_VERIFY: no certificate is checked, so no roots are needed either.
        b = b.tls_danger_accept_invalid_certs(true);
    } else {
        b = tls::trust(cfg.ca_cert.as_deref())?.apply(b);
    }
    if let Some(id) = &s.identity {
        b = b.identity(id.clone());
    }
    if let Some(p) = &s.proxy {
        b = b.proxy(reqwest::Proxy::all(p.as_str()).map_err(|e| bad(&e))?);
    }
    b.build().map_err(|e| bad(&e))
}

/// vaultrs keeps the token as a `String`; this is the one place a token leaves its
/// zeroizing storage, and only into the client's request header.
fn token_text(t: &crate::SecretValue) -> String {
    String::from_utf8_lossy(t.expose()).into_owned()
}

#[cfg(test)]
mod redirect_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads one request's head from a connection and returns it.
    async fn read_head(s: &mut tokio::net::TcpStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[tokio::test]
    async fn a_redirect_is_reported_and_the_token_never_follows_it() {
        // The place a hostile or misconfigured server points to: it must see no request.
        let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let elsewhere_addr = elsewhere.local_addr().unwrap();
        let vault = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = vault.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = vault.accept().await.unwrap();
            let head = read_head(&mut s).await;
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{elsewhere_addr}/v1/secret/data/x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            s.write_all(answer.as_bytes()).await.unwrap();
            head
        });
        let cfg = VaultConfig {
            token: Some(crate::SecretValue::from_str_copy("canary-token-1234")),
            ..VaultConfig::for_addr(&format!("http://{addr}")).unwrap()
        };
        let v = Vault::connect(&cfg)
            .unwrap()
            .with_retry(RetryPolicy::none());
        let err = v.kv2_read("secret", "x", None).await.unwrap_err();
        let head = server.await.unwrap();
        assert!(
            head.contains("canary-token-1234"),
            "the token went to Vault itself"
        );
        assert!(err.to_string().contains("redirect"), "{err}");
        assert!(!err.to_string().contains("canary-token-1234"), "{err}");
        // A followed redirect connects before the read returns: its connection would be
        // waiting in the backlog now.
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(50), elsewhere.accept()).await;
        assert!(pending.is_err(), "the redirect was followed");
    }
}

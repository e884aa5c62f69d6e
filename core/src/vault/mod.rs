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

use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};

pub use auth::{AuthMethod, LoginInfo};
pub use config::{ConfigError, VaultConfig};
pub use error::VaultError;
pub use kv::{KvVersion, SecretData, Versioned};
pub use retry::RetryPolicy;

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
    /// [`VaultError::Config`] for an unusable address or CA file.
    pub fn connect(cfg: &VaultConfig) -> Result<Self, VaultError> {
        config::check_addr("address", &cfg.addr)?;
        if cfg.skip_verify {
            tracing::warn!(addr = %cfg.addr, "VAULT_SKIP_VERIFY is set: the server's certificate is not checked");
        }
        let mut b = VaultClientSettingsBuilder::default();
        b.address(&cfg.addr)
            .verify(!cfg.skip_verify)
            .timeout(Some(cfg.request_timeout))
            .ca_certs(
                cfg.ca_cert
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            )
            .token(cfg.token.as_ref().map(token_text).unwrap_or_default());
        if let Some(ns) = &cfg.namespace {
            b.set_namespace(ns.clone());
        }
        let settings = b.build().map_err(|e| ConfigError::BadAddress {
            source_name: e.to_string(),
            addr: cfg.addr.clone(),
        })?;
        let client = VaultClient::new(settings).map_err(|e| match e {
            vaultrs::error::ClientError::FileReadError { path, source } => ConfigError::CaCert {
                path: path.into(),
                cause: source.to_string(),
            },
            vaultrs::error::ClientError::ParseCertificateError { path, .. } => {
                ConfigError::CaCert {
                    path: path.into(),
                    cause: "not a PEM certificate bundle".into(),
                }
            }
            other => ConfigError::BadAddress {
                source_name: other.to_string(),
                addr: cfg.addr.clone(),
            },
        })?;
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

/// vaultrs keeps the token as a `String`; this is the one place a token leaves its
/// zeroizing storage, and only into the client's request header.
fn token_text(t: &crate::SecretValue) -> String {
    String::from_utf8_lossy(t.expose()).into_owned()
}

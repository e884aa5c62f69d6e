//! Vault auth methods: one trait, one file per method.
//!
//! A method performs a single login attempt; [`super::Vault::login`] adds retries, switches
//! the client to the new token and logs the accessor (never the token).

mod approle;
mod jwt;
mod kubernetes;
mod spec;
mod token;

pub use approle::AppRole;
pub use jwt::Jwt;
pub use kubernetes::{DEFAULT_SA_TOKEN_PATH, Kubernetes};
pub use spec::{AuthSpec, Identity, Prepared, RoleId, prepare};
pub use token::TokenAuth;

use async_trait::async_trait;

use super::{Vault, VaultError};
use crate::SecretValue;

/// The result of a login. `Debug` leaves the token out.
#[derive(Clone)]
pub struct LoginInfo {
    /// The client token.
    pub token: SecretValue,
    /// The token's accessor: safe to log, usable to revoke or look up the token.
    pub accessor: String,
    /// Policies attached to the token.
    pub policies: Vec<String>,
    /// The identity entity, if any.
    pub entity_id: String,
    /// TTL in seconds (0: no expiry, e.g. a root token).
    pub lease_duration: u64,
}

impl std::fmt::Debug for LoginInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginInfo")
            .field("accessor", &self.accessor)
            .field("policies", &self.policies)
            .field("entity_id", &self.entity_id)
            .field("lease_duration", &self.lease_duration)
            .finish_non_exhaustive()
    }
}

impl From<vaultrs::api::AuthInfo> for LoginInfo {
    fn from(a: vaultrs::api::AuthInfo) -> Self {
        Self {
            token: SecretValue::from(a.client_token),
            accessor: a.accessor,
            policies: a.policies,
            entity_id: a.entity_id,
            lease_duration: a.lease_duration,
        }
    }
}

/// One way of proving identity to Vault.
#[async_trait]
pub trait AuthMethod: Send + Sync + std::fmt::Debug {
    /// The method's name as Vault calls it (`token`, `approle`, `kubernetes`, `jwt`).
    fn name(&self) -> &'static str;

    /// The auth mount (`approle`, `kubernetes`, …); `token` for token auth.
    fn mount(&self) -> &str;

    /// A token the client must carry before [`AuthMethod::login`] runs (token auth only).
    fn preset_token(&self) -> Option<&SecretValue> {
        None
    }

    /// One login attempt.
    ///
    /// # Errors
    /// The classified failure; credential files that cannot be read give
    /// [`VaultError::Config`].
    async fn login(&self, vault: &Vault) -> Result<LoginInfo, VaultError>;
}

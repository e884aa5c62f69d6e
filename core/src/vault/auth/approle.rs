//! AppRole auth: a role id (not secret) and a secret id (secret), for machines outside
//! Kubernetes and for benchmarks.

use async_trait::async_trait;

use super::{AuthMethod, LoginInfo};
use crate::SecretValue;
use crate::vault::{Vault, VaultError};

/// AppRole auth.
#[derive(Debug, Clone)]
pub struct AppRole {
    /// Auth mount, usually `approle`.
    pub mount: String,
    /// The role id.
    pub role_id: String,
    /// The secret id.
    pub secret_id: SecretValue,
}

#[async_trait]
impl AuthMethod for AppRole {
    fn name(&self) -> &'static str {
        "approle"
    }

    fn mount(&self) -> &str {
        &self.mount
    }

    async fn login(&self, vault: &Vault) -> Result<LoginInfo, VaultError> {
        let secret_id = String::from_utf8_lossy(self.secret_id.expose());
        let path = format!("auth/{}/login", self.mount);
        vaultrs::auth::approle::login(vault.client(), &self.mount, &self.role_id, &secret_id)
            .await
            .map(LoginInfo::from)
            .map_err(|e| vault.classify(e, "login", &path))
    }
}

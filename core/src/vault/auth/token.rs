//! Token auth: the caller already holds a token (`VAULT_TOKEN`, `~/.vault-token`, a token
//! file left by another container). "Logging in" checks it with `lookup-self`.

use async_trait::async_trait;

use super::{AuthMethod, LoginInfo};
use crate::SecretValue;
use crate::vault::{Vault, VaultError};

/// Token auth.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    /// The token.
    pub token: SecretValue,
}

#[async_trait]
impl AuthMethod for TokenAuth {
    fn name(&self) -> &'static str {
        "token"
    }

    fn mount(&self) -> &str {
        "token"
    }

    fn preset_token(&self) -> Option<&SecretValue> {
        Some(&self.token)
    }

    async fn login(&self, vault: &Vault) -> Result<LoginInfo, VaultError> {
        let r = vaultrs::token::lookup_self(vault.client())
            .await
            .map_err(|e| vault.classify(e, "login", "auth/token/lookup-self"))?;
        Ok(LoginInfo {
            token: self.token.clone(),
            accessor: r.accessor,
            policies: r.policies,
            entity_id: r.entity_id,
            lease_duration: r.ttl,
        })
    }
}

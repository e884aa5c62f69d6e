//! The systems a policy talks to, built once per process and handed out per policy: the
//! store a policy's credential lives in and the target it is for.

use std::sync::Arc;

use keyturn_core::vault::Vault;

use crate::policy::{Policy, StoreRef, Target as TargetSpec};
use crate::rotation::store::Store;
use crate::rotation::store::vault_kv::VaultKvStore;
use crate::rotation::target::Target;
use crate::rotation::target::generated::Generated;

/// A policy needs a backend this process was not given.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The policy's store or target needs a client that is not configured.
    #[error("policy {policy}: {what} is not configured in this process ({hint})")]
    NotConfigured {
        /// The policy.
        policy: String,
        /// What is missing.
        what: &'static str,
        /// How to configure it.
        hint: &'static str,
    },
    /// Building a backend for the policy failed.
    #[error("policy {policy}: {cause}")]
    Build {
        /// The policy.
        policy: String,
        /// What went wrong (never a value).
        cause: String,
    },
}

/// The clients this process has.
#[derive(Debug, Clone, Default)]
pub struct Backends {
    /// Vault, logged in with the agent's identity.
    pub vault: Option<Arc<Vault>>,
}

impl Backends {
    /// The store for `policy`.
    ///
    /// # Errors
    /// The store kind is not configured.
    pub fn store(&self, policy: &Policy) -> Result<Arc<dyn Store>, BackendError> {
        match &policy.store {
            StoreRef::VaultKv { mount, path } => {
                let vault = self.vault.clone().ok_or_else(|| BackendError::NotConfigured {
                    policy: policy.name.clone(),
                    what: "Vault",
                    hint: "set VAULT_ADDR and a token or auth method",
                })?;
                Ok(Arc::new(VaultKvStore::new(vault, mount, path)))
            }
            StoreRef::AwsSecretsManager { .. } => Err(BackendError::NotConfigured {
                policy: policy.name.clone(),
                what: "AWS Secrets Manager",
                hint: "not yet supported by this build",
            }),
        }
    }

    /// The target for `policy`.
    ///
    /// # Errors
    /// The target kind is not configured.
    pub async fn target(&self, policy: &Policy) -> Result<Arc<dyn Target>, BackendError> {
        match &policy.target {
            TargetSpec::Generated => Ok(Arc::new(Generated)),
            TargetSpec::Postgres(_) => Err(BackendError::NotConfigured {
                policy: policy.name.clone(),
                what: "PostgreSQL",
                hint: "not yet supported by this build",
            }),
        }
    }
}

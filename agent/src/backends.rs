//! The systems a policy talks to, built once per process and handed out per policy: the
//! store a policy's credential lives in and the target it is for.

use std::sync::Arc;

use keyturn_core::vault::Vault;

use crate::policy::{Policy, StoreRef, Target as TargetSpec};
use crate::rotation::store::Store;
use crate::rotation::store::aws_sm::{self, AwsSmStore};
use crate::rotation::store::vault_kv::VaultKvStore;
use crate::rotation::target::Target;
use crate::rotation::target::generated::Generated;
use crate::rotation::target::postgres::{AdminFn, AdminPool, BoxError, Postgres};

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
    /// AWS Secrets Manager, from the standard credential chain.
    pub aws: Option<aws_sm::sdk::Client>,
    /// PostgreSQL admin connections (a few per admin, kept open), shared by every PostgreSQL
    /// target.
    pub pg_admin: Arc<AdminPool>,
}

impl Backends {
    /// Whether any of `policies` keeps a credential (or an admin credential) in AWS.
    #[must_use]
    pub fn needs_aws(policies: &[Policy]) -> bool {
        let aws = |r: &StoreRef| matches!(r, StoreRef::AwsSecretsManager { .. });
        policies.iter().any(|p| {
            aws(&p.store) || matches!(&p.target, TargetSpec::Postgres(pg) if aws(&pg.admin))
        })
    }

    /// The store for `policy`.
    ///
    /// # Errors
    /// The store kind is not configured.
    pub fn store(&self, policy: &Policy) -> Result<Arc<dyn Store>, BackendError> {
        self.store_at(&policy.name, &policy.store)
    }

    /// The store at `r`, on behalf of policy `name`.
    ///
    /// # Errors
    /// The store kind is not configured.
    pub fn store_at(&self, name: &str, r: &StoreRef) -> Result<Arc<dyn Store>, BackendError> {
        match r {
            StoreRef::VaultKv { mount, path } => {
                let vault = self
                    .vault
                    .clone()
                    .ok_or_else(|| BackendError::NotConfigured {
                        policy: name.to_owned(),
                        what: "Vault",
                        hint: "set VAULT_ADDR and a token or auth method",
                    })?;
                Ok(Arc::new(VaultKvStore::new(vault, mount, path)))
            }
            StoreRef::AwsSecretsManager { secret_id, region } => {
                let client = self
                    .aws
                    .as_ref()
                    .ok_or_else(|| BackendError::NotConfigured {
                        policy: name.to_owned(),
                        what: "AWS Secrets Manager",
                        hint: "set AWS_REGION and credentials (the standard AWS chain)",
                    })?;
                let client = match region {
                    Some(r) => aws_sm::with_region(client, r),
                    None => client.clone(),
                };
                Ok(Arc::new(AwsSmStore::for_secret(client, secret_id)))
            }
        }
    }

    /// The target for `policy`. A PostgreSQL target reads its admin credential from the
    /// admin store at each use, so an admin password rotated elsewhere is picked up.
    ///
    /// # Errors
    /// The target's admin store is not configured.
    pub async fn target(&self, policy: &Policy) -> Result<Arc<dyn Target>, BackendError> {
        match &policy.target {
            TargetSpec::Generated => Ok(Arc::new(Generated)),
            TargetSpec::Postgres(pg) => {
                let admin_store = self.store_at(&policy.name, &pg.admin)?;
                let at = pg.admin.to_string();
                let source = AdminFn(move || {
                    let store = admin_store.clone();
                    let at = at.clone();
                    async move {
                        let current = store.current().await.map_err(|e| Box::new(e) as BoxError)?;
                        current
                            .map(|c| c.fields)
                            .ok_or_else(|| format!("no admin credential stored at {at}").into())
                    }
                });
                Ok(Arc::new(
                    Postgres::with_admin_source(pg, Arc::new(source))
                        .with_pool(self.pg_admin.clone()),
                ))
            }
        }
    }
}

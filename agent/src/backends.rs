//! The one dispatch between what a policy declares and the code that does it: the store and
//! target kinds a policy file may name, and the clients this process has to build them.
//!
//! Each kind lives in one file that owns everything about it: its `Raw` form (as written in
//! the file), its validated `Spec`, the validation that turns one into the other (errors at
//! `FILE:LINE:COL`), what it needs ([`Need`]: Vault capabilities, AWS actions, admin
//! privileges) and how it is built. This file only names the kinds.
//!
//! **Adding a target** (a store is the same): write `rotation/target/NAME.rs` with `Raw`,
//! `Spec` (with a `validate` function and an impl of [`TargetKind`]) and the [`Target`]
//! itself; then add one variant to [`RawTarget`] and [`TargetSpec`] and one arm to each
//! `match` below. Nothing else changes: `policy check`, `policy rbac`, `policy needs`,
//! `doctor`, the daemon, `rotate` and `break-glass` all go through here.

use std::fmt;
use std::sync::Arc;

use keyturn_core::exit::{ExitCode, HasExitCode};
use keyturn_core::vault::Vault;
use serde::Deserialize;

use crate::policy::needs::{Holding, Need};
use crate::policy::{Policy, S, Validator};
use crate::rotation::store::aws_sm;
use crate::rotation::store::{Store, vault_kv};
use crate::rotation::target::mysql;
use crate::rotation::target::postgres::{self, AdminPool};
use crate::rotation::target::redis;
use crate::rotation::target::{AdminFn, AdminSource, BoxError, Target, generated};

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

impl HasExitCode for BackendError {
    /// A store or target this process has no client for is a configuration error (64); a
    /// backend that could not be built, an internal one (70). Callers that meet either after
    /// `prepare` (which builds every backend a policy names) exit 70: there it is a bug.
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::NotConfigured { .. } => ExitCode::Usage,
            Self::Build { .. } => ExitCode::Software,
        }
    }
}

// ---- stores ---------------------------------------------------------------------------

/// A store as the policy file writes it (`store:` or a target's `admin:`).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum RawStore {
    /// `vault-kv: { mount, path }`.
    VaultKv(vault_kv::Raw),
    /// `aws-secretsmanager: { secret-id, region }`.
    AwsSecretsmanager(aws_sm::Raw),
}

/// A place a secret is kept, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StoreSpec {
    /// A Vault KV v2 path.
    VaultKv(vault_kv::Spec),
    /// An AWS Secrets Manager secret.
    AwsSecretsManager(aws_sm::Spec),
}

/// What every store kind's validated spec provides.
pub trait StoreKind: fmt::Display {
    /// The access a holder of this store needs: for the policy's own credential, or read
    /// access to a target's admin credential.
    fn needs(&self, holding: Holding) -> Vec<Need>;

    /// The store, through this process's clients, on behalf of policy `policy`.
    ///
    /// # Errors
    /// The client this kind needs is not configured.
    fn build(&self, backends: &Backends, policy: &str) -> Result<Arc<dyn Store>, BackendError>;
}

impl StoreSpec {
    /// Validates `raw`, found at `field`; `None` when an error was reported.
    pub(crate) fn validate(raw: &S<RawStore>, v: &mut Validator<'_>, field: &str) -> Option<Self> {
        match &raw.value {
            RawStore::VaultKv(r) => {
                vault_kv::Spec::validate(r, v, &format!("{field}.vault-kv")).map(Self::VaultKv)
            }
            RawStore::AwsSecretsmanager(r) => {
                aws_sm::Spec::validate(r, v, &format!("{field}.aws-secretsmanager"))
                    .map(Self::AwsSecretsManager)
            }
        }
    }

    fn kind(&self) -> &dyn StoreKind {
        match self {
            Self::VaultKv(s) => s,
            Self::AwsSecretsManager(s) => s,
        }
    }

    /// See [`StoreKind::needs`].
    #[must_use]
    pub fn needs(&self, holding: Holding) -> Vec<Need> {
        self.kind().needs(holding)
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind().fmt(f)
    }
}

// ---- targets --------------------------------------------------------------------------

/// A target as the policy file writes it.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum RawTarget {
    /// `generated: {}`.
    Generated(generated::Raw),
    /// `postgres: { host, port, database, admin, users, strategy }`.
    Postgres(Box<postgres::Raw>),
    /// `mysql: { host, port, admin, users, user-host, strategy, tls, ca-file }`.
    Mysql(Box<mysql::Raw>),
    /// `redis: { host, port, admin, users, strategy }`.
    Redis(Box<redis::Raw>),
}

/// What a credential is for, validated.
///
/// The database kinds are boxed: their specs are 120 to 176 bytes, a `generated` one none,
/// and a daemon holds up to 100,000 policies, most of them `generated`; boxed, every policy
/// pays 16 bytes inline and only a database target pays for its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// No external system: a random token or API key.
    Generated(generated::Spec),
    /// PostgreSQL roles whose passwords keyturn sets.
    Postgres(Box<postgres::Spec>),
    /// MySQL/MariaDB accounts whose passwords keyturn sets.
    Mysql(Box<mysql::Spec>),
    /// Redis ACL users whose passwords keyturn sets.
    Redis(Box<redis::Spec>),
}

/// What every target kind's validated spec provides.
pub trait TargetKind {
    /// The fields of the credentials this target produces: what a delivery's `keys` may
    /// map to.
    fn fields(&self) -> &'static [&'static str];

    /// Where the admin credential that changes the target's passwords is kept, if any.
    fn admin_store(&self) -> Option<&StoreSpec> {
        None
    }

    /// What the admin must be allowed on the target system (the admin store's own access
    /// is added by the caller).
    fn needs(&self) -> Vec<Need> {
        Vec::new()
    }

    /// The target. `admin` reads the admin credential at each use (so an admin password
    /// rotated elsewhere is picked up); it is `Some` exactly when [`Self::admin_store`] is.
    fn build(&self, admin: Option<Arc<dyn AdminSource>>, backends: &Backends) -> Arc<dyn Target>;
}

impl TargetSpec {
    /// Validates `raw`, found at `spec.target`; `None` when an error was reported.
    pub(crate) fn validate(raw: &S<RawTarget>, v: &mut Validator<'_>) -> Option<Self> {
        const AT: &str = "spec.target";
        match &raw.value {
            RawTarget::Generated(r) => {
                generated::Spec::validate(r, v, &format!("{AT}.generated")).map(Self::Generated)
            }
            RawTarget::Postgres(r) => postgres::Spec::validate(r, v, &format!("{AT}.postgres"))
                .map(Box::new)
                .map(Self::Postgres),
            RawTarget::Mysql(r) => mysql::Spec::validate(r, v, &format!("{AT}.mysql"))
                .map(Box::new)
                .map(Self::Mysql),
            RawTarget::Redis(r) => redis::Spec::validate(r, v, &format!("{AT}.redis"))
                .map(Box::new)
                .map(Self::Redis),
        }
    }

    fn kind(&self) -> &dyn TargetKind {
        match self {
            Self::Generated(s) => s,
            Self::Postgres(s) => &**s,
            Self::Mysql(s) => &**s,
            Self::Redis(s) => &**s,
        }
    }

    /// See [`TargetKind::fields`].
    #[must_use]
    pub fn fields(&self) -> &'static [&'static str] {
        self.kind().fields()
    }

    /// See [`TargetKind::admin_store`].
    #[must_use]
    pub fn admin_store(&self) -> Option<&StoreSpec> {
        self.kind().admin_store()
    }

    /// See [`TargetKind::needs`].
    #[must_use]
    pub fn needs(&self) -> Vec<Need> {
        self.kind().needs()
    }
}

// ---- the clients ------------------------------------------------------------------------

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
        policies.iter().any(|p| {
            std::iter::once(&p.store)
                .chain(p.target.admin_store())
                .any(|s| matches!(s, StoreSpec::AwsSecretsManager(_)))
        })
    }

    /// Vault, for policy `policy`.
    ///
    /// # Errors
    /// This process has no Vault client.
    pub fn vault_for(&self, policy: &str) -> Result<Arc<Vault>, BackendError> {
        self.vault
            .clone()
            .ok_or_else(|| BackendError::NotConfigured {
                policy: policy.to_owned(),
                what: "Vault",
                hint: "set VAULT_ADDR and a token or auth method",
            })
    }

    /// AWS Secrets Manager, for policy `policy`.
    ///
    /// # Errors
    /// This process has no AWS client.
    pub fn aws_for(&self, policy: &str) -> Result<&aws_sm::sdk::Client, BackendError> {
        self.aws
            .as_ref()
            .ok_or_else(|| BackendError::NotConfigured {
                policy: policy.to_owned(),
                what: "AWS Secrets Manager",
                hint: "set AWS_REGION and credentials (the standard AWS chain)",
            })
    }

    /// The store for `policy`.
    ///
    /// # Errors
    /// The store kind is not configured.
    pub fn store(&self, policy: &Policy) -> Result<Arc<dyn Store>, BackendError> {
        self.store_at(&policy.name, &policy.store)
    }

    /// The store at `spec`, on behalf of policy `name`.
    ///
    /// # Errors
    /// The store kind is not configured.
    pub fn store_at(&self, name: &str, spec: &StoreSpec) -> Result<Arc<dyn Store>, BackendError> {
        spec.kind().build(self, name)
    }

    /// The target for `policy`. A target with an admin credential reads it from the admin
    /// store at each use, so an admin password rotated elsewhere is picked up.
    ///
    /// # Errors
    /// The target's admin store is not configured.
    pub async fn target(&self, policy: &Policy) -> Result<Arc<dyn Target>, BackendError> {
        let kind = policy.target.kind();
        let admin = match kind.admin_store() {
            None => None,
            Some(at) => {
                let store = self.store_at(&policy.name, at)?;
                let at = at.to_string();
                let source = AdminFn(move || {
                    let store = store.clone();
                    let at = at.clone();
                    async move {
                        let current = store.current().await.map_err(|e| Box::new(e) as BoxError)?;
                        current
                            .map(|c| c.fields)
                            .ok_or_else(|| format!("no admin credential stored at {at}").into())
                    }
                });
                Some(Arc::new(source) as Arc<dyn AdminSource>)
            }
        };
        Ok(kind.build(admin, self))
    }
}

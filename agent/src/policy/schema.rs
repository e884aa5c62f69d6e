//! The policy file format as written, with source locations kept on every value that a
//! later check may reject, so the error can point at it.
//!
//! Unknown fields are errors everywhere (`deny_unknown_fields`): a typo such as `windw:`
//! must not silently fall back to a default.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

/// A value with the place it was written.
pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPolicy {
    pub api_version: S<String>,
    pub kind: S<String>,
    pub metadata: RawMetadata,
    pub spec: RawSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "labels and annotations are accepted for the user's own tooling"
)]
pub struct RawMetadata {
    pub name: S<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSpec {
    pub schedule: Option<S<String>>,
    pub every: Option<S<String>>,
    pub timezone: Option<S<String>>,
    pub window: Option<S<String>>,
    pub store: S<RawStore>,
    pub target: S<RawTarget>,
    pub generator: Option<RawGenerator>,
    #[serde(default)]
    pub distribute: Vec<RawDistribute>,
    pub max_attempts: Option<S<u32>>,
}

/// Where a value lives: the policy's store, or a reference to an admin credential.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum RawStore {
    VaultKv(RawVaultKv),
    AwsSecretsmanager(RawAws),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawVaultKv {
    pub mount: Option<S<String>>,
    pub path: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawAws {
    pub secret_id: S<String>,
    pub region: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum RawTarget {
    Generated(RawGenerated),
    Postgres(Box<RawPostgres>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGenerated {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawPostgres {
    pub host: S<String>,
    pub port: Option<S<u16>>,
    pub database: Option<S<String>>,
    pub admin: S<RawStore>,
    pub users: S<Vec<S<String>>>,
    pub strategy: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawGenerator {
    pub length: Option<S<u32>>,
    pub charset: Option<S<String>>,
    pub exclude: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDistribute {
    pub kubernetes: RawKubeSecret,
    #[serde(default)]
    pub restart: Vec<RawRestart>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawKubeSecret {
    pub namespace: S<String>,
    pub secret: S<String>,
    pub keys: S<BTreeMap<String, S<String>>>,
    #[serde(rename = "type")]
    pub secret_type: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRestart {
    pub kind: S<String>,
    pub name: S<String>,
}

//! The policy file format as written, with source locations kept on every value that a
//! later check may reject, so the error can point at it.
//!
//! Unknown fields are errors everywhere (`deny_unknown_fields`): a typo such as `windw:`
//! must not silently fall back to a default. The `store:` and `target:` parts are each
//! kind's own `Raw` (see `backends.rs`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::backends::{RawStore, RawTarget};

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

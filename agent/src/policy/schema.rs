//! The policy file format as written, with source locations kept on every value that a
//! later check may reject, so the error can point at it.
//!
//! Unknown fields are errors everywhere (`deny_unknown_fields`): a typo such as `windw:`
//! must not silently fall back to a default. The `store:` and `target:` parts are each
//! kind's own `Raw` (see `backends.rs`).
//!
//! The same types give the RotationPolicy CRD its schema (`crd.rs`): each `S<T>` field is
//! described as its `T` (`#[schemars(with = …)]`), under serde's own names.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::backends::{RawStore, RawTarget};

/// A value with the place it was written.
pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPolicy {
    #[schemars(with = "String")]
    pub api_version: S<String>,
    #[schemars(with = "String")]
    pub kind: S<String>,
    // In a RotationPolicy object `metadata` is Kubernetes' own ObjectMeta, which the API
    // server validates itself (a CRD's schema may not describe it).
    #[schemars(skip)]
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

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSpec {
    #[schemars(with = "Option<String>")]
    pub schedule: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub every: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub timezone: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub window: Option<S<String>>,
    #[schemars(with = "RawStore")]
    pub store: S<RawStore>,
    #[schemars(with = "RawTarget")]
    pub target: S<RawTarget>,
    pub generator: Option<RawGenerator>,
    #[serde(default)]
    pub distribute: Vec<RawDistribute>,
    #[schemars(with = "Option<u32>")]
    pub max_attempts: Option<S<u32>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawGenerator {
    #[schemars(with = "Option<u32>")]
    pub length: Option<S<u32>>,
    #[schemars(with = "Option<String>")]
    pub charset: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub exclude: Option<S<String>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDistribute {
    pub kubernetes: RawKubeSecret,
    #[serde(default)]
    pub restart: Vec<RawRestart>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawKubeSecret {
    #[schemars(with = "String")]
    pub namespace: S<String>,
    #[schemars(with = "String")]
    pub secret: S<String>,
    #[schemars(with = "BTreeMap<String, String>")]
    pub keys: S<BTreeMap<String, S<String>>>,
    #[serde(rename = "type")]
    #[schemars(with = "Option<String>")]
    pub secret_type: Option<S<String>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRestart {
    #[schemars(with = "String")]
    pub kind: S<String>,
    #[schemars(with = "String")]
    pub name: S<String>,
}

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

/// `spec:`, what to rotate, when, where the value lives and who gets it.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSpec {
    /// A cron schedule (`0 3 * * *`) on which rotations fall due; or give `every`.
    #[schemars(with = "Option<String>")]
    pub schedule: Option<S<String>>,
    /// An interval between rotations (`7d`, `12h`); or give `schedule`.
    #[schemars(with = "Option<String>")]
    pub every: Option<S<String>>,
    /// The IANA time zone a cron `schedule` is read in (default UTC).
    #[schemars(with = "Option<String>")]
    pub timezone: Option<S<String>>,
    /// Rotations start somewhere in `[due, due + window)` (at most 31d, shorter than the
    /// schedule's gaps).
    #[schemars(with = "Option<String>")]
    pub window: Option<S<String>>,
    /// Where the credential's versions live.
    #[schemars(with = "RawStore")]
    pub store: S<RawStore>,
    /// What the credential is for: the system whose password keyturn sets, or none.
    #[schemars(with = "RawTarget")]
    pub target: S<RawTarget>,
    /// How new values are made.
    pub generator: Option<RawGenerator>,
    /// Kubernetes Secrets to keep in step with the store, and workloads to restart.
    #[serde(default)]
    pub distribute: Vec<RawDistribute>,
    /// Attempts at setting and testing the new value before the rotation is reported failed
    /// (1 to 100, default 5).
    #[schemars(with = "Option<u32>")]
    pub max_attempts: Option<S<u32>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawGenerator {
    /// Length in characters (12 to 1024, default 32).
    #[schemars(with = "Option<u32>")]
    pub length: Option<S<u32>>,
    /// `alphanumeric` (default), `alphanumeric-symbols`, `hex` or `base64url`.
    #[schemars(with = "Option<String>")]
    pub charset: Option<S<String>>,
    /// Characters never to use.
    #[schemars(with = "Option<String>")]
    pub exclude: Option<S<String>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDistribute {
    /// The Secret.
    pub kubernetes: RawKubeSecret,
    /// Workloads (in the Secret's namespace) to restart once the Secret holds the new value.
    #[serde(default)]
    pub restart: Vec<RawRestart>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawKubeSecret {
    /// The Secret's namespace.
    #[schemars(with = "String")]
    pub namespace: S<String>,
    /// The Secret's name.
    #[schemars(with = "String")]
    pub secret: S<String>,
    /// Secret key → credential field (`username`, `password`, `value`).
    #[schemars(with = "BTreeMap<String, String>")]
    pub keys: S<BTreeMap<String, S<String>>>,
    /// The Secret's `type`, when keyturn creates it.
    #[serde(rename = "type")]
    #[schemars(with = "Option<String>")]
    pub secret_type: Option<S<String>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRestart {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    #[schemars(with = "String")]
    pub kind: S<String>,
    /// Its name.
    #[schemars(with = "String")]
    pub name: S<String>,
}

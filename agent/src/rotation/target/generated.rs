//! The `generated` target: no external system. The value is a random token or API key that
//! only the store and its readers know, so `set`, `test` and `revert` have nothing to do.

use async_trait::async_trait;
use keyturn_core::SecretValue;
use keyturn_core::vault::SecretData;

use std::sync::Arc;

use serde::Deserialize;

use super::{AdminSource, Target, TargetError};
use crate::backends::{Backends, TargetKind};
use crate::policy::Validator;

/// The field a generated credential is stored under.
pub const FIELD: &str = "value";

/// `generated: {}` as a policy writes it: nothing to configure.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Raw {}

/// A generated target, validated (there is nothing to validate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Spec;

impl Spec {
    /// Accepts `generated: {}`.
    #[allow(
        clippy::unnecessary_wraps,
        reason = "every kind's validate has this shape, so backends.rs dispatches uniformly"
    )]
    pub(crate) fn validate(_raw: &Raw, _v: &mut Validator<'_>, _field: &str) -> Option<Self> {
        Some(Self)
    }
}

impl TargetKind for Spec {
    fn fields(&self) -> &'static [&'static str] {
        &[FIELD]
    }

    fn build(&self, _admin: Option<Arc<dyn AdminSource>>, _b: &Backends) -> Arc<dyn Target> {
        Arc::new(Generated)
    }
}

/// A generated value.
#[derive(Debug, Clone, Copy, Default)]
pub struct Generated;

#[async_trait]
impl Target for Generated {
    fn describe(&self) -> String {
        "generated".into()
    }

    fn compose(&self, value: SecretValue, _current: Option<&SecretData>) -> SecretData {
        let mut d = SecretData::new();
        d.insert(FIELD, value);
        d
    }

    async fn set(&self, _pending: &SecretData) -> Result<(), TargetError> {
        Ok(())
    }

    async fn test(&self, pending: &SecretData) -> Result<(), TargetError> {
        // The one thing that can be checked: the stored credential has its value.
        match pending.get(FIELD) {
            Some(v) if !v.is_empty() => Ok(()),
            _ => Err(TargetError::Refused {
                target: self.describe(),
                what: "pending credential has no value".into(),
            }),
        }
    }

    async fn revert(
        &self,
        _current: Option<&SecretData>,
        _pending: &SecretData,
    ) -> Result<(), TargetError> {
        Ok(())
    }
}

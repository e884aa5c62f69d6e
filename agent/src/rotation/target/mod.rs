//! What a credential is for: the system whose password changes when keyturn rotates.
//!
//! One trait, [`Target`], one file per implementation. `set` and `test` must be idempotent:
//! after a crash the engine runs them again with the same PENDING value.

pub mod generated;
pub mod postgres;

use async_trait::async_trait;
use keyturn_core::SecretValue;
use keyturn_core::vault::SecretData;

/// Target failures. Names the target and the user, never a value.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The target system cannot be reached.
    #[error("{target}: unreachable: {cause}")]
    Unreachable {
        /// Which target.
        target: String,
        /// The transport's words.
        cause: String,
    },
    /// The target refused the change or the login.
    #[error("{target}: {what}")]
    Refused {
        /// Which target.
        target: String,
        /// What was refused, in words (no value).
        what: String,
    },
    /// The admin credential could not be obtained.
    #[error("{target}: admin credential: {cause}")]
    Admin {
        /// Which target.
        target: String,
        /// Why.
        cause: String,
    },
}

impl TargetError {
    /// Whether a later attempt may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

/// A system whose credential keyturn rotates.
#[async_trait]
pub trait Target: Send + Sync + std::fmt::Debug {
    /// For messages and audit records (`generated`, `postgres:127.0.0.1:5432/orders_a`).
    fn describe(&self) -> String;

    /// The fields of the next credential, given the new random `value` and the CURRENT one
    /// (alternating users pick the user not in use).
    fn compose(&self, value: SecretValue, current: Option<&SecretData>) -> SecretData;

    /// Makes the target accept `pending`. Idempotent.
    async fn set(&self, pending: &SecretData) -> Result<(), TargetError>;

    /// Proves `pending` works by logging in with it.
    async fn test(&self, pending: &SecretData) -> Result<(), TargetError>;

    /// Undoes `set` when a rotation is given up, so the CURRENT credential keeps working.
    /// A no-op where `set` never touched what CURRENT uses.
    async fn revert(
        &self,
        current: Option<&SecretData>,
        pending: &SecretData,
    ) -> Result<(), TargetError>;

    /// Break-glass revoke: makes every credential other than `current` useless, so no value
    /// issued before it still logs in. For alternating users that is the standby user's
    /// password, set to a random value nobody keeps. Returns what was invalidated, for the
    /// audit record; `None` where CURRENT is the only credential the target accepts.
    async fn invalidate_others(&self, current: &SecretData) -> Result<Option<String>, TargetError> {
        let _ = current;
        Ok(None)
    }
}

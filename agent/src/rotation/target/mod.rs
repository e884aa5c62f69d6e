//! What a credential is for: the system whose password changes when keyturn rotates.
//!
//! One trait, [`Target`], one file per implementation. `set` and `test` must be idempotent:
//! after a crash the engine runs them again with the same PENDING value.

pub mod generated;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod tls;
pub mod users;

use std::fmt;

use async_trait::async_trait;
use keyturn_core::SecretValue;
use keyturn_core::exit::{ExitCode, HasExitCode};
pub use keyturn_core::text::error_chain;
use keyturn_core::vault::SecretData;

/// Where a target's admin credential comes from.
///
/// It is asked again at every use, so an admin password rotated elsewhere (or by keyturn
/// itself) is picked up without a restart. A [`SecretData`] is a fixed source.
#[async_trait]
pub trait AdminSource: Send + Sync + fmt::Debug {
    /// The admin credential.
    ///
    /// # Errors
    /// Why it could not be read. The message names the store or path, never a value.
    async fn admin(&self) -> Result<SecretData, BoxError>;
}

#[async_trait]
impl AdminSource for SecretData {
    async fn admin(&self) -> Result<SecretData, BoxError> {
        Ok(self.clone())
    }
}

/// Why an [`AdminSource`] could not produce the credential.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An [`AdminSource`] from an async closure, e.g. one that reads the admin's store:
/// `AdminFn(move || { let v = vault.clone(); async move { Ok(v.kv2_read(m, p, None).await?.data) } })`.
pub struct AdminFn<F>(pub F);

impl<F> fmt::Debug for AdminFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminFn")
    }
}

#[async_trait]
impl<F, Fut> AdminSource for AdminFn<F>
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<SecretData, BoxError>> + Send,
{
    async fn admin(&self) -> Result<SecretData, BoxError> {
        (self.0)().await
    }
}

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

impl HasExitCode for TargetError {
    /// 69 for a target that cannot be reached; 1 for a refusal or an admin credential that
    /// could not be had (the command ran and the target said no).
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Unreachable { .. } => ExitCode::Unavailable,
            Self::Refused { .. } | Self::Admin { .. } => ExitCode::Failed,
        }
    }
}

/// `SCHEME:HOST:PORT`, an IPv6 host in brackets: how a networked target names itself in
/// messages and audit records.
#[must_use]
pub fn host_port(scheme: &str, host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("{scheme}:[{host}]:{port}")
    } else {
        format!("{scheme}:{host}:{port}")
    }
}

/// Runs `op` within `timeout`; past it the target `describe` names is
/// [`TargetError::Unreachable`].
///
/// # Errors
/// `op`'s error, or the timeout.
pub async fn bounded<T>(
    timeout: std::time::Duration,
    describe: impl FnOnce() -> String,
    op: impl Future<Output = Result<T, TargetError>>,
) -> Result<T, TargetError> {
    match tokio::time::timeout(timeout, op).await {
        Ok(r) => r,
        Err(_) => Err(TargetError::Unreachable {
            target: describe(),
            cause: format!("no answer within {}", humantime::format_duration(timeout)),
        }),
    }
}

/// The admin credential from `source`, checked to have a UTF-8 `username` and a non-empty
/// `password`, for the target `target` names.
///
/// # Errors
/// [`TargetError::Admin`] when it cannot be read or lacks either field.
pub async fn admin_credential(
    source: &dyn AdminSource,
    target: &str,
) -> Result<SecretData, TargetError> {
    let admin = source.admin().await.map_err(|e| TargetError::Admin {
        target: target.to_owned(),
        cause: error_chain(&*e),
    })?;
    let problem = if users::field_str(&admin, users::USERNAME).is_none() {
        Some("has no (UTF-8) username field")
    } else if admin.get(users::PASSWORD).is_none_or(|p| p.is_empty()) {
        Some("has no password field")
    } else {
        None
    };
    match problem {
        Some(cause) => Err(TargetError::Admin {
            target: target.to_owned(),
            cause: cause.into(),
        }),
        None => Ok(admin),
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

/// A loopback port held bound and never listened on, for the targets' "unreachable" tests.
/// A port merely found free could be taken by a server another test process starts
/// meanwhile; this one stays refused while the returned socket lives (it is bound without
/// `SO_REUSEADDR`, so nothing else can bind it).
#[cfg(test)]
pub(crate) fn closed_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

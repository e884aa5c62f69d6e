//! Rotation: the crash-safe protocol that replaces a credential.
//!
//! - [`engine`]: the state machine (create → set → test → finish), audit before every step,
//!   resume after a crash, fencing between processes.
//! - [`store`]: where versions and the in-flight state live (Vault KV v2, AWS Secrets
//!   Manager), one file each behind the [`store::Store`] trait.
//! - [`target`]: what the credential is for (generated values, PostgreSQL), one file each
//!   behind the [`target::Target`] trait.
//! - [`generate`]: new values from the OS CSPRNG.
//! - [`observer`]: what a running rotation tells the daemon (for RotationPolicy status).

pub mod engine;
pub mod generate;
pub mod observer;
pub mod store;
pub mod target;

pub use engine::{Engine, RotationError, RotationOutcome, Trigger};

impl keyturn_core::exit::HasExitCode for RotationError {
    /// A rotation that stopped with an error (one given up and rolled back is
    /// [`RotationOutcome::Failed`], exit 1, decided by the caller): the store's, the audit
    /// log's or the delivery's own code. Every variant happens after the login, so none is
    /// 64: a policy that distributes without a Kubernetes client is refused before any
    /// network call, so meeting it here is a bug (70).
    fn exit_code(&self) -> keyturn_core::exit::ExitCode {
        match self {
            Self::Store { source, .. } => source.exit_code(),
            Self::Audit { source, .. } => source.exit_code(),
            Self::Distribute { source, .. } => source.exit_code(),
            Self::NoSink { .. } => keyturn_core::exit::ExitCode::Software,
            // Only the daemon has a guard; its replica lost the right to act for now.
            Self::Fenced { .. } => keyturn_core::exit::ExitCode::Unavailable,
        }
    }
}

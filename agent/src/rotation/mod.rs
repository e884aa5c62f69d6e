//! Rotation: the crash-safe protocol that replaces a credential.
//!
//! - [`engine`]: the state machine (create → set → test → finish), audit before every step,
//!   resume after a crash, fencing between processes.
//! - [`store`]: where versions and the in-flight state live (Vault KV v2, AWS Secrets
//!   Manager), one file each behind the [`store::Store`] trait.
//! - [`target`]: what the credential is for (generated values, PostgreSQL), one file each
//!   behind the [`target::Target`] trait.
//! - [`generate`]: new values from the OS CSPRNG.

pub mod engine;
pub mod generate;
pub mod store;
pub mod target;

pub use engine::{Engine, RotationError, RotationOutcome, Trigger};

//! keyturn-core: what keyturn's binaries share.
//!
//! - [`secret`]: [`SecretValue`], the only type a secret's bytes live in.
//! - [`vault`]: Vault/OpenBao client construction from the `VAULT_*` environment, auth
//!   methods, KV v1/v2, retries.
//! - [`audit`]: the hash-chained audit trail, its sinks and its verifier.
//! - [`exit`]: the exit codes of every binary and the one precedence among them.
//! - [`process`]: how every binary starts: its logging and its answer to a refused command
//!   line.
//! - [`sys`]: the few process and filesystem facts keyturn checks (core dumps, tmpfs).
//! - [`text`]: outside text (names, paths, flag values, a server's words) made safe to print.
//! - [`tls`]: which root certificates TLS clients trust: the system's, else built-in ones.

pub mod audit;
pub mod config;
pub mod exit;
pub mod logfilter;
pub mod process;
pub mod secret;
pub mod sys;
pub mod text;
pub mod tls;
pub mod vault;

pub use secret::SecretValue;

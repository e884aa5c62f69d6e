//! Audit log options shared by the subcommands that touch secrets (`run`, `rotate`,
//! `break-glass`): flatten [`AuditLogArgs`] into their arguments and call
//! [`AuditLogArgs::open`] before any network call. The flag and variable names match
//! `keyturn-init`'s.

use std::path::PathBuf;

use clap::Args;
use keyturn_core::audit::{AuditError, AuditLog, AuditLogOptions, HmacKey, KeyError, KeySource};

use super::exit::{ExitCode, HasExitCode};

/// Where audit events go, and the key for their `value_hmac`.
#[derive(Debug, Clone, Default, Args)]
pub struct AuditLogArgs {
    /// Audit log file: JSON Lines, hash-chained, synced before each access goes ahead.
    #[arg(long = "audit-file", env = "KEYTURN_AUDIT_FILE", value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Also write audit events to stdout, for the cluster's log pipeline.
    #[arg(long = "audit-stdout", env = "KEYTURN_AUDIT_STDOUT")]
    pub stdout: bool,
    /// When the audit file is new, continue the chain from the last entry of this previous
    /// file (after rotating the log).
    #[arg(
        long = "audit-continue-from",
        env = "KEYTURN_AUDIT_CONTINUE_FROM",
        value_name = "PATH"
    )]
    pub continue_from: Option<PathBuf>,
    /// Key for `value_hmac`: a file of raw bytes or hex, at least 32 bytes. Without it, a
    /// per-install key under `KEYTURN_STATE_DIR` (or the XDG state directory) is used, with a
    /// warning.
    #[arg(
        long = "audit-hmac-key-file",
        env = "KEYTURN_AUDIT_HMAC_KEY_FILE",
        value_name = "PATH"
    )]
    pub hmac_key_file: Option<PathBuf>,
}

/// Errors opening the audit log from [`AuditLogArgs`].
#[derive(Debug, thiserror::Error)]
pub enum OpenAuditLogError {
    /// The HMAC key could not be loaded or created.
    #[error("audit: {0}")]
    Key(#[from] KeyError),
    /// The log could not be opened (including: neither a file nor stdout was chosen).
    #[error("audit: {0}")]
    Log(#[from] AuditError),
}

impl HasExitCode for OpenAuditLogError {
    /// The key's or the log's own code: 64 for configuration, 77 for a file the system
    /// denies, 74 for other I/O, 70 otherwise.
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Key(e) => e.exit_code(),
            Self::Log(e) => e.exit_code(),
        }
    }
}

impl AuditLogArgs {
    /// Loads the key and opens the log. Blocking (it reads the end of the audit file).
    ///
    /// # Errors
    /// [`OpenAuditLogError::Key`], or [`OpenAuditLogError::Log`] — among them
    /// [`AuditError::NoSinks`] when neither `--audit-file` nor `--audit-stdout` was given: the
    /// caller decides whether that means stdout.
    pub fn open(&self) -> Result<AuditLog, OpenAuditLogError> {
        let source = match &self.hmac_key_file {
            Some(path) => KeySource::File(path.clone()),
            None => KeySource::from_env()?,
        };
        let mut options = AuditLogOptions::new(HmacKey::from_source(&source)?);
        if let Some(file) = &self.file {
            options = options.file(file);
        }
        if self.stdout {
            options = options.stdout();
        }
        if let Some(previous) = &self.continue_from {
            options = options.continue_from(previous);
        }
        Ok(AuditLog::open(options)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_args_open_a_chained_file_with_the_given_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        std::fs::write(&key, [9u8; 32]).unwrap();
        let args = AuditLogArgs {
            file: Some(dir.path().join("audit.jsonl")),
            hmac_key_file: Some(key.clone()),
            ..AuditLogArgs::default()
        };
        let log = args.open().unwrap();
        assert_eq!(log.hmac_key().id(), HmacKey::load(&key).unwrap().id());
    }

    #[test]
    fn without_a_sink_the_caller_is_told() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        std::fs::write(&key, [9u8; 32]).unwrap();
        let args = AuditLogArgs {
            hmac_key_file: Some(key),
            ..AuditLogArgs::default()
        };
        let e = args.open().unwrap_err();
        assert!(
            matches!(e, OpenAuditLogError::Log(AuditError::NoSinks)),
            "{e:?}"
        );
        assert_eq!(e.exit_code(), 64);
    }

    #[test]
    fn a_short_key_file_is_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        std::fs::write(&key, "abcd").unwrap();
        let args = AuditLogArgs {
            stdout: true,
            hmac_key_file: Some(key),
            ..AuditLogArgs::default()
        };
        assert_eq!(args.open().unwrap_err().exit_code(), 64);
    }
}

//! `keyturn audit`: check, read and search the audit log.

use std::io;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use keyturn_core::audit::{HmacKey, KeyError, KeySource};

use super::exit::{ExitCode, HasExitCode};

pub mod search;
pub mod tail;
pub mod verify;

/// `keyturn audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check that audit files, given oldest first, form one unbroken keyed chain, under the
    /// audit key (and, with --anchor, that they still hold the head the writer recorded).
    ///
    /// Exits 0 and prints a summary when they do; exits 1 naming the first broken sequence
    /// number and its file:line when they do not (or when no entry has a MAC, unless
    /// --allow-unkeyed); 64 without the audit key; 66 when a file does not exist, 77 when it
    /// may not be read, 74 on other I/O errors.
    Verify(verify::VerifyArgs),
    /// Print audit entries readably, one line each.
    Tail(tail::TailArgs),
    /// Print the entries that match every filter given: policy, time, action, actor,
    /// rotation, or a value read from stdin (--value-hmac: who saw this secret?).
    ///
    /// Exits 0 when an entry matched, 1 when none did, 64 on a usage error, 66 when a file
    /// does not exist, 77 when it may not be read. Lines that are not entries are reported
    /// on stderr and skipped.
    Search(search::SearchArgs),
}

/// Runs an `audit` subcommand; returns the exit code.
#[must_use]
pub fn run(cmd: AuditCommand) -> ExitCode {
    let stdout = io::stdout();
    match cmd {
        AuditCommand::Verify(args) => verify::run(&args, &mut stdout.lock()),
        AuditCommand::Tail(args) => tail::run(&args, &mut stdout.lock()),
        AuditCommand::Search(args) => search::run(&args, &mut stdout.lock()),
    }
}

/// Errors of the `audit` subcommands (a broken chain is a result, not an error).
#[derive(Debug, thiserror::Error)]
pub enum AuditCliError {
    /// The file could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Reading the file failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file could not be watched for `--follow`.
    #[error("cannot watch {path} for new entries: {source}")]
    Watch {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Writing to stdout failed.
    #[error("cannot write to stdout: {source}")]
    Output {
        /// Why.
        source: io::Error,
    },
}

impl HasExitCode for AuditCliError {
    /// 66 for a file that does not exist, 77 for one that may not be read, 74 for other I/O
    /// errors (an input file: [`ExitCode::for_input_io`]).
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Open { source, .. } => ExitCode::for_input_io(source),
            _ => ExitCode::Io,
        }
    }
}

/// Why the audit key could not be had. Never holds any of the key.
#[derive(Debug, thiserror::Error)]
pub enum KeyLoadError {
    /// The key file given does not exist.
    #[error(
        "the audit HMAC key file {path} does not exist; give the key the log was written with \
         (--audit-hmac-key-file or KEYTURN_AUDIT_HMAC_KEY_FILE)"
    )]
    Missing {
        /// The key file.
        path: PathBuf,
    },
    /// No key file was given, and this install has no per-install key.
    #[error(
        "no audit HMAC key: give --audit-hmac-key-file or KEYTURN_AUDIT_HMAC_KEY_FILE (this \
         install has no per-install key)"
    )]
    NoKey,
    /// The key could not be loaded.
    #[error("{0}")]
    Key(#[from] KeyError),
}

impl HasExitCode for KeyLoadError {
    /// 64 for a key that is not there (configuration), else the key error's own.
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Missing { .. } | Self::NoKey => ExitCode::Usage,
            Self::Key(e) => e.exit_code(),
        }
    }
}

/// Loads the audit key from `file`, else this install's per-install key; never creates one (a
/// fresh key would match nothing).
pub(crate) fn load_key(file: Option<&Path>) -> Result<HmacKey, KeyLoadError> {
    let source = match file {
        Some(path) => KeySource::File(path.to_owned()),
        None => KeySource::from_env().map_err(|_| KeyLoadError::NoKey)?,
    };
    let (KeySource::File(path) | KeySource::PerInstall(path)) = &source;
    match HmacKey::load(path) {
        Ok(key) => {
            if matches!(source, KeySource::PerInstall(_)) {
                tracing::warn!(path = %path.display(), key_id = %key.id(), "no audit HMAC key file given: using this install's per-install key; a log written with another key does not match");
            }
            Ok(key)
        }
        Err(KeyError::Read { source: e, .. }) if e.kind() == io::ErrorKind::NotFound => {
            Err(match source {
                KeySource::File(path) => KeyLoadError::Missing { path },
                KeySource::PerInstall(_) => KeyLoadError::NoKey,
            })
        }
        Err(e) => Err(e.into()),
    }
}

//! `keyturn audit`: check, read and search the audit log.

use std::io;
use std::path::PathBuf;

use clap::Subcommand;

pub mod search;
pub mod tail;
pub mod verify;

/// `keyturn audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check that audit files, given oldest first, form one unbroken hash chain.
    ///
    /// Exits 0 and prints a summary when they do; exits 1 naming the first broken sequence
    /// number and its file:line when they do not; exits 74 when a file cannot be read.
    Verify(verify::VerifyArgs),
    /// Print audit entries readably, one line each.
    Tail(tail::TailArgs),
    /// Print the entries that match every filter given: policy, time, action, actor,
    /// rotation, or a value read from stdin (--value-hmac: who saw this secret?).
    ///
    /// Exits 0 when an entry matched, 1 when none did, 64 on a usage error, 66 when a file
    /// does not exist. Lines that are not entries are reported on stderr and skipped.
    Search(search::SearchArgs),
}

/// Runs an `audit` subcommand; returns the exit code.
#[must_use]
pub fn run(cmd: AuditCommand) -> u8 {
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

/// An input file does not exist (`EX_NOINPUT`).
pub(crate) const NO_INPUT: u8 = 66;

impl AuditCliError {
    /// The exit code: 66 for a file that does not exist, 77 for one that may not be read, 74
    /// for other I/O errors.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Open { source, .. } => match source.kind() {
                io::ErrorKind::NotFound => NO_INPUT,
                io::ErrorKind::PermissionDenied => super::exit::NO_PERMISSION,
                _ => super::exit::IO,
            },
            _ => super::exit::IO,
        }
    }
}

//! Where sealed lines go: the [`AuditSink`] trait and its implementations, one per file.

use std::io;
use std::path::PathBuf;

use super::chain::{ChainHead, LineError};

pub(crate) mod file;
mod stdout;

pub use file::FileSink;
pub use stdout::StdoutSink;

/// A destination for audit lines.
///
/// The log's writer thread calls [`AuditSink::write_durably`] with each batch and reports
/// success to the callers only when every sink has returned `Ok`, so an implementation must
/// not return before the bytes are as durable as it can make them.
pub trait AuditSink: Send + std::fmt::Debug {
    /// Names the sink in errors and logs, e.g. `file /var/log/keyturn/audit.jsonl`.
    fn name(&self) -> &str;

    /// The chain this sink already holds, if any: a file being continued. The log resumes
    /// from it.
    fn head(&self) -> Option<ChainHead> {
        None
    }

    /// Writes `lines` (whole lines, each ending in `\n`) and makes them durable.
    ///
    /// # Errors
    /// Any failure, partial writes included. The log then stops accepting events (see
    /// [`AuditLog`](super::AuditLog)), so the sink need not undo a partial write.
    fn write_durably(&mut self, lines: &[u8]) -> Result<(), SinkError>;
}

/// Errors opening or writing a sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Another process (or another log in this one) has the file open for writing.
    #[error(
        "audit file {path} is in use by another keyturn process; give each process its own audit file"
    )]
    InUse {
        /// The audit file.
        path: PathBuf,
    },
    /// The file could not be opened or created.
    #[error("cannot open audit file {path}: {source}")]
    Open {
        /// The audit file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The existing file could not be read to find where its chain ends, or its torn last line
    /// could not be cut off.
    #[error("cannot resume the audit chain in {path}: {source}")]
    Resume {
        /// The audit file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The last complete line of the existing file is not a valid entry (bad syntax, or its
    /// hash does not match its content), so there is no trustworthy place to continue from.
    #[error(
        "cannot continue the audit chain in {path}: its last complete line ({line}) {problem}; \
         run `keyturn audit verify` on it"
    )]
    CorruptTail {
        /// The audit file.
        path: PathBuf,
        /// Where the line is: `line N` when known, else `byte offset N`.
        line: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A line is longer than any entry keyturn writes, so the file is not an audit log.
    #[error("{path}: a line at byte offset {offset} is longer than {max} bytes; not an audit log")]
    LineTooLong {
        /// The audit file.
        path: PathBuf,
        /// Where the line ends (or where the search gave up).
        offset: u64,
        /// The limit.
        max: usize,
    },
    /// Writing failed (`ENOSPC`, `EIO`, a closed pipe, …).
    #[error("cannot write to audit sink {sink}: {source}")]
    Write {
        /// The sink's name.
        sink: String,
        /// Why.
        source: io::Error,
    },
    /// The data was written but could not be made durable (`fsync`/`fdatasync` failed).
    #[error("cannot sync audit sink {sink} to stable storage: {source}")]
    Sync {
        /// The sink's name.
        sink: String,
        /// Why.
        source: io::Error,
    },
}

impl SinkError {
    pub(crate) fn corrupt_tail(path: PathBuf, line: String, problem: &LineError) -> Self {
        Self::CorruptTail {
            path,
            line,
            problem: format!("is malformed: {problem}"),
        }
    }
}

//! Errors of the audit log: opening it and recording to it.

use std::path::PathBuf;
use std::sync::Arc;

use super::sink::SinkError;
use crate::exit::{ExitCode, HasExitCode};

/// Errors opening the [`AuditLog`](super::AuditLog) or recording an event. When
/// [`record`](super::AuditLog::record) returns one, the event is not vouched for and the access
/// it describes must not happen.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A sink could not be opened, or its existing chain could not be resumed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The previous file named by `continue_from` could not be read, or its last line is bad.
    #[error("cannot continue the audit chain from the previous file {path}: {source}")]
    ContinueFrom {
        /// The previous audit file.
        path: PathBuf,
        /// Why.
        source: SinkError,
    },
    /// The previous file ends in a torn line, so its last event is unknown.
    #[error(
        "cannot continue the audit chain from {path}: it ends in a torn line; open it as the \
         audit file once (which cuts the torn line off) or verify and repair it first"
    )]
    ContinueFromTorn {
        /// The previous audit file.
        path: PathBuf,
    },
    /// The previous file holds no events, so there is no hash to continue from.
    #[error("cannot continue the audit chain from {path}: it holds no events")]
    ContinueFromEmpty {
        /// The previous audit file.
        path: PathBuf,
    },
    /// No sink was configured; an audit log that writes nowhere would vouch for nothing.
    #[error("the audit log has no sink: configure a file or stdout")]
    NoSinks,
    /// Two file sinks hold different chains, so there is no single place to continue from.
    #[error(
        "audit sinks disagree on where the chain ends: {first} at seq {first_next_seq}, \
         {other} at seq {other_next_seq}"
    )]
    SinksDisagree {
        /// One sink.
        first: String,
        /// The seq it would continue at.
        first_next_seq: u64,
        /// Another sink.
        other: String,
        /// The seq that one would continue at.
        other_next_seq: u64,
    },
    /// The writer thread could not be started.
    #[error("cannot start the audit writer thread: {source}")]
    Spawn {
        /// Why.
        source: std::io::Error,
    },
    /// Writing the batch holding this event to a sink failed. The event may be partly or wholly
    /// on some sinks, but it was not vouched for: do not perform the access. The log is now
    /// poisoned (see [`AuditError::Poisoned`]).
    #[error("audit event seq {seq} was not recorded: {source}")]
    Write {
        /// The seq the event would have had.
        seq: u64,
        /// The sink that failed.
        sink: String,
        /// What failed; shared by every event of the batch.
        source: Arc<SinkError>,
    },
    /// An earlier write failed, and the log accepts no more events: after a failed write or
    /// `fsync` the file's content is unknown, so chaining more events onto it could hide a gap.
    /// Restarting keyturn reopens the file and resumes from what is really on disk.
    #[error(
        "the audit log stopped accepting events after writing seq {failed_seq} to {sink} failed; \
         restart keyturn to reopen it"
    )]
    Poisoned {
        /// The first seq of the batch whose write failed.
        failed_seq: u64,
        /// The sink that failed.
        sink: String,
    },
    /// The event could not be serialized (not expected to happen: every field is a string).
    #[error("audit event seq {seq} could not be encoded: {reason}")]
    Encode {
        /// The seq it would have had.
        seq: u64,
        /// serde_json's message.
        reason: String,
    },
    /// The chain has reached the largest sequence number.
    #[error("the audit chain has run out of sequence numbers")]
    SeqExhausted,
    /// The writer thread is gone (it panicked, or the log is shutting down).
    #[error("the audit log's writer has stopped")]
    Closed,
}

impl HasExitCode for AuditError {
    /// README's table: 77 when the operating system refused access to an audit file (or the
    /// previous one), 74 for every other sink and chain problem (a missing parent directory
    /// included), 64 for a configuration without sinks, 70 otherwise. Classified by the
    /// `io::ErrorKind` the sink error carries ([`ExitCode::for_io`]).
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::NoSinks => ExitCode::Usage,
            Self::Encode { .. } | Self::Spawn { .. } | Self::Closed => ExitCode::Software,
            Self::Sink(e) | Self::ContinueFrom { source: e, .. } => e.exit_code(),
            Self::Write { source, .. } => source.exit_code(),
            Self::ContinueFromTorn { .. }
            | Self::ContinueFromEmpty { .. }
            | Self::SinksDisagree { .. }
            | Self::Poisoned { .. }
            | Self::SeqExhausted => ExitCode::Io,
        }
    }
}

impl HasExitCode for SinkError {
    /// 77 for an I/O error the operating system refused for lack of permission (`EACCES`,
    /// `EPERM`), 74 for any other sink problem.
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Open { source, .. }
            | Self::Resume { source, .. }
            | Self::Write { source, .. }
            | Self::Sync { source, .. } => ExitCode::for_io(source),
            // The rest carry no I/O error: the file is in use, or is not a chain to continue.
            _ => ExitCode::Io,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn open_error(kind: io::ErrorKind) -> SinkError {
        SinkError::Open {
            path: "/var/log/keyturn/audit.jsonl".into(),
            source: io::Error::from(kind),
        }
    }

    #[test]
    fn a_denied_audit_file_is_77_and_a_missing_directory_74() {
        let denied = AuditError::Sink(open_error(io::ErrorKind::PermissionDenied));
        assert_eq!(denied.exit_code(), 77);
        let missing = AuditError::Sink(open_error(io::ErrorKind::NotFound));
        assert_eq!(missing.exit_code(), 74);
        let full = AuditError::Sink(SinkError::Write {
            sink: "file".into(),
            source: io::Error::from(io::ErrorKind::StorageFull),
        });
        assert_eq!(full.exit_code(), 74);
    }

    #[test]
    fn a_denied_previous_file_or_write_is_77_too() {
        let previous = AuditError::ContinueFrom {
            path: "/var/log/keyturn/audit.1.jsonl".into(),
            source: open_error(io::ErrorKind::PermissionDenied),
        };
        assert_eq!(previous.exit_code(), 77);
        let write = AuditError::Write {
            seq: 3,
            sink: "file".into(),
            source: Arc::new(SinkError::Sync {
                sink: "file".into(),
                source: io::Error::from(io::ErrorKind::PermissionDenied),
            }),
        };
        assert_eq!(write.exit_code(), 77);
    }

    #[test]
    fn the_rest_keep_their_codes() {
        assert_eq!(AuditError::NoSinks.exit_code(), 64);
        assert_eq!(AuditError::Closed.exit_code(), 70);
        let in_use = AuditError::Sink(SinkError::InUse { path: "/a".into() });
        assert_eq!(in_use.exit_code(), 74);
    }
}

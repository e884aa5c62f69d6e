//! The stdout sink, for the cluster's log pipeline (Fluent Bit, Vector, …). keyturn's own logs
//! go to stderr, so stdout carries audit lines only.

use std::io::{self, Write};
use std::os::fd::AsFd;

use super::{AuditSink, SinkError};

/// Writes each batch to standard output and flushes it.
///
/// When stdout is a regular file it is also `fdatasync`ed. Pipes, terminals and sockets cannot
/// be synced (`EINVAL`); for them, "durable" means handed to the kernel, and whatever reads the
/// pipe takes it from there.
#[derive(Debug)]
pub struct StdoutSink {
    out: io::Stdout,
}

impl StdoutSink {
    /// A sink on this process's stdout.
    #[must_use]
    pub fn new() -> Self {
        Self { out: io::stdout() }
    }
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self::new()
    }
}

impl AuditSink for StdoutSink {
    fn name(&self) -> &str {
        "stdout"
    }

    fn write_durably(&mut self, lines: &[u8]) -> Result<(), SinkError> {
        let write_err = |source| SinkError::Write {
            sink: "stdout".to_owned(),
            source,
        };
        let mut out = self.out.lock();
        out.write_all(lines).map_err(write_err)?;
        out.flush().map_err(write_err)?;
        match rustix::fs::fdatasync(self.out.as_fd()) {
            Ok(()) => Ok(()),
            // Not a file: a pipe, a terminal, a socket.
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::ROFS => Ok(()),
            Err(e) => Err(SinkError::Sync {
                sink: "stdout".to_owned(),
                source: e.into(),
            }),
        }
    }
}

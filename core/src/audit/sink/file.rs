//! The file sink: append, then `fdatasync`, per batch.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{AuditSink, SinkError};
use crate::audit::chain::{ChainHead, check_line};
use crate::audit::tail::{TailError, read_first_line, read_tail};

/// An append-only audit file, created with mode 0600.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    name: String,
    file: File,
    head: Option<ChainHead>,
}

impl FileSink {
    /// Opens `path` for appending, creating it (mode 0600, and syncing its directory) if it does
    /// not exist, and finds where the chain in it ends.
    ///
    /// **A torn last line is cut off.** Bytes after the last newline — a line a crash left half
    /// written — are truncated away, with a warning naming the file, the line and how many
    /// bytes went. That is safe because the log reports an event as recorded only once its
    /// whole line, newline included, is synced: a torn line is an event whose caller was never
    /// told it was recorded, so the access it describes did not happen. Refusing instead would
    /// block every secret access until someone edited the file by hand.
    ///
    /// **A bad last complete line is refused** ([`SinkError::CorruptTail`]): new events would
    /// chain to a line that cannot be trusted. Only the last line is checked here; `keyturn
    /// audit verify` checks the rest.
    ///
    /// Something that is not a regular file (`/dev/full`, a FIFO) is opened as is, and holds no
    /// chain.
    ///
    /// # Errors
    /// [`SinkError::Open`], [`SinkError::Resume`], [`SinkError::CorruptTail`],
    /// [`SinkError::LineTooLong`].
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, SinkError> {
        let path = path.into();
        let open_err = |source| SinkError::Open {
            path: path.clone(),
            source,
        };
        let mut opts = OpenOptions::new();
        opts.read(true).append(true).mode(0o600);
        let file = match opts.clone().create_new(true).open(&path) {
            Ok(file) => {
                // Make the new name itself durable, or a crash could lose the whole file.
                sync_dir(&path).map_err(open_err)?;
                file
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                opts.open(&path).map_err(open_err)?
            }
            Err(e) => return Err(open_err(e)),
        };
        let is_file = file.metadata().map_err(open_err)?.is_file();
        if is_file {
            // One writer per file: a second process appending to the same chain would fork it
            // (two events with one sequence number). The lock goes with the descriptor.
            use rustix::fs::{FlockOperation, flock};
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(SinkError::InUse { path: path.clone() });
                }
                Err(e) => return Err(open_err(e.into())),
            }
        }
        let name = format!("file {}", path.display());
        let mut sink = Self {
            path,
            name,
            file,
            head: None,
        };
        if is_file {
            sink.head = sink.resume()?;
        }
        Ok(sink)
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn resume(&mut self) -> Result<Option<ChainHead>, SinkError> {
        let (last, torn_at) = last_line(&self.file, &self.path)?;
        let describe = |seq: Option<u64>, offset: u64| line_label(&self.file, seq, offset);
        if let Some(torn_at) = torn_at {
            let len = self.file.metadata().map_err(|e| self.resume_err(e))?.len();
            let line = match &last {
                Some((checked, offset)) => next_line_label(&describe(Some(checked.seq), *offset)),
                None => "line 1".to_owned(),
            };
            tracing::warn!(
                path = %self.path.display(),
                %line,
                bytes = len - torn_at,
                "audit file ends in a torn line (a crash mid-write); truncating it: the event \
                 in it was never reported as recorded"
            );
            self.file.set_len(torn_at).map_err(|e| self.resume_err(e))?;
            self.file.sync_data().map_err(|e| self.resume_err(e))?;
        }
        let Some((checked, offset)) = last else {
            return Ok(None);
        };
        let corrupt = |problem: String| SinkError::CorruptTail {
            path: self.path.clone(),
            line: describe(Some(checked.seq), offset),
            problem,
        };
        if checked.computed != checked.stored {
            return Err(corrupt("does not match its hash (edited?)".to_owned()));
        }
        ChainHead::after(checked.seq, checked.stored)
            .map(Some)
            .ok_or_else(|| corrupt("has the largest possible seq".to_owned()))
    }

    fn resume_err(&self, source: io::Error) -> SinkError {
        SinkError::Resume {
            path: self.path.clone(),
            source,
        }
    }
}

type LastLine = (crate::audit::chain::CheckedLine, u64);

/// The last complete line of `file`, checked, with its offset; and where a torn line starts.
pub(crate) fn last_line(
    file: &File,
    path: &Path,
) -> Result<(Option<LastLine>, Option<u64>), SinkError> {
    let tail = read_tail(file, 1).map_err(|e| match e {
        TailError::Io(source) => SinkError::Resume {
            path: path.to_owned(),
            source,
        },
        TailError::LineTooLong { offset } => SinkError::LineTooLong {
            path: path.to_owned(),
            offset,
            max: crate::audit::tail::MAX_LINE_LEN,
        },
    })?;
    let last = match tail.lines.last() {
        None => None,
        Some(line) => match check_line(&line.bytes) {
            Ok(checked) => Some((checked, line.offset)),
            Err(e) => {
                return Err(SinkError::corrupt_tail(
                    path.to_owned(),
                    format!("byte offset {}", line.offset),
                    &e,
                ));
            }
        },
    };
    Ok((last, tail.torn_at))
}

/// `line N` from the seqs of the first and this line (exact when the file is intact), else
/// `byte offset N`.
pub(crate) fn line_label(file: &File, seq: Option<u64>, offset: u64) -> String {
    if offset == 0 {
        return "line 1".to_owned();
    }
    let first_seq = read_first_line(file)
        .ok()
        .flatten()
        .and_then(|l| check_line(&l).ok())
        .map(|c| c.seq);
    match (first_seq, seq) {
        (Some(first), Some(seq)) if seq > first => format!("line {}", seq - first + 1),
        _ => format!("byte offset {offset}"),
    }
}

fn next_line_label(label: &str) -> String {
    match label
        .strip_prefix("line ")
        .and_then(|n| n.parse::<u64>().ok())
    {
        Some(n) => format!("line {}", n + 1),
        None => format!("the line after {label}"),
    }
}

fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

impl AuditSink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn head(&self) -> Option<ChainHead> {
        self.head
    }

    fn write_durably(&mut self, lines: &[u8]) -> Result<(), SinkError> {
        self.file
            .write_all(lines)
            .map_err(|source| SinkError::Write {
                sink: self.name.clone(),
                source,
            })?;
        self.file.sync_data().map_err(|source| SinkError::Sync {
            sink: self.name.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_new_file_is_created_0600_with_no_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let sink = FileSink::open(&path).unwrap();
        assert_eq!(sink.head(), None);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(sink.name(), format!("file {}", path.display()));
    }

    #[test]
    fn a_file_whose_last_line_is_not_an_entry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "not an audit entry\n").unwrap();
        let e = FileSink::open(&path).unwrap_err();
        assert!(matches!(e, SinkError::CorruptTail { .. }), "{e:?}");
        assert!(e.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn dev_full_opens_as_a_sink_and_fails_to_write() {
        let mut sink = FileSink::open("/dev/full").unwrap();
        assert_eq!(sink.head(), None);
        let e = sink.write_durably(b"{}\n").unwrap_err();
        assert!(matches!(e, SinkError::Write { .. }), "{e:?}");
    }
}

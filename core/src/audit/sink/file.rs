//! The file sink: append, then `fdatasync`, per batch.
//!
//! Opening is careful because `--audit-file` is whatever path an operator typed: it never
//! follows a symlink, never adopts a file that is not a keyturn audit log, and the only thing
//! it ever cuts is the unterminated last line a crash can leave, when the chain before it
//! verifies and that line looks like the start of the next entry.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use super::{AuditSink, SinkError};
use crate::audit::chain::{ChainHead, check_line};
use crate::audit::tail::{TailError, read_first_line, read_tail};
use crate::audit::verify::{BreakKind, VerifyFailure, verify};

/// Why an existing path was not taken as an audit file. It travels as the source of the
/// `io::Error` in [`SinkError::Open`] (a symlink) or [`SinkError::Resume`] (the content);
/// [`Refusal::of`] finds it there. It never holds any of the file's bytes: a file that is not
/// an audit log may be a token or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The path is a symbolic link.
    #[error(
        "it is a symbolic link, and keyturn does not follow one to its audit file (give the \
         path of the file itself)"
    )]
    Symlink,
    /// The file holds something other than a keyturn audit log.
    #[error(
        "it is not a keyturn audit log ({why}); keyturn neither appends to nor truncates such \
         a file, and left it unchanged"
    )]
    NotAnAuditLog {
        /// What gave it away, in terms of lines, never of content.
        why: &'static str,
    },
    /// The file ends in an unterminated line, and cutting it off could destroy evidence.
    #[error(
        "it ends in an unterminated line at byte offset {offset}, and {why}; keyturn cuts off \
         only a torn entry after a chain that verifies, and left the file unchanged (check it \
         with `keyturn audit verify`)"
    )]
    UnsafeRepair {
        /// Where the unterminated line starts.
        offset: u64,
        /// Why it is not cut, in terms of lines and sequence numbers, never of content.
        why: String,
    },
}

impl Refusal {
    /// The refusal inside `e`, if `e` is one. (Tests only so far: callers map every sink
    /// error to one exit code, and the message says which refusal it is.)
    #[cfg(test)]
    #[must_use]
    pub(crate) fn of(e: &SinkError) -> Option<&Refusal> {
        match e {
            SinkError::Open { source, .. } | SinkError::Resume { source, .. } => {
                source.get_ref()?.downcast_ref::<Refusal>()
            }
            _ => None,
        }
    }

    fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}

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
    /// **A symlink is refused** ([`Refusal::Symlink`]): `O_NOFOLLOW`, so a link planted where
    /// the audit file should be cannot point keyturn at another file to append to or cut.
    ///
    /// **A file that is not an audit log is refused** ([`Refusal::NotAnAuditLog`]): a non-empty
    /// file whose first line is not an audit entry, or that has no complete line and does not
    /// start like one. It is left byte for byte as it was.
    ///
    /// **A torn last line is cut off, and nothing else.** Bytes after the last newline — a
    /// line a crash left half written — are truncated away, with a warning naming the file,
    /// the line and how many bytes went. That is safe because the log reports an event as
    /// recorded only once its whole line, newline included, is synced: a torn line is an event
    /// whose caller was never told it was recorded, so the access it describes did not happen.
    /// Refusing instead would block every secret access until someone edited the file by hand.
    /// But only when it is plausibly that: the unterminated bytes must be the start of an
    /// entry in the writer's layout with the next `seq`, and the whole chain before them must
    /// verify. Otherwise the file is refused unchanged ([`Refusal::UnsafeRepair`]).
    ///
    /// **A bad last complete line is refused** ([`SinkError::CorruptTail`]): new events would
    /// chain to a line that cannot be trusted. Without a torn line only the first and last
    /// lines are checked here; `keyturn audit verify` checks the rest.
    ///
    /// Something that is not a regular file (`/dev/full`, a FIFO) is opened as is, and holds no
    /// chain.
    ///
    /// # Errors
    /// [`SinkError::Open`] (with a [`Refusal::Symlink`] inside for a symlink),
    /// [`SinkError::InUse`], [`SinkError::Resume`] (with a [`Refusal`] inside for a file that
    /// is not an audit log or whose torn line is not cut), [`SinkError::CorruptTail`],
    /// [`SinkError::LineTooLong`].
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, SinkError> {
        let path = path.into();
        let open_err = |source| SinkError::Open {
            path: path.clone(),
            source,
        };
        let file = open_no_follow(&path).map_err(open_err)?;
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
        if let Some((checked, offset)) = &last
            && checked.computed != checked.stored
        {
            return Err(SinkError::CorruptTail {
                path: self.path.clone(),
                line: describe(Some(checked.seq), *offset),
                problem: "does not match its hash (edited?)".to_owned(),
            });
        }
        let head = match &last {
            None => None,
            Some((checked, offset)) => Some(
                ChainHead::after(checked.seq, checked.stored).ok_or_else(|| {
                    SinkError::CorruptTail {
                        path: self.path.clone(),
                        line: describe(Some(checked.seq), *offset),
                        problem: "has the largest possible seq".to_owned(),
                    }
                })?,
            ),
        };
        if let Some(torn_at) = torn_at {
            let line = match &last {
                Some((checked, offset)) => next_line_label(&describe(Some(checked.seq), *offset)),
                None => "line 1".to_owned(),
            };
            self.cut_torn_line(torn_at, head, &line)?;
        }
        Ok(head)
    }

    /// Cuts the file at `torn_at`, after checking that what goes is a torn entry: the start of
    /// the entry that would follow `head`, after a chain that verifies from the first line.
    fn cut_torn_line(
        &self,
        torn_at: u64,
        head: Option<ChainHead>,
        line: &str,
    ) -> Result<(), SinkError> {
        let refuse = |why: String| {
            self.resume_err(
                Refusal::UnsafeRepair {
                    offset: torn_at,
                    why,
                }
                .into_io(),
            )
        };
        let len = self.file.metadata().map_err(|e| self.resume_err(e))?.len();
        // `read_tail` found the torn line shorter than `MAX_LINE_LEN`; it can only have
        // changed since if something other than keyturn is writing the file.
        let torn_len = len
            .checked_sub(torn_at)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n <= crate::audit::tail::MAX_LINE_LEN)
            .ok_or_else(|| refuse("the file changed while it was being checked".to_owned()))?;
        let mut torn = vec![0u8; torn_len];
        self.file
            .read_exact_at(&mut torn, torn_at)
            .map_err(|e| self.resume_err(e))?;
        let next_seq = head.map(|h| h.next_seq);
        if !plausible_torn_entry(&torn, next_seq) {
            return Err(match next_seq {
                None => self.resume_err(
                    Refusal::NotAnAuditLog {
                        why: "it holds no complete line, and does not start like an audit entry",
                    }
                    .into_io(),
                ),
                Some(seq) => refuse(format!(
                    "it is not the start of the next audit entry (seq {seq})"
                )),
            });
        }
        if let Some(head) = head {
            self.check_chain_before(torn_at, head).map_err(refuse)?;
        }
        // Nothing else may have been appended meanwhile (the lock keeps keyturn writers out,
        // not others): cutting at `torn_at` must remove exactly the bytes checked.
        let now = self.file.metadata().map_err(|e| self.resume_err(e))?.len();
        if now != len {
            return Err(refuse(format!(
                "the file grew from {len} to {now} bytes while it was being checked"
            )));
        }
        tracing::warn!(
            path = %self.path.display(),
            %line,
            bytes = len - torn_at,
            "audit file ends in a torn line (a crash mid-write); truncating it: the event \
             in it was never reported as recorded"
        );
        self.file.set_len(torn_at).map_err(|e| self.resume_err(e))?;
        self.file.sync_data().map_err(|e| self.resume_err(e))
    }

    /// Verifies every complete line of the file as one chain ending at `head`. The error says
    /// where it breaks, in line numbers and sequence numbers only.
    fn check_chain_before(&self, torn_at: u64, head: ChainHead) -> Result<(), String> {
        // Through this process's own descriptor, not the path: what is verified is exactly
        // what would be cut, even if the path was renamed or replaced since it was opened.
        let fd_path = PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()));
        let report = verify(std::slice::from_ref(&fd_path));
        let at_torn_line = match &report.failure {
            // The verifier reads the file to its end, so it stops at the torn line itself.
            Some(VerifyFailure::Broken(b)) if b.kind == BreakKind::TornLine => Ok(()),
            Some(VerifyFailure::Broken(b)) => Err(format!(
                "the chain before it does not verify: line {} {}",
                b.line,
                break_without_content(&b.kind)
            )),
            Some(VerifyFailure::Unreadable(e)) => Err(format!(
                "the chain before it could not be read to verify it: {}",
                e.to_string().replace(
                    &fd_path.display().to_string(),
                    &self.path.display().to_string()
                )
            )),
            None => Err(format!(
                "the file changed while it was being checked (no torn line at byte offset \
                 {torn_at} any more)"
            )),
        };
        at_torn_line?;
        match report.last_seq.zip(report.last_hash) {
            Some((seq, hash)) if ChainHead::after(seq, hash) == Some(head) => Ok(()),
            _ => Err("the file changed while it was being checked".to_owned()),
        }
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
///
/// A file with complete lines whose first line is not an audit entry is refused as
/// [`Refusal::NotAnAuditLog`] before its last line is looked at, so that the error describes
/// no line of it: a line of a file that is not an audit log may be a secret.
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
    if !tail.lines.is_empty() {
        check_first_line(file, path)?;
    }
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

/// Opens `path` read-write for appending without following a symlink at its last component:
/// creates it (mode 0600, and its directory entry synced) if nothing is there.
fn open_no_follow(path: &Path) -> io::Result<File> {
    let flags = OFlags::RDWR | OFlags::APPEND | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let created = rustix::fs::open(
        path,
        flags | OFlags::CREATE | OFlags::EXCL,
        Mode::from_raw_mode(0o600),
    );
    let fd = match created {
        Ok(fd) => {
            // Make the new name itself durable, or a crash could lose the whole file.
            sync_dir(path)?;
            fd
        }
        // `O_EXCL` fails on any existing name, a symlink included (dangling or not).
        Err(rustix::io::Errno::EXIST) => match rustix::fs::open(path, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::LOOP)
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) =>
            {
                return Err(Refusal::Symlink.into_io());
            }
            Err(e) => return Err(e.into()),
        },
        Err(e) => return Err(e.into()),
    };
    Ok(File::from(fd))
}

/// Refuses a file whose first line is not an audit entry. A file that holds an audit log
/// starts with one whatever else happened to it, so this tells a log that needs attention
/// (`CorruptTail`, `keyturn audit verify`) from a file that was never one.
fn check_first_line(file: &File, path: &Path) -> Result<(), SinkError> {
    let first = read_first_line(file).map_err(|source| SinkError::Resume {
        path: path.to_owned(),
        source,
    })?;
    match first {
        Some(line) if check_line(&line).is_ok() => Ok(()),
        _ => Err(SinkError::Resume {
            path: path.to_owned(),
            source: Refusal::NotAnAuditLog {
                why: "its first line is not an audit entry",
            }
            .into_io(),
        }),
    }
}

/// The fixed start of every line the writer writes, up to the `seq` digits; `0` stands for
/// any digit (the template has no literal zero).
const ENTRY_START: &[u8] = b"{\"time\":\"0000-00-00T00:00:00.000Z\",\"seq\":";

/// Whether `torn` (bytes after the last newline) can be the start of the entry a crash
/// interrupted: a prefix of `{"time":"<timestamp>","seq":<next_seq>,`, then JSON text, which
/// the writer escapes so that it holds no control byte, in UTF-8 that may stop mid-character.
/// `next_seq` is `None` when the file holds no complete entry, so any `seq` may come next.
fn plausible_torn_entry(torn: &[u8], next_seq: Option<u64>) -> bool {
    let fixed = torn.len().min(ENTRY_START.len());
    let start_ok = torn[..fixed].iter().zip(ENTRY_START).all(|(b, t)| {
        if *t == b'0' {
            b.is_ascii_digit()
        } else {
            b == t
        }
    });
    if !start_ok {
        return false;
    }
    let rest = &torn[fixed..];
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let seq_ok = match next_seq {
        Some(seq) => {
            let want = format!("{seq},");
            let n = rest.len().min(want.len());
            rest[..n] == want.as_bytes()[..n]
        }
        None => digits == rest.len() || (digits > 0 && rest[digits] == b','),
    };
    let text_ok = match std::str::from_utf8(rest) {
        Ok(_) => true,
        // Invalid only because the crash cut a multi-byte character short.
        Err(e) => e.error_len().is_none(),
    };
    seq_ok && text_ok && !rest.iter().any(|b| *b < 0x20)
}

/// What is wrong at a chain break, without the malformed line's parse error (which can quote
/// the line).
fn break_without_content(kind: &BreakKind) -> String {
    match kind {
        BreakKind::HashMismatch { .. } => "does not match its hash (edited?)".to_owned(),
        BreakKind::SeqMismatch { expected, found } => {
            format!("has seq {found} where seq {expected} was expected")
        }
        BreakKind::PrevMismatch { .. } => {
            "does not link to the entry before it (prev is not its hash)".to_owned()
        }
        BreakKind::Malformed(_) => "is not an audit entry".to_owned(),
        other => other.to_string(),
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

    /// Opening `path` fails with a refusal whose message names the path and holds none of
    /// `secret`, and the file at `path` (or the one it links to) keeps `content` exactly.
    fn assert_refused(path: &Path, kept: &Path, content: &[u8], secret: &str) -> Refusal {
        let e = FileSink::open(path).unwrap_err();
        let refusal = Refusal::of(&e)
            .unwrap_or_else(|| panic!("not a refusal: {e:?}"))
            .clone();
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(
            !msg.contains(secret) && !format!("{e:?}").contains(secret),
            "{msg}"
        );
        assert_eq!(
            std::fs::read(kept).unwrap(),
            content,
            "the file was changed"
        );
        refusal
    }

    #[test]
    fn a_file_whose_only_line_is_not_an_entry_is_refused_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "DB_PASSWORD=canary-env-1c2d\n").unwrap();
        let r = assert_refused(&path, &path, b"DB_PASSWORD=canary-env-1c2d\n", "canary-env");
        assert!(matches!(r, Refusal::NotAnAuditLog { .. }), "{r:?}");
    }

    #[test]
    fn a_token_file_without_a_newline_is_refused_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let token = "hvs.CAES-canary-token-3f9a";
        std::fs::write(&path, token).unwrap();
        let r = assert_refused(&path, &path, token.as_bytes(), token);
        assert!(matches!(r, Refusal::NotAnAuditLog { .. }), "{r:?}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), token.len() as u64);
    }

    #[test]
    fn a_json_file_is_refused_without_quoting_it() {
        // Ends like an entry, so only a parse error would tell it from one — and serde_json's
        // error would quote the string where a number belongs.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds.json");
        let secret = "canary-json-secret-77e1";
        let content = format!(
            "{{\"seq\":\"{secret}\",\"prev\":\"{z}\",\"hash\":\"{z}\"}}\n",
            z = "0".repeat(64)
        );
        std::fs::write(&path, &content).unwrap();
        let r = assert_refused(&path, &path, content.as_bytes(), secret);
        assert!(matches!(r, Refusal::NotAnAuditLog { .. }), "{r:?}");
    }

    #[test]
    fn a_symlink_is_refused_and_its_target_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("token");
        let token = "hvs.CAES-canary-token-symlinked";
        std::fs::write(&target, token).unwrap();
        let link = dir.path().join("audit.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let r = assert_refused(&link, &target, token.as_bytes(), token);
        assert_eq!(r, Refusal::Symlink);
        let e = FileSink::open(&link).unwrap_err();
        assert!(matches!(e, SinkError::Open { .. }), "{e:?}");
        assert!(e.to_string().contains("symbolic link"), "{e}");

        // A dangling one too: nothing is created where it points.
        let nowhere = dir.path().join("nowhere");
        let dangling = dir.path().join("dangling.jsonl");
        std::os::unix::fs::symlink(&nowhere, &dangling).unwrap();
        let e = FileSink::open(&dangling).unwrap_err();
        assert_eq!(Refusal::of(&e), Some(&Refusal::Symlink), "{e:?}");
        assert!(!nowhere.exists());
    }

    #[test]
    fn a_symlinked_directory_above_the_file_is_followed() {
        // O_NOFOLLOW guards the file itself; /var/log being a link is an ordinary setup.
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("logs")).unwrap();
        FileSink::open(dir.path().join("logs/audit.jsonl")).unwrap();
        assert!(real.join("audit.jsonl").exists());
    }

    #[test]
    fn an_existing_empty_file_is_taken_as_a_new_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "").unwrap();
        assert_eq!(FileSink::open(&path).unwrap().head(), None);
    }

    #[test]
    fn a_torn_entry_is_recognised_by_its_start_and_seq() {
        let line = format!(
            "{{\"time\":\"2025-01-31T03:00:00.123Z\",\"seq\":42,\"actor\":{{\"kind\":\"agent\",\
             \"name\":\"k\u{e9}\"}},\"prev\":\"{}\"",
            "0".repeat(64)
        );
        let b = line.as_bytes();
        for cut in 0..b.len() {
            assert!(plausible_torn_entry(&b[..cut], Some(42)), "cut at {cut}");
            assert!(plausible_torn_entry(&b[..cut], None), "cut at {cut}");
        }
        // The seq must be the next one, when there is a chain to follow.
        let seq_at = ENTRY_START.len();
        assert!(!plausible_torn_entry(&b[..seq_at + 3], Some(4)));
        assert!(!plausible_torn_entry(&b[..seq_at + 3], Some(420)));
        assert!(plausible_torn_entry(&b[..seq_at + 2], Some(420)));
        for foreign in [
            &b"hvs.CAES"[..],
            b"{\"token\":\"x\"",
            b"{\"time\":\"yesterday",
            b"{\"time\":\"2025-01-31T03:00:00.123Z\",\"seq\":x",
            b"{\"time\":\"2025-01-31T03:00:00.123Z\",\"seq\":1,\"a\":\"\x01",
            b"{\"time\":\"2025-01-31T03:00:00.123Z\",\"seq\":1,\"a\":\"\xff\xfe!",
        ] {
            assert!(
                !plausible_torn_entry(foreign, None),
                "{}",
                String::from_utf8_lossy(foreign)
            );
        }
    }

    #[test]
    fn dev_full_opens_as_a_sink_and_fails_to_write() {
        let mut sink = FileSink::open("/dev/full").unwrap();
        assert_eq!(sink.head(), None);
        let e = sink.write_durably(b"{}\n").unwrap_err();
        assert!(matches!(e, SinkError::Write { .. }), "{e:?}");
    }
}

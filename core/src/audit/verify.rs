//! The verifier: streams one or more audit files, in order, and reports the first place the
//! chain breaks.
//!
//! Each line is checked for, in this order:
//!
//! 1. a newline at its end (else: torn, [`BreakKind::TornLine`]);
//! 2. the shape of an entry: `seq`, `prev`, and `hash` (then `mac`) last
//!    ([`BreakKind::Malformed`]);
//! 3. its hash: SHA-256 of the line's bytes with the `hash` and `mac` members cut out
//!    ([`BreakKind::HashMismatch`]: the entry was edited);
//! 4. its `mac`, when a key is given ([`VerifyOptions::key`]): HMAC-SHA-256 of the hash under
//!    the chain key ([`BreakKind::MacMismatch`]: the entry was edited and its hash recomputed,
//!    or it was written under another key); and that no entry after a keyed one lacks a `mac`
//!    ([`BreakKind::MacMissing`]);
//! 5. its `seq`: one more than the previous entry's, across files
//!    ([`BreakKind::SeqMismatch`]: an entry was deleted, inserted or moved);
//! 6. its `prev`: the previous entry's hash ([`BreakKind::PrevMismatch`]: an entry was replaced
//!    by another chain's, or files were given out of order).
//!
//! Only `seq`, `prev`, `hash` and `mac` are read, and in the writer's own layout they are read
//! at fixed places with no JSON parser; the other members are not decoded but hashed as the
//! bytes they are, never re-serialized (see [`chain`](super::chain)). So `verify` vouches for
//! the chain, not for the JSON of every member: a line whose middle is not JSON yet whose hash
//! and MAC match could only come from someone holding the key, and `keyturn audit tail` shows
//! it as not an entry. Lines in any other layout go through serde.
//!
//! Files are read in rounds of a few MiB; the lines of a round are checked (hash and MAC) on
//! all cores, then linked in order, so memory stays bounded however large the files are.
//!
//! # What is and is not protected
//!
//! - **With the key**, an edited, inserted, deleted, reordered or replaced entry is caught at
//!   its `seq`, even when the forger recomputed every hash: each MAC needs the key, and covers
//!   the whole chain before it through `prev`. So is a whole file replaced by a chain written
//!   under another key. Without the key ([`verify`]) the chain is only a hash chain, which
//!   anyone who can write the file can recompute.
//! - **Entries written before keyed chaining** (no `mac`) are reported as unkeyed
//!   ([`VerifyReport::first_keyed_seq`]): they were open to a rewrite until the first keyed
//!   entry was written after them, whose MAC covers them from then on.
//! - **A missing tail.** Deleting the last entries leaves a shorter chain whose every MAC is
//!   valid. Only an anchor kept elsewhere catches it: the head the writer recorded in its store
//!   ([`VerifyOptions::anchor`], see [`anchor`](super::anchor)), or the last hash and/or the
//!   count you expect.
//! - **A missing head.** A chain that does not start at `seq` 0 with `prev` all zeros is taken
//!   as the continuation of an earlier file, which is what it looks like when the first files
//!   (or first entries) are deleted. [`VerifyReport::start_prev`] says where it starts; give
//!   every file from the first to check it. An anchor older than the first entry given is
//!   reported ([`BreakKind::AnchorBeforeFiles`]).
//! - **Someone holding the key** can rewrite anything in the file; the anchor then still
//!   catches a rewrite of the anchored entry or what precedes it, unless they can also write
//!   the anchor's store.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::anchor::AnchorHead;
use super::chain::{
    ChainHash, ChainHead, ChainKey, CheckedLine, LineError, MacCheck, check_line_with,
};
use super::tail::MAX_LINE_LEN;

/// The key to check the MACs with, and optional anchors: facts about the chain kept somewhere
/// the files' writer cannot reach.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The chain key ([`HmacKey::chain_key`](super::HmacKey::chain_key)) of the audit key the
    /// files were written with. Without it, MACs are not checked and the chain vouches only
    /// that it is internally consistent.
    pub key: Option<ChainKey>,
    /// The hash the last entry must have.
    pub expect_last_hash: Option<ChainHash>,
    /// How many entries the files must hold together.
    pub expect_count: Option<u64>,
    /// A head the writer recorded outside the files: the entry at its `seq` must be in the
    /// files, with its hash.
    pub anchor: Option<AnchorHead>,
}

/// What the verifier found.
#[derive(Debug)]
pub struct VerifyReport {
    /// Entries that passed every check (those before the break, if there is one).
    pub events: u64,
    /// How many files were read to the end.
    pub files: usize,
    /// `seq` of the first entry.
    pub first_seq: Option<u64>,
    /// `seq` of the last entry that passed.
    pub last_seq: Option<u64>,
    /// `prev` of the first entry: all zeros when the files start a chain; otherwise they
    /// continue one whose earlier part was not given, and that link is not checked.
    pub start_prev: Option<ChainHash>,
    /// `hash` of the last entry that passed.
    pub last_hash: Option<ChainHash>,
    /// Of the entries that passed, how many carry a `mac` (checked when a key was given).
    pub keyed_events: u64,
    /// `seq` of the first entry that carries a `mac`. Entries before it were written before
    /// keyed chaining; `None` when no entry has one (an unkeyed chain, no protection against
    /// rewriting).
    pub first_keyed_seq: Option<u64>,
    /// Whether a key was given, so that every `mac` counted was checked.
    pub macs_checked: bool,
    /// Whether an anchor was given and its entry found in the files with its hash.
    pub anchor_matched: bool,
    /// Why verification stopped early, if it did.
    pub failure: Option<VerifyFailure>,
}

impl VerifyReport {
    /// Whether every file was read and the chain is unbroken.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.failure.is_none()
    }

    /// Entries that passed and carry no `mac`: written before keyed chaining.
    #[must_use]
    pub fn unkeyed_events(&self) -> u64 {
        self.events - self.keyed_events
    }
}

/// Why verification stopped.
#[derive(Debug)]
pub enum VerifyFailure {
    /// The chain is broken.
    Broken(ChainBreak),
    /// A file could not be read, so the chain could not be checked past it.
    Unreadable(VerifyError),
}

/// Errors reading the files (as opposed to finding them tampered with).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The file could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Reading failed partway.
    #[error("cannot read {path} (after line {line}): {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The last line read whole.
        line: u64,
        /// Why.
        source: io::Error,
    },
}

/// Where and how the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The first sequence number that cannot be vouched for: the `seq` expected at the broken
    /// line (for the very first line, the `seq` it claims, or 0 if it has none).
    pub seq: u64,
    /// The file.
    pub path: PathBuf,
    /// The line, from 1.
    pub line: u64,
    /// What is wrong.
    pub kind: BreakKind,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seq {} at {}:{}: {}",
            self.seq,
            self.path.display(),
            self.line,
            self.kind
        )
    }
}

/// What is wrong at a [`ChainBreak`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakKind {
    /// The line's hash does not match its content: the entry was edited.
    HashMismatch {
        /// The hash stored in the line.
        stored: ChainHash,
        /// The hash of its content.
        computed: ChainHash,
    },
    /// The line has another `seq` than the one expected: an entry before it was deleted
    /// (`found` is larger), or entries were reordered or inserted.
    SeqMismatch {
        /// The seq expected.
        expected: u64,
        /// The seq in the line.
        found: u64,
    },
    /// The line's `prev` is not the previous entry's hash.
    PrevMismatch {
        /// The previous entry's hash.
        expected: ChainHash,
        /// The `prev` in the line.
        found: ChainHash,
    },
    /// The line is not an audit entry.
    Malformed(LineError),
    /// A line longer than any entry.
    LineTooLong,
    /// The file ends without a newline: the last entry was cut short.
    TornLine,
    /// The last entry's hash is not the one expected: entries are missing from the end, or the
    /// chain was rewritten.
    LastHashMismatch {
        /// The anchor.
        expected: ChainHash,
        /// The last entry's hash.
        found: ChainHash,
    },
    /// The files hold another number of entries than expected.
    CountMismatch {
        /// The anchor.
        expected: u64,
        /// Entries found.
        found: u64,
    },
    /// The line's `mac` is not the MAC of its hash under the key given: the entry was edited
    /// and its hash recomputed (or inserted, or renumbered), or the log was written under
    /// another audit key. The MAC itself is never shown: a MAC computed under the key is what
    /// a forger lacks.
    MacMismatch {
        /// The id of the audit key the check used (not secret).
        key_id: String,
    },
    /// The line has no `mac`, though an entry before it had one: MACs were stripped, or a
    /// keyturn older than keyed chaining wrote after a newer one.
    MacMissing,
    /// The anchor's entry comes before the first entry given: the earliest entries are
    /// missing, or earlier files were not given.
    AnchorBeforeFiles {
        /// The anchored seq.
        anchor_seq: u64,
        /// The first seq in the files.
        first_seq: u64,
    },
    /// The files end before the anchor's entry: entries were deleted from the end (or the
    /// whole file was replaced by a shorter chain).
    AnchorBeyondEnd {
        /// The anchored seq.
        anchor_seq: u64,
        /// The last seq in the files, if any.
        last_seq: Option<u64>,
    },
    /// The entry at the anchor's seq has another hash than the one anchored: the log was
    /// replaced or rewritten up to there.
    AnchorHashMismatch {
        /// The anchored seq.
        anchor_seq: u64,
        /// The anchored hash.
        expected: ChainHash,
        /// The hash of the entry at that seq in the files.
        found: ChainHash,
    },
}

impl fmt::Display for BreakKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HashMismatch { stored, computed } => write!(
                f,
                "hash mismatch: the entry was altered (stored {stored}, content hashes to \
                 {computed})"
            ),
            Self::SeqMismatch { expected, found } if found > expected => write!(
                f,
                "found seq {found} where seq {expected} was expected: entries deleted or \
                 moved"
            ),
            Self::SeqMismatch { expected, found } => write!(
                f,
                "found seq {found} where seq {expected} was expected: entries inserted, \
                 repeated or moved"
            ),
            Self::PrevMismatch { expected, found } => write!(
                f,
                "prev {found} does not link to the previous entry's hash {expected}: the entry \
                 is from another chain, or files are out of order"
            ),
            Self::Malformed(e) => write!(f, "malformed entry: {e}"),
            Self::LineTooLong => write!(f, "line longer than {MAX_LINE_LEN} bytes"),
            Self::TornLine => write!(f, "torn line: the file ends in the middle of an entry"),
            Self::LastHashMismatch { expected, found } => write!(
                f,
                "the last entry's hash is {found}, not the expected {expected}: entries are \
                 missing from the end, or the chain was rewritten"
            ),
            Self::CountMismatch { expected, found } => {
                write!(f, "{found} entries where {expected} were expected")
            }
            Self::MacMismatch { key_id } => write!(
                f,
                "MAC mismatch: the entry was rewritten with its hash recomputed, or the log was \
                 written under another audit key than the one given (key id {key_id})"
            ),
            Self::MacMissing => write!(
                f,
                "no MAC on an entry after keyed ones: the chain's MACs were stripped (or a \
                 keyturn older than keyed chaining wrote here)"
            ),
            Self::AnchorBeforeFiles {
                anchor_seq,
                first_seq,
            } => write!(
                f,
                "the anchor records seq {anchor_seq}, but the files start at seq {first_seq}: \
                 entries are missing from the start, or earlier files were not given"
            ),
            Self::AnchorBeyondEnd {
                anchor_seq,
                last_seq: Some(last),
            } => write!(
                f,
                "truncated: the anchor records seq {anchor_seq}, but the files end at seq \
                 {last}: entries {}..={anchor_seq} were deleted from the end",
                last + 1
            ),
            Self::AnchorBeyondEnd {
                anchor_seq,
                last_seq: None,
            } => write!(
                f,
                "truncated: the anchor records seq {anchor_seq}, but the files hold no entries"
            ),
            Self::AnchorHashMismatch {
                anchor_seq,
                expected,
                found,
            } => write!(
                f,
                "the entry at seq {anchor_seq} has hash {found}, not the anchored {expected}: \
                 the log was replaced or rewritten"
            ),
        }
    }
}

/// Verifies `files`, in order, as one chain, without a key: the hash chain is checked, the MACs
/// are not (see [`verify_with`] and [`VerifyOptions::key`]). What this vouches for is that the
/// chain is consistent, which anyone able to write the files can make it.
#[must_use]
pub fn verify(files: &[PathBuf]) -> VerifyReport {
    verify_with(files, &VerifyOptions::default())
}

/// Verifies `files`, in order, as one chain, checking MACs under [`VerifyOptions::key`] when
/// given, then checks the anchors in `options`. Streams each file with a fixed-size buffer;
/// never holds more than a buffer's worth.
#[must_use]
pub fn verify_with(files: &[PathBuf], options: &VerifyOptions) -> VerifyReport {
    let mut v = Verifier {
        key: options.key.as_ref(),
        anchor: options.anchor,
        ..Verifier::default()
    };
    let mut failure = None;
    let mut last_place: Option<(PathBuf, u64)> = None;
    for path in files {
        match v.file(path) {
            Ok(lines) => {
                v.files += 1;
                last_place = Some((path.clone(), lines));
            }
            Err(f) => {
                failure = Some(f);
                break;
            }
        }
    }
    if failure.is_none() {
        let first_file = files.first().cloned().unwrap_or_default();
        failure = check_anchors(&v, options, first_file, last_place).map(VerifyFailure::Broken);
    }
    VerifyReport {
        events: v.events,
        files: v.files,
        first_seq: v.first_seq,
        last_seq: v.head.map(|h| h.next_seq - 1),
        start_prev: v.start_prev,
        last_hash: v.head.map(|h| h.prev),
        keyed_events: v.keyed_events,
        first_keyed_seq: v.first_keyed_seq,
        macs_checked: options.key.is_some(),
        anchor_matched: v.anchor_matched,
        failure,
    }
}

/// The checks that can only be made once every file is read: the writer's anchor, then the
/// expected count and last hash.
fn check_anchors(
    v: &Verifier<'_>,
    options: &VerifyOptions,
    first_file: PathBuf,
    last_place: Option<(PathBuf, u64)>,
) -> Option<ChainBreak> {
    let (path, line) = last_place.unwrap_or_default();
    let next_seq = v.head.map_or(0, |h| h.next_seq);
    let at = |seq, kind| ChainBreak {
        seq,
        path: path.clone(),
        line: line + 1,
        kind,
    };
    if let Some(anchor) = options.anchor
        && !v.anchor_matched
    {
        // The entry at the anchor's seq was not among those read: it is before or after them.
        return Some(match (v.first_seq, v.head) {
            (Some(first_seq), Some(_)) if anchor.seq < first_seq => ChainBreak {
                seq: anchor.seq,
                path: first_file,
                line: 1,
                kind: BreakKind::AnchorBeforeFiles {
                    anchor_seq: anchor.seq,
                    first_seq,
                },
            },
            (_, head) => at(
                next_seq,
                BreakKind::AnchorBeyondEnd {
                    anchor_seq: anchor.seq,
                    last_seq: head.map(|h| h.next_seq - 1),
                },
            ),
        });
    }
    if let Some(expected) = options.expect_count
        && expected != v.events
    {
        let seq = if v.events < expected {
            next_seq
        } else {
            v.first_seq.unwrap_or(0).saturating_add(expected)
        };
        let kind = BreakKind::CountMismatch {
            expected,
            found: v.events,
        };
        return Some(at(seq, kind));
    }
    if let Some(expected) = options.expect_last_hash {
        let found = v.head.map_or(ChainHash::GENESIS, |h| h.prev);
        if found != expected {
            return Some(at(
                next_seq,
                BreakKind::LastHashMismatch { expected, found },
            ));
        }
    }
    None
}

/// Bytes read per round. Each round's complete lines are checked in parallel, then linked in
/// order. (Small in tests, so that they cross rounds and split rounds over threads.)
const READ_BUF: usize = if cfg!(test) {
    64 * 1024
} else {
    4 * 1024 * 1024
};

/// Below this many bytes a round is checked on one thread: a thread would cost more than it
/// saves.
const PARALLEL_MIN: usize = if cfg!(test) { 16 * 1024 } else { 256 * 1024 };

/// The most threads used to check lines.
const MAX_THREADS: usize = 8;

#[derive(Debug, Default)]
struct Verifier<'k> {
    /// The key the MACs are checked with.
    key: Option<&'k ChainKey>,
    /// The entry that must be found, with its hash.
    anchor: Option<AnchorHead>,
    anchor_matched: bool,
    /// Where the next entry must go; `None` before the first entry.
    head: Option<ChainHead>,
    events: u64,
    keyed_events: u64,
    first_keyed_seq: Option<u64>,
    files: usize,
    first_seq: Option<u64>,
    start_prev: Option<ChainHash>,
}

impl Verifier<'_> {
    /// Checks one file; returns how many lines it has.
    ///
    /// Hashing and parsing a line depend on that line alone, so they run in parallel over a
    /// round of lines ([`check_lines`]); linking (`seq`, `prev`) then walks the results in
    /// order.
    fn file(&mut self, path: &Path) -> Result<u64, VerifyFailure> {
        let mut file = File::open(path).map_err(|source| {
            VerifyFailure::Unreadable(VerifyError::Open {
                path: path.to_owned(),
                source,
            })
        })?;
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .min(MAX_THREADS);
        // Room for a round of data plus the longest line carried over from the last one.
        let mut buf = vec![0u8; READ_BUF + MAX_LINE_LEN + 1];
        let mut filled = 0usize;
        let mut line_no = 0u64;
        let mut eof = false;
        let mut checked = Vec::new();
        loop {
            while filled < buf.len() && !eof {
                match file.read(&mut buf[filled..]) {
                    Ok(0) => eof = true,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        return Err(VerifyFailure::Unreadable(VerifyError::Read {
                            path: path.to_owned(),
                            line: line_no,
                            source,
                        }));
                    }
                }
            }
            let end = memchr::memrchr(b'\n', &buf[..filled]).map_or(0, |i| i + 1);
            check_lines(&buf[..end], self.key, &mut checked, threads);
            for result in checked.drain(..) {
                line_no += 1;
                self.line(result, path, line_no)?;
            }
            buf.copy_within(end..filled, 0);
            filled -= end;
            if filled > MAX_LINE_LEN {
                return Err(self.broken(path, line_no + 1, None, BreakKind::LineTooLong));
            }
            if eof {
                if filled > 0 {
                    return Err(self.broken(path, line_no + 1, None, BreakKind::TornLine));
                }
                return Ok(line_no);
            }
        }
    }

    /// Links one checked line onto the chain.
    fn line(
        &mut self,
        checked: Result<CheckedLine, LineError>,
        path: &Path,
        line_no: u64,
    ) -> Result<(), VerifyFailure> {
        let c = checked.map_err(|e| {
            let kind = match e {
                LineError::TooLong => BreakKind::LineTooLong,
                e => BreakKind::Malformed(e),
            };
            self.broken(path, line_no, None, kind)
        })?;
        if c.computed != c.stored {
            let kind = BreakKind::HashMismatch {
                stored: c.stored,
                computed: c.computed,
            };
            return Err(self.broken(path, line_no, Some(c.seq), kind));
        }
        match c.mac {
            MacCheck::Invalid => {
                let key_id = self.key.map(|k| k.key_id().to_owned()).unwrap_or_default();
                let kind = BreakKind::MacMismatch { key_id };
                return Err(self.broken(path, line_no, Some(c.seq), kind));
            }
            MacCheck::Absent if self.first_keyed_seq.is_some() => {
                return Err(self.broken(path, line_no, Some(c.seq), BreakKind::MacMissing));
            }
            MacCheck::Absent | MacCheck::Valid | MacCheck::Unchecked => {}
        }
        match self.head {
            None => {
                if c.prev.is_genesis() && c.seq != 0 {
                    let kind = BreakKind::SeqMismatch {
                        expected: 0,
                        found: c.seq,
                    };
                    return Err(self.broken(path, line_no, Some(0), kind));
                }
                self.first_seq = Some(c.seq);
                self.start_prev = Some(c.prev);
            }
            Some(head) => {
                if c.seq != head.next_seq {
                    let kind = BreakKind::SeqMismatch {
                        expected: head.next_seq,
                        found: c.seq,
                    };
                    return Err(self.broken(path, line_no, None, kind));
                }
                if c.prev != head.prev {
                    let kind = BreakKind::PrevMismatch {
                        expected: head.prev,
                        found: c.prev,
                    };
                    return Err(self.broken(path, line_no, None, kind));
                }
            }
        }
        if let Some(anchor) = self.anchor
            && anchor.seq == c.seq
        {
            if anchor.hash != c.stored {
                let kind = BreakKind::AnchorHashMismatch {
                    anchor_seq: anchor.seq,
                    expected: anchor.hash,
                    found: c.stored,
                };
                return Err(self.broken(path, line_no, Some(c.seq), kind));
            }
            self.anchor_matched = true;
        }
        self.head = Some(ChainHead::after(c.seq, c.stored).ok_or_else(|| {
            let e = LineError::NotAnEntry {
                reason: "seq is the largest possible".to_owned(),
            };
            self.broken(path, line_no, Some(c.seq), BreakKind::Malformed(e))
        })?);
        if c.mac != MacCheck::Absent {
            self.keyed_events += 1;
            self.first_keyed_seq.get_or_insert(c.seq);
        }
        self.events += 1;
        Ok(())
    }

    /// A break at `path:line`. Its seq is the one expected there; before the first entry, the
    /// one the line claims (`claimed`), or 0.
    fn broken(
        &self,
        path: &Path,
        line: u64,
        claimed: Option<u64>,
        kind: BreakKind,
    ) -> VerifyFailure {
        let seq = match self.head {
            Some(h) => h.next_seq,
            None => claimed.unwrap_or(0),
        };
        VerifyFailure::Broken(ChainBreak {
            seq,
            path: path.to_owned(),
            line,
            kind,
        })
    }
}

/// Checks each line of `data` (whole lines, each ending in `\n`), appending the results to
/// `out` in order. Splits `data` at line boundaries over up to `threads` threads.
fn check_lines(
    data: &[u8],
    key: Option<&ChainKey>,
    out: &mut Vec<Result<CheckedLine, LineError>>,
    threads: usize,
) {
    let each = |part: &[u8], out: &mut Vec<Result<CheckedLine, LineError>>| {
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', part) {
            // Refused whole, wherever it falls in the read buffer: otherwise a line a little
            // over the limit would pass or fail depending on its offset in the file.
            out.push(if nl - start > MAX_LINE_LEN {
                Err(LineError::TooLong)
            } else {
                check_line_with(&part[start..nl], key)
            });
            start = nl + 1;
        }
    };
    if threads <= 1 || data.len() < PARALLEL_MIN {
        each(data, out);
        return;
    }
    let mut bounds = vec![0];
    for k in 1..threads {
        let from = (data.len() * k / threads).max(bounds[k - 1]);
        let cut = memchr::memchr(b'\n', &data[from..]).map_or(data.len(), |i| from + i + 1);
        bounds.push(cut);
    }
    bounds.push(data.len());
    std::thread::scope(|scope| {
        let helpers: Vec<_> = bounds[1..]
            .windows(2)
            .map(|w| {
                let part = &data[w[0]..w[1]];
                scope.spawn(move || {
                    let mut v = Vec::new();
                    each(part, &mut v);
                    v
                })
            })
            .collect();
        each(&data[..bounds[1]], out);
        for helper in helpers {
            out.extend(
                helper
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p)),
            );
        }
    });
}

#[cfg(test)]
mod tests;

//! `keyturn audit tail FILE [-n N] [--follow]`: entries as readable lines.
//!
//! One line per entry: time, `#seq`, actor, action, resource, outcome (with its detail), and
//! the reason when there is one. Free text is escaped, so an entry cannot smuggle terminal
//! control sequences onto the screen. `tail` does not check the chain; `verify` does.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use keyturn_core::audit::tail::read_tail;
use keyturn_core::audit::{Actor, ActorKind, Entry};
use rustix::fs::inotify;

use super::AuditCliError;
use crate::cli::exit::{ExitCode, HasExitCode};

/// How often `--follow` looks for new entries when inotify is unavailable.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Arguments of `keyturn audit tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// The audit file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// How many of the last entries to print (0: none, e.g. to see only new ones with
    /// --follow).
    #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 10)]
    pub lines: usize,
    /// Keep running and print entries as they are appended.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

/// Prints the entries to `out`; returns the exit code (0, or 74 for I/O errors). A closed
/// stdout (`keyturn audit tail -f | head`) ends it quietly with 0.
pub fn run(args: &TailArgs, out: &mut impl Write) -> ExitCode {
    match tail(args, out) {
        Ok(()) => ExitCode::Ok,
        Err(AuditCliError::Output { source }) if source.kind() == io::ErrorKind::BrokenPipe => {
            ExitCode::Ok
        }
        Err(e) => {
            eprintln!("keyturn: {e}");
            e.exit_code()
        }
    }
}

fn tail(args: &TailArgs, out: &mut impl Write) -> Result<(), AuditCliError> {
    let path = &args.file;
    let file = File::open(path).map_err(|source| AuditCliError::Open {
        path: path.clone(),
        source,
    })?;
    // Watch before the first read, so nothing appended in between is missed.
    let watch = if args.follow {
        Watch::new(path)
    } else {
        Watch::None
    };

    let found = read_tail(&file, args.lines).map_err(|e| AuditCliError::Read {
        path: path.clone(),
        source: io::Error::other(e.to_string()),
    })?;
    let mut text = String::new();
    for line in &found.lines {
        render_line(&line.bytes, line.offset, &mut text);
    }
    emit(out, &text)?;
    if !args.follow {
        return Ok(());
    }

    // From here on, print every complete line past `pos`.
    let mut pos = found.torn_at.unwrap_or(found.len);
    let mut watch = watch;
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        loop {
            let got = file
                .read_at(&mut chunk, pos + pending.len() as u64)
                .map_err(|source| AuditCliError::Read {
                    path: path.clone(),
                    source,
                })?;
            if got == 0 {
                break;
            }
            pending.extend_from_slice(&chunk[..got]);
        }
        if let Some(last_nl) = pending.iter().rposition(|b| *b == b'\n') {
            text.clear();
            let mut start = 0;
            for line in pending[..=last_nl].split_inclusive(|b| *b == b'\n') {
                render_line(&line[..line.len() - 1], pos + start as u64, &mut text);
                start += line.len();
            }
            emit(out, &text)?;
            pos += (last_nl + 1) as u64;
            pending.drain(..=last_nl);
        }
        let len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        if len < pos + pending.len() as u64 {
            // Truncated: a torn last line cut off when keyturn reopened the file.
            pending.clear();
            pos = pos.min(len);
        }
        watch.wait(path)?;
    }
}

fn emit(out: &mut impl Write, text: &str) -> Result<(), AuditCliError> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|source| AuditCliError::Output { source })
}

/// Appends one readable line for `bytes` (an entry's line, without its newline) to `out`.
fn render_line(bytes: &[u8], offset: u64, out: &mut String) {
    match Entry::parse(bytes) {
        Ok(e) => render_entry(&e, out),
        Err(e) => {
            let _ = writeln!(out, "?  not an audit entry (byte offset {offset}): {e}");
        }
    }
}

/// `time  #seq  actor  action  resource  outcome[ (detail)][  reason: "…"]`
pub fn render_entry(e: &Entry, out: &mut String) {
    let _ = write!(
        out,
        "{}  #{}  {}  {}  {}  {}",
        e.time_rfc3339(),
        e.seq,
        actor(&e.actor),
        clean(&e.action),
        clean(&e.resource),
        e.outcome.as_str(),
    );
    if let Some(d) = &e.detail {
        let _ = write!(out, " ({})", clean(d));
    }
    if let Some(r) = &e.reason {
        let _ = write!(out, "  reason: \"{}\"", clean(r));
    }
    out.push('\n');
}

fn actor(a: &Actor) -> String {
    let mut s = String::from(a.kind.as_str());
    s.push(' ');
    if a.kind == ActorKind::ServiceAccount
        && let Some(ns) = &a.namespace
    {
        let _ = write!(s, "{}/", clean(ns));
    }
    s.push_str(&clean(&a.name));
    if let Some(pod) = &a.pod {
        let _ = write!(s, " pod={}", clean(pod));
    }
    if a.kind != ActorKind::ServiceAccount
        && let Some(ns) = &a.namespace
    {
        let _ = write!(s, " ns={}", clean(ns));
    }
    if let Some(entity) = &a.entity {
        let _ = write!(s, " entity={}", clean(entity));
    }
    s
}

/// Escapes control characters (and `"` and `\`), leaving other text as it is.
fn clean(s: &str) -> Cow<'_, str> {
    if s.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
        Cow::Owned(s.escape_debug().to_string())
    } else {
        Cow::Borrowed(s)
    }
}

/// How `--follow` waits for the file to change.
enum Watch {
    /// Not following.
    None,
    /// inotify: blocks until the file is modified.
    Inotify(std::os::fd::OwnedFd),
    /// inotify is unavailable: sleep and look again.
    Poll,
}

impl Watch {
    fn new(path: &Path) -> Self {
        let watch = inotify::init(inotify::CreateFlags::CLOEXEC).and_then(|fd| {
            inotify::add_watch(
                &fd,
                path,
                inotify::WatchFlags::MODIFY | inotify::WatchFlags::ATTRIB,
            )?;
            Ok(fd)
        });
        match watch {
            Ok(fd) => Self::Inotify(fd),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "inotify unavailable; polling for new entries");
                Self::Poll
            }
        }
    }

    fn wait(&mut self, path: &Path) -> Result<(), AuditCliError> {
        match self {
            Self::None => Ok(()),
            Self::Poll => {
                std::thread::sleep(POLL_INTERVAL);
                Ok(())
            }
            Self::Inotify(fd) => {
                let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
                let mut reader = inotify::Reader::new(&*fd, &mut buf);
                // One read takes every event queued so far; the caller then reads to the end.
                reader.next().map(|_| ()).map_err(|e| AuditCliError::Watch {
                    path: path.to_owned(),
                    source: e.into(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyturn_core::audit::{ChainHash, Outcome};

    fn entry() -> Entry {
        Entry {
            time: "2025-01-31T03:00:00.123Z".parse().unwrap(),
            seq: 42,
            actor: Actor::service_account("shop", "orders-api").with_pod("orders-api-7f9c"),
            action: "secret.read".into(),
            resource: "secret/data/orders/db".into(),
            outcome: Outcome::Denied,
            detail: Some("403 from vault".into()),
            reason: Some("line one\nline two \u{1b}[31m".into()),
            request_id: None,
            rotation_id: None,
            value_hmac: None,
            field_hmacs: None,
            prev: ChainHash::GENESIS,
            hash: ChainHash::GENESIS,
            mac: None,
        }
    }

    #[test]
    fn an_entry_renders_as_one_readable_line() {
        let mut s = String::new();
        render_entry(&entry(), &mut s);
        assert_eq!(
            s,
            "2025-01-31T03:00:00.123Z  #42  service-account shop/orders-api pod=orders-api-7f9c  \
             secret.read  secret/data/orders/db  denied (403 from vault)  \
             reason: \"line one\\nline two \\u{1b}[31m\"\n"
        );
    }

    #[test]
    fn operators_show_their_entity() {
        let mut e = entry();
        e.actor = Actor::operator("alice").with_entity("ent-9");
        e.reason = None;
        e.detail = None;
        let mut s = String::new();
        render_entry(&e, &mut s);
        assert!(s.contains("  operator alice entity=ent-9  "), "{s}");
        assert!(s.ends_with("  denied\n"), "{s}");
    }
}

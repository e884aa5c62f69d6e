//! `keyturn audit search FILE... [filters]`: the entries that match, readably or as JSON lines.
//!
//! Filters AND together. `--value-hmac` answers the investigator's question "who saw this
//! secret?": it reads a suspected leaked value from stdin, computes its HMAC under the audit
//! key, and keeps the entries whose `value_hmac` is that HMAC. The value lives only in a
//! [`SecretValue`], read straight from file descriptor 0 (not through std's stdin buffer, which
//! would keep a copy), and is never printed or logged.
//!
//! Like grep, it exits 0 when something matched and 1 when nothing did. It does not check the
//! chain (`audit verify` does); a line that is not an entry is reported as `FILE:LINE: not an
//! audit event` on stderr, and the search goes on.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use clap::Args;
use keyturn_core::SecretValue;
use keyturn_core::audit::{Actor, ActorKind, Entry, HmacKey, KeyError};
use zeroize::Zeroizing;

use super::tail::render_entry;
use super::{AuditCliError, KeyLoadError};
use crate::cli::exit::{ExitCode, HasExitCode};

/// The largest value `--value-hmac` reads: a Kubernetes Secret's limit. Anything larger is not
/// a credential, and more likely the wrong file.
pub const MAX_VALUE_LEN: usize = 1024 * 1024;

/// Arguments of `keyturn audit search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Audit files to search, in the order given.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Only entries about this rotation policy (resource `policy/P`).
    #[arg(long, value_name = "P")]
    pub policy: Option<String>,
    /// Only entries at or after this time: RFC 3339 (`2025-01-31T03:00:00Z`) or a duration
    /// ago (`2h`, `7d`, `1h 30m`).
    #[arg(long, value_name = "T", value_parser = time_arg)]
    pub since: Option<DateTime<Utc>>,
    /// Only entries before this time: RFC 3339 or a duration ago, as for --since.
    #[arg(long, value_name = "T", value_parser = time_arg)]
    pub until: Option<DateTime<Utc>>,
    /// Only this action (`secret.read`), or the actions starting with what precedes a trailing
    /// `*` (`rotate.*`, `break-glass.*`).
    #[arg(long, value_name = "A")]
    pub action: Option<ActionPattern>,
    /// Only entries by this actor: a name, `namespace/name` for a service account, a pod name,
    /// or a Vault entity id.
    #[arg(long, value_name = "X")]
    pub actor: Option<String>,
    /// Only entries of this rotation.
    #[arg(long, value_name = "ID")]
    pub rotation_id: Option<String>,
    /// Read a value from stdin (one trailing newline is dropped) and keep only the entries that
    /// involved it: the ones whose value_hmac is its HMAC under the audit key. The value is
    /// never printed.
    #[arg(long)]
    pub value_hmac: bool,
    /// Print the matching entries as they are in the file (JSON Lines) instead of readably.
    #[arg(long)]
    pub json: bool,
    /// The audit HMAC key the log was written with (for --value-hmac): a file of raw bytes or
    /// hex. Without it, this install's per-install key, if there is one.
    #[arg(
        long = "audit-hmac-key-file",
        env = "KEYTURN_AUDIT_HMAC_KEY_FILE",
        value_name = "PATH"
    )]
    pub hmac_key_file: Option<PathBuf>,
}

/// Errors of `keyturn audit search`. None carries the value or any part of it.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// `--since` is later than `--until`: nothing could match.
    #[error("--since ({since}) is later than --until ({until})")]
    SinceAfterUntil {
        /// `--since`, resolved.
        since: String,
        /// `--until`, resolved.
        until: String,
    },
    /// `--value-hmac` with stdin on a terminal, which would echo the value.
    #[error(
        "--value-hmac reads the value from stdin, which is a terminal here (it would echo the \
         value); pipe it in instead, e.g. `keyturn audit search --value-hmac FILE < value-file`"
    )]
    ValueFromTerminal,
    /// `--value-hmac` and nothing on stdin.
    #[error(
        "--value-hmac: stdin is empty; pipe in the value to look for (one trailing newline is \
         dropped)"
    )]
    EmptyValue,
    /// `--value-hmac` and more on stdin than any credential.
    #[error("--value-hmac: the value on stdin is larger than {max} bytes", max = MAX_VALUE_LEN)]
    ValueTooLarge,
    /// Reading stdin failed.
    #[error("--value-hmac: cannot read the value from stdin: {source}")]
    ReadValue {
        /// Why.
        source: io::Error,
    },
    /// The key file given does not exist.
    #[error(
        "the audit HMAC key file {path} does not exist; give the key the log was written with \
         (--audit-hmac-key-file or KEYTURN_AUDIT_HMAC_KEY_FILE)"
    )]
    KeyMissing {
        /// The key file.
        path: PathBuf,
    },
    /// No key file was given, and this install has no per-install key.
    #[error(
        "--value-hmac needs the audit HMAC key the log was written with: give \
         --audit-hmac-key-file or KEYTURN_AUDIT_HMAC_KEY_FILE"
    )]
    NoKey,
    /// The key could not be loaded.
    #[error("{0}")]
    Key(#[from] KeyError),
    /// An audit file could not be opened or read.
    #[error(transparent)]
    File(#[from] AuditCliError),
    /// Writing to stdout failed.
    #[error("cannot write to stdout: {source}")]
    Output {
        /// Why.
        source: io::Error,
    },
}

impl HasExitCode for SearchError {
    /// 64 for usage and configuration, 66 for a missing file, 77 for one that
    /// may not be read, 74 for other I/O errors.
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::SinceAfterUntil { .. }
            | Self::ValueFromTerminal
            | Self::EmptyValue
            | Self::ValueTooLarge
            | Self::KeyMissing { .. }
            | Self::NoKey => ExitCode::Usage,
            Self::Key(e) => e.exit_code(),
            Self::File(e) => e.exit_code(),
            Self::ReadValue { .. } | Self::Output { .. } => ExitCode::Io,
        }
    }
}

/// Searches, prints the matches to `out` (problems go to stderr), returns the exit code: 0 when
/// something matched, 1 when nothing did, else [`SearchError::exit_code`].
pub fn run(args: &SearchArgs, out: &mut impl Write) -> ExitCode {
    match search(args, out) {
        Ok(0) => ExitCode::Failed,
        Ok(_) => ExitCode::Ok,
        // `keyturn audit search … | head`: the reader has what it wanted.
        Err(SearchError::Output { source }) if source.kind() == io::ErrorKind::BrokenPipe => {
            ExitCode::Ok
        }
        Err(e) => {
            eprintln!("keyturn: {e}");
            e.exit_code()
        }
    }
}

/// Returns how many entries matched.
fn search(args: &SearchArgs, out: &mut impl Write) -> Result<u64, SearchError> {
    if let (Some(since), Some(until)) = (args.since, args.until)
        && since > until
    {
        return Err(SearchError::SinceAfterUntil {
            since: rfc3339(since),
            until: rfc3339(until),
        });
    }
    let mut filter = Filter {
        resource: args.policy.as_deref().map(policy_resource),
        since: args.since,
        until: args.until,
        action: args.action.clone(),
        actor: args.actor.clone(),
        rotation_id: args.rotation_id.clone(),
        value_hmac: None,
    };
    let mut key_id = None;
    if args.value_hmac {
        // The key first: a configuration error should not consume the value.
        let key = load_key(args.hmac_key_file.as_deref())?;
        let value = read_value_from_stdin()?;
        filter.value_hmac = Some(key.hmac_hex(&value));
        key_id = Some(key.id());
    }
    // Open every file before printing anything, so a typo in the last name does not come
    // after a screenful of results.
    let files = args
        .files
        .iter()
        .map(|path| {
            File::open(path)
                .map(|f| (path.as_path(), f))
                .map_err(|source| AuditCliError::Open {
                    path: path.clone(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut out = io::BufWriter::with_capacity(64 * 1024, out);
    let mut matched = 0;
    for (path, file) in files {
        matched += search_file(path, file, &filter, args.json, &mut out)?;
    }
    out.flush()
        .map_err(|source| SearchError::Output { source })?;
    if matched == 0
        && let Some(id) = key_id
    {
        eprintln!(
            "keyturn: no entry in the given files involved that value (its HMAC under the audit \
             key with id {id})"
        );
    }
    Ok(matched)
}

fn search_file(
    path: &Path,
    file: File,
    filter: &Filter,
    json: bool,
    out: &mut impl Write,
) -> Result<u64, SearchError> {
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut line = Vec::new();
    let mut text = String::new();
    let mut number = 0u64;
    let mut matched = 0;
    loop {
        line.clear();
        let got = reader
            .read_until(b'\n', &mut line)
            .map_err(|source| AuditCliError::Read {
                path: path.to_owned(),
                source,
            })?;
        if got == 0 {
            return Ok(matched);
        }
        number += 1;
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        let Ok(entry) = Entry::parse(body) else {
            // Not the parser's reason: it can quote the line, and the line is not ours.
            eprintln!("{}:{number}: not an audit event", path.display());
            continue;
        };
        if !filter.matches(&entry) {
            continue;
        }
        matched += 1;
        let written = if json {
            out.write_all(body).and_then(|()| out.write_all(b"\n"))
        } else {
            text.clear();
            render_entry(&entry, &mut text);
            out.write_all(text.as_bytes())
        };
        written.map_err(|source| SearchError::Output { source })?;
    }
}

/// What an entry must be to match; every field that is set must hold.
#[derive(Debug, Default)]
struct Filter {
    resource: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    action: Option<ActionPattern>,
    actor: Option<String>,
    rotation_id: Option<String>,
    value_hmac: Option<String>,
}

impl Filter {
    fn matches(&self, e: &Entry) -> bool {
        self.resource.as_ref().is_none_or(|r| e.resource == *r)
            && self.since.is_none_or(|t| e.time >= t)
            && self.until.is_none_or(|t| e.time < t)
            && self.action.as_ref().is_none_or(|a| a.matches(&e.action))
            && self
                .actor
                .as_ref()
                .is_none_or(|x| actor_matches(&e.actor, x))
            && self
                .rotation_id
                .as_ref()
                .is_none_or(|id| e.rotation_id.as_ref() == Some(id))
            && self
                .value_hmac
                .as_ref()
                .is_none_or(|h| involves_value(e, h))
    }
}

/// Whether the entry involved the value whose HMAC is `hmac`: as its `value_hmac`, or as one
/// field of a secret with several (`field_hmacs`).
///
/// Entries written before `field_hmacs` existed carry the per-field HMACs of a multi-field
/// read only in their free-text `detail` (`… fields NAME=HMAC NAME=HMAC`, as `keyturn-init`
/// wrote it); those are matched too, token by token, so that old logs answer "who saw this
/// value?" as new ones do. A 64-hex-digit HMAC cannot turn up there by chance.
fn involves_value(e: &Entry, hmac: &str) -> bool {
    e.value_hmac.as_deref() == Some(hmac)
        || e.field_hmacs
            .as_ref()
            .is_some_and(|fields| fields.values().any(|h| h == hmac))
        || e.detail.as_deref().is_some_and(|d| {
            d.split_once(" fields ").is_some_and(|(_, fields)| {
                fields
                    .split(' ')
                    .any(|t| t.rsplit_once('=').is_some_and(|(_, h)| h == hmac))
            })
        })
}

/// The resource a rotation policy's entries name: `policy/P` (`P` may be given with the
/// prefix already).
fn policy_resource(p: &str) -> String {
    if p.starts_with("policy/") {
        p.to_owned()
    } else {
        format!("policy/{p}")
    }
}

/// Whether `x` names the actor: its name, `namespace/name` for a service account, its pod, or
/// its Vault entity.
fn actor_matches(a: &Actor, x: &str) -> bool {
    a.name == x
        || a.pod.as_deref() == Some(x)
        || a.entity.as_deref() == Some(x)
        || (a.kind == ActorKind::ServiceAccount
            && a.namespace.as_deref().is_some_and(|ns| {
                x.strip_prefix(ns)
                    .and_then(|rest| rest.strip_prefix('/'))
                    .is_some_and(|name| name == a.name)
            }))
}

/// `--action`: an exact action, or a prefix when it ends with `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionPattern {
    /// Exactly this action.
    Exact(String),
    /// Any action that starts with this (the pattern without its trailing `*`).
    Prefix(String),
}

impl ActionPattern {
    /// Whether `action` matches.
    #[must_use]
    pub fn matches(&self, action: &str) -> bool {
        match self {
            Self::Exact(a) => action == a,
            Self::Prefix(p) => action.starts_with(p.as_str()),
        }
    }
}

/// `--action` is empty, or has a `*` anywhere but at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadActionPattern(String);

impl fmt::Display for BadActionPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("an action may not be empty")
        } else {
            write!(
                f,
                "`{}`: `*` is allowed only at the end, as in `rotate.*`",
                self.0.escape_debug()
            )
        }
    }
}

impl std::error::Error for BadActionPattern {}

impl FromStr for ActionPattern {
    type Err = BadActionPattern;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadActionPattern(s.to_owned());
        if s.is_empty() {
            return Err(bad());
        }
        match s.strip_suffix('*') {
            Some(prefix) if !prefix.contains('*') => Ok(Self::Prefix(prefix.to_owned())),
            None if !s.contains('*') => Ok(Self::Exact(s.to_owned())),
            _ => Err(bad()),
        }
    }
}

/// clap's parser for `--since`/`--until`, relative to now.
fn time_arg(s: &str) -> Result<DateTime<Utc>, String> {
    parse_time(s, Utc::now())
}

/// Parses RFC 3339 (any offset), or a duration before `now` in humantime's syntax (`2h`,
/// `7d`, `1h 30m`; `2h ago` too).
///
/// # Errors
/// A message for the user when it is neither, or the duration reaches before year 0.
pub fn parse_time(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let ago = s.strip_suffix("ago").map_or(s, str::trim_end);
    let Ok(d) = humantime::parse_duration(ago) else {
        return Err(format!(
            "`{}` is neither an RFC 3339 time (2025-01-31T03:00:00Z) nor a duration ago \
             (30m, 2h, 7d)",
            s.escape_debug()
        ));
    };
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| format!("`{s}` reaches too far back"))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The shared key loading, with `--value-hmac`'s own wording for a key that is not there.
fn load_key(file: Option<&Path>) -> Result<HmacKey, SearchError> {
    super::load_key(file).map_err(|e| match e {
        KeyLoadError::Missing { path } => SearchError::KeyMissing { path },
        KeyLoadError::NoKey => SearchError::NoKey,
        KeyLoadError::Key(e) => SearchError::Key(e),
    })
}

/// Reads the value from stdin, which must not be a terminal.
fn read_value_from_stdin() -> Result<SecretValue, SearchError> {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        return Err(SearchError::ValueFromTerminal);
    }
    // A duplicate of fd 0 as a plain File: unbuffered, so no copy of the value is left in
    // std's stdin buffer, which is never zeroized.
    let fd = stdin
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| SearchError::ReadValue { source })?;
    read_value(File::from(fd))
}

/// Reads all of `input` as the value, less one trailing `\n`.
fn read_value(input: impl Read) -> Result<SecretValue, SearchError> {
    // Sized up front so it never reallocates and leaves a copy of the value behind.
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_VALUE_LEN + 1));
    input
        .take(MAX_VALUE_LEN as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|source| SearchError::ReadValue { source })?;
    if buf.len() > MAX_VALUE_LEN {
        return Err(SearchError::ValueTooLarge);
    }
    let value = buf.strip_suffix(b"\n").unwrap_or(&buf);
    if value.is_empty() {
        return Err(SearchError::EmptyValue);
    }
    // `to_vec` allocates exactly the value's length, so SecretValue's boxing does not move it.
    Ok(SecretValue::new(value.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyturn_core::audit::{ChainHash, Outcome};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn entry() -> Entry {
        Entry {
            time: at("2025-01-31T03:00:00.123Z"),
            seq: 7,
            actor: Actor::service_account("shop", "orders-api").with_pod("orders-api-7f9c"),
            action: "rotate.create".into(),
            resource: "policy/orders".into(),
            outcome: Outcome::Ok,
            detail: None,
            reason: None,
            request_id: None,
            rotation_id: Some("r-1".into()),
            value_hmac: Some("ab".repeat(32)),
            field_hmacs: None,
            prev: ChainHash::GENESIS,
            hash: ChainHash::GENESIS,
            mac: None,
        }
    }

    #[test]
    fn times_are_rfc3339_or_a_duration_ago() {
        let now = at("2025-01-31T12:00:00Z");
        assert_eq!(
            parse_time("2025-01-31T03:00:00Z", now).unwrap(),
            at("2025-01-31T03:00:00Z")
        );
        assert_eq!(
            parse_time("2025-01-31T05:00:00+02:00", now).unwrap(),
            at("2025-01-31T03:00:00Z")
        );
        assert_eq!(parse_time("2h", now).unwrap(), at("2025-01-31T10:00:00Z"));
        assert_eq!(parse_time("7d", now).unwrap(), at("2025-01-24T12:00:00Z"));
        assert_eq!(
            parse_time("1h 30m", now).unwrap(),
            at("2025-01-31T10:30:00Z")
        );
        assert_eq!(
            parse_time("2h ago", now).unwrap(),
            at("2025-01-31T10:00:00Z")
        );
    }

    #[test]
    fn anything_else_is_refused_with_both_forms_named() {
        let now = at("2025-01-31T12:00:00Z");
        for bad in [
            "yesterday",
            "",
            "2025-01-31",
            "2h later",
            "-2h",
            "2025-13-01T00:00:00Z",
        ] {
            let e = parse_time(bad, now).unwrap_err();
            assert!(
                e.contains("RFC 3339") && e.contains("duration"),
                "{bad}: {e}"
            );
        }
        assert!(
            parse_time("100000000y", now)
                .unwrap_err()
                .contains("too far")
        );
    }

    #[test]
    fn actions_match_exactly_or_by_a_trailing_star_prefix() {
        let p = |s: &str| s.parse::<ActionPattern>().unwrap();
        assert!(p("rotate.create").matches("rotate.create"));
        assert!(!p("rotate.create").matches("rotate.created"));
        assert!(!p("rotate").matches("rotate.create"));
        assert!(p("rotate.*").matches("rotate.create"));
        assert!(p("rotate.*").matches("rotate.done"));
        assert!(!p("rotate.*").matches("rotate"));
        assert!(!p("rotate.*").matches("secret.read"));
        assert!(p("break-glass.*").matches("break-glass.reveal"));
        assert!(p("*").matches("anything"));
        assert_eq!(p("secret.read"), ActionPattern::Exact("secret.read".into()));
    }

    #[test]
    fn a_star_anywhere_but_the_end_or_an_empty_action_is_refused() {
        assert_eq!(
            "".parse::<ActionPattern>().unwrap_err().to_string(),
            "an action may not be empty"
        );
        for bad in ["*.read", "rotate.*.x", "ro*tate", "**"] {
            assert_eq!(
                bad.parse::<ActionPattern>().unwrap_err().to_string(),
                format!("`{bad}`: `*` is allowed only at the end, as in `rotate.*`")
            );
        }
    }

    #[test]
    fn actors_match_by_name_namespace_name_pod_or_entity() {
        let sa = entry().actor;
        for yes in ["orders-api", "shop/orders-api", "orders-api-7f9c"] {
            assert!(actor_matches(&sa, yes), "{yes}");
        }
        for no in [
            "shop",
            "other/orders-api",
            "shop/",
            "orders",
            "shop/orders-api/x",
        ] {
            assert!(!actor_matches(&sa, no), "{no}");
        }
        let op = Actor::operator("alice").with_entity("ent-9");
        assert!(actor_matches(&op, "alice"));
        assert!(actor_matches(&op, "ent-9"));
        assert!(!actor_matches(&op, "bob"));
    }

    #[test]
    fn filters_and_together() {
        let e = entry();
        let none = Filter::default();
        assert!(none.matches(&e));
        let all = Filter {
            resource: Some(policy_resource("orders")),
            since: Some(at("2025-01-31T03:00:00.123Z")),
            until: Some(at("2025-01-31T03:00:00.124Z")),
            action: Some("rotate.*".parse().unwrap()),
            actor: Some("shop/orders-api".into()),
            rotation_id: Some("r-1".into()),
            value_hmac: Some("ab".repeat(32)),
        };
        assert!(all.matches(&e));
        // Each filter alone can rule the entry out.
        let misses = [
            Filter {
                resource: Some(policy_resource("billing")),
                ..Filter::default()
            },
            Filter {
                since: Some(at("2025-01-31T03:00:00.124Z")),
                ..Filter::default()
            },
            Filter {
                until: Some(at("2025-01-31T03:00:00.123Z")),
                ..Filter::default()
            },
            Filter {
                action: Some("secret.*".parse().unwrap()),
                ..Filter::default()
            },
            Filter {
                actor: Some("alice".into()),
                ..Filter::default()
            },
            Filter {
                rotation_id: Some("r-2".into()),
                ..Filter::default()
            },
            Filter {
                value_hmac: Some("cd".repeat(32)),
                ..Filter::default()
            },
        ];
        for f in misses {
            assert!(!f.matches(&e), "{f:?}");
        }
    }

    #[test]
    fn an_entry_without_a_value_never_matches_a_value() {
        let mut e = entry();
        e.value_hmac = None;
        let f = Filter {
            value_hmac: Some("ab".repeat(32)),
            ..Filter::default()
        };
        assert!(!f.matches(&e));
    }

    #[test]
    fn a_value_matches_one_field_of_a_multi_field_read() {
        let (user, pass) = ("11".repeat(32), "22".repeat(32));
        let mut e = entry();
        e.value_hmac = Some("cc".repeat(32));
        e.field_hmacs = Some(
            [("password", &pass), ("username", &user)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.clone()))
                .collect(),
        );
        let f = |h: &str| Filter {
            value_hmac: Some(h.to_owned()),
            ..Filter::default()
        };
        assert!(f(&pass).matches(&e));
        assert!(f(&user).matches(&e));
        assert!(
            f(&"cc".repeat(32)).matches(&e),
            "the whole-object HMAC still"
        );
        assert!(!f(&"33".repeat(32)).matches(&e));
    }

    #[test]
    fn a_value_matches_the_per_field_hmacs_old_logs_kept_in_detail() {
        let (user, pass) = ("11".repeat(32), "22".repeat(32));
        let mut e = entry();
        e.value_hmac = Some("cc".repeat(32));
        e.detail = Some(format!(
            "kv2 version 3 fields password={pass} username={user}"
        ));
        let f = |h: &str| Filter {
            value_hmac: Some(h.to_owned()),
            ..Filter::default()
        };
        assert!(f(&pass).matches(&e));
        assert!(f(&user).matches(&e));
        // Only the list after ` fields ` counts, and only whole HMACs.
        e.detail = Some(format!(
            "error: version={pass}; fields password={}",
            &user[..10]
        ));
        assert!(!f(&pass).matches(&e));
        assert!(!f(&user).matches(&e));
    }

    #[test]
    fn a_policy_may_be_given_with_or_without_its_prefix() {
        assert_eq!(policy_resource("orders"), "policy/orders");
        assert_eq!(policy_resource("policy/orders"), "policy/orders");
    }

    #[test]
    fn the_value_loses_exactly_one_trailing_newline() {
        let key = HmacKey::generate().unwrap();
        let h = |input: &[u8]| key.hmac_hex(&read_value(input).unwrap());
        let plain = key.hmac_hex(&SecretValue::from_str_copy("s3cret"));
        assert_eq!(h(b"s3cret"), plain);
        assert_eq!(h(b"s3cret\n"), plain);
        assert_eq!(
            h(b"s3cret\n\n"),
            key.hmac_hex(&SecretValue::from_str_copy("s3cret\n"))
        );
        assert_eq!(
            h(b"s3cret\r\n"),
            key.hmac_hex(&SecretValue::from_str_copy("s3cret\r"))
        );
    }

    #[test]
    fn an_empty_or_oversized_value_is_a_usage_error() {
        for empty in [&b""[..], b"\n"] {
            let e = read_value(empty).unwrap_err();
            assert!(matches!(e, SearchError::EmptyValue), "{e:?}");
            assert_eq!(e.exit_code(), 64);
        }
        let big = vec![b'x'; MAX_VALUE_LEN + 1];
        let e = read_value(&big[..]).unwrap_err();
        assert!(matches!(e, SearchError::ValueTooLarge), "{e:?}");
        assert_eq!(e.exit_code(), 64);
        assert!(read_value(&big[..MAX_VALUE_LEN]).is_ok());
    }

    #[test]
    fn a_missing_key_file_is_a_usage_error_naming_it() {
        let e = load_key(Some(Path::new("/nonexistent/keyturn-hmac.key"))).unwrap_err();
        assert_eq!(e.exit_code(), 64);
        assert!(
            e.to_string().contains("/nonexistent/keyturn-hmac.key"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_audit_file_exits_66_and_an_unreadable_one_77() {
        let open = |kind| AuditCliError::Open {
            path: "/x".into(),
            source: io::Error::from(kind),
        };
        assert_eq!(open(io::ErrorKind::NotFound).exit_code(), 66);
        assert_eq!(open(io::ErrorKind::PermissionDenied).exit_code(), 77);
        assert_eq!(open(io::ErrorKind::Other).exit_code(), 74);
    }
}

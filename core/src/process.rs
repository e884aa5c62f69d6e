//! How every keyturn binary starts: its logging (on stderr, so stdout stays free for the
//! command's output: text for a person at a terminal, JSON lines for a log collector) and its
//! answer to a command line clap refuses.

use std::fmt;
use std::io::{IsTerminal as _, Write as _};

use clap::error::ErrorKind;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::VisitOutput as _;
use tracing_subscriber::fmt::format::{JsonFields, JsonVisitor, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::exit::ExitCode;
use crate::text;

/// The most characters of one line of a usage error: enough for clap's message and a quoted
/// argument, never a 1 MB one.
const USAGE_LINE_MAX: usize = text::ECHO_MAX * 3;

/// Errors setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The `--log`/`KEYTURN_LOG` filter does not parse.
    #[error("invalid --log/KEYTURN_LOG filter {}: {reason}", text::echo(filter))]
    Filter {
        /// The filter as given.
        filter: String,
        /// The parser's message.
        reason: String,
    },
    /// A global subscriber was already installed.
    #[error("logging was already set up")]
    AlreadySet,
}

impl crate::exit::HasExitCode for LoggingError {
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Filter { .. } => ExitCode::Usage,
            Self::AlreadySet => ExitCode::Software,
        }
    }
}

/// How log lines look: the `--log-format`/`KEYTURN_LOG_FORMAT` of every binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event for a person: time, level, target, message, `key=value` fields.
    Text,
    /// One JSON object per line: `time` (RFC 3339, UTC), `level` (`info`, `warn`, …),
    /// `severity` (Cloud Logging's `INFO`, `WARNING`, …), `msg`, `logger` (the module), then
    /// the event's and its spans' fields, flat (a field named like one of those five is
    /// written as `field.NAME`).
    Json,
}

impl LogFormat {
    /// The format when none is asked for: text when stderr is a terminal (a person is
    /// reading), JSON otherwise (a container runtime or a file is).
    #[must_use]
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() {
            Self::Text
        } else {
            Self::Json
        }
    }
}

/// The keys [`JsonLines`] writes itself; an event or span field of the same name is written
/// under [`COLLISION_PREFIX`] instead, so no field can pose as the time, the level or the
/// message a collector indexes.
pub const TOP_LEVEL_KEYS: [&str; 5] = ["time", "level", "severity", "msg", "logger"];

/// Put before a field's name when the name is already taken (see [`TOP_LEVEL_KEYS`]).
pub const COLLISION_PREFIX: &str = "field.";

/// The JSON line format.
///
/// Why not a crate: tracing-subscriber's own JSON format has fixed key names (`timestamp`,
/// upper-case `level`, the message inside `fields`), and json-subscriber, which flattens
/// fields, keeps the name `message` and documents that a flattened field named like a
/// top-level key is written as a duplicate key, which collectors resolve either way. The
/// field values themselves are still tracing-subscriber's: its [`JsonVisitor`] renders them
/// (`Debug`/`Display` as strings, numbers and booleans as JSON), so a [`crate::SecretValue`]
/// is `[REDACTED]` here as everywhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

/// `level` as zap and hclog write it.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// `severity` as Google Cloud Logging's `LogEntry` names it (which has no TRACE: DEBUG is its
/// lowest named level).
fn severity_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

/// Adds `key` to `line` unless taken; a taken name gets [`COLLISION_PREFIX`] (again, until it
/// is free), so nothing is lost and nothing is overwritten.
fn insert_field(
    line: &mut serde_json::Map<String, serde_json::Value>,
    key: String,
    v: serde_json::Value,
) {
    let mut key = key;
    while line.contains_key(&key) || TOP_LEVEL_KEYS.contains(&key.as_str()) {
        key = format!("{COLLISION_PREFIX}{key}");
    }
    line.insert(key, v);
}

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut rendered = String::new();
        let mut visitor = JsonVisitor::new(&mut rendered);
        event.record(&mut visitor);
        visitor.finish()?;
        let mut fields: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&rendered).map_err(|_| fmt::Error)?;
        let msg = match fields.remove("message") {
            Some(serde_json::Value::String(s)) => s,
            Some(other) => other.to_string(),
            None => String::new(),
        };
        let mut extra = serde_json::Map::new();
        for (k, v) in fields {
            insert_field(&mut extra, k, v);
        }
        // The spans' fields (the policy, the path being fetched…), innermost first; a name an
        // event field already has keeps the event's value and the span's gets the prefix.
        if let Some(scope) = ctx.event_scope() {
            for span in scope {
                let ext = span.extensions();
                let Some(formatted) = ext.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if formatted.fields.is_empty() {
                    continue;
                }
                let span_fields: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(&formatted.fields).map_err(|_| fmt::Error)?;
                for (k, v) in span_fields {
                    insert_field(&mut extra, k, v);
                }
            }
        }
        // Written key by key rather than as one map, so that the five fixed keys come first
        // on every line (serde_json's map sorts its keys).
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        write!(
            writer,
            "{{\"time\":{},\"level\":\"{}\",\"severity\":\"{}\",\"msg\":{},\"logger\":{}",
            json_str(&time),
            level_name(*meta.level()),
            severity_name(*meta.level()),
            json_str(&msg),
            json_str(meta.target()),
        )?;
        for (k, v) in &extra {
            write!(writer, ",{}:{v}", json_str(k))?;
        }
        writeln!(writer, "}}")
    }
}

/// `s` as a JSON string literal.
fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The filter `filter` asks for, with the noisy libraries off
/// ([`crate::logfilter::with_quiet_libraries`]).
fn env_filter(filter: &str) -> Result<EnvFilter, LoggingError> {
    EnvFilter::try_new(crate::logfilter::with_quiet_libraries(filter)).map_err(|e| {
        LoggingError::Filter {
            filter: filter.to_owned(),
            reason: e.to_string(),
        }
    })
}

/// A subscriber writing `format` lines to `writer`, filtered by `filter` (the
/// `--log`/`KEYTURN_LOG` directives) with the noisy libraries off unless named. What
/// [`init_logging`] installs, with stderr as the writer; tests capture with it.
///
/// # Errors
/// [`LoggingError::Filter`] for a bad filter.
pub fn subscriber<W>(
    format: LogFormat,
    filter: &str,
    writer: W,
    ansi: bool,
) -> Result<Box<dyn Subscriber + Send + Sync>, LoggingError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(env_filter(filter)?);
    Ok(match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(
            builder
                .with_ansi(false)
                .fmt_fields(JsonFields::new())
                .event_format(JsonLines)
                .finish(),
        ),
    })
}

/// Installs the process's subscriber: `format` lines ([`LogFormat::for_stderr`] when `None`)
/// on stderr, filtered by `filter`; colours only for text on a terminal.
///
/// # Errors
/// [`LoggingError::Filter`] for a bad filter, [`LoggingError::AlreadySet`] when called twice.
pub fn init_logging(filter: &str, format: Option<LogFormat>) -> Result<(), LoggingError> {
    use tracing_subscriber::util::SubscriberInitExt as _;
    let format = format.unwrap_or_else(LogFormat::for_stderr);
    let ansi = format == LogFormat::Text && std::io::stderr().is_terminal();
    subscriber(format, filter, std::io::stderr, ansi)?
        .try_init()
        .map_err(|_| LoggingError::AlreadySet)
}

/// Prints what clap had to say and picks the exit code. `--help` and `--version` go to stdout
/// and exit [`ExitCode::Ok`]; anything else goes to stderr in [`usage_error_lines`]'s shape and
/// exits [`ExitCode::Usage`].
#[must_use]
pub fn clap_exit(program: &str, e: &clap::Error) -> ExitCode {
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::Ok;
    }
    let mut err = std::io::stderr().lock();
    for line in usage_error_lines(program, e) {
        let _ = writeln!(err, "{line}");
    }
    ExitCode::Usage
}

/// A usage error as printed: first `PROGRAM: ` and what is wrong (with the missing arguments
/// clap lists below it), then clap's further lines (a tip, the usage line, where to find
/// help) as clap wrote them. clap quotes the argument
/// it refuses, so every line is escaped and capped ([`text::clean`]): a 1 MB or
/// terminal-driving argument cannot bury or rewrite the message. Only the first line starts
/// with `PROGRAM: `, so a caller counting failure lines counts one.
#[must_use]
pub fn usage_error_lines(program: &str, e: &clap::Error) -> Vec<String> {
    let rendered = e.to_string();
    let mut lines = rendered.lines().filter(|l| !l.trim().is_empty()).peekable();
    let first = if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // The rendered "error" is the whole help text, which follows as it is.
        "arguments missing".to_owned()
    } else {
        let what = lines.next().unwrap_or("invalid arguments");
        let mut first = what.strip_prefix("error: ").unwrap_or(what).to_owned();
        // "the following required arguments were not provided:" lists them on indented
        // lines; they join the first line, which then names everything that is wrong.
        let mut sep = " ";
        while let Some(item) = lines.next_if(|l| l.starts_with(' ') && !is_tip(l)) {
            first.push_str(sep);
            first.push_str(item.trim());
            sep = ", ";
        }
        first
    };
    std::iter::once(format!(
        "{program}: {}",
        text::clean(&first, USAGE_LINE_MAX)
    ))
    .chain(lines.map(|l| text::clean(l, USAGE_LINE_MAX)))
    .collect()
}

/// Whether `line` is one of clap's indented `tip:` lines.
fn is_tip(line: &str) -> bool {
    line.trim_start().starts_with("tip:")
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::SecretValue;

    /// Keeps what a subscriber writes.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `f` logs in `format`, at every level, as text.
    fn logged(format: LogFormat, f: impl FnOnce()) -> String {
        let capture = Capture::default();
        let sink = capture.clone();
        let sub = subscriber(format, "trace", move || sink.clone(), false).unwrap();
        tracing::subscriber::with_default(sub, f);
        String::from_utf8(capture.0.lock().unwrap().clone()).unwrap()
    }

    /// What `f` logs as JSON, one parsed object per line (each line must parse).
    fn json_lines(f: impl FnOnce()) -> Vec<serde_json::Map<String, serde_json::Value>> {
        logged(LogFormat::Json, f)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn a_json_line_has_time_level_severity_msg_and_logger_first_and_the_fields_flat() {
        let text = logged(LogFormat::Json, || {
            tracing::info!(
                policy = "orders-db",
                attempt = 3,
                ok = true,
                "rotated \"x\"\nnext"
            );
        });
        assert!(text.starts_with("{\"time\":\""), "{text}");
        assert_eq!(text.lines().count(), 1, "{text}");
        let line: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text.trim_end()).unwrap();
        let keys: Vec<&str> = line.keys().map(String::as_str).collect();
        for k in TOP_LEVEL_KEYS {
            assert!(keys.contains(&k), "{k} in {keys:?}");
        }
        let time = line["time"].as_str().unwrap();
        assert!(time.ends_with('Z'), "UTC: {time}");
        chrono::DateTime::parse_from_rfc3339(time).expect("RFC 3339");
        assert_eq!(line["level"], "info");
        assert_eq!(line["severity"], "INFO");
        assert_eq!(line["msg"], "rotated \"x\"\nnext");
        assert_eq!(line["logger"], module_path!());
        assert_eq!(line["policy"], "orders-db");
        assert_eq!(line["attempt"], 3);
        assert_eq!(line["ok"], true);
        assert!(!line.contains_key("fields") && !line.contains_key("message"));
        assert!(!line.contains_key("timestamp") && !line.contains_key("target"));
    }

    #[test]
    fn every_level_has_its_lowercase_name_and_its_cloud_logging_severity() {
        let lines = json_lines(|| {
            tracing::error!("e");
            tracing::warn!("w");
            tracing::info!("i");
            tracing::debug!("d");
            tracing::trace!("t");
        });
        let got: Vec<(&str, &str)> = lines
            .iter()
            .map(|l| {
                (
                    l["level"].as_str().unwrap(),
                    l["severity"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("error", "ERROR"),
                ("warn", "WARNING"),
                ("info", "INFO"),
                ("debug", "DEBUG"),
                ("trace", "DEBUG")
            ]
        );
    }

    #[test]
    fn a_field_named_like_a_top_level_key_is_prefixed_not_written_over_it() {
        let lines = json_lines(|| {
            tracing::warn!(
                time = "then",
                level = "fake",
                severity = "DEBUG",
                msg = "posed",
                logger = "other",
                field.level = "taken",
                "real message"
            );
        });
        let l = &lines[0];
        assert_eq!(l["level"], "warn");
        assert_eq!(l["severity"], "WARNING");
        assert_eq!(l["msg"], "real message");
        assert_eq!(l["logger"], module_path!());
        assert_ne!(l["time"], "then");
        assert_eq!(l["field.time"], "then");
        assert_eq!(l["field.severity"], "DEBUG");
        assert_eq!(l["field.msg"], "posed");
        assert_eq!(l["field.logger"], "other");
        // `field.level` was the event's own; the colliding `level` goes one prefix further.
        assert_eq!(l["field.level"], "taken");
        assert_eq!(l["field.field.level"], "fake");
    }

    #[test]
    fn span_fields_are_flat_beside_the_event_and_the_event_keeps_a_shared_name() {
        let lines = json_lines(|| {
            let outer = tracing::info_span!("fetch", path = "secret/data/a", policy = "span");
            let _g = outer.enter();
            tracing::info!(policy = "event", "read");
        });
        let l = &lines[0];
        assert_eq!(l["path"], "secret/data/a");
        assert_eq!(l["policy"], "event");
        assert_eq!(l["field.policy"], "span");
    }

    #[test]
    fn a_secret_given_to_a_field_or_a_span_stays_redacted() {
        let canary = "kt-canary-7f3e9a1c";
        let secret = SecretValue::from_str_copy(canary);
        for format in [LogFormat::Json, LogFormat::Text] {
            let text = logged(format, || {
                let span = tracing::info_span!("rotate", held = ?secret);
                let _g = span.enter();
                tracing::info!(password = ?secret, token = %secret, "value {secret:?} {secret}");
            });
            assert!(!text.contains(canary), "{format:?}: {text}");
            assert!(text.contains("[REDACTED]"), "{format:?}: {text}");
        }
        let l = &json_lines(|| tracing::info!(password = ?secret, "x"))[0];
        assert_eq!(l["password"], "[REDACTED]");
    }

    #[test]
    fn text_lines_are_for_people_and_hold_the_fields() {
        let text = logged(LogFormat::Text, || {
            tracing::info!(policy = "orders-db", "rotated")
        });
        assert!(!text.starts_with('{'), "{text}");
        assert!(text.contains("INFO") && text.contains("rotated"), "{text}");
        assert!(text.contains("policy=\"orders-db\""), "{text}");
        assert!(
            !text.contains('\u{1b}'),
            "no colours unless asked: {text:?}"
        );
    }

    #[test]
    fn the_formats_are_named_text_and_json() {
        use clap::ValueEnum as _;
        assert_eq!(LogFormat::from_str("json", false), Ok(LogFormat::Json));
        assert_eq!(LogFormat::from_str("text", false), Ok(LogFormat::Text));
        assert!(LogFormat::from_str("logfmt", false).is_err());
    }

    fn command() -> clap::Command {
        clap::Command::new("prog")
            .arg(clap::Arg::new("name").long("name").required(true))
            .subcommand(clap::Command::new("sub"))
    }

    fn refusal(args: &[&str]) -> clap::Error {
        command()
            .try_get_matches_from(args)
            .expect_err("clap refuses")
    }

    #[test]
    fn a_refused_argument_is_reported_escaped_capped_and_exits_64() {
        let huge = format!("--{}\u{1b}[2J", "x".repeat(100_000));
        let e = refusal(&["prog", "--name", "n", &huge]);
        let lines = usage_error_lines("prog", &e);
        assert!(
            lines[0].starts_with("prog: unexpected argument"),
            "{lines:?}"
        );
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("prog: ")).count(),
            1,
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("Usage: prog")),
            "{lines:?}"
        );
        for l in &lines {
            assert!(!l.contains('\u{1b}'), "a raw escape: {l:?}");
            assert!(
                l.chars().count() <= USAGE_LINE_MAX + 1 + "prog: ".len(),
                "{l:?}"
            );
        }
        assert!(lines.iter().map(String::len).sum::<usize>() < 4096);
        assert_eq!(clap_exit("prog", &e), ExitCode::Usage);
    }

    #[test]
    fn a_control_character_in_a_short_argument_is_escaped_whole() {
        let e = refusal(&["prog", "--name", "n", "a\rb"]);
        let lines = usage_error_lines("prog", &e);
        assert!(lines[0].contains("'a\\rb'"), "{lines:?}");
    }

    #[test]
    fn a_missing_argument_names_what_is_wrong_on_the_first_line() {
        let e = refusal(&["prog"]);
        let lines = usage_error_lines("prog", &e);
        assert_eq!(
            lines[0],
            "prog: the following required arguments were not provided: --name <name>"
        );
        assert_eq!(lines[1], "Usage: prog --name <name>");
        assert_eq!(clap_exit("prog", &e), ExitCode::Usage);
    }

    #[test]
    fn help_and_version_exit_0() {
        let e = command()
            .version("1")
            .try_get_matches_from(["prog", "--version"])
            .expect_err("--version stops parsing");
        assert_eq!(clap_exit("prog", &e), ExitCode::Ok);
        let e = refusal(&["prog", "--help"]);
        assert_eq!(clap_exit("prog", &e), ExitCode::Ok);
    }

    #[test]
    fn a_missing_subcommand_with_help_on_stderr_is_still_a_usage_error() {
        let e = clap::Command::new("prog")
            .subcommand(clap::Command::new("sub"))
            .arg_required_else_help(true)
            .try_get_matches_from(["prog"])
            .expect_err("nothing to run");
        let lines = usage_error_lines("prog", &e);
        assert_eq!(lines[0], "prog: arguments missing");
        assert!(lines.iter().any(|l| l.contains("sub")), "{lines:?}");
        assert_eq!(clap_exit("prog", &e), ExitCode::Usage);
    }

    #[test]
    fn a_bad_filter_is_a_usage_error_naming_the_filter() {
        let e = env_filter("keyturn=notalevel").expect_err("not a level");
        assert!(
            matches!(&e, LoggingError::Filter { filter, .. } if filter == "keyturn=notalevel"),
            "{e:?}"
        );
        assert!(e.to_string().contains("\"keyturn=notalevel\""), "{e}");
        assert_eq!(crate::exit::HasExitCode::exit_code(&e), ExitCode::Usage);
        assert!(matches!(
            init_logging("keyturn=notalevel", None),
            Err(LoggingError::Filter { .. })
        ));
    }

    #[test]
    fn a_good_filter_parses_with_the_libraries_quiet() {
        let f = env_filter("info").expect("a filter").to_string();
        assert!(f.contains("vaultrs=off"), "{f}");
    }
}

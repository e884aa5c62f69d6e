//! How every keyturn binary starts: its logging (JSON lines on stderr, so stdout stays free
//! for the command's output) and its answer to a command line clap refuses.

use std::io::Write as _;

use clap::error::ErrorKind;
use tracing_subscriber::EnvFilter;

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

/// Installs the process's subscriber: JSON lines on stderr, filtered by `filter` (the
/// `--log`/`KEYTURN_LOG` directives) with the noisy libraries off unless named, without the
/// current span repeated on every line.
///
/// # Errors
/// [`LoggingError::Filter`] for a bad filter, [`LoggingError::AlreadySet`] when called twice.
pub fn init_logging(filter: &str) -> Result<(), LoggingError> {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(env_filter(filter)?)
        .with_current_span(false)
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
    use super::*;

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
            init_logging("keyturn=notalevel"),
            Err(LoggingError::Filter { .. })
        ));
    }

    #[test]
    fn a_good_filter_parses_with_the_libraries_quiet() {
        let f = env_filter("info").expect("a filter").to_string();
        assert!(f.contains("vaultrs=off"), "{f}");
    }
}

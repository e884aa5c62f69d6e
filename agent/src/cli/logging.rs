//! Logs: JSON lines on stderr, via `tracing-subscriber`. Stdout stays free for the command's
//! output (and the audit stdout sink).

use tracing_subscriber::EnvFilter;

/// Errors setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The `--log`/`KEYTURN_LOG` filter does not parse.
    #[error("invalid --log/KEYTURN_LOG filter {filter:?}: {reason}")]
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

/// Installs the JSON-to-stderr subscriber with `filter`.
///
/// # Errors
/// [`LoggingError::Filter`] for a bad filter, [`LoggingError::AlreadySet`] when called twice.
pub fn init(filter: &str) -> Result<(), LoggingError> {
    let env_filter = EnvFilter::try_new(keyturn_core::logfilter::with_quiet_libraries(filter))
        .map_err(|e| LoggingError::Filter {
            filter: filter.to_owned(),
            reason: e.to_string(),
        })?;
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(env_filter)
        .try_init()
        .map_err(|_| LoggingError::AlreadySet)
}

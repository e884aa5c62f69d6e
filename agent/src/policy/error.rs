//! Policy errors: each names the file, line and column, and the field.

/// One problem in one policy file: `FILE:LINE:COL: FIELD: MESSAGE` (keyturn-core's located
/// configuration error, as every keyturn configuration file reports problems).
pub use keyturn_core::config::ConfigError as PolicyError;
use keyturn_core::exit::{ExitCode, HasExitCode};

/// Every problem found in a policy set: validation reports them all at once, so one
/// `keyturn policy check` run shows everything to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl HasExitCode for PolicyErrors {
    /// A rejected policy set: 64, a configuration error found before any network call.
    fn exit_code(&self) -> ExitCode {
        ExitCode::Usage
    }
}

//! Policy errors: each names the file, line and column, and the field.

use std::fmt;
use std::path::PathBuf;

/// One problem in one policy file. Displays as `FILE:LINE:COL: FIELD: MESSAGE`, the shape
/// editors and CI annotations understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, 0 when unknown.
    pub line: u64,
    /// 1-based column, 0 when unknown.
    pub column: u64,
    /// The field path, e.g. `spec.schedule` (empty for file-level problems).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for PolicyError {}

/// Every problem found in a policy set: validation reports them all at once, so one
/// `keyturn policy check` run shows everything to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl PolicyErrors {
    /// The exit code for a rejected policy set: 64, a configuration error.
    #[must_use]
    pub fn exit_code(&self) -> i32 {
        64
    }
}

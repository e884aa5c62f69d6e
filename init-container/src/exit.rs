//! Exit codes: every error type in this crate maps to one, and the process exits with the
//! most specific code among its failures.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | every secret written (or already up to date) |
//! | 64 | usage or configuration: a bad flag, manifest, annotation or template, found before any network call; also a manifest that does not fit the data it read (a missing field, a secret over the size limit), which the manifest must fix |
//! | 66 | a secret path that does not exist (Vault answered 404) |
//! | 69 | Vault unavailable past the deadline |
//! | 70 | internal error (an unexpected answer from Vault, a bug) |
//! | 74 | I/O error on the output directory, including the refusals: not memory-backed, a symlink, not a directory |
//! | 77 | permission denied: Vault answered 403, or refused the login |
//!
//! When several secrets fail differently, the code is the first of 77, 66, 64, 74, 69, 70
//! that any failure has: the one that most needs a person to act.

/// The process exit codes (sysexits.h values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitCode {
    /// Success.
    Ok,
    /// `EX_USAGE`: bad flags, manifest or annotations.
    Usage,
    /// `EX_NOINPUT`: a secret path that does not exist.
    NotFound,
    /// `EX_UNAVAILABLE`: Vault unreachable or failing past the deadline.
    Unavailable,
    /// `EX_SOFTWARE`: an internal error.
    Internal,
    /// `EX_IOERR`: the output directory cannot be used or written.
    Io,
    /// `EX_NOPERM`: permission denied.
    PermissionDenied,
}

impl ExitCode {
    /// The numeric code.
    #[must_use]
    pub fn code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Usage => 64,
            Self::NotFound => 66,
            Self::Unavailable => 69,
            Self::Internal => 70,
            Self::Io => 74,
            Self::PermissionDenied => 77,
        }
    }

    /// Maps a Vault error's own code (see `VaultError::exit_code`).
    #[must_use]
    pub fn from_vault(code: i32) -> Self {
        match code {
            64 => Self::Usage,
            66 => Self::NotFound,
            69 => Self::Unavailable,
            77 => Self::PermissionDenied,
            _ => Self::Internal,
        }
    }

    /// Maps a sysexits code from another module of keyturn-core (audit, keys).
    #[must_use]
    pub fn from_sysexit(code: u8) -> Self {
        match code {
            0 => Self::Ok,
            64 => Self::Usage,
            66 => Self::NotFound,
            69 => Self::Unavailable,
            74 => Self::Io,
            77 => Self::PermissionDenied,
            _ => Self::Internal,
        }
    }

    /// Precedence when several failures disagree: lower is reported first.
    fn rank(self) -> u8 {
        match self {
            Self::PermissionDenied => 0,
            Self::NotFound => 1,
            Self::Usage => 2,
            Self::Io => 3,
            Self::Unavailable => 4,
            Self::Internal => 5,
            Self::Ok => 6,
        }
    }

    /// The code to exit with for a set of failures (`Ok` for none).
    #[must_use]
    pub fn worst(codes: impl IntoIterator<Item = ExitCode>) -> ExitCode {
        codes
            .into_iter()
            .min_by_key(|c| c.rank())
            .unwrap_or(ExitCode::Ok)
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(c: ExitCode) -> Self {
        std::process::ExitCode::from(c.code())
    }
}

/// Implemented by every error type of this crate.
pub trait HasExitCode {
    /// The exit code this error maps to.
    fn exit_code(&self) -> ExitCode;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_denied_wins_over_everything_else() {
        let c = ExitCode::worst([
            ExitCode::Unavailable,
            ExitCode::PermissionDenied,
            ExitCode::Io,
        ]);
        assert_eq!(c.code(), 77);
    }

    #[test]
    fn no_failures_is_success() {
        assert_eq!(ExitCode::worst([]), ExitCode::Ok);
    }

    #[test]
    fn vault_codes_map_one_to_one() {
        for n in [64, 66, 69, 77, 70] {
            assert_eq!(i32::from(ExitCode::from_vault(n).code()), n);
        }
        assert_eq!(ExitCode::from_vault(1), ExitCode::Internal);
    }
}

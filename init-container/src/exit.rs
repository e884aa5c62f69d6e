//! Exit codes: every error type in this crate maps to one, and the process exits with the
//! most telling code among its failures (README's table; the values are keyturn-core's).
//!
//! | code | meaning |
//! |---|---|
//! | 0 | every secret written (or already up to date) |
//! | 64 | usage or configuration: a bad flag, manifest, annotation or template, found before any network call |
//! | 65 | the manifest does not fit what Vault holds, found after reading it: a missing field, a value its format cannot hold or over the size limit, a KV v2 path without `data/` |
//! | 66 | a secret path that does not exist (Vault answered 404) |
//! | 69 | Vault unavailable past the deadline |
//! | 70 | internal error (an unexpected answer from Vault, a bug) |
//! | 74 | I/O error on the output directory or the audit file, including the refusals: not memory-backed, a symlink, not a directory |
//! | 77 | permission denied: Vault answered 403, or refused the login; an audit file the system denies |
//!
//! When several secrets fail differently, the code is the one
//! [`keyturn_core::exit::most_telling`] picks, as for every keyturn command: 77, 66, 65, 64,
//! 74, 69, 70 in that order, what a person must fix before what waiting may cure.

use keyturn_core::exit;

/// The process exit codes (sysexits.h values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitCode {
    /// Success.
    Ok,
    /// `EX_USAGE`: bad flags, manifest or annotations, found before any network call.
    Usage,
    /// `EX_DATAERR`: the manifest does not fit the data read from Vault.
    Data,
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
            Self::Ok => exit::OK,
            Self::Usage => exit::USAGE,
            Self::Data => exit::DATA,
            Self::NotFound => exit::NOT_FOUND,
            Self::Unavailable => exit::UNAVAILABLE,
            Self::Internal => exit::SOFTWARE,
            Self::Io => exit::IO,
            Self::PermissionDenied => exit::NO_PERMISSION,
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
            65 => Self::Data,
            66 => Self::NotFound,
            69 => Self::Unavailable,
            74 => Self::Io,
            77 => Self::PermissionDenied,
            _ => Self::Internal,
        }
    }

    /// The code to exit with for a set of failures (`Ok` for none): the one keyturn-core's
    /// [`exit::most_telling`] picks, so keyturn-init and keyturn rank failures alike.
    #[must_use]
    pub fn worst(codes: impl IntoIterator<Item = ExitCode>) -> ExitCode {
        let codes: Vec<ExitCode> = codes.into_iter().collect();
        let chosen = exit::most_telling(codes.iter().map(|c| c.code()));
        codes
            .into_iter()
            .find(|c| c.code() == chosen)
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
    fn a_data_mismatch_ranks_after_a_missing_path_and_before_usage() {
        let c = ExitCode::worst([ExitCode::Usage, ExitCode::Data, ExitCode::Unavailable]);
        assert_eq!(c.code(), 65);
        let c = ExitCode::worst([ExitCode::Data, ExitCode::NotFound]);
        assert_eq!(c.code(), 66);
    }

    #[test]
    fn the_order_is_keyturns() {
        let all = [
            ExitCode::Usage,
            ExitCode::Data,
            ExitCode::NotFound,
            ExitCode::Unavailable,
            ExitCode::Internal,
            ExitCode::Io,
            ExitCode::PermissionDenied,
        ];
        for a in all {
            for b in all {
                assert_eq!(
                    ExitCode::worst([a, b]).code(),
                    exit::most_telling([a.code(), b.code()]),
                    "{a:?} {b:?}"
                );
            }
        }
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

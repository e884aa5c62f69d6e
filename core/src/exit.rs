//! The process exit codes every keyturn binary uses (README's table, sysexits(3) values where
//! one fits), and the one precedence that picks a single code when a run meets several
//! failures at once (`keyturn status` over many policies, `keyturn-init` over many secrets).

use std::fmt;
use std::io;

/// A process exit code: the README's table, one variant per row. Every error type with an
/// exit code implements [`HasExitCode`]; every `main` exits through
/// `std::process::ExitCode::from(code)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitCode {
    /// 0: success.
    Ok,
    /// 1: the command ran and the answer is "no": a broken audit chain, a rotation given up
    /// and rolled back, a failed doctor check, an audit search without a match.
    Failed,
    /// 64: usage or configuration error, found before any network call (`EX_USAGE`); also a
    /// Vault server certificate no trusted CA signed, found at the handshake before any
    /// request (only the operator's `VAULT_CACERT` fixes it, so it is not retried).
    Usage,
    /// 65: what was read does not fit what the configuration asks of it, found after reading
    /// it: a field the secret lacks, a value its format cannot hold or over the size limit, a
    /// KV v2 path without its `data/` segment (`EX_DATAERR`). Distinct from [`ExitCode::Usage`]
    /// so that 64 keeps meaning "nothing was contacted".
    Data,
    /// 66: a secret path that does not exist (in Vault or AWS Secrets Manager), or an input
    /// file (an audit file given to `keyturn audit`) that does not exist (`EX_NOINPUT`).
    NotFound,
    /// 69: Vault (or another server) unavailable past the deadline (`EX_UNAVAILABLE`).
    Unavailable,
    /// 70: an internal error (`EX_SOFTWARE`).
    Software,
    /// 74: an I/O error on an output directory or audit file (`EX_IOERR`).
    Io,
    /// 75: busy: another live process holds the policy's rotation; try again later
    /// (`EX_TEMPFAIL`).
    Busy,
    /// 77: permission denied: Vault, AWS, Kubernetes RBAC, an audit file that may not be read
    /// or written (`EX_NOPERM`).
    NoPermission,
}

/// The precedence, most telling first: what a person must fix before anything can succeed
/// (a denial, a missing path, data or configuration that does not fit, local I/O) comes before
/// what waiting may cure (busy, unavailable), then a bug, then a plain "no". README states the
/// same order (a test reads it there); every place that combines codes goes through
/// [`most_telling`].
pub const PRECEDENCE: [ExitCode; 9] = [
    ExitCode::NoPermission,
    ExitCode::NotFound,
    ExitCode::Data,
    ExitCode::Usage,
    ExitCode::Io,
    ExitCode::Busy,
    ExitCode::Unavailable,
    ExitCode::Software,
    ExitCode::Failed,
];

impl ExitCode {
    /// Every code, in the README table's (numeric) order.
    pub const ALL: [ExitCode; 10] = [
        Self::Ok,
        Self::Failed,
        Self::Usage,
        Self::Data,
        Self::NotFound,
        Self::Unavailable,
        Self::Software,
        Self::Io,
        Self::Busy,
        Self::NoPermission,
    ];

    /// The number the process exits with.
    #[must_use]
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Failed => 1,
            Self::Usage => 64,
            Self::Data => 65,
            Self::NotFound => 66,
            Self::Unavailable => 69,
            Self::Software => 70,
            Self::Io => 74,
            Self::Busy => 75,
            Self::NoPermission => 77,
        }
    }

    /// What the code means, in one line: the man pages' EXIT STATUS rows (README's table says
    /// the same at more length).
    #[must_use]
    pub const fn meaning(self) -> &'static str {
        match self {
            Self::Ok => "success",
            Self::Failed => {
                "the command ran and the answer is no: a broken audit chain, a rotation given up \
                 and rolled back, a failed doctor check, an audit search without a match"
            }
            Self::Usage => {
                "usage or configuration error, found before any network call, or a Vault server \
                 certificate no trusted CA signed (set VAULT_CACERT)"
            }
            Self::Data => {
                "what was read does not fit the configuration: a field the secret lacks, a value \
                 its format cannot hold or over the size limit, a KV v2 path without data/"
            }
            Self::NotFound => {
                "a secret path that does not exist (Vault, AWS Secrets Manager), or an input file \
                 that does not exist"
            }
            Self::Unavailable => "Vault or another server unavailable past the deadline",
            Self::Software => "internal error",
            Self::Io => "I/O error on an output directory or audit file",
            Self::Busy => "busy: another live process holds the policy's rotation; try again later",
            Self::NoPermission => {
                "permission denied: Vault, AWS, Kubernetes RBAC, or an audit or key file that may \
                 not be read or written"
            }
        }
    }

    /// Whether this is [`ExitCode::Ok`].
    #[must_use]
    pub const fn is_ok(self) -> bool {
        matches!(self, Self::Ok)
    }

    /// An I/O error on something keyturn writes or keeps (an audit file, an output
    /// directory, a key file): [`ExitCode::NoPermission`] when the operating system refused
    /// access (`EACCES`, `EPERM`), else [`ExitCode::Io`], a missing directory included (that
    /// is a problem of the output, not a missing input). Every place that classifies an I/O
    /// error goes through this or [`ExitCode::for_input_io`].
    #[must_use]
    pub fn for_io(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::PermissionDenied => Self::NoPermission,
            _ => Self::Io,
        }
    }

    /// An I/O error on a file keyturn was given to read (an audit file given to `keyturn
    /// audit`): [`ExitCode::NotFound`] when it does not exist, else as [`ExitCode::for_io`].
    #[must_use]
    pub fn for_input_io(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::NotFound => Self::NotFound,
            _ => Self::for_io(e),
        }
    }
}

impl From<ExitCode> for u8 {
    fn from(c: ExitCode) -> Self {
        c.as_u8()
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(c: ExitCode) -> Self {
        std::process::ExitCode::from(c.as_u8())
    }
}

/// A number that is not one of keyturn's exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not one of keyturn's exit codes")]
pub struct UnknownExitCode(pub u8);

impl TryFrom<u8> for ExitCode {
    type Error = UnknownExitCode;

    fn try_from(n: u8) -> Result<Self, Self::Error> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_u8() == n)
            .ok_or(UnknownExitCode(n))
    }
}

/// Compares the number: `assert_eq!(e.exit_code(), 77)`.
impl PartialEq<u8> for ExitCode {
    fn eq(&self, other: &u8) -> bool {
        self.as_u8() == *other
    }
}

/// The number, as a shell shows it.
impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_u8())
    }
}

/// Implemented by every error type that decides how a process exits. The code is chosen
/// from the error's kind, set where the error arose (a Vault status, an AWS error code, an
/// `io::ErrorKind`), never parsed from its message.
pub trait HasExitCode {
    /// The exit code this error maps to.
    fn exit_code(&self) -> ExitCode;
}

impl<T: HasExitCode + ?Sized> HasExitCode for &T {
    fn exit_code(&self) -> ExitCode {
        (**self).exit_code()
    }
}

impl<T: HasExitCode + ?Sized> HasExitCode for Box<T> {
    fn exit_code(&self) -> ExitCode {
        (**self).exit_code()
    }
}

/// The one code to exit with for a set of codes: the first of [`PRECEDENCE`] that any has,
/// [`ExitCode::Ok`] for none (or only `Ok`s).
#[must_use]
pub fn most_telling(codes: impl IntoIterator<Item = ExitCode>) -> ExitCode {
    codes
        .into_iter()
        .filter_map(|c| PRECEDENCE.iter().position(|&p| p == c))
        .min()
        .map_or(ExitCode::Ok, |i| PRECEDENCE[i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExitCode::*;

    #[test]
    fn no_failure_is_success() {
        assert_eq!(most_telling([]), Ok);
        assert_eq!(most_telling([Ok, Ok]), Ok);
    }

    #[test]
    fn a_denial_outranks_an_outage_and_an_outage_outranks_a_bug() {
        assert_eq!(most_telling([Unavailable, NoPermission]), NoPermission);
        assert_eq!(most_telling([NoPermission, Unavailable]), NoPermission);
        assert_eq!(most_telling([Software, Unavailable]), Unavailable);
        assert_eq!(most_telling([Failed, Software]), Software);
        assert_eq!(most_telling([Ok, Failed]), Failed);
    }

    #[test]
    fn every_pair_follows_the_table_order_whatever_the_input_order() {
        for (i, &a) in PRECEDENCE.iter().enumerate() {
            for &b in &PRECEDENCE[i + 1..] {
                assert_eq!(most_telling([a, b]), a, "{a} before {b}");
                assert_eq!(most_telling([b, a, Ok]), a, "{a} before {b}");
            }
        }
    }

    #[test]
    fn every_failure_has_a_place_in_the_precedence_and_success_has_none() {
        for c in ExitCode::ALL {
            assert_eq!(PRECEDENCE.contains(&c), c != Ok, "{c:?}");
        }
    }

    #[test]
    fn the_numbers_are_the_sysexits_ones_and_read_back() {
        let numbers: Vec<u8> = ExitCode::ALL.iter().map(|c| c.as_u8()).collect();
        assert_eq!(numbers, [0, 1, 64, 65, 66, 69, 70, 74, 75, 77]);
        for c in ExitCode::ALL {
            assert_eq!(ExitCode::try_from(c.as_u8()), Result::Ok(c));
            assert_eq!(c, c.as_u8());
            assert_eq!(c.to_string(), c.as_u8().to_string());
        }
        assert_eq!(ExitCode::try_from(2), Err(UnknownExitCode(2)));
        assert_eq!(ExitCode::try_from(73), Err(UnknownExitCode(73)));
    }

    #[test]
    fn an_io_error_is_a_denial_or_an_io_error_and_a_missing_input_is_not_found() {
        let e = |kind| io::Error::from(kind);
        assert_eq!(
            ExitCode::for_io(&e(io::ErrorKind::PermissionDenied)),
            NoPermission
        );
        assert_eq!(ExitCode::for_io(&e(io::ErrorKind::NotFound)), Io);
        assert_eq!(ExitCode::for_io(&e(io::ErrorKind::StorageFull)), Io);
        assert_eq!(
            ExitCode::for_input_io(&e(io::ErrorKind::NotFound)),
            NotFound
        );
        assert_eq!(
            ExitCode::for_input_io(&e(io::ErrorKind::PermissionDenied)),
            NoPermission
        );
        assert_eq!(ExitCode::for_input_io(&e(io::ErrorKind::Other)), Io);
        // EACCES from the OS, not only a constructed kind.
        assert_eq!(
            ExitCode::for_io(&io::Error::from_raw_os_error(13)),
            NoPermission
        );
    }

    /// README's table is the authority: it lists exactly these codes, and its precedence
    /// sentence names [`PRECEDENCE`] in order.
    #[test]
    fn the_readme_table_and_precedence_are_the_codes() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("## Exit codes")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README has an Exit codes section");
        let listed: Vec<u8> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| "))
            .filter_map(|l| l.split(' ').next()?.parse().ok())
            .collect();
        let all: Vec<u8> = ExitCode::ALL.iter().map(|c| c.as_u8()).collect();
        assert_eq!(listed, all, "README's table rows");
        let order = PRECEDENCE
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        assert!(
            section.contains(&format!("the first of {order} that")),
            "README's precedence sentence should name {order}"
        );
    }
}

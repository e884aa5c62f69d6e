//! Exit codes: every error type in this crate maps to one, and the process exits with the
//! most telling code among its failures (README's table; the values are keyturn-core's).
//!
//! | code | meaning |
//! |---|---|
//! | 0 | every secret written (or already up to date) |
//! | 64 | usage or configuration: a bad flag, manifest, annotation or template, found before any network call; or Vault's server certificate signed by no trusted CA (set `VAULT_CACERT`), not retried |
//! | 65 | the manifest does not fit what Vault holds, found after reading it: a missing field, a value its format cannot hold or over the size limit, a KV v2 path without `data/` |
//! | 66 | a secret path that does not exist (Vault answered 404) |
//! | 69 | Vault unavailable past the deadline |
//! | 70 | internal error (an unexpected answer from Vault, a bug) |
//! | 74 | I/O error on the output directory or the audit file, including the refusals: not memory-backed, a symlink, not a directory |
//! | 77 | permission denied: Vault answered 403, or refused the login; an audit file or audit key file the system denies |
//!
//! When several secrets fail differently, the code is the one
//! [`keyturn_core::exit::most_telling`] picks, as for every keyturn command: the first of 77,
//! 66, 65, 64, 74, 75, 69, 70, 1 that any failure has (keyturn-init meets neither 75 nor 1),
//! what a person must fix before what waiting may cure.
//!
//! The type is keyturn-core's [`ExitCode`]; every error type of this crate implements
//! [`HasExitCode`].

pub use keyturn_core::exit::{ExitCode, HasExitCode, most_telling};

#[cfg(test)]
mod tests {
    use super::*;

    /// The table above lists only codes keyturn has, and the codes this crate's errors use.
    #[test]
    fn the_table_above_lists_keyturn_codes() {
        let table: Vec<ExitCode> = include_str!("exit.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//! | "))
            .filter_map(|l| l.split(' ').next()?.parse::<u8>().ok())
            .map(|n| ExitCode::try_from(n).expect("a keyturn exit code"))
            .collect();
        assert_eq!(
            table,
            [
                ExitCode::Ok,
                ExitCode::Usage,
                ExitCode::Data,
                ExitCode::NotFound,
                ExitCode::Unavailable,
                ExitCode::Software,
                ExitCode::Io,
                ExitCode::NoPermission,
            ]
        );
    }
}

//! The process exit codes every keyturn binary uses (README's table, sysexits(3) values where
//! one fits), and the one precedence that picks a single code when a run meets several
//! failures at once (`keyturn status` over many policies, `keyturn-init` over many secrets).

/// Success.
pub const OK: u8 = 0;
/// The command ran and the answer is "no": a broken audit chain, a rotation given up and
/// rolled back, a failed doctor check, an audit search without a match.
pub const FAILED: u8 = 1;
/// Usage or configuration error, found before any network call (`EX_USAGE`).
pub const USAGE: u8 = 64;
/// What was read does not fit what the configuration asks of it, found after reading it: a
/// field the secret lacks, a value its format cannot hold or over the size limit, a KV v2 path
/// without its `data/` segment (`EX_DATAERR`). Distinct from [`USAGE`] so that 64 keeps
/// meaning "nothing was contacted".
pub const DATA: u8 = 65;
/// A secret path that does not exist in Vault, or an audit file that does not exist
/// (`EX_NOINPUT`).
pub const NOT_FOUND: u8 = 66;
/// Vault (or another server) unavailable past the deadline (`EX_UNAVAILABLE`).
pub const UNAVAILABLE: u8 = 69;
/// An internal error (`EX_SOFTWARE`).
pub const SOFTWARE: u8 = 70;
/// An I/O error on an output directory or audit file (`EX_IOERR`).
pub const IO: u8 = 74;
/// Busy: another live process holds the policy's rotation; try again later (`EX_TEMPFAIL`).
pub const BUSY: u8 = 75;
/// Permission denied: Vault, AWS, Kubernetes RBAC, an audit file that may not be read or
/// written (`EX_NOPERM`).
pub const NO_PERMISSION: u8 = 77;

/// The precedence, most telling first: what a person must fix before anything can succeed
/// (a denial, a missing path, data or configuration that does not fit, local I/O) comes before
/// what waiting may cure (busy, unavailable), then a bug, then a plain "no". README states the
/// same order; every place that combines codes goes through [`most_telling`].
pub const PRECEDENCE: [u8; 9] = [
    NO_PERMISSION,
    NOT_FOUND,
    DATA,
    USAGE,
    IO,
    BUSY,
    UNAVAILABLE,
    SOFTWARE,
    FAILED,
];

/// The one code to exit with for a set of failure codes: the first of [`PRECEDENCE`] that any
/// has, [`OK`] for none. A code outside the table (none should exist) counts as
/// [`SOFTWARE`], so an unknown failure is never reported as success.
#[must_use]
pub fn most_telling(codes: impl IntoIterator<Item = u8>) -> u8 {
    codes
        .into_iter()
        .filter(|&c| c != OK)
        .map(|c| if PRECEDENCE.contains(&c) { c } else { SOFTWARE })
        .min_by_key(|c| PRECEDENCE.iter().position(|p| p == c))
        .unwrap_or(OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_failure_is_success() {
        assert_eq!(most_telling([]), OK);
        assert_eq!(most_telling([OK, OK]), OK);
    }

    #[test]
    fn a_denial_outranks_an_outage_and_an_outage_outranks_a_bug() {
        assert_eq!(most_telling([UNAVAILABLE, NO_PERMISSION]), NO_PERMISSION);
        assert_eq!(most_telling([NO_PERMISSION, UNAVAILABLE]), NO_PERMISSION);
        assert_eq!(most_telling([SOFTWARE, UNAVAILABLE]), UNAVAILABLE);
        assert_eq!(most_telling([FAILED, SOFTWARE]), SOFTWARE);
    }

    #[test]
    fn every_pair_follows_the_table_order_whatever_the_input_order() {
        for (i, &a) in PRECEDENCE.iter().enumerate() {
            for &b in &PRECEDENCE[i + 1..] {
                assert_eq!(most_telling([a, b]), a, "{a} before {b}");
                assert_eq!(most_telling([b, a, OK]), a, "{a} before {b}");
            }
        }
    }

    #[test]
    fn an_unknown_code_is_a_failure_never_success() {
        assert_eq!(most_telling([42]), SOFTWARE);
        assert_eq!(most_telling([42, NO_PERMISSION]), NO_PERMISSION);
    }
}

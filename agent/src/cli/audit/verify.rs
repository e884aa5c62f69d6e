//! `keyturn audit verify FILE...`
//!
//! Checks the files as one keyed chain under the audit key, which it therefore needs (it never
//! creates one: a fresh key would match nothing), and, with `--anchor`, against the head the
//! writer recorded in its store. The verdict is one line on stdout.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use keyturn_core::audit::{
    Anchor, AnchorError, AnchorHead, AnchorLocation, ChainHash, HmacKey, VerifyError,
    VerifyFailure, VerifyOptions, VerifyReport, verify_with,
};
use keyturn_core::vault::{ConfigError, Vault, VaultConfig, VaultError};

use super::{KeyLoadError, load_key};
use crate::cli::exit::{ExitCode, HasExitCode};

/// Arguments of `keyturn audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Audit files, oldest first; they are checked as one chain.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The audit HMAC key the files were written with: a file of raw bytes or hex. Without it,
    /// this install's per-install key, if there is one. Each entry's MAC is checked under a key
    /// derived from it, so that an entry rewritten without the key is caught.
    #[arg(
        long = "audit-hmac-key-file",
        env = "KEYTURN_AUDIT_HMAC_KEY_FILE",
        value_name = "PATH"
    )]
    pub hmac_key_file: Option<PathBuf>,
    /// Also check the head the writer recorded outside the files, `vault-kv:MOUNT/PATH` (a KV
    /// v2 secret, read with VAULT_ADDR and VAULT_TOKEN): entries deleted from the end, or a
    /// replaced log, show only this way.
    #[arg(long, value_name = "LOCATION")]
    pub anchor: Option<AnchorLocation>,
    /// Also require the last entry's hash to be this (64 hex digits): an anchor kept
    /// elsewhere by hand.
    #[arg(long, value_name = "HASH")]
    pub expect_last_hash: Option<ChainHash>,
    /// Also require the files to hold exactly this many entries.
    #[arg(long, value_name = "N")]
    pub expect_count: Option<u64>,
    /// Accept a log written entirely before keyed chaining (no entry has a MAC) as ok: its
    /// chain is checked, but nothing protects it against a rewrite. Without this flag such a
    /// log fails with exit 1.
    #[arg(long)]
    pub allow_unkeyed: bool,
}

/// Errors that stop `keyturn audit verify` before it can give a verdict.
#[derive(Debug, thiserror::Error)]
pub enum VerifyCliError {
    /// The audit key could not be found or loaded.
    #[error(
        "audit verify checks each entry's MAC and needs the audit HMAC key the log was \
         written with: {0}"
    )]
    Key(#[from] KeyLoadError),
    /// `--anchor`: no usable Vault configuration.
    #[error("--anchor: {0}")]
    VaultConfig(#[from] ConfigError),
    /// `--anchor`: the Vault client could not be built.
    #[error("--anchor: {0}")]
    Vault(#[from] VaultError),
    /// `--anchor`: the anchor could not be read, or does not verify.
    #[error(transparent)]
    Anchor(#[from] AnchorError),
    /// A file could not be read.
    #[error(transparent)]
    File(VerifyError),
    /// No Tokio runtime for the anchor's Vault read.
    #[error("cannot start the runtime for --anchor: {0}")]
    Runtime(io::Error),
}

impl HasExitCode for VerifyCliError {
    /// README's table: 64 for configuration, 66 for a missing file, 77 for one
    /// that may not be read, 74 for other I/O errors; the anchor's own (1 when it does not
    /// verify, Vault's classification otherwise).
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Key(e) => e.exit_code(),
            Self::VaultConfig(_) => ExitCode::Usage,
            Self::Vault(e) => e.exit_code(),
            Self::Anchor(e) => e.exit_code(),
            Self::File(VerifyError::Open { source, .. }) => ExitCode::for_input_io(source),
            Self::File(VerifyError::Read { .. }) => ExitCode::Io,
            Self::Runtime(_) => ExitCode::Software,
        }
    }
}

/// Verifies, prints the verdict to `out` (errors go to stderr), returns the exit code: 0
/// intact, 1 broken (or unkeyed without `--allow-unkeyed`), else
/// [`VerifyCliError::exit_code`].
pub fn run(args: &VerifyArgs, out: &mut impl Write) -> ExitCode {
    match verify(args) {
        Ok((code, line)) => {
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return ExitCode::Io;
            }
            code
        }
        Err(e) => {
            eprintln!("keyturn: {e}");
            e.exit_code()
        }
    }
}

/// The exit code and the verdict line.
fn verify(args: &VerifyArgs) -> Result<(ExitCode, String), VerifyCliError> {
    // The key first: without it there is nothing to check, and no reason to reach Vault.
    let key = load_key(args.hmac_key_file.as_deref())?;
    let anchor = match &args.anchor {
        Some(location) => Some(read_anchor(location, &key)?),
        None => None,
    };
    let options = VerifyOptions {
        key: Some(key.chain_key()),
        expect_last_hash: args.expect_last_hash,
        expect_count: args.expect_count,
        anchor,
    };
    let report = verify_with(&args.files, &options);
    match report.failure {
        None => Ok(verdict(&report, &key, args, anchor)),
        Some(VerifyFailure::Broken(ref b)) => {
            tracing::warn!(seq = b.seq, path = %b.path.display(), line = b.line, "audit chain broken");
            Ok((
                ExitCode::Failed,
                format!(
                    "broken: {b} ({} entries before it are intact)",
                    report.events
                ),
            ))
        }
        Some(VerifyFailure::Unreadable(e)) => Err(VerifyCliError::File(e)),
    }
}

/// Reads the anchor at `location` through Vault (`VAULT_*`), checking its MAC under `key`.
fn read_anchor(location: &AnchorLocation, key: &HmacKey) -> Result<AnchorHead, VerifyCliError> {
    let vault = Arc::new(Vault::connect(&VaultConfig::from_env()?)?);
    let anchor = Anchor::new(vault, location.clone(), key.chain_key());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(VerifyCliError::Runtime)?;
    Ok(rt.block_on(anchor.read())?)
}

/// The verdict for a chain that verified: `ok: …`, or `unkeyed: …` (exit 1) when no entry has
/// a MAC and `--allow-unkeyed` was not given.
fn verdict(
    r: &VerifyReport,
    key: &HmacKey,
    args: &VerifyArgs,
    anchor: Option<AnchorHead>,
) -> (ExitCode, String) {
    let mut s = summary(r);
    if r.events > 0 && r.first_keyed_seq.is_none() {
        let what = "an unkeyed chain (written before keyed chaining: no entry has a MAC), with \
                    no protection against rewriting: anyone who could write the files could \
                    have rewritten them and recomputed every hash";
        if args.allow_unkeyed {
            return (ExitCode::Ok, format!("{s}; {what}"));
        }
        let s = s.replacen("ok: ", "unkeyed: ", 1);
        return (
            ExitCode::Failed,
            format!("{s}; {what} (--allow-unkeyed accepts it)"),
        );
    }
    if r.events > 0 {
        s.push_str(&format!("; every MAC checked under audit key {}", key.id()));
    }
    if let (Some(first), Some(keyed)) = (r.first_seq, r.first_keyed_seq)
        && keyed > first
    {
        s.push_str(&format!(
            "; seq {first}..{} predate keyed chaining: they were open to rewriting until seq \
             {keyed} was written, whose MAC covers them",
            keyed - 1
        ));
    }
    if let (true, Some(location), Some(head)) = (r.anchor_matched, &args.anchor, anchor) {
        s.push_str(&format!(
            "; the anchor {location} (seq {}) matches",
            head.seq
        ));
    }
    (ExitCode::Ok, s)
}

/// `ok: N events, seq A..B, last hash H, in K files`, plus a note when the chain does not start
/// at its beginning.
fn summary(r: &VerifyReport) -> String {
    let files = if r.files == 1 {
        "1 file".to_owned()
    } else {
        format!("{} files", r.files)
    };
    let (Some(first), Some(last), Some(hash)) = (r.first_seq, r.last_seq, r.last_hash) else {
        return format!("ok: 0 events, in {files}");
    };
    let mut s = format!(
        "ok: {} events, seq {first}..{last}, last hash {hash}, in {files}",
        r.events
    );
    if let Some(prev) = r.start_prev.filter(|p| !p.is_genesis()) {
        s.push_str(&format!(
            " (continues an earlier chain from prev {prev}, which was not checked; give the \
             earlier files too)"
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_missing_file_exits_66_an_unreadable_one_77_and_other_errors_74() {
        let open = |kind| {
            VerifyCliError::File(VerifyError::Open {
                path: Path::new("/x").to_owned(),
                source: io::Error::from(kind),
            })
            .exit_code()
        };
        assert_eq!(open(io::ErrorKind::NotFound), 66);
        assert_eq!(open(io::ErrorKind::PermissionDenied), 77);
        assert_eq!(open(io::ErrorKind::Other), 74);
    }
}

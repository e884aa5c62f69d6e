//! `keyturn audit verify FILE...`

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use keyturn_core::audit::{ChainHash, VerifyFailure, VerifyOptions, VerifyReport, verify_with};

use crate::cli::exit;

/// Arguments of `keyturn audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Audit files, oldest first; they are checked as one chain.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Also require the last entry's hash to be this (64 hex digits): an anchor kept
    /// elsewhere, which is the only way to notice entries missing from the end.
    #[arg(long, value_name = "HASH")]
    pub expect_last_hash: Option<ChainHash>,
    /// Also require the files to hold exactly this many entries.
    #[arg(long, value_name = "N")]
    pub expect_count: Option<u64>,
}

/// Verifies, prints the verdict to `out` (errors reading files go to stderr), returns the exit
/// code: 0 intact, 1 broken, 74 unreadable.
pub fn run(args: &VerifyArgs, out: &mut impl Write) -> u8 {
    let options = VerifyOptions {
        expect_last_hash: args.expect_last_hash,
        expect_count: args.expect_count,
    };
    let report = verify_with(&args.files, &options);
    let (code, line) = match &report.failure {
        None => (exit::OK, summary(&report)),
        Some(VerifyFailure::Broken(b)) => {
            tracing::warn!(seq = b.seq, path = %b.path.display(), line = b.line, "audit chain broken");
            (
                exit::FAILED,
                format!(
                    "broken: {b} ({} entries before it are intact)",
                    report.events
                ),
            )
        }
        Some(VerifyFailure::Unreadable(e)) => {
            eprintln!("keyturn: {e}");
            return exit::IO;
        }
    };
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        return exit::IO;
    }
    code
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

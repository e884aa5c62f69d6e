//! `keyturn doctor`: checks, one line each, that this process could do its job — Vault
//! reachable and the token valid, the token's capabilities on every policy's store paths, the
//! AWS secrets reachable, the Kubernetes API reachable and its RBAC allowing every patch a
//! policy will make, the audit sink writable, `keyturn-init`'s output on tmpfs, the clock in
//! step with the servers'.
//!
//! Each line is `ok   CHECK[: detail]`, `FAIL CHECK: what — fix: how` or `skip CHECK: why`
//! (a check that does not apply, or that cannot run because one it depends on failed). The
//! exit code is 0 when nothing failed, 1 otherwise, 64 for an invalid policy set (found
//! before any network call).
//!
//! Doctor changes nothing: it asks Vault (`sys/capabilities-self`) and Kubernetes
//! (SelfSubjectAccessReview) what the identity *may* do instead of trying it, calls
//! `DescribeSecret` (metadata only) on AWS, and probes the audit directory with a temporary
//! file, never an audit event. It reads no secret value and prints none; the Vault token
//! goes only into request headers.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use self::aws::aws_checks;
use self::kube::kube_checks;
use self::local::{audit_check, clock_check, init_out_check};
use self::vault::vault_checks;
use super::audit_log::AuditLogArgs;
use super::exit::ExitCode;
use super::vault_args::VaultArgs;
use crate::policy;

/// The largest clock difference to a server that leases, token TTLs and rotation leases
/// tolerate.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);

/// How long one probe may take: doctor reports a hung server, it does not wait it out.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// `keyturn doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// A policy file or a directory of them; without it, the per-policy checks are skipped.
    #[arg(long, env = "KEYTURN_POLICIES", value_name = "PATH")]
    pub policies: Option<PathBuf>,
    /// `keyturn-init`'s output directory, to check that it is memory-backed (tmpfs/ramfs).
    #[arg(long = "init-out", env = "KEYTURN_INIT_OUT", value_name = "DIR")]
    pub init_out: Option<PathBuf>,
    /// The agent's Vault identity (as `keyturn run` takes it).
    #[command(flatten)]
    pub vault: VaultArgs,
    /// The audit log (as `keyturn run` takes it); only its location is checked.
    #[command(flatten)]
    pub audit: AuditLogArgs,
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Passed, with an optional detail.
    Ok(Option<String>),
    /// Failed: what is wrong, and a one-line fix.
    Fail { what: String, fix: String },
    /// Does not apply, or cannot run.
    Skip(String),
}

fn ok(detail: impl Into<String>) -> Outcome {
    Outcome::Ok(Some(detail.into()))
}

fn fail(what: impl Into<String>, fix: impl Into<String>) -> Outcome {
    Outcome::Fail {
        what: what.into(),
        fix: fix.into(),
    }
}

fn skip(why: impl Into<String>) -> Outcome {
    Outcome::Skip(why.into())
}

/// The line for one check.
fn line(check: &str, outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ok(None) => format!("ok   {check}"),
        Outcome::Ok(Some(d)) => format!("ok   {check}: {d}"),
        Outcome::Fail { what, fix } => format!("FAIL {check}: {what} — fix: {fix}"),
        Outcome::Skip(why) => format!("skip {check}: {why}"),
    }
}

/// Prints lines as checks finish (a slow server shows where it is slow) and counts failures.
#[derive(Debug, Default)]
struct Report {
    failed: usize,
}

impl Report {
    fn add(&mut self, check: &str, outcome: &Outcome) {
        if matches!(outcome, Outcome::Fail { .. }) {
            self.failed += 1;
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", line(check, outcome));
        let _ = out.flush();
    }
}

/// Runs the subcommand; returns the exit code.
#[must_use]
pub fn run(args: DoctorArgs) -> ExitCode {
    // Validate the policy set before any network call.
    let policies = match &args.policies {
        None => None,
        Some(path) => match policy::load(path) {
            Ok(ps) => Some(ps),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::Usage;
            }
        },
    };
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let mut report = Report::default();
    rt.block_on(async {
        let policies = policies.as_deref();
        let vault = vault_checks(&mut report, &args.vault, policies).await;
        aws_checks(&mut report, policies).await;
        let kube = kube_checks(&mut report, policies).await;
        report.add("audit sink", &audit_check(&args.audit));
        report.add("init output", &init_out_check(args.init_out.as_deref()));
        let clock = clock_check(vault.date, kube.as_ref()).await;
        report.add("clock", &clock);
    });
    if report.failed == 0 {
        ExitCode::Ok
    } else {
        ExitCode::Failed
    }
}

mod aws;
mod kube;
mod local;
mod vault;

/// `1d2h`, `5m3s`, `42s`: the two largest units.
pub(crate) fn human(secs: i64) -> String {
    let secs = secs.max(0);
    let parts = [
        (secs / 86_400, "d"),
        (secs % 86_400 / 3600, "h"),
        (secs % 3600 / 60, "m"),
        (secs % 60, "s"),
    ];
    let Some(first) = parts.iter().position(|(n, _)| *n > 0) else {
        return "0s".to_owned();
    };
    let mut out = String::new();
    for (n, unit) in parts.iter().skip(first).take(2) {
        if *n > 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    out
}

#[cfg(test)]
mod tests;

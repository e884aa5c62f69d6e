//! `keyturn rotate POLICY`: rotate one policy now, in the foreground, through the same code
//! path as the daemon.

use clap::Args;

use super::exit::{ExitCode, HasExitCode};
use super::rotation_args::{PolicyObjectArgs, RotationArgs};
use crate::rotation::{RotationOutcome, Trigger};

/// `keyturn rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The policy's `metadata.name`.
    pub policy: String,
    /// Recorded in the audit log.
    #[arg(long)]
    pub reason: Option<String>,
    /// Where else the policy may be: RotationPolicy objects.
    #[command(flatten)]
    pub objects: PolicyObjectArgs,
    /// Shared options.
    #[command(flatten)]
    pub common: RotationArgs,
}

/// Runs the subcommand; returns the exit code.
#[must_use]
pub fn run(args: RotateArgs) -> ExitCode {
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        // Find the policy before any other network call (only `--rotationpolicies` makes
        // one, to list the objects).
        let policies = match args.common.find_named(&args.policy, &args.objects).await {
            Ok(ps) => ps,
            Err(code) => return code,
        };
        let p = match args.common.prepare_with(policies).await {
            Ok(p) => p,
            Err(code) => return code,
        };
        // From here on Vault has been called, so nothing is 64: `find_named` found the
        // policy, and `prepare_with` built every backend a policy names, so either failing now
        // is a bug.
        let Some(policy) = p.policies.iter().find(|x| x.name == args.policy) else {
            return ExitCode::Software;
        };
        let (store, target) = match (p.backends.store(policy), p.backends.target(policy).await) {
            (Ok(s), Ok(t)) => (s, t),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("keyturn: {e}");
                return ExitCode::Software;
            }
        };
        match p
            .engine
            .rotate(
                policy,
                store.as_ref(),
                target.as_ref(),
                &Trigger::Manual {
                    reason: args.reason,
                },
            )
            .await
        {
            Ok(RotationOutcome::Rotated {
                rotation_id,
                resumed,
                ..
            }) => {
                println!(
                    "rotated {} (rotation {rotation_id}{})",
                    policy.name,
                    if resumed { ", resumed" } else { "" }
                );
                ExitCode::Ok
            }
            Ok(RotationOutcome::AlreadyDone) => ExitCode::Ok,
            Ok(RotationOutcome::Busy { holder }) => {
                eprintln!(
                    "keyturn: policy {} is being rotated by {holder}; try again later",
                    policy.name
                );
                ExitCode::Busy
            }
            Ok(RotationOutcome::Failed { rotation_id, error }) => {
                eprintln!(
                    "keyturn: rotation {rotation_id} of {} failed and was rolled back: {error}",
                    policy.name
                );
                ExitCode::Failed
            }
            Err(e) => {
                eprintln!("keyturn: {e}");
                e.exit_code()
            }
        }
    })
}

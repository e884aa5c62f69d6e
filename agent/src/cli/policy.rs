//! `keyturn policy check PATH`: validate policies without touching any server.
//! `keyturn policy rbac PATH`: print the Kubernetes Role the agent needs for them.
//! `keyturn policy needs PATH`: print every access they need (Vault, AWS, Kubernetes, the
//! targets' admins).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::exit::{ExitCode, HasExitCode};
use crate::policy;

/// Work with rotation policies.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file or directory; print every problem as FILE:LINE:COL: FIELD: WHY.
    Check(CheckArgs),
    /// Print the Kubernetes Roles and RoleBindings the agent needs for these policies:
    /// get/patch on exactly the Secrets and workloads they name (and, when asked, what
    /// membership Leases and RotationPolicy objects need).
    Rbac(RbacArgs),
    /// Print every access the agent needs for these policies, per policy: Vault capabilities,
    /// AWS actions, Kubernetes verbs, and what each target's admin must be allowed.
    Needs(CheckArgs),
}

/// `keyturn policy rbac`.
#[derive(Debug, Args)]
pub struct RbacArgs {
    /// A policy file, or a directory of `*.yaml`/`*.yml` files.
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// The agent's ServiceAccount.
    #[arg(long, default_value = "keyturn")]
    pub service_account: String,
    /// The ServiceAccount's namespace.
    #[arg(long, default_value = "keyturn-system")]
    pub namespace: String,
    /// Also grant `create` on Secrets (RBAC cannot limit it by name; see the output's header).
    #[arg(long)]
    pub allow_create_secrets: bool,
    /// Also grant what `keyturn run --membership-namespace NAMESPACE` needs (replicas sharing
    /// the policies): a Role there on the member Leases.
    #[arg(long, value_name = "NAMESPACE", value_parser = policy::rbac::namespace_name)]
    pub membership_namespace: Option<String>,
    /// Also grant what `keyturn run --rotationpolicies` needs to read RotationPolicy objects:
    /// a ClusterRole for `all`, else a Role in that namespace.
    #[arg(long, value_name = "all|NAMESPACE")]
    pub rotationpolicies: Option<policy::rbac::WatchScope>,
}

/// `keyturn policy check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A policy file, or a directory of `*.yaml`/`*.yml` files.
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
}

/// Runs the subcommand; returns the exit code.
#[must_use]
pub fn run(cmd: PolicyCommand) -> ExitCode {
    match cmd {
        PolicyCommand::Rbac(a) => match policy::load(&a.path) {
            Ok(ps) => {
                let options = policy::rbac::RbacOptions {
                    allow_create_secrets: a.allow_create_secrets,
                    membership_namespace: a.membership_namespace,
                    rotation_policies: a.rotationpolicies,
                };
                print!(
                    "{}",
                    policy::rbac::rbac_yaml_with(&ps, &a.service_account, &a.namespace, &options)
                );
                ExitCode::Ok
            }
            Err(errors) => report(&errors),
        },
        PolicyCommand::Needs(a) => match policy::load(&a.path) {
            Ok(ps) => {
                for p in &ps {
                    println!("{}:", p.name);
                    for n in p.needs() {
                        println!("  {n}");
                    }
                }
                ExitCode::Ok
            }
            Err(errors) => report(&errors),
        },
        PolicyCommand::Check(a) => match policy::load(&a.path) {
            Ok(ps) => {
                println!(
                    "ok: {} polic{} in {}",
                    ps.len(),
                    if ps.len() == 1 { "y" } else { "ies" },
                    a.path.display()
                );
                ExitCode::Ok
            }
            Err(errors) => report(&errors),
        },
    }
}

fn report(errors: &policy::PolicyErrors) -> ExitCode {
    for e in &errors.0 {
        eprintln!("{e}");
    }
    eprintln!(
        "{} problem{} found; nothing was changed",
        errors.0.len(),
        if errors.0.len() == 1 { "" } else { "s" }
    );
    errors.exit_code()
}

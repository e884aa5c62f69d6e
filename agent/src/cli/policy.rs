//! `keyturn policy check PATH`: validate policies without touching any server.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::exit;
use crate::policy;

/// Work with rotation policies.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file or directory; print every problem as FILE:LINE:COL: FIELD: WHY.
    Check(CheckArgs),
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
pub fn run(cmd: PolicyCommand) -> u8 {
    match cmd {
        PolicyCommand::Check(a) => match policy::load(&a.path) {
            Ok(ps) => {
                println!(
                    "ok: {} polic{} in {}",
                    ps.len(),
                    if ps.len() == 1 { "y" } else { "ies" },
                    a.path.display()
                );
                exit::OK
            }
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("{e}");
                }
                eprintln!(
                    "{} problem{} found; nothing was changed",
                    errors.0.len(),
                    if errors.0.len() == 1 { "" } else { "s" }
                );
                exit::USAGE
            }
        },
    }
}

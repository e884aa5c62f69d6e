//! `keyturn crd`: print the RotationPolicy CustomResourceDefinition (YAML), generated from the
//! policy file's own types, for `kubectl apply -f -` or the chart's `crds/`.

use clap::Args;

use super::exit::ExitCode;
use crate::policy::crd;

/// `keyturn crd`.
#[derive(Debug, Args)]
pub struct CrdArgs {}

/// Prints the definition; returns the exit code.
#[must_use]
pub fn run(_args: &CrdArgs) -> ExitCode {
    print!("{}", crd::definition_yaml());
    ExitCode::Ok
}

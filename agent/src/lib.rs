//! keyturn's agent library: everything the `keyturn` binary does, so tests can drive it.
//!
//! - [`cli`]: the command line — parsing, logging, exit codes, and one module per subcommand.
//! - [`daemon`]: `keyturn run` — the timer queue, hot reload, metrics and health endpoints.
//! - [`backends`]: the one dispatch from a policy's store and target kinds to their code.
//! - [`journal`]: the break-glass journal (the command is [`cli::break_glass`]), through
//!   which a running daemon learns of a break-glass action.
//! - [`distribute`]: delivery to Kubernetes Secrets and rollout restarts.
//! - [`policy`]: rotation policies — YAML schema, validation with file:line:column errors, and
//!   the RotationPolicy CustomResourceDefinition generated from the same types.
//! - [`rotation`]: the crash-safe rotation protocol, its stores and targets.
//! - [`schedule`]: cron / `every` schedules, time zones, deterministic jitter.
//! - [`webhook`]: `keyturn webhook` — the admission webhook that injects keyturn-init into
//!   pods annotated for the Vault Agent Injector.

pub mod backends;
pub mod cli;
pub mod daemon;
pub mod distribute;
pub mod fence;
pub mod journal;
pub mod kube_request;
pub mod policy;
pub mod rotation;
pub mod schedule;
pub mod webhook;

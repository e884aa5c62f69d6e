//! keyturn's agent library: everything the `keyturn` binary does, so tests can drive it.
//!
//! - [`cli`]: the command line — parsing, logging, exit codes, and one module per subcommand.
//! - [`policy`]: rotation policies — YAML schema, validation with file:line:column errors.
//! - [`rotation`]: the crash-safe rotation protocol, its stores and targets.
//! - [`schedule`]: cron / `every` schedules, time zones, deterministic jitter.

pub mod cli;
pub mod policy;
pub mod rotation;
pub mod schedule;

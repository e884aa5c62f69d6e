//! The `keyturn` command line: parsing (clap derive), logging, dispatch and exit codes.
//!
//! Each subcommand is one module with its clap arguments and a `run` that returns an exit
//! code; [`Command`] lists them. `run`, `rotate`, `policy`, `break-glass` and `doctor` join
//! `audit` here as they are written; a subcommand that needs async builds its own Tokio runtime
//! inside its `run`, so the commands that need none (`audit verify`) start instantly.
//!
//! Exit codes follow sysexits(3) for the whole CLI, through the one type [`exit::ExitCode`]:
//! clap's usage errors exit 64, not clap's default 2, reported as every binary reports them
//! ([`keyturn_core::process::clap_exit`]). Subcommands that touch secrets take their audit options from
//! [`audit_log::AuditLogArgs`].

use clap::{Args, Parser, Subcommand};

use exit::ExitCode;

pub mod audit;
pub mod audit_log;
pub mod break_glass;
pub mod completions;
pub mod crd;
pub mod doctor;
pub mod exit;
pub mod policy;
pub mod rotate;
pub mod rotation_args;
pub mod run;
pub mod status;
pub mod vault_args;
pub mod webhook;

/// keyturn: secrets rotation and injection for Kubernetes, with a tamper-evident audit log.
#[derive(Debug, Parser)]
#[command(
    name = "keyturn",
    version,
    propagate_version = true,
    arg_required_else_help = true
)]
pub struct Cli {
    /// Options every subcommand takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Which logs to write to stderr, in tracing's filter syntax: `info`,
    /// `keyturn=debug,warn`, ….
    #[arg(
        long = "log",
        env = "KEYTURN_LOG",
        default_value = "info",
        global = true
    )]
    pub log: String,
    /// How log lines look: `text` for a person, `json` (one object per line with `time`,
    /// `level`, `severity`, `msg`, `logger` and the event's fields) for a collector. Default:
    /// text when stderr is a terminal, else json.
    #[arg(
        long = "log-format",
        env = "KEYTURN_LOG_FORMAT",
        value_enum,
        value_name = "FORMAT",
        global = true
    )]
    pub log_format: Option<keyturn_core::process::LogFormat>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check and read the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Emergency actions on a leaked or stuck credential (audited, reason required).
    #[command(subcommand, name = "break-glass")]
    BreakGlass(break_glass::BreakGlassCommand),
    /// Work with rotation policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Rotate one policy now, in the foreground.
    Rotate(rotate::RotateArgs),
    /// Run the rotation daemon.
    Run(run::RunArgs),
    /// Check that Vault, AWS, Kubernetes, the audit sink and the clock are ready for keyturn.
    Doctor(doctor::DoctorArgs),
    /// Show each policy's last rotation, CURRENT's age, the next due time and what is in flight.
    Status(status::StatusArgs),
    /// Serve the mutating admission webhook that injects keyturn-init into annotated pods.
    Webhook(webhook::WebhookArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print the man page, or write one page per command into a directory.
    Man(completions::ManArgs),
    /// Print the RotationPolicy CustomResourceDefinition (YAML), generated from the policy
    /// file's own types.
    Crd(crd::CrdArgs),
}

/// The host name (a pod's name in Kubernetes), empty when the kernel does not say: the
/// default name of a holder in Leases and rotation state.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// A single-threaded Tokio runtime for a command that needs async, or the exit code after
/// saying why there is none ([`ExitCode`], or its number for `doctor` until it returns one).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("keyturn: cannot start runtime: {e}");
            ExitCode::Software
        })
}

/// Parses the process's arguments. On a usage error, prints clap's message and returns exit
/// code 64; for `--help`/`--version`, prints and returns 0.
///
/// # Errors
/// The exit code to leave with, when there is nothing to run.
pub fn parse() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|e| keyturn_core::process::clap_exit("keyturn", &e))
}

/// Parses `args` (the first is the program name), as [`parse`] does.
///
/// # Errors
/// As [`parse`].
pub fn parse_from<I, T>(args: I) -> Result<Cli, ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::try_parse_from(args).map_err(|e| keyturn_core::process::clap_exit("keyturn", &e))
}

/// Sets up logging and runs the subcommand; returns the code to exit with
/// (`std::process::ExitCode::from` it).
#[must_use]
pub fn run(cli: Cli) -> ExitCode {
    if let Err(e) = keyturn_core::process::init_logging(&cli.global.log, cli.global.log_format) {
        eprintln!("keyturn: {e}");
        return exit::HasExitCode::exit_code(&e);
    }
    // `doctor` and `policy` still return the number; one outside the table is a bug.
    match cli.command {
        Command::Audit(cmd) => audit::run(cmd),
        Command::BreakGlass(cmd) => break_glass::run(cmd),
        Command::Policy(cmd) => policy::run(cmd),
        Command::Rotate(args) => rotate::run(args),
        Command::Run(args) => run::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Status(args) => status::run(args),
        Command::Webhook(args) => webhook::run(args),
        Command::Completions(args) => completions::run_completions(&args),
        Command::Man(args) => completions::run_man(&args),
        Command::Crd(args) => crd::run(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn usage_errors_map_to_64_and_help_to_0() {
        let e = Cli::try_parse_from(["keyturn", "audit", "verify"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let e = Cli::try_parse_from(["keyturn", "--help"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
    }
}

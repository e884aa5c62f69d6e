//! `keyturn-init`: turn core dumps off, parse the command line, set up logging, run, exit with
//! the run's code.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use keyturn_init::cli::Cli;
use keyturn_init::exit;

fn main() -> ExitCode {
    // First, before the command line, the manifest or any token is read: a core file of this
    // process (or a same-user process reading its memory) would hold the Vault token and every
    // secret it renders.
    if let Err(e) = keyturn_core::sys::disable_core_dumps() {
        eprintln!("keyturn-init: {e}; refusing to run with core dumps possible");
        return ExitCode::from(exit::ExitCode::Software);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return ExitCode::from(keyturn_core::process::clap_exit("keyturn-init", &e)),
    };
    if let Err(e) = keyturn_core::process::init_logging(&cli.log, cli.log_format) {
        eprintln!("keyturn-init: {e}");
        return ExitCode::from(exit::HasExitCode::exit_code(&e));
    }
    // One thread: the work is a few dozen concurrent requests, and a thread pool would
    // cost start-up time and memory for nothing.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyturn-init: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ExitCode::Software);
        }
    };
    let outcome = rt.block_on(keyturn_init::run::run(&cli));
    let mut err = std::io::stderr().lock();
    for f in &outcome.failures {
        let _ = writeln!(err, "keyturn-init: {}", f.message);
    }
    ExitCode::from(outcome.code())
}

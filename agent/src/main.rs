//! `keyturn`: turn core dumps off, parse the command line, then hand over to
//! `keyturn_agent::cli`.

use keyturn_agent::cli::exit::ExitCode;

fn main() -> std::process::ExitCode {
    // First, before any configuration, token or secret is read: a core file of this process
    // (or a same-user process reading its memory) would hold the Vault token and the values
    // being rotated. Every subcommand gets this, since most of them hold a token.
    if let Err(e) = keyturn_core::sys::disable_core_dumps() {
        eprintln!("keyturn: {e}; refusing to run with core dumps possible");
        return ExitCode::Software.into();
    }
    match keyturn_agent::cli::parse() {
        Ok(cli) => keyturn_agent::cli::run(cli),
        Err(code) => code,
    }
    .into()
}

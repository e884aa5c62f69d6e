//! `keyturn`: parse the command line, then hand over to `keyturn_agent::cli`.

use std::process::ExitCode;

fn main() -> ExitCode {
    match keyturn_agent::cli::parse() {
        Ok(cli) => keyturn_agent::cli::run(cli),
        Err(code) => code,
    }
}

//! `keyturn`: turn core dumps off, parse the command line, then hand over to
//! `keyturn_agent::cli`.

use keyturn_agent::cli::exit::ExitCode;

/// mimalloc, not glibc's malloc: a daemon holding 100,000 policies parses them all at start
/// and whenever they change hands or files, and glibc kept the pages those parses freed
/// resident for the life of the process (its heap shrinks only from the top, and a page with
/// one live name in it stays): 121 MiB per replica at rest where mimalloc, which gives free
/// pages back, measures 75 (BENCHMARKS.md, "Replicas"). The image sets two of its options
/// (images/keyturn.Containerfile): no eager arena commit, and freed pages given back at once.
/// They are environment variables there, not calls here: setting them in code takes
/// `unsafe`, which the workspace forbids.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

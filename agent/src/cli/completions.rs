//! `keyturn completions SHELL` and `keyturn man [--out DIR]`: shell completion scripts and man
//! pages, generated from the clap definition ([`Cli`]), so they cannot drift from the
//! commands they describe.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::Cli;
use super::exit::{ExitCode, HasExitCode};

/// Arguments of `keyturn completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to print a completion script for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

/// Arguments of `keyturn man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write `keyturn.1` and one page per subcommand (`keyturn-audit.1`,
    /// `keyturn-audit-search.1`, …) into this directory, created if need be, instead of
    /// printing `keyturn.1` to stdout.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Errors of `keyturn completions` and `keyturn man`.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// A man page (or the directory for it) could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Writing to stdout failed.
    #[error("cannot write to stdout: {source}")]
    Output {
        /// Why.
        source: io::Error,
    },
}

impl HasExitCode for GenerateError {
    /// 74, an I/O error, for each of them.
    fn exit_code(&self) -> ExitCode {
        ExitCode::Io
    }
}

/// Prints the completion script for `args.shell` to stdout; returns the exit code.
#[must_use]
pub fn run_completions(args: &CompletionsArgs) -> ExitCode {
    finish(emit(&completion_script(args.shell)))
}

/// Prints the man page to stdout, or writes every page into `--out`; returns the exit code.
#[must_use]
pub fn run_man(args: &ManArgs) -> ExitCode {
    let result = match &args.out {
        None => man_page(command()).and_then(|page| emit(&page)),
        Some(dir) => write_man_pages(dir).and_then(|written| {
            let list: String = written
                .iter()
                .map(|p| format!("{}\n", p.display()))
                .collect();
            emit(list.as_bytes())
        }),
    };
    finish(result)
}

fn finish(result: Result<(), GenerateError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::Ok,
        Err(GenerateError::Output { source }) if source.kind() == io::ErrorKind::BrokenPipe => {
            ExitCode::Ok
        }
        Err(e) => {
            eprintln!("keyturn: {e}");
            e.exit_code()
        }
    }
}

/// The clap definition, built, without clap's `help` subcommand (it has no page of its own).
fn command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The completion script for `shell`. Generated into memory, because clap_complete panics
/// when its writer fails (a closed pipe, say).
#[must_use]
pub fn completion_script(shell: Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "keyturn", &mut script);
    script
}

/// The man page of `cmd` (roff).
fn man_page(cmd: clap::Command) -> Result<Vec<u8>, GenerateError> {
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut page)
        .map_err(|source| GenerateError::Output { source })?;
    Ok(page)
}

/// Writes `keyturn.1` and a page for every subcommand, at every depth, into `dir`; returns the
/// files written, the top-level page first.
///
/// # Errors
/// [`GenerateError::Write`] naming the directory or page that could not be written.
pub fn write_man_pages(dir: &Path) -> Result<Vec<PathBuf>, GenerateError> {
    fs::create_dir_all(dir).map_err(|source| GenerateError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let mut written = Vec::new();
    write_pages(command(), dir, &mut written)?;
    Ok(written)
}

fn write_pages(
    cmd: clap::Command,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), GenerateError> {
    let man = clap_mangen::Man::new(cmd.clone());
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)
        .and_then(|()| fs::write(&path, &page))
        .map_err(|source| GenerateError::Write {
            path: path.clone(),
            source,
        })?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub.clone(), dir, written)?;
    }
    Ok(())
}

fn emit(bytes: &[u8]) -> Result<(), GenerateError> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|source| GenerateError::Output { source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn every_shell_gets_a_script_naming_keyturn() {
        for shell in Shell::value_variants() {
            let script = String::from_utf8(completion_script(*shell)).unwrap();
            assert!(script.contains("keyturn"), "{shell}");
            assert!(
                script.contains("search"),
                "{shell}: audit search is offered"
            );
        }
    }

    #[test]
    fn the_man_page_describes_keyturn_and_lists_its_subcommands() {
        let page = String::from_utf8(man_page(command()).unwrap()).unwrap();
        assert!(page.starts_with(".ie"), "roff");
        assert!(page.contains(".TH keyturn 1"), "{page}");
        assert!(page.contains("audit"), "{page}");
        assert!(
            !page.contains("keyturn\\-help"),
            "no page for clap's help subcommand"
        );
    }

    #[test]
    fn man_out_writes_a_page_per_command_at_every_depth() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_man_pages(&dir.path().join("man1")).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names[0], "keyturn.1");
        for want in [
            "keyturn-audit.1",
            "keyturn-audit-search.1",
            "keyturn-rotate.1",
            "keyturn-man.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
        let search = fs::read_to_string(dir.path().join("man1/keyturn-audit-search.1")).unwrap();
        assert!(search.contains("value\\-hmac"), "{search}");
    }
}

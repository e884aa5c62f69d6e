//! `keyturn completions SHELL` and `keyturn man [--out DIR]`: shell completion scripts and man
//! pages, generated from the clap definitions ([`Cli`], and keyturn-init's own), so they cannot
//! drift from the commands they describe.
//!
//! clap_mangen makes NAME, SYNOPSIS, DESCRIPTION, OPTIONS and the subcommands; this module adds
//! ENVIRONMENT (every variable a clap argument reads, then those keyturn-core and the libraries
//! read on their own: [`CORE_ENV`], [`AGENT_ENV`]), EXIT STATUS (from
//! [`keyturn_core::exit::ExitCode`]) and, for keyturn-init, EXAMPLES.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use clap::{Args, CommandFactory};
use clap_complete::Shell;
use keyturn_core::exit::PRECEDENCE;
use roff::{Roff, bold, roman};

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
    /// Write `keyturn.1`, one page per subcommand (`keyturn-audit.1`,
    /// `keyturn-audit-search.1`, …) and `keyturn-init.1` into this directory, created if need
    /// be, instead of printing `keyturn.1` to stdout.
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

/// An environment variable read outside the clap definition: by keyturn-core or a library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvVar {
    /// Its name.
    pub name: &'static str,
    /// What it does, one sentence.
    pub what: &'static str,
}

/// Read by keyturn-core, so by both binaries: the Vault CLI's variables, the audit key's
/// places, and the CA store rustls-native-certs loads.
pub const CORE_ENV: &[EnvVar] = &[
    EnvVar {
        name: "VAULT_ADDR",
        what: "Vault's (or OpenBao's) address, an http:// or https:// URL; default https://127.0.0.1:8200.",
    },
    EnvVar {
        name: "VAULT_TOKEN",
        what: "A Vault token to use (token auth), else ~/.vault-token is read.",
    },
    EnvVar {
        name: "VAULT_NAMESPACE",
        what: "The Vault Enterprise namespace every request is made in.",
    },
    EnvVar {
        name: "VAULT_CACERT",
        what: "A PEM bundle of the CAs that may sign Vault's certificate.",
    },
    EnvVar {
        name: "VAULT_SKIP_VERIFY",
        what: "true or 1: accept any Vault certificate (a warning is logged); for tests only.",
    },
    EnvVar {
        name: "HOME",
        what: "Where ~/.vault-token is read from, and the last place for the per-install audit key (~/.local/state/keyturn).",
    },
    EnvVar {
        name: "KEYTURN_AUDIT_HMAC_KEY_FILE",
        what: "The audit key (at least 32 bytes) that keys value_hmac and the chain's MACs; when unset, a per-install key is made once.",
    },
    EnvVar {
        name: "KEYTURN_STATE_DIR",
        what: "The directory of the per-install audit key (audit-hmac.key) when KEYTURN_AUDIT_HMAC_KEY_FILE is unset.",
    },
    EnvVar {
        name: "XDG_STATE_HOME",
        what: "The per-install audit key is in $XDG_STATE_HOME/keyturn when KEYTURN_STATE_DIR is unset.",
    },
    EnvVar {
        name: "SSL_CERT_FILE",
        what: "A PEM bundle read instead of the system's CA store, for TLS verified against the system's roots.",
    },
    EnvVar {
        name: "SSL_CERT_DIR",
        what: "A directory of CA certificates read instead of the system's, as SSL_CERT_FILE.",
    },
];

/// Read by the libraries only keyturn uses: kube's client configuration and the AWS SDK's
/// default chain (the AWS variables listed are the ones an operator sets; the SDK reads the
/// rest of its documented set too).
pub const AGENT_ENV: &[EnvVar] = &[
    EnvVar {
        name: "KUBECONFIG",
        what: "The kubeconfig for distribution, doctor and status; else the in-cluster service account.",
    },
    EnvVar {
        name: "AWS_REGION",
        what: "The AWS Secrets Manager region (the standard AWS chain; AWS_DEFAULT_REGION and profiles as well).",
    },
    EnvVar {
        name: "AWS_ENDPOINT_URL",
        what: "Another Secrets Manager endpoint (a VPC endpoint, an emulator).",
    },
    EnvVar {
        name: "AWS_ACCESS_KEY_ID",
        what: "Static AWS credentials, with AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN.",
    },
    EnvVar {
        name: "AWS_SECRET_ACCESS_KEY",
        what: "See AWS_ACCESS_KEY_ID.",
    },
    EnvVar {
        name: "AWS_SESSION_TOKEN",
        what: "See AWS_ACCESS_KEY_ID.",
    },
    EnvVar {
        name: "AWS_PROFILE",
        what: "The profile of ~/.aws/config and ~/.aws/credentials to use.",
    },
    EnvVar {
        name: "AWS_ROLE_ARN",
        what: "With AWS_WEB_IDENTITY_TOKEN_FILE: the role to assume (EKS IAM roles for service accounts set both).",
    },
    EnvVar {
        name: "AWS_WEB_IDENTITY_TOKEN_FILE",
        what: "See AWS_ROLE_ARN.",
    },
];

/// Which page is being made: what decides the variables it lists beyond its own arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page {
    /// `keyturn.1` or `keyturn-init.1`: every variable the binary reads, with `extra` after
    /// those of the clap definition.
    Top { extra: &'static [&'static [EnvVar]] },
    /// A subcommand's page: its own arguments' variables and a pointer to the top page.
    Sub,
}

/// Every variable the clap arguments of `cmd` and its subcommands read: the name, then the
/// flag, the commands that take it (empty when the top command does: every command does) and
/// its help.
fn clap_env(cmd: &clap::Command) -> BTreeMap<String, (String, Vec<String>, String)> {
    fn walk(
        cmd: &clap::Command,
        path: &str,
        top: &[String],
        out: &mut BTreeMap<String, (String, Vec<String>, String)>,
    ) {
        for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            let Some(env) = a.get_env() else { continue };
            let name = env.to_string_lossy().into_owned();
            let entry = out.entry(name.clone()).or_insert_with(|| {
                let flag = a
                    .get_long()
                    .map_or_else(|| a.get_id().to_string(), |l| format!("--{l}"));
                let help = a.get_help().map(ToString::to_string).unwrap_or_default();
                (flag, Vec::new(), help)
            });
            if !top.contains(&name) && !entry.1.iter().any(|p| p == path) {
                entry.1.push(path.to_owned());
            }
        }
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, &format!("{path} {}", sub.get_name()), top, out);
        }
    }
    let top: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    let mut out = BTreeMap::new();
    walk(cmd, cmd.get_name(), &top, &mut out);
    out
}

/// The sections clap_mangen does not make, for `cmd`'s page.
fn extra_sections(cmd: &clap::Command, page: Page, top_name: &str) -> Roff {
    let mut r = Roff::new();
    if page != Page::Sub
        && let Some(after) = cmd.get_after_help()
    {
        r.control("SH", ["EXAMPLES"]);
        let text = after.to_string();
        let body = text.strip_prefix("Examples:").unwrap_or(&text);
        // As written for --help: indented lines, kept as they are.
        r.control("nf", []);
        for line in body.trim_matches('\n').lines() {
            r.text([roman(line)]);
        }
        r.control("fi", []);
    }
    let own = clap_env(cmd);
    let extra: Vec<&EnvVar> = match page {
        Page::Top { extra } => extra
            .iter()
            .flat_map(|l| l.iter())
            .filter(|v| !own.contains_key(v.name))
            .collect(),
        Page::Sub => Vec::new(),
    };
    if !own.is_empty() || !extra.is_empty() || page == Page::Sub {
        r.control("SH", ["ENVIRONMENT"]);
    }
    for (name, (flag, commands, help)) in &own {
        let used_by = if commands.is_empty() {
            String::new()
        } else {
            format!(" ({})", commands.join(", "))
        };
        r.control("TP", []);
        r.text([bold(name.as_str())]);
        r.text([
            roman("The same as "),
            bold(flag.as_str()),
            roman(format!("{used_by}: {help}")),
        ]);
    }
    for v in extra {
        r.control("TP", []);
        r.text([bold(v.name)]);
        r.text([roman(v.what)]);
    }
    if page == Page::Sub {
        r.control("PP", []);
        r.text([
            roman(
                "The variables every command reads (Vault's, the audit key's, the logs') are in ",
            ),
            bold(top_name),
            roman("(1)."),
        ]);
    }
    r.control("SH", ["EXIT STATUS"]);
    for code in keyturn_core::exit::ExitCode::ALL {
        r.control("TP", []);
        r.text([bold(code.to_string())]);
        r.text([roman(code.meaning())]);
    }
    r.control("PP", []);
    let order: Vec<String> = PRECEDENCE.iter().map(ToString::to_string).collect();
    r.text([roman(format!(
        "When one run meets several failures, it exits with the first of {} that any of them has.",
        order.join(", ")
    ))]);
    r
}

/// The man page of `cmd` (roff): clap_mangen's, with [`extra_sections`] before its VERSION
/// section.
fn man_page_of(cmd: clap::Command, page: Page, top_name: &str) -> Result<Vec<u8>, io::Error> {
    let extra = extra_sections(&cmd, page, top_name).render();
    // Roff::render starts with the apostrophe preamble clap_mangen's page already has.
    let preamble = Roff::new().render();
    let extra = extra.strip_prefix(&preamble).unwrap_or(&extra);
    // The examples are in EXAMPLES: clap_mangen would repeat them in an EXTRA section.
    let cmd = cmd.after_help(None::<&str>);
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut out)?;
    let text = String::from_utf8(out).map_err(io::Error::other)?;
    let at = text.find("\n.SH VERSION").map_or(text.len(), |i| i + 1);
    let mut page = String::with_capacity(text.len() + extra.len());
    page.push_str(&text[..at]);
    page.push_str(extra);
    page.push_str(&text[at..]);
    Ok(page.into_bytes())
}

/// The man page of `cmd`, keyturn's top command.
fn man_page(cmd: clap::Command) -> Result<Vec<u8>, GenerateError> {
    man_page_of(
        cmd,
        Page::Top {
            extra: &[CORE_ENV, AGENT_ENV],
        },
        "keyturn",
    )
    .map_err(|source| GenerateError::Output { source })
}

/// keyturn-init's clap definition, built.
fn init_command() -> clap::Command {
    let mut cmd = keyturn_init::cli::Cli::command();
    cmd.build();
    cmd
}

/// keyturn-init's man page.
fn init_man_page() -> Result<Vec<u8>, io::Error> {
    man_page_of(
        init_command(),
        Page::Top { extra: &[CORE_ENV] },
        "keyturn-init",
    )
}

/// Writes `keyturn.1`, a page for every subcommand, at every depth, and `keyturn-init.1` into
/// `dir`; returns the files written, the top-level page first and keyturn-init's last.
///
/// # Errors
/// [`GenerateError::Write`] naming the directory or page that could not be written.
pub fn write_man_pages(dir: &Path) -> Result<Vec<PathBuf>, GenerateError> {
    fs::create_dir_all(dir).map_err(|source| GenerateError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let mut written = Vec::new();
    write_pages(command(), true, dir, &mut written)?;
    let path = dir.join("keyturn-init.1");
    init_man_page()
        .and_then(|page| fs::write(&path, page))
        .map_err(|source| GenerateError::Write {
            path: path.clone(),
            source,
        })?;
    written.push(path);
    Ok(written)
}

fn write_pages(
    cmd: clap::Command,
    top: bool,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), GenerateError> {
    let path = dir.join(clap_mangen::Man::new(cmd.clone()).get_filename());
    let page = if top {
        Page::Top {
            extra: &[CORE_ENV, AGENT_ENV],
        }
    } else {
        Page::Sub
    };
    man_page_of(cmd.clone(), page, "keyturn")
        .and_then(|bytes| fs::write(&path, bytes))
        .map_err(|source| GenerateError::Write {
            path: path.clone(),
            source,
        })?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub.clone(), false, dir, written)?;
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

    /// The variables a test or a test build reads, which no operator sets.
    // KEYTURN_PROMTOOL and PATH: where the webhook's metrics unit test finds promtool.
    const TEST_ONLY_ENV: [&str; 4] = [
        "KEYTURN_BLESS",
        "KEYTURN_CRASH_AFTER",
        "KEYTURN_PROMTOOL",
        "PATH",
    ];

    /// Every clap argument of `cmd`, at every depth, that reads a variable.
    fn env_args(cmd: &clap::Command) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = cmd
            .get_arguments()
            .filter_map(|a| {
                let env = a.get_env()?.to_string_lossy().into_owned();
                let help = a.get_help().map(ToString::to_string).unwrap_or_default();
                Some((env, help))
            })
            .collect();
        for sub in cmd.get_subcommands() {
            out.extend(env_args(sub));
        }
        out
    }

    /// The variables the sources under `dirs` (relative to the workspace) read by name:
    /// `var("X")`, `var_os("X")`, `get("X")` and `…_ENV: &str = "X"`.
    fn env_read_in(dirs: &[&str]) -> std::collections::BTreeSet<String> {
        fn scan(dir: &Path, out: &mut std::collections::BTreeSet<String>) {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    scan(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = fs::read_to_string(&p).unwrap();
                    for open in ["var(\"", "var_os(\"", "get(\"", "_ENV: &str = \""] {
                        for (i, _) in text.match_indices(open) {
                            let rest = &text[i + open.len()..];
                            let name: String = rest
                                .chars()
                                .take_while(|c| {
                                    c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_'
                                })
                                .collect();
                            if name.len() > 1 && rest[name.len()..].starts_with('"') {
                                out.insert(name);
                            }
                        }
                    }
                }
            }
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut out = std::collections::BTreeSet::new();
        for d in dirs {
            scan(&root.join(d), &mut out);
        }
        out
    }

    fn page_text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    /// keyturn.1 and keyturn-init.1, each with the clap definition it was made from and the
    /// source folders of its binary.
    fn top_pages() -> Vec<(String, clap::Command, [&'static str; 2])> {
        vec![
            (
                page_text(man_page(command()).unwrap()),
                command(),
                ["core/src", "agent/src"],
            ),
            (
                page_text(init_man_page().unwrap()),
                init_command(),
                ["core/src", "init-container/src"],
            ),
        ]
    }

    #[test]
    fn every_variable_a_clap_argument_reads_is_documented_on_the_top_page() {
        for (page, cmd, _) in top_pages() {
            let args = env_args(&cmd);
            assert!(args.iter().any(|(e, _)| e == "KEYTURN_LOG_FORMAT"));
            for (env, help) in args {
                assert!(
                    !help.trim().is_empty(),
                    "{}: the argument read from {env} has no help to document it",
                    cmd.get_name()
                );
                assert!(
                    page.contains(&format!(".TP\n\\fB{env}\\fR\n")),
                    "{}.1 has no ENVIRONMENT entry for {env}",
                    cmd.get_name()
                );
            }
        }
    }

    #[test]
    fn every_variable_the_sources_read_by_name_is_documented_on_the_top_page() {
        for (page, cmd, dirs) in top_pages() {
            let read = env_read_in(&dirs);
            // The scan finds what it should: the Vault CLI's variables, through keyturn-core.
            for known in [
                "VAULT_ADDR",
                "VAULT_TOKEN",
                "KEYTURN_AUDIT_HMAC_KEY_FILE",
                "HOME",
            ] {
                assert!(read.contains(known), "{known} in {read:?}");
            }
            for env in read.iter().filter(|e| !TEST_ONLY_ENV.contains(&e.as_str())) {
                assert!(
                    page.contains(&format!(".TP\n\\fB{env}\\fR\n")),
                    "{}.1 has no ENVIRONMENT entry for {env}, which its source reads",
                    cmd.get_name()
                );
            }
        }
        let keyturn = page_text(man_page(command()).unwrap());
        for env in [
            "KUBECONFIG",
            "AWS_REGION",
            "AWS_ENDPOINT_URL",
            "VAULT_CACERT",
        ] {
            assert!(keyturn.contains(&format!("\\fB{env}\\fR")), "{env}");
        }
    }

    #[test]
    fn every_page_has_an_environment_and_an_exit_status_row_for_each_code() {
        let dir = tempfile::tempdir().unwrap();
        for path in write_man_pages(dir.path()).unwrap() {
            let page = fs::read_to_string(&path).unwrap();
            let name = path.display();
            let env = page
                .find(".SH ENVIRONMENT")
                .unwrap_or_else(|| panic!("{name}"));
            let exit = page
                .find(".SH \"EXIT STATUS\"")
                .unwrap_or_else(|| panic!("{name}"));
            assert!(env < exit, "{name}");
            let section = &page[exit..];
            for code in keyturn_core::exit::ExitCode::ALL {
                let row = format!(".TP\n\\fB{code}\\fR\n");
                let at = section
                    .find(&row)
                    .unwrap_or_else(|| panic!("{name}: no row for {code}"));
                let text = section[at + row.len()..].lines().next().unwrap();
                assert!(
                    !text.trim().is_empty() && !text.starts_with('.'),
                    "{name}: {code}"
                );
            }
            assert!(
                section.contains("first of 77, 66, 65, 64, 74, 75, 69, 70, 1"),
                "{name}"
            );
        }
    }

    #[test]
    fn keyturn_init_has_a_page_with_its_examples_and_its_variables() {
        let page = page_text(init_man_page().unwrap());
        assert!(page.contains(".TH keyturn-init 1"), "{page}");
        let examples = page.find(".SH EXAMPLES").expect("EXAMPLES");
        assert!(page[examples..].contains("\\-\\-annotations /etc/podinfo/annotations"));
        assert!(!page.contains(".SH EXTRA"), "the examples are not repeated");
        for env in [
            "KEYTURN_INIT_MANIFEST",
            "KEYTURN_LOG",
            "VAULT_ADDR",
            "VAULT_SKIP_VERIFY",
        ] {
            assert!(page.contains(&format!("\\fB{env}\\fR")), "{env}");
        }
        // keyturn's libraries are not keyturn-init's.
        assert!(!page.contains("KUBECONFIG") && !page.contains("AWS_REGION"));
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
        assert_eq!(names.last().unwrap(), "keyturn-init.1");
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

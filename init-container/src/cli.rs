//! The command line. Every flag is also an environment variable, as Kubernetes manifests
//! prefer.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use crate::text::echo;
use crate::write::Owner;

/// keyturn-init: log in to Vault, write a pod's secrets into a memory-backed directory, exit.
///
/// Exit codes: 0 ok, 64 usage/config, 66 secret path not found, 69 Vault unavailable past
/// the deadline, 70 internal, 74 output-directory I/O, 77 permission denied.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "keyturn-init", version, about, long_about = None, after_help = EXAMPLES)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["manifest", "manifest_inline", "annotations"])))]
pub struct Cli {
    /// The manifest file (YAML or JSON).
    #[arg(long, env = "KEYTURN_INIT_MANIFEST", value_name = "FILE")]
    pub manifest: Option<PathBuf>,

    /// The manifest itself, inline (for an env var set from a ConfigMap).
    #[arg(long, env = "KEYTURN_INIT_MANIFEST_INLINE", value_name = "YAML")]
    pub manifest_inline: Option<String>,

    /// Vault Agent Injector annotations: the pod's annotations file from the downward API.
    #[arg(long, env = "KEYTURN_INIT_ANNOTATIONS", value_name = "FILE")]
    pub annotations: Option<PathBuf>,

    /// The output directory; must exist, and be tmpfs or ramfs unless --allow-disk.
    #[arg(long, env = "KEYTURN_INIT_OUT", value_name = "DIR")]
    pub out: PathBuf,

    /// Total time for login and every fetch (e.g. 60s, 1m30s, 500ms).
    #[arg(long, env = "KEYTURN_INIT_DEADLINE", value_name = "DURATION", default_value = "60s", value_parser = Checked(parse_deadline))]
    pub deadline: Duration,

    /// Allow an output directory on a disk-backed filesystem (the variable: true, false, 1
    /// or 0).
    #[arg(long, env = "KEYTURN_INIT_ALLOW_DISK", value_parser = Checked(parse_bool), default_value = "false", num_args = 0, default_missing_value = "true")]
    pub allow_disk: bool,

    /// Do not revoke the Vault token; write it (mode 0400) to FILE for a sidecar. A relative
    /// FILE is inside the output directory.
    #[arg(long, env = "KEYTURN_INIT_KEEP_TOKEN", value_name = "FILE")]
    pub keep_token: Option<PathBuf>,

    /// Owner of the written files (numeric, each 0 to 4294967294).
    #[arg(long, env = "KEYTURN_INIT_OWNER", value_name = "UID:GID", value_parser = Checked(parse_owner))]
    pub owner: Option<Owner>,

    /// Append audit events to FILE (hash-chained JSON lines, fsynced).
    #[arg(long, env = "KEYTURN_AUDIT_FILE", value_name = "FILE")]
    pub audit_file: Option<PathBuf>,

    /// Write audit events to stdout (the default when no --audit-file is given; the variable:
    /// true, false, 1 or 0).
    #[arg(long, env = "KEYTURN_AUDIT_STDOUT", value_parser = Checked(parse_bool), default_value = "false", num_args = 0, default_missing_value = "true")]
    pub audit_stdout: bool,

    /// Record the audit log's last entry (seq, hash, MAC) in Vault at this KV v2 path
    /// (`vault-kv:MOUNT/PATH`, one per pod, written with the pod's token before it is
    /// revoked), so `keyturn audit verify --anchor` catches a log cut short or replaced.
    #[arg(long, env = "KEYTURN_AUDIT_ANCHOR", value_name = "vault-kv:MOUNT/PATH")]
    pub audit_anchor: Option<keyturn_core::audit::AnchorLocation>,

    /// The service-account token (or JWT) for kubernetes/jwt auth when the manifest names
    /// none; default: /var/run/secrets/kubernetes.io/serviceaccount/token.
    #[arg(long, env = "KEYTURN_INIT_JWT_FILE", value_name = "FILE")]
    pub jwt_file: Option<PathBuf>,

    /// The pod's name, for audit events (downward API `metadata.name`).
    #[arg(long, env = "KEYTURN_POD_NAME", value_name = "NAME")]
    pub pod_name: Option<String>,

    /// Log filter for stderr: error, warn, info, debug, or a tracing filter.
    #[arg(
        long,
        env = "KEYTURN_LOG",
        value_name = "FILTER",
        default_value = "warn"
    )]
    pub log: String,

    /// How log lines look: `text` for a person, `json` (one object per line with `time`,
    /// `level`, `severity`, `msg`, `logger` and the event's fields) for a collector. Default:
    /// text when stderr is a terminal, else json.
    #[arg(long, env = "KEYTURN_LOG_FORMAT", value_enum, value_name = "FORMAT")]
    pub log_format: Option<keyturn_core::process::LogFormat>,
}

/// `--help`'s closing text, and the man page's EXAMPLES: real invocations, as a pod spec
/// would run them.
pub const EXAMPLES: &str = "\
Examples:
  # The manifest from a ConfigMap; the files go into an emptyDir with medium: Memory.
  keyturn-init --manifest /etc/keyturn/manifest.yaml --out /run/secrets/app

  # Vault Agent Injector annotations from the downward API, the files given to the app's user.
  keyturn-init --annotations /etc/podinfo/annotations --out /vault/secrets --owner 1000:1000

  # The manifest inline from a variable; audit events to a file, their head anchored in Vault.
  KEYTURN_INIT_MANIFEST_INLINE=\"$(cat manifest.yaml)\" keyturn-init --out /run/secrets/app \\
    --audit-file /run/audit/init.jsonl \\
    --audit-anchor vault-kv:secret/keyturn-state/audit-anchor/orders-api-0";

/// A value parser for a flag that is also an environment variable: the text goes through
/// the function, and a refusal is one line naming both spellings, e.g. `--owner
/// (KEYTURN_INIT_OWNER): "x" is not UID:GID …`. (clap's own wording names only the flag, which
/// misleads when the value came from the variable, and echoes the value uncut.)
#[derive(Clone, Copy, Debug)]
pub struct Checked<T>(pub fn(&str) -> Result<T, String>);

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for Checked<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let name = arg.map_or_else(|| "a value".to_owned(), flag_name);
        let refuse = |why: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("{name}: {why}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| refuse("not valid UTF-8".to_owned()))?;
        (self.0)(text).map_err(refuse)
    }
}

/// `--flag (VARIABLE)`, or whichever of the two the argument has.
fn flag_name(a: &clap::Arg) -> String {
    match (a.get_long(), a.get_env()) {
        (Some(l), Some(e)) => format!("--{l} ({})", e.to_string_lossy()),
        (Some(l), None) => format!("--{l}"),
        (None, Some(e)) => e.to_string_lossy().into_owned(),
        (None, None) => a.get_id().to_string(),
    }
}

/// Parses a boolean: exactly `true`, `false`, `1` or `0`. Anything else is refused rather
/// than read as true (`KEYTURN_INIT_ALLOW_DISK=maybe` must not put secrets on a disk).
///
/// # Errors
/// A message for [`Checked`].
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(format!(
            "{} is not a boolean; write true, false, 1 or 0",
            echo(other)
        )),
    }
}

/// Parses a deadline: a humantime duration above zero.
///
/// # Errors
/// A message for [`Checked`].
pub fn parse_deadline(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{}: {e} (write e.g. 60s, 1m30s, 500ms)", echo(s)))?;
    if d.is_zero() {
        return Err("the deadline must be above zero".into());
    }
    Ok(d)
}

/// Parses `UID:GID`, both numeric, each 0 to `u32::MAX - 1`: `u32::MAX` is -1, which
/// `chown` takes as "leave unchanged", so the files would silently keep keyturn-init's own
/// owner.
///
/// # Errors
/// A message for [`Checked`].
pub fn parse_owner(s: &str) -> Result<Owner, String> {
    let bad = || {
        format!(
            "{} is not UID:GID (numbers from 0 to {}, e.g. 1000:1000)",
            echo(s),
            u32::MAX - 1
        )
    };
    let (u, g) = s.split_once(':').ok_or_else(bad)?;
    // `str::parse` takes a leading `+`; an id is digits only.
    let id = |t: &str, what: &str| -> Result<u32, String> {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        match t.parse::<u32>() {
            Ok(u32::MAX) => Err(format!(
                "{what} {} is -1 to chown, which leaves the owner unchanged; the largest {what} is {}",
                u32::MAX,
                u32::MAX - 1
            )),
            Ok(n) => Ok(n),
            Err(_) => Err(format!(
                "{what} {} is out of range; the largest {what} is {}",
                echo(t),
                u32::MAX - 1
            )),
        }
    };
    Ok(Owner {
        uid: id(u, "uid")?,
        gid: id(g, "gid")?,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn flags_parse_with_defaults() {
        let c = Cli::try_parse_from([
            "keyturn-init",
            "--manifest",
            "m.yaml",
            "--out",
            "/dev/shm/x",
        ])
        .unwrap();
        assert_eq!(c.deadline, Duration::from_secs(60));
        assert!(!c.allow_disk && !c.audit_stdout);
        let c = Cli::try_parse_from([
            "keyturn-init",
            "--annotations",
            "a",
            "--out",
            "o",
            "--deadline",
            "2s",
            "--allow-disk",
            "--owner",
            "1:2",
        ])
        .unwrap();
        assert_eq!(c.deadline, Duration::from_secs(2));
        assert!(c.allow_disk);
        assert_eq!(c.owner, Some(Owner { uid: 1, gid: 2 }));
    }

    #[test]
    fn exactly_one_manifest_source_is_required() {
        assert!(Cli::try_parse_from(["keyturn-init", "--out", "o"]).is_err());
        assert!(
            Cli::try_parse_from([
                "keyturn-init",
                "--out",
                "o",
                "--manifest",
                "m",
                "--annotations",
                "a"
            ])
            .is_err()
        );
    }

    /// Each example in `--help` is a command line this definition accepts.
    #[test]
    fn the_help_examples_parse() {
        let mut commands: Vec<String> = Vec::new();
        let mut continued = false;
        for line in EXAMPLES.lines().map(str::trim) {
            if continued {
                let c = commands.last_mut().unwrap();
                c.push(' ');
                c.push_str(line.trim_end_matches('\\'));
            } else if let Some(at) = line.find("keyturn-init ") {
                // A variable set before the command stands for its flag.
                let env = &line[..at];
                let mut cmd = line[at..].trim_end_matches('\\').to_owned();
                if env.starts_with("KEYTURN_INIT_MANIFEST_INLINE=") {
                    cmd.push_str(" --manifest-inline x");
                }
                commands.push(cmd);
            }
            continued = line.ends_with('\\');
        }
        assert_eq!(commands.len(), 3, "{commands:?}");
        for c in &commands {
            if let Err(e) = Cli::try_parse_from(c.split_whitespace()) {
                panic!("{c}: {e}");
            }
        }
        assert!(commands.iter().any(|c| c.contains("--manifest ")));
        assert!(commands.iter().any(|c| c.contains("--annotations ")));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse_deadline("0s").is_err());
        assert!(parse_deadline("soon").is_err());
        assert!(parse_owner("root:root").is_err());
        assert!(parse_owner("1000").is_err());
    }

    #[test]
    fn booleans_are_only_true_false_1_or_0() {
        assert_eq!(parse_bool("true"), Ok(true));
        assert_eq!(parse_bool("1"), Ok(true));
        assert_eq!(parse_bool("false"), Ok(false));
        assert_eq!(parse_bool("0"), Ok(false));
        for s in ["maybe", "yes", "on", "", "TRUE ", "2"] {
            let e = parse_bool(s).unwrap_err();
            assert!(
                e.contains("is not a boolean; write true, false, 1 or 0"),
                "{s}: {e}"
            );
        }
    }

    #[test]
    fn a_refused_value_names_the_flag_and_its_variable() {
        use clap::CommandFactory as _;
        use clap::builder::TypedValueParser as _;
        let cmd = Cli::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == "allow_disk")
            .unwrap();
        let e = Checked(parse_bool)
            .parse_ref(&cmd, Some(arg), OsStr::new("maybe"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--allow-disk (KEYTURN_INIT_ALLOW_DISK): \"maybe\" is not a boolean"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
        let e = Cli::try_parse_from([
            "keyturn-init",
            "--manifest",
            "m",
            "--out",
            "o",
            "--owner",
            "4294967295:0",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--owner (KEYTURN_INIT_OWNER): uid 4294967295 is -1 to chown"),
            "{e}"
        );
    }

    #[test]
    fn an_owner_is_two_ids_below_u32_max() {
        assert_eq!(
            parse_owner("0:4294967294"),
            Ok(Owner {
                uid: 0,
                gid: u32::MAX - 1
            })
        );
        for s in [
            "4294967295:0",
            "0:4294967295",
            "4294967296:0",
            "+1:1",
            "1:",
            ":1",
            "-1:0",
        ] {
            let e = parse_owner(s).unwrap_err();
            assert!(e.contains("4294967294"), "{s}: {e}");
        }
        // A huge value is not echoed whole.
        let e = parse_owner(&"9".repeat(1 << 20)).unwrap_err();
        assert!(e.len() < 300, "{}", e.len());
    }
}

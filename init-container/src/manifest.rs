//! The manifest: which secrets a pod gets, and how keyturn-init logs in to fetch them.
//!
//! ```yaml
//! vault:                                   # optional block; defaults shown
//!   address: https://vault.example:8200    # else VAULT_ADDR
//!   namespace: team-a                      # else VAULT_NAMESPACE
//!   auth: kubernetes                       # kubernetes | jwt | approle | token
//!   role: orders-api                       # kubernetes (required), jwt (optional)
//!   mount: kubernetes                      # the auth mount; default: the auth method's name
//!   jwt-file: /var/run/secrets/tokens/vault   # kubernetes, jwt; default: --jwt-file, else
//!                                          # /var/run/secrets/kubernetes.io/serviceaccount/token
//!   role-id: 5f2c…                         # approle: role-id or role-id-file
//!   role-id-file: /etc/approle/role-id
//!   secret-id-file: /etc/approle/secret-id # approle (required)
//!   token-file: /etc/vault/token           # token: else VAULT_TOKEN, else ~/.vault-token
//! secrets:
//!   - path: secret/data/orders/db          # Vault API path (KV v2 includes data/)
//!     file: db.env                         # relative to the output directory; no .., not absolute
//!     format: env                          # raw | env | json | yaml | template
//!     key: password                        # one field only (raw: required unless the secret has one field)
//!     mode: "0400"                         # octal; default 0400; see below for group/other bits
//!     shared: true                         # the opt-in a mode with group or other bits needs
//!     version: 3                           # KV v2: pin a version
//!     engine: kv2                          # kv1 | kv2 | dynamic; default: asked of Vault
//!     template: |                          # format template (implied when template: is set)
//!       postgres://{{ .user }}:{{ .password | urlquery }}@db/orders
//! ```
//!
//! A secret file is the owner's alone unless the entry says otherwise: `mode:` may set any
//! owner bits, but a group or other bit (`0440`, `0404`, `0500`…) needs `shared: true` on
//! the same entry, and group or other *write* bits (`0660`, `0777`…) are refused even then:
//! whoever can write a secret file can replace the credential a workload uses. (To give a
//! file to the workload's own user, `--owner UID:GID` is the narrower tool.)
//!
//! `format` defaults to `template` when `template:` is set, else `raw` when `key:` is set,
//! else `json`. The manifest is YAML (or JSON, which is YAML too). Every problem is
//! reported as `SOURCE:LINE:COLUMN: message`, all of them at once, before any network call.

use std::collections::HashMap;
use std::path::PathBuf;

use keyturn_core::config::{self, ConfigError, Location, Problems};
pub use keyturn_core::vault::auth::{AuthSpec, RoleId};
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::fetch::Engine;
use crate::paths::RelPath;
use crate::render::Format;
use crate::render::template::Template;
use crate::text::echo;

/// Default mode of secret files.
pub const DEFAULT_MODE: u32 = 0o400;

/// A validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where it came from (a file name, `KEYTURN_INIT_MANIFEST_INLINE`, an annotations
    /// file), for messages.
    pub origin: String,
    /// How to reach and log in to Vault.
    pub vault: VaultSpec,
    /// The files to write.
    pub secrets: Vec<SecretSpec>,
}

/// The `vault:` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultSpec {
    /// Overrides `VAULT_ADDR`.
    pub address: Option<String>,
    /// Overrides `VAULT_NAMESPACE`.
    pub namespace: Option<String>,
    /// How to log in.
    pub auth: AuthSpec,
}

/// One file to write.
#[derive(Debug, Clone)]
pub struct SecretSpec {
    /// Where the entry starts in the manifest.
    pub at: Location,
    /// The Vault path, normalized.
    pub path: String,
    /// A pinned KV v2 version.
    pub version: Option<u64>,
    /// The engine, if given.
    pub engine: Option<Engine>,
    /// One field only.
    pub key: Option<String>,
    /// The file, relative to the output directory.
    pub file: RelPath,
    /// How to render.
    pub format: Format,
    /// Permission bits.
    pub mode: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    vault: Option<Spanned<RawVault>>,
    secrets: Spanned<Vec<Spanned<RawSecret>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawVault {
    address: Option<Spanned<String>>,
    namespace: Option<String>,
    auth: Option<Spanned<String>>,
    role: Option<Spanned<String>>,
    mount: Option<Spanned<String>>,
    jwt_file: Option<Spanned<String>>,
    role_id: Option<Spanned<String>>,
    role_id_file: Option<Spanned<String>>,
    secret_id_file: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    path: Spanned<String>,
    file: Spanned<String>,
    key: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    shared: Option<Spanned<bool>>,
    template: Option<Spanned<String>>,
    version: Option<Spanned<u64>>,
    engine: Option<Spanned<String>>,
}

impl Manifest {
    /// Parses and validates a manifest. `origin` names it in messages.
    ///
    /// # Errors
    /// Every problem found, each located.
    pub fn parse(origin: &str, text: &str) -> Result<Self, Vec<ConfigError>> {
        let raw: RawManifest = config::from_yaml(origin, text).map_err(|e| vec![e])?;
        let mut p = Problems::new(origin);
        let vault = match raw.vault {
            Some(v) => vault_spec(&v.value, Location::of(&v), &mut p),
            None => {
                p.located(
                    Location { line: 1, column: 1 },
                    "no vault: block; say how to log in (auth: kubernetes, role: …)",
                );
                None
            }
        };
        if raw.secrets.value.is_empty() {
            p.located(
                Location::of(&raw.secrets),
                "secrets: is empty; list at least one secret",
            );
        }
        let mut secrets = Vec::with_capacity(raw.secrets.value.len());
        for s in &raw.secrets.value {
            if let Some(spec) = secret_spec(&s.value, Location::of(s), &mut p) {
                secrets.push(spec);
            }
        }
        check_files(&secrets, &mut p, &|_| None);
        let vault = p.finish(vault)?;
        Ok(Self {
            origin: origin.to_owned(),
            vault: vault.unwrap_or(VaultSpec {
                address: None,
                namespace: None,
                auth: AuthSpec::Token { token_file: None },
            }),
            secrets,
        })
    }
}

fn vault_spec(v: &RawVault, at: Location, p: &mut Problems) -> Option<VaultSpec> {
    let start = p.len();
    let auth_name = v.auth.as_ref().map_or("kubernetes", |a| a.value.as_str());
    let auth_at = v.auth.as_ref().map_or(at, Location::of);
    let s = |x: &Option<Spanned<String>>| x.as_ref().map(|x| x.value.clone());
    let mount = s(&v.mount).map(|m| m.trim_matches('/').trim_start_matches("auth/").to_owned());
    if let Some(m) = &v.mount
        && mount.as_deref().is_some_and(str::is_empty)
    {
        p.located(Location::of(m), "mount: is empty");
    }
    let not_for = |p: &mut Problems, field: &Option<Spanned<String>>, name: &str| {
        if let Some(f) = field {
            p.located(
                Location::of(f),
                format!("{name}: does not apply to auth {auth_name}"),
            );
        }
    };
    let auth = match auth_name {
        "kubernetes" | "jwt" => {
            not_for(p, &v.role_id, "role-id");
            not_for(p, &v.role_id_file, "role-id-file");
            not_for(p, &v.secret_id_file, "secret-id-file");
            not_for(p, &v.token_file, "token-file");
            let jwt_file = s(&v.jwt_file).map(PathBuf::from);
            if auth_name == "kubernetes" {
                let role = s(&v.role).unwrap_or_default();
                if role.is_empty() {
                    p.located(
                        v.role.as_ref().map_or(auth_at, Location::of),
                        "role: is required for auth kubernetes",
                    );
                }
                AuthSpec::Kubernetes {
                    mount: mount.unwrap_or_else(|| "kubernetes".into()),
                    role,
                    jwt_file,
                }
            } else {
                AuthSpec::Jwt {
                    mount: mount.unwrap_or_else(|| "jwt".into()),
                    role: s(&v.role),
                    jwt_file,
                }
            }
        }
        "approle" => {
            not_for(p, &v.role, "role");
            not_for(p, &v.jwt_file, "jwt-file");
            not_for(p, &v.token_file, "token-file");
            let role_id = match (s(&v.role_id), s(&v.role_id_file)) {
                (Some(r), None) => RoleId::Inline(r),
                (None, Some(f)) => RoleId::File(f.into()),
                _ => {
                    p.located(
                        auth_at,
                        "auth approle needs exactly one of role-id: and role-id-file:",
                    );
                    RoleId::Inline(String::new())
                }
            };
            let secret_id_file = match s(&v.secret_id_file) {
                Some(f) => PathBuf::from(f),
                None => {
                    p.located(auth_at, "secret-id-file: is required for auth approle");
                    PathBuf::new()
                }
            };
            AuthSpec::AppRole {
                mount: mount.unwrap_or_else(|| "approle".into()),
                role_id,
                secret_id_file,
            }
        }
        "token" => {
            not_for(p, &v.role, "role");
            not_for(p, &v.mount, "mount");
            not_for(p, &v.jwt_file, "jwt-file");
            not_for(p, &v.role_id, "role-id");
            not_for(p, &v.role_id_file, "role-id-file");
            not_for(p, &v.secret_id_file, "secret-id-file");
            AuthSpec::Token {
                token_file: s(&v.token_file).map(PathBuf::from),
            }
        }
        other => {
            p.located(
                auth_at,
                format!(
                    "unknown auth {}; expected one of kubernetes, jwt, approle, token",
                    echo(other)
                ),
            );
            return None;
        }
    };
    if let Some(a) = &v.address
        && let Err(e) = keyturn_core::vault::config::check_addr("address", &a.value)
    {
        p.located(Location::of(a), e.to_string());
    }
    (p.len() == start).then(|| VaultSpec {
        address: s(&v.address),
        namespace: v.namespace.clone(),
        auth,
    })
}

/// Normalizes and checks a Vault path: no leading/trailing `/`, no empty, `.` or `..`
/// segment.
///
/// # Errors
/// A message naming the problem.
pub fn vault_path(p: &str) -> Result<String, String> {
    let t = p.trim_matches('/');
    if t.is_empty() {
        return Err("path: is empty".into());
    }
    if t.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(format!("path {} has an empty, . or .. segment", echo(p)));
    }
    if t.chars().any(char::is_whitespace) {
        return Err(format!("path {} contains whitespace", echo(p)));
    }
    // The path goes into a request URL: a control character has no place in it, and `?` or
    // `#` would turn the rest into a query (`?list=true`) or a fragment Vault never sees.
    if t.chars().any(|c| c.is_control() || c == '?' || c == '#') {
        return Err(format!(
            "path {} contains a control character, '?' or '#'",
            echo(p)
        ));
    }
    Ok(t.to_owned())
}

/// Parses an octal mode: `"0400"`, `"400"`, `"0o400"`; only permission bits (no setuid,
/// setgid, sticky).
///
/// # Errors
/// A message naming the problem.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let bad = || format!("mode {} is not an octal permission like \"0400\"", echo(s));
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(bad());
    }
    let m = u32::from_str_radix(digits, 8).map_err(|_| bad())?;
    if m > 0o777 {
        return Err(format!(
            "mode {s:?} sets setuid, setgid or sticky bits; only 0000-0777 are allowed"
        ));
    }
    Ok(m)
}

/// Group and other write bits: never allowed on a secret file.
const SHARED_WRITE: u32 = 0o022;
/// Every group and other bit.
const SHARED_ANY: u32 = 0o077;

/// Checks a file mode against the sharing rule (see the module doc): group or other bits only
/// when `shared` (the entry's opt-in, which `opt_in` names for the message), and group or
/// other write bits never.
///
/// # Errors
/// A message naming the mode and what to do.
pub fn check_mode(mode: u32, shared: bool, opt_in: &str) -> Result<(), String> {
    if mode & SHARED_WRITE != 0 {
        return Err(format!(
            "mode \"{mode:04o}\" lets the group or others write the file; a secret file is \
             writable by its owner only"
        ));
    }
    if mode & SHARED_ANY != 0 && !shared {
        return Err(format!(
            "mode \"{mode:04o}\" lets the group or others read the file; add {opt_in} if that \
             is intended (or give the file to the workload's user with --owner)"
        ));
    }
    Ok(())
}

fn secret_spec(s: &RawSecret, at: Location, p: &mut Problems) -> Option<SecretSpec> {
    let start = p.len();
    let path = vault_path(&s.path.value)
        .map_err(|m| p.located(Location::of(&s.path), m))
        .ok();
    let file = RelPath::parse(&s.file.value)
        .map_err(|e| p.located(Location::of(&s.file), e.to_string()))
        .ok();
    let shared = s.shared.as_ref().is_some_and(|v| v.value);
    let mode = match &s.mode {
        Some(m) => parse_mode(&m.value)
            .and_then(|mode| check_mode(mode, shared, "shared: true to this entry").map(|()| mode))
            .map_err(|e| p.located(Location::of(m), e))
            .ok(),
        None => Some(DEFAULT_MODE),
    };
    let engine = s.engine.as_ref().and_then(|e| match e.value.as_str() {
        "kv1" => Some(Engine::Kv1),
        "kv2" => Some(Engine::Kv2),
        "dynamic" => Some(Engine::Dynamic),
        other => {
            p.located(
                Location::of(e),
                format!(
                    "unknown engine {}; expected one of kv1, kv2, dynamic",
                    echo(other)
                ),
            );
            None
        }
    });
    let version = s.version.as_ref().map(|v| {
        if v.value == 0 {
            p.located(Location::of(v), "version: starts at 1");
        }
        if matches!(engine, Some(Engine::Kv1 | Engine::Dynamic)) {
            p.located(Location::of(v), "version: applies to engine kv2 only");
        }
        v.value
    });
    let key = s.key.as_ref().map(|k| k.value.clone());
    if let Some(k) = &s.key
        && k.value.is_empty()
    {
        p.located(Location::of(k), "key: is empty");
    }
    let format_name = match (&s.format, &s.template, &s.key) {
        (Some(f), _, _) => f.value.as_str(),
        (None, Some(_), _) => "template",
        (None, None, Some(_)) => "raw",
        (None, None, None) => "json",
    };
    let format_at = s.format.as_ref().map_or(at, Location::of);
    let format = match format_name {
        "raw" => Some(Format::Raw),
        "env" => Some(Format::Env),
        "json" => Some(Format::Json),
        "yaml" => Some(Format::Yaml),
        "template" => match &s.template {
            None => {
                p.located(format_at, "format template needs a template: field");
                None
            }
            Some(t) => match Template::parse(&t.value) {
                Ok(t) => Some(Format::Template(t)),
                Err(e) => {
                    p.located(Location::of(t), format!("template: {e}"));
                    None
                }
            },
        },
        other => {
            p.located(
                format_at,
                format!(
                    "unknown format {}; expected one of raw, env, json, yaml, template",
                    echo(other)
                ),
            );
            None
        }
    };
    if let Some(t) = &s.template
        && format_name != "template"
    {
        p.located(
            Location::of(t),
            format!("template: is only used with format template, not {format_name}"),
        );
    }
    if format_name == "template"
        && let Some(k) = &s.key
    {
        p.located(
            Location::of(k),
            "key: does not apply to format template; name fields in the template",
        );
    }
    if p.len() != start {
        return None;
    }
    Some(SecretSpec {
        at,
        path: path?,
        version,
        engine,
        key,
        file: file?,
        format: format?,
        mode: mode?,
    })
}

/// Two entries writing one file, or a file where another needs a directory. `name` gives an
/// entry's name for the message when it has one (an annotation: both are named, since
/// either may be the one to fix); manifest entries are named by their line.
pub(crate) fn check_files(
    secrets: &[SecretSpec],
    p: &mut Problems,
    name: &dyn Fn(&SecretSpec) -> Option<String>,
) {
    let subject = |s: &SecretSpec| name(s).map_or_else(String::new, |n| format!("{n}: "));
    let other = |s: &SecretSpec| match name(s) {
        Some(n) => format!("{n} (line {})", s.at.line),
        None => format!("the entry at line {}", s.at.line),
    };
    let mut seen: HashMap<&RelPath, &SecretSpec> = HashMap::with_capacity(secrets.len());
    for s in secrets {
        if let Some(first) = seen.get(&s.file) {
            p.located(
                s.at,
                format!(
                    "{}file {} is also written by {}",
                    subject(s),
                    s.file,
                    other(first)
                ),
            );
        } else {
            seen.insert(&s.file, s);
        }
    }
    // A file that is another's directory: only possible with nested files, which are rare.
    if secrets.iter().any(|s| !s.file.parents().is_empty()) {
        for a in secrets {
            for b in secrets {
                if a.file.is_ancestor_of(&b.file) {
                    p.located(
                        b.at,
                        format!(
                            "{}file {} needs {} to be a directory, but {} writes it as a file",
                            subject(b),
                            b.file,
                            a.file,
                            other(a)
                        ),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VAULT: &str = "vault: { auth: kubernetes, role: app }\n";

    fn parse(secrets: &str) -> Result<Manifest, Vec<ConfigError>> {
        Manifest::parse("m.yaml", &format!("{VAULT}secrets:\n{secrets}"))
    }

    fn errs(secrets: &str) -> Vec<String> {
        parse(secrets)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_full_manifest_parses_with_defaults() {
        let m = parse(
            "  - path: /secret/data/orders/db/\n    file: db.env\n    format: env\n  - path: database/creds/ro\n    file: ./ro.json\n    mode: 0440\n    shared: true\n  - path: kv/x\n    key: k\n    file: k\n",
        )
        .unwrap();
        assert_eq!(m.secrets.len(), 3);
        assert_eq!(m.secrets[0].path, "secret/data/orders/db");
        assert_eq!(m.secrets[0].format, Format::Env);
        assert_eq!(m.secrets[0].mode, 0o400);
        assert_eq!(m.secrets[1].format, Format::Json);
        assert_eq!(m.secrets[1].mode, 0o440);
        assert_eq!(m.secrets[1].file.to_string(), "ro.json");
        assert_eq!(m.secrets[2].format, Format::Raw);
        assert_eq!(m.secrets[0].at, Location { line: 3, column: 5 });
        assert_eq!(
            m.vault.auth,
            AuthSpec::Kubernetes {
                mount: "kubernetes".into(),
                role: "app".into(),
                jwt_file: None
            }
        );
    }

    #[test]
    fn an_unknown_field_is_located() {
        assert_eq!(
            errs("  - path: a/b\n    fle: x\n"),
            [
                "m.yaml:4:5: unknown field `fle`, expected one of path, file, key, format, mode, shared, template, version, engine"
            ]
        );
    }

    #[test]
    fn absolute_and_dot_dot_files_are_refused_at_their_line() {
        let e = errs("  - path: a/b\n    file: /etc/x\n  - path: a/c\n    file: ../x\n");
        assert_eq!(e.len(), 2);
        assert!(
            e[0].starts_with("m.yaml:4:11: file \"/etc/x\" is absolute"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("m.yaml:6:11: file \"../x\" contains \"..\""),
            "{e:?}"
        );
    }

    #[test]
    fn two_entries_writing_one_file_are_refused() {
        let e = errs("  - path: a/b\n    file: x\n  - path: a/c\n    file: ./x\n");
        assert_eq!(
            e,
            ["m.yaml:5:5: file x is also written by the entry at line 3"]
        );
        let e = errs("  - path: a/b\n    file: d\n  - path: a/c\n    file: d/x\n");
        assert!(e[0].contains("needs d to be a directory"), "{e:?}");
    }

    #[test]
    fn unknown_format_engine_and_bad_mode_are_each_reported() {
        let e = errs(
            "  - path: a/b\n    file: x\n    format: toml\n    engine: kv3\n    mode: \"0999\"\n",
        );
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e.iter()
                .any(|m| m.starts_with("m.yaml:5:13: unknown format \"toml\"")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("m.yaml:6:13: unknown engine \"kv3\"")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("m.yaml:7:11: mode \"0999\"")),
            "{e:?}"
        );
    }

    #[test]
    fn modes_are_octal_and_permission_bits_only() {
        assert_eq!(parse_mode("0400"), Ok(0o400));
        assert_eq!(parse_mode("640"), Ok(0o640));
        assert_eq!(parse_mode("0o444"), Ok(0o444));
        assert!(parse_mode("4755").is_err());
        assert!(parse_mode("rw").is_err());
        assert!(parse_mode("").is_err());
    }

    #[test]
    fn group_or_other_bits_need_shared_and_write_bits_are_never_allowed() {
        for mode in ["0400", "0600", "0700", "0000"] {
            let m = parse(&format!("  - {{ path: a/b, file: x, mode: \"{mode}\" }}\n")).unwrap();
            assert_eq!(format!("{:04o}", m.secrets[0].mode), mode);
        }
        for mode in ["0440", "0404", "0444", "0410"] {
            let e = errs(&format!("  - {{ path: a/b, file: x, mode: \"{mode}\" }}\n"));
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(
                e[0].starts_with("m.yaml:3:33: mode \"")
                    && e[0].contains("lets the group or others read the file; add shared: true"),
                "{mode}: {e:?}"
            );
            let ok = parse(&format!(
                "  - {{ path: a/b, file: x, mode: \"{mode}\", shared: true }}\n"
            ))
            .unwrap();
            assert_eq!(format!("{:04o}", ok.secrets[0].mode), mode);
        }
        for mode in ["0777", "0666", "0620", "0602"] {
            for shared in ["", ", shared: true"] {
                let e = errs(&format!(
                    "  - {{ path: a/b, file: x, mode: \"{mode}\"{shared} }}\n"
                ));
                assert!(
                    e[0].contains("lets the group or others write the file"),
                    "{mode}{shared}: {e:?}"
                );
            }
        }
    }

    #[test]
    fn template_rules_are_checked() {
        let e = errs("  - path: a/b\n    file: x\n    format: template\n");
        assert!(
            e[0].contains("format template needs a template: field"),
            "{e:?}"
        );
        let e = errs("  - path: a/b\n    file: x\n    format: env\n    template: \"{{ .a }}\"\n");
        assert!(e[0].contains("only used with format template"), "{e:?}");
        let e = errs("  - path: a/b\n    file: x\n    template: \"{{ if .a }}\"\n");
        assert!(
            e[0].starts_with(
                "m.yaml:5:15: template: template line 1 column 1: `if` is not supported"
            ),
            "{e:?}"
        );
        let m = parse("  - path: a/b\n    file: x\n    template: \"{{ .a }}\"\n").unwrap();
        assert!(matches!(m.secrets[0].format, Format::Template(_)));
    }

    #[test]
    fn version_needs_kv2_and_starts_at_one() {
        let e = errs("  - path: a/b\n    file: x\n    version: 0\n");
        assert!(e[0].contains("version: starts at 1"), "{e:?}");
        let e = errs("  - path: a/b\n    file: x\n    engine: kv1\n    version: 2\n");
        assert!(e[0].contains("applies to engine kv2 only"), "{e:?}");
    }

    #[test]
    fn a_huge_value_is_not_echoed_whole() {
        let big = "a".repeat(1 << 20);
        for entry in [
            format!("  - {{ path: {big}/../x, file: x }}\n"),
            format!("  - {{ path: a/b, file: x, format: {big} }}\n"),
            format!("  - {{ path: a/b, file: x, mode: \"{big}\" }}\n"),
        ] {
            let e = errs(&entry);
            assert!(
                e[0].len() < 400 && e[0].contains("… (1048"),
                "{}",
                &e[0][..200]
            );
        }
    }

    #[test]
    fn thousands_of_problems_are_reported_as_the_first_hundred_and_a_count() {
        let entries: String = (0..500)
            .map(|i| format!("  - path: a/../{i}\n    file: f{i}\n"))
            .collect();
        let e = errs(&entries);
        assert_eq!(e.len(), config::MAX_PROBLEMS + 1, "{}", e.len());
        assert!(
            e[config::MAX_PROBLEMS].ends_with(": 400 more problems not shown"),
            "{}",
            e[config::MAX_PROBLEMS]
        );
    }

    #[test]
    fn an_address_with_credentials_is_refused_without_echoing_them() {
        let e = Manifest::parse(
            "m.yaml",
            "vault: { auth: kubernetes, role: r, address: \"https://u:hunter2@vault:8200/x\" }\n\
             secrets:\n  - { path: a/b, file: x }\n",
        )
        .unwrap_err();
        let e = e[0].to_string();
        assert!(e.contains("must not carry credentials"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn bad_vault_paths_are_refused() {
        let e = errs("  - path: a/../b\n    file: x\n  - path: /\n    file: y\n");
        assert_eq!(
            e,
            [
                "m.yaml:3:11: path \"a/../b\" has an empty, . or .. segment",
                "m.yaml:5:11: path: is empty"
            ]
        );
    }

    #[test]
    fn a_vault_path_with_a_control_character_a_query_or_a_fragment_is_refused() {
        for p in [
            "secret/data/a\u{1b}[2J",
            "secret/data/x?list=true",
            "secret/data/x#y",
        ] {
            let e = vault_path(p).unwrap_err();
            assert!(e.contains("a control character, '?' or '#'"), "{e}");
            assert!(!e.contains('\u{1b}'), "{e:?}");
        }
    }

    #[test]
    fn vault_block_rules_are_checked() {
        let m = |v: &str| {
            Manifest::parse(
                "m.yaml",
                &format!("vault: {v}\nsecrets:\n  - path: a/b\n    file: x\n"),
            )
        };
        let e = m("{ auth: kubernetes }").unwrap_err();
        assert!(e[0].to_string().contains("role: is required"), "{e:?}");
        let e = m("{ auth: ldap }").unwrap_err();
        assert!(e[0].to_string().contains("unknown auth \"ldap\""), "{e:?}");
        let e = m("{ auth: approle, role-id: r }").unwrap_err();
        assert!(
            e[0].to_string().contains("secret-id-file: is required"),
            "{e:?}"
        );
        let e = m("{ auth: token, role: r }").unwrap_err();
        assert!(
            e[0].to_string()
                .contains("role: does not apply to auth token"),
            "{e:?}"
        );
        let e = m("{ auth: token, address: \"vault:8200\" }").unwrap_err();
        assert!(
            e[0].to_string().contains("not an http:// or https:// URL"),
            "{e:?}"
        );
        let ok =
            m("{ auth: approle, mount: auth/ar/, role-id-file: /r, secret-id-file: /s }").unwrap();
        assert_eq!(
            ok.vault.auth,
            AuthSpec::AppRole {
                mount: "ar".into(),
                role_id: RoleId::File("/r".into()),
                secret_id_file: "/s".into()
            }
        );
        let e = Manifest::parse("m.yaml", "secrets:\n  - path: a/b\n    file: x\n").unwrap_err();
        assert!(e[0].to_string().contains("no vault: block"), "{e:?}");
    }

    #[test]
    fn an_empty_secret_list_and_broken_yaml_are_refused() {
        let e = Manifest::parse("m.yaml", &format!("{VAULT}secrets: []\n")).unwrap_err();
        assert!(e[0].to_string().contains("secrets: is empty"), "{e:?}");
        let e = Manifest::parse("m.yaml", "secrets: [\n").unwrap_err();
        assert!(e[0].to_string().starts_with("m.yaml:1:10:"), "{e:?}");
    }

    #[test]
    fn json_manifests_are_accepted() {
        let m = Manifest::parse(
            "inline",
            r#"{"vault":{"auth":"token"},"secrets":[{"path":"kv/a","file":"a","format":"raw","key":"k"}]}"#,
        )
        .unwrap();
        assert_eq!(m.secrets[0].key.as_deref(), Some("k"));
    }
}

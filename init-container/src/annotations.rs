//! Vault Agent Injector annotations, read from a downward-API file, as a [`Manifest`].
//!
//! A pod written for the injector works unchanged: mount its annotations with the
//! downward API (`fieldRef: metadata.annotations`) and pass the file as `--annotations`.
//! Understood (all under `vault.hashicorp.com/`):
//!
//! | annotation | meaning |
//! |---|---|
//! | `agent-inject-secret-NAME: PATH` | fetch `PATH` into the file `NAME` |
//! | `agent-inject-template-NAME: TEMPLATE` | render it with `TEMPLATE` (see [`crate::render::template`]; the common `{{- with secret "PATH" -}}…{{ .Data.data.KEY }}…{{- end }}` shapes) |
//! | `agent-inject-file-NAME: FILE` | write to `FILE` instead of `NAME` |
//! | `agent-inject-perms-NAME: "0440"` | file mode (default 0400; group or other bits need `keyturn.dev/shared-NAME`) |
//! | `agent-inject-default-template: map\|json` | the rendering without a template: `map` (default) is one `name: value` line per field, `json` a JSON object |
//! | `role` | the Vault role for kubernetes auth (required) |
//! | `auth-path` | the auth mount, `auth/kubernetes` by default |
//! | `namespace` | the Vault namespace |
//! | `service` | the Vault address |
//!
//! One annotation of keyturn's own: `keyturn.dev/shared-NAME: "true"` is the opt-in a
//! `perms` with group or other bits needs (the manifest's `shared: true`); group or other
//! write bits are refused even with it. Any other `keyturn.dev/` annotation is an error.
//!
//! Differences, on purpose: files are mode 0400 unless `perms` says otherwise, where the
//! injector writes 0644 (readable by every user in the pod); give a file to the workload's
//! user with `--owner UID:GID`, or opt in to sharing as above. Without a template, KV v2 secrets render their fields (one
//! `name: value` line each) rather than Go's dump of `data: map[…] metadata: map[…]`.
//! `agent-inject`, `agent-inject-status` and `agent-inject-containers` are about the
//! webhook and are ignored, as are other `vault.hashicorp.com/*` annotations (the agent
//! sidecar's resources, TLS, caching: logged at debug). Any other `agent-inject-*`
//! annotation (`agent-inject-command-*`, `agent-inject-token`, `agent-inject-template-file-*`,
//! …) is an error naming it, since ignoring it would silently change what the pod gets.
//!
//! The file format is the downward API's: one `key="value"` line per annotation, the value
//! quoted as Go's `%q` does (`\n`, `\"`, `\\`, `\t`, `\xNN`, `\uNNNN`, …).

use keyturn_core::config::{ConfigError, Location, Problems};

use crate::manifest::{
    AuthSpec, Manifest, SecretSpec, VaultSpec, check_files, check_mode, parse_mode, vault_path,
};
use crate::paths::RelPath;
use crate::render::Format;
use crate::render::template::Template;
use std::collections::{BTreeMap, HashMap};

const PREFIX: &str = "vault.hashicorp.com/";
/// keyturn's own annotations.
const KEYTURN_PREFIX: &str = "keyturn.dev/";
/// The mode of a rendered file without `perms`: the manifest's default, not the injector's
/// 0644, which lets every user in the pod read the secret.
pub const DEFAULT_MODE: u32 = crate::manifest::DEFAULT_MODE;
/// The default rendering without a template: one `name: value` line per field.
pub const MAP_TEMPLATE: &str = "{{ range $k, $v := . }}{{ $k }}: {{ $v }}\n{{ end }}";

#[derive(Default)]
struct Named {
    secret: Option<(String, Location)>,
    template: Option<(String, Location)>,
    file: Option<(String, Location)>,
    perms: Option<(String, Location)>,
    shared: Option<(String, Location)>,
}

/// Parses a downward-API annotations file into a manifest.
///
/// # Errors
/// Every problem, located by line in the file.
pub fn parse(origin: &str, text: &str) -> Result<Manifest, Vec<ConfigError>> {
    let mut p = Problems::new(origin);
    let mut named: BTreeMap<String, Named> = BTreeMap::new();
    let mut role = None;
    let mut auth_path = None;
    let mut namespace = None;
    let mut address = None;
    let mut default_json = false;
    // Each key's first line: a key given twice is refused, not decided by which comes last.
    let mut seen: HashMap<&str, u64> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let at = Location {
            line: i as u64 + 1,
            column: 1,
        };
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, quoted)) = line.split_once('=') else {
            p.located(at, "not a key=\"value\" line");
            continue;
        };
        let ours = key.strip_prefix(KEYTURN_PREFIX);
        let Some(name) = key.strip_prefix(PREFIX).or(ours) else {
            continue;
        };
        let value = match go_unquote(quoted) {
            Some(v) => v,
            None => {
                p.located(at, format!("{key}: value is not a Go-quoted string"));
                continue;
            }
        };
        if let Some(first) = seen.insert(key, at.line) {
            seen.insert(key, first);
            p.located(
                at,
                format!(
                    "{key} is given twice (lines {first} and {}); keep one",
                    at.line
                ),
            );
            continue;
        }
        if ours.is_some() {
            match name.strip_prefix("shared-").filter(|n| !n.is_empty()) {
                Some(n) => named.entry(n.to_owned()).or_default().shared = Some((value, at)),
                None => p.located(
                    at,
                    format!(
                        "{key} is not a keyturn-init annotation (the one there is {KEYTURN_PREFIX}shared-NAME)"
                    ),
                ),
            }
            continue;
        }
        let slot = |prefix: &str| {
            name.strip_prefix(prefix)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
        };
        if let Some(n) = slot("agent-inject-secret-") {
            named.entry(n).or_default().secret = Some((value, at));
        } else if let Some(n) = slot("agent-inject-template-") {
            named.entry(n).or_default().template = Some((value, at));
        } else if let Some(n) = slot("agent-inject-file-") {
            named.entry(n).or_default().file = Some((value, at));
        } else if let Some(n) = slot("agent-inject-perms-") {
            named.entry(n).or_default().perms = Some((value, at));
        } else {
            match name {
                "role" => role = Some((value, at)),
                "auth-path" => auth_path = Some(value),
                "namespace" => namespace = Some(value),
                "service" => address = Some((value, at)),
                "agent-inject-default-template" => match value.as_str() {
                    "map" => default_json = false,
                    "json" => default_json = true,
                    other => p.located(at, format!("{key}: {other:?} is not map or json")),
                },
                "agent-inject" | "agent-inject-status" | "agent-inject-containers" => {}
                n if n.starts_with("agent-inject") => {
                    p.located(
                        at,
                        format!(
                            "{key} is not supported by keyturn-init; remove it or use a manifest"
                        ),
                    );
                }
                _ => {
                    tracing::debug!(annotation = %key, "ignoring a Vault injector annotation keyturn-init does not need")
                }
            }
        }
    }
    let mut secrets = Vec::with_capacity(named.len());
    for (name, n) in &named {
        let Some((path, at)) = &n.secret else {
            let (what, at) = [
                ("agent-inject-template-", &n.template),
                ("agent-inject-file-", &n.file),
                ("agent-inject-perms-", &n.perms),
            ]
            .into_iter()
            .find_map(|(w, v)| v.as_ref().map(|(_, at)| (format!("{PREFIX}{w}"), *at)))
            .or_else(|| {
                n.shared
                    .as_ref()
                    .map(|(_, at)| (format!("{KEYTURN_PREFIX}shared-"), *at))
            })
            .unwrap_or((format!("{PREFIX}agent-inject-file-"), Location::default()));
            p.located(
                at,
                format!("{what}{name} has no {PREFIX}agent-inject-secret-{name}"),
            );
            continue;
        };
        let start_errors = p.len();
        let path = vault_path(path).map_err(|m| p.located(*at, m)).ok();
        let file_name = n.file.as_ref().map_or(name.as_str(), |(f, _)| f.as_str());
        let file_at = n.file.as_ref().map_or(*at, |(_, a)| *a);
        let file = RelPath::parse(file_name)
            .map_err(|e| p.located(file_at, e.to_string()))
            .ok();
        let shared = match &n.shared {
            None => false,
            Some((v, a)) => crate::cli::parse_bool(v)
                .map_err(|e| p.located(*a, format!("{KEYTURN_PREFIX}shared-{name}: {e}")))
                .unwrap_or(false),
        };
        let mode = match &n.perms {
            Some((m, a)) => parse_mode(m)
                .and_then(|mode| {
                    check_mode(
                        mode,
                        shared,
                        &format!("{KEYTURN_PREFIX}shared-{name}=\"true\""),
                    )
                    .map(|()| mode)
                })
                .map_err(|e| p.located(*a, format!("{PREFIX}agent-inject-perms-{name}: {e}")))
                .ok(),
            None => Some(DEFAULT_MODE),
        };
        let format = match &n.template {
            Some((t, a)) => match Template::parse(t) {
                Ok(t) => Some(Format::Template(t)),
                Err(e) => {
                    p.located(*a, format!("{PREFIX}agent-inject-template-{name}: {e}"));
                    None
                }
            },
            None if default_json => Some(Format::Json),
            None => Template::parse(MAP_TEMPLATE).ok().map(Format::Template),
        };
        if p.len() != start_errors {
            continue;
        }
        if let (Some(path), Some(file), Some(mode), Some(format)) = (path, file, mode, format) {
            secrets.push(SecretSpec {
                at: *at,
                path,
                version: None,
                engine: None,
                key: None,
                file,
                format,
                mode,
            });
        }
    }
    if secrets.is_empty() && named.is_empty() {
        p.located(
            Location { line: 1, column: 1 },
            format!("no {PREFIX}agent-inject-secret-* annotations"),
        );
    }
    // Entries are named by their secret annotation, whose line is the entry's.
    let names: HashMap<u64, &str> = named
        .iter()
        .filter_map(|(n, v)| v.secret.as_ref().map(|(_, at)| (at.line, n.as_str())))
        .collect();
    check_files(&secrets, &mut p, &|s| {
        names
            .get(&s.at.line)
            .map(|n| format!("{PREFIX}agent-inject-secret-{n}"))
    });
    let role = match role {
        Some((r, _)) if !r.is_empty() => r,
        _ => {
            p.located(
                Location { line: 1, column: 1 },
                format!("{PREFIX}role is required"),
            );
            String::new()
        }
    };
    if let Some((a, at)) = &address
        && let Err(e) = keyturn_core::vault::config::check_addr(&format!("{PREFIX}service"), a)
    {
        p.located(*at, e.to_string());
    }
    let mount = auth_path
        .as_deref()
        .map(|a| a.trim_matches('/').trim_start_matches("auth/").to_owned())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "kubernetes".into());
    let vault = VaultSpec {
        address: address.map(|(a, _)| a),
        namespace: namespace.filter(|n| !n.is_empty()),
        auth: AuthSpec::Kubernetes {
            mount,
            role,
            jwt_file: None,
        },
    };
    p.finish(Manifest {
        origin: origin.to_owned(),
        vault,
        secrets,
    })
}

/// Undoes Go's `strconv.Quote` (what `%q` writes). `None` if `s` is not such a string.
#[must_use]
pub fn go_unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out: Vec<u8> = Vec::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '"' {
            return None;
        }
        if c != '\\' {
            let mut b = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            continue;
        }
        let e = chars.next()?;
        let simple = match e {
            'a' => Some(0x07),
            'b' => Some(0x08),
            'f' => Some(0x0c),
            'n' => Some(b'\n'),
            'r' => Some(b'\r'),
            't' => Some(b'\t'),
            'v' => Some(0x0b),
            '\\' => Some(b'\\'),
            '"' => Some(b'"'),
            '\'' => Some(b'\''),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            continue;
        }
        let hex = |n: usize, chars: &mut std::str::Chars<'_>| -> Option<u32> {
            let s: String = chars.by_ref().take(n).collect();
            if s.len() != n {
                return None;
            }
            u32::from_str_radix(&s, 16).ok()
        };
        match e {
            'x' => out.push(u8::try_from(hex(2, &mut chars)?).ok()?),
            'u' | 'U' => {
                let c = char::from_u32(hex(if e == 'u' { 4 } else { 8 }, &mut chars)?)?;
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
            '0'..='7' => {
                let rest: String = chars.by_ref().take(2).collect();
                let v = u32::from_str_radix(&format!("{e}{rest}"), 8).ok()?;
                out.push(u8::try_from(v).ok()?);
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> String {
        // Go's %q for the characters these tests use.
        let mut o = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => o.push_str("\\\""),
                '\\' => o.push_str("\\\\"),
                '\n' => o.push_str("\\n"),
                '\t' => o.push_str("\\t"),
                c => o.push(c),
            }
        }
        o.push('"');
        o
    }

    fn file(pairs: &[(&str, &str)]) -> String {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={}\n", q(v)))
            .collect()
    }

    #[test]
    fn go_quoting_round_trips() {
        assert_eq!(
            go_unquote(r#""a\nb\t\"c\"\\ \x41\u00e9\U0001F600 \101""#).unwrap(),
            "a\nb\t\"c\"\\ Aé😀 A"
        );
        assert_eq!(go_unquote("\"plain\"").unwrap(), "plain");
        assert!(go_unquote("unquoted").is_none());
        assert!(go_unquote(r#""bad \q""#).is_none());
        assert!(go_unquote(r#""a"b""#).is_none());
    }

    #[test]
    fn injector_annotations_become_a_manifest() {
        let tpl = "{{- with secret \"secret/data/orders/db\" -}}\npostgres://{{ .Data.data.user }}:{{ .Data.data.password }}@db/orders\n{{- end }}";
        let text = file(&[
            ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
            ("vault.hashicorp.com/agent-inject", "true"),
            (
                "vault.hashicorp.com/agent-inject-secret-db",
                "secret/data/orders/db",
            ),
            ("vault.hashicorp.com/agent-inject-template-db", tpl),
            ("vault.hashicorp.com/agent-inject-file-db", "db.url"),
            ("vault.hashicorp.com/agent-inject-perms-db", "0440"),
            ("keyturn.dev/shared-db", "true"),
            ("vault.hashicorp.com/agent-inject-secret-plain", "kv/orders"),
            ("vault.hashicorp.com/agent-limits-cpu", "250m"),
            ("vault.hashicorp.com/role", "orders-api"),
            ("vault.hashicorp.com/auth-path", "auth/k8s-prod"),
        ]);
        let m = parse("ann", &text).unwrap();
        assert_eq!(m.secrets.len(), 2);
        let db = &m.secrets[0];
        assert_eq!(
            (db.path.as_str(), db.file.to_string(), db.mode),
            ("secret/data/orders/db", "db.url".into(), 0o440)
        );
        assert!(
            matches!(&db.format, Format::Template(t) if t.secret_paths() == ["secret/data/orders/db"])
        );
        let plain = &m.secrets[1];
        assert_eq!(
            (plain.file.to_string(), plain.mode),
            ("plain".into(), 0o400)
        );
        assert_eq!(
            plain.format,
            Format::Template(Template::parse(MAP_TEMPLATE).unwrap())
        );
        assert!(
            matches!(&m.vault.auth, AuthSpec::Kubernetes { mount, role, .. } if mount == "k8s-prod" && role == "orders-api")
        );
    }

    #[test]
    fn unknown_agent_inject_annotations_are_errors_naming_them() {
        let text = file(&[
            ("vault.hashicorp.com/role", "r"),
            ("vault.hashicorp.com/agent-inject-secret-a", "kv/a"),
            ("vault.hashicorp.com/agent-inject-command-a", "kill -HUP 1"),
        ]);
        let e = parse("ann", &text).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0].to_string(),
            "ann:3:1: vault.hashicorp.com/agent-inject-command-a is not supported by keyturn-init; remove it or use a manifest"
        );
    }

    #[test]
    fn a_template_without_its_secret_and_a_missing_role_are_errors() {
        let text = file(&[("vault.hashicorp.com/agent-inject-template-a", "{{ .x }}")]);
        let e: Vec<String> = parse("ann", &text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            e.iter().any(|m| m.contains(
                "agent-inject-template-a has no vault.hashicorp.com/agent-inject-secret-a"
            )),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.contains("vault.hashicorp.com/role is required")),
            "{e:?}"
        );
    }

    #[test]
    fn an_unsupported_template_shape_is_an_error_naming_the_annotation() {
        let text = file(&[
            ("vault.hashicorp.com/role", "r"),
            ("vault.hashicorp.com/agent-inject-secret-a", "pki/issue/x"),
            (
                "vault.hashicorp.com/agent-inject-template-a",
                "{{ with secret \"pki/issue/x\" \"common_name=a\" }}{{ end }}",
            ),
        ]);
        let e = parse("ann", &text).unwrap_err();
        assert!(
            e[0].to_string().starts_with(
                "ann:3:1: vault.hashicorp.com/agent-inject-template-a: template line 1"
            ),
            "{e:?}"
        );
    }

    #[test]
    fn files_are_0400_unless_perms_say_otherwise_and_sharing_is_opted_into() {
        let with = |extra: &[(&str, &str)]| {
            let mut pairs = vec![
                ("vault.hashicorp.com/role", "r"),
                ("vault.hashicorp.com/agent-inject-secret-a", "kv/a"),
            ];
            pairs.extend_from_slice(extra);
            parse("ann", &file(&pairs))
        };
        assert_eq!(with(&[]).unwrap().secrets[0].mode, 0o400);
        let msgs = |extra: &[(&str, &str)]| -> Vec<String> {
            with(extra)
                .unwrap_err()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        let e = msgs(&[("vault.hashicorp.com/agent-inject-perms-a", "0644")]);
        assert_eq!(
            e,
            [
                "ann:3:1: vault.hashicorp.com/agent-inject-perms-a: mode \"0644\" lets the group or others read the file; add keyturn.dev/shared-a=\"true\" if that is intended (or give the file to the workload's user with --owner)"
            ]
        );
        let ok = with(&[
            ("vault.hashicorp.com/agent-inject-perms-a", "0644"),
            ("keyturn.dev/shared-a", "true"),
        ])
        .unwrap();
        assert_eq!(ok.secrets[0].mode, 0o644);
        let e = msgs(&[
            ("vault.hashicorp.com/agent-inject-perms-a", "0666"),
            ("keyturn.dev/shared-a", "true"),
        ]);
        assert!(
            e[0].contains("lets the group or others write the file"),
            "{e:?}"
        );
        let e = msgs(&[("keyturn.dev/shared-a", "maybe")]);
        assert!(
            e[0].starts_with("ann:3:1: keyturn.dev/shared-a: \"maybe\" is not a boolean"),
            "{e:?}"
        );
        let e = msgs(&[("keyturn.dev/share-a", "true")]);
        assert!(
            e[0].contains("keyturn.dev/share-a is not a keyturn-init annotation"),
            "{e:?}"
        );
        let e = msgs(&[("keyturn.dev/shared-b", "true")]);
        assert!(
            e[0].contains("keyturn.dev/shared-b has no vault.hashicorp.com/agent-inject-secret-b"),
            "{e:?}"
        );
    }

    #[test]
    fn a_key_given_twice_is_refused_naming_both_lines() {
        let text = file(&[
            ("vault.hashicorp.com/role", "r"),
            ("vault.hashicorp.com/agent-inject-secret-a", "kv/a"),
            ("vault.hashicorp.com/agent-inject-secret-a", "kv/other"),
            ("vault.hashicorp.com/role", "admin"),
        ]);
        let e: Vec<String> = parse("ann", &text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            e,
            [
                "ann:3:1: vault.hashicorp.com/agent-inject-secret-a is given twice (lines 2 and 3); keep one",
                "ann:4:1: vault.hashicorp.com/role is given twice (lines 1 and 4); keep one",
            ]
        );
    }

    #[test]
    fn two_annotations_writing_one_file_are_refused_naming_both() {
        let text = file(&[
            ("vault.hashicorp.com/role", "r"),
            ("vault.hashicorp.com/agent-inject-secret-db", "kv/a"),
            ("vault.hashicorp.com/agent-inject-secret-other", "kv/b"),
            ("vault.hashicorp.com/agent-inject-file-other", "./db"),
        ]);
        let e: Vec<String> = parse("ann", &text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            e,
            [
                "ann:3:1: vault.hashicorp.com/agent-inject-secret-other: file db is also written by vault.hashicorp.com/agent-inject-secret-db (line 2)"
            ]
        );
        // A file where another needs a directory, the same way.
        let text = file(&[
            ("vault.hashicorp.com/role", "r"),
            ("vault.hashicorp.com/agent-inject-secret-d", "kv/a"),
            ("vault.hashicorp.com/agent-inject-secret-x", "kv/b"),
            ("vault.hashicorp.com/agent-inject-file-x", "d/x"),
        ]);
        let e = parse("ann", &text).unwrap_err();
        assert!(
            e[0].to_string().contains(
                "vault.hashicorp.com/agent-inject-secret-x: file d/x needs d to be a directory, but vault.hashicorp.com/agent-inject-secret-d (line 2) writes it as a file"
            ),
            "{e:?}"
        );
    }

    #[test]
    fn json_default_template_selects_the_json_format() {
        let text = file(&[
            ("vault.hashicorp.com/role", "r"),
            ("vault.hashicorp.com/agent-inject-default-template", "json"),
            ("vault.hashicorp.com/agent-inject-secret-a", "kv/a"),
        ]);
        assert_eq!(parse("ann", &text).unwrap().secrets[0].format, Format::Json);
    }
}

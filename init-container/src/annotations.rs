//! Vault Agent Injector annotations, read from a downward-API file, as a [`Manifest`].
//!
//! A pod written for the injector works unchanged: mount its annotations with the
//! downward API (`fieldRef: metadata.annotations`) and pass the file as `--annotations`.
//! Understood (under `vault.hashicorp.com/`, OpenBao's `openbao.org/` or keyturn's
//! `keyturn.dev/`; [`crate::compat`] has every injector annotation and keyturn's answer):
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
//! write bits are refused even with it. Any other unknown `keyturn.dev/` annotation is an
//! error.
//!
//! Differences, on purpose: files are mode 0400 unless `perms` says otherwise, where the
//! injector writes 0644 (readable by every user in the pod); give a file to the workload's
//! user with `--owner UID:GID`, or opt in to sharing as above. Without a template, KV v2
//! secrets render their fields (one `name: value` line each) rather than Go's dump of
//! `data: map[…] metadata: map[…]`. Annotations for the webhook or the injector's sidecar
//! are ignored here (logged at debug); those keyturn cannot honour, and unknown
//! `agent-inject-*` ones, are errors naming them, since ignoring them would silently change
//! what the pod gets.
//!
//! The file format is the downward API's: one `key="value"` line per annotation, the value
//! quoted as Go's `%q` does (`\n`, `\"`, `\\`, `\t`, `\xNN`, `\uNNNN`, …).

use keyturn_core::config::{ConfigError, Location, Problems};

use crate::compat::{self, Answer, KEYTURN_PREFIX};

use crate::manifest::{
    AuthSpec, Manifest, SecretSpec, VaultSpec, check_files, check_mode, parse_mode, vault_path,
};
use crate::paths::RelPath;
use crate::render::Format;
use crate::render::template::Template;
use std::collections::{BTreeMap, HashMap};

/// The prefix messages use when the pod gave no injector annotation to take one from.
const PREFIX: &str = "vault.hashicorp.com/";
/// The mode of a rendered file without `perms`: the manifest's default, not the injector's
/// 0644, which lets every user in the pod read the secret.
pub const DEFAULT_MODE: u32 = crate::manifest::DEFAULT_MODE;
/// The default rendering without a template: one `name: value` line per field.
pub const MAP_TEMPLATE: &str = "{{ range $k, $v := . }}{{ $k }}: {{ $v }}\n{{ end }}";

/// One annotation as given: its value, line and full key (for messages, which name the key
/// the pod used, under whichever prefix).
struct Given {
    value: String,
    at: Location,
    key: String,
}

#[derive(Default)]
struct Named {
    secret: Option<Given>,
    template: Option<Given>,
    file: Option<Given>,
    perms: Option<Given>,
    shared: Option<Given>,
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
    // The prefix of the first injector annotation: what messages about a missing one use.
    let mut pod_prefix: Option<&'static str> = None;
    // Each name's first line and key: a name given twice (under one prefix or two) is
    // refused, not decided by which comes last.
    let mut seen: HashMap<String, (u64, String)> = HashMap::new();
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
        let Some((prefix, name)) = compat::split(key) else {
            continue;
        };
        let value = match go_unquote(quoted) {
            Some(v) => v,
            None => {
                p.located(at, format!("{key}: value is not a Go-quoted string"));
                continue;
            }
        };
        if let Some((first, first_key)) = seen.get(name) {
            let also = if first_key == key {
                String::new()
            } else {
                format!(", also as {first_key}")
            };
            p.located(
                at,
                format!(
                    "{key} is given twice (lines {first} and {}{also}); keep one",
                    at.line
                ),
            );
            continue;
        }
        seen.insert(name.to_owned(), (at.line, key.to_owned()));
        let given = Given {
            value,
            at,
            key: key.to_owned(),
        };
        if prefix == KEYTURN_PREFIX
            && let Some(n) = name.strip_prefix(compat::SHARED).filter(|n| !n.is_empty())
        {
            named.entry(n.to_owned()).or_default().shared = Some(given);
            continue;
        }
        pod_prefix.get_or_insert(prefix);
        let slot = |family: &str| {
            name.strip_prefix(family)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
        };
        match compat::lookup(name).map(|r| r.answer) {
            Some(Answer::Init) => {
                if let Some(n) = slot("agent-inject-secret-") {
                    named.entry(n).or_default().secret = Some(given);
                } else if let Some(n) = slot("agent-inject-template-") {
                    named.entry(n).or_default().template = Some(given);
                } else if let Some(n) = slot("agent-inject-file-") {
                    named.entry(n).or_default().file = Some(given);
                } else if let Some(n) = slot("agent-inject-perms-") {
                    named.entry(n).or_default().perms = Some(given);
                } else {
                    match name {
                        "role" => role = Some(given),
                        "auth-path" => auth_path = Some(given.value),
                        "namespace" => namespace = Some(given.value),
                        "service" => address = Some(given),
                        "agent-inject-default-template" => match given.value.as_str() {
                            "map" => default_json = false,
                            "json" => default_json = true,
                            other => p.located(at, format!("{key}: {other:?} is not map or json")),
                        },
                        other => unreachable!("{other} is read by keyturn-init but not parsed"),
                    }
                }
            }
            Some(Answer::Deny(why)) => {
                p.located(at, format!("{key} is not supported by keyturn: {why}"));
            }
            Some(Answer::Webhook | Answer::Warn(_)) => {
                tracing::debug!(annotation = %key, "ignoring an injector annotation keyturn-init does not need");
            }
            None if prefix == KEYTURN_PREFIX => {
                p.located(
                    at,
                    format!(
                        "{key} is not a keyturn annotation (keyturn.dev/ takes the Vault injector's annotations and shared-NAME)"
                    ),
                );
            }
            // An unknown agent-inject-* annotation may change what the injector would put
            // into the pod, so ignoring it could silently change what the pod gets.
            None if name.starts_with("agent-inject") => {
                p.located(
                    at,
                    format!("{key} is not supported by keyturn-init; remove it or use a manifest"),
                );
            }
            None => {
                tracing::debug!(annotation = %key, "ignoring an annotation the Vault injector does not define")
            }
        }
    }
    let prefix = pod_prefix.unwrap_or(PREFIX);
    let mut secrets = Vec::with_capacity(named.len());
    for (name, n) in &named {
        let Some(secret) = &n.secret else {
            let (what, at) = [&n.template, &n.file, &n.perms, &n.shared]
                .into_iter()
                .find_map(|g| g.as_ref().map(|g| (g.key.clone(), g.at)))
                .unwrap_or((
                    format!("{prefix}agent-inject-file-{name}"),
                    Location::default(),
                ));
            let secret_key = format!(
                "{}agent-inject-secret-{name}",
                compat::split(&what).map_or(prefix, |(p, _)| if p == KEYTURN_PREFIX {
                    prefix
                } else {
                    p
                })
            );
            p.located(at, format!("{what} has no {secret_key}"));
            continue;
        };
        let at = &secret.at;
        let start_errors = p.len();
        let path = vault_path(&secret.value)
            .map_err(|m| p.located(*at, m))
            .ok();
        let file_name = n.file.as_ref().map_or(name.as_str(), |g| g.value.as_str());
        let file_at = n.file.as_ref().map_or(*at, |g| g.at);
        let file = RelPath::parse(file_name)
            .map_err(|e| p.located(file_at, e.to_string()))
            .ok();
        let shared = match &n.shared {
            None => false,
            Some(g) => crate::cli::parse_bool(&g.value)
                .map_err(|e| p.located(g.at, format!("{}: {e}", g.key)))
                .unwrap_or(false),
        };
        let mode = match &n.perms {
            Some(g) => parse_mode(&g.value)
                .and_then(|mode| {
                    check_mode(
                        mode,
                        shared,
                        &format!("{KEYTURN_PREFIX}{}{name}=\"true\"", compat::SHARED),
                    )
                    .map(|()| mode)
                })
                .map_err(|e| p.located(g.at, format!("{}: {e}", g.key)))
                .ok(),
            None => Some(DEFAULT_MODE),
        };
        let format = match &n.template {
            Some(g) => match Template::parse(&g.value) {
                Ok(t) => Some(Format::Template(t)),
                Err(e) => {
                    p.located(g.at, format!("{}: {e}", g.key));
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
            format!("no {prefix}agent-inject-secret-* annotations"),
        );
    }
    // Entries are named by their secret annotation, whose line is the entry's.
    let names: HashMap<u64, &str> = named
        .values()
        .filter_map(|v| v.secret.as_ref().map(|g| (g.at.line, g.key.as_str())))
        .collect();
    check_files(&secrets, &mut p, &|s| {
        names.get(&s.at.line).map(|k| (*k).to_owned())
    });
    let role = match role {
        Some(g) if !g.value.is_empty() => g.value,
        _ => {
            p.located(
                Location { line: 1, column: 1 },
                format!("{prefix}role is required"),
            );
            String::new()
        }
    };
    if let Some(g) = &address
        && let Err(e) = keyturn_core::vault::config::check_addr(&g.key, &g.value)
    {
        p.located(g.at, e.to_string());
    }
    let mount = auth_path
        .as_deref()
        .map(|a| a.trim_matches('/').trim_start_matches("auth/").to_owned())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "kubernetes".into());
    let vault = VaultSpec {
        address: address.map(|g| g.value),
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

/// Quotes `s` as Go's `strconv.Quote` (`%q`) does, as the kubelet writes each value of a
/// downward-API annotations file; [`go_unquote`] undoes it. Printable characters stay as they
/// are; the rest become `\n`-style, `\xNN`, `\uNNNN` or `\UNNNNNNNN` escapes.
#[must_use]
pub fn go_quote(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\u{07}' => out.push_str("\\a"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0b}' => out.push_str("\\v"),
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if c == ' ' || (go_printable(c)) => out.push(c),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// Go's `unicode.IsPrint` without the space, closely enough for annotation values: no
/// control, separator or format character (zero-width and bidirectional marks are escaped).
fn go_printable(c: char) -> bool {
    !c.is_control()
        && !c.is_whitespace()
        && !matches!(c as u32, 0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x180e | 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x206f | 0xfeff | 0xfff9..=0xfffb | 0xe000..=0xf8ff)
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
    fn go_quote_writes_what_go_writes_and_round_trips() {
        assert_eq!(go_quote("a\"b\\c\nd\te"), r#""a\"b\\c\nd\te""#);
        assert_eq!(go_quote("\u{1}é\u{200b}😀"), r#""\x01é\u200b😀""#);
        for s in [
            "",
            "plain",
            "{{- with secret \"x\" -}}\n{{ .Data.data.k }}\n{{- end }}",
            "\u{7f}\u{2028}",
        ] {
            assert_eq!(go_unquote(&go_quote(s)).as_deref(), Some(s));
        }
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
            format!(
                "ann:3:1: vault.hashicorp.com/agent-inject-command-a is not supported by keyturn: {}",
                match compat::lookup("agent-inject-command-a").unwrap().answer {
                    Answer::Deny(why) => why,
                    other => panic!("{other:?}"),
                }
            )
        );
        let text = file(&[
            ("vault.hashicorp.com/role", "r"),
            ("vault.hashicorp.com/agent-inject-secret-a", "kv/a"),
            ("vault.hashicorp.com/agent-inject-sidecar-mode", "x"),
        ]);
        let e = parse("ann", &text).unwrap_err();
        assert_eq!(
            e[0].to_string(),
            "ann:3:1: vault.hashicorp.com/agent-inject-sidecar-mode is not supported by keyturn-init; remove it or use a manifest"
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
            e[0].contains("keyturn.dev/share-a is not a keyturn annotation"),
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

    #[test]
    fn openbao_and_keyturn_prefixes_are_the_injector_s_and_one_name_under_two_is_refused() {
        let text = file(&[
            ("openbao.org/agent-inject", "true"),
            ("openbao.org/role", "r"),
            ("keyturn.dev/agent-inject-secret-a", "kv/a"),
            ("openbao.org/agent-inject-file-a", "a.txt"),
            ("keyturn.dev/agent-init-first", "true"),
        ]);
        let m = parse("ann", &text).unwrap();
        assert_eq!(m.secrets[0].file.to_string(), "a.txt");
        let text = file(&[
            ("vault.hashicorp.com/role", "r"),
            ("vault.hashicorp.com/agent-inject-secret-a", "kv/a"),
            ("openbao.org/agent-inject-secret-a", "kv/b"),
        ]);
        let e = parse("ann", &text).unwrap_err();
        assert_eq!(
            e[0].to_string(),
            "ann:3:1: openbao.org/agent-inject-secret-a is given twice (lines 2 and 3, also as vault.hashicorp.com/agent-inject-secret-a); keep one"
        );
        let text = file(&[("openbao.org/agent-inject-template-a", "{{ .x }}")]);
        let e: Vec<String> = parse("ann", &text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            e.iter().any(|m| m.contains(
                "openbao.org/agent-inject-template-a has no openbao.org/agent-inject-secret-a"
            )),
            "{e:?}"
        );
        assert!(
            e.iter().any(|m| m.contains("openbao.org/role is required")),
            "{e:?}"
        );
    }
}

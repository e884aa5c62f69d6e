//! Turning a fetched secret into a file's bytes: `raw`, `env`, `json`, `yaml`, `template`.
//!
//! | format | output |
//! |---|---|
//! | `raw` | one field's bytes exactly, no newline added. The field is `key:`, or the secret's only field |
//! | `env` | `NAME='value'` lines in field-name order, single-quoted for POSIX `sh` (`'` becomes `'\''`), so `. file` and `set -a; . file` work; field names must be `[A-Za-z_][A-Za-z0-9_]*` and values must not contain NUL |
//! | `json` | one JSON object of string fields, then a newline; a dynamic secret also gets `lease_id`, `lease_duration` (seconds) and `renewable` |
//! | `yaml` | one `"name": "value"` line per field (YAML double-quoted scalars), plus the lease lines for a dynamic secret |
//! | `template` | see [`template`] |
//!
//! With `key:`, `env`, `json` and `yaml` write that one field only. Output is built in
//! zeroizing buffers that never reallocate without wiping the old copy, and is capped at
//! [`MAX_RENDERED`] (1 MiB) per file: a Kubernetes Secret cannot hold more, and a file that
//! large is a manifest mistake rather than a credential.

use std::fmt;

pub mod template;

use keyturn_core::SecretValue;
use keyturn_core::vault::SecretData;
use zeroize::Zeroizing;

use crate::exit::{ExitCode, HasExitCode};
use crate::fetch::{Fetched, FetchedSet, Lease};

/// How a file's content is made from the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// One field's bytes.
    Raw,
    /// `NAME='value'` lines.
    Env,
    /// A JSON object.
    Json,
    /// YAML `"name": "value"` lines.
    Yaml,
    /// A template (see [`template`]).
    Template(template::Template),
}

/// The largest file keyturn-init writes: 1 MiB.
pub const MAX_RENDERED: usize = 1 << 20;

/// Why a secret could not be rendered. Names the path and field, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The manifest (or a template) names a field the secret does not have.
    #[error("{path}: no field {field:?}{hint}")]
    UnknownField {
        /// The Vault path.
        path: String,
        /// The missing field.
        field: String,
        /// A hint about where the fields are, or empty.
        hint: String,
    },
    /// `raw` without `key:` on a secret with more than one field.
    #[error("{path}: has {count} fields; set key: to choose one for format raw")]
    NeedKey {
        /// The Vault path.
        path: String,
        /// How many fields it has.
        count: usize,
    },
    /// A field name is not a valid environment variable name.
    #[error(
        "{path}: field {field:?} is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
    )]
    BadEnvName {
        /// The Vault path.
        path: String,
        /// The field.
        field: String,
    },
    /// A value cannot be represented in the format (a NUL byte in `env`).
    #[error("{path}: field {field:?} contains a NUL byte, which format env cannot hold")]
    NulInEnv {
        /// The Vault path.
        path: String,
        /// The field.
        field: String,
    },
    /// A text format met a value that is not UTF-8.
    #[error("{path}: field {field:?} is not valid UTF-8; use format raw for binary values")]
    NotUtf8 {
        /// The Vault path.
        path: String,
        /// The field.
        field: String,
    },
    /// A dynamic secret has a field named like one of the lease fields.
    #[error("{path}: field {field:?} clashes with the lease field of the same name")]
    LeaseClash {
        /// The Vault path.
        path: String,
        /// The field.
        field: String,
    },
    /// The rendered file would be over [`MAX_RENDERED`].
    #[error("rendered content is over the {} KiB limit per file", MAX_RENDERED / 1024)]
    TooLarge,
    /// A template construct failed on this data.
    #[error("{path}: {message}")]
    Template {
        /// The Vault path.
        path: String,
        /// What failed.
        message: String,
    },
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl HasExitCode for RenderError {
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Internal(_) => ExitCode::Software,
            _ => ExitCode::Usage,
        }
    }
}

/// A growable buffer for secret bytes: zeroized on drop, and on growth the old allocation
/// is wiped before it is freed. Refuses to grow past [`MAX_RENDERED`].
pub struct SecretBuf {
    buf: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for SecretBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBuf({} bytes)", self.buf.len())
    }
}

impl SecretBuf {
    /// An empty buffer with room for `n` bytes.
    #[must_use]
    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: Zeroizing::new(Vec::with_capacity(n.min(MAX_RENDERED))),
        }
    }

    /// Appends `b`.
    ///
    /// # Errors
    /// [`RenderError::TooLarge`] past [`MAX_RENDERED`].
    pub fn push(&mut self, b: &[u8]) -> Result<(), RenderError> {
        let need = self.buf.len() + b.len();
        if need > MAX_RENDERED {
            return Err(RenderError::TooLarge);
        }
        if need > self.buf.capacity() {
            let cap = need.max(self.buf.capacity() * 2).min(MAX_RENDERED);
            let mut grown = Zeroizing::new(Vec::with_capacity(cap));
            grown.extend_from_slice(&self.buf);
            // The old buffer is zeroized as it drops here.
            self.buf = grown;
        }
        self.buf.extend_from_slice(b);
        Ok(())
    }

    /// Bytes so far.
    #[must_use]
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was written.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The bytes as a [`SecretValue`], in an allocation of exactly their size (so the
    /// boxed-slice conversion inside does not reallocate behind the zeroizing).
    #[must_use]
    pub fn finish(mut self) -> SecretValue {
        if self.buf.len() == self.buf.capacity() {
            return SecretValue::new(std::mem::take(&mut *self.buf));
        }
        let mut exact = Vec::with_capacity(self.buf.len());
        exact.extend_from_slice(&self.buf);
        SecretValue::new(exact)
    }
}

/// A rendered file: the fetched value itself for `raw`, a new buffer otherwise.
#[derive(Debug)]
pub enum Rendered<'a> {
    /// A field's value, not copied.
    Borrowed(&'a SecretValue),
    /// Newly built content.
    Owned(SecretValue),
}

impl Rendered<'_> {
    /// The bytes to write.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::Borrowed(v) => v.expose(),
            Self::Owned(v) => v.expose(),
        }
    }
}

/// Renders one file.
///
/// # Errors
/// See [`RenderError`].
pub fn render<'a>(
    format: &Format,
    key: Option<&str>,
    path: &str,
    fetched: &'a Fetched,
    all: &FetchedSet,
) -> Result<Rendered<'a>, RenderError> {
    let data = &fetched.data;
    match format {
        Format::Raw => {
            let v = match key {
                Some(k) => data.get(k).ok_or_else(|| unknown(path, k))?,
                None if data.len() == 1 => data
                    .iter()
                    .next()
                    .map(|(_, v)| v)
                    .ok_or(RenderError::TooLarge)?,
                None => {
                    return Err(RenderError::NeedKey {
                        path: path.to_owned(),
                        count: data.len(),
                    });
                }
            };
            if v.len() > MAX_RENDERED {
                return Err(RenderError::TooLarge);
            }
            Ok(Rendered::Borrowed(v))
        }
        Format::Env => {
            let mut out = SecretBuf::with_capacity(estimate(data, key));
            for (k, v) in selected(data, key, path)? {
                env_line(path, k, v, &mut out)?;
            }
            Ok(Rendered::Owned(out.finish()))
        }
        Format::Json => {
            let mut out = SecretBuf::with_capacity(estimate(data, key));
            json_object(data, key, fetched.lease.as_ref(), &mut out, path)?;
            out.push(b"\n")?;
            Ok(Rendered::Owned(out.finish()))
        }
        Format::Yaml => {
            let mut out = SecretBuf::with_capacity(estimate(data, key));
            for (k, v) in selected(data, key, path)? {
                quoted(k, &mut out)?;
                out.push(b": ")?;
                quoted(text(path, k, v)?, &mut out)?;
                out.push(b"\n")?;
            }
            if let Some(l) = &fetched.lease {
                check_lease_clash(data, path)?;
                out.push(b"lease_id: ")?;
                quoted(&l.id, &mut out)?;
                out.push(
                    format!(
                        "\nlease_duration: {}\nrenewable: {}\n",
                        l.duration, l.renewable
                    )
                    .as_bytes(),
                )?;
            }
            Ok(Rendered::Owned(out.finish()))
        }
        Format::Template(t) => {
            let mut out = SecretBuf::with_capacity(estimate(data, None));
            t.render(path, data, all, &mut out)?;
            Ok(Rendered::Owned(out.finish()))
        }
    }
}

fn unknown(path: &str, field: &str) -> RenderError {
    RenderError::UnknownField {
        path: path.to_owned(),
        field: field.to_owned(),
        hint: String::new(),
    }
}

/// A first guess at the output size, so most files need one allocation.
fn estimate(data: &SecretData, key: Option<&str>) -> usize {
    let n: usize = data
        .iter()
        .filter(|(k, _)| key.is_none_or(|want| *k == want))
        .map(|(k, v)| k.len() + v.len() + 8)
        .sum();
    n + 96
}

fn selected<'d>(
    data: &'d SecretData,
    key: Option<&str>,
    path: &str,
) -> Result<Vec<(&'d str, &'d SecretValue)>, RenderError> {
    match key {
        Some(k) => match data.0.get_key_value(k) {
            Some((k, v)) => Ok(vec![(k.as_str(), v)]),
            None => Err(unknown(path, k)),
        },
        None => Ok(data.iter().map(|(k, v)| (k.as_str(), v)).collect()),
    }
}

fn text<'v>(path: &str, field: &str, v: &'v SecretValue) -> Result<&'v str, RenderError> {
    v.expose_str().map_err(|_| RenderError::NotUtf8 {
        path: path.to_owned(),
        field: field.to_owned(),
    })
}

fn env_line(path: &str, k: &str, v: &SecretValue, out: &mut SecretBuf) -> Result<(), RenderError> {
    let mut chars = k.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(RenderError::BadEnvName {
            path: path.to_owned(),
            field: k.to_owned(),
        });
    }
    if v.expose().contains(&0) {
        return Err(RenderError::NulInEnv {
            path: path.to_owned(),
            field: k.to_owned(),
        });
    }
    out.push(k.as_bytes())?;
    out.push(b"='")?;
    let bytes = v.expose();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\'' {
            out.push(&bytes[start..i])?;
            out.push(b"'\\''")?;
            start = i + 1;
        }
    }
    out.push(&bytes[start..])?;
    out.push(b"'\n")
}

const LEASE_FIELDS: [&str; 3] = ["lease_id", "lease_duration", "renewable"];

fn check_lease_clash(data: &SecretData, path: &str) -> Result<(), RenderError> {
    match LEASE_FIELDS.iter().find(|f| data.get(f).is_some()) {
        Some(f) => Err(RenderError::LeaseClash {
            path: path.to_owned(),
            field: (*f).to_owned(),
        }),
        None => Ok(()),
    }
}

/// Writes `{"k":"v",…}` (and the lease fields when `lease` is given).
pub(crate) fn json_object(
    data: &SecretData,
    key: Option<&str>,
    lease: Option<&Lease>,
    out: &mut SecretBuf,
    path: &str,
) -> Result<(), RenderError> {
    out.push(b"{")?;
    let mut first = true;
    for (k, v) in selected(data, key, path)? {
        if !first {
            out.push(b",")?;
        }
        first = false;
        json_string(k, out)?;
        out.push(b":")?;
        json_string(text(path, k, v)?, out)?;
    }
    if let Some(l) = lease {
        check_lease_clash(data, path)?;
        if !first {
            out.push(b",")?;
        }
        out.push(b"\"lease_id\":")?;
        json_string(&l.id, out)?;
        out.push(
            format!(
                ",\"lease_duration\":{},\"renewable\":{}",
                l.duration, l.renewable
            )
            .as_bytes(),
        )?;
    }
    out.push(b"}")
}

/// A JSON string literal. Also valid as a YAML double-quoted scalar: besides JSON's
/// mandatory escapes it escapes DEL, the C1 controls, U+2028/U+2029 and U+FEFF, which YAML
/// does not allow raw or would read as line breaks.
pub(crate) fn json_string(s: &str, out: &mut SecretBuf) -> Result<(), RenderError> {
    out.push(b"\"")?;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let esc: Option<&[u8]> = match c {
            '"' => Some(b"\\\""),
            '\\' => Some(b"\\\\"),
            '\n' => Some(b"\\n"),
            '\r' => Some(b"\\r"),
            '\t' => Some(b"\\t"),
            '\u{8}' => Some(b"\\b"),
            '\u{c}' => Some(b"\\f"),
            _ => None,
        };
        let needs_u = esc.is_none()
            && (c < ' '
                || ('\u{7f}'..='\u{9f}').contains(&c)
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}'));
        if esc.is_none() && !needs_u {
            continue;
        }
        out.push(&s.as_bytes()[start..i])?;
        match esc {
            Some(e) => out.push(e)?,
            None => out.push(format!("\\u{:04x}", u32::from(c)).as_bytes())?,
        }
        start = i + c.len_utf8();
    }
    out.push(&s.as_bytes()[start..])?;
    out.push(b"\"")
}

fn quoted(s: &str, out: &mut SecretBuf) -> Result<(), RenderError> {
    json_string(s, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::Engine;

    fn fetched(pairs: &[(&str, &str)]) -> Fetched {
        let mut d = SecretData::new();
        for (k, v) in pairs {
            d.insert(*k, SecretValue::from_str_copy(v));
        }
        Fetched {
            engine: Engine::Kv2,
            data: d,
            version: Some(1),
            lease: None,
        }
    }

    fn out(format: &Format, key: Option<&str>, f: &Fetched) -> Result<String, RenderError> {
        let r = render(format, key, "secret/data/app", f, &FetchedSet::default())?;
        Ok(String::from_utf8(r.bytes().to_vec()).unwrap())
    }

    #[test]
    fn raw_writes_the_chosen_field_exactly() {
        let f = fetched(&[("a", "1"), ("b", "two\n")]);
        assert_eq!(out(&Format::Raw, Some("b"), &f).unwrap(), "two\n");
        assert_eq!(
            out(&Format::Raw, None, &fetched(&[("only", "x")])).unwrap(),
            "x"
        );
    }

    #[test]
    fn raw_without_key_on_several_fields_asks_for_one() {
        let e = out(&Format::Raw, None, &fetched(&[("a", "1"), ("b", "2")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "secret/data/app: has 2 fields; set key: to choose one for format raw"
        );
        let e = out(&Format::Raw, Some("c"), &fetched(&[("a", "1")])).unwrap_err();
        assert_eq!(e.to_string(), "secret/data/app: no field \"c\"");
    }

    #[test]
    fn env_quotes_values_for_the_shell() {
        let f = fetched(&[("USER", "app"), ("PASS", "it's $HOME `x` \"q\"\nline2")]);
        let s = out(&Format::Env, None, &f).unwrap();
        assert_eq!(s, "PASS='it'\\''s $HOME `x` \"q\"\nline2'\nUSER='app'\n");
        // The shell reads the values back exactly.
        let script = format!("{s}printf '%s' \"$PASS\"");
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(o.stdout).unwrap(),
            "it's $HOME `x` \"q\"\nline2"
        );
    }

    #[test]
    fn env_refuses_field_names_that_are_not_variable_names() {
        for bad in ["api-key", "1x", "", "a b"] {
            let e = out(&Format::Env, None, &fetched(&[(bad, "v")])).unwrap_err();
            assert!(matches!(e, RenderError::BadEnvName { .. }), "{bad}: {e}");
        }
        let e = out(&Format::Env, None, &fetched(&[("K", "a\0b")])).unwrap_err();
        assert!(matches!(e, RenderError::NulInEnv { .. }));
    }

    #[test]
    fn json_is_an_object_of_strings_and_adds_lease_fields_for_dynamic_secrets() {
        let f = fetched(&[("b", "x\"y"), ("a", "\u{1}\u{2028}")]);
        let s = out(&Format::Json, None, &f).unwrap();
        assert_eq!(s, "{\"a\":\"\\u0001\\u2028\",\"b\":\"x\\\"y\"}\n");
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["b"], "x\"y");
        let mut d = fetched(&[("username", "u")]);
        d.engine = Engine::Dynamic;
        d.lease = Some(Lease {
            id: "database/creds/ro/x".into(),
            duration: 60,
            renewable: true,
        });
        let v: serde_json::Value =
            serde_json::from_str(&out(&Format::Json, None, &d).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"username":"u","lease_id":"database/creds/ro/x","lease_duration":60,"renewable":true})
        );
    }

    #[test]
    fn yaml_lines_parse_back_to_the_same_strings() {
        let tricky = "yes: no # not a comment\n\t- [x] {y} 'z' \u{7f}\u{85}";
        let f = fetched(&[("k", tricky), ("on", "0400")]);
        let s = out(&Format::Yaml, None, &f).unwrap();
        let m: std::collections::BTreeMap<String, String> = serde_saphyr::from_str(&s).unwrap();
        assert_eq!(m["k"], tricky);
        assert_eq!(m["on"], "0400");
    }

    #[test]
    fn key_limits_structured_formats_to_one_field() {
        let f = fetched(&[("A", "1"), ("B", "2")]);
        assert_eq!(out(&Format::Env, Some("B"), &f).unwrap(), "B='2'\n");
        assert_eq!(
            out(&Format::Json, Some("A"), &f).unwrap(),
            "{\"A\":\"1\"}\n"
        );
    }

    #[test]
    fn text_formats_refuse_binary_values_by_field_name() {
        let mut f = fetched(&[]);
        f.data.insert("bin", SecretValue::new(vec![0xff, 0xfe]));
        let e = out(&Format::Json, None, &f).unwrap_err();
        assert_eq!(
            e.to_string(),
            "secret/data/app: field \"bin\" is not valid UTF-8; use format raw for binary values"
        );
    }

    #[test]
    fn output_over_the_limit_is_refused() {
        let big = "x".repeat(MAX_RENDERED);
        let f = fetched(&[("a", &big)]);
        assert_eq!(
            out(&Format::Json, None, &f).unwrap_err(),
            RenderError::TooLarge
        );
        let f = fetched(&[("a", &format!("{big}x"))]);
        assert_eq!(
            out(&Format::Raw, None, &f).unwrap_err(),
            RenderError::TooLarge
        );
    }

    #[test]
    fn the_buffer_grows_without_losing_bytes() {
        let mut b = SecretBuf::with_capacity(1);
        for i in 0..1000u32 {
            b.push(i.to_string().as_bytes()).unwrap();
        }
        let v = b.finish();
        let want: String = (0..1000u32).map(|i| i.to_string()).collect();
        assert_eq!(v.expose(), want.as_bytes());
    }
}

//! Configuration files as every keyturn command reads them (rotation policies, the init
//! manifest, the pod's annotations): YAML parsed under one set of limits, and every problem
//! located as `FILE:LINE:COL: field: why`, the shape editors and CI annotations understand.
//!
//! Validation collects problems in [`Problems`] and reports them all at once (capped, so a
//! generated file gone wrong does not bury the first in megabytes of log); nothing
//! half-valid is returned. Messages name the field and say what is wrong; they quote a
//! written value only through [`crate::text::echo`] (escaped, capped), and never a value
//! that may be a secret.

use std::fmt;

use serde::de::DeserializeOwned;

use crate::exit::{ExitCode, HasExitCode};
use serde_saphyr::Spanned;

/// The largest configuration text accepted, before any parsing.
pub const MAX_BYTES: usize = 64 << 20;

/// Problems reported at most per file; the rest are counted in one last line.
pub const MAX_PROBLEMS: usize = 100;

/// A place in a file: 1-based line and column, 0 when unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct Location {
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
}

impl Location {
    /// Where `value` was written.
    #[must_use]
    pub fn of<T>(value: &Spanned<T>) -> Self {
        Self {
            line: value.referenced.line(),
            column: value.referenced.column(),
        }
    }

    /// The start of the file.
    pub const START: Self = Self { line: 1, column: 1 };
}

/// One problem in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or another origin, such as `--annotations`), as the user named it.
    pub origin: String,
    /// Where in it, when known.
    pub at: Option<Location>,
    /// The field path, e.g. `spec.schedule` (empty when the message says it, or for a
    /// problem with the whole file).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// A problem with the whole file (unreadable, empty).
    #[must_use]
    pub fn file(origin: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            origin: origin.into(),
            at: None,
            field: String::new(),
            message: message.into(),
        }
    }

    /// The line, 0 when unknown.
    #[must_use]
    pub fn line(&self) -> u64 {
        self.at.map_or(0, |a| a.line)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(at) = self.at.filter(|a| a.line > 0) {
            write!(f, ":{}:{}", at.line, at.column)?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

impl HasExitCode for ConfigError {
    /// Configuration is checked before any network call: 64.
    fn exit_code(&self) -> ExitCode {
        ExitCode::Usage
    }
}

/// The problems found in one file.
#[derive(Debug)]
pub struct Problems {
    origin: String,
    list: Vec<ConfigError>,
}

impl Problems {
    /// A collector for `origin`.
    #[must_use]
    pub fn new(origin: impl Into<String>) -> Self {
        Self {
            origin: origin.into(),
            list: Vec::new(),
        }
    }

    /// The file the problems are in.
    #[must_use]
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Reports `message` about `field` at `at`.
    pub fn at(&mut self, at: Location, field: &str, message: impl Into<String>) {
        self.list.push(ConfigError {
            origin: self.origin.clone(),
            at: Some(at),
            field: field.to_owned(),
            message: message.into(),
        });
    }

    /// Reports `message` at `at`, when the message itself names what is wrong.
    pub fn located(&mut self, at: Location, message: impl Into<String>) {
        self.at(at, "", message);
    }

    /// Reports `message` about `field`, where `value` was written.
    pub fn spanned<T>(&mut self, value: &Spanned<T>, field: &str, message: impl Into<String>) {
        self.at(Location::of(value), field, message);
    }

    /// Reports a problem with the whole file.
    pub fn file(&mut self, message: impl Into<String>) {
        self.list
            .push(ConfigError::file(self.origin.clone(), message));
    }

    /// Adds problems found elsewhere (another collector, a parse error).
    pub fn extend(&mut self, more: impl IntoIterator<Item = ConfigError>) {
        self.list.extend(more);
    }

    /// How many problems so far: a part is valid when the count did not grow while
    /// checking it.
    #[must_use]
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether none was found.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The problems, capped at [`MAX_PROBLEMS`] plus one line counting the rest.
    #[must_use]
    pub fn into_vec(mut self) -> Vec<ConfigError> {
        if self.list.len() > MAX_PROBLEMS {
            let more = self.list.len() - MAX_PROBLEMS;
            self.list.truncate(MAX_PROBLEMS);
            self.list.push(ConfigError::file(
                self.origin.clone(),
                format!("{more} more problems not shown"),
            ));
        }
        self.list
    }

    /// `value` when no problem was found, else every problem (capped).
    ///
    /// # Errors
    /// The problems found.
    pub fn finish<T>(self, value: T) -> Result<T, Vec<ConfigError>> {
        if self.list.is_empty() {
            Ok(value)
        } else {
            Err(self.into_vec())
        }
    }
}

/// The parser's limits, the same for every keyturn file. The defaults of the YAML library
/// guard against alias bombs; the document and node caps are raised because one policy file
/// may hold thousands of policies, and stay bounded so a runaway generator cannot exhaust
/// memory. [`MAX_BYTES`] bounds the text itself.
#[must_use]
pub fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 100_000,
            max_nodes: 10_000_000,
            max_events: 40_000_000,
        },
    }
}

/// One YAML document of `origin` as a `T`.
///
/// # Errors
/// The text is too large or not a `T`; the error is located where the parser stopped.
pub fn from_yaml<T: DeserializeOwned>(origin: &str, text: &str) -> Result<T, ConfigError> {
    check_size(origin, text)?;
    serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|e| yaml_error(origin, &e))
}

/// Every `---`-separated YAML document of `origin`, each as a `T`.
///
/// # Errors
/// The text is too large or a document is not a `T`.
pub fn from_yaml_documents<T: DeserializeOwned>(
    origin: &str,
    text: &str,
) -> Result<Vec<T>, ConfigError> {
    check_size(origin, text)?;
    serde_saphyr::from_multiple_with_options(text, yaml_options())
        .map_err(|e| yaml_error(origin, &e))
}

fn check_size(origin: &str, text: &str) -> Result<(), ConfigError> {
    if text.len() > MAX_BYTES {
        return Err(ConfigError::file(
            origin,
            format!("is {} bytes; at most {MAX_BYTES} are read", text.len()),
        ));
    }
    Ok(())
}

/// A parser error as one located line, without the library's source snippet (which would
/// quote the file, and a file may hold what should not be printed) and without its own
/// "at line N column M" (the location is in front).
fn yaml_error(origin: &str, e: &serde_saphyr::Error) -> ConfigError {
    let plain = e.without_snippet();
    let text = plain.to_string();
    let message = text.split(" at line ").next().unwrap_or(&text);
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    ConfigError {
        origin: origin.to_owned(),
        at: plain.location().map(|l| Location {
            line: l.line(),
            column: l.column(),
        }),
        field: String::new(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[allow(dead_code, reason = "only parsed")]
        name: Spanned<String>,
    }

    #[test]
    fn a_parse_error_is_located_in_one_line_without_the_snippet() {
        let e = from_yaml::<Doc>("p.yaml", "name: a\nnmae: b\n").unwrap_err();
        assert_eq!(e.at.map(|a| a.line), Some(2), "{e}");
        let shown = e.to_string();
        assert!(
            shown.starts_with("p.yaml:2:1: unknown field `nmae`"),
            "{shown}"
        );
        assert!(!shown.contains('\n'), "{shown}");
        assert!(!shown.contains(" at line "), "{shown}");
    }

    #[test]
    fn documents_are_read_in_order_and_values_keep_their_place() {
        let docs: Vec<Doc> = from_yaml_documents("p.yaml", "name: a\n---\nname: b\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(Location::of(&docs[1].name), Location { line: 3, column: 7 });
    }

    #[test]
    fn problems_are_capped_with_a_count_of_the_rest() {
        let mut p = Problems::new("m.yaml");
        for i in 0..(MAX_PROBLEMS as u64 + 5) {
            p.at(
                Location {
                    line: i + 1,
                    column: 1,
                },
                "secrets",
                "bad",
            );
        }
        let list = p.finish(()).unwrap_err();
        assert_eq!(list.len(), MAX_PROBLEMS + 1);
        assert_eq!(list[0].to_string(), "m.yaml:1:1: secrets: bad");
        assert_eq!(
            list[MAX_PROBLEMS].to_string(),
            "m.yaml: 5 more problems not shown"
        );
    }

    #[test]
    fn text_over_the_size_cap_is_refused_before_parsing() {
        let big = "#".repeat(MAX_BYTES + 1);
        let e = from_yaml::<Doc>("p.yaml", &big).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "p.yaml: is {} bytes; at most {MAX_BYTES} are read",
                MAX_BYTES + 1
            )
        );
    }
}

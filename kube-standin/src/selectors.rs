//! `labelSelector` and `fieldSelector` for list and deletecollection.
//!
//! Set-based and equality-based label requirements (`a=b`, `a!=b`, `a in (x,y)`, `a notin (x)`,
//! `a`, `!a`); field selectors on `metadata.name` and `metadata.namespace`, which is all the
//! real server supports for these kinds besides `type` on Secrets (also supported), and, for
//! core/v1 Events, the fields `events` names.

use serde_json::Value;

use super::status::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default)]
pub(crate) struct LabelSelector(Vec<Requirement>);

/// Splits on commas outside parentheses.
fn split_top_level(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    parts
        .into_iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

fn parse_set(rest: &str) -> Option<Vec<String>> {
    let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_owned()).collect())
}

impl LabelSelector {
    /// Parses a `labelSelector` query value.
    ///
    /// # Errors
    /// 400 for a requirement that does not parse.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let bad = |r: &str| ApiError::bad_request(format!("unable to parse requirement: {r:?}"));
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement::DoesNotExist(key.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(
                    k.trim().to_owned(),
                    parse_set(rest).ok_or_else(|| bad(&part))?,
                )
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Requirement::In(
                    k.trim().to_owned(),
                    parse_set(rest).ok_or_else(|| bad(&part))?,
                )
            } else if part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            {
                Requirement::Exists(part.clone())
            } else {
                return Err(bad(&part));
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Whether an object's labels satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let label = |k: &str| {
            obj.pointer("/metadata/labels")
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
        };
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::DoesNotExist(k) => label(k).is_none(),
        })
    }
}

/// A parsed field selector.
#[derive(Debug, Clone, Default)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses a `fieldSelector` query value.
    ///
    /// # Errors
    /// 400 for a field the real server would not know for these kinds.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        Self::parse_for(s, &["metadata.name", "metadata.namespace", "type"])
    }

    /// Parses a `fieldSelector` query value for a kind whose selectable fields are
    /// `supported` (core/v1 Events select on `involvedObject.*`, see `events`).
    ///
    /// # Errors
    /// 400 for a field not in `supported`, worded as the real server words it.
    pub fn parse_for(s: &str, supported: &[&str]) -> Result<Self, ApiError> {
        let mut out = Vec::new();
        for part in split_top_level(s) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if !supported.contains(&field) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            out.push((field.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(Self(out))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.matches_fields(|field| {
            match field {
                "metadata.name" => obj.pointer("/metadata/name"),
                "metadata.namespace" => obj.pointer("/metadata/namespace"),
                _ => obj.get("type"),
            }
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
        })
    }

    /// Whether the object whose selectable field `f` has the value `value_of(f)` (`""` when
    /// unset, as the real server's field sets have it) satisfies every requirement.
    pub fn matches_fields(&self, value_of: impl Fn(&str) -> String) -> bool {
        self.0
            .iter()
            .all(|(field, equal, value)| (value_of(field) == *value) == *equal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_and_equality_requirements_combine() {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "db"}}});
        assert!(
            LabelSelector::parse("app=web,tier in (db, cache)")
                .unwrap()
                .matches(&obj)
        );
        assert!(!LabelSelector::parse("app!=web").unwrap().matches(&obj));
        assert!(LabelSelector::parse("!missing,app").unwrap().matches(&obj));
        assert!(
            !LabelSelector::parse("tier notin (db)")
                .unwrap()
                .matches(&obj)
        );
    }

    #[test]
    fn field_selectors_know_name_and_namespace() {
        let obj = json!({"metadata": {"name": "a", "namespace": "n"}});
        assert!(
            FieldSelector::parse("metadata.name=a")
                .unwrap()
                .matches(&obj)
        );
        assert!(FieldSelector::parse("spec.x=1").is_err());
    }
}

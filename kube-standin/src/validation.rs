//! Validation shared by every kind: object names, namespaces, labels, annotations.
//!
//! Messages are copied from `k8s.io/apimachinery/pkg/util/validation` so that a test which
//! asserts on a message, or a user reading keyturn's error, sees what a real cluster prints.
//! The checks are hand-written (no regex crate) and each mirrors one Go function.

use serde_json::{Map, Value};

use super::status::{FieldError, go_quote};

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const CONFIG_KEY_FMT: &str = "[-._a-zA-Z0-9]+";

/// The most bytes all annotations of one object may take (`TotalAnnotationSizeLimitB`).
pub(crate) const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// apimachinery's `RegexError`, including its odd `',  or '` spacing.
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut out = format!("{msg} (e.g. ");
    for (i, example) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push('\'');
        out.push_str(example);
        out.push_str("', ");
    }
    out.push_str(&format!("regex used for validation is '{fmt}')"));
    out
}

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

fn is_dns1123_label_body(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// `IsDNS1123Label`: namespaces.
pub(crate) fn dns1123_label_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !is_dns1123_label_body(value) {
        errs.push(regex_error(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            DNS1123_LABEL_FMT,
            &["my-name", "123-abc"],
        ));
    }
    errs
}

/// `IsDNS1123Subdomain`: the names of Secrets, Deployments, Leases, …
pub(crate) fn dns1123_subdomain_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 253 {
        errs.push(max_len_error(253));
    }
    if !value.split('.').all(is_dns1123_label_body) {
        errs.push(regex_error(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

fn is_qualified_name_body(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// `IsQualifiedName`: label and annotation keys (`example.com/name`).
pub(crate) fn qualified_name_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_owned());
            } else {
                errs.extend(
                    dns1123_subdomain_errors(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_ERR, QUALIFIED_NAME_FMT, &["MyName", "my.name", "123-abc"])
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len_error(63)));
    }
    if !is_qualified_name_body(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_ERR,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// `IsValidLabelValue`.
pub(crate) fn label_value_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !value.is_empty() && !is_qualified_name_body(value) {
        errs.push(regex_error(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            &format!("({QUALIFIED_NAME_FMT})?"),
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// `IsConfigMapKey`: the keys of a Secret's `data`.
pub(crate) fn config_key_errors(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if key.len() > 253 {
        errs.push(max_len_error(253));
    }
    let valid_chars = !key.is_empty()
        && key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if !valid_chars {
        errs.push(regex_error(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            CONFIG_KEY_FMT,
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    if key == "." {
        errs.push("must not be '.'".to_owned());
    } else if key == ".." {
        errs.push("must not be '..'".to_owned());
    } else if key.starts_with("..") {
        errs.push("must not start with '..'".to_owned());
    }
    errs
}

/// `IsValidPathSegmentName`: RBAC object names (`system:auth-delegator` is one), which only
/// have to be usable as one URL path segment.
pub(crate) fn path_segment_name_errors(value: &str) -> Vec<String> {
    if value == "." || value == ".." {
        return vec![format!("may not be '{value}'")];
    }
    ["/", "%"]
        .iter()
        .filter(|bad| value.contains(**bad))
        .map(|bad| format!("may not contain '{bad}'"))
        .collect()
}

/// Which rule an object's `metadata.name` follows: the `ValidateNameFunc` its kind passes to
/// `ValidateObjectMeta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameRule {
    /// `IsDNS1123Subdomain`: Secrets, ServiceAccounts, Deployments, Leases, …
    Dns1123Subdomain,
    /// `IsValidPathSegmentName`: Roles, RoleBindings, ClusterRoles, ClusterRoleBindings.
    PathSegment,
}

/// `ValidateObjectMeta`, with the name rule of the object's kind.
///
/// `meta` has already passed the shape check, so its fields have the right JSON types.
pub(crate) fn validate_object_meta(
    meta: &Map<String, Value>,
    rule: NameRule,
    errs: &mut Vec<FieldError>,
) {
    let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        let name_errors = match rule {
            NameRule::Dns1123Subdomain => dns1123_subdomain_errors(name),
            NameRule::PathSegment => path_segment_name_errors(name),
        };
        for msg in name_errors {
            errs.push(FieldError::invalid_str("metadata.name", name, msg));
        }
    }
    if let Some(ns) = meta.get("namespace").and_then(Value::as_str) {
        for msg in dns1123_label_errors(ns) {
            errs.push(FieldError::invalid_str("metadata.namespace", ns, msg));
        }
    }
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        validate_labels(labels, "metadata.labels", errs);
    }
    if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
        validate_annotations(annotations, "metadata.annotations", errs);
    }
}

/// `ValidateLabels`: every error names the whole map's path, as the real server does.
pub(crate) fn validate_labels(labels: &Map<String, Value>, path: &str, errs: &mut Vec<FieldError>) {
    for (k, v) in labels {
        for msg in qualified_name_errors(k) {
            errs.push(FieldError::invalid_str(path, k, msg));
        }
        let v = v.as_str().unwrap_or("");
        for msg in label_value_errors(v) {
            errs.push(FieldError::invalid_str(path, v, msg));
        }
    }
}

/// `ValidateAnnotations`: keys are qualified names (case-insensitive), 256 KiB in all.
pub(crate) fn validate_annotations(
    annotations: &Map<String, Value>,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    let mut total = 0usize;
    for (k, v) in annotations {
        for msg in qualified_name_errors(&k.to_lowercase()) {
            errs.push(FieldError::invalid_str(path, k, msg));
        }
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    if total > MAX_ANNOTATIONS_BYTES {
        errs.push(FieldError::too_long(path, MAX_ANNOTATIONS_BYTES));
    }
}

/// Checks that `value` decodes into the Go type `ty` at `path`, or says why not the way
/// `encoding/json` does (`json: cannot unmarshal number into Go struct field …`).
pub(crate) fn expect_type(
    value: &Value,
    want: JsonType,
    go_field: &str,
    go_type: &str,
) -> Result<(), String> {
    let ok = match want {
        JsonType::String => value.is_string() || value.is_null(),
        JsonType::Bool => value.is_boolean() || value.is_null(),
        JsonType::StringMap => match value {
            Value::Null => true,
            Value::Object(m) => m.values().all(|v| v.is_string() || v.is_null()),
            _ => false,
        },
    };
    if ok {
        return Ok(());
    }
    let found = match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    Err(format!(
        "json: cannot unmarshal {found} into Go struct field {go_field} of type {go_type}"
    ))
}

/// The JSON shapes `expect_type` checks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum JsonType {
    String,
    Bool,
    /// `map[string]string` / `map[string][]byte` (values are strings on the wire).
    StringMap,
}

/// Removes `null` members everywhere, as decoding into Go structs and re-encoding does.
pub(crate) fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Removes the map at `path` when it is empty: Go's `omitempty` on a `map[string]…` field.
pub(crate) fn drop_empty_map(root: &mut Value, path: &[&str]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = root;
    for p in parents {
        match cur.get_mut(*p) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(obj) = cur.as_object_mut()
        && obj
            .get(*last)
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
    {
        obj.remove(*last);
    }
}

/// Formats a JSON value the way `field.Invalid` prints a Go value of that shape.
pub(crate) fn go_value(value: &Value) -> String {
    match value {
        Value::String(s) => go_quote(s),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomain_accepts_dotted_lowercase_names_and_rejects_uppercase() {
        assert!(dns1123_subdomain_errors("db-creds.v2").is_empty());
        assert_eq!(dns1123_subdomain_errors("Db").len(), 1);
        assert_eq!(dns1123_subdomain_errors("-a").len(), 1);
        assert_eq!(dns1123_subdomain_errors("a..b").len(), 1);
        assert_eq!(dns1123_subdomain_errors(&"a".repeat(254)).len(), 1);
    }

    #[test]
    fn config_keys_follow_is_config_map_key() {
        assert!(config_key_errors("tls.crt").is_empty());
        assert!(config_key_errors("KEY_NAME-1").is_empty());
        assert_eq!(config_key_errors("bad key").len(), 1);
        assert_eq!(config_key_errors(".."), vec!["must not be '..'".to_owned()]);
        assert_eq!(
            config_key_errors("..x"),
            vec!["must not start with '..'".to_owned()]
        );
        assert_eq!(config_key_errors(&"k".repeat(254)).len(), 1);
        assert!(config_key_errors("").len() == 1);
    }

    #[test]
    fn config_key_message_keeps_the_real_double_spaces() {
        let msg = &config_key_errors("a b")[0];
        assert_eq!(
            msg,
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
        );
    }

    #[test]
    fn qualified_names_allow_one_dns_prefix() {
        assert!(qualified_name_errors("keyturn.dev/hash").is_empty());
        assert!(qualified_name_errors("app").is_empty());
        assert_eq!(qualified_name_errors("a/b/c").len(), 1);
        assert_eq!(qualified_name_errors("Bad_Prefix/x").len(), 1);
        assert_eq!(qualified_name_errors("x/").len(), 2);
    }

    #[test]
    fn path_segment_names_allow_colons_but_not_slashes_or_dots_alone() {
        assert!(path_segment_name_errors("system:auth-delegator").is_empty());
        assert_eq!(
            path_segment_name_errors(".."),
            vec!["may not be '..'".to_owned()]
        );
        assert_eq!(
            path_segment_name_errors("a/b%c"),
            vec![
                "may not contain '/'".to_owned(),
                "may not contain '%'".to_owned()
            ]
        );
    }

    #[test]
    fn label_values_may_be_empty_but_not_end_in_a_dash() {
        assert!(label_value_errors("").is_empty());
        assert!(label_value_errors("v1.2_3").is_empty());
        assert_eq!(label_value_errors("v-").len(), 1);
    }
}

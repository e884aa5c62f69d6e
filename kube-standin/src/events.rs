//! events.k8s.io/v1 Events: the validation `ValidateEventCreate`/`ValidateEventUpdate` apply to
//! an Event written through events.k8s.io/v1, which is what kube-runtime's `Recorder` writes
//! (a create, then merge patches of `series` when the same event repeats).
//!
//! The real server validates the internal (core) form, so field paths name the core fields:
//! `message` for `note`, `involvedObject` for `regarding`, `reportingController`, `count`,
//! `firstTimestamp`, `lastTimestamp`, `source` for the `deprecated…` fields. Checked: the
//! object meta; `eventTime` set; `type` `Normal` or `Warning`; the deprecated fields unset;
//! `series.count` ≥ 2 with `series.lastObservedTime`; `reportingController` a qualified name
//! and, with `reportingInstance`, `action` and `reason`, present and at most 128 characters;
//! `note` at most 1 kB; an unnamespaced `regarding` only from `default`/`kube-system`. On
//! update everything but `series` (and metadata) is immutable.

use serde_json::Value;

use super::status::FieldError;
use super::validation;

/// `ReportingInstanceLengthLimit`, `ActionLengthLimit`, `ReasonLengthLimit`.
const SHORT_LIMIT: usize = 128;
/// `NoteLengthLimit`.
const NOTE_LIMIT: usize = 1024;

/// (events.k8s.io/v1 field, core field as validation names it) for the immutable fields.
const IMMUTABLE: &[(&str, &str)] = &[
    ("action", "action"),
    ("reason", "reason"),
    ("note", "message"),
    ("type", "type"),
    ("regarding", "involvedObject"),
    ("related", "related"),
    ("reportingController", "reportingController"),
    ("reportingInstance", "reportingInstance"),
    ("eventTime", "eventTime"),
];

fn str_at<'a>(obj: &'a Value, key: &str) -> &'a str {
    obj.get(key).and_then(Value::as_str).unwrap_or("")
}

fn too_long(field: &str, limit: usize) -> FieldError {
    FieldError::invalid_str(field, "", format!("can have at most {limit} characters"))
}

/// `ValidateEventCreate` for events.k8s.io/v1, and `ValidateEventUpdate`'s immutability.
pub(crate) fn validate(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let namespace = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    // legacyValidateEvent, the eventTime branch.
    let regarding_ns = obj
        .pointer("/regarding/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !str_at(obj, "eventTime").is_empty()
        && regarding_ns.is_empty()
        && namespace != "default"
        && namespace != "kube-system"
    {
        errs.push(FieldError::invalid_str(
            "involvedObject.namespace",
            regarding_ns,
            "does not match event.namespace",
        ));
    }
    let controller = str_at(obj, "reportingController");
    if controller.is_empty() {
        errs.push(FieldError::required("reportingController", ""));
    }
    for msg in validation::qualified_name_errors(controller) {
        errs.push(FieldError::invalid_str(
            "reportingController",
            controller,
            msg,
        ));
    }
    for (field, limit) in [
        ("reportingInstance", SHORT_LIMIT),
        ("action", SHORT_LIMIT),
        ("reason", SHORT_LIMIT),
    ] {
        let value = str_at(obj, field);
        if value.is_empty() {
            errs.push(FieldError::required(field, ""));
        }
        if value.len() > limit {
            errs.push(too_long(field, limit));
        }
    }
    if str_at(obj, "note").len() > NOTE_LIMIT {
        errs.push(too_long("message", NOTE_LIMIT));
    }
    // The strict part for events.k8s.io/v1.
    if let Some(series) = obj.get("series") {
        let count = series.get("count").and_then(Value::as_i64).unwrap_or(0);
        if count < 2 {
            errs.push(FieldError::invalid_raw(
                "series.count",
                "\"\"",
                "should be at least 2",
            ));
        }
        if str_at(series, "lastObservedTime").is_empty() {
            errs.push(FieldError::required("series.lastObservedTime", ""));
        }
    }
    if str_at(obj, "eventTime").is_empty() {
        errs.push(FieldError::required("eventTime", ""));
    }
    let ty = str_at(obj, "type");
    if ty != "Normal" && ty != "Warning" {
        errs.push(FieldError::invalid_str(
            "type",
            "",
            format!("has invalid value: {ty}"),
        ));
    }
    for (field, core) in [
        ("deprecatedFirstTimestamp", "firstTimestamp"),
        ("deprecatedLastTimestamp", "lastTimestamp"),
    ] {
        if !str_at(obj, field).is_empty() {
            errs.push(FieldError::invalid_str(core, "", "needs to be unset"));
        }
    }
    if obj
        .get("deprecatedCount")
        .and_then(Value::as_i64)
        .is_some_and(|c| c != 0)
    {
        errs.push(FieldError::invalid_str("count", "", "needs to be unset"));
    }
    if let Some(source) = obj.get("deprecatedSource")
        && (!str_at(source, "component").is_empty() || !str_at(source, "host").is_empty())
    {
        errs.push(FieldError::invalid_str("source", "", "needs to be unset"));
    }
    if let Some(old) = old {
        for (field, core) in IMMUTABLE {
            if obj.get(*field) != old.get(*field) {
                errs.push(FieldError::invalid_raw(
                    *core,
                    validation::go_value(obj.get(*field).unwrap_or(&Value::String(String::new()))),
                    "field is immutable",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_the_recorder_sends_is_valid_and_its_series_patch_too() {
        let created = json!({
            "metadata": {"name": "web.1", "namespace": "app"},
            "eventTime": "2025-01-01T00:00:00.000000Z", "action": "Inject", "reason": "Injected",
            "note": "injected", "type": "Normal", "reportingController": "keyturn-webhook",
            "reportingInstance": "keyturn-webhook-0",
            "regarding": {"kind": "ReplicaSet", "name": "web", "namespace": "app"},
        });
        let mut errs = Vec::new();
        validate(&created, None, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let mut repeated = created.clone();
        repeated["series"] = json!({"count": 2, "lastObservedTime": "2025-01-01T00:00:01.000000Z"});
        validate(&repeated, Some(&created), &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn missing_fields_are_reported_under_the_core_names() {
        let mut errs = Vec::new();
        validate(
            &json!({"metadata": {"namespace": "default"}, "note": "x".repeat(1025), "type": "Bad"}),
            None,
            &mut errs,
        );
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(text.contains(&"reportingController: Required value".to_owned()));
        assert!(text.contains(&"eventTime: Required value".to_owned()));
        assert!(text.contains(
            &r#"message: Invalid value: "": can have at most 1024 characters"#.to_owned()
        ));
        assert!(text.contains(&r#"type: Invalid value: "": has invalid value: Bad"#.to_owned()));
    }
}

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
//!
//! **core/v1 Events** are the same objects: the real API server keeps one Event storage and
//! serves it as both `events.k8s.io/v1` and core `v1`, converting on read. The stand-in does
//! the same for get and list ([`serve_core`]), with the real conversion
//! (`Convert_v1_Event_To_core_Event`): `regarding` → `involvedObject`, `note` → `message`,
//! `reportingController` → `reportingComponent`, `deprecatedSource` → `source`,
//! `deprecated{First,Last}Timestamp` → `{first,last}Timestamp`, `deprecatedCount` → `count`,
//! and `series`, `eventTime`, `action`, `reason`, `related`, `type` as they are (so an Event
//! the recorder folded into a series has `series.count`, not `count`, in both versions). A
//! core list selects on the fields of the real event strategy's `ToSelectableFields`
//! ([`CORE_SELECTABLE`]), which is what `kubectl describe` sends:
//! `involvedObject.uid=…,involvedObject.name=…,involvedObject.namespace=…,involvedObject.kind=…`
//! (with `limit=500`, ignored: one page). Core Events cannot be written or watched here;
//! keyturn writes Events only through events.k8s.io/v1.

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use super::objects::{Query, Reply};
use super::resources;
use super::selectors::{FieldSelector, LabelSelector};
use super::server::Shared;
use super::status::{ApiError, FieldError};
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

/// The fields a core/v1 Event list can select on: the real event strategy's
/// `ToSelectableFields` (object meta with the namespace, and these).
pub(crate) const CORE_SELECTABLE: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

/// A stored events.k8s.io/v1 Event as core/v1 serves it. Zero values come out as Go's
/// encoder writes the core type: `source: {}` and `firstTimestamp`/`lastTimestamp`/
/// `eventTime` `null` (struct fields, never omitted), `reportingComponent` and
/// `reportingInstance` always present, empty strings and a zero `count` omitted.
pub(crate) fn to_core(event: &Value) -> Value {
    let get = |k: &str| event.get(k).filter(|v| !v.is_null());
    let text = |k: &str| {
        get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| json!(s))
    };
    let mut out = Map::new();
    out.insert("kind".into(), json!("Event"));
    out.insert("apiVersion".into(), json!("v1"));
    out.insert(
        "metadata".into(),
        get("metadata").cloned().unwrap_or_else(|| json!({})),
    );
    out.insert(
        "involvedObject".into(),
        get("regarding").cloned().unwrap_or_else(|| json!({})),
    );
    for (from, to) in [("reason", "reason"), ("note", "message")] {
        if let Some(v) = text(from) {
            out.insert(to.into(), v);
        }
    }
    out.insert(
        "source".into(),
        get("deprecatedSource")
            .cloned()
            .unwrap_or_else(|| json!({})),
    );
    for (from, to) in [
        ("deprecatedFirstTimestamp", "firstTimestamp"),
        ("deprecatedLastTimestamp", "lastTimestamp"),
    ] {
        out.insert(to.into(), get(from).cloned().unwrap_or(Value::Null));
    }
    if let Some(count) = get("deprecatedCount").filter(|c| c.as_i64() != Some(0)) {
        out.insert("count".into(), count.clone());
    }
    if let Some(v) = text("type") {
        out.insert("type".into(), v);
    }
    out.insert(
        "eventTime".into(),
        get("eventTime").cloned().unwrap_or(Value::Null),
    );
    if let Some(series) = get("series") {
        out.insert("series".into(), series.clone());
    }
    if let Some(v) = text("action") {
        out.insert("action".into(), v);
    }
    if let Some(related) = get("related") {
        out.insert("related".into(), related.clone());
    }
    for (from, to) in [
        ("reportingController", "reportingComponent"),
        ("reportingInstance", "reportingInstance"),
    ] {
        out.insert(to.into(), text(from).unwrap_or_else(|| json!("")));
    }
    Value::Object(out)
}

/// The value of a selectable field ([`CORE_SELECTABLE`]) of a core Event; `""` when unset.
/// `source` is `source.component`, else `reportingComponent`, as the real strategy has it.
pub(crate) fn core_field(core: &Value, field: &str) -> String {
    let at = |pointer: &str| {
        core.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    match field {
        "metadata.name" => at("/metadata/name"),
        "metadata.namespace" => at("/metadata/namespace"),
        "source" => {
            let component = at("/source/component");
            if component.is_empty() {
                at("/reportingComponent")
            } else {
                component
            }
        }
        f => match f.strip_prefix("involvedObject.") {
            Some(sub) => at(&format!("/involvedObject/{sub}")),
            None => at(&format!("/{f}")),
        },
    }
}

/// get and list of core/v1 Events (the only verbs [`resources::CORE_EVENTS`] has), from the
/// stored events.k8s.io/v1 ones.
pub(crate) fn serve_core(
    shared: &Shared,
    verb: &str,
    namespace: Option<&str>,
    name: Option<&str>,
    query: &Query,
) -> Result<Reply, ApiError> {
    let kind = &resources::CORE_EVENTS;
    if verb == "get" {
        let name = name.unwrap_or("");
        let store = shared.store();
        let stored = store
            .get(&resources::EVENTS, namespace.unwrap_or(""), name)
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        return Ok((StatusCode::OK, to_core(&stored.render())));
    }
    super::watch::check_list_options(query, false)?;
    let rv = super::watch::parse_resource_version(kind, query)?;
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?;
    let fields =
        FieldSelector::parse_for(query.get("fieldSelector").unwrap_or(""), CORE_SELECTABLE)?;
    let exact = query.get("resourceVersionMatch") == Some("Exact");
    let store = shared.store();
    let current = store.resource_version();
    let (at, stored): (u64, Vec<Value>) = match rv {
        Some(r) if r > current => return Err(ApiError::too_large_resource_version(r, current)),
        Some(r) if exact && r < current => {
            if store.check_resource_version(r).is_err() {
                return Err(ApiError::expired(
                    "The resourceVersion for the provided list is too old.",
                ));
            }
            (r, store.list_at(&resources::EVENTS, namespace, r))
        }
        _ => (
            current,
            store
                .list(&resources::EVENTS, namespace)
                .map(super::store::StoredObject::render)
                .collect(),
        ),
    };
    drop(store);
    let items: Vec<Value> = stored
        .iter()
        .map(to_core)
        .filter(|core| labels.matches(core) && fields.matches_fields(|f| core_field(core, f)))
        .map(|mut core| {
            // List items omit `apiVersion`/`kind`, as the real server's do.
            if let Some(m) = core.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            core
        })
        .collect();
    Ok((
        StatusCode::OK,
        json!({
            "kind": "EventList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": at.to_string()},
            "items": items,
        }),
    ))
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

    #[test]
    fn a_recorded_event_reads_as_core_v1_with_the_real_conversion_and_selects_on_its_object() {
        let stored = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "p.1", "namespace": "app"},
            "eventTime": "2025-01-01T00:00:00.000000Z", "action": "Rotate", "reason": "Rotated",
            "note": "rotation r-1 finished", "type": "Normal",
            "reportingController": "keyturn-daemon", "reportingInstance": "keyturn-0",
            "regarding": {"apiVersion": "keyturn.dev/v1", "kind": "RotationPolicy", "name": "p", "namespace": "app", "uid": "u-1"},
            "series": {"count": 3, "lastObservedTime": "2025-01-01T00:05:00.000000Z"},
        });
        let core = to_core(&stored);
        assert_eq!(
            core,
            json!({
                "kind": "Event", "apiVersion": "v1",
                "metadata": {"name": "p.1", "namespace": "app"},
                "involvedObject": {"apiVersion": "keyturn.dev/v1", "kind": "RotationPolicy", "name": "p", "namespace": "app", "uid": "u-1"},
                "reason": "Rotated", "message": "rotation r-1 finished",
                "source": {}, "firstTimestamp": null, "lastTimestamp": null,
                "type": "Normal", "eventTime": "2025-01-01T00:00:00.000000Z",
                "series": {"count": 3, "lastObservedTime": "2025-01-01T00:05:00.000000Z"},
                "action": "Rotate",
                "reportingComponent": "keyturn-daemon", "reportingInstance": "keyturn-0",
            })
        );
        // What `kubectl describe rotationpolicy p` sends.
        let describe = FieldSelector::parse_for(
            "involvedObject.uid=u-1,involvedObject.name=p,involvedObject.namespace=app,involvedObject.kind=RotationPolicy",
            CORE_SELECTABLE,
        )
        .unwrap();
        assert!(describe.matches_fields(|f| core_field(&core, f)));
        let other = FieldSelector::parse_for("involvedObject.uid=u-2", CORE_SELECTABLE).unwrap();
        assert!(!other.matches_fields(|f| core_field(&core, f)));
        let source =
            FieldSelector::parse_for("source=keyturn-daemon,type=Normal", CORE_SELECTABLE).unwrap();
        assert!(source.matches_fields(|f| core_field(&core, f)));
        // events.k8s.io's names are not core's.
        let err = FieldSelector::parse_for("regarding.name=p", CORE_SELECTABLE).unwrap_err();
        assert_eq!(err.message, "field label not supported: regarding.name");
    }
}

//! `Table` responses (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), which
//! `kubectl get` asks for and prints as they come: the server picks the columns.
//!
//! Columns are the real server's printers' for the kinds kubectl users look at (Secrets:
//! NAME, TYPE, DATA, AGE; Deployments: NAME, READY, UP-TO-DATE, AVAILABLE, AGE, and
//! CONTAINERS, IMAGES, SELECTOR with `-o wide`; Pods: NAME, READY, STATUS, RESTARTS, AGE,
//! never running, so `0/N` and `Pending`; Events of both versions: LAST SEEN, TYPE, REASON,
//! OBJECT, MESSAGE) and the default NAME, CREATED AT for the rest; a custom resource's are
//! its `additionalPrinterColumns`, `date` ones printed as ages (`HumanDuration`, below) as the
//! real apiextensions-apiserver prints them. A list's Table keeps its `continue` token and
//! `remainingItemCount` (see `paging`), which `kubectl get` pages on. Each row carries the
//! object's metadata (`PartialObjectMetadata`), which kubectl reads for namespaces and
//! labels, as the default `includeObject=Metadata` makes it.

use serde_json::{Value, json};

use super::resources::{self, ResourceKind};

/// Whether `accept` asks for a Table.
pub(crate) fn wanted(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',')
            .next()
            .is_some_and(|first| first.contains("as=Table"))
    })
}

/// The served kind (of `kinds`) whose object or list `body` is.
fn kind_of(body: &Value, kinds: &[&'static ResourceKind]) -> Option<(&'static ResourceKind, bool)> {
    let kind = body.get("kind")?.as_str()?;
    let api_version = body.get("apiVersion").and_then(Value::as_str);
    kinds
        .iter()
        .filter(|k| api_version.is_none_or(|v| v == k.api_version()))
        .find_map(|k| {
            if k.kind == kind {
                Some((*k, false))
            } else if kind.strip_suffix("List") == Some(k.kind) {
                Some((*k, true))
            } else {
                None
            }
        })
}

fn column(name: &str, ty: &str, format: &str, priority: u8, description: &str) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

/// `duration.HumanDuration` of k8s.io/apimachinery, ported line for line: how every AGE
/// column and a custom resource's `date` printer columns print a time since. Up to two units
/// and ~2-3 significant figures; a duration up to 2 s negative (clock skew) is `0s`, a more
/// negative one (a time in the future) `<invalid>`.
fn human_duration(d: chrono::TimeDelta) -> String {
    // Go's `int(d.Seconds())`, `int(d / time.Minute)` and `int(d / time.Hour)` truncate
    // toward zero, as `num_seconds` and friends do.
    let seconds = d.num_seconds();
    if seconds < -1 {
        return "<invalid>".into();
    } else if seconds < 0 {
        return "0s".into();
    } else if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = d.num_minutes();
    if minutes < 10 {
        let s = d.num_seconds() % 60;
        if s == 0 {
            return format!("{minutes}m");
        }
        return format!("{minutes}m{s}s");
    } else if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = d.num_hours();
    if hours < 8 {
        let m = d.num_minutes() % 60;
        if m == 0 {
            return format!("{hours}h");
        }
        return format!("{hours}h{m}m");
    } else if hours < 48 {
        return format!("{hours}h");
    } else if hours < 24 * 8 {
        let h = hours % 24;
        if h == 0 {
            return format!("{}d", hours / 24);
        }
        return format!("{}d{h}h", hours / 24);
    } else if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    } else if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        if dy == 0 {
            return format!("{}y", hours / 24 / 365);
        }
        return format!("{}y{dy}d", hours / 24 / 365);
    }
    format!("{}y", hours / 24 / 365)
}

fn age(obj: &Value) -> String {
    since(obj.pointer("/metadata/creationTimestamp"))
}

/// A `date` printer column's cell, as the real apiextensions-apiserver's `cellForJSONValue`
/// makes it: a string is parsed as `metav1.Time` parses a query parameter (RFC 3339; empty or
/// `null`: the zero time) and printed as its age (`ConvertToHumanReadableDateType`:
/// `<unknown>` for the zero time, `<invalid>` in the future), `<invalid>` when it does not
/// parse; anything but a string is no value.
pub(crate) fn date_cell(value: &Value) -> Value {
    let Some(text) = value.as_str() else {
        return Value::Null;
    };
    if text.is_empty() || text == "null" {
        return json!("<unknown>");
    }
    match chrono::DateTime::parse_from_rfc3339(text) {
        Err(_) => json!("<invalid>"),
        // Go's zero `time.Time`.
        Ok(t) if t.timestamp() == GO_ZERO_TIME_UNIX && t.timestamp_subsec_nanos() == 0 => {
            json!("<unknown>")
        }
        Ok(t) => json!(human_duration(chrono::Utc::now() - t.to_utc())),
    }
}

/// `time.Time{}` (0001-01-01T00:00:00Z) in Unix seconds: `IsZero`.
const GO_ZERO_TIME_UNIX: i64 = -62_135_596_800;

fn int_at(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn columns(kind: &ResourceKind) -> Vec<Value> {
    let name = column(
        "Name",
        "string",
        "name",
        0,
        "Name must be unique within a namespace.",
    );
    if let Some(custom) = kind.custom {
        let mut out = vec![name];
        out.extend(super::crds::column_definitions(custom));
        out
    } else if *kind == resources::SECRETS {
        vec![
            name,
            column(
                "Type",
                "string",
                "",
                0,
                "Used to facilitate programmatic handling of secret data.",
            ),
            column(
                "Data",
                "integer",
                "",
                0,
                "The number of keys in the secret.",
            ),
            column(
                "Age",
                "string",
                "",
                0,
                "CreationTimestamp is a timestamp representing the server time when this object was created.",
            ),
        ]
    } else if *kind == resources::PODS {
        let age = "CreationTimestamp is a timestamp representing the server time when this object was created.";
        vec![
            name,
            column(
                "Ready",
                "string",
                "",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            column(
                "Status",
                "string",
                "",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            column(
                "Restarts",
                "string",
                "",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            column("Age", "string", "", 0, age),
        ]
    } else if is_event(kind) {
        event_columns()
    } else if *kind == resources::DEPLOYMENTS {
        vec![
            name,
            column(
                "Ready",
                "string",
                "",
                0,
                "Number of the pod with ready state",
            ),
            column(
                "Up-to-date",
                "integer",
                "",
                0,
                "Total number of non-terminating pods targeted by this deployment that have the desired template spec.",
            ),
            column(
                "Available",
                "integer",
                "",
                0,
                "Total number of available non-terminating pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            column(
                "Age",
                "string",
                "",
                0,
                "CreationTimestamp is a timestamp representing the server time when this object was created.",
            ),
            column(
                "Containers",
                "string",
                "",
                1,
                "Names of each container in the template.",
            ),
            column(
                "Images",
                "string",
                "",
                1,
                "Images referenced by each container in the template.",
            ),
            column(
                "Selector",
                "string",
                "",
                1,
                "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
            ),
        ]
    } else {
        vec![
            name,
            column(
                "Created At",
                "date",
                "",
                0,
                "CreationTimestamp is a timestamp representing the server time when this object was created.",
            ),
        ]
    }
}

fn cells(kind: &ResourceKind, obj: &Value) -> Vec<Value> {
    let name = json!(
        obj.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    );
    if let Some(custom) = kind.custom {
        let mut out = vec![name];
        out.extend(super::crds::cells(custom, obj));
        out
    } else if *kind == resources::SECRETS {
        let data = obj
            .get("data")
            .and_then(Value::as_object)
            .map_or(0, serde_json::Map::len);
        vec![
            name,
            json!(obj.get("type").and_then(Value::as_str).unwrap_or("")),
            json!(data),
            json!(age(obj)),
        ]
    } else if *kind == resources::PODS {
        let containers = obj
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        vec![
            name,
            json!(format!("0/{containers}")),
            json!(
                obj.pointer("/status/phase")
                    .and_then(Value::as_str)
                    .unwrap_or("Pending")
            ),
            json!("0"),
            json!(age(obj)),
        ]
    } else if *kind == resources::CORE_EVENTS {
        event_cells(obj)
    } else if *kind == resources::EVENTS {
        event_cells(&super::events::to_core(obj))
    } else if *kind == resources::DEPLOYMENTS {
        let containers = obj
            .pointer("/spec/template/spec/containers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let joined = |field: &str| {
            containers
                .iter()
                .filter_map(|c| c.get(field).and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(",")
        };
        let selector = obj
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        vec![
            name,
            json!(format!(
                "{}/{}",
                int_at(obj, "/status/readyReplicas"),
                int_at(obj, "/spec/replicas")
            )),
            json!(int_at(obj, "/status/updatedReplicas")),
            json!(int_at(obj, "/status/availableReplicas")),
            json!(age(obj)),
            json!(joined("name")),
            json!(joined("image")),
            json!(selector),
        ]
    } else {
        vec![
            name,
            obj.pointer("/metadata/creationTimestamp")
                .cloned()
                .unwrap_or(Value::Null),
        ]
    }
}

/// Events of either version: the real server prints both with its one Event printer.
fn is_event(kind: &ResourceKind) -> bool {
    *kind == resources::EVENTS || *kind == resources::CORE_EVENTS
}

/// The real Event printer's columns (`kubectl get events`: LAST SEEN, TYPE, REASON, OBJECT,
/// MESSAGE; the rest with `-o wide`).
fn event_columns() -> Vec<Value> {
    vec![
        column(
            "Last Seen",
            "string",
            "",
            0,
            "The time at which the most recent occurrence of this event was recorded.",
        ),
        column(
            "Type",
            "string",
            "",
            0,
            "Type of this event (Normal, Warning), new types could be added in the future",
        ),
        column(
            "Reason",
            "string",
            "",
            0,
            "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
        ),
        column(
            "Object",
            "string",
            "",
            0,
            "The object that this event is about.",
        ),
        column(
            "Subobject",
            "string",
            "",
            1,
            "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement.",
        ),
        column(
            "Source",
            "string",
            "",
            1,
            "The component reporting this event. Should be a short machine understandable string.",
        ),
        column(
            "Message",
            "string",
            "",
            0,
            "A human-readable description of the status of this operation.",
        ),
        column(
            "First Seen",
            "string",
            "",
            1,
            "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)",
        ),
        column(
            "Count",
            "string",
            "",
            1,
            "The number of times this event has occurred.",
        ),
        column(
            "Name",
            "string",
            "name",
            1,
            "Name must be unique within a namespace.",
        ),
    ]
}

/// `translateTimestampSince` of an RFC 3339 time: its age, `<unknown>` when unset.
fn since(time: Option<&Value>) -> String {
    time.and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(
            || "<unknown>".to_owned(),
            |t| human_duration(chrono::Utc::now() - t.to_utc()),
        )
}

/// The real `printEvent` of a core/v1 Event, with every column (the server prints wide;
/// kubectl hides the priority-1 ones).
fn event_cells(core: &Value) -> Vec<Value> {
    let text = |pointer: &str| {
        core.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let present = |key: &str| core.get(key).filter(|v| !v.is_null());
    let first =
        present("firstTimestamp").map_or_else(|| since(present("eventTime")), |t| since(Some(t)));
    let mut last = present("lastTimestamp").map_or_else(|| first.clone(), |t| since(Some(t)));
    let mut count = core.get("count").and_then(Value::as_i64).unwrap_or(0);
    if let Some(series) = present("series") {
        last = since(series.get("lastObservedTime"));
        count = series.get("count").and_then(Value::as_i64).unwrap_or(0);
    } else if count == 0 {
        count = 1;
    }
    let kind = text("/involvedObject/kind").to_lowercase();
    let name = text("/involvedObject/name");
    let target = if name.is_empty() {
        kind
    } else {
        format!("{kind}/{name}")
    };
    let first_non_empty = |a: String, b: String| if a.is_empty() { b } else { a };
    let component = first_non_empty(text("/source/component"), text("/reportingComponent"));
    let instance = first_non_empty(text("/source/host"), text("/reportingInstance"));
    let source = if instance.is_empty() {
        component
    } else {
        format!("{component}, {instance}")
    };
    vec![
        json!(last),
        json!(text("/type")),
        json!(text("/reason")),
        json!(target),
        json!(text("/involvedObject/fieldPath")),
        json!(source),
        json!(text("/message").trim()),
        json!(first),
        json!(count),
        json!(text("/metadata/name")),
    ]
}

fn row(kind: &ResourceKind, obj: &Value) -> Value {
    let mut metadata = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
    if let Some(m) = metadata.as_object_mut() {
        m.remove("managedFields");
    }
    json!({
        "cells": cells(kind, obj),
        "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata},
    })
}

/// `body` (one object or a list of a served kind) as a Table; `None` for anything else.
pub(crate) fn convert(body: &Value, kinds: &[&'static ResourceKind]) -> Option<Value> {
    let (kind, _) = kind_of(body, kinds)?;
    convert_with(kind, body)
}

/// `body` (one object or a list of `kind`) as a Table; `None` for a kind that is not stored.
pub(crate) fn convert_with(kind: &ResourceKind, body: &Value) -> Option<Value> {
    let is_list = body.get("items").is_some_and(Value::is_array);
    if !kind.stored {
        return None;
    }
    let rows = if is_list {
        let items = body.get("items")?.as_array()?;
        items.iter().map(|o| row(kind, o)).collect::<Vec<_>>()
    } else {
        vec![row(kind, body)]
    };
    // A list's `continue` and `remainingItemCount` too, as every real table convertor copies
    // them: `kubectl get --chunk-size` pages on the Table's token.
    let mut metadata = json!({});
    let fields: &[&str] = if is_list {
        &["resourceVersion", "continue", "remainingItemCount"]
    } else {
        &["resourceVersion"]
    };
    for field in fields {
        if let Some(v) = body.get("metadata").and_then(|m| m.get(*field)) {
            metadata[*field] = v.clone();
        }
    }
    Some(json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns(kind),
        "rows": rows,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_print_as_kubectl_prints_them() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (50 * 3600, "2d2h"),
            (400 * 86400, "400d"),
        ] {
            assert_eq!(human_duration(chrono::TimeDelta::seconds(s)), want, "{s}");
        }
    }

    /// Every boundary of apimachinery's `HumanDuration`, on both sides.
    #[test]
    fn human_duration_switches_units_where_apimachinery_does() {
        let ms = chrono::TimeDelta::milliseconds;
        let s = chrono::TimeDelta::seconds;
        let (m, h, d) = (60, 3600, 86_400);
        let y = 365 * d;
        for (delta, want) in [
            // Up to 2 s in the future is clock skew; more is a time that has not come.
            (ms(-2_000), "<invalid>"),
            (s(-3600), "<invalid>"),
            (ms(-1_999), "0s"),
            (ms(-1_000), "0s"),
            (ms(-1), "0s"),
            (s(0), "0s"),
            (ms(999), "0s"),
            (s(1), "1s"),
            (ms(119_999), "119s"),
            (s(2 * m), "2m"),
            (s(2 * m + 1), "2m1s"),
            (s(9 * m + 59), "9m59s"),
            (s(9 * m), "9m"),
            (s(10 * m), "10m"),
            (s(10 * m + 59), "10m"),
            (s(3 * h - 1), "179m"),
            (s(3 * h), "3h"),
            (s(3 * h + m), "3h1m"),
            (s(8 * h - 1), "7h59m"),
            (s(8 * h), "8h"),
            (s(8 * h + 59 * m), "8h"),
            (s(48 * h - 1), "47h"),
            (s(48 * h), "2d"),
            (s(49 * h), "2d1h"),
            (s(8 * d - 1), "7d23h"),
            (s(8 * d), "8d"),
            (s(8 * d + 23 * h), "8d"),
            (s(2 * y - 1), "729d"),
            (s(2 * y), "2y"),
            (s(2 * y + d), "2y1d"),
            (s(3 * y - 1), "2y364d"),
            (s(3 * y), "3y"),
            (s(8 * y - 1), "7y364d"),
            (s(8 * y), "8y"),
            (s(8 * y + 200 * d), "8y"),
            (s(20 * y), "20y"),
        ] {
            assert_eq!(human_duration(delta), want, "{delta}");
        }
    }

    #[test]
    fn a_date_cell_is_an_age_as_the_crd_table_convertor_prints_it() {
        let ago = |secs: i64| {
            json!(
                (chrono::Utc::now() - chrono::TimeDelta::seconds(secs))
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        };
        assert_eq!(date_cell(&ago(3 * 3600 + 5)), json!("3h"));
        assert_eq!(date_cell(&ago(3 * 86_400)), json!("3d"));
        assert_eq!(date_cell(&ago(-3600)), json!("<invalid>"));
        assert_eq!(date_cell(&json!("tomorrow")), json!("<invalid>"));
        for zero in ["", "null", "0001-01-01T00:00:00Z"] {
            assert_eq!(date_cell(&json!(zero)), json!("<unknown>"), "{zero:?}");
        }
        assert_eq!(date_cell(&json!(5)), Value::Null);
        assert_eq!(date_cell(&json!({"a": 1})), Value::Null);
        // Fractional seconds and offsets parse as Go's RFC 3339 layout takes them.
        let offset = (chrono::Utc::now() - chrono::TimeDelta::minutes(5))
            .with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).unwrap())
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
        assert_eq!(date_cell(&json!(offset)), json!("5m"));
    }

    #[test]
    fn a_paged_list_keeps_its_token_in_the_table() {
        let list = json!({"kind": "SecretList", "apiVersion": "v1", "metadata": {"resourceVersion": "7", "continue": "abc", "remainingItemCount": 3}, "items": []});
        let table = convert(&list, resources::ALL).unwrap();
        assert_eq!(
            table["metadata"],
            json!({"resourceVersion": "7", "continue": "abc", "remainingItemCount": 3})
        );
    }

    #[test]
    fn a_secret_list_becomes_rows_of_name_type_data_and_age() {
        let list = json!({"kind": "SecretList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}, "items": [
            {"metadata": {"name": "db", "namespace": "app", "creationTimestamp": "2020-01-01T00:00:00Z", "managedFields": []}, "type": "Opaque", "data": {"a": "", "b": ""}},
        ]});
        let table = convert(&list, resources::ALL).unwrap();
        assert_eq!(table["metadata"]["resourceVersion"], "7");
        let cells = &table["rows"][0]["cells"];
        assert_eq!(
            (&cells[0], &cells[1], &cells[2]),
            (&json!("db"), &json!("Opaque"), &json!(2))
        );
        assert_eq!(table["rows"][0]["object"]["metadata"]["namespace"], "app");
        assert!(
            table["rows"][0]["object"]["metadata"]
                .get("managedFields")
                .is_none()
        );
        assert!(wanted(Some(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        )));
        assert!(!wanted(Some("application/json")));
    }
}

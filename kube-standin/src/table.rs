//! `Table` responses (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), which
//! `kubectl get` asks for and prints as they come: the server picks the columns.
//!
//! Columns are the real server's printers' for the kinds kubectl users look at (Secrets:
//! NAME, TYPE, DATA, AGE; Deployments: NAME, READY, UP-TO-DATE, AVAILABLE, AGE, and
//! CONTAINERS, IMAGES, SELECTOR with `-o wide`; Pods: NAME, READY, STATUS, RESTARTS, AGE,
//! never running, so `0/N` and `Pending`; Events of both versions: LAST SEEN, TYPE, REASON,
//! OBJECT, MESSAGE) and the default NAME, CREATED AT for the rest. Each row carries the
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

/// `duration.HumanDuration`, as the AGE column prints it.
fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    let (m, h) = (s / 60, s / 3600);
    match () {
        () if s < 120 => format!("{s}s"),
        () if m < 10 && s % 60 != 0 => format!("{m}m{}s", s % 60),
        () if m < 180 => format!("{m}m"),
        () if h < 8 && m % 60 != 0 => format!("{h}h{}m", m % 60),
        () if h < 48 => format!("{h}h"),
        () if h < 24 * 8 && h % 24 != 0 => format!("{}d{}h", h / 24, h % 24),
        () if h < 24 * 365 * 2 => format!("{}d", h / 24),
        () if h < 24 * 365 * 8 && (h / 24) % 365 != 0 => {
            format!("{}y{}d", h / 24 / 365, (h / 24) % 365)
        }
        () => format!("{}y", h / 24 / 365),
    }
}

fn age(obj: &Value) -> String {
    obj.pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(
            || "<unknown>".to_owned(),
            |t| human_duration((chrono::Utc::now() - t.to_utc()).num_seconds()),
        )
}

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
            |t| human_duration((chrono::Utc::now() - t.to_utc()).num_seconds()),
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
    let (rows, resource_version) = if is_list {
        let items = body.get("items")?.as_array()?;
        (
            items.iter().map(|o| row(kind, o)).collect::<Vec<_>>(),
            body.pointer("/metadata/resourceVersion").cloned(),
        )
    } else {
        (
            vec![row(kind, body)],
            body.pointer("/metadata/resourceVersion").cloned(),
        )
    };
    let mut metadata = json!({});
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = rv;
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
            assert_eq!(human_duration(s), want, "{s}");
        }
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

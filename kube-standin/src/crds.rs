//! apiextensions.k8s.io/v1 CustomResourceDefinitions, and the custom resources they define.
//!
//! A CustomResourceDefinition is validated as the real apiextensions-apiserver validates it,
//! for what keyturn's definitions use: `metadata.name` must be `<plural>.<group>`, the group a
//! domain with a dot, the names DNS-1035 labels (`kind` in any case), `listKind` differing
//! from `kind`, `scope` `Namespaced` or `Cluster` (and immutable), at least one version and
//! exactly one storage version, unique version names, a structural `openAPIV3Schema` for
//! every version (an object at the root, a `type` on every specified field unless it
//! preserves unknown fields or is int-or-string), `additionalPrinterColumns` with a name, a
//! `jsonPath` and a known type. `singular` defaults to the lower-case kind and `listKind` to
//! `<kind>List`. The definition is accepted and established at once: `status.conditions`
//! gets `NamesAccepted` and `Established` (both `True`), `status.acceptedNames` the names,
//! `status.storedVersions` the storage version. Name conflicts between definitions are not
//! detected (both are established). An `Invalid` whose value is a list of versions prints it
//! as JSON where the real server prints the Go structure.
//!
//! Every served version of an established definition is a resource of its own (its
//! `ResourceKind` built here and leaked, as served resources are `'static`; a definition
//! written again builds new ones), served at `/apis/GROUP/VERSION/[namespaces/NS/]PLURAL`
//! with every verb but strategic merge patches (415, as for the real server), in discovery
//! and `/openapi/v3`, and with `kubectl get` columns from `additionalPrinterColumns` (see
//! `table`). Versions are not converted: an object read through another served version only
//! has its `apiVersion` changed, as the `None` conversion strategy does. Deleting a
//! definition deletes its objects.
//!
//! A custom resource, as the real custom resource strategy and its structural schema make
//! it:
//!
//! - fields the schema does not specify are pruned (kept under
//!   `x-kubernetes-preserve-unknown-fields: true`, and `apiVersion`, `kind`, `metadata` always);
//!   a `null` where the schema is not `nullable` is pruned; `default`s are filled in; with
//!   `fieldValidation=Strict` pruned fields are refused instead (`strict`);
//! - the object is validated against the schema with the real messages: `type`, `required`,
//!   `enum`, `minimum`/`maximum` (and exclusive), `minLength`/`maxLength`, `pattern`,
//!   `minItems`/`maxItems`, `items`, `properties`, `additionalProperties`, `nullable`,
//!   `x-kubernetes-int-or-string` (`allOf`, `anyOf`, `oneOf`, `not`, `format` and CEL rules are
//!   not checked);
//! - `metadata.generation` is 1 on create and goes up on any change outside `metadata` (and
//!   outside `status` with the status subresource);
//! - with the status subresource, writes to the object keep its stored `status` (a create
//!   drops it) and writes to `/status` change `status` only; updates need
//!   `metadata.resourceVersion`.

use serde_json::{Map, Value, json};

use super::resources::{self, ResourceKind};
use super::status::{FieldError, FieldErrorKind, go_quote};
use super::store::Store;
use super::validation;

/// What a custom resource's `ResourceKind` carries beyond the static facts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CustomInfo {
    /// `openAPIV3Schema` of this version.
    pub schema: Value,
    /// Whether `/status` is served.
    pub status_subresource: bool,
    /// `additionalPrinterColumns` of this version (the default `Age` column if none).
    pub printer_columns: Vec<Value>,
    pub categories: Vec<String>,
}

const CUSTOM_VERBS: &[&str] = &[
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "create",
    "update",
    "watch",
];

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The resources the stored definitions serve: one per served version.
pub(crate) fn served_kinds(store: &Store) -> Vec<&'static ResourceKind> {
    let mut out = Vec::new();
    for crd in store.list(&resources::CUSTOM_RESOURCE_DEFINITIONS, None) {
        let crd = &crd.object;
        let names = &crd["spec"]["names"];
        let short_names: Vec<&'static str> = names["shortNames"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).map(leak).collect())
            .unwrap_or_default();
        let short_names: &'static [&'static str] = Box::leak(short_names.into_boxed_slice());
        for version in crd["spec"]["versions"].as_array().into_iter().flatten() {
            if version.get("served") != Some(&Value::Bool(true)) {
                continue;
            }
            let printer_columns = match version["additionalPrinterColumns"].as_array() {
                Some(columns) if !columns.is_empty() => columns.clone(),
                _ => vec![json!({
                    "name": "Age",
                    "type": "date",
                    "jsonPath": ".metadata.creationTimestamp",
                    "description": "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
                })],
            };
            let info = CustomInfo {
                schema: version
                    .pointer("/schema/openAPIV3Schema")
                    .cloned()
                    .unwrap_or_else(|| json!({})),
                status_subresource: version.pointer("/subresources/status").is_some(),
                printer_columns,
                categories: names["categories"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            out.push(&*Box::leak(Box::new(ResourceKind {
                group: leak(str_at(crd, "/spec/group")),
                version: leak(str_at(version, "/name")),
                plural: leak(str_at(names, "/plural")),
                singular: leak(str_at(names, "/singular")),
                kind: leak(str_at(names, "/kind")),
                namespaced: str_at(crd, "/spec/scope") == "Namespaced",
                short_names,
                verbs: CUSTOM_VERBS,
                stored: true,
                create_on_update: false,
                unconditional_update: false,
                has_generation: true,
                custom: Some(Box::leak(Box::new(info))),
            })));
        }
    }
    out
}

// ---- The definition itself ----

/// `SetDefaults_CustomResourceDefinition`: `singular`, `listKind`, the conversion strategy.
pub(crate) fn apply_defaults(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(names) = spec.get_mut("names").and_then(Value::as_object_mut) {
        let kind = names
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if names
            .get("singular")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            names.insert("singular".into(), json!(kind.to_lowercase()));
        }
        if names
            .get("listKind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
            && !kind.is_empty()
        {
            names.insert("listKind".into(), json!(format!("{kind}List")));
        }
    }
    spec.entry("conversion")
        .or_insert_with(|| json!({"strategy": "None"}));
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Status and generation: accepted and established at once; the generation counts spec
/// changes.
pub(crate) fn prepare(obj: &mut Value, old: Option<&Value>) {
    let generation = match old {
        None => 1,
        Some(old) => {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            if obj.get("spec") == old.get("spec") {
                g
            } else {
                g + 1
            }
        }
    };
    let storage: Vec<Value> = obj["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v.get("storage") == Some(&Value::Bool(true)))
        .filter_map(|v| v.get("name").cloned())
        .collect();
    let mut stored_versions: Vec<Value> = old
        .and_then(|o| o.pointer("/status/storedVersions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for v in storage {
        if !stored_versions.contains(&v) {
            stored_versions.push(v);
        }
    }
    let conditions = old
        .and_then(|o| o.pointer("/status/conditions"))
        .cloned()
        .unwrap_or_else(|| {
            let at = now();
            json!([
                {"type": "NamesAccepted", "status": "True", "lastTransitionTime": at, "reason": "NoConflicts", "message": "no conflicts found"},
                {"type": "Established", "status": "True", "lastTransitionTime": at, "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"},
            ])
        });
    let accepted = obj
        .pointer("/spec/names")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(map) = obj.as_object_mut() {
        map.insert(
            "status".into(),
            json!({"conditions": conditions, "acceptedNames": accepted, "storedVersions": stored_versions}),
        );
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("generation".into(), json!(generation));
        }
    }
}

fn dns1035_label_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 characters".to_owned());
    }
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty()
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[bytes.len() - 1] != b'-';
    if !ok {
        errs.push("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')".to_owned());
    }
    errs
}

fn check_name(errs: &mut Vec<FieldError>, path: &str, value: &str, required: bool) {
    if value.is_empty() {
        if required {
            errs.push(FieldError::required(path, ""));
        }
        return;
    }
    let found = dns1035_label_errors(value);
    if !found.is_empty() {
        errs.push(FieldError::invalid_str(path, value, found.join(",")));
    }
}

/// `ValidateCustomResourceDefinition` (and `…Update`), for what keyturn's definitions use.
pub(crate) fn validate(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let spec = &obj["spec"];
    let group = str_at(spec, "/group");
    let names = &spec["names"];
    let plural = str_at(names, "/plural");
    let name = str_at(obj, "/metadata/name");
    if !name.is_empty() && name != format!("{plural}.{group}") {
        errs.push(FieldError::invalid_str(
            "metadata.name",
            name,
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if group.is_empty() {
        errs.push(FieldError::required("spec.group", ""));
    } else {
        for msg in validation::dns1123_subdomain_errors(group) {
            errs.push(FieldError::invalid_str("spec.group", group, msg));
        }
        if group.split('.').count() < 2 {
            errs.push(FieldError::invalid_str(
                "spec.group",
                group,
                "should be a domain with at least one dot",
            ));
        }
    }
    check_name(errs, "spec.names.plural", plural, true);
    check_name(
        errs,
        "spec.names.singular",
        str_at(names, "/singular"),
        true,
    );
    let kind = str_at(names, "/kind");
    let list_kind = str_at(names, "/listKind");
    for (path, value) in [
        ("spec.names.kind", kind),
        ("spec.names.listKind", list_kind),
    ] {
        if value.is_empty() {
            errs.push(FieldError::required(path, ""));
        } else {
            let found = dns1035_label_errors(&value.to_lowercase());
            if !found.is_empty() {
                errs.push(FieldError::invalid_str(
                    path,
                    value,
                    format!(
                        "may have mixed case, but should otherwise match: {}",
                        found.join(",")
                    ),
                ));
            }
        }
    }
    if !kind.is_empty() && kind == list_kind {
        errs.push(FieldError::invalid_str(
            "spec.names.listKind",
            list_kind,
            "kind and listKind may not be the same.",
        ));
    }
    for (i, short) in names["shortNames"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        check_name(
            errs,
            &format!("spec.names.shortNames[{i}]"),
            short.as_str().unwrap_or(""),
            true,
        );
    }
    let scope = str_at(spec, "/scope");
    match scope {
        "" => errs.push(FieldError::required("spec.scope", "")),
        "Cluster" | "Namespaced" => {}
        other => errs.push(FieldError::not_supported(
            "spec.scope",
            other,
            &["Cluster", "Namespaced"],
        )),
    }
    if let Some(old_scope) = old.map(|o| str_at(o, "/spec/scope"))
        && !old_scope.is_empty()
        && old_scope != scope
    {
        errs.push(FieldError::invalid_str(
            "spec.scope",
            scope,
            "field is immutable",
        ));
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    let versions_value = || spec["versions"].to_string();
    let mut seen = std::collections::BTreeSet::new();
    let mut unique = true;
    let mut storage = 0;
    for (i, v) in versions.iter().enumerate() {
        let at = format!("spec.versions[{i}]");
        let vname = str_at(v, "/name");
        if !seen.insert(vname.to_owned()) {
            unique = false;
        }
        if v.get("storage") == Some(&Value::Bool(true)) {
            storage += 1;
        }
        check_name(errs, &format!("{at}.name"), vname, true);
        match v.pointer("/schema/openAPIV3Schema") {
            None => errs.push(FieldError::required(
                format!("{at}.schema.openAPIV3Schema"),
                "schemas are required",
            )),
            Some(schema) => {
                let root = format!("{at}.schema.openAPIV3Schema");
                match schema.get("type").and_then(Value::as_str) {
                    Some("object") => {}
                    None | Some("") => errs.push(FieldError::required(
                        format!("{root}.type"),
                        "must not be empty at the root",
                    )),
                    Some(other) => errs.push(FieldError::invalid_str(
                        format!("{root}.type"),
                        other,
                        "must be object at the root",
                    )),
                }
                check_structural(schema, &root, errs);
            }
        }
        for (j, col) in v["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let cat = format!("{at}.additionalPrinterColumns[{j}]");
            if str_at(col, "/name").is_empty() {
                errs.push(FieldError::required(format!("{cat}.name"), ""));
            }
            match str_at(col, "/type") {
                "" => errs.push(FieldError::required(format!("{cat}.type"), "")),
                "boolean" | "date" | "integer" | "number" | "string" => {}
                other => errs.push(FieldError::not_supported(
                    format!("{cat}.type"),
                    other,
                    &["boolean", "date", "integer", "number", "string"],
                )),
            }
            if str_at(col, "/jsonPath").is_empty() {
                errs.push(FieldError::required(format!("{cat}.jsonPath"), ""));
            }
        }
    }
    if storage != 1 {
        errs.push(FieldError::invalid_raw(
            "spec.versions",
            versions_value(),
            "must have exactly one version marked as storage version",
        ));
    }
    if !unique {
        errs.push(FieldError::invalid_raw(
            "spec.versions",
            versions_value(),
            "must contain unique version names",
        ));
    }
}

/// Structural schema rules: every specified field has a type, unless it preserves unknown
/// fields or is int-or-string.
fn check_structural(schema: &Value, path: &str, errs: &mut Vec<FieldError>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, sub) in props {
            let here = format!("{path}.properties[{k}]");
            if untyped(sub) {
                errs.push(FieldError::required(
                    format!("{here}.type"),
                    "must not be empty for specified object fields",
                ));
            }
            check_structural(sub, &here, errs);
        }
    }
    if let Some(items) = schema.get("items") {
        let here = format!("{path}.items");
        if untyped(items) {
            errs.push(FieldError::required(
                format!("{here}.type"),
                "must not be empty for specified array items",
            ));
        }
        check_structural(items, &here, errs);
    }
    if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        let here = format!("{path}.additionalProperties");
        if untyped(extra) {
            errs.push(FieldError::required(
                format!("{here}.type"),
                "must not be empty for specified object fields",
            ));
        }
        check_structural(extra, &here, errs);
    }
}

fn untyped(schema: &Value) -> bool {
    schema
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
        && !flag(schema, "x-kubernetes-preserve-unknown-fields")
        && !flag(schema, "x-kubernetes-int-or-string")
}

fn flag(schema: &Value, name: &str) -> bool {
    schema.get(name) == Some(&Value::Bool(true))
}

/// Deletes every object of the definition `crd` (a delete of the definition deletes them).
pub(crate) fn delete_objects(store: &mut Store, crd: &Value) {
    let (group, plural) = (
        str_at(crd, "/spec/group"),
        str_at(crd, "/spec/names/plural"),
    );
    let Some(kind) = store
        .custom_kinds
        .iter()
        .copied()
        .find(|k| k.group == group && k.plural == plural)
    else {
        return;
    };
    let doomed: Vec<(String, String)> = store
        .list(kind, None)
        .map(|o| {
            (
                str_at(&o.object, "/metadata/namespace").to_owned(),
                str_at(&o.object, "/metadata/name").to_owned(),
            )
        })
        .collect();
    for (ns, name) in doomed {
        store.remove(kind, &ns, &name);
    }
}

// ---- Custom resources ----

/// Pruning, `null`s and defaults, as the structural schema makes them (see the module docs).
pub(crate) fn prune(kind: &ResourceKind, obj: &mut Value) {
    let Some(info) = kind.custom else {
        return;
    };
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    let props = info.schema.get("properties").and_then(Value::as_object);
    let keep_all = flag(&info.schema, "x-kubernetes-preserve-unknown-fields");
    map.retain(|k, v| {
        matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
            || (keep_all && !v.is_null())
            || props.is_some_and(|p| p.contains_key(k))
    });
    if let Some(props) = props {
        for (k, sub) in props {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            prune_value(map, k, sub);
        }
    }
}

/// Prunes `map[key]` by `schema`, filling in its default when absent.
fn prune_value(map: &mut Map<String, Value>, key: &str, schema: &Value) {
    match map.get_mut(key) {
        None => {
            if let Some(default) = schema.get("default") {
                map.insert(key.to_owned(), default.clone());
            }
        }
        Some(Value::Null) if !flag(schema, "nullable") => {
            map.remove(key);
            if let Some(default) = schema.get("default") {
                map.insert(key.to_owned(), default.clone());
            }
        }
        Some(v) => prune_node(v, schema),
    }
}

fn prune_node(value: &mut Value, schema: &Value) {
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties");
            let keep_unknown = flag(schema, "x-kubernetes-preserve-unknown-fields")
                || extra == Some(&Value::Bool(true));
            if let Some(extra) = extra.filter(|e| e.is_object()) {
                let keys: Vec<String> = map.keys().cloned().collect();
                for k in keys {
                    prune_value(map, &k, extra);
                }
                return;
            }
            if !keep_unknown {
                map.retain(|k, _| props.is_some_and(|p| p.contains_key(k)));
            }
            if let Some(props) = props {
                for (k, sub) in props {
                    prune_value(map, k, sub);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items.iter_mut() {
                    prune_node(item, item_schema);
                }
                if !flag(item_schema, "nullable") {
                    items.retain(|i| !i.is_null());
                }
            }
        }
        _ => {}
    }
}

/// The custom resource strategy: `status` (with the subresource) and `generation`.
/// `status_write`: a write to `/status`, whose object is already the stored one with the new
/// status.
pub(crate) fn prepare_custom(
    kind: &ResourceKind,
    obj: &mut Value,
    old: Option<&Value>,
    status_write: bool,
) {
    let Some(info) = kind.custom else {
        return;
    };
    prune(kind, obj);
    if info.status_subresource
        && !status_write
        && let Some(map) = obj.as_object_mut()
    {
        match old.and_then(|o| o.get("status")) {
            Some(status) => map.insert("status".into(), status.clone()),
            None => map.remove("status"),
        };
    }
    let content = |o: &Value| -> Value {
        let mut c = o.clone();
        if let Some(m) = c.as_object_mut() {
            m.remove("metadata");
            if info.status_subresource {
                m.remove("status");
            }
        }
        c
    };
    let generation = match old {
        None => 1,
        Some(old) => {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            if content(obj) == content(old) {
                g
            } else {
                g + 1
            }
        }
    };
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("generation".into(), json!(generation));
    }
}

/// A write to `/status`: the stored object with `sent`'s status (or none).
pub(crate) fn status_only(existing: &Value, sent: &Value) -> Value {
    let mut out = existing.clone();
    if let Some(map) = out.as_object_mut() {
        match sent.get("status") {
            Some(status) => map.insert("status".into(), status.clone()),
            None => map.remove("status"),
        };
    }
    out
}

/// The type kube-openapi reports for a value.
fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(expected: &str, v: &Value) -> bool {
    match expected {
        "" => true,
        "number" => v.is_number(),
        other => other == type_of(v),
    }
}

/// Schema validation of a custom resource (everything but `apiVersion`, `kind`, `metadata`).
pub(crate) fn validate_custom(kind: &ResourceKind, obj: &Value, errs: &mut Vec<FieldError>) {
    let Some(info) = kind.custom else {
        return;
    };
    let Some(map) = obj.as_object() else {
        return;
    };
    let schema = &info.schema;
    for req in schema["required"].as_array().into_iter().flatten() {
        let k = req.as_str().unwrap_or("");
        if !matches!(k, "apiVersion" | "kind" | "metadata") && !map.contains_key(k) {
            errs.push(FieldError::required(k, ""));
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, v) in map {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            if let Some(sub) = props.get(k) {
                validate_node(sub, v, k, errs);
            }
        }
    }
}

/// A number as Go's `%v` prints it: a whole float without its `.0` (schemas decoded into
/// typed definitions carry `minimum: 1` as `1.0`).
fn number_text(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if v.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
        _ => v.to_string(),
    }
}

fn validate_node(schema: &Value, value: &Value, path: &str, errs: &mut Vec<FieldError>) {
    if value.is_null() && flag(schema, "nullable") {
        return;
    }
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
    let int_or_string = flag(schema, "x-kubernetes-int-or-string");
    let type_ok = if int_or_string {
        matches!(type_of(value), "integer" | "string")
    } else {
        type_matches(ty, value)
    };
    if !type_ok {
        let expected = if int_or_string { "integer,string" } else { ty };
        let actual = type_of(value);
        errs.push(FieldError::invalid_raw(
            path,
            go_quote(actual),
            format!(
                "{path} in body must be of type {expected}: {}",
                go_quote(actual)
            ),
        ));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        errs.push(FieldError {
            kind: FieldErrorKind::NotSupported(validation::go_value(value)),
            field: path.to_owned(),
            detail: format!(
                "supported values: {}",
                allowed
                    .iter()
                    .map(validation::go_value)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    match value {
        Value::String(s) => validate_string(schema, s, path, errs),
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            let bound = |k: &str| schema.get(k).and_then(Value::as_f64);
            let shown = number_text(value);
            let exclusive = |k: &str| flag(schema, k);
            if let Some(min) = bound("minimum") {
                let (bad, words) = if exclusive("exclusiveMinimum") {
                    (x <= min, "greater than")
                } else {
                    (x < min, "greater than or equal to")
                };
                if bad {
                    errs.push(FieldError::invalid_raw(
                        path,
                        shown.clone(),
                        format!(
                            "{path} in body should be {words} {}",
                            number_text(&schema["minimum"])
                        ),
                    ));
                }
            }
            if let Some(max) = bound("maximum") {
                let (bad, words) = if exclusive("exclusiveMaximum") {
                    (x >= max, "less than")
                } else {
                    (x > max, "less than or equal to")
                };
                if bad {
                    errs.push(FieldError::invalid_raw(
                        path,
                        shown,
                        format!(
                            "{path} in body should be {words} {}",
                            number_text(&schema["maximum"])
                        ),
                    ));
                }
            }
        }
        Value::Array(items) => {
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                errs.push(FieldError::invalid_raw(
                    path,
                    items.len().to_string(),
                    format!("{path} in body should have at least {min} items"),
                ));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && (items.len() as u64) > max
            {
                errs.push(FieldError {
                    kind: FieldErrorKind::TooMany(items.len().to_string()),
                    field: path.to_owned(),
                    detail: format!("must have at most {max} items"),
                });
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate_node(item_schema, item, &format!("{path}[{i}]"), errs);
                }
            }
        }
        Value::Object(map) => {
            for req in schema["required"].as_array().into_iter().flatten() {
                let k = req.as_str().unwrap_or("");
                if !map.contains_key(k) {
                    errs.push(FieldError::required(format!("{path}.{k}"), ""));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|e| e.is_object());
            for (k, v) in map {
                let sub = props.and_then(|p| p.get(k)).or(extra);
                if let Some(sub) = sub {
                    validate_node(sub, v, &format!("{path}.{k}"), errs);
                }
            }
        }
        _ => {}
    }
}

fn validate_string(schema: &Value, s: &str, path: &str, errs: &mut Vec<FieldError>) {
    let chars = s.chars().count() as u64;
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && chars < min
    {
        errs.push(FieldError::invalid_str(
            path,
            s,
            format!("{path} in body should be at least {min} chars long"),
        ));
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && chars > max
    {
        errs.push(FieldError::too_long(
            path,
            usize::try_from(max).unwrap_or(usize::MAX),
        ));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        // A pattern that does not compile was the definition's problem; it matches nothing
        // here, as it would fail every object there.
        let matched = regex::Regex::new(pattern).is_ok_and(|re| re.is_match(s));
        if !matched {
            errs.push(FieldError::invalid_str(
                path,
                s,
                format!("{path} in body should match '{pattern}'"),
            ));
        }
    }
}

/// `kubectl get` cells for `obj` from the printer columns' JSONPaths. A `date` column shows
/// the value's age, as the real server prints it (see `table::date_cell`).
pub(crate) fn cells(info: &CustomInfo, obj: &Value) -> Vec<Value> {
    info.printer_columns
        .iter()
        .map(|col| {
            let found = json_path(obj, str_at(col, "/jsonPath"));
            match found.as_slice() {
                [] => Value::Null,
                // The real convertor takes the first result.
                [first, ..] if str_at(col, "/type") == "date" => super::table::date_cell(first),
                [one] => match (str_at(col, "/type"), one) {
                    ("string", Value::String(_)) | ("integer" | "number", Value::Number(_)) => {
                        one.clone()
                    }
                    ("boolean", Value::Bool(_)) => one.clone(),
                    (_, Value::String(s)) => json!(s),
                    (_, other) => json!(other.to_string()),
                },
                many => json!(
                    many.iter()
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            }
        })
        .collect()
}

/// The column definitions for `kind`'s printer columns (after `Name`).
pub(crate) fn column_definitions(info: &CustomInfo) -> Vec<Value> {
    info.printer_columns
        .iter()
        .map(|c| {
            json!({
                "name": str_at(c, "/name"),
                "type": str_at(c, "/type"),
                "format": str_at(c, "/format"),
                "description": str_at(c, "/description"),
                "priority": c.get("priority").and_then(Value::as_i64).unwrap_or(0),
            })
        })
        .collect()
}

/// The subset of kubectl's JSONPath printer columns use: `.a.b`, `.a[0]`, `.a[*].b` and
/// `.a[?(@.k=="v")].b`.
fn json_path(obj: &Value, path: &str) -> Vec<Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut current = vec![obj.clone()];
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            current = current
                .into_iter()
                .filter_map(|v| v.get(key).cloned())
                .collect();
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else {
                return Vec::new();
            };
            let inner = &r[..end];
            rest = &r[end + 1..];
            current = if inner == "*" {
                current
                    .into_iter()
                    .flat_map(|v| v.as_array().cloned().unwrap_or_default())
                    .collect()
            } else if let Ok(i) = inner.parse::<usize>() {
                current
                    .into_iter()
                    .filter_map(|v| v.get(i).cloned())
                    .collect()
            } else if let Some(filter) =
                inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')'))
            {
                let Some((field, want)) = filter.split_once("==") else {
                    return Vec::new();
                };
                let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
                current
                    .into_iter()
                    .flat_map(|v| v.as_array().cloned().unwrap_or_default())
                    .filter(|item| {
                        item.get(field.trim()).is_some_and(|x| {
                            x.as_str().map_or_else(|| x.to_string(), str::to_owned) == want
                        })
                    })
                    .collect()
            } else {
                return Vec::new();
            };
        } else {
            return Vec::new();
        }
    }
    current
}

/// The versions of `group` the definitions serve, in definition order.
pub(crate) fn group_versions(
    kinds: &[&'static ResourceKind],
) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for k in kinds {
        if k.group.is_empty() {
            continue;
        }
        match out.iter_mut().find(|(g, _)| *g == k.group) {
            Some((_, versions)) => {
                if !versions.contains(&k.version) {
                    versions.push(k.version);
                }
            }
            None => out.push((k.group, vec![k.version])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_with(schema: Value) -> ResourceKind {
        ResourceKind {
            group: "keyturn.dev",
            version: "v1",
            plural: "rotationpolicies",
            singular: "rotationpolicy",
            kind: "RotationPolicy",
            namespaced: true,
            short_names: &[],
            verbs: CUSTOM_VERBS,
            stored: true,
            create_on_update: false,
            unconditional_update: false,
            has_generation: true,
            custom: Some(Box::leak(Box::new(CustomInfo {
                schema,
                status_subresource: true,
                printer_columns: Vec::new(),
                categories: Vec::new(),
            }))),
        }
    }

    #[test]
    fn unknown_fields_are_pruned_and_defaults_filled_in() {
        let kind = kind_with(json!({
            "type": "object",
            "properties": {
                "spec": {"type": "object", "properties": {
                    "schedule": {"type": "string"},
                    "jitter": {"type": "integer", "default": 0},
                    "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                }},
            },
        }));
        let mut obj = json!({
            "apiVersion": "keyturn.dev/v1", "kind": "RotationPolicy", "metadata": {"name": "p"},
            "spec": {"schedule": "@daily", "typo": 1, "extra": {"any": {"thing": true}}, "labels": {"a": "b"}},
            "top": 1,
        });
        prune(&kind, &mut obj);
        assert_eq!(
            obj["spec"],
            json!({"schedule": "@daily", "jitter": 0, "extra": {"any": {"thing": true}}, "labels": {"a": "b"}})
        );
        assert!(obj.get("top").is_none());
    }

    #[test]
    fn schema_errors_are_worded_as_the_real_server_words_them() {
        let kind = kind_with(json!({
            "type": "object",
            "properties": {"spec": {"type": "object", "required": ["schedule"], "properties": {
                "schedule": {"type": "string", "pattern": "^@"},
                "mode": {"type": "string", "enum": ["rotate", "check"]},
                "replicas": {"type": "integer", "minimum": 1, "maximum": 5},
            }}},
        }));
        let mut errs = Vec::new();
        validate_custom(
            &kind,
            &json!({"spec": {"mode": "x", "replicas": 9}}),
            &mut errs,
        );
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "spec.schedule: Required value",
                "spec.mode: Unsupported value: \"x\": supported values: \"rotate\", \"check\"",
                "spec.replicas: Invalid value: 9: spec.replicas in body should be less than or equal to 5",
            ]
        );
        errs.clear();
        validate_custom(&kind, &json!({"spec": {"schedule": 5}}), &mut errs);
        assert_eq!(
            errs[0].to_string(),
            "spec.schedule: Invalid value: \"integer\": spec.schedule in body must be of type string: \"integer\""
        );
    }

    #[test]
    fn printer_columns_follow_json_paths_with_filters() {
        let obj = json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]}, "spec": {"l": [1, 2]}});
        assert_eq!(
            json_path(&obj, ".status.conditions[?(@.type==\"Ready\")].status"),
            [json!("True")]
        );
        assert_eq!(json_path(&obj, ".spec.l[*]"), [json!(1), json!(2)]);
        assert_eq!(json_path(&obj, ".spec.l[1]"), [json!(2)]);
        assert!(json_path(&obj, ".spec.missing").is_empty());
    }
}

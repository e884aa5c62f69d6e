//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! keyturn writes Secrets with server-side apply as field manager `keyturn`; the property it
//! relies on is that the server refuses to let it overwrite a key someone else set unless it
//! forces, and that keys it stops applying disappear. So the stand-in tracks, per
//! (manager, operation), the set of leaf fields that manager owns, with the real rules:
//!
//! - **Update** operations (create, PUT, merge/JSON/strategic patch) take ownership of every
//!   leaf whose value they change, away from whoever owned it; they never conflict.
//! - **Apply** conflicts (409) when it sets a leaf to a value different from the current one
//!   and that leaf is owned by another manager, unless `force=true`, which takes it over.
//!   Setting the same value shares ownership. A leaf the applier owned before but no longer
//!   applies is removed, unless another manager still owns it.
//!
//! A leaf is a scalar, a list or an empty map; maps are walked key by key, so ownership is
//! tracked at `data.<key>`, `metadata.labels.<k>`, `metadata.annotations.<k>`,
//! `spec.template.metadata.annotations.<k>` and so on. Lists are atomic (the real server
//! merges associative lists such as `containers` by key; the stand-in does not).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::status::{ApiError, Cause};

/// A path of map keys from the object root to a leaf.
pub(crate) type FieldPath = Vec<String>;

/// `managedFields[].operation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "Apply",
            Self::Update => "Update",
        }
    }
}

/// Who writes, with which API version, and when: what a `managedFields[]` entry records
/// besides the fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    /// RFC 3339.
    pub now: &'a str,
}

/// One `managedFields[]` entry.
#[derive(Debug, Clone)]
pub(crate) struct ManagedEntry {
    pub manager: String,
    pub operation: Operation,
    pub api_version: String,
    pub time: String,
    pub fields: BTreeSet<FieldPath>,
}

/// The ownership records of one object.
#[derive(Debug, Clone, Default)]
pub(crate) struct ManagedFields {
    entries: Vec<ManagedEntry>,
}

/// Top-level fields that are not user intent and so never owned.
const UNOWNED_TOP: &[&str] = &["apiVersion", "kind", "status"];
/// Server-set metadata, never owned.
const UNOWNED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// All owned leaves of `obj`, with their values.
pub(crate) fn leaves(obj: &Value) -> BTreeMap<FieldPath, Value> {
    let mut out = BTreeMap::new();
    if let Value::Object(map) = obj {
        for (k, v) in map {
            if UNOWNED_TOP.contains(&k.as_str()) {
                continue;
            }
            if k == "metadata" {
                if let Value::Object(meta) = v {
                    for (mk, mv) in meta {
                        if !UNOWNED_META.contains(&mk.as_str()) {
                            walk(vec![k.clone(), mk.clone()], mv, &mut out);
                        }
                    }
                }
                continue;
            }
            walk(vec![k.clone()], v, &mut out);
        }
    }
    out
}

fn walk(path: FieldPath, v: &Value, out: &mut BTreeMap<FieldPath, Value>) {
    match v {
        Value::Null => {}
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let mut p = path.clone();
                p.push(k.clone());
                walk(p, child, out);
            }
        }
        _ => {
            out.insert(path, v.clone());
        }
    }
}

/// `.data.password`: how the real server prints a field path in a conflict.
fn path_string(p: &FieldPath) -> String {
    p.iter().map(|s| format!(".{s}")).collect()
}

/// Deep-merges an apply configuration into an object: maps merge, everything else replaces.
fn merge_config(target: &mut Value, config: &Value) {
    match (target, config) {
        (Value::Object(t), Value::Object(c)) => {
            for (k, v) in c {
                if v.is_null() {
                    continue;
                }
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        merge_config(existing, v)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, c) => *t = c.clone(),
    }
}

/// Removes the leaf at `path`, then any map that removal left empty.
fn remove_path(obj: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    if rest.is_empty() {
        map.remove(first);
        return;
    }
    if let Some(child) = map.get_mut(first) {
        remove_path(child, rest);
        if child.as_object().is_some_and(Map::is_empty) {
            map.remove(first);
        }
    }
}

impl ManagedFields {
    fn entry_mut(&mut self, who: Writer<'_>, op: Operation) -> &mut ManagedEntry {
        let idx = match self
            .entries
            .iter()
            .position(|e| e.manager == who.manager && e.operation == op)
        {
            Some(i) => i,
            None => {
                self.entries.push(ManagedEntry {
                    manager: who.manager.to_owned(),
                    operation: op,
                    api_version: who.api_version.to_owned(),
                    time: who.now.to_owned(),
                    fields: BTreeSet::new(),
                });
                self.entries.len() - 1
            }
        };
        let e = &mut self.entries[idx];
        e.api_version = who.api_version.to_owned();
        e.time = who.now.to_owned();
        e
    }

    /// Drops ownership of leaves the object no longer has, and managers left owning nothing.
    fn prune(&mut self, obj: &Value) {
        let present = leaves(obj);
        for e in &mut self.entries {
            e.fields.retain(|p| present.contains_key(p));
        }
        self.entries.retain(|e| !e.fields.is_empty());
    }

    /// Records an Update operation by `manager` that turned `old` into `new`.
    pub fn record_update(&mut self, who: Writer<'_>, old: Option<&Value>, new: &Value) {
        let old_leaves = old.map(leaves).unwrap_or_default();
        let changed: BTreeSet<FieldPath> = leaves(new)
            .into_iter()
            .filter(|(p, v)| old_leaves.get(p) != Some(v))
            .map(|(p, _)| p)
            .collect();
        if !changed.is_empty() {
            for e in &mut self.entries {
                e.fields.retain(|p| !changed.contains(p));
            }
            self.entry_mut(who, Operation::Update)
                .fields
                .extend(changed);
        }
        self.prune(new);
    }

    /// Server-side apply of `config` by `manager` onto `current` (`None`: the object is new).
    ///
    /// `defaulted` is `config` with the kind's defaults filled in, when the kind has any: a
    /// field is compared with the live object in that form, so that an applied list which
    /// differs from the live one only by server defaults (a container without
    /// `imagePullPolicy`) is the same value, as it is on the real server.
    ///
    /// Returns the merged object (not yet defaulted or validated).
    ///
    /// # Errors
    /// 409 `Conflict` listing every conflicting field and its owner, unless `force`.
    pub fn apply(
        &mut self,
        who: Writer<'_>,
        current: Option<&Value>,
        config: &Value,
        defaulted: Option<&Value>,
        force: bool,
    ) -> Result<Value, ApiError> {
        let manager = who.manager;
        let applied = leaves(config);
        let current_leaves = current.map(leaves).unwrap_or_default();
        let comparable = defaulted.map(leaves).unwrap_or_default();

        let mut conflicts: Vec<(String, FieldPath)> = Vec::new();
        for (path, value) in &applied {
            let Some(existing) = current_leaves.get(path) else {
                continue;
            };
            let value = comparable.get(path).unwrap_or(value);
            if existing == value {
                continue;
            }
            for e in &self.entries {
                let is_self = e.manager == manager && e.operation == Operation::Apply;
                if !is_self && e.fields.contains(path) {
                    conflicts.push((manager_label(e), path.clone()));
                }
            }
        }
        if !conflicts.is_empty() {
            if !force {
                return Err(conflict_error(&conflicts));
            }
            let taken: BTreeSet<&FieldPath> = conflicts.iter().map(|(_, p)| p).collect();
            for e in &mut self.entries {
                let is_self = e.manager == manager && e.operation == Operation::Apply;
                if !is_self {
                    e.fields.retain(|p| !taken.contains(p));
                }
            }
        }

        let mut merged = current
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new()));
        merge_config(&mut merged, config);

        let previously_owned: BTreeSet<FieldPath> = self
            .entries
            .iter()
            .find(|e| e.manager == manager && e.operation == Operation::Apply)
            .map(|e| e.fields.clone())
            .unwrap_or_default();
        for path in previously_owned
            .iter()
            .filter(|p| !applied.contains_key(*p))
        {
            let owned_elsewhere = self.entries.iter().any(|e| {
                !(e.manager == manager && e.operation == Operation::Apply)
                    && e.fields.contains(path)
            });
            if !owned_elsewhere {
                remove_path(&mut merged, path);
            }
        }

        let entry = self.entry_mut(who, Operation::Apply);
        entry.fields = applied.into_keys().collect();
        self.prune(&merged);
        Ok(merged)
    }

    /// Whether two records give the same managers the same fields (times aside): a write that
    /// changes neither the object nor this is a no-op and keeps its resourceVersion.
    pub fn same_ownership(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len()
            && self.entries.iter().zip(&other.entries).all(|(a, b)| {
                a.manager == b.manager && a.operation == b.operation && a.fields == b.fields
            })
    }

    /// `metadata.managedFields` as the real server renders it (`FieldsV1`).
    pub fn to_json(&self) -> Value {
        Value::Array(
            self.entries
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "manager": e.manager,
                        "operation": e.operation.as_str(),
                        "apiVersion": e.api_version,
                        "time": e.time,
                        "fieldsType": "FieldsV1",
                        "fieldsV1": fields_v1(&e.fields),
                    })
                })
                .collect(),
        )
    }

    /// The managers that own `path`, for tests and debugging.
    #[cfg(test)]
    fn owners(&self, path: &[&str]) -> Vec<String> {
        let p: FieldPath = path.iter().map(|s| (*s).to_owned()).collect();
        self.entries
            .iter()
            .filter(|e| e.fields.contains(&p))
            .map(|e| e.manager.clone())
            .collect()
    }
}

/// `"keyturn"` for an applier, `"kube-rs" using v1` for an updater, as `printManager` does.
fn manager_label(e: &ManagedEntry) -> String {
    let quoted = super::status::go_quote(&e.manager);
    match e.operation {
        Operation::Apply => quoted,
        Operation::Update => format!("{quoted} using {}", e.api_version),
    }
}

/// `NewConflictError` from the real field manager.
fn conflict_error(conflicts: &[(String, FieldPath)]) -> ApiError {
    let causes = conflicts
        .iter()
        .map(|(m, p)| Cause {
            reason: "FieldManagerConflict".into(),
            message: format!("conflict with {m}"),
            field: path_string(p),
        })
        .collect();
    let message = if let [(m, p)] = conflicts {
        format!(
            "Apply failed with 1 conflict: conflict with {m}: {}",
            path_string(p)
        )
    } else {
        let mut by_manager: BTreeMap<&str, Vec<&FieldPath>> = BTreeMap::new();
        for (m, p) in conflicts {
            by_manager.entry(m).or_default().push(p);
        }
        let mut lines = Vec::new();
        for (m, paths) in by_manager {
            lines.push(format!("conflicts with {m}:"));
            lines.extend(paths.into_iter().map(|p| format!("- {}", path_string(p))));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    ApiError::apply_conflict(message, causes)
}

/// `{"f:data": {"f:password": {}}}`; a path that is both owned and a parent gets `".": {}`.
fn fields_v1(fields: &BTreeSet<FieldPath>) -> Value {
    fn node_at<'a>(
        root: &'a mut Map<String, Value>,
        path: &[String],
    ) -> &'a mut Map<String, Value> {
        let mut node = root;
        for seg in path {
            let child = node
                .entry(format!("f:{seg}"))
                .or_insert_with(|| Value::Object(Map::new()));
            node = match child {
                Value::Object(m) => m,
                _ => unreachable!("fieldsV1 nodes are always objects"),
            };
        }
        node
    }
    let mut root = Map::new();
    for path in fields {
        node_at(&mut root, path);
    }
    // Second pass, once every child exists: an owned path with children gets the "." marker.
    for path in fields {
        let node = node_at(&mut root, path);
        if !node.is_empty() {
            node.insert(".".into(), Value::Object(Map::new()));
        }
    }
    Value::Object(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn w(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "v1",
            now: "2025-01-01T00:00:00Z",
        }
    }

    fn secret(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": data})
    }

    #[test]
    fn an_update_owns_what_it_changed_and_nothing_else() {
        let mut m = ManagedFields::default();
        let v1 = secret(json!({"a": "MQ==", "b": "Mg=="}));
        m.record_update(w("creator"), None, &v1);
        let v2 = secret(json!({"a": "MQ==", "b": "Mw=="}));
        m.record_update(w("editor"), Some(&v1), &v2);
        assert_eq!(m.owners(&["data", "a"]), vec!["creator"]);
        assert_eq!(m.owners(&["data", "b"]), vec!["editor"]);
    }

    #[test]
    fn apply_conflicts_with_a_different_value_owned_elsewhere_unless_forced() {
        let mut m = ManagedFields::default();
        let v1 = secret(json!({"password": "YQ=="}));
        m.record_update(w("creator"), None, &v1);
        let config = secret(json!({"password": "Yg=="}));
        let err = m
            .apply(w("keyturn"), Some(&v1), &config, None, false)
            .unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"creator\" using v1: .data.password"
        );
        let merged = m
            .apply(w("keyturn"), Some(&v1), &config, None, true)
            .unwrap();
        assert_eq!(merged["data"]["password"], "Yg==");
        assert_eq!(m.owners(&["data", "password"]), vec!["keyturn"]);
    }

    #[test]
    fn applying_the_same_value_shares_ownership_without_conflict() {
        let mut m = ManagedFields::default();
        let v1 = secret(json!({"password": "YQ=="}));
        m.record_update(w("creator"), None, &v1);
        m.apply(
            w("keyturn"),
            Some(&v1),
            &secret(json!({"password": "YQ=="})),
            None,
            false,
        )
        .unwrap();
        assert_eq!(m.owners(&["data", "password"]), vec!["creator", "keyturn"]);
    }

    #[test]
    fn a_field_no_longer_applied_is_removed_unless_someone_else_owns_it() {
        let mut m = ManagedFields::default();
        let v1 = m
            .apply(
                w("keyturn"),
                None,
                &secret(json!({"a": "MQ==", "b": "Mg=="})),
                None,
                false,
            )
            .unwrap();
        let v2 = m
            .apply(
                w("keyturn"),
                Some(&v1),
                &secret(json!({"a": "MQ=="})),
                None,
                false,
            )
            .unwrap();
        assert_eq!(v2["data"], json!({"a": "MQ=="}));
        let v3 = m
            .apply(
                w("other"),
                Some(&v2),
                &secret(json!({"a": "MQ=="})),
                None,
                false,
            )
            .unwrap();
        let v4 = m
            .apply(
                w("keyturn"),
                Some(&v3),
                &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}),
                None,
                false,
            )
            .unwrap();
        assert_eq!(v4["data"], json!({"a": "MQ=="}), "still owned by `other`");
    }

    #[test]
    fn fields_v1_marks_owned_parents() {
        let fields: BTreeSet<FieldPath> = [
            vec!["data".to_owned(), "a".to_owned()],
            vec!["metadata".to_owned(), "labels".to_owned(), "x".to_owned()],
        ]
        .into_iter()
        .collect();
        assert_eq!(
            fields_v1(&fields),
            json!({"f:data": {"f:a": {}}, "f:metadata": {"f:labels": {"f:x": {}}}})
        );
    }
}

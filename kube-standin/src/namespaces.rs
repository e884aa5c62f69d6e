//! core/v1 Namespaces: virtual until written.
//!
//! Every name is an Active namespace labelled `kubernetes.io/metadata.name: NAME`, without being
//! created first (keyturn's tests write into fresh namespaces all the time). A namespace is
//! stored only once it is written: a create, or an update or patch, which starts from the
//! virtual object. That is what `kubectl label namespace NAME k=v` does, and what admission
//! webhooks' `namespaceSelector` then sees. Namespaces cannot be deleted (nothing would be
//! deleted with them).

use serde_json::{Map, Value, json};

use super::managed::ManagedFields;
use super::resources;
use super::store::Store;

/// The label the real server puts on every namespace.
pub(crate) const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The namespaces a cluster starts with.
const BUILT_IN: &[&str] = &["default", "kube-node-lease", "kube-public", "kube-system"];

/// A namespace that was never written.
pub(crate) fn virtual_namespace(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {NAME_LABEL: name}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

/// `name` as the API returns it.
pub(crate) fn get(store: &Store, name: &str) -> Value {
    store
        .get(&resources::NAMESPACES, "", name)
        .map_or_else(|| virtual_namespace(name), |n| n.render())
}

/// Every stored namespace, the built-in ones and every one an object is in.
pub(crate) fn list(store: &Store) -> Value {
    let mut names: std::collections::BTreeSet<&str> = BUILT_IN.iter().copied().collect();
    names.extend(store.namespaces());
    let stored: Vec<&str> = store
        .list(&resources::NAMESPACES, None)
        .filter_map(|n| n.object.pointer("/metadata/name").and_then(Value::as_str))
        .collect();
    names.extend(stored);
    let items: Vec<Value> = names
        .into_iter()
        .map(|n| {
            let mut item = get(store, n);
            if let Some(m) = item.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            item
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "NamespaceList",
        "metadata": {"resourceVersion": store.resource_version().to_string()},
        "items": items,
    })
}

/// Stores the virtual `name` unless it is stored already, so an update or patch has an
/// object to start from.
pub(crate) fn materialize(store: &mut Store, name: &str) {
    if store.get(&resources::NAMESPACES, "", name).is_some() {
        return;
    }
    let mut ns = virtual_namespace(name);
    if let Some(meta) = ns.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert(
            "creationTimestamp".into(),
            json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        );
    }
    store.put(
        &resources::NAMESPACES,
        "",
        name,
        ns,
        ManagedFields::default(),
    );
}

/// The labels of namespace `name`, as a `namespaceSelector` sees them.
pub(crate) fn labels(store: &Store, name: &str) -> Map<String, Value> {
    get(store, name)
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// Merges `labels` into namespace `name` (storing it first if it was virtual).
pub(crate) fn add_labels(store: &mut Store, name: &str, labels: &[(&str, &str)]) {
    materialize(store, name);
    let Some(existing) = store.get(&resources::NAMESPACES, "", name).cloned() else {
        return;
    };
    let mut ns = existing.object.clone();
    if let Some(meta) = ns.get_mut("metadata").and_then(Value::as_object_mut) {
        let map = meta.entry("labels").or_insert_with(|| json!({}));
        if let Some(map) = map.as_object_mut() {
            for (k, v) in labels {
                map.insert((*k).to_owned(), json!(v));
            }
            map.insert(NAME_LABEL.into(), json!(name));
        }
    }
    store.put(&resources::NAMESPACES, "", name, ns, existing.managed);
}

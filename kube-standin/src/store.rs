//! The object store: what etcd is to kube-apiserver.
//!
//! One global, strictly increasing resourceVersion, bumped by every write that changes
//! something (a no-op write keeps the old one, as on the real server). Objects are kept as
//! JSON with their ownership records beside them; keys sort by (resource, namespace, name) so
//! lists come back in the real server's order.

use std::collections::BTreeMap;

use serde_json::Value;

use super::managed::ManagedFields;
use super::resources::ResourceKind;

/// A stored object and who owns which of its fields.
#[derive(Debug, Clone)]
pub(crate) struct StoredObject {
    /// The object as last written, without `metadata.managedFields`.
    pub object: Value,
    pub managed: ManagedFields,
}

impl StoredObject {
    /// The object as the API returns it: with `managedFields`.
    pub fn render(&self) -> Value {
        let mut out = self.object.clone();
        let managed = self.managed.to_json();
        if managed.as_array().is_some_and(|a| !a.is_empty())
            && let Some(meta) = out.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.insert("managedFields".into(), managed);
        }
        out
    }

    /// `metadata.resourceVersion`.
    pub fn resource_version(&self) -> &str {
        self.object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

type Key = (String, String, String);

fn key(kind: &ResourceKind, namespace: &str, name: &str) -> Key {
    (
        kind.qualified_resource(),
        namespace.to_owned(),
        name.to_owned(),
    )
}

/// All objects of one stand-in.
#[derive(Debug, Default)]
pub(crate) struct Store {
    resource_version: u64,
    objects: BTreeMap<Key, StoredObject>,
}

impl Store {
    /// The resourceVersion of the latest write (list metadata carries it).
    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    pub fn get(&self, kind: &ResourceKind, namespace: &str, name: &str) -> Option<&StoredObject> {
        self.objects.get(&key(kind, namespace, name))
    }

    /// Objects of `kind`, in one namespace or (`None`) all of them.
    pub fn list<'a>(
        &'a self,
        kind: &'a ResourceKind,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a StoredObject> + 'a {
        let resource = kind.qualified_resource();
        self.objects
            .iter()
            .filter(move |((r, ns, _), _)| *r == resource && namespace.is_none_or(|n| n == ns))
            .map(|(_, o)| o)
    }

    /// Every namespace an object is in, sorted.
    pub fn namespaces(&self) -> std::collections::BTreeSet<&str> {
        self.objects
            .keys()
            .map(|(_, ns, _)| ns.as_str())
            .filter(|ns| !ns.is_empty())
            .collect()
    }

    /// Writes `object`, stamping it with the next resourceVersion, and returns it stored.
    pub fn put(
        &mut self,
        kind: &ResourceKind,
        namespace: &str,
        name: &str,
        mut object: Value,
        managed: ManagedFields,
    ) -> StoredObject {
        self.resource_version += 1;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert(
                "resourceVersion".into(),
                Value::String(self.resource_version.to_string()),
            );
        }
        let stored = StoredObject { object, managed };
        self.objects
            .insert(key(kind, namespace, name), stored.clone());
        stored
    }

    /// Deletes an object; a delete is a write and takes a resourceVersion too.
    pub fn remove(
        &mut self,
        kind: &ResourceKind,
        namespace: &str,
        name: &str,
    ) -> Option<StoredObject> {
        let removed = self.objects.remove(&key(kind, namespace, name));
        if removed.is_some() {
            self.resource_version += 1;
        }
        removed
    }
}

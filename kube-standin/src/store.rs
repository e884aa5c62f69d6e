//! The object store: what etcd is to kube-apiserver.
//!
//! One global, strictly increasing resourceVersion, bumped by every write that changes
//! something (a no-op write keeps the old one, as on the real server). Objects are kept as
//! JSON with their ownership records beside them; keys sort by (resource, namespace, name) so
//! lists come back in the real server's order.
//!
//! Every change is also what the watch cache is to kube-apiserver: it goes into a bounded
//! history (the last [`DEFAULT_HISTORY`] changes, `KubeStandin::set_watch_history`; one
//! history for all resources, where the real server keeps one per resource) that watches
//! resume from and `resourceVersionMatch=Exact` lists are rebuilt from, and to every open
//! watch of its resource through that watch's bounded buffer. A write never waits for a
//! watcher: one whose buffer is full is dropped, which ends its stream, as the real cacher
//! terminates a watcher that falls behind (see `watch`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

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

/// How many changes the history keeps unless told otherwise.
pub(crate) const DEFAULT_HISTORY: usize = 5_000;

/// How many changes a watcher may have waiting before it is dropped, unless told otherwise.
pub(crate) const DEFAULT_WATCH_BUFFER: usize = 1_000;

/// `ADDED`, `MODIFIED` or `DELETED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One write, as watchers see it.
#[derive(Debug)]
pub(crate) struct Change {
    /// The resourceVersion the write took.
    pub resource_version: u64,
    /// `qualified_resource()` of the object's kind.
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub change: ChangeType,
    /// The object after the write as the API returns it; for a delete, its last state with
    /// the delete's resourceVersion.
    pub object: Value,
    /// The object before the write (`None` for a create).
    pub previous: Option<Value>,
}

/// An open watch: the resource (and namespace) it follows and its buffer.
#[derive(Debug)]
struct Watcher {
    resource: String,
    namespace: Option<String>,
    tx: tokio::sync::mpsc::Sender<Arc<Change>>,
}

fn key(kind: &ResourceKind, namespace: &str, name: &str) -> Key {
    (
        kind.qualified_resource(),
        namespace.to_owned(),
        name.to_owned(),
    )
}

/// All objects of one stand-in.
#[derive(Debug)]
pub(crate) struct Store {
    resource_version: u64,
    objects: BTreeMap<Key, StoredObject>,
    /// The latest changes, oldest first.
    history: VecDeque<Arc<Change>>,
    /// Every change after this resourceVersion is in `history`.
    history_start: u64,
    history_limit: usize,
    watchers: Vec<Watcher>,
    watch_buffer: usize,
    /// How often watches with `allowWatchBookmarks` get a bookmark (see `watch`).
    pub bookmark_interval: std::time::Duration,
    /// The resources of the stored CustomResourceDefinitions, rebuilt whenever one is
    /// written (see `crds`).
    pub custom_kinds: Vec<&'static ResourceKind>,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            resource_version: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_start: 0,
            history_limit: DEFAULT_HISTORY,
            watchers: Vec::new(),
            watch_buffer: DEFAULT_WATCH_BUFFER,
            bookmark_interval: super::watch::DEFAULT_BOOKMARK_INTERVAL,
            custom_kinds: Vec::new(),
        }
    }
}

/// Why a watch or list cannot start at the resourceVersion it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TooOld {
    /// Older than the history reaches: every change after `.0` is kept.
    Expired(u64),
    /// Newer than the latest write, `.0`.
    TooLarge(u64),
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
        let previous = self
            .objects
            .insert(key(kind, namespace, name), stored.clone());
        self.record(Change {
            resource_version: self.resource_version,
            resource: kind.qualified_resource(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            change: if previous.is_some() {
                ChangeType::Modified
            } else {
                ChangeType::Added
            },
            object: stored.render(),
            previous: previous.map(|p| p.render()),
        });
        if *kind == super::resources::CUSTOM_RESOURCE_DEFINITIONS {
            self.custom_kinds = super::crds::served_kinds(self);
        }
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
        if let Some(gone) = &removed {
            self.resource_version += 1;
            let previous = gone.render();
            let mut object = previous.clone();
            if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert(
                    "resourceVersion".into(),
                    Value::String(self.resource_version.to_string()),
                );
            }
            self.record(Change {
                resource_version: self.resource_version,
                resource: kind.qualified_resource(),
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                change: ChangeType::Deleted,
                object,
                previous: Some(previous),
            });
            if *kind == super::resources::CUSTOM_RESOURCE_DEFINITIONS {
                super::crds::delete_objects(self, &gone.object);
                self.custom_kinds = super::crds::served_kinds(self);
            }
        }
        removed
    }

    /// Keeps `change` in the history and hands it to every watcher of its resource without
    /// waiting: a watcher whose buffer is full (or whose client is gone) is dropped.
    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push_back(Arc::clone(&change));
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.history_start = old.resource_version;
            }
        }
        self.watchers.retain(|w| {
            if w.resource != change.resource
                || w.namespace
                    .as_ref()
                    .is_some_and(|ns| *ns != change.namespace)
            {
                return !w.tx.is_closed();
            }
            w.tx.try_send(Arc::clone(&change)).is_ok()
        });
    }

    /// Keeps only the last `n` changes from now on (at least one).
    pub fn set_history_limit(&mut self, n: usize) {
        self.history_limit = n.max(1);
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.history_start = old.resource_version;
            }
        }
    }

    /// Forgets every change so far, as an etcd compaction does: a watch or exact list can
    /// then start at the latest resourceVersion only.
    pub fn compact(&mut self) {
        self.history.clear();
        self.history_start = self.resource_version;
    }

    /// How many changes a watcher may have waiting before it is dropped (at least one).
    pub fn set_watch_buffer(&mut self, n: usize) {
        self.watch_buffer = n.max(1);
    }

    /// Ends every open watch (after what it was sent), as an API server restart does.
    pub fn close_watches(&mut self) {
        self.watchers.clear();
    }

    /// Whether a watch or exact list may start at `rv`.
    pub fn check_resource_version(&self, rv: u64) -> Result<(), TooOld> {
        if rv > self.resource_version {
            Err(TooOld::TooLarge(self.resource_version))
        } else if rv < self.history_start {
            Err(TooOld::Expired(self.history_start))
        } else {
            Ok(())
        }
    }

    /// The changes to `kind` (in `namespace`, if given) after `rv`, oldest first.
    pub fn changes_since(
        &self,
        kind: &ResourceKind,
        namespace: Option<&str>,
        rv: u64,
    ) -> Vec<Arc<Change>> {
        let resource = kind.qualified_resource();
        self.history
            .iter()
            .filter(|c| {
                c.resource_version > rv
                    && c.resource == resource
                    && namespace.is_none_or(|ns| ns == c.namespace)
            })
            .cloned()
            .collect()
    }

    /// The objects of `kind` (in `namespace`, if given) as they were at `rv`, rendered, in
    /// list order: the current ones with every later change undone. The caller has checked
    /// `rv` with [`Self::check_resource_version`].
    pub fn list_at(&self, kind: &ResourceKind, namespace: Option<&str>, rv: u64) -> Vec<Value> {
        let mut objects: BTreeMap<(String, String), Value> = self
            .list(kind, namespace)
            .map(|o| {
                let meta = |k: &str| {
                    o.object
                        .pointer(&format!("/metadata/{k}"))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned()
                };
                ((meta("namespace"), meta("name")), o.render())
            })
            .collect();
        for c in self.changes_since(kind, namespace, rv).iter().rev() {
            let k = (c.namespace.clone(), c.name.clone());
            match &c.previous {
                Some(previous) => objects.insert(k, previous.clone()),
                None => objects.remove(&k),
            };
        }
        objects.into_values().collect()
    }

    /// Opens a watch on `kind` (in `namespace`, if given): the receiving end of its buffer.
    pub fn watch(
        &mut self,
        kind: &ResourceKind,
        namespace: Option<&str>,
    ) -> tokio::sync::mpsc::Receiver<Arc<Change>> {
        let (tx, rx) = tokio::sync::mpsc::channel(self.watch_buffer);
        self.watchers.retain(|w| !w.tx.is_closed());
        self.watchers.push(Watcher {
            resource: kind.qualified_resource(),
            namespace: namespace.map(str::to_owned),
            tx,
        });
        rx
    }
}

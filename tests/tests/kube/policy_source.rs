//! keyturn's RotationPolicy source (`policy::kube_source`) against the API: objects created,
//! changed and deleted show up in its snapshots (and the daemon's own status writes change
//! nothing), nothing is published before the first complete list, an invalid spec is a
//! rejection naming the field and never the value, a clash with a policy file or between
//! namespaces is rejected for the loser alone, whatever the order, and after `410 Gone` the
//! watch lists again and its snapshot is still right.
//!
//! On a real cluster (`KEYTURN_TEST_KUBECONFIG`) each test defines the resource in a group of
//! its own (`<namespace>.test.keyturn.dev`), as the CRD tests do; the tests that need the
//! stand-in's switches (refusing lists, closing watches, compaction) say so and are skipped.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use keyturn_agent::policy::kube_source::{
    self, Failure, Merged, ObjectPolicy, RejectReason, Snapshot, SourceStats, WatchConfig,
};
use keyturn_agent::policy::{self, Policy};
use keyturn_agent::schedule::Schedule;
use keyturn_tests::kube::{InstalledCrd, TestCluster};
use keyturn_tests::process::eventually;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::watch;

/// How long a test waits for a snapshot before failing instead of hanging; they come in
/// well under a second (a relist after `410` waits for the watcher's backoff first).
const PATIENCE: Duration = Duration::from_secs(60);

/// A secret-looking value planted where a mistaken secret would go; no message may hold it.
const CANARY: &str = "hunter2-CANARY-5e1f0a9b";

async fn cluster() -> TestCluster {
    TestCluster::start()
        .await
        .expect("a Kubernetes API for the test")
}

/// The RotationPolicy definition, established and served; deleted by [`Self::remove`].
struct Defined {
    crd: InstalledCrd,
}

impl Defined {
    /// `keyturn crd`'s definition: as generated on the stand-in, in a group of this test's
    /// own on a real cluster.
    async fn new(c: &TestCluster) -> Self {
        let crd = c
            .install_crd(policy::crd::definition())
            .await
            .expect("the RotationPolicy definition installed");
        Self { crd }
    }

    fn api(&self, c: &TestCluster, namespace: &str) -> Api<DynamicObject> {
        self.crd.api(c.client(), namespace)
    }

    /// Creates the RotationPolicy `namespace/name` with `spec`.
    async fn create(
        &self,
        c: &TestCluster,
        namespace: &str,
        name: &str,
        spec: Value,
    ) -> DynamicObject {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": self.crd.resource.api_version,
            "kind": policy::KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }))
        .unwrap();
        self.api(c, namespace)
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("creating {namespace}/{name}: {e}"))
    }

    async fn patch_spec(&self, c: &TestCluster, namespace: &str, name: &str, spec: Value) {
        self.api(c, namespace)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
            .unwrap();
    }

    async fn delete(&self, c: &TestCluster, namespace: &str, name: &str) {
        self.api(c, namespace)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }

    /// Starts the source on every namespace, publishing at most every 50 ms.
    fn watch(&self, c: &TestCluster) -> Source {
        let mut config = WatchConfig::new(None);
        config.resource = self.crd.resource.clone();
        config.debounce = Duration::from_millis(50);
        let stats = Arc::clone(&config.stats);
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(kube_source::watch(c.client(), config, tx));
        Source { rx, stats, task }
    }

    async fn remove(self) {
        self.crd.remove().await.unwrap();
    }
}

/// A running source; stopped on drop.
struct Source {
    rx: watch::Receiver<Option<Snapshot>>,
    stats: Arc<SourceStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Source {
    /// The first snapshot for which `ready` holds.
    async fn until(&self, what: &str, ready: impl Fn(&Snapshot) -> bool) -> Snapshot {
        let mut rx = self.rx.clone();
        let waited =
            tokio::time::timeout(PATIENCE, rx.wait_for(|s| s.as_ref().is_some_and(&ready))).await;
        match waited {
            Ok(seen) => seen.expect("the source runs").clone().expect("a snapshot"),
            Err(_) => panic!(
                "no snapshot with {what} in {PATIENCE:?}; the last: {:?}",
                self.rx.borrow()
            ),
        }
    }
}

/// `namespace/name` of every object in `s`, sorted.
fn names(s: &Snapshot) -> Vec<String> {
    let mut out: Vec<String> = s
        .objects()
        .iter()
        .map(|o| format!("{}/{}", o.object().namespace, o.object().name))
        .collect();
    out.sort();
    out
}

fn find<'a>(s: &'a Snapshot, namespace: &str, name: &str) -> Option<&'a Arc<ObjectPolicy>> {
    s.objects()
        .iter()
        .find(|o| o.object().namespace == namespace && o.object().name == name)
}

fn valid(s: &Snapshot, namespace: &str, name: &str) -> Arc<Policy> {
    Arc::clone(
        find(s, namespace, name)
            .unwrap_or_else(|| panic!("{namespace}/{name} in {:?}", names(s)))
            .policy()
            .unwrap_or_else(|e| panic!("{namespace}/{name} is invalid: {e}")),
    )
}

fn spec(every: &str, path: &str) -> Value {
    json!({
        "every": every,
        "store": {"vault-kv": {"path": path}},
        "target": {"generated": {}},
    })
}

/// `(namespace, name, reason)` of each rejection.
fn rejections(m: &Merged) -> Vec<(String, String, RejectReason)> {
    m.rejected
        .iter()
        .map(|r| (r.object.namespace.clone(), r.object.name.clone(), r.reason))
        .collect()
}

#[tokio::test]
async fn policy_source_follows_objects_created_changed_and_deleted() {
    let c = cluster().await;
    let defined = Defined::new(&c).await;
    let ns = c.namespace().to_owned();
    // One object before the watch starts (it comes with the first list), one after.
    let api = defined
        .create(&c, &ns, "api", spec("1d", "keyturn/api"))
        .await;
    let source = defined.watch(&c);
    let first = source.until("api", |s| s.len() == 1).await;
    let p = valid(&first, &ns, "api");
    assert_eq!(p.schedule, Schedule::every("1d").unwrap());
    assert_eq!(
        p.file.display().to_string(),
        format!("rotationpolicy/{ns}/api")
    );
    let object = p.object.clone().unwrap();
    assert_eq!(object.uid, api.metadata.uid);
    assert_eq!(object.generation, Some(1));

    defined
        .create(&c, &ns, "db", spec("12h", "keyturn/db"))
        .await;
    source.until("db", |s| find(s, &ns, "db").is_some()).await;

    defined
        .patch_spec(&c, &ns, "api", json!({"every": "2d"}))
        .await;
    let changed = source
        .until("api's new spec", |s| {
            find(s, &ns, "api").is_some_and(|o| o.object().generation == Some(2))
        })
        .await;
    assert_eq!(
        valid(&changed, &ns, "api").schedule,
        Schedule::every("2d").unwrap()
    );
    let before_status = Arc::clone(find(&changed, &ns, "api").unwrap());

    // The daemon's own status write leaves the spec (and its generation) as it was: the
    // object is not validated again, so the next snapshot holds the very same entry.
    defined
        .api(&c, &ns)
        .patch_status(
            "api",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observedGeneration": 2, "consecutiveFailures": 0}})),
        )
        .await
        .unwrap();
    defined.delete(&c, &ns, "db").await;
    let after = source
        .until("db gone", |s| find(s, &ns, "db").is_none())
        .await;
    assert!(
        Arc::ptr_eq(find(&after, &ns, "api").unwrap(), &before_status),
        "a status write made api be validated again"
    );

    defined.delete(&c, &ns, "api").await;
    source.until("no object", Snapshot::is_empty).await;
    assert_eq!(source.stats.lists(), 1, "one list, then only the watch");
    defined.remove().await;
}

#[tokio::test]
async fn policy_source_publishes_nothing_until_a_list_is_complete() {
    let c = TestCluster::start_standin().await.unwrap();
    let Some(s) = c.standin_or_skip(
        "policy_source_publishes_nothing_until_a_list_is_complete",
        "it makes the stand-in refuse lists",
    ) else {
        return;
    };
    let defined = Defined::new(&c).await;
    let ns = c.namespace().to_owned();
    defined
        .create(&c, &ns, "api", spec("1d", "keyturn/api"))
        .await;
    s.deny("list", "rotationpolicies");
    let source = defined.watch(&c);
    eventually("the source's list to be refused", || async {
        s.requests()
            .iter()
            .any(|r| r.verb == "list" && r.resource == "rotationpolicies" && r.code == 403)
    })
    .await;
    // Not an empty snapshot: that would tell the daemon every object is gone.
    assert!(source.rx.borrow().is_none(), "{:?}", source.rx.borrow());
    assert!(source.stats.failures(Failure::List) >= 1);

    // Once lists are allowed, the watcher's backoff lists again and the objects come.
    s.allow_all();
    let snapshot = source.until("api", |s| s.len() == 1).await;
    valid(&snapshot, &ns, "api");
    defined.remove().await;
}

#[tokio::test]
async fn policy_source_rejects_an_invalid_spec_naming_the_field_never_the_value() {
    let c = cluster().await;
    let defined = Defined::new(&c).await;
    let ns = c.namespace().to_owned();
    defined
        .create(&c, &ns, "fine", spec("1d", "keyturn/fine"))
        .await;
    // Everything here passes the CRD's schema; keyturn's validation refuses it.
    let bad = json!({
        "schedule": "0 3 * * *",
        "timezone": CANARY,
        "store": {"vault-kv": {"path": "keyturn/bad"}},
        "target": {"generated": {}},
        "generator": {"charset": CANARY},
        "distribute": [{"kubernetes": {
            "namespace": "shop",
            "secret": "bad",
            "keys": {"TOKEN": CANARY},
        }}],
    });
    defined.create(&c, &ns, "bad", bad).await;
    let source = defined.watch(&c);
    let snapshot = source.until("both objects", |s| s.len() == 2).await;

    let errors = find(&snapshot, &ns, "bad").unwrap().policy().unwrap_err();
    let shown = errors.to_string();
    for field in [
        "spec.timezone",
        "spec.generator.charset",
        "spec.distribute[0].kubernetes.keys.TOKEN",
    ] {
        assert!(
            shown.contains(&format!("rotationpolicy/{ns}/bad: {field}: ")),
            "{field} in {shown}"
        );
    }
    let merged = kube_source::merge(&[], snapshot.objects());
    assert_eq!(
        rejections(&merged),
        [(ns.clone(), "bad".to_owned(), RejectReason::InvalidSpec)]
    );
    assert_eq!(
        merged.policies.keys().map(|k| &**k).collect::<Vec<_>>(),
        ["fine"]
    );
    let message = &merged.rejected[0].message;
    assert!(
        message.contains("spec.timezone: unknown time zone"),
        "{message}"
    );
    for text in [shown.as_str(), message.as_str()] {
        assert!(!text.contains("hunter2"), "the canary in: {text}");
    }

    // Fixed, it is a policy like the other.
    defined
        .patch_spec(
            &c,
            &ns,
            "bad",
            json!({"timezone": "Europe/Berlin", "generator": null, "distribute": null}),
        )
        .await;
    let fixed = source
        .until("bad fixed", |s| {
            find(s, &ns, "bad").is_some_and(|o| o.policy().is_ok())
        })
        .await;
    let merged = kube_source::merge(&[], fixed.objects());
    assert!(merged.rejected.is_empty(), "{:?}", merged.rejected);
    assert_eq!(merged.policies.len(), 2);
    defined.remove().await;
}

/// A second namespace, sorting after the test's own: made on a real cluster (and deleted
/// with [`remove_namespace`]), just a name on the stand-in.
async fn other_namespace(c: &TestCluster) -> String {
    let name = format!("{}-z", c.namespace());
    if c.is_real() {
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"keyturn.dev/test": "true"}}
        }))
        .unwrap();
        Api::<Namespace>::all(c.client())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }
    name
}

async fn remove_namespace(c: &TestCluster, name: &str) {
    if c.is_real() {
        Api::<Namespace>::all(c.client())
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn policy_source_rejects_the_loser_of_a_clash_with_a_file_or_an_older_object() {
    let c = cluster().await;
    let defined = Defined::new(&c).await;
    let ns = c.namespace().to_owned();
    let older_ns = other_namespace(&c).await;

    // The platform team's file policy.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shared.yaml");
    std::fs::write(
        &file,
        "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: { name: shared }\nspec:\n  every: 1d\n  store: { vault-kv: { path: keyturn/shared } }\n  target: { generated: {} }\n",
    )
    .unwrap();
    let files = policy::load(&file).unwrap();

    // A namespace's objects that try to take the file's name and its store.
    defined
        .create(&c, &ns, "shared", spec("1h", "keyturn/mine"))
        .await;
    defined
        .create(&c, &ns, "thief", spec("1h", "keyturn/shared"))
        .await;
    // `db` in two namespaces: the older object is in the namespace that sorts last, so the
    // tie-break by namespace alone would pick the wrong one. Made again until the API server
    // gives the two different creation seconds.
    let older = defined
        .create(&c, &older_ns, "db", spec("1d", "keyturn/db-1"))
        .await;
    let younger = loop {
        let made = defined
            .create(&c, &ns, "db", spec("1d", "keyturn/db-2"))
            .await;
        if made.metadata.creation_timestamp != older.metadata.creation_timestamp {
            break made;
        }
        defined.delete(&c, &ns, "db").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let source = defined.watch(&c);
    let snapshot = source
        .until("all four objects", |s| {
            s.len() == 4
                && find(s, &ns, "db").is_some_and(|o| o.object().uid == younger.metadata.uid)
        })
        .await;
    let merged = kube_source::merge(&files, snapshot.objects());
    assert_eq!(
        rejections(&merged),
        [
            (ns.clone(), "db".to_owned(), RejectReason::NameConflict),
            (ns.clone(), "shared".to_owned(), RejectReason::NameConflict),
            (ns.clone(), "thief".to_owned(), RejectReason::StoreConflict),
        ]
    );
    assert_eq!(
        merged.policies.keys().map(|k| &**k).collect::<Vec<_>>(),
        ["db", "shared"]
    );
    assert_eq!(
        merged.policy("shared").unwrap().object,
        None,
        "the file's policy"
    );
    assert_eq!(
        merged
            .policy("db")
            .unwrap()
            .object
            .as_ref()
            .unwrap()
            .namespace,
        older_ns
    );
    let rejection = |name: &str| {
        merged
            .rejected
            .iter()
            .find(|r| r.object.name == name)
            .unwrap()
            .clone()
    };
    // The status names no other namespace's object and none of the daemon's files; the
    // log's `held_by` names the holder in full.
    let db = rejection("db");
    assert!(
        db.message
            .contains("already taken by a RotationPolicy in another namespace, which is older"),
        "{}",
        db.message
    );
    assert!(!db.message.contains(&older_ns), "{}", db.message);
    assert_eq!(
        db.held_by.as_deref(),
        Some(&*format!("rotationpolicy/{older_ns}/db"))
    );
    let shared = rejection("shared");
    assert!(
        shared
            .message
            .contains("already taken by one of the daemon's policy files"),
        "{}",
        shared.message
    );
    assert!(
        shared
            .held_by
            .as_ref()
            .unwrap()
            .starts_with("the daemon's policy file /"),
        "{:?}",
        shared.held_by
    );
    let thief = rejection("thief");
    assert!(
        thief
            .message
            .contains("is already used by another policy (one of the daemon's policy files"),
        "{}",
        thief.message
    );
    // Its own store's path is its to see; the other policy's name is not.
    assert!(
        !thief.message.contains("policy shared"),
        "{}",
        thief.message
    );
    assert!(
        thief
            .held_by
            .as_ref()
            .unwrap()
            .starts_with("policy shared of the daemon's policy file /"),
        "{:?}",
        thief.held_by
    );

    // The same objects in any order decide the same.
    let mut reversed = snapshot.objects().to_vec();
    reversed.reverse();
    assert_eq!(kube_source::merge(&files, &reversed), merged);

    // The older object gone, the younger one takes the name.
    defined.delete(&c, &older_ns, "db").await;
    let after = source.until("the older db gone", |s| s.len() == 3).await;
    let merged = kube_source::merge(&files, after.objects());
    assert_eq!(
        merged
            .policy("db")
            .unwrap()
            .object
            .as_ref()
            .unwrap()
            .namespace,
        ns
    );
    defined.remove().await;
    remove_namespace(&c, &older_ns).await;
}

#[tokio::test]
async fn policy_source_lists_again_after_410_and_its_snapshot_is_still_right() {
    let c = TestCluster::start_standin().await.unwrap();
    let Some(s) = c.standin_or_skip(
        "policy_source_lists_again_after_410_and_its_snapshot_is_still_right",
        "it closes the stand-in's watches and compacts its history",
    ) else {
        return;
    };
    let defined = Defined::new(&c).await;
    let ns = c.namespace().to_owned();
    defined.create(&c, &ns, "a", spec("1d", "keyturn/a")).await;
    defined.create(&c, &ns, "b", spec("1d", "keyturn/b")).await;
    let lists = || {
        s.requests()
            .iter()
            .filter(|r| r.verb == "list" && r.resource == "rotationpolicies" && r.code == 200)
            .count()
    };
    let lists_before = lists();
    let source = defined.watch(&c);
    source.until("a and b", |s| s.len() == 2).await;

    // The watch ends (as on an API server restart) and cannot be reopened while a is
    // deleted, b changed and c created, and the history is compacted: the watch's
    // resourceVersion is then too old, so it must list again, and only that list shows the
    // deletion.
    s.fail("watch", "rotationpolicies", 503);
    s.close_watches();
    defined.delete(&c, &ns, "a").await;
    defined
        .patch_spec(&c, &ns, "b", json!({"every": "3d"}))
        .await;
    defined.create(&c, &ns, "c", spec("1d", "keyturn/c")).await;
    s.compact();
    s.clear_failures();

    let relisted = source
        .until("the relisted objects", |s| {
            find(s, &ns, "c").is_some() && find(s, &ns, "a").is_none()
        })
        .await;
    assert_eq!(names(&relisted), [format!("{ns}/b"), format!("{ns}/c")]);
    assert_eq!(
        valid(&relisted, &ns, "b").schedule,
        Schedule::every("3d").unwrap()
    );
    assert!(source.stats.failures(Failure::Expired) >= 1);
    assert_eq!(
        source.stats.lists(),
        2,
        "one list to start, one after the 410"
    );
    assert_eq!(
        lists() - lists_before,
        2,
        "one list to start, one after the 410"
    );

    // And it watches on from the new list.
    defined.create(&c, &ns, "d", spec("1d", "keyturn/d")).await;
    let last = source.until("d", |s| find(s, &ns, "d").is_some()).await;
    assert_eq!(names(&last).len(), 3);
    defined.remove().await;
}

//! Watch, as keyturn's daemon uses it on RotationPolicies, Leases and Secrets: resuming from
//! a resourceVersion, bookmarks, `410 Expired` and kube-runtime's watcher listing again after
//! it, selectors on events, lists at an exact resourceVersion, and writes that never wait for
//! a watcher that cannot keep up.
//!
//! Everything a real API server also does runs against one when `KEYTURN_TEST_KUBECONFIG` is
//! set; the tests that need a stand-in switch (compaction, closing watches, the watch buffer)
//! say so and are skipped there.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::{Stream, StreamExt as _, TryStreamExt as _};
use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use keyturn_tests::kube::TestCluster;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, VersionMatch, WatchEvent,
    WatchParams,
};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;

/// How long a test waits for an event before failing instead of hanging; events arrive in
/// milliseconds.
const PATIENCE: Duration = Duration::from_secs(60);

async fn cluster() -> TestCluster {
    TestCluster::start()
        .await
        .expect("a Kubernetes API for the test")
}

fn secret(name: &str, labels: &[(&str, &str)], value: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": labels.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect::<serde_json::Map<_, _>>(),
        },
        "stringData": {"value": value},
    }))
    .unwrap()
}

fn value_of(s: &Secret) -> String {
    s.data
        .as_ref()
        .and_then(|d| d.get("value"))
        .map(|ByteString(v)| String::from_utf8(v.clone()).unwrap())
        .unwrap_or_default()
}

fn rv_of(s: &Secret) -> u64 {
    s.metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

fn name_of(s: &Secret) -> &str {
    s.metadata.name.as_deref().unwrap()
}

/// The next `n` events that are not bookmarks.
async fn next_events<K>(
    stream: &mut (impl Stream<Item = kube::Result<WatchEvent<K>>> + Unpin),
    n: usize,
) -> Vec<WatchEvent<K>> {
    let mut out = Vec::new();
    while out.len() < n {
        let event = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("a watch event in time")
            .expect("the watch stream goes on")
            .expect("a decodable watch event");
        if !matches!(event, WatchEvent::Bookmark(_)) {
            out.push(event);
        }
    }
    out
}

/// `(type, name, value, resourceVersion)` of a Secret watch event.
fn describe(event: &WatchEvent<Secret>) -> (&'static str, String, String, u64) {
    let (kind, s) = match event {
        WatchEvent::Added(s) => ("ADDED", s),
        WatchEvent::Modified(s) => ("MODIFIED", s),
        WatchEvent::Deleted(s) => ("DELETED", s),
        other => panic!("expected an object event, got {other:?}"),
    };
    (kind, name_of(s).to_owned(), value_of(s), rv_of(s))
}

#[tokio::test]
async fn a_watch_from_a_resource_version_sees_exactly_the_later_changes_in_order() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let pp = PostParams::default();
    let a = secrets.create(&pp, &secret("a", &[], "1")).await.unwrap();
    let mut changed = a.clone();
    changed.data = None;
    changed.string_data = Some([("value".to_owned(), "2".to_owned())].into());
    let a2 = secrets.replace("a", &pp, &changed).await.unwrap();
    let b = secrets.create(&pp, &secret("b", &[], "1")).await.unwrap();
    secrets.delete("a", &DeleteParams::default()).await.unwrap();

    let wp = WatchParams::default().timeout(120);
    let from = a.metadata.resource_version.clone().unwrap();
    let mut stream = secrets.watch(&wp, &from).await.unwrap().boxed();
    let events = next_events(&mut stream, 3).await;
    let seen: Vec<_> = events.iter().map(describe).collect();
    assert_eq!(
        seen[..2],
        [
            ("MODIFIED", "a".to_owned(), "2".to_owned(), rv_of(&a2)),
            ("ADDED", "b".to_owned(), "1".to_owned(), rv_of(&b)),
        ]
    );
    // The deleted object comes with its last state and a resourceVersion of its own.
    let (kind, name, value, rv) = &seen[2];
    assert_eq!(
        (*kind, name.as_str(), value.as_str()),
        ("DELETED", "a", "2")
    );
    assert!(
        *rv > rv_of(&b),
        "the delete's resourceVersion {rv} follows b's"
    );

    // Then the watch goes on with what happens next.
    let c2 = secrets.create(&pp, &secret("c", &[], "1")).await.unwrap();
    let next = next_events(&mut stream, 1).await;
    assert_eq!(
        describe(&next[0]),
        ("ADDED", "c".to_owned(), "1".to_owned(), rv_of(&c2))
    );
}

#[tokio::test]
async fn a_watch_without_a_resource_version_starts_with_an_added_event_for_each_object() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let pp = PostParams::default();
    secrets.create(&pp, &secret("a", &[], "1")).await.unwrap();
    secrets.create(&pp, &secret("b", &[], "1")).await.unwrap();

    let mut stream = secrets
        .watch(&WatchParams::default().timeout(120), "0")
        .await
        .unwrap()
        .boxed();
    let initial: BTreeSet<_> = next_events(&mut stream, 2)
        .await
        .iter()
        .map(|e| {
            let (kind, name, _, _) = describe(e);
            (kind, name)
        })
        .collect();
    assert_eq!(
        initial,
        BTreeSet::from([("ADDED", "a".to_owned()), ("ADDED", "b".to_owned())])
    );
    secrets.create(&pp, &secret("c", &[], "1")).await.unwrap();
    let (kind, name, _, _) = describe(&next_events(&mut stream, 1).await[0]);
    assert_eq!((kind, name.as_str()), ("ADDED", "c"));
}

#[tokio::test]
async fn watch_events_follow_label_and_field_selectors_in_and_out() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let pp = PostParams::default();
    secrets
        .create(&pp, &secret("a", &[("app", "x")], "1"))
        .await
        .unwrap();
    secrets
        .create(&pp, &secret("b", &[("app", "y")], "1"))
        .await
        .unwrap();
    let from = secrets
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let wp = WatchParams::default().timeout(120);
    let mut labelled = secrets
        .watch(&wp.clone().labels("app=x"), &from)
        .await
        .unwrap()
        .boxed();
    let mut named = secrets
        .watch(&wp.fields("metadata.name=b"), &from)
        .await
        .unwrap()
        .boxed();

    let label = |v: &str| Patch::Merge(json!({"metadata": {"labels": {"app": v}}}));
    let data = |v: &str| Patch::Merge(json!({"stringData": {"value": v}}));
    let patch = PatchParams::default();
    secrets.patch("b", &patch, &label("x")).await.unwrap();
    let a_out = secrets.patch("a", &patch, &label("z")).await.unwrap();
    secrets.patch("b", &patch, &data("2")).await.unwrap();
    secrets.patch("a", &patch, &data("2")).await.unwrap();

    let events = next_events(&mut labelled, 3).await;
    let seen: Vec<_> = events
        .iter()
        .map(|e| {
            let (kind, name, value, _) = describe(e);
            (kind, name, value)
        })
        .collect();
    assert_eq!(
        seen,
        [
            // b is relabelled into the selection: it appears.
            ("ADDED", "b".to_owned(), "1".to_owned()),
            // a is relabelled out of it: it goes, as it was, at the relabelling's version.
            ("DELETED", "a".to_owned(), "1".to_owned()),
            ("MODIFIED", "b".to_owned(), "2".to_owned()),
        ]
    );
    let WatchEvent::Deleted(gone) = &events[1] else {
        unreachable!()
    };
    assert_eq!(
        gone.metadata.labels.as_ref().unwrap()["app"],
        "x",
        "the previous state"
    );
    assert_eq!(
        gone.metadata.resource_version,
        a_out.metadata.resource_version
    );

    let events = next_events(&mut named, 2).await;
    let seen: Vec<_> = events.iter().map(|e| describe(e).1).collect();
    assert_eq!(seen, ["b", "b"], "only b's changes");
}

#[tokio::test]
async fn bookmarks_arrive_before_a_watch_times_out_and_the_stream_then_ends() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let a = secrets
        .create(&PostParams::default(), &secret("a", &[], "1"))
        .await
        .unwrap();
    let from = a.metadata.resource_version.clone().unwrap();
    // A watch that times out in 4 s gets a bookmark 2 s before then, as the real server
    // schedules them.
    let stream = secrets
        .watch(&WatchParams::default().timeout(4), &from)
        .await
        .unwrap();
    let events: Vec<_> = tokio::time::timeout(PATIENCE, stream.try_collect::<Vec<_>>())
        .await
        .expect("the watch ends at its timeout")
        .expect("a clean end");
    let bookmarks: Vec<u64> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Bookmark(b) => b.metadata.resource_version.parse().unwrap(),
            other => panic!("nothing changed, yet the watch sent {other:?}"),
        })
        .collect();
    assert!(!bookmarks.is_empty(), "no bookmark before the timeout");
    assert!(bookmarks.iter().all(|rv| *rv >= rv_of(&a)), "{bookmarks:?}");
}

#[tokio::test]
async fn a_watch_from_a_resource_version_older_than_the_history_gets_410_expired() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let a = secrets
        .create(&PostParams::default(), &secret("a", &[], "1"))
        .await
        .unwrap();
    // A real cluster's watch cache has long forgotten resourceVersion 1; the stand-in is
    // made to forget everything so far.
    if let Some(s) = c.standin() {
        s.compact();
    }
    let stream = secrets
        .watch(&WatchParams::default().timeout(120), "1")
        .await
        .unwrap();
    let events: Vec<_> = tokio::time::timeout(PATIENCE, stream.try_collect::<Vec<_>>())
        .await
        .expect("the watch ends after its error")
        .expect("the error comes as an event");
    let [WatchEvent::Error(status)] = events.as_slice() else {
        panic!("expected one ERROR event, got {events:?}");
    };
    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
    assert!(
        status.message.starts_with("too old resource version: 1 ("),
        "{}",
        status.message
    );
    if c.standin().is_some() {
        assert_eq!(
            status.message,
            format!("too old resource version: 1 ({})", rv_of(&a))
        );
    }
}

/// The next item of kube-runtime's watcher.
async fn next_watcher_event(
    events: &mut (impl Stream<Item = watcher::Result<watcher::Event<Secret>>> + Unpin),
) -> watcher::Result<watcher::Event<Secret>> {
    tokio::time::timeout(PATIENCE, events.next())
        .await
        .expect("a watcher event in time")
        .expect("the watcher goes on")
}

#[tokio::test]
async fn kube_runtime_watcher_lists_again_after_410_and_misses_nothing() {
    let c = TestCluster::start_standin().await.unwrap();
    let Some(s) = c.standin_or_skip(
        "kube_runtime_watcher_lists_again_after_410_and_misses_nothing",
        "it closes the stand-in's watches and compacts its history",
    ) else {
        return;
    };
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let pp = PostParams::default();
    secrets.create(&pp, &secret("a", &[], "1")).await.unwrap();
    let mut events = watcher(secrets.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listed = BTreeSet::new();
    loop {
        match next_watcher_event(&mut events).await.unwrap() {
            watcher::Event::InitApply(s) => {
                listed.insert(name_of(&s).to_owned());
            }
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(listed, BTreeSet::from(["a".to_owned()]));

    // The watch ends (as on an API server restart) and cannot be reopened while b and c
    // are written and the history is compacted: the watcher's resourceVersion is then too
    // old, so it must list again, and b and c come with that list.
    s.fail("watch", "secrets", 503);
    s.close_watches();
    secrets.create(&pp, &secret("b", &[], "1")).await.unwrap();
    secrets.create(&pp, &secret("c", &[], "1")).await.unwrap();
    s.compact();
    s.clear_failures();

    let mut expired = false;
    let mut relisted = BTreeSet::new();
    loop {
        match next_watcher_event(&mut events).await {
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                assert_eq!(status.reason, "Expired");
                expired = true;
            }
            Err(_) => {}
            Ok(watcher::Event::Init) => relisted.clear(),
            Ok(watcher::Event::InitApply(s)) => {
                relisted.insert(name_of(&s).to_owned());
            }
            Ok(watcher::Event::InitDone) => break,
            Ok(other) => panic!("expected the relist, got {other:?}"),
        }
    }
    assert!(expired, "the watcher was told its resourceVersion expired");
    assert_eq!(
        relisted,
        BTreeSet::from(["a".to_owned(), "b".to_owned(), "c".to_owned()])
    );
    let lists = s
        .requests()
        .iter()
        .filter(|r| r.verb == "list" && r.resource == "secrets")
        .count();
    assert_eq!(lists, 2, "one list to start, one after the 410");

    // And it watches on from the new list.
    secrets.create(&pp, &secret("d", &[], "1")).await.unwrap();
    loop {
        if let Ok(watcher::Event::Apply(s)) = next_watcher_event(&mut events).await {
            assert_eq!(name_of(&s), "d");
            break;
        }
    }
}

#[tokio::test]
async fn a_watcher_that_does_not_read_holds_up_no_write_and_is_dropped() {
    let c = TestCluster::start_standin().await.unwrap();
    let Some(s) = c.standin_or_skip(
        "a_watcher_that_does_not_read_holds_up_no_write_and_is_dropped",
        "it shrinks the stand-in's watch buffer",
    ) else {
        return;
    };
    s.set_watch_buffer(4);
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let pp = PostParams::default();
    let first = secrets.create(&pp, &secret("big", &[], "0")).await.unwrap();
    let stream = secrets
        .watch(
            &WatchParams::default().timeout(600),
            first.metadata.resource_version.as_deref().unwrap(),
        )
        .await
        .unwrap();

    // 40 changes of half a mebibyte each: far more than the socket buffers and the
    // watcher's four can hold while nobody reads.
    const WRITES: usize = 40;
    let big = "x".repeat(512 * 1024);
    for i in 1..=WRITES {
        let value = format!("{i}{big}");
        tokio::time::timeout(
            PATIENCE,
            secrets.patch(
                "big",
                &PatchParams::default(),
                &Patch::Merge(json!({"stringData": {"value": value}})),
            ),
        )
        .await
        .expect("a write is not held up by a watcher")
        .unwrap();
    }

    // The watcher was dropped: its stream ends before it has seen every change.
    let events: Vec<_> = tokio::time::timeout(PATIENCE, stream.try_collect::<Vec<_>>())
        .await
        .expect("the dropped watcher's stream ends")
        .expect("a clean end");
    assert!(
        events.len() < WRITES,
        "the watcher saw all {} changes",
        events.len()
    );
    // What it did see came in order, without gaps.
    let rvs: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            WatchEvent::Modified(s) => Some(rv_of(s)),
            _ => None,
        })
        .collect();
    assert!(rvs.windows(2).all(|w| w[1] == w[0] + 1), "{rvs:?}");
}

#[tokio::test]
async fn a_list_at_an_exact_resource_version_shows_the_objects_as_they_were() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let pp = PostParams::default();
    let a = secrets.create(&pp, &secret("a", &[], "1")).await.unwrap();
    secrets
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"value": "2"}})),
        )
        .await
        .unwrap();
    secrets.create(&pp, &secret("b", &[], "1")).await.unwrap();

    let at = a.metadata.resource_version.clone().unwrap();
    let then = secrets
        .list(&ListParams::default().at(&at).matching(VersionMatch::Exact))
        .await
        .unwrap();
    assert_eq!(then.metadata.resource_version.as_deref(), Some(at.as_str()));
    let seen: Vec<_> = then
        .items
        .iter()
        .map(|s| (name_of(s).to_owned(), value_of(s)))
        .collect();
    assert_eq!(seen, [("a".to_owned(), "1".to_owned())]);

    let now = secrets
        .list(
            &ListParams::default()
                .at(&at)
                .matching(VersionMatch::NotOlderThan),
        )
        .await
        .unwrap();
    assert_eq!(now.items.len(), 2);

    // kube-rs refuses this one itself, so it goes as a raw request.
    let request = http::Request::get(format!(
        "/api/v1/namespaces/{}/secrets?resourceVersion=0&resourceVersionMatch=Exact",
        c.namespace()
    ))
    .body(Vec::new())
    .unwrap();
    let refused = c
        .client()
        .request::<serde_json::Value>(request)
        .await
        .unwrap_err();
    let kube::Error::Api(status) = refused else {
        panic!("expected a Status, got {refused:?}");
    };
    assert_eq!(status.code, 422);
    assert_eq!(
        status.message,
        r#"ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch "exact" is forbidden for resourceVersion "0""#
    );
}

#[tokio::test]
async fn a_stale_lease_update_conflicts_and_only_the_renewals_that_took_are_watched() {
    let c = cluster().await;
    let leases: Api<Lease> = Api::namespaced(c.client(), c.namespace());
    let pp = PostParams::default();
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "keyturn-leader"},
        "spec": {"holderIdentity": "replica-a", "leaseDurationSeconds": 15},
    }))
    .unwrap();
    let created = leases.create(&pp, &lease).await.unwrap();
    let from = created.metadata.resource_version.clone().unwrap();
    let mut stream = leases
        .watch(&WatchParams::default().timeout(120), &from)
        .await
        .unwrap()
        .boxed();

    let mut renewed = created.clone();
    renewed.spec.as_mut().unwrap().lease_transitions = Some(1);
    renewed.spec.as_mut().unwrap().holder_identity = Some("replica-b".into());
    let took = leases
        .replace("keyturn-leader", &pp, &renewed)
        .await
        .unwrap();

    // Replica a still holds the old resourceVersion: its renewal must lose.
    let mut stale = created.clone();
    stale.spec.as_mut().unwrap().lease_transitions = Some(5);
    let refused = leases
        .replace("keyturn-leader", &pp, &stale)
        .await
        .unwrap_err();
    let kube::Error::Api(status) = refused else {
        panic!("expected a Status, got {refused:?}");
    };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        r#"Operation cannot be fulfilled on leases.coordination.k8s.io "keyturn-leader": the object has been modified; please apply your changes to the latest version and try again"#
    );

    let mut again = took.clone();
    again.spec.as_mut().unwrap().lease_transitions = Some(2);
    let took_again = leases.replace("keyturn-leader", &pp, &again).await.unwrap();

    let events = next_events(&mut stream, 2).await;
    let seen: Vec<_> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Modified(l) => (
                l.spec.as_ref().unwrap().lease_transitions,
                l.metadata.resource_version.clone(),
            ),
            other => panic!("expected a renewal, got {other:?}"),
        })
        .collect();
    assert_eq!(
        seen,
        [
            (Some(1), took.metadata.resource_version),
            (Some(2), took_again.metadata.resource_version)
        ]
    );
}

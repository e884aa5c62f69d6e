//! Paged lists (`limit` and `continue`) and `date` printer columns, as kube-apiserver serves
//! them: every page of one list at the first page's resourceVersion (objects written between
//! pages neither appear nor change), `remainingItemCount`, the 400s of bad tokens, the 410 of
//! a token whose snapshot was compacted (with a token to go on), paging on every kind of list
//! the stand-in serves, real `kubectl get --chunk-size` and kube-runtime's watcher paging
//! through it, and a custom resource's `date` columns printed as ages by `kubectl get`.
//!
//! Everything but the compaction runs against a real cluster too when
//! `KEYTURN_TEST_KUBECONFIG` is set: that is how the stand-in's fidelity is checked.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::time::Duration;

use futures_util::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use keyturn_tests::kube::{TestCluster, kubectl, run_kubectl_logged};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, ObjectList, Patch, PatchParams, PostParams,
    ResourceExt as _, VersionMatch,
};
use kube::runtime::watcher;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

async fn cluster() -> TestCluster {
    TestCluster::start()
        .await
        .expect("a Kubernetes API for the test")
}

fn status_of(result: Result<impl Debug, kube::Error>) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected the API to answer with a Status error, got {other:?}"),
    }
}

fn secret(name: &str, value: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {"value": value},
    }))
    .unwrap()
}

fn value_of(s: &Secret) -> String {
    let data = s.data.as_ref().and_then(|d| d.get("value")).unwrap();
    String::from_utf8(data.0.clone()).unwrap()
}

/// Creates secrets `p00`…`p{n-1}` (names that sort as they are numbered).
async fn create_secrets(secrets: &Api<Secret>, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..n {
        let name = format!("p{i:02}");
        secrets
            .create(&PostParams::default(), &secret(&name, "original"))
            .await
            .unwrap();
        names.push(name);
    }
    names
}

/// `namespace/name`, or `name` for a cluster-scoped object.
fn key_of(o: &impl kube::Resource) -> String {
    match o.namespace() {
        Some(ns) => format!("{ns}/{}", o.name_any()),
        None => o.name_any(),
    }
}

/// Every page of `api`'s list, `limit` at a time, following the tokens to the end.
async fn all_pages<K>(api: &Api<K>, lp: &ListParams) -> Vec<ObjectList<K>>
where
    K: Clone + DeserializeOwned + Debug + kube::Resource,
{
    let mut pages: Vec<ObjectList<K>> = Vec::new();
    loop {
        let mut params = lp.clone();
        if let Some(last) = pages.last() {
            params.continue_token.clone_from(&last.metadata.continue_);
        }
        let page = api.list(&params).await.unwrap();
        let more = page.metadata.continue_.is_some();
        pages.push(page);
        if !more {
            return pages;
        }
        assert!(pages.len() < 1_000, "a list that never ends");
    }
}

/// Pages through `api` two at a time and checks the pages against one list of everything at
/// the first page's resourceVersion: the same objects in the same order, each once, every
/// page at that resourceVersion, full but for the last, a token on all but the last.
async fn assert_pages_cover<K>(api: &Api<K>, what: &str) -> usize
where
    K: Clone + DeserializeOwned + Debug + kube::Resource,
{
    let pages = all_pages(api, &ListParams::default().limit(2)).await;
    assert!(pages.len() >= 2, "{what}: more than one page of two");
    let rv = pages[0].metadata.resource_version.clone().unwrap();
    for (i, page) in pages.iter().enumerate() {
        assert_eq!(
            page.metadata.resource_version.as_deref(),
            Some(rv.as_str()),
            "{what}: page {i}"
        );
        let last = i + 1 == pages.len();
        assert_eq!(page.metadata.continue_.is_none(), last, "{what}: page {i}");
        if last {
            assert!(!page.items.is_empty() && page.items.len() <= 2, "{what}");
        } else {
            assert_eq!(page.items.len(), 2, "{what}: page {i}");
        }
    }
    let paged: Vec<String> = pages
        .iter()
        .flat_map(|p| p.items.iter().map(key_of))
        .collect();
    let whole = api
        .list(&ListParams::default().at(&rv).matching(VersionMatch::Exact))
        .await
        .unwrap();
    let listed: Vec<String> = whole.items.iter().map(key_of).collect();
    assert_eq!(paged, listed, "{what}");
    paged.len()
}

#[tokio::test]
async fn a_list_comes_in_pages_of_one_snapshot_each_object_once_in_order() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let names = create_secrets(&secrets, 25).await;

    let lp = ListParams::default().limit(10);
    let first = secrets.list(&lp).await.unwrap();
    let rv = first.metadata.resource_version.clone().unwrap();
    assert_eq!(first.items.len(), 10);
    assert_eq!(first.metadata.remaining_item_count, Some(15));

    // Written between pages: none of it shows in this list's later pages.
    let pp = PostParams::default();
    secrets.create(&pp, &secret("p05a", "new")).await.unwrap();
    secrets.create(&pp, &secret("p15a", "new")).await.unwrap();
    secrets
        .patch(
            "p12",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"value": "changed"}})),
        )
        .await
        .unwrap();
    secrets
        .delete("p21", &DeleteParams::default())
        .await
        .unwrap();

    let mut pages = vec![first];
    while let Some(token) = pages.last().unwrap().metadata.continue_.clone() {
        let next = secrets
            .list(&lp.clone().continue_token(&token))
            .await
            .unwrap();
        pages.push(next);
    }
    assert_eq!(pages.len(), 3);
    let sizes: Vec<usize> = pages.iter().map(|p| p.items.len()).collect();
    assert_eq!(sizes, [10, 10, 5]);
    let remaining: Vec<Option<i64>> = pages
        .iter()
        .map(|p| p.metadata.remaining_item_count)
        .collect();
    assert_eq!(remaining, [Some(15), Some(5), None]);
    assert!(pages[2].metadata.continue_.is_none());
    for page in &pages {
        assert_eq!(page.metadata.resource_version.as_deref(), Some(rv.as_str()));
    }
    let listed: Vec<String> = pages
        .iter()
        .flat_map(|p| p.items.iter().map(|s| s.name_any()))
        .collect();
    assert_eq!(
        listed, names,
        "every object once, in order, none written later"
    );
    let all: Vec<&Secret> = pages.iter().flat_map(|p| &p.items).collect();
    let p12 = all.iter().find(|s| s.name_any() == "p12").unwrap();
    assert_eq!(value_of(p12), "original", "as it was at the first page");

    // A new list sees the writes.
    let now: BTreeSet<String> = secrets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|s| s.name_any())
        .collect();
    assert!(now.contains("p05a") && now.contains("p15a") && !now.contains("p21"));
}

#[tokio::test]
async fn a_page_with_a_selector_has_no_remaining_count_and_rv_zero_ignores_the_limit() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let names = create_secrets(&secrets, 5).await;
    for name in &names[..4] {
        secrets
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"paged": "yes"}}})),
            )
            .await
            .unwrap();
    }
    let selected = ListParams::default().labels("paged=yes").limit(3);
    let first = secrets.list(&selected).await.unwrap();
    assert_eq!(first.items.len(), 3);
    assert!(first.metadata.continue_.is_some());
    assert_eq!(first.metadata.remaining_item_count, None);
    let pages = all_pages(&secrets, &selected).await;
    let listed: Vec<String> = pages
        .iter()
        .flat_map(|p| p.items.iter().map(|s| s.name_any()))
        .collect();
    assert_eq!(listed, names[..4]);

    // `resourceVersion=0` is served whole (from the watch cache on a real server). kube-rs
    // drops it beside a limit, so this goes as a raw request.
    let request = http::Request::get(format!(
        "/api/v1/namespaces/{}/secrets?limit=2&resourceVersion=0",
        c.namespace()
    ))
    .body(Vec::new())
    .unwrap();
    let whole = c.client().request::<Value>(request).await.unwrap();
    assert_eq!(whole["items"].as_array().unwrap().len(), 5);
    assert!(whole["metadata"].get("continue").is_none());
}

#[tokio::test]
async fn bad_continue_tokens_and_versions_beside_them_are_bad_requests() {
    use base64::Engine as _;
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    create_secrets(&secrets, 3).await;

    let refused = status_of(
        secrets
            .list(&ListParams::default().limit(1).continue_token("not-a-token"))
            .await,
    );
    assert_eq!((refused.code, refused.reason.as_str()), (400, "BadRequest"));
    assert!(
        refused
            .message
            .starts_with("invalid continue token: continue key is not valid"),
        "{}",
        refused.message
    );

    // A token may not reach outside the list's namespace.
    let first = secrets.list(&ListParams::default().limit(1)).await.unwrap();
    let rv: i64 = first.metadata.resource_version.unwrap().parse().unwrap();
    let escaping = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"v": "meta.k8s.io/v1", "rv": rv, "start": "../kube-system/x"}).to_string());
    let refused = status_of(
        secrets
            .list(&ListParams::default().limit(1).continue_token(&escaping))
            .await,
    );
    assert_eq!(
        (refused.code, refused.message.as_str()),
        (
            400,
            "invalid continue token: continue key is not valid: ../kube-system/x"
        )
    );

    // kube-rs never sends a resourceVersion beside a token; a client that does is refused.
    let token = first.metadata.continue_.unwrap();
    let request = http::Request::get(format!(
        "/api/v1/namespaces/{}/secrets?limit=1&continue={token}&resourceVersion={rv}",
        c.namespace()
    ))
    .body(Vec::new())
    .unwrap();
    let refused = status_of(c.client().request::<Value>(request).await);
    assert_eq!(
        (refused.code, refused.message.as_str()),
        (
            400,
            "specifying resource version is not allowed when using continue"
        )
    );

    let request = http::Request::get(format!(
        "/api/v1/namespaces/{}/secrets?limit=ten",
        c.namespace()
    ))
    .body(Vec::new())
    .unwrap();
    let refused = status_of(c.client().request::<Value>(request).await);
    assert_eq!((refused.code, refused.reason.as_str()), (400, "BadRequest"));
}

#[tokio::test]
async fn a_token_from_before_a_compaction_expires_and_hands_back_one_to_go_on() {
    let c = cluster().await;
    let Some(s) = c.standin_or_skip(
        "a_token_from_before_a_compaction_expires_and_hands_back_one_to_go_on",
        "compacts the history",
    ) else {
        return;
    };
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    create_secrets(&secrets, 4).await;
    let lp = ListParams::default().limit(2);
    let first = secrets.list(&lp).await.unwrap();
    let token = first.metadata.continue_.clone().unwrap();

    secrets
        .create(&PostParams::default(), &secret("p03a", "new"))
        .await
        .unwrap();
    s.compact();
    let expired = status_of(secrets.list(&lp.clone().continue_token(&token)).await);
    assert_eq!((expired.code, expired.reason.as_str()), (410, "Expired"));
    assert!(
        expired.message.starts_with(
            "The provided continue parameter is too old to display a consistent list result."
        ),
        "{}",
        expired.message
    );
    // The Status carries a token that goes on from the same place at the latest version,
    // where the object written meanwhile shows.
    let go_on = expired
        .metadata
        .and_then(|m| m.continue_)
        .expect("a token to go on with");
    let rest = all_pages(&secrets, &lp.clone().continue_token(&go_on)).await;
    let listed: Vec<String> = rest
        .iter()
        .flat_map(|p| p.items.iter().map(|s| s.name_any()))
        .collect();
    assert_eq!(listed, ["p02", "p03", "p03a"]);
    assert_ne!(
        rest[0].metadata.resource_version,
        first.metadata.resource_version
    );
}

#[tokio::test]
async fn every_kind_of_list_pages() {
    let c = cluster().await;
    let ns = c.namespace().to_owned();
    let pp = PostParams::default();

    let leases: Api<Lease> = Api::namespaced(c.client(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(c.client(), &ns);
    let events: Api<Event> = Api::namespaced(c.client(), &ns);
    for i in 0..5 {
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": format!("lease-{i}")},
            "spec": {"holderIdentity": "replica-a", "leaseDurationSeconds": 15},
        }))
        .unwrap();
        leases.create(&pp, &lease).await.unwrap();
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": format!("web-{i}")},
            "spec": {
                // No pods on a real cluster either.
                "replicas": 0,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
                },
            },
        }))
        .unwrap();
        deployments.create(&pp, &deployment).await.unwrap();
        let event: Event = serde_json::from_value(json!({
            "metadata": {"name": format!("web.{i}")},
            "eventTime": "2025-01-01T00:00:00.000000Z",
            "action": "Rotate", "reason": "Rotated", "note": "paged", "type": "Normal",
            "reportingController": "keyturn.dev/daemon", "reportingInstance": "keyturn-0",
            "regarding": {"kind": "Deployment", "name": format!("web-{i}"), "namespace": ns, "apiVersion": "apps/v1"},
        }))
        .unwrap();
        events.create(&pp, &event).await.unwrap();
    }
    assert_eq!(assert_pages_cover(&leases, "leases").await, 5);
    assert_eq!(assert_pages_cover(&deployments, "deployments").await, 5);
    assert_eq!(assert_pages_cover(&events, "events.k8s.io events").await, 5);
    let core_events: Api<CoreEvent> = Api::namespaced(c.client(), &ns);
    assert_eq!(assert_pages_cover(&core_events, "core/v1 events").await, 5);

    // Across namespaces (a token's key is then NAMESPACE/NAME) and cluster-scoped.
    let all_leases: Api<Lease> = Api::all(c.client());
    assert!(assert_pages_cover(&all_leases, "leases in all namespaces").await >= 5);
    let cluster_roles: Api<ClusterRole> = Api::all(c.client());
    assert!(assert_pages_cover(&cluster_roles, "clusterroles").await > 2);

    // Custom resources.
    let crd = c
        .install_crd(drill_definition("paging.keyturn.dev"))
        .await
        .unwrap();
    let drills = crd.api(c.client(), &ns);
    for i in 0..5 {
        drills
            .create(&pp, &drill(&crd.group, &format!("d{i}"), json!({})))
            .await
            .unwrap();
    }
    assert_eq!(assert_pages_cover(&drills, "custom resources").await, 5);
    crd.remove().await.unwrap();

    // Namespaces: mostly virtual on the stand-in, without history, so paged from the
    // latest state; on a real cluster parallel tests create and delete them.
    if c.standin().is_some() {
        let namespaces: Api<Namespace> = Api::all(c.client());
        let pages = all_pages(&namespaces, &ListParams::default().limit(2)).await;
        assert!(pages.len() >= 2);
        let paged: Vec<String> = pages
            .iter()
            .flat_map(|p| p.items.iter().map(|n| n.name_any()))
            .collect();
        let whole: Vec<String> = namespaces
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|n| n.name_any())
            .collect();
        assert_eq!(paged, whole);
    }
}

#[tokio::test]
async fn kube_runtime_watcher_pages_through_the_initial_list() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let names: BTreeSet<String> = create_secrets(&secrets, 12).await.into_iter().collect();

    for (config, pages) in [
        (watcher::Config::default().page_size(5), 3),
        (watcher::Config::default(), 1),
    ] {
        let before = c.standin().map(|s| list_requests(&s.requests()));
        let mut events = watcher(secrets.clone(), config).boxed();
        let mut listed = BTreeSet::new();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(60), events.try_next())
                .await
                .expect("a watcher event in time")
                .expect("the watcher lists")
                .expect("the watcher goes on");
            match event {
                watcher::Event::InitApply(s) => {
                    assert!(listed.insert(s.name_any()), "{} listed twice", s.name_any());
                }
                watcher::Event::InitDone => break,
                _ => {}
            }
        }
        assert_eq!(listed, names);
        if let (Some(s), Some(before)) = (c.standin(), before) {
            assert_eq!(list_requests(&s.requests()) - before, pages);
        }
    }
}

/// How many secret lists the stand-in has answered.
fn list_requests(log: &[keyturn_tests::kube::RecordedRequest]) -> usize {
    log.iter()
        .filter(|r| r.verb == "list" && r.resource == "secrets")
        .count()
}

#[tokio::test]
async fn kubectl_gets_everything_in_chunks() {
    let c = cluster().await;
    let Some((bin, home)) = kubectl(&c, "kubectl_gets_everything_in_chunks") else {
        return;
    };
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let names = create_secrets(&secrets, 25).await;

    let (listed, log) = run_kubectl_logged(
        &c,
        &bin,
        home.path(),
        &["get", "secrets", "--chunk-size=7", "-v=6"],
        None,
    )
    .await;
    let lines: Vec<Vec<&str>> = listed
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["NAME", "TYPE", "DATA", "AGE"], "{listed}");
    let rows: Vec<&str> = lines[1..].iter().map(|l| l[0]).collect();
    assert_eq!(rows, names, "{listed}");

    // Four requests of seven (7 + 7 + 7 + 4), each after the first with the last's token.
    let requests: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("GET") && l.contains("/secrets?") && l.contains("limit=7"))
        .collect();
    assert_eq!(requests.len(), 4, "{log}");
    assert_eq!(
        requests.iter().filter(|l| l.contains("continue=")).count(),
        3,
        "{log}"
    );

    let (by_name, _) = run_kubectl_logged(
        &c,
        &bin,
        home.path(),
        &["get", "secrets", "--chunk-size=4", "-o", "name"],
        None,
    )
    .await;
    let expected: Vec<String> = names.iter().map(|n| format!("secret/{n}")).collect();
    assert_eq!(by_name.lines().collect::<Vec<_>>(), expected);
}

// ---- `date` printer columns ----

/// A custom resource with two `date` printer columns besides the age, as a CRD author writes
/// them for times in `spec`.
fn drill_definition(group: &str) -> CustomResourceDefinition {
    serde_yaml::from_str(&format!(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: drills.{group}
spec:
  group: {group}
  names: {{kind: Drill, plural: drills}}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    additionalPrinterColumns:
    - {{name: Started, type: date, jsonPath: .spec.startedAt}}
    - {{name: Due, type: date, jsonPath: .spec.due}}
    - {{name: Age, type: date, jsonPath: .metadata.creationTimestamp}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              startedAt: {{type: string}}
              due: {{type: string}}
"#
    ))
    .unwrap()
}

fn drill(group: &str, name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1"),
        "kind": "Drill",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

fn rfc3339_ago(ago: chrono::TimeDelta) -> String {
    (chrono::Utc::now() - ago).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[tokio::test]
async fn kubectl_prints_date_columns_of_a_custom_resource_as_ages() {
    let c = cluster().await;
    let Some((bin, home)) = kubectl(
        &c,
        "kubectl_prints_date_columns_of_a_custom_resource_as_ages",
    ) else {
        return;
    };
    let crd = c
        .install_crd(drill_definition("paging.keyturn.dev"))
        .await
        .unwrap();
    let drills = crd.api(c.client(), c.namespace());
    let pp = PostParams::default();
    let hours = chrono::TimeDelta::hours;
    for (name, spec) in [
        // 3 h 30 s ago: "3h"; due in 2 h: not yet, "<invalid>" as the real server prints it.
        (
            "a-hours",
            json!({"startedAt": rfc3339_ago(hours(3) + chrono::TimeDelta::seconds(30)), "due": rfc3339_ago(hours(-2))}),
        ),
        // 72 h (and a little) ago: "3d"; a due time that is no time at all.
        (
            "b-days",
            json!({"startedAt": rfc3339_ago(hours(72) + chrono::TimeDelta::seconds(10)), "due": "soon"}),
        ),
        // No times: no values.
        ("c-none", json!({})),
    ] {
        drills
            .create(&pp, &drill(&crd.group, name, spec))
            .await
            .unwrap();
    }

    let resource = format!("drills.{}", crd.group);
    let (listed, _) = run_kubectl_logged(&c, &bin, home.path(), &["get", &resource], None).await;
    let lines: Vec<Vec<&str>> = listed
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["NAME", "STARTED", "DUE", "AGE"], "{listed}");
    assert_eq!(lines[1][..3], ["a-hours", "3h", "<invalid>"], "{listed}");
    assert_eq!(lines[2][..3], ["b-days", "3d", "<invalid>"], "{listed}");
    // No value: a blank cell (kubectl prints none for a null one).
    assert_eq!(lines[3].len(), 2, "{listed}");
    assert_eq!(lines[3][0], "c-none", "{listed}");
    // Created moments ago: an age in seconds, not a timestamp.
    for line in &lines[1..] {
        let age = line.last().unwrap();
        assert!(
            age.strip_suffix('s')
                .is_some_and(|n| n.parse::<u32>().is_ok()),
            "{listed}"
        );
    }
    assert_eq!(lines.len(), 4, "{listed}");

    // The Table itself: `date` columns whose cells are the ages kubectl printed.
    let request = http::Request::get(format!(
        "/apis/{}/v1/namespaces/{}/drills",
        crd.group,
        c.namespace()
    ))
    .header(
        http::header::ACCEPT,
        "application/json;as=Table;g=meta.k8s.io;v=v1",
    )
    .body(Vec::new())
    .unwrap();
    let table = c.client().request::<Value>(request).await.unwrap();
    let types: Vec<(&str, &str)> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].as_str().unwrap(), d["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        types,
        [
            ("Name", "string"),
            ("Started", "date"),
            ("Due", "date"),
            ("Age", "date")
        ]
    );
    assert_eq!(table["rows"][0]["cells"][1], "3h");
    assert_eq!(table["rows"][2]["cells"][1], Value::Null);
    crd.remove().await.unwrap();
}

//! The daemon's RotationPolicy status and Events reporter (`keyturn_agent::daemon::status`)
//! against an API server with the RotationPolicy definition `keyturn crd` prints: the status
//! it writes read by real `kubectl get` (the Ready, Reason, Last rotation and Next rotation
//! columns) and its Events by `kubectl describe`; facts coalesced (repeats cost no write);
//! nothing written through a closed fence; a deleted object, a conflict and a failing server
//! never turned into a request loop; and a planted credential in no status, Event or log.
//!
//! On a real cluster (`KEYTURN_TEST_KUBECONFIG`) each test defines the resource in a group of
//! its own (`<namespace>.test.keyturn.dev`) and deletes the definition when it passes; what
//! needs the stand-in's request log or failure switch says so and is skipped there.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Secret};
use k8s_openapi::api::events::v1::Event;
use keyturn_agent::daemon::status::{
    EventOutcome, MAX_CONFLICTS, OutcomeLabel, PolicyRef, StatusMetrics, StatusReporter,
    StatusSettings, WriteFence,
};
use keyturn_agent::policy;
use keyturn_agent::policy::crd::{ConditionStatus, RotationPolicyStatus};
use keyturn_agent::policy::kube_source::RejectReason;
use keyturn_tests::canary::{LogCapture, assert_absent, canary};
use keyturn_tests::kube::{InstalledCrd, RecordedRequest, TestCluster, kubectl, run_kubectl};
use keyturn_tests::process::eventually;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::json;

async fn cluster() -> TestCluster {
    TestCluster::start()
        .await
        .expect("a Kubernetes API for the test")
}

/// The generated RotationPolicy definition, established and served; deleted by
/// [`Self::remove`].
struct Defined {
    crd: InstalledCrd,
    policies: Api<DynamicObject>,
    group: String,
}

impl Defined {
    async fn new(c: &TestCluster) -> Self {
        let crd = c
            .install_crd(policy::crd::definition())
            .await
            .expect("the RotationPolicy definition installed");
        Self {
            policies: crd.api(c.client(), c.namespace()),
            group: crd.group.clone(),
            crd,
        }
    }

    /// Creates the valid policy `name`; its [`PolicyRef`] (uid left for the reporter to
    /// find).
    async fn policy(&self, c: &TestCluster, name: &str) -> PolicyRef {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": format!("{}/{}", self.group, policy::crd::VERSION),
            "kind": policy::KIND,
            "metadata": {"name": name, "namespace": c.namespace()},
            "spec": {
                "every": "1d",
                "store": {"vault-kv": {"path": format!("keyturn/{name}")}},
                "target": {"generated": {}},
            }
        }))
        .unwrap();
        let created = self
            .policies
            .create(&PostParams::default(), &object)
            .await
            .unwrap();
        PolicyRef::new(
            c.namespace(),
            name,
            created.metadata.generation.unwrap_or(1),
        )
    }

    async fn status(&self, name: &str) -> Option<RotationPolicyStatus> {
        let obj = self.policies.get(name).await.unwrap();
        obj.data
            .get("status")
            .map(|s| serde_json::from_value(s.clone()).unwrap())
    }

    async fn remove(self) {
        self.crd.remove().await.unwrap();
    }
}

/// Retries from 50 ms up to 400 ms, so the tests see several retries in a few seconds.
fn settings(defined: &Defined) -> StatusSettings {
    let mut s = StatusSettings::new("keyturn-test-0");
    s.group.clone_from(&defined.group);
    s.retry_base = Duration::from_millis(50);
    s.retry_max = Duration::from_millis(400);
    s
}

fn open() -> Arc<dyn WriteFence> {
    Arc::new(|_: &str, _: &str| true)
}

fn reporter(client: kube::Client, defined: &Defined, fence: Arc<dyn WriteFence>) -> StatusReporter {
    StatusReporter::spawn(client, settings(defined), fence, StatusMetrics::default()).0
}

fn count(family: &Family<OutcomeLabel, Counter>, outcome: &str) -> u64 {
    family
        .get_or_create(&OutcomeLabel {
            outcome: outcome.to_owned(),
        })
        .get()
}

/// Requests on `resource` about `name` the stand-in saw, by verb.
fn requests_for<'a>(
    log: &'a [RecordedRequest],
    resource: &'a str,
    name: &'a str,
) -> impl Iterator<Item = &'a RecordedRequest> + 'a {
    log.iter()
        .filter(move |r| r.resource == resource && r.name.as_deref() == Some(name))
}

/// The test's start in whole seconds (as the status keeps times), plus `hours`.
fn at(hours: i64) -> DateTime<Utc> {
    static START: LazyLock<DateTime<Utc>> = LazyLock::new(|| {
        let now = Utc::now();
        now - TimeDelta::nanoseconds(i64::from(now.timestamp_subsec_nanos()))
    });
    *START + TimeDelta::hours(hours)
}

/// `kubectl get` output as (column, cell) pairs per row, cut where the header's columns
/// start: a cell may be empty (a printer column whose path found nothing) or hold spaces.
fn table(out: &str) -> Vec<Vec<(String, String)>> {
    let mut lines = out.lines();
    let header = lines.next().unwrap_or_default();
    // Columns are at least three spaces apart; a name has at most one space inside.
    let mut starts = Vec::new();
    let mut previous = ' ';
    let mut gap = 2;
    for (i, ch) in header.char_indices() {
        if ch != ' ' && previous == ' ' && gap >= 2 {
            starts.push(i);
        }
        gap = if ch == ' ' { gap + 1 } else { 0 };
        previous = ch;
    }
    let cut = |line: &str, i: usize| {
        let end = starts
            .get(i + 1)
            .copied()
            .unwrap_or(line.len())
            .min(line.len());
        line.get(starts[i].min(end)..end)
            .unwrap_or("")
            .trim()
            .to_owned()
    };
    lines
        .map(|line| {
            (0..starts.len())
                .map(|i| (cut(header, i), cut(line, i)))
                .collect()
        })
        .collect()
}

/// The cell of `column` in `row`.
fn cell<'a>(row: &'a [(String, String)], column: &str) -> &'a str {
    row.iter().find(|(c, _)| c == column).map_or_else(
        || panic!("no column {column}: {row:?}"),
        |(_, v)| v.as_str(),
    )
}

/// A printer column whose path found nothing (kubectl prints the server's null as blank).
fn blank(cell: &str) -> bool {
    cell.is_empty() || cell == "<none>"
}

/// The Events about policy `name`, through events.k8s.io/v1.
async fn events_about(c: &TestCluster, name: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(c.client(), c.namespace());
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.name.as_deref() == Some(name))
        })
        .collect()
}

#[tokio::test]
async fn kubectl_shows_the_status_in_the_columns_and_describe_shows_the_events() {
    let c = cluster().await;
    let Some((bin, home)) = kubectl(
        &c,
        "kubectl_shows_the_status_in_the_columns_and_describe_shows_the_events",
    ) else {
        return;
    };
    let defined = Defined::new(&c).await;
    let p = defined.policy(&c, "api-token").await;
    // What a previous daemon left: Ready True for two days.
    let ready_since = at(-48);
    defined
        .policies
        .patch_status(
            "api-token",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{
                "type": "Ready", "status": "True", "reason": "Scheduled",
                "message": "left by a previous daemon", "lastTransitionTime": ready_since,
            }]}})),
        )
        .await
        .unwrap();
    let r = reporter(c.client(), &defined, open());
    let resource = format!("{}.{}", policy::crd::PLURAL, defined.group);
    let get = async |c: &TestCluster| {
        let out = run_kubectl(c, &bin, home.path(), &["get", &resource, "api-token"], None).await;
        let mut rows = table(&out);
        assert_eq!(rows.len(), 1, "{out}");
        let row = rows.remove(0);
        let columns: Vec<&str> = row.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(
            columns,
            [
                "NAME",
                "READY",
                "REASON",
                "LAST ROTATION",
                "NEXT ROTATION",
                "AGE"
            ],
            "{out}"
        );
        assert_eq!(cell(&row, "NAME"), "api-token", "{out}");
        row
    };

    // Scheduled: Ready True, the next rotation in its column, no rotation yet.
    let next = at(20);
    r.scheduled(&p, next);
    r.settled().await;
    let row = get(&c).await;
    assert_eq!(
        (cell(&row, "READY"), cell(&row, "REASON")),
        ("True", "Scheduled"),
        "{row:?}"
    );
    assert!(blank(cell(&row, "LAST ROTATION")), "{row:?}");
    assert_eq!(
        cell(&row, "NEXT ROTATION"),
        next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "{row:?}"
    );
    // Ready stayed True: the transition time the previous daemon wrote stands.
    let scheduled = defined.status("api-token").await.unwrap();
    assert_eq!(scheduled.conditions[0].type_, "Ready");
    assert_eq!(scheduled.conditions[0].last_transition_time, ready_since);

    // A rotation: Rotating True while it runs, then Ready True Rotated with its times.
    r.rotation_started(&p, "r-1");
    r.settled().await;
    let running = defined.status("api-token").await.unwrap();
    let rotating = running
        .conditions
        .iter()
        .find(|c| c.type_ == "Rotating")
        .unwrap();
    assert_eq!(
        (rotating.status, rotating.reason.as_str()),
        (ConditionStatus::True, "InProgress")
    );
    let next = at(44);
    r.rotated(&p, "r-1", at(0) - TimeDelta::seconds(3), at(0), Some(next));
    r.distributed(&p, "1 Secret: api-token");
    r.restart_requested(&p, "Deployment web");
    r.settled().await;
    let row = get(&c).await;
    assert_eq!(
        (cell(&row, "READY"), cell(&row, "REASON")),
        ("True", "Rotated"),
        "{row:?}"
    );
    // A date column: the time on the stand-in, an age on a real API server.
    assert!(!blank(cell(&row, "LAST ROTATION")), "{row:?}");
    assert_eq!(
        cell(&row, "NEXT ROTATION"),
        next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "{row:?}"
    );
    let rotated = defined.status("api-token").await.unwrap();
    let last = rotated.last_rotation.as_ref().unwrap();
    assert_eq!(
        (last.rotation_id.as_str(), last.outcome.as_str()),
        ("r-1", "rotated")
    );
    assert_eq!(rotated.observed_generation, Some(p.generation));
    assert_eq!(rotated.consecutive_failures, Some(0));
    // Ready stayed True from Scheduled to Rotated: its transition time did not move.
    let ready = &rotated.conditions[0];
    assert_eq!(ready.type_, "Ready");
    assert_eq!(ready.last_transition_time, ready_since);

    // A failure: Ready False RotationFailed, a Warning Event; then break-glass.
    r.failed(
        &p,
        Some("r-2"),
        2,
        "postgres refused the new password for role app",
        Some(at(1)),
    );
    r.break_glass(&p, "reveal");
    r.settled().await;
    let row = get(&c).await;
    assert_eq!(
        (cell(&row, "READY"), cell(&row, "REASON")),
        ("False", "RotationFailed"),
        "{row:?}"
    );
    let failing = defined.status("api-token").await.unwrap();
    assert_eq!(failing.consecutive_failures, Some(2));
    // Ready turned False: its transition time is now.
    assert!(failing.conditions[0].last_transition_time >= at(0));
    let degraded = failing
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(
        (degraded.status, degraded.reason.as_str()),
        (ConditionStatus::True, "RotationFailing")
    );

    // A rotation that starts and never reports back (its replica was killed, or fenced):
    // whoever next finds the policy idle and schedules it turns Rotating False.
    let rotating = |s: RotationPolicyStatus| {
        let c = s
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Rotating")
            .unwrap();
        (c.status, c.reason)
    };
    r.rotation_started(&p, "r-3");
    r.settled().await;
    assert_eq!(
        rotating(defined.status("api-token").await.unwrap()),
        (ConditionStatus::True, "InProgress".to_owned())
    );
    r.scheduled(&p, at(2));
    r.settled().await;
    assert_eq!(
        rotating(defined.status("api-token").await.unwrap()),
        (ConditionStatus::False, "Idle".to_owned())
    );

    // `kubectl describe` lists the Events (through core/v1, by the object's uid).
    let described = run_kubectl(
        &c,
        &bin,
        home.path(),
        &["describe", &resource, "api-token"],
        None,
    )
    .await;
    let events = described
        .split_once("\nEvents:")
        .map(|(_, e)| e.to_owned())
        .unwrap_or_else(|| panic!("no Events section: {described}"));
    for (kind, reason, note) in [
        ("Normal", "Rotated", "rotation r-1 finished in 3s"),
        (
            "Normal",
            "Distributed",
            "delivered the new value to 1 Secret: api-token",
        ),
        (
            "Normal",
            "RestartRequested",
            "requested rollout restarts of Deployment web",
        ),
        (
            "Warning",
            "RotationFailed",
            "rotation r-2 failed (2 in a row): postgres refused the new password for role app",
        ),
        ("Warning", "BreakGlass", "break-glass reveal"),
    ] {
        let line = events
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(reason))
            .unwrap_or_else(|| panic!("no {reason} Event in: {described}"));
        assert!(line.trim_start().starts_with(kind), "{line}");
        assert!(line.contains("keyturn-daemon"), "{line}");
        assert!(line.contains(note), "{line}");
    }

    // The spec changes and the new generation is rejected: Ready False with the reason, no
    // next rotation.
    let edited = defined
        .policies
        .patch(
            "api-token",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"window": "1h"}})),
        )
        .await
        .unwrap();
    let generation = edited.metadata.generation.unwrap();
    assert_eq!(generation, p.generation + 1);
    r.rejected(
        &PolicyRef::new(c.namespace(), "api-token", generation),
        RejectReason::InvalidSpec,
        "spec.every: not a duration",
    );
    r.settled().await;
    let row = get(&c).await;
    assert_eq!(
        (cell(&row, "READY"), cell(&row, "REASON")),
        ("False", "InvalidSpec"),
        "{row:?}"
    );
    assert!(blank(cell(&row, "NEXT ROTATION")), "{row:?}");
    let rejected = defined.status("api-token").await.unwrap();
    assert_eq!(rejected.next_rotation, None);
    assert_eq!(rejected.observed_generation, Some(generation));
    assert_eq!(rejected.conditions[0].message, "spec.every: not a duration");
    defined.remove().await;
}

#[tokio::test]
async fn kubectl_get_events_lists_them_as_core_events_with_a_repeat_folded_into_a_series() {
    let c = cluster().await;
    let Some((bin, home)) = kubectl(
        &c,
        "kubectl_get_events_lists_them_as_core_events_with_a_repeat_folded_into_a_series",
    ) else {
        return;
    };
    let defined = Defined::new(&c).await;
    let p = defined.policy(&c, "orders-db").await;
    let r = reporter(c.client(), &defined, open());
    r.distributed(&p, "1 Secret: orders-db");
    r.settled().await;
    r.distributed(&p, "1 Secret: orders-db");
    r.settled().await;

    // One Event, counted twice, read through core/v1 as kubectl describe reads it.
    let core: Api<CoreEvent> = Api::namespaced(c.client(), c.namespace());
    let listed = core
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=RotationPolicy,involvedObject.name=orders-db,involvedObject.namespace={}",
            c.namespace()
        )))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1, "{listed:?}");
    let event = &listed.items[0];
    assert_eq!(event.reason.as_deref(), Some("Distributed"));
    assert_eq!(
        event.message.as_deref(),
        Some("delivered the new value to 1 Secret: orders-db")
    );
    assert_eq!(event.series.as_ref().and_then(|s| s.count), Some(2));
    assert_eq!(event.reporting_component.as_deref(), Some("keyturn-daemon"));
    assert_eq!(event.reporting_instance.as_deref(), Some("keyturn-test-0"));
    let uid = defined
        .policies
        .get("orders-db")
        .await
        .unwrap()
        .metadata
        .uid;
    assert_eq!(event.involved_object.uid, uid);
    // events.k8s.io's field names are not core/v1's.
    let refused = core
        .list(&ListParams::default().fields("regarding.name=orders-db"))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = refused else {
        panic!("{refused}")
    };
    assert_eq!(
        (status.code, status.message.as_str()),
        (400, "field label not supported: regarding.name")
    );

    let out = run_kubectl(
        &c,
        &bin,
        home.path(),
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=orders-db",
        ],
        None,
    )
    .await;
    let rows = table(&out);
    assert_eq!(rows.len(), 1, "{out}");
    let columns: Vec<&str> = rows[0].iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        columns,
        ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        "{out}"
    );
    assert_eq!(cell(&rows[0], "TYPE"), "Normal", "{out}");
    assert_eq!(cell(&rows[0], "REASON"), "Distributed", "{out}");
    assert_eq!(
        cell(&rows[0], "OBJECT"),
        "rotationpolicy/orders-db",
        "{out}"
    );
    defined.remove().await;
}

#[tokio::test]
async fn repeated_facts_coalesce_into_one_write_per_policy_and_the_latest_wins() {
    let c = cluster().await;
    let defined = Defined::new(&c).await;
    let mut refs = Vec::new();
    for i in 0..12 {
        refs.push(defined.policy(&c, &format!("p-{i}")).await);
    }
    let r = reporter(c.client(), &defined, open());
    let writes = &r.metrics().writes;
    // 40 schedulings per policy, handed over without the reporter getting a turn: only the
    // last of each is written.
    let last = at(40);
    for step in 1..=40 {
        for p in &refs {
            r.scheduled(p, at(step));
        }
    }
    r.settled().await;
    assert_eq!(count(writes, "ok"), 12);
    for p in &refs {
        let s = defined.status(&p.name).await.unwrap();
        assert_eq!(s.next_rotation, Some(last), "{}", p.name);
    }
    // The same fact again, many times: no write at all.
    for _ in 0..25 {
        r.scheduled(&refs[0], last);
    }
    r.settled().await;
    assert_eq!(count(writes, "ok"), 12);
    assert_eq!(count(writes, "unchanged"), 1);
    assert_eq!(count(&r.metrics().reads, "ok"), 12, "one read per policy");
    if let Some(standin) = c.standin() {
        let log = standin.requests();
        for p in &refs {
            let patches = requests_for(&log, "rotationpolicies/status", &p.name)
                .filter(|q| q.verb == "patch")
                .count();
            assert_eq!(patches, 1, "{}", p.name);
        }
    }
    defined.remove().await;
}

#[tokio::test]
async fn a_closed_fence_lets_no_status_or_event_reach_the_server() {
    let c = cluster().await;
    let defined = Defined::new(&c).await;
    let p = defined.policy(&c, "fenced").await;
    let permitted = Arc::new(AtomicBool::new(false));
    let gate = Arc::clone(&permitted);
    let fence: Arc<dyn WriteFence> = Arc::new(move |_: &str, _: &str| gate.load(Ordering::SeqCst));
    let r = reporter(c.client(), &defined, fence);

    r.rotated(&p, "r-1", at(0), at(0), Some(at(24)));
    r.distributed(&p, "1 Secret: fenced");
    r.settled().await;
    assert_eq!(count(&r.metrics().writes, "fenced"), 1);
    assert_eq!(count(&r.metrics().writes, "ok"), 0);
    assert_eq!(defined.status("fenced").await, None);
    assert!(events_about(&c, "fenced").await.is_empty());
    if let Some(standin) = c.standin() {
        let log = standin.requests();
        let writes: Vec<&RecordedRequest> = log
            .iter()
            .filter(|q| !matches!(q.verb.as_str(), "get" | "list" | "watch"))
            .filter(|q| q.resource.starts_with("rotationpolicies/") || q.resource == "events")
            .collect();
        assert!(writes.is_empty(), "{writes:?}");
    }

    // Open again: the next fact writes the whole wanted state; what was fenced stays unsent.
    permitted.store(true, Ordering::SeqCst);
    r.restart_requested(&p, "Deployment web");
    r.settled().await;
    let s = defined.status("fenced").await.unwrap();
    assert_eq!(s.last_rotation.unwrap().rotation_id, "r-1");
    let reasons: Vec<String> = events_about(&c, "fenced")
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert_eq!(reasons, ["RestartRequested"]);
    defined.remove().await;
}

#[tokio::test]
async fn a_deleted_policy_costs_one_refused_write_and_no_retries() {
    let c = cluster().await;
    let defined = Defined::new(&c).await;
    let p = defined.policy(&c, "short-lived").await;
    let r = reporter(c.client(), &defined, open());
    r.scheduled(&p, at(5));
    r.settled().await;
    assert_eq!(count(&r.metrics().writes, "ok"), 1);

    defined
        .policies
        .delete("short-lived", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the policy to be gone", || {
        let policies = defined.policies.clone();
        async move { policies.get_opt("short-lived").await.unwrap().is_none() }
    })
    .await;
    r.rotated(&p, "r-1", at(0), at(0), Some(at(24)));
    r.settled().await;
    assert_eq!(count(&r.metrics().writes, "not-found"), 1);
    let before = c.standin().map(|s| s.requests().len());
    // Several times the longest retry delay: nothing more is sent about it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&r.metrics().writes, "not-found"), 1);
    assert_eq!(
        count(&r.metrics().reads, "not-found") + count(&r.metrics().reads, "ok"),
        1
    );
    if let (Some(standin), Some(before)) = (c.standin(), before) {
        let log = standin.requests();
        assert_eq!(log.len(), before, "{:?}", &log[before..]);
        let codes: Vec<u16> = requests_for(&log, "rotationpolicies/status", "short-lived")
            .map(|q| q.code)
            .collect();
        assert_eq!(codes, [200, 404]);
    }
    defined.remove().await;
}

#[tokio::test]
async fn a_status_patch_never_answered_is_given_up_after_the_request_timeout_and_retried() {
    let c = cluster().await;
    let Some(standin) = c.standin_or_skip(
        "a_status_patch_never_answered_is_given_up_after_the_request_timeout_and_retried",
        "needs the stand-in's hold switch",
    ) else {
        return;
    };
    let defined = Defined::new(&c).await;
    let p = defined.policy(&c, "hung").await;
    let mut s = settings(&defined);
    s.request_timeout = Duration::from_millis(300);
    let (r, _task) = StatusReporter::spawn(c.client(), s, open(), StatusMetrics::default());
    let patches = || {
        requests_for(&standin.requests(), "rotationpolicies/status", "hung")
            .filter(|q| q.verb == "patch")
            .count()
    };

    // Every status patch is held for ten minutes: each is abandoned after 300 ms, counted
    // as unanswered, and tried again under backoff (not in a loop, not never).
    standin.hold("patch", "rotationpolicies/status", Duration::from_secs(600));
    r.scheduled(&p, at(5));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tried = patches();
    assert!((2..=10).contains(&tried), "{tried} patches in 2 s");
    assert!(count(&r.metrics().writes, "unreachable") >= 2);

    // Answered again: the status is written.
    standin.clear_failures();
    r.settled().await;
    assert_eq!(count(&r.metrics().writes, "ok"), 1);
    let status = defined.policies.get("hung").await.unwrap().data["status"].clone();
    assert!(status["nextRotation"].is_string(), "{status}");
    defined.remove().await;
}

#[tokio::test]
async fn a_failing_server_is_retried_with_backoff_until_the_object_goes_and_conflicts_give_up() {
    let c = cluster().await;
    let Some(standin) = c.standin_or_skip(
        "a_failing_server_is_retried_with_backoff_until_the_object_goes_and_conflicts_give_up",
        "needs the stand-in's failure switch",
    ) else {
        return;
    };
    let defined = Defined::new(&c).await;
    let p = defined.policy(&c, "flaky").await;
    let r = reporter(c.client(), &defined, open());
    let patches = |name: &str| {
        requests_for(&standin.requests(), "rotationpolicies/status", name)
            .filter(|q| q.verb == "patch")
            .count()
    };

    // Every status patch answers 500: retried under backoff, not in a loop.
    standin.fail("patch", "rotationpolicies/status", 500);
    r.scheduled(&p, at(5));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let tried = patches("flaky");
    // 50 ms doubling to 400 ms (from the upper half of each step) fits at most ~1.5 s / 25 ms
    // attempts even without the doubling; a loop would have sent thousands.
    assert!((3..=60).contains(&tried), "{tried} attempts in 1.5 s");
    assert!(count(&r.metrics().writes, "server-error") >= 3);

    // The object goes meanwhile; the server recovers: the next retry finds it gone and stops.
    defined
        .policies
        .delete("flaky", &DeleteParams::default())
        .await
        .unwrap();
    standin.clear_failures();
    r.settled().await;
    assert_eq!(count(&r.metrics().writes, "not-found"), 1);
    let settled = patches("flaky");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(patches("flaky"), settled);

    // Conflicts: read again and retried a bounded number of times, then left for the next
    // fact.
    let q = defined.policy(&c, "contested").await;
    standin.fail("patch", "rotationpolicies/status", 409);
    r.scheduled(&q, at(7));
    r.settled().await;
    let expected = usize::try_from(MAX_CONFLICTS).unwrap() + 1;
    assert_eq!(patches("contested"), expected);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(patches("contested"), expected);
    standin.clear_failures();
    // The next fact writes.
    r.scheduled(&q, at(8));
    r.settled().await;
    assert_eq!(
        defined.status("contested").await.unwrap().next_rotation,
        Some(at(8))
    );
    defined.remove().await;
}

/// `keyturn_status_events_total{reason, outcome}`.
fn events_counted(r: &StatusReporter, reason: &str, outcome: &str) -> u64 {
    r.metrics()
        .events
        .get_or_create(&EventOutcome {
            reason: reason.to_owned(),
            outcome: outcome.to_owned(),
        })
        .get()
}

#[tokio::test]
async fn an_unanswered_event_is_sent_again_under_backoff_and_a_refused_one_is_not() {
    let c = cluster().await;
    let Some(standin) = c.standin_or_skip(
        "an_unanswered_event_is_sent_again_under_backoff_and_a_refused_one_is_not",
        "needs the stand-in's failure switch",
    ) else {
        return;
    };
    let defined = Defined::new(&c).await;
    let p = defined.policy(&c, "noisy").await;
    let r = reporter(c.client(), &defined, open());
    let namespace = c.namespace().to_owned();
    let creates = || {
        standin
            .requests()
            .iter()
            .filter(|q| q.verb == "create" && q.resource == "events")
            .filter(|q| q.namespace.as_deref() == Some(namespace.as_str()))
            .count()
    };

    // Every Event create answers 500 (the test's client would itself retry a 503, the
    // daemon's does not): the first is sent again under the policy's backoff (not in a loop),
    // and the one behind it waits with it.
    standin.fail("create", "events", 500);
    r.distributed(&p, "1 Secret: noisy");
    r.restart_requested(&p, "Deployment web");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Counted before the requests, as one may be answered and not yet counted.
    let retried = usize::try_from(events_counted(&r, "Distributed", "retry")).unwrap();
    let tried = creates();
    // Retries from 50 ms doubling to 400 ms: a few dozen at most in 1.5 s, where a loop
    // would send thousands; and only the first Event was tried.
    assert!((3..=60).contains(&tried), "{tried} Event creates in 1.5 s");
    assert!(
        retried <= tried && tried <= retried + 1,
        "{tried} creates, {retried} counted for retry"
    );
    assert_eq!(events_counted(&r, "RestartRequested", "retry"), 0);
    assert!(events_about(&c, "noisy").await.is_empty());

    // Answered again: both are recorded, once each and in order.
    standin.clear_failures();
    r.settled().await;
    let reasons: Vec<String> = events_about(&c, "noisy")
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert_eq!(reasons, ["Distributed", "RestartRequested"]);
    assert_eq!(events_counted(&r, "Distributed", "ok"), 1);
    assert_eq!(events_counted(&r, "RestartRequested", "ok"), 1);
    assert_eq!(events_counted(&r, "Distributed", "failed"), 0);

    // Refused (403): counted and logged once, never sent again.
    standin.fail("create", "events", 403);
    let before = creates();
    r.break_glass(&p, "reveal");
    r.settled().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(creates(), before + 1);
    assert_eq!(events_counted(&r, "BreakGlass", "failed"), 1);
    assert_eq!(events_counted(&r, "BreakGlass", "retry"), 0);
    standin.clear_failures();
    defined.remove().await;
}

#[tokio::test]
async fn a_planted_credential_reaches_no_status_event_log_or_metric() {
    let c = cluster().await;
    let defined = Defined::new(&c).await;
    // The credential the policy rotates, in the Secret it distributes to.
    let value = canary("status-password");
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "db-creds"},
        "stringData": {"password": value},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let p = defined.policy(&c, "db").await;

    // The reporter's own credential: a service-account token with exactly the RBAC the
    // module documents (on the stand-in this switches RBAC enforcement on).
    let role = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: keyturn-status}}\nrules:\n- apiGroups: ['{group}']\n  resources: [rotationpolicies]\n  verbs: [get]\n- apiGroups: ['{group}']\n  resources: [rotationpolicies/status]\n  verbs: [patch]\n- apiGroups: [events.k8s.io]\n  resources: [events]\n  verbs: [create, patch]\n",
        group = defined.group
    );
    c.client_with_role_as(&role, "keyturn-status")
        .await
        .unwrap();
    let token = c
        .service_account_token(c.namespace(), "keyturn-status")
        .await
        .unwrap();
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(&c.kubeconfig_for_token("keyturn-status", &token))
            .unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let client = kube::Client::try_from(config).unwrap();

    let logs = LogCapture::default();
    let _guard = logs.install("trace");
    let metrics = StatusMetrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let (r, _task) = StatusReporter::spawn(client, settings(&defined), open(), metrics);

    r.scheduled(&p, at(3));
    r.rotation_started(&p, "r-1");
    r.rotated(&p, "r-1", at(0), at(0), Some(at(24)));
    r.distributed(&p, "1 Secret: db-creds (key password)");
    r.restart_requested(&p, "Deployment api");
    r.failed(
        &p,
        Some("r-2"),
        1,
        "postgres refused login for role app",
        Some(at(1)),
    );
    r.break_glass(&p, "reveal");
    // A policy the reporter may not read (another namespace): its refusal is logged.
    r.scheduled(&PolicyRef::new("kube-system", "elsewhere", 1), at(3));
    r.settled().await;
    assert_eq!(count(&r.metrics().writes, "ok"), 1);
    assert_eq!(count(&r.metrics().reads, "forbidden"), 1);

    let status = serde_json::to_string(&defined.policies.get("db").await.unwrap().data).unwrap();
    assert!(status.contains("postgres refused login"), "{status}");
    let events: Api<CoreEvent> = Api::namespaced(c.client(), c.namespace());
    let events =
        serde_json::to_string(&events.list(&ListParams::default()).await.unwrap()).unwrap();
    for reason in [
        "Rotated",
        "Distributed",
        "RestartRequested",
        "RotationFailed",
        "BreakGlass",
    ] {
        assert!(events.contains(reason), "{reason}: {events}");
    }
    let logged = logs.text();
    assert!(logged.contains("403 Forbidden"), "{logged}");
    let mut exposition = String::new();
    prometheus_client::encoding::text::encode(&mut exposition, &registry).unwrap();
    for (place, text) in [
        ("the status", &status),
        ("the Events", &events),
        ("the logs", &logged),
        ("the metrics", &exposition),
    ] {
        assert_absent(place, text.as_bytes(), &[value.as_str(), token.as_str()]);
    }
    defined.remove().await;
}

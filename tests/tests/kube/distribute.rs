//! Distribution to Kubernetes: Secret writes and rollout restarts through `KubernetesSink`,
//! against `TestCluster` (the stand-in, or a real cluster with `KEYTURN_TEST_KUBECONFIG`).
//!
//! Assertions that need the stand-in's request log (ordering, "no request was made", a 409
//! was answered) are made only on the stand-in; everything else runs on both.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use keyturn_agent::distribute::restart::combined_version;
use keyturn_agent::distribute::{
    Delivery, DeliveryReport, DistributeError, KubernetesSink, RestartOutcome, SecretOutcome, Sink,
    deliver_all,
};
use keyturn_agent::policy::{Distribution, Workload};
use keyturn_core::SecretValue;
use keyturn_core::vault::SecretData;
use keyturn_tests::canary::{LogCapture, assert_absent, canary};
use keyturn_tests::kube::{RecordedRequest, TestCluster};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

async fn cluster() -> TestCluster {
    TestCluster::start()
        .await
        .expect("a Kubernetes API for the test")
}

fn distribution(
    c: &TestCluster,
    secret: &str,
    keys: &[(&str, &str)],
    restart: &[(&str, &str)],
) -> Distribution {
    Distribution {
        namespace: c.namespace().to_owned(),
        secret: secret.to_owned(),
        keys: keys
            .iter()
            .map(|(k, f)| ((*k).to_owned(), (*f).to_owned()))
            .collect(),
        secret_type: None,
        restart: restart
            .iter()
            .map(|(kind, name)| Workload {
                kind: (*kind).to_owned(),
                name: (*name).to_owned(),
            })
            .collect(),
    }
}

fn login(username: &str, password: &str) -> SecretData {
    let mut d = SecretData::new();
    d.insert("username", SecretValue::from_str_copy(username));
    d.insert("password", SecretValue::from_str_copy(password));
    d
}

fn value(v: &str) -> SecretData {
    let mut d = SecretData::new();
    d.insert("value", SecretValue::from_str_copy(v));
    d
}

fn delivery<'a>(
    policy: &'a str,
    d: &'a Distribution,
    credential: &'a SecretData,
    version: &'a str,
) -> Delivery<'a> {
    Delivery {
        policy,
        distribution: d,
        credential,
        version,
    }
}

/// A sink that restarts at once: most tests are not about the debounce.
fn sink(client: kube::Client) -> KubernetesSink {
    KubernetesSink::with_restart_window(client, Duration::ZERO)
}

fn secrets(c: &TestCluster) -> Api<Secret> {
    Api::namespaced(c.client(), c.namespace())
}

fn deployments(c: &TestCluster) -> Api<Deployment> {
    Api::namespaced(c.client(), c.namespace())
}

fn data_of(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    s.data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

fn bytes(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
        .collect()
}

fn workload_json(kind: &str, name: &str, paused: bool) -> Value {
    let mut spec = json!({
        // No pods on a real cluster either.
        "replicas": 0,
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}
        }
    });
    if paused {
        spec["paused"] = json!(true);
    }
    if kind == "StatefulSet" {
        spec["serviceName"] = json!(name);
    }
    json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})
}

async fn create_deployment(c: &TestCluster, name: &str, paused: bool) {
    let d: Deployment = serde_json::from_value(workload_json("Deployment", name, paused)).unwrap();
    deployments(c)
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
}

async fn create_statefulset(c: &TestCluster, name: &str) {
    let s: StatefulSet = serde_json::from_value(workload_json("StatefulSet", name, false)).unwrap();
    Api::<StatefulSet>::namespaced(c.client(), c.namespace())
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
}

fn template_annotations(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default()
}

/// The stand-in's log of requests, or `None` on a real cluster.
fn log(c: &TestCluster) -> Option<Vec<RecordedRequest>> {
    c.standin().map(keyturn_tests::kube::KubeStandin::requests)
}

fn writes(requests: &[RecordedRequest], resource: &str) -> Vec<RecordedRequest> {
    requests
        .iter()
        .filter(|r| {
            r.resource == resource && matches!(r.verb.as_str(), "create" | "update" | "patch")
        })
        .cloned()
        .collect()
}

// ---- Secrets ----

#[tokio::test]
async fn an_absent_secret_is_created_with_the_owned_keys_its_type_and_keyturn_labels() {
    let c = cluster().await;
    let s = sink(c.client());
    let plain = distribution(
        &c,
        "orders-db",
        &[("DB_USER", "username"), ("DB_PASS", "password")],
        &[],
    );
    let cred = login("orders_a", "pw-1");
    let report = s
        .deliver(&delivery("orders-db", &plain, &cred, "v1"))
        .await
        .unwrap();
    assert_eq!(report.secret.outcome, SecretOutcome::Created);
    assert!(report.restarts.is_empty());

    let created = secrets(&c).get("orders-db").await.unwrap();
    assert_eq!(
        data_of(&created),
        bytes(&[("DB_PASS", "pw-1"), ("DB_USER", "orders_a")])
    );
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
    let labels = created.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("keyturn")
    );
    assert_eq!(
        labels.get("keyturn.dev/policy").map(String::as_str),
        Some("orders-db")
    );
    assert_eq!(
        report.secret.resource_version,
        created.metadata.resource_version
    );

    let mut typed = distribution(
        &c,
        "orders-db-basic",
        &[("username", "username"), ("password", "password")],
        &[],
    );
    typed.secret_type = Some("kubernetes.io/basic-auth".into());
    s.deliver(&delivery("orders-db", &typed, &cred, "v1"))
        .await
        .unwrap();
    let created = secrets(&c).get("orders-db-basic").await.unwrap();
    assert_eq!(created.type_.as_deref(), Some("kubernetes.io/basic-auth"));
}

#[tokio::test]
async fn only_owned_keys_are_patched_and_other_keys_labels_and_managers_stay_intact() {
    let c = cluster().await;
    // As Helm would leave it: its own keys, a placeholder for the password, its labels.
    let helm = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "app", "labels": {"app.kubernetes.io/managed-by": "Helm"}},
        // `data`, not `stringData`: how a real server records ownership of applied
        // `stringData` is not something this test should depend on.
        "data": {
            "password": STANDARD.encode("placeholder"),
            "ca.crt": STANDARD.encode("CA"),
            "url": STANDARD.encode("postgres://db"),
        }
    });
    secrets(&c)
        .patch("app", &PatchParams::apply("helm"), &Patch::Apply(&helm))
        .await
        .unwrap();
    // And a person added a key of their own with another manager.
    let extra = json!({"data": {"extra": STANDARD.encode("mine")}});
    let pp = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..PatchParams::default()
    };
    secrets(&c)
        .patch("app", &pp, &Patch::Merge(&extra))
        .await
        .unwrap();

    let d = distribution(
        &c,
        "app",
        &[("password", "password"), ("username", "username")],
        &[],
    );
    let cred = login("app_a", "fresh-password");
    let report = sink(c.client())
        .deliver(&delivery("app-db", &d, &cred, "v1"))
        .await
        .unwrap();
    assert_eq!(
        report.secret.outcome,
        SecretOutcome::Updated {
            keys: vec!["password".into(), "username".into()]
        }
    );

    let after = secrets(&c).get("app").await.unwrap();
    assert_eq!(
        data_of(&after),
        bytes(&[
            ("ca.crt", "CA"),
            ("extra", "mine"),
            ("password", "fresh-password"),
            ("url", "postgres://db"),
            ("username", "app_a"),
        ])
    );
    let labels = after.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("Helm"),
        "not taken over"
    );
    assert!(
        !labels.contains_key("keyturn.dev/policy"),
        "an existing Secret's labels are not ours"
    );

    let owners = |key: &str| -> Vec<String> {
        after
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter(|e| {
                e.fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.pointer(&format!("/f:data/f:{key}")).is_some())
            })
            .filter_map(|e| e.manager.clone())
            .collect()
    };
    assert_eq!(owners("ca.crt"), ["helm"]);
    assert_eq!(owners("url"), ["helm"]);
    assert_eq!(owners("extra"), ["kubectl-edit"]);
    assert_eq!(
        owners("password"),
        ["keyturn"],
        "the policy's key is keyturn's now"
    );
    assert_eq!(owners("username"), ["keyturn"]);
}

#[tokio::test]
async fn delivering_the_same_version_twice_writes_and_restarts_nothing_the_second_time() {
    let c = cluster().await;
    create_deployment(&c, "web", false).await;
    let s = sink(c.client());
    let d = distribution(
        &c,
        "web-db",
        &[("password", "password")],
        &[("Deployment", "web")],
    );
    let cred = login("web_a", "pw-1");

    let first = s
        .deliver(&delivery("web-db", &d, &cred, "hmac-v1"))
        .await
        .unwrap();
    assert!(matches!(
        first.restarts[0].outcome,
        RestartOutcome::Restarted { .. }
    ));
    let secret_rv = secrets(&c)
        .get("web-db")
        .await
        .unwrap()
        .metadata
        .resource_version;
    let deployment = deployments(&c).get("web").await.unwrap();
    let before = log(&c).map(|l| l.len());

    let second = s
        .deliver(&delivery("web-db", &d, &cred, "hmac-v1"))
        .await
        .unwrap();
    assert_eq!(second.secret.outcome, SecretOutcome::Unchanged);
    assert_eq!(
        second.restarts[0].outcome,
        RestartOutcome::AlreadyCurrent {
            version: "hmac-v1".into()
        }
    );
    assert_eq!(
        secrets(&c)
            .get("web-db")
            .await
            .unwrap()
            .metadata
            .resource_version,
        secret_rv
    );
    // Generation, not resourceVersion: on a real cluster the controller writes status.
    let again = deployments(&c).get("web").await.unwrap();
    assert_eq!(
        again.metadata.generation, deployment.metadata.generation,
        "no second rollout"
    );

    if let (Some(log), Some(before)) = (log(&c), before) {
        let later = &log[before..];
        assert!(writes(later, "secrets").is_empty(), "{later:?}");
        assert!(writes(later, "deployments").is_empty(), "{later:?}");
    }
}

#[tokio::test]
async fn an_empty_value_is_refused_and_the_secret_and_workloads_are_left_unchanged() {
    let c = cluster().await;
    create_deployment(&c, "web", false).await;
    let s = sink(c.client());
    let d = distribution(
        &c,
        "web-db",
        &[("password", "password"), ("username", "username")],
        &[("Deployment", "web")],
    );
    s.deliver(&delivery("web-db", &d, &login("web_a", "good"), "v1"))
        .await
        .unwrap();
    let secret = secrets(&c).get("web-db").await.unwrap();
    let deployment = deployments(&c).get("web").await.unwrap();
    let before = log(&c).map(|l| l.len());

    let err = s
        .deliver(&delivery("web-db", &d, &login("web_a", ""), "v2"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DistributeError::EmptyValue { key, .. } if key == "password"),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert!(
        err.to_string()
            .contains("refusing to write an empty value for key \"password\""),
        "{err}"
    );

    let after = secrets(&c).get("web-db").await.unwrap();
    assert_eq!(
        data_of(&after),
        bytes(&[("password", "good"), ("username", "web_a")])
    );
    assert_eq!(
        after.metadata.resource_version,
        secret.metadata.resource_version
    );
    let d_after = deployments(&c).get("web").await.unwrap();
    assert_eq!(d_after.metadata.generation, deployment.metadata.generation);
    if let (Some(log), Some(before)) = (log(&c), before) {
        assert_eq!(
            log.len(),
            before + 2,
            "only this test's two reads: {:?}",
            &log[before..]
        );
    }
}

#[tokio::test]
async fn concurrent_writers_to_one_secret_conflict_then_retry_and_converge() {
    let c = cluster().await;
    let seed = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shared"}, "stringData": {"seed": "s"}});
    secrets(&c)
        .create(
            &PostParams::default(),
            &serde_json::from_value(seed).unwrap(),
        )
        .await
        .unwrap();

    // Six policies, one key each, all read the same resourceVersion and race to write.
    let s = sink(c.client());
    let keys: Vec<String> = (0..6).map(|i| format!("key-{i}")).collect();
    let mut racers = tokio::task::JoinSet::new();
    for k in &keys {
        let (s, d, cred) = (
            s.clone(),
            distribution(&c, "shared", &[(k, "value")], &[]),
            value(&format!("value-of-{k}")),
        );
        let policy = format!("policy-{k}");
        racers.spawn(async move { s.deliver(&delivery(&policy, &d, &cred, "v1")).await });
    }
    for r in racers.join_all().await {
        assert!(
            matches!(&r, Ok(report) if matches!(report.secret.outcome, SecretOutcome::Updated { .. })),
            "{r:?}"
        );
    }

    let mut expected = bytes(&[("seed", "s")]);
    for k in &keys {
        expected.insert(k.clone(), format!("value-of-{k}").into_bytes());
    }
    assert_eq!(
        data_of(&secrets(&c).get("shared").await.unwrap()),
        expected,
        "every writer's key landed, none lost"
    );
    if let Some(log) = log(&c) {
        let patches = writes(&log, "secrets");
        assert!(
            patches.iter().any(|r| r.code == 409),
            "the race produced at least one 409: {patches:?}"
        );
        assert_eq!(
            patches.iter().filter(|r| r.code == 200).count(),
            6,
            "one successful write per policy"
        );
    }
}

// ---- Restarts ----

#[tokio::test]
async fn the_restart_annotates_the_pod_templates_only_after_the_secret_holds_the_new_value() {
    let c = cluster().await;
    create_deployment(&c, "web", false).await;
    create_statefulset(&c, "worker").await;
    let s = sink(c.client());
    let d = distribution(
        &c,
        "web-db",
        &[("password", "password")],
        &[("Deployment", "web"), ("StatefulSet", "worker")],
    );

    for (round, password) in ["pw-1", "pw-2"].into_iter().enumerate() {
        let version = format!("hmac-{round}");
        let before = log(&c).map(|l| l.len());
        let report = s
            .deliver(&delivery("web-db", &d, &login("web_a", password), &version))
            .await
            .unwrap();
        assert_eq!(report.restarts.len(), 2);
        for r in &report.restarts {
            let RestartOutcome::Restarted {
                restarted_at,
                version: written,
            } = &r.outcome
            else {
                panic!("expected a restart: {r:?}");
            };
            assert_eq!(written, &version);
            chrono::DateTime::parse_from_rfc3339(restarted_at).expect("restartedAt is RFC 3339");
            assert_eq!(r.policies, ["web-db"]);
        }

        let web = deployments(&c).get("web").await.unwrap();
        assert_eq!(
            web.metadata.generation,
            Some(2 + round as i64),
            "one rollout per new version"
        );
        let annotations = template_annotations(&web);
        assert_eq!(annotations.get("keyturn.dev/version"), Some(&version));
        assert!(annotations.contains_key("keyturn.dev/restartedAt"));
        let versions: BTreeMap<String, String> =
            serde_json::from_str(&annotations["keyturn.dev/versions"]).unwrap();
        assert_eq!(
            versions,
            BTreeMap::from([("web-db".to_owned(), version.clone())])
        );
        let worker = Api::<StatefulSet>::namespaced(c.client(), c.namespace())
            .get("worker")
            .await
            .unwrap();
        let worker_annotations = worker
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .unwrap_or_default();
        assert_eq!(
            worker_annotations.get("keyturn.dev/version"),
            Some(&version)
        );
        assert_eq!(
            data_of(&secrets(&c).get("web-db").await.unwrap())["password"],
            password.as_bytes()
        );

        if let (Some(log), Some(before)) = (log(&c), before) {
            let this_round = &log[before..];
            let last_secret_write = this_round
                .iter()
                .rposition(|r| {
                    r.resource == "secrets"
                        && matches!(r.verb.as_str(), "create" | "patch")
                        && r.code < 300
                })
                .expect("the Secret was written");
            let first_restart = this_round
                .iter()
                .position(|r| {
                    matches!(r.resource.as_str(), "deployments" | "statefulsets")
                        && r.verb == "patch"
                })
                .expect("the workloads were patched");
            assert!(
                last_secret_write < first_restart,
                "restart before the Secret write: {this_round:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_paused_deployment_is_skipped_with_a_warning_and_reported() {
    let capture = LogCapture::default();
    let _guard = capture.install("trace");
    let c = cluster().await;
    create_deployment(&c, "paused-web", true).await;
    create_deployment(&c, "web", false).await;
    let d = distribution(
        &c,
        "web-db",
        &[("password", "password")],
        &[("Deployment", "paused-web"), ("Deployment", "web")],
    );

    let report = sink(c.client())
        .deliver(&delivery("web-db", &d, &login("u", "pw"), "v1"))
        .await
        .unwrap();
    assert_eq!(report.restarts[0].workload.name, "paused-web");
    assert_eq!(report.restarts[0].outcome, RestartOutcome::SkippedPaused);
    assert!(
        matches!(report.restarts[1].outcome, RestartOutcome::Restarted { .. }),
        "the other still rolls"
    );

    let paused = deployments(&c).get("paused-web").await.unwrap();
    assert_eq!(paused.metadata.generation, Some(1), "not touched");
    assert!(!template_annotations(&paused).contains_key("keyturn.dev/version"));
    let logs = capture.text();
    let warning = logs.lines().find(|l| {
        let l: serde_json::Value = serde_json::from_str(l).unwrap();
        l["level"] == "warn"
            && l["severity"] == "WARNING"
            && l.to_string().contains("paused-web")
            && l["msg"].as_str().is_some_and(|m| m.contains("is paused"))
    });
    assert!(warning.is_some(), "a warning names the paused Deployment");
}

#[tokio::test]
async fn three_policies_feeding_one_deployment_within_the_window_restart_it_once() {
    let c = cluster().await;
    create_deployment(&c, "web", false).await;
    // The default window (2 s): the three deliveries below land well within it.
    let s = KubernetesSink::new(c.client());
    let names = ["db", "cache", "api-token"];
    let dists: Vec<Distribution> = names
        .iter()
        .map(|n| distribution(&c, n, &[("value", "value")], &[("Deployment", "web")]))
        .collect();
    let creds: Vec<SecretData> = names
        .iter()
        .map(|n| value(&format!("{n}-secret")))
        .collect();
    let versions: Vec<String> = names.iter().map(|n| format!("hmac-of-{n}")).collect();
    let mut policies_at_once = tokio::task::JoinSet::new();
    for i in 0..3 {
        let (s, d, cred, policy, version) = (
            s.clone(),
            dists[i].clone(),
            creds[i].clone(),
            names[i],
            versions[i].clone(),
        );
        policies_at_once
            .spawn(async move { s.deliver(&delivery(policy, &d, &cred, &version)).await });
    }
    let reports: Vec<DeliveryReport> = policies_at_once
        .join_all()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    let expected_versions: BTreeMap<String, String> = names
        .iter()
        .zip(&versions)
        .map(|(n, v)| ((*n).to_owned(), v.clone()))
        .collect();
    let combined = combined_version(&expected_versions);
    let first = &reports[0].restarts[0];
    for r in &reports {
        assert_eq!(
            &r.restarts[0], first,
            "every policy got the same, single restart"
        );
    }
    let RestartOutcome::Restarted { version, .. } = &first.outcome else {
        panic!("{first:?}")
    };
    assert_eq!(version, &combined);
    let mut policies = names.map(str::to_owned).to_vec();
    policies.sort();
    assert_eq!(first.policies, policies);

    let web = deployments(&c).get("web").await.unwrap();
    assert_eq!(
        web.metadata.generation,
        Some(2),
        "rolled once, not three times"
    );
    let annotations = template_annotations(&web);
    assert_eq!(annotations.get("keyturn.dev/version"), Some(&combined));
    let recorded: BTreeMap<String, String> =
        serde_json::from_str(&annotations["keyturn.dev/versions"]).unwrap();
    assert_eq!(recorded, expected_versions);
    if let Some(log) = log(&c) {
        assert_eq!(
            writes(&log, "deployments").len(),
            2,
            "the create and one restart patch: {log:?}"
        );
    }
}

#[tokio::test]
async fn a_policy_with_two_secrets_feeding_one_deployment_writes_both_then_restarts_it_once() {
    let c = cluster().await;
    create_deployment(&c, "web", false).await;
    let s = sink(c.client());
    let rw = distribution(
        &c,
        "web-db",
        &[("password", "password")],
        &[("Deployment", "web")],
    );
    let env = distribution(
        &c,
        "web-env",
        &[("DB_PASSWORD", "password")],
        &[("Deployment", "web")],
    );
    let cred = login("web_a", "pw-1");
    let before = log(&c).map(|l| l.len());

    let reports = deliver_all(
        &s,
        &[
            delivery("web-db", &rw, &cred, "v1"),
            delivery("web-db", &env, &cred, "v1"),
        ],
        || (),
    )
    .await
    .unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!(
        reports[0].restarts, reports[1].restarts,
        "one restart served both"
    );
    assert!(matches!(
        reports[0].restarts[0].outcome,
        RestartOutcome::Restarted { .. }
    ));
    assert_eq!(
        deployments(&c)
            .get("web")
            .await
            .unwrap()
            .metadata
            .generation,
        Some(2)
    );
    for name in ["web-db", "web-env"] {
        assert!(
            data_of(&secrets(&c).get(name).await.unwrap())
                .values()
                .all(|v| v == b"pw-1")
        );
    }
    if let (Some(log), Some(before)) = (log(&c), before) {
        let this = &log[before..];
        let secret_writes: Vec<usize> = (0..this.len())
            .filter(|&i| this[i].resource == "secrets" && this[i].verb == "create")
            .collect();
        let restarts: Vec<usize> = (0..this.len())
            .filter(|&i| this[i].resource == "deployments" && this[i].verb == "patch")
            .collect();
        assert_eq!((secret_writes.len(), restarts.len()), (2, 1), "{this:?}");
        assert!(
            secret_writes.iter().all(|&w| w < restarts[0]),
            "both Secrets before the restart: {this:?}"
        );
    }
}

// ---- Denials ----

#[tokio::test]
async fn a_denied_patch_reports_a_clear_403_and_writes_and_restarts_nothing() {
    let c = cluster().await;
    create_deployment(&c, "web", false).await;
    let d = distribution(
        &c,
        "web-db",
        &[("password", "password")],
        &[("Deployment", "web")],
    );
    sink(c.client())
        .write(&delivery("web-db", &d, &login("u", "old"), "v1"))
        .await
        .unwrap();
    let secret = secrets(&c).get("web-db").await.unwrap();

    let restricted = c.client_denied(&[("patch", "secrets")]).await.unwrap();
    let err = sink(restricted)
        .deliver(&delivery("web-db", &d, &login("u", "new"), "v2"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(403));
    assert!(!err.is_retryable(), "a person has to grant it");
    let expected = format!(
        "secrets \"web-db\" in namespace \"{}\": forbidden to patch — grant it with `keyturn policy rbac`",
        c.namespace()
    );
    assert!(err.to_string().starts_with(&expected), "{err}");
    assert!(matches!(&err, DistributeError::Forbidden { verb, .. } if verb == "patch"));

    let after = secrets(&c).get("web-db").await.unwrap();
    assert_eq!(data_of(&after), bytes(&[("password", "old")]));
    assert_eq!(
        after.metadata.resource_version,
        secret.metadata.resource_version
    );
    assert_eq!(
        deployments(&c)
            .get("web")
            .await
            .unwrap()
            .metadata
            .generation,
        Some(1),
        "no restart"
    );
}

#[tokio::test]
async fn an_absent_secret_the_agent_may_not_create_gives_a_403_that_says_to_pre_create_it() {
    let c = cluster().await;
    let restricted = c.client_denied(&[("create", "secrets")]).await.unwrap();
    let d = distribution(&c, "not-yet", &[("password", "password")], &[]);
    let err = sink(restricted)
        .deliver(&delivery("p", &d, &login("u", "pw"), "v1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(403));
    let text = err.to_string();
    assert!(
        text.contains("forbidden to create — grant it with `keyturn policy rbac`"),
        "{text}"
    );
    assert!(text.contains("pre-create the Secret"), "{text}");
    assert!(secrets(&c).get_opt("not-yet").await.unwrap().is_none());
}

// ---- Canaries ----

#[tokio::test]
async fn canary_values_appear_only_in_the_target_secrets_data() {
    let capture = LogCapture::default();
    let _guard = capture.install("trace");
    let c = cluster().await;
    create_deployment(&c, "web", false).await;
    let neighbour = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "neighbour"}, "stringData": {"x": "y"}});
    secrets(&c)
        .create(
            &PostParams::default(),
            &serde_json::from_value(neighbour).unwrap(),
        )
        .await
        .unwrap();

    let (first, second, denied, user) = (
        canary("first"),
        canary("second"),
        canary("denied"),
        canary("user"),
    );
    let s = sink(c.client());
    let d = distribution(
        &c,
        "target",
        &[("password", "password"), ("username", "username")],
        &[("Deployment", "web")],
    );
    let mut seen = String::new();
    let r1 = s
        .deliver(&delivery("canary", &d, &login(&user, &first), "v1"))
        .await
        .unwrap();
    let r2 = s
        .deliver(&delivery("canary", &d, &login(&user, &second), "v2"))
        .await
        .unwrap();
    seen.push_str(&format!("{r1:?}\n{r2:?}\n"));
    let restricted = c.client_denied(&[("patch", "secrets")]).await.unwrap();
    let errors = [
        sink(restricted)
            .deliver(&delivery("canary", &d, &login(&user, &denied), "v3"))
            .await
            .unwrap_err(),
        s.deliver(&delivery("canary", &d, &login("", &denied), "v3"))
            .await
            .unwrap_err(),
    ];
    for e in &errors {
        seen.push_str(&format!("{e}\n{e:?}\n"));
    }
    seen.push_str(&format!("{s:?}\n{d:?}\n"));

    let target = secrets(&c).get("target").await.unwrap();
    assert_eq!(
        data_of(&target),
        bytes(&[("password", &second), ("username", &user)]),
        "the target holds them"
    );

    let canaries = [
        first.as_str(),
        second.as_str(),
        denied.as_str(),
        user.as_str(),
    ];
    let encoded: Vec<String> = canaries.iter().map(|v| STANDARD.encode(v)).collect();
    let mut needles: Vec<&str> = canaries.to_vec();
    needles.extend(encoded.iter().map(String::as_str));

    // Everything in the namespace except the target's data.
    let mut objects = Vec::new();
    for mut secret in secrets(&c).list(&ListParams::default()).await.unwrap() {
        if secret.metadata.name.as_deref() == Some("target") {
            secret.data = None;
        }
        objects.extend(serde_json::to_vec(&secret).unwrap());
    }
    for deployment in deployments(&c).list(&ListParams::default()).await.unwrap() {
        objects.extend(serde_json::to_vec(&deployment).unwrap());
    }
    assert_absent(
        "other objects, labels, annotations and managedFields",
        &objects,
        &needles,
    );
    assert_absent("reports and errors", seen.as_bytes(), &needles);
    let logs = capture.text();
    assert!(logs.contains("updated the Secret"), "the capture works");
    assert_absent("logs", logs.as_bytes(), &needles);
}

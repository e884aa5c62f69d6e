//! The Kubernetes API stand-in, driven by the real kube-rs client.
//!
//! Every test that does not need a stand-in-only switch goes through `TestCluster`, so the
//! same assertions run against a real cluster when `KEYTURN_TEST_KUBECONFIG` is set: that is
//! how the stand-in's fidelity is checked. The rest (401s, the global deny switch, the RBAC
//! enforcement switch, expired tokens, JWKS, the binary) use a `KubeStandin` of their own.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{SelfSubjectAccessReview, SubjectAccessReviewStatus};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, Role, RoleBinding};
use keyturn_tests::kube::{KubeStandin, TestCluster};
use keyturn_tests::openbao::OpenBao;
use keyturn_tests::process::eventually;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::Status;
use serde_json::{Value, json};

async fn cluster() -> TestCluster {
    TestCluster::start()
        .await
        .expect("a Kubernetes API for the test")
}

fn status_of(result: Result<impl std::fmt::Debug, kube::Error>) -> Box<Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected the API to answer with a Status error, got {other:?}"),
    }
}

fn secret(name: &str, data: &[(&str, &[u8])]) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

fn data_of(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    s.data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

/// An HTTPS client that trusts only `standin`'s CA, for requests kube-rs does not make
/// (control endpoints, OpenID discovery, unauthenticated requests).
fn https(standin: &KubeStandin) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(standin.ca_pem().as_bytes()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap()
}

/// The DER of the one certificate in `pem`.
fn pem_der(pem: &[u8]) -> Vec<u8> {
    let b64: String = std::str::from_utf8(pem)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

fn rv(meta: &kube::api::ObjectMeta) -> String {
    meta.resource_version.clone().expect("a resourceVersion")
}

/// A request kube's typed API cannot make (e.g. `data` that is not base64), still sent
/// through kube::Client so that it authenticates the same way on a real cluster.
async fn raw(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: &Value,
) -> Result<Value, kube::Error> {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(serde_json::to_vec(body).unwrap())
        .unwrap();
    client.request::<Value>(request).await
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            // No pods on a real cluster either.
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}
            }
        }
    }))
    .unwrap()
}

fn restart_patch(at: &str) -> Value {
    json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": at}}}}})
}

// ---- Secrets: the happy paths ----

#[tokio::test]
async fn a_secret_round_trips_through_kube_rs_with_string_data_folded_into_data() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let mut s = secret("db-creds", &[("username", b"app")]);
    s.string_data = Some([("password".to_owned(), "hunter2".to_owned())].into());
    let created = secrets.create(&PostParams::default(), &s).await.unwrap();

    assert!(created.string_data.is_none(), "stringData is never stored");
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    let fetched = secrets.get("db-creds").await.unwrap();
    assert_eq!(rv(&fetched.metadata), rv(&created.metadata));
    assert_eq!(
        data_of(&fetched),
        [
            ("password".to_owned(), b"hunter2".to_vec()),
            ("username".to_owned(), b"app".to_vec())
        ]
        .into()
    );
}

#[tokio::test]
async fn listing_secrets_carries_a_list_resource_version_and_honours_label_selectors() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    for (name, team) in [("a", "red"), ("b", "blue"), ("c", "red")] {
        let mut s = secret(name, &[("k", b"v")]);
        s.metadata.labels = Some([("team".to_owned(), team.to_owned())].into());
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    let red = secrets
        .list(&ListParams::default().labels("team=red"))
        .await
        .unwrap();
    let names: Vec<_> = red
        .items
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    assert_eq!(names, ["a", "c"]);
    let list_rv: u64 = red.metadata.resource_version.unwrap().parse().unwrap();
    let newest: u64 = red
        .items
        .iter()
        .map(|s| rv(&s.metadata).parse::<u64>().unwrap())
        .max()
        .unwrap();
    assert!(list_rv >= newest);
}

#[tokio::test]
async fn deleting_a_secret_answers_success_and_then_it_is_not_found() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    secrets
        .create(&PostParams::default(), &secret("gone", &[("k", b"v")]))
        .await
        .unwrap();
    secrets
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(status_of(secrets.get("gone").await).code, 404);
}

#[tokio::test]
async fn json_and_strategic_merge_patches_edit_secret_data() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    secrets
        .create(
            &PostParams::default(),
            &secret("s", &[("a", b"1"), ("b", b"2")]),
        )
        .await
        .unwrap();

    let json_patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/data/a", "value": "MTE="},
        {"op": "remove", "path": "/data/b"}
    ]))
    .unwrap();
    secrets
        .patch("s", &PatchParams::default(), &Patch::<()>::Json(json_patch))
        .await
        .unwrap();
    let strategic = json!({"stringData": {"c": "3"}});
    let patched = secrets
        .patch("s", &PatchParams::default(), &Patch::Strategic(&strategic))
        .await
        .unwrap();
    assert_eq!(
        data_of(&patched),
        [
            ("a".to_owned(), b"11".to_vec()),
            ("c".to_owned(), b"3".to_vec())
        ]
        .into()
    );
}

#[tokio::test]
async fn server_side_apply_creates_a_missing_secret_and_records_its_field_manager() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let applied = secrets
        .patch(
            "fresh",
            &PatchParams::apply("keyturn"),
            &Patch::Apply(secret("fresh", &[("token", b"t")])),
        )
        .await
        .unwrap();
    assert_eq!(data_of(&applied)["token"], b"t");
    let managers: Vec<_> = applied.metadata.managed_fields.unwrap_or_default();
    let keyturn = managers
        .iter()
        .find(|m| m.manager.as_deref() == Some("keyturn"))
        .expect("keyturn manages fields");
    assert_eq!(keyturn.operation.as_deref(), Some("Apply"));
    assert!(
        keyturn.fields_v1.as_ref().unwrap().0["f:data"]
            .get("f:token")
            .is_some()
    );
}

#[tokio::test]
async fn server_side_apply_removes_keys_the_manager_stops_applying() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let pp = PatchParams::apply("keyturn");
    secrets
        .patch(
            "s",
            &pp,
            &Patch::Apply(secret("s", &[("current", b"1"), ("previous", b"0")])),
        )
        .await
        .unwrap();
    let after = secrets
        .patch("s", &pp, &Patch::Apply(secret("s", &[("current", b"2")])))
        .await
        .unwrap();
    assert_eq!(
        data_of(&after),
        [("current".to_owned(), b"2".to_vec())].into()
    );
}

// ---- Secrets: what the real server rejects ----

#[tokio::test]
async fn a_data_key_with_a_space_is_rejected_as_invalid_naming_the_field() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let status = status_of(
        secrets
            .create(&PostParams::default(), &secret("s", &[("bad key", b"v")]))
            .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(
        status.message.starts_with(
            "Secret \"s\" is invalid: data[bad key]: Invalid value: \"bad key\": a valid config key must consist of alphanumeric characters"
        ),
        "{}",
        status.message
    );
    let details = status.details.as_ref().unwrap();
    assert_eq!(
        (details.kind.as_str(), details.name.as_str()),
        ("Secret", "s")
    );
    assert_eq!(details.causes[0].field, "data[bad key]");
    assert_eq!(details.causes[0].reason, "FieldValueInvalid");
}

#[tokio::test]
async fn a_data_key_longer_than_253_characters_is_rejected_as_invalid() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let long = "k".repeat(254);
    let status = status_of(
        secrets
            .create(&PostParams::default(), &secret("s", &[(&long, b"v")]))
            .await,
    );
    assert_eq!(status.code, 422);
    assert!(
        status
            .message
            .ends_with("must be no more than 253 characters"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn non_base64_data_is_rejected_as_a_bad_request_like_the_real_server() {
    // The real server fails to decode the body before it validates, so this is a 400, not 422.
    let c = cluster().await;
    let body = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "not base64!"}});
    let path = format!("/api/v1/namespaces/{}/secrets", c.namespace());
    let status = status_of(raw(&c.client(), "POST", &path, "application/json", &body).await);
    assert_eq!((status.code, status.reason.as_str()), (400, "BadRequest"));
    assert!(
        status
            .message
            .starts_with("Secret in version \"v1\" cannot be handled as a Secret:"),
        "{}",
        status.message
    );
    assert!(
        status
            .message
            .contains("illegal base64 data at input byte 3"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn data_over_one_mebibyte_is_rejected_as_too_long_and_exactly_one_mebibyte_is_accepted() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let half = vec![b'x'; 512 * 1024];
    secrets
        .create(
            &PostParams::default(),
            &secret("full", &[("a", &half), ("b", &half)]),
        )
        .await
        .unwrap();

    let mut over = secret("big", &[("a", &half), ("b", &half)]);
    over.string_data = Some([("c".to_owned(), "!".to_owned())].into());
    let status = status_of(secrets.create(&PostParams::default(), &over).await);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        "Secret \"big\" is invalid: data: Too long: must have at most 1048576 bytes"
    );
    assert_eq!(status.details.unwrap().causes[0].field, "data");
}

#[tokio::test]
async fn an_invalid_secret_name_is_rejected_as_invalid() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let status = status_of(
        secrets
            .create(&PostParams::default(), &secret("Db_Creds", &[("k", b"v")]))
            .await,
    );
    assert_eq!(status.code, 422);
    assert_eq!(status.details.unwrap().causes[0].field, "metadata.name");
    assert!(
        status.message.contains("a lowercase RFC 1123 subdomain"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn changing_a_secret_type_is_rejected_as_immutable() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    secrets
        .create(
            &PostParams::default(),
            &secret("s", &[("tls.crt", b"c"), ("tls.key", b"k")]),
        )
        .await
        .unwrap();
    let patch = json!({"type": "kubernetes.io/tls"});
    let status = status_of(
        secrets
            .patch("s", &PatchParams::default(), &Patch::Merge(&patch))
            .await,
    );
    assert_eq!(status.code, 422);
    assert_eq!(
        status.message,
        "Secret \"s\" is invalid: type: Invalid value: \"kubernetes.io/tls\": field is immutable"
    );
}

#[tokio::test]
async fn an_immutable_secret_refuses_new_data() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let mut s = secret("frozen", &[("k", b"v")]);
    s.immutable = Some(true);
    secrets.create(&PostParams::default(), &s).await.unwrap();
    let patch = json!({"stringData": {"k": "new"}});
    let status = status_of(
        secrets
            .patch("frozen", &PatchParams::default(), &Patch::Merge(&patch))
            .await,
    );
    assert_eq!(status.code, 422);
    assert!(
        status
            .message
            .contains("data: Forbidden: field is immutable when `immutable` is set"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn getting_a_missing_secret_is_not_found() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let status = status_of(secrets.get("nope").await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(status.message, "secrets \"nope\" not found");
    assert_eq!(status.details.unwrap().kind, "secrets");
}

#[tokio::test]
async fn creating_an_existing_secret_already_exists() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    secrets
        .create(&PostParams::default(), &secret("twice", &[("k", b"v")]))
        .await
        .unwrap();
    let status = status_of(
        secrets
            .create(&PostParams::default(), &secret("twice", &[("k", b"v")]))
            .await,
    );
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists")
    );
    assert_eq!(status.message, "secrets \"twice\" already exists");
}

#[tokio::test]
async fn an_update_with_a_stale_resource_version_conflicts() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let created = secrets
        .create(&PostParams::default(), &secret("s", &[("k", b"1")]))
        .await
        .unwrap();
    let mut first = created.clone();
    first.data = secret("s", &[("k", b"2")]).data;
    let updated = secrets
        .replace("s", &PostParams::default(), &first)
        .await
        .unwrap();
    assert_ne!(rv(&updated.metadata), rv(&created.metadata));

    let mut stale = created;
    stale.data = secret("s", &[("k", b"3")]).data;
    let status = status_of(secrets.replace("s", &PostParams::default(), &stale).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "Operation cannot be fulfilled on secrets \"s\": the object has been modified; please apply your changes to the latest version and try again"
    );
    assert_eq!(data_of(&secrets.get("s").await.unwrap())["k"], b"2");
}

#[tokio::test]
async fn a_merge_patch_with_a_stale_resource_version_precondition_conflicts() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let created = secrets
        .create(&PostParams::default(), &secret("s", &[("k", b"1")]))
        .await
        .unwrap();
    let current = rv(&created.metadata);
    let fresh = json!({"metadata": {"resourceVersion": current}, "stringData": {"k": "2"}});
    let patched = secrets
        .patch("s", &PatchParams::default(), &Patch::Merge(&fresh))
        .await
        .unwrap();
    assert_ne!(rv(&patched.metadata), current);

    let stale = json!({"metadata": {"resourceVersion": current}, "stringData": {"k": "3"}});
    let status = status_of(
        secrets
            .patch("s", &PatchParams::default(), &Patch::Merge(&stale))
            .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
}

#[tokio::test]
async fn server_side_apply_conflicts_between_field_managers_and_force_takes_over() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    secrets
        .patch(
            "db",
            &PatchParams::apply("rotation-a"),
            &Patch::Apply(secret("db", &[("password", b"a")])),
        )
        .await
        .unwrap();

    let theirs = Patch::Apply(secret("db", &[("password", b"b")]));
    let status = status_of(
        secrets
            .patch("db", &PatchParams::apply("rotation-b"), &theirs)
            .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "Apply failed with 1 conflict: conflict with \"rotation-a\": .data.password"
    );
    let cause = &status.details.unwrap().causes[0];
    assert_eq!(
        (cause.reason.as_str(), cause.field.as_str()),
        ("FieldManagerConflict", ".data.password")
    );

    let forced = secrets
        .patch("db", &PatchParams::apply("rotation-b").force(), &theirs)
        .await
        .unwrap();
    assert_eq!(data_of(&forced)["password"], b"b");
    let owners: Vec<String> = forced
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:data/f:password").is_some())
        })
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(owners, ["rotation-b"]);
}

#[tokio::test]
async fn a_put_whose_body_names_another_object_is_a_bad_request() {
    let c = cluster().await;
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    secrets
        .create(&PostParams::default(), &secret("one", &[("k", b"v")]))
        .await
        .unwrap();
    let status = status_of(
        secrets
            .replace(
                "one",
                &PostParams::default(),
                &secret("two", &[("k", b"v")]),
            )
            .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (400, "BadRequest"));
    assert_eq!(
        status.message,
        "the name of the object (two) does not match the name on the URL (one)"
    );
}

// ---- Deployments, StatefulSets, Leases ----

#[tokio::test]
async fn patching_a_deployment_template_annotation_bumps_generation_like_a_rollout_restart() {
    let c = cluster().await;
    let deployments: Api<Deployment> = Api::namespaced(c.client(), c.namespace());
    let created = deployments
        .create(&PostParams::default(), &deployment("web"))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));

    let pp = PatchParams::default();
    let restarted = deployments
        .patch(
            "web",
            &pp,
            &Patch::Strategic(restart_patch("2025-01-01T00:00:00Z")),
        )
        .await
        .unwrap();
    assert_eq!(restarted.metadata.generation, Some(2));

    let labels = json!({"metadata": {"labels": {"team": "payments"}}});
    let relabelled = deployments
        .patch("web", &pp, &Patch::Merge(&labels))
        .await
        .unwrap();
    assert_eq!(
        relabelled.metadata.generation,
        Some(2),
        "labels are not spec"
    );

    let again = deployments
        .patch(
            "web",
            &pp,
            &Patch::Strategic(restart_patch("2025-01-01T00:00:00Z")),
        )
        .await
        .unwrap();
    assert_eq!(
        again.metadata.generation,
        Some(2),
        "a no-op patch changes nothing"
    );
    assert_eq!(rv(&again.metadata), rv(&relabelled.metadata));

    let applied = deployments
        .patch("web", &PatchParams::apply("keyturn"), &Patch::Apply(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"template": {"metadata": {"annotations": {"keyturn.dev/secret-hash": "abc"}}}}
        })))
        .await
        .unwrap();
    assert_eq!(applied.metadata.generation, Some(3));
}

#[tokio::test]
async fn applying_a_whole_deployment_manifest_that_differs_only_by_defaults_does_not_conflict() {
    let c = cluster().await;
    let deployments: Api<Deployment> = Api::namespaced(c.client(), c.namespace());
    deployments
        .create(&PostParams::default(), &deployment("web"))
        .await
        .unwrap();

    let mut manifest = serde_json::to_value(deployment("web")).unwrap();
    manifest["spec"]["template"]["metadata"]["annotations"] =
        json!({"keyturn.dev/secret-hash": "abc"});
    let applied = deployments
        .patch(
            "web",
            &PatchParams::apply("keyturn"),
            &Patch::Apply(&manifest),
        )
        .await
        .unwrap();
    assert_eq!(applied.metadata.generation, Some(2));
    let containers = &applied.spec.unwrap().template.spec.unwrap().containers;
    assert_eq!(
        containers[0].image_pull_policy.as_deref(),
        Some("IfNotPresent"),
        "defaults stay"
    );

    manifest["spec"]["replicas"] = json!(3);
    let status = status_of(
        deployments
            .patch(
                "web",
                &PatchParams::apply("keyturn"),
                &Patch::Apply(&manifest),
            )
            .await,
    );
    assert_eq!(status.code, 409, "replicas belong to the creator");
    assert_eq!(status.details.unwrap().causes[0].field, ".spec.replicas");
}

#[tokio::test]
async fn a_deployment_whose_selector_does_not_match_its_template_is_invalid() {
    let c = cluster().await;
    let deployments: Api<Deployment> = Api::namespaced(c.client(), c.namespace());
    let mut d = deployment("web");
    d.spec.as_mut().unwrap().selector.match_labels =
        Some([("app".to_owned(), "other".to_owned())].into());
    let status = status_of(deployments.create(&PostParams::default(), &d).await);
    assert_eq!(status.code, 422);
    assert_eq!(
        status.details.unwrap().causes[0].field,
        "spec.template.metadata.labels"
    );
}

#[tokio::test]
async fn patching_a_statefulset_template_bumps_its_generation() {
    let c = cluster().await;
    let sets: Api<StatefulSet> = Api::namespaced(c.client(), c.namespace());
    let d = deployment("db");
    let sts: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"replicas": 0, "serviceName": "db", "selector": d.spec.as_ref().unwrap().selector, "template": d.spec.as_ref().unwrap().template}
    }))
    .unwrap();
    assert_eq!(
        sets.create(&PostParams::default(), &sts)
            .await
            .unwrap()
            .metadata
            .generation,
        Some(1)
    );
    let patched = sets
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Strategic(restart_patch("now")),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.generation, Some(2));
    assert_eq!(
        status_of(sets.get("missing").await).message,
        "statefulsets.apps \"missing\" not found"
    );
}

#[tokio::test]
async fn a_lease_update_with_a_stale_resource_version_conflicts() {
    let c = cluster().await;
    let leases: Api<Lease> = Api::namespaced(c.client(), c.namespace());
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "keyturn-leader"},
        "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15}
    }))
    .unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();

    let mut renewed = created.clone();
    renewed.spec.as_mut().unwrap().lease_transitions = Some(1);
    leases
        .replace("keyturn-leader", &PostParams::default(), &renewed)
        .await
        .unwrap();

    let mut stale = created.clone();
    stale.spec.as_mut().unwrap().holder_identity = Some("pod-b".into());
    let status = status_of(
        leases
            .replace("keyturn-leader", &PostParams::default(), &stale)
            .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(status.message.starts_with(
        "Operation cannot be fulfilled on leases.coordination.k8s.io \"keyturn-leader\""
    ));

    // Leases, unlike Secrets, refuse an update that names no resourceVersion at all.
    let mut unconditional = created;
    unconditional.metadata.resource_version = None;
    let status = status_of(
        leases
            .replace("keyturn-leader", &PostParams::default(), &unconditional)
            .await,
    );
    assert_eq!(status.code, 422);
    assert_eq!(
        status.details.unwrap().causes[0].field,
        "metadata.resourceVersion"
    );

    leases
        .delete("keyturn-leader", &DeleteParams::default())
        .await
        .unwrap();
}

// ---- Tokens ----

fn review(token: &str) -> TokenReview {
    TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: None,
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn token_review_authenticates_an_issued_token_as_its_service_account() {
    let c = cluster().await;
    let token = c.service_account_token(c.namespace(), "app").await.unwrap();
    let reviews: Api<TokenReview> = Api::all(c.client());
    let status = reviews
        .create(&PostParams::default(), &review(&token))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.authenticated, Some(true), "{:?}", status.error);
    let user = status.user.unwrap();
    let ns = c.namespace();
    assert_eq!(
        user.username.as_deref(),
        Some(format!("system:serviceaccount:{ns}:app").as_str())
    );
    assert!(user.uid.is_some_and(|u| !u.is_empty()));
    let groups = user.groups.unwrap_or_default();
    for g in [
        "system:serviceaccounts",
        &format!("system:serviceaccounts:{ns}"),
        "system:authenticated",
    ] {
        assert!(groups.iter().any(|x| x == g), "{g} missing from {groups:?}");
    }
    assert!(!status.audiences.unwrap_or_default().is_empty());
}

#[tokio::test]
async fn token_review_rejects_a_tampered_token_with_an_error_not_an_http_failure() {
    let c = cluster().await;
    let token = c.service_account_token(c.namespace(), "app").await.unwrap();
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    claims["sub"] = json!("system:serviceaccount:kube-system:clusterrole-aggregation-controller");
    parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
    let reviews: Api<TokenReview> = Api::all(c.client());
    let status = reviews
        .create(&PostParams::default(), &review(&parts.join(".")))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_ne!(status.authenticated, Some(true));
    assert!(status.error.is_some_and(|e| !e.is_empty()));
}

#[tokio::test]
async fn a_token_request_mints_a_token_bound_to_the_service_account_uid() {
    let c = cluster().await;
    let sas: Api<ServiceAccount> = Api::namespaced(c.client(), c.namespace());
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "rotator"}})).unwrap();
    let sa = sas.create(&PostParams::default(), &sa).await.unwrap();
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": ["vault"], "expirationSeconds": 600}}))
            .unwrap();
    let token = sas
        .create_token_request("rotator", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;

    let reviews: Api<TokenReview> = Api::all(c.client());
    let mut r = review(&token);
    r.spec.audiences = Some(vec!["vault".into()]);
    let status = reviews
        .create(&PostParams::default(), &r)
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.authenticated, Some(true), "{:?}", status.error);
    assert_eq!(status.user.unwrap().uid, sa.metadata.uid);
    assert_eq!(status.audiences, Some(vec!["vault".to_owned()]));
}

#[tokio::test]
async fn token_review_rejects_an_expired_token() {
    let standin = KubeStandin::start().await.unwrap();
    let expired = standin.issue_service_account_token("app", "web", &[], Duration::ZERO);
    let reviews: Api<TokenReview> = Api::all(standin.client().await.unwrap());
    let status = reviews
        .create(&PostParams::default(), &review(&expired))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_ne!(status.authenticated, Some(true));
    assert!(status.error.unwrap().contains("expired"));
}

#[tokio::test]
async fn an_issued_token_authenticates_api_requests_as_its_service_account() {
    let standin = KubeStandin::start().await.unwrap();
    let token = standin.issue_service_account_token("app", "web", &[], Duration::from_secs(60));
    standin.deny_user("system:serviceaccount:app:web", "get", "secrets");
    let secrets: Api<Secret> = Api::namespaced(standin.client_with_token(&token).unwrap(), "app");
    let status = status_of(secrets.get("x").await);
    assert_eq!(
        status.code, 403,
        "the token authenticated as the service account it names"
    );

    let for_vault =
        standin.issue_service_account_token("app", "web", &["vault"], Duration::from_secs(60));
    let secrets: Api<Secret> =
        Api::namespaced(standin.client_with_token(&for_vault).unwrap(), "app");
    assert_eq!(
        status_of(secrets.get("x").await).code,
        401,
        "a token for another audience is not an API credential"
    );
}

#[tokio::test]
async fn openid_discovery_serves_the_key_that_verifies_issued_tokens() {
    let standin = KubeStandin::start().await.unwrap();
    let http = https(&standin);
    let config: Value = http
        .get(format!(
            "{}/.well-known/openid-configuration",
            standin.url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["issuer"], standin.url());
    let jwks: jsonwebtoken::jwk::JwkSet = http
        .get(config["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let token = standin.issue_pod_service_account_token(
        "app",
        "web",
        "web-0",
        &["vault"],
        Duration::from_secs(60),
    );
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["vault"]);
    validation.set_issuer(&[standin.url()]);
    let claims = jsonwebtoken::decode::<Value>(&token, &key, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], "system:serviceaccount:app:web");
    assert_eq!(claims["kubernetes.io"]["namespace"], "app");
    assert_eq!(claims["kubernetes.io"]["pod"]["name"], "web-0");
    assert!(
        claims["kubernetes.io"]["serviceaccount"]["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
    );
}

// ---- Authentication and authorization ----

#[tokio::test]
async fn a_client_without_a_grant_gets_a_forbidden_status_it_can_parse() {
    let c = cluster().await;
    let ns = c.namespace().to_owned();
    Api::<Secret>::namespaced(c.client(), &ns)
        .create(&PostParams::default(), &secret("s", &[("k", b"v")]))
        .await
        .unwrap();
    let restricted: Api<Secret> =
        Api::namespaced(c.client_denied(&[("patch", "secrets")]).await.unwrap(), &ns);
    restricted.get("s").await.unwrap();

    let patch = json!({"stringData": {"k": "new"}});
    let status = status_of(
        restricted
            .patch("s", &PatchParams::default(), &Patch::Merge(&patch))
            .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        format!(
            "secrets \"s\" is forbidden: User \"system:serviceaccount:{ns}:keyturn-restricted-0\" cannot patch resource \"secrets\" in API group \"\" in the namespace \"{ns}\""
        )
    );
    let details = status.details.unwrap();
    assert_eq!(
        (details.name.as_str(), details.kind.as_str()),
        ("s", "secrets")
    );
}

#[tokio::test]
async fn the_deny_switch_forbids_matching_requests_until_allow_all() {
    let standin = KubeStandin::start().await.unwrap();
    let client = standin.client().await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "app");
    deployments
        .create(&PostParams::default(), &deployment("web"))
        .await
        .unwrap();

    standin.deny("get", "deployments");
    standin.deny("*", "leases");
    let status = status_of(deployments.get("web").await);
    assert_eq!(status.code, 403);
    assert_eq!(
        status.message,
        "deployments.apps \"web\" is forbidden: User \"kubernetes-admin\" cannot get resource \"deployments\" in API group \"apps\" in the namespace \"app\""
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), "app");
    let status = status_of(leases.list(&ListParams::default()).await);
    assert_eq!(
        status.message,
        "leases.coordination.k8s.io is forbidden: User \"kubernetes-admin\" cannot list resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"app\""
    );
    deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({})))
        .await
        .unwrap();

    standin.allow_all();
    deployments.get("web").await.unwrap();
    leases.list(&ListParams::default()).await.unwrap();
}

#[tokio::test]
async fn the_control_endpoints_switch_denials_and_mint_tokens_for_the_admin_only() {
    let standin = KubeStandin::start().await.unwrap();
    let http = https(&standin);
    let control = |path: &str, token: &str, body: Value| {
        http.post(format!("{}/_standin/{path}", standin.url()))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let admin = standin.admin_token();
    let minted: Value = control(
        "token",
        &admin,
        json!({"namespace": "app", "name": "web", "ttlSeconds": 60}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let sa_token = minted["token"].as_str().unwrap().to_owned();
    let as_sa = control("allow-all", &sa_token, json!({})).await.unwrap();
    assert_eq!(as_sa.status(), 403, "only the admin may flip switches");

    let secrets: Api<Secret> =
        Api::namespaced(standin.client_with_token(&sa_token).unwrap(), "app");
    assert_eq!(status_of(secrets.get("x").await).code, 404);
    let denied = control(
        "deny",
        &admin,
        json!({"verb": "get", "resource": "secrets"}),
    )
    .await
    .unwrap();
    assert_eq!(denied.status(), 200);
    assert_eq!(status_of(secrets.get("x").await).code, 403);
    control("allow-all", &admin, json!({})).await.unwrap();
    assert_eq!(status_of(secrets.get("x").await).code, 404);
}

#[tokio::test]
async fn a_request_without_valid_credentials_is_unauthorized() {
    let standin = KubeStandin::start().await.unwrap();
    let url = format!("{}/api/v1/namespaces/default/secrets", standin.url());
    let response = https(&standin).get(&url).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "Unauthorized");
    assert_eq!(body["code"], 401);

    let forged = standin.client_with_token("not-the-admin-token").unwrap();
    let status = status_of(
        Api::<Secret>::namespaced(forged, "default")
            .list(&ListParams::default())
            .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (401, "Unauthorized"));
}

// ---- RBAC and SelfSubjectAccessReview ----

/// A Role shaped like the ones `keyturn policy rbac` generates: some verbs on one Secret, by
/// name.
const ORDERS_ROLE: &str = "\
# What the orders service may touch.
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: orders-reader
rules:
- apiGroups: ['']
  resources: [secrets]
  resourceNames: [orders-db]
  verbs: [get, patch, list]
";

/// `User "…" cannot VERB resource "secrets" …` as the real authorizer words it, for the
/// Secret `name` (`None`: a request without a name, such as create or list).
fn secrets_forbidden(user: &str, verb: &str, ns: &str, name: Option<&str>) -> String {
    let subject = name.map_or_else(|| "secrets".to_owned(), |n| format!("secrets {n:?}"));
    format!(
        "{subject} is forbidden: User {user:?} cannot {verb} resource \"secrets\" in API group \"\" in the namespace {ns:?}"
    )
}

/// Asks the API, as `client`'s user, whether it may `verb` `resource` (of `group`) named
/// `name` in `ns`: what `kubectl auth can-i` does.
async fn can_i(
    client: &kube::Client,
    ns: &str,
    verb: &str,
    group: &str,
    resource: &str,
    name: &str,
) -> SubjectAccessReviewStatus {
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({
        "spec": {"resourceAttributes": {
            "namespace": ns, "verb": verb, "group": group, "resource": resource, "name": name,
        }}
    }))
    .unwrap();
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .expect("a SelfSubjectAccessReview status")
}

#[tokio::test]
async fn a_service_account_bound_to_a_role_with_resource_names_may_use_only_the_named_secret() {
    let c = cluster().await;
    let ns = c.namespace().to_owned();
    let admin: Api<Secret> = Api::namespaced(c.client(), &ns);
    for name in ["orders-db", "billing-db"] {
        admin
            .create(&PostParams::default(), &secret(name, &[("k", b"v")]))
            .await
            .unwrap();
    }
    let secrets: Api<Secret> = Api::namespaced(
        c.client_with_role_as(ORDERS_ROLE, "orders").await.unwrap(),
        &ns,
    );
    let user = c.service_account_username("orders");

    secrets.get("orders-db").await.unwrap();
    let patch = json!({"stringData": {"k": "rotated"}});
    secrets
        .patch("orders-db", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(
        data_of(&admin.get("orders-db").await.unwrap()),
        [("k".to_owned(), b"rotated".to_vec())].into()
    );
    // A list pinned to the name by a field selector is a request for that name.
    let pinned = secrets
        .list(&ListParams::default().fields("metadata.name=orders-db"))
        .await
        .unwrap();
    assert_eq!(pinned.items.len(), 1);

    let status = status_of(secrets.get("billing-db").await);
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        secrets_forbidden(&user, "get", &ns, Some("billing-db"))
    );
    let status = status_of(
        secrets
            .patch("billing-db", &PatchParams::default(), &Patch::Merge(&patch))
            .await,
    );
    assert_eq!(
        status.message,
        secrets_forbidden(&user, "patch", &ns, Some("billing-db"))
    );
    let details = status.details.unwrap();
    assert_eq!(
        (details.name.as_str(), details.kind.as_str()),
        ("billing-db", "secrets")
    );
    let status = status_of(secrets.delete("orders-db", &DeleteParams::default()).await);
    assert_eq!(
        status.message,
        secrets_forbidden(&user, "delete", &ns, Some("orders-db"))
    );

    // resourceNames cannot restrict requests that carry no name: create and a plain list.
    let status = status_of(
        secrets
            .create(
                &PostParams::default(),
                &secret("orders-db-2", &[("k", b"v")]),
            )
            .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        secrets_forbidden(&user, "create", &ns, None)
    );
    let status = status_of(secrets.list(&ListParams::default()).await);
    assert_eq!(status.message, secrets_forbidden(&user, "list", &ns, None));
}

#[tokio::test]
async fn a_role_binding_to_a_missing_role_grants_nothing_and_says_why() {
    let c = cluster().await;
    let ns = c.namespace().to_owned();
    Api::<Secret>::namespaced(c.client(), &ns)
        .create(&PostParams::default(), &secret("orders-db", &[("k", b"v")]))
        .await
        .unwrap();
    let binding_only = "\
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: orders
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: orders-reader
subjects:
- kind: ServiceAccount
  name: whoever
";
    let client = c.client_with_role_as(binding_only, "orphan").await.unwrap();
    let user = c.service_account_username("orphan");
    let status = status_of(
        Api::<Secret>::namespaced(client.clone(), &ns)
            .get("orders-db")
            .await,
    );
    assert_eq!(status.code, 403);
    assert_eq!(
        status.message,
        format!(
            "{}: RBAC: role.rbac.authorization.k8s.io \"orders-reader\" not found",
            secrets_forbidden(&user, "get", &ns, Some("orders-db"))
        )
    );
    let review = can_i(&client, &ns, "get", "", "secrets", "orders-db").await;
    assert!(!review.allowed, "{review:?}");

    // Once the Role exists, the same binding grants it.
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "orders-reader"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["orders-db"], "verbs": ["get"]}],
    }))
    .unwrap();
    Api::<Role>::namespaced(c.client(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    // A real cluster's authorizer reads RBAC from an informer cache: wait until it has the
    // Role (the stand-in has it at once). No deadline: the runner's slow-timeout ends a
    // cluster that never grants it.
    eventually("the new Role to grant get on orders-db", || async {
        can_i(&client, &ns, "get", "", "secrets", "orders-db")
            .await
            .allowed
    })
    .await;
    Api::<Secret>::namespaced(client, &ns)
        .get("orders-db")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_self_subject_access_review_answers_for_the_calling_service_account() {
    let c = cluster().await;
    let ns = c.namespace().to_owned();
    let client = c.client_with_role_as(ORDERS_ROLE, "orders").await.unwrap();

    let yes = can_i(&client, &ns, "patch", "", "secrets", "orders-db").await;
    assert!(yes.allowed, "{yes:?}");
    assert_eq!(
        yes.reason.as_deref(),
        Some(
            format!(
                "RBAC: allowed by RoleBinding \"orders-reader/{ns}\" of Role \"orders-reader\" to ServiceAccount \"orders/{ns}\""
            )
            .as_str()
        )
    );
    for (verb, name) in [
        ("get", "billing-db"),
        ("delete", "orders-db"),
        ("create", ""),
        ("list", ""),
    ] {
        let no = can_i(&client, &ns, verb, "", "secrets", name).await;
        assert!(!no.allowed, "{verb} {name}: {no:?}");
        assert_ne!(
            no.denied,
            Some(true),
            "RBAC never denies, it only does not allow"
        );
    }
    let other_namespace = can_i(&client, "elsewhere", "get", "", "secrets", "orders-db").await;
    assert!(!other_namespace.allowed);
    let admin = can_i(&c.client(), &ns, "delete", "", "secrets", "orders-db").await;
    assert!(admin.allowed);
}

#[tokio::test]
async fn client_with_role_runs_under_the_rbac_keyturn_policy_rbac_generates() {
    let c = cluster().await;
    let ns = c.namespace().to_owned();
    let generated = include_str!("../../../policies/kubernetes/keyturn-agent-rbac.yaml");
    assert!(generated.contains("namespace: shop"));
    let yaml = generated.replace("namespace: shop", &format!("namespace: {ns}"));
    let admin_secrets: Api<Secret> = Api::namespaced(c.client(), &ns);
    let admin_deployments: Api<Deployment> = Api::namespaced(c.client(), &ns);
    for name in ["storefront-api-token", "payments-api-token"] {
        admin_secrets
            .create(&PostParams::default(), &secret(name, &[]))
            .await
            .unwrap();
    }
    for name in ["storefront", "payments"] {
        admin_deployments
            .create(&PostParams::default(), &deployment(name))
            .await
            .unwrap();
    }

    let agent = c.client_with_role(&yaml).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(agent.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(agent, &ns);
    let token = json!({"stringData": {"token": "t0k3n"}});
    secrets
        .patch(
            "storefront-api-token",
            &PatchParams::default(),
            &Patch::Merge(&token),
        )
        .await
        .unwrap();
    deployments
        .patch(
            "storefront",
            &PatchParams::default(),
            &Patch::Merge(restart_patch("2025-01-01T00:00:00Z")),
        )
        .await
        .unwrap();
    assert_eq!(
        status_of(
            secrets
                .patch(
                    "payments-api-token",
                    &PatchParams::default(),
                    &Patch::Merge(&token)
                )
                .await
        )
        .code,
        403
    );
    assert_eq!(
        status_of(
            deployments
                .patch(
                    "payments",
                    &PatchParams::default(),
                    &Patch::Merge(restart_patch("2025-01-01T00:00:00Z"))
                )
                .await
        )
        .code,
        403
    );
    assert_eq!(
        status_of(
            secrets
                .create(&PostParams::default(), &secret("new-token", &[]))
                .await
        )
        .code,
        403,
        "the generated Role grants no create"
    );
}

#[tokio::test]
async fn roles_and_role_bindings_round_trip_with_the_v1_defaults_applied() {
    let c = cluster().await;
    let ns = c.namespace().to_owned();
    let roles: Api<Role> = Api::namespaced(c.client(), &ns);
    let bindings: Api<RoleBinding> = Api::namespaced(c.client(), &ns);
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "reader"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
    }))
    .unwrap();
    let created = roles.create(&PostParams::default(), &role).await.unwrap();
    assert!(created.metadata.uid.is_some());
    assert_eq!(created.metadata.namespace.as_deref(), Some(ns.as_str()));

    let mut updated = created.clone();
    updated.rules = Some(vec![
        serde_json::from_value(
            json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}),
        )
        .unwrap(),
    ]);
    let updated = roles
        .replace("reader", &PostParams::default(), &updated)
        .await
        .unwrap();
    assert_eq!(updated.rules.unwrap()[0].verbs, ["get", "list"]);

    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "", "kind": "Role", "name": "reader"},
        "subjects": [
            {"kind": "User", "name": "jane"},
            {"kind": "ServiceAccount", "name": "web"},
        ],
    }))
    .unwrap();
    let binding = bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
    let subjects = binding.subjects.clone().unwrap();
    assert_eq!(
        subjects[0].api_group.as_deref(),
        Some("rbac.authorization.k8s.io")
    );
    assert!(subjects[1].api_group.as_deref().unwrap_or("").is_empty());

    let listed = bindings.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);

    let mut retargeted = binding.clone();
    retargeted.role_ref.name = "writer".into();
    let status = status_of(
        bindings
            .replace("reader", &PostParams::default(), &retargeted)
            .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(
        status.message.starts_with(
            "RoleBinding.rbac.authorization.k8s.io \"reader\" is invalid: roleRef: Invalid value: "
        ) && status.message.ends_with(": cannot change roleRef"),
        "{}",
        status.message
    );

    bindings
        .delete("reader", &DeleteParams::default())
        .await
        .unwrap();
    roles
        .delete("reader", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(status_of(roles.get("reader").await).code, 404);
}

#[tokio::test]
async fn an_invalid_role_or_role_binding_is_rejected_as_invalid() {
    let c = cluster().await;
    let ns = c.namespace().to_owned();
    let roles: Api<Role> = Api::namespaced(c.client(), &ns);
    let role = |rules: Value| -> Role {
        serde_json::from_value(json!({"metadata": {"name": "bad"}, "rules": rules})).unwrap()
    };

    let status = status_of(
        roles
            .create(
                &PostParams::default(),
                &role(json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": []}])),
            )
            .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        "Role.rbac.authorization.k8s.io \"bad\" is invalid: rules[0].verbs: Required value: verbs must contain at least one value"
    );
    let causes = status.details.unwrap().causes;
    assert_eq!(
        (causes[0].reason.as_str(), causes[0].field.as_str()),
        ("FieldValueRequired", "rules[0].verbs")
    );
    let status = status_of(
        roles
            .create(
                &PostParams::default(),
                &role(json!([
                    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
                    {"verbs": ["get"]},
                ])),
            )
            .await,
    );
    assert_eq!(
        status.message,
        "Role.rbac.authorization.k8s.io \"bad\" is invalid: [rules[1].apiGroups: Required value: resource rules must supply at least one api group, rules[1].resources: Required value: resource rules must supply at least one resource]"
    );
    let status = status_of(
        roles
            .create(
                &PostParams::default(),
                &role(json!([{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}])),
            )
            .await,
    );
    assert_eq!(
        status.message,
        "Role.rbac.authorization.k8s.io \"bad\" is invalid: rules[0].nonResourceURLs: Invalid value: []string{\"/healthz\"}: namespaced rules cannot apply to non-resource URLs"
    );

    let bindings: Api<RoleBinding> = Api::namespaced(c.client(), &ns);
    let binding = |role_ref: Value, subjects: Value| -> RoleBinding {
        serde_json::from_value(
            json!({"metadata": {"name": "bad"}, "roleRef": role_ref, "subjects": subjects}),
        )
        .unwrap()
    };
    let sa = json!([{"kind": "ServiceAccount", "name": "web"}]);
    let status = status_of(
        bindings
            .create(
                &PostParams::default(),
                &binding(
                    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Secret", "name": ""}),
                    sa.clone(),
                ),
            )
            .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        "RoleBinding.rbac.authorization.k8s.io \"bad\" is invalid: [roleRef.kind: Unsupported value: \"Secret\": supported values: \"Role\", \"ClusterRole\", roleRef.name: Required value]"
    );
    let causes = status.details.unwrap().causes;
    assert_eq!(
        (causes[0].reason.as_str(), causes[0].field.as_str()),
        ("FieldValueNotSupported", "roleRef.kind")
    );
    let status = status_of(
        bindings
            .create(
                &PostParams::default(),
                &binding(
                    json!({"apiGroup": "example.com", "kind": "Role", "name": "r"}),
                    json!([{"kind": "Robot", "name": "r2d2"}]),
                ),
            )
            .await,
    );
    assert_eq!(
        status.message,
        "RoleBinding.rbac.authorization.k8s.io \"bad\" is invalid: [roleRef.apiGroup: Unsupported value: \"example.com\": supported values: \"rbac.authorization.k8s.io\", subjects[0].kind: Unsupported value: \"Robot\": supported values: \"ServiceAccount\", \"User\", \"Group\"]"
    );
    assert_eq!(status_of(bindings.get("bad").await).code, 404);
}

#[tokio::test]
async fn without_rbac_enforcement_access_reviews_allow_everything_but_deny_rules() {
    let c = TestCluster::start_standin().await.unwrap();
    let standin = c.standin().unwrap();
    let ns = c.namespace().to_owned();
    let token = c.service_account_token(&ns, "web").await.unwrap();
    let client = standin.client_with_token(&token).unwrap();

    let review = can_i(&client, &ns, "get", "", "secrets", "anything").await;
    assert!(review.allowed);
    assert_eq!(review.reason, None);
    standin.deny_user(&c.service_account_username("web"), "get", "secrets");
    assert!(
        !can_i(&client, &ns, "get", "", "secrets", "anything")
            .await
            .allowed
    );
    assert!(
        can_i(&client, &ns, "patch", "", "secrets", "anything")
            .await
            .allowed
    );
    assert!(
        can_i(&client, &ns, "patch", "apps", "deployments", "web")
            .await
            .allowed
    );
}

#[tokio::test]
async fn the_rbac_switch_holds_service_accounts_to_their_roles_while_it_is_on() {
    let standin = KubeStandin::start().await.unwrap();
    let admin = standin.client().await.unwrap();
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "secret-reader"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
    }))
    .unwrap();
    Api::<Role>::namespaced(admin.clone(), "app")
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "web-reads-secrets"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "secret-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "web"}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), "app")
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let admin_secrets: Api<Secret> = Api::namespaced(admin, "app");
    admin_secrets
        .create(&PostParams::default(), &secret("s", &[("k", b"v")]))
        .await
        .unwrap();
    let token = standin.issue_service_account_token("app", "web", &[], Duration::from_secs(600));
    let web: Api<Secret> = Api::namespaced(standin.client_with_token(&token).unwrap(), "app");
    let patch = json!({"stringData": {"k": "w"}});
    web.patch("s", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();

    let http = https(&standin);
    let switch = |token: &str, enforce: bool| {
        http.post(format!("{}/_standin/rbac", standin.url()))
            .bearer_auth(token)
            .json(&json!({"enforce": enforce}))
            .send()
    };
    let as_sa = switch(&token, false).await.unwrap();
    assert_eq!(as_sa.status(), 403, "only the admin may flip switches");
    let on = switch(&standin.admin_token(), true).await.unwrap();
    assert_eq!(on.status(), 200);
    assert!(standin.rbac_enforced());

    web.get("s").await.unwrap();
    let status = status_of(
        web.patch("s", &PatchParams::default(), &Patch::Merge(&patch))
            .await,
    );
    assert_eq!(
        status.message,
        secrets_forbidden("system:serviceaccount:app:web", "patch", "app", Some("s"))
    );
    admin_secrets
        .patch("s", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();

    // Deny rules still apply on top of what RBAC allows.
    standin.deny_user("system:serviceaccount:app:web", "get", "secrets");
    assert_eq!(status_of(web.get("s").await).code, 403);
    standin.allow_all();
    web.get("s").await.unwrap();

    standin.enforce_rbac(false);
    web.patch("s", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let state: Value = http
        .get(format!("{}/_standin/rbac", standin.url()))
        .bearer_auth(standin.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state, json!({"enforce": false}));
}

#[tokio::test]
async fn with_rbac_enforced_cluster_roles_bind_per_namespace_and_the_token_reviewer_keeps_working()
{
    let standin = KubeStandin::start().await.unwrap();
    let admin = standin.client().await.unwrap();
    let cluster_roles: Api<ClusterRole> = Api::all(admin.clone());
    let names: Vec<String> = cluster_roles
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|r| r.metadata.name)
        .collect();
    for bootstrap in [
        "cluster-admin",
        "system:auth-delegator",
        "system:basic-user",
    ] {
        assert!(names.iter().any(|n| n == bootstrap), "{names:?}");
    }
    let reader: ClusterRole = serde_json::from_value(json!({
        // A namespace sent with a cluster-scoped object is dropped, as the real server does.
        "metadata": {"name": "secret-reader", "namespace": "ignored"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
    }))
    .unwrap();
    let reader = cluster_roles
        .create(&PostParams::default(), &reader)
        .await
        .unwrap();
    assert_eq!(reader.metadata.namespace, None);
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "web-reads-secrets"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "secret-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "web", "namespace": "app"}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), "app")
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    standin.enforce_rbac(true);

    let token = standin.issue_service_account_token("app", "web", &[], Duration::from_secs(600));
    let web = standin.client_with_token(&token).unwrap();
    let status = status_of(Api::<Secret>::namespaced(web.clone(), "app").get("x").await);
    assert_eq!(status.code, 404, "allowed, and not there");
    let status = status_of(
        Api::<Secret>::namespaced(web.clone(), "other")
            .get("x")
            .await,
    );
    assert_eq!(status.code, 403);

    let reviewer = standin
        .client_with_token(&standin.token_reviewer_jwt())
        .unwrap();
    let reviewed = Api::<TokenReview>::all(reviewer)
        .create(&PostParams::default(), &review(&token))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(reviewed.authenticated, Some(true));
    let status = status_of(
        Api::<TokenReview>::all(web)
            .create(&PostParams::default(), &review(&token))
            .await,
    );
    assert_eq!(
        status.message,
        "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:app:web\" cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope"
    );
}

// ---- Discovery, kubeconfig, binary ----

#[tokio::test]
async fn kube_rs_discovery_and_version_work_against_it() {
    let c = cluster().await;
    let client = c.client();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
    for discovery in [
        kube::Discovery::new(client.clone()).run().await.unwrap(),
        kube::Discovery::new(client.clone())
            .run_aggregated()
            .await
            .unwrap(),
    ] {
        assert!(discovery.has_group("apps"));
        assert!(discovery.has_group("coordination.k8s.io"));
        let apps = discovery.get("apps").unwrap();
        assert!(
            apps.recommended_resources()
                .iter()
                .any(|(r, _)| r.plural == "deployments")
        );
    }
}

#[tokio::test]
async fn the_written_kubeconfig_loads_in_kube_rs() {
    let c = cluster().await;
    let kubeconfig = kube::config::Kubeconfig::read_from(c.kubeconfig_path()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    assert_eq!(
        config.cluster_url.to_string().trim_end_matches('/'),
        c.kubernetes_host()
    );
    let client = kube::Client::try_from(config).unwrap();
    Api::<Secret>::namespaced(client, c.namespace())
        .list(&ListParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn it_serves_https_only_and_clients_verify_its_own_ca() {
    let standin = KubeStandin::start().await.unwrap();
    let other = KubeStandin::start().await.unwrap();
    let port = standin.addr().port();
    assert_eq!(standin.url(), format!("https://127.0.0.1:{port}"));
    assert_ne!(
        standin.ca_pem(),
        other.ca_pem(),
        "each stand-in has its own CA"
    );

    // The kubeconfig carries the CA, and kube-rs (as keyturn builds its client, from a
    // kubeconfig) trusts exactly it.
    let yaml = standin.kubeconfig_yaml();
    assert!(yaml.contains("certificate-authority-data: "), "{yaml}");
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(&yaml).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(config.root_cert, Some(vec![standin.ca_der()]));
    Api::<Secret>::namespaced(kube::Client::try_from(config).unwrap(), "default")
        .list(&ListParams::default())
        .await
        .unwrap();

    // Another CA: the handshake fails, before any request (so no token) is sent.
    let answered = standin.requests().len();
    let mut wrong_ca = standin.config();
    wrong_ca.root_cert = Some(vec![other.ca_der()]);
    wrong_ca.auth_info.token = Some(standin.admin_token().into());
    let refused = Api::<Secret>::namespaced(kube::Client::try_from(wrong_ca).unwrap(), "default")
        .list(&ListParams::default())
        .await;
    assert!(
        !matches!(refused, Ok(_) | Err(kube::Error::Api(_))),
        "a client trusting another CA must not get an answer: {refused:?}"
    );
    let via_other = https(&other)
        .get(format!("{}/version", standin.url()))
        .send()
        .await;
    assert!(
        via_other.as_ref().is_err_and(reqwest::Error::is_connect),
        "{via_other:?}"
    );
    assert_eq!(
        standin.requests().len(),
        answered,
        "nothing reached the API: {:?}",
        standin.requests()
    );

    // The certificate names localhost too; /version is public, as on a real cluster.
    let version: Value = https(&standin)
        .get(format!("https://localhost:{port}/version"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(version["major"], "1");

    // Plain HTTP on the TLS port is answered as kube-apiserver (Go) answers it.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/version"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    assert_eq!(
        plain.text().await.unwrap(),
        "Client sent an HTTP request to an HTTPS server.\n"
    );
}

#[tokio::test]
async fn the_binary_refuses_a_non_loopback_listen_address() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(keyturn_tests::bins::kube_standin())
        .args(["--listen", "0.0.0.0:0", "--kubeconfig"])
        .arg(dir.path().join("kubeconfig"))
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
    assert!(!dir.path().join("kubeconfig").exists());
}

#[tokio::test]
async fn the_binary_serves_its_kubeconfig_applies_deny_flags_and_stops_on_sigterm() {
    use tokio::io::AsyncBufReadExt as _;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let ca_cert = dir.path().join("ca.pem");
    let mut child = tokio::process::Command::new(keyturn_tests::bins::kube_standin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--deny",
            "get:secrets",
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .arg("--ca-cert")
        .arg(&ca_cert)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let ca_pem = std::fs::read(&ca_cert).unwrap();
    assert_eq!(
        config.root_cert,
        Some(vec![pem_der(&ca_pem)]),
        "--ca-cert holds the CA of the kubeconfig"
    );
    let secrets: Api<Secret> = Api::namespaced(kube::Client::try_from(config).unwrap(), "default");
    assert_eq!(status_of(secrets.get("x").await).code, 403);
    secrets.list(&ListParams::default()).await.unwrap();

    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn a_dry_run_other_than_all_and_an_unknown_field_validation_are_refused_before_any_write() {
    let c = cluster().await;
    let ns = c.namespace();
    let client = c.client();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let collection = format!("/api/v1/namespaces/{ns}/secrets");
    let body = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}});

    // `dryRun=true` is not a dry run: refused, so a client that means one never writes.
    let err = status_of(
        raw(
            &client,
            "POST",
            &format!("{collection}?dryRun=true"),
            "application/json",
            &body,
        )
        .await,
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(
        err.message
            .contains(r#"dryRun: Unsupported value: []string{"true"}: supported values: "All""#),
        "{}",
        err.message
    );
    assert_eq!(status_of(secrets.get("s").await).code, 404);

    raw(&client, "POST", &collection, "application/json", &body)
        .await
        .unwrap();
    let before = secrets.get("s").await.unwrap();
    let err = status_of(
        raw(
            &client,
            "PATCH",
            &format!("{collection}/s?fieldValidation=Loose"),
            "application/merge-patch+json",
            &json!({"stringData": {"k": "changed"}}),
        )
        .await,
    );
    assert_eq!(err.code, 422);
    assert!(
        err.message
            .contains(r#"fieldValidation: Unsupported value: "Loose""#),
        "{}",
        err.message
    );
    let err = status_of(
        raw(
            &client,
            "DELETE",
            &format!("{collection}/s"),
            "application/json",
            &json!({"kind": "DeleteOptions", "apiVersion": "v1", "dryRun": ["true"]}),
        )
        .await,
    );
    assert_eq!(err.code, 422);
    assert!(err.message.contains("dryRun"), "{}", err.message);

    // A real dry-run delete, as kube-rs sends it (in DeleteOptions): answered, not done.
    secrets
        .delete(
            "s",
            &DeleteParams {
                dry_run: true,
                ..DeleteParams::default()
            },
        )
        .await
        .unwrap();
    let after = secrets.get("s").await.unwrap();
    assert_eq!(after.metadata, before.metadata);
    assert_eq!(after.data, before.data);
}

// ---- Real kubectl ----

/// kubectl: `$KEYTURN_KUBECTL`, else the pinned one `dev/setup.sh` installs in
/// `.keyturn/bin`, else PATH. Absent, the test is skipped with a printed reason, except in CI
/// (`CI` set), where the kubectl tests must run and an absent kubectl fails them.
fn kubectl_path(test: &str) -> Option<std::path::PathBuf> {
    match keyturn_tests::tools::find("kubectl", "KEYTURN_KUBECTL") {
        Ok(path) => Some(path),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the kubectl tests: {e}"
            );
            eprintln!("SKIPPED {test}: {e}");
            None
        }
    }
}

/// The real kubectl against one test's cluster, with the cluster's kubeconfig, in the
/// test's namespace, with a home and cache of its own (no user config, no shared cache).
struct Kubectl {
    bin: std::path::PathBuf,
    kubeconfig: std::path::PathBuf,
    namespace: String,
    home: tempfile::TempDir,
}

impl Kubectl {
    fn new(c: &TestCluster, test: &str) -> Option<Self> {
        Some(Self {
            bin: kubectl_path(test)?,
            kubeconfig: c.kubeconfig_path().to_owned(),
            namespace: c.namespace().to_owned(),
            home: tempfile::tempdir().unwrap(),
        })
    }

    /// Runs `kubectl ARGS` (with `stdin` piped in, if any) and returns its output.
    async fn run(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        use tokio::io::AsyncWriteExt as _;
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.env_clear()
            .env("HOME", self.home.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.home.path().join("cache"))
            .args(["--namespace", &self.namespace])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("run kubectl");
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).await.unwrap();
        }
        drop(input);
        child.wait_with_output().await.unwrap()
    }

    /// Runs `kubectl ARGS`, which must succeed; returns stdout.
    async fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `kubectl ARGS`, which must fail; returns stderr.
    async fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin).await;
        assert!(
            !out.status.success(),
            "kubectl {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }
}

fn secret_data(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| String::from_utf8(v.0.clone()).unwrap())
}

fn deployment_manifest(name: &str, env_value: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\nspec:\n  replicas: 0\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers:\n      - name: app\n        image: registry.k8s.io/pause:3.10\n        env: [{{name: MODE, value: \"{env_value}\"}}]\n"
    )
}

#[tokio::test]
async fn kubectl_gets_creates_patches_and_deletes_secrets() {
    let c = cluster().await;
    let Some(kubectl) = Kubectl::new(&c, "kubectl_gets_creates_patches_and_deletes_secrets") else {
        return;
    };
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());

    // `create secret` sends protobuf.
    let created = kubectl
        .ok(
            &[
                "create",
                "secret",
                "generic",
                "db",
                "--from-literal=password=hunter2",
            ],
            None,
        )
        .await;
    assert_eq!(created.trim(), "secret/db created");
    let db = secrets.get("db").await.unwrap();
    assert_eq!(secret_data(&db, "password").as_deref(), Some("hunter2"));
    assert_eq!(db.type_.as_deref(), Some("Opaque"));

    let listed = kubectl.ok(&["get", "secrets"], None).await;
    let header: Vec<&str> = listed.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "TYPE", "DATA", "AGE"], "{listed}");
    let row: Vec<&str> = listed
        .lines()
        .find(|l| l.starts_with("db "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row[..3], ["db", "Opaque", "1"], "{listed}");
    let got: Value = serde_json::from_str(
        &kubectl
            .ok(&["get", "secret", "db", "-o", "json"], None)
            .await,
    )
    .unwrap();
    assert_eq!(got["data"]["password"], "aHVudGVyMg==");

    // A manifest through `create -f` (JSON, server-side field validation) and `apply`.
    let manifest =
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: app\nstringData:\n  user: app\n";
    kubectl.ok(&["create", "-f", "-"], Some(manifest)).await;
    kubectl
        .ok(
            &["apply", "-f", "-"],
            Some(&manifest.replace("user: app", "user: app2")),
        )
        .await;
    let app = secrets.get("app").await.unwrap();
    assert_eq!(secret_data(&app, "user").as_deref(), Some("app2"));
    assert!(
        app.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("kubectl.kubernetes.io/last-applied-configuration")
    );
    let typo = kubectl
        .fails(
            &["create", "-f", "-"],
            Some("apiVersion: v1\nkind: Secret\nmetadata:\n  name: typo\ndta:\n  k: dg==\n"),
        )
        .await;
    assert!(typo.contains(r#"unknown field "dta""#), "{typo}");
    assert_eq!(status_of(secrets.get("typo").await).code, 404);

    // The three patch types.
    kubectl
        .ok(
            &[
                "patch",
                "secret",
                "db",
                "-p",
                r#"{"stringData":{"user":"app"}}"#,
            ],
            None,
        )
        .await;
    kubectl
        .ok(
            &[
                "patch",
                "secret",
                "db",
                "--type=merge",
                "-p",
                r#"{"metadata":{"labels":{"tier":"db"}}}"#,
            ],
            None,
        )
        .await;
    let db = secrets.get("db").await.unwrap();
    assert_eq!(secret_data(&db, "user").as_deref(), Some("app"));
    assert_eq!(secret_data(&db, "password").as_deref(), Some("hunter2"));
    assert_eq!(db.metadata.labels.unwrap()["tier"], "db");
    kubectl
        .ok(
            &[
                "patch",
                "secret",
                "db",
                "--type=json",
                "-p",
                r#"[{"op":"remove","path":"/data/user"}]"#,
            ],
            None,
        )
        .await;
    let db = secrets.get("db").await.unwrap();
    assert_eq!(secret_data(&db, "user"), None);
    assert_eq!(secret_data(&db, "password").as_deref(), Some("hunter2"));

    kubectl.ok(&["delete", "secret", "db", "app"], None).await;
    assert_eq!(status_of(secrets.get("db").await).code, 404);
    assert_eq!(status_of(secrets.get("app").await).code, 404);
    let missing = kubectl.fails(&["get", "secret", "db"], None).await;
    assert!(missing.contains(r#"secrets "db" not found"#), "{missing}");
}

#[tokio::test]
async fn kubectl_creates_applies_patches_restarts_and_deletes_deployments() {
    let c = cluster().await;
    let Some(kubectl) = Kubectl::new(
        &c,
        "kubectl_creates_applies_patches_restarts_and_deletes_deployments",
    ) else {
        return;
    };
    let deployments: Api<Deployment> = Api::namespaced(c.client(), c.namespace());
    let container = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .clone()
    };

    // `create deployment` sends protobuf.
    kubectl
        .ok(
            &[
                "create",
                "deployment",
                "web",
                "--image=registry.k8s.io/pause:3.10",
                "--replicas=0",
                "--port=8080",
            ],
            None,
        )
        .await;
    let web = deployments.get("web").await.unwrap();
    assert_eq!(web.spec.as_ref().unwrap().replicas, Some(0));
    let ports = container(&web).ports.unwrap();
    assert_eq!(
        (ports[0].container_port, ports[0].protocol.as_deref()),
        (8080, Some("TCP"))
    );
    assert_eq!(
        web.spec
            .as_ref()
            .unwrap()
            .strategy
            .as_ref()
            .unwrap()
            .type_
            .as_deref(),
        Some("RollingUpdate")
    );

    // Client-side apply, twice: the second is a strategic merge patch with list directives.
    kubectl
        .ok(
            &["apply", "-f", "-"],
            Some(&deployment_manifest("api", "one")),
        )
        .await;
    let applied = kubectl
        .ok(
            &["apply", "-f", "-"],
            Some(&deployment_manifest("api", "two")),
        )
        .await;
    assert_eq!(applied.trim(), "deployment.apps/api configured");
    let api = deployments.get("api").await.unwrap();
    let app = container(&api);
    assert_eq!(app.env.unwrap()[0].value.as_deref(), Some("two"));
    assert_eq!(app.image.as_deref(), Some("registry.k8s.io/pause:3.10"));

    // A strategic merge patch merges the container list by name: env stays.
    kubectl
        .ok(
            &[
                "patch",
                "deployment",
                "api",
                "-p",
                r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"registry.k8s.io/pause:3.9"}]}}}}"#,
            ],
            None,
        )
        .await;
    let app = container(&deployments.get("api").await.unwrap());
    assert_eq!(app.image.as_deref(), Some("registry.k8s.io/pause:3.9"));
    assert_eq!(app.env.unwrap()[0].value.as_deref(), Some("two"));
    kubectl
        .ok(
            &[
                "patch",
                "deployment",
                "api",
                "--type=json",
                "-p",
                r#"[{"op":"replace","path":"/spec/revisionHistoryLimit","value":3}]"#,
            ],
            None,
        )
        .await;
    kubectl
        .ok(
            &[
                "patch",
                "deployment",
                "api",
                "--type=merge",
                "-p",
                r#"{"spec":{"minReadySeconds":5}}"#,
            ],
            None,
        )
        .await;
    let spec = deployments.get("api").await.unwrap().spec.unwrap();
    assert_eq!(
        (spec.revision_history_limit, spec.min_ready_seconds),
        (Some(3), Some(5))
    );

    // What keyturn does to roll a workload, done by kubectl.
    kubectl
        .ok(&["rollout", "restart", "deployment/api"], None)
        .await;
    let annotations = deployments
        .get("api")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap_or_default();
    assert!(
        annotations.contains_key("kubectl.kubernetes.io/restartedAt"),
        "{annotations:?}"
    );

    // Server-side apply of a new object, then of a change.
    kubectl
        .ok(
            &["apply", "--server-side", "-f", "-"],
            Some(&deployment_manifest("ssa", "one")),
        )
        .await;
    kubectl
        .ok(
            &["apply", "--server-side", "-f", "-"],
            Some(&deployment_manifest("ssa", "two")),
        )
        .await;
    let ssa = deployments.get("ssa").await.unwrap();
    assert_eq!(
        container(&ssa).env.unwrap()[0].value.as_deref(),
        Some("two")
    );
    let managers: Vec<String> = ssa
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.operation.as_deref() == Some("Apply"))
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, ["kubectl"]);

    let typo = kubectl
        .fails(
            &["apply", "-f", "-"],
            Some(&deployment_manifest("api", "two").replace("replicas: 0", "replicaz: 0")),
        )
        .await;
    assert!(typo.contains(r#"unknown field "spec.replicaz""#), "{typo}");

    kubectl
        .ok(&["delete", "deployment", "web", "api", "ssa"], None)
        .await;
    for name in ["web", "api", "ssa"] {
        assert_eq!(status_of(deployments.get(name).await).code, 404, "{name}");
    }
}

#[tokio::test]
async fn kubectl_dry_run_server_changes_nothing() {
    let c = cluster().await;
    let Some(kubectl) = Kubectl::new(&c, "kubectl_dry_run_server_changes_nothing") else {
        return;
    };
    let secrets: Api<Secret> = Api::namespaced(c.client(), c.namespace());
    let deployments: Api<Deployment> = Api::namespaced(c.client(), c.namespace());
    let dry = "--dry-run=server";

    // Creates: reported, not made.
    let out = kubectl
        .ok(
            &[
                "create",
                "secret",
                "generic",
                "ghost",
                "--from-literal=k=v",
                dry,
            ],
            None,
        )
        .await;
    assert_eq!(out.trim(), "secret/ghost created (server dry run)");
    kubectl
        .ok(
            &[
                "create",
                "deployment",
                "ghost",
                "--image=registry.k8s.io/pause:3.10",
                dry,
            ],
            None,
        )
        .await;
    kubectl
        .ok(
            &["apply", "-f", "-", dry],
            Some(&deployment_manifest("ghost2", "x")),
        )
        .await;
    kubectl
        .ok(
            &["apply", "--server-side", "-f", "-", dry],
            Some(&deployment_manifest("ghost3", "x")),
        )
        .await;
    assert_eq!(status_of(secrets.get("ghost").await).code, 404);
    for name in ["ghost", "ghost2", "ghost3"] {
        assert_eq!(status_of(deployments.get(name).await).code, 404, "{name}");
    }

    // Changes to existing objects: reported, not made.
    kubectl
        .ok(
            &["create", "secret", "generic", "db", "--from-literal=k=v"],
            None,
        )
        .await;
    kubectl
        .ok(
            &["apply", "-f", "-"],
            Some(&deployment_manifest("api", "one")),
        )
        .await;
    let secret_before = secrets.get("db").await.unwrap();
    let deployment_before = deployments.get("api").await.unwrap();
    for args in [
        &[
            "patch",
            "secret",
            "db",
            "-p",
            r#"{"stringData":{"k":"changed"}}"#,
        ][..],
        &[
            "patch",
            "secret",
            "db",
            "--type=merge",
            "-p",
            r#"{"metadata":{"labels":{"a":"b"}}}"#,
        ],
        &[
            "patch",
            "secret",
            "db",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/data/k"}]"#,
        ],
        &["delete", "secret", "db"],
        &[
            "patch",
            "deployment",
            "api",
            "-p",
            r#"{"spec":{"replicas":1}}"#,
        ],
        &["delete", "deployment", "api"],
    ] {
        let out = kubectl.ok(&[args, &[dry]].concat(), None).await;
        // kubectl marks only what it prints for deletes; the API read-back below is the proof.
        if args[0] == "delete" {
            assert!(out.contains("(server dry run)"), "{args:?}: {out}");
        }
    }
    let out = kubectl
        .ok(
            &["apply", "-f", "-", dry],
            Some(&deployment_manifest("api", "two")),
        )
        .await;
    assert!(out.contains("(server dry run)"), "{out}");
    let out = kubectl
        .ok(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                "-",
                dry,
            ],
            Some(&deployment_manifest("api", "three")),
        )
        .await;
    assert!(out.contains("(server dry run)"), "{out}");

    let secret_after = secrets.get("db").await.unwrap();
    assert_eq!(secret_after.data, secret_before.data);
    assert_eq!(secret_after.metadata, secret_before.metadata);
    let deployment_after = deployments.get("api").await.unwrap();
    assert_eq!(deployment_after.metadata, deployment_before.metadata);
    assert_eq!(deployment_after.spec, deployment_before.spec);
}

// ---- OpenBao's kubernetes auth, for real ----

/// OpenBao configured against this cluster, with a role for `web` in the test namespace.
async fn openbao_with_kubernetes_auth(c: &TestCluster) -> OpenBao {
    let bao = OpenBao::start().await.unwrap();
    bao.enable_kubernetes_auth(c).await.unwrap();
    let role = json!({
        "bound_service_account_names": ["web"],
        "bound_service_account_namespaces": [c.namespace()],
        "audience": "vault",
        "token_policies": ["default"],
    });
    bao.api("POST", "auth/kubernetes/role/web", Some(role))
        .await
        .unwrap();
    bao
}

async fn bao_login(bao: &OpenBao, jwt: &str) -> anyhow::Result<Value> {
    bao.api_as(
        "",
        "POST",
        "auth/kubernetes/login",
        Some(json!({"role": "web", "jwt": jwt})),
    )
    .await
}

#[tokio::test]
async fn openbao_kubernetes_auth_logs_a_service_account_in_through_token_review() {
    let c = cluster().await;
    let bao = openbao_with_kubernetes_auth(&c).await;
    let ns = c.namespace();

    let jwt = c
        .service_account_token_for(ns, "web", &["vault"], Duration::from_secs(600))
        .await
        .unwrap();
    let login = bao_login(&bao, &jwt).await.unwrap();
    let metadata = &login["auth"]["metadata"];
    assert_eq!(metadata["service_account_name"], "web");
    assert_eq!(metadata["service_account_namespace"], ns);
    assert!(
        login["auth"]["client_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );

    let intruder = c
        .service_account_token_for(ns, "intruder", &["vault"], Duration::from_secs(600))
        .await
        .unwrap();
    assert!(
        bao_login(&bao, &intruder).await.is_err(),
        "a service account the role does not name is refused"
    );
}

#[tokio::test]
async fn openbao_kubernetes_auth_fails_when_token_review_is_forbidden_or_the_token_expired() {
    let c = TestCluster::start_standin().await.unwrap();
    let bao = openbao_with_kubernetes_auth(&c).await;
    let standin = c.standin().unwrap();
    let reviews = |code: u16| {
        standin
            .requests()
            .iter()
            .filter(|r| r.resource == "tokenreviews" && r.code == code)
            .count()
    };

    // OpenBao answers every failed login with a bare "permission denied", so what the
    // stand-in was asked and answered is the evidence.
    let expired =
        standin.issue_service_account_token(c.namespace(), "web", &["vault"], Duration::ZERO);
    assert!(bao_login(&bao, &expired).await.is_err());

    let jwt = standin.issue_service_account_token(
        c.namespace(),
        "web",
        &["vault"],
        Duration::from_secs(600),
    );
    standin.deny("create", "tokenreviews");
    assert!(bao_login(&bao, &jwt).await.is_err());
    assert_eq!(reviews(403), 1, "{:?}", standin.requests());
    let reviewer = standin
        .requests()
        .into_iter()
        .find(|r| r.resource == "tokenreviews")
        .unwrap()
        .user;
    assert_eq!(
        reviewer,
        "system:serviceaccount:kube-system:keyturn-token-reviewer"
    );

    standin.allow_all();
    let answered = reviews(201);
    bao_login(&bao, &jwt).await.unwrap();
    assert_eq!(reviews(201), answered + 1, "{:?}", standin.requests());
}

//! The RotationPolicy CustomResourceDefinition that `keyturn crd` prints, on an API server:
//! accepted (its schema is structural) and established, every example policy of
//! `policies/rotation/` accepted as a RotationPolicy object with nothing pruned, what `keyturn
//! policy check` refuses refused by the schema where a schema can say it, and `kubectl get`
//! showing the Ready, Reason and rotation columns.
//!
//! On a real cluster (`KEYTURN_TEST_KUBECONFIG`) each test defines the resource in a group of
//! its own (`<namespace>.test.keyturn.dev`), so tests in parallel never share a definition,
//! and deletes the definition when it passes.

use std::path::{Path, PathBuf};

use keyturn_agent::policy;
use keyturn_tests::kube::{InstalledCrd, TestCluster, kubectl, run_kubectl};
use keyturn_tests::tools::repo_root;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

async fn cluster() -> TestCluster {
    TestCluster::start()
        .await
        .expect("a Kubernetes API for the test")
}

/// The generated definition, established and served; deleted by [`Self::remove`].
struct Defined {
    crd: InstalledCrd,
    policies: Api<DynamicObject>,
    group: String,
}

impl Defined {
    /// Installs `keyturn crd`'s definition: as generated on the stand-in, in a group of this
    /// test's own on a real cluster.
    async fn new(c: &TestCluster) -> Self {
        let crd = c
            .install_crd(policy::crd::definition())
            .await
            .expect("the API server accepts the generated definition");
        Self {
            policies: crd.api(c.client(), c.namespace()),
            group: crd.group.clone(),
            crd,
        }
    }

    /// A policy document (as a policy file writes it) as an object of this definition.
    fn object(&self, c: &TestCluster, mut doc: Value) -> Value {
        doc["apiVersion"] = json!(format!("{}/{}", self.group, policy::crd::VERSION));
        doc["metadata"]["namespace"] = json!(c.namespace());
        doc
    }

    /// Creates `object`, `Strict` refusing fields the schema does not name instead of
    /// pruning them; the created object or the API's Status.
    async fn create(
        &self,
        c: &TestCluster,
        object: &Value,
        strict: bool,
    ) -> Result<Value, Box<kube::core::Status>> {
        let validation = if strict { "Strict" } else { "Ignore" };
        let request = http::Request::post(format!(
            "/apis/{}/{}/namespaces/{}/{}?fieldValidation={validation}",
            self.group,
            policy::crd::VERSION,
            c.namespace(),
            policy::crd::PLURAL
        ))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(object).unwrap())
        .unwrap();
        match c.client().request::<Value>(request).await {
            Ok(created) => Ok(created),
            Err(kube::Error::Api(status)) => Err(status),
            Err(e) => panic!("creating a RotationPolicy: {e}"),
        }
    }

    async fn remove(self) {
        self.crd.remove().await.unwrap();
    }
}

/// The example policy files, in name order.
fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("policies/rotation"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "policies/rotation has examples");
    files
}

/// The documents of a policy file, as JSON.
fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .collect()
}

/// What `keyturn policy check` says of `text` as a policy file: the fields it names.
fn policy_check_errors(dir: &Path, text: &str) -> Vec<String> {
    let file = dir.join("policy.yaml");
    std::fs::write(&file, text).unwrap();
    match policy::load(&file) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0.into_iter().map(|e| e.field).collect(),
    }
}

#[tokio::test]
async fn rotationpolicy_crd_is_accepted_and_established_with_its_names() {
    let c = cluster().await;
    let defined = Defined::new(&c).await;
    let got = defined.crd.crds.get(&defined.crd.name).await.unwrap();
    let accepted = got.status.unwrap().accepted_names.unwrap();
    assert_eq!(accepted.kind, "RotationPolicy");
    assert_eq!(accepted.plural, "rotationpolicies");
    assert_eq!(accepted.singular.as_deref(), Some("rotationpolicy"));
    assert_eq!(accepted.short_names, Some(vec!["rp".to_owned()]));
    assert_eq!(got.spec.scope, "Namespaced");
    let version = &got.spec.versions[0];
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    defined.remove().await;
}

#[tokio::test]
async fn rotationpolicy_crd_accepts_every_example_policy_with_nothing_pruned() {
    let c = cluster().await;
    let defined = Defined::new(&c).await;
    let mut seen = 0;
    for file in example_files() {
        policy::load(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in documents(&text) {
            let object = defined.object(&c, doc);
            let created = defined
                .create(&c, &object, true)
                .await
                .unwrap_or_else(|s| panic!("{}: {}", file.display(), s.message));
            assert_eq!(created["spec"], object["spec"], "{}", file.display());
            assert_eq!(created["metadata"]["generation"], 1);
            seen += 1;
        }
    }
    assert!(seen >= 2, "{seen} examples");
    defined.remove().await;
}

/// A valid policy whose spec `edit` changes.
fn example_with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut doc = json!({
        "apiVersion": policy::API_VERSION,
        "kind": policy::KIND,
        "metadata": {"name": "api-token"},
        "spec": {
            "every": "1d",
            "store": {"vault-kv": {"path": "keyturn/api-token"}},
            "target": {"generated": {}},
        }
    });
    edit(&mut doc["spec"]);
    doc
}

#[tokio::test]
async fn rotationpolicy_crd_refuses_what_policy_check_refuses_where_a_schema_can() {
    let c = cluster().await;
    let defined = Defined::new(&c).await;
    let dir = tempfile::tempdir().unwrap();

    // The baseline is valid to both.
    let valid = example_with(|_| {});
    assert_eq!(
        policy_check_errors(dir.path(), &serde_yaml::to_string(&valid).unwrap()),
        Vec::<String>::new()
    );
    defined
        .create(&c, &defined.object(&c, valid), true)
        .await
        .unwrap();

    // An unknown field (a typo) is refused by policy check; the API server prunes it, or
    // refuses it with strict field validation (what kubectl asks for), at any depth.
    for (typo, path) in [
        (example_with(|s| s["windw"] = json!("1h")), "spec.windw"),
        (
            example_with(|s| s["store"]["vault-kv"]["pth"] = json!("x")),
            "spec.store.vault-kv.pth",
        ),
    ] {
        let fields = policy_check_errors(dir.path(), &serde_yaml::to_string(&typo).unwrap());
        assert!(!fields.is_empty(), "policy check accepts {path}");
        let mut object = defined.object(&c, typo);
        object["metadata"]["name"] = json!("typo");
        let status = defined.create(&c, &object, true).await.unwrap_err();
        assert_eq!(status.code, 400, "{}", status.message);
        assert!(
            status
                .message
                .contains(&format!("strict decoding error: unknown field \"{path}\"")),
            "{}",
            status.message
        );
        let pruned = defined.create(&c, &object, false).await.unwrap();
        assert_eq!(pruned["spec"], example_with(|_| {})["spec"], "{path}");
        defined
            .policies
            .delete("typo", &DeleteParams::default())
            .await
            .unwrap();
    }

    // A wrong type and a missing `store` are refused by both, naming the field.
    for (bad, field, message) in [
        (
            example_with(|s| s["max-attempts"] = json!("five")),
            "spec.max-attempts",
            "spec.max-attempts: Invalid value: \"string\": spec.max-attempts in body must be of type integer: \"string\"",
        ),
        (
            example_with(|s| s["distribute"] = json!("shop")),
            "spec.distribute",
            "spec.distribute: Invalid value: \"string\": spec.distribute in body must be of type array: \"string\"",
        ),
        (
            example_with(|s| {
                s.as_object_mut().unwrap().remove("store");
            }),
            "spec.store",
            "spec.store: Required value",
        ),
    ] {
        let fields = policy_check_errors(dir.path(), &serde_yaml::to_string(&bad).unwrap());
        assert!(!fields.is_empty(), "policy check accepts a bad {field}");
        let mut object = defined.object(&c, bad);
        object["metadata"]["name"] = json!("bad");
        let status = defined.create(&c, &object, true).await.unwrap_err();
        assert_eq!(status.code, 422, "{}", status.message);
        assert!(
            status.message.contains(message),
            "{field}: {}",
            status.message
        );
    }
    defined.remove().await;
}

// ---- Real kubectl ----

#[tokio::test]
async fn kubectl_gets_rotationpolicies_with_ready_reason_and_rotation_columns() {
    let c = cluster().await;
    let Some((bin, home)) = kubectl(
        &c,
        "kubectl_gets_rotationpolicies_with_ready_reason_and_rotation_columns",
    ) else {
        return;
    };
    let defined = Defined::new(&c).await;
    let file = repo_root().join("policies/rotation/example-generated.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let object = defined.object(&c, documents(&text).remove(0));
    let name = object["metadata"]["name"].as_str().unwrap().to_owned();
    let applied = run_kubectl(
        &c,
        &bin,
        home.path(),
        &["apply", "-f", "-"],
        Some(&serde_json::to_string(&object).unwrap()),
    )
    .await;
    assert!(applied.contains(&name), "{applied}");

    let now = chrono::Utc::now();
    let status = policy::crd::RotationPolicyStatus {
        observed_generation: Some(1),
        last_rotation: Some(policy::crd::LastRotation {
            time: now - chrono::Duration::hours(3),
            rotation_id: "r-1".into(),
            outcome: "success".into(),
        }),
        next_rotation: Some(now + chrono::Duration::hours(21)),
        consecutive_failures: Some(0),
        conditions: vec![policy::crd::Condition {
            type_: "Ready".into(),
            status: policy::crd::ConditionStatus::True,
            observed_generation: Some(1),
            last_transition_time: now,
            reason: "Rotated".into(),
            message: "rotating on schedule".into(),
        }],
    };
    let patched = defined
        .policies
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .expect("the schema accepts the status keyturn writes");
    let back: policy::crd::RotationPolicyStatus =
        serde_json::from_value(patched.data["status"].clone()).unwrap();
    assert_eq!(back.conditions, status.conditions);

    // Tests on a real cluster define many `rp`s at once; the stand-in has only this one.
    let resource = if c.is_real() {
        format!("{}.{}", policy::crd::PLURAL, defined.group)
    } else {
        "rp".to_owned()
    };
    let listed = run_kubectl(&c, &bin, home.path(), &["get", &resource], None).await;
    let lines: Vec<Vec<&str>> = listed
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "NAME", "READY", "REASON", "LAST", "ROTATION", "NEXT", "ROTATION", "AGE"
        ],
        "{listed}"
    );
    assert_eq!(
        lines[1][..3],
        [name.as_str(), "True", "Rotated"],
        "{listed}"
    );
    // The date columns found their values (the real API server prints them as ages).
    for cell in &lines[1][3..6] {
        assert_ne!(*cell, "<none>", "{listed}");
    }
    assert_eq!(lines.len(), 2, "{listed}");
    defined.remove().await;
}

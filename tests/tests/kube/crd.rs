//! CustomResourceDefinitions as keyturn's RotationPolicies use them: the definition
//! established at once, the custom resource served with its status subresource, generation,
//! schema validation (the real 422 messages), pruning and defaults, `kubectl get` with the
//! printer columns, RBAC on `/status`, watch, and the definition's own validation.
//!
//! On a real cluster (`KEYTURN_TEST_KUBECONFIG`) each test defines its resource in a group of
//! its own (`<namespace>.test.keyturn.dev`), so tests in parallel never share a definition,
//! and deletes the definition when it passes.

use futures_util::StreamExt as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use keyturn_tests::kube::{InstalledCrd, TestCluster, kubectl, run_kubectl};
use keyturn_tests::process::eventually;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use serde_json::{Value, json};

async fn cluster() -> TestCluster {
    TestCluster::start()
        .await
        .expect("a Kubernetes API for the test")
}

/// The group a test defines its resource in on the stand-in (each test has its own API
/// server); a real cluster gives each test its own instead ([`TestCluster::crd_group`]).
const GROUP: &str = "keyturn.dev";

/// A RotationPolicy definition, as kube-derive would generate it from keyturn's types.
fn definition(group: &str) -> CustomResourceDefinition {
    serde_yaml::from_str(&format!(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: rotationpolicies.{group}
spec:
  group: {group}
  names: {{kind: RotationPolicy, plural: rotationpolicies, shortNames: [rp]}}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {{status: {{}}}}
    additionalPrinterColumns:
    - {{name: Schedule, type: string, jsonPath: .spec.schedule}}
    - {{name: Ready, type: string, jsonPath: '.status.conditions[?(@.type=="Ready")].status'}}
    - {{name: Age, type: date, jsonPath: .metadata.creationTimestamp}}
    schema:
      openAPIV3Schema:
        type: object
        required: [spec]
        properties:
          spec:
            type: object
            required: [schedule, secretRef]
            properties:
              schedule: {{type: string, pattern: '^@(daily|hourly|weekly)$'}}
              secretRef:
                type: object
                required: [name]
                properties:
                  name: {{type: string, minLength: 1, maxLength: 253}}
              strategy: {{type: string, enum: [Rotate, Check], default: Rotate}}
              maxAgeDays: {{type: integer, minimum: 1, maximum: 365}}
              notes: {{type: string, nullable: true}}
          status:
            type: object
            properties:
              lastRotation: {{type: string}}
              conditions:
                type: array
                items:
                  type: object
                  required: [type, status]
                  properties:
                    type: {{type: string}}
                    status: {{type: string}}
"#
    ))
    .unwrap()
}

/// The definition this test made, established and served; deleted by [`Self::remove`].
struct Defined {
    crd: InstalledCrd,
    policies: Api<DynamicObject>,
    group: String,
}

impl Defined {
    async fn new(c: &TestCluster) -> Self {
        let crd = c.install_crd(definition(GROUP)).await.unwrap();
        Self {
            policies: crd.api(c.client(), c.namespace()),
            group: crd.group.clone(),
            crd,
        }
    }

    fn policy(&self, name: &str, spec: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": format!("{}/v1", self.group),
            "kind": "RotationPolicy",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .unwrap()
    }

    async fn remove(self) {
        self.crd.remove().await.unwrap();
    }
}

fn status_of(result: Result<impl std::fmt::Debug, kube::Error>) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected the API to answer with a Status error, got {other:?}"),
    }
}

fn generation(o: &DynamicObject) -> i64 {
    o.metadata.generation.unwrap()
}

#[tokio::test]
async fn a_definition_is_established_at_once_with_its_accepted_names() {
    let c = cluster().await;
    let defined = Defined::new(&c).await;
    let got = defined.crd.crds.get(&defined.crd.name).await.unwrap();
    let status = got.status.unwrap();
    let conditions: Vec<(String, String)> = status
        .conditions
        .unwrap()
        .into_iter()
        .map(|c| (c.type_, c.status))
        .collect();
    for wanted in ["NamesAccepted", "Established"] {
        assert!(
            conditions.contains(&(wanted.to_owned(), "True".to_owned())),
            "{conditions:?}"
        );
    }
    let accepted = status.accepted_names.unwrap();
    assert_eq!(accepted.kind, "RotationPolicy");
    assert_eq!(accepted.list_kind.as_deref(), Some("RotationPolicyList"));
    assert_eq!(accepted.singular.as_deref(), Some("rotationpolicy"));
    assert_eq!(status.stored_versions, Some(vec!["v1".to_owned()]));
    assert_eq!(got.metadata.generation, Some(1));

    // Discovery lists the resource and its status subresource.
    let discovery = kube::Discovery::new(c.client())
        .filter(&[defined.group.as_str()])
        .run()
        .await
        .unwrap();
    let (resource, caps) = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(r, _)| r.plural == "rotationpolicies")
        .expect("rotationpolicies in discovery");
    assert_eq!(resource.kind, "RotationPolicy");
    assert!(
        caps.subresources.iter().any(|(r, _)| r.plural == "status"),
        "{caps:?}"
    );
    defined.remove().await;
}

#[tokio::test]
async fn the_status_subresource_alone_writes_status_and_generation_counts_spec_changes() {
    let c = cluster().await;
    let defined = Defined::new(&c).await;
    let policies = &defined.policies;
    let pp = PostParams::default();
    let mut sent = defined.policy(
        "db",
        json!({"schedule": "@daily", "secretRef": {"name": "db"}}),
    );
    sent.data["status"] = json!({"lastRotation": "never"});
    let created = policies.create(&pp, &sent).await.unwrap();
    assert_eq!(generation(&created), 1);
    assert!(
        created.data.get("status").is_none(),
        "a create sets no status"
    );
    let mut watch = policies
        .watch(
            &WatchParams::default().timeout(120),
            created.metadata.resource_version.as_deref().unwrap(),
        )
        .await
        .unwrap()
        .boxed();

    // Status through /status: only status changes, and the generation stays.
    let mut with_status = created.clone();
    with_status.data["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]});
    with_status.data["spec"]["schedule"] = json!("@hourly");
    let updated = policies
        .replace_status("db", &pp, &with_status)
        .await
        .unwrap();
    assert_eq!(updated.data["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(
        updated.data["spec"]["schedule"], "@daily",
        "spec through /status is ignored"
    );
    assert_eq!(generation(&updated), 1);

    // The object itself: a spec change counts, status in the body is ignored.
    let mut spec_change = updated.clone();
    spec_change.data["spec"]["schedule"] = json!("@weekly");
    spec_change.data["status"] = json!({"lastRotation": "overwritten"});
    let replaced = policies.replace("db", &pp, &spec_change).await.unwrap();
    assert_eq!(generation(&replaced), 2);
    assert_eq!(replaced.data["spec"]["schedule"], "@weekly");
    assert_eq!(replaced.data["status"], updated.data["status"]);

    // Metadata alone does not count.
    let labelled = policies
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "db"}}})),
        )
        .await
        .unwrap();
    assert_eq!(generation(&labelled), 2);

    // Merge patches of status, as the daemon sends them.
    let patched = policies
        .patch_status(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"lastRotation": "2025-01-01T00:00:00Z"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.data["status"]["lastRotation"],
        "2025-01-01T00:00:00Z"
    );
    assert_eq!(generation(&patched), 2);

    // An update without a resourceVersion is refused, as for every custom resource.
    let mut unversioned = patched.clone();
    unversioned.metadata.resource_version = None;
    let refused = status_of(policies.replace("db", &pp, &unversioned).await);
    assert_eq!(refused.code, 422);
    assert_eq!(
        refused.message,
        format!(
            "RotationPolicy.{} \"db\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
            defined.group
        )
    );

    // Watchers see each write in order.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match watch.next().await.unwrap().unwrap() {
            WatchEvent::Modified(o) => seen.push(generation(&o)),
            WatchEvent::Bookmark(_) => {}
            other => panic!("expected a modification, got {other:?}"),
        }
    }
    assert_eq!(seen, [1, 2, 2, 2]);
    defined.remove().await;
}

#[tokio::test]
async fn custom_resources_are_validated_against_the_schema_with_the_real_messages() {
    let c = cluster().await;
    let defined = Defined::new(&c).await;
    let pp = PostParams::default();
    let g = defined.group.clone();
    let refusal = |spec: Value| {
        let policies = defined.policies.clone();
        let obj = defined.policy("bad", spec);
        async move {
            let status = status_of(policies.create(&PostParams::default(), &obj).await);
            assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
            status.message
        }
    };
    assert_eq!(
        refusal(json!({"schedule": "@daily"})).await,
        format!("RotationPolicy.{g} \"bad\" is invalid: spec.secretRef: Required value")
    );
    assert_eq!(
        refusal(json!({"schedule": 5, "secretRef": {"name": "db"}})).await,
        format!(
            "RotationPolicy.{g} \"bad\" is invalid: spec.schedule: Invalid value: \"integer\": spec.schedule in body must be of type string: \"integer\""
        )
    );
    assert_eq!(
        refusal(json!({"schedule": "every day", "secretRef": {"name": "db"}})).await,
        format!(
            "RotationPolicy.{g} \"bad\" is invalid: spec.schedule: Invalid value: \"every day\": spec.schedule in body should match '^@(daily|hourly|weekly)$'"
        )
    );
    assert_eq!(
        refusal(json!({"schedule": "@daily", "secretRef": {"name": "db"}, "strategy": "Shred"}))
            .await,
        format!(
            "RotationPolicy.{g} \"bad\" is invalid: spec.strategy: Unsupported value: \"Shred\": supported values: \"Rotate\", \"Check\""
        )
    );
    assert_eq!(
        refusal(json!({"schedule": "@daily", "secretRef": {"name": "db"}, "maxAgeDays": 0})).await,
        format!(
            "RotationPolicy.{g} \"bad\" is invalid: spec.maxAgeDays: Invalid value: 0: spec.maxAgeDays in body should be greater than or equal to 1"
        )
    );
    assert_eq!(
        refusal(json!({"schedule": "@daily", "secretRef": {"name": ""}})).await,
        format!(
            "RotationPolicy.{g} \"bad\" is invalid: spec.secretRef.name: Invalid value: \"\": spec.secretRef.name in body should be at least 1 chars long"
        )
    );

    // Unknown fields are pruned, defaults filled in, nullable nulls kept.
    let mut sent = defined.policy(
        "good",
        json!({"schedule": "@daily", "secretRef": {"name": "db", "typo": 1}, "notes": null, "extra": true}),
    );
    sent.data["top"] = json!("level");
    let created = defined.policies.create(&pp, &sent).await.unwrap();
    assert_eq!(
        created.data["spec"],
        json!({"schedule": "@daily", "secretRef": {"name": "db"}, "strategy": "Rotate", "notes": null})
    );
    assert!(created.data.get("top").is_none());

    // Strict field validation (what kubectl asks for) refuses them instead.
    let typo = defined.policy(
        "typo",
        json!({"schedule": "@daily", "secretRef": {"name": "db"}, "retries": 3}),
    );
    let request = http::Request::post(format!(
        "/apis/{g}/v1/namespaces/{}/rotationpolicies?fieldValidation=Strict",
        c.namespace()
    ))
    .header("content-type", "application/json")
    .body(serde_json::to_vec(&typo).unwrap())
    .unwrap();
    let status = status_of(c.client().request::<Value>(request).await);
    assert_eq!(status.code, 400);
    assert_eq!(
        status.message,
        "RotationPolicy in version \"v1\" cannot be handled as a RotationPolicy: strict decoding error: unknown field \"spec.retries\""
    );

    // JSON patches apply; strategic merge patches are not for custom resources.
    let patched = defined
        .policies
        .patch(
            "good",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(
                    json!([{"op": "replace", "path": "/spec/schedule", "value": "@weekly"}]),
                )
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(patched.data["spec"]["schedule"], "@weekly");
    let status = status_of(
        defined
            .policies
            .patch(
                "good",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"schedule": "@daily"}})),
            )
            .await,
    );
    assert_eq!(status.code, 415);
    defined.remove().await;
}

#[tokio::test]
async fn a_definition_is_refused_with_the_real_messages() {
    let c = cluster().await;
    let group = c.crd_group(GROUP);
    let crds: Api<CustomResourceDefinition> = Api::all(c.client());
    let refusal = |crd: CustomResourceDefinition| {
        let crds = crds.clone();
        async move {
            let status = status_of(crds.create(&PostParams::default(), &crd).await);
            assert_eq!(status.code, 422);
            status.message
        }
    };

    let mut misnamed = definition(&group);
    misnamed.metadata.name = Some(format!("policies.{group}"));
    let message = refusal(misnamed).await;
    assert!(
        message.starts_with(&format!(
            "CustomResourceDefinition.apiextensions.k8s.io \"policies.{group}\" is invalid: "
        )),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "metadata.name: Invalid value: \"policies.{group}\": must be spec.names.plural+\".\"+spec.group"
        )),
        "{message}"
    );

    let mut schemaless = definition(&group);
    schemaless.spec.versions[0].schema = None;
    let message = refusal(schemaless).await;
    assert!(
        message.contains(
            "spec.versions[0].schema.openAPIV3Schema: Required value: schemas are required"
        ),
        "{message}"
    );

    let mut two_storage = definition(&group);
    let mut v2 = two_storage.spec.versions[0].clone();
    v2.name = "v2".into();
    two_storage.spec.versions.push(v2);
    let message = refusal(two_storage).await;
    assert!(
        message.contains("must have exactly one version marked as storage version"),
        "{message}"
    );

    let mut scoped = definition(&group);
    scoped.spec.scope = "Everywhere".into();
    let message = refusal(scoped).await;
    assert!(
        message.contains(
            "spec.scope: Unsupported value: \"Everywhere\": supported values: \"Cluster\", \"Namespaced\""
        ),
        "{message}"
    );
}

#[tokio::test]
async fn status_is_its_own_resource_for_rbac() {
    let c = cluster().await;
    let defined = Defined::new(&c).await;
    let g = defined.group.clone();
    defined
        .policies
        .create(
            &PostParams::default(),
            &defined.policy(
                "db",
                json!({"schedule": "@daily", "secretRef": {"name": "db"}}),
            ),
        )
        .await
        .unwrap();
    let role = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: policy-status}}\nrules:\n- apiGroups: [{g}]\n  resources: [rotationpolicies]\n  verbs: [get, list, watch]\n- apiGroups: [{g}]\n  resources: [rotationpolicies/status]\n  verbs: [get, patch, update]\n"
    );
    let client = c
        .client_with_role_as(&role, "keyturn-daemon")
        .await
        .unwrap();
    let gvk = GroupVersionKind::gvk(&g, "v1", "RotationPolicy");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "rotationpolicies");
    let policies: Api<DynamicObject> = Api::namespaced_with(client, c.namespace(), &resource);
    let patched = policies
        .patch_status(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"lastRotation": "now"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data["status"]["lastRotation"], "now");
    let status = status_of(
        policies
            .patch(
                "db",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"schedule": "@weekly"}})),
            )
            .await,
    );
    assert_eq!(status.code, 403);
    assert_eq!(
        status.message,
        format!(
            "rotationpolicies.{g} \"db\" is forbidden: User \"{}\" cannot patch resource \"rotationpolicies\" in API group \"{g}\" in the namespace \"{}\"",
            c.service_account_username("keyturn-daemon"),
            c.namespace()
        )
    );
    defined.remove().await;
}

#[tokio::test]
async fn deleting_the_definition_deletes_its_objects_and_stops_serving_them() {
    let c = cluster().await;
    let defined = Defined::new(&c).await;
    defined
        .policies
        .create(
            &PostParams::default(),
            &defined.policy(
                "db",
                json!({"schedule": "@daily", "secretRef": {"name": "db"}}),
            ),
        )
        .await
        .unwrap();
    let policies = defined.policies.clone();
    defined.remove().await;
    eventually("the resource to be gone", || {
        let policies = policies.clone();
        async move { matches!(policies.get("db").await, Err(kube::Error::Api(s)) if s.code == 404) }
    })
    .await;
}

// ---- Real kubectl: keyturn_tests::kube::{kubectl, run_kubectl} ----

#[tokio::test]
async fn kubectl_applies_and_gets_rotation_policies_with_their_printer_columns() {
    let c = cluster().await;
    let Some((bin, home)) = kubectl(
        &c,
        "kubectl_applies_and_gets_rotation_policies_with_their_printer_columns",
    ) else {
        return;
    };
    let defined = Defined::new(&c).await;
    let g = defined.group.clone();
    let manifest = format!(
        "apiVersion: {g}/v1\nkind: RotationPolicy\nmetadata:\n  name: db\nspec:\n  schedule: '@daily'\n  secretRef: {{name: db}}\n"
    );
    let applied = run_kubectl(
        &c,
        &bin,
        home.path(),
        &["apply", "-f", "-"],
        Some(&manifest),
    )
    .await;
    assert!(applied.contains("rotationpolicy"), "{applied}");
    defined
        .policies
        .patch_status(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await
        .unwrap();

    let listed = run_kubectl(
        &c,
        &bin,
        home.path(),
        &["get", &format!("rotationpolicies.{g}")],
        None,
    )
    .await;
    let lines: Vec<Vec<&str>> = listed
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["NAME", "SCHEDULE", "READY", "AGE"], "{listed}");
    assert_eq!(lines[1][..3], ["db", "@daily", "True"], "{listed}");
    assert_eq!(lines.len(), 2, "{listed}");

    // Tests on a real cluster define many `rp`s at once; the stand-in has only this one.
    let short = if c.is_real() {
        format!("rotationpolicies.{g}")
    } else {
        "rp".to_owned()
    };
    let by_short_name = run_kubectl(
        &c,
        &bin,
        home.path(),
        &["get", &short, "db", "-o", "jsonpath={.spec.strategy}"],
        None,
    )
    .await;
    assert_eq!(by_short_name, "Rotate");
    defined.remove().await;
}

//! `keyturn run --rotationpolicies NAMESPACE`: the daemon taking policies from RotationPolicy
//! objects beside its policy files, through a watch, against a real OpenBao. A valid object
//! is rotated and its status says so (Ready, lastRotation, nextRotation, observedGeneration,
//! a `Rotated` Event); an invalid one and one whose name a policy file has are not managed and
//! say why; an object created while the daemon runs is rotated; one fixed is taken up; a
//! deleted one is no longer managed and its credential stays in its store.
//!
//! On a real cluster (`KEYTURN_TEST_KUBECONFIG`) the resource is defined in a group of the
//! test's own, which the daemon is told with its hidden `--rotationpolicies-group`.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use keyturn_agent::policy;
use keyturn_tests::agent_env::{AgentEnv, Daemon};
use keyturn_tests::kube::{InstalledCrd, TestCluster};
use keyturn_tests::openbao::OpenBao;
use keyturn_tests::process::{eventually, free_port};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// How long a fact may take to show before the test gives up: a hang, not a speed.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// A generated value at `keyturn/STORE`, once a day (so each is rotated once, at start).
fn spec(store: &str) -> Value {
    json!({
        "every": "1d",
        "store": {"vault-kv": {"path": format!("keyturn/{store}")}},
        "target": {"generated": {}},
    })
}

struct Objects {
    crd: InstalledCrd,
    api: Api<DynamicObject>,
    client: kube::Client,
}

impl Objects {
    async fn create(&self, name: &str, spec: Value) {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": self.crd.resource.api_version,
            "kind": policy::KIND,
            "metadata": {"name": name},
            "spec": spec,
        }))
        .unwrap();
        self.api
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("creating {name}: {e}"));
    }

    /// `status` of `name`, `Null` until written.
    async fn status(&self, name: &str) -> Value {
        let o = self.api.get(name).await.unwrap();
        o.data.get("status").cloned().unwrap_or(Value::Null)
    }

    /// The `Ready` condition's (status, reason) of `name`, once written.
    async fn ready(&self, name: &str) -> Option<(String, String)> {
        let status = self.status(name).await;
        let c = status["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        Some((
            c["status"].as_str()?.to_owned(),
            c["reason"].as_str()?.to_owned(),
        ))
    }

    async fn until_ready(&self, name: &str, want: (&str, &str)) {
        eventually(&format!("{name} Ready {want:?}"), || async {
            self.ready(name)
                .await
                .is_some_and(|(s, r)| s == want.0 && r == want.1)
        })
        .await;
    }
}

fn e_client(objects: &Objects) -> kube::Client {
    objects.client.clone()
}

/// The KV version of `keyturn/NAME`'s CURRENT, 0 when there is none.
async fn version(e: &AgentEnv, name: &str) -> u64 {
    e.value_at(name, None).await.map_or(0, |(_, v)| v)
}

#[tokio::test]
async fn run_takes_policies_from_objects_and_reports_on_them() {
    let cluster = TestCluster::start().await.unwrap();
    let ns = cluster.namespace().to_owned();
    let crd = cluster
        .install_crd(policy::crd::definition())
        .await
        .expect("the RotationPolicy definition installed");
    let api = crd.api(cluster.client(), &ns);
    let group = crd.group.clone();
    let objects = Objects {
        crd,
        api,
        client: cluster.client(),
    };
    let e = AgentEnv::new(OpenBao::start().await.unwrap(), Some(cluster), 31).await;
    // A policy file, and an object that wants its name (and a store of its own).
    e.write_generated_policy("from-file", "");
    objects.create("from-file", spec("clash")).await;
    objects.create("valid", spec("valid")).await;
    // Passes the schema; keyturn's validation refuses the time zone.
    let mut invalid = spec("invalid");
    invalid.as_object_mut().unwrap().remove("every");
    invalid["schedule"] = json!("0 3 * * *");
    invalid["timezone"] = json!("Nowhere/Atlantis");
    objects.create("invalid", invalid).await;
    // The agent's Vault policy grants `keyturn/*` only: every attempt is refused.
    let mut denied = spec("x");
    denied["store"] = json!({"vault-kv": {"path": "elsewhere/denied"}});
    objects.create("denied", denied).await;
    // Delivers into a Secret and restarts a Deployment.
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}
            }
        }
    }))
    .unwrap();
    Api::<Deployment>::namespaced(e_client(&objects), &ns)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let mut delivered = spec("delivered");
    delivered["distribute"] = json!([{
        "kubernetes": {"namespace": ns, "secret": "delivered", "keys": {"TOKEN": "value"}},
        "restart": [{"kind": "Deployment", "name": "web"}],
    }]);
    objects.create("delivered", delivered).await;

    let listen = format!("127.0.0.1:{}", free_port());
    let mut cmd = e.cmd(
        &["run", "--rotationpolicies", &ns, "--listen", &listen],
        "objects-1",
    );
    cmd.env("KEYTURN_ROTATIONPOLICIES_GROUP", &group);
    let daemon = Daemon::spawn(cmd, e.home.path().join("daemon.log"));

    // The file's policy and the valid object's are rotated; the others are not managed.
    eventually("from-file and valid rotated", || async {
        version(&e, "from-file").await == 1 && version(&e, "valid").await == 1
    })
    .await;
    objects.until_ready("valid", ("True", "Rotated")).await;
    let status = objects.status("valid").await;
    assert_eq!(status["lastRotation"]["outcome"], "rotated", "{status}");
    assert!(status["lastRotation"]["rotationId"].is_string(), "{status}");
    assert!(status["nextRotation"].is_string(), "{status}");
    assert_eq!(status["observedGeneration"], 1, "{status}");
    objects
        .until_ready("from-file", ("False", "NameConflict"))
        .await;
    objects
        .until_ready("invalid", ("False", "InvalidSpec"))
        .await;
    let invalid_status = objects.status("invalid").await.to_string();
    assert!(invalid_status.contains("spec.timezone"), "{invalid_status}");
    assert!(!invalid_status.contains("Atlantis"), "{invalid_status}");
    assert_eq!(version(&e, "clash").await, 0, "the losing object's store");
    assert_eq!(version(&e, "invalid").await, 0);

    // Events on the objects, as the facts happened.
    let events: Api<Event> = Api::namespaced(e_client(&objects), &ns);
    let has_event = |object: &'static str, reason: &'static str| {
        let events = events.clone();
        async move {
            events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .any(|ev| {
                    ev.reason.as_deref() == Some(reason)
                        && ev.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(object)
                })
        }
    };
    for (object, reason) in [
        ("valid", "Rotated"),
        ("delivered", "Rotated"),
        ("delivered", "Distributed"),
        ("delivered", "RestartRequested"),
        ("denied", "RotationFailed"),
    ] {
        let waited = tokio::time::timeout(
            PATIENCE,
            eventually(&format!("a {reason} Event on {object}"), || {
                has_event(object, reason)
            }),
        )
        .await;
        assert!(
            waited.is_ok(),
            "no {reason} Event on {object}; the daemon's log:\n{}",
            daemon.log()
        );
    }
    let secret: Api<Secret> = Api::namespaced(e_client(&objects), &ns);
    let token = secret.get("delivered").await.unwrap().data.unwrap()["TOKEN"]
        .0
        .clone();
    assert_eq!(
        String::from_utf8(token).unwrap(),
        e.value_at("delivered", None).await.unwrap().0,
        "the Secret holds CURRENT"
    );

    // A failing policy: Ready False, Degraded, counted, and retried under backoff (30 s at
    // least), so one failure here, not a storm.
    objects
        .until_ready("denied", ("False", "RotationFailed"))
        .await;
    let denied = objects.status("denied").await;
    assert_eq!(denied["consecutiveFailures"], 1, "{denied}");
    let degraded = denied["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap();
    assert_eq!(degraded["status"], "True", "{denied}");
    assert!(
        denied["nextRotation"].is_string(),
        "the retry time: {denied}"
    );

    // Created while the daemon runs: rotated. Fixed: taken up.
    objects.create("late", spec("late")).await;
    objects
        .api
        .patch(
            "invalid",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"timezone": "UTC"}})),
        )
        .await
        .unwrap();
    eventually("late and the fixed one rotated", || async {
        version(&e, "late").await == 1 && version(&e, "invalid").await == 1
    })
    .await;
    objects.until_ready("invalid", ("True", "Rotated")).await;
    assert_eq!(objects.status("invalid").await["observedGeneration"], 2);
    assert_eq!(
        objects.status("denied").await["consecutiveFailures"],
        1,
        "no second attempt before the backoff"
    );

    // Deleted: no longer managed (its series leave /metrics), its credential stays.
    let metrics = || async {
        reqwest::get(format!("http://{listen}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    assert!(metrics().await.contains("policy=\"valid\""));
    objects
        .api
        .delete("valid", &DeleteParams::default())
        .await
        .unwrap();
    eventually("valid forgotten", || async {
        !metrics().await.contains("policy=\"valid\"")
    })
    .await;
    assert_eq!(version(&e, "valid").await, 1, "the credential stays");
    let text = metrics().await;
    assert!(
        text.contains("keyturn_policy_objects_rejected 1"),
        "the name clash is still rejected: {text}"
    );

    let (status, log) = daemon.stop_async().await;
    assert!(status.success(), "{log}");
    for said in [
        "rotationpolicy/",
        "NameConflict",
        "InvalidSpec",
        "RotationPolicy not managed",
    ] {
        assert!(log.contains(said), "{said} in the log:\n{log}");
    }
    assert!(!log.contains("Atlantis"), "{log}");
    e.verify_audit();
    if e.cluster.as_ref().is_some_and(TestCluster::is_real) {
        objects.crd.remove().await.unwrap();
    }
}

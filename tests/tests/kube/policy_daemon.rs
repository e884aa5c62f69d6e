//! `keyturn run --rotationpolicies NAMESPACE`: the daemon taking policies from RotationPolicy
//! objects beside its policy files, through a watch, against a real OpenBao. A valid object
//! is rotated and its status says so (Ready, lastRotation, nextRotation, observedGeneration,
//! a `Rotated` Event); an invalid one and one whose name a policy file has are not managed and
//! say why; an object created while the daemon runs is rotated; one fixed is taken up; a
//! deleted one is no longer managed and its credential stays in its store.
//!
//! Two replicas sharing the objects through membership Leases: each object is rotated once,
//! by the replica its name belongs to by rendezvous hashing, and only that replica writes its
//! status and Events (an invalid object's too); when one replica stops, the other takes
//! every policy over without rotating any again.
//!
//! Two replicas sharing policy files the same way: each keeps whole only the policies it
//! owns, so one that takes policies over while the files are invalid waits for valid files
//! before it schedules them, and then rotates none of them again.
//!
//! On a real cluster (`KEYTURN_TEST_KUBECONFIG`) the resource is defined in a group of the
//! test's own, which the daemon is told with its hidden `--rotationpolicies-group`.

use std::os::unix::fs::PermissionsExt as _;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use keyturn_agent::daemon::membership;
use keyturn_agent::daemon::status::CONTROLLER;
use keyturn_agent::policy;
use keyturn_tests::agent_env::{AgentEnv, Daemon};
use keyturn_tests::kube::{InstalledCrd, TestCluster};
use keyturn_tests::openbao::OpenBao;
use keyturn_tests::process::{eventually, free_port, tail};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// How long a fact may take to show before the test gives up: a hang, not a speed.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// A generated value at `keyturn/STORE`, once a day (so each is rotated once, at start).
pub(super) fn spec(store: &str) -> Value {
    json!({
        "every": "1d",
        "store": {"vault-kv": {"path": format!("keyturn/{store}")}},
        "target": {"generated": {}},
    })
}

/// The RotationPolicy definition installed for a test, and its objects in the test's
/// namespace (also `policy_cli.rs`'s).
pub(super) struct Objects {
    pub(super) crd: InstalledCrd,
    api: Api<DynamicObject>,
    client: kube::Client,
}

impl Objects {
    /// The RotationPolicy definition installed in `cluster`, and its objects in the test's
    /// namespace.
    pub(super) async fn install(cluster: &TestCluster) -> Self {
        let crd = cluster
            .install_crd(policy::crd::definition())
            .await
            .expect("the RotationPolicy definition installed");
        Self {
            api: crd.api(cluster.client(), cluster.namespace()),
            crd,
            client: cluster.client(),
        }
    }

    pub(super) async fn create(&self, name: &str, spec: Value) {
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
pub(super) async fn version(e: &AgentEnv, name: &str) -> u64 {
    e.value_at(name, None).await.map_or(0, |(_, v)| v)
}

#[tokio::test]
async fn run_takes_policies_from_objects_and_reports_on_them() {
    let cluster = TestCluster::start().await.unwrap();
    let ns = cluster.namespace().to_owned();
    let objects = Objects::install(&cluster).await;
    let group = objects.crd.group.clone();
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

/// The replicas of [`replicas_share_object_policies_and_only_the_owner_reports`] (the first
/// owns the invalid object and is stopped first) and of
/// [`a_replica_takes_over_file_policies_and_waits_for_valid_files_to_run_them`] (the second
/// is killed).
const HOLDERS: [&str; 2] = ["objects-a", "objects-b"];

/// Valid objects each replica owns (by rendezvous over both).
const PER_REPLICA: usize = 6;

/// The owner of `name` while both [`HOLDERS`] are members.
fn owner_of(name: &str) -> &'static str {
    let members: Vec<String> = HOLDERS.iter().map(|h| (*h).to_owned()).collect();
    let owner = membership::rendezvous::owner(name, &members).unwrap();
    HOLDERS.into_iter().find(|h| h == owner).unwrap()
}

/// The names in `names` that `holder` owns while both [`HOLDERS`] are members.
fn owned_by(names: &[String], holder: &str) -> Vec<String> {
    names
        .iter()
        .filter(|n| owner_of(n) == holder)
        .cloned()
        .collect()
}

/// `PER_REPLICA` valid object names per holder, and an invalid one owned by the first
/// holder: chosen by the rendezvous hash itself, so the split is known, not a likelihood.
fn shared_names() -> (Vec<String>, String) {
    let mut valid = Vec::new();
    for holder in HOLDERS {
        valid.extend(
            (0..)
                .map(|i| format!("shared-{i:03}"))
                .filter(|n| owner_of(n) == holder)
                .take(PER_REPLICA),
        );
    }
    valid.sort();
    let invalid = (0..)
        .map(|i| format!("invalid-{i}"))
        .find(|n| owner_of(n) == HOLDERS[0])
        .unwrap();
    (valid, invalid)
}

/// One `keyturn run --rotationpolicies` replica: its own audit file, log and `/metrics`.
struct Replica {
    holder: &'static str,
    daemon: Daemon,
    listen: String,
    audit: std::path::PathBuf,
}

impl Replica {
    /// Starts `holder` over the objects of `ns` (RotationPolicy group `group`), sharing them
    /// through membership Leases in `ns`, with no policy files at all, as `kubeconfig`.
    fn start(
        e: &AgentEnv,
        ns: &str,
        group: &str,
        holder: &'static str,
        kubeconfig: &std::path::Path,
    ) -> Self {
        Self::launch(
            e,
            ns,
            holder,
            kubeconfig,
            &["--rotationpolicies", ns],
            |cmd| {
                cmd.env_remove("KEYTURN_POLICIES")
                    .env("KEYTURN_ROTATIONPOLICIES_GROUP", group);
            },
        )
    }

    /// Starts `holder` over the policy files of `policies` (no RotationPolicy objects),
    /// sharing them through membership Leases in `ns`, as `kubeconfig`.
    fn start_files(
        e: &AgentEnv,
        ns: &str,
        holder: &'static str,
        kubeconfig: &std::path::Path,
        policies: &std::path::Path,
    ) -> Self {
        let dir = policies.to_str().unwrap();
        Self::launch(e, ns, holder, kubeconfig, &["--policies", dir], |cmd| {
            cmd.env("KEYTURN_POLICIES", policies);
        })
    }

    /// `keyturn run SOURCE --membership-namespace NS --membership-lease 6s --listen ADDR` as
    /// `holder`, with its own audit file and log, `configure`d further by the caller.
    fn launch(
        e: &AgentEnv,
        ns: &str,
        holder: &'static str,
        kubeconfig: &std::path::Path,
        source: &[&str],
        configure: impl FnOnce(&mut std::process::Command),
    ) -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        let audit = e.home.path().join(format!("{holder}-audit.jsonl"));
        let mut args = vec!["run"];
        args.extend_from_slice(source);
        args.extend([
            "--membership-namespace",
            ns,
            "--membership-lease",
            "6s",
            "--listen",
            &listen,
        ]);
        let mut cmd = e.cmd(&args, holder);
        cmd.env("KEYTURN_AUDIT_FILE", &audit)
            .env("KUBECONFIG", kubeconfig);
        configure(&mut cmd);
        let daemon = Daemon::spawn(cmd, e.home.path().join(format!("{holder}.log")));
        Self {
            holder,
            daemon,
            listen,
            audit,
        }
    }

    /// Its `/metrics` text; empty while it does not answer.
    async fn metrics(&self) -> String {
        match reqwest::get(format!("http://{}/metrics", self.listen)).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The sample `series` (a name with its labels, as exposed).
    async fn sample(&self, series: &str) -> Option<f64> {
        sample(&self.metrics().await, series)
    }

    /// The tail of its log, for a failure message.
    fn log_tail(&self) -> String {
        format!(
            "--- {} ---\n{}\n",
            self.holder,
            tail(&self.daemon.log(), 40)
        )
    }
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Waits until `cond` holds (polled as [`eventually`] polls), failing after [`PATIENCE`] with
/// `what` and `logs()`: a hang, not a speed.
async fn until<F, Fut>(what: &str, logs: &dyn Fn() -> String, cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let waited = tokio::time::timeout(PATIENCE, eventually(what, cond)).await;
    assert!(waited.is_ok(), "never: {what}\n{}", logs());
}

/// `(reason, reportingInstance, reportingController)` of every Event, by the name of the
/// object it is about.
async fn events_by_object(
    events: &Api<Event>,
) -> std::collections::BTreeMap<String, Vec<(String, String, String)>> {
    let mut by = std::collections::BTreeMap::<String, Vec<_>>::new();
    for ev in events.list(&ListParams::default()).await.unwrap().items {
        let Some(name) = ev.regarding.as_ref().and_then(|r| r.name.clone()) else {
            continue;
        };
        by.entry(name).or_default().push((
            ev.reason.unwrap_or_default(),
            ev.reporting_instance.unwrap_or_default(),
            ev.reporting_controller.unwrap_or_default(),
        ));
    }
    by.values_mut().for_each(|evs| evs.sort());
    by
}

/// The policies of the `rotate.done ok` events in the audit file at `path`, one per
/// completed rotation, sorted.
fn rotations_done(path: &std::path::Path) -> Vec<String> {
    let mut done: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["action"] == "rotate.done" && v["outcome"] == "ok")
        .filter_map(|v| Some(v["resource"].as_str()?.strip_prefix("policy/")?.to_owned()))
        .collect();
    done.sort();
    done
}

/// On the stand-in, a kubeconfig of a service account named after `holder`, so that the
/// stand-in's request log tells the replicas apart (RBAC is not enforced there); on a real
/// cluster the admin's, which is allowed everything the daemon does.
async fn kubeconfig_of(e: &AgentEnv, holder: &str) -> std::path::PathBuf {
    let cluster = e.cluster.as_ref().unwrap();
    if cluster.standin().is_none() {
        return cluster.kubeconfig_path().to_owned();
    }
    let token = cluster
        .service_account_token(cluster.namespace(), holder)
        .await
        .unwrap();
    let path = e.home.path().join(format!("{holder}-kubeconfig"));
    std::fs::write(&path, cluster.kubeconfig_for_token(holder, &token)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_object_policies_and_only_the_owner_reports() {
    let cluster = TestCluster::start().await.unwrap();
    let ns = cluster.namespace().to_owned();
    let objects = Objects::install(&cluster).await;
    let group = objects.crd.group.clone();
    let e = AgentEnv::new(OpenBao::start().await.unwrap(), Some(cluster), 32).await;
    let (valid, invalid) = shared_names();
    let mut replicas = Vec::new();
    for holder in HOLDERS {
        let kubeconfig = kubeconfig_of(&e, holder).await;
        replicas.push(Replica::start(&e, &ns, &group, holder, &kubeconfig));
    }
    let logs = || replicas.iter().map(Replica::log_tail).collect::<String>();

    // Both replicas see each other before there is anything to share, so each object has
    // one owner from the start.
    for r in &replicas {
        until(&format!("{} sees 2 members", r.holder), &logs, || async {
            r.sample("keyturn_daemon_members").await == Some(2.0)
        })
        .await;
    }
    for name in &valid {
        objects.create(name, spec(name)).await;
    }
    let mut bad = spec(&invalid);
    bad.as_object_mut().unwrap().remove("every");
    bad["schedule"] = json!("0 3 * * *");
    bad["timezone"] = json!("Nowhere/Atlantis");
    objects.create(&invalid, bad).await;

    // Each valid object rotated once, by its owner, which reported it; the invalid one is
    // reported as such.
    until("every valid object rotated", &logs, || async {
        for name in &valid {
            if version(&e, name).await != 1 {
                return false;
            }
        }
        true
    })
    .await;
    until("every valid object Ready True Rotated", &logs, || async {
        for name in &valid {
            if objects.ready(name).await != Some(("True".into(), "Rotated".into())) {
                return false;
            }
        }
        true
    })
    .await;
    until(
        &format!("{invalid} Ready False InvalidSpec"),
        &logs,
        || async { objects.ready(&invalid).await == Some(("False".into(), "InvalidSpec".into())) },
    )
    .await;
    let events: Api<Event> = Api::namespaced(objects.client.clone(), &ns);
    until("a Rotated Event on every valid object", &logs, || async {
        let by = events_by_object(&events).await;
        valid.iter().all(|n| {
            by.get(n)
                .is_some_and(|evs| evs.iter().any(|(reason, _, _)| reason == "Rotated"))
        })
    })
    .await;
    // Nothing left to write: every fact reported is out.
    for r in &replicas {
        until(
            &format!("{} has written everything", r.holder),
            &logs,
            || async { r.sample("keyturn_status_pending").await == Some(0.0) },
        )
        .await;
    }

    // The policies are split as the rendezvous hash says, each rotation done by its owner.
    let mut owned_total = 0.0;
    for r in &replicas {
        let metrics = r.metrics().await;
        let owned = sample(&metrics, "keyturn_daemon_policies_owned");
        assert_eq!(
            owned,
            Some(PER_REPLICA as f64),
            "{}: {metrics}\n{}",
            r.holder,
            logs()
        );
        owned_total += owned.unwrap_or_default();
        assert_eq!(
            sample(&metrics, "keyturn_policy_objects_rejected"),
            Some(1.0),
            "{}: {metrics}",
            r.holder
        );
        let mine = owned_by(&valid, r.holder);
        assert_eq!(
            rotations_done(&r.audit),
            mine,
            "{}'s rotations (its audit file)\n{}",
            r.holder,
            logs()
        );
        // A reporter reads an object before its first write about it, once: what it read is
        // what it wrote about. The owner of the invalid object reported it, the other did not
        // even try.
        let reported = mine.len() + usize::from(owner_of(&invalid) == r.holder);
        assert_eq!(
            sample(&metrics, "keyturn_status_reads_total{outcome=\"ok\"}"),
            Some(reported as f64),
            "{} read objects it does not own: {metrics}\n{}",
            r.holder,
            logs()
        );
    }
    assert_eq!(owned_total, valid.len() as f64);
    // Every Event on an object was recorded by its owner, as keyturn's daemon.
    let before_stop = events_by_object(&events).await;
    for name in valid.iter().chain([&invalid]) {
        for (reason, instance, controller) in before_stop.get(name).into_iter().flatten() {
            assert_eq!(
                instance,
                owner_of(name),
                "{reason} Event on {name}: {before_stop:?}"
            );
            assert_eq!(controller, CONTROLLER, "{reason} Event on {name}");
        }
    }
    // On the stand-in each replica has an identity of its own: every read and status write of
    // an object came from its owner, and the invalid object's status was written.
    if let Some(standin) = e.cluster.as_ref().and_then(TestCluster::standin) {
        let requests = standin.requests();
        let about = |name: &str| {
            requests
                .iter()
                .filter(|q| {
                    // The test's own reads are the admin's.
                    q.user != "kubernetes-admin"
                        && q.name.as_deref() == Some(name)
                        && (q.resource == "rotationpolicies" && q.verb == "get"
                            || q.resource == "rotationpolicies/status" && q.verb == "patch")
                })
                .collect::<Vec<_>>()
        };
        for name in valid.iter().chain([&invalid]) {
            let owner = format!("system:serviceaccount:{ns}:{}", owner_of(name));
            let by_others: Vec<_> = about(name)
                .into_iter()
                .filter(|q| q.user != owner)
                .collect();
            assert!(
                by_others.is_empty(),
                "{name} not owned by them: {by_others:?}"
            );
        }
        assert!(
            about(&invalid)
                .iter()
                .any(|q| q.verb == "patch" && q.code == 200),
            "{invalid}'s status was not written: {:?}",
            about(&invalid)
        );
    }
    let mut rotation_ids = std::collections::BTreeMap::new();
    for name in &valid {
        rotation_ids.insert(
            name.clone(),
            objects.status(name).await["lastRotation"]["rotationId"].clone(),
        );
    }

    // The first replica stops (SIGTERM, as in a rolling update): the other takes every policy
    // over, schedules each a day after its rotation, and rotates none again.
    let stopped = replicas.remove(0);
    let stopped_audit = stopped.audit.clone();
    let (exit, stopped_log) = stopped.daemon.stop_async().await;
    assert!(
        exit.success(),
        "{} exited {exit:?}\n{stopped_log}",
        HOLDERS[0]
    );
    assert!(
        stopped_log.contains("membership Lease released"),
        "{stopped_log}"
    );
    let survivor = replicas.remove(0);
    let logs = || {
        format!(
            "--- {} (stopped) ---\n{}\n{}",
            HOLDERS[0],
            tail(&stopped_log, 40),
            survivor.log_tail()
        )
    };
    until("the survivor owns every policy", &logs, || async {
        let m = survivor.metrics().await;
        sample(&m, "keyturn_daemon_members") == Some(1.0)
            && sample(&m, "keyturn_daemon_policies_owned") == Some(valid.len() as f64)
    })
    .await;
    let tomorrow = (chrono::Utc::now() + chrono::Duration::hours(12)).timestamp() as f64;
    until("every policy scheduled by the survivor", &logs, || async {
        let m = survivor.metrics().await;
        valid.iter().all(|n| {
            sample(
                &m,
                &format!("keyturn_next_rotation_timestamp_seconds{{policy=\"{n}\"}}"),
            )
            .is_some()
        })
    })
    .await;
    let m = survivor.metrics().await;
    for name in &valid {
        let next = sample(
            &m,
            &format!("keyturn_next_rotation_timestamp_seconds{{policy=\"{name}\"}}"),
        );
        assert!(
            next.is_some_and(|t| t > tomorrow),
            "{name}'s next rotation is {next:?}, not a day after its rotation"
        );
        assert_eq!(version(&e, name).await, 1, "{name} rotated again");
        assert_eq!(
            objects.ready(name).await,
            Some(("True".into(), "Rotated".into())),
            "{name}"
        );
        assert_eq!(
            objects.status(name).await["lastRotation"]["rotationId"],
            rotation_ids[name],
            "{name}'s last rotation changed"
        );
    }
    assert_eq!(
        objects.ready(&invalid).await,
        Some(("False".into(), "InvalidSpec".into()))
    );

    let (exit, survivor_log) = survivor.daemon.stop_async().await;
    assert!(
        exit.success(),
        "{} exited {exit:?}\n{survivor_log}",
        HOLDERS[1]
    );
    // No new Event: the rotations the survivor took over were not repeated.
    assert_eq!(events_by_object(&events).await, before_stop);
    // The complete audit files: each rotation once, by its first owner (the survivor rotated
    // none of those it took over); both chains verify.
    assert_eq!(
        rotations_done(&stopped_audit),
        owned_by(&valid, HOLDERS[0]),
        "{}'s rotations",
        HOLDERS[0]
    );
    assert_eq!(
        rotations_done(&survivor.audit),
        owned_by(&valid, HOLDERS[1]),
        "{}'s rotations",
        HOLDERS[1]
    );
    for audit in [&stopped_audit, &survivor.audit] {
        let report = keyturn_core::audit::verify(std::slice::from_ref(audit));
        assert!(report.is_ok(), "{}: {report:?}", audit.display());
    }
    for log in [&stopped_log, &survivor_log] {
        assert!(!log.contains("Atlantis"), "{log}");
    }
    if e.cluster.as_ref().is_some_and(TestCluster::is_real) {
        objects.crd.remove().await.unwrap();
    }
}

/// Policy files each replica owns in
/// [`a_replica_takes_over_file_policies_and_waits_for_valid_files_to_run_them`].
const FILES_PER_REPLICA: usize = 4;

/// `FILES_PER_REPLICA` policy names per holder, chosen by the rendezvous hash itself, so the
/// split is known, not a likelihood.
fn file_names() -> Vec<String> {
    let mut names = Vec::new();
    for holder in HOLDERS {
        names.extend(
            (0..)
                .map(|i| format!("file-{i:03}"))
                .filter(|n| owner_of(n) == holder)
                .take(FILES_PER_REPLICA),
        );
    }
    names.sort();
    names
}

/// The daemon's error when the policy files it reads are invalid.
const REJECTED: &str = "policy change rejected";
/// Its error when, besides, policies it took over are not held whole (field `waiting`).
const WAITING: &str = "wait for valid policy files";

/// The JSON log lines of `log` whose message contains `msg`.
fn logged(log: &str, msg: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["msg"].as_str().is_some_and(|m| m.contains(msg)))
        .collect()
}

/// `keyturn_next_rotation_timestamp_seconds` of `policy` in `metrics`: there once the policy is
/// scanned and queued by this replica, gone once it is another's.
fn next_rotation(metrics: &str, policy: &str) -> Option<f64> {
    sample(
        metrics,
        &format!("keyturn_next_rotation_timestamp_seconds{{policy=\"{policy}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_takes_over_file_policies_and_waits_for_valid_files_to_run_them() {
    let cluster = TestCluster::start().await.unwrap();
    let ns = cluster.namespace().to_owned();
    let e = AgentEnv::new(OpenBao::start().await.unwrap(), Some(cluster), 33).await;
    let names = file_names();
    for name in &names {
        e.write_generated_policy(name, "");
    }
    let mut replicas = Vec::new();
    for holder in HOLDERS {
        let kubeconfig = kubeconfig_of(&e, holder).await;
        replicas.push(Replica::start_files(
            &e,
            &ns,
            holder,
            &kubeconfig,
            &e.policies(),
        ));
    }
    let logs = || replicas.iter().map(Replica::log_tail).collect::<String>();

    // Never rotated, so due at once: each policy rotated once, then scheduled a day later by
    // its owner only.
    until("every policy rotated", &logs, || async {
        for name in &names {
            if version(&e, name).await != 1 {
                return false;
            }
        }
        true
    })
    .await;
    for r in &replicas {
        let mine = owned_by(&names, r.holder);
        until(
            &format!("{} sees 2 members and schedules its own policies", r.holder),
            &logs,
            || async {
                let m = r.metrics().await;
                sample(&m, "keyturn_daemon_members") == Some(2.0)
                    && sample(&m, "keyturn_daemon_policies_owned") == Some(mine.len() as f64)
                    && mine.iter().all(|n| next_rotation(&m, n).is_some())
            },
        )
        .await;
        let m = r.metrics().await;
        for name in names.iter().filter(|n| !mine.contains(n)) {
            assert_eq!(
                next_rotation(&m, name),
                None,
                "{} schedules {name}, another's\n{}",
                r.holder,
                logs()
            );
        }
    }

    // Each holds whole only the policies it owns: a replica whose first read of the files
    // raced the other's joining reads them again, and one that did not would hold the
    // other's whole (and, killed later, nothing would wait below).
    for r in &replicas {
        until(
            &format!("{} holds whole only its own policies", r.holder),
            &logs,
            || async {
                // Its start-up line, or its last reload's (always later).
                let log = r.daemon.log();
                let last = logged(&log, "policies reloaded")
                    .pop()
                    .or_else(|| logged(&log, "policies owned by this replica").pop());
                last.is_some_and(|l| l["held"] == FILES_PER_REPLICA)
            },
        )
        .await;
    }

    // The files broken: both replicas reject them and keep what they run.
    let broken = e.policies().join("broken.yaml");
    std::fs::write(
        &broken,
        "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: { name: broken }\nspec:\n  every: 24h\n  store: { vault-kv: { path: keyturn/broken } }\n  target: { generated: {} }\n  rotateSoon: true\n",
    )
    .unwrap();
    until("both replicas reject the broken files", &logs, || async {
        replicas
            .iter()
            .all(|r| !logged(&r.daemon.log(), REJECTED).is_empty())
    })
    .await;
    for r in &replicas {
        let log = r.daemon.log();
        assert!(
            logged(&log, REJECTED)[0]
                .to_string()
                .contains("broken.yaml"),
            "the rejection names the file:\n{log}"
        );
        assert!(
            logged(&log, WAITING).is_empty(),
            "{} waits with nothing taken over:\n{log}",
            r.holder
        );
    }

    // The second replica killed (no Lease released): once its Lease expires the first owns
    // every policy, but cannot read those it took over whole from the broken files, so it
    // says they wait and schedules none of them.
    let mut killed = replicas.pop().unwrap();
    assert_eq!(killed.holder, HOLDERS[1]);
    killed.daemon.signal("KILL");
    killed.daemon.exited().await;
    let killed_log = killed.daemon.log();
    let survivor = replicas.pop().unwrap();
    let logs = || {
        format!(
            "--- {} (killed) ---\n{}\n{}",
            HOLDERS[1],
            tail(&killed_log, 40),
            survivor.log_tail()
        )
    };
    let rotated_before = rotations_done(&survivor.audit);
    let own = owned_by(&names, HOLDERS[0]);
    let gained = owned_by(&names, HOLDERS[1]);
    until(
        "the survivor owns every policy and waits for valid files",
        &logs,
        || async {
            let m = survivor.metrics().await;
            sample(&m, "keyturn_daemon_members") == Some(1.0)
                && sample(&m, "keyturn_daemon_policies_owned") == Some(names.len() as f64)
                && !logged(&survivor.daemon.log(), WAITING).is_empty()
        },
    )
    .await;
    let waits = logged(&survivor.daemon.log(), WAITING);
    assert_eq!(
        waits[0]["waiting"],
        gained.len(),
        "{}\n{}",
        waits[0],
        logs()
    );
    // Still so a membership round (2 s) and more later.
    for look in 0..2 {
        if look > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        }
        let m = survivor.metrics().await;
        for name in &gained {
            assert_eq!(
                next_rotation(&m, name),
                None,
                "{name} scheduled from broken files\n{}",
                logs()
            );
            assert_eq!(version(&e, name).await, 1, "{name} rotated again");
        }
        for name in &own {
            assert!(
                next_rotation(&m, name).is_some(),
                "{name}, its own, unscheduled\n{}",
                logs()
            );
        }
        assert_eq!(
            sample(&m, "keyturn_daemon_policies_owned"),
            Some(names.len() as f64)
        );
    }

    // The files fixed: the watcher's reload reads the waiting policies whole; each is
    // scanned and scheduled a day after its rotation, and none rotated again.
    std::fs::remove_file(&broken).unwrap();
    until("every policy scheduled by the survivor", &logs, || async {
        let m = survivor.metrics().await;
        names.iter().all(|n| next_rotation(&m, n).is_some())
    })
    .await;
    let tomorrow = (chrono::Utc::now() + chrono::Duration::hours(12)).timestamp() as f64;
    let m = survivor.metrics().await;
    for name in &names {
        let next = next_rotation(&m, name);
        assert!(
            next.is_some_and(|t| t > tomorrow),
            "{name}'s next rotation is {next:?}, not a day after its rotation\n{}",
            logs()
        );
        assert_eq!(version(&e, name).await, 1, "{name} rotated again");
    }
    assert_eq!(
        rotations_done(&survivor.audit),
        rotated_before,
        "the survivor rotated policies it took over"
    );

    let (exit, survivor_log) = survivor.daemon.stop_async().await;
    assert!(
        exit.success(),
        "{} exited {exit:?}\n{survivor_log}",
        HOLDERS[0]
    );
    let report = keyturn_core::audit::verify(std::slice::from_ref(&survivor.audit));
    assert!(report.is_ok(), "{}: {report:?}", survivor.audit.display());
}

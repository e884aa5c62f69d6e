//! The Helm chart `charts/keyturn`, checked with the tools its users and clusters run:
//! `helm lint --strict` per environment; `helm template` for each environment and a matrix
//! of non-default values, every built-in object validated against the Kubernetes 1.29–1.33
//! schemas with unknown fields rejected (`kubernetes-validate --strict`) and every render
//! scanned by checkov once (no failed check unless the object carries a skip with a reason);
//! the restricted security context on every Pod; the daemon's StatefulSet (every replica a
//! member, each with its own audit volume and anchor); the rendered RBAC equal to what
//! `keyturn policy rbac` prints for the policies the rendered ConfigMap holds, the
//! membership Leases and RotationPolicy objects included; the admission webhook's
//! objects (its MutatingWebhookConfiguration's selectors and policies, its RBAC exactly,
//! its NetworkPolicy, cert-manager mode); bad values rejected by values.schema.json naming
//! the field; and, with `KEYTURN_TEST_KUBECONFIG`, server-side dry runs against that cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keyturn_tests::tools::{self, repo_root};
use serde_json::{Value, json};

/// The Kubernetes minor versions the chart supports (Chart.yaml `kubeVersion: >=1.29`, and
/// the newest five releases).
const KUBE_VERSIONS: [&str; 5] = ["1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"];

/// CRD kinds have no schema in kubernetes-validate (it warns and passes them): they are
/// checked here by hand instead (ServiceMonitor, cert-manager's Certificate and Issuer), or by
/// the suite's own check of their content (the PrometheusRule's rules are promtool's
/// business, in `alerts.rs`).
const CRD_GROUPS: [&str; 2] = ["monitoring.coreos.com", "cert-manager.io"];

fn tool(name: &str, var: &str) -> PathBuf {
    tools::find(name, var).unwrap_or_else(|e| panic!("{e}"))
}

fn chart() -> PathBuf {
    repo_root().join("charts/keyturn")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The example policies of `policies/rotation/` plus ones that reach every rule shape
/// (several namespaces, StatefulSets, DaemonSets, a Secret shared by two policies), as the
/// chart's `policies:` value.
fn policies() -> Vec<Value> {
    let mut out = Vec::new();
    let dir = repo_root().join("policies/rotation");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if !v.is_null() {
                out.push(v);
            }
        }
    }
    out.push(json!({
        "apiVersion": "keyturn.dev/v1", "kind": "RotationPolicy",
        "metadata": { "name": "billing-token" },
        "spec": {
            "every": "24h",
            "store": { "vault-kv": { "path": "keyturn/billing-token" } },
            "target": { "generated": {} },
            "distribute": [
                { "kubernetes": { "namespace": "billing", "secret": "billing-token", "keys": { "TOKEN": "value" } },
                  "restart": [ { "kind": "StatefulSet", "name": "ledger" }, { "kind": "DaemonSet", "name": "billing-agent" },
                               { "kind": "Deployment", "name": "invoices" } ] },
                { "kubernetes": { "namespace": "shop", "secret": "storefront-api-token", "keys": { "BILLING": "value" } },
                  "restart": [ { "kind": "Deployment", "name": "checkout" } ] }
            ]
        }
    }));
    out
}

/// Values that make the NetworkPolicy renderable (its API server address is required).
fn api_server() -> Value {
    json!({ "networkPolicy": { "egress": { "apiServer": { "cidrs": ["10.0.0.1/32"] } } } })
}

/// One `helm template` invocation.
#[derive(Debug, Clone)]
struct Render {
    label: String,
    release: String,
    namespace: String,
    /// `values-ENV.yaml` files, relative to the chart.
    files: Vec<String>,
    /// Values layered on top, as JSON (YAML is a superset).
    values: Vec<Value>,
}

impl Render {
    fn new(label: &str, env: &str) -> Self {
        Self {
            label: label.to_owned(),
            release: "keyturn".to_owned(),
            namespace: "keyturn-system".to_owned(),
            files: vec![format!("values-{env}.yaml")],
            values: vec![json!({ "policies": policies() })],
        }
    }

    fn with(mut self, v: Value) -> Self {
        self.values.push(v);
        self
    }

    fn command(&self, dir: &Path, verb: &[&str]) -> Command {
        let mut c = Command::new(tool("helm", "KEYTURN_HELM"));
        c.args(verb)
            .arg(&self.release)
            .arg(chart())
            .args(["--namespace", &self.namespace]);
        for f in &self.files {
            c.arg("-f").arg(chart().join(f));
        }
        for (i, v) in self.values.iter().enumerate() {
            let p = dir.join(format!("{}-{i}.json", self.label));
            std::fs::write(&p, v.to_string()).unwrap();
            c.arg("-f").arg(p);
        }
        c
    }

    /// The rendered objects (hooks and tests included), or helm's error.
    fn objects(&self, dir: &Path) -> Result<Vec<Value>, String> {
        let out = run(self.command(dir, &["template"]).arg("--include-crds"));
        if !out.status.success() {
            return Err(text(&out.stderr));
        }
        let rendered = text(&out.stdout);
        let mut docs = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&rendered) {
            let v: Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: rendered YAML does not parse: {e}", self.label));
            if !v.is_null() {
                docs.push(v);
            }
        }
        Ok(docs)
    }
}

/// Every environment, and non-default values on top of production.
fn matrix() -> Vec<Render> {
    vec![
        Render {
            files: vec![],
            ..Render::new("values-yaml-webhook", "prod")
                .with(api_server())
                .with(json!({ "webhook": { "enabled": true } }))
        },
        Render::new("webhook-cert-manager-own-ca", "prod")
            .with(json!({ "webhook": { "certManager": { "enabled": true } } })),
        Render::new("webhook-cert-manager-cluster-issuer-and-options", "staging").with(json!({
            "webhook": {
                "certManager": { "enabled": true, "issuerRef": { "kind": "ClusterIssuer", "name": "corp-ca" } },
                "replicas": 3, "failurePolicy": "Ignore", "reinvocationPolicy": "Never", "timeoutSeconds": 10,
                "excludeNamespaces": ["calico-system", "kube-system"],
                "objectSelector": { "matchExpressions": [ { "key": "keyturn.dev/skip", "operator": "DoesNotExist" } ] },
                "initImage": { "repository": "registry.example/keyturn-init", "digest": format!("sha256:{}", "cd".repeat(32)) },
                "vault": { "address": "https://vault.example.com:8200", "caCert": "/vault/tls/ca.crt", "tlsSecret": "vault-tls" },
                "tokenAudience": "vault",
                "topologySpreadConstraints": [ { "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway" } ],
                "networkPolicy": { "admissionFrom": [ { "ipBlock": { "cidr": "172.16.0.0/28" } } ] },
                "serviceAccount": { "annotations": { "example.com/owner": "platform" } }
            }
        })),
        Render::new("dev", "dev"),
        Render::new("staging", "staging"),
        Render::new("prod", "prod"),
        Render::new("no-networkpolicy", "prod").with(json!({ "networkPolicy": { "enabled": false } })),
        Render::new("no-servicemonitor-no-pdb-no-test", "prod").with(json!({
            "serviceMonitor": { "enabled": false }, "podDisruptionBudget": { "enabled": false },
            "test": { "enabled": false }, "prometheusRule": { "job": "kubernetes-pods" }
        })),
        // One replica on a claim of one's own (the one claim of a release from before the
        // StatefulSet, say).
        Render::new("existing-claim-other-namespace", "prod").with(json!({
            "replicas": 1,
            "audit": { "persistence": { "type": "pvc", "pvc": { "existingClaim": "audit-keep" } } }
        })),
        Render::new("rotation-policies-everywhere-three-replicas", "prod").with(json!({
            "rotationPolicies": { "watch": "all" }, "replicas": 3,
            "daemon": { "membership": { "leaseSeconds": 30 } },
            "affinity": { "podAntiAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": [
                { "topologyKey": "kubernetes.io/hostname",
                  "labelSelector": { "matchLabels": { "app.kubernetes.io/component": "agent" } } } ] } }
        })),
        Render::new("rotation-policies-one-namespace", "dev")
            .with(json!({ "rotationPolicies": { "watch": "shop" } })),
        Render {
            release: "payments".to_owned(),
            namespace: "team-payments".to_owned(),
            ..Render::new("other-release-and-namespace", "staging")
        },
        Render::new("default-values", "prod")
            .with(api_server())
            .with(json!({ "policies": [] })),
        Render {
            files: vec![],
            ..Render::new("values-yaml-only", "prod").with(api_server())
        },
        Render::new("digest-always-ca-secret-create", "staging").with(json!({
            "image": { "repository": "registry.example/keyturn", "digest": format!("sha256:{}", "ab".repeat(32)), "pullPolicy": "Always" },
            "vault": { "caCert": { "secretName": "vault-tls", "configMapName": "", "key": "ca.pem" }, "namespace": "team-a" },
            "rbac": { "allowCreateSecrets": true },
            "daemon": { "env": [ { "name": "AWS_REGION", "value": "eu-west-1" } ] },
            "networkPolicy": { "egress": { "targets": [ { "cidrs": ["10.20.0.0/16"], "ports": [5432, 6379] } ] } }
        })),
        Render::new("byo-serviceaccount-no-rbac-stopped", "prod").with(json!({
            "serviceAccount": { "create": false, "name": "keyturn-managed" },
            "rbac": { "create": false },
            "replicas": 0
        })),
    ]
}

fn is_crd(obj: &Value) -> bool {
    let api = obj["apiVersion"].as_str().unwrap_or_default();
    CRD_GROUPS.iter().any(|g| api.starts_with(&format!("{g}/")))
}

fn kind(obj: &Value) -> &str {
    obj["kind"].as_str().unwrap_or_default()
}

/// `app.kubernetes.io/component`: `agent` (the daemon), `webhook`, `test`.
fn component(obj: &Value) -> &str {
    obj["metadata"]["labels"]["app.kubernetes.io/component"]
        .as_str()
        .unwrap_or_default()
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

/// (kind, namespace, name): an object's identity.
fn key(obj: &Value) -> (String, String, String) {
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
    (kind(obj).to_owned(), ns.to_owned(), name(obj).to_owned())
}

fn to_yaml(objs: &[&Value]) -> String {
    objs.iter()
        .map(|o| format!("---\n{}", serde_yaml::to_string(o).unwrap()))
        .collect()
}

/// Asserts the restricted security context, resources, and the probes and port agreeing
/// with the Service, on every Pod template of a render.
fn check_pods(label: &str, objs: &[Value]) {
    let service_port = objs
        .iter()
        .find(|o| kind(o) == "Service" && component(o) == "agent")
        .map(|s| s["spec"]["ports"][0]["port"].as_u64().unwrap())
        .unwrap_or_else(|| panic!("{label}: no Service"));
    for o in objs {
        let spec = match kind(o) {
            "Deployment" | "StatefulSet" => &o["spec"]["template"]["spec"],
            "Pod" => &o["spec"],
            "ServiceAccount" => {
                assert_eq!(
                    o["automountServiceAccountToken"],
                    json!(false),
                    "{label}: the ServiceAccount automounts its token"
                );
                continue;
            }
            _ => continue,
        };
        let what = format!("{label}: {} {}", kind(o), name(o));
        let psc = &spec["securityContext"];
        for (k, v) in [
            ("runAsNonRoot", json!(true)),
            ("runAsUser", json!(65532)),
            ("runAsGroup", json!(65532)),
            ("seccompProfile", json!({ "type": "RuntimeDefault" })),
        ] {
            assert_eq!(psc[k], v, "{what}: pod securityContext.{k}");
        }
        assert_eq!(
            spec["automountServiceAccountToken"],
            json!(true),
            "{what}: the daemon, the webhook and doctor use the API"
        );
        let containers = spec["containers"].as_array().unwrap();
        assert!(
            spec.get("initContainers").is_none(),
            "{what}: init containers are not checked here"
        );
        for c in containers {
            let sc = &c["securityContext"];
            for (k, v) in [
                ("runAsNonRoot", json!(true)),
                ("runAsUser", json!(65532)),
                ("runAsGroup", json!(65532)),
                ("readOnlyRootFilesystem", json!(true)),
                ("allowPrivilegeEscalation", json!(false)),
                ("capabilities", json!({ "drop": ["ALL"] })),
                ("seccompProfile", json!({ "type": "RuntimeDefault" })),
            ] {
                assert_eq!(sc[k], v, "{what}: container securityContext.{k}");
            }
            for r in ["requests", "limits"] {
                for q in ["cpu", "memory"] {
                    assert!(
                        c["resources"][r][q].is_string(),
                        "{what}: resources.{r}.{q}"
                    );
                }
            }
        }
        if kind(o) == "Deployment" && component(o) == "webhook" {
            check_webhook_deployment(&what, o, objs);
        } else if kind(o) == "StatefulSet" && component(o) == "agent" {
            check_daemon(&what, o, service_port);
        } else {
            assert_eq!(containers[0]["args"], json!(["doctor"]), "{what}");
            assert_eq!(
                o["metadata"]["annotations"]["helm.sh/hook"],
                json!("test"),
                "{what}"
            );
        }
    }
}

/// The environment variables `keyturn webhook` reads (the flags' variables and the global
/// ones): the chart sets no other, so a misspelt name fails here instead of being ignored.
/// Every variable `keyturn webhook` reads, from its clap definition (so a variable the chart
/// sets that the binary does not read, or no longer reads, fails here).
fn webhook_env() -> Vec<String> {
    subcommand_env("webhook")
}

/// Every variable `keyturn SUBCOMMAND` reads (its flags' and the global ones), from clap.
fn subcommand_env(subcommand: &str) -> Vec<String> {
    use clap::CommandFactory as _;
    let cli = keyturn_agent::cli::Cli::command();
    let sub = cli
        .get_subcommands()
        .find(|c| c.get_name() == subcommand)
        .unwrap_or_else(|| panic!("keyturn {subcommand}"));
    cli.get_arguments()
        .chain(sub.get_arguments())
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect()
}

/// The daemon's StatefulSet: `keyturn run` on the Service's port with both probes; every
/// KEYTURN_ variable one `keyturn run` reads; a member at every replica count (its
/// holder the pod's stable name, its Leases in its own namespace, a lease the daemon
/// accepts); rolled one replica at a time; each replica's audit log on a volume of its own
/// (an emptyDir, a claim from the templates kept on scale-down and deletion, or one claim
/// at one replica) and, when anchored, anchored on a path of its own.
fn check_daemon(what: &str, sts: &Value, service_port: u64) {
    let spec = &sts["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args[0], "run", "{what}");
    assert!(
        args.contains(&format!("--listen=0.0.0.0:{service_port}").as_str()),
        "{what}: the daemon listens on the Service's port: {args:?}"
    );
    assert_eq!(
        c["ports"][0]["containerPort"],
        json!(service_port),
        "{what}"
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({ "path": "/healthz", "port": "metrics" }),
        "{what}"
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({ "path": "/readyz", "port": "metrics" }),
        "{what}"
    );

    let env = env_of(c);
    let known = subcommand_env("run");
    // VAULT_* are read by the Vault client, beside clap.
    for k in env.keys().filter(|k| k.starts_with("KEYTURN_")) {
        assert!(
            known.contains(k),
            "{what}: {k} is not one of keyturn run's variables"
        );
    }
    assert_eq!(
        env["KEYTURN_HOLDER"],
        json!({ "fieldRef": { "fieldPath": "metadata.name" } }).to_string(),
        "{what}: the holder is the pod's stable name"
    );
    assert_eq!(
        env["KEYTURN_MEMBERSHIP_NAMESPACE"],
        json!({ "fieldRef": { "fieldPath": "metadata.namespace" } }).to_string(),
        "{what}: the member Leases live in the daemon's own namespace"
    );
    let lease = env["KEYTURN_MEMBERSHIP_LEASE"]
        .strip_suffix('s')
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{what}: KEYTURN_MEMBERSHIP_LEASE {env:?}"));
    assert!(
        (3..=300).contains(&lease),
        "{what}: --membership-lease {lease}s"
    );

    assert_eq!(
        sts["spec"]["updateStrategy"],
        json!({ "type": "RollingUpdate" }),
        "{what}: one replica at a time"
    );
    assert_eq!(
        sts["spec"]["podManagementPolicy"],
        json!("Parallel"),
        "{what}"
    );
    assert!(sts["spec"]["serviceName"].is_string(), "{what}");

    // The audit directory: exactly one source, per replica unless one claim at one replica.
    let volumes: Vec<&Value> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["name"] == "audit")
        .collect();
    let templates: Vec<&Value> = sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["metadata"]["name"] == "audit")
        .collect();
    assert_eq!(
        volumes.len() + templates.len(),
        1,
        "{what}: the audit volume comes from exactly one place"
    );
    if let Some(t) = templates.first() {
        assert_eq!(
            sts["spec"]["persistentVolumeClaimRetentionPolicy"],
            json!({ "whenDeleted": "Retain", "whenScaled": "Retain" }),
            "{what}: audit logs outlive the StatefulSet"
        );
        let labels = t["metadata"]["labels"].as_object().unwrap();
        assert!(
            labels
                .keys()
                .all(|k| !k.starts_with("helm.sh/") && k != "app.kubernetes.io/version"),
            "{what}: claim templates cannot change after install, so nothing version-bound: {labels:?}"
        );
    } else if volumes[0].get("persistentVolumeClaim").is_some() {
        assert!(
            sts["spec"]["replicas"].as_u64().unwrap() <= 1,
            "{what}: one claim shared by several replicas"
        );
    } else {
        assert!(
            volumes[0].get("emptyDir").is_some(),
            "{what}: {}",
            volumes[0]
        );
    }
    if let Some(anchor) = args.iter().find_map(|a| a.strip_prefix("--audit-anchor=")) {
        assert!(
            anchor.starts_with("vault-kv:") && anchor.ends_with("/$(KEYTURN_HOLDER)"),
            "{what}: each replica anchors its own log: {anchor}"
        );
    }
}

/// A container's environment: name to `value`, or to its `valueFrom` as JSON text.
fn env_of(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let v = e["value"]
                .as_str()
                .map_or_else(|| e["valueFrom"].to_string(), str::to_owned);
            (e["name"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}

/// The one object of a kind and component in a render.
fn the<'a>(objs: &'a [Value], kind_: &str, component_: &str) -> &'a Value {
    let found: Vec<&Value> = objs
        .iter()
        .filter(|o| kind(o) == kind_ && component(o) == component_)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {kind_} of component {component_}: {:?}",
        found.iter().map(|o| name(o)).collect::<Vec<_>>()
    );
    found[0]
}

/// Whether a LabelSelector selects these labels (matchLabels and the four operators).
fn selects(selector: &Value, labels: &Value) -> bool {
    let has = |k: &str| labels.get(k).and_then(Value::as_str);
    let by_label = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| has(k) == v.as_str());
    let by_expression = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e["operator"].as_str().unwrap() {
                "In" => has(key).is_some_and(|v| values.contains(&v)),
                "NotIn" => has(key).is_none_or(|v| !values.contains(&v)),
                "Exists" => has(key).is_some(),
                "DoesNotExist" => has(key).is_none(),
                other => panic!("unknown selector operator {other}"),
            }
        });
    by_label && by_expression
}

/// The webhook's Deployment: `keyturn webhook` from the daemon's image, under its own
/// ServiceAccount, its ports behind its Service, probes on the metrics port, a rollout that
/// keeps every replica until its successor is ready, and the environment the interface
/// names, the certificate source (in-memory CA or cert-manager's Secret) agreeing with the
/// MutatingWebhookConfiguration.
fn check_webhook_deployment(what: &str, dep: &Value, objs: &[Value]) {
    let spec = &dep["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    assert_eq!(spec["containers"].as_array().unwrap().len(), 1, "{what}");
    assert_eq!(c["args"], json!(["webhook"]), "{what}");
    let daemon = the(objs, "StatefulSet", "agent");
    assert_eq!(
        c["image"], daemon["spec"]["template"]["spec"]["containers"][0]["image"],
        "{what}: the webhook is a subcommand of the daemon's image"
    );
    assert_ne!(
        spec["serviceAccountName"], daemon["spec"]["template"]["spec"]["serviceAccountName"],
        "{what}: the webhook has a ServiceAccount of its own"
    );
    assert_eq!(
        c["ports"],
        json!([
            { "name": "https", "containerPort": 8443, "protocol": "TCP" },
            { "name": "metrics", "containerPort": 9090, "protocol": "TCP" }
        ]),
        "{what}"
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({ "path": "/healthz", "port": "metrics" }),
        "{what}"
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({ "path": "/readyz", "port": "metrics" }),
        "{what}"
    );
    assert_eq!(
        dep["spec"]["strategy"],
        json!({ "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 0, "maxSurge": 1 } }),
        "{what}"
    );
    let anti = &spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0]["podAffinityTerm"];
    assert_eq!(
        anti["topologyKey"],
        json!("kubernetes.io/hostname"),
        "{what}"
    );
    let pod_labels = &dep["spec"]["template"]["metadata"]["labels"];
    assert!(
        selects(&anti["labelSelector"], pod_labels),
        "{what}: {anti}"
    );
    for t in spec["topologySpreadConstraints"]
        .as_array()
        .into_iter()
        .flatten()
    {
        assert!(selects(&t["labelSelector"], pod_labels), "{what}: {t}");
    }

    let svc = the(objs, "Service", "webhook");
    assert!(
        selects(
            &json!({ "matchLabels": svc["spec"]["selector"] }),
            pod_labels
        ),
        "{what}"
    );
    assert_eq!(
        svc["spec"]["ports"],
        json!([
            { "name": "https", "port": 443, "targetPort": "https", "protocol": "TCP" },
            { "name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP" }
        ]),
        "{what}"
    );

    let env = env_of(c);
    let known = webhook_env();
    for k in env.keys() {
        assert!(
            known.contains(k),
            "{what}: {k} is not one of keyturn webhook's variables"
        );
    }
    assert_eq!(env["KEYTURN_WEBHOOK_LISTEN"], "0.0.0.0:8443", "{what}");
    assert_eq!(
        env["KEYTURN_WEBHOOK_METRICS_LISTEN"], "0.0.0.0:9090",
        "{what}"
    );
    assert!(
        env["KEYTURN_WEBHOOK_INIT_IMAGE"].contains("keyturn-init"),
        "{what}: {env:?}"
    );
    assert!(
        env["KEYTURN_WEBHOOK_VAULT_ADDR"].starts_with("http"),
        "{what}: {env:?}"
    );
    assert_eq!(
        env["KEYTURN_WEBHOOK_NAMESPACE"],
        json!({ "fieldRef": { "fieldPath": "metadata.namespace" } }).to_string(),
        "{what}"
    );
    assert_eq!(
        env["KEYTURN_HOLDER"],
        json!({ "fieldRef": { "fieldPath": "metadata.name" } }).to_string(),
        "{what}"
    );
    assert_eq!(env["KEYTURN_LOG_FORMAT"], "json", "{what}");
    for k in ["REQUEST", "LIMIT"] {
        for q in ["CPU", "MEMORY"] {
            assert!(
                env.contains_key(&format!("KEYTURN_WEBHOOK_INIT_{q}_{k}")),
                "{what}"
            );
        }
    }

    let mwc = the(objs, "MutatingWebhookConfiguration", "webhook");
    let injected_from = mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].as_str();
    if let Some(from) = injected_from {
        // cert-manager mode: the Certificate named by the annotation, its Secret mounted,
        // the files given; no configuration for the webhook to write to.
        let cert = objs
            .iter()
            .find(|o| {
                kind(o) == "Certificate"
                    && format!(
                        "{}/{}",
                        o["metadata"]["namespace"].as_str().unwrap(),
                        name(o)
                    ) == from
            })
            .unwrap_or_else(|| panic!("{what}: no Certificate {from}"));
        let secret = &cert["spec"]["secretName"];
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["secret"]["secretName"] == *secret)
            .unwrap_or_else(|| panic!("{what}: the Certificate's Secret {secret} is not mounted"));
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume["name"])
            .unwrap();
        let dir = mount["mountPath"].as_str().unwrap();
        assert_eq!(mount["readOnly"], json!(true), "{what}");
        assert_eq!(
            env["KEYTURN_WEBHOOK_TLS_CERT"],
            format!("{dir}/tls.crt"),
            "{what}"
        );
        assert_eq!(
            env["KEYTURN_WEBHOOK_TLS_KEY"],
            format!("{dir}/tls.key"),
            "{what}"
        );
        for k in ["KEYTURN_WEBHOOK_CONFIGURATION", "KEYTURN_WEBHOOK_SERVICE"] {
            assert!(
                !env.contains_key(k),
                "{what}: {k} is set in cert-manager mode"
            );
        }
    } else {
        assert_eq!(env["KEYTURN_WEBHOOK_SERVICE"], name(svc), "{what}");
        assert_eq!(env["KEYTURN_WEBHOOK_CONFIGURATION"], name(mwc), "{what}");
        for k in ["KEYTURN_WEBHOOK_TLS_CERT", "KEYTURN_WEBHOOK_TLS_KEY"] {
            assert!(
                !env.contains_key(k),
                "{what}: {k} is set with the in-memory CA"
            );
        }
        assert!(
            spec.get("volumes").is_none(),
            "{what}: the in-memory CA needs no volume"
        );
    }
}

/// The MutatingWebhookConfiguration: one webhook, called through the webhook's Service at
/// /mutate, for pod CREATE only, with every policy explicit; never the control plane's
/// namespaces, the release's, or a namespace labelled with the opt-out label; no caBundle
/// rendered (the webhook or cert-manager writes it, and an upgrade must leave it alone).
fn check_webhook_configuration(label: &str, namespace: &str, opt_out: &str, objs: &[Value]) {
    let mwc = the(objs, "MutatingWebhookConfiguration", "webhook");
    let svc = the(objs, "Service", "webhook");
    let hooks = mwc["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 1, "{label}");
    let h = &hooks[0];
    assert!(
        h["name"].as_str().unwrap().split('.').count() >= 3,
        "{label}: a webhook's name has at least three segments"
    );
    assert_eq!(
        h["clientConfig"],
        json!({ "service": { "name": name(svc), "namespace": namespace, "path": "/mutate", "port": 443 } }),
        "{label}: the Service, and no caBundle or url"
    );
    assert_eq!(
        h["rules"],
        json!([{ "operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced" }]),
        "{label}"
    );
    assert_eq!(
        h["admissionReviewVersions"],
        json!(["v1", "v1beta1"]),
        "{label}"
    );
    assert_eq!(h["sideEffects"], json!("NoneOnDryRun"), "{label}");
    assert_eq!(h["matchPolicy"], json!("Equivalent"), "{label}");
    assert!(
        matches!(h["failurePolicy"].as_str(), Some("Fail" | "Ignore")),
        "{label}: failurePolicy is explicit: {}",
        h["failurePolicy"]
    );
    assert!(
        matches!(h["reinvocationPolicy"].as_str(), Some("IfNeeded" | "Never")),
        "{label}"
    );
    assert!(
        h["timeoutSeconds"]
            .as_u64()
            .is_some_and(|t| (1..=30).contains(&t)),
        "{label}"
    );
    // What the selector does, on namespaces' labels as the API server sees them.
    let ns = |n: &str, extra: Value| {
        let mut labels = json!({ "kubernetes.io/metadata.name": n });
        labels
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        selects(&h["namespaceSelector"], &labels)
    };
    for excluded in ["kube-system", "kube-public", namespace] {
        assert!(
            !ns(excluded, json!({})),
            "{label}: namespace {excluded} is sent to the webhook"
        );
    }
    assert!(
        ns("shop", json!({})),
        "{label}: an ordinary namespace is not sent to the webhook"
    );
    assert!(
        ns("shop", json!({ (opt_out): "enabled" })),
        "{label}: only `disabled` opts out"
    );
    assert!(
        !ns("shop", json!({ (opt_out): "disabled" })),
        "{label}: an opted-out namespace is sent to the webhook"
    );
}

/// Each ServiceMonitor (a CRD kind kubernetes-validate has no schema for) selects its
/// component's Service and scrapes its metrics port in the release's namespace.
fn check_service_monitor(label: &str, namespace: &str, objs: &[Value]) {
    for sm in objs.iter().filter(|o| kind(o) == "ServiceMonitor") {
        check_one_service_monitor(label, namespace, sm, objs);
    }
}

fn check_one_service_monitor(label: &str, namespace: &str, sm: &Value, objs: &[Value]) {
    let svc = objs
        .iter()
        .find(|o| kind(o) == "Service" && component(o) == component(sm))
        .unwrap_or_else(|| panic!("{label}: no Service for ServiceMonitor {}", name(sm)));
    let labels = svc["metadata"]["labels"].as_object().unwrap();
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            labels.get(k),
            Some(v),
            "{label}: the ServiceMonitor's selector {k} does not match the Service"
        );
    }
    assert_eq!(
        sm["spec"]["namespaceSelector"]["matchNames"],
        json!([namespace]),
        "{label}"
    );
    let port = &sm["spec"]["endpoints"][0]["port"];
    assert!(
        svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == *port && *port == json!("metrics")),
        "{label}: ServiceMonitor {} scrapes port {port}, not the Service's metrics port",
        name(sm)
    );
    assert_eq!(
        sm["spec"]["endpoints"][0]["path"],
        json!("/metrics"),
        "{label}"
    );
}

/// The daemon's StatefulSet with a field no Kubernetes version knows and a privileged
/// container: the validators must fail it, or their passing means nothing.
fn planted(objs: &[Value]) -> Value {
    let mut d = objs
        .iter()
        .find(|o| kind(o) == "StatefulSet")
        .unwrap()
        .clone();
    d["metadata"]["name"] = json!("planted");
    d["metadata"]["annotations"] = json!({});
    d["spec"]["template"]["spec"]["notAField"] = json!(true);
    d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = json!(true);
    d
}

#[test]
fn app_version_is_the_workspace_version() {
    let cargo = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let version = cargo
        .lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find_map(|l| l.strip_prefix("version = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let meta: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(meta["apiVersion"], json!("v2"));
    assert_eq!(
        meta["appVersion"],
        json!(version),
        "Chart.yaml appVersion must follow Cargo.toml"
    );
}

#[test]
fn helm_lint_strict_passes_for_each_environment() {
    for env in ["dev", "staging", "prod"] {
        let out = run(Command::new(tool("helm", "KEYTURN_HELM"))
            .args(["lint", "--strict", "--namespace", "keyturn-system"])
            .arg(chart())
            .arg("-f")
            .arg(chart().join(format!("values-{env}.yaml"))));
        assert!(
            out.status.success(),
            "helm lint --strict -f values-{env}.yaml:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

#[test]
fn every_render_is_valid_for_kubernetes_1_29_to_1_33_restricted_and_passes_checkov() {
    // Not tempdir()'s `.tmpXXXX`: checkov silently skips directories whose name starts with
    // a dot, and would pass having scanned nothing.
    let tmp = tempfile::Builder::new()
        .prefix("keyturn-chart")
        .tempdir()
        .unwrap();
    let manifests = tmp.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let mut files = Vec::new();
    let mut built_in = 0;
    let mut crd_kinds = BTreeMap::<String, usize>::new();
    let mut first = None;
    for r in matrix() {
        let objs = r
            .objects(tmp.path())
            .unwrap_or_else(|e| panic!("{}: helm template failed:\n{e}", r.label));
        check_pods(&r.label, &objs);
        check_service_monitor(&r.label, &r.namespace, &objs);
        if objs.iter().any(|o| component(o) == "webhook") {
            check_webhook_configuration(&r.label, &r.namespace, "keyturn.dev/injection", &objs);
        }
        let (crds, builtins): (Vec<&Value>, Vec<&Value>) = objs.iter().partition(|o| is_crd(o));
        for c in crds {
            *crd_kinds.entry(kind(c).to_owned()).or_default() += 1;
        }
        built_in += builtins.len();
        let f = manifests.join(format!("{}.yaml", r.label));
        std::fs::write(&f, to_yaml(&builtins)).unwrap();
        files.push(f);
        first.get_or_insert(objs);
    }
    eprintln!(
        "CRD objects checked by hand or by their own test, not kubernetes-validate: {crd_kinds:?}"
    );
    assert!(
        crd_kinds.contains_key("ServiceMonitor"),
        "some render has a ServiceMonitor"
    );

    // The planted object lives outside `manifests/`, beside it, so each tool's verdict on it
    // is read separately.
    let planted_dir = tmp.path().join("planted");
    std::fs::create_dir(&planted_dir).unwrap();
    let planted_file = planted_dir.join("planted.yaml");
    std::fs::write(&planted_file, to_yaml(&[&planted(first.as_ref().unwrap())])).unwrap();

    let validate = tool("kubernetes-validate", "KEYTURN_KUBERNETES_VALIDATE");
    for version in KUBE_VERSIONS {
        let out = run(Command::new(&validate)
            .args(["--strict", "-k", version])
            .args(&files));
        let stdout = text(&out.stdout);
        let passed = stdout
            .lines()
            .filter(|l| l.starts_with("INFO") && l.contains(" passed "))
            .count();
        assert!(
            out.status.success() && passed == built_in && !stdout.contains("WARN"),
            "kubernetes-validate --strict -k {version}: {passed} of {built_in} passed\n{stdout}{}",
            text(&out.stderr)
        );
        let bad = run(Command::new(&validate)
            .args(["--strict", "-k", version])
            .arg(&planted_file));
        assert!(
            !bad.status.success() && text(&bad.stdout).contains("notAField"),
            "kubernetes-validate accepted an unknown field for {version}: {}",
            text(&bad.stdout)
        );
    }

    // checkov once over everything: it is the slow one.
    let out = run(Command::new(tool("checkov", "KEYTURN_CHECKOV"))
        .args([
            "--framework",
            "kubernetes",
            "--skip-download",
            "-o",
            "json",
            "-d",
        ])
        .arg(tmp.path()));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "checkov output is not JSON ({e}):\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    let reports = match report {
        Value::Array(a) => a,
        one => vec![one],
    };
    let mut failed_ours = Vec::new();
    let mut failed_planted = Vec::new();
    let mut skipped = std::collections::BTreeSet::new();
    for r in &reports {
        for f in r["results"]["failed_checks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let line = format!(
                "{} {} {}",
                f["check_id"].as_str().unwrap_or("?"),
                f["resource"],
                f["file_path"]
            );
            if f["file_path"]
                .as_str()
                .unwrap_or_default()
                .contains("planted")
            {
                failed_planted.push(line);
            } else {
                failed_ours.push(line);
            }
        }
        for s in r["results"]["skipped_checks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            skipped.insert(s["check_id"].as_str().unwrap_or("?").to_owned());
        }
    }
    let scanned: u64 = reports
        .iter()
        .map(|r| r["summary"]["resource_count"].as_u64().unwrap_or(0))
        .sum();
    eprintln!("checkov scanned {scanned} resources ({built_in} built-in objects rendered)");
    assert!(
        failed_ours.is_empty(),
        "checkov failed checks on the chart's renders:\n{}",
        failed_ours.join("\n")
    );
    assert!(
        failed_planted.iter().any(|l| l.starts_with("CKV_K8S_16 ")),
        "checkov did not catch the planted privileged container: {failed_planted:?}"
    );
    eprintln!("checkov checks skipped by annotations in the chart: {skipped:?}");
    // Every skip is explained next to it in templates/_pod.tpl, templates/_webhook.tpl,
    // templates/webhook-rbac.yaml or templates/tests/doctor.yaml; a new one must be added here
    // on purpose. CKV_K8S_155 flags any write to MutatingWebhookConfigurations, whatever
    // its resourceNames: the webhook's ClusterRole may update only its own configuration's
    // caBundle (checked by the RBAC test below).
    let explained = [
        "CKV_K8S_8",
        "CKV_K8S_9",
        "CKV_K8S_15",
        "CKV_K8S_38",
        "CKV_K8S_43",
        "CKV_K8S_155",
    ];
    assert!(
        skipped.iter().all(|s| explained.contains(&s.as_str())),
        "checkov checks skipped without being listed here: {skipped:?}"
    );
    assert!(
        !skipped.is_empty(),
        "checkov reported no skips: did it read the annotations?"
    );
    assert!(
        usize::try_from(scanned).unwrap() > built_in,
        "checkov scanned {scanned} resources of {built_in} rendered (and the planted one)"
    );
}

/// `keyturn policy rbac` over the policy files the rendered ConfigMap holds (what the daemon
/// will load), with the ServiceAccount the chart binds and the membership namespace the
/// daemon is given (its own), against the chart's own (Cluster)Roles and bindings for the
/// daemon: equal as objects, the chart adding only labels. `want` is how many objects.
fn rbac_matches(label: &str, extra: Value, cli_flags: &[&str], want: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let r = Render {
        namespace: "agents".to_owned(),
        ..Render::new(label, "prod").with(extra)
    };
    let objs = r.objects(tmp.path()).unwrap();
    let cm = objs
        .iter()
        .find(|o| kind(o) == "ConfigMap" && name(o).ends_with("-policies"))
        .unwrap();
    let dir = tmp.path().join("policies");
    std::fs::create_dir(&dir).unwrap();
    let data = cm["data"].as_object().unwrap();
    assert_eq!(data.len(), policies().len(), "one file per policy");
    for (file, body) in data {
        std::fs::write(dir.join(file), body.as_str().unwrap()).unwrap();
    }
    let out = run(Command::new(keyturn_tests::bins::keyturn())
        .args(["policy", "rbac"])
        .arg(&dir)
        .args(["--service-account", "keyturn", "--namespace", "agents"])
        .args(["--membership-namespace", "agents"])
        .args(cli_flags));
    assert!(
        out.status.success(),
        "keyturn policy rbac: {}",
        text(&out.stderr)
    );
    let mut cli = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(&text(&out.stdout)) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if !v.is_null() {
            cli.insert(key(&v), v);
        }
    }
    let mut chart = BTreeMap::new();
    // The daemon's; the webhook's own Role is checked in
    // `the_webhook_rbac_is_events_its_own_configuration_and_leases_and_nothing_else`.
    for o in objs.iter().filter(|o| {
        matches!(
            kind(o),
            "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding"
        ) && component(o) == "agent"
    }) {
        let mut o = o.clone();
        let labels = o["metadata"]["labels"].as_object().unwrap().clone();
        let id = key(&o);
        if let Some(want) = cli.get(&id) {
            // The chart's labels are a superset of the command's (it adds Helm's own).
            for (k, v) in want["metadata"]["labels"].as_object().unwrap() {
                assert_eq!(labels.get(k), Some(v), "{label}: {id:?} label {k}");
            }
            o["metadata"]["labels"] = want["metadata"]["labels"].clone();
        }
        chart.insert(id, o);
    }
    assert_eq!(
        cli.len(),
        want,
        "{label}: the policies reach two namespaces, the membership Role one more: {:?}",
        cli.keys()
    );
    assert_eq!(
        chart, cli,
        "{label}: the chart's RBAC differs from `keyturn policy rbac`"
    );
}

#[test]
fn the_rendered_rbac_is_what_keyturn_policy_rbac_prints_for_the_same_policies() {
    // Two delivery namespaces' Roles and bindings, and the membership Role's.
    rbac_matches("rbac", json!({}), &[], 6);
    rbac_matches(
        "rbac-create",
        json!({ "rbac": { "allowCreateSecrets": true } }),
        &["--allow-create-secrets"],
        6,
    );
    rbac_matches(
        "rbac-rotation-policies-all",
        json!({ "rotationPolicies": { "watch": "all" } }),
        &["--rotationpolicies", "all"],
        8,
    );
    rbac_matches(
        "rbac-rotation-policies-shop",
        json!({ "rotationPolicies": { "watch": "shop" } }),
        &["--rotationpolicies", "shop"],
        8,
    );
}

#[test]
fn bad_values_are_rejected_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("negative replicas", json!({ "replicas": -1 }), "/replicas"),
        (
            // values-prod runs two replicas: each needs its own audit log.
            "one existing claim for two replicas",
            json!({ "audit": { "persistence": { "type": "pvc", "pvc": { "existingClaim": "audit-keep" } } } }),
            "audit.persistence.pvc.existingClaim",
        ),
        (
            "a membership lease keyturn run refuses",
            json!({ "daemon": { "membership": { "leaseSeconds": 2 } } }),
            "/daemon/membership/leaseSeconds",
        ),
        (
            "a membership lease as a duration",
            json!({ "daemon": { "membership": { "leaseSeconds": "15s" } } }),
            "/daemon/membership/leaseSeconds",
        ),
        (
            "a RotationPolicy scope that is no namespace",
            json!({ "rotationPolicies": { "watch": "All" } }),
            "/rotationPolicies/watch",
        ),
        ("a misspelt key", json!({ "replica": 1 }), "'replica'"),
        (
            "a misspelt nested key",
            json!({ "audit": { "hmackey": {} } }),
            "'hmackey'",
        ),
        (
            "an unknown pull policy",
            json!({ "image": { "pullPolicy": "Sometimes" } }),
            "/image/pullPolicy",
        ),
        (
            "a port as text",
            json!({ "service": { "port": "metrics" } }),
            "/service/port",
        ),
        (
            "an address without scheme",
            json!({ "vault": { "address": "vault.example:8200" } }),
            "/vault/address",
        ),
        (
            "an unknown auth method",
            json!({ "vault": { "auth": { "method": "token" } } }),
            "/vault/auth/method",
        ),
        (
            "an unknown audit volume",
            json!({ "audit": { "persistence": { "type": "hostPath" } } }),
            "/audit/persistence/type",
        ),
        (
            "a bad anchor",
            json!({ "audit": { "anchor": "kv:secret/x" } }),
            "/audit/anchor",
        ),
        (
            "a bad CIDR",
            json!({ "networkPolicy": { "egress": { "apiServer": { "cidrs": ["10.0.0.1"] } } } }),
            "/networkPolicy/egress/apiServer/cidrs/0",
        ),
        (
            "another kind of document",
            json!({ "policies": [ { "apiVersion": "keyturn.dev/v1", "kind": "Policy", "metadata": { "name": "a" }, "spec": {} } ] }),
            "/policies/0/kind",
        ),
        (
            "a restart of an unknown kind",
            json!({ "policies": [ { "apiVersion": "keyturn.dev/v1", "kind": "RotationPolicy", "metadata": { "name": "a" },
            "spec": { "distribute": [ { "kubernetes": { "namespace": "shop", "secret": "s" }, "restart": [ { "kind": "CronJob", "name": "c" } ] } ] } } ] }),
            "/policies/0/spec/distribute/0/restart/0/kind",
        ),
        (
            "no API server for the NetworkPolicy",
            json!({ "networkPolicy": { "egress": { "apiServer": { "cidrs": [] } } } }),
            "networkPolicy.egress.apiServer.cidrs",
        ),
        (
            "two CA sources",
            json!({ "vault": { "caCert": { "secretName": "a", "configMapName": "b" } } }),
            "vault.caCert",
        ),
        (
            "two policies of one name",
            json!({ "policies": [policies()[0].clone(), policies()[0].clone()] }),
            "metadata.name must be unique",
        ),
        (
            "a retry cap the daemon refuses",
            json!({ "daemon": { "retryMax": "48h" } }),
            "/daemon/retryMax",
        ),
        (
            "a retry cap of zero",
            json!({ "daemon": { "retryMax": "0s" } }),
            "/daemon/retryMax",
        ),
        (
            // Else the Roles would go to the namespace's `default` account, which every pod
            // without an account of its own runs as.
            "no ServiceAccount made and none named",
            json!({ "serviceAccount": { "create": false } }),
            "serviceAccount.name",
        ),
        (
            "alerts on a job no ServiceMonitor makes",
            json!({ "serviceMonitor": { "enabled": false }, "prometheusRule": { "enabled": true } }),
            "prometheusRule.job",
        ),
        (
            "a webhook failure policy Kubernetes does not know",
            json!({ "webhook": { "failurePolicy": "Deny" } }),
            "/webhook/failurePolicy",
        ),
        (
            "a webhook timeout over the API server's 30 s",
            json!({ "webhook": { "timeoutSeconds": 31 } }),
            "/webhook/timeoutSeconds",
        ),
        (
            "an unknown reinvocation policy",
            json!({ "webhook": { "reinvocationPolicy": "Always" } }),
            "/webhook/reinvocationPolicy",
        ),
        (
            "a misspelt webhook key",
            json!({ "webhook": { "failurepolicy": "Fail" } }),
            "'failurepolicy'",
        ),
        (
            // minAvailable 1 of 1 would block every node drain for good.
            "a webhook budget as large as its replicas",
            json!({ "webhook": { "replicas": 1 } }),
            "webhook.podDisruptionBudget.minAvailable",
        ),
        (
            "no webhook ServiceAccount made and none named",
            json!({ "webhook": { "serviceAccount": { "create": false } } }),
            "webhook.serviceAccount.name",
        ),
        (
            "DNS to any address",
            json!({ "networkPolicy": { "egress": { "dns": { "peers": [] } } } }),
            "networkPolicy.egress.dns.peers",
        ),
    ];
    for (what, bad, field) in cases {
        let r = Render::new("bad", "prod").with(bad);
        match r.objects(tmp.path()) {
            Ok(_) => panic!("{what}: helm accepted it"),
            Err(e) => assert!(
                e.contains(field),
                "{what}: the error does not name {field}:\n{e}"
            ),
        }
    }
    // The same values without the mistake render: the cases fail for their mistake alone.
    Render::new("good", "prod").objects(tmp.path()).unwrap();
}

/// No scrapers named means no ingress rule at all: a rule with an empty or missing `from`
/// would admit every source.
#[test]
fn no_scrapers_named_admits_nothing_to_the_metrics_port() {
    let tmp = tempfile::tempdir().unwrap();
    let ingress = |extra: Value| {
        let objs = Render::new("np", "prod")
            .with(extra)
            .objects(tmp.path())
            .unwrap();
        let np = objs
            .iter()
            .find(|o| o["kind"] == "NetworkPolicy")
            .expect("a NetworkPolicy")
            .clone();
        np["spec"]["ingress"].clone()
    };
    let none = ingress(json!({ "networkPolicy": { "metricsFrom": [] } }));
    assert_eq!(none, json!([]), "{none}");
    let some = ingress(json!({}));
    let rules = some.as_array().expect("ingress rules");
    assert_eq!(rules.len(), 1, "{some}");
    assert!(
        rules[0]["from"].as_array().is_some_and(|f| !f.is_empty()),
        "{some}"
    );
}

/// The webhook's objects, by kind, in one render.
fn webhook_kinds(objs: &[Value]) -> Vec<&str> {
    let mut k: Vec<&str> = objs
        .iter()
        .filter(|o| component(o) == "webhook")
        .map(kind)
        .collect();
    k.sort_unstable();
    k
}

#[test]
fn the_webhook_is_off_in_values_yaml_and_on_in_every_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let defaults = Render {
        files: vec![],
        ..Render::new("defaults", "prod").with(api_server())
    };
    let objs = defaults.objects(tmp.path()).unwrap();
    assert_eq!(
        webhook_kinds(&objs),
        Vec::<&str>::new(),
        "values.yaml alone installs no admission webhook"
    );
    assert!(
        !objs
            .iter()
            .any(|o| kind(o) == "MutatingWebhookConfiguration")
    );

    let all = vec![
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "MutatingWebhookConfiguration",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ];
    let on = defaults.with(json!({ "webhook": { "enabled": true } }));
    assert_eq!(
        webhook_kinds(&on.objects(tmp.path()).unwrap()),
        all,
        "values.yaml with webhook.enabled"
    );
    // Staging and production scrape it too, dev runs one replica with no budget.
    for (env, replicas, policy, production) in [
        ("dev", 1, "Ignore", false),
        ("staging", 2, "Fail", true),
        ("prod", 2, "Fail", true),
    ] {
        let objs = Render::new(env, env).objects(tmp.path()).unwrap();
        check_pods(env, &objs);
        check_webhook_configuration(env, "keyturn-system", "keyturn.dev/injection", &objs);
        let mut want: Vec<&str> = all
            .iter()
            .copied()
            .filter(|k| production || *k != "PodDisruptionBudget")
            .collect();
        if production {
            want.push("ServiceMonitor");
        }
        assert_eq!(webhook_kinds(&objs), want, "{env}");
        let dep = the(&objs, "Deployment", "webhook");
        assert_eq!(dep["spec"]["replicas"], json!(replicas), "{env}");
        let mwc = the(&objs, "MutatingWebhookConfiguration", "webhook");
        assert_eq!(mwc["webhooks"][0]["failurePolicy"], json!(policy), "{env}");
        if production {
            let budget = the(&objs, "PodDisruptionBudget", "webhook");
            assert_eq!(budget["spec"]["minAvailable"], json!(1), "{env}");
            assert!(
                selects(
                    &budget["spec"]["selector"],
                    &dep["spec"]["template"]["metadata"]["labels"]
                ),
                "{env}"
            );
        }
    }
}

#[test]
fn the_webhook_configuration_leaves_out_the_control_plane_its_own_namespace_and_opted_out_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let r = Render {
        release: "payments".to_owned(),
        namespace: "team-payments".to_owned(),
        ..Render::new("mwc", "prod").with(json!({ "webhook": {
            "optOutLabel": "example.com/no-secrets",
            "excludeNamespaces": ["calico-system"],
            "objectSelector": { "matchLabels": { "secrets": "vault" } }
        } }))
    };
    let objs = r.objects(tmp.path()).unwrap();
    check_webhook_configuration("mwc", "team-payments", "example.com/no-secrets", &objs);
    let mwc = the(&objs, "MutatingWebhookConfiguration", "webhook");
    let h = &mwc["webhooks"][0];
    assert_eq!(
        h["namespaceSelector"],
        json!({ "matchExpressions": [
            { "key": "kubernetes.io/metadata.name", "operator": "NotIn",
              "values": ["kube-system", "kube-public", "team-payments", "calico-system"] },
            { "key": "example.com/no-secrets", "operator": "NotIn", "values": ["disabled"] }
        ] })
    );
    assert_eq!(
        h["objectSelector"],
        json!({ "matchLabels": { "secrets": "vault" } })
    );
    assert_eq!(h["failurePolicy"], json!("Fail"));
    assert!(
        name(mwc).contains("team-payments"),
        "a cluster-scoped name carries the namespace, so releases of one name in two namespaces differ: {}",
        name(mwc)
    );
    let dep = the(&objs, "Deployment", "webhook");
    let env = env_of(&dep["spec"]["template"]["spec"]["containers"][0]);
    assert_eq!(env["KEYTURN_WEBHOOK_CONFIGURATION"], name(mwc));
    assert_eq!(
        env["KEYTURN_WEBHOOK_VAULT_ADDR"], "https://vault.vault.svc:8200",
        "vault.address"
    );
    assert_eq!(env["KEYTURN_WEBHOOK_INIT_IMAGE"], "keyturn-init:0.1.0");
}

/// Every rule of every Role and ClusterRole bound to a ServiceAccount, as (binding kind,
/// namespace, rule).
fn grants(objs: &[Value], namespace: &str, account: &str) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for b in objs
        .iter()
        .filter(|o| matches!(kind(o), "RoleBinding" | "ClusterRoleBinding"))
    {
        let bound = b["subjects"].as_array().unwrap().iter().any(|s| {
            s["kind"] == "ServiceAccount" && s["name"] == account && s["namespace"] == namespace
        });
        if !bound {
            continue;
        }
        let role = objs
            .iter()
            .find(|o| {
                kind(o) == b["roleRef"]["kind"]
                    && name(o) == b["roleRef"]["name"]
                    && o["metadata"]["namespace"] == b["metadata"]["namespace"]
            })
            .unwrap_or_else(|| {
                panic!(
                    "{} {} binds a role the chart does not render",
                    kind(b),
                    name(b)
                )
            });
        let ns = b["metadata"]["namespace"]
            .as_str()
            .unwrap_or("*")
            .to_owned();
        for rule in role["rules"].as_array().unwrap() {
            out.push((kind(b).to_owned(), ns.clone(), rule.clone()));
        }
    }
    out.sort_by_key(|g| format!("{g:?}"));
    out
}

#[test]
fn the_webhook_rbac_is_events_its_own_configuration_and_leases_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    for (label, extra, cert_manager) in [
        ("in-memory-ca", json!({}), false),
        (
            "cert-manager",
            json!({ "webhook": { "certManager": { "enabled": true } } }),
            true,
        ),
    ] {
        let objs = Render::new(label, "prod")
            .with(extra)
            .objects(tmp.path())
            .unwrap();
        let ns = "keyturn-system";
        let dep = the(&objs, "Deployment", "webhook");
        let account = dep["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .unwrap();
        let mwc = name(the(&objs, "MutatingWebhookConfiguration", "webhook"));
        let mut want = vec![(
            "ClusterRoleBinding".to_owned(),
            "*".to_owned(),
            json!({ "apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"] }),
        )];
        if !cert_manager {
            want.push((
                "ClusterRoleBinding".to_owned(),
                "*".to_owned(),
                json!({ "apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
                        "verbs": ["get", "update"], "resourceNames": [mwc] }),
            ));
            want.push((
                "RoleBinding".to_owned(),
                ns.to_owned(),
                json!({ "apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                        "verbs": ["get", "list", "create", "update", "delete"] }),
            ));
        }
        want.sort_by_key(|g| format!("{g:?}"));
        assert_eq!(
            grants(&objs, ns, account),
            want,
            "{label}: the webhook's RBAC"
        );
        // The daemon's account gets none of it, and the webhook's none of the daemon's.
        let daemon =
            the(&objs, "StatefulSet", "agent")["spec"]["template"]["spec"]["serviceAccountName"]
                .as_str()
                .unwrap();
        assert_ne!(daemon, account, "{label}");
        for (_, _, rule) in grants(&objs, ns, daemon) {
            assert!(
                [
                    "secrets",
                    "deployments",
                    "statefulsets",
                    "daemonsets",
                    "leases"
                ]
                .contains(&rule["resources"][0].as_str().unwrap()),
                "{label}: the daemon is granted {rule}"
            );
        }
    }
}

/// The rule of the daemon's membership Role.
fn leases_rule() -> Value {
    json!({ "apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
            "verbs": ["get", "list", "create", "update", "delete"] })
}

#[test]
fn every_environment_runs_members_and_production_two_on_separate_nodes_each_with_its_own_audit_claim()
 {
    let tmp = tempfile::tempdir().unwrap();
    let ns = "keyturn-system";
    for (env, replicas, claims) in [("dev", 1, false), ("staging", 2, true), ("prod", 2, true)] {
        let objs = Render::new(env, env).objects(tmp.path()).unwrap();
        check_pods(env, &objs);
        let sts = the(&objs, "StatefulSet", "agent");
        assert_eq!(sts["spec"]["replicas"], json!(replicas), "{env}");
        assert_eq!(
            sts["spec"]["volumeClaimTemplates"].is_array(),
            claims,
            "{env}: a claim per replica"
        );
        assert!(
            !objs.iter().any(|o| kind(o) == "PersistentVolumeClaim"),
            "{env}: no single claim for several replicas"
        );
        // The membership Role, bound to the daemon's account in its own namespace, whatever
        // the replica count.
        let account = sts["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .unwrap();
        let leases: Vec<_> = grants(&objs, ns, account)
            .into_iter()
            .filter(|(_, _, rule)| rule["resources"] == json!(["leases"]))
            .collect();
        assert_eq!(
            leases,
            [("RoleBinding".to_owned(), ns.to_owned(), leases_rule())],
            "{env}"
        );
    }

    let objs = Render::new("prod", "prod").objects(tmp.path()).unwrap();
    let sts = the(&objs, "StatefulSet", "agent");
    let pod = &sts["spec"]["template"];
    let pod_labels = &pod["metadata"]["labels"];
    let c = &pod["spec"]["containers"][0];
    let env = env_of(c);
    assert_eq!(env["KEYTURN_MEMBERSHIP_LEASE"], "15s");
    assert!(
        c["args"].as_array().unwrap().contains(&json!(
            "--audit-anchor=vault-kv:secret/keyturn/audit-anchor/prod/$(KEYTURN_HOLDER)"
        )),
        "{}",
        c["args"]
    );
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"],
        json!([{
            "metadata": { "name": "audit", "labels": {
                "app.kubernetes.io/name": "keyturn", "app.kubernetes.io/instance": "keyturn",
                "app.kubernetes.io/component": "agent" } },
            "spec": { "accessModes": ["ReadWriteOncePod"], "resources": { "requests": { "storage": "20Gi" } } }
        }])
    );
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "audit")
        .expect("the audit mount");
    assert_eq!(mount["mountPath"], json!("/var/lib/keyturn/audit"));
    // A drain takes one replica at a time; the scheduler keeps them on separate nodes and
    // zones where it can.
    let budget = the(&objs, "PodDisruptionBudget", "agent");
    assert_eq!(budget["spec"]["maxUnavailable"], json!(1));
    assert!(selects(&budget["spec"]["selector"], pod_labels));
    let anti = &pod["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"];
    assert_eq!(anti.as_array().unwrap().len(), 1, "{anti}");
    assert_eq!(
        anti[0]["podAffinityTerm"]["topologyKey"],
        json!("kubernetes.io/hostname")
    );
    assert!(selects(
        &anti[0]["podAffinityTerm"]["labelSelector"],
        pod_labels
    ));
    let spread = pod["spec"]["topologySpreadConstraints"].as_array().unwrap();
    assert_eq!(spread.len(), 1);
    assert_eq!(
        (&spread[0]["topologyKey"], &spread[0]["whenUnsatisfiable"]),
        (
            &json!("topology.kubernetes.io/zone"),
            &json!("ScheduleAnyway")
        ),
        "preferred, never blocking: a replica on a zonal claim must go to its zone"
    );
    assert!(selects(&spread[0]["labelSelector"], pod_labels));
    // An affinity given replaces the default.
    let given = json!({ "nodeAffinity": { "preferredDuringSchedulingIgnoredDuringExecution": [
        { "weight": 1, "preference": { "matchExpressions": [ { "key": "pool", "operator": "In", "values": ["ops"] } ] } } ] } });
    let objs = Render::new("prod-affinity", "prod")
        .with(json!({ "affinity": given }))
        .objects(tmp.path())
        .unwrap();
    assert_eq!(
        the(&objs, "StatefulSet", "agent")["spec"]["template"]["spec"]["affinity"],
        given
    );
}

#[test]
fn watching_rotation_policies_passes_the_scope_and_grants_reading_them_their_status_and_events_only()
 {
    let tmp = tempfile::tempdir().unwrap();
    let ns = "keyturn-system";
    let rules = [
        json!({ "apiGroups": ["keyturn.dev"], "resources": ["rotationpolicies"], "verbs": ["get", "list", "watch"] }),
        json!({ "apiGroups": ["keyturn.dev"], "resources": ["rotationpolicies/status"], "verbs": ["get", "patch", "update"] }),
        json!({ "apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"] }),
    ];
    // The grants beyond the deliveries' and the membership Role's.
    let extra = |objs: &[Value]| {
        let sts = the(objs, "StatefulSet", "agent");
        let account = sts["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .unwrap();
        let args: Vec<String> = sts["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        let granted: Vec<_> = grants(objs, ns, account)
            .into_iter()
            .filter(|(_, _, rule)| {
                ![
                    "secrets",
                    "deployments",
                    "statefulsets",
                    "daemonsets",
                    "leases",
                ]
                .contains(&rule["resources"][0].as_str().unwrap())
            })
            .collect();
        (args, granted)
    };
    for (watch, binding, namespace) in [
        ("all", "ClusterRoleBinding", "*"),
        ("shop", "RoleBinding", "shop"),
    ] {
        let objs = Render::new(&format!("watch-{watch}"), "prod")
            .with(json!({ "rotationPolicies": { "watch": watch } }))
            .objects(tmp.path())
            .unwrap();
        let (args, granted) = extra(&objs);
        assert_eq!(
            args.iter()
                .filter(|a| a.starts_with("--rotationpolicies"))
                .collect::<Vec<_>>(),
            [&format!("--rotationpolicies={watch}")],
            "{watch}"
        );
        let mut want: Vec<_> = rules
            .iter()
            .map(|r| (binding.to_owned(), namespace.to_owned(), r.clone()))
            .collect();
        want.sort_by_key(|g| format!("{g:?}"));
        assert_eq!(granted, want, "{watch}");
        let cluster_roles: Vec<&Value> = objs
            .iter()
            .filter(|o| kind(o) == "ClusterRole" && component(o) == "agent")
            .collect();
        if watch == "all" {
            assert_eq!(cluster_roles.len(), 1, "{watch}");
            assert_eq!(
                cluster_roles[0]["rules"],
                json!(rules),
                "the ClusterRole grants exactly these verbs"
            );
            assert_eq!(
                name(cluster_roles[0]),
                "keyturn-agent-rotationpolicies-keyturn-system",
                "a cluster-scoped name carries the release namespace"
            );
        } else {
            assert!(cluster_roles.is_empty(), "{watch}: nothing cluster-wide");
        }
    }
    let objs = Render::new("watch-off", "prod")
        .objects(tmp.path())
        .unwrap();
    let (args, granted) = extra(&objs);
    assert!(
        granted.is_empty(),
        "rotationPolicies.watch empty: nothing more is granted: {granted:?}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--rotationpolicies")),
        "rotationPolicies.watch empty: no flag: {args:?}"
    );
}

#[test]
fn cert_manager_mode_renders_the_certificate_its_issuer_and_the_inject_ca_from_annotation() {
    let tmp = tempfile::tempdir().unwrap();
    let own = Render::new("cm-own", "prod")
        .with(json!({ "webhook": { "certManager": { "enabled": true } } }))
        .objects(tmp.path())
        .unwrap();
    let svc = name(the(&own, "Service", "webhook")).to_owned();
    let ns = "keyturn-system";
    let certs: BTreeMap<&str, &Value> = own
        .iter()
        .filter(|o| kind(o) == "Certificate")
        .map(|o| (name(o), o))
        .collect();
    let issuers: BTreeMap<&str, &Value> = own
        .iter()
        .filter(|o| kind(o) == "Issuer")
        .map(|o| (name(o), o))
        .collect();
    let mwc = the(&own, "MutatingWebhookConfiguration", "webhook");
    let from = mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        .as_str()
        .expect("the inject-ca-from annotation");
    let (from_ns, from_name) = from.split_once('/').unwrap();
    assert_eq!(from_ns, ns);
    let serving = certs[from_name];
    assert_eq!(
        serving["spec"]["dnsNames"],
        json!([
            svc,
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local")
        ])
    );
    assert_eq!(
        serving["spec"]["usages"],
        json!(["server auth", "digital signature"])
    );
    // The chain: self-signed Issuer -> CA Certificate -> CA Issuer -> serving Certificate.
    let ca_issuer = issuers[serving["spec"]["issuerRef"]["name"].as_str().unwrap()];
    let ca_secret = ca_issuer["spec"]["ca"]["secretName"].as_str().unwrap();
    let ca = certs
        .values()
        .find(|c| c["spec"]["secretName"] == ca_secret)
        .expect("the CA Certificate");
    assert_eq!(ca["spec"]["isCA"], json!(true));
    let root = issuers[ca["spec"]["issuerRef"]["name"].as_str().unwrap()];
    assert_eq!(root["spec"], json!({ "selfSigned": {} }));
    assert_eq!((certs.len(), issuers.len()), (2, 2));
    // cert-manager's own namespace is never reviewed: it must start for the webhook to.
    let expr = &mwc["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"];
    assert!(
        expr.as_array().unwrap().contains(&json!("cert-manager")),
        "{expr}"
    );
    let env =
        env_of(&the(&own, "Deployment", "webhook")["spec"]["template"]["spec"]["containers"][0]);
    assert!(
        !env.contains_key("KEYTURN_WEBHOOK_CONFIGURATION"),
        "{env:?}"
    );

    let named = Render::new("cm-named", "prod")
        .with(json!({ "webhook": { "certManager": { "enabled": true, "issuerRef": { "kind": "ClusterIssuer", "name": "corp-ca" } } } }))
        .objects(tmp.path())
        .unwrap();
    assert!(
        !named.iter().any(|o| kind(o) == "Issuer"),
        "a named issuer: the chart makes none"
    );
    let certs: Vec<&Value> = named.iter().filter(|o| kind(o) == "Certificate").collect();
    assert_eq!(certs.len(), 1);
    assert_eq!(
        certs[0]["spec"]["issuerRef"],
        json!({ "kind": "ClusterIssuer", "name": "corp-ca", "group": "cert-manager.io" })
    );

    let in_memory = Render::new("cm-off", "prod").objects(tmp.path()).unwrap();
    assert!(!in_memory.iter().any(|o| {
        o["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .starts_with("cert-manager.io/")
    }));
    let mwc = the(&in_memory, "MutatingWebhookConfiguration", "webhook");
    assert!(mwc["metadata"].get("annotations").is_none(), "{mwc}");
}

#[test]
fn the_webhook_network_policy_admits_only_the_api_server_and_scrapers_and_reaches_only_the_api_server_and_dns()
 {
    let tmp = tempfile::tempdir().unwrap();
    let policy = |extra: Value| {
        let objs = Render::new("np-webhook", "prod")
            .with(extra)
            .objects(tmp.path())
            .unwrap();
        let dep = the(&objs, "Deployment", "webhook");
        let pod = dep["spec"]["template"]["metadata"]["labels"].clone();
        let daemon_pod =
            the(&objs, "StatefulSet", "agent")["spec"]["template"]["metadata"]["labels"].clone();
        let daemon_np = the(&objs, "NetworkPolicy", "agent");
        assert!(
            !selects(&daemon_np["spec"]["podSelector"], &pod),
            "the daemon's NetworkPolicy (Vault, targets) selects the webhook's pods"
        );
        assert!(selects(&daemon_np["spec"]["podSelector"], &daemon_pod));
        let np = the(&objs, "NetworkPolicy", "webhook").clone();
        assert!(selects(&np["spec"]["podSelector"], &pod));
        assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        np
    };
    let api = json!([
        { "ipBlock": { "cidr": "10.0.0.10/32" } },
        { "ipBlock": { "cidr": "10.0.0.11/32" } },
        { "ipBlock": { "cidr": "10.0.0.12/32" } }
    ]);
    let np = policy(json!({}));
    assert_eq!(
        np["spec"]["ingress"],
        json!([
            { "ports": [ { "port": 8443, "protocol": "TCP" } ], "from": api },
            { "ports": [ { "port": 9090, "protocol": "TCP" } ],
              "from": [ { "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "monitoring" } } } ] }
        ])
    );
    assert_eq!(
        np["spec"]["egress"],
        json!([
            { "to": [ { "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "kube-system" } },
                        "podSelector": { "matchLabels": { "k8s-app": "kube-dns" } } } ],
              "ports": [ { "port": 53, "protocol": "UDP" }, { "port": 53, "protocol": "TCP" } ] },
            { "to": api, "ports": [ { "port": 443, "protocol": "TCP" }, { "port": 6443, "protocol": "TCP" } ] }
        ])
    );
    // No scrapers named: the metrics rule is gone, not opened to every source.
    let np = policy(json!({ "networkPolicy": { "metricsFrom": [] } }));
    assert_eq!(
        np["spec"]["ingress"],
        json!([ { "ports": [ { "port": 8443, "protocol": "TCP" } ], "from": api } ])
    );
}

#[test]
fn server_side_dry_runs_against_a_real_cluster() {
    let Some(kubeconfig) = std::env::var_os("KEYTURN_TEST_KUBECONFIG") else {
        eprintln!(
            "skipped: KEYTURN_TEST_KUBECONFIG is not set, so there is no cluster for helm install --dry-run=server and kubectl apply --dry-run=server"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // CRD kinds only when the cluster has their CRDs (Prometheus Operator, cert-manager).
    let has_crd = |crd: &str| {
        run(Command::new(tool("kubectl", "KEYTURN_KUBECTL"))
            .args(["get", "crd", crd])
            .env("KUBECONFIG", &kubeconfig))
        .status
        .success()
    };
    let installed: Vec<&str> = [
        (
            "monitoring.coreos.com",
            "servicemonitors.monitoring.coreos.com",
        ),
        ("cert-manager.io", "certificates.cert-manager.io"),
    ]
    .into_iter()
    .filter(|(_, crd)| has_crd(crd))
    .map(|(group, _)| group)
    .collect();
    let known = |o: &Value| {
        let api = o["apiVersion"].as_str().unwrap_or_default();
        !is_crd(o) || installed.iter().any(|g| api.starts_with(&format!("{g}/")))
    };
    for r in matrix() {
        let objs = r.objects(tmp.path()).unwrap();
        if objs.iter().all(known) {
            let out = run(r
                .command(tmp.path(), &["install", "--dry-run=server"])
                .env("KUBECONFIG", &kubeconfig));
            assert!(
                out.status.success(),
                "{}: helm install --dry-run=server:\n{}",
                r.label,
                text(&out.stderr)
            );
        } else {
            eprintln!(
                "{}: helm install --dry-run=server skipped: the cluster lacks a CRD it uses (of {CRD_GROUPS:?} it has {installed:?})",
                r.label
            );
        }
        let objs: Vec<&Value> = objs.iter().filter(|o| known(o)).collect();
        let f = tmp.path().join(format!("{}.yaml", r.label));
        std::fs::write(&f, to_yaml(&objs)).unwrap();
        let out = run(Command::new(tool("kubectl", "KEYTURN_KUBECTL"))
            .args(["apply", "--dry-run=server", "-f"])
            .arg(&f)
            .env("KUBECONFIG", &kubeconfig));
        assert!(
            out.status.success(),
            "{}: kubectl apply --dry-run=server:\n{}",
            r.label,
            text(&out.stderr)
        );
    }
}

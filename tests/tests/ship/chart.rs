//! The Helm chart `charts/keyturn`, checked with the tools its users and clusters run:
//! `helm lint --strict` per environment; `helm template` for each environment and a matrix
//! of non-default values, every built-in object validated against the Kubernetes 1.29–1.33
//! schemas with unknown fields rejected (`kubernetes-validate --strict`) and every render
//! scanned by checkov once (no failed check unless the object carries a skip with a reason);
//! the restricted security context on every Pod; the rendered RBAC equal to what `keyturn
//! policy rbac` prints for the policies the rendered ConfigMap holds; bad values rejected by
//! values.schema.json naming the field; and, with `KEYTURN_TEST_KUBECONFIG`, server-side dry
//! runs against that cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keyturn_tests::tools::{self, repo_root};
use serde_json::{Value, json};

/// The Kubernetes minor versions the chart supports (Chart.yaml `kubeVersion: >=1.29`, and
/// the newest five releases).
const KUBE_VERSIONS: [&str; 5] = ["1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"];

/// CRD kinds have no schema in kubernetes-validate (it warns and passes them): they are
/// checked here by hand instead (ServiceMonitor), or by the suite's own check of their
/// content (the PrometheusRule's rules are promtool's business, in `alerts.rs`).
const CRD_GROUPS: [&str; 1] = ["monitoring.coreos.com"];

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
        Render::new("dev", "dev"),
        Render::new("staging", "staging"),
        Render::new("prod", "prod"),
        Render::new("no-networkpolicy", "prod").with(json!({ "networkPolicy": { "enabled": false } })),
        Render::new("no-servicemonitor-no-pdb-no-test", "prod").with(json!({
            "serviceMonitor": { "enabled": false }, "podDisruptionBudget": { "enabled": false },
            "test": { "enabled": false }, "prometheusRule": { "job": "kubernetes-pods" }
        })),
        Render::new("existing-claim-other-namespace", "prod")
            .with(json!({ "audit": { "persistence": { "type": "pvc", "pvc": { "existingClaim": "audit-keep" } } } })),
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
        .find(|o| kind(o) == "Service")
        .map(|s| s["spec"]["ports"][0]["port"].as_u64().unwrap())
        .unwrap_or_else(|| panic!("{label}: no Service"));
    for o in objs {
        let spec = match kind(o) {
            "Deployment" => &o["spec"]["template"]["spec"],
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
            "{what}: the daemon and doctor use the API"
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
        if kind(o) == "Deployment" {
            let c = &containers[0];
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
            assert_eq!(
                o["spec"]["strategy"]["type"],
                json!("Recreate"),
                "{what}: never two daemons at once"
            );
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

/// The ServiceMonitor (a CRD kind kubernetes-validate has no schema for) selects the
/// Service and scrapes its metrics port in the release's namespace.
fn check_service_monitor(label: &str, namespace: &str, objs: &[Value]) {
    let Some(sm) = objs.iter().find(|o| kind(o) == "ServiceMonitor") else {
        return;
    };
    let svc = objs.iter().find(|o| kind(o) == "Service").unwrap();
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
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"], svc["spec"]["ports"][0]["name"],
        "{label}"
    );
    assert_eq!(
        sm["spec"]["endpoints"][0]["path"],
        json!("/metrics"),
        "{label}"
    );
}

/// A Deployment with a field no Kubernetes version knows and a privileged container: the
/// validators must fail it, or their passing means nothing.
fn planted(objs: &[Value]) -> Value {
    let mut d = objs
        .iter()
        .find(|o| kind(o) == "Deployment")
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
    // Every skip is explained next to it in templates/_pod.tpl or templates/tests/doctor.yaml;
    // a new one must be added here on purpose.
    let explained = [
        "CKV_K8S_8",
        "CKV_K8S_9",
        "CKV_K8S_15",
        "CKV_K8S_38",
        "CKV_K8S_43",
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
/// will load), with the ServiceAccount the chart binds, against the chart's own Roles and
/// RoleBindings: equal as objects, the chart adding only labels.
fn rbac_matches(label: &str, extra: Value, cli_flags: &[&str]) {
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
    for o in objs
        .iter()
        .filter(|o| matches!(kind(o), "Role" | "RoleBinding"))
    {
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
        4,
        "{label}: the policies reach two namespaces: {:?}",
        cli.keys()
    );
    assert_eq!(
        chart, cli,
        "{label}: the chart's RBAC differs from `keyturn policy rbac`"
    );
}

#[test]
fn the_rendered_rbac_is_what_keyturn_policy_rbac_prints_for_the_same_policies() {
    rbac_matches("rbac", json!({}), &[]);
    rbac_matches(
        "rbac-create",
        json!({ "rbac": { "allowCreateSecrets": true } }),
        &["--allow-create-secrets"],
    );
}

#[test]
fn bad_values_are_rejected_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("two replicas", json!({ "replicas": 2 }), "/replicas"),
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

#[test]
fn server_side_dry_runs_against_a_real_cluster() {
    let Some(kubeconfig) = std::env::var_os("KEYTURN_TEST_KUBECONFIG") else {
        eprintln!(
            "skipped: KEYTURN_TEST_KUBECONFIG is not set, so there is no cluster for helm install --dry-run=server and kubectl apply --dry-run=server"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for r in matrix() {
        let out = run(r
            .command(tmp.path(), &["install", "--dry-run=server"])
            .env("KUBECONFIG", &kubeconfig));
        assert!(
            out.status.success(),
            "{}: helm install --dry-run=server:\n{}",
            r.label,
            text(&out.stderr)
        );
        let objs = r.objects(tmp.path()).unwrap();
        // CRD kinds only when the cluster has the CRD (Prometheus Operator installed).
        let has_crds = run(Command::new(tool("kubectl", "KEYTURN_KUBECTL"))
            .args(["get", "crd", "servicemonitors.monitoring.coreos.com"])
            .env("KUBECONFIG", &kubeconfig))
        .status
        .success();
        let objs: Vec<&Value> = objs.iter().filter(|o| has_crds || !is_crd(o)).collect();
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

//! Pods written for the Vault Agent Injector, end to end: a real OpenBao with kubernetes
//! auth against the cluster, keyturn-init's static binary run by the test kubelet
//! (`keyturn_tests::kubelet`) in a chroot as the container's user, with the pod's volumes
//! made as a node makes them (the downward-API annotations file, a token from the
//! TokenRequest API, a tmpfs emptyDir), and what the app containers then see.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use keyturn_tests::kube::TestCluster;
use keyturn_tests::kubelet::{ContainerView, Image, Kubelet, SeenFile, format_map, go_quote};
use keyturn_tests::openbao::OpenBao;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

/// The keyturn-init image reference the webhook is given (`--init-image`); the test kubelet
/// runs the static keyturn-init for it.
const INIT_IMAGE: &str = "ghcr.io/keyturn/keyturn-init:test";

/// The user keyturn-init runs as when the pod names none (the image's `USER`).
const NONROOT: u32 = 65532;

/// One test's world: a cluster, OpenBao with kubernetes auth against it, and a kubelet that
/// knows the keyturn-init image.
struct World {
    cluster: TestCluster,
    bao: OpenBao,
    kubelet: Kubelet,
}

impl World {
    async fn start() -> Self {
        let cluster = TestCluster::start().await.expect("a Kubernetes API");
        let bao = OpenBao::start().await.unwrap();
        bao.enable_kubernetes_auth(&cluster).await.unwrap();
        let mut kubelet = Kubelet::new(cluster.client()).image(INIT_IMAGE, Image::keyturn_init());
        if let Some(standin) = cluster.standin() {
            // The stand-in serves no ConfigMaps; a real cluster's root CA publisher puts this
            // one in every namespace, and every pod's kube-api-access volume reads it.
            kubelet = kubelet.config_map(
                cluster.namespace(),
                "kube-root-ca.crt",
                &[("ca.crt", &standin.ca_pem())],
            );
        }
        // keyturn-init audits every read with this key, as the platform team installs it in
        // every namespace whose pods are injected (`--audit-hmac-secret`).
        let key: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
            "metadata": {"name": "keyturn-init-audit-hmac"},
            "stringData": {"hmac.key": "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"},
        }))
        .unwrap();
        Api::namespaced(cluster.client(), cluster.namespace())
            .create(&PostParams::default(), &key)
            .await
            .unwrap();
        Self {
            cluster,
            bao,
            kubelet,
        }
    }

    fn namespace(&self) -> &str {
        self.cluster.namespace()
    }

    /// The service account `name` in the test's namespace, a Vault policy `role` of
    /// `policy`, and the kubernetes auth role `role` binding them.
    async fn role(&self, role: &str, service_account: &str, policy: &str) {
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": service_account}})).unwrap();
        Api::<ServiceAccount>::namespaced(self.cluster.client(), self.namespace())
            .create(&PostParams::default(), &sa)
            .await
            .unwrap();
        self.bao.put_policy(role, policy).await.unwrap();
        self.bao
            .api(
                "POST",
                &format!("auth/kubernetes/role/{role}"),
                Some(json!({
                    "bound_service_account_names": [service_account],
                    "bound_service_account_namespaces": [self.namespace()],
                    "token_policies": [role],
                    "token_ttl": "10m",
                })),
            )
            .await
            .unwrap();
    }

    /// A KV v2 engine at `mount` holding `data` at `path`. A new KV v2 mount upgrades itself
    /// in the background and refuses writes until done, hence the retries.
    async fn kv2(&self, mount: &str, path: &str, data: Value) {
        self.bao
            .mount(mount, "kv", Some(json!({"version": "2"})))
            .await
            .unwrap();
        let mut last = None;
        for _ in 0..100 {
            match self
                .bao
                .api(
                    "POST",
                    &format!("{mount}/data/{path}"),
                    Some(json!({"data": data})),
                )
                .await
            {
                Ok(_) => return,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("writing {mount}/data/{path}: {last:?}");
    }
}

/// A Pod from YAML as the injector's documentation writes it, in the test's namespace.
fn pod(yaml: &str, namespace: &str) -> Pod {
    let mut v: Value = serde_yaml::from_str(yaml).unwrap();
    v["metadata"]["namespace"] = json!(namespace);
    serde_json::from_value(v).unwrap()
}

/// The pod as the webhook's JSONPatch leaves it (the shape keyturn webhook's interface
/// specifies), for running the kubelet on its own: the keyturn-init init container last,
/// the annotations, token and secrets volumes, and the secrets mount in every app container.
/// and the audit HMAC key from the Secret `keyturn-init-audit-hmac`.
fn injected_shape(pod: &Pod, vault_addr: &str) -> Pod {
    let mut v = serde_json::to_value(pod).unwrap();
    v["metadata"]["annotations"]["vault.hashicorp.com/agent-inject-status"] = json!("injected");
    let init = json!({
        "name": "keyturn-init",
        "image": INIT_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "args": ["--annotations", "/etc/keyturn/podinfo/annotations", "--out", "/vault/secrets"],
        "env": [
            {"name": "VAULT_ADDR", "value": vault_addr},
            {"name": "KEYTURN_INIT_JWT_FILE", "value": "/var/run/secrets/keyturn/serviceaccount/token"},
            {"name": "KEYTURN_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "KEYTURN_LOG_FORMAT", "value": "json"},
            {"name": "KEYTURN_AUDIT_HMAC_KEY_FILE", "value": "/etc/keyturn/audit/hmac.key"},
        ],
        "securityContext": {
            "runAsNonRoot": true, "runAsUser": NONROOT, "runAsGroup": NONROOT,
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "keyturn-podinfo", "mountPath": "/etc/keyturn/podinfo", "readOnly": true},
            {"name": "keyturn-token", "mountPath": "/var/run/secrets/keyturn/serviceaccount", "readOnly": true},
            {"name": "keyturn-secrets", "mountPath": "/vault/secrets"},
            {"name": "keyturn-audit-key", "mountPath": "/etc/keyturn/audit", "readOnly": true},
        ],
    });
    let spec = &mut v["spec"];
    match spec["initContainers"].as_array_mut() {
        Some(list) => list.push(init),
        None => spec["initContainers"] = json!([init]),
    }
    for c in spec["containers"].as_array_mut().unwrap() {
        let mount =
            json!({"name": "keyturn-secrets", "mountPath": "/vault/secrets", "readOnly": true});
        match c["volumeMounts"].as_array_mut() {
            Some(list) => list.push(mount),
            None => c["volumeMounts"] = json!([mount]),
        }
    }
    let volumes = [
        json!({"name": "keyturn-podinfo", "downwardAPI": {"items": [{"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}]}}),
        json!({"name": "keyturn-token", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}]}}),
        json!({"name": "keyturn-secrets", "emptyDir": {"medium": "Memory"}}),
        json!({"name": "keyturn-audit-key", "secret": {"secretName": "keyturn-init-audit-hmac", "defaultMode": 0o444, "items": [{"key": "hmac.key", "path": "hmac.key"}]}}),
    ];
    match spec["volumes"].as_array_mut() {
        Some(list) => list.extend(volumes),
        None => spec["volumes"] = json!(volumes),
    }
    serde_json::from_value(v).unwrap()
}

/// The Vault tutorial's pod ("Injecting secrets into Kubernetes pods via Vault Agent
/// containers"): a KV v2 secret rendered as a PostgreSQL URL by a template.
const ORGCHART: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: orgchart
  labels:
    app: orgchart
  annotations:
    vault.hashicorp.com/agent-inject: 'true'
    vault.hashicorp.com/role: 'internal-app'
    vault.hashicorp.com/agent-inject-secret-database-config.txt: 'internal/data/database/config'
    vault.hashicorp.com/agent-inject-template-database-config.txt: |
      {{- with secret "internal/data/database/config" -}}
      postgresql://{{ .Data.data.username }}:{{ .Data.data.password }}@postgres:5432/wizard
      {{- end -}}
spec:
  serviceAccountName: internal-app
  containers:
    - name: orgchart
      image: jweissig/app:0.0.1
"#;

/// The tutorial's secret, policy and role for [`ORGCHART`].
async fn orgchart_vault(w: &World) {
    w.kv2(
        "internal",
        "database/config",
        json!({"username": "db-readonly-username", "password": "db-secret-password"}),
    )
    .await;
    w.role(
        "internal-app",
        "internal-app",
        r#"path "internal/data/database/config" { capabilities = ["read"] }"#,
    )
    .await;
}

#[test]
fn the_kubelets_go_quoting_is_what_keyturn_init_unquotes() {
    let samples = [
        "plain",
        "",
        "{{- with secret \"secret/data/web\" -}}\n  export api_key=\"{{ .Data.data.payments_api_key }}\"\n{{- end }}\n",
        "back\\slash and 'single' quotes",
        "tab\there\rcarriage\x07bell\x08\x0b\x0c",
        "\x00\x01\x1f\x7f controls",
        "é ü ß 日本語 😀 emoji",
        "\u{a0}nbsp \u{200b}zero-width \u{feff}bom \u{2028}line-sep \u{e000}private",
        "\u{f0000} plane 15 \u{10fffd}",
    ];
    for s in samples {
        let quoted = go_quote(s);
        assert_eq!(
            keyturn_init::annotations::go_unquote(&quoted).as_deref(),
            Some(s),
            "{quoted}"
        );
    }
    // A whole annotations file, as the kubelet writes it, parses line by line.
    let map: BTreeMap<String, String> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("example.com/k{i}"), (*s).to_owned()))
        .collect();
    let file = format_map(&map);
    assert!(!file.ends_with('\n'));
    let back: BTreeMap<String, String> = file
        .lines()
        .map(|l| {
            let (k, q) = l.split_once('=').unwrap();
            (
                k.to_owned(),
                keyturn_init::annotations::go_unquote(q).unwrap(),
            )
        })
        .collect();
    assert_eq!(back, map);
}

#[tokio::test]
async fn the_kubelet_runs_keyturn_init_of_an_injected_pod_and_its_app_reads_the_rendered_file() {
    let w = World::start().await;
    orgchart_vault(&w).await;
    let pod = injected_shape(&pod(ORGCHART, w.namespace()), &w.bao.addr());
    let run = w.kubelet.run_pod(&pod).await.unwrap();
    let init = run.init_container("keyturn-init");
    assert!(init.succeeded(), "{init}");
    let app = run.app("orgchart");
    let f = app.file("/vault/secrets/database-config.txt");
    // What the Vault Agent renders: `{{- end -}}` trims the block scalar's final newline.
    assert_eq!(
        f.text(),
        "postgresql://db-readonly-username:db-secret-password@postgres:5432/wizard"
    );
    assert_eq!((f.mode, f.uid, f.gid), (0o400, NONROOT, NONROOT));
    assert_eq!(secrets(app).len(), 1, "{:?}", app.files.keys());
    // keyturn-init logged in as the pod's service account, through TokenReview.
    assert_eq!(w.bao.requests_for("update", "auth/kubernetes/login"), 1);
    // The secret is in no log line.
    assert!(!init.stderr.contains("db-secret-password"), "{init}");
    assert!(!init.stdout.contains("db-secret-password"), "{init}");
}

// ---------------------------------------------------------------------------------------
// Through keyturn webhook

/// The webhook's namespace, Service and configuration as the chart names them (release
/// `keyturn` in `keyturn-system`).
const WEBHOOK_NAMESPACE: &str = "keyturn-system";
const WEBHOOK_SERVICE: &str = "keyturn-webhook";
const WEBHOOK_CONFIGURATION: &str = "keyturn-webhook-keyturn-system";
/// The webhook's name in the configuration, as the API server's messages give it.
const WEBHOOK_NAME: &str = "inject.keyturn.dev";

/// A [`World`] whose API server sends pod creates to a running `keyturn webhook`.
struct Injecting {
    w: World,
    webhook: keyturn_tests::process::ServerProcess,
    kubectl_home: tempfile::TempDir,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Injecting {
    type Target = World;
    fn deref(&self) -> &World {
        &self.w
    }
}

/// The chart's MutatingWebhookConfiguration as `helm template` renders it for staging
/// (failurePolicy Fail), so the test registers exactly what is deployed.
fn chart_configuration() -> Value {
    let helm = keyturn_tests::tools::find("helm", "KEYTURN_HELM").expect("helm (dev/setup.sh)");
    let chart = keyturn_tests::tools::repo_root().join("charts/keyturn");
    let out = std::process::Command::new(helm)
        .args(["template", "keyturn"])
        .arg(&chart)
        .args(["--namespace", WEBHOOK_NAMESPACE, "-f"])
        .arg(chart.join("values-staging.yaml"))
        .args(["--show-only", "templates/webhook-configuration.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(v["metadata"]["name"], WEBHOOK_CONFIGURATION);
    assert_eq!(v["webhooks"][0]["name"], WEBHOOK_NAME);
    assert_eq!(v["webhooks"][0]["failurePolicy"], "Fail");
    v
}

impl Injecting {
    /// The world, the chart's configuration, and `keyturn webhook` (the debug build) with
    /// the in-memory CA writing the configuration's caBundle, reached through
    /// [`keyturn_tests::kube::KubeStandin::route_service`]; ready once its /readyz says so.
    /// `None` on a real cluster, whose API server cannot reach a webhook on this host.
    async fn start(test: &str) -> Option<Self> {
        let w = World::start().await;
        let standin = w.cluster.standin_or_skip(
            test,
            "keyturn webhook runs on this host; only the stand-in reaches it, through route_service",
        )?;
        let mwc: k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration =
            serde_json::from_value(chart_configuration()).unwrap();
        Api::all(w.cluster.client())
            .create(&PostParams::default(), &mwc)
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (port, metrics) = (
            keyturn_tests::process::free_port(),
            keyturn_tests::process::free_port(),
        );
        let keyturn = keyturn_tests::bins::keyturn();
        let mut webhook = keyturn_tests::process::Spawn {
            name: "keyturn webhook",
            program: &keyturn,
            args: [
                "webhook",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--metrics-listen",
                &format!("127.0.0.1:{metrics}"),
                "--init-image",
                INIT_IMAGE,
                "--vault-addr",
                &w.bao.addr(),
                "--namespace",
                WEBHOOK_NAMESPACE,
                "--service",
                WEBHOOK_SERVICE,
                "--configuration",
                WEBHOOK_CONFIGURATION,
                "--holder",
                "keyturn-webhook-0",
            ]
            .map(str::to_owned)
            .to_vec(),
            env: vec![(
                "KUBECONFIG".into(),
                w.cluster.kubeconfig_path().display().to_string(),
            )],
            user: None,
            log: dir.path().join("webhook.log"),
            stop_signal: "TERM",
        }
        .start()
        .unwrap();
        standin.route_service(
            WEBHOOK_NAMESPACE,
            WEBHOOK_SERVICE,
            443,
            format!("127.0.0.1:{port}").parse().unwrap(),
        );
        let http = reqwest::Client::new();
        let readyz = format!("http://127.0.0.1:{metrics}/readyz");
        webhook
            .wait_ready(std::time::Duration::from_secs(60), || {
                let (http, readyz) = (http.clone(), readyz.clone());
                async move { matches!(http.get(&readyz).send().await, Ok(r) if r.status().is_success()) }
            })
            .await
            .unwrap();
        Some(Self {
            w,
            webhook,
            kubectl_home: tempfile::tempdir().unwrap(),
            _dir: dir,
        })
    }

    /// `kubectl create -f -` of `yaml` in `namespace`: (success, stdout, stderr).
    async fn kubectl_create(&self, namespace: &str, yaml: &str) -> (bool, String, String) {
        use tokio::io::AsyncWriteExt as _;
        let kubectl = keyturn_tests::tools::find("kubectl", "KEYTURN_KUBECTL")
            .expect("kubectl (dev/setup.sh)");
        let mut child = tokio::process::Command::new(kubectl)
            .env_clear()
            .env("HOME", self.kubectl_home.path())
            .env("KUBECONFIG", self.cluster.kubeconfig_path())
            .args(["--namespace", namespace, "create", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(yaml.as_bytes()).await.unwrap();
        drop(input);
        let out = child.wait_with_output().await.unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Creates the pod `yaml` in the test's namespace (it must be admitted) and returns the
    /// stored, mutated pod.
    async fn create(&self, yaml: &str) -> Pod {
        let (ok, out, err) = self.kubectl_create(self.namespace(), yaml).await;
        assert!(
            ok,
            "kubectl create: {out}{err}\n--- webhook\n{}",
            self.webhook.log()
        );
        let name = pod(yaml, self.namespace()).metadata.name.unwrap();
        Api::<Pod>::namespaced(self.cluster.client(), self.namespace())
            .get(&name)
            .await
            .unwrap()
    }

    /// Creates the pod `yaml` and runs it with the kubelet; keyturn-init must succeed.
    async fn create_and_run(&self, yaml: &str) -> (Pod, keyturn_tests::kubelet::PodRun) {
        let stored = self.create(yaml).await;
        let run = self.kubelet.run_pod(&stored).await.unwrap();
        let init = run.init_container("keyturn-init");
        assert!(init.succeeded(), "{init}");
        (stored, run)
    }
}

/// The files a container sees under /vault/secrets (it also sees its service-account
/// token's volume).
fn secrets(view: &ContainerView) -> BTreeMap<&str, &SeenFile> {
    view.files
        .iter()
        .filter(|(p, _)| p.starts_with("/vault/secrets/"))
        .map(|(p, f)| (p.as_str(), f))
        .collect()
}

/// Whether the container mounts anything at /vault/secrets.
fn mounts_secrets(c: &k8s_openapi::api::core::v1::Container) -> bool {
    c.volume_mounts
        .iter()
        .flatten()
        .any(|m| m.mount_path == "/vault/secrets")
}

fn init_container_names(p: &Pod) -> Vec<String> {
    p.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .map(|l| l.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_kv2_secret_rendered_by_a_template_is_what_the_vault_agent_would_write() {
    let Some(w) = Injecting::start("inject::a_kv2_secret_rendered_by_a_template").await else {
        return;
    };
    orgchart_vault(&w).await;
    let (stored, run) = w.create_and_run(ORGCHART).await;
    assert_eq!(
        stored.metadata.annotations.as_ref().unwrap()["vault.hashicorp.com/agent-inject-status"],
        "injected"
    );
    assert_eq!(init_container_names(&stored), ["keyturn-init"]);
    let app = run.app("orgchart");
    let f = app.file("/vault/secrets/database-config.txt");
    assert_eq!(
        f.text(),
        "postgresql://db-readonly-username:db-secret-password@postgres:5432/wizard"
    );
    assert_eq!((f.mode, f.uid, f.gid), (0o400, NONROOT, NONROOT));
    assert_eq!(secrets(app).len(), 1, "{:?}", app.files.keys());
}

/// The pod the README shows (the block tagged `vault-injector-pod`), read from the README
/// itself so what it claims is what runs.
fn readme_pod() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme
        .find("```yaml vault-injector-pod\n")
        .expect("README's vault-injector-pod block");
    let body = &readme[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_owned()
}

#[tokio::test]
async fn the_readme_pod_written_for_the_vault_injector_works_unchanged() {
    let Some(w) = Injecting::start("inject::the_readme_pod").await else {
        return;
    };
    // The dev server's own KV v2 mount at secret/, as in the injector's documentation.
    w.bao
        .api(
            "POST",
            "secret/data/orders/db",
            Some(json!({"data": {"username": "orders-app", "password": "KTCANARY-readme-pod-pw"}})),
        )
        .await
        .unwrap();
    w.role(
        "orders",
        "orders",
        r#"path "secret/data/orders/db" { capabilities = ["read"] }"#,
    )
    .await;
    let (ok, out, err) = w.kubectl_create(w.namespace(), &readme_pod()).await;
    assert!(ok, "kubectl create: {out}{err}");
    // Annotated as the README says: pre-populate-only and a runAsUser, so no warning.
    assert!(!err.contains("Warning"), "{err}");
    let stored = Api::<Pod>::namespaced(w.cluster.client(), w.namespace())
        .get("orders")
        .await
        .unwrap();
    let run = w.kubelet.run_pod(&stored).await.unwrap();
    let init = run.init_container("keyturn-init");
    assert!(init.succeeded(), "{init}");
    let app = run.app("orders");
    let f = app.file("/vault/secrets/database-config.txt");
    assert_eq!(
        f.text(),
        "postgresql://orders-app:KTCANARY-readme-pod-pw@postgres:5432/orders"
    );
    // The app's own user owns the 0400 file, so the app reads it.
    assert_eq!((f.mode, f.uid, f.gid), (0o400, 1000, 1000));
    assert_eq!(
        app.can_read("/vault/secrets/database-config.txt"),
        Some(true),
        "the app's user cannot read its secret"
    );
    // The secret never reaches the init container's output (its audit events on stdout
    // carry an HMAC of it, never the value).
    assert!(
        !init.stdout.contains("KTCANARY") && !init.stderr.contains("KTCANARY"),
        "{init}"
    );
}

/// The injector documentation's Deployment example: dynamic PostgreSQL credentials.
const DB_APP: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: app
  labels:
    app: app
  annotations:
    vault.hashicorp.com/agent-inject: 'true'
    vault.hashicorp.com/role: 'app'
    vault.hashicorp.com/agent-inject-secret-db-creds: 'database/creds/db-app'
    vault.hashicorp.com/agent-inject-template-db-creds: |
      {{- with secret "database/creds/db-app" -}}
      postgres://{{ .Data.username }}:{{ .Data.password }}@postgres:5432/appdb?sslmode=disable
      {{- end }}
spec:
  serviceAccountName: app
  containers:
    - name: app
      image: 'app:1.0.0'
"#;

#[tokio::test]
async fn dynamic_database_credentials_are_rendered_and_log_in_to_postgresql() {
    let Some(w) = Injecting::start("inject::dynamic_database_credentials").await else {
        return;
    };
    let pg = keyturn_tests::postgres::Postgres::start().await.unwrap();
    w.bao.mount("database", "database", None).await.unwrap();
    w.bao
        .api(
            "POST",
            "database/config/postgres",
            Some(json!({
                "plugin_name": "postgresql-database-plugin",
                "connection_url": format!("postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable", pg.port()),
                "username": keyturn_tests::postgres::SUPERUSER,
                "password": pg.password(),
                "allowed_roles": ["db-app"],
            })),
        )
        .await
        .unwrap();
    w.bao
        .api(
            "POST",
            "database/roles/db-app",
            Some(json!({
                "db_name": "postgres",
                "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
                "default_ttl": "1h",
            })),
        )
        .await
        .unwrap();
    w.role(
        "app",
        "app",
        r#"path "database/creds/db-app" { capabilities = ["read"] }"#,
    )
    .await;
    let (_, run) = w.create_and_run(DB_APP).await;
    let text = run.app("app").file("/vault/secrets/db-creds").text();
    let creds = text
        .strip_prefix("postgres://")
        .and_then(|t| t.strip_suffix("@postgres:5432/appdb?sslmode=disable\n"))
        .unwrap_or_else(|| panic!("not the template's shape: {text:?}"));
    let (user, password) = creds.split_once(':').unwrap();
    assert!(user.starts_with("v-"), "{user}");
    let client = pg
        .connect_as(user, password)
        .await
        .expect("the rendered credentials log in");
    let who = client.simple_query("SELECT current_user").await.unwrap();
    assert!(
        who.iter().any(
            |m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some(user))
        ),
        "{user}"
    );
}

/// The injector documentation's payroll pod, with several secrets, file names and modes.
const PAYROLL: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: payroll
  labels:
    app: payroll
  annotations:
    vault.hashicorp.com/agent-inject: 'true'
    vault.hashicorp.com/role: 'web'
    vault.hashicorp.com/agent-inject-secret-config: 'secret/data/web'
    vault.hashicorp.com/agent-inject-template-config: |
      {{- with secret "secret/data/web" -}}
        export api_key="{{ .Data.data.payments_api_key }}"
      {{- end }}
    vault.hashicorp.com/agent-inject-file-config: 'config.env'
    vault.hashicorp.com/agent-inject-perms-config: '0400'
    vault.hashicorp.com/agent-inject-secret-db: 'secret/data/web-db'
    vault.hashicorp.com/agent-inject-file-db: 'db.txt'
    vault.hashicorp.com/agent-inject-perms-db: '0440'
    keyturn.dev/shared-db: 'true'
    vault.hashicorp.com/agent-inject-secret-token: 'secret/data/web-token'
spec:
  serviceAccountName: web
  containers:
    - name: web
      image: alpine:latest
      command: ['sh', '-c']
      args: ['source /vault/secrets/config.env && <entrypoint script>']
      ports:
        - containerPort: 9090
"#;

async fn payroll_vault(w: &World) {
    let kv = |path: &str, data: Value| {
        let path = path.to_owned();
        async move {
            w.bao
                .api(
                    "POST",
                    &format!("secret/data/{path}"),
                    Some(json!({"data": data})),
                )
                .await
                .unwrap();
        }
    };
    kv("web", json!({"payments_api_key": "pk-7f3a"})).await;
    kv(
        "web-db",
        json!({"username": "payroll", "password": "db-pw-91"}),
    )
    .await;
    kv("web-token", json!({"token": "tok-55"})).await;
    w.role(
        "web",
        "web",
        r#"path "secret/data/web" { capabilities = ["read"] }
path "secret/data/web-db" { capabilities = ["read"] }
path "secret/data/web-token" { capabilities = ["read"] }"#,
    )
    .await;
}

#[tokio::test]
async fn several_secrets_get_the_file_names_and_modes_their_annotations_give() {
    let Some(w) = Injecting::start("inject::several_secrets").await else {
        return;
    };
    payroll_vault(&w).await;
    let (_, run) = w.create_and_run(PAYROLL).await;
    let web = run.app("web");
    let files: BTreeMap<&str, (String, u32)> = secrets(web)
        .into_iter()
        .map(|(p, f)| (p, (f.text(), f.mode)))
        .collect();
    assert_eq!(
        files,
        BTreeMap::from([
            (
                "/vault/secrets/config.env",
                ("export api_key=\"pk-7f3a\"\n".to_owned(), 0o400)
            ),
            (
                "/vault/secrets/db.txt",
                ("password: db-pw-91\nusername: payroll\n".to_owned(), 0o440)
            ),
            (
                "/vault/secrets/token",
                ("token: tok-55\n".to_owned(), 0o400)
            ),
        ])
    );
}

#[tokio::test]
async fn agent_inject_containers_mounts_the_secrets_in_the_named_container_only() {
    let Some(w) = Injecting::start("inject::agent_inject_containers").await else {
        return;
    };
    payroll_vault(&w).await;
    let yaml = PAYROLL.replace(
        "    vault.hashicorp.com/role: 'web'\n",
        "    vault.hashicorp.com/role: 'web'\n    vault.hashicorp.com/agent-inject-containers: 'web'\n",
    ) + "    - name: log-shipper\n      image: fluent/fluent-bit:3.0\n";
    let (stored, run) = w.create_and_run(&yaml).await;
    assert_eq!(
        secrets(run.app("web")).len(),
        3,
        "{:?}",
        run.app("web").files
    );
    assert!(
        secrets(run.app("log-shipper")).is_empty(),
        "{:?}",
        run.app("log-shipper").files
    );
    let shipper = &stored.spec.as_ref().unwrap().containers[1];
    assert_eq!(shipper.name, "log-shipper");
    assert!(!mounts_secrets(shipper), "{shipper:?}");
}

#[tokio::test]
async fn agent_init_first_puts_keyturn_init_before_the_pods_own_init_containers() {
    let Some(w) = Injecting::start("inject::agent_init_first").await else {
        return;
    };
    orgchart_vault(&w).await;
    let yaml = ORGCHART
        .replace(
            "    vault.hashicorp.com/role: 'internal-app'\n",
            "    vault.hashicorp.com/role: 'internal-app'\n    vault.hashicorp.com/agent-init-first: 'true'\n",
        )
        .replace(
            "  containers:\n",
            "  initContainers:\n    - name: migrate\n      image: jweissig/app-migrate:0.0.1\n      volumeMounts:\n        - {name: scratch, mountPath: /scratch}\n  volumes:\n    - name: scratch\n      emptyDir: {}\n  containers:\n",
        );
    let (stored, run) = w.create_and_run(&yaml).await;
    assert_eq!(init_container_names(&stored), ["keyturn-init", "migrate"]);
    assert_eq!(run.init[0].name, "keyturn-init");
    assert!(run.init[0].succeeded(), "{}", run.init[0]);
    assert!(
        run.app("orgchart")
            .files
            .contains_key("/vault/secrets/database-config.txt")
    );
}

#[tokio::test]
async fn a_template_that_does_not_parse_denies_the_pod_naming_the_annotation() {
    let Some(w) = Injecting::start("inject::a_template_that_does_not_parse").await else {
        return;
    };
    // A literal secret in the app's env, as pods have: the webhook sees the whole pod, and
    // neither its log nor the denial may carry it.
    let yaml = ORGCHART
        .replace("      {{- end -}}\n", "      {{- end -}\n")
        .replace(
            "      image: jweissig/app:0.0.1\n",
            "      image: jweissig/app:0.0.1\n      env:\n        - name: API_KEY\n          value: KTCANARY-webhook-env-3b9e\n",
        );
    assert!(yaml.contains("KTCANARY"), "{yaml}");
    let (ok, out, err) = w.kubectl_create(w.namespace(), &yaml).await;
    assert!(!ok, "{out}");
    assert!(!err.contains("KTCANARY"), "{err}");
    assert!(!w.webhook.log().contains("KTCANARY"), "{}", w.webhook.log());
    assert!(
        err.contains(&format!(
            "admission webhook \"{WEBHOOK_NAME}\" denied the request"
        )),
        "{err}"
    );
    assert!(
        err.contains("vault.hashicorp.com/agent-inject-template-database-config.txt"),
        "{err}"
    );
    let stored = Api::<Pod>::namespaced(w.cluster.client(), w.namespace())
        .get_opt("orgchart")
        .await
        .unwrap();
    assert!(stored.is_none(), "{stored:?}");
}

#[tokio::test]
async fn a_pod_in_kube_system_is_not_injected() {
    let Some(w) = Injecting::start("inject::a_pod_in_kube_system").await else {
        return;
    };
    let (ok, out, err) = w.kubectl_create("kube-system", ORGCHART).await;
    assert!(ok, "{out}{err}");
    let stored = Api::<Pod>::namespaced(w.cluster.client(), "kube-system")
        .get("orgchart")
        .await
        .unwrap();
    assert!(init_container_names(&stored).is_empty(), "{stored:?}");
    assert!(
        !stored
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("vault.hashicorp.com/agent-inject-status")
    );
    let c = &stored.spec.unwrap().containers[0];
    assert!(!mounts_secrets(c), "{c:?}");
}

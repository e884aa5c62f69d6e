//! The alerts and the dashboard (charts/keyturn/files/): `promtool check rules` and
//! `promtool test rules` on the rules file as it ships, with a check that the unit tests cover
//! exactly the file's alerts, fire and stay quiet for each, and catch a broken rule; every
//! alert's runbook exists; the chart's PrometheusRule and dashboard ConfigMap carry those
//! files; and a real Prometheus scraping a real `keyturn run` and a real `keyturn webhook`
//! answers every dashboard query, raises KeyturnRotationFailing for a policy whose delivery is
//! refused, which clears once the delivery is allowed and the resumed rotation succeeds, and
//! raises the webhook's alerts on refused pods and a short certificate but none of the others.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use keyturn_tests::agent_env::{AgentEnv, Daemon};
use keyturn_tests::tools::{self, repo_root};
use serde_json::Value;
use serde_yaml::Value as Yaml;

/// The base every `runbook_url` in the rules file starts with; the chart replaces it with
/// `prometheusRule.runbookBaseURL`.
const RUNBOOK_BASE: &str = "https://keyturn.dev/runbooks/";

fn files() -> PathBuf {
    repo_root().join("charts/keyturn/files")
}

fn promtool() -> PathBuf {
    tools::find("promtool", "KEYTURN_PROMTOOL").unwrap_or_else(|e| panic!("{e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn yaml(path: &Path) -> Yaml {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The alerting rules of a rules document, by alert name.
fn alerts(rules: &Yaml) -> BTreeMap<String, Yaml> {
    let mut out = BTreeMap::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            if let Some(name) = rule["alert"].as_str() {
                assert!(
                    out.insert(name.to_owned(), rule.clone()).is_none(),
                    "{name} twice"
                );
            }
        }
    }
    out
}

/// `promtool test rules` on the test file in `dir`.
fn promtool_test(dir: &Path) -> Output {
    Command::new(promtool())
        .current_dir(dir)
        .args(["test", "rules", "keyturn-alerts.test.yaml"])
        .output()
        .unwrap()
}

#[test]
fn promtool_accepts_the_rules_file() {
    let out = Command::new(promtool())
        .args(["check", "rules"])
        .arg(files().join("keyturn-alerts.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let n = alerts(&yaml(&files().join("keyturn-alerts.yaml"))).len();
    assert!(
        text(&out).contains(&format!("SUCCESS: {n} rules found")),
        "{}",
        text(&out)
    );
}

#[test]
fn promtool_unit_tests_pass_and_cover_every_alert_firing_and_quiet() {
    let out = promtool_test(&files());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("SUCCESS"), "{}", text(&out));

    let rules = alerts(&yaml(&files().join("keyturn-alerts.yaml")));
    let tests = yaml(&files().join("keyturn-alerts.test.yaml"));
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for case in tests["tests"].as_sequence().unwrap() {
        for t in case["alert_rule_test"].as_sequence().unwrap() {
            let name = t["alertname"].as_str().unwrap().to_owned();
            let expected = t["exp_alerts"].as_sequence().map_or(0, Vec::len);
            if expected == 0 {
                quiet.insert(name);
            } else {
                fires.insert(name);
            }
        }
    }
    let names: BTreeSet<String> = rules.keys().cloned().collect();
    assert_eq!(fires, names, "alerts with a case where they fire");
    assert_eq!(quiet, names, "alerts with a case where they do not");
}

#[test]
fn each_alert_has_a_severity_annotations_naming_its_subject_and_a_runbook() {
    let rules = alerts(&yaml(&files().join("keyturn-alerts.yaml")));
    let header = std::fs::read_to_string(files().join("keyturn-alerts.yaml")).unwrap();
    for (name, rule) in &rules {
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        let summary = rule["annotations"]["summary"].as_str().unwrap();
        let description = rule["annotations"]["description"].as_str().unwrap();
        // An alert whose series carry the policy says which policy, in both.
        if rule["expr"].as_str().unwrap().contains("policy)") {
            for a in [summary, description] {
                assert!(a.contains("{{ $labels.policy }}"), "{name}: {a}");
            }
        }
        let url = rule["annotations"]["runbook_url"].as_str().unwrap();
        let file = url
            .strip_prefix(RUNBOOK_BASE)
            .unwrap_or_else(|| panic!("{name}: {url} is not under {RUNBOOK_BASE}"));
        let runbook = repo_root().join("docs/runbooks").join(file);
        let body = std::fs::read_to_string(&runbook)
            .unwrap_or_else(|e| panic!("{name}: {}: {e}", runbook.display()));
        assert!(
            body.contains(name),
            "{} does not name {name}",
            runbook.display()
        );
        // The header other documents are written from lists every alert.
        assert!(
            header
                .lines()
                .any(|l| l.starts_with("#") && l.contains(name)),
            "{name} missing from the header"
        );
    }
    let break_glass =
        std::fs::read_to_string(repo_root().join("docs/runbooks/break-glass-used.md")).unwrap();
    assert!(
        break_glass.contains("leaked-credential.md"),
        "{break_glass}"
    );
}

#[test]
fn a_rule_that_never_fires_fails_the_unit_tests_naming_it() {
    // For each alert, a copy of the rules file in which that alert's expression matches
    // nothing: promtool test must fail, naming the alert. So every firing case is checked,
    // and a rule edited into uselessness cannot pass.
    let source = yaml(&files().join("keyturn-alerts.yaml"));
    for name in alerts(&source).keys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            files().join("keyturn-alerts.test.yaml"),
            dir.path().join("keyturn-alerts.test.yaml"),
        )
        .unwrap();
        let mut mutated = source.clone();
        for group in mutated["groups"].as_sequence_mut().unwrap() {
            for rule in group["rules"].as_sequence_mut().unwrap() {
                if rule["alert"].as_str() == Some(name) {
                    rule["expr"] = Yaml::from("vector(1) unless vector(1)");
                }
            }
        }
        std::fs::write(
            dir.path().join("keyturn-alerts.yaml"),
            serde_yaml::to_string(&mutated).unwrap(),
        )
        .unwrap();
        let out = promtool_test(dir.path());
        assert!(
            !out.status.success(),
            "{name} never fires, yet: {}",
            text(&out)
        );
        assert!(
            text(&out).contains(&format!("alertname: {name},")),
            "{name}: {}",
            text(&out)
        );
    }
}

/// `helm template` of the chart's PrometheusRule and dashboard ConfigMap with `extra` values
/// (`--set` pairs), the documents it renders.
fn render_monitoring(extra: &[&str]) -> Vec<Yaml> {
    let helm = tools::find("helm", "KEYTURN_HELM").unwrap_or_else(|e| panic!("{e}"));
    let mut args = vec![
        "networkPolicy.enabled=false",
        "serviceMonitor.enabled=true",
        "prometheusRule.enabled=true",
        "prometheusRule.labels.release=prom",
        "prometheusRule.runbookBaseURL=https://wiki.example/keyturn/",
        "grafanaDashboard.enabled=true",
    ];
    args.extend_from_slice(extra);
    let out = Command::new(helm)
        .args(["template", "r", "--namespace", "ops"])
        .arg(repo_root().join("charts/keyturn"))
        .args(args.iter().flat_map(|a| ["--set", a]))
        .args([
            "--show-only",
            "templates/prometheusrule.yaml",
            "--show-only",
            "templates/grafana-dashboard.yaml",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&out.stdout))
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|d: &Yaml| !d.is_null())
        .collect()
}

/// The alert names of a rendered PrometheusRule's groups, by group.
fn rendered_alerts(rule: &Yaml) -> BTreeMap<String, Vec<String>> {
    rule["spec"]["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|g| {
            let names = g["rules"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|r| r["alert"].as_str().unwrap().to_owned())
                .collect();
            (g["name"].as_str().unwrap().to_owned(), names)
        })
        .collect()
}

#[test]
fn the_chart_wraps_the_rules_and_the_dashboard_with_the_runbook_url_and_jobs_from_values() {
    let docs = render_monitoring(&["webhook.enabled=true"]);
    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["labels"]["release"], "prom");
    // The same rules as the file, with only the three placeholders rewritten: each
    // ServiceMonitor's job is its Service's name.
    let expected = std::fs::read_to_string(files().join("keyturn-alerts.yaml"))
        .unwrap()
        .replace(RUNBOOK_BASE, "https://wiki.example/keyturn/")
        .replace(r#"job="keyturn""#, r#"job="r-keyturn""#)
        .replace(r#"job="keyturn-webhook""#, r#"job="r-keyturn-webhook""#);
    let expected: Yaml = serde_yaml::from_str(&expected).unwrap();
    assert_eq!(rule["spec"]["groups"], expected["groups"]);
    let rendered = serde_yaml::to_string(&rule["spec"]).unwrap();
    assert!(!rendered.contains(RUNBOOK_BASE), "{rendered}");
    assert!(rendered.contains(r#"up{job="r-keyturn"}"#), "{rendered}");
    assert!(
        rendered.contains(
            r#"absent(keyturn_webhook_certificate_expiry_timestamp_seconds{job="r-keyturn-webhook"})"#
        ),
        "{rendered}"
    );

    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a dashboard ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value =
        serde_json::from_str(cm["data"]["keyturn-dashboard.json"].as_str().unwrap()).unwrap();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(files().join("keyturn-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json, file);
}

#[test]
fn the_chart_leaves_out_the_webhook_alerts_without_the_webhook_and_the_ca_bundle_alert_with_cert_manager()
 {
    let file = alerts(&yaml(&files().join("keyturn-alerts.yaml")));
    let daemon: Vec<String> = file
        .keys()
        .filter(|n| !n.starts_with("KeyturnWebhook"))
        .cloned()
        .collect();
    let webhook: Vec<String> = file
        .keys()
        .filter(|n| n.starts_with("KeyturnWebhook"))
        .cloned()
        .collect();
    assert!(webhook.contains(&"KeyturnWebhookCABundleStale".to_owned()));
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let groups = |extra: &[&str]| {
        let docs = render_monitoring(extra);
        let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule").unwrap();
        rendered_alerts(rule)
            .into_iter()
            .map(|(g, names)| (g, sorted(names)))
            .collect::<BTreeMap<_, _>>()
    };

    // The chart's default: no webhook, no webhook alert (KeyturnWebhookDown would fire).
    let off = groups(&[]);
    assert_eq!(off.keys().collect::<Vec<_>>(), ["keyturn"], "{off:?}");
    assert_eq!(off["keyturn"], daemon);

    // cert-manager keeps the caBundle: the webhook's gauge stays 0, so its alert goes.
    let cert_manager = groups(&["webhook.enabled=true", "webhook.certManager.enabled=true"]);
    let mut want = webhook.clone();
    want.retain(|n| n != "KeyturnWebhookCABundleStale");
    assert_eq!(cert_manager["keyturn-webhook"], want);
    assert_eq!(cert_manager["keyturn"], daemon);

    // Without a ServiceMonitor, the webhook is scraped under the daemon's job unless
    // prometheusRule.webhookJob names its own.
    for (extra, job) in [
        (
            &[
                "webhook.enabled=true",
                "serviceMonitor.enabled=false",
                "prometheusRule.job=kubernetes-pods",
            ][..],
            "kubernetes-pods",
        ),
        (
            &[
                "webhook.enabled=true",
                "serviceMonitor.enabled=false",
                "prometheusRule.job=kubernetes-pods",
                "prometheusRule.webhookJob=keyturn-webhook-pods",
            ][..],
            "keyturn-webhook-pods",
        ),
    ] {
        let docs = render_monitoring(extra);
        let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule").unwrap();
        let down = rule["spec"]["groups"]
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_sequence().unwrap())
            .find(|r| r["alert"] == "KeyturnWebhookDown")
            .unwrap();
        assert!(
            down["expr"]
                .as_str()
                .unwrap()
                .contains(&format!(r#"{{job="{job}"}}"#)),
            "{extra:?}: {down:?}"
        );
    }
}

/// Every query of the dashboard, with the panel it belongs to.
fn dashboard_queries() -> Vec<(String, String)> {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(files().join("keyturn-dashboard.json")).unwrap(),
    )
    .unwrap();
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        dash["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
        "the data source is a variable"
    );
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{panel}");
            let expr = target["expr"].as_str().unwrap();
            // What Grafana substitutes: every policy and job of this test (the daemon's and
            // the webhook's), and a rate interval of a few scrapes.
            let q = expr
                .replace("$__rate_interval", "30s")
                .replace("$policy", ".*")
                .replace("$job", "keyturn|keyturn-webhook");
            assert!(
                !q.contains('$'),
                "{expr}: a variable other than {vars:?} or $__rate_interval"
            );
            out.push((panel["title"].as_str().unwrap().to_owned(), q));
        }
    }
    assert!(out.len() >= 10, "{out:?}");
    out
}

/// A Prometheus server on loopback with its own storage, killed when dropped.
struct Prometheus {
    child: Child,
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes each `(job, target)` every second and evaluates `rules` every second.
    fn start(targets: &[(&str, &str)], rules: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let jobs: String = targets
            .iter()
            .map(|(job, target)| {
                format!(
                    "  - job_name: {job}\n    static_configs: [ {{ targets: [\"{target}\"] }} ]\n"
                )
            })
            .collect();
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: [{rules:?}]\nscrape_configs:\n{jobs}"
            ),
        )
        .unwrap();
        let port = keyturn_tests::process::free_port();
        let log = dir.path().join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(
            tools::find("prometheus", "KEYTURN_PROMETHEUS").unwrap_or_else(|e| panic!("{e}")),
        )
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap();
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.base), query).ok()?;
        let r = reqwest::get(url).await.ok()?;
        r.json().await.ok()
    }

    /// Waits (bounded) until `cond` holds, failing with `what` and Prometheus' log.
    async fn until<F, Fut>(&self, what: &str, within: Duration, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + within;
        while !cond().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {within:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The webhook's namespace, Service and configuration as the chart names them (release
/// `keyturn` in `keyturn-system`).
const WEBHOOK_NAMESPACE: &str = "keyturn-system";
const WEBHOOK_SERVICE: &str = "keyturn-webhook";
const WEBHOOK_CONFIGURATION: &str = "keyturn-webhook-keyturn-system";

/// `keyturn webhook` against the stand-in `kube`, as the chart runs it (the in-memory CA
/// written into the configuration's caBundle, pod creates sent to it through
/// [`keyturn_tests::kube::KubeStandin::route_service`]), with a serving certificate of
/// `validity`; once its /readyz says so, with its metrics address.
async fn start_webhook(
    standin: &keyturn_tests::kube::KubeStandin,
    kubeconfig: &Path,
    validity: &str,
    dir: &Path,
) -> (keyturn_tests::process::ServerProcess, String) {
    let mwc: k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration =
        serde_json::from_value(serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": WEBHOOK_CONFIGURATION},
            "webhooks": [{
                "name": "inject.keyturn.dev",
                "sideEffects": "NoneOnDryRun",
                "admissionReviewVersions": ["v1"],
                "failurePolicy": "Fail",
                "clientConfig": {"service": {"namespace": WEBHOOK_NAMESPACE, "name": WEBHOOK_SERVICE, "path": "/mutate"}},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            }],
        }))
        .unwrap();
    kube::Api::all(standin.client().await.unwrap())
        .create(&kube::api::PostParams::default(), &mwc)
        .await
        .unwrap();
    let https = format!("127.0.0.1:{}", keyturn_tests::process::free_port());
    let metrics = format!("127.0.0.1:{}", keyturn_tests::process::free_port());
    let keyturn = keyturn_tests::bins::keyturn();
    let mut webhook = keyturn_tests::process::Spawn {
        name: "keyturn webhook",
        program: &keyturn,
        args: [
            "webhook",
            "--listen",
            &https,
            "--metrics-listen",
            &metrics,
            "--init-image",
            "registry.example/keyturn-init:1",
            "--vault-addr",
            "https://vault.example:8200",
            "--namespace",
            WEBHOOK_NAMESPACE,
            "--service",
            WEBHOOK_SERVICE,
            "--configuration",
            WEBHOOK_CONFIGURATION,
            "--holder",
            "keyturn-webhook-0",
            "--cert-validity",
            validity,
        ]
        .map(str::to_owned)
        .to_vec(),
        env: vec![("KUBECONFIG".into(), kubeconfig.display().to_string())],
        user: None,
        log: dir.join("webhook.log"),
        stop_signal: "TERM",
    }
    .start()
    .unwrap();
    standin.route_service(
        WEBHOOK_NAMESPACE,
        WEBHOOK_SERVICE,
        443,
        https.parse().unwrap(),
    );
    let readyz = format!("http://{metrics}/readyz");
    webhook
        .wait_ready(Duration::from_secs(60), || {
            let readyz = readyz.clone();
            async move {
                reqwest::get(&readyz)
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await
        .unwrap();
    (webhook, metrics)
}

/// A pod annotated for the Vault Agent Injector; `extra` annotations added.
fn annotated_pod(name: &str, extra: &[(&str, &str)]) -> k8s_openapi::api::core::v1::Pod {
    let mut annotations = serde_json::json!({
        "vault.hashicorp.com/agent-inject": "true",
        "vault.hashicorp.com/role": "orders",
        "vault.hashicorp.com/agent-inject-secret-db": "secret/data/orders/db",
        "vault.hashicorp.com/agent-pre-populate-only": "true",
    });
    for (k, v) in extra {
        annotations[*k] = Value::from(*v);
    }
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "orders:1"}]},
    }))
    .unwrap()
}

#[tokio::test]
async fn prometheus_scraping_a_real_daemon_and_webhook_answers_every_dashboard_query_and_raises_and_clears_rotation_failing()
 {
    // Two policies: `good` rotates; `broken` delivers into a Kubernetes API that answers 403,
    // so its one attempt fails (the retry comes 30 s later under `--retry-max 30s`; one
    // failure must be enough).
    let e = AgentEnv::start(7).await;
    e.write_generated_policy("good", "");
    e.write_generated_policy(
        "broken",
        "  distribute:\n    - kubernetes: { namespace: shop, secret: broken, keys: { TOKEN: value } }\n",
    );
    let kube = keyturn_tests::kube::KubeStandin::start().await.unwrap();
    kube.deny("*", "secrets");
    let kubeconfig = e.home.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig).unwrap();
    let listen = format!("127.0.0.1:{}", keyturn_tests::process::free_port());
    let mut cmd = e.cmd(
        &[
            "run",
            "--grace",
            "10s",
            "--retry-max",
            "30s",
            "--listen",
            &listen,
        ],
        "agent-1",
    );
    cmd.env("KUBECONFIG", &kubeconfig);
    let daemon = Daemon::spawn(cmd, e.home.path().join("daemon.log"));

    // The rules file as it ships: its `for:` durations stand, so the test waits for the alert
    // to be active (pending, or firing had it run long enough) rather than for `firing`.
    // promtool's unit tests cover the step from pending to firing with the same expressions;
    // here what matters is that they match what a real daemon exports.
    // keyturn webhook beside it, with a 1 h serving certificate: under the 6 h of
    // KeyturnWebhookCertificateExpiring, so that alert is active on what a real webhook
    // exports.
    let (webhook, webhook_metrics) = start_webhook(&kube, &kubeconfig, "1h", e.home.path()).await;
    let prom = Prometheus::start(
        &[("keyturn", &listen), ("keyturn-webhook", &webhook_metrics)],
        &files().join("keyturn-alerts.yaml"),
    );
    let minute = Duration::from_secs(60);
    prom.until("Prometheus ready", minute, || async {
        reqwest::get(format!("{}/-/ready", prom.base))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    prom.until("the daemon scraped", minute, || async {
        prom.get("/api/v1/query", &[("query", r#"up{job="keyturn"} == 1"#)])
            .await
            .is_some_and(|v| !v["data"]["result"].as_array().unwrap().is_empty())
    })
    .await;
    prom.until("the webhook scraped", minute, || async {
        prom.get(
            "/api/v1/query",
            &[(
                "query",
                r#"keyturn_webhook_admissions_total{job="keyturn-webhook",outcome="denied"} == 0"#,
            )],
        )
        .await
        .is_some_and(|v| !v["data"]["result"].as_array().unwrap().is_empty())
    })
    .await;
    // Once scraped at 0 (so the denials are an increase Prometheus sees): one pod injected,
    // four refused for an annotation keyturn-init does not support, as a ReplicaSet retrying
    // a broken template would have them.
    let pods: ::kube::Api<k8s_openapi::api::core::v1::Pod> =
        ::kube::Api::namespaced(kube.client().await.unwrap(), "shop");
    let created = pods
        .create(
            &::kube::api::PostParams::default(),
            &annotated_pod("orders-1", &[]),
        )
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", webhook.log()));
    assert_eq!(
        created.spec.unwrap().init_containers.unwrap_or_default()[0].name,
        "keyturn-init"
    );
    for i in 0..4 {
        let refused = pods
            .create(
                &::kube::api::PostParams::default(),
                &annotated_pod(
                    &format!("orders-refused-{i}"),
                    &[("vault.hashicorp.com/agent-inject-command-db", "kill -HUP 1")],
                ),
            )
            .await;
        let err = refused.expect_err("a pod with an unsupported annotation is refused");
        assert!(err.to_string().contains("agent-inject-command-db"), "{err}");
    }

    prom.until("good rotated", minute, || async {
        e.value_at("good", None).await.is_some()
    })
    .await;

    // Every rule loaded and evaluates without error.
    let rules = prom.get("/api/v1/rules", &[]).await.unwrap();
    let loaded: BTreeMap<String, String> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["health"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let names: BTreeSet<String> = alerts(&yaml(&files().join("keyturn-alerts.yaml")))
        .into_keys()
        .collect();
    assert_eq!(
        loaded.keys().cloned().collect::<BTreeSet<_>>(),
        names,
        "{rules}"
    );

    let active = |name: &'static str| {
        let prom = &prom;
        async move {
            prom.get("/api/v1/alerts", &[])
                .await
                .map(|v| {
                    v["data"]["alerts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|a| a["labels"]["alertname"] == name)
                        .cloned()
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        }
    };
    prom.until(
        "KeyturnRotationFailing active for broken",
        Duration::from_secs(90),
        || async {
            active("KeyturnRotationFailing")
                .await
                .iter()
                .any(|a| a["labels"]["policy"] == "broken")
        },
    )
    .await;
    let failing = active("KeyturnRotationFailing").await;
    let broken = failing
        .iter()
        .find(|a| a["labels"]["policy"] == "broken")
        .unwrap();
    assert!(
        ["pending", "firing"].contains(&broken["state"].as_str().unwrap()),
        "{broken}"
    );
    assert_eq!(broken["labels"]["severity"], "critical", "{broken}");
    assert_eq!(
        broken["annotations"]["summary"], "keyturn cannot rotate policy broken",
        "{broken}"
    );
    assert_eq!(
        broken["annotations"]["runbook_url"],
        format!("{RUNBOOK_BASE}rotation-failing.md")
    );
    // The healthy policy and the running daemon raise nothing.
    assert!(
        failing.iter().all(|a| a["labels"]["policy"] != "good"),
        "{failing:?}"
    );
    // The webhook's alerts: the refusals and the short certificate, on the metrics a real
    // webhook exports; its scrape, its caBundle and its latency raise nothing.
    prom.until(
        "KeyturnWebhookDenying and KeyturnWebhookCertificateExpiring active",
        minute,
        || async {
            !active("KeyturnWebhookDenying").await.is_empty()
                && !active("KeyturnWebhookCertificateExpiring").await.is_empty()
        },
    )
    .await;
    let denying = active("KeyturnWebhookDenying").await;
    assert_eq!(denying.len(), 1, "{denying:?}");
    assert_eq!(
        denying[0]["labels"]["job"], "keyturn-webhook",
        "{denying:?}"
    );
    assert_eq!(denying[0]["labels"]["severity"], "warning", "{denying:?}");
    let expiring = active("KeyturnWebhookCertificateExpiring").await;
    assert_eq!(expiring.len(), 1, "{expiring:?}");
    assert_eq!(expiring[0]["labels"]["instance"], webhook_metrics.as_str());
    assert_eq!(
        expiring[0]["labels"]["severity"], "critical",
        "{expiring:?}"
    );
    assert_eq!(
        expiring[0]["annotations"]["runbook_url"],
        format!("{RUNBOOK_BASE}webhook-certificate-expiring.md")
    );
    for quiet in [
        "KeyturnDaemonDown",
        "KeyturnAuditWriteFailing",
        "KeyturnRotationStuck",
        "KeyturnBreakGlassUsed",
        "KeyturnWebhookDown",
        "KeyturnWebhookCABundleStale",
        "KeyturnWebhookSlow",
    ] {
        let a = active(quiet).await;
        assert!(a.is_empty(), "{quiet}: {a:?}");
    }
    for (name, health) in &loaded {
        assert_eq!(health, "ok", "{name}: {rules}");
    }

    // Every dashboard query returns data (rates need two scrapes inside their range: bounded
    // wait per query, not a timing assertion).
    for (panel, q) in dashboard_queries() {
        let deadline = tokio::time::Instant::now() + minute;
        loop {
            let v = prom.get("/api/v1/query", &[("query", &q)]).await;
            let ok = v.as_ref().is_some_and(|v| {
                v["status"] == "success" && !v["data"]["result"].as_array().unwrap().is_empty()
            });
            if ok {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "panel {panel:?}: {q}: no data within {minute:?}: {v:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // The metrics behind the per-policy alerts are there for both policies (the generated
    // policy is `every: 24h` without a window: 24 h allowed).
    for (q, want) in [
        (
            r#"keyturn_policy_max_age_seconds{policy="good"}"#,
            Some(24.0 * 3600.0),
        ),
        (
            r#"keyturn_rotation_started_timestamp_seconds{policy="good"}"#,
            Some(0.0),
        ),
        (
            r#"keyturn_last_failure_timestamp_seconds{policy="broken"}"#,
            None,
        ),
        (
            r#"sum(keyturn_kubernetes_requests_total{resource="secrets",outcome="forbidden"})"#,
            None,
        ),
    ] {
        let v = prom.get("/api/v1/query", &[("query", q)]).await.unwrap();
        let value: f64 = v["data"]["result"][0]["value"][1]
            .as_str()
            .unwrap_or_else(|| panic!("{q}: {v}"))
            .parse()
            .unwrap();
        match want {
            Some(w) => assert_eq!(value, w, "{q}"),
            None => assert!(value > 0.0, "{q}: {v}"),
        }
    }

    // Once the first retry has failed too (30 s after the first failure, so the last failure
    // ends well after the rotation started, whatever the clock's second), delivery is
    // allowed again and the next retry resumes the rotation left in flight and completes it.
    // Its success dates from the first attempt's start, before the failures; the alert
    // clears all the same.
    let query = |q: &'static str| {
        let prom = &prom;
        async move {
            prom.get("/api/v1/query", &[("query", q)])
                .await
                .and_then(|v| {
                    v["data"]["result"][0]["value"][1]
                        .as_str()?
                        .parse::<f64>()
                        .ok()
                })
        }
    };
    prom.until(
        "broken's first retry failed",
        Duration::from_secs(90),
        || async {
            query(r#"keyturn_consecutive_failures{policy="broken"}"#)
                .await
                .is_some_and(|n| n >= 2.0)
        },
    )
    .await;
    let failed_at = query(r#"keyturn_last_failure_timestamp_seconds{policy="broken"}"#)
        .await
        .unwrap();
    kube.allow_all();
    let retried_within = Duration::from_secs(120);
    prom.until("broken rotated on its retry", retried_within, || async {
        query(r#"keyturn_last_success_timestamp_seconds{policy="broken"}"#)
            .await
            .is_some()
    })
    .await;
    let succeeded_from = query(r#"keyturn_last_success_timestamp_seconds{policy="broken"}"#)
        .await
        .unwrap();
    assert!(
        succeeded_from < failed_at,
        "the retry resumed the rotation that started before the failure: {succeeded_from} >= {failed_at}\n{}",
        daemon.log()
    );
    prom.until("KeyturnRotationFailing gone for broken", minute, || async {
        !active("KeyturnRotationFailing")
            .await
            .iter()
            .any(|a| a["labels"]["policy"] == "broken")
    })
    .await;

    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    drop(webhook);
    drop(prom);
}

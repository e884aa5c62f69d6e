use serde_json::{Value, json};

use super::*;

fn injector() -> Injector {
    Injector {
        config: InjectConfig {
            init_image: "registry.example/keyturn-init:1".into(),
            vault_addr: Some("https://vault.vault:8200".into()),
            own_namespace: "keyturn".into(),
            ..InjectConfig::default()
        },
    }
}

fn pod(annotations: &[(&str, &str)]) -> Value {
    let ann: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "orders-", "annotations": ann},
        "spec": {
            "serviceAccountName": "orders",
            "containers": [
                {"name": "app", "image": "orders:1", "securityContext": {"runAsUser": 1000, "runAsGroup": 1000}},
                {"name": "proxy", "image": "envoy:1", "securityContext": {"runAsUser": 1000}, "volumeMounts": [{"name": "cfg", "mountPath": "/etc/envoy"}]}
            ],
            "volumes": [{"name": "cfg", "configMap": {"name": "envoy"}}]
        }
    })
}

const BASIC: [(&str, &str); 4] = [
    ("vault.hashicorp.com/agent-inject", "true"),
    ("vault.hashicorp.com/role", "orders"),
    (
        "vault.hashicorp.com/agent-inject-secret-db",
        "secret/data/orders/db",
    ),
    ("vault.hashicorp.com/agent-pre-populate-only", "true"),
];

fn injected(annotations: &[(&str, &str)]) -> (Value, Vec<String>) {
    let mut p = pod(annotations);
    match injector().decide("orders", &p) {
        Decision::Inject { patch, warnings } => {
            json_patch::patch(&mut p, &patch).unwrap();
            (p, warnings)
        }
        other => panic!("{other:?}"),
    }
}

fn denied(annotations: &[(&str, &str)]) -> String {
    match injector().decide("orders", &pod(annotations)) {
        Decision::Deny { message } => message,
        other => panic!("{other:?}"),
    }
}

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut a = BASIC.to_vec();
    a.extend_from_slice(extra);
    a
}

#[test]
fn an_annotated_pod_gets_the_init_container_its_volumes_and_the_status() {
    let (p, warnings) = injected(&BASIC);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        p.pointer("/metadata/annotations/vault.hashicorp.com~1agent-inject-status"),
        Some(&json!("injected"))
    );
    let init = &p["spec"]["initContainers"][0];
    assert_eq!(init["name"], "keyturn-init");
    assert_eq!(init["image"], "registry.example/keyturn-init:1");
    assert_eq!(
        init["args"],
        json!([
            "--annotations",
            "/etc/keyturn/podinfo/annotations",
            "--out",
            "/vault/secrets"
        ])
    );
    assert!(init.get("command").is_none());
    let env = init["env"].as_array().unwrap();
    assert!(env.contains(&json!({"name": "VAULT_ADDR", "value": "https://vault.vault:8200"})));
    assert!(env.contains(&json!({"name": "KEYTURN_INIT_JWT_FILE", "value": "/var/run/secrets/keyturn/serviceaccount/token"})));
    let sc = &init["securityContext"];
    assert_eq!(
        (sc["runAsUser"].as_i64(), sc["runAsGroup"].as_i64()),
        (Some(1000), Some(1000))
    );
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    let volumes: Vec<&str> = p["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        volumes,
        [
            "cfg",
            "keyturn-podinfo",
            "keyturn-token",
            "keyturn-secrets",
            "keyturn-audit-key"
        ]
    );
    assert_eq!(
        p["spec"]["volumes"][4]["secret"]["secretName"],
        "keyturn-init-audit-hmac"
    );
    assert!(env.contains(
        &json!({"name": "KEYTURN_AUDIT_HMAC_KEY_FILE", "value": "/etc/keyturn/audit/hmac.key"})
    ));
    assert_eq!(p["spec"]["volumes"][3]["emptyDir"]["medium"], "Memory");
    assert_eq!(
        p["spec"]["volumes"][2]["projected"]["sources"][0]["serviceAccountToken"],
        json!({"path": "token", "expirationSeconds": 3600})
    );
    for c in 0..2 {
        let mounts = p["spec"]["containers"][c]["volumeMounts"]
            .as_array()
            .unwrap();
        assert!(mounts.contains(
            &json!({"name": "keyturn-secrets", "mountPath": "/vault/secrets", "readOnly": true})
        ));
    }
    // The result is still a Pod.
    serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(p).unwrap();
}

#[test]
fn pods_that_are_not_for_keyturn_are_skipped() {
    let i = injector();
    let skip = |ns: &str, p: &Value| matches!(i.decide(ns, p), Decision::Skip { .. });
    assert!(skip("orders", &pod(&[("vault.hashicorp.com/role", "x")])));
    assert!(skip(
        "orders",
        &pod(&[("vault.hashicorp.com/agent-inject", "false")])
    ));
    for ns in ["kube-system", "kube-public", "keyturn"] {
        assert!(skip(ns, &pod(&BASIC)), "{ns}");
    }
    // Never twice: neither after the status is set nor when the container is there.
    let (again, _) = injected(&BASIC);
    assert!(skip("orders", &again));
    let mut by_hand = pod(&BASIC);
    by_hand["spec"]["initContainers"] = json!([{"name": "keyturn-init", "image": "x"}]);
    assert!(skip("orders", &by_hand));
}

#[test]
fn openbao_and_keyturn_prefixes_inject_and_the_status_goes_under_the_one_used() {
    let (p, _) = injected(&[
        ("openbao.org/agent-inject", "true"),
        ("openbao.org/role", "orders"),
        (
            "openbao.org/agent-inject-secret-db",
            "secret/data/orders/db",
        ),
        ("openbao.org/agent-pre-populate-only", "true"),
    ]);
    assert_eq!(
        p.pointer("/metadata/annotations/openbao.org~1agent-inject-status"),
        Some(&json!("injected"))
    );
    let (p, _) = injected(&[
        ("keyturn.dev/agent-inject", "True"),
        ("keyturn.dev/role", "orders"),
        (
            "keyturn.dev/agent-inject-secret-db",
            "secret/data/orders/db",
        ),
    ]);
    assert!(
        p.pointer("/metadata/annotations/keyturn.dev~1agent-inject-status")
            .is_some()
    );
}

#[test]
fn init_first_containers_and_resources_follow_the_annotations() {
    let mut p = pod(&with(&[
        ("vault.hashicorp.com/agent-init-first", "true"),
        ("vault.hashicorp.com/agent-inject-containers", "app"),
        ("vault.hashicorp.com/agent-limits-mem", "128Mi"),
        ("vault.hashicorp.com/agent-requests-cpu", "0.25"),
        (
            "vault.hashicorp.com/secret-volume-path",
            "/run/app-secrets/",
        ),
    ]));
    p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "orders:1"}]);
    let Decision::Inject { patch, .. } = injector().decide("orders", &p) else {
        panic!()
    };
    json_patch::patch(&mut p, &patch).unwrap();
    let inits: Vec<&str> = p["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(inits, ["keyturn-init", "migrate"]);
    let init = &p["spec"]["initContainers"][0];
    assert_eq!(init["resources"]["limits"]["memory"], "128Mi");
    assert_eq!(init["resources"]["requests"]["cpu"], "0.25");
    assert_eq!(init["resources"]["requests"]["memory"], "16Mi");
    assert_eq!(init["args"][3], "/run/app-secrets");
    assert!(p["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] == "/run/app-secrets");
    let proxy = p["spec"]["containers"][1]["volumeMounts"]
        .as_array()
        .unwrap();
    assert_eq!(proxy.len(), 1, "the proxy is not named, so it gets nothing");
}

#[test]
fn invalid_or_unsupported_annotations_are_denied_by_name() {
    let m = denied(&with(&[(
        "vault.hashicorp.com/agent-inject-template-db",
        "{{ with secret \"secret/data/orders/db\" }}{{ if .Data }}x{{ end }}{{ end }}",
    )]));
    assert!(
        m.contains("vault.hashicorp.com/agent-inject-template-db"),
        "{m}"
    );
    let m = denied(&with(&[(
        "vault.hashicorp.com/agent-inject-command-db",
        "kill -HUP 1",
    )]));
    assert!(
        m.contains("vault.hashicorp.com/agent-inject-command-db is not supported"),
        "{m}"
    );
    let m = denied(&with(&[(
        "vault.hashicorp.com/agent-inject-containers",
        "app,sidecar",
    )]));
    assert!(
        m.contains("agent-inject-containers names \"sidecar\""),
        "{m}"
    );
    let m = denied(&with(&[(
        "vault.hashicorp.com/agent-pre-populate",
        "false",
    )]));
    assert!(m.contains("vault.hashicorp.com/agent-pre-populate"), "{m}");
    for dir in [
        "/etc/keyturn/podinfo/",
        "/",
        "relative",
        "/vault/../etc",
        "/vault/./x",
    ] {
        let m = denied(&with(&[("vault.hashicorp.com/secret-volume-path", dir)]));
        assert!(
            m.contains("vault.hashicorp.com/secret-volume-path"),
            "{dir}: {m}"
        );
    }
    let m = denied(&with(&[("vault.hashicorp.com/agent-limits-cpu", "lots")]));
    assert!(
        m.contains("agent-limits-cpu is not a Kubernetes quantity"),
        "{m}"
    );
    let m = denied(&with(&[("vault.hashicorp.com/agent-limits-cpu", "-1")]));
    assert!(m.contains("agent-limits-cpu"), "{m}");
    let m = denied(&with(&[(
        "vault.hashicorp.com/agent-run-as-user",
        "2147483648",
    )]));
    assert!(m.contains("agent-run-as-user is not a numeric id"), "{m}");
    let m = denied(&with(&[
        ("vault.hashicorp.com/agent-requests-mem", "256Mi"),
        ("vault.hashicorp.com/agent-limits-mem", "128Mi"),
    ]));
    assert!(
        m.contains(
            "vault.hashicorp.com/agent-requests-mem is above vault.hashicorp.com/agent-limits-mem"
        ),
        "{m}"
    );
    let m = denied(&with(&[("vault.hashicorp.com/agent-run-as-user", "0")]));
    assert!(m.contains("agent-run-as-user"), "{m}");
    let m = denied(&with(&[("vault.hashicorp.com/auth-type", "approle")]));
    assert!(m.contains("vault.hashicorp.com/auth-type"), "{m}");
    let m = denied(&[("vault.hashicorp.com/agent-inject", "yes")]);
    assert!(
        m.contains("vault.hashicorp.com/agent-inject is not a boolean"),
        "{m}"
    );
    let m = denied(&[("vault.hashicorp.com/agent-inject", "true")]);
    assert!(m.contains("vault.hashicorp.com/role is required"), "{m}");
}

#[test]
fn a_denial_names_annotations_never_their_values() {
    let canary = "KTCANARY-webhook-7c1d";
    let m = denied(&with(&[
        ("vault.hashicorp.com/agent-inject-command-db", canary),
        ("vault.hashicorp.com/agent-inject-token", canary),
        ("vault.hashicorp.com/client-key", canary),
        ("vault.hashicorp.com/agent-limits-cpu", canary),
    ]));
    assert!(!m.contains(canary), "{m}");
}

#[test]
fn sidecar_annotations_and_unknown_ones_are_warned_about_by_name() {
    let mut a = BASIC.to_vec();
    a.retain(|(k, _)| !k.ends_with("pre-populate-only"));
    a.push(("vault.hashicorp.com/agent-cache-enable", "true"));
    a.push(("vault.hashicorp.com/agent-made-up", "1"));
    let (_, warnings) = injected(&a);
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("vault.hashicorp.com/agent-cache-enable is ignored"))
    );
    assert!(warnings.iter().any(|w| {
        w.starts_with("vault.hashicorp.com/agent-made-up is not a Vault injector annotation")
    }));
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("agent-pre-populate-only is not \"true\""))
    );
}

#[test]
fn the_init_container_runs_as_the_app_or_says_why_it_cannot() {
    let mut p = pod(&BASIC);
    p["spec"]["containers"][0]["securityContext"] = json!({});
    p["spec"]["containers"][1]["securityContext"] = json!({});
    let Decision::Inject { patch, warnings } = injector().decide("orders", &p) else {
        panic!()
    };
    json_patch::patch(&mut p, &patch).unwrap();
    assert_eq!(
        p["spec"]["initContainers"][0]["securityContext"]["runAsUser"],
        65532
    );
    assert!(
        warnings.iter().any(|w| w.contains("declare no runAsUser")),
        "{warnings:?}"
    );
    let (p, _) = injected(&with(&[
        ("vault.hashicorp.com/agent-run-as-user", "2000"),
        ("vault.hashicorp.com/agent-run-as-group", "3000"),
    ]));
    let sc = &p["spec"]["initContainers"][0]["securityContext"];
    assert_eq!(
        (sc["runAsUser"].as_i64(), sc["runAsGroup"].as_i64()),
        (Some(2000), Some(3000))
    );
}

#[test]
fn tls_annotations_mount_the_secret_and_set_the_ca() {
    let (p, _) = injected(&with(&[
        ("vault.hashicorp.com/tls-secret", "vault-tls"),
        ("vault.hashicorp.com/ca-cert", "/vault/tls/ca.crt"),
    ]));
    let init = &p["spec"]["initContainers"][0];
    assert!(
        init["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "VAULT_CACERT", "value": "/vault/tls/ca.crt"}))
    );
    assert!(init["volumeMounts"].as_array().unwrap().contains(
        &json!({"name": "keyturn-vault-tls", "mountPath": "/vault/tls", "readOnly": true})
    ));
    assert!(
        p["spec"]["volumes"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "keyturn-vault-tls", "secret": {"secretName": "vault-tls"}}))
    );
}

#[test]
fn quantities_are_checked_as_kubernetes_writes_them() {
    for ok in ["250m", "64Mi", "1", "0.5", "1.5Gi", "1e3", "2E-2", "+1k"] {
        assert!(is_quantity(ok), "{ok}");
    }
    for bad in ["", "lots", "1.2.3", "64MB", ".", "1e", "Mi"] {
        assert!(!is_quantity(bad), "{bad}");
    }
}

#[test]
fn every_annotation_the_table_gives_the_webhook_is_handled() {
    // A row marked Webhook without an arm in read_annotations would deny every pod using it.
    for row in keyturn_init::compat::TABLE {
        if row.answer != Answer::Webhook {
            continue;
        }
        let name = if row.family {
            format!("{}x", row.name)
        } else {
            row.name.to_owned()
        };
        let key = format!("vault.hashicorp.com/{name}");
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let annotations = BTreeMap::from([(key.clone(), "true".to_owned())]);
        injector().read_annotations(
            "vault.hashicorp.com/",
            &annotations,
            &pod(&[]),
            &mut problems,
            &mut warnings,
        );
        assert!(
            !problems
                .iter()
                .any(|p| p.contains("is not handled by keyturn webhook")),
            "{key}: {problems:?}"
        );
    }
}

#[test]
fn a_request_above_the_default_limit_raises_the_limit() {
    let (p, _) = injected(&with(&[(
        "vault.hashicorp.com/agent-requests-mem",
        "100Mi",
    )]));
    let r = &p["spec"]["initContainers"][0]["resources"];
    assert_eq!(
        (
            r["requests"]["memory"].as_str(),
            r["limits"]["memory"].as_str()
        ),
        (Some("100Mi"), Some("100Mi"))
    );
    assert_eq!(r["limits"]["cpu"], "500m");
    assert!(quantity_value("1.5Gi").unwrap() > quantity_value("1500Mi").unwrap());
    assert_eq!(quantity_value("250m"), Some(0.25));
    assert_eq!(quantity_value("1e3"), Some(1000.0));
}

#[test]
fn init_containers_after_keyturn_init_get_the_secrets_and_earlier_ones_are_warned_about() {
    let mut p = pod(&with(&[("vault.hashicorp.com/agent-init-first", "true")]));
    p["spec"]["initContainers"] =
        json!([{"name": "migrate", "image": "orders:1", "securityContext": {"runAsUser": 1000}}]);
    let Decision::Inject { patch, .. } = injector().decide("orders", &p) else {
        panic!()
    };
    json_patch::patch(&mut p, &patch).unwrap();
    assert_eq!(p["spec"]["initContainers"][1]["name"], "migrate");
    assert_eq!(
        p["spec"]["initContainers"][1]["volumeMounts"],
        json!([{"name": "keyturn-secrets", "mountPath": "/vault/secrets", "readOnly": true}])
    );
    // Without init-first the pod's own init container runs first: no mount, and naming it
    // is warned about.
    let mut p = pod(&with(&[(
        "vault.hashicorp.com/agent-inject-containers",
        "app,migrate",
    )]));
    p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "orders:1"}]);
    let Decision::Inject { patch, warnings } = injector().decide("orders", &p) else {
        panic!()
    };
    json_patch::patch(&mut p, &patch).unwrap();
    assert!(p["spec"]["initContainers"][0].get("volumeMounts").is_none());
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("init container migrate, which runs before keyturn-init")),
        "{warnings:?}"
    );
}

#[test]
fn an_existing_status_is_overwritten_where_it_is() {
    let (p, _) = injected(&with(&[("openbao.org/agent-inject-status", "update")]));
    let ann = p["metadata"]["annotations"].as_object().unwrap();
    assert_eq!(ann["openbao.org/agent-inject-status"], "injected");
    assert!(!ann.contains_key("vault.hashicorp.com/agent-inject-status"));
    // And keyturn-init reads the injected pod's annotations without a complaint.
    let file = downward_api_file(
        &ann.iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect(),
    );
    keyturn_init::annotations::parse("annotations", &file).unwrap();
}

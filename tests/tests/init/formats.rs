//! keyturn-init end to end against a real OpenBao: every format and engine, re-runs, and
//! the Vault injector annotations.

use std::os::unix::fs::MetadataExt;

use crate::support::{Fixture, mode};
use serde_json::{Value, json};

#[tokio::test]
async fn every_format_renders_kv2_kv1_and_a_pinned_kv2_version() {
    let mut f = Fixture::start().await;
    let (pw1, pw2, api, v1) = (
        f.canary("pw1"),
        f.canary("pw2"),
        f.canary("api"),
        f.canary("v1"),
    );
    f.kv2("orders/db", json!({"user": "orders", "password": pw1}))
        .await;
    f.kv2(
        "orders/db",
        json!({"user": "orders", "password": pw2, "api-key": api}),
    )
    .await;
    f.kv1("orders/legacy", json!({"token": v1})).await;
    let token = f.token(&["root"]).await;
    let token_file = f.file("token", &token);
    let manifest = format!(
        r#"
vault: {{ auth: token, token-file: {tf} }}
secrets:
  - {{ path: secret/data/orders/db, file: password, key: password }}
  - {{ path: secret/data/orders/db, file: db.env, format: env, key: password }}
  - {{ path: secret/data/orders/db, file: db.json, format: json }}
  - {{ path: secret/data/orders/db, file: conf/db.yaml, format: yaml, mode: "0440", shared: true }}
  - path: secret/data/orders/db
    file: db.url
    template: "postgres://{{{{ .user }}}}:{{{{ .password | urlquery }}}}@db/orders?key={{{{ index . \"api-key\" }}}}\n"
  - {{ path: secret/data/orders/db, file: old-password, key: password, version: 1 }}
  - {{ path: kv/orders/legacy, file: legacy.json, format: json }}
  - {{ path: kv/orders/legacy, file: legacy-explicit, key: token, engine: kv1 }}
"#,
        tf = token_file.display()
    );
    let r = f.run_manifest(&manifest, &[], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(f.read_out("password"), pw2);
    assert_eq!(f.read_out("db.env"), format!("password='{pw2}'\n"));
    let j: Value = serde_json::from_str(&f.read_out("db.json")).unwrap();
    assert_eq!(
        j,
        json!({"user": "orders", "password": pw2, "api-key": api})
    );
    assert_eq!(
        f.read_out("conf/db.yaml"),
        format!("\"api-key\": \"{api}\"\n\"password\": \"{pw2}\"\n\"user\": \"orders\"\n")
    );
    assert_eq!(
        f.read_out("db.url"),
        format!("postgres://orders:{pw2}@db/orders?key={api}\n")
    );
    assert_eq!(f.read_out("old-password"), pw1);
    assert_eq!(
        serde_json::from_str::<Value>(&f.read_out("legacy.json")).unwrap(),
        json!({"token": v1})
    );
    assert_eq!(f.read_out("legacy-explicit"), v1);
    assert_eq!(mode(&f.out.join("password")), 0o400);
    assert_eq!(mode(&f.out.join("conf/db.yaml")), 0o440);
    // Reads are shared: one per distinct (path, version), and one audit event each.
    assert_eq!(f.bao.requests_for("read", "secret/data/orders/db"), 2);
    let reads: Vec<Value> = f
        .audit_entries()
        .into_iter()
        .filter(|e| e["action"] == "secret.read")
        .collect();
    assert_eq!(reads.len(), 3, "{reads:?}");
    assert!(
        reads.iter().all(
            |e| e["outcome"] == "ok" && e["value_hmac"].as_str().is_some_and(|h| h.len() == 64)
        )
    );
    assert!(
        reads
            .iter()
            .any(|e| e["resource"] == "secret/data/orders/db?version=1")
    );
    f.assert_no_canary_leaked(&r);
}

#[tokio::test]
async fn a_dynamic_database_credential_is_written_with_its_lease_and_works_after_exit() {
    let mut f = Fixture::start().await;
    let pg = keyturn_tests::postgres::Postgres::start().await.unwrap();
    f.canaries.push(pg.password().to_owned());
    f.bao.mount("database", "database", None).await.unwrap();
    f.bao
        .api(
            "POST",
            "database/config/pg",
            Some(json!({
                "plugin_name": "postgresql-database-plugin",
                "connection_url": format!("postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable", pg.port()),
                "username": keyturn_tests::postgres::SUPERUSER,
                "password": pg.password(),
                "allowed_roles": ["orders-ro"],
                "verify_connection": true,
            })),
        )
        .await
        .unwrap();
    f.bao
        .api(
            "POST",
            "database/roles/orders-ro",
            Some(json!({
                "db_name": "pg",
                "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
                "default_ttl": "1h",
                "max_ttl": "2h",
            })),
        )
        .await
        .unwrap();
    // The pod logs in with AppRole and the keyturn-init policy, as it would in a cluster.
    f.bao
        .put_policy("keyturn-init", &crate::support::init_policy())
        .await
        .unwrap();
    let (role_id, secret_id) = approle(&f, "orders").await;
    let sid = f.file("secret-id", &secret_id);
    let manifest = format!(
        r#"
vault: {{ auth: approle, role-id: {role_id}, secret-id-file: {sid} }}
secrets:
  - {{ path: database/creds/orders-ro, file: db.json, format: json }}
  - path: database/creds/orders-ro
    file: dsn
    template: '{{{{ with secret "database/creds/orders-ro" }}}}user={{{{ .Data.username }}}} lease={{{{ .LeaseID }}}}{{{{ end }}}}'
"#,
        sid = sid.display()
    );
    let r = f.run_manifest(&manifest, &[], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j: Value = serde_json::from_str(&f.read_out("db.json")).unwrap();
    let (user, pass) = (
        j["username"].as_str().unwrap(),
        j["password"].as_str().unwrap(),
    );
    f.canaries.push(pass.to_owned());
    let lease = j["lease_id"].as_str().unwrap();
    assert!(lease.starts_with("database/creds/orders-ro/"), "{j}");
    assert_eq!(j["lease_duration"], 3600);
    assert_eq!(j["renewable"], true);
    assert_eq!(f.read_out("dsn"), format!("user={user} lease={lease}"));
    // One read serves both files, so both hold the same credential.
    assert_eq!(f.bao.requests_for("read", "database/creds/orders-ro"), 1);
    // The lease is tied to the login token, so the token was left to expire, and the
    // credential works after keyturn-init has exited.
    let client = pg
        .connect_as(user, pass)
        .await
        .expect("the dynamic credential logs in");
    client.simple_query("SELECT 1").await.unwrap();
    let reads: Vec<Value> = f
        .audit_entries()
        .into_iter()
        .filter(|e| e["action"] == "secret.read")
        .collect();
    assert_eq!(reads.len(), 1);
    assert!(
        reads[0]["detail"].as_str().unwrap().contains(lease),
        "{}",
        reads[0]
    );
    f.assert_no_canary_leaked(&r);
}

/// An AppRole role `name` with the keyturn-init policy: (role id, secret id).
async fn approle(f: &Fixture, name: &str) -> (String, String) {
    f.bao.enable_auth("approle", "approle").await.unwrap();
    f.bao
        .api(
            "POST",
            &format!("auth/approle/role/{name}"),
            Some(json!({"token_policies": ["keyturn-init"], "token_ttl": "10m"})),
        )
        .await
        .unwrap();
    let id = f
        .bao
        .api("GET", &format!("auth/approle/role/{name}/role-id"), None)
        .await
        .unwrap();
    let sid = f
        .bao
        .api("POST", &format!("auth/approle/role/{name}/secret-id"), None)
        .await
        .unwrap();
    (
        id["data"]["role_id"].as_str().unwrap().to_owned(),
        sid["data"]["secret_id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn rerunning_with_unchanged_data_leaves_files_untouched_and_a_change_replaces_only_that_file()
{
    let mut f = Fixture::start().await;
    let (a, b, b2) = (f.canary("a"), f.canary("b"), f.canary("b2"));
    f.kv2("orders/a", json!({"v": a})).await;
    f.kv2("orders/b", json!({"v": b})).await;
    let tf = f.file("token", f.bao.root_token());
    let manifest = format!(
        "vault: {{ auth: token, token-file: {} }}\nsecrets:\n  - {{ path: secret/data/orders/a, file: a, key: v }}\n  - {{ path: secret/data/orders/b, file: b, format: env }}\n",
        tf.display()
    );
    let r = f.run_manifest(&manifest, &[], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let first = f.snapshot();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let r = f.run_manifest(&manifest, &[], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(f.snapshot(), first, "an unchanged re-run touched the files");

    f.kv2("orders/b", json!({"v": b2})).await;
    let r = f.run_manifest(&manifest, &[], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let third = f.snapshot();
    assert_eq!(third[0], first[0], "file a changed");
    assert_ne!(third[1].1, first[1].1, "file b was not replaced");
    assert_eq!(f.read_out("b"), format!("v='{b2}'\n"));
    let left: Vec<String> = third.iter().map(|e| e.0.clone()).collect();
    assert_eq!(left, ["a", "b"], "temporary files left behind");
    f.assert_no_canary_leaked(&r);
}

#[tokio::test]
async fn the_annotations_path_produces_the_same_files_as_the_equivalent_manifest() {
    let mut f = Fixture::start().await;
    let c = keyturn_tests::kube::TestCluster::start().await.unwrap();
    let (pw, key) = (f.canary("pw"), f.canary("key"));
    f.kv2("orders/db", json!({"user": "orders", "password": pw}))
        .await;
    f.kv1("orders/api", json!({"key": key, "region": "eu"}))
        .await;
    crate::support::kubernetes_auth(&f, &c, "orders-api").await;
    let jwt = c
        .service_account_token_for(
            c.namespace(),
            "orders-api",
            &["vault"],
            std::time::Duration::from_secs(600),
        )
        .await
        .unwrap();
    let jwt_file = f.file("sa-token", &jwt);

    let tpl = "{{- with secret \"secret/data/orders/db\" -}}\npostgres://{{ .Data.data.user }}:{{ .Data.data.password }}@db/orders\n{{- end }}\n";
    let annotations: String = [
        (
            "kubectl.kubernetes.io/last-applied-configuration",
            "{}".to_owned(),
        ),
        ("vault.hashicorp.com/agent-inject", "true".to_owned()),
        (
            "vault.hashicorp.com/agent-inject-secret-db",
            "secret/data/orders/db".to_owned(),
        ),
        (
            "vault.hashicorp.com/agent-inject-template-db",
            tpl.to_owned(),
        ),
        (
            "vault.hashicorp.com/agent-inject-file-db",
            "db.url".to_owned(),
        ),
        (
            "vault.hashicorp.com/agent-inject-perms-db",
            "0440".to_owned(),
        ),
        // Group read is opted into; `api` has no perms and gets 0400.
        ("keyturn.dev/shared-db", "true".to_owned()),
        (
            "vault.hashicorp.com/agent-inject-secret-api",
            "kv/orders/api".to_owned(),
        ),
        (
            "vault.hashicorp.com/agent-pre-populate-only",
            "true".to_owned(),
        ),
        ("vault.hashicorp.com/role", "orders-api".to_owned()),
        (
            "vault.hashicorp.com/auth-path",
            "auth/kubernetes".to_owned(),
        ),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}\n", go_quote(v)))
    .collect();
    let ann = f.file("annotations", &annotations);
    let jwt_env = [("KEYTURN_INIT_JWT_FILE", jwt_file.to_str().unwrap())];
    let r = f
        .run(
            &[
                "--annotations",
                ann.to_str().unwrap(),
                "--out",
                f.out.to_str().unwrap(),
            ],
            &jwt_env,
        )
        .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    f.assert_no_canary_leaked(&r);

    // The same, written as a manifest, into a second directory.
    let out2 = f.out.parent().unwrap().join("out2");
    std::fs::create_dir(&out2).unwrap();
    let manifest = format!(
        "vault: {{ auth: kubernetes, role: orders-api, jwt-file: {jwt} }}\nsecrets:\n  - path: secret/data/orders/db\n    file: db.url\n    mode: \"0440\"\n    shared: true\n    template: {tpl}\n  - path: kv/orders/api\n    file: api\n    template: {map}\n",
        jwt = jwt_file.display(),
        tpl = serde_json::to_string(tpl).unwrap(),
        map = serde_json::to_string(keyturn_init_map_template()).unwrap(),
    );
    let m = f.file("equivalent.yaml", &manifest);
    let r2 = f
        .run(
            &[
                "--manifest",
                m.to_str().unwrap(),
                "--out",
                out2.to_str().unwrap(),
            ],
            &[],
        )
        .await;
    assert_eq!(r2.code, 0, "{}", r2.stderr);
    f.assert_no_canary_leaked(&r2);

    let files = |d: &std::path::Path| -> Vec<(String, String, u32)> {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read_to_string(&p).unwrap(),
                    mode(&p),
                )
            })
            .collect();
        v.sort();
        v
    };
    let via_annotations = files(&f.out);
    assert_eq!(via_annotations, files(&out2));
    assert_eq!(
        via_annotations,
        [
            ("api".to_owned(), format!("key: {key}\nregion: eu\n"), 0o400),
            (
                "db.url".to_owned(),
                format!("postgres://orders:{pw}@db/orders\n"),
                0o440
            ),
        ]
    );
    // The audit names the service account the token belongs to.
    let reads: Vec<Value> = f
        .audit_entries()
        .into_iter()
        .filter(|e| e["action"] == "secret.read")
        .collect();
    assert!(!reads.is_empty());
    assert!(
        reads
            .iter()
            .all(|e| e["actor"]["kind"] == "service-account" && e["actor"]["name"] == "orders-api"),
        "{reads:?}"
    );
}

/// The rendering the injector gives a secret without a template (`name: value` lines).
fn keyturn_init_map_template() -> &'static str {
    "{{ range $k, $v := . }}{{ $k }}: {{ $v }}\n{{ end }}"
}

/// Go's `%q` for the characters these annotations use.
fn go_quote(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

#[test]
fn inode_helper_sees_the_same_file() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("x"), "1").unwrap();
    let m = std::fs::metadata(d.path().join("x")).unwrap();
    assert_eq!(crate::support::snapshot(d.path())[0].1, m.ino());
}

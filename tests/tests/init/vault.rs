//! keyturn-init and Vault: kubernetes auth through the Kubernetes stand-in, least-privilege
//! roles, the deadline, and the token's life.

use std::time::Duration;

use crate::support::{Fixture, mode};
use keyturn_tests::kube::TestCluster;
use serde_json::{Value, json};

async fn accessors(f: &Fixture) -> usize {
    let v = f
        .bao
        .api("LIST", "auth/token/accessors", None)
        .await
        .unwrap();
    v["data"]["keys"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn a_pods_kubernetes_role_reads_its_own_paths_and_is_denied_others_at_once() {
    let mut f = Fixture::start().await;
    let c = TestCluster::start().await.unwrap();
    let (own, other) = (f.canary("own"), f.canary("other"));
    f.kv2("orders/db", json!({"password": own})).await;
    f.kv2("payments/db", json!({"password": other})).await;
    crate::support::kubernetes_auth(&f, &c, "orders-api").await;
    let jwt = c
        .service_account_token_for(
            c.namespace(),
            "orders-api",
            &["vault"],
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    let jwt_file = f.file("sa-token", &jwt);
    let head = format!(
        "vault: {{ auth: kubernetes, role: orders-api, jwt-file: {} }}\nsecrets:\n",
        jwt_file.display()
    );
    let own_entry = "  - { path: secret/data/orders/db, file: db, key: password }\n";

    let accessors_before = accessors(&f).await;
    let r = f
        .run_manifest(
            &format!("{head}{own_entry}"),
            &[],
            &[("KEYTURN_POD_NAME", "orders-api-7f9c")],
        )
        .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(f.read_out("db"), own);
    assert_eq!(mode(&f.out.join("db")), 0o400);
    // The login token was revoked at exit.
    assert_eq!(
        accessors(&f).await,
        accessors_before,
        "the login token is still alive"
    );
    let reads: Vec<Value> = f
        .audit_entries()
        .into_iter()
        .filter(|e| e["action"] == "secret.read")
        .collect();
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0]["actor"]["kind"], "service-account");
    assert_eq!(reads[0]["actor"]["namespace"], c.namespace());
    assert_eq!(reads[0]["actor"]["pod"], "orders-api-7f9c");

    // Another workload's path: 403 → 77, naming the path, with nothing written. A retried
    // 403 would run into the deadline and exit 69 instead.
    let before = f.snapshot();
    let denied = format!(
        "{head}{own_entry}  - {{ path: secret/data/payments/db, file: other, key: password }}\n"
    );
    let r = f.run_manifest(&denied, &["--deadline", "30s"], &[]).await;
    assert_eq!(r.code, 77, "{}", r.stderr);
    let lines = r.failure_lines();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(
        lines[0]
            .contains("manifest.yaml:4:5: vault read secret/data/payments/db: permission denied"),
        "{}",
        lines[0]
    );
    assert_eq!(f.snapshot(), before);
    assert_eq!(f.bao.requests_for("read", "secret/data/payments/db"), 1);
    assert!(
        f.audit_entries()
            .iter()
            .any(|e| e["resource"] == "secret/data/payments/db" && e["outcome"] == "denied")
    );
    f.assert_no_canary_leaked(&r);

    // A token for another service account is refused at login: 77.
    let stranger = c
        .service_account_token_for(
            c.namespace(),
            "stranger",
            &["vault"],
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    let sf = f.file("stranger-token", &stranger);
    let m = format!(
        "vault: {{ auth: kubernetes, role: orders-api, jwt-file: {} }}\nsecrets:\n{own_entry}",
        sf.display()
    );
    let r = f.run_manifest(&m, &[], &[]).await;
    assert_eq!(r.code, 77, "{}", r.stderr);
    assert!(
        r.failure_lines()[0].contains("auth/kubernetes/login"),
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn with_keep_token_the_approle_token_is_written_0400_and_still_valid() {
    let mut f = Fixture::start().await;
    let v = f.canary("v");
    f.kv1("orders/app", json!({"v": v})).await;
    f.bao
        .put_policy("keyturn-init", &crate::support::init_policy())
        .await
        .unwrap();
    f.bao.enable_auth("approle", "approle").await.unwrap();
    f.bao
        .api(
            "POST",
            "auth/approle/role/orders",
            Some(json!({"token_policies": ["keyturn-init"]})),
        )
        .await
        .unwrap();
    let id = f
        .bao
        .api("GET", "auth/approle/role/orders/role-id", None)
        .await
        .unwrap();
    let role_id = id["data"]["role_id"].as_str().unwrap().to_owned();
    let m = approle_manifest(&f, &role_id).await;
    let r = f
        .run_manifest(&m, &["--keep-token", "vault-token"], &[])
        .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let token = f.read_out("vault-token");
    f.canaries.push(token.clone());
    assert_eq!(mode(&f.out.join("vault-token")), 0o400);
    let me = f
        .bao
        .api_as(&token, "GET", "auth/token/lookup-self", None)
        .await
        .unwrap();
    assert!(
        me["data"]["policies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "keyturn-init"),
        "{me}"
    );
    f.assert_no_canary_leaked(&r);

    // Without it, the login token is revoked at exit: no new accessor remains.
    let m = approle_manifest(&f, &role_id).await;
    let before = accessors(&f).await;
    let r = f.run_manifest(&m, &[], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(accessors(&f).await, before);
}

#[tokio::test]
async fn an_unreachable_vault_exits_69_at_the_deadline_naming_what_it_waited_for() {
    let mut f = Fixture::start().await;
    let v = f.canary("v");
    f.kv2("orders/a", json!({"v": v})).await;
    let closed = keyturn_tests::process::ClosedPort::new();
    let port = closed.port();
    let tf = f.file("token", f.bao.root_token());
    let m = format!(
        "vault: {{ auth: token, token-file: {}, address: \"http://127.0.0.1:{port}\" }}\nsecrets:\n  - {{ path: secret/data/orders/a, file: a, key: v }}\n",
        tf.display()
    );
    let before = f.snapshot();
    let r = f.run_manifest(&m, &["--deadline", "2s"], &[]).await;
    assert_eq!(r.code, 69, "{}", r.stderr);
    let lines = r.failure_lines();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(
        lines[0].contains("auth/token/lookup-self: gave up after 2s"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("cannot reach"), "{}", lines[0]);
    assert_eq!(f.snapshot(), before);
    f.assert_no_canary_leaked(&r);
}

#[tokio::test]
async fn a_secret_that_stays_unavailable_exits_69_naming_the_path() {
    let mut f = Fixture::start().await;
    let v = f.canary("v");
    f.kv2("orders/a", json!({"v": v})).await;
    // Seal the server after login would work: every read answers 503.
    let tf = f.file("token", f.bao.root_token());
    f.bao.api("PUT", "sys/seal", None).await.unwrap();
    let m = format!(
        "vault: {{ auth: token, token-file: {} }}\nsecrets:\n  - {{ path: secret/data/orders/a, file: a, key: v, engine: kv2 }}\n",
        tf.display()
    );
    let r = f.run_manifest(&m, &["--deadline", "2s"], &[]).await;
    assert_eq!(r.code, 69, "{}", r.stderr);
    assert!(
        r.failure_lines()[0].contains("gave up after 2s"),
        "{}",
        r.stderr
    );
    assert!(std::fs::read_dir(&f.out).unwrap().next().is_none());
    f.assert_no_canary_leaked(&r);
}

/// A manifest logging in with AppRole `orders` and a fresh secret id.
async fn approle_manifest(f: &Fixture, role_id: &str) -> String {
    let sid = f
        .bao
        .api("POST", "auth/approle/role/orders/secret-id", None)
        .await
        .unwrap();
    let sf = f.file("sid", sid["data"]["secret_id"].as_str().unwrap());
    format!(
        "vault: {{ auth: approle, role-id: {role_id}, secret-id-file: {} }}\nsecrets:\n  - {{ path: kv/orders/app, file: app.json }}\n",
        sf.display()
    )
}

/// A server that answers every request with `response` (raw HTTP bytes): the one thing a real
/// OpenBao will not do on demand is answer like a broken proxy, a login page or a hostile
/// endpoint, so this stands in for those, not for Vault.
async fn broken_server(response: Vec<u8>) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s.write_all(&response).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (port, task)
}

fn http(status: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

#[tokio::test]
async fn a_server_that_does_not_answer_like_vault_is_described_without_its_body_or_escapes() {
    let mut f = Fixture::start().await;
    let planted = f.canary("body");
    let tf = f.file("token", "hvs.not-a-real-token");
    let html = format!("<html><body>{planted}</body></html>");
    let wrong_shape = format!("{{\"data\": \"{planted}\"}}");
    let escapes = "{\"errors\": [\"\\u001b]0;owned\\u0007\\u001b[2Jboom\"]}";
    let cases: Vec<(Vec<u8>, i32, &str)> = vec![
        (
            http("200 OK", &[("Content-Type", "text/html")], &html),
            70,
            "starts with `<`, like an HTML page",
        ),
        (
            http(
                "200 OK",
                &[("Content-Type", "application/json")],
                &wrong_shape,
            ),
            70,
            "JSON that is not shaped like Vault's answer",
        ),
        (
            http("200 OK", &[("Content-Type", "text/plain")], "garbage"),
            70,
            "a body that is not JSON",
        ),
        (
            http("302 Found", &[("Content-Type", "text/html")], &html),
            70,
            "rejected with 302: a redirect",
        ),
        (
            http(
                "400 Bad Request",
                &[("Content-Type", "application/json")],
                escapes,
            ),
            // Refused at login: 77.
            77,
            "rejected with 400: \\u{1b}]0;owned\\u{7}\\u{1b}[2J",
        ),
    ];
    for (response, code, want) in cases {
        let (port, server) = broken_server(response).await;
        let m = format!(
            "vault: {{ auth: token, token-file: {}, address: \"http://127.0.0.1:{port}\" }}\nsecrets:\n  - {{ path: secret/data/orders/a, file: a, key: v }}\n",
            tf.display()
        );
        let r = f.run_manifest(&m, &["--deadline", "5s"], &[]).await;
        server.abort();
        assert_eq!(r.code, code, "{want}: {}", r.stderr);
        let lines = r.failure_lines();
        assert_eq!(lines.len(), 1, "{}", r.stderr);
        assert!(lines[0].contains(want), "{}", lines[0]);
        assert!(
            !lines[0].contains("Error parsing HTTP response"),
            "{}",
            lines[0]
        );
        assert!(
            !r.stderr.contains('\u{1b}') && !r.stderr.contains('\u{7}'),
            "{:?}",
            r.stderr
        );
        assert!(std::fs::read_dir(&f.out).unwrap().next().is_none());
        // The body is not repeated: a read's body would be the secret.
        f.assert_no_canary_leaked(&r);
    }
}

#[tokio::test]
async fn with_an_audit_anchor_the_runs_head_is_in_vault_and_a_cut_log_is_caught() {
    let mut f = Fixture::start().await;
    let v = f.canary("v");
    f.kv1("orders/app", json!({"v": v})).await;
    f.bao
        .put_policy("keyturn-init", &crate::support::init_policy())
        .await
        .unwrap();
    // The pod's own anchor path: create, read and update, nothing else.
    f.bao
        .put_policy(
            "orders-anchor",
            "path \"secret/data/audit-anchor/orders-pod\" { capabilities = [\"create\", \"read\", \"update\"] }",
        )
        .await
        .unwrap();
    f.bao.enable_auth("approle", "approle").await.unwrap();
    f.bao
        .api(
            "POST",
            "auth/approle/role/orders",
            Some(json!({"token_policies": ["keyturn-init", "orders-anchor"]})),
        )
        .await
        .unwrap();
    let id = f
        .bao
        .api("GET", "auth/approle/role/orders/role-id", None)
        .await
        .unwrap();
    let role_id = id["data"]["role_id"].as_str().unwrap().to_owned();
    let anchor = "vault-kv:secret/audit-anchor/orders-pod";
    let before = accessors(&f).await;
    let m = approle_manifest(&f, &role_id).await;
    let r = f.run_manifest(&m, &["--audit-anchor", anchor], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("could not anchor"), "{}", r.stderr);
    // The anchor was written with the token, and the token is still revoked at exit.
    assert_eq!(
        accessors(&f).await,
        before,
        "the login token is still alive"
    );
    f.assert_no_canary_leaked(&r);

    let verify = |file: &std::path::Path| {
        std::process::Command::new(keyturn_tests::bins::keyturn())
            .args(["audit", "verify", "--anchor", anchor])
            .arg(file)
            .env_clear()
            .env("VAULT_ADDR", f.bao.addr())
            .env("VAULT_TOKEN", f.bao.root_token())
            .env("KEYTURN_AUDIT_HMAC_KEY_FILE", f.audit_key())
            .output()
            .unwrap()
    };
    let ok = verify(&f.audit_file());
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Without the read's own event, the log no longer reaches its anchor.
    let full = std::fs::read_to_string(f.audit_file()).unwrap();
    let lines: Vec<&str> = full.lines().collect();
    let cut = f.file("cut.jsonl", &(lines[..lines.len() - 1].join("\n") + "\n"));
    let caught = verify(&cut);
    assert_eq!(
        caught.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&caught.stderr)
    );

    // An anchor path the role may not write (403): the run still succeeds, its token is
    // still revoked, and the warning names the path, once.
    let before = accessors(&f).await;
    let m = approle_manifest(&f, &role_id).await;
    let denied = "vault-kv:secret/audit-anchor/someone-else";
    let r = f.run_manifest(&m, &["--audit-anchor", denied], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stderr.matches("could not anchor the audit head").count(),
        1,
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("someone-else"), "{}", r.stderr);
    assert_eq!(
        accessors(&f).await,
        before,
        "the login token is still alive"
    );
    f.assert_no_canary_leaked(&r);
}

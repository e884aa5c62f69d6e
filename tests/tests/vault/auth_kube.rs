//! Vault's kubernetes and jwt auth methods, for real: OpenBao checks a service-account token
//! through the Kubernetes API's TokenReview (the stand-in, or a real cluster when
//! `KEYTURN_TEST_KUBECONFIG` is set) or against the cluster's JWKS.

use keyturn_core::SecretValue;
use keyturn_core::exit::HasExitCode as _;
use keyturn_core::vault::auth::{Jwt, Kubernetes};
use keyturn_core::vault::{SecretData, Vault, VaultError};
use keyturn_tests::kube::TestCluster;
use keyturn_tests::openbao::OpenBao;
use serde_json::json;

/// OpenBao with kubernetes auth pointed at `cluster`, a role `orders` bound to the
/// `orders-api` service account in the test namespace, and one secret it may read.
async fn bao_with_kubernetes_auth(cluster: &TestCluster) -> OpenBao {
    let bao = OpenBao::start().await.unwrap();
    bao.enable_kubernetes_auth(cluster).await.unwrap();
    bao.put_policy(
        "orders",
        r#"path "secret/data/orders/*" { capabilities = ["read"] }"#,
    )
    .await
    .unwrap();
    bao.api(
        "POST",
        "auth/kubernetes/role/orders",
        Some(json!({
            "bound_service_account_names": ["orders-api"],
            "bound_service_account_namespaces": [cluster.namespace()],
            "token_policies": ["orders"],
            "token_ttl": "10m",
        })),
    )
    .await
    .unwrap();
    let mut d = SecretData::new();
    d.insert("password", SecretValue::from_str_copy("orders-pw"));
    bao.root_client()
        .unwrap()
        .kv2_write("secret", "orders/db", &d, None)
        .await
        .unwrap();
    bao
}

fn write_token(dir: &tempfile::TempDir, token: &str) -> std::path::PathBuf {
    let p = dir.path().join("token");
    std::fs::write(&p, token).unwrap();
    p
}

#[tokio::test]
async fn a_pod_service_account_logs_in_through_token_review_and_reads_its_secret() {
    let cluster = TestCluster::start().await.unwrap();
    let bao = bao_with_kubernetes_auth(&cluster).await;
    let dir = tempfile::tempdir().unwrap();
    let token = cluster
        .service_account_token(cluster.namespace(), "orders-api")
        .await
        .unwrap();
    let method = Kubernetes {
        mount: "kubernetes".into(),
        role: "orders".into(),
        jwt_path: write_token(&dir, &token),
    };
    let mut v = Vault::connect(&bao.config(None)).unwrap();
    let info = v.login(&method).await.unwrap();
    assert!(
        info.policies.iter().any(|p| p == "orders"),
        "{:?}",
        info.policies
    );
    let who = v.lookup_self().await.unwrap();
    assert!(
        who.display_name.contains("orders-api") || who.display_name.starts_with("kubernetes"),
        "{}",
        who.display_name
    );
    let got = v.kv2_read("secret", "orders/db", None).await.unwrap();
    assert_eq!(got.data.get("password").unwrap().expose(), b"orders-pw");
}

#[tokio::test]
async fn another_service_account_is_refused_by_the_role() {
    let cluster = TestCluster::start().await.unwrap();
    let bao = bao_with_kubernetes_auth(&cluster).await;
    let dir = tempfile::tempdir().unwrap();
    let token = cluster
        .service_account_token(cluster.namespace(), "billing-api")
        .await
        .unwrap();
    let method = Kubernetes {
        mount: "kubernetes".into(),
        role: "orders".into(),
        jwt_path: write_token(&dir, &token),
    };
    let mut v = Vault::connect(&bao.config(None)).unwrap();
    let e = v.login(&method).await.unwrap_err();
    assert!(matches!(e, VaultError::PermissionDenied { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "vault login auth/kubernetes/login: permission denied"
    );
}

#[tokio::test]
async fn a_forged_token_is_refused_by_token_review() {
    let cluster = TestCluster::start().await.unwrap();
    let bao = bao_with_kubernetes_auth(&cluster).await;
    let dir = tempfile::tempdir().unwrap();
    let good = cluster
        .service_account_token(cluster.namespace(), "orders-api")
        .await
        .unwrap();
    // Flip one character of the signature: TokenReview must say not authenticated.
    let mut forged = good.into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let method = Kubernetes {
        mount: "kubernetes".into(),
        role: "orders".into(),
        jwt_path: write_token(&dir, &String::from_utf8(forged).unwrap()),
    };
    let mut v = Vault::connect(&bao.config(None)).unwrap();
    let e = v.login(&method).await.unwrap_err();
    assert!(matches!(e, VaultError::PermissionDenied { .. }), "{e}");
    // On the stand-in, check that the refusal came from a real TokenReview call by the
    // reviewer identity OpenBao was configured with.
    if let Some(s) = cluster.standin() {
        let reviews: Vec<_> = s
            .requests()
            .into_iter()
            .filter(|r| r.resource == "tokenreviews")
            .collect();
        assert_eq!(reviews.len(), 1, "{reviews:?}");
        assert_eq!(
            reviews[0].user,
            "system:serviceaccount:kube-system:keyturn-token-reviewer"
        );
    }
}

#[tokio::test]
async fn a_missing_token_file_is_a_configuration_error_naming_the_file() {
    let bao = OpenBao::start().await.unwrap();
    let method = Kubernetes {
        mount: "kubernetes".into(),
        role: "orders".into(),
        jwt_path: "/nonexistent/sa/token".into(),
    };
    let mut v = Vault::connect(&bao.config(None)).unwrap();
    let e = v.login(&method).await.unwrap_err();
    assert_eq!(e.exit_code(), 64);
    assert!(
        e.to_string()
            .starts_with("service account token /nonexistent/sa/token:"),
        "{e}"
    );
}

#[tokio::test]
async fn jwt_auth_validates_a_service_account_token_against_the_clusters_jwks() {
    let cluster = TestCluster::start_standin().await.unwrap();
    let standin = cluster.standin().unwrap();
    let bao = OpenBao::start().await.unwrap();
    bao.enable_auth("jwt", "jwt").await.unwrap();
    bao.api(
        "POST",
        "auth/jwt/config",
        Some(json!({
            "jwks_url": format!("{}/openid/v1/jwks", standin.url()),
            "jwks_ca_pem": standin.ca_pem(),
        })),
    )
    .await
    .unwrap();
    bao.put_policy(
        "reports",
        r#"path "secret/data/reports/*" { capabilities = ["read"] }"#,
    )
    .await
    .unwrap();
    bao.api(
        "POST",
        "auth/jwt/role/reports",
        Some(json!({
            "role_type": "jwt",
            "bound_audiences": ["vault"],
            "user_claim": "sub",
            "bound_subject": "system:serviceaccount:batch:reports",
            "token_policies": ["reports"],
        })),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = standin.issue_service_account_token(
        "batch",
        "reports",
        &["vault"],
        std::time::Duration::from_secs(600),
    );
    let mut v = Vault::connect(&bao.config(None)).unwrap();
    let ok = Jwt {
        mount: "jwt".into(),
        role: Some("reports".into()),
        jwt_path: write_token(&dir, &token),
    };
    let info = v.login(&ok).await.unwrap();
    assert!(info.policies.iter().any(|p| p == "reports"));

    // Same signer, wrong subject: the role's bound_subject refuses it.
    let other = standin.issue_service_account_token(
        "batch",
        "intruder",
        &["vault"],
        std::time::Duration::from_secs(600),
    );
    let bad = Jwt {
        mount: "jwt".into(),
        role: Some("reports".into()),
        jwt_path: write_token(&dir, &other),
    };
    let mut v2 = Vault::connect(&bao.config(None)).unwrap();
    let e = v2.login(&bad).await.unwrap_err();
    assert!(
        matches!(
            e,
            VaultError::PermissionDenied { .. } | VaultError::Rejected { code: 400, .. }
        ),
        "{e}"
    );
}

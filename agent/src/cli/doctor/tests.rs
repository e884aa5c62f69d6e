use super::kube::*;
use super::local::*;
use super::vault::*;
use super::*;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::policy::Policy;

fn policy(yaml_spec: &str) -> Policy {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(
        &f,
        format!(
            "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: orders }}\nspec:\n  every: 24h\n{yaml_spec}"
        ),
    )
    .unwrap();
    policy::load(&f).unwrap().remove(0)
}

#[test]
fn lines_read_ok_fail_and_skip() {
    assert_eq!(line("clock", &Outcome::Ok(None)), "ok   clock");
    assert_eq!(line("clock", &ok("within 1s")), "ok   clock: within 1s");
    assert_eq!(
        line("vault token", &fail("expired", "log in again")),
        "FAIL vault token: expired — fix: log in again"
    );
    assert_eq!(line("aws", &skip("unused")), "skip aws: unused");
}

#[test]
fn a_vault_policy_needs_its_data_and_state_paths_and_its_admin_path() {
    use crate::rotation::store::vault_kv::{ADMIN_CAPS, OWN_CAPS};
    let p = policy(
        "  store: { vault-kv: { mount: kv, path: keyturn/orders } }\n  target:\n    postgres: { host: db, port: 5432, database: app, admin: { vault-kv: { mount: kv, path: keyturn/admin } }, users: [a], strategy: single }\n",
    );
    let needs = vault_needs(&p);
    let paths: Vec<(&str, &[&str])> = needs.iter().map(|n| (n.path.as_str(), n.caps)).collect();
    assert_eq!(
        paths,
        vec![
            ("kv/data/keyturn-state/keyturn/orders", OWN_CAPS),
            ("kv/data/keyturn/admin", ADMIN_CAPS),
            ("kv/data/keyturn/orders", OWN_CAPS),
        ]
    );
}

#[test]
fn missing_capabilities_name_the_path_and_the_fix() {
    let needs = vec![
        Need {
            path: "secret/data/keyturn/x".into(),
            caps: crate::rotation::store::vault_kv::OWN_CAPS,
        },
        Need {
            path: "secret/data/keyturn-state/keyturn/x".into(),
            caps: crate::rotation::store::vault_kv::OWN_CAPS,
        },
    ];
    let caps = |pairs: &[(&str, &[&str])]| -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(p, c)| ((*p).to_owned(), c.iter().map(|c| (*c).to_owned()).collect()))
            .collect()
    };
    let body = caps(&[
        ("secret/data/keyturn/x", &["create", "read", "update"][..]),
        ("secret/data/keyturn-state/keyturn/x", &["read"][..]),
    ]);
    let Outcome::Fail { what, fix } = capabilities_outcome(&needs, &body) else {
        panic!("expected a failure");
    };
    assert_eq!(
        what,
        "secret/data/keyturn-state/keyturn/x needs create, update (token has read)"
    );
    assert!(fix.contains(r#"path "secret/data/keyturn-state/keyturn/x" { capabilities = ["create", "read", "update"] }"#), "{fix}");
    let root = caps(&[
        ("secret/data/keyturn/x", &["root"]),
        ("secret/data/keyturn-state/keyturn/x", &["root"]),
    ]);
    assert!(matches!(
        capabilities_outcome(&needs, &root),
        Outcome::Ok(_)
    ));
    let deny = caps(&[("secret/data/keyturn/x", &["deny"])]);
    let Outcome::Fail { what, .. } = capabilities_outcome(&needs[..1], &deny) else {
        panic!("expected a failure");
    };
    assert!(what.contains("token has nothing"), "{what}");
}

#[test]
fn a_distribution_needs_get_and_patch_on_its_secret_and_workloads() {
    let p = policy(
        "  store: { vault-kv: { path: keyturn/orders } }\n  target: { generated: {} }\n  distribute:\n    - kubernetes: { namespace: shop, secret: orders, keys: { v: value } }\n      restart: [ { kind: Deployment, name: api } ]\n",
    );
    let needs: Vec<String> = kube_needs(&p).iter().map(ToString::to_string).collect();
    assert_eq!(
        needs,
        vec![
            "get secrets shop/orders",
            "get deployments.apps shop/api",
            "patch secrets shop/orders",
            "patch deployments.apps shop/api",
        ]
    );
}

#[test]
fn a_clock_more_than_thirty_seconds_off_fails() {
    let t = DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    assert!(matches!(
        clock_outcome("Vault", t, t + chrono::Duration::seconds(2)),
        Outcome::Ok(_)
    ));
    let Outcome::Fail { what, .. } = clock_outcome("Vault", t, t - chrono::Duration::seconds(95))
    else {
        panic!("expected a failure");
    };
    assert!(what.contains("1m35s behind Vault"), "{what}");
}

#[test]
fn http_dates_parse() {
    let t = parse_http_date("Tue, 15 Nov 1994 08:12:31 GMT").unwrap();
    assert_eq!(t.to_rfc3339(), "1994-11-15T08:12:31+00:00");
}

#[test]
fn the_audit_directory_is_probed_without_leaving_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let args = AuditLogArgs {
        file: Some(dir.path().join("audit.jsonl")),
        ..AuditLogArgs::default()
    };
    assert!(matches!(audit_check(&args), Outcome::Ok(_)));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let missing = AuditLogArgs {
        file: Some(dir.path().join("no/such/dir/audit.jsonl")),
        ..AuditLogArgs::default()
    };
    assert!(matches!(audit_check(&missing), Outcome::Fail { .. }));
    assert!(matches!(
        audit_check(&AuditLogArgs::default()),
        Outcome::Fail { .. }
    ));
}

#[test]
fn durations_read_short() {
    assert_eq!(human(0), "0s");
    assert_eq!(human(42), "42s");
    assert_eq!(human(3600 + 120), "1h2m");
    assert_eq!(human(2 * 86_400 + 5), "2d");
    assert_eq!(human(2 * 86_400 + 7200), "2d2h");
}

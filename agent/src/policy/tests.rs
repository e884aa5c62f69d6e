use super::*;
use crate::rotation::store::vault_kv;
use crate::rotation::target::users::Strategy;

const GOOD: &str = r#"apiVersion: keyturn.dev/v1
kind: RotationPolicy
metadata: { name: api-token }
spec:
  schedule: "0 3 * * *"
  window: 1h
  store: { vault-kv: { mount: secret, path: keyturn/api-token } }
  target: { generated: {} }
  generator: { length: 40, charset: alphanumeric }
---
apiVersion: keyturn.dev/v1
kind: RotationPolicy
metadata:
  name: orders-db
spec:
  every: 24h
  store:
    aws-secretsmanager: { secret-id: prod/orders-db }
  target:
    postgres:
      host: 127.0.0.1
      admin: { vault-kv: { path: keyturn/pg-admin } }
      users: [orders_a, orders_b]
      strategy: alternating
  distribute:
    - kubernetes: { namespace: shop, secret: orders-db, keys: { username: username, password: password } }
      restart: [ { kind: Deployment, name: orders-api } ]
"#;

fn check(text: &str) -> Result<Vec<Policy>, PolicyErrors> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(&f, text).unwrap();
    load(&f).map_err(|e| {
        // Report paths relative to the temp dir so assertions can spell them.
        PolicyErrors(
            e.0.into_iter()
                .map(|mut x| {
                    x.origin = "p.yaml".into();
                    x
                })
                .collect(),
        )
    })
}

fn one_error(text: &str) -> String {
    let e = check(text).expect_err("must be rejected");
    assert_eq!(e.0.len(), 1, "{e}");
    e.0[0].to_string()
}

#[test]
fn a_good_file_with_two_documents_loads_both_policies() {
    let ps = check(GOOD).unwrap();
    assert_eq!(ps.len(), 2);
    assert_eq!(ps[0].name, "api-token");
    assert_eq!(ps[0].window, Duration::from_secs(3600));
    assert_eq!(ps[0].generator.length, 40);
    assert_eq!(
        ps[0].store,
        StoreSpec::VaultKv(vault_kv::Spec {
            mount: "secret".into(),
            path: "keyturn/api-token".into()
        })
    );
    let TargetSpec::Postgres(pg) = &ps[1].target else {
        panic!("postgres target")
    };
    assert_eq!(pg.users.strategy, Strategy::Alternating);
    assert_eq!(pg.port, 5432);
    assert_eq!(
        pg.admin,
        StoreSpec::VaultKv(vault_kv::Spec {
            mount: "secret".into(),
            path: "keyturn/pg-admin".into()
        })
    );
    assert_eq!(ps[1].distribute[0].restart[0].name, "orders-api");
}

fn good_with(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from}");
    GOOD.replacen(from, to, 1)
}

#[test]
fn an_invalid_cron_names_file_line_column_and_field() {
    assert_eq!(
        one_error(&good_with(r#""0 3 * * *""#, r#""0 3 * *""#)),
        r#"p.yaml:5:13: spec.schedule: invalid cron expression "0 3 * *": expected 5 fields (minute hour day-of-month month day-of-week), found 4"#
    );
}

#[test]
fn a_cron_that_never_fires_is_rejected() {
    assert_eq!(
        one_error(&good_with(r#""0 3 * * *""#, r#""0 0 30 2 *""#)),
        r#"p.yaml:5:13: spec.schedule: cron expression "0 0 30 2 *" never fires"#
    );
}

#[test]
fn an_unknown_field_is_rejected_with_its_location() {
    let e = one_error(&good_with("  window: 1h", "  windw: 1h"));
    assert!(e.starts_with("p.yaml:6:3: "), "{e}");
    assert!(e.contains("windw"), "{e}");
}

#[test]
fn duplicate_policy_names_are_rejected() {
    let e = one_error(&good_with("name: orders-db", "name: api-token"));
    assert!(
        e.starts_with(
            "p.yaml:14:9: metadata.name: duplicate policy name \"api-token\" (first defined at"
        ),
        "{e}"
    );
}

#[test]
fn a_path_with_dotdot_is_rejected() {
    assert_eq!(
        one_error(&good_with(
            "path: keyturn/api-token",
            "path: keyturn/../root"
        )),
        r#"p.yaml:7:45: spec.store.vault-kv.path: "keyturn/../root" has an empty, '.' or '..' segment"#
    );
}

#[test]
fn a_bad_duration_and_an_unknown_timezone_are_each_reported() {
    let e = check(&good_with(
        "  window: 1h",
        "  window: soon\n  timezone: Mars/Base",
    ))
    .unwrap_err();
    let all = e.to_string();
    assert!(all.contains("p.yaml:6:11: spec.window:"), "{all}");
    assert!(
        all.contains("spec.timezone: unknown time zone \"Mars/Base\""),
        "{all}"
    );
}

#[test]
fn schedule_and_every_are_mutually_exclusive_and_one_is_required() {
    assert!(
        one_error(&good_with("  window: 1h", "  every: 1h"))
            .contains("give either `schedule` or `every`, not both")
    );
    assert!(
        one_error(&good_with("  schedule: \"0 3 * * *\"\n", "")).contains("spec.schedule: missing")
    );
}

#[test]
fn alternating_needs_two_distinct_users() {
    let e = one_error(&good_with(
        "users: [orders_a, orders_b]",
        "users: [orders_a]",
    ));
    assert!(
        e.contains(
            "spec.target.postgres.users: strategy alternating needs exactly 2 user(s), found 1"
        ),
        "{e}"
    );
    let e = one_error(&good_with(
        "users: [orders_a, orders_b]",
        "users: [orders_a, orders_a]",
    ));
    assert!(e.contains("the two alternating users must differ"), "{e}");
}

#[test]
fn a_distribute_key_must_name_a_field_the_target_provides() {
    let e = one_error(&good_with("password: password }", "password: hunter2 }"));
    assert!(e.contains("spec.distribute[0].kubernetes.keys.password: not a field this target provides (it provides username, password)"), "{e}");
    // What is written there by mistake is the credential itself: it is never echoed.
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn a_huge_value_is_echoed_escaped_and_cut_with_its_length() {
    let big = "a".repeat(1 << 20);
    let e = one_error(&good_with("name: api-token", &format!("name: {big}")));
    assert!(e.len() < 400, "{} bytes", e.len());
    assert!(
        e.contains("\"… (1048576 bytes) is not a DNS-1123 label"),
        "{e}"
    );
    let e = one_error(&good_with("name: api-token", "name: \"a\\e[2Jb\""));
    assert!(
        e.contains(r#""a\u{1b}[2Jb" is not a DNS-1123 label"#),
        "{e}"
    );
}

#[test]
fn a_cron_error_never_carries_a_control_character_or_a_huge_expression() {
    let e = one_error(&good_with("\"0 3 * * *\"", "\"0 3 * * *\\e[2J\""));
    assert!(e.contains("spec.schedule: invalid cron expression"), "{e}");
    assert!(!e.chars().any(char::is_control), "{e:?}");
    let long = format!("\"{} * * * *\"", "1,".repeat(5000) + "1");
    let e = one_error(&good_with("\"0 3 * * *\"", &long));
    assert!(e.contains("longer than 1000 characters"), "{e}");
    assert!(e.len() < 1000, "{} bytes", e.len());
}

#[test]
fn a_restart_kind_must_be_a_workload() {
    let e = one_error(&good_with("kind: Deployment", "kind: Pod"));
    assert!(
        e.contains(
            "spec.distribute[0].restart[0].kind: must be Deployment, StatefulSet or DaemonSet"
        ),
        "{e}"
    );
}

#[test]
fn a_generator_excluding_nearly_everything_is_rejected() {
    let e = one_error(&good_with(
        "charset: alphanumeric }",
        "charset: hex, exclude: \"0123456789\" }",
    ));
    assert!(
        e.contains("spec.generator.exclude: leaves only 6 characters"),
        "{e}"
    );
}

#[test]
fn wrong_api_version_and_kind_are_rejected() {
    let e = check(
        &GOOD
            .replacen("keyturn.dev/v1", "keyturn.dev/v2", 1)
            .replacen("kind: RotationPolicy", "kind: Policy", 1),
    )
    .unwrap_err();
    let lines: Vec<String> = e.0.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "p.yaml:1:13: apiVersion: must be \"keyturn.dev/v1\"",
            "p.yaml:2:7: kind: must be \"RotationPolicy\"",
        ]
    );
}

#[test]
fn two_policies_may_not_share_a_store() {
    let doubled = format!(
        "{GOOD}---\n{}",
        GOOD.split("---")
            .next()
            .unwrap()
            .replace("name: api-token", "name: other")
    );
    let e = check(&doubled).unwrap_err().to_string();
    assert!(e.contains("spec.store: store vault-kv:secret/keyturn/api-token is already used by policy \"api-token\""), "{e}");
}

#[test]
fn malformed_yaml_names_the_line() {
    let e = one_error("apiVersion: keyturn.dev/v1\nkind: [unclosed\n");
    assert!(e.starts_with("p.yaml:"), "{e}");
}

#[test]
fn a_directory_loads_every_yaml_file_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let docs: Vec<&str> = GOOD.split("---\n").collect();
    std::fs::write(dir.path().join("b.yaml"), docs[0]).unwrap();
    std::fs::write(dir.path().join("a.yml"), docs[1]).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a policy").unwrap();
    let ps = load(dir.path()).unwrap();
    assert_eq!(
        ps.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["orders-db", "api-token"]
    );
}

#[test]
fn one_file_may_hold_thousands_of_policies() {
    use std::fmt::Write as _;
    let mut text = String::new();
    for i in 0..3000 {
        let _ = write!(
            text,
            "---\napiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: p{i} }}\nspec:\n  every: 24h\n  store: {{ vault-kv: {{ path: keyturn/p{i} }} }}\n  target: {{ generated: {{}} }}\n"
        );
    }
    assert_eq!(check(&text).expect("loads").len(), 3000);
}

#[test]
fn an_interval_that_would_overflow_the_clock_is_rejected_where_written() {
    // Accepted before, and the daemon then panicked computing the next slot.
    let e = one_error(&good_with("  every: 24h", "  every: 100000000000y"));
    assert!(e.starts_with("p.yaml:16:10: spec.every:"), "{e}");
    let e = one_error(&good_with("  every: 24h", "  every: 11y"));
    assert!(e.contains("at most 3660d"), "{e}");
}

#[test]
fn a_window_is_bounded_and_shorter_than_the_gap_between_slots() {
    // A huge window on a cron schedule overflowed the jitter computation.
    let e = one_error(&good_with("  window: 1h", "  window: 100000000000y"));
    assert!(e.starts_with("p.yaml:6:11: spec.window:"), "{e}");
    let e = one_error(&good_with("  window: 1h", "  window: 40d"));
    assert!(e.contains("at most 31d"), "{e}");
    // Daily at 03:00: a 25 h window would let one slot's start pass the next slot.
    let e = one_error(&good_with("  window: 1h", "  window: 25h"));
    assert!(
        e.contains("spec.window: must be shorter than the shortest gap"),
        "{e}"
    );
    // The tightest pair of slots counts, not the average: 01:00 and 02:00 daily.
    let e = one_error(
        &good_with(r#""0 3 * * *""#, r#""0 1,2 * * *""#).replace("window: 1h", "window: 90m"),
    );
    assert!(e.contains("shortest gap"), "{e}");
    assert!(check(&good_with("  window: 1h", "  window: 23h")).is_ok());
}

#[test]
fn an_aws_secret_id_must_be_a_name_or_a_secret_arn() {
    for bad in [
        "prod/orders db",
        "prod/orders%db",
        "arn:aws:s3:::bucket",
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:",
    ] {
        let e = one_error(&good_with("prod/orders-db", &format!("{bad:?}")));
        assert!(
            e.contains("spec.store.aws-secretsmanager.secret-id"),
            "{bad}: {e}"
        );
        assert!(!e.contains(bad), "the message must not echo the value: {e}");
    }
    let long = "a".repeat(513);
    assert!(one_error(&good_with("prod/orders-db", &long)).contains("secret-id"));
    for good in [
        "prod/orders-db",
        "a+b=c.d@e_f-g",
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/orders-db-AbCdEf",
    ] {
        assert!(
            check(&good_with("prod/orders-db", &format!("{good:?}"))).is_ok(),
            "{good}"
        );
    }
    let e = one_error(&good_with(
        "secret-id: prod/orders-db }",
        "secret-id: prod/orders-db, region: \"EU West\" }",
    ));
    assert!(e.contains("spec.store.aws-secretsmanager.region"), "{e}");
}

#[test]
fn an_empty_policy_directory_is_an_error_not_an_idle_daemon() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("README.md"), "not a policy").unwrap();
    let e = load(dir.path()).expect_err("nothing to run");
    assert_eq!(e.0.len(), 1);
    assert!(e.to_string().contains("no rotation policies found"), "{e}");
    let f = dir.path().join("empty.yaml");
    std::fs::write(&f, "").unwrap();
    assert!(load(&f).is_err());
}

#[test]
fn a_postgres_target_takes_a_tls_mode_and_a_ca_file_for_verify_full_only() {
    let ps = check(&good_with(
        "      strategy: alternating\n",
        "      strategy: alternating\n      tls: verify-full\n      ca-file: /etc/ssl/db-ca.pem\n",
    ))
    .unwrap();
    let TargetSpec::Postgres(pg) = &ps[1].target else {
        panic!("postgres target")
    };
    assert_eq!(
        pg.tls.mode,
        crate::rotation::target::tls::TlsMode::VerifyFull
    );
    assert_eq!(
        pg.tls.ca_file.as_deref(),
        Some(std::path::Path::new("/etc/ssl/db-ca.pem"))
    );
    assert_eq!(
        one_error(&good_with(
            "      strategy: alternating\n",
            "      strategy: alternating\n      tls: require\n      ca-file: /ca.pem\n",
        )),
        "p.yaml:26:16: spec.target.postgres.ca-file: is only used with tls: verify-full (other modes do not check certificates)"
    );
    assert_eq!(
        one_error(&good_with(
            "      strategy: alternating\n",
            "      strategy: alternating\n      tls: verify-ca\n",
        )),
        "p.yaml:25:12: spec.target.postgres.tls: unknown TLS mode \"verify-ca\" (disable, prefer, require or verify-full)"
    );
}

/// A daemon replica holds every policy of up to 100,000 in memory, so each byte of a
/// `Policy` is 100 kB per replica: the big, rarely used parts (database target specs, the
/// RotationPolicy object) are boxed, and what nearly every policy has in common (the
/// generator's alphabet, the file path) is shared, not copied.
#[test]
fn a_policy_is_small_and_shares_its_alphabet_and_file() {
    // 232 bytes when written (496 before boxing and sharing); a field added inline should
    // be a decision, not an accident.
    assert!(
        std::mem::size_of::<Policy>() <= 256,
        "Policy is {} bytes",
        std::mem::size_of::<Policy>()
    );
    assert!(std::mem::size_of::<TargetSpec>() <= 16);

    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(&f, GOOD).unwrap();
    let ps = load(&f).unwrap();
    // `api-token` names charset alphanumeric, `orders-db` takes it by default.
    assert_eq!(ps[0].generator.alphabet, ps[1].generator.alphabet);
    assert!(Arc::ptr_eq(
        &ps[0].generator.alphabet,
        &ps[1].generator.alphabet
    ));
    assert!(Arc::ptr_eq(&ps[0].file, &ps[1].file));
    assert_eq!(&*ps[0].file, f.as_path());

    // Another load of another file shares the alphabet too (it is process-wide), but not the
    // file; an exclusion makes a different alphabet.
    let other = check(&good_with("charset: alphanumeric", "exclude: \"0O1lI\"")).unwrap();
    assert!(Arc::ptr_eq(
        &ps[1].generator.alphabet,
        &other[1].generator.alphabet
    ));
    assert!(!Arc::ptr_eq(&ps[0].file, &other[0].file));
    assert_eq!(other[0].generator.alphabet.len(), 62 - 5);
    assert!(!other[0].generator.alphabet.contains(&'O'));
    assert_ne!(other[0].generator, ps[0].generator);
}

#[test]
fn load_held_keeps_whole_only_what_it_is_asked_to_and_names_every_policy() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(&f, GOOD).unwrap();
    let all = load(&f).unwrap();
    let mut seen = Vec::new();
    let held = load_held(&f, false, &mut |p| {
        seen.push(p.name.clone());
        p.name == "orders-db"
    })
    .unwrap();
    assert_eq!(
        seen,
        ["api-token", "orders-db"],
        "every valid policy is offered"
    );
    let names: Vec<&str> = held.iter().map(|h| &*h.name).collect();
    assert_eq!(names, ["api-token", "orders-db"]);
    assert_eq!(
        held[0].policy, None,
        "not asked for: the name, store and file only"
    );
    assert_eq!(
        held[1].policy.as_deref(),
        Some(&all[1]),
        "asked for: the whole policy"
    );
    for (h, p) in held.iter().zip(&all) {
        assert_eq!(h.store, StoreKey::of(&p.store));
        assert_eq!(h.file, p.file);
    }
    // An invalid set is refused whole, as by `load`, whatever is asked for.
    std::fs::write(&f, good_with("every: 24h", "every: soon")).unwrap();
    let e = load_held(&f, false, &mut |_| true).unwrap_err();
    assert_eq!(e.to_string(), load(&f).unwrap_err().to_string());
    // Nothing at all: an error, unless allowed.
    std::fs::write(&f, "").unwrap();
    assert!(load_held(&f, false, &mut |_| true).is_err());
    assert_eq!(load_held(&f, true, &mut |_| true).unwrap(), []);
}

#[test]
fn store_keys_are_equal_exactly_for_the_same_store() {
    let ps = check(GOOD).unwrap();
    let (a, b) = (&ps[0].store, &ps[1].store);
    assert_eq!(StoreKey::of(a), StoreKey::of(&a.clone()));
    assert_ne!(StoreKey::of(a), StoreKey::of(b));
    let kv = |mount: &str, path: &str| {
        StoreSpec::VaultKv(vault_kv::Spec {
            mount: mount.into(),
            path: path.into(),
        })
    };
    // Fields are told apart even where their text would run together.
    assert_ne!(StoreKey::of(&kv("a", "b/c")), StoreKey::of(&kv("a/b", "c")));
    assert_eq!(StoreKey::of(&kv("a", "b/c")), StoreKey::of(&kv("a", "b/c")));
}

use super::*;
use RejectReason::{InvalidSpec, NameConflict, StoreConflict};
use serde_json::json;

/// A secret-looking value planted where a mistaken secret would go; no message may hold it.
const CANARY: &str = "hunter2-CANARY-9f8e7d6c";

fn spec(path: &str) -> Value {
    json!({
        "every": "1d",
        "store": {"vault-kv": {"path": path}},
        "target": {"generated": {}},
    })
}

/// A RotationPolicy object as the API server sends it (status and server fields included).
fn object(
    namespace: &str,
    name: &str,
    created: &str,
    generation: i64,
    spec: Value,
) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "keyturn.dev/v1",
        "kind": "RotationPolicy",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": format!("uid-{namespace}-{name}"),
            "generation": generation,
            "resourceVersion": "7",
            "creationTimestamp": created,
            "managedFields": [{"manager": "kubectl", "operation": "Update"}],
        },
        "spec": spec,
        "status": {"observedGeneration": 1},
    }))
    .unwrap()
}

fn entry(namespace: &str, name: &str, created: &str, spec: Value) -> Arc<ObjectPolicy> {
    Arc::new(ObjectPolicy::from_object(&object(
        namespace, name, created, 1, spec,
    )))
}

const T0: &str = "2025-01-01T00:00:00Z";
const T1: &str = "2025-01-01T00:00:01Z";
const T2: &str = "2025-01-01T00:00:02Z";

fn file_policies(yaml: &str) -> Vec<Policy> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(&f, yaml).unwrap();
    crate::policy::load(&f).unwrap()
}

fn file_policy(name: &str, path: &str) -> Vec<Policy> {
    file_policies(&format!(
        "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: {name} }}\nspec:\n  every: 1d\n  store: {{ vault-kv: {{ path: {path} }} }}\n  target: {{ generated: {{}} }}\n"
    ))
}

/// `(namespace, name, reason)` of each rejection.
fn rejections(m: &Merged) -> Vec<(&str, &str, RejectReason)> {
    m.rejected
        .iter()
        .map(|r| {
            (
                r.object.namespace.as_str(),
                r.object.name.as_str(),
                r.reason,
            )
        })
        .collect()
}

// ---- conversion ----

#[test]
fn an_object_becomes_the_policy_its_spec_says_named_by_the_object() {
    let mut s = spec("keyturn/api");
    s["max-attempts"] = json!(3);
    let o = object("shop", "api", T0, 4, s);
    let p = policy_from_object(&o).unwrap();
    assert_eq!(p.name, "api");
    assert_eq!(&*p.file, Path::new("rotationpolicy/shop/api"));
    assert_eq!(p.max_attempts, 3);
    assert_eq!(p.store.to_string(), "vault-kv:secret/keyturn/api");
    assert_eq!(
        p.object,
        Some(Box::new(PolicyObject {
            namespace: "shop".into(),
            name: "api".into(),
            uid: Some("uid-shop-api".into()),
            generation: Some(4),
        }))
    );

    // The same document as a policy file is the same policy, but for where it came from.
    let mut from_file = file_policy("api", "keyturn/api").remove(0);
    from_file.max_attempts = 3;
    from_file.file = p.file.clone();
    from_file.object = p.object.clone();
    assert_eq!(p, from_file);
}

#[test]
fn an_object_in_another_group_is_the_same_policy() {
    let mut o = object("shop", "api", T0, 1, spec("keyturn/api"));
    o.types = Some(kube::api::TypeMeta {
        api_version: "ns-1.test.keyturn.dev/v1".into(),
        kind: "RotationPolicy".into(),
    });
    assert!(policy_from_object(&o).is_ok());
}

#[test]
fn problems_name_the_object_and_field_and_never_a_value() {
    let s = json!({
        "schedule": format!("0 3 * * {CANARY}"),
        "store": {"vault-kv": {"path": format!("keyturn/{CANARY}/../x")}},
        "target": {"generated": {}},
        "generator": {"charset": CANARY},
        "distribute": [{"kubernetes": {
            "namespace": CANARY,
            "secret": "api",
            "keys": {"TOKEN": CANARY},
        }}],
    });
    let o = object("shop", "api", T0, 1, s);
    let errors = policy_from_object(&o).unwrap_err();
    let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
    for want in [
        "spec.schedule",
        "spec.store.vault-kv.path",
        "spec.generator.charset",
        "spec.distribute[0].kubernetes.namespace",
        "spec.distribute[0].kubernetes.keys.TOKEN",
    ] {
        assert!(fields.contains(&want), "{want} not in {fields:?}");
    }
    for e in &errors.0 {
        assert_eq!(e.origin, "rotationpolicy/shop/api");
        assert_eq!(e.at, None, "an object has no lines");
    }
    let shown = errors.to_string();
    eprintln!("SHOWN\n{shown}");
    assert!(
        !shown.to_lowercase().contains(&CANARY.to_lowercase()) && !shown.contains("hunter2"),
        "{shown}"
    );
    assert!(
        shown.contains("rotationpolicy/shop/api: spec.generator.charset: unknown charset (value not shown) (one of alphanumeric"),
        "{shown}"
    );
    let rejected = merge(&[], &[Arc::new(ObjectPolicy::from_object(&o))]);
    assert_eq!(rejections(&rejected), [("shop", "api", InvalidSpec)]);
    let message = &rejected.rejected[0].message;
    assert!(
        message.contains("spec.generator.charset: unknown charset"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn a_spec_of_the_wrong_shape_is_one_problem_at_its_field() {
    let mut s = spec("keyturn/api");
    s["window"] = json!({"password": CANARY});
    let errors = policy_from_object(&object("shop", "api", T0, 1, s)).unwrap_err();
    assert_eq!(
        errors.to_string(),
        "rotationpolicy/shop/api: spec.window: expected a string, found an object"
    );
    let mut o = object("shop", "api", T0, 1, spec("x"));
    o.data.as_object_mut().unwrap().remove("spec");
    assert_eq!(
        policy_from_object(&o).unwrap_err().to_string(),
        "rotationpolicy/shop/api: spec: missing"
    );
}

#[test]
fn a_name_that_is_no_dns_label_is_refused_as_in_a_file() {
    let errors = policy_from_object(&object("shop", "api.v2", T0, 1, spec("k/a"))).unwrap_err();
    assert_eq!(
        errors.to_string(),
        "rotationpolicy/shop/api.v2: metadata.name: (value not shown) is not a DNS-1123 label (lowercase letters, digits, '-'; at most 63)"
    );
}

#[test]
fn scrubbing_hides_quoted_values_and_words_of_the_written_ones() {
    assert_eq!(
        scrub(
            r#"unknown time zone "Mars/\"Base\"" (use an IANA name)"#,
            &[]
        ),
        "unknown time zone (value not shown) (use an IANA name)"
    );
    assert_eq!(
        scrub(r#"x "aaaaaaaa"… (99 bytes) is too long"#, &[]),
        "x (value not shown) is too long"
    );
    assert_eq!(
        scrub("a quote that never ends \"abc", &[]),
        "a quote that never ends (value not shown)"
    );
    // A parser's sentence may quote the whole value, or the part where it stopped.
    let written = ["0 3 * * s3cret-word"];
    assert_eq!(
        scrub("invalid: 0 3 * * s3cret-word here", &written),
        "invalid: (value not shown) here"
    );
    assert_eq!(
        scrub("at s3cret-word: expected a number", &written),
        "at (value not shown): expected a number"
    );
    // A written word that is part of the replacement text does not eat into it.
    assert_eq!(
        scrub("\"x\" value", &["value", "shown"]),
        "(value not shown) (value not shown)"
    );
}

// ---- merging ----

#[test]
fn a_file_policy_held_by_name_only_still_wins_its_name_and_store() {
    // A replica holds whole only the file policies it owns; the others still take part in
    // every clash, and merge to their names without a policy.
    let files: Vec<FilePolicy> = file_policy("shared", "keyturn/shared")
        .into_iter()
        .map(|p| FilePolicy::new(p, false))
        .collect();
    let objects = vec![
        entry("team-a", "shared", T0, spec("keyturn/other")),
        entry("team-a", "thief", T0, spec("keyturn/shared")),
        entry("team-a", "own", T1, spec("keyturn/own")),
    ];
    let m = merge_shared(&files, &objects);
    assert_eq!(m.policies.get("shared"), Some(&None), "named, not held");
    assert!(
        m.policy("own").is_some(),
        "an object's policy is always held"
    );
    assert_eq!(
        rejections(&m),
        [
            ("team-a", "shared", NameConflict),
            ("team-a", "thief", StoreConflict)
        ]
    );
    assert!(
        m.rejected[1]
            .message
            .contains("already used by another policy (one of the daemon's policy files"),
        "{}",
        m.rejected[1].message
    );
    assert!(
        m.rejected[1]
            .held_by
            .as_ref()
            .unwrap()
            .starts_with("policy shared of the daemon's policy file"),
        "{:?}",
        m.rejected[1].held_by
    );
}

#[test]
fn merge_files_win_every_clash_and_objects_keep_the_rest() {
    let files = file_policy("shared", "keyturn/shared");
    let objects = vec![
        entry("team-a", "shared", T0, spec("keyturn/other")),
        entry("team-a", "thief", T0, spec("keyturn/shared")),
        entry("team-a", "own", T1, spec("keyturn/own")),
    ];
    let m = merge(&files, &objects);
    assert_eq!(
        m.policies.keys().map(|k| &**k).collect::<Vec<_>>(),
        ["own", "shared"],
        "{m:?}"
    );
    assert_eq!(
        m.policy("shared").unwrap().object,
        None,
        "the file's policy"
    );
    assert_eq!(
        m.policy("own").unwrap().object.as_ref().unwrap().namespace,
        "team-a"
    );
    assert_eq!(
        rejections(&m),
        [
            ("team-a", "shared", NameConflict),
            ("team-a", "thief", StoreConflict)
        ]
    );
    assert!(
        m.rejected[0]
            .message
            .contains("already taken by one of the daemon's policy files"),
        "{}",
        m.rejected[0].message
    );
    assert!(
        m.rejected[1].message.starts_with(
            "store vault-kv:secret/keyturn/shared is already used by another policy (one of \
             the daemon's policy files, and policy files come before RotationPolicy objects)"
        ),
        "{}",
        m.rejected[1].message
    );
}

#[test]
fn merge_the_oldest_object_keeps_a_name_or_store_whatever_the_order() {
    // The younger is in the namespace that sorts first, so the order of namespaces alone
    // would pick the wrong one.
    let objects = vec![
        entry("zz-old", "db", T0, spec("keyturn/db-old")),
        entry("aa-young", "db", T1, spec("keyturn/db-young")),
        entry("zz-old", "cache", T0, spec("keyturn/cache")),
        entry("aa-young", "cache-copy", T2, spec("keyturn/cache")),
    ];
    let want = merge(&[], &objects);
    assert_eq!(
        rejections(&want),
        [
            ("aa-young", "cache-copy", StoreConflict),
            ("aa-young", "db", NameConflict)
        ]
    );
    assert_eq!(
        want.policy("db")
            .unwrap()
            .object
            .as_ref()
            .unwrap()
            .namespace,
        "zz-old"
    );
    assert!(
        want.rejected[1]
            .message
            .contains("already taken by a RotationPolicy in another namespace, which is older"),
        "{}",
        want.rejected[1].message
    );
    // Another namespace is named only in the log's `held_by`, never in the status message.
    assert!(
        want.rejected
            .iter()
            .all(|r| !r.message.contains("zz-old") && !r.message.contains("keyturn/db-old")),
        "{:?}",
        want.rejected
    );
    assert_eq!(
        want.rejected[1].held_by.as_deref(),
        Some("rotationpolicy/zz-old/db")
    );
    assert_eq!(
        want.rejected[0].held_by.as_deref(),
        Some("policy cache of rotationpolicy/zz-old/cache")
    );
    // Every order of the same objects gives the same result.
    let mut order = objects.clone();
    for rotation in 0..order.len() {
        order.rotate_left(1);
        assert_eq!(merge(&[], &order), want, "rotation {rotation}");
        let reversed: Vec<_> = order.iter().rev().cloned().collect();
        assert_eq!(merge(&[], &reversed), want, "reversed rotation {rotation}");
    }
}

#[test]
fn merge_objects_of_the_same_age_go_by_namespace_then_name() {
    let objects = vec![
        entry("b", "db", T0, spec("keyturn/1")),
        entry("a", "db", T0, spec("keyturn/2")),
        entry("a", "x", T0, spec("keyturn/3")),
        entry("a", "w", T0, spec("keyturn/3")),
    ];
    let m = merge(&[], &objects);
    assert_eq!(
        rejections(&m),
        [("a", "x", StoreConflict), ("b", "db", NameConflict)]
    );
    assert!(
        m.rejected[1].message.contains("created in the same second"),
        "{}",
        m.rejected[1].message
    );
}

#[test]
fn merge_an_invalid_or_losing_object_claims_nothing() {
    let mut bad = spec("keyturn/db");
    bad["every"] = json!("soon");
    let objects = vec![
        // Older but invalid: the younger valid one keeps the name and the store.
        entry("a", "db", T0, bad),
        entry("b", "db", T1, spec("keyturn/db")),
        // A name loser does not hold its store against a later object.
        entry("c", "db", T1, spec("keyturn/free")),
        entry("d", "free", T2, spec("keyturn/free")),
    ];
    let m = merge(&[], &objects);
    assert_eq!(
        m.policies.keys().map(|k| &**k).collect::<Vec<_>>(),
        ["db", "free"]
    );
    assert_eq!(
        m.policy("db").unwrap().object.as_ref().unwrap().namespace,
        "b"
    );
    assert_eq!(
        rejections(&m),
        [("a", "db", InvalidSpec), ("c", "db", NameConflict)]
    );
}

// ---- the watch's object map ----

#[test]
fn objects_change_only_when_a_spec_does() {
    let mut objects = Objects::default();
    objects.init();
    objects.init_apply(&object("a", "p", T0, 1, spec("k/p")));
    objects.init_done();
    let first = objects.snapshot();
    assert_eq!(first.len(), 1);

    // A status or label update: same uid and generation.
    let mut status = object("a", "p", T0, 1, spec("k/p"));
    status.data["status"] = json!({"observedGeneration": 1, "consecutiveFailures": 2});
    assert!(!objects.apply(&status));
    assert!(Arc::ptr_eq(
        &objects.snapshot().objects()[0],
        &first.objects()[0]
    ));

    // A new generation is validated again.
    assert!(objects.apply(&object("a", "p", T0, 2, spec("k/q"))));
    let p = objects.snapshot().objects()[0].policy().unwrap().clone();
    assert_eq!(p.store.to_string(), "vault-kv:secret/k/q");
    assert_eq!(p.object.as_ref().unwrap().generation, Some(2));

    // The same name re-created (a new uid) is a change even at generation 2.
    let mut again = object("a", "p", T0, 2, spec("k/q"));
    again.metadata.uid = Some("another".into());
    assert!(objects.apply(&again));

    assert!(objects.delete(&again));
    assert!(!objects.delete(&again), "already gone");
    assert!(objects.snapshot().is_empty());
}

#[test]
fn objects_listed_again_replace_the_old_ones_only_when_the_list_is_complete() {
    let mut objects = Objects::default();
    objects.init();
    objects.init_apply(&object("a", "gone", T0, 1, spec("k/gone")));
    objects.init_apply(&object("a", "kept", T0, 1, spec("k/kept")));
    objects.init_done();
    let before = objects.snapshot();

    objects.init();
    objects.init_apply(&object("a", "kept", T0, 1, spec("k/kept")));
    // Mid-list, the snapshot is still the old one.
    assert_eq!(objects.snapshot(), before);
    objects.init_apply(&object("a", "new", T0, 1, spec("k/new")));
    objects.init_done();
    let after = objects.snapshot();
    let names: Vec<&str> = after
        .objects()
        .iter()
        .map(|o| o.object().name.as_str())
        .collect();
    assert_eq!(names, ["kept", "new"]);
    // An unchanged object is not validated again, and keeps its place in memory.
    assert!(Arc::ptr_eq(&after.objects()[0], &before.objects()[1]));
}

#[test]
fn a_clash_within_one_namespace_names_the_holder_in_the_status() {
    let objects = vec![
        entry("team-a", "db", T0, spec("keyturn/db")),
        entry("team-a", "db-copy", T1, spec("keyturn/db")),
    ];
    let m = merge(&[], &objects);
    assert_eq!(rejections(&m), [("team-a", "db-copy", StoreConflict)]);
    assert!(
        m.rejected[0].message.starts_with(
            "store vault-kv:secret/keyturn/db is already used by policy db \
             (rotationpolicy/team-a/db, which is older)"
        ),
        "{}",
        m.rejected[0].message
    );
    // An operator's command adds the holder in full.
    assert!(
        m.rejected[0]
            .in_full()
            .ends_with("(held by policy db of rotationpolicy/team-a/db)"),
        "{}",
        m.rejected[0].in_full()
    );
}

//! `keyturn rotate` and `keyturn break-glass` with `--rotationpolicies NAMESPACE`: the named
//! policy found among RotationPolicy objects as the daemon would resolve it, against a real
//! OpenBao. An object's policy is rotated by `rotate` (without `--policies`) and again by an
//! operator's `break-glass rotate`; a policy file of the same name wins over the object; an
//! unknown name and an invalid object exit 64 naming the scope, or the field and never its
//! value, and write nothing; a list the API server refuses exits 77, an API server that does
//! not answer 69. `keyturn status --rotationpolicies` lists the objects' policies beside the
//! files', and the objects the daemon would not manage with their reasons.
//!
//! On a real cluster (`KEYTURN_TEST_KUBECONFIG`) the resource is defined in a group of the
//! test's own, which keyturn is told with `--rotationpolicies-group`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Output, Stdio};

use keyturn_tests::agent_env::{self, AgentEnv, assert_exit, output_text};
use keyturn_tests::kube::TestCluster;
use keyturn_tests::openbao::OpenBao;
use keyturn_tests::process::ClosedPort;
use serde_json::{Value, json};

use super::policy_daemon::{Objects, spec, version};

/// Planted in an invalid object's field: no output may hold it.
const CANARY: &str = "Canary/Qx7Zt4Wv";

/// `keyturn ARGS --rotationpolicies-group GROUP` as the agent, no stdin, run to its end on
/// tokio's process API: the API stand-in in this process keeps serving while it waits.
/// `policies`: keep `KEYTURN_POLICIES` (the home's policy directory) or drop it.
async fn keyturn(
    e: &AgentEnv,
    args: &[&str],
    group: &str,
    policies: bool,
    edit: impl FnOnce(&mut std::process::Command),
) -> Output {
    let mut c = e.cmd(args, "agent-1");
    c.args(["--rotationpolicies-group", group])
        .env("KEYTURN_RESTART_WINDOW", "0s")
        .stdin(Stdio::null());
    if !policies {
        c.env_remove("KEYTURN_POLICIES");
    }
    edit(&mut c);
    tokio::process::Command::from(c).output().await.unwrap()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn has_event(events: &[Value], action: &str, policy: &str) -> bool {
    events.iter().any(|ev| {
        ev["action"] == action
            && ev["outcome"] == "ok"
            && ev.to_string().contains(&format!("policy/{policy}"))
    })
}

fn write_kubeconfig(e: &AgentEnv, name: &str, yaml: &str) -> std::path::PathBuf {
    let path = e.home.path().join(name);
    std::fs::write(&path, yaml).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[tokio::test]
async fn rotate_and_break_glass_find_a_policy_among_rotationpolicy_objects() {
    let cluster = TestCluster::start().await.unwrap();
    let ns = cluster.namespace().to_owned();
    let objects = Objects::install(&cluster).await;
    let group = objects.crd.group.clone();
    let bao = OpenBao::start().await.unwrap();
    agent_env::put_repo_policy(
        &bao,
        "keyturn-break-glass",
        "policies/vault/keyturn-break-glass.hcl",
    )
    .await;
    let operator_token = bao.create_token(&["keyturn-break-glass"]).await.unwrap();
    let e = AgentEnv::new(bao, Some(cluster), 43).await;
    let operator_audit = e.home.path().join("operator-audit.jsonl");

    objects.create("from-object", spec("from-object")).await;
    // Passes the schema; keyturn's validation refuses the time zone, which holds the canary.
    let mut invalid = spec("invalid");
    invalid.as_object_mut().unwrap().remove("every");
    invalid["schedule"] = json!("0 3 * * *");
    invalid["timezone"] = json!(CANARY);
    objects.create("invalid", invalid).await;
    // A policy file and an object of one name, each with a store of its own.
    e.write_generated_policy("shared", "");
    objects.create("shared", spec("shared-object")).await;

    // (1) `rotate` without --policies: the object's policy, rotated.
    let rotated = keyturn(
        &e,
        &["rotate", "from-object", "--rotationpolicies", &ns],
        &group,
        false,
        |_| {},
    )
    .await;
    assert_exit(&rotated, 0, &[]);
    assert!(
        String::from_utf8_lossy(&rotated.stdout).contains("rotated from-object"),
        "{}",
        output_text(&rotated)
    );
    assert_eq!(version(&e, "from-object").await, 1);
    assert!(
        has_event(&lines(&e.audit()), "rotate.done", "from-object"),
        "{:?}",
        e.audit_actions()
    );

    // (2) An operator's break-glass rotate, the scope from KEYTURN_ROTATIONPOLICIES.
    let broke = keyturn(
        &e,
        &[
            "break-glass",
            "rotate",
            "from-object",
            "--reason",
            "leaked in a ticket",
            "--yes",
        ],
        &group,
        false,
        |c| {
            c.env("VAULT_TOKEN", &operator_token)
                .env("KEYTURN_AUDIT_FILE", &operator_audit)
                .env("KEYTURN_ROTATIONPOLICIES", &ns);
        },
    )
    .await;
    assert_exit(&broke, 0, &[]);
    assert_eq!(version(&e, "from-object").await, 2);
    let operator_events = lines(&operator_audit);
    assert!(
        has_event(&operator_events, "break-glass.rotate", "from-object"),
        "{operator_events:?}"
    );
    assert!(
        operator_events
            .iter()
            .any(|ev| ev["action"] == "break-glass.rotate" && ev["actor"]["kind"] == "operator"),
        "{operator_events:?}"
    );

    // (3) An unknown name: 64, naming the name, the files, the scope and the flag; nothing
    // is written, in the store or the audit file.
    let audit_before = lines(&e.audit()).len();
    let unknown = keyturn(
        &e,
        &["rotate", "ghost", "--rotationpolicies", &ns],
        &group,
        true,
        |_| {},
    )
    .await;
    let said = assert_exit(
        &unknown,
        64,
        &[
            "no policy named \"ghost\"",
            &e.policies().display().to_string(),
            &format!("namespace {ns}"),
            &format!("--rotationpolicies {ns}"),
        ],
    );
    assert_eq!(
        said.lines().filter(|l| l.starts_with("keyturn: ")).count(),
        1,
        "one line: {said}"
    );
    let unknown_bg = keyturn(
        &e,
        &[
            "break-glass",
            "reveal",
            "ghost",
            "--reason",
            "x",
            "--yes",
            "--to-file",
            &e.home.path().join("revealed").display().to_string(),
            "--rotationpolicies",
            &ns,
        ],
        &group,
        false,
        |c| {
            c.env("VAULT_TOKEN", &operator_token)
                .env("KEYTURN_AUDIT_FILE", &operator_audit);
        },
    )
    .await;
    assert_exit(&unknown_bg, 64, &[]);
    assert!(!e.home.path().join("revealed").exists());
    assert_eq!(version(&e, "ghost").await, 0);

    // (4) An invalid object: 64, naming the object, the reason and the field, never the value.
    let refused = keyturn(
        &e,
        &["rotate", "invalid", "--rotationpolicies", &ns],
        &group,
        true,
        |_| {},
    )
    .await;
    assert_exit(
        &refused,
        64,
        &[
            "policy \"invalid\"",
            &format!("rotationpolicy/{ns}/invalid"),
            "InvalidSpec",
            "spec.timezone",
            &format!("--rotationpolicies {ns}"),
        ],
    );
    let refused_bg = keyturn(
        &e,
        &[
            "break-glass",
            "revoke",
            "invalid",
            "--reason",
            "x",
            "--yes",
            "--rotationpolicies",
            &ns,
        ],
        &group,
        false,
        |c| {
            c.env("VAULT_TOKEN", &operator_token)
                .env("KEYTURN_AUDIT_FILE", &operator_audit);
        },
    )
    .await;
    assert_exit(&refused_bg, 64, &[]);
    assert_eq!(version(&e, "invalid").await, 0);
    assert_eq!(lines(&e.audit()).len(), audit_before, "nothing audited");
    assert_eq!(
        lines(&operator_audit).len(),
        operator_events.len(),
        "nothing audited by break-glass either"
    );

    // (5) A policy file of the object's name wins: its store is the one rotated.
    let file_wins = keyturn(
        &e,
        &["rotate", "shared", "--rotationpolicies", &ns],
        &group,
        true,
        |_| {},
    )
    .await;
    assert_exit(&file_wins, 0, &[]);
    assert_eq!(version(&e, "shared").await, 1, "the file's store");
    assert_eq!(version(&e, "shared-object").await, 0, "the object's store");

    // (6) `status` over the files and the objects: a row for each policy the daemon would
    // run, and one for each object it would not, saying why (64 for those).
    let status = keyturn(
        &e,
        &["status", "--json", "--rotationpolicies", &ns],
        &group,
        true,
        |_| {},
    )
    .await;
    assert_exit(&status, 64, &[]);
    let doc: Value = serde_json::from_slice(&status.stdout).unwrap();
    let rows = doc["policies"].as_array().unwrap();
    let row = |policy: &str, store_has: &str| {
        rows.iter()
            .find(|r| r["policy"] == policy && r["store"].as_str().unwrap().contains(store_has))
            .unwrap_or_else(|| panic!("no row {policy} {store_has}: {doc:#}"))
    };
    let object_row = row("from-object", "keyturn/from-object");
    assert_eq!(object_row["last_rotation"]["outcome"], "ok", "{doc:#}");
    assert!(object_row["error"].is_null(), "{doc:#}");
    assert_eq!(
        row("shared", "keyturn/shared")["last_rotation"]["outcome"],
        "ok",
        "the file's policy: {doc:#}"
    );
    let invalid = row("invalid", &format!("rotationpolicy/{ns}/invalid"))["rejected"]
        .as_str()
        .unwrap();
    assert!(
        invalid.starts_with("InvalidSpec: ") && invalid.contains("spec.timezone"),
        "{invalid}"
    );
    let lost = row("shared", &format!("rotationpolicy/{ns}/shared"))["rejected"]
        .as_str()
        .unwrap();
    assert!(
        lost.starts_with("NameConflict: ")
            && lost.contains("one of the daemon's policy files")
            && lost.contains("(held by the daemon's policy file /"),
        "{lost}"
    );
    assert_eq!(rows.len(), 4, "{doc:#}");
    // Without files and without objects there is nothing to show: 64, naming both flags.
    let neither = keyturn(&e, &["status"], &group, false, |_| {}).await;
    assert_exit(&neither, 64, &["--policies", "--rotationpolicies"]);

    e.assert_keyturn_clean(
        &[
            &rotated,
            &broke,
            &unknown,
            &unknown_bg,
            &refused,
            &refused_bg,
            &file_wins,
            &status,
            &neither,
        ],
        &[CANARY, "Qx7Zt4Wv"],
    );
    let report = keyturn_core::audit::verify(&[operator_audit]);
    assert!(report.is_ok(), "operator's audit chain: {report:?}");
    if e.cluster.as_ref().is_some_and(TestCluster::is_real) {
        objects.crd.remove().await.unwrap();
    }
}

#[tokio::test]
async fn a_refused_list_is_77_and_an_api_that_does_not_answer_is_69() {
    let cluster = TestCluster::start().await.unwrap();
    let ns = cluster.namespace().to_owned();
    let objects = Objects::install(&cluster).await;
    let group = objects.crd.group.clone();
    objects.create("db", spec("db")).await;
    // A service account with no grant on RotationPolicies: RBAC refuses it on a real
    // cluster, a deny rule on the stand-in (which does not enforce RBAC by default).
    let account = "no-rotationpolicies";
    let token = cluster.service_account_token(&ns, account).await.unwrap();
    if let Some(standin) = cluster.standin() {
        standin.deny_user(
            &cluster.service_account_username(account),
            "list",
            "rotationpolicies",
        );
    }
    let denied_config = cluster.kubeconfig_for_token(account, &token);
    let e = AgentEnv::new(OpenBao::start().await.unwrap(), Some(cluster), 44).await;
    let denied_config = write_kubeconfig(&e, "denied-kubeconfig", &denied_config);
    // Nothing listens here, and nothing can until the test ends.
    let closed = ClosedPort::new();
    let nowhere = write_kubeconfig(
        &e,
        "nowhere-kubeconfig",
        &keyturn_kube_standin::kubeconfig_yaml(
            &format!("https://127.0.0.1:{}", closed.port()),
            None,
            "nobody",
            "not-a-token",
        ),
    );

    let denied = keyturn(
        &e,
        &["rotate", "db", "--rotationpolicies", &ns],
        &group,
        false,
        |c| {
            c.env("KUBECONFIG", &denied_config);
        },
    )
    .await;
    assert_exit(
        &denied,
        77,
        &[
            "policy \"db\"",
            "403",
            &format!("namespace {ns}"),
            &format!("--rotationpolicies {ns}"),
        ],
    );

    let unreachable = keyturn(
        &e,
        &[
            "break-glass",
            "rotate",
            "db",
            "--reason",
            "x",
            "--yes",
            "--rotationpolicies",
            "all",
        ],
        &group,
        false,
        |c| {
            c.env("KUBECONFIG", &nowhere);
        },
    )
    .await;
    assert_exit(
        &unreachable,
        69,
        &["policy \"db\"", "every namespace", "--rotationpolicies all"],
    );
    assert_eq!(version(&e, "db").await, 0);
    assert!(!e.audit().exists(), "nothing audited");

    // An API server answering 503 (the stand-in only: a real one cannot be made to): 69
    // after three lists, no more, and the 403 above was not retried at all.
    if let Some(standin) = e.cluster.as_ref().and_then(TestCluster::standin) {
        let lists = |code: u16| {
            standin
                .requests()
                .iter()
                .filter(|r| r.verb == "list" && r.resource == "rotationpolicies" && r.code == code)
                .count()
        };
        assert_eq!(lists(403), 1, "a refused list is not retried");
        standin.fail("list", "rotationpolicies", 503);
        let failing = keyturn(
            &e,
            &["rotate", "db", "--rotationpolicies", &ns],
            &group,
            false,
            |_| {},
        )
        .await;
        standin.clear_failures();
        assert_exit(&failing, 69, &["503"]);
        assert_eq!(lists(503), 3, "three tries, then 69");
        assert_eq!(version(&e, "db").await, 0);
        assert!(!e.audit().exists(), "nothing audited");
        // `status` lists through the same code: three tries, then 69.
        standin.fail("list", "rotationpolicies", 503);
        let status = keyturn(
            &e,
            &["status", "--rotationpolicies", &ns],
            &group,
            false,
            |_| {},
        )
        .await;
        standin.clear_failures();
        assert_exit(&status, 69, &[]);
        assert_eq!(lists(503), 6, "three more tries, then 69");
    }
    // `status` with a refused list: 77, saying what it could not do.
    let status_denied = keyturn(
        &e,
        &["status", "--rotationpolicies", &ns],
        &group,
        false,
        |c| {
            c.env("KUBECONFIG", &denied_config);
        },
    )
    .await;
    assert_exit(&status_denied, 77, &["cannot list the policies", "403"]);
    if e.cluster.as_ref().is_some_and(TestCluster::is_real) {
        objects.crd.remove().await.unwrap();
    }
}

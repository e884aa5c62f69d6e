//! `keyturn rotate` and `keyturn run` as real processes against a real OpenBao, with a token
//! holding only `policies/vault/keyturn-agent.hcl`: the crash matrix (the process is
//! SIGKILLed right after each step and a restart converges), the daemon's schedule, two
//! daemons on one policy set, hot reload, and SIGTERM.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use keyturn_tests::agent_env::{self, AgentEnv, Daemon};
use keyturn_tests::canary::assert_absent;
use keyturn_tests::process::eventually;

use crate::support::text;

async fn crash_and_resume(step: &str) {
    let e = AgentEnv::start(7).await;
    e.write_generated_policy("api", "");
    let first = e.rotate("api", None).await;
    assert!(first.status.success(), "{}", text(&first));
    let (old, v1) = e.value_at("api", None).await.unwrap();

    let crashed = e.rotate_killed_after("api", step).await;
    let state = e.state("api").await.unwrap();
    // Only the claim with its PENDING value is persisted on the way; set and test run
    // again on the resume, and a done promote is recognised from CURRENT.
    assert_eq!(state["step"], "created", "after {step}");
    let pending = state["pending.value"].as_str().unwrap().to_owned();

    let resumed = e.rotate("api", None).await;
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(text(&resumed).contains("resumed"), "{}", text(&resumed));
    let (now, v2) = e.value_at("api", None).await.unwrap();
    assert_eq!(v2, v1 + 1, "exactly one new version");
    assert_eq!(
        now, pending,
        "the value persisted before the crash is the one promoted"
    );
    assert_eq!(
        e.value_at("api", Some(v2 - 1)).await.unwrap().0,
        old,
        "the old value is PREVIOUS"
    );
    let after = e.state("api").await.unwrap();
    assert!(
        after.get("rotation_id").is_none() && after.get("pending.value").is_none(),
        "no orphaned PENDING: {after}"
    );
    e.verify_audit();
    for out in [&first, &crashed, &resumed] {
        assert_absent("keyturn output", text(out).as_bytes(), &[&old, &now]);
    }
    assert_absent(
        "audit log",
        &std::fs::read(e.audit()).unwrap(),
        &[&old, &now],
    );
}

#[tokio::test]
async fn a_kill_after_create_resumes_and_promotes_the_persisted_value() {
    crash_and_resume("create").await;
}

#[tokio::test]
async fn a_kill_after_set_resumes_and_promotes_the_same_value() {
    crash_and_resume("set").await;
}

#[tokio::test]
async fn a_kill_after_test_resumes_and_promotes_the_same_value() {
    crash_and_resume("test").await;
}

#[tokio::test]
async fn a_kill_after_finish_does_not_write_a_second_version() {
    crash_and_resume("finish").await;
}

#[tokio::test]
async fn rotate_names_an_unknown_policy_and_exits_64_before_any_network_call() {
    let e = AgentEnv::start(7).await;
    e.write_generated_policy("api", "");
    let out = e
        .cmd(&["rotate", "nope"], "agent-1")
        .env("VAULT_ADDR", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(
        text(&out).contains("no policy named \"nope\""),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn a_denied_store_path_fails_clearly_and_writes_nothing() {
    let e = AgentEnv::start(7).await;
    // Outside the agent policy's prefixes.
    std::fs::write(
        e.policies().join("x.yaml"),
        "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: { name: x }\nspec:\n  every: 24h\n  store: { vault-kv: { path: elsewhere/x } }\n  target: { generated: {} }\n",
    )
    .unwrap();
    let out = e.rotate("x", None).await;
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out).contains("permission denied"), "{}", text(&out));
    let v = e.bao.root_client().unwrap();
    assert!(v.kv2_read("secret", "elsewhere/x", None).await.is_err());
}

/// `keyturn run --grace 10s` as `holder`, logging to `HOLDER.log` in the home.
fn start_daemon(e: &AgentEnv, holder: &str) -> Daemon {
    start_daemon_with(e, holder, &[])
}

/// [`start_daemon`] with `extra` arguments.
fn start_daemon_with(e: &AgentEnv, holder: &str, extra: &[&str]) -> Daemon {
    let mut args = vec!["run", "--grace", "10s"];
    args.extend_from_slice(extra);
    let mut cmd = e.cmd(&args, holder);
    if holder != "agent-1" {
        // One writer per audit file: a second daemon keeps its own.
        cmd.env(
            "KEYTURN_AUDIT_FILE",
            e.home.path().join(format!("{holder}-audit.jsonl")),
        );
    }
    Daemon::spawn(cmd, e.home.path().join(format!("{holder}.log")))
}

/// Waits for `cond` (checked every 100 ms) for up to a minute: a synchronisation point, not
/// a timing assertion.

#[tokio::test]
async fn the_daemon_rotates_never_rotated_policies_at_start_up_and_stops_on_sigterm() {
    let e = AgentEnv::start(7).await;
    for n in ["a", "b", "c"] {
        e.write_generated_policy(n, "");
    }
    let d = start_daemon(&e, "agent-1");
    for n in ["a", "b", "c"] {
        eventually(&format!("policy {n} rotated"), || async {
            e.value_at(n, None).await.is_some()
        })
        .await;
    }
    let (status, log) = d.stop();
    assert!(status.success(), "{status:?}\n{log}");
    for n in ["a", "b", "c"] {
        let (v, ver) = e.value_at(n, None).await.unwrap();
        assert_eq!(ver, 1, "rotated once");
        assert_absent("daemon log", log.as_bytes(), &[&v]);
    }
    e.verify_audit();
}

#[tokio::test]
async fn two_daemons_on_one_policy_set_rotate_each_policy_once() {
    let e = AgentEnv::start(7).await;
    let names: Vec<String> = (0..6).map(|i| format!("p{i}")).collect();
    for n in &names {
        e.write_generated_policy(n, "");
    }
    let d1 = start_daemon(&e, "agent-1");
    let d2 = start_daemon(&e, "agent-2");
    for n in &names {
        eventually(&format!("{n} rotated"), || async {
            e.value_at(n, None).await.is_some()
        })
        .await;
    }
    // Let both settle (each has scanned and acted on every policy), then look.
    eventually("both daemons ready", || async {
        d1.log().contains("policies loaded") && d2.log().contains("policies loaded")
    })
    .await;
    let (s1, l1) = d1.stop();
    let (s2, l2) = d2.stop();
    assert!(s1.success() && s2.success(), "{l1}\n{l2}");
    e.verify_audit();
    let report = keyturn_core::audit::verify(&[e.home.path().join("agent-2-audit.jsonl")]);
    assert!(report.is_ok(), "second daemon's audit chain: {report:?}");
    for n in &names {
        assert_eq!(
            e.value_at(n, None).await.unwrap().1,
            1,
            "{n} was rotated more than once:\n{l1}\n{l2}"
        );
    }
}

#[tokio::test]
async fn a_valid_policy_change_applies_and_an_invalid_one_is_rejected_while_the_old_set_stays() {
    let e = AgentEnv::start(7).await;
    e.write_generated_policy("first", "");
    let d = start_daemon(&e, "agent-1");
    eventually("first rotated", || async {
        e.value_at("first", None).await.is_some()
    })
    .await;
    e.write_generated_policy("second", "");
    eventually("second picked up and rotated", || async {
        e.value_at("second", None).await.is_some()
    })
    .await;
    std::fs::write(e.policies().join("broken.yaml"), "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: { name: broken }\nspec:\n  schedule: \"not cron\"\n").unwrap();
    eventually("the bad file is rejected", || async {
        d.log().contains("policy change rejected")
    })
    .await;
    assert!(
        d.log().contains("broken.yaml"),
        "the error names the file:\n{}",
        d.log()
    );
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    assert_eq!(e.value_at("first", None).await.unwrap().1, 1);
    assert_eq!(e.value_at("second", None).await.unwrap().1, 1);
}

#[tokio::test]
async fn the_daemon_resumes_a_rotation_left_in_flight_by_a_crash() {
    let e = AgentEnv::start(7).await;
    e.write_generated_policy("api", "");
    assert!(e.rotate("api", None).await.status.success());
    e.rotate_killed_after("api", "set").await;
    let pending = e.state("api").await.unwrap()["pending.value"]
        .as_str()
        .unwrap()
        .to_owned();
    let d = start_daemon(&e, "agent-1");
    eventually("the in-flight rotation finished", || async {
        e.value_at("api", None).await.is_some_and(|(_, v)| v == 2)
    })
    .await;
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    assert_eq!(e.value_at("api", None).await.unwrap().0, pending);
    assert!(log.contains("rotate") || log.contains("rotated"), "{log}");
}

async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::get(url).await.ok()?;
    let code = r.status().as_u16();
    Some((code, r.text().await.ok()?))
}

#[tokio::test]
async fn metrics_health_and_readiness_are_served_and_hold_no_secret() {
    let e = AgentEnv::start(7).await;
    e.write_generated_policy("api", "");
    let port = keyturn_tests::process::free_port();
    let listen = format!("127.0.0.1:{port}");
    let d = start_daemon_with(&e, "agent-1", &["--listen", &listen]);
    let base = format!("http://{listen}");
    eventually("api rotated", || async {
        e.value_at("api", None).await.is_some()
    })
    .await;
    eventually("ready", || async {
        get(&format!("{base}/readyz"))
            .await
            .is_some_and(|(c, _)| c == 200)
    })
    .await;
    assert_eq!(get(&format!("{base}/healthz")).await.unwrap().0, 200);
    let counted = r#"keyturn_rotations_total{policy="api",outcome="rotated"} 1"#;
    eventually("the rotation is counted", || async {
        get(&format!("{base}/metrics"))
            .await
            .is_some_and(|(_, t)| t.contains(counted))
    })
    .await;
    let metrics = get(&format!("{base}/metrics")).await.unwrap().1;
    for name in [
        "keyturn_rotation_duration_seconds_count 1",
        r#"keyturn_secret_age_seconds{policy="api"}"#,
        r#"keyturn_next_rotation_timestamp_seconds{policy="api"}"#,
        r#"keyturn_store_requests_total{store="vault-kv",op="promote",outcome="ok"} 1"#,
        "keyturn_audit_events_total",
        "keyturn_audit_write_failures_total 0",
    ] {
        assert!(metrics.contains(name), "missing {name} in:\n{metrics}");
    }
    let (value, _) = e.value_at("api", None).await.unwrap();
    assert_absent("/metrics", metrics.as_bytes(), &[&value]);
    // Prometheus's own checker: the exposition parses, every family has HELP, names follow
    // the conventions.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (dev/setup.sh installs Debian's prometheus)");
    {
        use std::io::Write as _;
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(metrics.as_bytes())
            .unwrap();
    }
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool check metrics: {}\n{metrics}",
        text(&checked)
    );
    let content_type = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(
        content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("application/openmetrics-text")
                || t.starts_with("text/plain; version=0.0.4")),
        "{content_type:?}"
    );
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    // The secret's age comes from the store's record of CURRENT: a restarted daemon shows it
    // at once, without rotating, and it did not restart from zero.
    let d = start_daemon_with(&e, "agent-1", &["--listen", &listen]);
    eventually("ready again", || async {
        get(&format!("{base}/readyz"))
            .await
            .is_some_and(|(c, _)| c == 200)
    })
    .await;
    let metrics = get(&format!("{base}/metrics")).await.unwrap().1;
    assert!(
        metrics.contains(r#"keyturn_rotations_total{policy="api",outcome="rotated"} 0"#),
        "{metrics}"
    );
    let age: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"keyturn_secret_age_seconds{policy="api"} "#))
        .expect("the secret's age after a restart")
        .parse()
        .unwrap();
    assert!(age >= 0.0, "{age}");
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
}

/// How many rotation attempts of `policy` the audit file records (each attempt starts with
/// the intent event of `rotate.create` or `rotate.resume`).
fn attempts(e: &AgentEnv, policy: &str) -> usize {
    std::fs::read_to_string(e.audit())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["resource"].as_str().is_some_and(|r| r.contains(policy))
                && v["outcome"] == "started"
                && matches!(
                    v["action"].as_str(),
                    Some("rotate.create" | "rotate.resume")
                )
        })
        .count()
}

#[tokio::test]
async fn a_rotation_that_keeps_failing_is_retried_under_backoff_not_in_a_loop() {
    // Delivery into a Kubernetes API that answers 403 fails on every attempt. The daemon
    // used to take the failed slot as due again at once: hundreds of attempts a second,
    // each with its audit events, log lines, Vault writes and Kubernetes requests.
    let e = AgentEnv::start(7).await;
    e.write_generated_policy(
        "api",
        "  distribute:\n    - kubernetes: { namespace: shop, secret: api, keys: { TOKEN: value } }\n",
    );
    e.write_generated_policy("other", "");
    let kube = keyturn_tests::kube::KubeStandin::start().await.unwrap();
    kube.deny("*", "secrets");
    let kubeconfig = e.home.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig).unwrap();
    let port = keyturn_tests::process::free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = ["run", "--grace", "10s", "--listen", &listen];
    let log_path = e.home.path().join("daemon.log");
    let mut cmd = e.cmd(&args, "agent-1");
    cmd.env("KUBECONFIG", &kubeconfig);
    let d = Daemon::spawn(cmd, log_path);
    eventually(
        "the first attempt failed and was put under backoff",
        || async { d.log().contains("retrying under backoff") },
    )
    .await;
    // The other policy is not held up by the failing one.
    eventually("other rotated", || async {
        e.value_at("other", None).await.is_some()
    })
    .await;
    let base = format!("http://{listen}");
    let metrics = get(&format!("{base}/metrics")).await.unwrap().1;
    assert!(
        metrics.contains(r#"keyturn_consecutive_failures{policy="api"} 1"#),
        "{metrics}"
    );
    let backoff: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"keyturn_backoff_seconds{policy="api"} "#))
        .expect("a backoff gauge for api")
        .parse()
        .unwrap();
    assert!(
        (29..=45).contains(&backoff),
        "first retry after {backoff} s"
    );
    assert!(
        metrics.contains(r#"keyturn_consecutive_failures{policy="other"} 0"#),
        "{metrics}"
    );
    // Every outcome series exists from the start, at 0 where nothing happened.
    assert!(
        metrics.contains(r#"keyturn_rotations_total{policy="other",outcome="failed"} 0"#),
        "{metrics}"
    );
    assert!(metrics.contains("keyturn_build_info{version="), "{metrics}");
    // The first retry is due no sooner than 30 s after the failure: for the next few
    // seconds the count of attempts stays where it is (it used to grow by hundreds).
    assert_eq!(attempts(&e, "api"), 1, "one attempt so far");
    let requests = kube.requests().len();
    assert!(requests >= 1, "the delivery reached the API server");
    for _ in 0..30 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        attempts(&e, "api"),
        1,
        "retried without backoff:\n{}",
        d.log()
    );
    assert_eq!(
        kube.requests().len(),
        requests,
        "Kubernetes requests during the backoff"
    );
    assert_eq!(
        get(&format!("{base}/readyz")).await.unwrap().0,
        200,
        "a failing policy does not make the daemon unready"
    );
    // The backoff is recorded in the store, where `keyturn status` (another process) and a
    // restarted daemon find it.
    eventually("status shows the backoff", || async {
        let out = e.cmd(&["status"], "agent-1").output().unwrap();
        text(&out).contains("backing off: 1 failed attempt in a row, next try")
    })
    .await;
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    assert_eq!(log.matches("rotation stopped").count(), 1, "{log}");
    // A restart keeps to the recorded retry time instead of trying again at once (a crash
    // loop must not become a request loop).
    let requests = kube.requests().len();
    let log_path = e.home.path().join("daemon-2.log");
    let mut cmd = e.cmd(&["run", "--grace", "10s"], "agent-1");
    cmd.env("KUBECONFIG", &kubeconfig);
    let d = Daemon::spawn(cmd, log_path);
    eventually("the restarted daemon scanned its policies", || async {
        d.log().contains("policies loaded")
    })
    .await;
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    assert_eq!(
        attempts(&e, "api"),
        1,
        "retried at once after a restart:\n{log}"
    );
    assert_eq!(kube.requests().len(), requests, "{log}");
    e.verify_audit();
}

#[tokio::test]
async fn the_daemon_anchors_its_audit_head_so_a_cut_audit_file_is_caught() {
    let e = AgentEnv::start(7).await;
    e.write_generated_policy("api", "");
    let anchor = "vault-kv:secret/keyturn-state/audit-anchor/agent-1";
    let d = start_daemon_with(
        &e,
        "agent-1",
        &["--audit-anchor", anchor, "--audit-anchor-every", "1s"],
    );
    eventually("api rotated", || async {
        e.value_at("api", None).await.is_some()
    })
    .await;
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    // At shutdown the last durable entry is anchored: the whole file verifies against it.
    let audit = e.audit();
    let verify = |path: &std::path::Path| {
        e.cmd(
            &[
                "audit",
                "verify",
                "--anchor",
                anchor,
                path.to_str().unwrap(),
            ],
            "agent-1",
        )
        .output()
        .unwrap()
    };
    let ok = verify(&audit);
    assert!(ok.status.success(), "{}", text(&ok));
    // The attacker without the key can only cut entries off the end; the anchor notices.
    let full = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<&str> = full.lines().collect();
    assert!(lines.len() >= 3, "{full}");
    let cut = e.home.path().join("cut.jsonl");
    std::fs::write(&cut, lines[..lines.len() - 2].join("\n") + "\n").unwrap();
    let caught = verify(&cut);
    assert_eq!(caught.status.code(), Some(1), "{}", text(&caught));
    assert!(text(&caught).contains("anchor"), "{}", text(&caught));
}

/// The audit file is opened before any network call, and the error's kind decides the code:
/// a file the system refuses is 77 (it was 74, like any other audit I/O error), a missing
/// directory stays 74. `/proc/sys/kernel/ostype` is read-only even for root, which the
/// suite may run as, so opening it for writing is refused with `EACCES` either way.
#[test]
fn an_audit_file_the_system_refuses_exits_77_and_a_missing_directory_74() {
    let dir = agent_env::home(9);
    agent_env::write_generated_policy(&dir.path().join("policies"), "api", "");
    // No server: the audit log is opened before Vault is called.
    let vault = "http://127.0.0.1:9";
    for (audit_file, code) in [
        (PathBuf::from("/proc/sys/kernel/ostype"), 77),
        (dir.path().join("no-such-dir/audit.jsonl"), 74),
    ] {
        let out = agent_env::keyturn(&["rotate", "api"], dir.path(), vault, "t")
            .env("KEYTURN_AUDIT_FILE", &audit_file)
            .env("KEYTURN_AUDIT_HMAC_KEY_FILE", dir.path().join("hmac.key"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{}", text(&out));
        assert!(
            text(&out).contains(&audit_file.display().to_string()),
            "names the file: {}",
            text(&out)
        );
    }
}

#[tokio::test]
async fn a_throttled_kubernetes_api_gets_one_request_per_delivery_not_a_retry_storm_inside_it() {
    // kube-rs's default client retries 429/503/504 up to 15 times inside one request, with
    // delays growing toward 1000 s, under keyturn's own delivery retries: one attempt held
    // for minutes and tens of requests per delivery. keyturn's client leaves retrying to
    // keyturn: with `max-attempts: 3`, one attempt is at most 3 deliveries of 1 GET each.
    let e = AgentEnv::start(7).await;
    e.write_generated_policy(
        "api",
        "  max-attempts: 3\n  distribute:\n    - kubernetes: { namespace: shop, secret: api, keys: { TOKEN: value } }\n",
    );
    let kube = keyturn_tests::kube::KubeStandin::start().await.unwrap();
    kube.fail("*", "secrets", 503);
    let kubeconfig = e.home.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig).unwrap();
    let log_path = e.home.path().join("daemon.log");
    let mut cmd = e.cmd(&["run", "--grace", "10s"], "agent-1");
    cmd.env("KUBECONFIG", &kubeconfig);
    let d = Daemon::spawn(cmd, log_path);
    eventually(
        "the first attempt failed and was put under backoff",
        || async { d.log().contains("retrying under backoff") },
    )
    .await;
    let requests = kube.requests();
    eprintln!(
        "fault-counts: kubernetes 503 on secrets, one attempt: {} requests",
        requests.len()
    );
    assert!(
        (1..=3).contains(&requests.len()),
        "{} requests in one attempt: {requests:?}",
        requests.len()
    );
    assert!(requests.iter().all(|r| r.code == 503), "{requests:?}");
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
}

#[tokio::test]
async fn a_listen_address_in_use_exits_64_before_vault_is_asked() {
    let e = AgentEnv::start(7).await;
    e.write_generated_policy("api", "");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    // Vault here is a port that counts connections and never answers.
    let fake_vault = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    fake_vault.set_nonblocking(true).unwrap();
    let out = e
        .cmd(&["run", "--listen", &listen], "agent-1")
        .env(
            "VAULT_ADDR",
            format!("http://{}", fake_vault.local_addr().unwrap()),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(text(&out).contains("--listen"), "{}", text(&out));
    assert!(
        fake_vault.accept().is_err(),
        "Vault was contacted before the listen address was checked"
    );
}

/// Publishes `payload` (file name → content) into `dir` the way the kubelet updates a
/// ConfigMap volume (its AtomicWriter): the files go into a new hidden timestamped directory,
/// a `..data_tmp` symlink to it is renamed over `..data`, then the visible names are made
/// symlinks through `..data` (new ones created, vanished ones removed) and the old
/// timestamped directory is deleted. The first call builds the initial layout.
fn kubelet_publish(dir: &std::path::Path, generation: u32, payload: &[(&str, String)]) {
    use std::os::unix::fs::symlink;
    let ts = format!("..2025_01_01_00_00_{generation:02}.{generation:09}");
    std::fs::create_dir(dir.join(&ts)).unwrap();
    for (name, body) in payload {
        std::fs::write(dir.join(&ts).join(name), body).unwrap();
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    symlink(&ts, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    for (name, _) in payload {
        if std::fs::symlink_metadata(dir.join(name)).is_err() {
            symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
    }
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.starts_with("..") && !payload.iter().any(|(n, _)| *n == name) {
            std::fs::remove_file(dir.join(&name)).unwrap();
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

/// A generated policy's file, as `write_generated_policy` writes it.
fn generated_policy(name: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    agent_env::write_generated_policy(dir.path(), name, "");
    let file = format!("{name}.yaml");
    let body = std::fs::read_to_string(dir.path().join(&file)).unwrap();
    (file, body)
}

/// The `policies` field of every "policies reloaded" line of the daemon's JSON log.
fn reload_counts(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["msg"] == "policies reloaded")
        .filter_map(|v| v["policies"].as_u64())
        .collect()
}

#[tokio::test]
async fn a_configmap_volume_update_swaps_in_the_new_policy_set_once() {
    let e = AgentEnv::start(7).await;
    let dir = e.policies();
    let (f1, b1) = generated_policy("first");
    kubelet_publish(&dir, 1, &[(f1.as_str(), b1)]);
    let d = start_daemon(&e, "agent-1");
    eventually("first rotated", || async {
        e.value_at("first", None).await.is_some()
    })
    .await;
    eventually("start-up finished", || async {
        d.log().contains("policies loaded")
    })
    .await;
    // The new set replaces `first` by `second` and `third`; the hidden timestamped
    // directories hold copies of the same files and must not be read as policies too.
    let (f2, b2) = generated_policy("second");
    let (f3, b3) = generated_policy("third");
    kubelet_publish(&dir, 2, &[(f2.as_str(), b2), (f3.as_str(), b3)]);
    for n in ["second", "third"] {
        eventually(&format!("{n} picked up and rotated"), || async {
            e.value_at(n, None).await.is_some()
        })
        .await;
    }
    eventually("the swap reloaded", || async {
        reload_counts(&d.log()).last() == Some(&2)
    })
    .await;
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    let counts = reload_counts(&log);
    // Every reload saw at most the two visible files (a mid-swap reload may see fewer, never
    // the copies under `..data` or `..2025_…`), and none was rejected as a duplicate.
    assert!(counts.iter().all(|c| *c <= 2), "reloads: {counts:?}\n{log}");
    assert!(!log.contains("policy change rejected"), "{log}");
    assert_eq!(e.value_at("first", None).await.unwrap().1, 1);
    log_lines_have_the_operator_keys(&log);
}

/// The daemon's stderr (not a terminal here, so JSON) is one JSON object per line, each
/// with the keys log pipelines read: `time` (RFC 3339), `level`, `severity` (Cloud Logging's
/// names), `msg` and `logger`.
fn log_lines_have_the_operator_keys(log: &str) {
    let mut seen = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let time = v["time"].as_str().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(time).is_ok(),
            "time: {line}"
        );
        let pair = (v["level"].as_str(), v["severity"].as_str());
        assert!(
            matches!(
                pair,
                (Some("error"), Some("ERROR"))
                    | (Some("warn"), Some("WARNING"))
                    | (Some("info"), Some("INFO"))
                    | (Some("debug" | "trace"), Some("DEBUG"))
            ),
            "level/severity: {line}"
        );
        assert!(v["msg"].is_string() && v["logger"].is_string(), "{line}");
        seen += 1;
    }
    assert!(seen > 3, "too few log lines to check:\n{log}");
}

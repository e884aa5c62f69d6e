//! `keyturn break-glass` end to end against a real OpenBao and PostgreSQL, with an operator
//! token holding only `policies/vault/keyturn-break-glass.hcl` and the daemon running with
//! only `keyturn-agent.hcl`.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use keyturn_core::SecretValue;
use keyturn_core::audit::HmacKey;
use keyturn_tests::agent_env::{self, AgentEnv};
use keyturn_tests::canary::assert_absent;
use keyturn_tests::openbao::OpenBao;
use keyturn_tests::postgres::Postgres as PgServer;
use keyturn_tests::process::eventually;

use crate::support::text;

/// PostgreSQL beside the shared keyturn set-up ([`AgentEnv`], as `agent`, whose token is
/// the daemon's), and an operator token holding only the break-glass policy.
struct Env {
    agent: AgentEnv,
    operator_token: String,
    pg: PgServer,
    admin_password: String,
}

impl Env {
    async fn new(strategy: &str) -> Self {
        let (bao, pg) = tokio::join!(
            OpenBao::start(),
            PgServer::start_with(&[("log_statement", "all")])
        );
        let (bao, pg) = (bao.unwrap(), pg.unwrap());
        let admin_password = crate::support::plant_admin(&bao, &pg).await;
        agent_env::put_repo_policy(
            &bao,
            "keyturn-break-glass",
            "policies/vault/keyturn-break-glass.hcl",
        )
        .await;
        let operator_token = bao.create_token(&["keyturn-break-glass"]).await.unwrap();
        let agent = AgentEnv::new(bao, None, 5).await;
        let users = if strategy == "alternating" {
            "app_a, app_b"
        } else {
            "app_a"
        };
        std::fs::write(
            agent.policy_file("orders-db"),
            format!(
                "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: orders-db }}\nspec:\n  every: 24h\n  store: {{ vault-kv: {{ path: keyturn/orders-db }} }}\n  target:\n    postgres:\n      host: 127.0.0.1\n      port: {}\n      database: postgres\n      admin: {{ vault-kv: {{ path: keyturn/pg-admin }} }}\n      users: [{users}]\n      strategy: {strategy}\n",
                pg.port()
            ),
        )
        .unwrap();
        Self {
            agent,
            operator_token,
            pg,
            admin_password,
        }
    }

    /// The agent's audit file.
    fn audit(&self) -> PathBuf {
        self.agent.audit()
    }

    /// The operator's own audit file (one writer per file: the daemon may be running).
    fn operator_audit(&self) -> PathBuf {
        self.agent.home.path().join("operator-audit.jsonl")
    }

    /// `keyturn ARGS` as the agent's holder with `token` (the agent's, the operator's or a
    /// weaker one), its audit file, and no stdin: break-glass must not wait for a prompt.
    fn cmd(&self, args: &[&str], token: &str) -> Command {
        let mut c = self.agent.cmd(args, "agent-1");
        c.env("VAULT_TOKEN", token).stdin(Stdio::null());
        c
    }

    /// `keyturn ARGS` with the agent's token, run to its end.
    fn as_agent(&self, args: &[&str]) -> Output {
        self.cmd(args, &self.agent.token).output().unwrap()
    }

    /// `keyturn ARGS` with the operator's token and audit file, run to its end.
    fn as_operator(&self, args: &[&str]) -> Output {
        self.cmd(args, &self.operator_token)
            .env("KEYTURN_AUDIT_FILE", self.operator_audit())
            .output()
            .unwrap()
    }

    async fn current(&self) -> (String, String, u64) {
        crate::support::current(&self.agent.bao, "orders-db").await
    }

    async fn state(&self) -> serde_json::Value {
        crate::support::state(&self.agent.bao, "orders-db").await
    }

    async fn logs_in(&self, user: &str, password: &str) -> bool {
        crate::support::logs_in(&self.pg, user, password).await
    }

    fn events(&self) -> Vec<serde_json::Value> {
        [self.audit(), self.operator_audit()]
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap_or_default()
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn break_glass_events(&self) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|e| {
                e["action"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("break-glass."))
            })
            .collect()
    }

    fn assert_clean(&self, outputs: &[&Output], values: &[&str]) {
        for f in [self.audit(), self.operator_audit()] {
            if f.exists() {
                let report = keyturn_core::audit::verify(&[f]);
                assert!(report.is_ok(), "audit chain: {report:?}");
            }
        }
        let mut canaries = values.to_vec();
        canaries.push(&self.admin_password);
        for o in outputs {
            assert_absent("keyturn stdout", &o.stdout, &canaries);
            assert_absent("keyturn stderr", &o.stderr, &canaries);
        }
        for f in [self.audit(), self.operator_audit()] {
            assert_absent(
                "audit log",
                &std::fs::read(f).unwrap_or_default(),
                &canaries,
            );
        }
        assert_absent("PostgreSQL log", self.pg.log().as_bytes(), &canaries);
    }
}

const REASON: &str = "INC-4711 password pasted in a public channel";

async fn revoke_makes_the_leaked_value_useless(strategy: &str) {
    let e = Env::new(strategy).await;
    let first = e.as_agent(&["rotate", "orders-db"]);
    assert!(first.status.success(), "{}", text(&first));
    let (leaked_user, leaked, v1) = e.current().await;
    assert!(e.logs_in(&leaked_user, &leaked).await);

    let out = e.as_operator(&[
        "break-glass",
        "revoke",
        "orders-db",
        "--reason",
        REASON,
        "--yes",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !e.logs_in(&leaked_user, &leaked).await,
        "the leaked value still logs in"
    );
    let (user, password, v2) = e.current().await;
    assert_eq!(v2, v1 + 1);
    assert!(e.logs_in(&user, &password).await, "CURRENT works");
    if strategy == "alternating" {
        assert_ne!(user, leaked_user);
    }
    let bg = e.break_glass_events();
    assert_eq!(bg.len(), 2, "{bg:?}");
    for ev in &bg {
        assert_eq!(ev["action"], "break-glass.revoke");
        assert_eq!(ev["reason"], REASON);
        assert_eq!(ev["actor"]["kind"], "operator", "{ev}");
    }
    assert_eq!(bg[0]["outcome"], "started");
    assert_eq!(bg[1]["outcome"], "ok");
    if strategy == "alternating" {
        assert!(
            bg[1]["detail"]
                .as_str()
                .unwrap()
                .contains("standby role \"app_a\""),
            "{}",
            bg[1]
        );
    }
    e.assert_clean(&[&first, &out], &[&leaked, &password]);
}

#[tokio::test]
async fn revoke_with_alternating_users_kills_the_leaked_value_and_the_standby() {
    revoke_makes_the_leaked_value_useless("alternating").await;
}

#[tokio::test]
async fn revoke_with_a_single_user_kills_the_leaked_value() {
    revoke_makes_the_leaked_value_useless("single").await;
}

#[tokio::test]
async fn reveal_into_a_pipe_is_refused_and_changes_nothing() {
    let e = Env::new("single").await;
    let first = e.as_agent(&["rotate", "orders-db"]);
    assert!(first.status.success(), "{}", text(&first));
    let (_, value, _) = e.current().await;
    let out = e.as_operator(&[
        "break-glass",
        "reveal",
        "orders-db",
        "--reason",
        REASON,
        "--yes",
    ]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(text(&out).contains("pipe"), "{}", text(&out));
    assert!(e.state().await.get("taint_at").is_none());
    assert!(e.break_glass_events().is_empty());
    e.assert_clean(&[&first, &out], &[&value]);
}

#[tokio::test]
async fn usage_errors_change_nothing() {
    let e = Env::new("single").await;
    let first = e.as_agent(&["rotate", "orders-db"]);
    assert!(first.status.success(), "{}", text(&first));
    let before = e.current().await.2;
    for (args, says) in [
        (
            vec![
                "break-glass",
                "rotate",
                "orders-db",
                "--reason",
                " ",
                "--yes",
            ],
            "--reason",
        ),
        (
            vec!["break-glass", "rotate", "nope", "--reason", REASON, "--yes"],
            "no policy named \"nope\"",
        ),
        (
            vec!["break-glass", "rotate", "orders-db", "--reason", REASON],
            "pass --yes",
        ),
    ] {
        let out = e.as_operator(&args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
    assert_eq!(e.current().await.2, before);
    assert!(e.break_glass_events().is_empty());
}

#[tokio::test]
async fn a_token_without_the_break_glass_policy_is_denied_with_the_path_and_nothing_changes() {
    let e = Env::new("single").await;
    let first = e.as_agent(&["rotate", "orders-db"]);
    assert!(first.status.success(), "{}", text(&first));
    let (_, value, before) = e.current().await;
    let weak = e.agent.bao.create_token(&["default"]).await.unwrap();
    let out = e
        .cmd(
            &[
                "break-glass",
                "rotate",
                "orders-db",
                "--reason",
                REASON,
                "--yes",
            ],
            &weak,
        )
        .env("KEYTURN_AUDIT_FILE", e.operator_audit())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(
        text(&out).contains("keyturn-state/keyturn/orders-db")
            || text(&out).contains("keyturn/orders-db"),
        "names the path: {}",
        text(&out)
    );
    assert_eq!(e.current().await.2, before);
    let bg = e.break_glass_events();
    assert_eq!(
        bg.last().unwrap()["outcome"],
        "denied",
        "the attempt is audited, as refused"
    );
    // The same store denial exits 77 from `rotate` and `status` too: one mapping.
    let rotate = e.cmd(&["rotate", "orders-db"], &weak).output().unwrap();
    assert_eq!(rotate.status.code(), Some(77), "rotate: {}", text(&rotate));
    let status = e.cmd(&["status"], &weak).output().unwrap();
    assert_eq!(status.status.code(), Some(77), "status: {}", text(&status));
    assert_eq!(e.current().await.2, before);
    e.assert_clean(&[&first, &out, &rotate, &status], &[&value]);
}

#[tokio::test]
async fn a_reveal_the_store_refuses_is_audited_as_denied_and_reveals_nothing() {
    let e = Env::new("single").await;
    let first = e.as_agent(&["rotate", "orders-db"]);
    assert!(first.status.success(), "{}", text(&first));
    let (_, value, _) = e.current().await;
    // Looks itself up (so the audit records name it) but may not read the policy's store.
    let weak = e.agent.bao.create_token(&["default"]).await.unwrap();
    let file = e.agent.home.path().join("revealed.txt");
    let out = e
        .cmd(
            &[
                "break-glass",
                "reveal",
                "orders-db",
                "--reason",
                REASON,
                "--yes",
                "--to-file",
                file.to_str().unwrap(),
            ],
            &weak,
        )
        .env("KEYTURN_AUDIT_FILE", e.operator_audit())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(!file.exists(), "something was written");
    assert!(e.state().await.get("taint_at").is_none(), "tainted");

    // The attempt is the record: its intent, then the refusal, naming where.
    let bg = e.break_glass_events();
    let outcomes: Vec<&str> = bg
        .iter()
        .map(|ev| ev["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["started", "denied"], "{bg:#?}");
    for ev in &bg {
        assert_eq!(ev["action"], "break-glass.reveal");
        assert_eq!(ev["reason"], REASON);
        assert_eq!(ev["actor"]["kind"], "operator", "{ev}");
        assert!(ev.get("value_hmac").is_none(), "nothing was read: {ev}");
    }
    let detail = bg[1]["detail"].as_str().unwrap();
    assert!(
        detail.contains("keyturn/orders-db"),
        "names the path: {detail}"
    );
    e.assert_clean(&[&first, &out], &[&value]);
}

#[tokio::test]
async fn break_glass_waits_for_a_live_rotation_and_takes_over_an_expired_one_without_double_rotating()
 {
    let e = Env::new("alternating").await;
    let first = e.as_agent(&["rotate", "orders-db"]);
    assert!(first.status.success(), "{}", text(&first));
    let v1 = e.current().await.2;
    // The daemon's rotation dies after `set`, holding a 4 s lease.
    let crashed = e
        .cmd(&["rotate", "orders-db"], &e.agent.token)
        .env("KEYTURN_CRASH_AFTER", "set")
        .env("KEYTURN_LEASE", "4s")
        .output()
        .unwrap();
    assert_eq!(crashed.status.signal(), Some(9), "{}", text(&crashed));
    let pending = e.state().await["pending.password"]
        .as_str()
        .unwrap()
        .to_owned();

    let busy = e.as_operator(&[
        "break-glass",
        "rotate",
        "orders-db",
        "--reason",
        REASON,
        "--yes",
        "--wait",
        "1s",
    ]);
    assert_eq!(busy.status.code(), Some(75), "{}", text(&busy));
    assert!(text(&busy).contains("agent-1"), "{}", text(&busy));
    assert_eq!(e.current().await.2, v1, "nothing rotated while it was held");
    assert_eq!(e.state().await["holder"], "agent-1");

    let took_over = e.as_operator(&[
        "break-glass",
        "rotate",
        "orders-db",
        "--reason",
        REASON,
        "--yes",
        "--wait",
        "60s",
    ]);
    assert!(took_over.status.success(), "{}", text(&took_over));
    let (user, password, v2) = e.current().await;
    assert_eq!(
        v2,
        v1 + 2,
        "the stuck rotation finished once, then one fresh rotation"
    );
    assert_ne!(password, pending, "the break-glass value is a fresh one");
    assert!(e.logs_in(&user, &password).await);
    assert!(e.state().await.get("rotation_id").is_none());
    assert!(
        e.events()
            .iter()
            .any(|ev| ev["action"] == "rotate.resume" && ev["actor"]["kind"] == "operator"),
        "the takeover is audited as the operator"
    );
    e.assert_clean(
        &[&first, &crashed, &busy, &took_over],
        &[&pending, &password],
    );
}

fn metric(listen: &str, name: &str) -> f64 {
    let Ok(mut s) = std::net::TcpStream::connect(listen) else {
        return 0.0;
    };
    use std::io::{Read, Write};
    let _ = write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: {listen}\r\nConnection: close\r\n\r\n"
    );
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_reveal_goes_to_a_private_file_is_audited_by_hmac_and_the_daemon_rotates_it_after_the_ttl()
 {
    let e = Env::new("alternating").await;
    let listen = format!("127.0.0.1:{}", keyturn_tests::process::free_port());
    let daemon = Daemon(
        e.cmd(
            &["run", "--listen", &listen, "--break-glass-poll", "300ms"],
            &e.agent.token,
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(e.agent.home.path().join("daemon.log")).unwrap())
        .spawn()
        .unwrap(),
    );
    // The never-rotated policy is rotated at start-up.
    eventually("the first rotation", || async {
        metric(&listen, "keyturn_rotations_total{") >= 1.0
    })
    .await;
    let (_, revealed, v1) = e.current().await;

    let file = e.agent.home.path().join("revealed.txt");
    let out = e.as_operator(&[
        "break-glass",
        "reveal",
        "orders-db",
        "--reason",
        REASON,
        "--yes",
        "--ttl",
        "2s",
        "--to-file",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o400
    );
    assert!(std::fs::read_to_string(&file).unwrap().contains(&revealed));
    let rotate_after = e.state().await["taint_rotate_after"]
        .as_str()
        .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap())
        .expect("tainted");
    let again = e.as_operator(&[
        "break-glass",
        "reveal",
        "orders-db",
        "--reason",
        REASON,
        "--yes",
        "--to-file",
        file.to_str().unwrap(),
    ]);
    assert_ne!(
        again.status.code(),
        Some(0),
        "an existing file is never overwritten"
    );

    // The audit record carries the value's HMAC: "who saw this secret" finds the reveal.
    let key = HmacKey::load(&e.agent.home.path().join("hmac.key")).unwrap();
    let hmac = key.hmac_hex(&SecretValue::from_str_copy(&revealed));
    assert!(
        e.events()
            .iter()
            .any(|ev| ev["action"] == "break-glass.reveal" && ev["value_hmac"] == hmac.as_str()),
        "the reveal is findable by the value's HMAC"
    );
    // And through the command an investigator runs: the leaked value on stdin.
    let mut search = e
        .cmd(
            &[
                "audit",
                "search",
                "--value-hmac",
                e.operator_audit().to_str().unwrap(),
            ],
            &e.operator_token,
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = search.stdin.take().unwrap();
        stdin.write_all(revealed.as_bytes()).unwrap();
    }
    let found = search.wait_with_output().unwrap();
    assert!(found.status.success(), "{}", text(&found));
    assert!(
        String::from_utf8_lossy(&found.stdout).contains("break-glass.reveal"),
        "{}",
        text(&found)
    );

    // The daemon learns of it from the journal and rotates when the TTL has passed.
    eventually("the revealed value to be rotated after its TTL", || async {
        e.current().await.2 > v1 && e.state().await.get("taint_at").is_none()
    })
    .await;
    // Judged by the rotation's own recorded start, not by a clock in the test.
    let started = e.state().await["last_started_at"]
        .as_str()
        .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap())
        .expect("a last rotation");
    assert!(
        started >= rotate_after,
        "rotated at {started}, before the TTL ({rotate_after})"
    );
    assert_eq!(
        metric(&listen, "keyturn_breakglass_total{action=\"reveal\"}"),
        1.0
    );
    drop(daemon);
    let (_, now, _) = e.current().await;
    e.assert_clean(&[&out, &again, &found], &[&now, &revealed]);
}

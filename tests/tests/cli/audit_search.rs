//! `keyturn audit search`, `keyturn audit verify --anchor` (against a real OpenBao),
//! `keyturn completions` and `keyturn man` as real processes.
//!
//! The audit log is a real hash-chained one, written by `keyturn_core::audit::AuditLog` with a
//! known key; some of its events carry the HMAC of a planted canary value, the way the init
//! container and the rotation engine record the values they touch.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use keyturn_core::SecretValue;
use std::sync::Arc;

use keyturn_core::audit::{
    Actor, Anchor, AnchorError, AnchorHead, AuditLog, AuditLogOptions, ChainHash, Entry, HmacKey,
    Outcome, anchor::Recorded,
};
use keyturn_tests::canary::{assert_absent, canary};
use keyturn_tests::openbao::OpenBao;

/// A chained log of eight events in two batches, `boundary` between them:
///
/// | seq | actor | action | resource | rotation | value |
/// |---|---|---|---|---|---|
/// | 0 | agent keyturn-0 | rotate.create | policy/orders | r-1 | planted |
/// | 1 | agent keyturn-0 | rotate.set | policy/orders | r-1 | planted |
/// | 2 | sa shop/orders-api | secret.read | secret/data/orders/db | | planted |
/// | 3 | agent keyturn-0 | rotate.create | policy/billing | r-2 | other |
/// | 4 | sa shop/billing | secret.read | secret/data/billing/db | | other |
/// | — boundary — |
/// | 5 | operator alice | break-glass.reveal | policy/orders | | planted |
/// | 6 | agent keyturn-0 | rotate.done | policy/orders | r-1 | |
/// | 7 | agent keyturn-0 | rotate.create | policy/orders | r-3 | other |
struct Fixture {
    dir: tempfile::TempDir,
    planted: String,
    other: String,
    boundary: DateTime<Utc>,
}

const ALL: [u64; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
const TOUCHED_THE_PLANTED_VALUE: [u64; 4] = [0, 1, 2, 5];

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hmac.key"), [7u8; 32]).unwrap();
        let mut f = Self {
            dir,
            planted: canary("search-planted"),
            other: canary("search-other"),
            boundary: Utc::now(),
        };
        f.write_log();
        f
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("hmac.key")
    }

    fn audit(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    fn write_log(&mut self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let log = AuditLog::open(
            AuditLogOptions::new(HmacKey::load(&self.key()).unwrap()).file(self.audit()),
        )
        .unwrap();
        let planted = SecretValue::from_str_copy(&self.planted);
        let other = SecretValue::from_str_copy(&self.other);
        let agent = || Actor::agent("keyturn-0");
        let orders_api =
            || Actor::service_account("shop", "orders-api").with_pod("orders-api-7f9c");
        let record = |b: keyturn_core::audit::EventBuilder<'_>| {
            rt.block_on(log.record(b.build())).unwrap();
        };

        record(
            log.event(agent(), "rotate.create", "policy/orders")
                .rotation_id("r-1")
                .value(&planted),
        );
        record(
            log.event(agent(), "rotate.set", "policy/orders")
                .rotation_id("r-1")
                .value(&planted),
        );
        record(
            log.event(orders_api(), "secret.read", "secret/data/orders/db")
                .request_id("req-1")
                .value(&planted),
        );
        record(
            log.event(agent(), "rotate.create", "policy/billing")
                .rotation_id("r-2")
                .value(&other),
        );
        record(
            log.event(
                Actor::service_account("shop", "billing"),
                "secret.read",
                "secret/data/billing/db",
            )
            .value(&other),
        );

        // Entries carry milliseconds: leave a clear gap on each side of the boundary.
        std::thread::sleep(Duration::from_millis(20));
        self.boundary = Utc::now();
        std::thread::sleep(Duration::from_millis(20));

        record(
            log.event(
                Actor::operator("alice").with_entity("ent-9"),
                "break-glass.reveal",
                "policy/orders",
            )
            .reason("INC-1234: checking the leaked credential")
            .value(&planted),
        );
        record(
            log.event(agent(), "rotate.done", "policy/orders")
                .rotation_id("r-1")
                .outcome(Outcome::Ok),
        );
        record(
            log.event(agent(), "rotate.create", "policy/orders")
                .rotation_id("r-3")
                .value(&other),
        );
        let report = keyturn_core::audit::verify(&[self.audit()]);
        assert!(report.is_ok(), "the fixture's chain: {report:?}");
    }

    fn keyturn(&self, args: &[&str]) -> Command {
        let mut c = Command::new(keyturn_tests::bins::keyturn());
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("KEYTURN_AUDIT_HMAC_KEY_FILE", self.key())
            .env("KEYTURN_LOG", "debug")
            .stdin(Stdio::null());
        c
    }

    /// `keyturn audit search AUDIT ARGS…`, with `stdin` piped in when given.
    fn search(&self, args: &[&str], stdin: Option<&[u8]>) -> Run {
        let audit = self.audit();
        let mut all = vec!["audit", "search", audit.to_str().unwrap()];
        all.extend_from_slice(args);
        self.run(self.keyturn(&all), stdin)
    }

    fn run(&self, mut cmd: Command, stdin: Option<&[u8]>) -> Run {
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(bytes) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(bytes).unwrap();
        }
        let run = Run::from(child.wait_with_output().unwrap());
        // Whatever the command, the planted value never shows.
        assert_absent("stdout", run.stdout.as_bytes(), &[&self.planted]);
        assert_absent("stderr", run.stderr.as_bytes(), &[&self.planted]);
        run
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().expect("exited"),
            stdout: String::from_utf8(o.stdout).unwrap(),
            stderr: String::from_utf8(o.stderr).unwrap(),
        }
    }
}

impl Run {
    /// The sequence numbers of the readable lines printed (`time  #seq  …`).
    fn seqs(&self) -> Vec<u64> {
        assert_eq!(self.code, 0, "stderr: {}", self.stderr);
        self.stdout
            .lines()
            .map(|l| {
                let seq = l.split("  ").nth(1).and_then(|s| s.strip_prefix('#'));
                seq.and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("not a tail line: {l}"))
            })
            .collect()
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[test]
fn policy_keeps_that_policys_entries_in_the_same_form_as_tail() {
    let f = Fixture::new();
    let r = f.search(&["--policy", "orders"], None);
    assert_eq!(r.seqs(), [0, 1, 5, 6, 7]);
    for line in r.stdout.lines() {
        assert!(line.contains("  policy/orders  "), "{line}");
    }

    // Line for line what `audit tail` prints for the same entries.
    let audit = f.audit();
    let tail = f.run(
        f.keyturn(&["audit", "tail", "-n", "100", audit.to_str().unwrap()]),
        None,
    );
    assert_eq!(tail.code, 0, "{}", tail.stderr);
    let tail_lines: Vec<&str> = tail.stdout.lines().collect();
    assert_eq!(tail_lines.len(), ALL.len());
    for line in r.stdout.lines() {
        assert!(tail_lines.contains(&line), "{line} is not a tail line");
    }

    assert_eq!(f.search(&["--policy", "billing"], None).seqs(), [3]);
    // No filter at all: everything.
    assert_eq!(f.search(&[], None).seqs(), ALL);
}

#[test]
fn actions_match_exactly_or_by_a_trailing_star_prefix_and_filters_and_together() {
    let f = Fixture::new();
    let seqs = |args: &[&str]| f.search(args, None).seqs();
    assert_eq!(seqs(&["--action", "rotate.create"]), [0, 3, 7]);
    assert_eq!(seqs(&["--action", "rotate.*"]), [0, 1, 3, 6, 7]);
    assert_eq!(seqs(&["--action", "break-glass.*"]), [5]);
    assert_eq!(seqs(&["--action", "secret.read"]), [2, 4]);
    assert_eq!(seqs(&["--action", "rotate.*", "--policy", "billing"]), [3]);
    assert_eq!(
        seqs(&["--action", "rotate.*", "--rotation-id", "r-1"]),
        [0, 1, 6]
    );
    assert_eq!(seqs(&["--actor", "shop/orders-api"]), [2]);
    assert_eq!(seqs(&["--actor", "alice"]), [5]);
    assert_eq!(
        seqs(&["--actor", "keyturn-0", "--policy", "orders"]),
        [0, 1, 6, 7]
    );
}

#[test]
fn since_and_until_split_the_log_at_a_time() {
    let f = Fixture::new();
    let boundary = rfc3339(f.boundary);
    let seqs = |args: &[&str]| f.search(args, None).seqs();
    assert_eq!(seqs(&["--since", &boundary]), [5, 6, 7]);
    assert_eq!(seqs(&["--until", &boundary]), [0, 1, 2, 3, 4]);
    assert_eq!(
        seqs(&["--since", &boundary, "--action", "rotate.*"]),
        [6, 7]
    );
    // Relative: everything happened within the last hour, and nothing before it.
    assert_eq!(seqs(&["--since", "1h"]), ALL);
    let r = f.search(&["--until", "1h"], None);
    assert_eq!((r.code, r.stdout.as_str()), (1, ""), "{}", r.stderr);
    // Nothing after tomorrow.
    let tomorrow = rfc3339(Utc::now() + chrono::Duration::days(1));
    assert_eq!(f.search(&["--since", &tomorrow], None).code, 1);
}

#[test]
fn value_hmac_finds_exactly_the_events_that_touched_the_planted_value_and_never_prints_it() {
    let f = Fixture::new();
    // As `echo "$value" | keyturn audit search --value-hmac`: the newline is dropped.
    let piped = format!("{}\n", f.planted);
    let r = f.search(&["--value-hmac"], Some(piped.as_bytes()));
    assert_eq!(r.seqs(), TOUCHED_THE_PLANTED_VALUE);
    // Who saw it: the agent that made it, the workload that read it, the operator.
    assert!(
        r.stdout
            .contains("service-account shop/orders-api pod=orders-api-7f9c")
    );
    assert!(r.stdout.contains("operator alice entity=ent-9"));

    // Without the newline too; and with other filters.
    let r = f.search(
        &["--value-hmac", "--policy", "orders"],
        Some(f.planted.as_bytes()),
    );
    assert_eq!(r.seqs(), [0, 1, 5]);

    // As JSON lines: exactly those entries, each with the same value_hmac.
    let r = f.search(&["--value-hmac", "--json"], Some(piped.as_bytes()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let entries: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, TOUCHED_THE_PLANTED_VALUE);
    let hmac = entries[0]["value_hmac"].as_str().unwrap();
    assert!(entries.iter().all(|e| e["value_hmac"] == hmac));

    // The other value's events are the others that carry a value.
    assert_eq!(
        f.search(&["--value-hmac"], Some(f.other.as_bytes())).seqs(),
        [3, 4, 7]
    );

    // A value nobody touched: nothing, exit 1, and that value is not printed either.
    let never = canary("search-never");
    let r = f.search(&["--value-hmac"], Some(never.as_bytes()));
    assert_eq!((r.code, r.stdout.as_str()), (1, ""), "{}", r.stderr);
    assert_absent("stderr", r.stderr.as_bytes(), &[&never]);
    assert!(r.stderr.contains("key with id"), "{}", r.stderr);

    // The value with a second newline is another value.
    let twice = format!("{}\n\n", f.planted);
    assert_eq!(f.search(&["--value-hmac"], Some(twice.as_bytes())).code, 1);
}

#[test]
fn value_hmac_finds_a_multi_field_read_by_any_one_of_its_fields() {
    // Recorded as keyturn-init records the read of a secret with several fields: the HMAC of
    // the whole object as value_hmac, and each field's in field_hmacs.
    let f = Fixture::new();
    let path = f.dir.path().join("multi.jsonl");
    let user = canary("search-field-user");
    let pass = canary("search-field-pass");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let log =
        AuditLog::open(AuditLogOptions::new(HmacKey::load(&f.key()).unwrap()).file(&path)).unwrap();
    let (u, p) = (
        SecretValue::from_str_copy(&user),
        SecretValue::from_str_copy(&pass),
    );
    let object = SecretValue::from_str_copy(&format!(
        "{{\"password\":\"{pass}\",\"username\":\"{user}\"}}"
    ));
    let orders_api = Actor::service_account("shop", "orders-api");
    for event in [
        log.event(orders_api.clone(), "secret.read", "secret/data/orders/db")
            .field_values([("password", &p), ("username", &u)])
            .value(&object)
            .build(),
        log.event(orders_api, "secret.read", "secret/data/orders/other")
            .value(&u)
            .build(),
    ] {
        rt.block_on(log.record(event)).unwrap();
    }
    drop(log);

    let search = |value: &str| {
        let cmd = f.keyturn(&["audit", "search", path.to_str().unwrap(), "--value-hmac"]);
        let r = f.run(cmd, Some(value.as_bytes()));
        assert_absent("stdout", r.stdout.as_bytes(), &[&user, &pass]);
        assert_absent("stderr", r.stderr.as_bytes(), &[&user, &pass]);
        r
    };
    assert_eq!(search(&pass).seqs(), [0], "one field of the read");
    assert_eq!(search(&user).seqs(), [0, 1], "the other field, read twice");
    assert_eq!(search(&format!("{pass}{user}")).code, 1);
    let line = std::fs::read_to_string(&path).unwrap();
    assert!(line.contains("\"field_hmacs\":{\"password\":\""), "{line}");
}

#[test]
fn the_same_value_under_another_key_matches_nothing() {
    let f = Fixture::new();
    let other_key = f.dir.path().join("other.key");
    std::fs::write(&other_key, [8u8; 32]).unwrap();
    let r = f.search(
        &[
            "--value-hmac",
            "--audit-hmac-key-file",
            other_key.to_str().unwrap(),
        ],
        Some(f.planted.as_bytes()),
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
}

#[test]
fn value_hmac_refuses_empty_stdin_and_a_missing_key_file_as_usage_errors() {
    let f = Fixture::new();
    for empty in [None, Some(&b""[..]), Some(&b"\n"[..])] {
        let r = f.search(&["--value-hmac"], empty);
        assert_eq!(r.code, 64, "{:?}: {}", empty, r.stderr);
        assert!(r.stderr.contains("stdin is empty"), "{}", r.stderr);
        assert_eq!(r.stdout, "");
    }

    let missing = f.dir.path().join("no-such.key");
    let r = f.search(
        &[
            "--value-hmac",
            "--audit-hmac-key-file",
            missing.to_str().unwrap(),
        ],
        Some(f.planted.as_bytes()),
    );
    assert_eq!(r.code, 64, "{}", r.stderr);
    assert!(r.stderr.contains("no-such.key"), "{}", r.stderr);

    // No key at all, and no per-install key to fall back on.
    let audit = f.audit();
    let mut cmd = f.keyturn(&["audit", "search", "--value-hmac", audit.to_str().unwrap()]);
    cmd.env_remove("KEYTURN_AUDIT_HMAC_KEY_FILE");
    let r = f.run(cmd, Some(f.planted.as_bytes()));
    assert_eq!(r.code, 64, "{}", r.stderr);
    assert!(
        r.stderr.contains("KEYTURN_AUDIT_HMAC_KEY_FILE"),
        "{}",
        r.stderr
    );
    assert!(
        !f.dir.path().join(".local/state/keyturn").exists(),
        "search never creates a key"
    );
}

#[test]
fn usage_errors_exit_64_and_a_missing_file_66() {
    let f = Fixture::new();
    for args in [
        &["--since", "yesterday"][..],
        &["--until", "2025-13-01T00:00:00Z"],
        &["--action", "*.read"],
        &["--since", "1h", "--until", "2h"],
    ] {
        let r = f.search(args, None);
        assert_eq!(r.code, 64, "{args:?}: {}", r.stderr);
        assert_eq!(r.stdout, "");
    }
    let r = f.search(&["--since", "yesterday"], None);
    assert!(r.stderr.contains("RFC 3339"), "{}", r.stderr);

    let r = f.run(f.keyturn(&["audit", "search"]), None);
    assert_eq!(r.code, 64, "a FILE is required: {}", r.stderr);

    let missing = f.dir.path().join("missing.jsonl");
    let audit = f.audit();
    let r = f.run(
        f.keyturn(&[
            "audit",
            "search",
            audit.to_str().unwrap(),
            missing.to_str().unwrap(),
        ]),
        None,
    );
    assert_eq!(r.code, 66, "{}", r.stderr);
    assert!(r.stderr.contains("missing.jsonl"), "{}", r.stderr);
    assert_eq!(r.stdout, "", "nothing is printed before every file is open");
}

#[test]
fn a_broken_line_is_reported_by_file_and_line_and_the_search_goes_on() {
    let f = Fixture::new();
    let text = std::fs::read_to_string(f.audit()).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(2, "{\"not\": \"an entry\"}");
    lines.insert(5, "garbage");
    let broken = f.dir.path().join("broken.jsonl");
    std::fs::write(&broken, lines.join("\n") + "\n{\"torn").unwrap();

    // Two files, searched in order: the intact log, then the broken copy.
    let audit = f.audit();
    let r = f.run(
        f.keyturn(&[
            "audit",
            "search",
            "--action",
            "rotate.*",
            audit.to_str().unwrap(),
            broken.to_str().unwrap(),
        ]),
        None,
    );
    assert_eq!(r.seqs(), [0, 1, 3, 6, 7, 0, 1, 3, 6, 7]);
    let b = broken.display();
    let reported: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("not an audit event"))
        .collect();
    assert_eq!(
        reported,
        [
            format!("{b}:3: not an audit event"),
            format!("{b}:6: not an audit event"),
            format!("{b}:11: not an audit event"),
        ]
    );
}

#[test]
fn json_output_is_the_lines_as_written() {
    let f = Fixture::new();
    let text = std::fs::read_to_string(f.audit()).unwrap();
    let line = |seq: usize| format!("{}\n", text.lines().nth(seq).unwrap());
    let r = f.search(&["--json", "--policy", "billing"], None);
    assert_eq!((r.code, r.stdout), (0, line(3)), "{}", r.stderr);
    let r = f.search(&["--json", "--value-hmac"], Some(f.other.as_bytes()));
    assert_eq!(
        (r.code, r.stdout),
        (0, line(3) + &line(4) + &line(7)),
        "{}",
        r.stderr
    );
}

#[test]
fn bash_completions_name_keyturn_and_its_subcommands() {
    let f = Fixture::new();
    let r = f.run(f.keyturn(&["completions", "bash"]), None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("keyturn"), "{}", r.stdout);
    assert!(r.stdout.contains("search"), "audit search is completed");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let r = f.run(f.keyturn(&["completions", shell]), None);
        assert_eq!(r.code, 0, "{shell}: {}", r.stderr);
        assert!(r.stdout.contains("keyturn"), "{shell}");
    }
    assert_eq!(f.run(f.keyturn(&["completions", "tcsh"]), None).code, 64);
}

#[test]
fn man_prints_keyturn_1_and_man_out_writes_a_page_per_subcommand() {
    let f = Fixture::new();
    let r = f.run(f.keyturn(&["man"]), None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains(".TH keyturn 1"), "{}", r.stdout);

    let dir = f.dir.path().join("man/man1");
    let r = f.run(f.keyturn(&["man", "--out", dir.to_str().unwrap()]), None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for page in [
        "keyturn.1",
        "keyturn-audit.1",
        "keyturn-audit-search.1",
        "keyturn-rotate.1",
    ] {
        let path = dir.join(page);
        assert!(path.is_file(), "{page} written; stdout: {}", r.stdout);
        assert!(
            r.stdout.contains(&path.display().to_string()),
            "{page} listed"
        );
    }
    let audit = std::fs::read_to_string(dir.join("keyturn-audit.1")).unwrap();
    assert!(audit.contains("keyturn\\-audit"), "{audit}");
    assert!(audit.contains("search"), "{audit}");
    // keyturn-init's page comes from its own definition, with the sections keyturn adds.
    let init = std::fs::read_to_string(dir.join("keyturn-init.1")).unwrap();
    assert!(r.stdout.contains("keyturn-init.1"), "{}", r.stdout);
    for section in [".SH EXAMPLES", ".SH ENVIRONMENT", ".SH \"EXIT STATUS\""] {
        assert!(init.contains(section), "{section}");
    }
    assert!(init.contains("\\fBKEYTURN_INIT_MANIFEST\\fR"), "{init}");
}

#[test]
fn an_unknown_log_format_is_a_usage_error_naming_the_flag() {
    let f = Fixture::new();
    let r = f.run(f.keyturn(&["--log-format", "xml", "man"]), None);
    assert_eq!(r.code, 64, "{}", r.stderr);
    assert!(r.stderr.starts_with("keyturn: "), "{}", r.stderr);
    assert!(r.stderr.contains("--log-format"), "{}", r.stderr);
    let mut c = f.keyturn(&["man"]);
    c.env("KEYTURN_LOG_FORMAT", "logfmt");
    let r = f.run(c, None);
    assert_eq!(r.code, 64, "{}", r.stderr);
    assert!(r.stderr.contains("--log-format"), "{}", r.stderr);
    for format in ["json", "text"] {
        let r = f.run(f.keyturn(&["--log-format", format, "man"]), None);
        assert_eq!(r.code, 0, "{format}: {}", r.stderr);
    }
}

/// The anchor in a real OpenBao: recorded by the writer's [`Anchor`], read by
/// `keyturn audit verify --anchor`, which then reports a deleted tail and a replaced log.
#[test]
fn verify_with_an_openbao_anchor_reports_a_deleted_tail_and_a_replaced_log() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bao = rt.block_on(OpenBao::start()).unwrap();
    let f = Fixture::new();
    let location = "vault-kv:secret/keyturn/audit-anchor/test";
    let key = HmacKey::load(&f.key()).unwrap();
    let anchor = Anchor::new(
        Arc::new(bao.root_client().unwrap()),
        location.parse().unwrap(),
        key.chain_key(),
    );
    let head = |n: usize| {
        let text = std::fs::read_to_string(f.audit()).unwrap();
        let e = Entry::parse(text.lines().nth(n).unwrap().as_bytes()).unwrap();
        AnchorHead {
            seq: e.seq,
            hash: e.hash,
        }
    };
    let last = head(7);

    // The writer's side: it moves forward only, and notices a chain that is not the anchored
    // one.
    assert!(matches!(
        rt.block_on(anchor.record(head(5))).unwrap(),
        Recorded::Advanced { .. }
    ));
    assert!(matches!(
        rt.block_on(anchor.record(last)).unwrap(),
        Recorded::Advanced { .. }
    ));
    assert_eq!(
        rt.block_on(anchor.record(last)).unwrap(),
        Recorded::AlreadyThere
    );
    let e = rt.block_on(anchor.record(head(6))).unwrap_err();
    assert!(
        matches!(
            e,
            AnchorError::Behind {
                anchored_seq: 7,
                seq: 6,
                ..
            }
        ),
        "{e}"
    );
    let forked = AnchorHead {
        seq: 7,
        hash: ChainHash::of(b"another chain"),
    };
    let e = rt.block_on(anchor.record(forked)).unwrap_err();
    assert!(matches!(e, AnchorError::Diverged { seq: 7, .. }), "{e}");
    assert_eq!(rt.block_on(anchor.read()).unwrap(), last);

    let verify = |anchor_at: &str| {
        let audit = f.audit();
        let mut cmd = f.keyturn(&[
            "audit",
            "verify",
            "--anchor",
            anchor_at,
            audit.to_str().unwrap(),
        ]);
        cmd.env("VAULT_ADDR", bao.addr())
            .env("VAULT_TOKEN", bao.root_token());
        f.run(cmd, None)
    };
    let ok = verify(location);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    assert!(
        ok.stdout
            .contains(&format!("; the anchor {location} (seq 7) matches")),
        "{}",
        ok.stdout
    );
    assert!(!ok.stdout.contains(&bao.root_token().to_string()));

    // Nothing recorded at the location given: 66, as for a secret path that does not exist.
    let none = verify("vault-kv:secret/keyturn/audit-anchor/none");
    assert_eq!(none.code, 66, "{}", none.stderr);
    assert!(
        none.stderr.contains("nothing is recorded there"),
        "{}",
        none.stderr
    );

    // Someone who can write the anchor's path but has no key moves it back: its MAC fails.
    rt.block_on(bao.api(
        "POST",
        "secret/data/keyturn/audit-anchor/test",
        Some(serde_json::json!({ "data": {
            "seq": "5",
            "hash": head(5).hash.to_hex(),
            "mac": "0".repeat(64),
            "key_id": key.id(),
        }})),
    ))
    .unwrap();
    let moved = verify(location);
    assert_eq!(moved.code, 1, "{}", moved.stderr);
    assert!(moved.stderr.contains("altered"), "{}", moved.stderr);
    rt.block_on(bao.api("DELETE", "secret/metadata/keyturn/audit-anchor/test", None))
        .unwrap();
    rt.block_on(anchor.record(last)).unwrap();

    // The last two entries deleted: every remaining MAC is valid, only the anchor shows it.
    let full = std::fs::read_to_string(f.audit()).unwrap();
    let kept: String = full.split_inclusive('\n').take(6).collect();
    std::fs::write(f.audit(), &kept).unwrap();
    let plain = f.run(
        f.keyturn(&["audit", "verify", f.audit().to_str().unwrap()]),
        None,
    );
    assert_eq!(plain.code, 0, "{}", plain.stdout);
    let cut = verify(location);
    assert_eq!(cut.code, 1, "{}", cut.stderr);
    assert!(
        cut.stdout.starts_with(&format!(
            "broken: seq 6 at {}:7: truncated: the anchor records seq 7, but the files end at \
             seq 5",
            f.audit().display()
        )),
        "{}",
        cut.stdout
    );

    // The whole log replaced by a longer one written under the same key: the anchor shows it.
    std::fs::remove_file(f.audit()).unwrap();
    let log =
        AuditLog::open(AuditLogOptions::new(HmacKey::load(&f.key()).unwrap()).file(f.audit()))
            .unwrap();
    for i in 0..10 {
        let event = log
            .event(
                Actor::agent("keyturn-0"),
                "rotate.create",
                format!("policy/p{i}"),
            )
            .build();
        rt.block_on(log.record(event)).unwrap();
    }
    drop(log);
    let replaced = verify(location);
    assert_eq!(replaced.code, 1, "{}", replaced.stderr);
    assert!(
        replaced.stdout.starts_with("broken: seq 7 at ")
            && replaced.stdout.contains("replaced or rewritten"),
        "{}",
        replaced.stdout
    );
}

//! `keyturn audit verify` and `keyturn audit tail`, run as the real binary against logs written
//! by `keyturn_core::audit::AuditLog`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

use keyturn_core::SecretValue;
use keyturn_core::audit::{
    Actor, AuditLog, AuditLogOptions, ChainHash, Entry, HmacKey, Outcome, RecordedEvent,
};

const CANARY: &str = "canary-cli-0d9e4b71-must-not-appear";

/// The audit key every log here is written with, and that `keyturn` is given through
/// `KEYTURN_AUDIT_HMAC_KEY_FILE`.
const KEY_BYTES: [u8; 32] = [0x3c; 32];

fn key_file() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("audit-hmac.key"), KEY_BYTES).unwrap();
        dir
    });
    // A `static` is never dropped, so the directory outlives every test.
    Box::leak(dir.path().join("audit-hmac.key").into_boxed_path())
}

fn key() -> HmacKey {
    HmacKey::load(key_file()).unwrap()
}

/// `keyturn ARGS`, with the audit key and nothing else from the environment that matters.
fn keyturn(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    keyturn_cmd(args)
        .env("KEYTURN_AUDIT_HMAC_KEY_FILE", key_file())
        .output()
        .expect("run keyturn")
}

/// `keyturn ARGS` without any audit key: no key file, and no place for a per-install one.
fn keyturn_cmd(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keyturn"));
    c.args(args.iter().map(|a| a.as_ref()))
        .env_remove("KEYTURN_LOG")
        .env_remove("KEYTURN_AUDIT_HMAC_KEY_FILE")
        .env_remove("KEYTURN_STATE_DIR")
        .env_remove("XDG_STATE_HOME")
        .env_remove("HOME");
    c
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn open_log(path: &Path, previous: Option<&Path>) -> AuditLog {
    open_log_with(path, previous, key())
}

fn open_log_with(path: &Path, previous: Option<&Path>, key: HmacKey) -> AuditLog {
    let mut options = AuditLogOptions::new(key).file(path);
    if let Some(previous) = previous {
        options = options.continue_from(previous);
    }
    AuditLog::open(options).unwrap()
}

async fn record(log: &AuditLog, n: u64) -> Vec<RecordedEvent> {
    let value = SecretValue::from_str_copy(CANARY);
    let mut out = Vec::new();
    for i in 0..n {
        let actor = Actor::service_account("shop", "orders-api").with_pod("orders-api-7f9c");
        let event = log
            .event(actor, "secret.read", format!("secret/data/orders/{i}"))
            .outcome(if i % 4 == 3 {
                Outcome::Denied
            } else {
                Outcome::Ok
            })
            .reason(format!("deploy {i}"))
            .value(&value)
            .build();
        out.push(log.record(event).await.unwrap());
    }
    out
}

async fn write_log(path: &Path, n: u64) -> Vec<RecordedEvent> {
    record(&open_log(path, None), n).await
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .split_inclusive('\n')
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.concat()).unwrap();
}

/// What a forger without the key does: from line `from` on, renumber `seq`, relink `prev` and
/// recompute `hash` (SHA-256 of the line without its `hash` and `mac`), as the chain's
/// documentation tells anyone how. The `mac` needs the key: `keep_macs` leaves the old ones,
/// else they go.
fn rehash(lines: &mut [String], from: usize, keep_macs: bool) {
    for i in from..lines.len() {
        let mut e = Entry::parse(lines[i].as_bytes()).unwrap();
        if i > 0 {
            let before = Entry::parse(lines[i - 1].as_bytes()).unwrap();
            e.seq = before.seq + 1;
            e.prev = before.hash;
        }
        let mac = e.mac.take();
        let text = serde_json::to_string(&e).unwrap();
        let cut = text.len() - 1 - (",\"hash\":\"\"".len() + 64);
        e.hash = ChainHash::of(format!("{}}}", &text[..cut]).as_bytes());
        e.mac = if keep_macs { mac } else { None };
        lines[i] = format!("{}\n", serde_json::to_string(&e).unwrap());
    }
}

/// The `; every MAC checked …` part of an ok verdict.
fn macs_checked() -> String {
    format!("; every MAC checked under audit key {}", key().id())
}

#[tokio::test]
async fn verify_prints_a_one_line_summary_and_exits_0_for_an_intact_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let recs = write_log(&path, 25).await;
    let out = keyturn(&[&"audit", &"verify", &path]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "ok: 25 events, seq 0..24, last hash {}, in 1 file{}\n",
            recs[24].hash,
            macs_checked()
        )
    );
}

/// Each way of tampering, and the seq and line `verify` must name.
#[tokio::test]
async fn verify_exits_1_naming_the_first_broken_seq_and_file_line_for_each_kind_of_tampering() {
    type Tamper = fn(&mut Vec<String>);
    let cases: [(&str, Tamper, u64, u64, &str); 9] = [
        (
            "edit",
            |l| l[7] = l[7].replace("deploy 7", "deploy 8"),
            7,
            8,
            "hash mismatch",
        ),
        (
            "delete",
            |l| drop(l.remove(7)),
            7,
            8,
            "found seq 8 where seq 7 was expected",
        ),
        (
            "swap",
            |l| l.swap(7, 8),
            7,
            8,
            "found seq 8 where seq 7 was expected",
        ),
        (
            "insert",
            |l| {
                let forged = l[6].replace("orders/6", "orders/X");
                l.insert(7, forged);
            },
            7,
            8,
            "hash mismatch",
        ),
        (
            "truncate",
            |l| {
                l.truncate(8);
                let half = l[7].len() / 2;
                l[7].truncate(half);
            },
            7,
            8,
            "torn line",
        ),
        // The same, by a forger who recomputes every hash after the change (which passed
        // before the chain was keyed): only the MACs, which need the key, show it.
        (
            "edit, rehashed",
            |l| {
                l[7] = l[7].replace("deploy 7", "deploy 8");
                rehash(l, 7, true);
            },
            7,
            8,
            "MAC mismatch",
        ),
        (
            "delete, renumbered and rehashed",
            |l| {
                l.remove(7);
                rehash(l, 7, true);
            },
            7,
            8,
            "MAC mismatch",
        ),
        (
            "insert, renumbered and rehashed",
            |l| {
                let forged = l[6].replace("orders/6", "orders/X");
                l.insert(7, forged);
                rehash(l, 7, true);
            },
            7,
            8,
            "MAC mismatch",
        ),
        (
            "edit, rehashed, MACs stripped",
            |l| {
                l[7] = l[7].replace("deploy 7", "deploy 8");
                rehash(l, 7, false);
            },
            7,
            8,
            "no MAC",
        ),
    ];
    for (name, tamper, seq, line, why) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        write_log(&path, 12).await;
        let mut l = lines(&path);
        tamper(&mut l);
        write_lines(&path, &l);
        let out = keyturn(&[&"audit", &"verify", &path]);
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {text}{}", stderr(&out));
        let place = format!("broken: seq {seq} at {}:{line}: ", path.display());
        assert!(text.starts_with(&place), "{name}: {text}");
        assert!(text.contains(why), "{name}: {text}");
        assert_eq!(text.lines().count(), 1, "{name}: {text}");
    }
}

#[tokio::test]
async fn verify_follows_the_chain_across_files_and_names_a_break_at_the_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("audit.1.jsonl"),
        dir.path().join("audit.jsonl"),
    );
    write_log(&a, 10).await;
    let recs = record(&open_log(&b, Some(&a)), 5).await;
    let out = keyturn(&[&"audit", &"verify", &a, &b]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "ok: 15 events, seq 0..14, last hash {}, in 2 files{}\n",
            recs[4].hash,
            macs_checked()
        )
    );

    let out = keyturn(&[&"audit", &"verify", &b]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("continues an earlier chain"),
        "{}",
        stdout(&out)
    );

    let out = keyturn(&[&"audit", &"verify", &b, &a]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with(&format!("broken: seq 15 at {}:1: ", a.display())));

    let mut l = lines(&b);
    l.remove(0);
    write_lines(&b, &l);
    let out = keyturn(&[&"audit", &"verify", &a, &b]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).starts_with(&format!("broken: seq 10 at {}:1: ", b.display())),
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn verify_checks_anchors_for_a_missing_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let recs = write_log(&path, 6).await;
    let last = recs[5].hash.to_string();
    let ok = keyturn(&[
        &"audit",
        &"verify",
        &"--expect-last-hash",
        &last,
        &"--expect-count",
        &"6",
        &path,
    ]);
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));

    let mut l = lines(&path);
    l.pop();
    write_lines(&path, &l);
    let plain = keyturn(&[&"audit", &"verify", &path]);
    assert_eq!(
        plain.status.code(),
        Some(0),
        "without an anchor a missing tail is invisible"
    );
    let anchored = keyturn(&[&"audit", &"verify", &"--expect-last-hash", &last, &path]);
    assert_eq!(anchored.status.code(), Some(1));
    assert!(
        stdout(&anchored).starts_with("broken: seq 5 at "),
        "{}",
        stdout(&anchored)
    );
    let counted = keyturn(&[&"audit", &"verify", &"--expect-count", &"6", &path]);
    assert_eq!(counted.status.code(), Some(1));
}

#[tokio::test]
async fn verify_fails_a_whole_log_replaced_by_one_under_another_key_at_seq_0() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let other = HmacKey::generate().unwrap();
    let other_id = other.id();
    record(&open_log_with(&path, None, other), 12).await;
    let out = keyturn(&[&"audit", &"verify", &path]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(
        text.starts_with(&format!(
            "broken: seq 0 at {}:1: MAC mismatch",
            path.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&key().id()) && !text.contains(&other_id),
        "{text}"
    );
}

#[tokio::test]
async fn verify_without_the_audit_key_says_so_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 3).await;
    let out = keyturn_cmd(&[&"audit", &"verify", &path]).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("needs the audit HMAC key") && err.contains("KEYTURN_AUDIT_HMAC_KEY_FILE"),
        "{err}"
    );
    assert_eq!(stdout(&out), "");

    let missing = dir.path().join("no-such.key");
    let out = keyturn_cmd(&[
        &"audit",
        &"verify",
        &"--audit-hmac-key-file",
        &missing,
        &path,
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("no-such.key"), "{}", stderr(&out));

    // Given, the key is never printed, in any spelling.
    let out = keyturn(&[&"--log", &"trace", &"audit", &"verify", &path]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let all = format!("{}{}", stdout(&out), stderr(&out));
    for spelling in [hex::encode(KEY_BYTES), hex::encode_upper(KEY_BYTES)] {
        assert!(!all.contains(&spelling));
    }
}

#[tokio::test]
async fn an_unkeyed_log_from_before_keyed_chaining_fails_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 4).await;
    let mut l = lines(&path);
    rehash(&mut l, 0, false);
    write_lines(&path, &l);
    let out = keyturn(&[&"audit", &"verify", &path]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.starts_with("unkeyed: 4 events, seq 0..3"), "{text}");
    assert!(text.contains("no protection against rewriting"), "{text}");
    let out = keyturn(&[&"audit", &"verify", &"--allow-unkeyed", &path]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("no protection against rewriting"));

    // Reopened by today's writer, the log goes on keyed, and the verdict says since when.
    record(&open_log(&path, None), 2).await;
    let out = keyturn(&[&"audit", &"verify", &path]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("seq 0..3 predate keyed chaining"), "{text}");
}

#[test]
fn verify_exits_66_for_a_missing_file_and_74_for_one_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jsonl");
    let out = keyturn(&[&"audit", &"verify", &missing]);
    assert_eq!(out.status.code(), Some(66));
    assert!(stderr(&out).contains("missing.jsonl"), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");

    let out = keyturn(&[&"audit", &"verify", &dir.path()]);
    assert_eq!(
        out.status.code(),
        Some(74),
        "a directory is not readable as a log"
    );
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    for args in [
        &["audit", "verify"][..],
        &[],
        &["no-such-command"],
        &["audit"],
        &["audit", "verify", "--expect-last-hash", "xyz", "f"],
        &["audit", "verify", "--no-such-flag", "f"],
        &["audit", "tail", "f", "-n", "many"],
    ] {
        let args: Vec<&dyn AsRef<std::ffi::OsStr>> = args
            .iter()
            .map(|a| a as &dyn AsRef<std::ffi::OsStr>)
            .collect();
        let out = keyturn(&args);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{:?}: {}",
            args.len(),
            stderr(&out)
        );
    }
    let help = keyturn(&[&"audit", &"verify", &"--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(stdout(&help).contains("--expect-last-hash"));
}

#[tokio::test]
async fn tail_prints_the_last_entries_readably_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let recs = write_log(&path, 12).await;
    let out = keyturn(&[&"audit", &"tail", &path, &"-n", &"3"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(got.len(), 3, "{text}");
    let time = recs[11]
        .time
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert_eq!(
        got[2],
        format!(
            "{time}  #11  service-account shop/orders-api pod=orders-api-7f9c  secret.read  \
             secret/data/orders/11  denied  reason: \"deploy 11\""
        )
    );
    assert!(got[0].contains("  #9  "), "{text}");

    let default = keyturn(&[&"audit", &"tail", &path]);
    assert_eq!(stdout(&default).lines().count(), 10);

    // A missing file is EX_NOINPUT, as for `audit search`.
    let missing = keyturn(&[&"audit", &"tail", &dir.path().join("nope")]);
    assert_eq!(missing.status.code(), Some(66));
}

#[tokio::test]
async fn tail_follow_prints_entries_as_they_are_appended() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 2).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .args(["audit", "tail", "-n", "1", "--follow"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // Generous deadlines guard against a hang; they assert nothing about speed.
    let next = || {
        rx.recv_timeout(Duration::from_secs(60))
            .expect("a line from tail --follow")
    };
    assert!(next().contains("  #1  "));

    let log = open_log(&path, None);
    record(&log, 3).await;
    for seq in 2..5 {
        let line = next();
        assert!(line.contains(&format!("  #{seq}  ")), "{line}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn a_canary_value_recorded_through_the_log_appears_nowhere_but_as_its_hmac() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 5).await;
    let file = std::fs::read_to_string(&path).unwrap();
    assert!(!file.contains(CANARY));
    assert!(file.contains("\"value_hmac\":\""));
    for args in [
        vec![&"audit" as &dyn AsRef<std::ffi::OsStr>, &"verify", &path],
        vec![&"audit", &"tail", &path, &"-n", &"100"],
        vec![&"--log", &"trace", &"audit", &"verify", &path],
    ] {
        let out = keyturn(&args);
        assert!(!stdout(&out).contains(CANARY));
        assert!(!stderr(&out).contains(CANARY));
    }
}

#[tokio::test]
async fn logs_go_to_stderr_as_json_and_stdout_carries_only_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 3).await;
    let mut l = lines(&path);
    l.remove(1);
    write_lines(&path, &l);
    let out = keyturn(&[&"audit", &"verify", &path]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out).lines().count(), 1);
    let logs = stderr(&out);
    assert!(!logs.is_empty(), "a broken chain is logged as a warning");
    for line in logs.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
}

#[test]
fn a_bad_log_filter_is_a_usage_error() {
    let out = keyturn(&[
        &"--log",
        &"keyturn=notalevel",
        &"audit",
        &"verify",
        &PathBuf::from("x"),
    ]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
}

#[test]
fn an_argument_clap_refuses_is_echoed_escaped_and_capped() {
    // A 100 kB flag (near the kernel's limit for one argument) with a terminal escape: the usage error quotes it, but never whole and
    // never raw.
    let huge = format!("--{}\u{1b}[2J", "x".repeat(100_000));
    let out = keyturn(&[&"audit", &"verify", &huge]);
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    assert!(err.len() < 4096, "{} bytes of stderr", err.len());
    assert!(!err.contains('\u{1b}'), "a raw escape reached the terminal");
    assert!(err.contains("unexpected argument"), "{err}");
}

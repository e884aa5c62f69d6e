//! `keyturn audit verify` and `keyturn audit tail`, run as the real binary against logs written
//! by `keyturn_core::audit::AuditLog`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use keyturn_core::SecretValue;
use keyturn_core::audit::{Actor, AuditLog, AuditLogOptions, HmacKey, Outcome, RecordedEvent};

const CANARY: &str = "canary-cli-0d9e4b71-must-not-appear";

fn keyturn(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .args(args.iter().map(|a| a.as_ref()))
        .env_remove("KEYTURN_LOG")
        .output()
        .expect("run keyturn")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn open_log(path: &Path, previous: Option<&Path>) -> AuditLog {
    let mut options = AuditLogOptions::new(HmacKey::generate().unwrap()).file(path);
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
            "ok: 25 events, seq 0..24, last hash {}, in 1 file\n",
            recs[24].hash
        )
    );
}

/// Each way of tampering, and the seq and line `verify` must name.
#[tokio::test]
async fn verify_exits_1_naming_the_first_broken_seq_and_file_line_for_each_kind_of_tampering() {
    type Tamper = fn(&mut Vec<String>);
    let cases: [(&str, Tamper, u64, u64, &str); 5] = [
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
            "ok: 15 events, seq 0..14, last hash {}, in 2 files\n",
            recs[4].hash
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

#[test]
fn verify_exits_74_for_a_file_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jsonl");
    let out = keyturn(&[&"audit", &"verify", &missing]);
    assert_eq!(out.status.code(), Some(74));
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

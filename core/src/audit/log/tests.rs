use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::*;
use crate::SecretValue;
use crate::audit::test_support::{Tmpfs, lines, open_file_log, record_n, write_lines, write_log};
use crate::audit::{Entry, Outcome, VerifyFailure, verify};
use crate::exit::HasExitCode as _;

fn verified_events(path: &Path) -> u64 {
    let r = verify(&[path.to_owned()]);
    assert!(r.is_ok(), "{:?}", r.failure);
    r.events
}

fn event(log: &AuditLog, i: u64) -> Event {
    log.event(
        Actor::agent("keyturn-0"),
        "rotate.set",
        format!("policy-{i}"),
    )
    .build()
}

#[tokio::test]
async fn the_first_event_has_seq_0_and_a_zero_prev() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let recs = write_log(&path, 3).await;
    assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), [0, 1, 2]);
    let first = Entry::parse(lines(&path)[0].as_bytes()).unwrap();
    assert_eq!(first.prev, ChainHash::GENESIS);
    assert_eq!(first.hash, recs[0].hash);
    assert_eq!(first.time, recs[0].time);
    let second = Entry::parse(lines(&path)[1].as_bytes()).unwrap();
    assert_eq!(second.prev, recs[0].hash);
}

#[tokio::test]
async fn reopening_a_file_continues_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let first = write_log(&path, 5).await;
    let again = write_log(&path, 5).await;
    assert_eq!(again[0].seq, 5);
    let entry = Entry::parse(lines(&path)[5].as_bytes()).unwrap();
    assert_eq!(entry.prev, first[4].hash);
    assert_eq!(verified_events(&path), 10);
}

#[tokio::test]
async fn reopening_cuts_off_a_torn_last_line_and_continues_after_the_last_whole_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 4).await;
    let mut l = lines(&path);
    let torn = l[3][..40].to_owned();
    l[3] = torn;
    write_lines(&path, &l);

    let recs = write_log(&path, 2).await;
    assert_eq!(
        recs[0].seq, 3,
        "the torn event 3 was never vouched for; its seq is reused"
    );
    assert_eq!(verified_events(&path), 5);
}

#[tokio::test]
async fn reopening_refuses_a_file_whose_last_entry_was_edited() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 4).await;
    let mut l = lines(&path);
    l[3] = l[3].replace("secret.read", "secret.list");
    write_lines(&path, &l);
    let e =
        AuditLog::open(AuditLogOptions::new(HmacKey::generate().unwrap()).file(&path)).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, AuditError::Sink(SinkError::CorruptTail { .. })),
        "{e:?}"
    );
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("line 4"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_new_file_continues_from_the_previous_files_last_entry() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("audit.1.jsonl");
    let new = dir.path().join("audit.jsonl");
    let before = write_log(&old, 7).await;
    let log = AuditLog::open(
        AuditLogOptions::new(HmacKey::generate().unwrap())
            .file(&new)
            .continue_from(&old),
    )
    .unwrap();
    let after = record_n(&log, 3).await;
    assert_eq!(after[0].seq, 7);
    assert_eq!(
        Entry::parse(lines(&new)[0].as_bytes()).unwrap().prev,
        before[6].hash
    );
    let r = verify(&[old, new]);
    assert!(r.is_ok(), "{:?}", r.failure);
    assert_eq!(r.events, 10);
}

#[tokio::test]
async fn continuing_from_a_torn_or_empty_or_missing_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let new = dir.path().join("audit.jsonl");
    let open = |previous: &Path| {
        AuditLog::open(
            AuditLogOptions::new(HmacKey::generate().unwrap())
                .file(&new)
                .continue_from(previous),
        )
    };
    let torn = dir.path().join("torn.jsonl");
    write_log(&torn, 2).await;
    let mut l = lines(&torn);
    l[1].pop();
    write_lines(&torn, &l);
    assert!(matches!(
        open(&torn),
        Err(AuditError::ContinueFromTorn { .. })
    ));

    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    assert!(matches!(
        open(&empty),
        Err(AuditError::ContinueFromEmpty { .. })
    ));

    let missing = dir.path().join("missing.jsonl");
    let e = open(&missing).unwrap_err();
    assert!(e.to_string().contains("missing.jsonl"), "{e}");
}

#[tokio::test]
async fn a_log_without_sinks_is_refused() {
    let e = AuditLog::open(AuditLogOptions::new(HmacKey::generate().unwrap())).unwrap_err();
    assert!(matches!(e, AuditError::NoSinks));
    assert_eq!(e.exit_code(), 64);
}

#[tokio::test]
async fn two_files_holding_different_chains_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write_log(&a, 2).await;
    write_log(&b, 3).await;
    let e = AuditLog::open(
        AuditLogOptions::new(HmacKey::generate().unwrap())
            .file(&a)
            .file(&b),
    )
    .unwrap_err();
    assert!(matches!(e, AuditError::SinksDisagree { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_records_get_distinct_seqs_and_form_one_valid_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = open_file_log(&path);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let log = log.clone();
            tokio::spawn(async move { record_n(&log, 100).await })
        })
        .collect();
    let mut seqs = BTreeSet::new();
    for t in tasks {
        for rec in t.await.unwrap() {
            assert!(seqs.insert(rec.seq), "seq {} handed out twice", rec.seq);
        }
    }
    assert_eq!(seqs, (0..1600).collect());
    assert_eq!(verified_events(&path), 1600);
    let stats = log.stats();
    assert_eq!(stats.events, 1600);
    assert!(stats.batches <= 1600);
}

/// A sink that records batch sizes and can hold its first write until released.
#[derive(Debug)]
struct GatedSink {
    batches: Arc<Mutex<Vec<usize>>>,
    entered: std::sync::mpsc::Sender<()>,
    release: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl AuditSink for GatedSink {
    fn name(&self) -> &str {
        "gated"
    }

    fn write_durably(&mut self, lines: &[u8]) -> Result<(), SinkError> {
        let first = self.batches.lock().unwrap().is_empty();
        self.batches
            .lock()
            .unwrap()
            .push(lines.iter().filter(|b| **b == b'\n').count());
        if first {
            self.entered.send(()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_during_a_sync_share_the_next_write() {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let sink = GatedSink {
        batches: Arc::clone(&batches),
        entered: entered_tx,
        release: Mutex::new(release_rx),
    };
    let log =
        AuditLog::open(AuditLogOptions::new(HmacKey::generate().unwrap()).sink(Box::new(sink)))
            .unwrap();
    let first = {
        let log = log.clone();
        tokio::spawn(async move { log.record(event(&log, 0)).await })
    };
    tokio::task::spawn_blocking(move || entered_rx.recv().unwrap())
        .await
        .unwrap();
    let rest: Vec<_> = (1..10)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.record(event(&log, i)).await })
        })
        .collect();
    while log.queue_depth() < 9 {
        tokio::task::yield_now().await;
    }
    release_tx.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap().seq, 0);
    for t in rest {
        t.await.unwrap().unwrap();
    }
    assert_eq!(*batches.lock().unwrap(), [1, 9]);
    assert_eq!(log.stats().batches, 2);
}

#[tokio::test]
async fn a_canary_value_appears_only_as_its_hmac() {
    const CANARY: &str = "canary-audit-1b7e9f3c-do-not-log";
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("hmac.key");
    let key_bytes = [0x5au8; 32];
    std::fs::write(&key_path, hex::encode(key_bytes)).unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(AuditLogOptions::new(HmacKey::load(&key_path).unwrap()).file(&path))
        .unwrap();
    let value = SecretValue::from_str_copy(CANARY);
    let event = log
        .event(Actor::operator("alice"), "break-glass.reveal", "orders-db")
        .reason("incident 42")
        .value(&value)
        .build();
    assert!(!format!("{event:?}").contains(CANARY));
    let rec = log.record(event).await.unwrap();
    assert!(!format!("{rec:?}").contains(CANARY));

    let content = std::fs::read(&path).unwrap();
    let text = String::from_utf8(content).unwrap();
    assert!(!text.contains(CANARY));
    assert!(!text.contains(&hex::encode(CANARY)));
    assert!(
        !text.contains(&hex::encode(key_bytes)),
        "the key is not in the log either"
    );

    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key_bytes).unwrap();
    mac.update(CANARY.as_bytes());
    let want = hex::encode(mac.finalize().into_bytes());
    let entry = Entry::parse(text.as_bytes()).unwrap();
    assert_eq!(entry.value_hmac.as_deref(), Some(want.as_str()));
    assert_eq!(entry.outcome, Outcome::Ok);
}

#[tokio::test]
async fn a_write_to_dev_full_fails_and_poisons_the_log() {
    let log = AuditLog::open(AuditLogOptions::new(HmacKey::generate().unwrap()).file("/dev/full"))
        .unwrap();
    let e = log.record(event(&log, 0)).await.unwrap_err();
    assert!(matches!(e, AuditError::Write { seq: 0, .. }), "{e:?}");
    assert!(e.to_string().contains("/dev/full"), "{e}");
    assert!(log.is_poisoned());
    for i in 1..4 {
        let e = log.record(event(&log, i)).await.unwrap_err();
        assert!(
            matches!(e, AuditError::Poisoned { failed_seq: 0, .. }),
            "{e:?}"
        );
    }
    assert_eq!(log.stats().events, 0);
    assert_eq!(log.stats().write_failures, 1);
}

#[tokio::test]
async fn a_log_in_a_read_only_directory_cannot_be_opened() {
    // As root, permission bits do not stop writes, so prefer a read-only mount.
    let mount = Tmpfs::mount("ro,size=64k");
    let plain = tempfile::tempdir().unwrap();
    let dir = match &mount {
        Some(m) => m.path(),
        None => {
            std::fs::set_permissions(plain.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
            if std::fs::write(plain.path().join("probe"), "x").is_ok() {
                eprintln!(
                    "note: skipping: running as root without mount, cannot make a read-only dir"
                );
                return;
            }
            plain.path().to_owned()
        }
    };
    let path = dir.join("audit.jsonl");
    let e =
        AuditLog::open(AuditLogOptions::new(HmacKey::generate().unwrap()).file(&path)).unwrap_err();
    assert!(
        matches!(e, AuditError::Sink(SinkError::Open { .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    std::fs::set_permissions(plain.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[tokio::test]
async fn a_full_file_system_fails_the_record_and_everything_after_it() {
    let Some(fs) = Tmpfs::mount("size=16k") else {
        return;
    };
    let path = fs.path().join("audit.jsonl");
    let log = open_file_log(&path);
    let mut last_ok = None;
    let mut failed = None;
    for i in 0..10_000 {
        match log.record(event(&log, i)).await {
            Ok(rec) => {
                assert!(failed.is_none(), "a record succeeded after one failed");
                last_ok = Some(rec.seq);
            }
            Err(e) => {
                if failed.is_none() {
                    assert!(matches!(e, AuditError::Write { .. }), "{e:?}");
                    failed = Some(i);
                } else {
                    assert!(matches!(e, AuditError::Poisoned { .. }), "{e:?}");
                }
                if i > failed.unwrap() + 3 {
                    break;
                }
            }
        }
    }
    assert!(failed.is_some(), "16k of tmpfs should fill up");
    let last_ok = last_ok.expect("some events fit");
    // Everything vouched for is on disk and intact; at most a torn line follows.
    let r = verify(std::slice::from_ref(&path));
    assert!(r.last_seq.unwrap() >= last_ok);
    match &r.failure {
        None => {}
        Some(VerifyFailure::Broken(b)) => assert_eq!(b.kind, crate::audit::BreakKind::TornLine),
        Some(other) => panic!("{other:?}"),
    }
    drop(log);
}

#[tokio::test]
async fn a_second_writer_on_one_file_is_refused_and_the_first_keeps_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let first = open_file_log(&path);
    first.record(event(&first, 0)).await.unwrap();
    let second = AuditLog::open(AuditLogOptions::new(HmacKey::generate().unwrap()).file(&path));
    let err = second.expect_err("a second writer must be refused");
    assert!(
        err.to_string()
            .contains("in use by another keyturn process"),
        "{err}"
    );
    first.record(event(&first, 1)).await.unwrap();
    drop(first);
    // Once the first is gone the file is free again, and the chain continues.
    let again = open_file_log(&path);
    again.record(event(&again, 2)).await.unwrap();
    drop(again);
    assert_eq!(verified_events(&path), 3);
}

/// Opening a log on `path` fails, the message names `path` and holds none of `secret`, and
/// the file is byte for byte what it was.
fn assert_refused_unchanged(path: &Path, secret: &str) -> AuditError {
    let before = std::fs::read(path).unwrap();
    let e =
        AuditLog::open(AuditLogOptions::new(HmacKey::generate().unwrap()).file(path)).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        !msg.contains(secret) && !format!("{e:?}").contains(secret),
        "{msg}"
    );
    assert_eq!(std::fs::read(path).unwrap(), before, "the file was changed");
    assert_eq!(e.exit_code(), 74, "an I/O error on the audit file: {e}");
    e
}

#[tokio::test]
async fn reopening_refuses_to_cut_an_unterminated_line_that_is_not_the_next_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 3).await;
    let log = std::fs::read_to_string(&path).unwrap();

    // Something appended by someone else, without a newline: not keyturn's torn write.
    let token = "hvs.CAES-canary-appended-token";
    std::fs::write(&path, format!("{log}{token}")).unwrap();
    let e = assert_refused_unchanged(&path, token);
    assert!(
        e.to_string()
            .contains("not the start of the next audit entry (seq 3)"),
        "{e}"
    );

    // The start of an entry, but of an earlier one: a torn write would carry seq 3.
    let replayed = &lines(&path)[0][..60];
    std::fs::write(&path, format!("{log}{replayed}")).unwrap();
    assert_refused_unchanged(&path, "hvs.");
}

#[tokio::test]
async fn reopening_refuses_to_cut_a_torn_line_when_the_chain_before_it_does_not_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 4).await;
    let mut l = lines(&path);
    // An edited middle entry (only the last one is checked on a plain reopen) …
    l[1] = l[1].replacen("secret/data/app/1", "secret/data/app/X", 1);
    // … and a torn last entry that would otherwise be cut.
    l[3] = l[3][..40].to_owned();
    write_lines(&path, &l);
    let e = assert_refused_unchanged(&path, "hvs.");
    let msg = e.to_string();
    assert!(
        msg.contains("the chain before it does not verify: line 2"),
        "{msg}"
    );

    // Put right, the same torn line is cut and the chain goes on from seq 3.
    l[1] = lines(&path)[1].replacen("secret/data/app/X", "secret/data/app/1", 1);
    write_lines(&path, &l);
    let recs = write_log(&path, 1).await;
    assert_eq!(recs[0].seq, 3);
    assert_eq!(verified_events(&path), 4);
}

#[tokio::test]
async fn a_torn_first_line_is_cut_and_the_chain_starts_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 1).await;
    // A crash during the very first write: part of one line, nothing before it.
    let torn = lines(&path)[0][..50].to_owned();
    write_lines(&path, &[torn]);
    let recs = write_log(&path, 2).await;
    assert_eq!(recs[0].seq, 0);
    assert_eq!(verified_events(&path), 2);
}

#[tokio::test]
async fn a_log_with_something_else_appended_as_a_line_is_refused_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 2).await;
    let mut l = lines(&path);
    l.push("PASSWORD=canary-line-5d1e\n".to_owned());
    write_lines(&path, &l);
    let e = assert_refused_unchanged(&path, "canary-line");
    assert!(
        matches!(e, AuditError::Sink(SinkError::CorruptTail { .. })),
        "{e:?}"
    );
}

#[tokio::test]
async fn continuing_from_a_file_that_is_not_an_audit_log_is_refused_without_quoting_it() {
    let dir = tempfile::tempdir().unwrap();
    let previous = dir.path().join("creds.json");
    let secret = "canary-previous-9b0a";
    // Ends like an entry; serde_json's error about it would quote the secret.
    let content = format!(
        "{{\"seq\":\"{secret}\",\"prev\":\"{z}\",\"hash\":\"{z}\"}}\n",
        z = "0".repeat(64)
    );
    std::fs::write(&previous, &content).unwrap();
    let new = dir.path().join("audit.jsonl");
    let e = AuditLog::open(
        AuditLogOptions::new(HmacKey::generate().unwrap())
            .file(&new)
            .continue_from(&previous),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, AuditError::ContinueFrom { .. }), "{e:?}");
    assert!(
        msg.contains(&previous.display().to_string()) && msg.contains("not a keyturn audit log"),
        "{msg}"
    );
    assert!(
        !msg.contains(secret) && !format!("{e:?}").contains(secret),
        "{msg}"
    );
    assert_eq!(std::fs::read(&previous).unwrap(), content.as_bytes());
}

#[tokio::test]
async fn a_symlink_as_the_audit_file_is_refused_and_its_target_kept() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("token");
    let token = "hvs.CAES-canary-link-target";
    std::fs::write(&target, token).unwrap();
    let link = dir.path().join("audit.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e =
        AuditLog::open(AuditLogOptions::new(HmacKey::generate().unwrap()).file(&link)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&link.display().to_string()) && msg.contains("symbolic link"),
        "{msg}"
    );
    assert!(!msg.contains(token), "{msg}");
    assert_eq!(e.exit_code(), 74);
    assert_eq!(std::fs::read(&target).unwrap(), token.as_bytes());
}

use std::path::Path;

use chrono::Utc;

use super::*;
use crate::audit::chain::seal_into;
use crate::audit::test_support::{lines, write_lines, write_log};
use crate::audit::{Actor, AuditLog, AuditLogOptions, EventBuilder, HmacKey};

fn broken(report: &VerifyReport) -> &ChainBreak {
    match &report.failure {
        Some(VerifyFailure::Broken(b)) => b,
        other => panic!("expected a chain break, got {other:?}"),
    }
}

fn one(path: &Path) -> VerifyReport {
    verify(&[path.to_owned()])
}

/// A correctly sealed line, as a forger who knows the format would make it.
fn forged_line(seq: u64, prev: ChainHash) -> String {
    let key = HmacKey::generate().unwrap();
    let event = EventBuilder::new(
        &key,
        Actor::operator("mallory"),
        "secret.read",
        "secret/data/x",
    )
    .build();
    let mut buf = Vec::new();
    seal_into(
        &mut buf,
        ChainHead {
            next_seq: seq,
            prev,
        },
        Utc::now(),
        &event,
    )
    .unwrap();
    String::from_utf8(buf).unwrap()
}

fn hash_of(line: &str) -> ChainHash {
    crate::audit::Entry::parse(line.as_bytes()).unwrap().hash
}

#[tokio::test]
async fn an_untouched_log_verifies_with_its_range_and_last_hash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let recs = write_log(&path, 100).await;
    let r = one(&path);
    assert!(r.is_ok(), "{:?}", r.failure);
    assert_eq!(
        (r.events, r.files, r.first_seq, r.last_seq),
        (100, 1, Some(0), Some(99))
    );
    assert_eq!(r.last_hash, Some(recs[99].hash));
    assert_eq!(r.start_prev, Some(ChainHash::GENESIS));
}

#[tokio::test]
async fn an_edited_field_is_reported_at_the_edited_events_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_log(&path, 50).await;
    let mut l = lines(&path);
    l[37] = l[37].replace("\"outcome\":\"ok\"", "\"outcome\":\"denied\"");
    assert!(l[37].contains("denied"));
    write_lines(&path, &l);
    let r = one(&path);
    let b = broken(&r);
    assert_eq!((b.seq, b.line), (37, 38));
    assert!(matches!(b.kind, BreakKind::HashMismatch { .. }), "{b}");
    assert_eq!(r.events, 37);
    assert_eq!(r.last_seq, Some(36));
}

#[tokio::test]
async fn a_deleted_event_is_reported_at_the_missing_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_log(&path, 50).await;
    let mut l = lines(&path);
    l.remove(20);
    write_lines(&path, &l);
    let b = broken(&one(&path)).clone();
    assert_eq!((b.seq, b.line), (20, 21));
    assert_eq!(
        b.kind,
        BreakKind::SeqMismatch {
            expected: 20,
            found: 21
        }
    );
    assert!(b.to_string().contains("deleted"), "{b}");
}

#[tokio::test]
async fn two_swapped_events_are_reported_at_the_first_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_log(&path, 50).await;
    let mut l = lines(&path);
    l.swap(10, 11);
    write_lines(&path, &l);
    let b = broken(&one(&path)).clone();
    assert_eq!((b.seq, b.line), (10, 11));
    assert_eq!(
        b.kind,
        BreakKind::SeqMismatch {
            expected: 10,
            found: 11
        }
    );
}

#[tokio::test]
async fn an_inserted_copy_of_an_event_is_reported_where_it_was_inserted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_log(&path, 50).await;
    let mut l = lines(&path);
    // A replay of event 29, slightly changed, slipped in after it.
    let forged = l[29].replace("req-29", "req-X");
    l.insert(30, forged);
    write_lines(&path, &l);
    let b = broken(&one(&path)).clone();
    assert_eq!((b.seq, b.line), (30, 31));
    assert!(matches!(b.kind, BreakKind::HashMismatch { .. }), "{b}");
}

#[tokio::test]
async fn a_correctly_hashed_forged_event_is_caught_at_the_next_real_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_log(&path, 50).await;
    let mut l = lines(&path);
    let forged = forged_line(30, hash_of(&l[29]));
    l.insert(30, forged);
    write_lines(&path, &l);
    let b = broken(&one(&path)).clone();
    // The forgery takes seq 30; the real event 30 is then one too early.
    assert_eq!((b.seq, b.line), (31, 32));
    assert_eq!(
        b.kind,
        BreakKind::SeqMismatch {
            expected: 31,
            found: 30
        }
    );
}

#[tokio::test]
async fn a_replaced_event_with_the_right_seq_breaks_the_prev_link() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_log(&path, 50).await;
    let mut l = lines(&path);
    l[12] = forged_line(12, ChainHash::of(b"some other chain"));
    write_lines(&path, &l);
    let b = broken(&one(&path)).clone();
    assert_eq!((b.seq, b.line), (12, 13));
    assert!(matches!(b.kind, BreakKind::PrevMismatch { .. }), "{b}");
}

#[tokio::test]
async fn a_log_truncated_mid_line_is_reported_as_torn_at_that_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_log(&path, 50).await;
    let l = lines(&path);
    let keep: usize = l[..20].iter().map(String::len).sum::<usize>() + l[20].len() / 2;
    let content = l.concat();
    std::fs::write(&path, &content.as_bytes()[..keep]).unwrap();
    let r = one(&path);
    let b = broken(&r);
    assert_eq!((b.seq, b.line), (20, 21));
    assert_eq!(b.kind, BreakKind::TornLine);
    assert_eq!(r.events, 20);
}

#[tokio::test]
async fn a_blank_line_is_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_log(&path, 5).await;
    let mut l = lines(&path);
    l.insert(3, "\n".to_owned());
    write_lines(&path, &l);
    let b = broken(&one(&path)).clone();
    assert_eq!((b.seq, b.line), (3, 4));
    assert!(matches!(b.kind, BreakKind::Malformed(_)), "{b}");
}

async fn two_files(dir: &Path) -> (PathBuf, PathBuf) {
    let a = dir.join("a.jsonl");
    let b = dir.join("b.jsonl");
    write_log(&a, 10).await;
    let log = AuditLog::open(
        AuditLogOptions::new(HmacKey::generate().unwrap())
            .file(&b)
            .continue_from(&a),
    )
    .unwrap();
    let recs = crate::audit::test_support::record_n(&log, 10).await;
    assert_eq!(recs[0].seq, 10);
    (a, b)
}

#[tokio::test]
async fn two_files_given_in_order_verify_as_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_files(dir.path()).await;
    let r = verify(&[a, b.clone()]);
    assert!(r.is_ok(), "{:?}", r.failure);
    assert_eq!(
        (r.events, r.files, r.first_seq, r.last_seq),
        (20, 2, Some(0), Some(19))
    );
    // The second file alone is a continuation whose start cannot be checked.
    let alone = one(&b);
    assert!(alone.is_ok(), "{:?}", alone.failure);
    assert_eq!(alone.first_seq, Some(10));
    assert_ne!(alone.start_prev, Some(ChainHash::GENESIS));
}

#[tokio::test]
async fn a_break_at_the_file_boundary_names_the_second_files_first_line() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_files(dir.path()).await;
    let mut l = lines(&b);
    l.remove(0);
    write_lines(&b, &l);
    let r = verify(&[a, b.clone()]);
    let brk = broken(&r);
    assert_eq!(
        (brk.seq, brk.path.as_path(), brk.line),
        (10, b.as_path(), 1)
    );
    assert_eq!(
        brk.kind,
        BreakKind::SeqMismatch {
            expected: 10,
            found: 11
        }
    );
    assert_eq!(r.files, 1);
}

#[tokio::test]
async fn files_given_out_of_order_break_at_the_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_files(dir.path()).await;
    let r = verify(&[b, a.clone()]);
    let brk = broken(&r);
    assert_eq!(
        (brk.seq, brk.path.as_path(), brk.line),
        (20, a.as_path(), 1)
    );
}

#[tokio::test]
async fn an_unrelated_chain_after_the_first_file_breaks_the_prev_link_or_seq() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    let c = dir.path().join("c.jsonl");
    write_log(&a, 10).await;
    write_log(&c, 10).await;
    let r = verify(&[a, c.clone()]);
    let brk = broken(&r);
    assert_eq!(
        (brk.seq, brk.path.as_path(), brk.line),
        (10, c.as_path(), 1)
    );
}

#[tokio::test]
async fn a_missing_tail_goes_unnoticed_without_an_anchor_and_is_caught_with_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let recs = write_log(&path, 30).await;
    let anchors = VerifyOptions {
        expect_last_hash: Some(recs[29].hash),
        expect_count: Some(30),
    };
    assert!(verify_with(std::slice::from_ref(&path), &anchors).is_ok());

    let mut l = lines(&path);
    l.truncate(27);
    write_lines(&path, &l);
    assert!(
        one(&path).is_ok(),
        "a hash chain alone cannot see a missing tail"
    );

    let by_count = VerifyOptions {
        expect_count: Some(30),
        ..Default::default()
    };
    let r = verify_with(std::slice::from_ref(&path), &by_count);
    let b = broken(&r);
    assert_eq!((b.seq, b.line), (27, 28));
    assert_eq!(
        b.kind,
        BreakKind::CountMismatch {
            expected: 30,
            found: 27
        }
    );

    let by_hash = VerifyOptions {
        expect_last_hash: Some(recs[29].hash),
        ..Default::default()
    };
    let r = verify_with(std::slice::from_ref(&path), &by_hash);
    let b = broken(&r);
    assert_eq!(b.seq, 27);
    assert!(matches!(b.kind, BreakKind::LastHashMismatch { .. }), "{b}");
}

#[tokio::test]
async fn a_deleted_first_entry_reads_as_a_continuation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_log(&path, 5).await;
    let mut l = lines(&path);
    l.remove(0);
    write_lines(&path, &l);
    let r = one(&path);
    assert!(r.is_ok());
    assert_eq!(r.first_seq, Some(1));
    assert_ne!(
        r.start_prev,
        Some(ChainHash::GENESIS),
        "the report shows it does not start at 0"
    );
}

#[test]
fn a_chain_start_with_a_nonzero_seq_is_broken_at_seq_0() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    std::fs::write(&path, forged_line(5, ChainHash::GENESIS)).unwrap();
    let b = broken(&one(&path)).clone();
    assert_eq!((b.seq, b.line), (0, 1));
    assert_eq!(
        b.kind,
        BreakKind::SeqMismatch {
            expected: 0,
            found: 5
        }
    );
}

#[test]
fn a_missing_file_is_unreadable_not_broken() {
    let r = verify(&["/nonexistent/audit.jsonl".into()]);
    assert!(matches!(
        r.failure,
        Some(VerifyFailure::Unreadable(VerifyError::Open { .. }))
    ));
}

#[test]
fn empty_files_hold_an_empty_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    std::fs::write(&path, "").unwrap();
    let r = one(&path);
    assert!(r.is_ok());
    assert_eq!((r.events, r.files, r.last_seq), (0, 1, None));
}

#[tokio::test]
async fn a_log_spanning_many_rounds_and_threads_verifies_and_breaks_at_the_right_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let log = crate::audit::test_support::open_file_log(&path);
    // Concurrent, so it takes few syncs.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let log = log.clone();
            tokio::spawn(async move { crate::audit::test_support::record_n(&log, 250).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(std::fs::metadata(&path).unwrap().len() > 4 * READ_BUF as u64);
    let r = one(&path);
    assert!(r.is_ok(), "{:?}", r.failure);
    assert_eq!(r.events, 2000);

    let mut l = lines(&path);
    l[1789] = l[1789].replace("secret.read", "secret.list");
    write_lines(&path, &l);
    let b = broken(&one(&path)).clone();
    assert_eq!((b.seq, b.line), (1789, 1790));
}

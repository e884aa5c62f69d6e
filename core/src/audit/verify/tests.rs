use std::path::Path;

use chrono::Utc;

use super::*;
use crate::audit::chain::seal_into;
use crate::audit::test_support::{lines, record_n, write_lines, write_log};
use crate::audit::{Actor, AuditLog, AuditLogOptions, Entry, EventBuilder, HmacKey};

fn broken(report: &VerifyReport) -> &ChainBreak {
    match &report.failure {
        Some(VerifyFailure::Broken(b)) => b,
        other => panic!("expected a chain break, got {other:?}"),
    }
}

fn one(path: &Path) -> VerifyReport {
    verify(&[path.to_owned()])
}

/// A correctly sealed line, as a forger who knows the format (but not the audit key) would
/// make it: under a key of their own.
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
        &key.chain_key(),
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
        ..VerifyOptions::default()
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
fn a_line_over_the_limit_is_too_long_even_when_it_fits_the_read_buffer() {
    // Found by the hostile corpus: a line of MAX_LINE_LEN + 10 bytes at the start of a file
    // fits one read round and was checked as a line, while the same line further on was
    // refused as too long. The verdict must not depend on where a line falls.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let mut text = "x".repeat(MAX_LINE_LEN + 10);
    text.push('\n');
    std::fs::write(&path, text).unwrap();
    let b = broken(&one(&path)).clone();
    assert_eq!((b.line, b.kind), (1, BreakKind::LineTooLong));
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

// Keyed chain: what a forger without the key can and cannot do. Each of these passed before
// the chain was keyed, because recomputing SHA-256 hashes needs no secret.

/// The audit key the keyed logs below are written with.
fn audit_key() -> HmacKey {
    HmacKey::from_bytes_for_test(&[0x42; 32])
}

fn keyed(key: &HmacKey) -> VerifyOptions {
    VerifyOptions {
        key: Some(key.chain_key()),
        ..VerifyOptions::default()
    }
}

fn check(path: &Path, options: &VerifyOptions) -> VerifyReport {
    verify_with(&[path.to_owned()], options)
}

/// Writes `n` events at `path` (appending) under `key`.
async fn write_keyed_log(path: &Path, n: u64, key: &HmacKey) -> Vec<crate::audit::RecordedEvent> {
    let log = AuditLog::open(AuditLogOptions::new(key.clone_for_test()).file(path)).unwrap();
    record_n(&log, n).await
}

/// What a forger without the key does, as for the unkeyed chain: from line `from` on,
/// renumber `seq` (one more than the line before), link `prev` to the line before, and
/// recompute `hash` as SHA-256 of the canonical form. The `mac` the forger cannot compute:
/// `keep_macs` leaves each line's old one in place, else it is dropped.
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
        // The canonical form: the line without its `,"hash":"…"` member.
        let cut = text.len() - 1 - (",\"hash\":\"\"".len() + 64);
        e.hash = ChainHash::of(format!("{}}}", &text[..cut]).as_bytes());
        e.mac = if keep_macs { mac } else { None };
        lines[i] = format!("{}\n", serde_json::to_string(&e).unwrap());
    }
}

#[test]
fn the_forgers_rehash_makes_a_valid_unkeyed_chain() {
    // The tool the tests below use does what it says: without a key, its output verifies.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let key = audit_key();
    rt.block_on(write_keyed_log(&path, 20, &key));
    let mut l = lines(&path);
    l[7] = l[7].replace("\"outcome\":\"ok\"", "\"outcome\":\"denied\"");
    l.remove(12);
    rehash(&mut l, 0, false);
    write_lines(&path, &l);
    let r = one(&path);
    assert!(r.is_ok(), "{:?}", r.failure);
    assert_eq!((r.events, r.last_seq, r.keyed_events), (19, Some(18), 0));
}

#[tokio::test]
async fn an_intact_keyed_log_verifies_under_its_key_with_every_mac_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let key = audit_key();
    let recs = write_keyed_log(&path, 40, &key).await;
    let r = check(&path, &keyed(&key));
    assert!(r.is_ok(), "{:?}", r.failure);
    assert_eq!(
        (r.events, r.keyed_events, r.first_keyed_seq, r.macs_checked),
        (40, 40, Some(0), true)
    );
    assert_eq!(r.last_hash, Some(recs[39].hash));
    // Without the key, the same log is only a consistent hash chain: MACs noted, unchecked.
    let r = one(&path);
    assert!(r.is_ok());
    assert_eq!((r.keyed_events, r.macs_checked), (40, false));
}

#[tokio::test]
async fn an_edited_entry_with_every_hash_recomputed_fails_its_mac_at_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let key = audit_key();
    write_keyed_log(&path, 50, &key).await;
    let mut l = lines(&path);
    l[37] = l[37].replace("\"outcome\":\"ok\"", "\"outcome\":\"denied\"");
    rehash(&mut l, 37, true);
    write_lines(&path, &l);
    let r = check(&path, &keyed(&key));
    let b = broken(&r);
    assert_eq!((b.seq, b.line), (37, 38));
    assert!(matches!(b.kind, BreakKind::MacMismatch { .. }), "{b}");
    assert_eq!(r.events, 37);
    // The message names the key by its id, never a MAC computed under it.
    let text = b.to_string();
    assert!(text.contains(&key.id()), "{text}");
    let computed = key.chain_key().mac(&hash_of(&l[37]));
    assert!(!text.contains(&computed.to_hex()), "{text}");
}

#[tokio::test]
async fn an_edited_entry_whose_macs_were_stripped_after_it_is_caught_at_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let key = audit_key();
    write_keyed_log(&path, 50, &key).await;
    let mut l = lines(&path);
    l[37] = l[37].replace("secret.read", "secret.list");
    rehash(&mut l, 37, false);
    write_lines(&path, &l);
    let b = broken(&check(&path, &keyed(&key))).clone();
    assert_eq!((b.seq, b.line, b.kind), (37, 38, BreakKind::MacMissing));
    // Stripping the MACs is visible even without the key.
    assert_eq!(broken(&one(&path)).kind, BreakKind::MacMissing);
}

#[tokio::test]
async fn a_deleted_entry_with_the_rest_renumbered_and_rehashed_is_caught_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let key = audit_key();
    write_keyed_log(&path, 50, &key).await;
    let mut l = lines(&path);
    l.remove(20);
    rehash(&mut l, 20, true);
    write_lines(&path, &l);
    let b = broken(&check(&path, &keyed(&key))).clone();
    assert_eq!((b.seq, b.line), (20, 21));
    assert!(matches!(b.kind, BreakKind::MacMismatch { .. }), "{b}");
}

#[tokio::test]
async fn an_inserted_entry_with_the_rest_renumbered_and_rehashed_is_caught_where_it_went() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let key = audit_key();
    write_keyed_log(&path, 50, &key).await;
    let mut l = lines(&path);
    // A copy of an event, as if it had happened twice; it even carries a genuine MAC.
    let copy = l[29].replace("req-29", "req-X");
    l.insert(30, copy);
    rehash(&mut l, 30, true);
    write_lines(&path, &l);
    let b = broken(&check(&path, &keyed(&key))).clone();
    assert_eq!((b.seq, b.line), (30, 31));
    assert!(matches!(b.kind, BreakKind::MacMismatch { .. }), "{b}");
}

#[tokio::test]
async fn a_forged_event_sealed_under_another_key_fails_its_mac_where_it_was_slipped_in() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let key = audit_key();
    write_keyed_log(&path, 50, &key).await;
    let mut l = lines(&path);
    let forged = forged_line(30, hash_of(&l[29]));
    l.insert(30, forged);
    rehash(&mut l, 31, true);
    write_lines(&path, &l);
    let b = broken(&check(&path, &keyed(&key))).clone();
    assert_eq!((b.seq, b.line), (30, 31));
    assert!(matches!(b.kind, BreakKind::MacMismatch { .. }), "{b}");
}

#[tokio::test]
async fn a_whole_file_replaced_by_a_chain_under_another_key_fails_at_seq_0() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let key = audit_key();
    write_keyed_log(&path, 10, &key).await;
    std::fs::remove_file(&path).unwrap();
    let other = HmacKey::from_bytes_for_test(&[0x24; 32]);
    write_keyed_log(&path, 10, &other).await;
    assert!(check(&path, &keyed(&other)).is_ok());
    let b = broken(&check(&path, &keyed(&key))).clone();
    assert_eq!((b.seq, b.line), (0, 1));
    assert!(matches!(b.kind, BreakKind::MacMismatch { .. }), "{b}");
    assert!(b.to_string().contains("another audit key"), "{b}");
}

#[tokio::test]
async fn an_unkeyed_log_from_before_keyed_chaining_is_reported_as_unkeyed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let key = audit_key();
    write_keyed_log(&path, 10, &key).await;
    // The old format is the same line without `mac`; its hash never covered one.
    let mut l = lines(&path);
    rehash(&mut l, 0, false);
    assert_eq!(hash_of(&l[9]), hash_of(&lines(&path)[9]));
    write_lines(&path, &l);
    let r = check(&path, &keyed(&key));
    assert!(r.is_ok(), "{:?}", r.failure);
    assert_eq!((r.events, r.keyed_events, r.first_keyed_seq), (10, 0, None));
    assert_eq!(r.unkeyed_events(), 10);

    // Reopened by today's writer, it goes on keyed; the first keyed entry covers the rest.
    write_keyed_log(&path, 5, &key).await;
    let r = check(&path, &keyed(&key));
    assert!(r.is_ok(), "{:?}", r.failure);
    assert_eq!(
        (r.events, r.keyed_events, r.first_keyed_seq),
        (15, 5, Some(10))
    );
    // …so the unkeyed part can no longer be rewritten unnoticed.
    let mut l = lines(&path);
    l[3] = l[3].replace("secret.read", "secret.list");
    rehash(&mut l, 3, true);
    write_lines(&path, &l);
    let b = broken(&check(&path, &keyed(&key))).clone();
    assert_eq!((b.seq, b.line), (10, 11));
    assert!(matches!(b.kind, BreakKind::MacMismatch { .. }), "{b}");
}

fn anchored(key: &HmacKey, at: &crate::audit::RecordedEvent) -> VerifyOptions {
    VerifyOptions {
        anchor: Some(AnchorHead::from(*at)),
        ..keyed(key)
    }
}

#[tokio::test]
async fn a_deleted_tail_verifies_alone_and_is_reported_as_truncation_with_the_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let key = audit_key();
    let recs = write_keyed_log(&path, 30, &key).await;
    let r = check(&path, &anchored(&key, &recs[25]));
    assert!(r.is_ok(), "{:?}", r.failure);
    assert!(r.anchor_matched);

    let mut l = lines(&path);
    l.truncate(22);
    write_lines(&path, &l);
    assert!(
        check(&path, &keyed(&key)).is_ok(),
        "every remaining MAC is valid: only the anchor can tell"
    );
    let r = check(&path, &anchored(&key, &recs[25]));
    let b = broken(&r);
    assert_eq!((b.seq, b.line), (22, 23));
    assert_eq!(
        b.kind,
        BreakKind::AnchorBeyondEnd {
            anchor_seq: 25,
            last_seq: Some(21)
        }
    );
    assert!(b.to_string().contains("truncated"), "{b}");

    std::fs::write(&path, "").unwrap();
    let b = broken(&check(&path, &anchored(&key, &recs[25]))).clone();
    assert_eq!(
        b.kind,
        BreakKind::AnchorBeyondEnd {
            anchor_seq: 25,
            last_seq: None
        }
    );
}

#[tokio::test]
async fn a_whole_file_replaced_under_the_same_key_is_caught_by_the_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let key = audit_key();
    let recs = write_keyed_log(&path, 30, &key).await;
    std::fs::remove_file(&path).unwrap();
    // Someone holding the key writes a whole new history, longer than the old one.
    write_keyed_log(&path, 40, &key).await;
    assert!(check(&path, &keyed(&key)).is_ok());
    let r = check(&path, &anchored(&key, &recs[29]));
    let b = broken(&r);
    assert_eq!((b.seq, b.line), (29, 30));
    assert!(
        matches!(b.kind, BreakKind::AnchorHashMismatch { anchor_seq: 29, .. }),
        "{b}"
    );
    assert!(b.to_string().contains("replaced or rewritten"), "{b}");
}

#[tokio::test]
async fn a_deleted_head_is_caught_when_the_anchor_points_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let key = audit_key();
    let recs = write_keyed_log(&path, 20, &key).await;
    let mut l = lines(&path);
    l.drain(..5);
    write_lines(&path, &l);
    let r = check(&path, &keyed(&key));
    assert!(r.is_ok(), "a chain may continue an earlier file");
    assert_eq!(r.first_seq, Some(5));
    let r = check(&path, &anchored(&key, &recs[2]));
    let b = broken(&r);
    assert_eq!((b.seq, b.line), (2, 1));
    assert_eq!(
        b.kind,
        BreakKind::AnchorBeforeFiles {
            anchor_seq: 2,
            first_seq: 5
        }
    );
}

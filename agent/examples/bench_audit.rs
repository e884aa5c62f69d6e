//! Audit log throughput, beside its anchor. Run through `dev/bench-audit.sh`.
//!
//! - **append**: events/s recorded through [`AuditLog`] (chained, written and `fdatasync`ed,
//!   group commit) by many concurrent callers, each waiting for its own event's sync.
//! - **anchor**: the same kind of JSON line appended and `fdatasync`ed once per event, with no
//!   chain — what Vault's file audit device amounts to.
//! - **verify**: events/s checked by [`verify_with`] (hashes, links and every MAC) on a file of
//!   the size given.
//!
//! Each figure is the median of `--runs` runs. A benchmark reports speed; tests assert
//! correctness, so nothing here fails on a slow machine.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use keyturn_core::SecretValue;
use keyturn_core::audit::{
    Actor, AuditLog, AuditLogOptions, ChainKey, HmacKey, VerifyOptions, verify_with,
};

#[derive(Debug, Parser)]
struct Args {
    /// Where to write the files: must be a real disk, not tmpfs, or fsync costs nothing.
    #[arg(long, default_value = "target/bench-audit")]
    dir: PathBuf,
    /// Events per append run.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Concurrent callers in the append runs.
    #[arg(long, default_value_t = 512)]
    callers: u64,
    /// Events per anchor run (one fsync each, so keep it small).
    #[arg(long, default_value_t = 3_000)]
    anchor_events: u64,
    /// Events in the file the verify runs check.
    #[arg(long, default_value_t = 1_000_000)]
    verify_events: u64,
    /// Runs per figure; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Keep the verify file (`verify.jsonl`), e.g. to time `keyturn audit verify` on it.
    #[arg(long)]
    keep: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn fmt_rate(r: f64) -> String {
    let n = r.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn runs_list(v: &[f64]) -> String {
    v.iter().map(|r| fmt_rate(*r)).collect::<Vec<_>>().join(" ")
}

/// Records `events` events from `callers` concurrent tasks into a fresh file; returns events/s
/// and the chain key the file's MACs were made with.
async fn append_run(path: &Path, events: u64, callers: u64) -> (f64, ChainKey) {
    let _ = fs::remove_file(path);
    let key = HmacKey::generate().unwrap();
    let chain_key = key.chain_key();
    let log = AuditLog::open(AuditLogOptions::new(key).file(path)).expect("open the audit log");
    let value = SecretValue::from_str_copy("bench-value-not-secret");
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let log = log.clone();
            let value = value.clone();
            let n = events / callers + u64::from(c < events % callers);
            tokio::spawn(async move {
                for i in 0..n {
                    let actor = Actor::service_account("shop", "orders-api")
                        .with_pod(format!("orders-api-{c:05}"));
                    let event = log
                        .event(actor, "secret.read", "secret/data/orders/db")
                        .request_id(format!("req-{c}-{i}"))
                        .value(&value)
                        .build();
                    log.record(event).await.expect("record");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("caller task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(log.stats().events, events);
    (events as f64 / elapsed, chain_key)
}

/// Appends `events` unchained lines of the same shape, one write and one fdatasync each.
fn anchor_run(path: &Path, events: u64) -> f64 {
    let _ = fs::remove_file(path);
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .expect("open the anchor file");
    let start = Instant::now();
    for i in 0..events {
        let line = serde_json::json!({
            "time": "2025-01-31T03:00:00.123Z",
            "type": "response",
            "auth": {"display_name": "kubernetes-shop-orders-api", "metadata": {"service_account_namespace": "shop", "pod": "orders-api-00001"}},
            "request": {"id": format!("req-{i}"), "operation": "read", "path": "secret/data/orders/db"},
            "response": {"data": {"password": "hmac-sha256:0f3c9a7b5e1d2c4b6a8f0e9d7c5b3a1f2e4d6c8b0a9f7e5d3c1b2a4f6e8d0c9b"}},
        });
        let mut bytes = serde_json::to_vec(&line).expect("serialize");
        bytes.push(b'\n');
        f.write_all(&bytes).expect("write");
        f.sync_data().expect("fdatasync");
    }
    events as f64 / start.elapsed().as_secs_f64()
}

/// Verifies the keyed chain, every entry's MAC included, as `keyturn audit verify` does.
fn verify_run(path: &Path, key: &ChainKey) -> (f64, u64) {
    let options = VerifyOptions {
        key: Some(key.clone()),
        ..VerifyOptions::default()
    };
    let start = Instant::now();
    let report = verify_with(&[path.to_owned()], &options);
    let elapsed = start.elapsed().as_secs_f64();
    assert!(
        report.is_ok() && report.macs_checked,
        "{:?}",
        report.failure
    );
    (report.events as f64 / elapsed, report.events)
}

fn main() {
    let args = Args::parse();
    fs::create_dir_all(&args.dir).expect("create the bench directory");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    let append_path = args.dir.join("append.jsonl");
    let mut append = Vec::new();
    for _ in 0..args.runs {
        append.push(
            runtime
                .block_on(append_run(&append_path, args.events, args.callers))
                .0,
        );
    }
    let anchor_path = args.dir.join("anchor.jsonl");
    let anchor: Vec<f64> = (0..args.runs)
        .map(|_| anchor_run(&anchor_path, args.anchor_events))
        .collect();

    let verify_path = args.dir.join("verify.jsonl");
    let (_, key) = runtime.block_on(append_run(&verify_path, args.verify_events, args.callers));
    let size_mb = fs::metadata(&verify_path).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    let _ = verify_run(&verify_path, &key); // warm the page cache
    let verify_rates: Vec<f64> = (0..args.runs)
        .map(|_| verify_run(&verify_path, &key).0)
        .collect();

    let (a, k) = (median(anchor.clone()), median(append.clone()));
    let v = median(verify_rates.clone());
    println!(
        "append, chained + fdatasync, group commit ({} concurrent callers, {} events/run, median of {} runs):",
        args.callers, args.events, args.runs
    );
    println!(
        "  keyturn  {:>12} events/s   (runs: {})",
        fmt_rate(k),
        runs_list(&append)
    );
    println!(
        "  anchor   {:>12} events/s   plain append + fdatasync per event, no chain (Vault file audit device model; {} events/run; runs: {})",
        fmt_rate(a),
        args.anchor_events,
        runs_list(&anchor)
    );
    println!(
        "  ratio    {:>11.1}x            target: >= 50,000 events/s",
        k / a
    );
    println!(
        "verify ({} events, {size_mb:.0} MB, page cache warm, median of {} runs):",
        args.verify_events, args.runs
    );
    println!(
        "  keyturn  {:>12} events/s   (runs: {})",
        fmt_rate(v),
        runs_list(&verify_rates)
    );
    println!(
        "  anchor            n/a          Vault's file audit device has no chain to verify; target: >= 1,000,000 events/s"
    );
    let _ = fs::remove_file(&append_path);
    let _ = fs::remove_file(&anchor_path);
    if !args.keep {
        let _ = fs::remove_file(&verify_path);
    }
}

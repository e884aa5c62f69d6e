//! The policy loader with every schedule computation the daemon and `keyturn status` make:
//! whatever the file says, loading either fails with errors or gives policies whose times can
//! all be computed (or are `None`) without a panic — an `every: 100000000000y` once aborted
//! the daemon on every start.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use keyturn_agent::policy;
use keyturn_agent::schedule::{RETRY_MAX_DEFAULT, jittered, retry_at, retry_delay};
use libfuzzer_sys::fuzz_target;

/// The loader reads files, so the input goes through one; one per process, rewritten each run.
fn file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("keyturn-fuzz-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("p.yaml")
    })
}

fuzz_target!(|data: &[u8]| {
    std::fs::write(file(), data).unwrap();
    let Ok(policies) = policy::load(file()) else {
        return;
    };
    // Instants from the epoch to far beyond any real clock, and the extremes chrono has.
    let instants: [DateTime<Utc>; 5] = [
        DateTime::<Utc>::UNIX_EPOCH,
        Utc.with_ymd_and_hms(2026, 3, 29, 1, 30, 0).unwrap(),
        Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 0).unwrap(),
        DateTime::<Utc>::MAX_UTC,
        DateTime::<Utc>::MIN_UTC,
    ];
    for p in &policies {
        let s = &p.schedule;
        let _ = s.next_due(None);
        for &at in &instants {
            let _ = s.shortest_gap(at);
            let due = s.next_due(Some(at));
            for &now in &instants {
                let _ = s.slot_after(due.unwrap_or(at), now);
                for failures in [0, 1, 2, 31, u32::MAX] {
                    for cap in [Duration::ZERO, RETRY_MAX_DEFAULT, Duration::MAX] {
                        let _ = retry_delay(&p.name, failures, cap);
                        let _ =
                            retry_at(&p.name, s, p.window, due.unwrap_or(at), failures, cap, now);
                    }
                }
            }
            if let Some(due) = due {
                let _ = jittered(&p.name, due, p.window);
                let _ = jittered(&p.name, due, Duration::MAX);
            }
        }
    }
});

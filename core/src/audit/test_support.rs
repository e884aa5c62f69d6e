//! Helpers for the audit tests: writing logs, and mounting small tmpfs file systems.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Actor, AuditLog, AuditLogOptions, HmacKey, Outcome, RecordedEvent};

/// A log with one file sink at `path`.
pub(crate) fn open_file_log(path: &Path) -> AuditLog {
    AuditLog::open(AuditLogOptions::new(HmacKey::generate().unwrap()).file(path)).unwrap()
}

/// Writes `n` events to `log`, one after another.
pub(crate) async fn record_n(log: &AuditLog, n: u64) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    for i in 0..n {
        let actor = Actor::service_account("shop", format!("app-{}", i % 3)).with_pod("p-1");
        let event = log
            .event(actor, "secret.read", format!("secret/data/app/{i}"))
            .outcome(if i % 5 == 4 {
                Outcome::Denied
            } else {
                Outcome::Ok
            })
            .request_id(format!("req-{i}"))
            .build();
        out.push(log.record(event).await.unwrap());
    }
    out
}

/// Writes a fresh log of `n` events at `path`.
pub(crate) async fn write_log(path: &Path, n: u64) -> Vec<RecordedEvent> {
    let log = open_file_log(path);
    record_n(&log, n).await
}

/// The file's lines, newlines kept.
pub(crate) fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .split_inclusive('\n')
        .map(str::to_owned)
        .collect()
}

/// Writes `lines` back, concatenated.
pub(crate) fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.concat()).unwrap();
}

/// A tmpfs mounted on a temporary directory, unmounted on drop.
#[derive(Debug)]
pub(crate) struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs with `options` (e.g. `size=16k`, `ro`), or prints why not and returns
    /// `None` (not root, no mount(8), no permission in this container).
    pub(crate) fn mount(options: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "keyturn-test"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!(
                    "note: skipping the tmpfs part of this test: mount -t tmpfs -o {options} \
                     failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("note: skipping the tmpfs part of this test: cannot run mount: {e}");
                None
            }
        }
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

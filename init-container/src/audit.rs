//! One audit event per secret read, recorded before any file is written (fail closed).
//!
//! Sinks: `--audit-file` / `KEYTURN_AUDIT_FILE` and/or `--audit-stdout`; with neither,
//! stdout (an init container's stdout is the cluster's log pipeline). The HMAC key comes
//! from `KEYTURN_AUDIT_HMAC_KEY_FILE` (or keyturn-core's per-install key).
//!
//! Every sink must take the events, or the run fails with 74 and writes no file. Stdout as a
//! sink is checked before any network call: a closed stdout is refused, and so is one that
//! discards what it is given (`/dev/null`, `/dev/zero`, …). The two cannot be told apart:
//! Rust's runtime reopens a closed descriptor 0-2 on `/dev/null` before `main`, and writes
//! there succeed, which is how a run with stdout closed used to write its secrets with no
//! record of the reads anywhere. A write that fails later (a pipe whose reader has gone, a
//! full disk) fails the run the same way: [`record_reads`] returns before any file exists.
//!
//! Each event is `secret.read` on the Vault path, by the pod's service account (from its
//! token) or `keyturn-init`, with the Vault entity and the pod name when known. `value_hmac`
//! is the HMAC of the secret's only field, or, for a secret with several fields, of its
//! canonical JSON object (`{"a":"…","b":"…"}`, names sorted), and for several fields
//! `field_hmacs` holds the HMAC of each, so an investigator holding one leaked value can
//! still find the read; `detail` names the engine and the KV v2 version or the lease (id,
//! TTL).

use keyturn_core::audit::{
    Actor, AuditError, AuditLog, AuditLogOptions, Event, HmacKey, KeyError, Outcome,
};
use keyturn_core::vault::VaultError;

use crate::auth::Identity;
use crate::exit::{ExitCode, HasExitCode};
use crate::fetch::{Engine, Fetched, FetchedSet, ReadKey};
use crate::render::SecretBuf;

/// The action name of a read.
pub const ACTION: &str = "secret.read";

/// The audit log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum AuditFailure {
    /// The HMAC key.
    #[error("audit: {0}")]
    Key(#[from] KeyError),
    /// Opening the log.
    #[error("audit: {0}")]
    Log(#[from] AuditError),
    /// Stdout is a sink, but what is written there is lost.
    #[error(
        "audit: stdout is {what}, so the audit events written there would be lost; connect \
         stdout to the log pipeline, or give --audit-file FILE (KEYTURN_AUDIT_FILE)"
    )]
    StdoutDiscards {
        /// What stdout is: `closed or /dev/null`, `/dev/zero`, ….
        what: &'static str,
    },
    /// Stdout cannot even be examined.
    #[error("audit: cannot check stdout, the audit sink: {0}")]
    StdoutUnusable(std::io::Error),
    /// Recording the reads failed: fail closed.
    #[error(
        "audit: {0}; no secret file was written (a read whose audit event cannot be recorded \
         is not delivered)"
    )]
    NotRecorded(AuditError),
}

impl HasExitCode for AuditFailure {
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Key(e) => e.exit_code(),
            Self::Log(e) | Self::NotRecorded(e) => e.exit_code(),
            Self::StdoutDiscards { .. } | Self::StdoutUnusable(_) => ExitCode::Io,
        }
    }
}

/// What a descriptor is, when it is a device that swallows writes: the memory devices whose
/// writes succeed and go nowhere (Linux major 1: null 3, zero 5, random 8, urandom 9).
fn discarding_device(
    fd: std::os::fd::BorrowedFd<'_>,
) -> Result<Option<&'static str>, AuditFailure> {
    use rustix::fs::{FileType, fstat, major, minor};
    let st = fstat(fd).map_err(|e| AuditFailure::StdoutUnusable(e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::CharacterDevice {
        return Ok(None);
    }
    #[allow(clippy::useless_conversion)] // dev_t is u64 on some targets only
    let rdev = u64::from(st.st_rdev);
    Ok(match (major(rdev), minor(rdev)) {
        // A closed stdout looks exactly like this (see the module doc).
        (1, 3) => Some("closed or /dev/null"),
        (1, 5) => Some("/dev/zero"),
        (1, 8) => Some("/dev/random"),
        (1, 9) => Some("/dev/urandom"),
        _ => None,
    })
}

/// Refuses a stdout whose events would be lost.
fn check_stdout() -> Result<(), AuditFailure> {
    use std::os::fd::AsFd as _;
    match discarding_device(std::io::stdout().as_fd())? {
        Some(what) => Err(AuditFailure::StdoutDiscards { what }),
        None => Ok(()),
    }
}

/// Opens the audit log (before any network call).
///
/// # Errors
/// A key or sink that cannot be used.
pub fn open(file: Option<&std::path::Path>, stdout: bool) -> Result<AuditLog, AuditFailure> {
    let key = HmacKey::from_env()?;
    let mut opts = AuditLogOptions::new(key);
    if let Some(f) = file {
        opts = opts.file(f);
    }
    if stdout || file.is_none() {
        check_stdout()?;
        opts = opts.stdout();
    }
    Ok(AuditLog::open(opts)?)
}

/// The actor of every event of this run.
#[must_use]
pub fn actor(identity: &Identity, entity_id: &str, pod: Option<&str>) -> Actor {
    let mut a = match identity {
        Identity::ServiceAccount { namespace, name } => {
            Actor::service_account(namespace.clone(), name.clone())
        }
        Identity::Other => Actor::agent("keyturn-init"),
    };
    if !entity_id.is_empty() {
        a = a.with_entity(entity_id);
    }
    if let Some(p) = pod.filter(|p| !p.is_empty()) {
        a = a.with_pod(p);
    }
    a
}

/// Resource name of a read: the path, with `?version=N` when pinned.
fn resource(key: &ReadKey) -> String {
    match key.version {
        Some(v) => format!("{}?version={v}", key.path),
        None => key.path.clone(),
    }
}

/// The event for one successful read.
#[tracing::instrument(skip_all, fields(path = %key.path))]
fn read_event(log: &AuditLog, actor: &Actor, key: &ReadKey, f: &Fetched) -> Event {
    let detail = match (f.engine, &f.lease) {
        (Engine::Kv2, _) => format!("kv2 version {}", f.version.unwrap_or(0)),
        (Engine::Kv1, _) => "kv1".to_owned(),
        (Engine::Dynamic, Some(l)) => {
            format!(
                "dynamic lease {} ttl {}s{}",
                l.id,
                l.duration,
                if l.renewable { " renewable" } else { "" }
            )
        }
        (Engine::Dynamic, None) => "dynamic".to_owned(),
    };
    let b = log.event(actor.clone(), ACTION, resource(key));
    let b = if f.data.len() == 1 {
        let (_, v) = f.data.iter().next().expect("one field");
        b.value(v)
    } else {
        let mut buf = SecretBuf::with_capacity(256);
        // Values that are not UTF-8 have no JSON form; their per-field HMACs still count.
        let _ = crate::render::json_object(&f.data, None, None, &mut buf, &key.path);
        let canonical = buf.finish();
        b.field_values(f.data.iter()).value(&canonical)
    };
    b.detail(detail).build()
}

/// Records one event per read, concurrently (the log batches them into one sync), and
/// returns once all are durable.
///
/// # Errors
/// The first failure: then nothing may be written.
pub async fn record_reads(
    log: &AuditLog,
    actor: &Actor,
    set: &FetchedSet,
) -> Result<(), AuditFailure> {
    let events: Vec<Event> = set
        .iter()
        .map(|(k, f)| read_event(log, actor, k, f))
        .collect();
    let results = futures_util::future::join_all(events.into_iter().map(|e| log.record(e))).await;
    for r in results {
        r.map_err(AuditFailure::NotRecorded)?;
    }
    Ok(())
}

/// Records failed reads (best effort: the run fails anyway).
pub async fn record_failures(log: &AuditLog, actor: &Actor, failures: &[(&str, &VaultError)]) {
    for (path, e) in failures {
        let outcome = match e {
            VaultError::PermissionDenied { .. } => Outcome::Denied,
            _ => Outcome::Error,
        };
        let ev = log
            .event(actor.clone(), ACTION, *path)
            .outcome(outcome)
            .detail(e.to_string())
            .build();
        if let Err(e) = log.record(ev).await {
            tracing::warn!(error = %e, "could not record a failed read in the audit log");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_null_and_other_discarding_devices_are_not_an_audit_sink() {
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        use std::os::fd::AsFd as _;
        assert_eq!(
            discarding_device(null.as_fd()).unwrap(),
            Some("closed or /dev/null")
        );
        let zero = std::fs::File::open("/dev/zero").unwrap();
        assert_eq!(discarding_device(zero.as_fd()).unwrap(), Some("/dev/zero"));
        // What a log pipeline gives an init container: a pipe; and a regular file.
        let (r, w) = std::io::pipe().unwrap();
        assert_eq!(discarding_device(w.as_fd()).unwrap(), None);
        drop(r);
        let f = tempfile::tempfile().unwrap();
        assert_eq!(discarding_device(f.as_fd()).unwrap(), None);
        let e = AuditFailure::StdoutDiscards {
            what: "closed or /dev/null",
        };
        assert_eq!(e.exit_code(), ExitCode::Io);
        assert!(e.to_string().contains("--audit-file"), "{e}");
    }
}

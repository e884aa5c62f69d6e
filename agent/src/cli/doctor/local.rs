//! The local checks: the audit sink writable, `keyturn-init`'s output on tmpfs, the clock in
//! step with a server's.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::kube::kube_date;
use super::{MAX_CLOCK_SKEW, human};
use super::{Outcome, fail, ok, skip};
use crate::cli::audit_log::AuditLogArgs;

/// The audit file's directory takes a new file (created and removed again: no audit event
/// is written), an existing audit file opens for appending, and a given HMAC key loads.
pub(super) fn audit_check(args: &AuditLogArgs) -> Outcome {
    let Some(file) = &args.file else {
        return if args.stdout {
            ok("stdout")
        } else {
            fail(
                "no audit sink: an access that cannot be audited does not happen",
                "set KEYTURN_AUDIT_FILE (or --audit-file), or KEYTURN_AUDIT_STDOUT=true",
            )
        };
    };
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let probe = dir.join(format!(
        ".keyturn-doctor-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    if let Err(e) = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        return fail(
            format!("cannot create a file in {}: {e}", dir.display()),
            format!(
                "create {} and make it writable by keyturn's user",
                dir.display()
            ),
        );
    }
    let _ = std::fs::remove_file(&probe);
    if file.exists()
        && let Err(e) = std::fs::OpenOptions::new().append(true).open(file)
    {
        return fail(
            format!("cannot open {} for appending: {e}", file.display()),
            format!("make {} writable by keyturn's user", file.display()),
        );
    }
    if let Some(key) = &args.hmac_key_file
        && let Err(e) = keyturn_core::audit::HmacKey::load(key)
    {
        return fail(
            e.to_string(),
            "point KEYTURN_AUDIT_HMAC_KEY_FILE at a readable file of at least 32 random bytes",
        );
    }
    let mut detail = format!("{} (directory writable)", file.display());
    if args.stdout {
        detail.push_str(", and stdout");
    }
    ok(detail)
}

pub(super) fn init_out_check(dir: Option<&Path>) -> Outcome {
    let Some(dir) = dir else {
        return skip("no --init-out given");
    };
    match keyturn_core::sys::is_memory_backed(dir) {
        Ok(true) => ok(format!("{} is memory-backed", dir.display())),
        Ok(false) => fail(
            format!(
                "{} is on a disk-backed filesystem: rendered secrets would reach a disk",
                dir.display()
            ),
            "mount an emptyDir with medium: Memory there",
        ),
        Err(e) => fail(
            format!("cannot stat {}: {e}", dir.display()),
            "create the directory (an emptyDir with medium: Memory) before keyturn-init runs",
        ),
    }
}

/// Local time against Vault's `Date`, else the Kubernetes API server's.
pub(super) async fn clock_check(
    vault: Option<(DateTime<Utc>, DateTime<Utc>)>,
    kube: Option<&kube::Client>,
) -> Outcome {
    let (server, (date, received)) = match vault {
        Some(d) => ("Vault", d),
        None => match kube_date(kube).await {
            Some(d) => ("the Kubernetes API server", d),
            None => return skip("no server told its time (Vault and Kubernetes not reachable)"),
        },
    };
    clock_outcome(server, date, received)
}

pub(super) fn clock_outcome(server: &str, date: DateTime<Utc>, received: DateTime<Utc>) -> Outcome {
    // `Date` has whole seconds: allow the truncation on top of the tolerance.
    let skew = received - date;
    let off = skew.num_milliseconds().unsigned_abs();
    let limit = u64::try_from(MAX_CLOCK_SKEW.as_millis()).unwrap_or(u64::MAX) + 1000;
    let ahead = if skew.num_milliseconds() >= 0 {
        "ahead of"
    } else {
        "behind"
    };
    if off > limit {
        fail(
            format!(
                "this host is {} {ahead} {server} (more than {}s breaks leases and TTLs)",
                human(skew.num_seconds().abs()),
                MAX_CLOCK_SKEW.as_secs()
            ),
            "run NTP (chrony/systemd-timesyncd) on this host and on the server",
        )
    } else {
        ok(format!("within {}s of {server}", off.div_ceil(1000)))
    }
}

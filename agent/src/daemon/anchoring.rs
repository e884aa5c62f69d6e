//! Keeps the daemon's audit head in an anchor outside the audit file.
//!
//! The keyed chain makes an edit, insertion or deletion inside the file detectable without
//! the key, but a file cut short (or replaced whole by its own writer's earlier copy) still
//! verifies alone. So the daemon records the last durable entry (seq and hash, with a MAC)
//! in its store every `every` and once more at shutdown, and `keyturn audit verify --anchor`
//! compares the file with it. One write per interval at most, none while nothing was
//! audited; a failed write is retried at the next tick, never in a loop.

use std::sync::Arc;
use std::time::Duration;

use keyturn_core::audit::{Anchor, AnchorError, AnchorHead, AuditLog};
use tokio::sync::watch;

use super::Metrics;

/// Records the audit head in `anchor` every `every` until `stop` turns true, then once more.
pub async fn run(
    audit: Arc<AuditLog>,
    anchor: Anchor,
    every: Duration,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut recorded: Option<AnchorHead> = None;
    loop {
        // The watch's guard is dropped inside the arm: it must not live across an await.
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            r = stop.wait_for(|s| *s) => {
                drop(r);
                true
            }
        };
        record(&audit, &anchor, &metrics, &mut recorded).await;
        if stopping {
            return;
        }
    }
}

async fn record(
    audit: &AuditLog,
    anchor: &Anchor,
    metrics: &Metrics,
    recorded: &mut Option<AnchorHead>,
) {
    let Some(head) = audit.head() else { return };
    if *recorded == Some(head) {
        return;
    }
    let outcome = match anchor.record(head).await {
        Ok(_) => {
            *recorded = Some(head);
            "ok"
        }
        Err(e @ (AnchorError::Behind { .. } | AnchorError::Diverged { .. })) => {
            // Evidence that the file lost its tail or was replaced: loud, and left for a
            // person; the daemon keeps rotating and auditing.
            tracing::error!(anchor = %anchor.location(), error = %e, "the audit log does not continue its anchor");
            "mismatch"
        }
        Err(e) => {
            tracing::warn!(anchor = %anchor.location(), error = %e, "could not record the audit head in its anchor; retrying at the next interval");
            "error"
        }
    };
    metrics.audit_anchor(outcome);
}

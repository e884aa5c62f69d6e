//! The rotation state machine: create → set → test → finish (→ distribute), each step
//! idempotent and audited before it happens.
//!
//! Only what a resume could not work out again is written to the store: the PENDING value
//! (`created`, before any side effect) and, when delivery fails, that the value is promoted
//! but not delivered (`finished`). `set` and `test` are idempotent and simply run again on a
//! resume, and a promote already done is recognised from the store itself (CURRENT equals
//! PENDING), so a successful rotation costs three state writes (claim, promote, clear), not
//! one per step. A failed attempt is written, so the attempt bound holds across restarts.
//!
//! A rotation is driven to completion by whoever holds it. A process that finds a rotation
//! in flight resumes it at its recorded step when the holder is itself or the holder's lease
//! has run out; otherwise it leaves it alone. Because every state write is a compare-and-set,
//! two processes can never both advance one rotation, and for one scheduled slot at most one
//! rotation starts: a process that finds the last rotation started at or after the slot's
//! due time does nothing.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyturn_core::SecretValue;
use keyturn_core::audit::{Actor, AuditError, AuditLog, Outcome as AuditOutcome};
use keyturn_core::vault::SecretData;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::generate::generate;
use super::store::{
    Current, Fence, InFlight, LastRotation, StateRecord, Step, Store, StoreError, Taint,
    same_fields,
};
use super::target::{Target, TargetError};
use crate::distribute::{
    Delivery, DeliveryReport, DistributeError, RestartOutcome, SecretOutcome, Sink, deliver_all,
};
use crate::policy::Policy;

/// Why a rotation runs.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// The schedule's slot that fell due at this time.
    Schedule {
        /// The slot's due time (before jitter).
        due: DateTime<Utc>,
    },
    /// An operator or script asked for it now (`keyturn rotate`, break-glass).
    Manual {
        /// Recorded in the audit log.
        reason: Option<String>,
    },
}

/// How a call to [`Engine::rotate`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationOutcome {
    /// A rotation completed: the new value is CURRENT.
    Rotated {
        /// Its id.
        rotation_id: String,
        /// When it started: the time the scheduler judges the next slot by.
        started_at: DateTime<Utc>,
        /// Whether it was resumed from an earlier, interrupted run.
        resumed: bool,
    },
    /// The slot was already served by a rotation that started at or after its due time.
    AlreadyDone,
    /// Another live process holds an in-flight rotation of this policy.
    Busy {
        /// Who.
        holder: String,
    },
    /// The rotation was given up after repeated failures; CURRENT is unchanged and works.
    Failed {
        /// Its id.
        rotation_id: String,
        /// What kept failing.
        error: String,
    },
}

/// Failures that stop a rotation where it is, leaving it resumable.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The store failed; the rotation stays at its last recorded step.
    #[error("policy {policy}: {source}")]
    Store {
        /// The policy.
        policy: String,
        /// The failure.
        #[source]
        source: StoreError,
    },
    /// The audit event for the next step could not be written, so the step did not run
    /// (fail closed).
    #[error("policy {policy}: audit log refused the {step} event, step not taken: {source}")]
    Audit {
        /// The policy.
        policy: String,
        /// The step that did not run.
        step: &'static str,
        /// The failure.
        #[source]
        source: AuditError,
    },
    /// The new value is CURRENT but could not be delivered; the rotation stays in flight at
    /// `distribute` and the next attempt delivers it (the old value keeps working meanwhile
    /// only for alternating targets, so this needs attention).
    #[error("policy {policy}: rotation {rotation_id} is promoted but not distributed: {source}")]
    Distribute {
        /// The policy.
        policy: String,
        /// The rotation, still in flight.
        rotation_id: String,
        /// The failure (object, verb and status; never a value).
        #[source]
        source: DistributeError,
    },
    /// The policy distributes to Kubernetes but this process has no Kubernetes client.
    #[error(
        "policy {policy}: has distribute entries but no Kubernetes API is configured (set KUBECONFIG or run in a cluster); the rotation stays in flight at distribute"
    )]
    NoSink {
        /// The policy.
        policy: String,
    },
}

/// Test-only crash points: with the `crash-points` feature, `KEYTURN_CRASH_AFTER=<step>`
/// makes the process SIGKILL itself right after that step's state is durable, which is
/// exactly what an OOM kill or a node loss at that moment looks like.
fn crash_point(step: &str) {
    #[cfg(feature = "crash-points")]
    if std::env::var("KEYTURN_CRASH_AFTER").is_ok_and(|s| s == step) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::thread::sleep(Duration::from_secs(60));
    }
    #[cfg(not(feature = "crash-points"))]
    let _ = step;
}

/// Drives rotations.
#[derive(Debug, Clone)]
pub struct Engine {
    audit: Arc<AuditLog>,
    actor: Actor,
    holder: String,
    lease: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    sink: Option<Arc<dyn Sink>>,
    limit: Option<Arc<Semaphore>>,
}

impl Engine {
    /// An engine that audits to `audit` as `actor` and claims rotations as `holder` (stable
    /// across restarts of the same instance, so it resumes its own rotations at once).
    #[must_use]
    pub fn new(audit: Arc<AuditLog>, actor: Actor, holder: impl Into<String>) -> Self {
        Self {
            audit,
            actor,
            holder: holder.into(),
            lease: Duration::from_secs(300),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            sink: None,
            limit: None,
        }
    }

    /// The same engine acting for someone else (an operator's break-glass command): audit
    /// records name `actor`, rotations are claimed as `holder`.
    #[must_use]
    pub fn acting_as(mut self, actor: Actor, holder: impl Into<String>) -> Self {
        self.actor = actor;
        self.holder = holder.into();
        self
    }

    /// Delivers rotated credentials through `sink` (the policies' `distribute` entries).
    #[must_use]
    pub fn with_sink(mut self, sink: Arc<dyn Sink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Bounds how many rotations work on stores and targets at once. A rotation gives its
    /// slot back before it waits for a debounced workload restart: that wait loads nothing,
    /// and holding slots through it would cap throughput at slots ÷ debounce window.
    #[must_use]
    pub fn with_limit(mut self, limit: Arc<Semaphore>) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Sets the backoff between failed `set`/`test` attempts (tests use short ones).
    #[must_use]
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// Sets how long a claim on a rotation stands without being renewed.
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The holder name.
    #[must_use]
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Half the lease: a claim with less than this left is renewed before a long step.
    fn half_lease(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.lease / 2).unwrap_or(chrono::Duration::MAX)
    }

    fn lease_until(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::MAX)
    }

    /// Runs (or resumes) `policy`'s rotation to its end.
    ///
    /// # Errors
    /// A store or audit failure stops the rotation at its last durable step; running
    /// `rotate` again later resumes it.
    pub async fn rotate(
        &self,
        policy: &Policy,
        store: &dyn Store,
        target: &dyn Target,
        trigger: &Trigger,
    ) -> Result<RotationOutcome, RotationError> {
        let name = policy.name.as_str();
        let st = |source| RotationError::Store {
            policy: name.to_owned(),
            source,
        };
        let mut permit = match &self.limit {
            Some(l) => l.clone().acquire_owned().await.ok(),
            None => None,
        };
        let view = store.view().await.map_err(st)?;
        let last = view.state.last.clone();
        // What every state write keeps besides the in-flight record.
        let keep = StateRecord {
            in_flight: None,
            last: last.clone(),
            taint: view.state.taint.clone(),
        };
        let now = Utc::now();
        let (mut rec, mut fence, resumed) = match view.state.in_flight {
            Some(f) if f.holder != self.holder && f.lease_until > now => {
                return Ok(RotationOutcome::Busy { holder: f.holder });
            }
            Some(mut f) => {
                let from = f.holder.clone();
                f.holder.clone_from(&self.holder);
                f.lease_until = self.lease_until();
                self.record(
                    name,
                    &f.rotation_id,
                    "rotate.resume",
                    AuditOutcome::Started,
                    None,
                    Some(format!("at step {} (was held by {from})", f.step.as_str())),
                )
                .await?;
                let state = StateRecord {
                    in_flight: Some(f.clone()),
                    ..keep.clone()
                };
                match store.write_state(&view.fence, &state).await {
                    Ok(fence) => (f, fence, true),
                    Err(StoreError::Conflict { .. }) => {
                        return Ok(RotationOutcome::Busy {
                            holder: "another process".into(),
                        });
                    }
                    Err(e) => return Err(st(e)),
                }
            }
            None => {
                let taint_due = view
                    .state
                    .taint
                    .as_ref()
                    .is_some_and(|t| t.rotate_after <= now);
                if let (Trigger::Schedule { due }, Some(l)) = (trigger, &last)
                    && l.started_at >= *due
                    && !taint_due
                {
                    return Ok(RotationOutcome::AlreadyDone);
                }
                let value = generate(&policy.generator);
                let pending = target.compose(value, view.current.as_ref().map(|c| &c.fields));
                let rec = InFlight {
                    rotation_id: uuid::Uuid::new_v4().to_string(),
                    step: Step::Created,
                    pending,
                    started_at: now,
                    holder: self.holder.clone(),
                    lease_until: self.lease_until(),
                    attempts: 0,
                };
                let reason = match trigger {
                    Trigger::Manual { reason } => reason.clone(),
                    Trigger::Schedule { due } if *due == DateTime::<Utc>::UNIX_EPOCH => {
                        Some("first rotation".into())
                    }
                    Trigger::Schedule { due } => {
                        Some(format!("scheduled for {}", due.to_rfc3339()))
                    }
                };
                self.record(
                    name,
                    &rec.rotation_id,
                    "rotate.create",
                    AuditOutcome::Started,
                    main_value(&rec.pending),
                    reason,
                )
                .await?;
                let state = StateRecord {
                    in_flight: Some(rec.clone()),
                    ..keep.clone()
                };
                match store.write_state(&view.fence, &state).await {
                    Ok(fence) => {
                        crash_point("create");
                        (rec, fence, false)
                    }
                    Err(StoreError::Conflict { .. }) => {
                        return Ok(RotationOutcome::Busy {
                            holder: "another process".into(),
                        });
                    }
                    Err(e) => return Err(st(e)),
                }
            }
        };
        let base = view.current;
        // A crash after the promote and before the state was cleared: CURRENT already is
        // PENDING, so what is left is delivery.
        if rec.step < Step::Finished
            && base
                .as_ref()
                .is_some_and(|c| same_fields(&c.fields, &rec.pending))
        {
            rec.step = Step::Finished;
        }

        loop {
            match rec.step {
                Step::Created | Step::Set => {
                    let (action, next) = if rec.step == Step::Created {
                        ("rotate.set", Step::Set)
                    } else {
                        ("rotate.test", Step::Tested)
                    };
                    self.record(
                        name,
                        &rec.rotation_id,
                        action,
                        AuditOutcome::Ok,
                        main_value(&rec.pending),
                        Some(target.describe()),
                    )
                    .await?;
                    let r = if next == Step::Set {
                        target.set(&rec.pending).await
                    } else {
                        target.test(&rec.pending).await
                    };
                    match r {
                        Ok(()) => {
                            // Not persisted: a resume runs this step again (idempotent).
                            rec.step = next;
                            rec.attempts = 0;
                            crash_point(next.as_str_for_crash());
                        }
                        Err(e) => {
                            rec.attempts += 1;
                            tracing::warn!(policy = name, rotation_id = %rec.rotation_id, step = action, attempt = rec.attempts, error = %e, "rotation step failed");
                            if rec.attempts >= policy.max_attempts {
                                return self
                                    .give_up(
                                        name,
                                        store,
                                        target,
                                        &fence,
                                        rec,
                                        base.as_ref(),
                                        keep.taint.clone(),
                                        &e,
                                    )
                                    .await;
                            }
                            fence = self
                                .save(store, &fence, &mut rec, &keep)
                                .await
                                .map_err(st)?;
                            tokio::time::sleep(self.backoff(rec.attempts)).await;
                        }
                    }
                }
                Step::Tested => {
                    self.record(
                        name,
                        &rec.rotation_id,
                        "rotate.finish",
                        AuditOutcome::Ok,
                        main_value(&rec.pending),
                        Some(store.location()),
                    )
                    .await?;
                    store.promote(&rec, base.as_ref()).await.map_err(st)?;
                    rec.step = Step::Finished;
                    crash_point("finish");
                }
                Step::Finished => {
                    // Distribution runs again in full on every resume: each part is
                    // idempotent, so a crash after it and before the state below is cleared
                    // costs nothing but a no-op pass.
                    if !policy.distribute.is_empty() {
                        if rec.lease_until - Utc::now() < self.half_lease() {
                            fence = self
                                .save(store, &fence, &mut rec, &keep)
                                .await
                                .map_err(st)?;
                        }
                        if let Err(e) = self.distribute(policy, &rec, &mut permit).await {
                            // Left in flight at `finished`, so `status` shows a promoted,
                            // undelivered value and any later run delivers it.
                            if let Err(se) = self.save(store, &fence, &mut rec, &keep).await {
                                tracing::warn!(policy = name, rotation_id = %rec.rotation_id, error = %se, "could not record the undelivered rotation; it is still resumed from its store");
                            }
                            return Err(e);
                        }
                        crash_point("distribute");
                    }
                    let done = LastRotation {
                        rotation_id: rec.rotation_id.clone(),
                        started_at: rec.started_at,
                        outcome: "ok".into(),
                    };
                    // A taint set before this rotation began refers to a value it replaced.
                    let taint = keep.taint.clone().filter(|t| t.at > rec.started_at);
                    store
                        .write_state(
                            &fence,
                            &StateRecord {
                                in_flight: None,
                                last: Some(done),
                                taint,
                            },
                        )
                        .await
                        .map_err(st)?;
                    self.record(
                        name,
                        &rec.rotation_id,
                        "rotate.done",
                        AuditOutcome::Ok,
                        main_value(&rec.pending),
                        None,
                    )
                    .await?;
                    tracing::info!(policy = name, rotation_id = %rec.rotation_id, resumed, "rotated");
                    return Ok(RotationOutcome::Rotated {
                        rotation_id: rec.rotation_id,
                        started_at: rec.started_at,
                        resumed,
                    });
                }
            }
        }
    }

    /// The `distribute` step: every Secret of the policy is written, and only when all
    /// writes succeeded are the workloads restarted (so no pod starts on the old value).
    /// Retryable failures are retried with backoff; the rest stop the rotation here,
    /// audited, resumable.
    async fn distribute(
        &self,
        policy: &Policy,
        rec: &InFlight,
        permit: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<(), RotationError> {
        let name = policy.name.as_str();
        let Some(sink) = &self.sink else {
            self.record(
                name,
                &rec.rotation_id,
                "rotate.distribute",
                AuditOutcome::Error,
                None,
                Some("no Kubernetes API configured".into()),
            )
            .await?;
            return Err(RotationError::NoSink {
                policy: name.to_owned(),
            });
        };
        let version = self.version(name, &rec.rotation_id);
        let deliveries: Vec<Delivery<'_>> = policy
            .distribute
            .iter()
            .map(|d| Delivery {
                policy: name,
                distribution: d,
                credential: &rec.pending,
                version: &version,
            })
            .collect();
        let to = policy
            .distribute
            .iter()
            .map(|d| format!("{}/{}", d.namespace, d.secret))
            .collect::<Vec<_>>()
            .join(", ");
        self.record(
            name,
            &rec.rotation_id,
            "rotate.distribute",
            AuditOutcome::Started,
            main_value(&rec.pending),
            Some(format!("secrets {to} via {}", sink.describe())),
        )
        .await?;
        let mut attempt = 0;
        loop {
            match deliver_all(sink.as_ref(), &deliveries, || drop(permit.take())).await {
                Ok(reports) => {
                    self.record(
                        name,
                        &rec.rotation_id,
                        "rotate.distribute",
                        AuditOutcome::Ok,
                        main_value(&rec.pending),
                        Some(summarize(&reports)),
                    )
                    .await?;
                    return Ok(());
                }
                Err(e) if e.is_retryable() && attempt + 1 < policy.max_attempts => {
                    attempt += 1;
                    tracing::warn!(policy = name, rotation_id = %rec.rotation_id, attempt, error = %e, "distribution failed; retrying");
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
                Err(e) => {
                    let outcome = if e.code() == Some(403) {
                        AuditOutcome::Denied
                    } else {
                        AuditOutcome::Error
                    };
                    self.record(
                        name,
                        &rec.rotation_id,
                        "rotate.distribute",
                        outcome,
                        None,
                        Some(e.to_string()),
                    )
                    .await?;
                    return Err(RotationError::Distribute {
                        policy: name.to_owned(),
                        rotation_id: rec.rotation_id.clone(),
                        source: e,
                    });
                }
            }
        }
    }

    /// The version written to pod templates: an HMAC (audit key) of the policy and rotation
    /// id. It changes with every rotation, lets an investigator match pods to audit events,
    /// and says nothing about the value.
    fn version(&self, policy: &str, rotation_id: &str) -> String {
        let input = SecretValue::from(format!("keyturn.dev/version\0{policy}\0{rotation_id}"));
        let mut hex = self.audit.hmac_key().hmac_hex(&input);
        hex.truncate(32);
        hex
    }

    /// Persists `rec` with a renewed lease.
    async fn save(
        &self,
        store: &dyn Store,
        fence: &Fence,
        rec: &mut InFlight,
        keep: &StateRecord,
    ) -> Result<Fence, StoreError> {
        rec.lease_until = self.lease_until();
        store
            .write_state(
                fence,
                &StateRecord {
                    in_flight: Some(rec.clone()),
                    ..keep.clone()
                },
            )
            .await
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.backoff_min.saturating_mul(1u32 << attempt.min(16));
        exp.min(self.backoff_max)
    }

    /// Abandons a rotation whose `set` or `test` kept failing: the target is put back so the
    /// CURRENT credential works, the in-flight record is cleared, and the failure is audited.
    #[allow(clippy::too_many_arguments)]
    async fn give_up(
        &self,
        name: &str,
        store: &dyn Store,
        target: &dyn Target,
        fence: &Fence,
        rec: InFlight,
        base: Option<&Current>,
        taint: Option<Taint>,
        error: &TargetError,
    ) -> Result<RotationOutcome, RotationError> {
        if let Err(e) = target.revert(base.map(|c| &c.fields), &rec.pending).await {
            tracing::error!(policy = name, rotation_id = %rec.rotation_id, error = %e, "could not revert the target after a failed rotation");
        }
        let failed = LastRotation {
            rotation_id: rec.rotation_id.clone(),
            started_at: rec.started_at,
            outcome: "failed".into(),
        };
        store
            .write_state(
                fence,
                &StateRecord {
                    in_flight: None,
                    last: Some(failed),
                    taint,
                },
            )
            .await
            .map_err(|source| RotationError::Store {
                policy: name.to_owned(),
                source,
            })?;
        self.record(
            name,
            &rec.rotation_id,
            "rotate.failed",
            AuditOutcome::Error,
            None,
            Some(error.to_string()),
        )
        .await?;
        tracing::error!(policy = name, rotation_id = %rec.rotation_id, attempts = rec.attempts, error = %error, "rotation given up; the current credential is unchanged");
        Ok(RotationOutcome::Failed {
            rotation_id: rec.rotation_id,
            error: error.to_string(),
        })
    }

    async fn record(
        &self,
        policy: &str,
        rotation_id: &str,
        action: &'static str,
        outcome: AuditOutcome,
        value: Option<&SecretValue>,
        detail: Option<String>,
    ) -> Result<(), RotationError> {
        let mut b = self
            .audit
            .event(self.actor.clone(), action, format!("policy/{policy}"))
            .outcome(outcome)
            .rotation_id(rotation_id);
        if let Some(v) = value {
            b = b.value(v);
        }
        if let Some(d) = detail {
            b = b.detail(d);
        }
        self.audit
            .record(b.build())
            .await
            .map(drop)
            .map_err(|source| RotationError::Audit {
                policy: policy.to_owned(),
                step: action,
                source,
            })
    }
}

impl Step {
    fn as_str_for_crash(self) -> &'static str {
        match self {
            Step::Set => "set",
            Step::Tested => "test",
            other => other.as_str(),
        }
    }
}

/// One line for the audit record: what each Secret and workload went through.
fn summarize(reports: &[DeliveryReport]) -> String {
    let mut parts = Vec::new();
    for r in reports {
        let secret = match &r.secret.outcome {
            SecretOutcome::Created => "created".to_owned(),
            SecretOutcome::Updated { keys } => format!("updated {}", keys.join(",")),
            SecretOutcome::Unchanged => "unchanged".to_owned(),
        };
        parts.push(format!("{}: {secret}", r.secret.object));
        for w in &r.restarts {
            let what = match &w.outcome {
                RestartOutcome::Restarted { .. } => "restarted",
                RestartOutcome::AlreadyCurrent { .. } => "already current",
                RestartOutcome::SkippedPaused => {
                    tracing::warn!(policy = %r.policy, workload = %w.object, "paused; not restarted, it picks up the new Secret when it next rolls");
                    "paused, not restarted"
                }
            };
            parts.push(format!("{}: {what}", w.object));
        }
    }
    parts.join("; ")
}

/// The secret part of a credential, whose HMAC goes into the audit record.
fn main_value(d: &SecretData) -> Option<&SecretValue> {
    d.get("password").or_else(|| d.get("value"))
}

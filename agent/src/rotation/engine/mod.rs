//! The rotation state machine: create → set → test → finish (→ distribute), each step
//! idempotent and audited around its side effect.
//!
//! Every side effect (the PENDING value written to the store, the target's `set`, the login
//! of `test`, the promote, each delivery attempt, the revert of a given-up rotation) is
//! bracketed by two audit events of the same action: an intent (outcome `started`) that must
//! be durable before the effect runs, so an unwritable audit log stops the rotation before
//! it (fail closed), and an outcome (`ok`, `error` or `denied`, with the reason: the step,
//! the target or store, the kind of error, never a value) once the effect has returned. An
//! intent without an outcome therefore means the process stopped while the effect ran; the
//! log never calls a step `ok` that it did not see succeed.
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

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyturn_core::SecretValue;
use keyturn_core::audit::{Actor, AuditError, AuditLog, Outcome as AuditOutcome};
use keyturn_core::vault::SecretData;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::generate::generate;
use super::observer::Observer;
use super::store::{
    Current, Fence, InFlight, LastRotation, StateRecord, Step, Store, StoreError, StoreView,
    same_fields,
};
use super::target::{Target, TargetError};
use crate::distribute::{
    Delivery, DeliveryReport, DistributeError, RestartOutcome, SecretOutcome, Sink, deliver_all,
};
use crate::fence::Guard;
use crate::policy::Policy;

/// Why a rotation runs.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// The schedule's slot that fell due at this time.
    Schedule {
        /// The slot's due time (before jitter).
        due: DateTime<Utc>,
    },
    /// A rotation found in flight is to be driven to its end; when it has ended meanwhile
    /// (another process finished it), nothing new starts: the slot it served is served.
    Resume,
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
    /// An audit event could not be written: an intent, so its step did not run, or an
    /// outcome, so the rotation stopped before its next step (fail closed either way).
    #[error("policy {policy}: audit log refused the {step} event, rotation stopped: {source}")]
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
    /// This process may not act now (its guard refused, see [`crate::fence`]): the rotation
    /// stopped before the step's side effect, at its last durable step, and is resumed by
    /// this process once it may act again or by the replica that takes the policy over.
    #[error("policy {policy}: {step} not started: {source}")]
    Fenced {
        /// The policy.
        policy: String,
        /// The step that did not run.
        step: &'static str,
        /// Why.
        #[source]
        source: crate::fence::Fenced,
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
    guard: Option<Arc<dyn Guard>>,
    observer: Option<Arc<dyn Observer>>,
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
            guard: None,
            observer: None,
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

    /// Tells `observer` when a rotation starts and when its value is delivered.
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
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

    /// Asks `guard` right before every side effect (see [`crate::fence`]).
    #[must_use]
    pub fn with_guard(mut self, guard: Arc<dyn Guard>) -> Self {
        self.guard = Some(guard);
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

    /// Whether this process may perform `step`'s side effect now.
    // The steps' own error type, as every step returns: boxing it here alone gains nothing.
    #[allow(clippy::result_large_err)]
    fn allowed(&self, policy: &str, step: &'static str) -> Result<(), RotationError> {
        match self.guard.as_ref().map(|g| g.check()) {
            Some(Err(source)) => Err(RotationError::Fenced {
                policy: policy.to_owned(),
                step,
                source,
            }),
            _ => Ok(()),
        }
    }

    /// Right before a side effect of a claimed rotation: this process may act, and its claim
    /// has at least half its lease left (renewed first, by a compare-and-set, when it has
    /// not). So the effect starts while no other process may take the rotation over, however
    /// long the steps before it took (retries, backoff, a slow target).
    async fn before_effect(
        &self,
        run: &mut Run<'_>,
        step: &'static str,
    ) -> Result<(), RotationError> {
        self.allowed(run.name(), step)?;
        if run.rec.lease_until - Utc::now() < self.half_lease() {
            self.save(run).await?;
        }
        Ok(())
    }

    fn lease_until(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::MAX)
    }

    /// Runs (or resumes) `policy`'s rotation to its end.
    ///
    /// The steps, each a method: `claim` (a new rotation's `create`, or the take-over of one
    /// in flight), then from the rotation's step on: `attempt` at set and test (`give_up`
    /// after too many failures), `promote`, `deliver` and `finish`.
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
        let mut permit = match &self.limit {
            Some(l) => l.clone().acquire_owned().await.ok(),
            None => None,
        };
        let view = store.view().await.map_err(|source| RotationError::Store {
            policy: policy.name.clone(),
            source,
        })?;
        let mut run = match self.claim(policy, store, target, trigger, view).await? {
            ControlFlow::Continue(run) => run,
            ControlFlow::Break(outcome) => return Ok(outcome),
        };
        run.skip_if_promoted();
        loop {
            match run.rec.step {
                Step::Created | Step::Set => {
                    if let ControlFlow::Break(outcome) = self.attempt(&mut run).await? {
                        return Ok(outcome);
                    }
                }
                Step::Tested => self.promote(&mut run).await?,
                Step::Finished => {
                    self.deliver(&mut run, &mut permit).await?;
                    return self.finish(run).await;
                }
            }
        }
    }

    /// Claims the policy's rotation as found in `view`: the one in flight when this process
    /// holds it or its holder's lease has run out (a resume), else a new one unless the slot
    /// is served. Breaks with the outcome when there is nothing to drive: another live
    /// process holds it, or won the claim, or the slot is served.
    async fn claim<'a>(
        &self,
        policy: &'a Policy,
        store: &'a dyn Store,
        target: &'a dyn Target,
        trigger: &Trigger,
        view: StoreView,
    ) -> Result<ControlFlow<RotationOutcome, Run<'a>>, RotationError> {
        // What every state write keeps besides the in-flight record.
        let keep = StateRecord {
            in_flight: None,
            last: view.state.last.clone(),
            taint: view.state.taint.clone(),
            failures: view.state.failures.clone(),
        };
        let now = Utc::now();
        let (rec, resumed, detail) = match view.state.in_flight {
            Some(f) if f.holder != self.holder && f.lease_until > now => {
                return Ok(ControlFlow::Break(RotationOutcome::Busy {
                    holder: f.holder,
                }));
            }
            Some(mut f) => {
                let detail = format!("at step {} (was held by {})", f.step.as_str(), f.holder);
                f.holder.clone_from(&self.holder);
                f.lease_until = self.lease_until();
                (f, true, Some(detail))
            }
            None => {
                if matches!(trigger, Trigger::Resume) || slot_served(trigger, &view.state, now) {
                    return Ok(ControlFlow::Break(RotationOutcome::AlreadyDone));
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
                (rec, false, start_reason(trigger))
            }
        };
        let mut run = Run {
            policy,
            store,
            target,
            keep,
            base: view.current,
            fence: view.fence,
            rec,
            resumed,
        };
        Ok(if self.write_claim(&mut run, detail).await? {
            ControlFlow::Continue(run)
        } else {
            ControlFlow::Break(RotationOutcome::Busy {
                holder: "another process".into(),
            })
        })
    }

    /// Writes the claim, with its intent and outcome events: `create` makes a new
    /// rotation's PENDING value durable (its value's HMAC is in both events), `resume`
    /// renews the lease under this holder. False when another process wrote first.
    async fn write_claim(
        &self,
        run: &mut Run<'_>,
        detail: Option<String>,
    ) -> Result<bool, RotationError> {
        let action = if run.resumed {
            "rotate.resume"
        } else {
            "rotate.create"
        };
        self.allowed(run.name(), action)?;
        let value = if run.resumed {
            None
        } else {
            main_value(&run.rec.pending)
        };
        self.record(
            run.name(),
            &run.rec.rotation_id,
            action,
            AuditOutcome::Started,
            value,
            detail,
        )
        .await?;
        let state = StateRecord {
            in_flight: Some(run.rec.clone()),
            ..run.keep.clone()
        };
        let written = run.store.write_state(&run.fence, &state).await;
        if written.is_ok() && !run.resumed {
            crash_point("create");
        }
        self.record_store_outcome(
            run.name(),
            &run.rec.rotation_id,
            action,
            run.store,
            value,
            &written,
        )
        .await?;
        match written {
            Ok(fence) => {
                run.fence = fence;
                if let Some(o) = &self.observer {
                    o.started(run.policy, &run.rec.rotation_id);
                }
                Ok(true)
            }
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(run.store_error(e)),
        }
    }

    /// One attempt at the rotation's next step, `set` (from `created`) or `test` (from
    /// `set`), bracketed by its intent and outcome. A failure is recorded in the state (so
    /// the attempt bound holds across restarts) and waited out; the last one allowed gives
    /// the rotation up, which breaks with its outcome.
    async fn attempt(
        &self,
        run: &mut Run<'_>,
    ) -> Result<ControlFlow<RotationOutcome>, RotationError> {
        let (action, step, next) = if run.rec.step == Step::Created {
            ("rotate.set", "set", Step::Set)
        } else {
            ("rotate.test", "test", Step::Tested)
        };
        let attempt = format!(
            "attempt {} of {}",
            run.rec.attempts.saturating_add(1),
            run.policy.max_attempts
        );
        let on = format!("{step} on {}, {attempt}", run.target.describe());
        self.before_effect(run, action).await?;
        // Intent: durable before the target is touched, or the step does not run.
        self.record(
            run.name(),
            &run.rec.rotation_id,
            action,
            AuditOutcome::Started,
            run.value(),
            Some(on.clone()),
        )
        .await?;
        let r = if next == Step::Set {
            run.target.set(&run.rec.pending).await
        } else {
            run.target.test(&run.rec.pending).await
        };
        let e = match r {
            Ok(()) => {
                // Between the effect and its outcome event: a crash here leaves an intent
                // without an outcome, which is what it was.
                crash_point(next.as_str_for_crash());
                self.record(
                    run.name(),
                    &run.rec.rotation_id,
                    action,
                    AuditOutcome::Ok,
                    run.value(),
                    Some(on),
                )
                .await?;
                // Not persisted: a resume runs this step again (idempotent).
                run.rec.step = next;
                run.rec.attempts = 0;
                return Ok(ControlFlow::Continue(()));
            }
            Err(e) => e,
        };
        self.record(
            run.name(),
            &run.rec.rotation_id,
            action,
            AuditOutcome::Error,
            run.value(),
            Some(format!(
                "{step} failed ({}), {attempt}: {e}",
                target_error_kind(&e)
            )),
        )
        .await?;
        run.rec.attempts += 1;
        tracing::warn!(policy = run.name(), rotation_id = %run.rec.rotation_id, step = action, attempt = run.rec.attempts, error = %e, "rotation step failed");
        if run.rec.attempts >= run.policy.max_attempts {
            return Ok(ControlFlow::Break(self.give_up(run, &e).await?));
        }
        self.save(run).await?;
        tokio::time::sleep(self.backoff(run.rec.attempts)).await;
        Ok(ControlFlow::Continue(()))
    }

    /// The `finish` step: PENDING becomes CURRENT in the store (a compare-and-set on the
    /// CURRENT read at the claim), bracketed by its intent and outcome. Not recorded in the
    /// state: a resume recognises it from the store (see `Run::skip_if_promoted`).
    async fn promote(&self, run: &mut Run<'_>) -> Result<(), RotationError> {
        self.before_effect(run, "rotate.finish").await?;
        self.record(
            run.name(),
            &run.rec.rotation_id,
            "rotate.finish",
            AuditOutcome::Started,
            run.value(),
            Some(format!("promote to CURRENT in {}", run.store.location())),
        )
        .await?;
        let promoted = run.store.promote(&run.rec, run.base.as_ref()).await;
        if promoted.is_ok() {
            crash_point("finish");
        }
        self.record_store_outcome(
            run.name(),
            &run.rec.rotation_id,
            "rotate.finish",
            run.store,
            run.value(),
            &promoted,
        )
        .await?;
        promoted.map_err(|e| run.store_error(e))?;
        run.rec.step = Step::Finished;
        Ok(())
    }

    /// Delivers the promoted value to the policy's `distribute` entries, if it has any.
    /// Distribution runs again in full on every resume: each part is idempotent, so a crash
    /// after it and before the state is cleared costs nothing but a no-op pass. On failure
    /// the rotation is left in flight at `finished`, so `status` shows a promoted,
    /// undelivered value and any later run delivers it.
    async fn deliver(
        &self,
        run: &mut Run<'_>,
        permit: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<(), RotationError> {
        if run.policy.distribute.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.distribute(run, permit).await {
            // Fenced: the record stays as it is, for whoever may act to resume.
            if matches!(e, RotationError::Fenced { .. }) {
                return Err(e);
            }
            if let Err(se) = self.save(run).await {
                tracing::warn!(policy = run.name(), rotation_id = %run.rec.rotation_id, error = %se, "could not record the undelivered rotation; it is still resumed from its store");
            }
            return Err(e);
        }
        crash_point("distribute");
        Ok(())
    }

    /// Ends a completed rotation: the in-flight record is cleared and the rotation recorded
    /// as the last one (which ends any run of failures, and any taint set before it began).
    async fn finish(&self, run: Run<'_>) -> Result<RotationOutcome, RotationError> {
        let rec = &run.rec;
        let done = LastRotation {
            rotation_id: rec.rotation_id.clone(),
            started_at: rec.started_at,
            outcome: "ok".into(),
        };
        // A taint set before this rotation began refers to a value it replaced.
        let taint = run.keep.taint.clone().filter(|t| t.at > rec.started_at);
        self.allowed(run.name(), "rotate.done")?;
        run.store
            .write_state(
                &run.fence,
                // A completed rotation ends any run of failures.
                &StateRecord {
                    in_flight: None,
                    last: Some(done),
                    taint,
                    failures: None,
                },
            )
            .await
            .map_err(|e| run.store_error(e))?;
        self.record(
            run.name(),
            &rec.rotation_id,
            "rotate.done",
            AuditOutcome::Ok,
            run.value(),
            None,
        )
        .await?;
        tracing::info!(policy = run.name(), rotation_id = %rec.rotation_id, resumed = run.resumed, "rotated");
        Ok(RotationOutcome::Rotated {
            rotation_id: rec.rotation_id.clone(),
            started_at: rec.started_at,
            resumed: run.resumed,
        })
    }

    /// The `distribute` step: every Secret of the policy is written, and only when all
    /// writes succeeded are the workloads restarted (so no pod starts on the old value).
    /// Retryable failures are retried with backoff; the rest stop the rotation here,
    /// audited, resumable.
    async fn distribute(
        &self,
        run: &mut Run<'_>,
        permit: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<(), RotationError> {
        let policy = run.policy;
        let name = policy.name.as_str();
        let Some(sink) = &self.sink else {
            self.record(
                name,
                &run.rec.rotation_id,
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
        let version = self.version(name, &run.rec.rotation_id);
        let to = policy
            .distribute
            .iter()
            .map(|d| format!("{}/{}", d.namespace, d.secret))
            .collect::<Vec<_>>()
            .join(", ");
        let mut attempt: u32 = 0;
        loop {
            self.before_effect(run, "rotate.distribute").await?;
            let rec = &run.rec;
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
            let of = format!("attempt {} of {}", attempt + 1, policy.max_attempts);
            // Each attempt writes Secrets and may restart workloads: each has its intent.
            self.record(
                name,
                &rec.rotation_id,
                "rotate.distribute",
                AuditOutcome::Started,
                main_value(&rec.pending),
                Some(format!("secrets {to} via {}, {of}", sink.describe())),
            )
            .await?;
            let delivered = deliver_all(sink.as_ref(), &deliveries, || drop(permit.take())).await;
            let e = match delivered {
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
                    if let Some(o) = &self.observer {
                        o.delivered(policy, &rec.rotation_id, &reports);
                    }
                    return Ok(());
                }
                Err(e) => e,
            };
            if let DistributeError::Fenced { source, .. } = &e {
                self.record(
                    name,
                    &rec.rotation_id,
                    "rotate.distribute",
                    AuditOutcome::Error,
                    main_value(&rec.pending),
                    Some(format!("distribute stopped, {of}: {e}")),
                )
                .await?;
                return Err(RotationError::Fenced {
                    policy: name.to_owned(),
                    step: "rotate.distribute",
                    source: *source,
                });
            }
            let outcome = if e.code() == Some(403) {
                AuditOutcome::Denied
            } else {
                AuditOutcome::Error
            };
            let retry = e.is_retryable() && attempt + 1 < policy.max_attempts;
            self.record(
                name,
                &rec.rotation_id,
                "rotate.distribute",
                outcome,
                main_value(&rec.pending),
                Some(format!(
                    "distribute failed, {of}{}: {e}",
                    if retry { ", retrying" } else { "" }
                )),
            )
            .await?;
            if retry {
                attempt += 1;
                tracing::warn!(policy = name, rotation_id = %rec.rotation_id, attempt, error = %e, "distribution failed; retrying");
                tokio::time::sleep(self.backoff(attempt)).await;
                continue;
            }
            return Err(RotationError::Distribute {
                policy: name.to_owned(),
                rotation_id: rec.rotation_id.clone(),
                source: e,
            });
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

    /// Persists the rotation with a renewed lease.
    async fn save(&self, run: &mut Run<'_>) -> Result<(), RotationError> {
        self.allowed(run.name(), "rotate.save")?;
        run.rec.lease_until = self.lease_until();
        run.fence = run
            .store
            .write_state(
                &run.fence,
                &StateRecord {
                    in_flight: Some(run.rec.clone()),
                    ..run.keep.clone()
                },
            )
            .await
            .map_err(|e| run.store_error(e))?;
        Ok(())
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.backoff_min.saturating_mul(1u32 << attempt.min(16));
        exp.min(self.backoff_max)
    }

    /// Abandons a rotation whose `set` or `test` kept failing: the target is put back so the
    /// CURRENT credential works, the in-flight record is cleared, and the failure is audited.
    async fn give_up(
        &self,
        run: &Run<'_>,
        error: &TargetError,
    ) -> Result<RotationOutcome, RotationError> {
        let name = run.name();
        let rec = &run.rec;
        let base = run.base.as_ref();
        // The revert changes the target's credential too, so it has its intent and outcome;
        // an unwritable intent leaves the rotation in flight (its attempts as last saved), to
        // be resumed and given up again.
        self.allowed(name, "rotate.revert")?;
        let about = format!(
            "put {} back to CURRENT after {} failed attempts",
            run.target.describe(),
            rec.attempts
        );
        self.record(
            name,
            &rec.rotation_id,
            "rotate.revert",
            AuditOutcome::Started,
            base.and_then(|c| main_value(&c.fields)),
            Some(about.clone()),
        )
        .await?;
        let (outcome, detail) = match run
            .target
            .revert(base.map(|c| &c.fields), &rec.pending)
            .await
        {
            Ok(()) => (AuditOutcome::Ok, about),
            Err(e) => {
                tracing::error!(policy = name, rotation_id = %rec.rotation_id, error = %e, "could not revert the target after a failed rotation");
                (
                    AuditOutcome::Error,
                    format!("revert failed ({}): {e}", target_error_kind(&e)),
                )
            }
        };
        self.record(
            name,
            &rec.rotation_id,
            "rotate.revert",
            outcome,
            base.and_then(|c| main_value(&c.fields)),
            Some(detail),
        )
        .await?;
        let failed = LastRotation {
            rotation_id: rec.rotation_id.clone(),
            started_at: rec.started_at,
            outcome: "failed".into(),
        };
        self.allowed(name, "rotate.failed")?;
        run.store
            .write_state(
                &run.fence,
                // The run of failures is the daemon's to count: it records this one (and its
                // backoff) after this write, so the record it had is kept meanwhile, and
                // stays if that write fails or no daemon runs this rotation.
                &StateRecord {
                    in_flight: None,
                    last: Some(failed),
                    ..run.keep.clone()
                },
            )
            .await
            .map_err(|e| run.store_error(e))?;
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
            rotation_id: rec.rotation_id.clone(),
            error: error.to_string(),
        })
    }

    /// The outcome event of a store write (`create`, `resume`, `finish`): `ok` naming the
    /// store, else `denied` (the store refused for lack of permission) or `error`, with the
    /// kind of failure and the store's own words (which name the location, never a value).
    async fn record_store_outcome<T>(
        &self,
        policy: &str,
        rotation_id: &str,
        action: &'static str,
        store: &dyn Store,
        value: Option<&SecretValue>,
        result: &Result<T, StoreError>,
    ) -> Result<(), RotationError> {
        let step = action.trim_start_matches("rotate.");
        let (outcome, detail) = match result {
            Ok(_) => (AuditOutcome::Ok, format!("{step} in {}", store.location())),
            Err(e) => (
                if e.is_permission_denied() {
                    AuditOutcome::Denied
                } else {
                    AuditOutcome::Error
                },
                format!("{step} failed ({}): {e}", e.kind().as_str()),
            ),
        };
        self.record(policy, rotation_id, action, outcome, value, Some(detail))
            .await
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

/// One rotation being driven: what [`Engine::rotate`] carries from step to step.
struct Run<'a> {
    policy: &'a Policy,
    store: &'a dyn Store,
    target: &'a dyn Target,
    /// What every state write keeps besides the in-flight record, as read at the claim.
    keep: StateRecord,
    /// CURRENT as read at the claim: the promote's base, and what a revert puts back.
    base: Option<Current>,
    /// The token for the next state write.
    fence: Fence,
    /// The rotation, at its step in this run (`set` and `tested` are not persisted).
    rec: InFlight,
    /// Whether it was resumed from an earlier run.
    resumed: bool,
}

impl Run<'_> {
    fn name(&self) -> &str {
        &self.policy.name
    }

    /// PENDING's secret part, for the audit records.
    fn value(&self) -> Option<&SecretValue> {
        main_value(&self.rec.pending)
    }

    fn store_error(&self, source: StoreError) -> RotationError {
        RotationError::Store {
            policy: self.policy.name.clone(),
            source,
        }
    }

    /// A crash after the promote and before the state was cleared: CURRENT already is
    /// PENDING, so what is left is delivery (nothing is set, tested or promoted again).
    fn skip_if_promoted(&mut self) {
        if self.rec.step < Step::Finished
            && self
                .base
                .as_ref()
                .is_some_and(|c| same_fields(&c.fields, &self.rec.pending))
        {
            self.rec.step = Step::Finished;
        }
    }
}

/// Whether a scheduled slot is served already: the last rotation succeeded and started at
/// or after the slot's due time (a failed one leaves it due), and no taint has fallen due.
fn slot_served(trigger: &Trigger, state: &StateRecord, now: DateTime<Utc>) -> bool {
    let taint_due = state.taint.as_ref().is_some_and(|t| t.rotate_after <= now);
    matches!(
        (trigger, &state.last),
        (Trigger::Schedule { due }, Some(l)) if l.outcome == "ok" && l.started_at >= *due && !taint_due
    )
}

/// Why a new rotation starts, for its `create` intent.
fn start_reason(trigger: &Trigger) -> Option<String> {
    match trigger {
        Trigger::Manual { reason } => reason.clone(),
        Trigger::Resume => Some("resume".into()),
        Trigger::Schedule { due } if *due == DateTime::<Utc>::UNIX_EPOCH => {
            Some("first rotation".into())
        }
        Trigger::Schedule { due } => Some(format!("scheduled for {}", due.to_rfc3339())),
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

/// The kind of a target failure, for audit reasons (the message follows it).
fn target_error_kind(e: &TargetError) -> &'static str {
    match e {
        TargetError::Unreachable { .. } => "unreachable",
        TargetError::Refused { .. } => "refused",
        TargetError::Admin { .. } => "admin credential",
    }
}

#[cfg(test)]
mod tests;

//! `keyturn run`: the rotation daemon.
//!
//! Start-up resumes every rotation left in flight before anything new is scheduled, then
//! each policy gets one slot in the timer [`queue`]: the first due time after its last
//! rotation (so a slot missed while the daemon was down runs once, at once), plus the
//! policy's deterministic jitter. One tokio timer sleeps until the earliest slot; nothing
//! polls. Due rotations run as tasks under a concurrency limit; when one ends, its policy's
//! next slot is queued.
//!
//! The policy directory is watched: a valid change replaces the policy set (changed policies
//! are rescheduled, removed ones forgotten); an invalid one is logged and the old set stays.
//! On shutdown nothing new starts; rotations in flight get a grace period to finish, and
//! whatever is cut off is resumed by the next start.

pub mod metered;
pub mod metrics;
pub mod queue;
pub mod server;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::backends::Backends;
use crate::breakglass::Journal;
use crate::policy::{self, Policy, PolicyErrors};
use crate::rotation::store::Store as _;
use crate::rotation::{Engine, RotationOutcome, Trigger};
use crate::schedule::jittered;
pub use metrics::Metrics;
use queue::{Queue, Slot};

/// How long after a failed rotation the policy is tried again (unless its next slot is
/// sooner).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(600);

/// Daemon settings.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The policy file or directory.
    pub policies: PathBuf,
    /// Rotations that may run at once.
    pub concurrency: usize,
    /// How long in-flight rotations may take to finish after shutdown is asked.
    pub grace: Duration,
    /// Quiet time after a file change before the policy set is reloaded (editors write
    /// several events per save).
    pub reload_debounce: Duration,
    /// The break-glass journal to watch (see [`crate::breakglass`]); `None`: not watched.
    pub journal: Option<Journal>,
    /// How often the journal is read.
    pub journal_poll: Duration,
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The initial policy set is invalid.
    #[error("{0}")]
    Policies(#[from] PolicyErrors),
    /// The directory watcher could not be started.
    #[error("cannot watch {path}: {cause}")]
    Watch {
        /// The policy path.
        path: PathBuf,
        /// Why.
        cause: String,
    },
}

impl DaemonError {
    /// The process exit code.
    #[must_use]
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Policies(_) => 64,
            Self::Watch { .. } => 74,
        }
    }
}

/// What a finished rotation task reports back to the loop.
#[derive(Debug)]
struct Done {
    policy: String,
    /// The start of the rotation that now defines CURRENT, if one completed.
    rotated_at: Option<DateTime<Utc>>,
    failed: bool,
}

/// The daemon.
#[derive(Debug)]
pub struct Daemon {
    cfg: DaemonConfig,
    engine: Engine,
    backends: Backends,
    metrics: Metrics,
    ready: watch::Sender<bool>,
}

impl Daemon {
    /// A daemon; `ready` turns true once the policies are loaded and the stores answered.
    #[must_use]
    pub fn new(
        cfg: DaemonConfig,
        engine: Engine,
        backends: Backends,
        metrics: Metrics,
        ready: watch::Sender<bool>,
    ) -> Self {
        let limit = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
        Self {
            engine: engine.with_limit(limit),
            cfg,
            backends,
            metrics,
            ready,
        }
    }

    /// Runs until `shutdown` resolves.
    ///
    /// # Errors
    /// An invalid initial policy set (nothing runs), or a watcher that cannot start.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
        let mut policies: BTreeMap<String, Arc<Policy>> = policy::load(&self.cfg.policies)?
            .into_iter()
            .map(|p| (p.name.clone(), Arc::new(p)))
            .collect();
        tracing::info!(policies = policies.len(), path = %self.cfg.policies.display(), "policies loaded");
        let (reload_tx, mut reload_rx) = mpsc::channel::<()>(1);
        let _watcher = watch_dir(&self.cfg.policies, reload_tx)?;
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut tasks = JoinSet::new();
        let mut queue = Queue::new();
        let mut running: BTreeMap<String, ()> = BTreeMap::new();

        // Start-up: read each policy's state; resume in-flight rotations first, queue the rest.
        let scan = self.scan(&policies).await;
        let mut resume = Vec::new();
        for (name, found) in scan {
            match found {
                Scan::InFlight => resume.push(name),
                Scan::Last(last, taint) => {
                    self.queue_next(&mut queue, &policies[&name], last, false);
                    if let Some(t) = taint {
                        queue_taint(&mut queue, &name, t);
                    }
                }
                Scan::Unreadable => self.queue_retry(&mut queue, &name),
            }
        }
        for name in resume {
            running.insert(name.clone(), ());
            self.spawn(
                &mut tasks,
                &done_tx,
                policies[&name].clone(),
                Trigger::Manual {
                    reason: Some("resume after restart".into()),
                },
            );
        }
        let _ = self.ready.send(true);
        // Slots that fell due while no daemon ran are catch-up work, not timer latency.
        let up_since = Utc::now();

        // The break-glass journal: one KV read per tick, whatever the number of policies.
        let journal = self.cfg.journal.clone().zip(self.backends.vault.clone());
        let mut journal_seen: Option<u64> = None;
        let mut journal_tick =
            tokio::time::interval(self.cfg.journal_poll.max(Duration::from_millis(100)));
        journal_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

        tokio::pin!(shutdown);
        loop {
            let sleep = match queue.next_fire() {
                Some(t) => {
                    let wait = (t - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                    tokio::time::sleep(wait)
                }
                None => tokio::time::sleep(Duration::from_secs(86_400 * 365)),
            };
            tokio::select! {
                () = &mut shutdown => break,
                () = sleep => {
                    let now = Utc::now();
                    for slot in queue.pop_due(now) {
                        let Some(p) = policies.get(&slot.policy) else { continue };
                        // How late the timer fired: what a policy's owner can expect beyond
                        // its own jitter. Measured here, before the concurrency limit (in the engine).
                        if slot.fire_at >= up_since {
                            let late = (now - slot.fire_at).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
                            self.metrics.fire_delay.observe(late);
                            tracing::debug!(policy = %slot.policy, delay_ms = late * 1000.0, "slot fired");
                        }
                        if running.insert(slot.policy.clone(), ()).is_some() {
                            continue;
                        }
                        self.spawn(&mut tasks, &done_tx, p.clone(), Trigger::Schedule { due: slot.due });
                    }
                }
                Some(done) = done_rx.recv() => {
                    running.remove(&done.policy);
                    if let Some(p) = policies.get(&done.policy) {
                        if let Some(at) = done.rotated_at {
                            self.metrics.rotated_at(&done.policy, at);
                        }
                        self.queue_next(&mut queue, p, done.rotated_at, done.failed);
                    }
                }
                Some(()) = reload_rx.recv() => {
                    tokio::time::sleep(self.cfg.reload_debounce).await;
                    while reload_rx.try_recv().is_ok() {}
                    match policy::load(&self.cfg.policies) {
                        Err(e) => tracing::error!(errors = %e, "policy change rejected; the previous policies stay in force"),
                        Ok(new) => {
                            let new: BTreeMap<String, Arc<Policy>> = new.into_iter().map(|p| (p.name.clone(), Arc::new(p))).collect();
                            self.apply_reload(&mut queue, &policies, &new, &running).await;
                            policies = new;
                        }
                    }
                }
                _ = journal_tick.tick(), if journal.is_some() => {
                    let Some((j, vault)) = &journal else { continue };
                    match j.read(vault).await {
                        Ok((entries, _)) => {
                            let newest = entries.last().map_or(0, |e| e.seq);
                            // The first read is the baseline: earlier actions are in the audit
                            // log, and their taints were found by the start-up scan.
                            if let Some(seen) = journal_seen {
                                for e in entries.iter().filter(|e| e.seq > seen) {
                                    self.metrics.breakglass.get_or_create(&metrics::ActionLabel { action: e.action.clone() }).inc();
                                    tracing::warn!(policy = %e.policy, action = %e.action, "break-glass action by an operator");
                                    if let Some(t) = e.rotate_after
                                        && policies.contains_key(&e.policy)
                                        && !running.contains_key(&e.policy)
                                    {
                                        queue_taint(&mut queue, &e.policy, t);
                                    }
                                }
                            }
                            journal_seen = Some(journal_seen.map_or(newest, |s| s.max(newest)));
                        }
                        Err(e) => tracing::debug!(error = %e, "cannot read the break-glass journal"),
                    }
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = joined {
                        tracing::error!(error = %e, "rotation task panicked");
                    }
                }
            }
        }

        tracing::info!(
            in_flight = tasks.len(),
            grace_s = self.cfg.grace.as_secs(),
            "shutting down: no new rotations; waiting for those in flight"
        );
        let _ = self.ready.send(false);
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.cfg.grace, drain).await.is_err() {
            tracing::warn!(
                left = tasks.len(),
                "grace period over; unfinished rotations resume at the next start"
            );
            tasks.abort_all();
        }
        Ok(())
    }

    fn spawn(
        &self,
        tasks: &mut JoinSet<()>,
        done: &mpsc::UnboundedSender<Done>,
        p: Arc<Policy>,
        trigger: Trigger,
    ) {
        let engine = self.engine.clone();
        let backends = self.backends.clone();
        let metrics = self.metrics.clone();
        let done = done.clone();
        tasks.spawn(async move {
            let started = std::time::Instant::now();
            let (outcome, rotated_at, failed) =
                rotate_once(&engine, &backends, &metrics, &p, &trigger).await;
            metrics
                .rotation_duration
                .observe(started.elapsed().as_secs_f64());
            metrics.outcome(&p.name, outcome);
            let _ = done.send(Done {
                policy: p.name.clone(),
                rotated_at,
                failed,
            });
        });
    }

    /// Reads every policy's state with bounded concurrency.
    async fn scan(&self, policies: &BTreeMap<String, Arc<Policy>>) -> Vec<(String, Scan)> {
        let limit = Arc::new(Semaphore::new(32));
        let mut set = JoinSet::new();
        for p in policies.values() {
            let p = p.clone();
            let backends = self.backends.clone();
            let limit = limit.clone();
            set.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let found = match backends.store(&p) {
                    Err(e) => {
                        tracing::error!(error = %e, "policy cannot run");
                        Scan::Unreadable
                    }
                    Ok(store) => match store.view().await {
                        Ok(v) if v.state.in_flight.is_some() => Scan::InFlight,
                        Ok(v) => Scan::Last(
                            v.state.last.filter(|l| l.outcome == "ok").map(|l| l.started_at),
                            v.state.taint.map(|t| t.rotate_after),
                        ),
                        Err(e) => {
                            tracing::error!(policy = %p.name, error = %e, "cannot read rotation state");
                            Scan::Unreadable
                        }
                    },
                };
                (p.name.clone(), found)
            });
        }
        let mut out = Vec::with_capacity(policies.len());
        while let Some(r) = set.join_next().await {
            if let Ok(x) = r {
                out.push(x);
            }
        }
        out
    }

    fn queue_next(&self, queue: &mut Queue, p: &Policy, last: Option<DateTime<Utc>>, failed: bool) {
        let now = Utc::now();
        let due = p.schedule.next_due(last, now);
        let mut fire_at = jittered(&p.name, due, p.window);
        if failed {
            let retry = now + chrono::Duration::from_std(RETRY_AFTER_FAILURE).unwrap_or_default();
            fire_at = fire_at.min(retry);
        }
        self.metrics
            .next_rotation
            .get_or_create(&metrics::PolicyLabel {
                policy: p.name.clone(),
            })
            .set(fire_at.timestamp());
        queue.schedule(Slot {
            policy: p.name.clone(),
            due,
            fire_at,
        });
    }

    fn queue_retry(&self, queue: &mut Queue, name: &str) {
        let at = Utc::now() + chrono::Duration::from_std(RETRY_AFTER_FAILURE).unwrap_or_default();
        queue.schedule(Slot {
            policy: name.to_owned(),
            due: at,
            fire_at: at,
        });
    }

    async fn apply_reload(
        &self,
        queue: &mut Queue,
        old: &BTreeMap<String, Arc<Policy>>,
        new: &BTreeMap<String, Arc<Policy>>,
        running: &BTreeMap<String, ()>,
    ) {
        for name in old.keys().filter(|n| !new.contains_key(*n)) {
            queue.cancel(name);
            self.metrics.forget(name);
        }
        let changed: BTreeMap<String, Arc<Policy>> = new
            .iter()
            .filter(|(n, p)| old.get(*n).is_none_or(|o| o != *p) && !running.contains_key(*n))
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect();
        for (name, found) in self.scan(&changed).await {
            match found {
                Scan::InFlight | Scan::Unreadable => self.queue_retry(queue, &name),
                Scan::Last(last, taint) => {
                    self.queue_next(queue, &new[&name], last, false);
                    if let Some(t) = taint {
                        queue_taint(queue, &name, t);
                    }
                }
            }
        }
        tracing::info!(
            policies = new.len(),
            changed = changed.len(),
            "policies reloaded"
        );
    }
}

enum Scan {
    InFlight,
    /// The last good rotation's start, and when a taint falls due.
    Last(Option<DateTime<Utc>>, Option<DateTime<Utc>>),
    Unreadable,
}

/// Schedules the rotation of a revealed value when its taint falls due (replacing the
/// policy's next slot; the normal schedule resumes after that rotation).
fn queue_taint(queue: &mut Queue, policy: &str, at: DateTime<Utc>) {
    queue.schedule(Slot {
        policy: policy.to_owned(),
        due: at,
        fire_at: at,
    });
}

/// One rotation of `p`; returns the metric outcome, the start of the rotation that now
/// defines CURRENT (if any), and whether it should be retried soon.
async fn rotate_once(
    engine: &Engine,
    backends: &Backends,
    metrics: &Metrics,
    p: &Policy,
    trigger: &Trigger,
) -> (&'static str, Option<DateTime<Utc>>, bool) {
    let (store, target) = match (backends.store(p), backends.target(p).await) {
        (Ok(s), Ok(t)) => (metered::Metered::new(s, metrics.clone()), t),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "policy cannot run");
            return ("error", None, true);
        }
    };
    match engine.rotate(p, &store, target.as_ref(), trigger).await {
        Ok(RotationOutcome::Rotated { started_at, .. }) => ("rotated", Some(started_at), false),
        Ok(RotationOutcome::AlreadyDone) => match store.state().await {
            Ok(s) => ("already-done", s.last.map(|l| l.started_at), false),
            Err(_) => ("already-done", None, true),
        },
        Ok(RotationOutcome::Busy { holder }) => {
            tracing::info!(policy = %p.name, %holder, "another process is rotating this policy");
            ("busy", None, true)
        }
        Ok(RotationOutcome::Failed { .. }) => ("failed", None, true),
        Err(e) => {
            tracing::error!(error = %e, "rotation stopped; it resumes on the next attempt");
            ("error", None, true)
        }
    }
}

/// Watches the policy path; every change sends a (coalesced) reload request.
fn watch_dir(
    path: &std::path::Path,
    tx: mpsc::Sender<()>,
) -> Result<notify::RecommendedWatcher, DaemonError> {
    use notify::Watcher;
    let err = |e: notify::Error| DaemonError::Watch {
        path: path.to_owned(),
        cause: e.to_string(),
    };
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !ev.kind.is_access()
        {
            let _ = tx.try_send(());
        }
    })
    .map_err(err)?;
    w.watch(path, notify::RecursiveMode::NonRecursive)
        .map_err(err)?;
    Ok(w)
}

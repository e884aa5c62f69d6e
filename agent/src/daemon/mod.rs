//! `keyturn run`: the rotation daemon.
//!
//! Start-up resumes every rotation left in flight before anything new is scheduled, then
//! each policy gets one slot in the timer [`queue`]: the first due time after its last
//! rotation (so a slot missed while the daemon was down runs once, at once), plus the
//! policy's deterministic jitter. One tokio timer sleeps until the earliest slot; nothing
//! polls. Due rotations run as tasks under a concurrency limit; when one ends, its policy's
//! next slot is queued.
//!
//! A rotation that fails or stops, for whatever reason (a target refusing, a store or the
//! Kubernetes API denying, the audit log full), leaves its slot due and is tried again under
//! per-policy capped exponential backoff with jitter ([`crate::schedule::retry_at`]): the first
//! retry at least 30 s later, the delay doubling up to `retry_max`, never past the policy's
//! next slot. So one broken policy costs a handful of requests an hour, not a storm, and the
//! others rotate meanwhile. A policy whose next time cannot be computed is reported and left
//! out; nothing a policy says can stop the daemon.
//!
//! The policy directory is watched: a valid change replaces the policy set (changed policies
//! are rescheduled, removed ones forgotten); an invalid one is logged and the old set stays.
//! On shutdown nothing new starts; rotations in flight get a grace period to finish, and
//! whatever is cut off is resumed by the next start.

pub mod anchoring;
pub mod membership;
pub mod metered;
pub mod metrics;
pub mod queue;
pub mod report;
pub mod server;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyturn_core::exit::{ExitCode, HasExitCode};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::backends::Backends;
use crate::journal::Journal;
use crate::policy::kube_source::{self, Rejection, Snapshot, WatchConfig};
use crate::policy::{self, FilePolicy, Policy, PolicyErrors, PolicyObject};
use crate::rotation::store::{Failures, Store as _};
use crate::rotation::{Engine, RotationError, RotationOutcome, Trigger};
use crate::schedule::{jittered, retry_at};
use membership::Membership;
pub use metrics::Metrics;
use queue::{Queue, Slot};
use report::PolicyStatus;

/// Daemon settings.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The policy file or directory; `None`: policies come from RotationPolicy objects only.
    pub policies: Option<PathBuf>,
    /// Policies from RotationPolicy objects too; `None`: from the files only.
    pub objects: Option<ObjectSource>,
    /// Where facts about policies from objects are reported (their status and Events).
    pub status: PolicyStatus,
    /// Rotations that may run at once.
    pub concurrency: usize,
    /// How long in-flight rotations may take to finish after shutdown is asked.
    pub grace: Duration,
    /// Quiet time after a file change before the policy set is reloaded (editors write
    /// several events per save).
    pub reload_debounce: Duration,
    /// The break-glass journal to watch (see [`crate::journal`]); `None`: not watched.
    pub journal: Option<Journal>,
    /// How often the journal is read.
    pub journal_poll: Duration,
    /// The longest delay between two retries of a failing policy.
    pub retry_max: Duration,
    /// Sharing the policies with other replicas (see [`membership`]); `None`: this daemon
    /// owns every policy.
    pub membership: Option<Membership>,
}

/// Where RotationPolicy objects are read from.
#[derive(Clone)]
pub struct ObjectSource {
    /// The Kubernetes client.
    pub client: kube::Client,
    /// What is watched.
    pub watch: WatchConfig,
    /// How long start-up waits for the first complete list of objects before it goes on
    /// with the policy files alone (the objects join when they are listed). Waiting lets a
    /// rotation an object's policy left in flight resume at start like a file's.
    pub first_list: Duration,
}

impl std::fmt::Debug for ObjectSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectSource")
            .field("watch", &self.watch)
            .field("first_list", &self.first_list)
            .finish_non_exhaustive()
    }
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

impl HasExitCode for DaemonError {
    /// 64 for an invalid initial policy set, 74 for a policy path that cannot be watched.
    fn exit_code(&self) -> ExitCode {
        match self {
            // `PolicyErrors` still has an inherent `exit_code` (i32): name the trait's.
            Self::Policies(e) => e.exit_code(),
            Self::Watch { .. } => ExitCode::Io,
        }
    }
}

/// What a finished rotation task reports back to the loop.
#[derive(Debug)]
struct Done {
    policy: String,
    /// The slot the attempt served (the Unix epoch: due at once).
    due: DateTime<Utc>,
    /// The start of the rotation that now defines CURRENT, if one completed.
    rotated_at: Option<DateTime<Utc>>,
    failed: bool,
    /// Stopped before a side effect because this replica's fence closed: not a failure of
    /// the policy, so no backoff; the slot stays due.
    fenced: bool,
    /// The rotation this attempt completed or gave up.
    rotation_id: Option<String>,
    /// Why the attempt failed (an error's text, never a value), for the policy's status.
    error: Option<String>,
}

/// The status message of a policy whose state could not be read.
const UNREADABLE: &str =
    "its rotation state could not be read from its store (the daemon's log says why)";

/// The policy set of `files` and the objects of `snapshot` (none before the first list).
fn merged(files: &[FilePolicy], snapshot: Option<&Snapshot>) -> kube_source::Merged {
    kube_source::merge_shared(files, snapshot.map_or(&[], Snapshot::objects))
}

/// Every policy by name, each whole where this replica holds it (see [`kube_source::Merged`]).
type Policies = BTreeMap<Arc<str>, Option<Arc<Policy>>>;

/// The whole policy named `name`, where it is held.
fn whole<'a>(policies: &'a Policies, name: &str) -> Option<&'a Arc<Policy>> {
    policies.get(name)?.as_ref()
}

/// Whether `a` and `b` name the same object (at any generation).
fn same_object(a: &PolicyObject, b: &PolicyObject) -> bool {
    a.namespace == b.namespace && a.name == b.name
}

/// How many of `policies` are held whole: every object's, and the files' this replica owns
/// once it has read them in step with the ownership.
fn held(policies: &Policies) -> usize {
    policies.values().filter(|p| p.is_some()).count()
}

/// Failing policies: how many attempts in a row did not complete, for the backoff.
type Failing = BTreeMap<String, u32>;

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
        tokio::pin!(shutdown);
        // The objects' watch publishes a snapshot once it has listed them all; start-up waits
        // a while for it, so an object's policy is resumed and scheduled like a file's.
        let mut objects_rx = self.cfg.objects.as_ref().map(|src| {
            let (tx, rx) = watch::channel(None);
            tokio::spawn(kube_source::watch(
                src.client.clone(),
                src.watch.clone(),
                tx,
            ));
            rx
        });
        let mut snapshot: Option<Snapshot> = None;
        if let (Some(rx), Some(src)) = (objects_rx.as_mut(), &self.cfg.objects) {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                listed = tokio::time::timeout(src.first_list, rx.wait_for(Option::is_some)) => match listed {
                    Ok(Ok(s)) => snapshot = s.clone(),
                    _ => tracing::warn!(
                        waited_s = src.first_list.as_secs(),
                        "RotationPolicy objects are not listed yet; starting with the policy files, the objects join once listed"
                    ),
                },
            }
            rx.mark_unchanged();
        }
        // Membership first: until this replica holds its Lease and has seen the others, it
        // owns nothing and reads no state.
        let (member_stop, member_stop_rx) = watch::channel(());
        let mut members_rx = match &self.cfg.membership {
            None => None,
            Some(m) => {
                let runner = m.clone();
                tokio::spawn(async move { runner.run(member_stop_rx).await });
                let mut rx = m.members();
                let me = m.settings().holder.clone();
                tracing::info!(holder = %me, namespace = %m.settings().namespace, "joining the daemon replicas");
                // Replicas started together see only the Leases written before their first
                // list; one more round sees the rest. Without it the first replica up owned
                // and scanned every policy, then handed three quarters away.
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    _ = async {
                        let _ = rx.wait_for(|live| live.contains(&me)).await;
                        tokio::time::sleep(m.period()).await;
                    } => {}
                }
                rx.mark_unchanged();
                Some(rx)
            }
        };
        // The files are read once this replica knows what it owns: it keeps whole only those
        // policies (see [`policy::FilePolicy`]).
        let mut files: Vec<FilePolicy> = match &self.cfg.policies {
            None => Vec::new(),
            Some(path) => {
                let loaded = tokio::task::spawn_blocking(self.files_loader(path.clone()))
                    .await
                    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                match loaded {
                    Ok(loaded) => {
                        tracing::info!(policies = loaded.len(), path = %path.display(), "policy files loaded");
                        loaded
                    }
                    Err(e) => {
                        self.leave(member_stop).await;
                        return Err(e.into());
                    }
                }
            }
        };
        let kube_source::Merged {
            mut policies,
            mut rejected,
        } = merged(&files, snapshot.as_ref());
        tracing::info!(
            policies = policies.len(),
            objects = snapshot.as_ref().map(Snapshot::len),
            rejected_objects = rejected.len(),
            "policies loaded"
        );
        let mut owned: BTreeSet<Arc<str>> = self.owned(&policies);
        self.note_membership(owned.len());
        tracing::info!(
            owned = owned.len(),
            of = policies.len(),
            held = held(&policies),
            "policies owned by this replica"
        );
        self.note_rejections(&[], &rejected, &policies);
        let (reload_tx, mut reload_rx) = mpsc::channel::<()>(1);
        let _watcher = match &self.cfg.policies {
            Some(path) => Some(watch_dir(path, reload_tx)?),
            None => None,
        };
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let (scanned_tx, mut scanned_rx) = mpsc::unbounded_channel::<Vec<(Arc<Policy>, Scan)>>();
        let mut tasks = JoinSet::new();
        let mut queue = Queue::new();
        let mut running: BTreeMap<String, ()> = BTreeMap::new();
        // The policy files are read in a thread of their own (100,000 policies take seconds),
        // one read at a time; `load_again`: ask for another once this one is in.
        let (loaded_tx, mut loaded_rx) = mpsc::channel::<Result<Vec<FilePolicy>, PolicyErrors>>(1);
        let (mut loading, mut load_again) = (false, false);
        // The read above kept whole what this replica owned as it read; the first membership
        // rounds may have moved policies since.
        if self.files_out_of_step(&files) {
            self.load_files(&mut loading, &mut load_again, &loaded_tx);
        }

        // Start-up: read each policy's state; resume in-flight rotations first, queue the rest.
        let mut failing = Failing::new();
        let mine: Vec<Arc<Policy>> = owned
            .iter()
            .filter_map(|n| whole(&policies, n).cloned())
            .collect();
        for p in &mine {
            self.metrics.register_policy(p);
        }
        let scanned = scan(self.backends.clone(), mine).await;
        let mut resume = Vec::new();
        for (p, found) in scanned {
            let name = p.name.clone();
            match found {
                // A rotation a failing run left in flight waits for its recorded retry time,
                // so a crash loop does not become a request loop.
                Scan::InFlight(Some(f)) if f.retry_at > Utc::now() => {
                    queue.schedule(Slot {
                        policy: name.clone(),
                        due: DateTime::<Utc>::UNIX_EPOCH,
                        fire_at: f.retry_at,
                    });
                    self.keep_backoff(&mut queue, &mut failing, &name, &f);
                }
                Scan::InFlight(f) => {
                    if let Some(f) = f {
                        failing.insert(name.clone(), f.count);
                    }
                    resume.push(p);
                }
                Scan::Last(found) => {
                    self.resume_idle(&mut queue, &mut failing, &p, found);
                }
                Scan::Unreadable => {
                    self.failed(
                        &mut queue,
                        &mut failing,
                        &p,
                        DateTime::<Utc>::UNIX_EPOCH,
                        Some((None, UNREADABLE)),
                    );
                }
            }
        }
        for p in resume {
            running.insert(p.name.clone(), ());
            self.spawn(
                &mut tasks,
                &done_tx,
                p,
                DateTime::<Utc>::UNIX_EPOCH,
                Trigger::Resume,
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
        // The read runs in a task of its own, one at a time, its answer coming back here: a
        // failing Vault makes the client retry for about 40 s, and awaited in this loop that
        // stalled every timer (and every other store's rotations) for as long as Vault failed.
        let (journal_tx, mut journal_rx) = mpsc::channel(1);
        let mut journal_reading = false;
        // The fence and membership gauges, refreshed at the membership's own pace.
        let mut member_tick = tokio::time::interval(
            self.cfg
                .membership
                .as_ref()
                .map_or(Duration::from_secs(3600), Membership::period),
        );
        member_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut membership_failures = 0;

        loop {
            // A new policy set, from the files or the objects, applied after the select.
            let mut new_set: Option<kube_source::Merged> = None;
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
                        let Some(p) = whole(&policies, &slot.policy) else { continue };
                        if !owned.contains(slot.policy.as_str()) {
                            continue;
                        }
                        // Fenced: nothing may start; the slot waits (still due) for the Lease.
                        if let Some(wait) = self.fenced_wait() {
                            self.metrics.fenced.inc();
                            queue.schedule(Slot { fire_at: now + wait, ..slot });
                            continue;
                        }
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
                        self.spawn(&mut tasks, &done_tx, p.clone(), slot.due, Trigger::Schedule { due: slot.due });
                    }
                }
                Some(done) = done_rx.recv() => {
                    running.remove(&done.policy);
                    // A policy that moved to another replica meanwhile is that one's now.
                    if let Some(p) = whole(&policies, &done.policy).filter(|_| owned.contains(done.policy.as_str())) {
                        if done.fenced {
                            self.metrics.fenced.inc();
                            // Still fenced: wait a renewal period; open again already: at once.
                            let wait = self.fenced_wait().unwrap_or_default();
                            queue.schedule(Slot { policy: done.policy.clone(), due: done.due, fire_at: Utc::now() + wait });
                        } else if done.failed {
                            let report = done.error.as_deref().map(|e| (done.rotation_id.as_deref(), e));
                            self.failed(&mut queue, &mut failing, p, done.due, report);
                        } else {
                            failing.remove(&done.policy);
                            self.metrics.succeeded(&done.policy, done.rotated_at.unwrap_or_else(Utc::now));
                            let next = self.queue_next(&mut queue, p, done.rotated_at, None);
                            if let (Some(id), Some(started)) = (&done.rotation_id, done.rotated_at) {
                                self.cfg.status.rotated(p, id, started, next);
                            }
                        }
                    }
                }
                Some(()) = reload_rx.recv() => {
                    tokio::time::sleep(self.cfg.reload_debounce).await;
                    while reload_rx.try_recv().is_ok() {}
                    self.load_files(&mut loading, &mut load_again, &loaded_tx);
                }
                Some(loaded) = loaded_rx.recv() => {
                    loading = false;
                    if std::mem::take(&mut load_again) {
                        self.load_files(&mut loading, &mut load_again, &loaded_tx);
                    }
                    match loaded {
                        Err(e) => {
                            tracing::error!(errors = %e, "policy change rejected; the previous policies stay in force");
                            let waiting = owned.iter().filter(|n| matches!(policies.get(*n), Some(None))).count();
                            if waiting > 0 {
                                tracing::error!(waiting, "policies this replica took over wait for valid policy files: only then are they read whole and scheduled");
                            }
                        }
                        Ok(new) => {
                            files = new;
                            // The members changed while the files were read (unless a
                            // read asked for meanwhile is under way already).
                            if !loading && self.files_out_of_step(&files) {
                                self.load_files(&mut loading, &mut load_again, &loaded_tx);
                            }
                            new_set = Some(merged(&files, snapshot.as_ref()));
                        }
                    }
                }
                changed = async {
                    match objects_rx.as_mut() {
                        Some(rx) => rx.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                } => {
                    let Some(rx) = objects_rx.as_mut().filter(|_| changed) else {
                        // The watch ends only by a panic: say so, the last objects stay.
                        tracing::error!("the RotationPolicy watch stopped; the objects as last listed stay in force until a restart");
                        objects_rx = None;
                        continue;
                    };
                    let listed = rx.borrow_and_update().clone();
                    if listed.is_some() {
                        snapshot = listed;
                        new_set = Some(merged(&files, snapshot.as_ref()));
                    }
                }
                Some(results) = scanned_rx.recv() => {
                    for (p, found) in results {
                        // A result for a version of the policy that a later reload replaced,
                        // removed, or that is rotating now, is stale: that reload, or the
                        // rotation's end, queues the policy.
                        let current = whole(&policies, &p.name).is_some_and(|cur| **cur == *p);
                        if current && owned.contains(p.name.as_str()) && !running.contains_key(&p.name) {
                            self.queue_scanned(&mut queue, &mut failing, &p, found);
                        }
                    }
                }
                _ = journal_tick.tick(), if journal.is_some() && !journal_reading => {
                    let Some((j, vault)) = journal.clone() else { continue };
                    journal_reading = true;
                    let tx = journal_tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(j.read(&vault).await).await;
                    });
                }
                Some(read) = journal_rx.recv() => {
                    journal_reading = false;
                    match read {
                        Ok((entries, _)) => {
                            let newest = entries.last().map_or(0, |e| e.seq);
                            // The first read is the baseline: earlier actions are in the audit
                            // log, and their taints were found by the start-up scan.
                            if let Some(seen) = journal_seen {
                                for e in entries.iter().filter(|e| e.seq > seen) {
                                    self.metrics.breakglass.get_or_create(&metrics::ActionLabel { action: e.action.clone() }).inc();
                                    tracing::warn!(policy = %e.policy, action = %e.action, "break-glass action by an operator");
                                    if let Some(p) = whole(&policies, &e.policy).filter(|_| owned.contains(e.policy.as_str())) {
                                        self.cfg.status.break_glass(p, &e.action);
                                    }
                                    if let Some(t) = e.rotate_after
                                        && owned.contains(e.policy.as_str())
                                        && !running.contains_key(&e.policy)
                                    {
                                        self.queue_taint(&mut queue, &e.policy, t);
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
                changed = async {
                    match members_rx.as_mut() {
                        Some(rx) => rx.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                } => {
                    if !changed {
                        members_rx = None;
                        continue;
                    }
                    let now_owned = self.owned(&policies);
                    for gone in owned.difference(&now_owned) {
                        // A rotation running now ends under its fence and the store's claim;
                        // the new owner finds it done, or resumes it once the claim expires.
                        queue.cancel(gone);
                        failing.remove(&**gone);
                        self.metrics.forget(gone);
                        if let Some(o) = whole(&policies, gone).and_then(|p| p.object.as_ref()) {
                            self.cfg.status.forget(o);
                        }
                    }
                    // The rejected objects' statuses follow their names' owners too.
                    for r in &rejected {
                        if self.owns(&r.object.name) {
                            self.cfg.status.rejected(r);
                        } else {
                            self.cfg.status.forget(&r.object);
                        }
                    }
                    let gained: Vec<Arc<Policy>> = now_owned
                        .difference(&owned)
                        .filter(|n| !running.contains_key(&***n))
                        .filter_map(|n| whole(&policies, n).cloned())
                        .collect();
                    // The files' policies this replica took over are read whole from the
                    // files (and those it gave up dropped to their names): they are scanned
                    // and queued once that read is in.
                    if self.files_out_of_step(&files) {
                        self.load_files(&mut loading, &mut load_again, &loaded_tx);
                    }
                    tracing::info!(
                        members = members_rx.as_ref().map_or(0, |m| m.borrow().len()),
                        owned = now_owned.len(),
                        gained = gained.len(),
                        lost = owned.difference(&now_owned).count(),
                        "daemon replicas changed; policies rebalanced"
                    );
                    owned = now_owned;
                    self.note_membership(owned.len());
                    for p in &gained {
                        self.metrics.register_policy(p);
                    }
                    // Their state is read as a reload's is: in a task, the timers going on.
                    let (tx, backends) = (scanned_tx.clone(), self.backends.clone());
                    tokio::spawn(async move {
                        let _ = tx.send(scan(backends, gained).await);
                    });
                }
                _ = member_tick.tick(), if self.cfg.membership.is_some() => {
                    self.note_membership(owned.len());
                    if let Some(m) = &self.cfg.membership {
                        let total = m.failures();
                        self.metrics.membership_failures.inc_by(total.saturating_sub(membership_failures));
                        membership_failures = total;
                    }
                }
            }
            let Some(kube_source::Merged {
                policies: new,
                rejected: new_rejected,
            }) = new_set
            else {
                continue;
            };
            let changed = self.apply_reload(&mut queue, &mut failing, &policies, &new, &running);
            // Objects whose policy is gone (deleted, or no longer this daemon's): their
            // status stays as last written. One rejected now gets its rejection instead.
            for (name, p) in &policies {
                if let Some(o) = p
                    .as_ref()
                    .and_then(|p| p.object.as_ref())
                    .filter(|_| !new.contains_key(name) && owned.contains(name))
                    && !new_rejected.iter().any(|r| same_object(&r.object, o))
                {
                    self.cfg.status.forget(o);
                }
            }
            policies = new;
            owned = self.owned(&policies);
            self.note_membership(owned.len());
            self.note_rejections(&rejected, &new_rejected, &policies);
            rejected = new_rejected;
            let changed: Vec<Arc<Policy>> = changed
                .into_iter()
                .filter(|p| owned.contains(p.name.as_str()))
                .collect();
            for p in &changed {
                self.metrics.register_policy(p);
            }
            // The changed policies' state is read in a task of its own: with Vault failing,
            // reads retry for tens of seconds, and awaited here they would stall every timer.
            let (tx, backends) = (scanned_tx.clone(), self.backends.clone());
            tokio::spawn(async move {
                let _ = tx.send(scan(backends, changed).await);
            });
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
        // Given up only now that nothing of this replica runs: the others take its policies
        // at their next round rather than a lease duration later.
        self.leave(member_stop).await;
        Ok(())
    }

    /// Stops the membership rounds and gives this replica's Lease up (at most 5 s).
    async fn leave(&self, stop: watch::Sender<()>) {
        let _ = stop.send(());
        let Some(m) = &self.cfg.membership else {
            return;
        };
        match tokio::time::timeout(Duration::from_secs(5), m.release()).await {
            Ok(Ok(())) => tracing::info!("membership Lease released"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not release the membership Lease; it expires on its own")
            }
            Err(_) => {
                tracing::warn!("releasing the membership Lease timed out; it expires on its own")
            }
        }
    }

    /// What reads the policy files at `path` (with objects too, none at all is no error),
    /// each policy whole only where this replica owns it at the time of the read.
    fn files_loader(
        &self,
        path: PathBuf,
    ) -> impl FnOnce() -> Result<Vec<FilePolicy>, PolicyErrors> + Send + 'static {
        let membership = self.cfg.membership.clone();
        let allow_empty = self.cfg.objects.is_some();
        move || {
            policy::load_held(&path, allow_empty, &mut |p| {
                membership.as_ref().is_none_or(|m| m.owns(&p.name))
            })
        }
    }

    /// Whether a policy of the files is held whole where this replica does not own it now,
    /// or owned now and held by its name only: what makes it read its files again. Compared
    /// with the ownership now, not with how ownership changed: a read that raced a membership
    /// change kept whole what was owned as it read, and left so, a replica kept policies it
    /// had given up whole (their memory) and could not schedule those it had taken over.
    fn files_out_of_step(&self, files: &[FilePolicy]) -> bool {
        self.cfg.policies.is_some()
            && files
                .iter()
                .any(|f| f.policy.is_some() != self.owns(&f.name))
    }

    /// Starts a read of the policy files in a thread of its own, its result to `tx`; with a
    /// read under way already, asks for another once that one is in (the files or the
    /// ownership it read may have changed since it started).
    fn load_files(
        &self,
        loading: &mut bool,
        load_again: &mut bool,
        tx: &mpsc::Sender<Result<Vec<FilePolicy>, PolicyErrors>>,
    ) {
        let Some(path) = &self.cfg.policies else {
            return;
        };
        if *loading {
            *load_again = true;
            return;
        }
        *loading = true;
        let (load, tx) = (self.files_loader(path.clone()), tx.clone());
        tokio::spawn(async move {
            let loaded = tokio::task::spawn_blocking(load)
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            let _ = tx.send(loaded).await;
        });
    }

    /// The names of `policies` this replica owns.
    fn owned(&self, policies: &Policies) -> BTreeSet<Arc<str>> {
        policies.keys().filter(|n| self.owns(n)).cloned().collect()
    }

    /// Logs each object rejected in `new` and not (the same way) in `old`, and reports it in
    /// the object's status when this replica owns its name; an object rejected before and
    /// gone now (deleted) is forgotten. Both lists are in object order.
    fn note_rejections(&self, old: &[Rejection], new: &[Rejection], policies: &Policies) {
        self.metrics
            .objects_rejected
            .set(i64::try_from(new.len()).unwrap_or(i64::MAX));
        let known = |list: &[Rejection], r: &Rejection| {
            list.binary_search_by(|x| x.object.cmp(&r.object))
                .is_ok_and(|i| list[i] == *r)
        };
        for r in new.iter().filter(|r| !known(old, r)) {
            tracing::warn!(
                object = %r.object.origin(),
                reason = r.reason.as_str(),
                problem = %r.message,
                held_by = r.held_by.as_deref(),
                "RotationPolicy not managed: it yields no policy (its status says why)"
            );
            if self.owns(&r.object.name) {
                self.cfg.status.rejected(r);
            }
        }
        let by_name = |o: &PolicyObject| (o.namespace.clone(), o.name.clone());
        let rejected_now: BTreeSet<(String, String)> =
            new.iter().map(|r| by_name(&r.object)).collect();
        for r in old {
            let still = rejected_now.contains(&by_name(&r.object))
                || whole(policies, &r.object.name)
                    .and_then(|p| p.object.as_ref())
                    .is_some_and(|o| same_object(o, &r.object));
            if !still {
                self.cfg.status.forget(&r.object);
            }
        }
    }

    /// Whether this replica owns `policy` (always, without membership).
    fn owns(&self, policy: &str) -> bool {
        self.cfg.membership.as_ref().is_none_or(|m| m.owns(policy))
    }

    /// `None` when this replica may act now; else how long to wait before trying a slot again.
    fn fenced_wait(&self) -> Option<Duration> {
        let m = self.cfg.membership.as_ref()?;
        m.fence().is_err().then(|| m.period())
    }

    /// Updates the membership gauges.
    fn note_membership(&self, owned: usize) {
        self.metrics
            .policies_owned
            .set(i64::try_from(owned).unwrap_or(i64::MAX));
        if let Some(m) = &self.cfg.membership {
            self.metrics
                .members
                .set(i64::try_from(m.members().borrow().len()).unwrap_or(i64::MAX));
            self.metrics.fence_open.set(i64::from(m.fence().is_ok()));
        }
    }

    fn spawn(
        &self,
        tasks: &mut JoinSet<()>,
        done: &mpsc::UnboundedSender<Done>,
        p: Arc<Policy>,
        due: DateTime<Utc>,
        trigger: Trigger,
    ) {
        let engine = self.engine.clone();
        let backends = self.backends.clone();
        let metrics = self.metrics.clone();
        let done = done.clone();
        tasks.spawn(async move {
            let _in_flight = metrics.in_flight(&p.name);
            let started = std::time::Instant::now();
            let a = rotate_once(&engine, &backends, &metrics, &p, &trigger).await;
            metrics
                .rotation_duration
                .observe(started.elapsed().as_secs_f64());
            metrics.outcome(&p.name, a.outcome);
            let _ = done.send(Done {
                policy: p.name.clone(),
                due,
                rotated_at: a.rotated_at,
                failed: a.retry,
                fenced: a.outcome == "fenced",
                rotation_id: a.rotation_id,
                error: a.error,
            });
        });
    }

    /// Queues `p`'s next slot after its last good rotation (`last`), or its taint's due time
    /// when that comes first; returns when it fires (`None`: unschedulable).
    fn queue_next(
        &self,
        queue: &mut Queue,
        p: &Policy,
        last: Option<DateTime<Utc>>,
        taint: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        let next = p
            .schedule
            .next_due(last)
            .and_then(|due| Some((due, jittered(&p.name, due, p.window)?)));
        let (due, fire_at) = match (next, taint) {
            (Some((_, at)), Some(t)) if t < at => (t, t),
            (None, Some(t)) => (t, t),
            (Some(n), _) => n,
            (None, None) => {
                self.unschedulable(queue, p);
                return None;
            }
        };
        self.metrics.next_rotation(&p.name, fire_at);
        self.cfg.status.scheduled(p, fire_at);
        queue.schedule(Slot {
            policy: p.name.clone(),
            due,
            fire_at,
        });
        Some(fire_at)
    }

    /// Queues an idle policy found by a scan: its next slot, unless a recorded run of
    /// failures says to wait for its retry time first.
    fn resume_idle(&self, queue: &mut Queue, failing: &mut Failing, p: &Policy, found: Found) {
        self.metrics.current_since(&p.name, found.created);
        let _ = self.queue_next(queue, p, found.last_ok, found.taint);
        if let Some(f) = found.failures {
            self.keep_backoff(queue, failing, &p.name, &f);
        }
    }

    /// Keeps to a run of failures an earlier daemon recorded: the count goes on from it, and
    /// the policy's queued slot waits for the recorded retry time.
    fn keep_backoff(&self, queue: &mut Queue, failing: &mut Failing, name: &str, f: &Failures) {
        failing.insert(name.to_owned(), f.count);
        let wait = (f.retry_at - Utc::now()).to_std().unwrap_or_default();
        self.metrics.backoff(name, f.count, wait);
        queue.not_before(name, f.retry_at);
        if let Some(at) = queue.fire_time(name) {
            self.metrics.next_rotation(name, at);
        }
    }

    /// Records a failed or stopped attempt at `p`'s slot `due` and queues the retry: the slot
    /// stays due, under backoff, until a later slot supersedes it. `report`: the rotation id
    /// (if one was made) and why, for the policy's status; `None` for an attempt that is no
    /// failure of the policy (another process holds it).
    fn failed(
        &self,
        queue: &mut Queue,
        failing: &mut Failing,
        p: &Policy,
        due: DateTime<Utc>,
        report: Option<(Option<&str>, &str)>,
    ) {
        let failures = failing.entry(p.name.clone()).or_insert(0);
        *failures = failures.saturating_add(1);
        let failures = *failures;
        let now = Utc::now();
        let Some((due, fire_at)) = retry_at(
            &p.name,
            &p.schedule,
            p.window,
            due,
            failures,
            self.cfg.retry_max,
            now,
        ) else {
            return self.unschedulable(queue, p);
        };
        let backoff = (fire_at - now).to_std().unwrap_or_default();
        self.metrics.backoff(&p.name, failures, backoff);
        self.metrics.next_rotation(&p.name, fire_at);
        tracing::warn!(
            policy = %p.name,
            consecutive_failures = failures,
            retry_in_s = backoff.as_secs(),
            retry_at = %fire_at.to_rfc3339(),
            "rotation did not complete; retrying under backoff"
        );
        queue.schedule(Slot {
            policy: p.name.clone(),
            due,
            fire_at,
        });
        if let Some((rotation_id, why)) = report {
            self.cfg
                .status
                .failed(p, rotation_id, failures, why, Some(fire_at));
        }
        let record = Failures {
            count: failures,
            last_at: now,
            retry_at: fire_at,
        };
        if self.fenced_wait().is_some() {
            return;
        }
        tokio::spawn(record_failures(
            self.backends.clone(),
            self.metrics.clone(),
            self.engine.holder().to_owned(),
            p.clone(),
            record,
        ));
    }

    /// Schedules the rotation of a revealed value when its taint falls due (replacing the
    /// policy's next slot; the normal schedule resumes after that rotation).
    fn queue_taint(&self, queue: &mut Queue, policy: &str, at: DateTime<Utc>) {
        self.metrics.next_rotation(policy, at);
        queue.schedule(Slot {
            policy: policy.to_owned(),
            due: at,
            fire_at: at,
        });
    }

    /// A policy with no computable next time (a cron expression whose slots ran out): it is
    /// reported and left out of the queue, and every other policy keeps rotating.
    fn unschedulable(&self, queue: &mut Queue, p: &Policy) {
        queue.cancel(&p.name);
        self.metrics.unschedulable(&p.name);
        tracing::error!(
            policy = %p.name,
            file = %p.file.display(),
            "no next rotation time can be computed for this policy's schedule; it is not scheduled"
        );
    }

    /// Applies a new policy set to the queue: removed policies are forgotten, changed ones
    /// (not rotating now) leave the queue until their state is read again; returns those.
    fn apply_reload(
        &self,
        queue: &mut Queue,
        failing: &mut Failing,
        old: &Policies,
        new: &Policies,
        running: &BTreeMap<String, ()>,
    ) -> Vec<Arc<Policy>> {
        for name in old.keys().filter(|n| !new.contains_key(*n)) {
            queue.cancel(name);
            failing.remove(&**name);
            self.metrics.forget(name);
        }
        // A policy held whole now and not (or not so) before: new, changed, or read whole
        // since this replica took it over.
        let changed: Vec<Arc<Policy>> = new
            .iter()
            .filter_map(|(n, p)| Some((n, p.as_ref()?)))
            .filter(|(n, p)| {
                old.get(*n).and_then(Option::as_ref) != Some(*p) && !running.contains_key(&***n)
            })
            .map(|(_, p)| p.clone())
            .collect();
        for p in &changed {
            queue.cancel(&p.name);
        }
        tracing::info!(
            policies = new.len(),
            held = held(new),
            changed = changed.len(),
            "policies reloaded"
        );
        changed
    }

    /// Queues a changed policy once its state has been read.
    fn queue_scanned(&self, queue: &mut Queue, failing: &mut Failing, p: &Policy, found: Scan) {
        match found {
            // A changed policy keeps its failure count: editing a file is no reason to
            // retry a failing target at once.
            Scan::InFlight(_) => {
                self.failed(queue, failing, p, DateTime::<Utc>::UNIX_EPOCH, None);
            }
            Scan::Unreadable => {
                let report = Some((None, UNREADABLE));
                self.failed(queue, failing, p, DateTime::<Utc>::UNIX_EPOCH, report);
            }
            Scan::Last(found) => {
                failing.remove(&p.name);
                self.resume_idle(queue, failing, p, found);
            }
        }
    }
}

/// Reads the state of each of `policies` with bounded concurrency. A free function, so a
/// reload can run it in a task of its own while the timers go on.
async fn scan(backends: Backends, policies: Vec<Arc<Policy>>) -> Vec<(Arc<Policy>, Scan)> {
    use futures_util::StreamExt as _;
    // 32 reads at a time, as a stream: a task per policy cost 100,000 tasks at once.
    futures_util::stream::iter(policies)
        .map(|p| {
            let backends = backends.clone();
            async move {
                let found = read_state(&backends, &p).await;
                (p, found)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await
}

/// What the store says of `p`'s rotation.
async fn read_state(backends: &Backends, p: &Policy) -> Scan {
    match backends.store(p) {
        Err(e) => {
            tracing::error!(error = %e, "policy cannot run");
            Scan::Unreadable
        }
        Ok(store) => match store.view().await {
            Ok(v) if v.state.in_flight.is_some() => Scan::InFlight(v.state.failures),
            Ok(v) => Scan::Last(Found {
                last_ok: v
                    .state
                    .last
                    .filter(|l| l.outcome == "ok")
                    .map(|l| l.started_at),
                taint: v.state.taint.map(|t| t.rotate_after),
                created: v.current.and_then(|c| c.created),
                failures: v.state.failures,
            }),
            Err(e) => {
                tracing::error!(policy = %p.name, error = %e, "cannot read rotation state");
                Scan::Unreadable
            }
        },
    }
}

enum Scan {
    /// A rotation in flight, and the run of failures recorded with it.
    InFlight(Option<Failures>),
    Last(Found),
    Unreadable,
}

/// What the start-up scan (or a reload) learns of an idle policy.
struct Found {
    /// The last good rotation's start: the schedule counts from it.
    last_ok: Option<DateTime<Utc>>,
    /// When a taint falls due.
    taint: Option<DateTime<Utc>>,
    /// When the store created CURRENT: the credential's age survives restarts and failed
    /// attempts.
    created: Option<DateTime<Utc>>,
    /// A run of failures recorded by an earlier daemon: its backoff still holds.
    failures: Option<Failures>,
}

/// How one attempt at a policy ended.
struct Attempt {
    /// The `keyturn_rotations_total` outcome.
    outcome: &'static str,
    /// The start of the rotation that now defines CURRENT, if any.
    rotated_at: Option<DateTime<Utc>>,
    /// Whether it should be retried soon (under backoff).
    retry: bool,
    /// The rotation this attempt completed or gave up.
    rotation_id: Option<String>,
    /// Why it failed, when it is a failure of the policy (not another process holding it).
    error: Option<String>,
}

impl Attempt {
    fn new(outcome: &'static str, rotated_at: Option<DateTime<Utc>>, retry: bool) -> Self {
        Self {
            outcome,
            rotated_at,
            retry,
            rotation_id: None,
            error: None,
        }
    }

    fn error(e: &impl std::fmt::Display) -> Self {
        Self {
            error: Some(e.to_string()),
            ..Self::new("error", None, true)
        }
    }
}

/// One rotation of `p`.
async fn rotate_once(
    engine: &Engine,
    backends: &Backends,
    metrics: &Metrics,
    p: &Policy,
    trigger: &Trigger,
) -> Attempt {
    let (store, target) = match (backends.store(p), backends.target(p).await) {
        (Ok(s), Ok(t)) => (metered::Metered::new(s, metrics.clone()), t),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "policy cannot run");
            return Attempt::error(&e);
        }
    };
    match engine.rotate(p, &store, target.as_ref(), trigger).await {
        Ok(RotationOutcome::Rotated {
            started_at,
            rotation_id,
            ..
        }) => Attempt {
            rotation_id: Some(rotation_id),
            ..Attempt::new("rotated", Some(started_at), false)
        },
        // Another process served the slot: its rotation's start is what the next slot is
        // judged by (a failed one does not serve a slot, see the engine).
        Ok(RotationOutcome::AlreadyDone) => match store.state().await {
            Ok(s) => match s.last.filter(|l| l.outcome == "ok") {
                Some(l) => Attempt::new("already-done", Some(l.started_at), false),
                // Served, but the record changed since: judge again after a backoff rather
                // than treat the slot as never served (due at once, again and again).
                None => Attempt::new("already-done", None, true),
            },
            Err(_) => Attempt::new("already-done", None, true),
        },
        Ok(RotationOutcome::Busy { holder }) => {
            tracing::info!(policy = %p.name, %holder, "another process is rotating this policy");
            Attempt::new("busy", None, true)
        }
        Ok(RotationOutcome::Failed { rotation_id, error }) => Attempt {
            rotation_id: Some(rotation_id),
            error: Some(error),
            ..Attempt::new("failed", None, true)
        },
        Err(e @ RotationError::Fenced { .. }) => {
            tracing::warn!(error = %e, "rotation paused: this replica may not act until its membership Lease is renewed");
            Attempt::new("fenced", None, false)
        }
        // The audit log refuses every event once a write failed: nothing runs until a
        // restart reopens it, and the probes say so (see `Metrics::audit_failed`).
        Err(e) if metrics.audit_failed() => {
            tracing::error!(error = %e, "rotation stopped: the audit log has failed and accepts no event until keyturn restarts (/healthz and /readyz answer 503)");
            Attempt::error(&e)
        }
        Err(e) => {
            tracing::error!(error = %e, "rotation stopped; it resumes on the next attempt");
            Attempt::error(&e)
        }
    }
}

/// Writes a policy's run of failures into its state record, for `keyturn status` and for a
/// restarted daemon. Best effort, one read and one compare-and-set write per failure (the
/// backoff bounds how often): the store may be the very thing that fails, and a concurrent
/// writer (a rotation by another process) wins. A rotation another live process holds is left
/// alone: this write would move the fence under it.
async fn record_failures(
    backends: Backends,
    metrics: Metrics,
    holder: String,
    p: Policy,
    failures: Failures,
) {
    let Ok(store) = backends.store(&p) else {
        return;
    };
    // Counted in `keyturn_store_requests_total` like every other store request.
    let store = metered::Metered::new(store, metrics);
    let result = match store.view().await {
        Ok(v)
            if v.state
                .in_flight
                .as_ref()
                .is_some_and(|f| f.holder != holder && f.lease_until > Utc::now()) =>
        {
            Ok(())
        }
        // A retry that succeeded since (this write can trail a slow store by longer than the
        // backoff) has cleared the record; writing it back would show a stale backoff.
        Ok(v)
            if v.state
                .last
                .as_ref()
                .is_some_and(|l| l.outcome == "ok" && l.started_at > failures.last_at) =>
        {
            Ok(())
        }
        Ok(v) => {
            let state = crate::rotation::store::StateRecord {
                failures: Some(failures),
                ..v.state
            };
            store.write_state(&v.fence, &state).await.map(|_| ())
        }
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::warn!(policy = %p.name, error = %e, "could not record the failure in the store; `keyturn status` shows the previous record");
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

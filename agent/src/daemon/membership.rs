//! Sharing the rotation policies between daemon replicas: membership Leases, rendezvous
//! ownership and fencing.
//!
//! - **Membership**: each replica holds a Lease `keyturn-member-<holder>` (labelled
//!   [`MEMBER_LABEL`]`=`[`MEMBER_VALUE`]) in the daemon's namespace, renewed every third of
//!   the lease duration with the `resourceVersion` it read, so a write in between is a 409:
//!   the renewal reads again and never overwrites a Lease another holder wrote.
//! - **Live members**: every round lists the member Leases. A Lease is live while its
//!   `renewTime` (with its holder) changed less than its `leaseDurationSeconds` ago, as *this*
//!   replica observed it, the way client-go's leader election judges a Lease: another
//!   replica's clock never decides, only how long this one has seen nothing change. The live
//!   holders, sorted, are published on a `watch` channel.
//! - **Ownership**: [`rendezvous::owner`] assigns each policy to one live member by
//!   highest-random-weight hashing, so a member leaving moves only its own policies, and one
//!   joining takes only its share.
//! - **Fencing**: [`Membership::fence`] is `Ok` only while the monotonic clock is before the
//!   send time of the last successful renewal plus the lease duration minus a margin. The
//!   API server may have written the Lease at any moment after the request was sent, and the
//!   other replicas start counting no earlier than when they saw that write, so the fence
//!   always closes at least a margin before any other replica can consider this one gone. A
//!   replica that cannot renew therefore stops acting before its Lease expires; a process
//!   that was paused (SIGSTOP) past its Lease finds the fence closed when it resumes (the
//!   monotonic clock kept running), and a renewal that was in flight across the pause does
//!   not reopen it, since its send time is as old as the pause.
//!
//! Callers check the fence before every side effect; the margin must cover the longest time
//! between that check and the side effect reaching its target. A process paused *between*
//! the check and the side effect is beyond what any client-side fence can catch: only a
//! target that checks a token (a conditional write) could refuse that late write.
//!
//! A failed request is retried a few times with jittered exponential backoff (`backon`) within
//! a round, and a round runs every third of the lease duration: never a tight loop. Failures
//! are counted ([`Membership::failures`]) and logged at warn when they differ from the
//! previous one, at info when renewals work again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// Member Leases are `keyturn-member-<holder>`.
pub const MEMBER_PREFIX: &str = "keyturn-member-";

/// The label key marking the daemon's member Leases (value [`MEMBER_VALUE`]), so listing
/// them never picks up the webhook's or the rotation Leases in the same namespace.
pub const MEMBER_LABEL: &str = "keyturn.dev/daemon";

/// The label value of member Leases.
pub const MEMBER_VALUE: &str = "member";

/// Rendezvous (highest-random-weight) hashing of policies onto members.
pub mod rendezvous {
    use sha2::{Digest as _, Sha256};

    /// The weight of `member` for `policy`: the first 8 bytes of SHA-256 over the member's
    /// length, the member and the policy. SHA-256 is fixed by its standard, so every replica,
    /// whatever its version or platform, computes the same weights (the length prefix keeps
    /// `("ab", "c")` and `("a", "bc")` apart).
    #[must_use]
    pub fn weight(policy: &str, member: &str) -> u64 {
        let mut h = Sha256::new();
        h.update((member.len() as u64).to_be_bytes());
        h.update(member.as_bytes());
        h.update(policy.as_bytes());
        let digest = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }

    /// The member that owns `policy`: the one with the highest [`weight`] (a tie, which
    /// SHA-256 makes vanishingly rare, goes to the greater name, so the answer never depends
    /// on the order of `members`); `None` without members.
    #[must_use]
    pub fn owner<'a>(policy: &str, members: &'a [String]) -> Option<&'a String> {
        members
            .iter()
            .max_by_key(|m| (weight(policy, m), m.as_str()))
    }
}

/// How a replica takes part.
#[derive(Debug, Clone)]
pub struct MembershipSettings {
    /// Where the member Leases live: the daemon's namespace.
    pub namespace: String,
    /// This replica's name (the pod name); its Lease is `keyturn-member-<holder>`.
    pub holder: String,
    /// How long a Lease lasts without renewal (whole seconds, at least one); renewed every
    /// third of it.
    pub lease_duration: Duration,
    /// How long before its Lease could expire the fence closes: at least the longest time
    /// between a fence check and its side effect reaching the target. Less than the lease
    /// duration (or the fence never opens).
    pub margin: Duration,
}

impl MembershipSettings {
    /// Settings with a margin of a quarter of the lease duration: one failed renewal round
    /// (a third) still leaves the fence open until the next one.
    #[must_use]
    pub fn new(namespace: &str, holder: &str, lease_duration: Duration) -> Self {
        Self {
            namespace: namespace.to_owned(),
            holder: holder.to_owned(),
            lease_duration,
            margin: lease_duration / 4,
        }
    }

    fn seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// The fence counts with the duration the Lease says (whole seconds), which is what the
    /// other replicas wait for, not a fractional `lease_duration`.
    fn renewals(&self) -> Renewals {
        Renewals::new(
            Duration::from_secs(self.seconds().unsigned_abs().into()),
            self.margin,
        )
    }

    /// This replica's Lease name.
    #[must_use]
    pub fn lease_name(&self) -> String {
        format!("{MEMBER_PREFIX}{}", self.holder)
    }
}

/// Why one membership request failed. Messages name the object and verb, and the API
/// server's code and reason; never a body.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// A request failed.
    #[error(transparent)]
    Request(#[from] crate::kube_request::KubeRequestError),
    /// A round took longer than a lease duration and was abandoned.
    #[error("a membership round took longer than the lease duration and was abandoned")]
    TimedOut,
    /// Releasing the Lease took longer than a lease duration and was abandoned: by then the
    /// Lease has expired (or will at once) for the other replicas anyway.
    #[error("releasing the membership Lease took longer than the lease duration and was abandoned")]
    ReleaseTimedOut,
    /// This replica's Lease name is held, live, by another holder (two replicas given the
    /// same `holder`): it is left alone until it expires.
    #[error("{object} is held by {holder:?}")]
    HeldByAnother {
        /// The Lease.
        object: String,
        /// Its holder.
        holder: String,
    },
}

impl MembershipError {
    fn from_kube(e: kube::Error, verb: &'static str, object: &str) -> Self {
        Self::Request(crate::kube_request::KubeRequestError::new(e, verb, object))
    }

    fn is_retryable(&self) -> bool {
        matches!(self, Self::Request(r) if r.is_retryable())
    }

    /// The failure's kind, for "log only when it changes".
    fn kind(&self) -> String {
        match self {
            Self::Request(r) => r.kind(),
            other => other.to_string(),
        }
    }
}

pub use crate::fence::Fenced;

/// Permission to act, valid until [`Fence::until`]; check again before each side effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    until: Instant,
}

impl Fence {
    /// When this permission ends (monotonic clock).
    #[must_use]
    pub fn until(&self) -> Instant {
        self.until
    }
}

/// The fence arithmetic: the send time of the last successful renewal.
#[derive(Debug, Clone, Copy)]
struct Renewals {
    sent: Option<Instant>,
    /// The Lease was given up: the fence stays closed whatever renewal answers late.
    released: bool,
    /// Lease duration minus margin.
    window: Duration,
}

impl Renewals {
    fn new(lease_duration: Duration, margin: Duration) -> Self {
        Self {
            sent: None,
            released: false,
            window: lease_duration.saturating_sub(margin),
        }
    }

    /// A renewal sent at `sent` succeeded. One that was sent before the latest known success
    /// (answered late) changes nothing.
    fn succeeded(&mut self, sent: Instant) {
        if self.sent.is_none_or(|s| sent > s) {
            self.sent = Some(sent);
        }
    }

    fn fence_at(&self, now: Instant) -> Result<Fence, Fenced> {
        if self.released {
            return Err(Fenced::Released);
        }
        let sent = self.sent.ok_or(Fenced::NeverRenewed)?;
        let until = sent + self.window;
        if now < until {
            Ok(Fence { until })
        } else {
            Err(Fenced::Expired {
                since: now.saturating_duration_since(sent),
            })
        }
    }
}

/// What this replica last saw of one member Lease.
#[derive(Debug, Clone)]
struct Seen {
    holder: String,
    renew_time: Option<String>,
    duration: Option<Duration>,
    /// When this replica first saw this holder and renewTime.
    since: Instant,
}

/// The member Leases as this replica observed them.
#[derive(Debug, Default)]
struct Observations {
    leases: BTreeMap<String, Seen>,
}

impl Observations {
    /// Notes the Leases listed (answered at `now`) and returns the live holders, sorted and
    /// deduplicated. A Lease absent from the list is forgotten.
    fn observe(&mut self, listed: &[Lease], now: Instant) -> Vec<String> {
        let next = listed.iter().filter_map(|l| self.seen(l, now)).collect();
        self.leases = next;
        self.live_at(now)
    }

    /// Notes one Lease read on its own (this replica's, before renewing it).
    fn note(&mut self, lease: &Lease, now: Instant) {
        if let Some((name, seen)) = self.seen(lease, now) {
            self.leases.insert(name, seen);
        }
    }

    /// What `lease` says, seen at `now`: `since` is kept while its holder and renewTime are
    /// those seen before.
    fn seen(&self, lease: &Lease, now: Instant) -> Option<(String, Seen)> {
        let name = lease.metadata.name.clone()?;
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let renew_time = spec
            .renew_time
            .as_ref()
            .or(spec.acquire_time.as_ref())
            .map(|t| t.0.to_string());
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs);
        let since = match self.leases.get(&name) {
            Some(old) if old.holder == holder && old.renew_time == renew_time => old.since,
            _ => now,
        };
        Some((
            name,
            Seen {
                holder,
                renew_time,
                duration,
                since,
            },
        ))
    }

    /// The live holders at `now`: renewed (as observed) less than their duration ago.
    fn live_at(&self, now: Instant) -> Vec<String> {
        let mut live: Vec<String> = self
            .leases
            .values()
            .filter(|s| {
                !s.holder.is_empty()
                    && s.renew_time.is_some()
                    && s.duration.is_some_and(|d| now < s.since + d)
            })
            .map(|s| s.holder.clone())
            .collect();
        live.sort();
        live.dedup();
        live
    }

    /// The earliest time after `now` at which a member live now stops being live unless a
    /// later list shows it renewed.
    fn next_expiry(&self, now: Instant) -> Option<Instant> {
        self.leases
            .values()
            .filter(|s| !s.holder.is_empty() && s.renew_time.is_some())
            .filter_map(|s| Some(s.since + s.duration?))
            .filter(|at| *at > now)
            .min()
    }

    /// Whether the Lease `name` is live at `now` and held by someone other than `holder`.
    fn held_by_another(&self, name: &str, holder: &str, now: Instant) -> Option<String> {
        let s = self.leases.get(name)?;
        let live = s.renew_time.is_some() && s.duration.is_some_and(|d| now < s.since + d);
        (live && !s.holder.is_empty() && s.holder != holder).then(|| s.holder.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Inner {
    settings: MembershipSettings,
    leases: Api<Lease>,
    backoff: ExponentialBuilder,
    renewals: Mutex<Renewals>,
    observations: Mutex<Observations>,
    members: watch::Sender<Vec<String>>,
    failures: AtomicU64,
}

/// This replica's membership: its Lease, the live members, and the fence. Cheap to clone;
/// every clone shares the same state. Nothing happens until [`Membership::run`] (or
/// [`Membership::round`]) is called.
#[derive(Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

impl crate::fence::Guard for Membership {
    fn check(&self) -> Result<(), Fenced> {
        self.fence().map(drop)
    }
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// Membership for `settings` through `client`; no member known and the fence closed until
    /// the first round.
    #[must_use]
    pub fn new(client: kube::Client, settings: MembershipSettings) -> Self {
        let period = Self::period_of(&settings);
        Self {
            inner: Arc::new(Inner {
                leases: Api::namespaced(client, &settings.namespace),
                // A few attempts, all well within one round.
                backoff: ExponentialBuilder::default()
                    .with_min_delay((period / 20).max(Duration::from_millis(20)))
                    .with_max_delay(period / 4)
                    .with_max_times(3)
                    .with_jitter(),
                renewals: Mutex::new(settings.renewals()),
                observations: Mutex::default(),
                members: watch::channel(Vec::new()).0,
                failures: AtomicU64::new(0),
                settings,
            }),
        }
    }

    fn period_of(settings: &MembershipSettings) -> Duration {
        (settings.lease_duration / 3).max(Duration::from_millis(100))
    }

    /// The renewal period: a third of the lease duration.
    #[must_use]
    pub fn period(&self) -> Duration {
        Self::period_of(&self.inner.settings)
    }

    /// The settings.
    #[must_use]
    pub fn settings(&self) -> &MembershipSettings {
        &self.inner.settings
    }

    /// `Ok` while this replica may act on the policies it owns: before the send time of its
    /// last successful renewal plus the lease duration minus the margin. Check it before
    /// every side effect.
    ///
    /// # Errors
    /// [`Fenced`] when no renewal succeeded yet or the last one is too old.
    pub fn fence(&self) -> Result<Fence, Fenced> {
        lock(&self.inner.renewals).fence_at(Instant::now())
    }

    /// The live members (holders, sorted), updated after every list that changes them.
    #[must_use]
    pub fn members(&self) -> watch::Receiver<Vec<String>> {
        self.inner.members.subscribe()
    }

    /// Whether this replica owns `policy` among the current live members. Ownership alone
    /// does not permit acting: check [`Self::fence`] too.
    #[must_use]
    pub fn owns(&self, policy: &str) -> bool {
        let members = self.inner.members.borrow();
        rendezvous::owner(policy, &members).is_some_and(|o| *o == self.inner.settings.holder)
    }

    /// How many requests failed so far (after their retries within a round).
    #[must_use]
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    /// Gives this replica's Lease up, at shutdown once its rotations have ended: the fence
    /// closes for good first, then the Lease is deleted (only if it is still this holder's,
    /// at the resourceVersion read), so the other replicas take its policies at their next
    /// round instead of after the lease duration. Call it after [`Self::run`] has returned.
    ///
    /// A Lease already gone, or written by someone else since it was read (a 404 or 409 on
    /// the delete), is not this replica's to delete: that is a success, and nothing is sent
    /// again. Bounded by one lease duration, as a round is: past it the Lease has expired
    /// for the others anyway, and a request hanging on an open connection (the client sets
    /// no read timeout) must not hold a shutdown up.
    ///
    /// # Errors
    /// The read or the delete failed, or [`MembershipError::ReleaseTimedOut`]; the Lease then
    /// simply expires. The fence is closed whatever the outcome.
    pub async fn release(&self) -> Result<(), MembershipError> {
        lock(&self.inner.renewals).released = true;
        tokio::time::timeout(self.inner.settings.lease_duration, self.delete_own_lease())
            .await
            .unwrap_or(Err(MembershipError::ReleaseTimedOut))
    }

    /// The delete of [`Self::release`]: this holder's Lease, at the uid and resourceVersion
    /// read.
    async fn delete_own_lease(&self) -> Result<(), MembershipError> {
        let s = &self.inner.settings;
        let name = s.lease_name();
        let object = format!("leases {name:?} in namespace {:?}", s.namespace);
        let found = self
            .inner
            .leases
            .get_opt(&name)
            .await
            .map_err(|e| MembershipError::from_kube(e, "get", &object))?;
        let Some(lease) = found else { return Ok(()) };
        let holder = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref());
        if holder != Some(s.holder.as_str()) {
            return Ok(());
        }
        let dp = kube::api::DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: lease.metadata.uid.clone(),
                resource_version: lease.metadata.resource_version.clone(),
            }),
            ..kube::api::DeleteParams::default()
        };
        match self.inner.leases.delete(&name, &dp).await {
            Ok(_) => Ok(()),
            // Gone already, or written by someone since: either way not ours to delete.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(MembershipError::from_kube(e, "delete", &object)),
        }
    }

    /// Renews (or creates) this replica's Lease, then lists the members: one round.
    ///
    /// # Errors
    /// The renewal's error, else the list's; the other step still ran.
    pub async fn round(&self) -> Result<(), MembershipError> {
        let renewed = self.renew().await;
        let listed = self.list().await;
        renewed.and(listed)
    }

    /// Runs a round every third of the lease duration until `stop` changes (or its sender is
    /// dropped). A round in progress is abandoned when `stop` changes. The Lease is left to
    /// expire: the others take this replica's policies once it has.
    pub async fn run(&self, mut stop: watch::Receiver<()>) {
        let mut last: Option<String> = None;
        loop {
            // Bounded by one lease: a request hanging on an open connection (the client sets
            // no read timeout) would otherwise stall membership for good, the replica fenced.
            let round = tokio::time::timeout(self.inner.settings.lease_duration, self.round());
            let r = tokio::select! {
                r = round => r.unwrap_or_else(|_| {
                    self.inner.failures.fetch_add(1, Ordering::Relaxed);
                    Err(MembershipError::TimedOut)
                }),
                _ = stop.changed() => return,
            };
            match r {
                Ok(()) => {
                    if last.take().is_some() {
                        tracing::info!(holder = %self.inner.settings.holder, "daemon membership works again");
                    }
                }
                Err(e) => {
                    let kind = e.kind();
                    if last.as_deref() != Some(kind.as_str()) {
                        tracing::warn!(error = %e, "daemon membership failed (repeats of this failure are only counted)");
                        last = Some(kind);
                    } else {
                        tracing::debug!(error = %e, "daemon membership failed again");
                    }
                }
            }
            // Until the next round; but a member whose Lease runs out before it is dropped
            // at that moment, from what the last list showed (a member that renewed since
            // would have shown a newer renewal in it, as it renews every period), so its
            // policies move a lease after its last renewal was seen, not up to a period later.
            let next_round = Instant::now() + self.period();
            loop {
                let expiry = lock(&self.inner.observations).next_expiry(Instant::now());
                let wake = expiry.map_or(next_round, |at| at.min(next_round));
                tokio::select! {
                    () = tokio::time::sleep_until(wake) => {}
                    _ = stop.changed() => return,
                }
                if wake >= next_round {
                    break;
                }
                let live = lock(&self.inner.observations).live_at(Instant::now());
                self.publish(live);
            }
        }
    }

    /// Makes `live` the members, telling the daemon when they changed.
    fn publish(&self, live: Vec<String>) {
        self.inner.members.send_if_modified(|m| {
            if *m == live {
                false
            } else {
                tracing::info!(members = ?live, "daemon members changed");
                *m = live;
                true
            }
        });
    }

    fn failed<T>(&self, r: Result<T, MembershipError>) -> Result<T, MembershipError> {
        if r.is_err() {
            self.inner.failures.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Renews this replica's Lease with the resourceVersion read (creates it when absent);
    /// on success, the fence extends from the time the write was sent.
    async fn renew(&self) -> Result<(), MembershipError> {
        let s = &self.inner.settings;
        let name = s.lease_name();
        let object = format!("leases {name:?} in namespace {:?}", s.namespace);
        if lock(&self.inner.renewals).released {
            return Ok(());
        }
        let attempt = || async {
            let found = self
                .inner
                .leases
                .get_opt(&name)
                .await
                .map_err(|e| MembershipError::from_kube(e, "get", &object))?;
            if let Some(l) = &found {
                let mut obs = lock(&self.inner.observations);
                obs.note(l, Instant::now());
                if let Some(holder) = obs.held_by_another(&name, &s.holder, Instant::now()) {
                    return Err(MembershipError::HeldByAnother {
                        object: object.clone(),
                        holder,
                    });
                }
            }
            let wall = MicroTime(Timestamp::now());
            let mut lease = found.clone().unwrap_or_else(|| Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec::default()),
            });
            lease
                .metadata
                .labels
                .get_or_insert_default()
                .insert(MEMBER_LABEL.into(), MEMBER_VALUE.into());
            let spec = lease.spec.get_or_insert_default();
            if spec.holder_identity.as_deref() != Some(s.holder.as_str()) {
                // Created now, or taken over from a holder whose Lease expired.
                spec.acquire_time = Some(wall.clone());
                if found.is_some() {
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
            }
            spec.holder_identity = Some(s.holder.clone());
            spec.lease_duration_seconds = Some(s.seconds());
            spec.renew_time = Some(wall);
            let pp = PostParams::default();
            // The Lease may be granted at any moment after this: the fence counts from here.
            let sent = Instant::now();
            if found.is_some() {
                // Carries the resourceVersion read: a write in between is a 409, and the
                // retry reads again rather than overwrite it.
                self.inner
                    .leases
                    .replace(&name, &pp, &lease)
                    .await
                    .map_err(|e| MembershipError::from_kube(e, "update", &object))?;
            } else {
                self.inner
                    .leases
                    .create(&pp, &lease)
                    .await
                    .map_err(|e| MembershipError::from_kube(e, "create", &object))?;
            }
            lock(&self.inner.renewals).succeeded(sent);
            Ok(())
        };
        let r = attempt
            .retry(self.inner.backoff)
            .when(MembershipError::is_retryable)
            .await;
        self.failed(r)
    }

    /// Lists the member Leases and publishes the live holders when they changed.
    async fn list(&self) -> Result<(), MembershipError> {
        let s = &self.inner.settings;
        let object = format!("leases in namespace {:?}", s.namespace);
        let params = ListParams::default().labels(&format!("{MEMBER_LABEL}={MEMBER_VALUE}"));
        let attempt = || async {
            self.inner
                .leases
                .list(&params)
                .await
                .map_err(|e| MembershipError::from_kube(e, "list", &object))
        };
        let listed = self.failed(
            attempt
                .retry(self.inner.backoff)
                .when(MembershipError::is_retryable)
                .await,
        )?;
        let live = lock(&self.inner.observations).observe(&listed.items, Instant::now());
        self.publish(live);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}-{i}")).collect()
    }

    fn owners(policies: &[String], members: &[String]) -> Vec<String> {
        policies
            .iter()
            .map(|p| rendezvous::owner(p, members).unwrap().clone())
            .collect()
    }

    #[test]
    fn every_policy_has_exactly_one_owner_whatever_the_order_of_the_members() {
        let policies = names("policy", 1000);
        let members = names("keyturn-7f9c", 5);
        let mut reversed = members.clone();
        reversed.reverse();
        let a = owners(&policies, &members);
        assert_eq!(a, owners(&policies, &reversed));
        assert!(a.iter().all(|o| members.contains(o)));
        // Every member gets a share.
        let used: BTreeSet<&String> = a.iter().collect();
        assert_eq!(used.len(), 5);
        assert_eq!(rendezvous::owner("p", &[]), None);
    }

    #[test]
    fn weights_are_sha256_and_so_the_same_in_every_process_and_version() {
        // Pinned: a change here would move policies between replicas of different versions
        // during a rollout.
        assert_eq!(
            rendezvous::weight("db-password", "keyturn-0"),
            rendezvous::weight("db-password", "keyturn-0")
        );
        assert_ne!(
            rendezvous::weight("c", "ab"),
            rendezvous::weight("bc", "a"),
            "member and policy boundaries are kept apart"
        );
        assert_eq!(rendezvous::weight("db-password", "keyturn-0"), {
            use sha2::{Digest as _, Sha256};
            let mut h = Sha256::new();
            h.update(9u64.to_be_bytes());
            h.update(b"keyturn-0db-password");
            u64::from_be_bytes(h.finalize()[..8].try_into().unwrap())
        });
    }

    #[test]
    fn removing_a_member_moves_only_its_policies() {
        let policies = names("policy", 1000);
        let members = names("replica", 5);
        let before = owners(&policies, &members);
        let gone = &members[2];
        let rest: Vec<String> = members.iter().filter(|m| *m != gone).cloned().collect();
        let after = owners(&policies, &rest);
        for (b, a) in before.iter().zip(&after) {
            if b == gone {
                assert!(rest.contains(a));
            } else {
                assert_eq!(a, b, "a policy of a member still present moved");
            }
        }
    }

    #[test]
    fn adding_a_member_moves_about_one_in_n_policies_all_to_the_new_member() {
        let policies = names("policy", 2000);
        let members = names("replica", 4);
        let before = owners(&policies, &members);
        let mut more = members.clone();
        more.push("replica-new".into());
        let after = owners(&policies, &more);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if a != b {
                assert_eq!(a, "replica-new", "a policy moved between old members");
                moved += 1;
            }
        }
        // 1/5 of 2000 is 400; allow for the hash's spread.
        assert!((300..=500).contains(&moved), "{moved} of 2000 moved");
    }

    #[tokio::test(start_paused = true)]
    async fn the_fence_is_open_until_the_renewal_send_time_plus_duration_minus_margin() {
        let mut r = Renewals::new(Duration::from_secs(15), Duration::from_secs(4));
        assert_eq!(r.fence_at(Instant::now()), Err(Fenced::NeverRenewed));
        let sent = Instant::now();
        // The answer comes 3 s after sending: the fence still counts from the send.
        tokio::time::advance(Duration::from_secs(3)).await;
        r.succeeded(sent);
        assert_eq!(
            r.fence_at(Instant::now()).unwrap().until(),
            sent + Duration::from_secs(11)
        );
        tokio::time::advance(Duration::from_secs(7)).await;
        assert!(r.fence_at(Instant::now()).is_ok(), "10 s after sending");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            r.fence_at(Instant::now()),
            Err(Fenced::Expired {
                since: Duration::from_secs(11)
            }),
            "closed exactly at 15 - 4 s after sending"
        );
        // A later renewal reopens it.
        let again = Instant::now();
        r.succeeded(again);
        assert!(r.fence_at(Instant::now()).is_ok());
        // A reply to an older request arriving late does not move the fence back.
        r.succeeded(sent);
        assert_eq!(
            r.fence_at(Instant::now()).unwrap().until(),
            again + Duration::from_secs(11)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_process_paused_past_its_lease_stays_fenced_until_a_renewal_sent_after_resuming() {
        let mut r = Renewals::new(Duration::from_secs(15), Duration::from_secs(4));
        r.succeeded(Instant::now());
        // A renewal is sent, then the process is stopped for a minute (the monotonic clock
        // keeps running), then it resumes and the renewal's answer arrives.
        let in_flight = Instant::now() + Duration::from_secs(5);
        tokio::time::advance(Duration::from_secs(65)).await;
        assert!(matches!(
            r.fence_at(Instant::now()),
            Err(Fenced::Expired { .. })
        ));
        r.succeeded(in_flight);
        assert!(
            r.fence_at(Instant::now()).is_err(),
            "a renewal sent before the pause reopened the fence"
        );
        r.succeeded(Instant::now());
        assert!(r.fence_at(Instant::now()).is_ok());
    }

    #[test]
    fn the_fence_counts_with_the_whole_seconds_the_lease_says() {
        let mut settings = MembershipSettings::new("ns", "a", Duration::from_millis(3900));
        settings.margin = Duration::from_secs(1);
        let mut r = settings.renewals();
        let now = Instant::now();
        r.succeeded(now);
        assert_eq!(settings.seconds(), 3);
        assert_eq!(
            r.fence_at(now).unwrap().until(),
            now + Duration::from_secs(2)
        );
    }

    #[test]
    fn a_margin_as_long_as_the_lease_never_opens_the_fence() {
        let mut r = Renewals::new(Duration::from_secs(5), Duration::from_secs(5));
        let now = Instant::now();
        r.succeeded(now);
        assert!(r.fence_at(now).is_err());
    }

    fn lease(name: &str, holder: &str, renewed_secs: i64, seconds: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(
                    Timestamp::from_second(1_700_000_000 + renewed_secs).unwrap(),
                )),
                lease_duration_seconds: Some(seconds),
                ..LeaseSpec::default()
            }),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_is_live_until_its_renew_time_stays_unchanged_for_its_duration_as_observed_here()
     {
        let mut o = Observations::default();
        // Renew times from clocks far off this one's (years in the past, in the future):
        // only whether they change counts.
        let listed = |a: i64, b: i64| {
            vec![
                lease("keyturn-member-a", "a", a, 10),
                lease("keyturn-member-b", "b", b, 10),
            ]
        };
        assert_eq!(o.observe(&listed(0, 1_000_000), Instant::now()), ["a", "b"]);
        tokio::time::advance(Duration::from_secs(6)).await;
        // a renewed, b did not.
        assert_eq!(o.observe(&listed(5, 1_000_000), Instant::now()), ["a", "b"]);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(
            o.observe(&listed(5, 1_000_000), Instant::now()),
            ["a"],
            "b unchanged for its 10 s"
        );
        assert_eq!(
            o.held_by_another("keyturn-member-a", "x", Instant::now()),
            Some("a".into())
        );
        assert_eq!(
            o.held_by_another("keyturn-member-a", "a", Instant::now()),
            None
        );
        assert_eq!(
            o.held_by_another("keyturn-member-b", "x", Instant::now()),
            None
        );
        // b comes back; a deleted Lease is forgotten.
        let back = vec![lease("keyturn-member-b", "b", 1_000_001, 10)];
        assert_eq!(o.observe(&back, Instant::now()), ["b"]);
        // A Lease without a duration is never live.
        let mut odd = lease("keyturn-member-c", "c", 0, 10);
        odd.spec.as_mut().unwrap().lease_duration_seconds = None;
        assert!(o.observe(&[odd], Instant::now()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_expiry_is_when_the_first_live_member_would_stop_being_live() {
        let mut o = Observations::default();
        let start = Instant::now();
        assert_eq!(o.next_expiry(start), None);
        o.observe(
            &[
                lease("keyturn-member-a", "a", 0, 10),
                lease("keyturn-member-b", "b", 0, 15),
            ],
            start,
        );
        assert_eq!(o.next_expiry(start), Some(start + Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(10)).await;
        // a's time has come: what is live is judged from the last list, and the next expiry
        // is b's.
        let now = Instant::now();
        assert_eq!(o.live_at(now), ["b"]);
        assert_eq!(o.next_expiry(now), Some(start + Duration::from_secs(15)));
    }
}

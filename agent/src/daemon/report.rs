//! The daemon's facts about a policy, turned into its RotationPolicy's status and Events.
//!
//! Only a policy that came from a RotationPolicy object has somewhere to report to; for a
//! policy file every method here is a no-op. The daemon calls these only for the policies it
//! owns, and the [`StatusReporter`]'s fence refuses a write once this replica no longer may
//! act (see [`super::status`]).

use chrono::{DateTime, Utc};

use super::status::{PolicyRef, StatusReporter};
use crate::distribute::{DeliveryReport, RestartOutcome};
use crate::policy::kube_source::Rejection;
use crate::policy::{Policy, PolicyObject};
use crate::rotation::observer::Observer;

/// Where the daemon's facts go: nowhere without RotationPolicy objects.
#[derive(Debug, Clone, Default)]
pub struct PolicyStatus {
    reporter: Option<StatusReporter>,
}

/// The status object of `o`, at the generation the policy was made from.
fn object_ref(o: &PolicyObject) -> PolicyRef {
    let r = PolicyRef::new(&o.namespace, &o.name, o.generation.unwrap_or_default());
    match &o.uid {
        Some(uid) => r.with_uid(uid),
        None => r,
    }
}

impl PolicyStatus {
    /// Reports through `reporter` (`None`: nothing is reported).
    #[must_use]
    pub fn new(reporter: Option<StatusReporter>) -> Self {
        Self { reporter }
    }

    /// The reporter, when reporting.
    #[must_use]
    pub fn reporter(&self) -> Option<&StatusReporter> {
        self.reporter.as_ref()
    }

    fn of(&self, p: &Policy) -> Option<(&StatusReporter, PolicyRef)> {
        Some((self.reporter.as_ref()?, object_ref(p.object.as_ref()?)))
    }

    /// `p` is scheduled: its next rotation is at `at`.
    pub fn scheduled(&self, p: &Policy, at: DateTime<Utc>) {
        if let Some((r, o)) = self.of(p) {
            r.scheduled(&o, at);
        }
    }

    /// `p`'s rotation `rotation_id`, started at `started`, completed now.
    pub fn rotated(
        &self,
        p: &Policy,
        rotation_id: &str,
        started: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
    ) {
        if let Some((r, o)) = self.of(p) {
            r.rotated(&o, rotation_id, started, Utc::now(), next);
        }
    }

    /// An attempt at `p` failed, the `failures`-th in a row, for `message` (an error's text,
    /// never a value); the next is at `next`.
    pub fn failed(
        &self,
        p: &Policy,
        rotation_id: Option<&str>,
        failures: u32,
        message: &str,
        next: Option<DateTime<Utc>>,
    ) {
        if let Some((r, o)) = self.of(p) {
            r.failed(&o, rotation_id, failures, message, next);
        }
    }

    /// An object yields no policy, for `rejection`'s reason.
    pub fn rejected(&self, rejection: &Rejection) {
        if let Some(r) = &self.reporter {
            r.rejected(
                &object_ref(&rejection.object),
                rejection.reason,
                &rejection.message,
            );
        }
    }

    /// An operator used break-glass `action` on `p`.
    pub fn break_glass(&self, p: &Policy, action: &str) {
        if let Some((r, o)) = self.of(p) {
            r.break_glass(&o, action);
        }
    }

    /// `o` is no longer this replica's to report on (removed, or another replica's now).
    pub fn forget(&self, o: &PolicyObject) {
        if let Some(r) = &self.reporter {
            r.forget(&object_ref(o));
        }
    }
}

impl Observer for PolicyStatus {
    fn started(&self, policy: &Policy, rotation_id: &str) {
        if let Some((r, o)) = self.of(policy) {
            r.rotation_started(&o, rotation_id);
        }
    }

    fn delivered(&self, policy: &Policy, _rotation_id: &str, reports: &[DeliveryReport]) {
        let Some((r, o)) = self.of(policy) else {
            return;
        };
        let secrets: Vec<String> = reports
            .iter()
            .map(|d| format!("{}/{}", d.secret.object.namespace, d.secret.object.name))
            .collect();
        r.distributed(&o, &counted(&secrets, "Secret", "Secrets"));
        let restarted: Vec<String> = reports
            .iter()
            .flat_map(|d| &d.restarts)
            .filter(|w| matches!(w.outcome, RestartOutcome::Restarted { .. }))
            .map(|w| {
                format!(
                    "{} {}/{}",
                    w.workload.kind, w.object.namespace, w.workload.name
                )
            })
            .collect();
        if !restarted.is_empty() {
            r.restart_requested(&o, &counted(&restarted, "workload", "workloads"));
        }
    }
}

/// `2 Secrets: shop/db, shop/db-ro`.
fn counted(items: &[String], one: &str, many: &str) -> String {
    let noun = if items.len() == 1 { one } else { many };
    format!("{} {noun}: {}", items.len(), items.join(", "))
}

//! Distribution: the last protocol step of a rotation. The new credential goes into the
//! Kubernetes Secrets a policy names, then the workloads that read them roll.
//!
//! - [`Sink`]: the seam the rotation engine calls; one implementation per destination.
//! - [`kubernetes::KubernetesSink`]: Secrets, through the Kubernetes API.
//! - [`restart::Restarter`]: debounced rollout restarts of Deployments, StatefulSets and
//!   DaemonSets.
//! - [`DistributeError`]: one error type, with [`DistributeError::is_retryable`].
//!
//! # Ordering
//!
//! A workload is restarted only after every Secret feeding it in this delivery holds the new
//! value: [`deliver_all`] writes all of a policy's Secrets first and only then
//! asks for restarts, and a restart request is made only once its write has returned success. Pods
//! that start because of the restart therefore read the new value. The reverse order would
//! roll pods onto the old value, which for a `single`-user PostgreSQL target no longer works.
//!
//! # Idempotency
//!
//! Every part can run again after a crash and does nothing the second time: a Secret that
//! already holds the values is not written (no new `resourceVersion`), and a workload whose
//! pod template already carries the requested versions is not patched (no new rollout).
//! That is what lets the engine treat `distribute` like every other step: resume it by
//! running it again.
//!
//! # What never leaves this module
//!
//! Values appear in exactly one place: the `data` of the target Secret. Reports, errors,
//! logs and annotations carry policy names, Secret names, keys and the caller's version
//! string (an HMAC), never a value or a plain hash of one. Copies of values this module
//! makes (base64 text, decoded bytes of the live Secret, response bodies) are zeroized when
//! dropped; buffers inside the HTTP client itself are freed, not zeroized, which is beyond
//! what this module controls.

mod api;
mod debounce;
pub mod error;
pub mod kubernetes;
pub mod restart;

use async_trait::async_trait;
use keyturn_core::vault::SecretData;

pub use error::{DistributeError, ObjectRef};
pub use kubernetes::KubernetesSink;
pub use restart::{RestartTicket, Restarter};

use crate::policy::{Distribution, Workload};

/// Label on every Secret keyturn creates: `app.kubernetes.io/managed-by: keyturn`.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Label on every Secret keyturn creates: the policy that created it.
pub const POLICY_LABEL: &str = "keyturn.dev/policy";
/// The field manager keyturn writes as, so `managedFields` shows which keys it set.
pub const FIELD_MANAGER: &str = "keyturn";
/// Pod-template annotation: when keyturn last rolled the workload (RFC 3339).
pub const RESTARTED_AT_ANNOTATION: &str = "keyturn.dev/restartedAt";
/// Pod-template annotation: the version the pods were started with (see
/// [`restart::combined_version`]).
pub const VERSION_ANNOTATION: &str = "keyturn.dev/version";
/// Pod-template annotation: every policy feeding the workload and its version, as a JSON
/// object; what the idempotency check and [`VERSION_ANNOTATION`] are computed from.
pub const VERSIONS_ANNOTATION: &str = "keyturn.dev/versions";

/// One credential to deliver to one destination of a policy.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// The policy rotating the credential.
    pub policy: &'a str,
    /// Where it goes and who to restart.
    pub distribution: &'a Distribution,
    /// The credential's fields (`username`, `password`, `value`, …).
    pub credential: &'a SecretData,
    /// The new version's identifier, computed by the caller (an HMAC of the version, never a
    /// hash of the secret). Opaque here: it only ends up in pod-template annotations.
    pub version: &'a str,
}

/// What became of the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretOutcome {
    /// It did not exist; keyturn created it with the owned keys and its labels.
    Created,
    /// These keys changed (others' keys untouched).
    Updated {
        /// The keys written, sorted.
        keys: Vec<String>,
    },
    /// It already held every value: nothing was written.
    Unchanged,
}

/// The Secret part of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretReport {
    /// The Secret.
    pub object: ObjectRef,
    /// What happened to it.
    pub outcome: SecretOutcome,
    /// Its `resourceVersion` afterwards.
    pub resource_version: Option<String>,
}

/// What became of a workload to restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartOutcome {
    /// The pod template was annotated: a rollout is under way.
    Restarted {
        /// The `keyturn.dev/restartedAt` written.
        restarted_at: String,
        /// The `keyturn.dev/version` written.
        version: String,
    },
    /// The pod template already carried every requested version: not patched.
    AlreadyCurrent {
        /// Its `keyturn.dev/version`.
        version: String,
    },
    /// A paused Deployment is left alone (its owner paused it on purpose); it picks up the
    /// new Secret when it next rolls. Logged as a warning; the engine should audit it.
    SkippedPaused,
}

/// One workload's restart, shared by every delivery batched into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartReport {
    /// The workload (`deployments.apps "web" in namespace "shop"`).
    pub object: ObjectRef,
    /// The workload as the policy names it.
    pub workload: Workload,
    /// What happened.
    pub outcome: RestartOutcome,
    /// The policies whose requests this one restart served, sorted.
    pub policies: Vec<String>,
}

/// Everything one delivery did, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    /// The policy.
    pub policy: String,
    /// The Secret write.
    pub secret: SecretReport,
    /// One entry per workload in the distribution's `restart` list.
    pub restarts: Vec<RestartReport>,
}

/// A destination for rotated credentials. The engine calls it in the `distribute` step.
///
/// Both phases are idempotent, so a crash anywhere is recovered by calling again.
#[async_trait]
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// For messages and audit records (`kubernetes:https://10.0.0.1:443`).
    fn describe(&self) -> String;

    /// Phase one: makes the destination hold the credential's values.
    ///
    /// # Errors
    /// A typed [`DistributeError`]; nothing is half-written (one atomic write per Secret).
    async fn write(&self, delivery: &Delivery<'_>) -> Result<SecretReport, DistributeError>;

    /// Phase two: restarts the distribution's workloads (debounced). Call only once
    /// [`Sink::write`] has succeeded for every delivery that feeds them.
    ///
    /// # Errors
    /// The first workload that could not be restarted.
    async fn restart(&self, delivery: &Delivery<'_>)
    -> Result<Vec<RestartReport>, DistributeError>;

    /// Both phases for one delivery.
    ///
    /// # Errors
    /// As [`Sink::write`], then as [`Sink::restart`]; nothing is restarted if the write
    /// failed.
    async fn deliver(&self, delivery: &Delivery<'_>) -> Result<DeliveryReport, DistributeError> {
        let secret = self.write(delivery).await?;
        let restarts = self.restart(delivery).await?;
        Ok(DeliveryReport {
            policy: delivery.policy.to_owned(),
            secret,
            restarts,
        })
    }
}

/// All of a policy's deliveries: every Secret first, then `written` (the engine gives its
/// concurrency slot back there, as waiting for a debounced restart loads nothing), then every
/// restart, concurrently, so a workload fed by several of them rolls once.
///
/// # Errors
/// The first failure; no workload is restarted unless every write succeeded.
pub async fn deliver_all(
    sink: &dyn Sink,
    deliveries: &[Delivery<'_>],
    written: impl FnOnce(),
) -> Result<Vec<DeliveryReport>, DistributeError> {
    let mut secrets = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        secrets.push(sink.write(d).await?);
    }
    written();
    let restarts = futures_util::future::join_all(deliveries.iter().map(|d| sink.restart(d))).await;
    deliveries
        .iter()
        .zip(secrets)
        .zip(restarts)
        .map(|((d, secret), restarts)| {
            Ok(DeliveryReport {
                policy: d.policy.to_owned(),
                secret,
                restarts: restarts?,
            })
        })
        .collect()
}

//! Where a credential's versions live, and where an in-flight rotation keeps its state.
//!
//! One trait, [`Store`], one file per implementation. A store holds three things for a
//! policy: the CURRENT value (what apps read), the PREVIOUS value (kept, so a rollback or a
//! slow client still works), and the in-flight record of a rotation that has started but
//! not finished: its id, its step, its holder's lease, and the PENDING value, which is
//! persisted before any side effect so a crash can never lose a credential that was already
//! applied to a target.
//!
//! Every write of the in-flight record is a compare-and-set against the [`Fence`] read with
//! it. That CAS is what keeps two processes (daemon replicas, break-glass) from running one
//! policy's rotation at the same time.

pub mod aws_sm;
#[doc(hidden)]
pub mod contract;
pub mod memory;
pub mod vault_kv;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyturn_core::exit::{ExitCode, HasExitCode};
use keyturn_core::vault::SecretData;

/// Whether two credentials hold the same fields and values (constant-time per value).
pub(crate) fn same_fields(a: &SecretData, b: &SecretData) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| v.ct_eq(w)))
}

/// A rotation's progress: the last step whose effect is known to be done.
///
/// The engine persists `created` (before any side effect) and `finished` (promoted, delivery
/// failed); `set` and `tested` are written only with a failed attempt of the step after
/// them. A resume runs `set` and `test` again, which both are idempotent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// The PENDING value is persisted; nothing has been applied yet.
    Created,
    /// The target system accepts the PENDING value.
    Set,
    /// A login with the PENDING value worked.
    Tested,
    /// PENDING is CURRENT; the old CURRENT is PREVIOUS.
    Finished,
}

impl Step {
    /// The name stored and audited.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Set => "set",
            Self::Tested => "tested",
            Self::Finished => "finished",
        }
    }

    /// Parses a stored name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "created" => Self::Created,
            "set" => Self::Set,
            "tested" => Self::Tested,
            "finished" => Self::Finished,
            _ => return None,
        })
    }
}

/// A rotation that has started and not yet been cleared.
#[derive(Debug, Clone)]
pub struct InFlight {
    /// The rotation id: a UUID that is also the idempotency token on every store and target.
    pub rotation_id: String,
    /// Progress.
    pub step: Step,
    /// The PENDING credential's fields (`value`, or `username` + `password`).
    pub pending: SecretData,
    /// When the rotation started (the slot it serves is judged by this).
    pub started_at: DateTime<Utc>,
    /// Who is driving it.
    pub holder: String,
    /// Until when the holder's claim stands; after it, another process may take over.
    pub lease_until: DateTime<Utc>,
    /// Failed `set`/`test` attempts so far.
    pub attempts: u32,
}

/// The last rotation that completed or was given up. Serialized as is in the AWS state
/// document and in `keyturn status --json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastRotation {
    /// Its id.
    pub rotation_id: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// `ok` or `failed`.
    pub outcome: String,
}

/// The CURRENT credential.
#[derive(Debug, Clone)]
pub struct Current {
    /// Its fields.
    pub fields: SecretData,
    /// The store's version id for it.
    pub version: String,
    /// When the store created that version (the age of the credential), if it says.
    pub created: Option<DateTime<Utc>>,
}

/// The compare-and-set token for the in-flight record, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence(pub String);

/// The rotation state kept beside the credential: what is in flight, and how the last
/// rotation ended. Written whole, with compare-and-set.
#[derive(Debug, Clone, Default)]
pub struct StateRecord {
    /// The rotation in flight, if any.
    pub in_flight: Option<InFlight>,
    /// The last rotation that completed or was given up.
    pub last: Option<LastRotation>,
    /// Set by `break-glass reveal`: CURRENT was shown to a person and must be rotated once
    /// the TTL has passed. A completed rotation that started after the taint clears it.
    pub taint: Option<Taint>,
    /// Set by the daemon while a policy's rotations keep failing: how often in a row, and
    /// when it tries again. A completed rotation clears it. Kept in the store so that
    /// `keyturn status` shows the backoff and a restarted daemon keeps to it.
    pub failures: Option<Failures>,
}

/// A policy's run of failed or stopped rotation attempts. Serialized as is in the AWS state
/// document and in `keyturn status --json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failures {
    /// Attempts in a row that did not complete.
    pub count: u32,
    /// When the last of them ended.
    pub last_at: DateTime<Utc>,
    /// When the daemon tries again.
    pub retry_at: DateTime<Utc>,
}

/// A mark that CURRENT was revealed and must be rotated. Serialized as is in the AWS state
/// document and in `keyturn status --json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Taint {
    /// When it was revealed.
    pub at: DateTime<Utc>,
    /// When the rotation falls due.
    pub rotate_after: DateTime<Utc>,
    /// Who revealed it (the operator's Vault display name).
    pub by: String,
}

/// Everything a rotation needs to decide what to do next.
#[derive(Debug, Clone)]
pub struct StoreView {
    /// CURRENT, if anything was ever stored.
    pub current: Option<Current>,
    /// The rotation state.
    pub state: StateRecord,
    /// The token for the next state write.
    pub fence: Fence,
}

/// What kind of failure a [`StoreError`] is. Set by the store where the failure arises,
/// from its backend's typed answer (a Vault status, an AWS error code), never read back from
/// a message: a secret's name or a server's words could say anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreErrorKind {
    /// The backend refused for lack of permission or of valid credentials (Vault 403, AWS
    /// `AccessDeniedException`, …): a person must grant it.
    PermissionDenied,
    /// What was asked for does not exist (Vault 404, AWS `ResourceNotFoundException`).
    NotFound,
    /// The backend could not be reached, answered that it is unavailable (5xx, throttling),
    /// or did not answer in time.
    Unavailable,
    /// Someone else wrote the state since it was read ([`StoreError::Conflict`]).
    Conflict,
    /// The state record is unreadable ([`StoreError::Corrupt`]).
    Corrupt,
    /// The store's client is not usable as configured (found at its first use).
    Config,
    /// Any other answer keyturn cannot use (a request the backend rejected, a response of
    /// the wrong shape).
    Other,
}

impl StoreErrorKind {
    /// A few words for messages and audit details (`permission denied`, `unavailable`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PermissionDenied => "permission denied",
            Self::NotFound => "not found",
            Self::Unavailable => "unavailable",
            Self::Conflict => "conflict",
            Self::Corrupt => "corrupt state",
            Self::Config => "configuration",
            Self::Other => "backend",
        }
    }
}

/// Store failures. Names the store location, never a value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else wrote the in-flight record since it was read.
    #[error("{store}: state changed concurrently (another process is rotating this policy)")]
    Conflict {
        /// The store location.
        store: String,
    },
    /// The state record is unreadable (hand-edited, or from a newer keyturn).
    #[error("{store}: corrupt rotation state: {what}")]
    Corrupt {
        /// The store location.
        store: String,
        /// What is wrong.
        what: String,
    },
    /// The backing service failed.
    #[error("{store}: {source}")]
    Backend {
        /// The store location.
        store: String,
        /// The failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
        /// What kind of failure, decided by the store from the typed error.
        kind: StoreErrorKind,
        /// Whether trying again may help.
        retryable: bool,
    },
}

impl StoreError {
    /// Whether a later attempt may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Conflict { .. } | Self::Corrupt { .. } => false,
            Self::Backend { retryable, .. } => *retryable,
        }
    }

    /// What kind of failure this is.
    #[must_use]
    pub fn kind(&self) -> StoreErrorKind {
        match self {
            Self::Conflict { .. } => StoreErrorKind::Conflict,
            Self::Corrupt { .. } => StoreErrorKind::Corrupt,
            Self::Backend { kind, .. } => *kind,
        }
    }

    /// Whether the backing service refused for lack of permission (Vault 403, AWS
    /// AccessDenied): a person must grant it, and every command exits 77.
    #[must_use]
    pub fn is_permission_denied(&self) -> bool {
        self.kind() == StoreErrorKind::PermissionDenied
    }
}

impl HasExitCode for StoreError {
    /// One mapping for `rotate`, `break-glass` and `status`: 77 refused, 66 not there, 69
    /// unavailable, 75 for a concurrent writer (another process is rotating: try later), 64
    /// for a client configured wrong, 70 for corrupt state and answers keyturn cannot use.
    fn exit_code(&self) -> ExitCode {
        match self.kind() {
            StoreErrorKind::PermissionDenied => ExitCode::NoPermission,
            StoreErrorKind::NotFound => ExitCode::NotFound,
            StoreErrorKind::Unavailable => ExitCode::Unavailable,
            StoreErrorKind::Conflict => ExitCode::Busy,
            StoreErrorKind::Config => ExitCode::Usage,
            StoreErrorKind::Corrupt | StoreErrorKind::Other => ExitCode::Software,
        }
    }
}

/// A place a policy's credential lives.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Where, for messages and audit records (`vault-kv:secret/keyturn/orders-db`).
    fn location(&self) -> String;

    /// Reads CURRENT, the in-flight record and the last rotation.
    async fn view(&self) -> Result<StoreView, StoreError>;

    /// Reads the rotation state alone (`keyturn status`: no credential needed). An in-flight
    /// record's PENDING value may be left empty ([`Store::view`] has it).
    async fn state(&self) -> Result<StateRecord, StoreError> {
        Ok(self.view().await?.state)
    }

    /// Reads CURRENT alone (an admin credential read at each use needs no state).
    async fn current(&self) -> Result<Option<Current>, StoreError> {
        Ok(self.view().await?.current)
    }

    /// Replaces the state record if it is still at `fence`; returns the new fence. When the
    /// record carries a [`Step::Created`] rotation, this is where its PENDING value becomes
    /// durable; when it carries none, any PENDING copy is removed.
    async fn write_state(&self, fence: &Fence, state: &StateRecord) -> Result<Fence, StoreError>;

    /// Makes the in-flight PENDING value CURRENT, the old CURRENT PREVIOUS. Idempotent: if
    /// it already is CURRENT (a crash after this call), it does nothing.
    async fn promote(&self, rec: &InFlight, base: Option<&Current>) -> Result<(), StoreError>;
}

//! Vault KV v2 as a store.
//!
//! - CURRENT is the latest version at the policy's path, so apps and `keyturn-init` read it
//!   plainly; PREVIOUS is the version before it (KV v2 keeps it).
//! - The state record lives at `keyturn-state/<path>` in the same mount, one KV v2 secret
//!   whose version number is the fence: every state write is a `cas` write on it. Its fields
//!   are `rotation_id`, `step`, `holder`, `lease_until`, `attempts`, `started_at`,
//!   `pending.<field>` (the PENDING value), and `last_rotation_id`, `last_started_at`,
//!   `last_outcome`.
//!
//! The state path sits outside the app's path on purpose: an app's read policy for
//! `secret/data/orders/db` does not reach `secret/data/keyturn-state/orders/db`, where the
//! PENDING value is.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyturn_core::SecretValue;
use keyturn_core::text::echo;
use keyturn_core::vault::{SecretData, Vault, VaultError};

use crate::backends::{BackendError, Backends, StoreKind};
use crate::policy::needs::{Holding, Need};
use crate::policy::{S, Validator};

use super::{
    Current, Failures, Fence, InFlight, LastRotation, StateRecord, Step, Store, StoreError,
    StoreErrorKind, StoreView, Taint, same_fields,
};

/// The prefix, inside the policy's mount, under which rotation state is kept.
pub const STATE_PREFIX: &str = "keyturn-state";
const PENDING: &str = "pending.";

// ---- the policy's `vault-kv:` -------------------------------------------------------------

/// The Vault capabilities a policy needs on its credential's KV v2 data path and on its state
/// path (`policies/vault/keyturn-agent.hcl` grants these for `keyturn/` and `keyturn-state/`).
pub const OWN_CAPS: &[&str] = &["create", "read", "update"];
/// The capabilities needed on a target's admin credential.
pub const ADMIN_CAPS: &[&str] = &["read"];

/// `vault-kv:` as a policy writes it.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Raw {
    /// The KV v2 mount (default `secret`).
    #[schemars(with = "Option<String>")]
    mount: Option<S<String>>,
    /// The path inside the mount.
    #[schemars(with = "String")]
    path: S<String>,
}

/// A Vault KV v2 location, validated: no empty, `.` or `..` segment, no leading `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Spec {
    /// The KV v2 mount (`secret`).
    pub mount: String,
    /// The path inside the mount.
    pub path: String,
}

impl Spec {
    /// Validates `raw`, found at `field` (`spec.store.vault-kv`).
    pub(crate) fn validate(raw: &Raw, v: &mut Validator<'_>, field: &str) -> Option<Self> {
        if let Some(m) = &raw.mount
            && let Err(msg) = segment_path(&m.value)
        {
            v.err(m, &format!("{field}.mount"), msg);
            return None;
        }
        if let Err(msg) = segment_path(&raw.path.value) {
            v.err(&raw.path, &format!("{field}.path"), msg);
            return None;
        }
        Some(Self {
            mount: raw
                .mount
                .as_ref()
                .map_or("secret", |m| m.value.as_str())
                .trim_matches('/')
                .to_owned(),
            path: raw.path.value.trim_matches('/').to_owned(),
        })
    }

    /// The KV v2 API path of `path` in this spec's mount.
    fn data_path(&self, path: &str) -> String {
        format!("{}/data/{path}", self.mount)
    }
}

impl std::fmt::Display for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vault-kv:{}/{}", self.mount, self.path)
    }
}

impl StoreKind for Spec {
    fn needs(&self, holding: Holding) -> Vec<Need> {
        match holding {
            Holding::Own => vec![
                Need::Vault {
                    path: self.data_path(&self.path),
                    capabilities: OWN_CAPS,
                },
                Need::Vault {
                    path: self.data_path(&format!("{STATE_PREFIX}/{}", self.path)),
                    capabilities: OWN_CAPS,
                },
            ],
            Holding::Admin => vec![Need::Vault {
                path: self.data_path(&self.path),
                capabilities: ADMIN_CAPS,
            }],
        }
    }

    fn build(&self, backends: &Backends, policy: &str) -> Result<Arc<dyn Store>, BackendError> {
        let vault = backends.vault_for(policy)?;
        Ok(Arc::new(VaultKvStore::new(vault, &self.mount, &self.path)))
    }
}

/// A Vault path: non-empty segments, no `.` or `..`, no empty segment, printable.
fn segment_path(p: &str) -> Result<(), String> {
    let t = p.trim_matches('/');
    if t.is_empty() {
        return Err("must not be empty".into());
    }
    if p.starts_with('/') {
        return Err("must be relative (no leading '/')".into());
    }
    for seg in t.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!("{} has an empty, '.' or '..' segment", echo(p)));
        }
        if seg.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!(
                "{} contains whitespace or control characters",
                echo(p)
            ));
        }
    }
    Ok(())
}

// ---- the store ----------------------------------------------------------------------------

/// A policy's credential in Vault KV v2.
#[derive(Debug, Clone)]
pub struct VaultKvStore {
    vault: Arc<Vault>,
    mount: String,
    path: String,
}

impl VaultKvStore {
    /// The store for `mount`/`path`, through `vault` (logged in with the agent's token).
    #[must_use]
    pub fn new(vault: Arc<Vault>, mount: &str, path: &str) -> Self {
        Self {
            vault,
            mount: mount.to_owned(),
            path: path.to_owned(),
        }
    }

    /// Where the state record is, inside the mount.
    #[must_use]
    pub fn state_path(&self) -> String {
        format!("{STATE_PREFIX}/{}", self.path)
    }

    fn backend(&self, e: VaultError) -> StoreError {
        if let VaultError::CasConflict { .. } = e {
            return StoreError::Conflict {
                store: self.location(),
            };
        }
        let (kind, retryable) = (store_kind(&e), e.is_retryable());
        StoreError::Backend {
            store: self.location(),
            source: Box::new(e),
            kind,
            retryable,
        }
    }

    fn corrupt(&self, what: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            store: self.location(),
            what: what.into(),
        }
    }

    fn parse_state(&self, d: &SecretData) -> Result<StateRecord, StoreError> {
        let text = |k: &str| -> Result<Option<String>, StoreError> {
            match d.get(k) {
                None => Ok(None),
                Some(v) => v
                    .expose_str()
                    .map(|s| Some(s.to_owned()))
                    .map_err(|_| self.corrupt(format!("{k} is not text"))),
            }
        };
        let time = |k: &str| -> Result<Option<DateTime<Utc>>, StoreError> {
            text(k)?
                .map(|s| DateTime::parse_from_rfc3339(&s).map(|t| t.with_timezone(&Utc)))
                .transpose()
                .map_err(|_| self.corrupt(format!("{k} is not an RFC 3339 time")))
        };
        let last = match (
            text("last_rotation_id")?,
            time("last_started_at")?,
            text("last_outcome")?,
        ) {
            (Some(rotation_id), Some(started_at), Some(outcome)) => Some(LastRotation {
                rotation_id,
                started_at,
                outcome,
            }),
            _ => None,
        };
        let in_flight = match text("rotation_id")? {
            None => None,
            Some(rotation_id) => {
                let step = text("step")?
                    .and_then(|s| Step::parse(&s))
                    .ok_or_else(|| self.corrupt("missing or unknown step"))?;
                let mut pending = SecretData::new();
                for (k, v) in d.iter() {
                    if let Some(field) = k.strip_prefix(PENDING) {
                        pending.insert(field, v.clone());
                    }
                }
                if pending.is_empty() {
                    return Err(self.corrupt("in-flight rotation without a pending value"));
                }
                Some(InFlight {
                    rotation_id,
                    step,
                    pending,
                    started_at: time("started_at")?
                        .ok_or_else(|| self.corrupt("missing started_at"))?,
                    holder: text("holder")?.unwrap_or_default(),
                    lease_until: time("lease_until")?.unwrap_or(DateTime::<Utc>::MIN_UTC),
                    attempts: text("attempts")?.and_then(|a| a.parse().ok()).unwrap_or(0),
                })
            }
        };
        let taint = match (
            time("taint_at")?,
            time("taint_rotate_after")?,
            text("taint_by")?,
        ) {
            (Some(at), Some(rotate_after), Some(by)) => Some(Taint {
                at,
                rotate_after,
                by,
            }),
            _ => None,
        };
        // Bookkeeping for `status` and the backoff, never a reason to stop rotating: an
        // unreadable record reads as none, and the next failure writes a good one.
        let failures = (|| {
            Some(Failures {
                count: text("failures_count").ok()??.parse().ok()?,
                last_at: time("failures_last_at").ok()??,
                retry_at: time("failures_retry_at").ok()??,
            })
        })();
        Ok(StateRecord {
            in_flight,
            last,
            taint,
            failures,
        })
    }
}

fn put(d: &mut SecretData, k: &str, v: impl Into<String>) {
    d.insert(k, SecretValue::from(v.into()));
}

fn encode_state(state: &StateRecord) -> SecretData {
    let mut d = SecretData::new();
    if let Some(l) = &state.last {
        put(&mut d, "last_rotation_id", l.rotation_id.clone());
        put(&mut d, "last_started_at", l.started_at.to_rfc3339());
        put(&mut d, "last_outcome", l.outcome.clone());
    }
    if let Some(t) = &state.taint {
        put(&mut d, "taint_at", t.at.to_rfc3339());
        put(&mut d, "taint_rotate_after", t.rotate_after.to_rfc3339());
        put(&mut d, "taint_by", t.by.clone());
    }
    if let Some(f) = &state.failures {
        put(&mut d, "failures_count", f.count.to_string());
        put(&mut d, "failures_last_at", f.last_at.to_rfc3339());
        put(&mut d, "failures_retry_at", f.retry_at.to_rfc3339());
    }
    if let Some(f) = &state.in_flight {
        put(&mut d, "rotation_id", f.rotation_id.clone());
        put(&mut d, "step", f.step.as_str());
        put(&mut d, "holder", f.holder.clone());
        put(&mut d, "lease_until", f.lease_until.to_rfc3339());
        put(&mut d, "started_at", f.started_at.to_rfc3339());
        put(&mut d, "attempts", f.attempts.to_string());
        for (k, v) in f.pending.iter() {
            d.insert(format!("{PENDING}{k}"), v.clone());
        }
    }
    if d.is_empty() {
        // KV v2 refuses an empty write; an explicit marker keeps "no state" writable.
        put(&mut d, "state", "idle");
    }
    d
}

#[async_trait]
impl Store for VaultKvStore {
    fn location(&self) -> String {
        format!("vault-kv:{}/{}", self.mount, self.path)
    }

    async fn view(&self) -> Result<StoreView, StoreError> {
        // Two independent reads: concurrently, as a rotation starts with this.
        let state_path = self.state_path();
        let (current, state) = tokio::join!(
            self.vault.kv2_read(&self.mount, &self.path, None),
            self.vault.kv2_read(&self.mount, &state_path, None)
        );
        let current = match current {
            Ok(v) => Some(Current {
                fields: v.data,
                version: v.version.to_string(),
                created: v.created,
            }),
            Err(VaultError::NotFound { .. }) => None,
            Err(e) => return Err(self.backend(e)),
        };
        let (state, fence) = match state {
            Ok(v) => (self.parse_state(&v.data)?, Fence(v.version.to_string())),
            Err(VaultError::NotFound { .. }) => (StateRecord::default(), Fence("0".into())),
            Err(e) => return Err(self.backend(e)),
        };
        Ok(StoreView {
            current,
            state,
            fence,
        })
    }

    async fn state(&self) -> Result<StateRecord, StoreError> {
        match self
            .vault
            .kv2_read(&self.mount, &self.state_path(), None)
            .await
        {
            Ok(v) => self.parse_state(&v.data),
            Err(VaultError::NotFound { .. }) => Ok(StateRecord::default()),
            Err(e) => Err(self.backend(e)),
        }
    }

    async fn current(&self) -> Result<Option<Current>, StoreError> {
        match self.vault.kv2_read(&self.mount, &self.path, None).await {
            Ok(v) => Ok(Some(Current {
                fields: v.data,
                version: v.version.to_string(),
                created: v.created,
            })),
            Err(VaultError::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.backend(e)),
        }
    }

    async fn write_state(&self, fence: &Fence, state: &StateRecord) -> Result<Fence, StoreError> {
        let cas: u64 = fence
            .0
            .parse()
            .map_err(|_| self.corrupt(format!("fence {:?} is not a version", fence.0)))?;
        let v = self
            .vault
            .kv2_write(
                &self.mount,
                &self.state_path(),
                &encode_state(state),
                Some(cas),
            )
            .await
            .map_err(|e| self.backend(e))?;
        Ok(Fence(v.to_string()))
    }

    async fn promote(&self, rec: &InFlight, base: Option<&Current>) -> Result<(), StoreError> {
        // Resuming after a crash that followed the write: CURRENT already is PENDING, and a
        // second write would push the old value out of PREVIOUS.
        if base.is_some_and(|c| same_fields(&c.fields, &rec.pending)) {
            return Ok(());
        }
        let cas = match base {
            Some(c) => c
                .version
                .parse()
                .map_err(|_| self.corrupt("current version is not a number"))?,
            None => 0,
        };
        match self
            .vault
            .kv2_write(&self.mount, &self.path, &rec.pending, Some(cas))
            .await
        {
            Ok(_) => Ok(()),
            Err(VaultError::CasConflict { .. }) => {
                // Either this rotation already promoted (a crash after the write) or someone
                // else wrote CURRENT. Only the first is fine.
                let now = self
                    .vault
                    .kv2_read(&self.mount, &self.path, None)
                    .await
                    .map_err(|e| self.backend(e))?;
                if same_fields(&now.data, &rec.pending) {
                    Ok(())
                } else {
                    Err(StoreError::Conflict {
                        store: self.location(),
                    })
                }
            }
            Err(e) => Err(self.backend(e)),
        }
    }
}

/// The kind of a Vault failure, from its variant (the status Vault answered): the
/// classification `VaultError`'s own exit code makes, so a denial is 77 whichever path
/// reports it.
fn store_kind(e: &VaultError) -> StoreErrorKind {
    match e {
        VaultError::PermissionDenied { .. } | VaultError::Rejected { code: 401, .. } => {
            StoreErrorKind::PermissionDenied
        }
        VaultError::NotFound { .. } => StoreErrorKind::NotFound,
        VaultError::Unreachable { .. }
        | VaultError::Unavailable { .. }
        | VaultError::DeadlineExceeded { .. } => StoreErrorKind::Unavailable,
        VaultError::CasConflict { .. } => StoreErrorKind::Conflict,
        // A server certificate no trusted CA signed: the operator's VAULT_CACERT, as 64.
        VaultError::Config(_) | VaultError::UntrustedCertificate { .. } => StoreErrorKind::Config,
        VaultError::Rejected { .. }
        | VaultError::BadResponse { .. }
        | VaultError::NotText { .. } => StoreErrorKind::Other,
    }
}

#[cfg(test)]
mod exit_tests {
    use keyturn_core::exit::HasExitCode;

    use super::*;

    /// Every Vault failure a store meets exits as Vault's own classification says, through
    /// the store's kind: `rotate`, `break-glass` and `status` agree with `keyturn-init`.
    #[test]
    fn a_store_failure_exits_as_the_vault_error_it_came_from() {
        let path = || "secret/data/keyturn/api".to_owned();
        let status = |code| VaultError::Unavailable {
            op: "read",
            path: path(),
            code,
            messages: vec![],
        };
        let cases = [
            VaultError::PermissionDenied {
                op: "read",
                path: path(),
            },
            VaultError::NotFound {
                op: "read",
                path: path(),
            },
            status(503),
            VaultError::Unreachable {
                op: "read",
                path: path(),
                addr: "https://vault:8200".into(),
                cause: "connection refused".into(),
            },
            VaultError::DeadlineExceeded {
                op: "read",
                path: path(),
                deadline: std::time::Duration::from_secs(5),
                last: "no answer".into(),
            },
            VaultError::Rejected {
                op: "read",
                path: path(),
                code: 400,
                messages: vec![],
            },
            VaultError::Rejected {
                op: "read",
                path: path(),
                code: 401,
                messages: vec![],
            },
            VaultError::BadResponse {
                op: "read",
                path: path(),
                what: "no data".into(),
            },
        ];
        for v in cases {
            let want = v.exit_code();
            let e = StoreError::Backend {
                store: "vault-kv:secret/keyturn/api".into(),
                kind: store_kind(&v),
                retryable: v.is_retryable(),
                source: Box::new(v),
            };
            assert_eq!(e.exit_code(), want, "{e}");
        }
    }
}

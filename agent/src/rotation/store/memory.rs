//! An in-memory store, for tests and dry runs: nothing is persisted, and everything is lost
//! with the process.
//!
//! It keeps the semantics of [`VaultKvStore`](super::vault_kv::VaultKvStore), which the
//! [`contract`](super::contract) suite checks against all stores alike:
//!
//! - CURRENT is the newest of a list of versions numbered from 1, PREVIOUS the one before it;
//!   [`Store::promote`] is a compare-and-set on the version it was based on (none: `0`), and a
//!   promote whose value already is CURRENT does nothing.
//! - The state record is written whole, with compare-and-set on its own version number (the
//!   [`Fence`]: `0` while nothing was ever written). The PENDING value lives in it, so a
//!   record without an in-flight rotation holds none.
//!
//! Handles are cheap clones of one shared store, as two processes share one Vault path.
//!
//! For tests, faults can be scripted per operation ([`MemoryStore::inject`]): fail the next
//! calls with a given kind of error, apply a write and then fail as if its answer was lost,
//! or let another writer get there first. Calls are counted per operation, and every state
//! record written is kept, so a test can prove what a rotation did to its store.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyturn_core::vault::SecretData;

use super::{
    Current, Fence, InFlight, StateRecord, Store, StoreError, StoreErrorKind, StoreView,
    same_fields,
};

/// A store operation, for [`MemoryStore::inject`] and [`MemoryStore::calls`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Store::view`].
    View,
    /// [`Store::state`].
    State,
    /// [`Store::current`].
    Current,
    /// [`Store::write_state`].
    WriteState,
    /// [`Store::promote`].
    Promote,
}

/// The kind of error a scripted fault answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// [`StoreError::Conflict`]: another process wrote first.
    Conflict,
    /// [`StoreError::Backend`], retryable: the service is unavailable.
    Unavailable,
    /// [`StoreError::Backend`], not retryable: the service refused the request.
    Refused,
    /// [`StoreError::Backend`] of kind [`StoreErrorKind::PermissionDenied`].
    PermissionDenied,
    /// [`StoreError::Corrupt`]: the record is unreadable.
    Corrupt,
}

/// A scripted fault, taken by the next call of the operation it was injected for.
#[derive(Debug, Clone)]
pub enum Fault {
    /// The call runs as usual: scripts a fault for a later call.
    Pass,
    /// The call fails with this kind of error and changes nothing.
    Fail(FaultKind),
    /// The call takes effect, then fails with this kind of error (an answer lost on the way
    /// back; for a read, the read simply fails).
    FailAfter(FaultKind),
    /// Another writer replaces the state record just before the call runs; the call then
    /// runs as usual (a write meets the moved fence by itself).
    StateRaced(Box<StateRecord>),
    /// Another writer stores a new CURRENT just before the call runs.
    CurrentRaced(SecretData),
}

/// One version of the credential.
#[derive(Debug, Clone)]
pub struct Version {
    /// Its number, from 1.
    pub number: u64,
    /// Its fields.
    pub fields: SecretData,
    /// When it was written.
    pub created: DateTime<Utc>,
}

#[derive(Default)]
struct Inner {
    versions: Vec<Version>,
    state: StateRecord,
    /// The state record's version: the fence. 0 while nothing was written.
    state_version: u64,
    written: Vec<StateRecord>,
    faults: HashMap<Op, VecDeque<Fault>>,
    calls: HashMap<Op, usize>,
}

/// A policy's credential and rotation state in memory. See the [module](self).
#[derive(Clone)]
pub struct MemoryStore {
    name: String,
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The error of a scripted fault (a [`StoreError::Backend`]'s source).
#[derive(Debug, thiserror::Error)]
#[error("injected fault: {0}")]
pub struct InjectedFault(&'static str);

impl MemoryStore {
    /// An empty store: no CURRENT, no state. `name` appears in its location
    /// (`memory:<name>`).
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            inner: Arc::default(),
        }
    }

    /// A store whose CURRENT is `fields` (version 1).
    #[must_use]
    pub fn with_current(name: impl Into<String>, fields: SecretData) -> Self {
        let s = Self::new(name);
        s.put_current(fields);
        s
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock must not hide its own failure.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes a new CURRENT outside any rotation (an operator, or a test's setup); returns its
    /// version number. The old CURRENT becomes PREVIOUS.
    pub fn put_current(&self, fields: SecretData) -> u64 {
        self.lock().push_version(fields)
    }

    /// Replaces the state record outside any compare-and-set (a test's setup); returns the new
    /// fence.
    pub fn put_state(&self, state: StateRecord) -> Fence {
        self.lock().put_state(state)
    }

    /// Scripts `fault` for the next call of `op` (after those already scripted for it).
    pub fn inject(&self, op: Op, fault: Fault) {
        self.lock().faults.entry(op).or_default().push_back(fault);
    }

    /// Scripts `fault` for the next `n` calls of `op`.
    pub fn inject_n(&self, op: Op, n: usize, fault: &Fault) {
        for _ in 0..n {
            self.inject(op, fault.clone());
        }
    }

    /// Scripted faults not yet taken, for `op`.
    #[must_use]
    pub fn pending_faults(&self, op: Op) -> usize {
        self.lock().faults.get(&op).map_or(0, VecDeque::len)
    }

    /// How often `op` was called (faulted calls included).
    #[must_use]
    pub fn calls(&self, op: Op) -> usize {
        self.lock().calls.get(&op).copied().unwrap_or(0)
    }

    /// Every version ever made CURRENT, oldest first.
    #[must_use]
    pub fn versions(&self) -> Vec<Version> {
        self.lock().versions.clone()
    }

    /// PREVIOUS: the version before CURRENT.
    #[must_use]
    pub fn previous(&self) -> Option<Version> {
        let i = self.lock();
        i.versions.iter().rev().nth(1).cloned()
    }

    /// Every state record written through [`Store::write_state`] that took effect, in order
    /// (not those of [`MemoryStore::put_state`] or of a raced fault).
    #[must_use]
    pub fn state_writes(&self) -> Vec<StateRecord> {
        self.lock().written.clone()
    }

    /// The state record as it is now, read without counting a call or taking a fault.
    #[must_use]
    pub fn peek_state(&self) -> StateRecord {
        self.lock().state.clone()
    }

    /// Counts a call of `op` and takes its next scripted fault: races are applied here,
    /// failures are returned for the operation to apply.
    fn enter(&self, op: Op) -> Option<(FaultKind, bool)> {
        let mut i = self.lock();
        *i.calls.entry(op).or_default() += 1;
        match i.faults.get_mut(&op).and_then(VecDeque::pop_front)? {
            Fault::Pass => None,
            Fault::Fail(k) => Some((k, false)),
            Fault::FailAfter(k) => Some((k, true)),
            Fault::StateRaced(s) => {
                i.put_state(*s);
                None
            }
            Fault::CurrentRaced(f) => {
                i.push_version(f);
                None
            }
        }
    }

    fn error(&self, kind: FaultKind) -> StoreError {
        let store = self.location();
        match kind {
            FaultKind::Conflict => StoreError::Conflict { store },
            FaultKind::Corrupt => StoreError::Corrupt {
                store,
                what: "injected fault".into(),
            },
            FaultKind::Unavailable => StoreError::Backend {
                store,
                source: Box::new(InjectedFault("unavailable")),
                kind: StoreErrorKind::Unavailable,
                retryable: true,
            },
            FaultKind::Refused => StoreError::Backend {
                store,
                source: Box::new(InjectedFault("refused")),
                kind: StoreErrorKind::Other,
                retryable: false,
            },
            FaultKind::PermissionDenied => StoreError::Backend {
                store,
                source: Box::new(InjectedFault("permission denied")),
                kind: StoreErrorKind::PermissionDenied,
                retryable: false,
            },
        }
    }

    /// Runs a read: a scripted failure (before or "after") simply fails it.
    async fn read<T>(&self, op: Op, f: impl FnOnce(&Inner) -> T) -> Result<T, StoreError> {
        // Lets concurrent callers interleave, as with a real service.
        tokio::task::yield_now().await;
        if let Some((kind, _)) = self.enter(op) {
            return Err(self.error(kind));
        }
        Ok(f(&self.lock()))
    }

    /// Runs a write: a scripted failure stops it before it takes effect, or after.
    async fn write<T>(
        &self,
        op: Op,
        f: impl FnOnce(&mut Inner) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        tokio::task::yield_now().await;
        let fault = self.enter(op);
        if let Some((kind, false)) = fault {
            return Err(self.error(kind));
        }
        let r = f(&mut self.lock());
        match fault {
            Some((kind, _)) => Err(self.error(kind)),
            None => r,
        }
    }

    fn conflict(&self) -> StoreError {
        self.error(FaultKind::Conflict)
    }
}

impl Inner {
    fn push_version(&mut self, fields: SecretData) -> u64 {
        let number = self.versions.last().map_or(0, |v| v.number) + 1;
        self.versions.push(Version {
            number,
            fields,
            created: Utc::now(),
        });
        number
    }

    fn put_state(&mut self, state: StateRecord) -> Fence {
        self.state = state;
        self.state_version += 1;
        Fence(self.state_version.to_string())
    }

    fn current(&self) -> Option<Current> {
        self.versions.last().map(|v| Current {
            fields: v.fields.clone(),
            version: v.number.to_string(),
            created: Some(v.created),
        })
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn location(&self) -> String {
        format!("memory:{}", self.name)
    }

    async fn view(&self) -> Result<StoreView, StoreError> {
        self.read(Op::View, |i| StoreView {
            current: i.current(),
            state: i.state.clone(),
            fence: Fence(i.state_version.to_string()),
        })
        .await
    }

    async fn state(&self) -> Result<StateRecord, StoreError> {
        self.read(Op::State, |i| i.state.clone()).await
    }

    async fn current(&self) -> Result<Option<Current>, StoreError> {
        self.read(Op::Current, Inner::current).await
    }

    async fn write_state(&self, fence: &Fence, state: &StateRecord) -> Result<Fence, StoreError> {
        let cas: u64 = fence.0.parse().map_err(|_| StoreError::Corrupt {
            store: self.location(),
            what: format!("fence {:?} is not a version", fence.0),
        })?;
        let conflict = self.conflict();
        self.write(Op::WriteState, |i| {
            if i.state_version != cas {
                return Err(conflict);
            }
            i.written.push(state.clone());
            Ok(i.put_state(state.clone()))
        })
        .await
    }

    async fn promote(&self, rec: &InFlight, base: Option<&Current>) -> Result<(), StoreError> {
        // As in Vault: resuming after a crash that followed the promote must not push the old
        // value out of PREVIOUS.
        if base.is_some_and(|c| same_fields(&c.fields, &rec.pending)) {
            return Ok(());
        }
        let cas: u64 = match base {
            Some(c) => c.version.parse().map_err(|_| StoreError::Corrupt {
                store: self.location(),
                what: "current version is not a number".into(),
            })?,
            None => 0,
        };
        let conflict = self.conflict();
        self.write(Op::Promote, |i| {
            let now = i.versions.last();
            if now.map_or(0, |v| v.number) == cas {
                i.push_version(rec.pending.clone());
                Ok(())
            } else if now.is_some_and(|v| same_fields(&v.fields, &rec.pending)) {
                // This rotation promoted already (a crash after the write).
                Ok(())
            } else {
                Err(conflict)
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyturn_core::SecretValue;

    fn fields(v: &str) -> SecretData {
        let mut d = SecretData::new();
        d.insert("value", SecretValue::from_str_copy(v));
        d
    }

    #[tokio::test]
    async fn a_scripted_failure_changes_nothing_and_a_failure_after_takes_effect() {
        let s = MemoryStore::new("t");
        s.inject(Op::WriteState, Fault::Fail(FaultKind::Unavailable));
        s.inject(Op::WriteState, Fault::FailAfter(FaultKind::Refused));
        let st = StateRecord::default();
        let e = s.write_state(&Fence("0".into()), &st).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert_eq!(s.view().await.unwrap().fence, Fence("0".into()));
        let e = s.write_state(&Fence("0".into()), &st).await.unwrap_err();
        assert!(!e.is_retryable(), "{e}");
        assert!(e.to_string().contains("memory:t"), "{e}");
        assert_eq!(s.view().await.unwrap().fence, Fence("1".into()));
        assert_eq!(s.calls(Op::WriteState), 2);
        assert_eq!(s.state_writes().len(), 1);
        assert_eq!(s.pending_faults(Op::WriteState), 0);
        // Faults are taken once: the next write runs normally.
        s.write_state(&Fence("1".into()), &st).await.unwrap();
    }

    #[tokio::test]
    async fn a_raced_state_moves_the_fence_under_the_next_write() {
        let s = MemoryStore::new("t");
        let fence = s.view().await.unwrap().fence;
        s.inject(Op::WriteState, Fault::StateRaced(Box::default()));
        let e = s
            .write_state(&fence, &StateRecord::default())
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
        assert!(s.state_writes().is_empty());
    }

    #[tokio::test]
    async fn put_current_keeps_the_old_value_as_previous() {
        let s = MemoryStore::with_current("t", fields("one"));
        assert_eq!(s.put_current(fields("two")), 2);
        assert!(same_fields(&s.previous().unwrap().fields, &fields("one")));
        let cur = s.current().await.unwrap().unwrap();
        assert_eq!(cur.version, "2");
        assert!(same_fields(&cur.fields, &fields("two")));
    }
}

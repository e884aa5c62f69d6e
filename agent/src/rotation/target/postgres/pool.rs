//! The PostgreSQL admin connection pool, shared by every PostgreSQL target of a process.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use keyturn_core::SecretValue;

/// Admin connections, shared by every target of a process (see [`super::Postgres::with_pool`]).
///
/// A rotation's `set` runs one `ALTER ROLE` as the admin; opening a fresh connection for it
/// (backend start + SCRAM login) costs the server several times the statement itself. So at
/// most [`AdminPool::MAX_OPEN`] connections are open per admin at once, and they are kept
/// idle between uses: a burst of rotations queues for them (each statement takes well under
/// a millisecond) instead of starting a backend per rotation. A connection is reused only
/// for the same server, database and admin role **and** the same admin password (compared
/// in constant time), so an admin password rotated elsewhere is picked up on the next use;
/// a closed connection is dropped.
#[derive(Default)]
pub struct AdminPool {
    admins: Mutex<HashMap<String, Admin>>,
}

/// One admin's connections: the bound on how many are open, and the idle ones.
struct Admin {
    open: Arc<tokio::sync::Semaphore>,
    idle: Vec<(SecretValue, tokio_postgres::Client)>,
}

/// The right to use one of an admin's connections: an idle one, or a new one to open. Give
/// the connection back with [`AdminPool::put`]; dropping the slot instead closes nothing
/// (the caller drops its client) and frees the place.
pub(super) struct AdminSlot {
    _open: tokio::sync::OwnedSemaphorePermit,
    pub(super) client: Option<tokio_postgres::Client>,
}

impl fmt::Debug for AdminPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminPool").finish_non_exhaustive()
    }
}

impl AdminPool {
    /// Connections open at once per admin.
    pub const MAX_OPEN: usize = 4;

    fn admins(&self) -> MutexGuard<'_, HashMap<String, Admin>> {
        self.admins.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for one of `key`'s places, with an idle connection for `password` if there is
    /// one.
    pub(super) async fn take(&self, key: &str, password: &SecretValue) -> AdminSlot {
        let open = self
            .admins()
            .entry(key.to_owned())
            .or_insert_with(|| Admin {
                open: Arc::new(tokio::sync::Semaphore::new(Self::MAX_OPEN)),
                idle: Vec::new(),
            })
            .open
            .clone();
        // The semaphore is never closed, so acquiring only waits.
        let permit = open
            .acquire_owned()
            .await
            .expect("admin pool semaphore closed");
        let mut admins = self.admins();
        let client = admins.get_mut(key).and_then(|a| {
            // Entries for an old password can never match again: drop them.
            a.idle
                .retain(|(pw, c)| pw.ct_eq(password) && !c.is_closed());
            a.idle.pop().map(|(_, c)| c)
        });
        AdminSlot {
            _open: permit,
            client,
        }
    }

    /// Keeps `client` idle for `key` and frees the slot's place.
    pub(super) fn put(
        &self,
        key: &str,
        slot: AdminSlot,
        password: SecretValue,
        client: tokio_postgres::Client,
    ) {
        if let Some(a) = self.admins().get_mut(key) {
            a.idle.push((password, client));
        }
        drop(slot);
    }
}

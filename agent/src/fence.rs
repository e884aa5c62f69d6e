//! The permission to perform side effects, checked before each one.
//!
//! A daemon replica may act on the policies it owns only while its membership Lease is valid
//! with a margin (see [`crate::daemon::membership`]). The rotation engine and the restarter
//! ask a [`Guard`] right before every side effect — a store write, a target's `set`, `test`
//! or revert, a Kubernetes write — so a replica whose Lease may be expiring stops before any
//! other replica can take its policies over. A process without replicas has no guard and is
//! always allowed (the store's check-and-set is then the only arbiter, as it is the last one
//! in every case).

use std::fmt;
use std::time::Duration;

/// Why a [`Guard`] refuses: this process must not act now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Fenced {
    /// No renewal of this replica's Lease has succeeded yet.
    #[error("this replica's membership Lease has not been renewed yet")]
    NeverRenewed,
    /// The last successful renewal is too old: the Lease may expire (as the other replicas
    /// see it) within the margin, or already has.
    #[error("this replica's membership Lease was last renewed {since:?} ago, too long to act")]
    Expired {
        /// How long ago the last successful renewal was sent.
        since: Duration,
    },
    /// The replica gave its Lease up (shutting down).
    #[error("this replica has released its membership Lease")]
    Released,
}

/// Permission to perform a side effect now.
pub trait Guard: Send + Sync + fmt::Debug {
    /// `Ok` when a side effect may start now.
    ///
    /// # Errors
    /// [`Fenced`] when it may not.
    fn check(&self) -> Result<(), Fenced>;
}

/// Asks `guard` for permission to act now; no guard (a process without replicas) always
/// permits. One place for what every side effect asks first, so no caller can get the
/// `None` case backwards.
///
/// # Errors
/// [`Fenced`] when `guard` refuses.
pub fn check(guard: Option<&dyn Guard>) -> Result<(), Fenced> {
    guard.map_or(Ok(()), Guard::check)
}

/// A guard that gives the same answer every time, for the tests of what asks one.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Fixed(pub(crate) Result<(), Fenced>);

#[cfg(test)]
impl Guard for Fixed {
    fn check(&self) -> Result<(), Fenced> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn check_permits_without_a_guard_and_passes_a_guards_answer_on() {
        assert_eq!(check(None), Ok(()));
        let open: Option<Arc<dyn Guard>> = Some(Arc::new(Fixed(Ok(()))));
        assert_eq!(check(open.as_deref()), Ok(()));
        let closed: Option<Arc<dyn Guard>> = Some(Arc::new(Fixed(Err(Fenced::Released))));
        assert_eq!(check(closed.as_deref()), Err(Fenced::Released));
        let expired = Fenced::Expired {
            since: Duration::from_secs(9),
        };
        assert_eq!(check(Some(&Fixed(Err(expired)))), Err(expired));
    }
}

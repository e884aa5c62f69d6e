//! What a rotation tells whoever watches it while it runs: the daemon turns these into a
//! RotationPolicy's `Rotating` condition and its `Distributed` and `RestartRequested` Events.
//!
//! The engine calls an observer synchronously at the moment a fact becomes true, so its
//! methods must not wait (the daemon's queues a write and returns). Nothing passed here holds
//! a secret value: policy, rotation id, and what the delivery reports (object names,
//! resourceVersions, restart times).

use crate::distribute::DeliveryReport;
use crate::policy::Policy;

/// Watches rotations as the engine runs them. Every method has a no-op default.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// This process holds `policy`'s rotation `rotation_id` now (a new one, or one resumed),
    /// and is about to drive it.
    fn started(&self, policy: &Policy, rotation_id: &str) {
        let _ = (policy, rotation_id);
    }

    /// Rotation `rotation_id`'s new value reached every Secret of `policy`, and the restarts
    /// of `reports` were requested.
    fn delivered(&self, policy: &Policy, rotation_id: &str, reports: &[DeliveryReport]) {
        let _ = (policy, rotation_id, reports);
    }
}

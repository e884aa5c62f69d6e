//! Exit codes, shared by every subcommand: keyturn-core's table (README's), and the mapping
//! of the errors more than one subcommand meets, so `rotate`, `break-glass` and `status` give
//! one situation one code.

pub use keyturn_core::exit::{
    BUSY, DATA, FAILED, IO, NO_PERMISSION, NOT_FOUND, OK, SOFTWARE, UNAVAILABLE, USAGE,
    most_telling,
};

use crate::distribute::DistributeError;
use crate::rotation::RotationError;
use crate::rotation::store::StoreError;

/// A store failure: 77 when the store refused for lack of permission, 69 when it could not be
/// reached in time, a Vault error's own code (66 for a path that does not exist), 70 for the
/// rest (corrupt state, an answer keyturn cannot use).
#[must_use]
pub fn for_store(e: &StoreError) -> u8 {
    if e.is_permission_denied() {
        NO_PERMISSION
    } else if e.is_retryable() {
        UNAVAILABLE
    } else if let StoreError::Backend { source, .. } = e
        && let Some(v) = source.downcast_ref::<keyturn_core::vault::VaultError>()
    {
        u8::try_from(v.exit_code()).unwrap_or(SOFTWARE)
    } else {
        SOFTWARE
    }
}

/// A delivery failure: 77 for an RBAC denial, 69 for an API that stayed unavailable, 1 for
/// the rest (the rotation is promoted but not delivered; the next attempt delivers it).
#[must_use]
pub fn for_distribute(e: &DistributeError) -> u8 {
    if matches!(e, DistributeError::Forbidden { .. }) {
        NO_PERMISSION
    } else if e.is_retryable() {
        UNAVAILABLE
    } else {
        FAILED
    }
}

/// A rotation that stopped with an error (one rolled back is [`FAILED`], decided by the
/// caller). Every variant here happens after the login, so none is [`USAGE`]: a policy that
/// distributes without a Kubernetes client is refused before any network call, so meeting it
/// here is a bug.
#[must_use]
pub fn for_rotation(e: &RotationError) -> u8 {
    match e {
        RotationError::Store { source, .. } => for_store(source),
        RotationError::Audit { source, .. } => source.exit_code(),
        RotationError::Distribute { source, .. } => for_distribute(source),
        RotationError::NoSink { .. } => SOFTWARE,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keyturn_core::audit::{AuditError, SinkError};
    use keyturn_core::vault::VaultError;

    use super::*;

    fn store_error(source: VaultError) -> StoreError {
        let retryable = source.is_retryable();
        StoreError::Backend {
            store: "vault-kv:secret/keyturn/api".into(),
            source: Box::new(source),
            retryable,
        }
    }

    fn denied() -> VaultError {
        VaultError::PermissionDenied {
            op: "read",
            path: "secret/data/keyturn/api".into(),
        }
    }

    #[test]
    fn a_denied_store_is_77_in_every_command() {
        let e = RotationError::Store {
            policy: "api".into(),
            source: store_error(denied()),
        };
        // `rotate` gave 70 for this and `break-glass` 77.
        assert_eq!(for_rotation(&e), 77);
        assert_eq!(for_store(&store_error(denied())), 77);
    }

    #[test]
    fn corrupt_state_is_internal_not_a_failed_rotation() {
        let e = StoreError::Corrupt {
            store: "vault-kv:secret/keyturn/api".into(),
            what: "unknown step".into(),
        };
        // `break-glass` gave 1 for this and `rotate` 70.
        assert_eq!(for_store(&e), 70);
    }

    #[test]
    fn a_denied_audit_file_during_a_rotation_is_77_not_74() {
        let e = RotationError::Audit {
            policy: "api".into(),
            step: "set",
            source: AuditError::Write {
                seq: 4,
                sink: "file".into(),
                source: Arc::new(SinkError::Write {
                    sink: "file".into(),
                    source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
                }),
            },
        };
        assert_eq!(for_rotation(&e), 77);
    }

    #[test]
    fn no_kubernetes_client_mid_rotation_is_internal_not_usage() {
        let e = RotationError::NoSink {
            policy: "api".into(),
        };
        assert_eq!(for_rotation(&e), 70);
    }
}

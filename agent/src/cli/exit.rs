//! Exit codes, shared by every subcommand: keyturn-core's [`ExitCode`] (README's table) and
//! its one precedence, [`most_telling`]. Every error a subcommand meets implements
//! [`HasExitCode`], beside its type, so `rotate`, `break-glass` and `status` give one
//! situation one code.

pub use keyturn_core::exit::{ExitCode, HasExitCode, most_telling};

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keyturn_core::audit::{AuditError, SinkError};
    use keyturn_core::vault::VaultError;

    use super::*;
    use crate::distribute::{DistributeError, ObjectRef};
    use crate::rotation::RotationError;
    use crate::rotation::store::{StoreError, StoreErrorKind};

    fn store_error(kind: StoreErrorKind, source: VaultError) -> StoreError {
        StoreError::Backend {
            store: "vault-kv:secret/keyturn/api".into(),
            kind,
            retryable: source.is_retryable(),
            source: Box::new(source),
        }
    }

    fn denied() -> StoreError {
        store_error(
            StoreErrorKind::PermissionDenied,
            VaultError::PermissionDenied {
                op: "read",
                path: "secret/data/keyturn/api".into(),
            },
        )
    }

    #[test]
    fn a_denied_store_is_77_in_every_command() {
        // `rotate` and `break-glass rotate` meet it inside the rotation; `break-glass reveal`,
        // `break-glass revoke` and `status` from the store directly. `rotate` gave 70 for
        // this and `break-glass` 77.
        let in_rotation = RotationError::Store {
            policy: "api".into(),
            source: denied(),
        };
        assert_eq!(in_rotation.exit_code(), ExitCode::NoPermission);
        assert_eq!(denied().exit_code(), ExitCode::NoPermission);
        assert!(denied().is_permission_denied());
    }

    #[test]
    fn a_store_failure_exits_by_its_kind_never_by_its_words() {
        // A message that reads like a denial does not make one.
        let words = VaultError::BadResponse {
            op: "read",
            path: "secret/data/permission-denied".into(),
            what: "permission denied (403)".into(),
        };
        let e = store_error(StoreErrorKind::Other, words);
        assert!(!e.is_permission_denied());
        assert_eq!(e.exit_code(), ExitCode::Software);
        let missing = VaultError::NotFound {
            op: "read",
            path: "secret/data/keyturn/api".into(),
        };
        assert_eq!(
            store_error(StoreErrorKind::NotFound, missing).exit_code(),
            ExitCode::NotFound
        );
        let conflict = StoreError::Conflict {
            store: "vault-kv:secret/keyturn/api".into(),
        };
        assert_eq!(conflict.exit_code(), ExitCode::Busy);
    }

    #[test]
    fn corrupt_state_is_internal_not_a_failed_rotation() {
        let e = StoreError::Corrupt {
            store: "vault-kv:secret/keyturn/api".into(),
            what: "unknown step".into(),
        };
        // `break-glass` gave 1 for this and `rotate` 70.
        assert_eq!(e.exit_code(), ExitCode::Software);
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
        assert_eq!(e.exit_code(), ExitCode::NoPermission);
    }

    #[test]
    fn an_rbac_denial_in_delivery_is_77_like_a_store_denial() {
        let e = RotationError::Distribute {
            policy: "api".into(),
            rotation_id: "r1".into(),
            source: DistributeError::Forbidden {
                object: Box::new(ObjectRef::secret("shop", "db")),
                verb: "patch".into(),
                code: 403,
                message: "forbidden".into(),
            },
        };
        assert_eq!(e.exit_code(), ExitCode::NoPermission);
    }

    #[test]
    fn no_kubernetes_client_mid_rotation_is_internal_not_usage() {
        let e = RotationError::NoSink {
            policy: "api".into(),
        };
        assert_eq!(e.exit_code(), ExitCode::Software);
    }
}

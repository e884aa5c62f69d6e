//! Lease revocation, for break-glass: `PUT sys/leases/revoke-prefix/PREFIX` revokes every
//! dynamic credential issued under a path (e.g. `database/creds/orders`) at once.
//! vaultrs has no wrapper for it, so this is a small rustify endpoint.

use rustify::endpoint::Endpoint;
use rustify::enums::{RequestMethod, RequestType, ResponseType};

use super::{Vault, VaultError};

struct RevokePrefix {
    prefix: String,
}

impl Endpoint for RevokePrefix {
    type Response = ();
    const REQUEST_BODY_TYPE: RequestType = RequestType::JSON;
    const RESPONSE_BODY_TYPE: ResponseType = ResponseType::JSON;

    fn path(&self) -> String {
        format!("sys/leases/revoke-prefix/{}", self.prefix)
    }

    fn method(&self) -> RequestMethod {
        RequestMethod::PUT
    }
}

impl Vault {
    /// Revokes every lease under `prefix` (needs `sudo` on `sys/leases/revoke-prefix/PREFIX`).
    ///
    /// # Errors
    /// The classified failure; [`VaultError::PermissionDenied`] without the capability.
    pub async fn revoke_lease_prefix(&self, prefix: &str) -> Result<(), VaultError> {
        let prefix = prefix.trim_matches('/').to_owned();
        let path = format!("sys/leases/revoke-prefix/{prefix}");
        self.retry
            .run(|| async {
                vaultrs::api::exec_with_empty(
                    &self.client,
                    RevokePrefix {
                        prefix: prefix.clone(),
                    },
                )
                .await
                .map_err(|e| self.classify(e, "revoke", &path))
            })
            .await
    }
}

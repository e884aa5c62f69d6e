//! From the manifest's `vault:` block to a logged-in client. What a login is declared as and
//! how the method is built (credential files read before any network call, so a missing one
//! exits 64 without touching Vault) is keyturn-core's, shared with `keyturn`'s flags; what is
//! keyturn-init's own is the retried login against its deadline.

use keyturn_core::vault::auth::AuthMethod;
pub use keyturn_core::vault::auth::{AuthSpec, Identity, Prepared, RoleId, prepare};
use keyturn_core::vault::{LoginInfo, RetryPolicy, Vault, VaultError};

use crate::fetch::{Progress, retried};

/// Logs in, retrying transient failures, and switches `vault` to the new token.
///
/// # Errors
/// The final failure.
pub async fn login(
    vault: &mut Vault,
    method: &dyn AuthMethod,
    retry: &RetryPolicy,
    progress: &Progress,
) -> Result<LoginInfo, VaultError> {
    if let Some(t) = method.preset_token() {
        vault.set_token(t);
    }
    let path = if method.name() == "token" {
        "auth/token/lookup-self".to_owned()
    } else {
        format!("auth/{}/login", method.mount())
    };
    let shared: &Vault = vault;
    let info = retried(retry, progress, "login", &path, || method.login(shared)).await?;
    vault.set_token(&info.token);
    tracing::info!(method = method.name(), mount = method.mount(), accessor = %info.accessor, "logged in to vault");
    Ok(info)
}

#[cfg(test)]
mod tests {
    use keyturn_core::exit::{ExitCode, HasExitCode};

    use super::*;

    #[test]
    fn refused_logins_are_permission_denied() {
        // Most auth methods answer bad credentials with 400: keyturn-core's mapping makes
        // that 77 for a login, as keyturn's own login does.
        let e = VaultError::Rejected {
            op: "login",
            path: "auth/approle/login".into(),
            code: 400,
            messages: vec![],
        };
        assert_eq!(e.exit_code(), ExitCode::NoPermission);
        let e = VaultError::PermissionDenied {
            op: "login",
            path: "auth/kubernetes/login".into(),
        };
        assert_eq!(e.exit_code(), ExitCode::NoPermission);
    }
}

//! From the manifest's `vault:` block to a logged-in client.
//!
//! Credential files (a service-account token, a JWT, an AppRole secret id, a token file) are
//! checked before any network call, so a missing one exits 64 without touching Vault.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use keyturn_core::SecretValue;
use keyturn_core::vault::auth::{
    AppRole, AuthMethod, DEFAULT_SA_TOKEN_PATH, Jwt, Kubernetes, TokenAuth,
};
use keyturn_core::vault::config::read_credential_file;
use keyturn_core::vault::{ConfigError, LoginInfo, RetryPolicy, Vault, VaultConfig, VaultError};

use crate::exit::{ExitCode, HasExitCode};
use crate::fetch::{Progress, retried};
use crate::manifest::{AuthSpec, RoleId};

/// Who the pod is, for audit events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A Kubernetes service account (from the token's `sub` claim).
    ServiceAccount {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Anything else (AppRole, a plain token, a non-Kubernetes JWT).
    Other,
}

/// A login, ready to run.
#[derive(Debug)]
pub struct Prepared {
    /// The method.
    pub method: Box<dyn AuthMethod>,
    /// Whether the token is created by this login (and so revoked at exit). A token handed
    /// in (`auth: token`) belongs to the caller and is left alone.
    pub owns_token: bool,
    /// Who the pod is.
    pub identity: Identity,
}

/// A credential that cannot be used, found before any network call.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A file cannot be read, or no token was given.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl HasExitCode for AuthError {
    fn exit_code(&self) -> ExitCode {
        ExitCode::Usage
    }
}

/// Builds the auth method, reading what can be read now.
///
/// # Errors
/// [`AuthError`] for an unreadable credential file or a missing token.
pub fn prepare(
    spec: &AuthSpec,
    cfg: &VaultConfig,
    jwt_default: Option<&Path>,
) -> Result<Prepared, AuthError> {
    let jwt_path = |given: &Option<PathBuf>| {
        given
            .clone()
            .or_else(|| jwt_default.map(Path::to_path_buf))
            .unwrap_or_else(|| DEFAULT_SA_TOKEN_PATH.into())
    };
    Ok(match spec {
        AuthSpec::Kubernetes {
            mount,
            role,
            jwt_file,
        } => {
            let jwt_file = jwt_path(jwt_file);
            let jwt = read_credential_file("service account token", &jwt_file)?;
            Prepared {
                identity: identity_of(&jwt),
                method: Box::new(Kubernetes {
                    mount: mount.clone(),
                    role: role.clone(),
                    jwt_path: jwt_file,
                }),
                owns_token: true,
            }
        }
        AuthSpec::Jwt {
            mount,
            role,
            jwt_file,
        } => {
            let jwt_file = jwt_path(jwt_file);
            let jwt = read_credential_file("jwt", &jwt_file)?;
            Prepared {
                identity: identity_of(&jwt),
                method: Box::new(Jwt {
                    mount: mount.clone(),
                    role: role.clone(),
                    jwt_path: jwt_file,
                }),
                owns_token: true,
            }
        }
        AuthSpec::AppRole {
            mount,
            role_id,
            secret_id_file,
        } => {
            let role_id = match role_id {
                RoleId::Inline(r) => r.clone(),
                RoleId::File(f) => text_file("role-id", f)?,
            };
            let secret_id = read_credential_file("secret-id", secret_id_file)?;
            Prepared {
                method: Box::new(AppRole {
                    mount: mount.clone(),
                    role_id,
                    secret_id,
                }),
                owns_token: true,
                identity: Identity::Other,
            }
        }
        AuthSpec::Token { token_file } => {
            let token = match token_file {
                Some(f) => read_credential_file("token", f)?,
                None => cfg.token.clone().ok_or(ConfigError::NoToken)?,
            };
            Prepared {
                method: Box::new(TokenAuth { token }),
                owns_token: false,
                identity: Identity::Other,
            }
        }
    })
}

fn text_file(what: &'static str, path: &Path) -> Result<String, ConfigError> {
    let v = read_credential_file(what, path)?;
    v.expose_str()
        .map(str::to_owned)
        .map_err(|_| ConfigError::CredentialFile {
            what,
            path: path.to_owned(),
            cause: "not UTF-8 text".into(),
        })
}

/// The service account named by a Kubernetes token's `sub` claim
/// (`system:serviceaccount:NAMESPACE:NAME`). The signature is not checked: Vault checks it;
/// this only labels audit events.
fn identity_of(jwt: &SecretValue) -> Identity {
    let claims = jwt
        .expose()
        .split(|b| *b == b'.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.trim_ascii_end())
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let sub = claims
        .as_ref()
        .and_then(|c| c.get("sub"))
        .and_then(|s| s.as_str())
        .unwrap_or_default();
    match sub
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    {
        Some((ns, name)) => Identity::ServiceAccount {
            namespace: ns.to_owned(),
            name: name.to_owned(),
        },
        None => Identity::Other,
    }
}

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
    use super::*;

    fn jwt(claims: &str) -> SecretValue {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        SecretValue::from(format!(
            "{}.{}.sig",
            b.encode(r#"{"alg":"ES256"}"#),
            b.encode(claims)
        ))
    }

    #[test]
    fn the_service_account_comes_from_the_sub_claim() {
        assert_eq!(
            identity_of(&jwt(r#"{"sub":"system:serviceaccount:shop:orders-api"}"#)),
            Identity::ServiceAccount {
                namespace: "shop".into(),
                name: "orders-api".into()
            }
        );
        assert_eq!(
            identity_of(&jwt(r#"{"sub":"user@example.com"}"#)),
            Identity::Other
        );
        assert_eq!(
            identity_of(&SecretValue::from_str_copy("not a jwt")),
            Identity::Other
        );
    }

    #[test]
    fn a_missing_credential_file_is_a_usage_error_before_any_call() {
        let spec = AuthSpec::Kubernetes {
            mount: "k".into(),
            role: "r".into(),
            jwt_file: Some("/nonexistent/token".into()),
        };
        let cfg = VaultConfig::for_addr("http://127.0.0.1:1").unwrap();
        let e = prepare(&spec, &cfg, None).unwrap_err();
        assert_eq!(e.exit_code(), ExitCode::Usage);
        assert!(e.to_string().contains("/nonexistent/token"), "{e}");
        let e = prepare(&AuthSpec::Token { token_file: None }, &cfg, None).unwrap_err();
        assert!(e.to_string().contains("no Vault token"), "{e}");
    }

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

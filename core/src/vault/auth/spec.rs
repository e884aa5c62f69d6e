//! One front end for the auth methods, shared by `keyturn` (flags) and `keyturn-init` (its
//! manifest and annotations): what a login is declared as ([`AuthSpec`]), and the method built
//! from it with every credential file read and checked before any network call
//! ([`prepare`]), so a missing file is a configuration error (64) that never reaches Vault.

use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::{AppRole, AuthMethod, DEFAULT_SA_TOKEN_PATH, Jwt, Kubernetes, TokenAuth};
use crate::SecretValue;
use crate::vault::config::read_credential_file;
use crate::vault::{ConfigError, VaultConfig};

/// How to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSpec {
    /// The pod's service-account token, checked by Vault with TokenReview.
    Kubernetes {
        /// Auth mount.
        mount: String,
        /// Vault role.
        role: String,
        /// Service-account token file; `None`: `--jwt-file`, else the in-pod default.
        jwt_file: Option<PathBuf>,
    },
    /// A JWT Vault checks against a JWKS or OIDC discovery.
    Jwt {
        /// Auth mount.
        mount: String,
        /// Vault role, or the mount's default.
        role: Option<String>,
        /// The JWT file; `None`: `--jwt-file`, else the in-pod default.
        jwt_file: Option<PathBuf>,
    },
    /// AppRole.
    AppRole {
        /// Auth mount.
        mount: String,
        /// The role id.
        role_id: RoleId,
        /// The secret id file.
        secret_id_file: PathBuf,
    },
    /// A token given to the process. It is the caller's, so keyturn-init does not revoke it.
    Token {
        /// The token file, else `VAULT_TOKEN` / `~/.vault-token`.
        token_file: Option<PathBuf>,
    },
}

/// An AppRole role id, inline or in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleId {
    /// Given in the manifest.
    Inline(String),
    /// Read from a file.
    File(PathBuf),
}

/// Who the caller is, for audit events.
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

/// Builds the auth method, reading what can be read now.
///
/// `jwt_default` is the JWT file a spec without one uses (a flag), else the in-pod
/// service-account token.
///
/// # Errors
/// An unreadable credential file or a missing token, naming which.
pub fn prepare(
    spec: &AuthSpec,
    cfg: &VaultConfig,
    jwt_default: Option<&Path>,
) -> Result<Prepared, ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{ExitCode, HasExitCode};

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
}

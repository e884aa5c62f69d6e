//! How the agent logs in to Vault: `VAULT_*` for the server, plus an auth method.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use keyturn_core::vault::auth::{AuthMethod, AuthSpec, DEFAULT_SA_TOKEN_PATH, RoleId, prepare};
use keyturn_core::vault::{ConfigError, Vault, VaultConfig, VaultError};

/// Auth methods the agent can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthKind {
    /// `VAULT_TOKEN` or `~/.vault-token`.
    Token,
    /// The pod's service-account token.
    Kubernetes,
    /// A JWT Vault checks against a JWKS or OIDC discovery (`--vault-jwt-file`).
    Jwt,
    /// AppRole (role id + secret-id file).
    Approle,
}

/// The agent's Vault identity.
#[derive(Debug, Clone, Args)]
pub struct VaultArgs {
    /// Auth method.
    #[arg(
        long = "vault-auth",
        env = "KEYTURN_VAULT_AUTH",
        value_enum,
        default_value = "token"
    )]
    pub auth: AuthKind,
    /// Vault role (kubernetes auth: required; jwt: else the mount's default role).
    #[arg(long = "vault-role", env = "KEYTURN_VAULT_ROLE")]
    pub role: Option<String>,
    /// Auth mount; default: the method's name.
    #[arg(long = "vault-auth-mount", env = "KEYTURN_VAULT_AUTH_MOUNT")]
    pub mount: Option<String>,
    /// Service-account token or JWT file (kubernetes and jwt auth).
    #[arg(long = "vault-jwt-file", env = "KEYTURN_VAULT_JWT_FILE", default_value = DEFAULT_SA_TOKEN_PATH)]
    pub jwt_file: PathBuf,
    /// AppRole role id.
    #[arg(
        long = "vault-role-id",
        env = "KEYTURN_VAULT_ROLE_ID",
        conflicts_with = "role_id_file"
    )]
    pub role_id: Option<String>,
    /// AppRole role id, from a file.
    #[arg(long = "vault-role-id-file", env = "KEYTURN_VAULT_ROLE_ID_FILE")]
    pub role_id_file: Option<PathBuf>,
    /// AppRole secret-id file.
    #[arg(long = "vault-secret-id-file", env = "KEYTURN_VAULT_SECRET_ID_FILE")]
    pub secret_id_file: Option<PathBuf>,
}

impl VaultArgs {
    /// Checks the flags and environment; no network.
    ///
    /// # Errors
    /// A missing or malformed setting, naming it.
    pub fn prepare(&self) -> Result<(VaultConfig, Box<dyn AuthMethod>), ConfigError> {
        let cfg = VaultConfig::from_env()?;
        let prepared = prepare(&self.spec()?, &cfg, Some(&self.jwt_file))?;
        Ok((cfg, prepared.method))
    }

    /// The login the flags declare, in keyturn-core's terms (the same front end
    /// `keyturn-init` builds from its manifest).
    fn spec(&self) -> Result<AuthSpec, ConfigError> {
        let mount = |d: &str| self.mount.clone().unwrap_or_else(|| d.to_owned());
        Ok(match self.auth {
            AuthKind::Token => AuthSpec::Token { token_file: None },
            AuthKind::Kubernetes => AuthSpec::Kubernetes {
                mount: mount("kubernetes"),
                role: self.role.clone().ok_or(ConfigError::Missing {
                    what: "--vault-role (kubernetes auth)",
                })?,
                jwt_file: Some(self.jwt_file.clone()),
            },
            AuthKind::Jwt => AuthSpec::Jwt {
                mount: mount("jwt"),
                role: self.role.clone(),
                jwt_file: Some(self.jwt_file.clone()),
            },
            AuthKind::Approle => AuthSpec::AppRole {
                mount: mount("approle"),
                role_id: match (&self.role_id, &self.role_id_file) {
                    (Some(r), _) => RoleId::Inline(r.clone()),
                    (None, Some(f)) => RoleId::File(f.clone()),
                    (None, None) => {
                        return Err(ConfigError::Missing {
                            what: "--vault-role-id or --vault-role-id-file (approle auth)",
                        });
                    }
                },
                secret_id_file: self.secret_id_file.clone().ok_or(ConfigError::Missing {
                    what: "--vault-secret-id-file (approle auth)",
                })?,
            },
        })
    }

    /// Connects and logs in.
    ///
    /// # Errors
    /// The classified Vault failure.
    pub async fn login(
        cfg: &VaultConfig,
        method: &dyn AuthMethod,
    ) -> Result<Arc<Vault>, VaultError> {
        let mut v = Vault::connect(cfg)?;
        v.login(method).await?;
        Ok(Arc::new(v))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        vault: VaultArgs,
    }

    fn spec(args: &[&str]) -> Result<AuthSpec, ConfigError> {
        let mut all = vec!["keyturn"];
        all.extend_from_slice(args);
        Flags::try_parse_from(all).unwrap().vault.spec()
    }

    #[test]
    fn each_auth_flag_set_declares_the_login_keyturn_init_would_build() {
        assert!(matches!(
            spec(&["--vault-auth", "jwt", "--vault-jwt-file", "/t"]).unwrap(),
            AuthSpec::Jwt { mount, role: None, jwt_file: Some(f) } if mount == "jwt" && f == std::path::Path::new("/t")
        ));
        assert!(matches!(
            spec(&["--vault-auth", "kubernetes", "--vault-role", "agent", "--vault-auth-mount", "k8s"]).unwrap(),
            AuthSpec::Kubernetes { mount, role, .. } if mount == "k8s" && role == "agent"
        ));
        assert!(matches!(
            spec(&["--vault-auth", "approle", "--vault-role-id-file", "/r", "--vault-secret-id-file", "/s"]).unwrap(),
            AuthSpec::AppRole { role_id: RoleId::File(f), .. } if f == std::path::Path::new("/r")
        ));
        assert!(matches!(
            spec(&[]).unwrap(),
            AuthSpec::Token { token_file: None }
        ));
    }

    #[test]
    fn a_missing_required_flag_is_named() {
        let e = spec(&["--vault-auth", "kubernetes"]).unwrap_err();
        assert!(e.to_string().contains("--vault-role"), "{e}");
        let e = spec(&["--vault-auth", "approle", "--vault-secret-id-file", "/s"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("--vault-role-id or --vault-role-id-file"),
            "{e}"
        );
    }
}

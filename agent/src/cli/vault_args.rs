//! How the agent logs in to Vault: `VAULT_*` for the server, plus an auth method.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use keyturn_core::SecretValue;
use keyturn_core::vault::auth::{
    AppRole, AuthMethod, DEFAULT_SA_TOKEN_PATH, Kubernetes, TokenAuth,
};
use keyturn_core::vault::{
    ConfigError, Vault, VaultConfig, VaultError, config::read_credential_file,
};

/// Auth methods the agent can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthKind {
    /// `VAULT_TOKEN` or `~/.vault-token`.
    Token,
    /// The pod's service-account token.
    Kubernetes,
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
    /// Vault role (kubernetes auth).
    #[arg(long = "vault-role", env = "KEYTURN_VAULT_ROLE")]
    pub role: Option<String>,
    /// Auth mount; default: the method's name.
    #[arg(long = "vault-auth-mount", env = "KEYTURN_VAULT_AUTH_MOUNT")]
    pub mount: Option<String>,
    /// Service-account token file (kubernetes auth).
    #[arg(long = "vault-jwt-file", env = "KEYTURN_VAULT_JWT_FILE", default_value = DEFAULT_SA_TOKEN_PATH)]
    pub jwt_file: PathBuf,
    /// AppRole role id.
    #[arg(long = "vault-role-id", env = "KEYTURN_VAULT_ROLE_ID")]
    pub role_id: Option<String>,
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
        let mount = |d: &str| self.mount.clone().unwrap_or_else(|| d.to_owned());
        let method: Box<dyn AuthMethod> = match self.auth {
            AuthKind::Token => Box::new(TokenAuth {
                token: cfg.token.clone().ok_or(ConfigError::NoToken)?,
            }),
            AuthKind::Kubernetes => Box::new(Kubernetes {
                mount: mount("kubernetes"),
                role: self.role.clone().ok_or(ConfigError::Missing {
                    what: "--vault-role (kubernetes auth)",
                })?,
                jwt_path: self.jwt_file.clone(),
            }),
            AuthKind::Approle => {
                let file = self.secret_id_file.clone().ok_or(ConfigError::Missing {
                    what: "--vault-secret-id-file (approle auth)",
                })?;
                let secret_id: SecretValue = read_credential_file("secret-id", &file)?;
                Box::new(AppRole {
                    mount: mount("approle"),
                    role_id: self.role_id.clone().ok_or(ConfigError::Missing {
                        what: "--vault-role-id (approle auth)",
                    })?,
                    secret_id,
                })
            }
        };
        Ok((cfg, method))
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

//! JWT auth: any signed JWT Vault can validate (an OIDC provider's token, or a
//! service-account token checked against the cluster's JWKS instead of TokenReview).

use std::path::PathBuf;

use async_trait::async_trait;

use super::{AuthMethod, LoginInfo};
use crate::vault::config::read_credential_file;
use crate::vault::{Vault, VaultError};

/// JWT auth.
#[derive(Debug, Clone)]
pub struct Jwt {
    /// Auth mount, usually `jwt`.
    pub mount: String,
    /// The Vault role; `None` uses the mount's default role.
    pub role: Option<String>,
    /// The file holding the JWT, read at each login.
    pub jwt_path: PathBuf,
}

#[async_trait]
impl AuthMethod for Jwt {
    fn name(&self) -> &'static str {
        "jwt"
    }

    fn mount(&self) -> &str {
        &self.mount
    }

    async fn login(&self, vault: &Vault) -> Result<LoginInfo, VaultError> {
        let jwt = read_credential_file("jwt", &self.jwt_path)?;
        let jwt = String::from_utf8_lossy(jwt.expose());
        let path = format!("auth/{}/login", self.mount);
        vaultrs::auth::oidc::login(vault.client(), &self.mount, &jwt, self.role.clone())
            .await
            .map(LoginInfo::from)
            .map_err(|e| vault.classify(e, "login", &path))
    }
}

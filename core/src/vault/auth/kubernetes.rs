//! Kubernetes auth: the pod's service-account token, which Vault checks with the cluster's
//! TokenReview API.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{AuthMethod, LoginInfo};
use crate::vault::config::read_credential_file;
use crate::vault::{Vault, VaultError};

/// Where the kubelet mounts a pod's service-account token.
pub const DEFAULT_SA_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Kubernetes auth.
#[derive(Debug, Clone)]
pub struct Kubernetes {
    /// Auth mount, usually `kubernetes`.
    pub mount: String,
    /// The Vault role bound to the service account.
    pub role: String,
    /// The service-account token file. Read at each login, because the kubelet rotates
    /// projected tokens.
    pub jwt_path: PathBuf,
}

#[async_trait]
impl AuthMethod for Kubernetes {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn mount(&self) -> &str {
        &self.mount
    }

    async fn login(&self, vault: &Vault) -> Result<LoginInfo, VaultError> {
        let jwt = read_credential_file("service account token", &self.jwt_path)?;
        let jwt = String::from_utf8_lossy(jwt.expose());
        let path = format!("auth/{}/login", self.mount);
        vaultrs::auth::kubernetes::login(vault.client(), &self.mount, &self.role, &jwt)
            .await
            .map(LoginInfo::from)
            .map_err(|e| vault.classify(e, "login", &path))
    }
}

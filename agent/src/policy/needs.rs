//! What a policy needs from the systems it touches, in one model: the Vault capabilities on
//! its paths, the AWS actions on its secrets, the Kubernetes verbs on its objects, and what a
//! target's admin must be allowed to do. Each store and target kind says what it needs (its
//! own file owns that knowledge); `keyturn policy rbac`, `keyturn policy needs` and
//! `keyturn doctor` all read it from here, so the three cannot drift apart.

use std::fmt;

use super::Policy;
use crate::distribute::restart::resource_of;

/// One access a policy needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Need {
    /// Capabilities on a Vault API path (`secret/data/keyturn/orders-db`).
    Vault {
        /// The full API path, without `/v1/`.
        path: String,
        /// The capabilities needed on it.
        capabilities: &'static [&'static str],
    },
    /// IAM actions on an AWS Secrets Manager secret.
    Aws {
        /// Name or ARN.
        secret_id: String,
        /// Region, when the policy names one.
        region: Option<String>,
        /// The `secretsmanager:` actions needed.
        actions: &'static [&'static str],
        /// Whether the secret must already exist (an admin credential) or is created by
        /// the first rotation.
        must_exist: bool,
    },
    /// Verbs on one named Kubernetes object.
    Kubernetes {
        /// Namespace of the object.
        namespace: String,
        /// API group (`""` for core).
        group: &'static str,
        /// Resource (plural).
        resource: &'static str,
        /// Object name.
        name: String,
        /// Verbs needed.
        verbs: &'static [&'static str],
    },
    /// What a target's admin account must be allowed, in the target system's own terms.
    Admin {
        /// The target, as [`crate::rotation::target::Target::describe`] names it.
        target: String,
        /// The privilege, in words or as the grant statement.
        privilege: String,
    },
}

/// Whose credential a store holds, which decides the access a store needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// The policy's own credential: read, write new versions, keep rotation state.
    Own,
    /// A target's admin credential: read only, and it must exist.
    Admin,
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vault { path, capabilities } => {
                write!(f, "vault {path}: {}", capabilities.join(", "))
            }
            Self::Aws {
                secret_id,
                region,
                actions,
                must_exist,
            } => {
                write!(f, "aws secretsmanager {secret_id}")?;
                if let Some(r) = region {
                    write!(f, " ({r})")?;
                }
                write!(f, ": {}", actions.join(", "))?;
                if *must_exist {
                    f.write_str(" (must exist)")?;
                }
                Ok(())
            }
            Self::Kubernetes {
                namespace,
                group,
                resource,
                name,
                verbs,
            } => {
                let resource = if group.is_empty() {
                    (*resource).to_owned()
                } else {
                    format!("{resource}.{group}")
                };
                write!(f, "kubernetes {resource} {namespace}/{name}: {}", verbs.join(", "))
            }
            Self::Admin { target, privilege } => write!(f, "{target} admin: {privilege}"),
        }
    }
}

/// The Kubernetes verbs a delivery needs on its Secret and on each workload it restarts.
pub const KUBE_VERBS: &[&str] = &["get", "patch"];

impl Policy {
    /// Everything this policy needs, deduplicated, in a stable order: its store, its
    /// target (and the target's admin store), and its deliveries.
    #[must_use]
    pub fn needs(&self) -> Vec<Need> {
        let mut out = self.store.needs(Holding::Own);
        if let Some(admin) = self.target.admin_store() {
            out.extend(admin.needs(Holding::Admin));
        }
        out.extend(self.target.needs());
        for d in &self.distribute {
            out.push(Need::Kubernetes {
                namespace: d.namespace.clone(),
                group: "",
                resource: "secrets",
                name: d.secret.clone(),
                verbs: KUBE_VERBS,
            });
            for w in &d.restart {
                if let Some((resource, group)) = resource_of(&w.kind) {
                    out.push(Need::Kubernetes {
                        namespace: d.namespace.clone(),
                        group,
                        resource,
                        name: w.name.clone(),
                        verbs: KUBE_VERBS,
                    });
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// The needs of every policy in `policies`, deduplicated.
#[must_use]
pub fn all(policies: &[Policy]) -> Vec<Need> {
    let mut out: Vec<Need> = policies.iter().flat_map(Policy::needs).collect();
    out.sort();
    out.dedup();
    out
}

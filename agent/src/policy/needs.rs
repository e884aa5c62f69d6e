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
                write!(
                    f,
                    "kubernetes {resource} {namespace}/{name}: {}",
                    verbs.join(", ")
                )
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One `path "…" { capabilities = […] }` block of a Vault policy.
    struct Grant {
        pattern: String,
        capabilities: Vec<String>,
    }

    /// The path blocks of an HCL Vault policy, in the one-block-per-path form keyturn's
    /// policies use (a block spans lines; comments start with `#`).
    fn grants(hcl: &str) -> Vec<Grant> {
        let mut out = Vec::new();
        let mut pattern: Option<String> = None;
        for line in hcl.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("path \"") {
                pattern = rest.split('"').next().map(str::to_owned);
            } else if let Some(rest) = line.strip_prefix("capabilities = [")
                && let Some(p) = pattern.take()
            {
                let caps = rest.trim_end_matches(']').split(',');
                out.push(Grant {
                    pattern: p,
                    capabilities: caps
                        .map(|c| c.trim().trim_matches('"').to_owned())
                        .filter(|c| !c.is_empty())
                        .collect(),
                });
            }
        }
        out
    }

    /// Vault's path matching: a trailing `*` is a prefix match, `+` one whole segment.
    fn matches(pattern: &str, path: &str) -> bool {
        let (pattern, prefix) = match pattern.strip_suffix('*') {
            Some(p) => (p, true),
            None => (pattern, false),
        };
        let mut pat = pattern.split('/').peekable();
        let mut segs = path.split('/').peekable();
        loop {
            match (pat.next(), segs.peek()) {
                (None, None) => return true,
                (None, Some(_)) => return false,
                (Some(last), Some(seg)) if pat.peek().is_none() && prefix => {
                    return seg.starts_with(last);
                }
                (Some(p), Some(seg)) if p == "+" || p == *seg => {
                    segs.next();
                }
                _ => return false,
            }
        }
    }

    fn granted(grants: &[Grant], path: &str, capability: &str) -> bool {
        grants
            .iter()
            .filter(|g| matches(&g.pattern, path))
            // Vault picks the most specific match; keyturn's policies have one per path.
            .max_by_key(|g| g.pattern.len())
            .is_some_and(|g| g.capabilities.iter().any(|c| c == capability))
    }

    fn repo(path: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(path)
    }

    #[test]
    fn the_matcher_follows_vaults_globs() {
        assert!(matches("secret/data/keyturn/*", "secret/data/keyturn/a/b"));
        assert!(matches(
            "secret/data/keyturn*",
            "secret/data/keyturn-state/a"
        ));
        assert!(!matches(
            "secret/data/keyturn/*",
            "secret/data/keyturn-state/a"
        ));
        assert!(matches("secret/data/+/x", "secret/data/app/x"));
        assert!(!matches("secret/data/+/x", "secret/data/app/y/x"));
        assert!(matches("sys/health", "sys/health"));
        assert!(!matches("sys/health", "sys/healthz"));
    }

    #[test]
    fn keyturn_agent_hcl_grants_what_the_example_policies_need() {
        let hcl = std::fs::read_to_string(repo("policies/vault/keyturn-agent.hcl")).unwrap();
        let grants = grants(&hcl);
        assert!(grants.len() >= 2, "no path blocks parsed");
        let policies = super::super::load(&repo("policies/rotation")).unwrap();
        let needs = all(&policies);
        let vault: Vec<(&str, &[&str])> = needs
            .iter()
            .filter_map(|n| match n {
                Need::Vault { path, capabilities } => Some((path.as_str(), *capabilities)),
                _ => None,
            })
            .collect();
        // The examples cover a policy's own credential and state and a target's admin.
        assert!(vault.len() >= 4, "{vault:?}");
        for (path, caps) in &vault {
            for c in *caps {
                assert!(
                    granted(&grants, path, c),
                    "policies/vault/keyturn-agent.hcl does not grant {c} on {path}"
                );
            }
        }
        // …and the check can fail: nothing outside keyturn's prefixes, no delete.
        assert!(!granted(&grants, "secret/data/other/app", "read"));
        assert!(!granted(&grants, "secret/data/keyturn/x", "delete"));
        assert!(!granted(&grants, "secret/metadata/keyturn/x", "delete"));
    }

    #[test]
    fn a_policy_needs_its_store_its_admin_and_its_deliveries() {
        let policies =
            super::super::load(&repo("policies/rotation/example-postgres.yaml")).unwrap();
        let lines: Vec<String> = policies[0]
            .needs()
            .iter()
            .map(ToString::to_string)
            .collect();
        for want in [
            "vault secret/data/keyturn/orders-db: create, read, update",
            "vault secret/data/keyturn-state/keyturn/orders-db: create, read, update",
            "vault secret/data/keyturn/orders-db-admin: read",
            "kubernetes secrets shop/orders-db: get, patch",
            "kubernetes deployments.apps shop/orders: get, patch",
        ] {
            assert!(
                lines.iter().any(|l| l == want),
                "{want} missing from {lines:#?}"
            );
        }
        assert!(
            lines.iter().any(|l| l.starts_with(
                "postgres:orders-db.shop.svc:5432/orders admin: ALTER ROLE \"orders_b\""
            )),
            "{lines:#?}"
        );
    }
}

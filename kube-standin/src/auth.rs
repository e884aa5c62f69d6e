//! Authentication (bearer tokens), the deny switch, and the 403 the authorizer chain answers.
//!
//! The stand-in behaves like a cluster started with `--anonymous-auth=false`: a request
//! without a valid bearer token is a 401. Valid tokens are the admin token from the
//! kubeconfig and service-account JWTs this stand-in issued for an API audience.
//!
//! Authorization is a chain, as kube-apiserver's `--authorization-mode` is:
//!
//! 1. **Deny rules** (`KubeStandin::deny`), checked first and for everyone, the admin
//!    included: the cheap way for a test to make one verb fail without writing a Role. A
//!    rule may be scoped to one user, which is how `TestCluster` makes a restricted client
//!    whose admin sibling keeps working.
//! 2. **RBAC** (`rbac`), only while enforcement is switched on (`KubeStandin::enforce_rbac`):
//!    a service account may then do only what its Roles and ClusterRoles grant, so a test can
//!    run keyturn under exactly the Role `keyturn policy rbac` generates. The admin stays
//!    all-powerful, as a `system:masters` user is.
//! 3. Otherwise everything is allowed, as with `--authorization-mode=AlwaysAllow`. That is
//!    the default so that tests which do not care about permissions need no Roles.
//!
//! A refusal is worded by [`forbidden`] exactly as the real `Forbidden` filter words it,
//! including the `: RBAC: …` suffix that names a binding's missing role.

use std::collections::BTreeMap;

use super::status::ApiError;

/// The admin's user name, as kubeadm/kind name their admin.
pub(crate) const ADMIN_USER: &str = "kubernetes-admin";

/// An authenticated user: TokenReview's `status.user`.
#[derive(Debug, Clone)]
pub(crate) struct UserInfo {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    pub fn admin() -> Self {
        Self {
            username: ADMIN_USER.to_owned(),
            uid: String::new(),
            groups: vec![
                "kubeadm:cluster-admins".into(),
                "system:authenticated".into(),
            ],
            extra: BTreeMap::new(),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.username == ADMIN_USER
    }

    /// The user a verified service-account token stands for.
    pub fn from_token(subject: &super::tokens::TokenSubject) -> Self {
        let k = &subject.claims.kubernetes;
        let mut extra = BTreeMap::new();
        extra.insert(
            "authentication.kubernetes.io/credential-id".to_owned(),
            vec![format!("JTI={}", subject.claims.jti)],
        );
        if let Some(pod) = &k.pod {
            extra.insert(
                "authentication.kubernetes.io/pod-name".to_owned(),
                vec![pod.name.clone()],
            );
            extra.insert(
                "authentication.kubernetes.io/pod-uid".to_owned(),
                vec![pod.uid.clone()],
            );
        }
        Self {
            username: subject.claims.sub.clone(),
            uid: k.serviceaccount.uid.clone(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", k.namespace),
                "system:authenticated".into(),
            ],
            extra,
        }
    }
}

/// Compares secrets without an early exit, so timing does not leak how much matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer …` header, if there is one.
pub(crate) fn bearer_token(header: Option<&str>) -> Option<&str> {
    header
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// One deny rule: `verb` on `resource`, optionally only for `user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DenyRule {
    /// `get`, `list`, `create`, `update`, `patch`, `delete`, `deletecollection`, or `*`.
    pub verb: String,
    /// `secrets`, `deployments`, `deployments.apps`, `serviceaccounts/token`, or `*`.
    pub resource: String,
    /// Only this user name (`system:serviceaccount:ns:name`); `None`: everyone.
    pub user: Option<String>,
}

/// The authorizer's view of a request.
#[derive(Debug, Clone)]
pub(crate) struct Attributes<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
}

impl Attributes<'_> {
    /// `deployments/scale` for a subresource request, else `deployments`: what RBAC rules
    /// and messages name.
    pub fn resource_with_subresource(&self) -> String {
        match self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.to_owned(),
        }
    }
}

impl DenyRule {
    pub(crate) fn matches(&self, user: &UserInfo, a: &Attributes<'_>) -> bool {
        if self.user.as_deref().is_some_and(|u| u != user.username) {
            return false;
        }
        if self.verb != "*" && self.verb != a.verb {
            return false;
        }
        let resource = a.resource_with_subresource();
        let qualified = if a.group.is_empty() {
            resource.clone()
        } else {
            let (base, sub) = resource
                .split_once('/')
                .map_or((resource.as_str(), None), |(b, s)| (b, Some(s)));
            match sub {
                Some(sub) => format!("{base}.{}/{sub}", a.group),
                None => format!("{base}.{}", a.group),
            }
        };
        self.resource == "*" || self.resource == resource || self.resource == qualified
    }
}

/// What the authorizer chain decided, as a SubjectAccessReview's status reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    pub allowed: bool,
    /// Why, in the authorizer's words (`RBAC: allowed by RoleBinding …`); may be empty.
    pub reason: String,
}

impl Decision {
    pub fn allow(reason: impl Into<String>) -> Self {
        Self {
            allowed: true,
            reason: reason.into(),
        }
    }

    pub fn no_opinion(reason: impl Into<String>) -> Self {
        Self {
            allowed: false,
            reason: reason.into(),
        }
    }
}

/// The 403 for a refused request, worded as the real `Forbidden` filter words it: the
/// RBAC-style sentence, then `: <reason>` when the authorizers gave one.
pub(crate) fn forbidden(user: &UserInfo, a: &Attributes<'_>, reason: &str) -> ApiError {
    let resource = a.resource_with_subresource();
    let mut why = match a.namespace {
        Some(ns) => format!(
            "User {:?} cannot {} resource {:?} in API group {:?} in the namespace {:?}",
            user.username, a.verb, resource, a.group, ns
        ),
        None => format!(
            "User {:?} cannot {} resource {:?} in API group {:?} at the cluster scope",
            user.username, a.verb, resource, a.group
        ),
    };
    if !reason.is_empty() {
        why.push_str(": ");
        why.push_str(reason);
    }
    let qualified = if a.group.is_empty() {
        a.resource.to_owned()
    } else {
        format!("{}.{}", a.resource, a.group)
    };
    ApiError::forbidden(&qualified, a.group, a.resource, a.name, &why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs<'a>(verb: &'a str, group: &'a str, resource: &'a str) -> Attributes<'a> {
        Attributes {
            verb,
            group,
            resource,
            subresource: None,
            namespace: Some("ns"),
            name: "x",
        }
    }

    #[test]
    fn a_denial_is_worded_like_rbac() {
        let err = forbidden(&UserInfo::admin(), &attrs("patch", "", "secrets"), "");
        assert_eq!(
            err.message,
            "secrets \"x\" is forbidden: User \"kubernetes-admin\" cannot patch resource \"secrets\" in API group \"\" in the namespace \"ns\""
        );
        let with_reason = forbidden(
            &UserInfo::admin(),
            &attrs("get", "apps", "deployments"),
            "RBAC: role.rbac.authorization.k8s.io \"r\" not found",
        );
        assert_eq!(
            with_reason.message,
            "deployments.apps \"x\" is forbidden: User \"kubernetes-admin\" cannot get resource \"deployments\" in API group \"apps\" in the namespace \"ns\": RBAC: role.rbac.authorization.k8s.io \"r\" not found"
        );
    }

    #[test]
    fn rules_match_plain_or_group_qualified_resources_and_wildcards() {
        let user = UserInfo::admin();
        let by_group = DenyRule {
            verb: "get".into(),
            resource: "deployments.apps".into(),
            user: None,
        };
        assert!(by_group.matches(&user, &attrs("get", "apps", "deployments")));
        let any = DenyRule {
            verb: "*".into(),
            resource: "leases".into(),
            user: None,
        };
        assert!(any.matches(&user, &attrs("update", "coordination.k8s.io", "leases")));
        let someone_else = DenyRule {
            verb: "*".into(),
            resource: "*".into(),
            user: Some("bob".into()),
        };
        assert!(!someone_else.matches(&user, &attrs("get", "", "secrets")));
    }
}

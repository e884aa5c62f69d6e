//! The Kubernetes RBAC the agent needs for a set of policies: what `keyturn policy rbac DIR`
//! prints, and what `policies/kubernetes/keyturn-agent-rbac.yaml` holds for the examples.
//!
//! Shape: per namespace that any policy distributes to, one `Role` named
//! [`ROLE_NAME`] and one `RoleBinding` of it to the agent's ServiceAccount (which may live in
//! another namespace). The Role grants `get` and `patch` on exactly the Secrets and workloads
//! the policies name, by `resourceNames`, one rule per resource type (a rule's names apply to
//! every resource in it, so putting Deployments and StatefulSets in one rule would grant a
//! Deployment that happens to share a StatefulSet's name). Nothing is cluster-wide: no
//! ClusterRole, no `list`/`watch`, no `delete`, no `update`.
//!
//! **Creating absent Secrets.** RBAC cannot limit `create` by name (the name is not known to
//! the authorizer for a POST), so a `create` grant covers every Secret in the namespace.
//! That is more than it sounds: whoever can create a Secret can create a
//! `kubernetes.io/service-account-token` Secret for any ServiceAccount of the namespace and
//! have the token controller fill it in; with `get` on a name the agent owns, a compromised
//! agent could then read it. So by default there is **no `create`**: Secrets are expected to
//! exist (an empty one is fine — keyturn patches in only its keys), and a delivery to an
//! absent Secret fails with a clear 403 that says so. [`RbacOptions::allow_create_secrets`]
//! adds a separate, name-less `create` rule for those who prefer keyturn to create them.
//!
//! **Beyond the policies.** Two grants follow from how the daemon runs, not from the
//! policies, and are added only when asked for ([`RbacOptions`]); the Helm chart renders the
//! same ones:
//!
//! - *Membership* (`keyturn run --membership-namespace NS`, replicas sharing the policies): a
//!   Role [`MEMBERSHIP_ROLE_NAME`] in NS with `get`, `list`, `create`, `update` and `delete`
//!   on Leases, with no `resourceNames`. RBAC cannot name what `create` and `list` act on: a
//!   create carries its name in the body, which the authorizer never sees, and a list is for
//!   no name at all, so a rule with names would refuse both. The daemon needs both: it
//!   creates its own Lease `keyturn-member-<holder>` and lists the members by label to learn
//!   who the other replicas are. Its own Lease's name follows the pod's, unknown when the
//!   Role is written, so the other verbs are not named either. The Role lives in NS alone,
//!   so it reaches no Lease of any other namespace.
//! - *RotationPolicy objects* (`keyturn run --rotationpolicies all|NS`): `get`, `list`,
//!   `watch` on `rotationpolicies.keyturn.dev`, `get`, `patch`, `update` on their `status`,
//!   and `create`, `patch` on `events.k8s.io` Events (what the daemon reports about each
//!   policy): a Role [`ROTATION_POLICIES_ROLE_NAME`] in NS, or for `all` a ClusterRole and
//!   ClusterRoleBinding named after it and the ServiceAccount's namespace (cluster-scoped
//!   names are shared by every namespace, so two daemons' grants must not collide).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::Policy;
use super::needs::Need;

/// The name of every generated Role and RoleBinding for the policies' deliveries.
pub const ROLE_NAME: &str = "keyturn-agent";

/// The Role (and RoleBinding) for the member Leases, in the membership namespace. Not
/// [`ROLE_NAME`]: the daemon's namespace may also be one the policies deliver to.
pub const MEMBERSHIP_ROLE_NAME: &str = "keyturn-agent-membership";

/// The Role for reading RotationPolicy objects in one namespace; for every namespace, the
/// ClusterRole `<this>-<ServiceAccount namespace>`.
pub const ROTATION_POLICIES_ROLE_NAME: &str = "keyturn-agent-rotationpolicies";

/// Where the daemon reads RotationPolicy objects (`keyturn run --rotationpolicies`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchScope {
    /// Every namespace (`all`): a ClusterRole and ClusterRoleBinding.
    All,
    /// One namespace: a Role and RoleBinding there.
    Namespace(String),
}

/// A `--rotationpolicies` or `--membership-namespace` value that names no namespace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidNamespace(String);

/// `s` if it is a namespace name (a DNS-1123 label), for the flags that name one.
///
/// # Errors
/// Why it is not one.
pub fn namespace_name(s: &str) -> Result<String, InvalidNamespace> {
    super::validate::dns_label(s).map_err(InvalidNamespace)?;
    Ok(s.to_owned())
}

impl FromStr for WatchScope {
    type Err = InvalidNamespace;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "all" {
            Ok(Self::All)
        } else {
            namespace_name(s)
                .map(Self::Namespace)
                .map_err(|e| InvalidNamespace(format!("`all` or a namespace: {e}")))
        }
    }
}

impl fmt::Display for WatchScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Namespace(ns) => f.write_str(ns),
        }
    }
}

/// Choices beyond the policies themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RbacOptions {
    /// Add a `create` rule on Secrets (necessarily without `resourceNames`), so keyturn can
    /// create Secrets that do not exist yet. Off by default; see the module docs.
    pub allow_create_secrets: bool,
    /// The daemon shares the policies with other replicas through member Leases in this
    /// namespace (`keyturn run --membership-namespace`): add [`membership_role`].
    pub membership_namespace: Option<String>,
    /// The daemon reads RotationPolicy objects here (`keyturn run --rotationpolicies`): add
    /// [`rotation_policy_grant`].
    pub rotation_policies: Option<WatchScope>,
}

/// What one namespace needs: `resource → names`, in the order rules are emitted.
#[derive(Debug, Default)]
struct Needs {
    secrets: BTreeSet<String>,
    /// `(plural, group) → names`.
    workloads: BTreeMap<(&'static str, &'static str), BTreeSet<String>>,
}

/// Every `get`/`patch` the policies need, by namespace (from [`Policy::needs`], the same
/// model `keyturn doctor` checks against the cluster).
fn by_namespace(policies: &[Policy]) -> BTreeMap<String, Needs> {
    let mut out: BTreeMap<String, Needs> = BTreeMap::new();
    for need in super::needs::all(policies) {
        let Need::Kubernetes {
            namespace,
            group,
            resource,
            name,
            ..
        } = need
        else {
            continue;
        };
        let needs = out.entry(namespace).or_default();
        if group.is_empty() && resource == "secrets" {
            needs.secrets.insert(name);
        } else {
            needs
                .workloads
                .entry((resource, group))
                .or_default()
                .insert(name);
        }
    }
    out
}

/// One rule: these verbs on one resource of one API group, on exactly `names` if given.
fn rule(
    group: &str,
    resource: &str,
    verbs: &[&str],
    names: Option<&BTreeSet<String>>,
) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(vec![resource.to_owned()]),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        resource_names: names.map(|n| n.iter().cloned().collect()),
        non_resource_urls: None,
    }
}

/// The metadata of every generated object: its name, its namespace (none for cluster-scoped
/// ones) and the labels that say whose it is.
fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(
            [
                ("app.kubernetes.io/name".to_owned(), "keyturn".to_owned()),
                ("app.kubernetes.io/component".to_owned(), "agent".to_owned()),
            ]
            .into_iter()
            .collect(),
        ),
        ..ObjectMeta::default()
    }
}

/// The agent's ServiceAccount as a binding's one subject.
fn subjects(service_account: &str, sa_namespace: &str) -> Option<Vec<Subject>> {
    Some(vec![Subject {
        api_group: None,
        kind: "ServiceAccount".to_owned(),
        name: service_account.to_owned(),
        namespace: Some(sa_namespace.to_owned()),
    }])
}

/// A Role with these rules and its binding to the ServiceAccount, both `name` in `namespace`.
fn role_and_binding(
    name: &str,
    namespace: &str,
    rules: Vec<PolicyRule>,
    service_account: &str,
    sa_namespace: &str,
) -> (Role, RoleBinding) {
    let role = Role {
        metadata: meta(name, Some(namespace)),
        rules: Some(rules),
    };
    let binding = RoleBinding {
        metadata: meta(name, Some(namespace)),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: name.to_owned(),
        },
        subjects: subjects(service_account, sa_namespace),
    };
    (role, binding)
}

/// A Role and its RoleBinding per namespace the policies distribute to, in namespace order.
///
/// Workloads of a kind keyturn cannot restart are left out (policy validation already
/// rejects them). The grants of [`RbacOptions::membership_namespace`] and
/// [`RbacOptions::rotation_policies`] are [`membership_role`] and [`rotation_policy_grant`].
#[must_use]
pub fn roles(
    policies: &[Policy],
    service_account: &str,
    sa_namespace: &str,
    options: &RbacOptions,
) -> Vec<(Role, RoleBinding)> {
    by_namespace(policies)
        .into_iter()
        .map(|(namespace, needs)| {
            let mut rules = vec![rule("", "secrets", &["get", "patch"], Some(&needs.secrets))];
            if options.allow_create_secrets {
                rules.push(rule("", "secrets", &["create"], None));
            }
            for ((plural, group), names) in &needs.workloads {
                rules.push(rule(group, plural, &["get", "patch"], Some(names)));
            }
            role_and_binding(ROLE_NAME, &namespace, rules, service_account, sa_namespace)
        })
        .collect()
}

/// What the member Leases need, in the membership namespace: `get`, `list`, `create`,
/// `update` and `delete` on Leases, unnamed (see the module docs for why none can be named).
/// No `watch` and no `patch`: the daemon lists the members every renewal round and writes its
/// own Lease whole, with the `resourceVersion` it read.
#[must_use]
pub fn membership_role(
    service_account: &str,
    sa_namespace: &str,
    membership_namespace: &str,
) -> (Role, RoleBinding) {
    let rules = vec![rule(
        "coordination.k8s.io",
        "leases",
        &["get", "list", "create", "update", "delete"],
        None,
    )];
    role_and_binding(
        MEMBERSHIP_ROLE_NAME,
        membership_namespace,
        rules,
        service_account,
        sa_namespace,
    )
}

/// What reading RotationPolicy objects needs, wherever they are read: the objects
/// themselves (`get`, `list`, `watch`), their `status` (`get`, `patch`, `update`: the daemon
/// reports each policy's rotations there) and Events (`create`, `patch`: a repeated Event is
/// a patch of its count) about them.
#[must_use]
pub fn rotation_policy_rules() -> Vec<PolicyRule> {
    let group = super::crd::GROUP;
    let plural = super::crd::PLURAL;
    vec![
        rule(group, plural, &["get", "list", "watch"], None),
        rule(
            group,
            &format!("{plural}/status"),
            &["get", "patch", "update"],
            None,
        ),
        rule("events.k8s.io", "events", &["create", "patch"], None),
    ]
}

/// The grant for [`rotation_policy_rules`]: namespaced or cluster-wide.
#[derive(Debug, Clone, PartialEq)]
pub enum ScopedGrant {
    /// One namespace: a Role and its RoleBinding there.
    Namespaced(Role, RoleBinding),
    /// Every namespace: a ClusterRole and its ClusterRoleBinding.
    Cluster(ClusterRole, ClusterRoleBinding),
}

/// [`rotation_policy_rules`] for `scope`: a Role [`ROTATION_POLICIES_ROLE_NAME`] in that
/// namespace, or for [`WatchScope::All`] a ClusterRole (and ClusterRoleBinding) named after it
/// and `sa_namespace`, so the daemons of two namespaces never overwrite each other's.
#[must_use]
pub fn rotation_policy_grant(
    service_account: &str,
    sa_namespace: &str,
    scope: &WatchScope,
) -> ScopedGrant {
    match scope {
        WatchScope::Namespace(namespace) => {
            let (role, binding) = role_and_binding(
                ROTATION_POLICIES_ROLE_NAME,
                namespace,
                rotation_policy_rules(),
                service_account,
                sa_namespace,
            );
            ScopedGrant::Namespaced(role, binding)
        }
        WatchScope::All => {
            let name = format!("{ROTATION_POLICIES_ROLE_NAME}-{sa_namespace}");
            let role = ClusterRole {
                metadata: meta(&name, None),
                rules: Some(rotation_policy_rules()),
                aggregation_rule: None,
            };
            let binding = ClusterRoleBinding {
                metadata: meta(&name, None),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".to_owned(),
                    kind: "ClusterRole".to_owned(),
                    name,
                },
                subjects: subjects(service_account, sa_namespace),
            };
            ScopedGrant::Cluster(role, binding)
        }
    }
}

/// [`roles`] with the default options, as multi-document YAML with a header comment that
/// says what it grants and why.
#[must_use]
pub fn rbac_yaml(policies: &[Policy], service_account: &str, sa_namespace: &str) -> String {
    rbac_yaml_with(
        policies,
        service_account,
        sa_namespace,
        &RbacOptions::default(),
    )
}

/// [`roles`], and the grants `options` asks for beyond them, as multi-document YAML with a
/// header comment.
#[must_use]
pub fn rbac_yaml_with(
    policies: &[Policy],
    service_account: &str,
    sa_namespace: &str,
    options: &RbacOptions,
) -> String {
    let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
    let mut out = format!(
        "# RBAC for the keyturn agent (ServiceAccount {sa_namespace}/{service_account}), generated by\n\
         # `keyturn policy rbac` from {} polic{}: {}.\n\
         # Regenerate it when the policies change rather than editing it.\n\
         #\n\
         # Per namespace: get/patch on exactly the Secrets and workloads the policies name.\n",
        names.len(),
        if names.len() == 1 { "y" } else { "ies" },
        if names.is_empty() {
            "(none)".to_owned()
        } else {
            names.join(", ")
        },
    );
    if options.allow_create_secrets {
        out.push_str(
            "# Plus create on Secrets, so keyturn can create absent ones. RBAC cannot limit create by\n\
             # name: this allows creating any Secret in these namespaces (including\n\
             # service-account-token Secrets). Pre-creating the Secrets avoids the grant.\n",
        );
    } else {
        out.push_str(
            "# No create: RBAC cannot limit create by name, and creating any Secret includes\n\
             # service-account-token Secrets. Pre-create each Secret (empty is fine; keyturn patches\n\
             # in only its keys), or regenerate with create allowed.\n",
        );
    }
    if let Some(ns) = &options.membership_namespace {
        out.push_str(&format!(
            "# Membership (keyturn run --membership-namespace {ns}): get, list, create, update and\n\
             # delete on Leases in {ns}. Not limited by name: a create's name and a list's are not\n\
             # known to RBAC, and each replica's Lease is named after its pod.\n"
        ));
    }
    match &options.rotation_policies {
        Some(WatchScope::All) => out.push_str(
            "# RotationPolicy objects in every namespace (keyturn run --rotationpolicies all): a\n\
             # ClusterRole with get/list/watch on them, get/patch/update on their status and\n\
             # create/patch on Events.\n",
        ),
        Some(WatchScope::Namespace(ns)) => out.push_str(&format!(
            "# RotationPolicy objects in {ns} (keyturn run --rotationpolicies {ns}): get/list/watch on\n\
             # them, get/patch/update on their status and create/patch on Events there.\n"
        )),
        None => {}
    }
    for (role, binding) in roles(policies, service_account, sa_namespace, options) {
        push_doc(&mut out, &role);
        push_doc(&mut out, &binding);
    }
    if let Some(ns) = &options.membership_namespace {
        let (role, binding) = membership_role(service_account, sa_namespace, ns);
        push_doc(&mut out, &role);
        push_doc(&mut out, &binding);
    }
    match options
        .rotation_policies
        .as_ref()
        .map(|scope| rotation_policy_grant(service_account, sa_namespace, scope))
    {
        Some(ScopedGrant::Namespaced(role, binding)) => {
            push_doc(&mut out, &role);
            push_doc(&mut out, &binding);
        }
        Some(ScopedGrant::Cluster(role, binding)) => {
            push_doc(&mut out, &role);
            push_doc(&mut out, &binding);
        }
        None => {}
    }
    out
}

/// Appends one YAML document.
fn push_doc<T: serde::Serialize>(out: &mut String, doc: &T) {
    // Serializing these plain structs cannot fail; an empty document would be visible.
    out.push_str("---\n");
    out.push_str(&serde_yaml::to_string(doc).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICIES: &str = r#"apiVersion: keyturn.dev/v1
kind: RotationPolicy
metadata: { name: orders-db }
spec:
  every: 24h
  store: { vault-kv: { path: keyturn/orders-db } }
  target:
    postgres: { host: db, admin: { vault-kv: { path: keyturn/pg-admin } }, users: [orders_a, orders_b], strategy: alternating }
  distribute:
    - kubernetes: { namespace: shop, secret: orders-db, keys: { username: username, password: password } }
      restart: [ { kind: Deployment, name: orders-api }, { kind: StatefulSet, name: orders-worker } ]
    - kubernetes: { namespace: billing, secret: orders-db-ro, keys: { password: password } }
---
apiVersion: keyturn.dev/v1
kind: RotationPolicy
metadata: { name: api-token }
spec:
  every: 24h
  store: { vault-kv: { path: keyturn/api-token } }
  target: { generated: {} }
  distribute:
    - kubernetes: { namespace: shop, secret: api-token, keys: { token: value } }
      restart: [ { kind: Deployment, name: orders-api }, { kind: Deployment, name: storefront } ]
"#;

    fn policies(text: &str) -> Vec<Policy> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        std::fs::write(&f, text).unwrap();
        crate::policy::load(&f).unwrap()
    }

    fn names(rule: &PolicyRule) -> Vec<&str> {
        rule.resource_names
            .iter()
            .flatten()
            .map(String::as_str)
            .collect()
    }

    #[test]
    fn each_namespace_gets_a_role_naming_exactly_its_secrets_and_workloads() {
        let grants = roles(
            &policies(POLICIES),
            "keyturn",
            "keyturn-system",
            &RbacOptions::default(),
        );
        let namespaces: Vec<_> = grants
            .iter()
            .map(|(r, _)| r.metadata.namespace.clone().unwrap())
            .collect();
        assert_eq!(namespaces, ["billing", "shop"]);

        let shop = grants[1].0.rules.clone().unwrap();
        assert_eq!(
            shop.len(),
            3,
            "secrets, deployments, statefulsets: {shop:?}"
        );
        assert_eq!(shop[0].resources, Some(vec!["secrets".to_owned()]));
        assert_eq!(shop[0].api_groups, Some(vec![String::new()]));
        assert_eq!(names(&shop[0]), ["api-token", "orders-db"]);
        assert_eq!(shop[0].verbs, ["get", "patch"]);
        assert_eq!(shop[1].resources, Some(vec!["deployments".to_owned()]));
        assert_eq!(shop[1].api_groups, Some(vec!["apps".to_owned()]));
        assert_eq!(
            names(&shop[1]),
            ["orders-api", "storefront"],
            "deduplicated and sorted"
        );
        assert_eq!(shop[2].resources, Some(vec!["statefulsets".to_owned()]));
        assert_eq!(names(&shop[2]), ["orders-worker"]);

        let billing = grants[0].0.rules.clone().unwrap();
        assert_eq!(billing.len(), 1);
        assert_eq!(names(&billing[0]), ["orders-db-ro"]);
    }

    #[test]
    fn no_rule_is_unnamed_and_no_verb_beyond_get_and_patch_by_default() {
        for (role, _) in roles(
            &policies(POLICIES),
            "keyturn",
            "keyturn-system",
            &RbacOptions::default(),
        ) {
            for rule in role.rules.unwrap() {
                assert!(
                    rule.resource_names.as_ref().is_some_and(|n| !n.is_empty()),
                    "{rule:?}"
                );
                assert_eq!(rule.verbs, ["get", "patch"]);
            }
        }
    }

    #[test]
    fn allowing_creation_adds_a_separate_name_less_create_rule_on_secrets_only() {
        let options = RbacOptions {
            allow_create_secrets: true,
            ..RbacOptions::default()
        };
        let grants = roles(&policies(POLICIES), "keyturn", "keyturn-system", &options);
        for (role, _) in grants {
            let rules = role.rules.unwrap();
            let creates: Vec<_> = rules
                .iter()
                .filter(|r| r.verbs.contains(&"create".to_owned()))
                .collect();
            assert_eq!(creates.len(), 1);
            assert_eq!(creates[0].verbs, ["create"]);
            assert_eq!(creates[0].resources, Some(vec!["secrets".to_owned()]));
            assert_eq!(creates[0].resource_names, None);
        }
    }

    #[test]
    fn the_binding_names_the_service_account_in_its_own_namespace() {
        let grants = roles(
            &policies(POLICIES),
            "keyturn",
            "keyturn-system",
            &RbacOptions::default(),
        );
        let (_, binding) = &grants[1];
        assert_eq!(binding.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(binding.role_ref.kind, "Role");
        assert_eq!(binding.role_ref.name, ROLE_NAME);
        let subject = &binding.subjects.as_ref().unwrap()[0];
        assert_eq!(
            (subject.kind.as_str(), subject.name.as_str()),
            ("ServiceAccount", "keyturn")
        );
        assert_eq!(subject.namespace.as_deref(), Some("keyturn-system"));
    }

    #[test]
    fn the_yaml_is_a_comment_then_role_and_binding_documents_that_parse_back() {
        let yaml = rbac_yaml(&policies(POLICIES), "keyturn", "keyturn-system");
        assert!(
            yaml.starts_with(
                "# RBAC for the keyturn agent (ServiceAccount keyturn-system/keyturn)"
            )
        );
        assert!(yaml.contains("2 policies: orders-db, api-token."));
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&yaml)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .filter(|v: &serde_yaml::Value| !v.is_null())
            .collect();
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["Role", "RoleBinding", "Role", "RoleBinding"]);
        assert_eq!(
            docs[0]["apiVersion"].as_str(),
            Some("rbac.authorization.k8s.io/v1")
        );
        let role: Role = serde_yaml::from_value(docs[2].clone()).unwrap();
        assert_eq!(role.metadata.namespace.as_deref(), Some("shop"));
    }

    #[test]
    fn policies_that_distribute_nowhere_need_no_role() {
        let text = POLICIES.split("\n---\n").nth(1).unwrap().replace(
            "  distribute:\n    - kubernetes: { namespace: shop, secret: api-token, keys: { token: value } }\n      restart: [ { kind: Deployment, name: orders-api }, { kind: Deployment, name: storefront } ]\n",
            "",
        );
        let yaml = rbac_yaml(&policies(&text), "keyturn", "keyturn-system");
        assert!(!yaml.contains("---"), "{yaml}");
    }

    fn verbs(rule: &PolicyRule) -> Vec<&str> {
        rule.verbs.iter().map(String::as_str).collect()
    }

    /// (group, resource, verbs, names) of a rule, for comparing whole rule lists.
    type Shape<'a> = (String, String, Vec<&'a str>, Option<Vec<String>>);

    /// The [`Shape`] of each rule.
    fn shape(rules: &[PolicyRule]) -> Vec<Shape<'_>> {
        rules
            .iter()
            .map(|r| {
                (
                    r.api_groups.clone().unwrap_or_default().join(","),
                    r.resources.clone().unwrap_or_default().join(","),
                    verbs(r),
                    r.resource_names.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn membership_is_a_role_on_leases_in_its_namespace_bound_to_the_account() {
        let (role, binding) = membership_role("keyturn", "keyturn-system", "keyturn-system");
        assert_eq!(role.metadata.name.as_deref(), Some(MEMBERSHIP_ROLE_NAME));
        assert_ne!(
            MEMBERSHIP_ROLE_NAME, ROLE_NAME,
            "the daemon's namespace may also be delivered to: one name would merge two Roles"
        );
        assert_eq!(role.metadata.namespace.as_deref(), Some("keyturn-system"));
        assert_eq!(
            shape(role.rules.as_deref().unwrap()),
            [(
                "coordination.k8s.io".to_owned(),
                "leases".to_owned(),
                vec!["get", "list", "create", "update", "delete"],
                None
            )]
        );
        assert_eq!(
            binding.metadata.namespace.as_deref(),
            Some("keyturn-system")
        );
        assert_eq!(
            (
                binding.role_ref.kind.as_str(),
                binding.role_ref.name.as_str()
            ),
            ("Role", MEMBERSHIP_ROLE_NAME)
        );
        let subject = &binding.subjects.as_ref().unwrap()[0];
        assert_eq!(
            (subject.name.as_str(), subject.namespace.as_deref()),
            ("keyturn", Some("keyturn-system"))
        );
        // Another namespace than the account's: the Role goes there, the subject stays.
        let (role, binding) = membership_role("keyturn", "keyturn-system", "leases-here");
        assert_eq!(role.metadata.namespace.as_deref(), Some("leases-here"));
        assert_eq!(
            binding.subjects.unwrap()[0].namespace.as_deref(),
            Some("keyturn-system")
        );
    }

    fn rotation_policy_shape() -> Vec<Shape<'static>> {
        vec![
            (
                "keyturn.dev".to_owned(),
                "rotationpolicies".to_owned(),
                vec!["get", "list", "watch"],
                None,
            ),
            (
                "keyturn.dev".to_owned(),
                "rotationpolicies/status".to_owned(),
                vec!["get", "patch", "update"],
                None,
            ),
            (
                "events.k8s.io".to_owned(),
                "events".to_owned(),
                vec!["create", "patch"],
                None,
            ),
        ]
    }

    #[test]
    fn watching_one_namespace_is_a_role_there() {
        let scope: WatchScope = "shop".parse().unwrap();
        let ScopedGrant::Namespaced(role, binding) =
            rotation_policy_grant("keyturn", "keyturn-system", &scope)
        else {
            panic!("one namespace: a Role");
        };
        assert_eq!(role.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(
            role.metadata.name.as_deref(),
            Some(ROTATION_POLICIES_ROLE_NAME)
        );
        assert_eq!(
            shape(role.rules.as_deref().unwrap()),
            rotation_policy_shape()
        );
        assert_eq!(binding.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(binding.role_ref.kind, "Role");
        assert_eq!(
            binding.subjects.unwrap()[0].namespace.as_deref(),
            Some("keyturn-system")
        );
    }

    #[test]
    fn watching_all_namespaces_is_a_cluster_role_named_after_the_accounts_namespace() {
        let ScopedGrant::Cluster(role, binding) =
            rotation_policy_grant("keyturn", "team-a", &WatchScope::All)
        else {
            panic!("all: a ClusterRole");
        };
        let name = "keyturn-agent-rotationpolicies-team-a";
        assert_eq!(role.metadata.name.as_deref(), Some(name));
        assert_eq!(role.metadata.namespace, None);
        assert_eq!(
            shape(role.rules.as_deref().unwrap()),
            rotation_policy_shape()
        );
        assert_eq!(binding.metadata.name.as_deref(), Some(name));
        assert_eq!(binding.metadata.namespace, None);
        assert_eq!(
            (
                binding.role_ref.kind.as_str(),
                binding.role_ref.name.as_str()
            ),
            ("ClusterRole", name)
        );
        let subject = &binding.subjects.as_ref().unwrap()[0];
        assert_eq!(
            (
                subject.kind.as_str(),
                subject.name.as_str(),
                subject.namespace.as_deref()
            ),
            ("ServiceAccount", "keyturn", Some("team-a"))
        );
    }

    #[test]
    fn a_watch_scope_is_all_or_a_namespace_name() {
        assert_eq!("all".parse::<WatchScope>(), Ok(WatchScope::All));
        assert_eq!(
            "shop".parse::<WatchScope>(),
            Ok(WatchScope::Namespace("shop".to_owned()))
        );
        assert_eq!(WatchScope::Namespace("shop".to_owned()).to_string(), "shop");
        assert_eq!(WatchScope::All.to_string(), "all");
        for bad in ["", "Shop", "-shop", "shop-", "a.b", &"a".repeat(64)] {
            let e = bad.parse::<WatchScope>().unwrap_err().to_string();
            assert!(e.contains("`all` or a namespace"), "{bad:?}: {e}");
            assert!(namespace_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            namespace_name("keyturn-system").as_deref(),
            Ok("keyturn-system")
        );
    }

    #[test]
    fn the_yaml_adds_the_membership_and_rotation_policy_grants_when_asked() {
        let ps = policies(POLICIES);
        let docs = |options: &RbacOptions| -> Vec<serde_yaml::Value> {
            let yaml = rbac_yaml_with(&ps, "keyturn", "keyturn-system", options);
            serde_yaml::Deserializer::from_str(&yaml)
                .map(|d| serde::Deserialize::deserialize(d).unwrap())
                .filter(|v: &serde_yaml::Value| !v.is_null())
                .collect()
        };
        let ids = |docs: &[serde_yaml::Value]| -> Vec<String> {
            docs.iter()
                .map(|d| {
                    format!(
                        "{} {}/{}",
                        d["kind"].as_str().unwrap(),
                        d["metadata"]["namespace"].as_str().unwrap_or("-"),
                        d["metadata"]["name"].as_str().unwrap()
                    )
                })
                .collect()
        };
        let plain = ids(&docs(&RbacOptions::default()));
        assert_eq!(plain.len(), 4, "{plain:?}");

        let all = docs(&RbacOptions {
            membership_namespace: Some("keyturn-system".to_owned()),
            rotation_policies: Some(WatchScope::All),
            ..RbacOptions::default()
        });
        let mut want = plain.clone();
        want.extend([
            "Role keyturn-system/keyturn-agent-membership".to_owned(),
            "RoleBinding keyturn-system/keyturn-agent-membership".to_owned(),
            "ClusterRole -/keyturn-agent-rotationpolicies-keyturn-system".to_owned(),
            "ClusterRoleBinding -/keyturn-agent-rotationpolicies-keyturn-system".to_owned(),
        ]);
        assert_eq!(ids(&all), want);
        // Each parses back into its type (the fields Kubernetes expects, not just YAML).
        let _: Role = serde_yaml::from_value(all[4].clone()).unwrap();
        let cluster: ClusterRole = serde_yaml::from_value(all[6].clone()).unwrap();
        assert_eq!(
            shape(cluster.rules.as_deref().unwrap()),
            rotation_policy_shape()
        );
        let _: ClusterRoleBinding = serde_yaml::from_value(all[7].clone()).unwrap();

        let one = ids(&docs(&RbacOptions {
            rotation_policies: Some(WatchScope::Namespace("shop".to_owned())),
            ..RbacOptions::default()
        }));
        let mut want = plain;
        want.extend([
            "Role shop/keyturn-agent-rotationpolicies".to_owned(),
            "RoleBinding shop/keyturn-agent-rotationpolicies".to_owned(),
        ]);
        assert_eq!(one, want);

        let header = rbac_yaml_with(
            &ps,
            "keyturn",
            "keyturn-system",
            &RbacOptions {
                membership_namespace: Some("keyturn-system".to_owned()),
                rotation_policies: Some(WatchScope::All),
                ..RbacOptions::default()
            },
        );
        let header = header.split("---").next().unwrap();
        assert!(
            header.contains("--membership-namespace keyturn-system"),
            "{header}"
        );
        assert!(header.contains("--rotationpolicies all"), "{header}");
        assert!(header.lines().all(|l| l.starts_with('#')), "{header}");
    }

    /// `policies/kubernetes/keyturn-agent-rbac.yaml` is generated from
    /// `policies/rotation/`; this keeps the two in step. After changing the example policies,
    /// regenerate with `KEYTURN_BLESS=1 cargo test -p keyturn-agent --lib rbac` (or
    /// `keyturn policy rbac policies/rotation`).
    #[test]
    fn the_checked_in_rbac_example_matches_the_example_policies() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = root.join("policies/rotation");
        let file = root.join("policies/kubernetes/keyturn-agent-rbac.yaml");
        let policies = crate::policy::load(&dir)
            .unwrap_or_else(|e| panic!("the example policies must load:\n{e}"));
        let generated = rbac_yaml(
            &policies,
            EXAMPLE_SERVICE_ACCOUNT.1,
            EXAMPLE_SERVICE_ACCOUNT.0,
        );
        if std::env::var_os("KEYTURN_BLESS").is_some() {
            std::fs::write(&file, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            checked_in == generated,
            "{} is out of date with policies/rotation/; regenerate it with KEYTURN_BLESS=1 cargo test -p keyturn-agent --lib rbac",
            file.display()
        );
    }

    /// The ServiceAccount the checked-in example is generated for: namespace, name.
    const EXAMPLE_SERVICE_ACCOUNT: (&str, &str) = ("keyturn-system", "keyturn");
}

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

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::Policy;
use super::needs::Need;

/// The name of every generated Role and RoleBinding.
pub const ROLE_NAME: &str = "keyturn-agent";

/// Choices beyond the policies themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RbacOptions {
    /// Add a `create` rule on Secrets (necessarily without `resourceNames`), so keyturn can
    /// create Secrets that do not exist yet. Off by default; see the module docs.
    pub allow_create_secrets: bool,
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

/// A Role and its RoleBinding per namespace the policies distribute to, in namespace order.
///
/// Workloads of a kind keyturn cannot restart are left out (policy validation already
/// rejects them).
#[must_use]
pub fn roles(
    policies: &[Policy],
    service_account: &str,
    sa_namespace: &str,
    options: &RbacOptions,
) -> Vec<(Role, RoleBinding)> {
    let rule = |group: &str, resource: &str, verbs: &[&str], names: Option<&BTreeSet<String>>| {
        PolicyRule {
            api_groups: Some(vec![group.to_owned()]),
            resources: Some(vec![resource.to_owned()]),
            verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
            resource_names: names.map(|n| n.iter().cloned().collect()),
            non_resource_urls: None,
        }
    };
    let meta = |namespace: &str| ObjectMeta {
        name: Some(ROLE_NAME.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(
            [
                ("app.kubernetes.io/name".to_owned(), "keyturn".to_owned()),
                ("app.kubernetes.io/component".to_owned(), "agent".to_owned()),
            ]
            .into_iter()
            .collect(),
        ),
        ..ObjectMeta::default()
    };

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
            let role = Role {
                metadata: meta(&namespace),
                rules: Some(rules),
            };
            let binding = RoleBinding {
                metadata: meta(&namespace),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".to_owned(),
                    kind: "Role".to_owned(),
                    name: ROLE_NAME.to_owned(),
                },
                subjects: Some(vec![Subject {
                    api_group: None,
                    kind: "ServiceAccount".to_owned(),
                    name: service_account.to_owned(),
                    namespace: Some(sa_namespace.to_owned()),
                }]),
            };
            (role, binding)
        })
        .collect()
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

/// [`roles`] as multi-document YAML with a header comment.
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
    for (role, binding) in roles(policies, service_account, sa_namespace, options) {
        for doc in [
            serde_yaml::to_string(&role),
            serde_yaml::to_string(&binding),
        ] {
            // Serializing these plain structs cannot fail; an empty document would be visible.
            out.push_str("---\n");
            out.push_str(&doc.unwrap_or_default());
        }
    }
    out
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

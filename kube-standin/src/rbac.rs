//! rbac.authorization.k8s.io/v1: Roles, RoleBindings, ClusterRoles and ClusterRoleBindings,
//! their validation, and the RBAC authorizer that reads them while enforcement is on.
//!
//! keyturn ships a least-privilege Role (`keyturn policy rbac`): `get`/`patch` on exactly the
//! Secrets and workloads its policies name, by `resourceNames`. Whether keyturn really works
//! under that Role — and fails with a readable 403 where it does not — can only be tested
//! against an authorizer that evaluates the Role the way kube-apiserver's does. So this is
//! a transcription of `plugin/pkg/auth/authorizer/rbac` rather than an approximation:
//!
//! - a rule matches when its verbs, apiGroups and resources (`*`, `deployments/scale`,
//!   `*/scale`) match, and — when `resourceNames` is not empty — the request's name is one
//!   of them. A `create` has no name at authorization time and neither has a `list` (unless
//!   its field selector pins `metadata.name`), so a rule with `resourceNames` never allows
//!   them, exactly as on a real cluster;
//! - ClusterRoleBindings are visited first, then the RoleBindings of the request's
//!   namespace; a RoleBinding may reference a Role of its namespace or a ClusterRole; a
//!   ServiceAccount subject without a namespace means the binding's;
//! - a binding whose role does not exist grants nothing and its error becomes the 403's
//!   reason (`RBAC: role.rbac.authorization.k8s.io "x" not found`), and an allowing rule's
//!   source becomes a SelfSubjectAccessReview's reason (`RBAC: allowed by RoleBinding …`),
//!   both worded as the real describers word them.
//!
//! Validation follows `pkg/apis/rbac/validation` (rules need verbs, apiGroups and
//! resources; roleRef is `rbac.authorization.k8s.io` `Role`/`ClusterRole` with a name and
//! cannot change; subjects are `ServiceAccount`, `User` or `Group`), with the v1 defaults
//! applied first (roleRef and User/Group subjects get the RBAC API group).
//!
//! Like a fresh kubeadm cluster, a stand-in starts with the bootstrap ClusterRoles that
//! matter here (`cluster-admin`, `system:auth-delegator`, `system:basic-user`) and their
//! bindings, plus one binding the stand-in adds: its token reviewer
//! (`kube-system/keyturn-token-reviewer`) to `system:auth-delegator`, which is what
//! `TestCluster::token_reviewer_jwt` sets up on a real cluster. So OpenBao's TokenReviews and
//! everyone's SelfSubjectAccessReviews keep working with enforcement on.
//!
//! Not modelled: privilege-escalation prevention (creating a Role with permissions one does
//! not hold, or binding without `bind`; only the admin writes RBAC objects in keyturn's
//! tests), ClusterRole aggregation, and the Node authorizer.

use k8s_openapi::api::rbac::v1::{
    ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use serde::Deserialize as _;
use serde_json::{Value, json};

use super::auth::{Attributes, Decision, UserInfo};
use super::managed::{ManagedFields, Writer};
use super::resources::{self, ResourceKind};
use super::status::{FieldError, go_quote};
use super::store::Store;
use super::validation;

/// The RBAC API group: the only one a roleRef may name, and User/Group subjects' default.
pub(crate) const GROUP: &str = "rbac.authorization.k8s.io";

/// Whether `kind` is one of the four RBAC kinds.
pub(crate) fn is_rbac(kind: &ResourceKind) -> bool {
    kind.group == GROUP
}

// ---- Defaults and validation ----

/// The v1 defaults (`SetDefaults_RoleBinding`, `SetDefaults_Subject`): an empty
/// `roleRef.apiGroup` and the `apiGroup` of User and Group subjects become the RBAC group.
pub(crate) fn apply_defaults(kind: &ResourceKind, obj: &mut Value) {
    if *kind != resources::ROLE_BINDINGS && *kind != resources::CLUSTER_ROLE_BINDINGS {
        return;
    }
    if let Some(role_ref) = obj.get_mut("roleRef").and_then(Value::as_object_mut)
        && role_ref
            .get("apiGroup")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        role_ref.insert("apiGroup".into(), json!(GROUP));
    }
    if let Some(subjects) = obj.get_mut("subjects").and_then(Value::as_array_mut) {
        for subject in subjects.iter_mut().filter_map(Value::as_object_mut) {
            let kind = subject.get("kind").and_then(Value::as_str).unwrap_or("");
            let empty = subject
                .get("apiGroup")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty);
            if empty && matches!(kind, "User" | "Group") {
                subject.insert("apiGroup".into(), json!(GROUP));
            }
        }
    }
}

/// Go's `%#v` of a `[]string`, as `field.Invalid` prints one.
fn go_string_slice(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| go_quote(v)).collect();
    format!("[]string{{{}}}", quoted.join(", "))
}

fn is_empty(list: Option<&Vec<String>>) -> bool {
    list.is_none_or(Vec::is_empty)
}

/// `ValidatePolicyRule` for each of `rules`.
fn validate_rules(rules: &[PolicyRule], namespaced: bool, errs: &mut Vec<FieldError>) {
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("rules[{i}]");
        if rule.verbs.is_empty() {
            errs.push(FieldError::required(
                format!("{path}.verbs"),
                "verbs must contain at least one value",
            ));
        }
        if let Some(urls) = rule.non_resource_urls.as_ref().filter(|u| !u.is_empty()) {
            let field = format!("{path}.nonResourceURLs");
            if namespaced {
                errs.push(FieldError::invalid_raw(
                    &field,
                    go_string_slice(urls),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !is_empty(rule.api_groups.as_ref())
                || !is_empty(rule.resources.as_ref())
                || !is_empty(rule.resource_names.as_ref())
            {
                errs.push(FieldError::invalid_raw(
                    &field,
                    go_string_slice(urls),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if is_empty(rule.api_groups.as_ref()) {
            errs.push(FieldError::required(
                format!("{path}.apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if is_empty(rule.resources.as_ref()) {
            errs.push(FieldError::required(
                format!("{path}.resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
}

/// `ValidateRoleBindingSubject`.
fn validate_subject(subject: &Subject, namespaced: bool, path: &str, errs: &mut Vec<FieldError>) {
    if subject.name.is_empty() {
        errs.push(FieldError::required(format!("{path}.name"), ""));
    }
    let api_group = subject.api_group.as_deref().unwrap_or("");
    match subject.kind.as_str() {
        "ServiceAccount" => {
            if !subject.name.is_empty() {
                for msg in validation::dns1123_subdomain_errors(&subject.name) {
                    errs.push(FieldError::invalid_str(
                        format!("{path}.name"),
                        &subject.name,
                        msg,
                    ));
                }
            }
            if !api_group.is_empty() {
                errs.push(FieldError::not_supported(
                    format!("{path}.apiGroup"),
                    api_group,
                    &[""],
                ));
            }
            if !namespaced && subject.namespace.as_deref().is_none_or(str::is_empty) {
                errs.push(FieldError::required(format!("{path}.namespace"), ""));
            }
        }
        "User" | "Group" => {
            if api_group != GROUP {
                errs.push(FieldError::not_supported(
                    format!("{path}.apiGroup"),
                    api_group,
                    &[GROUP],
                ));
            }
        }
        other => errs.push(FieldError::not_supported(
            format!("{path}.kind"),
            other,
            &["ServiceAccount", "User", "Group"],
        )),
    }
}

/// `ValidateRoleBinding` / `ValidateClusterRoleBinding`, plus `cannot change roleRef` on
/// update.
fn validate_binding(
    role_ref: &RoleRef,
    subjects: &[Subject],
    old_role_ref: Option<&RoleRef>,
    namespaced: bool,
    errs: &mut Vec<FieldError>,
) {
    if role_ref.api_group != GROUP {
        errs.push(FieldError::not_supported(
            "roleRef.apiGroup",
            &role_ref.api_group,
            &[GROUP],
        ));
    }
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !kinds.contains(&role_ref.kind.as_str()) {
        errs.push(FieldError::not_supported(
            "roleRef.kind",
            &role_ref.kind,
            kinds,
        ));
    }
    if role_ref.name.is_empty() {
        errs.push(FieldError::required("roleRef.name", ""));
    } else {
        for msg in validation::path_segment_name_errors(&role_ref.name) {
            errs.push(FieldError::invalid_str("roleRef.name", &role_ref.name, msg));
        }
    }
    for (i, subject) in subjects.iter().enumerate() {
        validate_subject(subject, namespaced, &format!("subjects[{i}]"), errs);
    }
    if let Some(old) = old_role_ref
        && old != role_ref
    {
        errs.push(FieldError::invalid_raw(
            "roleRef",
            format!(
                "rbac.RoleRef{{APIGroup:{}, Kind:{}, Name:{}}}",
                go_quote(&role_ref.api_group),
                go_quote(&role_ref.kind),
                go_quote(&role_ref.name)
            ),
            "cannot change roleRef",
        ));
    }
}

/// The kind-specific validation of an RBAC object (its metadata is validated by the caller
/// with [`validation::NameRule::PathSegment`]). `obj` has passed the shape check.
pub(crate) fn validate(
    kind: &ResourceKind,
    obj: &Value,
    old: Option<&Value>,
    errs: &mut Vec<FieldError>,
) {
    if *kind == resources::ROLES || *kind == resources::CLUSTER_ROLES {
        // Role and ClusterRole have the same `rules`; ClusterRole's `aggregationRule` is not
        // validated.
        if let Ok(role) = Role::deserialize(&without_type_meta(obj)) {
            validate_rules(
                role.rules.as_deref().unwrap_or_default(),
                kind.namespaced,
                errs,
            );
        }
    } else if *kind == resources::ROLE_BINDINGS || *kind == resources::CLUSTER_ROLE_BINDINGS {
        let Ok(binding) = RoleBinding::deserialize(&without_type_meta(obj)) else {
            return;
        };
        let old_ref = old
            .and_then(|o| RoleBinding::deserialize(&without_type_meta(o)).ok())
            .map(|o| o.role_ref);
        validate_binding(
            &binding.role_ref,
            binding.subjects.as_deref().unwrap_or_default(),
            old_ref.as_ref(),
            kind.namespaced,
            errs,
        );
    }
}

/// `obj` without `apiVersion`/`kind`, so that the fields ClusterRole(Binding) shares with
/// Role(Binding) can be read with one type (k8s-openapi checks the type meta it is given).
fn without_type_meta(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
    }
    v
}

// ---- The authorizer ----

/// What is being authorized: a resource request, or a non-resource URL (only a
/// SelfSubjectAccessReview asks about those here; the stand-in's own discovery and health
/// paths are open to every authenticated user, as `system:discovery` makes them).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Request<'a> {
    Resource(&'a Attributes<'a>),
    NonResource { verb: &'a str, path: &'a str },
}

impl Request<'_> {
    fn verb(&self) -> &str {
        match self {
            Self::Resource(a) => a.verb,
            Self::NonResource { verb, .. } => verb,
        }
    }

    fn namespace(&self) -> Option<&str> {
        match self {
            Self::Resource(a) => a.namespace.filter(|ns| !ns.is_empty()),
            Self::NonResource { .. } => None,
        }
    }
}

fn contains_or_all(list: &[String], value: &str) -> bool {
    list.iter().any(|v| v == "*" || v == value)
}

/// `RuleAllows`.
fn rule_allows(request: &Request<'_>, rule: &PolicyRule) -> bool {
    if !contains_or_all(&rule.verbs, request.verb()) {
        return false;
    }
    match request {
        Request::Resource(a) => {
            let groups = rule.api_groups.as_deref().unwrap_or_default();
            let resources = rule.resources.as_deref().unwrap_or_default();
            let names = rule.resource_names.as_deref().unwrap_or_default();
            let combined = a.resource_with_subresource();
            let resource_matches = resources.iter().any(|r| {
                r == "*"
                    || *r == combined
                    || a.subresource.is_some_and(|sub| {
                        r.len() == sub.len() + 2 && r.starts_with("*/") && r.ends_with(sub)
                    })
            });
            contains_or_all(groups, a.group)
                && resource_matches
                && (names.is_empty() || names.iter().any(|n| n == a.name))
        }
        Request::NonResource { path, .. } => rule
            .non_resource_urls
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|u| {
                u == "*"
                    || u == path
                    || u.strip_suffix('*')
                        .is_some_and(|prefix| path.starts_with(prefix.trim_end_matches('*')))
            }),
    }
}

/// `appliesTo`: the first subject that is this user. A ServiceAccount subject without a
/// namespace is in the binding's (none for a ClusterRoleBinding: then it matches nobody).
fn applies_to<'s>(
    user: &UserInfo,
    subjects: &'s [Subject],
    binding_namespace: &str,
) -> Option<&'s Subject> {
    subjects.iter().find(|s| match s.kind.as_str() {
        "User" => user.username == s.name,
        "Group" => user.groups.contains(&s.name),
        "ServiceAccount" => {
            let ns = s
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_namespace);
            !ns.is_empty() && user.username == format!("system:serviceaccount:{ns}:{}", s.name)
        }
        _ => false,
    })
}

/// `describeSubject`.
fn describe_subject(s: &Subject, binding_namespace: &str) -> String {
    if s.kind == "ServiceAccount" {
        let ns = s
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(binding_namespace);
        format!("{} {}", s.kind, go_quote(&format!("{}/{ns}", s.name)))
    } else {
        format!("{} {}", s.kind, go_quote(&s.name))
    }
}

/// `GetRoleReferenceRules`; the error is worded as the informer listers word a miss.
fn role_ref_rules(
    store: &Store,
    role_ref: &RoleRef,
    binding_namespace: &str,
) -> Result<Vec<PolicyRule>, String> {
    let (kind, namespace, singular) = match role_ref.kind.as_str() {
        "Role" => (&resources::ROLES, binding_namespace, "role"),
        "ClusterRole" => (&resources::CLUSTER_ROLES, "", "clusterrole"),
        other => {
            return Err(format!(
                "unsupported role reference kind: {}",
                go_quote(other)
            ));
        }
    };
    let stored = store
        .get(kind, namespace, &role_ref.name)
        .ok_or_else(|| format!("{singular}.{GROUP} {} not found", go_quote(&role_ref.name)))?;
    Role::deserialize(&without_type_meta(&stored.object))
        .map(|r| r.rules.unwrap_or_default())
        .map_err(|e| {
            format!(
                "{singular}.{GROUP} {} cannot be read: {e}",
                go_quote(&role_ref.name)
            )
        })
}

/// `utilerrors.NewAggregate(errs).Error()`: one message as is, several deduplicated in
/// brackets.
fn aggregate(errors: &[String]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for e in errors {
        if !seen.contains(&e.as_str()) {
            seen.push(e);
        }
    }
    match seen.as_slice() {
        [one] => (*one).to_owned(),
        many => format!("[{}]", many.join(", ")),
    }
}

/// The RBAC authorizer's decision for `user` on `request`: allowed with the granting
/// binding as reason, or no opinion with the errors met on the way (missing roles) as
/// reason.
pub(crate) fn authorize(store: &Store, user: &UserInfo, request: &Request<'_>) -> Decision {
    let mut errors = Vec::new();
    for stored in store.list(&resources::CLUSTER_ROLE_BINDINGS, None) {
        let Ok(binding) = ClusterRoleBinding::deserialize(&stored.object) else {
            continue;
        };
        let subjects = binding.subjects.as_deref().unwrap_or_default();
        let Some(subject) = applies_to(user, subjects, "") else {
            continue;
        };
        match role_ref_rules(store, &binding.role_ref, "") {
            Err(e) => errors.push(e),
            Ok(rules) if rules.iter().any(|r| rule_allows(request, r)) => {
                return Decision::allow(format!(
                    "RBAC: allowed by ClusterRoleBinding {} of {} {} to {}",
                    go_quote(binding.metadata.name.as_deref().unwrap_or("")),
                    binding.role_ref.kind,
                    go_quote(&binding.role_ref.name),
                    describe_subject(subject, "")
                ));
            }
            Ok(_) => {}
        }
    }
    if let Some(ns) = request.namespace() {
        for stored in store.list(&resources::ROLE_BINDINGS, Some(ns)) {
            let Ok(binding) = RoleBinding::deserialize(&stored.object) else {
                continue;
            };
            let subjects = binding.subjects.as_deref().unwrap_or_default();
            let Some(subject) = applies_to(user, subjects, ns) else {
                continue;
            };
            match role_ref_rules(store, &binding.role_ref, ns) {
                Err(e) => errors.push(e),
                Ok(rules) if rules.iter().any(|r| rule_allows(request, r)) => {
                    let name = binding.metadata.name.as_deref().unwrap_or("");
                    return Decision::allow(format!(
                        "RBAC: allowed by RoleBinding {} of {} {} to {}",
                        go_quote(&format!("{name}/{ns}")),
                        binding.role_ref.kind,
                        go_quote(&binding.role_ref.name),
                        describe_subject(subject, ns)
                    ));
                }
                Ok(_) => {}
            }
        }
    }
    if errors.is_empty() {
        Decision::no_opinion("")
    } else {
        Decision::no_opinion(format!("RBAC: {}", aggregate(&errors)))
    }
}

// ---- Bootstrap policy ----

/// The bootstrap ClusterRoles and ClusterRoleBindings a fresh stand-in starts with; see the
/// module docs.
pub(crate) fn seed_defaults(store: &mut Store, token_reviewer: (&str, &str)) {
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| json!({"apiGroups": groups, "resources": resources, "verbs": verbs});
    let roles = [
        (
            "cluster-admin",
            json!([
                rule(&["*"], &["*"], &["*"]),
                {"nonResourceURLs": ["*"], "verbs": ["*"]},
            ]),
        ),
        (
            "system:auth-delegator",
            json!([
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                rule(
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                    &["create"]
                ),
            ]),
        ),
        (
            "system:basic-user",
            json!([
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"]
                ),
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"]
                ),
            ]),
        ),
    ];
    let (reviewer_ns, reviewer_name) = token_reviewer;
    let group = |name: &str| json!({"apiGroup": GROUP, "kind": "Group", "name": name});
    let bindings = [
        ("cluster-admin", "cluster-admin", group("system:masters")),
        (
            "kubeadm:cluster-admins",
            "cluster-admin",
            group("kubeadm:cluster-admins"),
        ),
        (
            "system:basic-user",
            "system:basic-user",
            group("system:authenticated"),
        ),
        (
            "keyturn-token-reviewer",
            "system:auth-delegator",
            json!({"kind": "ServiceAccount", "name": reviewer_name, "namespace": reviewer_ns}),
        ),
    ];
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let meta = |name: &str| {
        json!({
            "name": name,
            "uid": uuid::Uuid::new_v4().to_string(),
            "creationTimestamp": now,
            "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
        })
    };
    let objects = roles
        .into_iter()
        .map(|(name, rules)| {
            (
                &resources::CLUSTER_ROLES,
                name,
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta(name), "rules": rules}),
            )
        })
        .chain(bindings.into_iter().map(|(name, role, subject)| {
            (
                &resources::CLUSTER_ROLE_BINDINGS,
                name,
                json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": meta(name),
                    "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
                    "subjects": [subject],
                }),
            )
        }));
    for (kind, name, object) in objects {
        let mut managed = ManagedFields::default();
        let who = Writer {
            manager: "kube-apiserver",
            api_version: "rbac.authorization.k8s.io/v1",
            now: &now,
        };
        managed.record_update(who, None, &object);
        store.put(kind, "", name, object, managed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str], names: &[&str]) -> PolicyRule {
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        PolicyRule {
            api_groups: Some(strings(groups)),
            resources: Some(strings(resources)),
            verbs: strings(verbs),
            resource_names: (!names.is_empty()).then(|| strings(names)),
            non_resource_urls: None,
        }
    }

    fn attrs<'a>(verb: &'a str, resource: &'a str, name: &'a str) -> Attributes<'a> {
        Attributes {
            verb,
            group: "",
            resource,
            subresource: None,
            namespace: Some("ns"),
            name,
        }
    }

    #[test]
    fn resource_names_restrict_named_requests_and_never_allow_create_or_list() {
        let r = rule(
            &[""],
            &["secrets"],
            &["get", "patch", "create", "list"],
            &["a"],
        );
        assert!(rule_allows(
            &Request::Resource(&attrs("get", "secrets", "a")),
            &r
        ));
        assert!(rule_allows(
            &Request::Resource(&attrs("patch", "secrets", "a")),
            &r
        ));
        assert!(!rule_allows(
            &Request::Resource(&attrs("get", "secrets", "b")),
            &r
        ));
        assert!(!rule_allows(
            &Request::Resource(&attrs("create", "secrets", "")),
            &r
        ));
        assert!(!rule_allows(
            &Request::Resource(&attrs("list", "secrets", "")),
            &r
        ));
        assert!(!rule_allows(
            &Request::Resource(&attrs("delete", "secrets", "a")),
            &r
        ));
    }

    #[test]
    fn subresources_match_by_full_name_or_star_slash() {
        let scale = Attributes {
            verb: "patch",
            group: "apps",
            resource: "deployments",
            subresource: Some("scale"),
            namespace: Some("ns"),
            name: "web",
        };
        let req = Request::Resource(&scale);
        assert!(rule_allows(
            &req,
            &rule(&["apps"], &["deployments/scale"], &["patch"], &[])
        ));
        assert!(rule_allows(
            &req,
            &rule(&["apps"], &["*/scale"], &["patch"], &[])
        ));
        assert!(rule_allows(&req, &rule(&["*"], &["*"], &["*"], &[])));
        assert!(!rule_allows(
            &req,
            &rule(&["apps"], &["deployments"], &["patch"], &[])
        ));
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_star_prefix() {
        let r = PolicyRule {
            non_resource_urls: Some(vec!["/healthz".into(), "/metrics/*".into()]),
            verbs: vec!["get".into()],
            ..PolicyRule::default()
        };
        let get = |path| Request::NonResource { verb: "get", path };
        assert!(rule_allows(&get("/healthz"), &r));
        assert!(rule_allows(&get("/metrics/cadvisor"), &r));
        assert!(!rule_allows(&get("/livez"), &r));
    }

    #[test]
    fn errors_aggregate_deduplicated_in_brackets() {
        assert_eq!(aggregate(&["a".into()]), "a");
        assert_eq!(aggregate(&["a".into(), "b".into(), "a".into()]), "[a, b]");
    }

    #[test]
    fn the_bootstrap_policy_lets_the_token_reviewer_review_tokens_and_everyone_ask_ssar() {
        let mut store = Store::default();
        seed_defaults(&mut store, ("kube-system", "reviewer"));
        let sa = |ns: &str, name: &str| UserInfo {
            username: format!("system:serviceaccount:{ns}:{name}"),
            uid: String::new(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
            extra: std::collections::BTreeMap::new(),
        };
        let review = Attributes {
            verb: "create",
            group: "authentication.k8s.io",
            resource: "tokenreviews",
            subresource: None,
            namespace: None,
            name: "",
        };
        let decision = authorize(
            &store,
            &sa("kube-system", "reviewer"),
            &Request::Resource(&review),
        );
        assert_eq!(
            decision.reason,
            "RBAC: allowed by ClusterRoleBinding \"keyturn-token-reviewer\" of ClusterRole \"system:auth-delegator\" to ServiceAccount \"reviewer/kube-system\""
        );
        assert!(!authorize(&store, &sa("app", "web"), &Request::Resource(&review)).allowed);
        let ssar = Attributes {
            group: "authorization.k8s.io",
            resource: "selfsubjectaccessreviews",
            ..review
        };
        assert!(authorize(&store, &sa("app", "web"), &Request::Resource(&ssar)).allowed);
        assert!(authorize(&store, &UserInfo::admin(), &Request::Resource(&ssar)).allowed);
    }
}

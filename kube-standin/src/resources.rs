//! The resource types the stand-in serves, and what differs between them.
//!
//! One table row per resource: its group/version/plural/kind and the strategy flags the real
//! registry gives it (`AllowCreateOnUpdate`, `AllowUnconditionalUpdate`, generation on spec
//! change). Everything kind-specific the handlers need is looked up here, so adding a resource
//! is one row plus, if it has rules of its own, one validation function.

/// A served resource: the static facts the URL, the `Status` messages and discovery need.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ResourceKind {
    /// API group; `""` for core/v1.
    pub group: &'static str,
    pub version: &'static str,
    /// URL segment and RBAC resource name.
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// The verbs discovery advertises and the handlers accept.
    pub verbs: &'static [&'static str],
    /// Whether objects are stored (`false` for virtual resources such as TokenReview).
    pub stored: bool,
    /// `AllowCreateOnUpdate`: PUT on a missing object creates it (Leases do, Secrets don't).
    pub create_on_update: bool,
    /// `AllowUnconditionalUpdate`: PUT without `metadata.resourceVersion` is allowed.
    pub unconditional_update: bool,
    /// Has `spec`/`status` and a `metadata.generation` that counts spec changes.
    pub has_generation: bool,
    /// For a custom resource, what its definition says (see `crds`).
    pub custom: Option<&'static super::crds::CustomInfo>,
}

const STORED_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub(crate) static SECRETS: ResourceKind = ResourceKind {
    group: "",
    version: "v1",
    plural: "secrets",
    singular: "secret",
    kind: "Secret",
    namespaced: true,
    short_names: &[],
    verbs: STORED_VERBS,
    stored: true,
    create_on_update: false,
    unconditional_update: true,
    has_generation: false,
    custom: None,
};

pub(crate) static SERVICE_ACCOUNTS: ResourceKind = ResourceKind {
    group: "",
    version: "v1",
    plural: "serviceaccounts",
    singular: "serviceaccount",
    kind: "ServiceAccount",
    namespaced: true,
    short_names: &["sa"],
    verbs: STORED_VERBS,
    stored: true,
    create_on_update: false,
    unconditional_update: true,
    has_generation: false,
    custom: None,
};

pub(crate) static DEPLOYMENTS: ResourceKind = ResourceKind {
    group: "apps",
    version: "v1",
    plural: "deployments",
    singular: "deployment",
    kind: "Deployment",
    namespaced: true,
    short_names: &["deploy"],
    verbs: STORED_VERBS,
    stored: true,
    create_on_update: false,
    unconditional_update: true,
    has_generation: true,
    custom: None,
};

pub(crate) static STATEFUL_SETS: ResourceKind = ResourceKind {
    group: "apps",
    version: "v1",
    plural: "statefulsets",
    singular: "statefulset",
    kind: "StatefulSet",
    namespaced: true,
    short_names: &["sts"],
    verbs: STORED_VERBS,
    stored: true,
    create_on_update: false,
    unconditional_update: true,
    has_generation: true,
    custom: None,
};

pub(crate) static LEASES: ResourceKind = ResourceKind {
    group: "coordination.k8s.io",
    version: "v1",
    plural: "leases",
    singular: "lease",
    kind: "Lease",
    namespaced: true,
    short_names: &[],
    verbs: STORED_VERBS,
    stored: true,
    create_on_update: true,
    unconditional_update: false,
    has_generation: false,
    custom: None,
};

/// Namespaces exist implicitly (any name works): every name is an Active namespace, labelled
/// `kubernetes.io/metadata.name`. kubectl reads one to word a NotFound. A create, update or
/// patch stores one (so `kubectl label namespace` works, and webhooks' `namespaceSelector`
/// sees the labels); see `namespaces`.
pub(crate) static NAMESPACES: ResourceKind = ResourceKind {
    group: "",
    version: "v1",
    plural: "namespaces",
    singular: "namespace",
    kind: "Namespace",
    namespaced: false,
    short_names: &["ns"],
    verbs: &["create", "get", "list", "patch", "update", "watch"],
    stored: true,
    create_on_update: false,
    unconditional_update: false,
    has_generation: false,
    custom: None,
};

/// Pods: stored objects only (nothing schedules or runs them); creating one goes through
/// mutating admission webhooks (see `admission`).
pub(crate) static PODS: ResourceKind = ResourceKind {
    group: "",
    version: "v1",
    plural: "pods",
    singular: "pod",
    kind: "Pod",
    namespaced: true,
    short_names: &["po"],
    verbs: STORED_VERBS,
    stored: true,
    create_on_update: false,
    unconditional_update: true,
    has_generation: false,
    custom: None,
};

/// events.k8s.io/v1 Events, what kube-runtime's `Recorder` writes (see `events`).
pub(crate) static EVENTS: ResourceKind = ResourceKind {
    group: "events.k8s.io",
    version: "v1",
    plural: "events",
    singular: "event",
    kind: "Event",
    namespaced: true,
    short_names: &["ev"],
    verbs: STORED_VERBS,
    stored: true,
    create_on_update: true,
    unconditional_update: true,
    has_generation: false,
    custom: None,
};

/// core/v1 Events: a read-only view of the stored events.k8s.io/v1 Events, converted as the
/// real server converts between the two versions of its one Event storage (see `events`).
/// `kubectl describe` lists these (`involvedObject.*` field selectors), and `kubectl get
/// events` resolves to them, as on a real server. Only get and list are served: nothing in
/// keyturn writes or watches core Events.
pub(crate) static CORE_EVENTS: ResourceKind = ResourceKind {
    group: "",
    version: "v1",
    plural: "events",
    singular: "event",
    kind: "Event",
    namespaced: true,
    short_names: &["ev"],
    verbs: &["get", "list"],
    stored: true,
    create_on_update: false,
    unconditional_update: true,
    has_generation: false,
    custom: None,
};

/// The configurations of mutating admission webhooks (see `webhooks`, `admission`).
pub(crate) static MUTATING_WEBHOOK_CONFIGURATIONS: ResourceKind = ResourceKind {
    group: "admissionregistration.k8s.io",
    version: "v1",
    plural: "mutatingwebhookconfigurations",
    singular: "mutatingwebhookconfiguration",
    kind: "MutatingWebhookConfiguration",
    namespaced: false,
    short_names: &[],
    verbs: STORED_VERBS,
    stored: true,
    create_on_update: false,
    unconditional_update: true,
    has_generation: true,
    custom: None,
};

pub(crate) static TOKEN_REVIEWS: ResourceKind = ResourceKind {
    group: "authentication.k8s.io",
    version: "v1",
    plural: "tokenreviews",
    singular: "tokenreview",
    kind: "TokenReview",
    namespaced: false,
    short_names: &[],
    verbs: &["create"],
    stored: false,
    create_on_update: false,
    unconditional_update: false,
    has_generation: false,
    custom: None,
};

pub(crate) static SELF_SUBJECT_ACCESS_REVIEWS: ResourceKind = ResourceKind {
    group: "authorization.k8s.io",
    version: "v1",
    plural: "selfsubjectaccessreviews",
    singular: "selfsubjectaccessreview",
    kind: "SelfSubjectAccessReview",
    namespaced: false,
    short_names: &[],
    verbs: &["create"],
    stored: false,
    create_on_update: false,
    unconditional_update: false,
    has_generation: false,
    custom: None,
};

/// The RBAC kinds: stored like any other object, and read by the authorizer (`rbac`).
/// Their registry strategies allow create-on-update and unconditional updates.
const fn rbac_kind(
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> ResourceKind {
    ResourceKind {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural,
        singular,
        kind,
        namespaced,
        short_names: &[],
        verbs: STORED_VERBS,
        stored: true,
        create_on_update: true,
        unconditional_update: true,
        has_generation: false,
        custom: None,
    }
}

pub(crate) static ROLES: ResourceKind = rbac_kind("roles", "role", "Role", true);
pub(crate) static ROLE_BINDINGS: ResourceKind =
    rbac_kind("rolebindings", "rolebinding", "RoleBinding", true);
pub(crate) static CLUSTER_ROLES: ResourceKind =
    rbac_kind("clusterroles", "clusterrole", "ClusterRole", false);
pub(crate) static CLUSTER_ROLE_BINDINGS: ResourceKind = rbac_kind(
    "clusterrolebindings",
    "clusterrolebinding",
    "ClusterRoleBinding",
    false,
);

/// apiextensions.k8s.io/v1 CustomResourceDefinitions (see `crds`).
pub(crate) static CUSTOM_RESOURCE_DEFINITIONS: ResourceKind = ResourceKind {
    group: "apiextensions.k8s.io",
    version: "v1",
    plural: "customresourcedefinitions",
    singular: "customresourcedefinition",
    kind: "CustomResourceDefinition",
    namespaced: false,
    short_names: &["crd", "crds"],
    verbs: STORED_VERBS,
    stored: true,
    create_on_update: false,
    unconditional_update: false,
    has_generation: true,
    custom: None,
};

/// Every served resource, in discovery order.
pub(crate) static ALL: &[&ResourceKind] = &[
    &NAMESPACES,
    &PODS,
    &SECRETS,
    &SERVICE_ACCOUNTS,
    &CORE_EVENTS,
    &DEPLOYMENTS,
    &STATEFUL_SETS,
    &LEASES,
    &EVENTS,
    &MUTATING_WEBHOOK_CONFIGURATIONS,
    &TOKEN_REVIEWS,
    &SELF_SUBJECT_ACCESS_REVIEWS,
    &ROLES,
    &ROLE_BINDINGS,
    &CLUSTER_ROLES,
    &CLUSTER_ROLE_BINDINGS,
    &CUSTOM_RESOURCE_DEFINITIONS,
];

impl ResourceKind {
    /// `v1` or `apps/v1`: the `apiVersion` objects of this kind carry.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `secrets` or `deployments.apps`: how error messages name the resource.
    pub fn qualified_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// A stored object as this kind's endpoint returns it (a custom resource read through
    /// another served version carries that version's `apiVersion`).
    pub fn render(&self, mut object: serde_json::Value) -> serde_json::Value {
        if self.custom.is_some()
            && let Some(map) = object.as_object_mut()
            && map.contains_key("apiVersion")
        {
            map.insert("apiVersion".into(), self.api_version().into());
        }
        object
    }

    /// Finds the resource served at `group`/`version`/`plural`.
    pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceKind> {
        ALL.iter()
            .copied()
            .find(|k| k.group == group && k.version == version && k.plural == plural)
    }
}

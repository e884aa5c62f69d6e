//! Kubernetes for keyturn's tests: the API stand-in (the `keyturn-kube-standin` crate,
//! re-exported here) and [`TestCluster`], one Kubernetes for one test, stand-in or real.
//!
//! End-to-end tests must run unchanged against a real cluster, so they never touch the
//! stand-in directly: they ask a `TestCluster` for a client, a namespace, tokens, the API
//! address and CA, a client that lacks a permission ([`TestCluster::client_denied`]), and a
//! client that has exactly the permissions of a given Role ([`TestCluster::client_with_role`],
//! which switches the stand-in to RBAC enforcement). With `KEYTURN_TEST_KUBECONFIG`
//! unset each `TestCluster` is a fresh [`KubeStandin`]; set, it is the current context of that
//! kubeconfig, and every test gets its own namespace there (labelled
//! `keyturn.dev/test=true`, deleted on drop together with anything cluster-scoped the test
//! made), so tests can still run in parallel.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams,
};
use serde::Deserialize as _;
use serde_json::{Value, json};

pub use keyturn_kube_standin::*;

/// Path of the kubeconfig of a real cluster to run the end-to-end tests against.
pub const REAL_CLUSTER_ENV: &str = "KEYTURN_TEST_KUBECONFIG";

/// The resources a restricted client is granted on a real cluster (minus what is denied).
const GRANTABLE: &[(&str, &str)] = &[
    ("", "secrets"),
    ("", "serviceaccounts"),
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("coordination.k8s.io", "leases"),
];
const ALL_VERBS: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

enum Backend {
    Standin(KubeStandin),
    Real(Box<RealCluster>),
}

struct RealCluster {
    config: kube::Config,
    server: String,
    ca_pem: Option<String>,
    /// Cluster-scoped objects to delete on drop (ClusterRoleBinding names).
    cluster_role_bindings: Mutex<Vec<String>>,
}

/// A Kubernetes API for one test: a fresh stand-in, or a namespace on a real cluster.
pub struct TestCluster {
    backend: Backend,
    namespace: String,
    kubeconfig: PathBuf,
    client: kube::Client,
    restricted: AtomicUsize,
    _dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("real", &self.is_real())
            .field("host", &self.kubernetes_host())
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

fn unique_namespace() -> String {
    format!(
        "keyturn-test-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// PEM from the DER certificates kube-rs loaded.
fn pem_from_der(certs: &[Vec<u8>]) -> String {
    use base64::Engine as _;
    let mut out = String::new();
    for der in certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

fn ignore_already_exists<T>(r: kube::Result<T>) -> kube::Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

impl TestCluster {
    /// A fresh stand-in, or — with `KEYTURN_TEST_KUBECONFIG` set — the real cluster of that
    /// kubeconfig's current context, with a new namespace for this test.
    ///
    /// # Errors
    /// When the stand-in cannot start, or the real cluster cannot be reached or the namespace
    /// created.
    pub async fn start() -> anyhow::Result<Self> {
        match std::env::var_os(REAL_CLUSTER_ENV) {
            Some(path) if !path.is_empty() => Self::real(PathBuf::from(path)).await,
            _ => Self::start_standin().await,
        }
    }

    /// A fresh stand-in even when a real cluster is configured, for tests of stand-in-only
    /// behaviour.
    ///
    /// # Errors
    /// When the stand-in cannot start.
    pub async fn start_standin() -> anyhow::Result<Self> {
        let standin = KubeStandin::start().await?;
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        standin.write_kubeconfig(&kubeconfig)?;
        let client = standin.client().await?;
        Ok(Self {
            backend: Backend::Standin(standin),
            namespace: unique_namespace(),
            kubeconfig,
            client,
            restricted: AtomicUsize::new(0),
            _dir: Some(dir),
        })
    }

    async fn real(kubeconfig: PathBuf) -> anyhow::Result<Self> {
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig)
            .with_context(|| format!("reading {}", kubeconfig.display()))?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?;
        let server = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_owned();
        let ca_pem = config.root_cert.as_deref().map(pem_from_der);
        let client = kube::Client::try_from(config.clone())?;
        let namespace = unique_namespace();
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": namespace, "labels": {"keyturn.dev/test": "true"}}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {namespace} on {server}"))?;
        Ok(Self {
            backend: Backend::Real(Box::new(RealCluster {
                config,
                server,
                ca_pem,
                cluster_role_bindings: Mutex::new(Vec::new()),
            })),
            namespace,
            kubeconfig,
            client,
            restricted: AtomicUsize::new(0),
            _dir: None,
        })
    }

    /// Whether this is a real cluster.
    pub fn is_real(&self) -> bool {
        matches!(self.backend, Backend::Real(_))
    }

    /// The stand-in, for tests of stand-in-only switches; `None` on a real cluster.
    pub fn standin(&self) -> Option<&KubeStandin> {
        match &self.backend {
            Backend::Standin(s) => Some(s),
            Backend::Real(_) => None,
        }
    }

    /// [`Self::standin`] for a test that cannot run without it: on a real cluster, prints on
    /// stderr that `test` is skipped and `why` (captured output shows it on failure, and
    /// `--no-capture` always), so a real-cluster run never passes a test silently.
    pub fn standin_or_skip(&self, test: &str, why: &str) -> Option<&KubeStandin> {
        let standin = self.standin();
        if standin.is_none() {
            eprintln!("SKIPPED on a real cluster ({REAL_CLUSTER_ENV}): {test}: {why}");
        }
        standin
    }

    /// An admin client.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// This test's namespace. On the stand-in it need not be created; on a real cluster it
    /// was, and is deleted on drop.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A kubeconfig for the admin user, for binaries under test (`KUBECONFIG`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server URL, as OpenBao's `kubernetes_host` wants it.
    pub fn kubernetes_host(&self) -> String {
        match &self.backend {
            Backend::Standin(s) => s.url(),
            Backend::Real(r) => r.server.clone(),
        }
    }

    /// The API server's CA in PEM, for OpenBao's `kubernetes_ca_cert` (with
    /// `disable_local_ca_jwt`, which OpenBao needs outside a pod) and any other client that
    /// must verify the API. For the stand-in it is its own CA (see [`KubeStandin::ca_pem`]);
    /// `None` only for a real cluster whose kubeconfig names no CA.
    pub fn kubernetes_ca_pem(&self) -> Option<String> {
        match &self.backend {
            Backend::Standin(s) => Some(s.ca_pem()),
            Backend::Real(r) => r.ca_pem.clone(),
        }
    }

    /// A kubeconfig (YAML) for this cluster's API and CA whose user, `user`, authenticates
    /// with `token` (e.g. from [`Self::service_account_token`]), for running a binary with
    /// exactly that identity's permissions (`KUBECONFIG`).
    pub fn kubeconfig_for_token(&self, user: &str, token: &str) -> String {
        match &self.backend {
            Backend::Standin(s) => s.kubeconfig_yaml_for(user, token),
            Backend::Real(r) => {
                keyturn_kube_standin::kubeconfig_yaml(&r.server, r.ca_pem.as_deref(), user, token)
            }
        }
    }

    /// A one-hour token for `namespace/name` with the API server's default audience.
    ///
    /// # Errors
    /// On a real cluster, when the service account or the TokenRequest cannot be created.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<String> {
        self.service_account_token_for(namespace, name, &[], Duration::from_secs(3600))
            .await
    }

    /// A token for `namespace/name` with the given audiences (empty: the API server's) and
    /// lifetime. On a real cluster the service account is created if missing and the token
    /// comes from the TokenRequest API, whose minimum lifetime is 10 minutes.
    ///
    /// # Errors
    /// On a real cluster, when the service account or the TokenRequest cannot be created.
    pub async fn service_account_token_for(
        &self,
        namespace: &str,
        name: &str,
        audiences: &[&str],
        ttl: Duration,
    ) -> anyhow::Result<String> {
        match &self.backend {
            Backend::Standin(s) => {
                Ok(s.issue_service_account_token(namespace, name, audiences, ttl))
            }
            Backend::Real(_) => {
                let sas: Api<ServiceAccount> = Api::namespaced(self.client(), namespace);
                let sa: ServiceAccount =
                    serde_json::from_value(json!({"metadata": {"name": name}}))?;
                ignore_already_exists(sas.create(&PostParams::default(), &sa).await)?;
                let request: TokenRequest = serde_json::from_value(json!({
                    "spec": {"audiences": audiences, "expirationSeconds": ttl.as_secs().max(600)}
                }))?;
                let issued = sas
                    .create_token_request(name, &PostParams::default(), &request)
                    .await?;
                Ok(issued
                    .status
                    .map(|s| s.token)
                    .context("TokenRequest answered without a token")?)
            }
        }
    }

    /// A token OpenBao's kubernetes auth can use as `token_reviewer_jwt`: a service account
    /// bound to `system:auth-delegator` (on a real cluster, for the life of this value).
    ///
    /// # Errors
    /// On a real cluster, when the account, binding or token cannot be created.
    pub async fn token_reviewer_jwt(&self) -> anyhow::Result<String> {
        let Backend::Real(real) = &self.backend else {
            return Ok(self
                .standin()
                .map(KubeStandin::token_reviewer_jwt)
                .unwrap_or_default());
        };
        let name = "keyturn-token-reviewer";
        let binding_name = format!("{}-token-reviewer", self.namespace);
        let binding: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": binding_name, "labels": {"keyturn.dev/test": "true"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": self.namespace}],
        }))?;
        ignore_already_exists(
            Api::<ClusterRoleBinding>::all(self.client())
                .create(&PostParams::default(), &binding)
                .await,
        )?;
        real.cluster_role_bindings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(binding_name);
        self.service_account_token_for(&self.namespace, name, &[], Duration::from_secs(3600))
            .await
    }

    /// A client that may do everything an admin may except the `(verb, resource)` pairs in
    /// `denied`, each answered 403 (`verb` or `resource` may be `*`).
    ///
    /// It is a service account bound to a Role in this test's namespace that grants every
    /// verb on secrets, serviceaccounts, deployments, statefulsets and leases except the
    /// denied ones. On a real cluster that Role is all it has, so there it can do nothing
    /// outside the namespace nor anything cluster-scoped (TokenReview included), which tests
    /// must not rely on either way. On the stand-in it also gets per-user deny rules, which
    /// are what refuse it while RBAC is not enforced; the Role is what grants it the rest
    /// when it is (see [`Self::client_with_role`]).
    ///
    /// # Errors
    /// When the account, its grants, its token or the client cannot be made.
    pub async fn client_denied(&self, denied: &[(&str, &str)]) -> anyhow::Result<kube::Client> {
        let n = self.restricted.fetch_add(1, Ordering::Relaxed);
        let sa = format!("keyturn-restricted-{n}");
        if let Backend::Standin(s) = &self.backend {
            let user = self.service_account_username(&sa);
            for (verb, resource) in denied {
                s.deny_user(&user, verb, resource);
            }
        }
        let is_denied = |verb: &str, group: &str, resource: &str| {
            let qualified = if group.is_empty() {
                resource.to_owned()
            } else {
                format!("{resource}.{group}")
            };
            denied.iter().any(|(v, r)| {
                (*v == "*" || *v == verb) && (*r == "*" || *r == resource || *r == qualified)
            })
        };
        let rules: Vec<Value> = GRANTABLE
            .iter()
            .filter_map(|(group, resource)| {
                let verbs: Vec<&str> = ALL_VERBS
                    .iter()
                    .copied()
                    .filter(|v| !is_denied(v, group, resource))
                    .collect();
                (!verbs.is_empty())
                    .then(|| json!({"apiGroups": [group], "resources": [resource], "verbs": verbs}))
            })
            .collect();
        let role: Role = serde_json::from_value(json!({"metadata": {"name": sa}, "rules": rules}))?;
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": sa},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": self.namespace}],
        }))?;
        let pp = PostParams::default();
        Api::<Role>::namespaced(self.client(), &self.namespace)
            .create(&pp, &role)
            .await?;
        Api::<RoleBinding>::namespaced(self.client(), &self.namespace)
            .create(&pp, &binding)
            .await?;
        let token = self.service_account_token(&self.namespace, &sa).await?;
        self.client_for_token(token)
    }

    /// `system:serviceaccount:NS:NAME` for the service account `name` of this test's
    /// namespace: the user name 403 messages and access reviews give it.
    pub fn service_account_username(&self, name: &str) -> String {
        format!("system:serviceaccount:{}:{name}", self.namespace)
    }

    /// A client whose only permissions are those of `role_yaml`, for running code under the
    /// exact RBAC it will get in production, e.g. what `keyturn policy rbac` generates.
    ///
    /// `role_yaml` is one or more YAML documents (`---`), each a `Role` or a `RoleBinding`
    /// (rbac.authorization.k8s.io/v1); empty documents are skipped. A fresh service account
    /// of this test's namespace, `keyturn-role-N`, is created; every RoleBinding's subjects
    /// are replaced by that account, and when the YAML has no RoleBinding, one per Role (of
    /// the Role's name) binds it. Objects without a namespace go in this test's namespace;
    /// an object in another namespace is an error (a real cluster's other namespaces are
    /// not the test's to write to). Everything is created with the admin client.
    ///
    /// On the stand-in this also switches on RBAC enforcement
    /// ([`KubeStandin::enforce_rbac`]) for the rest of the test, so every service-account
    /// client of this cluster is from then on held to its grants: the token reviewer and
    /// [`Self::client_denied`] clients keep theirs, clients made from bare
    /// [`Self::service_account_token`]s have none. The admin client is unaffected. On a real
    /// cluster RBAC is always on, and the objects go when the namespace does.
    ///
    /// Use [`Self::client_with_role_as`] to choose the account's name, e.g. to assert on a
    /// 403 message that names it.
    ///
    /// # Errors
    /// When the YAML does not parse, holds another kind or another namespace, or when the
    /// account, the objects (a name already taken: 409), the token or the client cannot be
    /// made.
    pub async fn client_with_role(&self, role_yaml: &str) -> anyhow::Result<kube::Client> {
        let n = self.restricted.fetch_add(1, Ordering::Relaxed);
        self.client_with_role_as(role_yaml, &format!("keyturn-role-{n}"))
            .await
    }

    /// [`Self::client_with_role`] as the service account `service_account` of this test's
    /// namespace (created if missing), whose user name is
    /// [`Self::service_account_username`]`(service_account)`.
    ///
    /// # Errors
    /// As [`Self::client_with_role`].
    pub async fn client_with_role_as(
        &self,
        role_yaml: &str,
        service_account: &str,
    ) -> anyhow::Result<kube::Client> {
        let (roles, bindings) = rbac_objects(role_yaml, &self.namespace, service_account)?;
        let pp = PostParams::default();
        let sas: Api<ServiceAccount> = Api::namespaced(self.client(), &self.namespace);
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": service_account}}))?;
        ignore_already_exists(sas.create(&pp, &sa).await)
            .with_context(|| format!("creating service account {service_account}"))?;
        let role_api: Api<Role> = Api::namespaced(self.client(), &self.namespace);
        for role in &roles {
            let name = role.metadata.name.as_deref().unwrap_or("");
            role_api
                .create(&pp, role)
                .await
                .with_context(|| format!("creating Role {name}"))?;
        }
        let binding_api: Api<RoleBinding> = Api::namespaced(self.client(), &self.namespace);
        for binding in &bindings {
            let name = binding.metadata.name.as_deref().unwrap_or("");
            binding_api
                .create(&pp, binding)
                .await
                .with_context(|| format!("creating RoleBinding {name}"))?;
        }
        if let Backend::Standin(s) = &self.backend {
            s.enforce_rbac(true);
        }
        let token = self
            .service_account_token(&self.namespace, service_account)
            .await?;
        let client = self.client_for_token(token)?;
        if self.is_real()
            && let Some(rule) = roles
                .first()
                .and_then(|r| r.rules.as_ref())
                .and_then(|rules| rules.first())
        {
            wait_until_granted(&client, &self.namespace, rule).await;
        }
        Ok(client)
    }

    /// A client of this cluster that authenticates with `token`.
    fn client_for_token(&self, token: String) -> anyhow::Result<kube::Client> {
        match &self.backend {
            Backend::Standin(s) => s.client_with_token(&token),
            Backend::Real(real) => {
                let mut config = real.config.clone();
                config.auth_info = kube::config::AuthInfo {
                    token: Some(secrecy::SecretString::from(token)),
                    ..Default::default()
                };
                Ok(kube::Client::try_from(config)?)
            }
        }
    }
}

/// Waits (a few seconds at most) until `client` may do what `rule` grants in `namespace`.
///
/// A real API server authorizes from informer caches, so a Role and RoleBinding just
/// created may not count yet for the next request; asking with SelfSubjectAccessReviews
/// until the first grant shows keeps tests from racing that. Gives up quietly: the test's
/// own requests will then say what is missing.
async fn wait_until_granted(client: &kube::Client, namespace: &str, rule: &PolicyRule) {
    let first = |v: Option<&Vec<String>>| v.and_then(|v| v.first()).cloned().unwrap_or_default();
    let review: SelfSubjectAccessReview = match serde_json::from_value(json!({
        "spec": {"resourceAttributes": {
            "namespace": namespace,
            "verb": rule.verbs.first().cloned().unwrap_or_default(),
            "group": first(rule.api_groups.as_ref()),
            "resource": first(rule.resources.as_ref()),
            "name": first(rule.resource_names.as_ref()),
        }}
    })) {
        Ok(r) => r,
        Err(_) => return,
    };
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    for _ in 0..50 {
        let allowed = reviews
            .create(&PostParams::default(), &review)
            .await
            .ok()
            .and_then(|r| r.status)
            .is_some_and(|s| s.allowed);
        if allowed {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Roles and RoleBindings of `yaml`, put in `namespace` and bound to `service_account`
/// there; see [`TestCluster::client_with_role`].
fn rbac_objects(
    yaml: &str,
    namespace: &str,
    service_account: &str,
) -> anyhow::Result<(Vec<Role>, Vec<RoleBinding>)> {
    let mut documents = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let value = Value::deserialize(document)
            .with_context(|| format!("document {} of the RBAC YAML", i + 1))?;
        if value.is_null() {
            continue;
        }
        anyhow::ensure!(
            value.is_object(),
            "document {} of the RBAC YAML is not a mapping",
            i + 1
        );
        let ns = value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        anyhow::ensure!(
            ns.is_empty() || ns == namespace,
            "document {} of the RBAC YAML is in namespace {ns:?}, not this test's ({namespace:?})",
            i + 1
        );
        documents.push((i + 1, value));
    }
    let subject =
        json!([{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}]);
    let mut roles = Vec::new();
    let mut bindings = Vec::new();
    for (n, mut value) in documents {
        value["metadata"]["namespace"] = json!(namespace);
        match value.get("kind").and_then(Value::as_str).unwrap_or("") {
            "Role" => roles.push(
                serde_json::from_value::<Role>(value)
                    .with_context(|| format!("document {n} of the RBAC YAML"))?,
            ),
            "RoleBinding" => {
                value["subjects"] = subject.clone();
                bindings.push(
                    serde_json::from_value::<RoleBinding>(value)
                        .with_context(|| format!("document {n} of the RBAC YAML"))?,
                );
            }
            other => anyhow::bail!(
                "document {n} of the RBAC YAML is a {other:?}; only Role and RoleBinding are supported"
            ),
        }
    }
    anyhow::ensure!(
        !roles.is_empty() || !bindings.is_empty(),
        "the RBAC YAML holds no Role and no RoleBinding"
    );
    if bindings.is_empty() {
        for role in &roles {
            let name = role.metadata.name.clone().unwrap_or_default();
            bindings.push(serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": subject,
            }))?);
        }
    }
    Ok((roles, bindings))
}

impl Drop for TestCluster {
    /// On a real cluster, deletes the namespace and cluster-scoped leftovers. Drop cannot
    /// await, and the test's runtime may be single-threaded and busy dropping us, so this
    /// runs on a thread with its own runtime and client.
    fn drop(&mut self) {
        let Backend::Real(real) = &self.backend else {
            return;
        };
        let config = real.config.clone();
        let namespace = self.namespace.clone();
        let bindings = std::mem::take(
            &mut *real
                .cluster_role_bindings
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let cleanup = async move {
                let Ok(client) = kube::Client::try_from(config) else {
                    return;
                };
                let dp = DeleteParams::background();
                for b in bindings {
                    let _ = Api::<ClusterRoleBinding>::all(client.clone())
                        .delete(&b, &dp)
                        .await;
                }
                if let Err(e) = Api::<Namespace>::all(client).delete(&namespace, &dp).await {
                    eprintln!("keyturn-tests: could not delete test namespace {namespace}: {e}");
                }
            };
            // An unreachable cluster must not hang the test run at drop.
            let _ =
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), cleanup).await });
        });
        let _ = cleanup.join();
    }
}

/// Real kubectl for a test on `c`, with a HOME (and cache) of its own; `None`, after saying
/// so on stderr, where kubectl is not installed (never on CI, which must run these).
///
/// # Panics
/// On CI without kubectl.
pub fn kubectl(c: &TestCluster, test: &str) -> Option<(std::path::PathBuf, tempfile::TempDir)> {
    match crate::tools::find("kubectl", "KEYTURN_KUBECTL") {
        Ok(path) => Some((path, tempfile::tempdir().unwrap())),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the kubectl tests: {e}"
            );
            eprintln!("SKIPPED {test} on {c:?}: {e}");
            None
        }
    }
}

/// Runs kubectl `args` in `c`'s namespace with `c`'s kubeconfig and nothing else of this
/// process's environment, `stdin` on its input; its stdout.
///
/// # Panics
/// When kubectl fails (its output is in the message).
pub async fn run_kubectl(
    c: &TestCluster,
    bin: &std::path::Path,
    home: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
) -> String {
    run_kubectl_logged(c, bin, home, args, stdin).await.0
}

/// [`run_kubectl`], returning its stderr too (where `-v=6` logs every request).
///
/// # Panics
/// When kubectl fails (its output is in the message).
pub async fn run_kubectl_logged(
    c: &TestCluster,
    bin: &std::path::Path,
    home: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
) -> (String, String) {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new(bin)
        .env_clear()
        .env("HOME", home)
        .env("KUBECONFIG", c.kubeconfig_path())
        .arg("--cache-dir")
        .arg(home.join("cache"))
        .args(["--namespace", c.namespace()])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run kubectl");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}{stderr}",
        String::from_utf8_lossy(&out.stdout),
    );
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

/// A CustomResourceDefinition a test installed with [`TestCluster::install_crd`]: the API
/// server said it is established and serves its resource. Cluster-scoped, so nothing deletes
/// it with the test's namespace: a test calls [`Self::remove`] when it passes (a failed test
/// leaves it behind on a real cluster, to look at).
#[derive(Debug)]
pub struct InstalledCrd {
    /// All the definitions, for a test that reads this one back.
    pub crds: Api<CustomResourceDefinition>,
    /// The definition as the API server created it.
    pub created: CustomResourceDefinition,
    /// `<plural>.<group>`, the definition's name.
    pub name: String,
    /// The group it was installed in (see [`TestCluster::crd_group`]).
    pub group: String,
    /// The custom resource, for [`kube::Api`]s of [`DynamicObject`]s.
    pub resource: ApiResource,
}

impl InstalledCrd {
    /// The custom resource's objects in `namespace`.
    pub fn api(&self, client: kube::Client, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(client, namespace, &self.resource)
    }

    /// Deletes the definition (and with it, as the API server does, its objects).
    ///
    /// # Errors
    /// When the API server refuses the delete.
    pub async fn remove(self) -> anyhow::Result<()> {
        self.crds
            .delete(&self.name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting the CustomResourceDefinition {}", self.name))?;
        Ok(())
    }
}

impl TestCluster {
    /// The API group a test defines a custom resource in: `group` on the stand-in, a fresh
    /// API server of the test's own; `<namespace>.test.keyturn.dev` on a real cluster, where
    /// definitions are cluster-scoped and tests run in parallel, so that no two tests ever
    /// share one.
    pub fn crd_group(&self, group: &str) -> String {
        if self.is_real() {
            format!("{}.test.keyturn.dev", self.namespace)
        } else {
            group.to_owned()
        }
    }

    /// Creates `crd` in the group [`Self::crd_group`] gives for its own (renamed
    /// `<plural>.<group>` to match) and waits until it is established and its storage
    /// version served in this test's namespace: a real API server may serve the resource a
    /// moment after it says established, and a test's first request must not race that.
    ///
    /// # Errors
    /// When the API server refuses the definition; the waits have no limit of their own (a
    /// definition that is never served hangs the test until the runner's timeout, which
    /// names it).
    pub async fn install_crd(
        &self,
        mut crd: CustomResourceDefinition,
    ) -> anyhow::Result<InstalledCrd> {
        let group = self.crd_group(&crd.spec.group);
        let name = format!("{}.{group}", crd.spec.names.plural);
        crd.spec.group.clone_from(&group);
        crd.metadata.name = Some(name.clone());
        let version = crd
            .spec
            .versions
            .iter()
            .find(|v| v.storage)
            .or_else(|| crd.spec.versions.first())
            .map(|v| v.name.clone())
            .with_context(|| format!("the CustomResourceDefinition {name} has no version"))?;
        let gvk = GroupVersionKind::gvk(&group, &version, &crd.spec.names.kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, &crd.spec.names.plural);
        let namespaced = crd.spec.scope == "Namespaced";
        let crds: Api<CustomResourceDefinition> = Api::all(self.client());
        let created = crds
            .create(&PostParams::default(), &crd)
            .await
            .with_context(|| format!("creating the CustomResourceDefinition {name}"))?;
        crate::process::eventually("the definition to be established", || {
            let crds = crds.clone();
            let name = name.clone();
            async move {
                crds.get(&name).await.is_ok_and(|d| {
                    d.status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                })
            }
        })
        .await;
        let objects: Api<DynamicObject> = if namespaced {
            Api::namespaced_with(self.client(), &self.namespace, &resource)
        } else {
            Api::all_with(self.client(), &resource)
        };
        crate::process::eventually("the resource to be served", || {
            let objects = objects.clone();
            async move { objects.list(&ListParams::default()).await.is_ok() }
        })
        .await;
        Ok(InstalledCrd {
            crds,
            created,
            name,
            group,
            resource,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rbac_yaml_is_put_in_the_test_namespace_and_bound_to_the_account() {
        let yaml = "# a comment-only preamble\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: r\nrules:\n- apiGroups: ['']\n  resources: [secrets]\n  verbs: [get]\n";
        let (roles, bindings) = rbac_objects(yaml, "t", "sa").unwrap();
        assert_eq!(roles[0].metadata.namespace.as_deref(), Some("t"));
        assert_eq!(bindings.len(), 1);
        assert_eq!(bindings[0].role_ref.name, "r");
        let subject = &bindings[0].subjects.as_ref().unwrap()[0];
        assert_eq!(
            (
                subject.kind.as_str(),
                subject.name.as_str(),
                subject.namespace.as_deref()
            ),
            ("ServiceAccount", "sa", Some("t"))
        );
    }

    #[test]
    fn rbac_yaml_replaces_binding_subjects_and_refuses_other_namespaces_and_kinds() {
        let binding = "kind: RoleBinding\napiVersion: rbac.authorization.k8s.io/v1\nmetadata: {name: b, namespace: t}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: r}\nsubjects: [{kind: ServiceAccount, name: keyturn, namespace: keyturn-system}]\n";
        let (roles, bindings) = rbac_objects(binding, "t", "sa").unwrap();
        assert!(roles.is_empty());
        assert_eq!(bindings[0].subjects.as_ref().unwrap()[0].name, "sa");

        let elsewhere = binding.replace("namespace: t}", "namespace: shop}");
        let err = rbac_objects(&elsewhere, "t", "sa").unwrap_err().to_string();
        assert!(err.contains("\"shop\""), "{err}");
        let cluster_role =
            "kind: ClusterRole\napiVersion: rbac.authorization.k8s.io/v1\nmetadata: {name: c}\n";
        let err = rbac_objects(cluster_role, "t", "sa")
            .unwrap_err()
            .to_string();
        assert!(err.contains("only Role and RoleBinding"), "{err}");
        assert!(rbac_objects("# nothing\n", "t", "sa").is_err());
    }
}

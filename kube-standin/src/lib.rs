//! keyturn-kube-standin: a Kubernetes API stand-in for keyturn's tests, its demo and trying
//! keyturn by hand with kubectl.
//!
//! No kube-apiserver can be installed where keyturn's tests run, so [`KubeStandin`] serves the
//! real Kubernetes JSON API for exactly the subset keyturn uses, over HTTPS on loopback with
//! a CA of its own (see `tls`), and **rejects what the real server rejects**, with the same
//! codes, reasons and messages. Real clients accept it: kube-rs verifying the CA from the
//! kubeconfig [`KubeStandin::write_kubeconfig`] writes (`certificate-authority-data` and a
//! bearer token), kubectl, and OpenBao's kubernetes auth given [`KubeStandin::ca_pem`]. A test
//! that passes here should pass against a real cluster, which is why keyturn's end-to-end
//! tests reach it through `keyturn_tests::kube::TestCluster` and also run against one when
//! `KEYTURN_TEST_KUBECONFIG` is set.
//!
//! Served (namespaced unless marked cluster-scoped):
//!
//! | resource | verbs |
//! |---|---|
//! | core/v1 `namespaces` (cluster-scoped; virtual: every name is an Active namespace until written, see `namespaces`) | get, list, watch, create, update, patch |
//! | core/v1 `secrets` | get, list, watch, create, update, patch (merge, JSON, strategic, apply), delete, deletecollection |
//! | core/v1 `pods` (never scheduled; a create goes through mutating admission webhooks, see `pods`, `admission`) | same |
//! | core/v1 `serviceaccounts` (+ `token` subresource) | same; `token`: create (TokenRequest) |
//! | apps/v1 `deployments`, `statefulsets` | same |
//! | coordination.k8s.io/v1 `leases` | same |
//! | events.k8s.io/v1 `events` (see `events`) | same |
//! | core/v1 `events` (a view of the same Events, converted as the real server converts them; see `events`) | get, list (field selectors on `involvedObject.*`, what `kubectl describe` sends) |
//! | admissionregistration.k8s.io/v1 `mutatingwebhookconfigurations` (cluster-scoped; see `webhooks`) | same |
//! | rbac.authorization.k8s.io/v1 `roles`, `rolebindings`, `clusterroles`, `clusterrolebindings` (the last two cluster-scoped) | same |
//! | apiextensions.k8s.io/v1 `customresourcedefinitions` (cluster-scoped; validated, established at once; see `crds`) | same |
//! | the custom resources they define (e.g. keyturn.dev/v1 `rotationpolicies`), with a `status` subresource (get, update, patch) when defined | get, list, watch, create, update, patch (merge, JSON, apply), delete, deletecollection |
//! | authentication.k8s.io/v1 `tokenreviews` (cluster-scoped) | create |
//! | authorization.k8s.io/v1 `selfsubjectaccessreviews` (cluster-scoped) | create |
//!
//! A custom resource is pruned, defaulted and validated against its structural schema with
//! the real 422 messages, counts spec changes in `metadata.generation`, keeps `status` for
//! its `/status` subresource, and is listed by `kubectl get` with its
//! `additionalPrinterColumns`; see `crds`.
//!
//! Every stored resource can be watched (`?watch=true` or `?watch=1`, see `watch`): from a
//! resourceVersion or from the current state, with bookmarks, label and field selectors,
//! `timeoutSeconds`, the streaming list (`sendInitialEvents`), and `410 Expired` for a
//! resourceVersion older than the bounded history ([`KubeStandin::set_watch_history`],
//! [`KubeStandin::compact`]); lists honour `resourceVersion` and `resourceVersionMatch`, and
//! come in pages with `limit` and `continue` (every page at the first one's resourceVersion,
//! `remainingItemCount`, `410 Expired` for a token whose snapshot was compacted; see `paging`).
//! Writes never wait for watchers; one that falls behind is dropped
//! ([`KubeStandin::set_watch_buffer`]). [`KubeStandin::close_watches`] ends every watch, as
//! an API server restart does.
//!
//! plus `/version`, `/api`, `/apis` discovery, `/openapi/v3` (what kubectl reads before a
//! write), `/.well-known/openid-configuration` and `/openid/v1/jwks`. What each rule is and
//! where it deliberately differs from the real server is documented in the module that
//! enforces it: `status` (error bodies), `secrets`, `apps`, `pods`, `events`, `webhooks`
//! (MutatingWebhookConfigurations), `admission` (calling webhooks on pod creates),
//! `namespaces`, `crds` (CustomResourceDefinitions and custom resources), `kinds` (the
//! write pipeline),
//! `managed` (server-side apply), `patch` (strategic merge with merge keys and kubectl's
//! directives), `strict` (`fieldValidation=Strict`), `protobuf` (kubectl's typed bodies),
//! `table` (`kubectl get` columns), `watch` (watch and list resourceVersions), `paging`
//! (`limit` and `continue`), `store` (the
//! change history), `openapi`, `auth` (401, the deny switch and the
//! authorizer chain), `rbac` (Roles, bindings, the RBAC authorizer), `tokens` and `reviews`
//! (JWTs, TokenReview, SelfSubjectAccessReview).
//!
//! Admission webhooks on a `service` are reached where [`KubeStandin::route_service`] says the
//! service's port listens (there are no Services or DNS); [`KubeStandin::label_namespace`]
//! labels a namespace for their `namespaceSelector` (as `kubectl label namespace` does).
//!
//! [`KubeStandin::fail`] makes matching requests answer an error status (404, 409, 429, 500,
//! 503) and [`KubeStandin::hold`] makes them answer late, for fault-injection tests; see
//! `faults`.
//!
//! Authorization is permissive by default (everything not denied by a deny rule is allowed);
//! [`KubeStandin::enforce_rbac`] makes service accounts subject to RBAC, as on a real cluster.
//!
//! Not served: watch of a single object's URL (`/…/NAME?watch=true`) and the deprecated
//! `/watch/` paths, deleting namespaces,
//! protobuf responses and protobuf bodies other than Secrets and Deployments (415, naming
//! what is missing), `/openapi/v2`, validating admission webhooks and mutating ones on
//! anything but pod creates (a pod created by server-side apply skips them), writes and
//! watches of core/v1 `events`, finalizers and graceful deletion, for custom resources:
//! version conversion (only `apiVersion` changes), the `scale` subresource, strategic merge
//! patches (415, as on a real server), `allOf`/`anyOf`/`oneOf`/`not`, `format` and CEL
//! validation rules, `x-kubernetes-embedded-resource`, and name conflicts between
//! definitions (each is accepted),
//! list-merge semantics of server-side apply, and JSON patches of `metadata.managedFields`
//! (so kubectl's move of a client-side-applied object to server-side apply warns, and the
//! server-side apply then conflicts with `kubectl-client-side-apply` unless forced).

mod admission;
mod apps;
mod auth;
mod crds;
mod events;
mod faults;
mod kinds;
mod managed;
mod namespaces;
mod objects;
mod openapi;
mod paging;
mod patch;
mod pods;
mod protobuf;
mod rbac;
mod resources;
mod reviews;
mod secrets;
mod selectors;
mod server;
pub(crate) mod status;
mod store;
mod strict;
mod table;
mod tls;
mod tokens;
mod validation;
mod watch;
mod webhooks;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;

pub use server::RecordedRequest;

use auth::DenyRule;
use faults::{FailRule, Fault};
use server::Shared;
use store::Store;
use tokens::TokenAuthority;

/// The service account whose token [`KubeStandin::token_reviewer_jwt`] mints.
pub const TOKEN_REVIEWER_NAMESPACE: &str = "kube-system";
/// See [`TOKEN_REVIEWER_NAMESPACE`].
pub const TOKEN_REVIEWER_NAME: &str = "keyturn-token-reviewer";

/// A running stand-in API server on a loopback port. Dropping it stops the server.
pub struct KubeStandin {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: String,
    ca_der: Vec<u8>,
    /// Dropped (or sent) to stop the server.
    shutdown: Option<tokio::sync::watch::Sender<()>>,
}

impl std::fmt::Debug for KubeStandin {
    // Never prints the admin token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStandin")
            .field("url", &self.shared.url)
            .finish_non_exhaustive()
    }
}

impl KubeStandin {
    /// Starts a stand-in on a free port of 127.0.0.1.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a stand-in on `addr`, which must be a loopback address (port 0: any free one).
    ///
    /// # Errors
    /// When `addr` is not loopback (its certificate names only loopback addresses, and its
    /// admin token may do anything) or cannot be bound.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Self> {
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "the Kubernetes stand-in only listens on loopback, not on {addr}"
        );
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let addr = listener.local_addr()?;
        let url = format!("https://{addr}");
        let tls = tls::Tls::new(addr.ip())?;
        let mut store = Store::default();
        rbac::seed_defaults(&mut store, (TOKEN_REVIEWER_NAMESPACE, TOKEN_REVIEWER_NAME));
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            deny: Mutex::new(Vec::new()),
            fail: Mutex::new(Vec::new()),
            rbac_enforced: AtomicBool::new(false),
            tokens: TokenAuthority::new(&url)?,
            admin_token: {
                use base64::Engine as _;
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
            },
            url,
            log: Mutex::new(Vec::new()),
            routes: Mutex::new(std::collections::BTreeMap::new()),
        });
        let (tx, rx) = tokio::sync::watch::channel(());
        let app = server::router(Arc::clone(&shared));
        tokio::spawn(tls::serve(listener, tls.acceptor, app, rx));
        Ok(Self {
            shared,
            addr,
            ca_pem: tls.ca_pem,
            ca_der: tls.ca_der,
            shutdown: Some(tx),
        })
    }

    /// `https://127.0.0.1:PORT`: the API server URL, also OpenBao's `kubernetes_host` and the
    /// tokens' issuer.
    pub fn url(&self) -> String {
        self.shared.url.clone()
    }

    /// The stand-in's own CA certificate (PEM), which signed its serving certificate: what a
    /// client must trust, e.g. OpenBao's kubernetes auth (`kubernetes_ca_cert`), its JWT auth
    /// (`jwks_ca_pem`), or reqwest (`Certificate::from_pem`). Each stand-in has its own.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// [`Self::ca_pem`] in DER, as `kube::Config::root_cert` takes it.
    pub fn ca_der(&self) -> Vec<u8> {
        self.ca_der.clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bearer token of the kubeconfig's user, `kubernetes-admin`.
    pub fn admin_token(&self) -> String {
        self.shared.admin_token.clone()
    }

    /// A kubeconfig with one cluster (this URL, `certificate-authority-data` the CA), one
    /// token user (`kubernetes-admin`, the admin token) and one current context (`default`
    /// namespace), loadable by kubectl, kube-rs and client-go.
    pub fn kubeconfig_yaml(&self) -> String {
        self.kubeconfig_yaml_for(auth::ADMIN_USER, &self.shared.admin_token)
    }

    /// Like [`Self::kubeconfig_yaml`], for the user `user` authenticating with `token`, e.g.
    /// a service account's from [`Self::issue_service_account_token`], to run a binary with
    /// exactly that account's permissions.
    pub fn kubeconfig_yaml_for(&self, user: &str, token: &str) -> String {
        kubeconfig_yaml(&self.shared.url, Some(&self.ca_pem), user, token)
    }

    /// Writes [`Self::kubeconfig_yaml`] to `path`, readable by the owner only (it holds the
    /// admin token).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write as _;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        options.mode(0o600);
        let mut file = options
            .open(path)
            .with_context(|| format!("writing {}", path.display()))?;
        file.write_all(self.kubeconfig_yaml().as_bytes())?;
        Ok(())
    }

    /// A kube-rs config for this stand-in: its URL, trusting only its CA, and no user.
    pub fn config(&self) -> kube::Config {
        let mut config = kube::Config::new(
            self.shared
                .url
                .parse()
                .expect("the stand-in's own URL parses"),
        );
        config.root_cert = Some(vec![self.ca_der.clone()]);
        config
    }

    /// A kube-rs client for the admin user, built from [`Self::kubeconfig_yaml`] so that the
    /// kubeconfig itself is exercised.
    ///
    /// # Errors
    /// When kube-rs cannot load the kubeconfig.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_yaml())?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// A kube-rs client that authenticates with `token` (e.g. a service-account JWT).
    ///
    /// # Errors
    /// When the client cannot be built.
    pub fn client_with_token(&self, token: &str) -> anyhow::Result<kube::Client> {
        let mut config = self.config();
        config.auth_info.token = Some(secrecy::SecretString::from(token.to_owned()));
        Ok(kube::Client::try_from(config)?)
    }

    /// A projected service-account token for `namespace/name`, signed by this stand-in, valid
    /// for `ttl` from now. Empty `audiences`: the API server's own audience (the issuer URL),
    /// which is also what a role without `audience` makes OpenBao review against.
    pub fn issue_service_account_token(
        &self,
        namespace: &str,
        name: &str,
        audiences: &[&str],
        ttl: Duration,
    ) -> String {
        self.shared.issue(namespace, name, None, audiences, ttl)
    }

    /// Like [`Self::issue_service_account_token`], bound to a pod (the token carries
    /// `kubernetes.io.pod`), as the token a kubelet projects into a pod is.
    pub fn issue_pod_service_account_token(
        &self,
        namespace: &str,
        service_account: &str,
        pod: &str,
        audiences: &[&str],
        ttl: Duration,
    ) -> String {
        self.shared
            .issue(namespace, service_account, Some(pod), audiences, ttl)
    }

    /// A day-long token for `kube-system/keyturn-token-reviewer`, to give OpenBao's
    /// kubernetes auth as `token_reviewer_jwt`. Without RBAC enforcement any authenticated
    /// user may create TokenReviews (unless denied); with it, this account may because the
    /// stand-in starts with it bound to `system:auth-delegator`.
    pub fn token_reviewer_jwt(&self) -> String {
        self.issue_service_account_token(
            TOKEN_REVIEWER_NAMESPACE,
            TOKEN_REVIEWER_NAME,
            &[],
            Duration::from_secs(24 * 3600),
        )
    }

    /// Makes every request for `verb` on `resource` answer 403, as RBAC would for a user
    /// without that grant. `verb`: `get`, `list`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection` or `*`; `resource`: `secrets`, `deployments` (or
    /// `deployments.apps`), `leases`, `tokenreviews`, `serviceaccounts/token`, … or `*`.
    pub fn deny(&self, verb: &str, resource: &str) {
        self.shared.deny_rules().push(DenyRule {
            verb: verb.to_owned(),
            resource: resource.to_owned(),
            user: None,
        });
    }

    /// Like [`Self::deny`], for one user only (`system:serviceaccount:NS:NAME` or
    /// `kubernetes-admin`), so other clients keep working.
    pub fn deny_user(&self, user: &str, verb: &str, resource: &str) {
        self.shared.deny_rules().push(DenyRule {
            verb: verb.to_owned(),
            resource: resource.to_owned(),
            user: Some(user.to_owned()),
        });
    }

    /// Makes every authorized request for `verb` on `resource` (as for [`Self::deny`]) answer
    /// the HTTP `status`, worded as the real server words it: 404 is `NotFound` (an object
    /// deleted by someone else in between), 409 is `AlreadyExists` on
    /// `create` and `Conflict` on other verbs (a write that keeps losing the
    /// `resourceVersion` race), 429 `TooManyRequests`, 500 `InternalError`, 503
    /// `ServiceUnavailable`. Nothing is read or written for such a request; it is recorded in
    /// [`Self::requests`] with that status. The first matching rule wins; deny rules come
    /// first, as authorization does.
    pub fn fail(&self, verb: &str, resource: &str, status: u16) {
        self.shared.fail_rules().push(FailRule {
            verb: verb.to_owned(),
            resource: resource.to_owned(),
            fault: Fault::Status(status),
        });
    }

    /// Makes every request for `verb` on `resource` (as for [`Self::fail`]) hang for `hold`:
    /// it is served at once (its write happens, and it is in [`Self::requests`] straight
    /// away), then its answer is held back `hold` before it is sent. For testing a client's
    /// own timeouts, and — holding a read while the test changes the object — a conditional
    /// write made from a stale read. Rules made here and by [`Self::fail`] are independent: a
    /// request both held and failed gets its error late. Only requests that arrive while the
    /// rule stands are held; [`Self::clear_failures`] does not shorten a hold under way.
    pub fn hold(&self, verb: &str, resource: &str, hold: Duration) {
        self.shared.fail_rules().push(FailRule {
            verb: verb.to_owned(),
            resource: resource.to_owned(),
            fault: Fault::Hold(hold),
        });
    }

    /// Removes every rule added by [`Self::fail`] and [`Self::hold`]; deny rules stay.
    pub fn clear_failures(&self) {
        self.shared.fail_rules().clear();
    }

    /// Every authenticated request on a resource so far, in order: what a real server's audit
    /// log would show. Lets a test check what a client did (and was answered), e.g. that
    /// OpenBao's TokenReview was refused.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Removes every deny rule. RBAC enforcement, if on, stays on.
    pub fn allow_all(&self) {
        self.shared.deny_rules().clear();
    }

    /// Switches RBAC enforcement. Off (the default), every authenticated request not matched
    /// by a deny rule is allowed. On, a service account may do only what the Roles and
    /// ClusterRoles bound to it (or to its groups) grant, evaluated as kube-apiserver's RBAC
    /// authorizer does, `resourceNames` included; a refusal is the real 403. The admin stays
    /// all-powerful, and deny rules still apply on top. The stand-in starts with the bootstrap
    /// ClusterRoles a cluster has (`cluster-admin`, `system:auth-delegator`,
    /// `system:basic-user`), so SelfSubjectAccessReviews and the token reviewer keep working.
    pub fn enforce_rbac(&self, on: bool) {
        self.shared.set_rbac_enforced(on);
    }

    /// Says where port `port` of Service `namespace/name` listens, for admission webhooks
    /// whose `clientConfig.service` names it: the stand-in has no Services or DNS, so it
    /// connects to `addr` while still verifying the certificate for `NAME.NAMESPACE.svc`, as
    /// kube-apiserver does. A webhook on an unrouted service fails to be called (`service
    /// "NAME" not found`). Routing the same service port again replaces the address.
    pub fn route_service(&self, namespace: &str, name: &str, port: u16, addr: SocketAddr) {
        self.shared
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((namespace.to_owned(), name.to_owned(), port), addr);
    }

    /// Removes what [`Self::route_service`] said about `namespace/name`'s `port`, so calls to
    /// it fail again, as when a Service has no endpoints left.
    pub fn unroute_service(&self, namespace: &str, name: &str, port: u16) {
        self.shared
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(namespace.to_owned(), name.to_owned(), port));
    }

    /// Adds (or overwrites) labels of namespace `name`, as `kubectl label namespace` does
    /// through the API: what admission webhooks' `namespaceSelector` matches. Every
    /// namespace also carries `kubernetes.io/metadata.name: NAME`, which cannot be changed.
    pub fn label_namespace(&self, name: &str, labels: &[(&str, &str)]) {
        namespaces::add_labels(&mut self.shared.store(), name, labels);
    }

    /// Keeps only the last `n` changes (at least one) for watches to resume from (5000 until
    /// told otherwise): a watch from a resourceVersion older than that gets the real server's
    /// `410 Expired` ERROR event, and its client must list again.
    pub fn set_watch_history(&self, n: usize) {
        self.shared.store().set_history_limit(n);
    }

    /// Forgets every change so far, as a compaction does: from now on a watch can resume
    /// only from the latest resourceVersion; any older one gets `410 Expired`.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// Ends every open watch cleanly, as an API server restart does; clients watch again
    /// from the last resourceVersion they saw.
    pub fn close_watches(&self) {
        self.shared.store().close_watches();
    }

    /// How many changes each watch may have waiting to be sent (at least one; 1000 until told
    /// otherwise) before the watch is dropped for falling behind, for watches opened after
    /// this call. Writes never wait for a watcher.
    pub fn set_watch_buffer(&self, n: usize) {
        self.shared.store().set_watch_buffer(n);
    }

    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK (a minute until told
    /// otherwise, as on a real server), for watches opened after this call. Every such watch
    /// also gets one 2 s before its `timeoutSeconds` runs out.
    pub fn set_bookmark_interval(&self, every: Duration) {
        self.shared.store().bookmark_interval = every;
    }

    /// Whether RBAC is enforced; see [`Self::enforce_rbac`].
    pub fn rbac_enforced(&self) -> bool {
        self.shared.rbac_enforced()
    }
}

/// A kubeconfig for the API at `server` (its CA `ca_pem`; `None`: the system's roots) as
/// `user` with a bearer `token`: one cluster, one user, one current context in namespace
/// `default`. A value with anything
/// but letters, digits and `._-:/` is written as a double-quoted string, so any token or user
/// name stays one scalar; the usual ones (JWTs, URLs) stay plain for scripts that grep them.
pub fn kubeconfig_yaml(server: &str, ca_pem: Option<&str>, user: &str, token: &str) -> String {
    use base64::Engine as _;
    let q = |s: &str| {
        let plain = s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-:/".contains(c));
        if plain {
            s.to_owned()
        } else {
            serde_json::Value::String(s.to_owned()).to_string()
        }
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: keyturn-standin\n  cluster:\n    server: {server}\n{ca}contexts:\n- name: keyturn-standin\n  context:\n    cluster: keyturn-standin\n    user: {user}\n    namespace: default\ncurrent-context: keyturn-standin\nusers:\n- name: {user}\n  user:\n    token: {token}\npreferences: {{}}\n",
        server = q(server),
        ca = ca_pem.map_or_else(String::new, |pem| format!(
            "    certificate-authority-data: {}\n",
            base64::engine::general_purpose::STANDARD.encode(pem)
        )),
        user = q(user),
        token = q(token),
    )
}

impl Drop for KubeStandin {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

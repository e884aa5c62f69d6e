//! The HTTP surface: routing, authentication, authorization (deny rules, then RBAC while
//! enforced), discovery and the control endpoints.
//!
//! Resource URLs are parsed by hand rather than with one axum route per shape, so that every
//! failure — an unknown resource, a wrong verb, a bad body — is answered with a `Status`
//! object the way kube-apiserver answers it, never with axum's plain-text rejections.
//!
//! Control endpoints (admin token only), for the standalone binary and scripts:
//!
//! | request | effect |
//! |---|---|
//! | `POST /_standin/deny` `{"verb":"patch","resource":"secrets","user":"…"?}` | add a deny rule |
//! | `GET /_standin/deny` | list the deny rules |
//! | `POST /_standin/allow-all` | clear every deny rule |
//! | `POST /_standin/rbac` `{"enforce":true}` | switch RBAC enforcement for service accounts on or off |
//! | `GET /_standin/rbac` | whether RBAC is enforced: `{"enforce": …}` |
//! | `POST /_standin/token` `{"namespace","name","audiences"?,"ttlSeconds"?}` | mint a service-account JWT: `{"token": …}` |

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::auth::{self, Attributes, Decision, DenyRule, UserInfo};
use super::faults::{self, FailRule};
use super::objects::{self, ObjectRequest, Query, Reply};
use super::rbac;
use super::resources::{self, ResourceKind};
use super::reviews;
use super::status::{ApiError, json_response};
use super::store::Store;
use super::tokens::{TokenAuthority, TokenSpec};

/// How many requests [`Shared::log`] keeps.
const MAX_LOGGED_REQUESTS: usize = 100_000;

/// The real server refuses request bodies over 3 MiB.
const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// What the real server answers aggregated discovery with; kube-rs checks it.
const AGGREGATED_DISCOVERY_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// State shared by every request of one stand-in.
#[derive(Debug)]
pub(crate) struct Shared {
    pub store: Mutex<Store>,
    pub deny: Mutex<Vec<DenyRule>>,
    /// Injected failures (see `faults`), checked after authorization.
    pub fail: Mutex<Vec<FailRule>>,
    /// Whether RBAC decides what non-admin users may do (else everything not denied is
    /// allowed).
    pub rbac_enforced: AtomicBool,
    pub tokens: TokenAuthority,
    pub admin_token: String,
    /// `https://127.0.0.1:PORT`
    pub url: String,
    /// Every authenticated resource request, in order.
    pub log: Mutex<Vec<RecordedRequest>>,
    /// Where each webhook service's port listens: (namespace, name, port) → address
    /// (`KubeStandin::route_service`; the stand-in has no Services or DNS).
    pub routes: Mutex<BTreeMap<(String, String, u16), SocketAddr>>,
}

/// One authenticated request on a resource, as the audit log of a real server would show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `get`, `list`, `create`, `update`, `patch`, `delete`, `deletecollection`, `watch`.
    pub verb: String,
    /// `secrets`, `deployments`, `tokenreviews`, `serviceaccounts/token`, …
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// `kubernetes-admin` or `system:serviceaccount:NS:NAME`.
    pub user: String,
    /// The HTTP status answered.
    pub code: u16,
}

impl Shared {
    /// The store; a panic in another request must not wedge every later one.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every served resource: the built-in ones, then those of CustomResourceDefinitions.
    pub fn kinds(&self) -> Vec<&'static ResourceKind> {
        let mut out = resources::ALL.to_vec();
        out.extend(self.store().custom_kinds.iter().copied());
        out
    }

    /// The resource served at `group`/`version`/`plural`.
    pub fn lookup(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<&'static ResourceKind> {
        ResourceKind::lookup(group, version, plural).or_else(|| {
            self.store()
                .custom_kinds
                .iter()
                .copied()
                .find(|k| k.group == group && k.version == version && k.plural == plural)
        })
    }

    pub fn deny_rules(&self) -> MutexGuard<'_, Vec<DenyRule>> {
        self.deny.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn fail_rules(&self) -> MutexGuard<'_, Vec<FailRule>> {
        self.fail.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The service routes, copied so no lock is held while a webhook is called.
    pub fn routes_snapshot(&self) -> BTreeMap<(String, String, u16), SocketAddr> {
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The labels of namespace `name` (see `namespaces`).
    pub fn namespace_labels(&self, store: &Store, name: &str) -> serde_json::Map<String, Value> {
        super::namespaces::labels(store, name)
    }

    pub fn rbac_enforced(&self) -> bool {
        self.rbac_enforced.load(Ordering::SeqCst)
    }

    pub fn set_rbac_enforced(&self, on: bool) {
        self.rbac_enforced.store(on, Ordering::SeqCst);
    }

    /// The authorizer chain (see `auth`): deny rules, then RBAC while enforced, with the
    /// admin allowed whatever RBAC says.
    pub fn decide(&self, user: &UserInfo, request: &rbac::Request<'_>) -> Decision {
        if let rbac::Request::Resource(a) = request
            && self.deny_rules().iter().any(|r| r.matches(user, a))
        {
            return Decision::no_opinion("");
        }
        if !self.rbac_enforced() {
            return Decision::allow("");
        }
        let decision = rbac::authorize(&self.store(), user, request);
        if user.is_admin() && !decision.allowed {
            return Decision::allow("");
        }
        decision
    }

    /// The uid to put in a token for a service account: its stored object's, else a stable
    /// made-up one.
    pub fn service_account_uid(&self, namespace: &str, name: &str) -> String {
        let stored = self
            .store()
            .get(&resources::SERVICE_ACCOUNTS, namespace, name)
            .and_then(|sa| {
                sa.object
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
        stored.unwrap_or_else(|| self.tokens.remembered_uid(namespace, name))
    }

    /// Mints a token for a service account, bound to a pod when `pod` is given.
    pub fn issue(
        &self,
        namespace: &str,
        name: &str,
        pod: Option<&str>,
        audiences: &[&str],
        ttl: std::time::Duration,
    ) -> String {
        let sa_uid = self.service_account_uid(namespace, name);
        let pod = pod.map(|p| super::tokens::ObjectRef {
            name: p.to_owned(),
            uid: uuid::Uuid::new_v4().to_string(),
        });
        self.tokens
            .issue(&TokenSpec {
                namespace,
                name,
                sa_uid: &sa_uid,
                audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
                ttl,
                pod,
            })
            .0
    }

    /// Authenticates a bearer token for `audiences` (empty: the API's own), as the real
    /// authenticator chain does: the static admin token, then service-account JWTs, whose
    /// service account must still exist with the uid in the token.
    ///
    /// # Errors
    /// The reason, worded for TokenReview's `status.error`.
    pub fn authenticate_token(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<(UserInfo, Vec<String>), String> {
        if auth::constant_time_eq(token.as_bytes(), self.admin_token.as_bytes()) {
            let auds = if audiences.is_empty() {
                self.tokens.api_audiences().to_vec()
            } else {
                audiences.to_vec()
            };
            return Ok((UserInfo::admin(), auds));
        }
        let subject = self.tokens.verify(token, audiences)?;
        let k = &subject.claims.kubernetes;
        let (ns, name, uid) = (&k.namespace, &k.serviceaccount.name, &k.serviceaccount.uid);
        let stored_uid = self
            .store()
            .get(&resources::SERVICE_ACCOUNTS, ns, name)
            .map(|sa| {
                sa.object
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            });
        match stored_uid {
            Some(stored) if stored != *uid => {
                return Err(format!(
                    "[invalid bearer token, service account UID ({stored}) does not match claim ({uid})]"
                ));
            }
            None if !self.tokens.is_remembered(ns, name, uid) => {
                return Err(format!(
                    "[invalid bearer token, serviceaccounts {name:?} not found]"
                ));
            }
            _ => {}
        }
        Ok((UserInfo::from_token(&subject), subject.audiences.clone()))
    }
}

/// The router of one stand-in.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        // Unauthenticated, as `system:public-info-viewer` and
        // `system:service-account-issuer-discovery` make them on real clusters.
        .route("/healthz", get(ok))
        .route("/livez", get(ok))
        .route("/readyz", get(ok))
        .route("/version", get(version_info))
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/openid/v1/jwks", get(jwks))
        .fallback(dispatch)
        .with_state(shared)
}

async fn ok() -> &'static str {
    "ok"
}

async fn version_info() -> Response {
    json_response(StatusCode::OK, &version())
}

async fn openid_configuration(State(shared): State<Arc<Shared>>) -> Response {
    json_response(StatusCode::OK, &shared.tokens.openid_configuration())
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    let body = serde_json::to_vec(&shared.tokens.jwks()).unwrap_or_default();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/jwk-set+json")],
        body,
    )
        .into_response()
}

/// Everything that needs a user: the API, discovery and the control endpoints.
async fn dispatch(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let user = match auth::bearer_token(authorization)
        .ok_or_else(ApiError::unauthorized)
        .and_then(|t| {
            shared
                .authenticate_token(t, &[])
                .map(|(u, _)| u)
                .map_err(|_| ApiError::unauthorized())
        }) {
        Ok(user) => user,
        Err(e) => return e.into_response(),
    };
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => return ApiError::too_large(MAX_BODY_BYTES).into_response(),
    };
    let header_str = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let ctx = RequestContext {
        method: &method,
        query: Query::parse(uri.query()),
        content_type: header_str(header::CONTENT_TYPE),
        user_agent: header_str(header::USER_AGENT),
        aggregated: header_str(header::ACCEPT)
            .is_some_and(|a| a.contains("as=APIGroupDiscoveryList")),
        body: &body,
        user: &user,
        warnings: Mutex::new(Vec::new()),
        shared: Arc::clone(&shared),
        table: super::table::wanted(header_str(header::ACCEPT)),
        stream: Mutex::new(None),
    };
    let mut result = route(&shared, uri.path(), &ctx).await;
    let stream = ctx
        .stream
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    // `kubectl get` asks for a Table (see `table`).
    if method == Method::GET
        && super::table::wanted(header_str(header::ACCEPT))
        && let Ok((_, value)) = &mut result
        && let Some(table) = super::table::convert(value, &shared.kinds())
    {
        *value = table;
    }
    let warnings =
        std::mem::take(&mut *ctx.warnings.lock().unwrap_or_else(PoisonError::into_inner));
    let mut response = match result {
        Ok((code, _)) if stream.is_some() => (
            code,
            [(header::CONTENT_TYPE, "application/json")],
            stream.unwrap_or_else(Body::empty),
        )
            .into_response(),
        Ok((code, value))
            if value.get("kind").and_then(Value::as_str) == Some("APIGroupDiscoveryList") =>
        {
            let body = serde_json::to_vec(&value).unwrap_or_default();
            (
                code,
                [(header::CONTENT_TYPE, AGGREGATED_DISCOVERY_CONTENT_TYPE)],
                body,
            )
                .into_response()
        }
        Ok((code, value)) => json_response(code, &value),
        Err(e) => e.into_response(),
    };
    for w in warnings {
        if let Ok(v) = header::HeaderValue::from_bytes(warning_header(&w).as_bytes()) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    response
}

/// `299 - "TEXT"`, as the real server's warning recorder writes a `Warning` header: control
/// characters dropped, quotes and backslashes escaped.
fn warning_header(text: &str) -> String {
    let mut out = String::from("299 - \"");
    for c in text.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// What a handler needs to know about the request besides its path.
struct RequestContext<'a> {
    method: &'a Method,
    query: Query,
    content_type: Option<&'a str>,
    user_agent: Option<&'a str>,
    /// The client asked for aggregated discovery (`apidiscovery.k8s.io/v2`).
    aggregated: bool,
    body: &'a [u8],
    user: &'a UserInfo,
    /// Warnings for the response's `Warning` headers.
    warnings: Mutex<Vec<String>>,
    /// The stand-in, for what outlives the request (a watch's stream).
    shared: Arc<Shared>,
    /// The client asked for a Table (`kubectl get`).
    table: bool,
    /// A watch's streamed body, answered instead of the reply's JSON.
    stream: Mutex<Option<Body>>,
}

async fn route(shared: &Shared, path: &str, ctx: &RequestContext<'_>) -> Result<Reply, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let discovery = |reply: Option<Value>| -> Result<Reply, ApiError> {
        if *ctx.method != Method::GET {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({})",
                ctx.method
            )));
        }
        reply
            .map(|v| (StatusCode::OK, v))
            .ok_or_else(ApiError::no_route)
    };
    match segs.as_slice() {
        ["_standin", rest @ ..] => control(shared, rest, ctx),
        ["openapi", "v3"] => discovery(Some(super::openapi::index(&shared.kinds()))),
        ["openapi", "v3", rest @ ..] => discovery(super::openapi::for_path(rest, &shared.kinds())),
        ["api"] if ctx.aggregated => discovery(Some(aggregated_discovery(true, &shared.kinds()))),
        ["apis"] if ctx.aggregated => discovery(Some(aggregated_discovery(false, &shared.kinds()))),
        ["api"] => discovery(Some(api_versions(shared))),
        ["apis"] => discovery(Some(api_group_list(&shared.kinds()))),
        ["apis", group] => discovery(api_group(group, &shared.kinds())),
        ["api", "v1"] => discovery(resource_list("", "v1", &shared.kinds())),
        ["apis", group, version] => discovery(resource_list(group, version, &shared.kinds())),
        ["api", "v1", rest @ ..] => resource_route(shared, "", "v1", rest, ctx).await,
        ["apis", group, version, rest @ ..] => {
            resource_route(shared, group, version, rest, ctx).await
        }
        _ => Err(ApiError::no_route()),
    }
}

async fn resource_route(
    shared: &Shared,
    group: &str,
    version: &str,
    rest: &[&str],
    ctx: &RequestContext<'_>,
) -> Result<Reply, ApiError> {
    let (namespace, plural, name, subresource) = match *rest {
        ["namespaces", ns, plural] => (Some(ns), plural, None, None),
        ["namespaces", ns, plural, name] => (Some(ns), plural, Some(name), None),
        ["namespaces", ns, plural, name, sub] => (Some(ns), plural, Some(name), Some(sub)),
        [plural] => (None, plural, None, None),
        [plural, name] => (None, plural, Some(name), None),
        [plural, name, sub] => (None, plural, Some(name), Some(sub)),
        _ => return Err(ApiError::no_route()),
    };
    let kind = shared
        .lookup(group, version, plural)
        .ok_or_else(ApiError::no_route)?;
    if (!kind.namespaced && namespace.is_some())
        || (kind.namespaced && namespace.is_none() && name.is_some())
    {
        return Err(ApiError::no_route());
    }
    let status_subresource = kind.custom.is_some_and(|c| c.status_subresource);
    let subresource_served = |s: &str| {
        (kind == &resources::SERVICE_ACCOUNTS && s == "token")
            || (status_subresource && s == "status")
    };
    if subresource.is_some_and(|s| !subresource_served(s)) {
        return Err(ApiError::no_route());
    }
    let is_status = subresource == Some("status");
    let verb = match (ctx.method.clone(), name.is_some(), subresource.is_some()) {
        (Method::GET, true, false) => "get",
        (Method::GET, true, true) if is_status => "get",
        (Method::PUT, true, true) if is_status => "update",
        (Method::PATCH, true, true) if is_status => "patch",
        (Method::GET, false, _) if ctx.query.flag("watch") => "watch",
        (Method::GET, false, _) => "list",
        (Method::POST, false, _) => "create",
        (Method::POST, true, true) if !is_status => "create",
        (Method::PUT, true, false) => "update",
        (Method::PATCH, true, false) => "patch",
        (Method::DELETE, true, false) => "delete",
        (Method::DELETE, false, _) => "deletecollection",
        (m, _, _) => {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({m})"
            )));
        }
    };
    let hold = faults::hold(
        &shared.fail_rules(),
        &Attributes {
            verb,
            group: kind.group,
            resource: kind.plural,
            subresource,
            namespace,
            name: name.unwrap_or(""),
        },
    );
    let result = serve_resource(shared, kind, verb, namespace, name, subresource, ctx).await;
    let code = match &result {
        Ok((code, _)) => code.as_u16(),
        Err(e) => e.code,
    };
    {
        let mut log = shared.log.lock().unwrap_or_else(PoisonError::into_inner);
        // A long-running binary must not grow without bound; tests never get near this.
        if log.len() >= MAX_LOGGED_REQUESTS {
            log.drain(..MAX_LOGGED_REQUESTS / 10);
        }
        log.push(RecordedRequest {
            verb: verb.to_owned(),
            resource: subresource.map_or_else(|| plural.to_owned(), |s| format!("{plural}/{s}")),
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
            user: ctx.user.username.clone(),
            code,
        });
    }
    // Logged first, so a test counts a held request while its client still waits.
    if let Some(hold) = hold {
        tokio::time::sleep(hold).await;
    }
    result
}

/// Authorizes and serves one resource request.
async fn serve_resource(
    shared: &Shared,
    kind: &'static ResourceKind,
    verb: &str,
    namespace: Option<&str>,
    name: Option<&str>,
    subresource: Option<&str>,
    ctx: &RequestContext<'_>,
) -> Result<Reply, ApiError> {
    // A list or watch whose field selector pins `metadata.name` is authorized as a request
    // for that name, as the real RequestInfoFactory makes it.
    let selected = match verb {
        "list" | "watch" => selected_name(&ctx.query),
        _ => None,
    };
    let attributes = Attributes {
        verb,
        group: kind.group,
        resource: kind.plural,
        subresource,
        namespace,
        name: name.or(selected.as_deref()).unwrap_or(""),
    };
    let decision = shared.decide(ctx.user, &rbac::Request::Resource(&attributes));
    if !decision.allowed {
        return Err(auth::forbidden(ctx.user, &attributes, &decision.reason));
    }
    // An injected failure, after authorization as a real server's would come, and before
    // anything is read or written, so it changes nothing.
    let failure = faults::failure(&shared.fail_rules(), kind, &attributes);
    if let Some(e) = failure {
        return Err(e);
    }
    if !kind.verbs.contains(&verb) {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({})",
            ctx.method
        )));
    }
    if verb == "watch" {
        let body = super::watch::start(
            Arc::clone(&ctx.shared),
            kind,
            namespace,
            &ctx.query,
            ctx.table,
        )?;
        *ctx.stream.lock().unwrap_or_else(PoisonError::into_inner) = Some(body);
        return Ok((StatusCode::OK, Value::Null));
    }
    // `limit` and `continue`, the same for every list (see `paging`): the list handler reads
    // the whole selection at the resourceVersion the page must show, and the page is cut
    // from it.
    let paging = match verb {
        "list" => Some(super::paging::plan(
            &shared.store(),
            kind,
            namespace,
            &ctx.query,
        )?),
        _ => None,
    };
    let req = ObjectRequest {
        kind,
        namespace,
        name,
        subresource,
        query: paging.as_ref().map_or(&ctx.query, |p| &p.query),
        content_type: ctx.content_type,
        user_agent: ctx.user_agent,
        body: ctx.body,
        user: ctx.user,
        warnings: &ctx.warnings,
    };
    let (code, mut body) = serve_stored(shared, verb, &req, ctx).await?;
    if let Some(paging) = paging {
        paging.finish(&mut body);
    }
    Ok((code, body))
}

/// Serves `req` after authorization (a list with the query `paging` gave it).
async fn serve_stored(
    shared: &Shared,
    verb: &str,
    req: &ObjectRequest<'_>,
    ctx: &RequestContext<'_>,
) -> Result<Reply, ApiError> {
    let (kind, namespace, name) = (req.kind, req.namespace, req.name);
    if kind == &resources::NAMESPACES {
        match (verb, name) {
            ("get", Some(n)) => {
                return Ok((StatusCode::OK, super::namespaces::get(&shared.store(), n)));
            }
            ("list" | "watch", _) if !req.query.flag("watch") => {
                return Ok((StatusCode::OK, super::namespaces::list(&shared.store())));
            }
            ("update" | "patch", Some(n)) => {
                super::namespaces::materialize(&mut shared.store(), n);
            }
            _ => {}
        }
    }
    if kind == &resources::CORE_EVENTS {
        return super::events::serve_core(shared, verb, namespace, name, req.query);
    }
    if kind == &resources::TOKEN_REVIEWS {
        return reviews::token_review(shared, ctx.body);
    }
    if kind == &resources::SELF_SUBJECT_ACCESS_REVIEWS {
        return reviews::self_subject_access_review(shared, ctx.user, ctx.body);
    }
    if let (Some(ns), Some(name), Some("token")) = (namespace, name, req.subresource) {
        return reviews::token_request(shared, ns, name, ctx.body);
    }
    match verb {
        "get" => objects::get(shared, req),
        "list" | "watch" => objects::list(shared, req),
        "create" => objects::create(shared, req).await,
        "update" => objects::update(shared, req),
        "patch" => objects::patch(shared, req),
        "delete" => objects::delete(shared, req),
        _ => objects::delete_collection(shared, req),
    }
}

/// `metadata.name=X` (or `==`) in a list's field selector: `RequiresExactMatch`, kept only
/// when X is a valid path segment, as the real server keeps it.
fn selected_name(query: &Query) -> Option<String> {
    query.get("fieldSelector")?.split(',').find_map(|term| {
        let (field, value) = term.split_once("==").or_else(|| term.split_once('='))?;
        (field.trim() == "metadata.name"
            && !value.is_empty()
            && super::validation::path_segment_name_errors(value).is_empty())
        .then(|| value.to_owned())
    })
}

/// `/_standin/…`: see the module docs.
fn control(shared: &Shared, rest: &[&str], ctx: &RequestContext<'_>) -> Result<Reply, ApiError> {
    if !ctx.user.is_admin() {
        return Err(ApiError::forbidden(
            "_standin",
            "",
            "",
            "",
            &format!(
                "User {:?} cannot use the stand-in's control endpoints",
                ctx.user.username
            ),
        ));
    }
    let body = || -> Result<Value, ApiError> {
        serde_json::from_slice(ctx.body)
            .map_err(|e| ApiError::bad_request(format!("invalid control request: {e}")))
    };
    let rules_json = |rules: &[DenyRule]| json!({"rules": rules.iter().map(|r| json!({"verb": r.verb, "resource": r.resource, "user": r.user})).collect::<Vec<_>>()});
    match (ctx.method.clone(), rest) {
        (Method::GET, ["deny"]) => Ok((StatusCode::OK, rules_json(&shared.deny_rules()))),
        (Method::POST, ["deny"]) => {
            let b = body()?;
            let field = |k: &str| b.get(k).and_then(Value::as_str).map(str::to_owned);
            let (Some(verb), Some(resource)) = (field("verb"), field("resource")) else {
                return Err(ApiError::bad_request(
                    "a deny rule needs \"verb\" and \"resource\"",
                ));
            };
            let mut rules = shared.deny_rules();
            rules.push(DenyRule {
                verb,
                resource,
                user: field("user"),
            });
            Ok((StatusCode::OK, rules_json(&rules)))
        }
        (Method::POST, ["allow-all"]) => {
            shared.deny_rules().clear();
            Ok((StatusCode::OK, rules_json(&[])))
        }
        (Method::GET, ["rbac"]) => Ok((StatusCode::OK, json!({"enforce": shared.rbac_enforced()}))),
        (Method::POST, ["rbac"]) => {
            let Some(enforce) = body()?.get("enforce").and_then(Value::as_bool) else {
                return Err(ApiError::bad_request(
                    "an RBAC switch needs \"enforce\": true or false",
                ));
            };
            shared.set_rbac_enforced(enforce);
            Ok((StatusCode::OK, json!({"enforce": enforce})))
        }
        (Method::POST, ["token"]) => {
            let b = body()?;
            let field = |k: &str| b.get(k).and_then(Value::as_str).unwrap_or("");
            let (ns, name) = (field("namespace"), field("name"));
            if ns.is_empty() || name.is_empty() {
                return Err(ApiError::bad_request(
                    "a token needs \"namespace\" and \"name\"",
                ));
            }
            let audiences: Vec<&str> = b
                .get("audiences")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let ttl = b.get("ttlSeconds").and_then(Value::as_u64).unwrap_or(3600);
            let pod = b.get("pod").and_then(Value::as_str);
            let token = shared.issue(
                ns,
                name,
                pod,
                &audiences,
                std::time::Duration::from_secs(ttl),
            );
            Ok((StatusCode::OK, json!({"token": token})))
        }
        _ => Err(ApiError::no_route()),
    }
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "34",
        "emulationMajor": "1",
        "emulationMinor": "34",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "33",
        "gitVersion": "v1.34.0+keyturn-standin",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-08-27T00:00:00Z",
        "goVersion": "go1.24.6",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn api_versions(shared: &Shared) -> Value {
    let address = shared.url.trim_start_matches("https://");
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
    })
}

/// A group with its versions, the first preferred.
fn group_json(group: &str, versions: &[&str]) -> Value {
    let gvs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": gvs, "preferredVersion": gvs.first().cloned().unwrap_or_default()})
}

fn api_group_list(kinds: &[&'static ResourceKind]) -> Value {
    let groups: Vec<Value> = super::crds::group_versions(kinds)
        .into_iter()
        .map(|(g, v)| group_json(g, &v))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn api_group(group: &str, kinds: &[&'static ResourceKind]) -> Option<Value> {
    let (g, v) = super::crds::group_versions(kinds)
        .into_iter()
        .find(|(g, _)| *g == group)?;
    let mut body = group_json(g, &v);
    body["kind"] = json!("APIGroup");
    body["apiVersion"] = json!("v1");
    Some(body)
}

/// The verbs of a custom resource's `/status`.
const STATUS_VERBS: &[&str] = &["get", "patch", "update"];

fn resource_list(group: &str, version: &str, kinds: &[&'static ResourceKind]) -> Option<Value> {
    let mut resources: Vec<Value> = Vec::new();
    for k in kinds
        .iter()
        .filter(|k| k.group == group && k.version == version)
    {
        let mut r = json!({
            "name": k.plural,
            "singularName": k.singular,
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": k.verbs,
        });
        if !k.short_names.is_empty() {
            r["shortNames"] = json!(k.short_names);
        }
        if let Some(custom) = k.custom.filter(|c| !c.categories.is_empty()) {
            r["categories"] = json!(custom.categories);
        }
        resources.push(r);
        if k.custom.is_some_and(|c| c.status_subresource) {
            resources.push(json!({
                "name": format!("{}/status", k.plural),
                "singularName": "",
                "namespaced": k.namespaced,
                "kind": k.kind,
                "verbs": STATUS_VERBS,
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    if group.is_empty() {
        resources.push(json!({
            "name": "serviceaccounts/token",
            "singularName": "",
            "namespaced": true,
            "group": "authentication.k8s.io",
            "version": "v1",
            "kind": "TokenRequest",
            "verbs": ["create"],
        }));
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

/// `apidiscovery.k8s.io/v2` for `/api` (`core`) or `/apis`, which kube-rs'
/// `Discovery::run_aggregated` asks for.
fn aggregated_discovery(core: bool, kinds: &[&'static ResourceKind]) -> Value {
    let groups: Vec<(&str, Vec<&str>)> = if core {
        vec![("", vec!["v1"])]
    } else {
        super::crds::group_versions(kinds)
    };
    let items: Vec<Value> = groups
        .into_iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions.into_iter().map(|version| {
            let resources: Vec<Value> = kinds
                .iter()
                .filter(|k| k.group == group && k.version == version)
                .map(|k| {
                    let mut r = json!({
                        "resource": k.plural,
                        "responseKind": {"group": k.group, "version": k.version, "kind": k.kind},
                        "scope": if k.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": k.singular,
                        "verbs": k.verbs,
                    });
                    if !k.short_names.is_empty() {
                        r["shortNames"] = json!(k.short_names);
                    }
                    if let Some(custom) = k.custom {
                        if !custom.categories.is_empty() {
                            r["categories"] = json!(custom.categories);
                        }
                        if custom.status_subresource {
                            r["subresources"] = json!([{
                                "subresource": "status",
                                "responseKind": {"group": k.group, "version": k.version, "kind": k.kind},
                                "verbs": STATUS_VERBS,
                            }]);
                        }
                    }
                    if **k == resources::SERVICE_ACCOUNTS {
                        r["subresources"] = json!([{
                            "subresource": "token",
                            "responseKind": {"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"},
                            "verbs": ["create"],
                        }]);
                    }
                    r
                })
                .collect();
            json!({"version": version, "resources": resources, "freshness": "Current"})
            }).collect();
            json!({"metadata": {"name": group}, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

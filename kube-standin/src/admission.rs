//! Mutating admission webhooks on pod CREATE, as kube-apiserver's `MutatingAdmissionWebhook`
//! plugin calls them.
//!
//! A pod create runs: decode and defaults → the in-tree plugins (`pods::admit_builtin`) →
//! every matching webhook of every MutatingWebhookConfiguration, configurations in name order
//! and webhooks in their order → name generation, validation and storage. Nothing holds the
//! store's lock while a webhook is called: the configurations and namespace labels are copied
//! out first.
//!
//! A webhook is called when all of these hold, re-checked before each call on the object as
//! earlier webhooks left it:
//!
//! - a rule matches: operation `CREATE` or `*`; API group `""` or `*`; version `v1` or `*`;
//!   resource `pods`, `pods/*`, `*` or `*/*` (`pods/*` also matches the pod itself, as on the
//!   real server); scope `*` or `Namespaced`. `matchPolicy` makes no difference: pods exist in
//!   `v1` only, so `Exact` and `Equivalent` match the same requests;
//! - `namespaceSelector` matches the namespace's labels (every namespace has
//!   `kubernetes.io/metadata.name`; more can be set with `kubectl label namespace` or
//!   `KubeStandin::label_namespace`);
//! - `objectSelector` matches the pod's labels.
//!
//! The call is an HTTPS POST of an AdmissionReview in the first of the webhook's
//! `admissionReviewVersions` this server speaks (`v1`, `v1beta1`), to `clientConfig.url` or to
//! `https://NAME.NAMESPACE.svc:PORT/PATH` for a `service`. The server certificate must chain to
//! `clientConfig.caBundle` (or, without one, the system's roots) and name that host. The
//! stand-in has no Services or DNS, so a service is reached where
//! `KubeStandin::route_service` says its port listens; an unrouted service is a failed call.
//! `?timeout=Ns` is sent, and the call fails after `timeoutSeconds`.
//!
//! What comes back, with the real wording:
//!
//! - a failed call, a non-2xx answer or an invalid response (wrong `uid`, a patch without
//!   `patchType: JSONPatch`, an undecodable patch) is a failure: with `failurePolicy: Fail`
//!   the create answers 500 `Internal error occurred: failed calling webhook "NAME": …`; with
//!   `Ignore` the webhook is skipped;
//! - `allowed: false` fails the create with the webhook's `result`: `admission webhook "NAME"
//!   denied the request: MESSAGE`, its code when ≥ 400 (else 400), its reason when it is one
//!   of the API's `StatusReason`s;
//! - a JSON patch is applied; one that does not apply, or leaves something that is not a Pod,
//!   fails the create with a 500 whatever the failure policy (the real dispatcher returns
//!   those as internal errors, not as call failures). The defaults run again after it;
//! - `warnings` reach the client as `Warning: 299 - "…"` headers, as kubectl prints them.
//!
//! `reinvocationPolicy: IfNeeded`: when a webhook changed the object, the `IfNeeded` webhooks
//! called before it are called once more after the first pass (if they still match).
//! A `dryRun` create is refused (400 `admission webhook "NAME" does not support dry run`) when a
//! matching webhook's `sideEffects` is not `None` or `NoneOnDryRun`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::auth::UserInfo;
use super::objects::ObjectRequest;
use super::pods;
use super::resources;
use super::server::Shared;
use super::status::{ApiError, Cause, Details};
use super::webhooks::ADMISSION_REVIEW_VERSIONS;

/// One webhook of one configuration, as copied out of the store.
#[derive(Debug, Clone)]
struct Hook {
    configuration: String,
    index: usize,
    spec: Value,
}

impl Hook {
    fn name(&self) -> &str {
        self.spec.get("name").and_then(Value::as_str).unwrap_or("")
    }

    fn str_field(&self, key: &str) -> &str {
        self.spec.get(key).and_then(Value::as_str).unwrap_or("")
    }

    fn id(&self) -> (String, usize) {
        (self.configuration.clone(), self.index)
    }
}

/// Why a call did not produce a usable answer (`ErrCallingWebhook`): the failure policy
/// decides. Holds the reason as the real server words it after `failed calling webhook "X": `.
#[derive(Debug)]
struct CallFailure(String);

/// What one call can end in besides success.
#[derive(Debug)]
enum HookError {
    /// Subject to `failurePolicy`.
    Call(CallFailure),
    /// Fails the request whatever the policy (denials, patches that do not apply).
    Reject(ApiError),
}

/// The request facts every review carries.
struct ReviewContext<'a> {
    namespace: &'a str,
    user: &'a UserInfo,
    dry_run: bool,
    options: Value,
}

/// Runs the mutating webhooks over `obj` (a pod being created in `req`'s namespace).
///
/// # Errors
/// A denial, a failed call under `failurePolicy: Fail`, or a patch that breaks the pod.
pub(crate) async fn admit_pod_create(
    shared: &Shared,
    req: &ObjectRequest<'_>,
    obj: &mut Value,
) -> Result<(), ApiError> {
    let namespace = req.namespace.unwrap_or("");
    let (hooks, namespace_labels) = {
        let store = shared.store();
        let mut hooks = Vec::new();
        for config in store.list(&resources::MUTATING_WEBHOOK_CONFIGURATIONS, None) {
            let name = config
                .object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            for (index, spec) in config
                .object
                .get("webhooks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                hooks.push(Hook {
                    configuration: name.clone(),
                    index,
                    spec: spec.clone(),
                });
            }
        }
        (hooks, shared.namespace_labels(&store, namespace))
    };
    if hooks.is_empty() {
        return Ok(());
    }
    // The object as the real server serializes it for a webhook: Go writes the zero
    // `creationTimestamp` as null and the empty status as `{}`, and patches are computed
    // against that form.
    if let Some(map) = obj.as_object_mut() {
        map.entry("status").or_insert_with(|| json!({}));
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.entry("creationTimestamp").or_insert(Value::Null);
        }
    }
    let mut options = json!({"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"});
    if req.query.get("dryRun").is_some() {
        options["dryRun"] = json!(["All"]);
    }
    for k in ["fieldManager", "fieldValidation"] {
        if let Some(v) = req.query.get(k) {
            options[k] = json!(v);
        }
    }
    let ctx = ReviewContext {
        namespace,
        user: req.user,
        dry_run: req.query.get("dryRun") == Some("All"),
        options,
    };
    let routes = shared.routes_snapshot();

    let mut previously_invoked: HashSet<(String, usize)> = HashSet::new();
    let mut reinvoke: HashSet<(String, usize)> = HashSet::new();
    let mut should_reinvoke = false;
    for round in 0..2 {
        if round == 1 && !should_reinvoke {
            break;
        }
        for hook in &hooks {
            if !matches(&hook.spec, &namespace_labels, obj) {
                continue;
            }
            if round == 1 && !reinvoke.contains(&hook.id()) {
                continue;
            }
            let result = call(hook, &ctx, &routes, obj, req).await;
            let (changed, failure) = match result {
                Ok(changed) => (changed, None),
                Err(e) => (false, Some(e)),
            };
            if changed {
                reinvoke.extend(previously_invoked.iter().cloned());
                should_reinvoke = true;
            }
            if hook.str_field("reinvocationPolicy") == "IfNeeded" {
                previously_invoked.insert(hook.id());
            }
            match failure {
                None => {}
                Some(HookError::Call(CallFailure(reason))) => {
                    let message = format!("failed calling webhook {:?}: {reason}", hook.name());
                    if hook.str_field("failurePolicy") == "Ignore" {
                        tracing::warn!(webhook = hook.name(), %message, "Kubernetes stand-in: failing open");
                        continue;
                    }
                    return Err(internal_error(&message));
                }
                Some(HookError::Reject(e)) => return Err(e),
            }
        }
    }
    Ok(())
}

/// `apierrors.NewInternalError(err)`.
fn internal_error(message: &str) -> ApiError {
    let mut e = ApiError::internal(format!("Internal error occurred: {message}"));
    e.details = Some(Box::new(Details {
        causes: vec![Cause {
            reason: String::new(),
            message: message.to_owned(),
            field: String::new(),
        }],
        ..Details::default()
    }));
    e
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Whether `hook` wants a pod CREATE in a namespace with `namespace_labels` (see the module
/// docs).
fn matches(hook: &Value, namespace_labels: &Map<String, Value>, obj: &Value) -> bool {
    let rule_matches = |rule: &Value| {
        let has = |key: &str, want: &str| {
            strings(rule.get(key))
                .iter()
                .any(|v| *v == "*" || *v == want)
        };
        let resource = strings(rule.get("resources")).iter().any(|r| {
            let (res, sub) = r.split_once('/').unwrap_or((r, ""));
            (res == "*" || res == "pods") && (sub == "*" || sub.is_empty())
        });
        let scope = rule.get("scope").and_then(Value::as_str).unwrap_or("*");
        has("operations", "CREATE")
            && has("apiGroups", "")
            && has("apiVersions", "v1")
            && resource
            && (scope == "*" || scope == "Namespaced")
    };
    let any_rule = hook
        .get("rules")
        .and_then(Value::as_array)
        .is_some_and(|rules| rules.iter().any(rule_matches));
    let pod_labels = obj
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    any_rule
        && selector_matches(hook.get("namespaceSelector"), namespace_labels)
        && selector_matches(hook.get("objectSelector"), &pod_labels)
}

/// `metav1.LabelSelectorAsSelector(...).Matches(labels)`; an absent or empty selector
/// matches everything.
pub(crate) fn selector_matches(selector: Option<&Value>, labels: &Map<String, Value>) -> bool {
    let Some(selector) = selector.filter(|s| s.is_object()) else {
        return true;
    };
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let match_labels = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|m| m.iter().all(|(k, v)| label(k) == v.as_str()));
    let expressions = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .is_none_or(|exprs| {
            exprs.iter().all(|e| {
                let key = e.get("key").and_then(Value::as_str).unwrap_or("");
                let values = strings(e.get("values"));
                match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                    "In" => label(key).is_some_and(|v| values.contains(&v)),
                    "NotIn" => label(key).is_none_or(|v| !values.contains(&v)),
                    "Exists" => label(key).is_some(),
                    "DoesNotExist" => label(key).is_none(),
                    _ => false,
                }
            })
        });
    match_labels && expressions
}

/// Where a webhook is reached: the URL the real server would post to (for messages and the
/// request line) and, for a routed service, the loopback address its DNS name stands for.
struct Target {
    url: String,
    /// What the request is sent to: `url`, or for a routed service the same host name at the
    /// routed port (reqwest takes a URL's port over a resolved address's).
    request_url: String,
    host: String,
    resolve: Option<SocketAddr>,
}

fn target(
    hook: &Hook,
    routes: &BTreeMap<(String, String, u16), SocketAddr>,
    timeout: u64,
) -> Result<Target, CallFailure> {
    let cc = hook.spec.get("clientConfig").cloned().unwrap_or_default();
    if let Some(url) = cc.get("url").and_then(Value::as_str) {
        let host = url
            .split_once("://")
            .map_or("", |(_, rest)| rest)
            .split(['/', '?', '#'])
            .next()
            .unwrap_or("")
            .to_owned();
        let url = format!("{url}?timeout={timeout}s");
        return Ok(Target {
            request_url: url.clone(),
            url,
            host,
            resolve: None,
        });
    }
    let service = cc.get("service").cloned().unwrap_or_default();
    let field = |k: &str| service.get(k).and_then(Value::as_str).unwrap_or("");
    let (name, namespace) = (field("name"), field("namespace"));
    let port = service
        .get("port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(443);
    let path = field("path");
    let host = format!("{name}.{namespace}.svc");
    let url = format!("https://{host}:{port}{path}?timeout={timeout}s");
    match routes.get(&(namespace.to_owned(), name.to_owned(), port)) {
        Some(addr) => Ok(Target {
            request_url: format!("https://{host}:{}{path}?timeout={timeout}s", addr.port()),
            url,
            host,
            resolve: Some(*addr),
        }),
        None => Err(CallFailure(format!(
            "failed to call webhook: Post {url:?}: service {name:?} not found"
        ))),
    }
}

/// Go's wording for why a POST failed, from reqwest's error chain.
fn go_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "context deadline exceeded".to_owned();
    }
    let mut chain = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        chain.push_str(&format!("{s:?} "));
        source = s.source();
    }
    if chain.contains("UnknownIssuer") || chain.contains("BadSignature") {
        "tls: failed to verify certificate: x509: certificate signed by unknown authority".into()
    } else if chain.contains("NotValidForName") {
        "tls: failed to verify certificate: x509: certificate is not valid for the requested name"
            .into()
    } else if chain.contains("Expired") {
        "tls: failed to verify certificate: x509: certificate has expired or is not yet valid"
            .into()
    } else if chain.contains("ConnectionRefused") || chain.contains("onnection refused") {
        "connect: connection refused".into()
    } else {
        e.to_string()
    }
}

/// client-go's message for a non-2xx answer that is not a `Status`.
fn status_reason(code: u16, body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body).chars().take(1024).collect();
    match code {
        400 => "the server rejected our request for an unknown reason".into(),
        401 => "Unauthorized".into(),
        403 => format!("forbidden: {text}"),
        404 => "the server could not find the requested resource".into(),
        503 => "the server is currently unable to handle the request".into(),
        504 => "the server was unable to return a response in the time allotted, but may still be processing the request".into(),
        _ => format!("an error on the server ({text:?}) has prevented the request from succeeding"),
    }
}

/// The reasons of `metav1.StatusReason`, for a denial's `result.reason`.
fn known_reason(reason: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "AlreadyExists",
        "Conflict",
        "Gone",
        "Invalid",
        "ServerTimeout",
        "StoreReadError",
        "Timeout",
        "TooManyRequests",
        "BadRequest",
        "MethodNotAllowed",
        "NotAcceptable",
        "RequestEntityTooLarge",
        "UnsupportedMediaType",
        "InternalError",
        "Expired",
        "ServiceUnavailable",
    ];
    KNOWN.iter().copied().find(|k| *k == reason).unwrap_or("")
}

/// `webhookerrors.ToStatusErr`: a denial as the client sees it.
fn denial(hook_name: &str, result: Option<&Value>) -> ApiError {
    let result = result.cloned().unwrap_or_else(|| json!({}));
    let message = result.get("message").and_then(Value::as_str).unwrap_or("");
    let reason = result.get("reason").and_then(Value::as_str).unwrap_or("");
    let denied_by = format!("admission webhook {hook_name:?} denied the request");
    let text = if !message.is_empty() {
        format!("{denied_by}: {message}")
    } else if !reason.is_empty() {
        format!("{denied_by}: {reason}")
    } else {
        format!("{denied_by} without explanation")
    };
    let code = result
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| *c >= 400 && *c <= 599)
        .unwrap_or(400);
    let mut e = ApiError::with_reason(code, known_reason(reason), text);
    if let Some(details) = result.get("details")
        && let Ok(d) = serde_json::from_value::<DetailsIn>(details.clone())
    {
        e.details = Some(Box::new(Details {
            name: d.name,
            group: d.group,
            kind: d.kind,
            uid: d.uid,
            causes: d
                .causes
                .into_iter()
                .map(|c| Cause {
                    reason: c.reason,
                    message: c.message,
                    field: c.field,
                })
                .collect(),
        }));
    }
    e
}

/// `Status.details` as a webhook may send it.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct DetailsIn {
    name: String,
    group: String,
    kind: String,
    uid: String,
    causes: Vec<CauseIn>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct CauseIn {
    reason: String,
    message: String,
    field: String,
}

/// Calls one webhook and applies its answer to `obj`; `Ok(true)` when the object changed.
async fn call(
    hook: &Hook,
    ctx: &ReviewContext<'_>,
    routes: &BTreeMap<(String, String, u16), SocketAddr>,
    obj: &mut Value,
    req: &ObjectRequest<'_>,
) -> Result<bool, HookError> {
    let name = hook.name().to_owned();
    if ctx.dry_run && !["None", "NoneOnDryRun"].contains(&hook.str_field("sideEffects")) {
        return Err(HookError::Reject(ApiError::bad_request(format!(
            "admission webhook {name:?} does not support dry run"
        ))));
    }
    let version = strings(hook.spec.get("admissionReviewVersions"))
        .into_iter()
        .find(|v| ADMISSION_REVIEW_VERSIONS.contains(v))
        .unwrap_or("v1")
        .to_owned();
    let timeout = hook
        .spec
        .get("timeoutSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(10);
    let target = target(hook, routes, timeout).map_err(HookError::Call)?;
    let uid = uuid::Uuid::new_v4().to_string();
    let gvk = json!({"group": "", "version": "v1", "kind": "Pod"});
    let gvr = json!({"group": "", "version": "v1", "resource": "pods"});
    let mut user_info = json!({"username": ctx.user.username, "groups": ctx.user.groups});
    if !ctx.user.uid.is_empty() {
        user_info["uid"] = json!(ctx.user.uid);
    }
    if !ctx.user.extra.is_empty() {
        user_info["extra"] = json!(ctx.user.extra);
    }
    let mut request = json!({
        "uid": uid,
        "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
        "namespace": ctx.namespace,
        "operation": "CREATE",
        "userInfo": user_info,
        "object": obj,
        "oldObject": null,
        "dryRun": ctx.dry_run,
        "options": ctx.options,
    });
    let pod_name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !pod_name.is_empty() {
        request["name"] = json!(pod_name);
    }
    let review = json!({
        "kind": "AdmissionReview",
        "apiVersion": format!("admission.k8s.io/{version}"),
        "request": request,
    });

    let failed = |reason: String| {
        HookError::Call(CallFailure(format!(
            "failed to call webhook: Post {:?}: {reason}",
            target.url
        )))
    };
    let client = client_for(hook, &target).map_err(|e| failed(e.to_string()))?;
    let response = client
        .post(&target.request_url)
        .timeout(Duration::from_secs(timeout))
        .header("content-type", "application/json")
        .header("accept", "application/json, */*")
        .body(serde_json::to_vec(&review).unwrap_or_default())
        .send()
        .await
        .map_err(|e| failed(go_reason(&e)))?;
    let code = response.status().as_u16();
    let body = response.bytes().await.map_err(|e| failed(go_reason(&e)))?;
    if !(200..300).contains(&code) {
        return Err(failed(status_reason(code, &body)));
    }
    let answer: Value = serde_json::from_slice(&body)
        .map_err(|e| failed(format!("couldn't get version/kind; json parse error: {e}")))?;
    let invalid = |why: String| {
        HookError::Call(CallFailure(format!(
            "received invalid webhook response: {why}"
        )))
    };
    let Some(response) = answer.get("response").filter(|r| r.is_object()) else {
        return Err(invalid("webhook response was absent".into()));
    };
    let got_uid = response.get("uid").and_then(Value::as_str).unwrap_or("");
    if got_uid != uid {
        return Err(invalid(format!(
            "expected response.uid={uid:?}, got {got_uid:?}"
        )));
    }
    if version == "v1" {
        let got = format!(
            "{}, Kind={}",
            answer
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or(""),
            answer.get("kind").and_then(Value::as_str).unwrap_or("")
        );
        if got != "admission.k8s.io/v1, Kind=AdmissionReview" {
            return Err(invalid(format!(
                "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got {got}"
            )));
        }
    }
    let patch_b64 = response.get("patch").and_then(Value::as_str).unwrap_or("");
    let patch_type = response
        .get("patchType")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !patch_b64.is_empty() {
        if patch_type.is_empty() && version == "v1" {
            return Err(invalid(
                "webhook returned response.patch but not response.patchType".into(),
            ));
        }
        if !patch_type.is_empty() && patch_type != "JSONPatch" {
            return Err(invalid(format!(
                "webhook returned invalid response.patchType of {patch_type:?}"
            )));
        }
    }
    for w in strings(response.get("warnings")) {
        req.add_warning(w);
    }
    // `response.status` on the wire (the Go field is `Result`, its JSON name `status`).
    if response.get("allowed").and_then(Value::as_bool) != Some(true) {
        return Err(HookError::Reject(denial(&name, response.get("status"))));
    }
    if patch_b64.is_empty() {
        return Ok(false);
    }
    let patch = super::secrets::go_base64_decode(patch_b64)
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            serde_json::from_slice::<json_patch::Patch>(&bytes).map_err(|e| e.to_string())
        })
        .map_err(|e| {
            HookError::Call(CallFailure(format!(
                "received undecodable patch in webhook response: {e}"
            )))
        })?;
    if patch.0.is_empty() {
        return Ok(false);
    }
    let mut patched = obj.clone();
    json_patch::patch(&mut patched, &patch)
        .map_err(|e| HookError::Reject(internal_error(&e.to_string())))?;
    serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(patched.clone()).map_err(|e| {
        HookError::Reject(internal_error(&format!(
            "couldn't decode the patched object: {e}"
        )))
    })?;
    let changed = patched != *obj;
    pods::apply_defaults(&mut patched);
    *obj = patched;
    Ok(changed)
}

/// What a webhook client is built from: its caBundle, host name and routed address.
type ClientKey = (String, String, Option<SocketAddr>);

/// The HTTPS client for a webhook: trusting its `caBundle` only (else the system's roots),
/// reaching a service's host name at its routed loopback address. Clients are kept per
/// configuration, as kube-apiserver's webhook client manager keeps them, so calls reuse their
/// connections instead of paying a TLS handshake each; a changed `caBundle` or route is a
/// different key, so it gets a new client.
fn client_for(hook: &Hook, target: &Target) -> Result<reqwest::Client, String> {
    static CLIENTS: OnceLock<Mutex<HashMap<ClientKey, reqwest::Client>>> = OnceLock::new();
    let bundle = hook
        .spec
        .pointer("/clientConfig/caBundle")
        .and_then(Value::as_str)
        .filter(|b| !b.is_empty());
    let key = (
        bundle.unwrap_or("").to_owned(),
        target.host.clone(),
        target.resolve,
    );
    let clients = CLIENTS.get_or_init(Mutex::default);
    if let Some(c) = clients
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
    {
        return Ok(c.clone());
    }
    let mut builder = reqwest::Client::builder().no_proxy();
    if let Some(bundle) = bundle {
        let pem = super::secrets::go_base64_decode(bundle)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|_| "x509: the caBundle holds no valid certificate".to_owned())?;
        builder = builder.tls_certs_only(certs);
    }
    if let Some(addr) = target.resolve {
        builder = builder.resolve(&target.host, addr);
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let mut map = clients.lock().unwrap_or_else(PoisonError::into_inner);
    // Bounded: every test's stand-in has its own CA and ports, so keys do not repeat.
    if map.len() >= 64 {
        map.clear();
    }
    map.insert(key, client.clone());
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(rules: Value) -> Value {
        json!({"name": "a.b.c", "rules": rules, "namespaceSelector": {}, "objectSelector": {}})
    }

    #[test]
    fn rules_match_pods_as_the_real_matcher_does() {
        let labels = Map::new();
        let pod = json!({"metadata": {}});
        let rule = |resources: Value, scope: &str| {
            hook(
                json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": resources, "scope": scope}]),
            )
        };
        assert!(matches(&rule(json!(["pods"]), "*"), &labels, &pod));
        assert!(matches(
            &rule(json!(["pods/*"]), "Namespaced"),
            &labels,
            &pod
        ));
        assert!(matches(&rule(json!(["*"]), "*"), &labels, &pod));
        assert!(!matches(&rule(json!(["pods/exec"]), "*"), &labels, &pod));
        assert!(!matches(&rule(json!(["*/status"]), "*"), &labels, &pod));
        assert!(!matches(&rule(json!(["pods"]), "Cluster"), &labels, &pod));
        assert!(!matches(&rule(json!(["secrets"]), "*"), &labels, &pod));
    }

    #[test]
    fn selectors_use_match_labels_and_expressions() {
        let mut labels = Map::new();
        labels.insert("team".into(), json!("a"));
        let sel = |s: Value| selector_matches(Some(&s), &labels);
        assert!(sel(json!({})));
        assert!(sel(json!({"matchLabels": {"team": "a"}})));
        assert!(!sel(json!({"matchLabels": {"team": "b"}})));
        assert!(sel(
            json!({"matchExpressions": [{"key": "skip", "operator": "DoesNotExist"}]})
        ));
        assert!(!sel(
            json!({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]})
        ));
    }

    #[test]
    fn a_denial_is_worded_and_coded_as_to_status_err_does() {
        let e = denial(
            "inject.keyturn.dev",
            Some(&json!({"message": "no", "code": 403, "reason": "Forbidden"})),
        );
        assert_eq!((e.code, e.reason), (403, "Forbidden"));
        assert_eq!(
            e.message,
            "admission webhook \"inject.keyturn.dev\" denied the request: no"
        );
        let e = denial("x.y.z", None);
        assert_eq!(e.code, 400);
        assert_eq!(
            e.message,
            "admission webhook \"x.y.z\" denied the request without explanation"
        );
    }
}

//! AdmissionReview in and out.
//!
//! The API server sends `admission.k8s.io/v1` (or `v1beta1`, for a configuration that lists
//! it first) and requires the answer in the same version, with the request's `uid`. Anything
//! that is not an AdmissionReview — wrong content type, empty body, invalid JSON, no
//! `request.uid` — is a 400 with a short reason, and the server goes on serving: a scanner or
//! a misrouted probe must not look like a pod admission (and is counted as `malformed`).
//!
//! Only pod CREATE is decided; any other request that reaches `/mutate` (a configuration with
//! broader rules) is allowed unchanged. A dry run gets the same answer but no Event: the
//! chart's configuration declares `sideEffects: NoneOnDryRun`.

use base64::Engine as _;
use k8s_openapi::api::core::v1::ObjectReference;
use serde_json::{Value, json};

use super::inject::{Decision, Injector};

/// How one request ended, for the metric and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A patch was returned.
    Injected,
    /// Allowed unchanged.
    Skipped,
    /// Refused with a message.
    Denied,
    /// Not an AdmissionReview (answered 400).
    Malformed,
}

impl Outcome {
    /// Every outcome, for counters that start at 0.
    pub const ALL: [Outcome; 4] = [
        Outcome::Injected,
        Outcome::Skipped,
        Outcome::Denied,
        Outcome::Malformed,
    ];

    /// The metric label.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Skipped => "skipped",
            Self::Denied => "denied",
            Self::Malformed => "malformed",
        }
    }
}

/// An Event to record about an admission, on the pod's owner.
#[derive(Debug, Clone)]
pub struct Notice {
    /// `Injected` or `InjectionDenied`.
    pub reason: &'static str,
    /// Normal for Injected, Warning for InjectionDenied.
    pub warning: bool,
    /// The Event's note.
    pub message: String,
    /// The object the Event is about (the pod's first owner reference, in its namespace).
    pub regarding: ObjectReference,
}

/// The answer to one request to `/mutate`.
#[derive(Debug)]
pub struct Reply {
    /// 200, or 400 for a request that is not an AdmissionReview.
    pub status: u16,
    /// The response body (an AdmissionReview JSON, or a short text for a 400).
    pub body: Vec<u8>,
    /// How it ended.
    pub outcome: Outcome,
    /// The Event to record, if any.
    pub notice: Option<Notice>,
}

/// The AdmissionReview versions keyturn answers.
const VERSIONS: [&str; 2] = ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"];

fn malformed(why: &str) -> Reply {
    Reply {
        status: 400,
        body: format!("{why}\n").into_bytes(),
        outcome: Outcome::Malformed,
        notice: None,
    }
}

/// The pod's first owner, which Events are recorded on: at admission the pod has no uid
/// yet, so its controller is the object `kubectl describe` can show them on.
fn owner(namespace: &str, pod: &Value) -> Option<ObjectReference> {
    let o = pod.pointer("/metadata/ownerReferences/0")?;
    let s = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned);
    Some(ObjectReference {
        api_version: s("apiVersion"),
        kind: s("kind"),
        name: s("name"),
        uid: s("uid"),
        namespace: Some(namespace.to_owned()),
        ..ObjectReference::default()
    })
}

/// What a log line or Event calls the pod: its name, else its generateName prefix.
fn pod_name(pod: &Value) -> String {
    let m = |k: &str| {
        pod.pointer(&format!("/metadata/{k}"))
            .and_then(Value::as_str)
    };
    m("name")
        .map(str::to_owned)
        .or_else(|| m("generateName").map(|g| format!("{g}*")))
        .unwrap_or_default()
}

/// Answers one request: `content_type` is the request's header, `body` its bytes.
#[must_use]
pub fn review(injector: &Injector, content_type: Option<&str>, body: &[u8]) -> Reply {
    let json_type = content_type
        .and_then(|c| c.split(';').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return malformed("the content type must be application/json");
    }
    if body.is_empty() {
        return malformed("the body is empty; an AdmissionReview was expected");
    }
    let Ok(doc) = serde_json::from_slice::<Value>(body) else {
        return malformed("the body is not JSON");
    };
    let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if !VERSIONS.contains(&api_version)
        || doc.get("kind").and_then(Value::as_str) != Some("AdmissionReview")
    {
        return malformed("the body is not an admission.k8s.io/v1 or v1beta1 AdmissionReview");
    }
    let request = doc.get("request").unwrap_or(&Value::Null);
    let Some(uid) = request.get("uid").and_then(Value::as_str) else {
        return malformed("the AdmissionReview has no request.uid");
    };
    let s = |p: &str| request.pointer(p).and_then(Value::as_str).unwrap_or("");
    let is_pod_create = s("/kind/group").is_empty()
        && s("/kind/kind") == "Pod"
        && s("/operation") == "CREATE"
        && s("/subResource").is_empty();
    let namespace = s("/namespace");
    let dry_run = request
        .get("dryRun")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let pod = request.get("object").unwrap_or(&Value::Null);

    let decision = if is_pod_create && pod.is_object() {
        injector.decide(namespace, pod)
    } else {
        Decision::Skip {
            reason: "not a pod create",
        }
    };
    let name = pod_name(pod);
    let regarding = if dry_run { None } else { owner(namespace, pod) };
    let (response, outcome, notice) = match decision {
        Decision::Skip { reason } => {
            tracing::debug!(namespace, pod = %name, reason, "admitted unchanged");
            (json!({"uid": uid, "allowed": true}), Outcome::Skipped, None)
        }
        Decision::Inject { patch, warnings } => {
            let patch = match serde_json::to_vec(&patch) {
                Ok(p) => p,
                Err(e) => {
                    // Serialising owned JSON values does not fail; if it ever does, refuse
                    // rather than admit a pod without its secrets.
                    tracing::error!(error = %e, "cannot serialise the patch");
                    return malformed("internal error");
                }
            };
            tracing::info!(namespace, pod = %name, warnings = warnings.len(), "injected keyturn-init");
            let mut r = json!({
                "uid": uid,
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD.encode(patch),
            });
            if !warnings.is_empty() {
                r["warnings"] = json!(warnings);
            }
            let notice = regarding.map(|regarding| Notice {
                reason: "Injected",
                warning: false,
                message: format!("keyturn-init injected into pod {name}"),
                regarding,
            });
            (r, Outcome::Injected, notice)
        }
        Decision::Deny { message } => {
            tracing::warn!(namespace, pod = %name, reason = %message, "refused a pod");
            let notice = regarding.map(|regarding| Notice {
                reason: "InjectionDenied",
                warning: true,
                message: format!("pod {name}: {message}"),
                regarding,
            });
            (
                json!({
                    "uid": uid,
                    "allowed": false,
                    "status": {"status": "Failure", "code": 400, "reason": "BadRequest", "message": message},
                }),
                Outcome::Denied,
                notice,
            )
        }
    };
    let body = json!({"apiVersion": api_version, "kind": "AdmissionReview", "response": response});
    Reply {
        status: 200,
        body: serde_json::to_vec(&body).unwrap_or_default(),
        outcome,
        notice,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::inject::InjectConfig;

    fn injector() -> Injector {
        Injector {
            config: InjectConfig {
                init_image: "keyturn-init:1".into(),
                own_namespace: "keyturn".into(),
                ..InjectConfig::default()
            },
        }
    }

    fn request(version: &str, annotations: Value, dry_run: bool) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": version,
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "orders",
                "operation": "CREATE",
                "dryRun": dry_run,
                "object": {
                    "metadata": {
                        "generateName": "orders-7d9f-",
                        "annotations": annotations,
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "orders-7d9f", "uid": "rs-uid", "controller": true}]
                    },
                    "spec": {"containers": [{"name": "app", "image": "orders:1"}]}
                }
            }
        }))
        .unwrap()
    }

    fn answer(r: &Reply) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn an_injection_answers_in_the_version_asked_with_a_base64_json_patch() {
        let ann = json!({
            "vault.hashicorp.com/agent-inject": "true",
            "vault.hashicorp.com/role": "orders",
            "vault.hashicorp.com/agent-inject-secret-db": "secret/data/orders/db",
        });
        for version in VERSIONS {
            let r = review(
                &injector(),
                Some("application/json"),
                &request(version, ann.clone(), false),
            );
            assert_eq!((r.status, r.outcome), (200, Outcome::Injected));
            let a = answer(&r);
            assert_eq!(a["apiVersion"], version);
            assert_eq!(a["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
            assert_eq!(a["response"]["patchType"], "JSONPatch");
            let patch = base64::engine::general_purpose::STANDARD
                .decode(a["response"]["patch"].as_str().unwrap())
                .unwrap();
            serde_json::from_slice::<json_patch::Patch>(&patch).unwrap();
            // The sidecar the pod implicitly asks for is a warning, not a silent difference.
            assert!(
                a["response"]["warnings"][0]
                    .as_str()
                    .unwrap()
                    .contains("agent-pre-populate-only")
            );
            let n = r.notice.unwrap();
            assert_eq!(
                (n.reason, n.regarding.kind.as_deref()),
                ("Injected", Some("ReplicaSet"))
            );
        }
    }

    #[test]
    fn a_denial_carries_the_message_and_a_dry_run_records_no_event() {
        let ann = json!({"vault.hashicorp.com/agent-inject": "true"});
        let r = review(
            &injector(),
            Some("application/json; charset=utf-8"),
            &request(VERSIONS[0], ann.clone(), false),
        );
        assert_eq!(r.outcome, Outcome::Denied);
        let a = answer(&r);
        assert_eq!(a["response"]["allowed"], false);
        assert!(
            a["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("vault.hashicorp.com/role is required")
        );
        assert_eq!(r.notice.unwrap().reason, "InjectionDenied");
        let r = review(
            &injector(),
            Some("application/json"),
            &request(VERSIONS[0], ann, true),
        );
        assert_eq!(r.outcome, Outcome::Denied);
        assert!(r.notice.is_none());
    }

    #[test]
    fn an_unannotated_pod_is_allowed_without_a_patch() {
        let r = review(
            &injector(),
            Some("application/json"),
            &request(VERSIONS[0], json!({}), false),
        );
        assert_eq!(r.outcome, Outcome::Skipped);
        let a = answer(&r);
        assert_eq!(
            a["response"],
            json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true})
        );
    }

    #[test]
    fn what_is_not_an_admission_review_is_a_400() {
        let i = injector();
        let body = request(VERSIONS[0], json!({}), false);
        for (ct, b) in [
            (Some("text/plain"), body.as_slice()),
            (None, body.as_slice()),
            (Some("application/json"), b"".as_slice()),
            (Some("application/json"), b"{not json".as_slice()),
            (
                Some("application/json"),
                br#"{"apiVersion":"v1","kind":"Pod"}"#.as_slice(),
            ),
            (
                Some("application/json"),
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#
                    .as_slice(),
            ),
        ] {
            let r = review(&i, ct, b);
            assert_eq!((r.status, r.outcome), (400, Outcome::Malformed), "{ct:?}");
        }
    }
}

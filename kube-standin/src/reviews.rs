//! authentication.k8s.io: TokenReview, and the ServiceAccount `token` subresource
//! (TokenRequest); authorization.k8s.io: SelfSubjectAccessReview.
//!
//! TokenReview is what OpenBao's kubernetes auth calls with the pod's JWT; it must answer
//! exactly like the real one, including `201 Created` with `authenticated: false` and an
//! `error` string for a bad token (not a 401: the *reviewer* is authenticated, the reviewed
//! token is not). TokenRequest lets code written for a real cluster mint tokens the same way
//! on the stand-in.
//!
//! SelfSubjectAccessReview is how a client asks "may I?" before trying (`kubectl auth
//! can-i`). It is answered by the same authorizer chain that guards requests (deny rules,
//! then RBAC while enforced), for the calling user, with the real status shape: `allowed`,
//! and `reason` when the authorizer gave one.

use axum::http::StatusCode;
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use serde::Deserialize as _;
use serde_json::{Value, json};

use super::auth::{Attributes, UserInfo};
use super::kinds;
use super::rbac::Request;

use super::objects::Reply;
use super::resources;
use super::server::Shared;
use super::status::{ApiError, FieldError, go_quote};
use super::tokens::{ObjectRef, TokenSpec};

fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`.
pub(crate) fn token_review(shared: &Shared, body: &[u8]) -> Result<Reply, ApiError> {
    let review: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "TokenReview in version \"v1\" cannot be handled as a TokenReview: {e}"
        ))
    })?;
    let token = review
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or("");
    if token.is_empty() {
        return Err(ApiError::bad_request(
            "token is required for TokenReview in authentication",
        ));
    }
    let audiences = string_list(review.pointer("/spec/audiences"));
    let status = match shared.authenticate_token(token, &audiences) {
        Ok((user, auds)) => {
            let mut u = json!({"username": user.username, "groups": user.groups});
            if !user.uid.is_empty() {
                u["uid"] = json!(user.uid);
            }
            if !user.extra.is_empty() {
                u["extra"] = json!(user.extra);
            }
            json!({"authenticated": true, "user": u, "audiences": auds})
        }
        Err(error) => json!({"user": {}, "error": error}),
    };
    let mut spec = json!({"token": token});
    if !audiences.is_empty() {
        spec["audiences"] = json!(audiences);
    }
    Ok((
        StatusCode::CREATED,
        json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": spec,
            "status": status,
        }),
    ))
}

/// `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`.
pub(crate) fn token_request(
    shared: &Shared,
    namespace: &str,
    name: &str,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let request: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "TokenRequest in version \"v1\" cannot be handled as a TokenRequest: {e}"
            ))
        })?
    };
    let sa_uid = {
        let store = shared.store();
        let sa = store
            .get(&resources::SERVICE_ACCOUNTS, namespace, name)
            .ok_or_else(|| ApiError::not_found(&resources::SERVICE_ACCOUNTS, name))?;
        sa.object
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let expiration = request
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(3600);
    let invalid = |detail: &str| {
        ApiError::invalid_kind(
            "authentication.k8s.io",
            "TokenRequest",
            name,
            &[FieldError::invalid_raw(
                "spec.expirationSeconds",
                expiration.to_string(),
                detail,
            )],
        )
    };
    if expiration < 600 {
        return Err(invalid("may not specify a duration less than 10 minutes"));
    }
    if expiration > 1 << 32 {
        return Err(invalid(
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let pod = request.pointer("/spec/boundObjectRef").and_then(|r| {
        (r.get("kind").and_then(Value::as_str) == Some("Pod")).then(|| ObjectRef {
            name: r
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            uid: r
                .get("uid")
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty())
                .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned),
        })
    });
    let audiences = string_list(request.pointer("/spec/audiences"));
    let (token, exp) = shared.tokens.issue(&TokenSpec {
        namespace,
        name,
        sa_uid: &sa_uid,
        audiences: audiences.clone(),
        ttl: std::time::Duration::from_secs(u64::try_from(expiration).unwrap_or(3600)),
        pod,
    });
    let audiences = if audiences.is_empty() {
        vec![shared.tokens.issuer().to_owned()]
    } else {
        audiences
    };
    let expires = chrono::DateTime::from_timestamp(exp, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut spec = json!({"audiences": audiences, "expirationSeconds": expiration});
    if let Some(bound) = request.pointer("/spec/boundObjectRef") {
        spec["boundObjectRef"] = bound.clone();
    }
    Ok((
        StatusCode::CREATED,
        json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "creationTimestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            },
            "spec": spec,
            "status": {"token": token, "expirationTimestamp": expires},
        }),
    ))
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`.
pub(crate) fn self_subject_access_review(
    shared: &Shared,
    user: &UserInfo,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let kind = &resources::SELF_SUBJECT_ACCESS_REVIEWS;
    let cannot_handle = |e: &dyn std::fmt::Display| {
        ApiError::bad_request(format!(
            "SelfSubjectAccessReview in version \"v1\" cannot be handled as a SelfSubjectAccessReview: {e}"
        ))
    };
    let raw: Value = serde_json::from_slice(body).map_err(|e| cannot_handle(&e))?;
    kinds::check_type_meta(kind, &raw, false)?;
    let review = SelfSubjectAccessReview::deserialize(&raw).map_err(|e| cannot_handle(&e))?;
    let spec = review.spec;
    let invalid = |field: &str, value: &str, detail: &str| {
        ApiError::invalid_kind(
            kind.group,
            kind.kind,
            "",
            &[FieldError::invalid_raw(field, value, detail)],
        )
    };
    let decision = match (&spec.resource_attributes, &spec.non_resource_attributes) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "spec.nonResourceAttributes",
                &format!(
                    "&authorization.NonResourceAttributes{{Path:{}, Verb:{}}}",
                    go_quote(
                        spec.non_resource_attributes
                            .as_ref()
                            .and_then(|n| n.path.as_deref())
                            .unwrap_or("")
                    ),
                    go_quote(
                        spec.non_resource_attributes
                            .as_ref()
                            .and_then(|n| n.verb.as_deref())
                            .unwrap_or("")
                    ),
                ),
                "cannot be specified in combination with resourceAttributes",
            ));
        }
        (None, None) => {
            return Err(invalid(
                "spec.resourceAttributes",
                "(*authorization.NonResourceAttributes)(nil)",
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            ));
        }
        (Some(ra), None) => {
            let text = |v: &Option<String>| v.as_deref().unwrap_or("").to_owned();
            let (verb, group, resource, subresource, namespace, name) = (
                text(&ra.verb),
                text(&ra.group),
                text(&ra.resource),
                text(&ra.subresource),
                text(&ra.namespace),
                text(&ra.name),
            );
            let attributes = Attributes {
                verb: &verb,
                group: &group,
                resource: &resource,
                subresource: Some(subresource.as_str()).filter(|s| !s.is_empty()),
                namespace: Some(namespace.as_str()).filter(|s| !s.is_empty()),
                name: &name,
            };
            shared.decide(user, &Request::Resource(&attributes))
        }
        (None, Some(nra)) => shared.decide(
            user,
            &Request::NonResource {
                verb: nra.verb.as_deref().unwrap_or(""),
                path: nra.path.as_deref().unwrap_or(""),
            },
        ),
    };
    let mut status = json!({"allowed": decision.allowed});
    if !decision.reason.is_empty() {
        status["reason"] = json!(decision.reason);
    }
    Ok((
        StatusCode::CREATED,
        json!({
            "kind": kind.kind,
            "apiVersion": kind.api_version(),
            "metadata": {"creationTimestamp": null},
            "spec": serde_json::to_value(&spec).unwrap_or_else(|_| json!({})),
            "status": status,
        }),
    ))
}

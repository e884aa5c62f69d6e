//! `fieldValidation=Strict`: a body with a field the kind does not have is refused (400), as
//! the real server's strict decoder refuses it, instead of the field being dropped.
//!
//! kubectl asks for Strict on every write once `/openapi/v3` says the server takes the
//! parameter (see `openapi`), so a typo in a manifest must fail here as it fails on a real
//! cluster. The fields a kind has are those of its k8s-openapi type: the object is decoded
//! into it and encoded back, and any non-null key of the body that did not survive is
//! unknown. Paths are printed as Go's strict decoder prints them: `spec.replicaz`,
//! `spec.template.spec.containers[0].imag`.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde_json::Value;

use super::resources::{self, ResourceKind};
use super::status::ApiError;

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(obj: &Value) -> Option<Value> {
    serde_json::from_value::<T>(obj.clone())
        .ok()
        .and_then(|t| serde_json::to_value(t).ok())
}

/// `obj` as its kind's type keeps it; `None` for kinds without one (or a body that does not
/// decode, which the shape check has already refused).
fn known(kind: &ResourceKind, obj: &Value) -> Option<Value> {
    if *kind == resources::SECRETS {
        round_trip::<Secret>(obj)
    } else if *kind == resources::DEPLOYMENTS {
        round_trip::<Deployment>(obj)
    } else if *kind == resources::STATEFUL_SETS {
        round_trip::<StatefulSet>(obj)
    } else if *kind == resources::LEASES {
        round_trip::<Lease>(obj)
    } else if *kind == resources::SERVICE_ACCOUNTS {
        round_trip::<ServiceAccount>(obj)
    } else if *kind == resources::ROLES {
        round_trip::<Role>(obj)
    } else if *kind == resources::ROLE_BINDINGS {
        round_trip::<RoleBinding>(obj)
    } else if *kind == resources::CLUSTER_ROLES {
        round_trip::<ClusterRole>(obj)
    } else if *kind == resources::CLUSTER_ROLE_BINDINGS {
        round_trip::<ClusterRoleBinding>(obj)
    } else if *kind == resources::PODS {
        round_trip::<Pod>(obj)
    } else if *kind == resources::MUTATING_WEBHOOK_CONFIGURATIONS {
        round_trip::<MutatingWebhookConfiguration>(obj)
    } else if *kind == resources::EVENTS {
        round_trip::<Event>(obj)
    } else if *kind == resources::NAMESPACES {
        round_trip::<Namespace>(obj)
    } else if kind.custom.is_some() {
        // What the structural schema keeps (see `crds`).
        let mut kept = obj.clone();
        super::crds::prune(kind, &mut kept);
        Some(kept)
    } else {
        None
    }
}

fn walk(sent: &Value, kept: &Value, path: &str, out: &mut Vec<String>) {
    match (sent, kept) {
        (Value::Object(sent), Value::Object(kept)) => {
            for (k, v) in sent {
                let here = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match kept.get(k) {
                    None if !v.is_null() => out.push(here),
                    Some(kv) => walk(v, kv, &here, out),
                    None => {}
                }
            }
        }
        (Value::Array(sent), Value::Array(kept)) => {
            for (i, (v, kv)) in sent.iter().zip(kept).enumerate() {
                walk(v, kv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The unknown fields of `obj`, in the order they appear.
pub(crate) fn unknown_fields(kind: &ResourceKind, obj: &Value) -> Vec<String> {
    let Some(kept) = known(kind, obj) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk(obj, &kept, "", &mut out);
    out
}

fn listed(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| format!("unknown field {f:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// For a create or update body: `Secret in version "v1" cannot be handled as a Secret:
/// strict decoding error: unknown field "…"`.
pub(crate) fn check_body(kind: &ResourceKind, obj: &Value) -> Result<(), ApiError> {
    let unknown = unknown_fields(kind, obj);
    if unknown.is_empty() {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
        kind.kind,
        kind.version,
        kind.kind,
        listed(&unknown)
    )))
}

/// For the object a patch produced: `strict decoding error: unknown field "…"`.
pub(crate) fn check_patched(kind: &ResourceKind, obj: &Value) -> Result<(), ApiError> {
    let unknown = unknown_fields(kind, obj);
    if unknown.is_empty() {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "strict decoding error: {}",
        listed(&unknown)
    )))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn unknown_fields_are_found_at_any_depth_with_go_paths() {
        let deployment = json!({
            "metadata": {"name": "web", "labelz": {}},
            "spec": {
                "replicaz": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [{"name": "a", "imag": "x", "image": null}]}},
            },
        });
        assert_eq!(
            unknown_fields(&resources::DEPLOYMENTS, &deployment),
            [
                "metadata.labelz",
                "spec.replicaz",
                "spec.template.spec.containers[0].imag"
            ]
        );
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "dg=="}, "stringData": {"a": "b"}, "type": "Opaque", "immutable": true});
        assert!(unknown_fields(&resources::SECRETS, &secret).is_empty());
        let err = check_body(
            &resources::SECRETS,
            &json!({"metadata": {"name": "s"}, "dta": {}}),
        )
        .unwrap_err();
        assert_eq!(err.code, 400);
        assert_eq!(
            err.message,
            "Secret in version \"v1\" cannot be handled as a Secret: strict decoding error: unknown field \"dta\""
        );
    }
}

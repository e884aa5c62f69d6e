//! The per-kind steps of every write — decode, prepare, validate — dispatched on the resource.
//!
//! The order is the real server's: decoding errors (400) come before preconditions (409),
//! which come before validation (422). The handlers in `objects.rs` call these in that order.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use super::apps::{self, Workload};
use super::crds;
use super::events;
use super::pods;
use super::rbac;
use super::resources::{self, ResourceKind};
use super::secrets;
use super::status::{ApiError, FieldError};
use super::validation;
use super::webhooks;

fn workload(kind: &ResourceKind) -> Option<Workload> {
    if *kind == resources::DEPLOYMENTS {
        Some(Workload::Deployment)
    } else if *kind == resources::STATEFUL_SETS {
        Some(Workload::StatefulSet)
    } else {
        None
    }
}

fn cannot_handle(kind: &ResourceKind, why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!(
        "{} in version \"{}\" cannot be handled as a {}: {why}",
        kind.kind, kind.version, kind.kind
    ))
}

fn typed<T: serde::de::DeserializeOwned>(kind: &ResourceKind, obj: &Value) -> Result<(), ApiError> {
    serde_json::from_value::<T>(obj.clone())
        .map(drop)
        .map_err(|e| cannot_handle(kind, e))
}

/// `apiVersion`/`kind` in a body must name the endpoint's resource when present.
pub(crate) fn check_type_meta(
    kind: &ResourceKind,
    obj: &Value,
    required: bool,
) -> Result<(), ApiError> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let object_kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    if required && (api_version.is_empty() || object_kind.is_empty()) {
        return Err(ApiError::bad_request(format!(
            "Object 'Kind' is missing in '{}'",
            serde_json::to_string(obj).unwrap_or_default()
        )));
    }
    let expected = kind.api_version();
    if !api_version.is_empty() && api_version != expected {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({expected})"
        )));
    }
    if !object_kind.is_empty() && object_kind != kind.kind {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({object_kind}) does not match the expected kind ({})",
            kind.kind
        )));
    }
    Ok(())
}

/// Decoding: the body must fit the Go types, else 400 (`… cannot be handled as a …`).
pub(crate) fn check_shape(kind: &ResourceKind, obj: &Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(cannot_handle(
            kind,
            "json: cannot unmarshal non-object into Go value",
        ));
    }
    if let Some(meta) = obj.get("metadata") {
        serde_json::from_value::<ObjectMeta>(meta.clone()).map_err(|e| cannot_handle(kind, e))?;
    }
    if *kind == resources::SECRETS {
        secrets::check_shape(obj)
    } else if *kind == resources::DEPLOYMENTS {
        typed::<Deployment>(kind, obj)
    } else if *kind == resources::STATEFUL_SETS {
        typed::<StatefulSet>(kind, obj)
    } else if *kind == resources::LEASES {
        typed::<Lease>(kind, obj)
    } else if *kind == resources::SERVICE_ACCOUNTS {
        typed::<ServiceAccount>(kind, obj)
    } else if *kind == resources::ROLES {
        typed::<Role>(kind, obj)
    } else if *kind == resources::ROLE_BINDINGS {
        typed::<RoleBinding>(kind, obj)
    } else if *kind == resources::CLUSTER_ROLES {
        typed::<ClusterRole>(kind, obj)
    } else if *kind == resources::CLUSTER_ROLE_BINDINGS {
        typed::<ClusterRoleBinding>(kind, obj)
    } else if *kind == resources::PODS {
        typed::<Pod>(kind, obj)
    } else if *kind == resources::MUTATING_WEBHOOK_CONFIGURATIONS {
        typed::<MutatingWebhookConfiguration>(kind, obj)
    } else if *kind == resources::EVENTS {
        typed::<Event>(kind, obj)
    } else if *kind == resources::NAMESPACES {
        typed::<Namespace>(kind, obj)
    } else if *kind == resources::CUSTOM_RESOURCE_DEFINITIONS {
        typed::<CustomResourceDefinition>(kind, obj)
    } else {
        Ok(())
    }
}

/// Puts an apply configuration in the form ownership is computed on, without defaulting
/// anything (a defaulted field in the configuration would become owned by the applier).
pub(crate) fn prepare_apply_config(kind: &ResourceKind, config: &mut Value) {
    validation::strip_nulls(config);
    if *kind == resources::SECRETS {
        // `stringData.k` is applied as `data.k`: that is where the value lives once written,
        // so that is the field whose ownership matters.
        secrets::fold_string_data(config);
        if let Some(Value::Object(data)) = config.get_mut("data") {
            for v in data.values_mut() {
                if let Some(decoded) = v.as_str().and_then(|s| secrets::go_base64_decode(s).ok()) {
                    use base64::Engine as _;
                    *v = Value::String(base64::engine::general_purpose::STANDARD.encode(decoded));
                }
            }
        }
    }
}

/// `config` with the kind's defaults filled in, for comparing applied values with live ones;
/// `None` for kinds without defaults worth comparing.
pub(crate) fn with_defaults(kind: &ResourceKind, config: &Value) -> Option<Value> {
    let w = workload(kind)?;
    let mut defaulted = config.clone();
    apps::apply_defaults(w, &mut defaulted);
    Some(defaulted)
}

/// Server-side preparation (`PrepareForCreate`/`PrepareForUpdate` plus defaulting): server
/// fields are taken from `old` or cleared, and the kind's own normalization runs.
/// `status_write`: a write to the `/status` subresource of a custom resource.
pub(crate) fn prepare(
    kind: &ResourceKind,
    obj: &mut Value,
    old: Option<&Value>,
    status_write: bool,
) {
    // A custom resource keeps the `null`s its schema calls nullable (see `crds`).
    if kind.custom.is_none() {
        validation::strip_nulls(obj);
    }
    if let Some(map) = obj.as_object_mut() {
        map.insert("apiVersion".into(), json!(kind.api_version()));
        map.insert("kind".into(), json!(kind.kind));
        let meta = map.entry("metadata").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            for k in [
                "managedFields",
                "selfLink",
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
            ] {
                meta.remove(k);
            }
            if let Some(old_meta) = old
                .and_then(|o| o.get("metadata"))
                .and_then(Value::as_object)
            {
                for k in [
                    "uid",
                    "creationTimestamp",
                    "generation",
                    "deletionTimestamp",
                ] {
                    if let Some(v) = old_meta.get(k) {
                        meta.insert(k.into(), v.clone());
                    }
                }
            }
        }
    }
    validation::drop_empty_map(obj, &["metadata", "labels"]);
    validation::drop_empty_map(obj, &["metadata", "annotations"]);

    if *kind == resources::SECRETS {
        secrets::normalize(obj);
    } else if rbac::is_rbac(kind) {
        rbac::apply_defaults(kind, obj);
    } else if let Some(w) = workload(kind) {
        apps::apply_defaults(w, obj);
        match old {
            Some(old) => apps::prepare_update(w, obj, old),
            None => apps::prepare_create(obj),
        }
    } else if *kind == resources::PODS {
        pods::apply_defaults(obj);
        match old {
            Some(old) => pods::prepare_update(obj, old),
            None => pods::prepare_create(obj),
        }
    } else if *kind == resources::MUTATING_WEBHOOK_CONFIGURATIONS {
        webhooks::apply_defaults(obj);
        webhooks::prepare(obj, old);
    } else if *kind == resources::NAMESPACES {
        prepare_namespace(obj, old);
    } else if *kind == resources::CUSTOM_RESOURCE_DEFINITIONS {
        crds::apply_defaults(obj);
        crds::prepare(obj, old);
    } else if kind.custom.is_some() {
        crds::prepare_custom(kind, obj, old, status_write);
    }
}

/// A namespace always carries `kubernetes.io/metadata.name` (the real defaulter sets it on
/// every write), the `kubernetes` finalizer and, as status is not writable here, `Active`.
fn prepare_namespace(obj: &mut Value, old: Option<&Value>) {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        if let Some(labels) = labels.as_object_mut() {
            labels.insert("kubernetes.io/metadata.name".into(), json!(name));
        }
    }
    if let Some(map) = obj.as_object_mut() {
        let spec = map.entry("spec").or_insert_with(|| json!({}));
        if let Some(spec) = spec.as_object_mut()
            && spec.get("finalizers").is_none()
        {
            spec.insert("finalizers".into(), json!(["kubernetes"]));
        }
        map.insert(
            "status".into(),
            old.and_then(|o| o.get("status"))
                .cloned()
                .unwrap_or_else(|| json!({"phase": "Active"})),
        );
    }
}

/// Validation (`Validate`/`ValidateUpdate`); empty means valid.
pub(crate) fn validate(kind: &ResourceKind, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(meta) = obj.get("metadata").and_then(Value::as_object) {
        let rule = if rbac::is_rbac(kind) {
            validation::NameRule::PathSegment
        } else {
            validation::NameRule::Dns1123Subdomain
        };
        validation::validate_object_meta(meta, rule, &mut errs);
    }
    if *kind == resources::NAMESPACES {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !name.is_empty() && validation::dns1123_subdomain_errors(name).is_empty() {
            for msg in validation::dns1123_label_errors(name) {
                errs.push(FieldError::invalid_str("metadata.name", name, msg));
            }
        }
    }
    if *kind == resources::SECRETS {
        secrets::validate(obj, old, &mut errs);
    } else if *kind == resources::PODS {
        pods::validate(obj, old, &mut errs);
    } else if *kind == resources::MUTATING_WEBHOOK_CONFIGURATIONS {
        webhooks::validate(obj, old, &mut errs);
    } else if *kind == resources::EVENTS {
        events::validate(obj, old, &mut errs);
    } else if *kind == resources::CUSTOM_RESOURCE_DEFINITIONS {
        crds::validate(obj, old, &mut errs);
    } else if kind.custom.is_some() {
        crds::validate_custom(kind, obj, &mut errs);
    } else if rbac::is_rbac(kind) {
        rbac::validate(kind, obj, old, &mut errs);
    } else if let Some(w) = workload(kind) {
        apps::validate(w, obj, old, &mut errs);
    } else if *kind == resources::LEASES {
        if let Some(d) = obj
            .pointer("/spec/leaseDurationSeconds")
            .and_then(Value::as_i64)
            && d <= 0
        {
            errs.push(FieldError::invalid_raw(
                "spec.leaseDurationSeconds",
                d.to_string(),
                "must be greater than 0",
            ));
        }
        if let Some(t) = obj
            .pointer("/spec/leaseTransitions")
            .and_then(Value::as_i64)
            && t < 0
        {
            errs.push(FieldError::invalid_raw(
                "spec.leaseTransitions",
                t.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
    errs
}

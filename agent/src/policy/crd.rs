//! The RotationPolicy CustomResourceDefinition (`keyturn crd`), from the policy file's own types.
//!
//! One schema, one validation: `spec` is described by [`RawSpec`] (through [`RawPolicy`]),
//! the type `keyturn policy check` and the daemon parse policy files with, so a field added
//! there is in the CRD at the next `keyturn crd`. The schema is made structural as kube's
//! `#[derive(CustomResource)]` makes it (kube-core's transforms, [`generator`]): every
//! subschema inlined, `nullable` for optional values, and the store and target kinds
//! (`store: { vault-kv: {…} }`, externally tagged enums) turned from a `oneOf` into one
//! object with an optional property per kind. What a structural schema cannot express
//! (`deny_unknown_fields`, the rules in `validate.rs`) is left to pruning (or a refusal with
//! `fieldValidation=Strict`) and to the daemon's own validation of each object.

use chrono::{DateTime, Utc};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube_core::schema::{OptionalEnum, OptionalIntOrString, StructuralSchemaRewriter};
use schemars::JsonSchema;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::transform::AddNullable;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::schema::RawPolicy;
#[cfg(doc)]
use super::schema::RawSpec;

/// The API group of keyturn's custom resources.
pub const GROUP: &str = "keyturn.dev";
/// The one version, served and stored.
pub const VERSION: &str = "v1";
/// The resource's plural name (`kubectl get rotationpolicies`).
pub const PLURAL: &str = "rotationpolicies";
/// The resource's singular name.
pub const SINGULAR: &str = "rotationpolicy";
/// `kubectl get rp`.
pub const SHORT_NAMES: &[&str] = &["rp"];

/// What the daemon reports about one RotationPolicy (the status subresource).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationPolicyStatus {
    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The last rotation that finished, whatever its outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation: Option<LastRotation>,
    /// When the next rotation falls due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation: Option<DateTime<Utc>>,
    /// Rotations that failed in a row since the last one that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// The policy's conditions (`Ready`: valid and rotating on schedule), one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A finished rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastRotation {
    /// When it finished.
    pub time: DateTime<Utc>,
    /// The rotation's id, as the audit log and the store's state name it.
    pub rotation_id: String,
    /// How it ended, as the rotation metrics' `outcome` label says it.
    pub outcome: String,
}

/// One condition, in the shape of Kubernetes' metav1.Condition (so `kubectl wait
/// --for=condition=Ready` and generic tooling read it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition's type, in CamelCase (`Ready`).
    #[serde(rename = "type")]
    #[schemars(length(max = 316))]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// The `metadata.generation` the condition was set from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `status` last changed.
    pub last_transition_time: DateTime<Utc>,
    /// Why, in one CamelCase word.
    #[schemars(
        length(min = 1, max = 1024),
        regex(pattern = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    )]
    pub reason: String,
    /// Why, for a person (never a secret value).
    #[schemars(length(max = 32768))]
    pub message: String,
}

/// The status of a [`Condition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// It holds.
    True,
    /// It does not.
    False,
    /// It is not known.
    Unknown,
}

/// A schema generator with the settings kube's `#[derive(CustomResource)]` uses: OpenAPI v3,
/// no `$ref` or `$schema` (a CRD allows neither), `nullable` for optional values, and
/// kube-core's rewrites to a structural schema.
fn generator() -> SchemaGenerator {
    SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(AddNullable::default())
        .with_transform(StructuralSchemaRewriter)
        .with_transform(OptionalEnum)
        .with_transform(OptionalIntOrString)
        .into_generator()
}

/// The `openAPIV3Schema` of a RotationPolicy: the policy file's own schema, with the status
/// added and Kubernetes' `metadata` left to the API server.
#[must_use]
pub fn open_api_v3_schema() -> Value {
    let mut root = generator().into_root_schema_for::<RawPolicy>().to_value();
    let status = generator()
        .into_root_schema_for::<RotationPolicyStatus>()
        .to_value();
    finish(&mut root);
    let mut status = status;
    finish(&mut status);
    let props = root["properties"]
        .as_object_mut()
        .expect("a policy's schema is an object with properties");
    props.insert("metadata".into(), json!({ "type": "object" }));
    props.insert("status".into(), status);
    if let Some(o) = root.as_object_mut() {
        o.insert(
            "description".into(),
            json!(
                "A keyturn rotation policy: what to rotate, when, where the value lives and who \
                 gets it (the policy file format, as an object)."
            ),
        );
    }
    root
}

/// Cleans what the transforms leave that a CRD schema does not take, everywhere below
/// `schema`: a `title` (the Rust type's name), and `additionalProperties: false` (what
/// `deny_unknown_fields` says, which the API server does itself for a structural schema: it
/// prunes every field the schema does not name, or refuses it with `fieldValidation=Strict`).
/// Says in each set of kinds' description that exactly one is set (the `oneOf` tells the
/// server, not the reader).
fn finish(schema: &mut Value) {
    let Some(o) = schema.as_object_mut() else {
        return;
    };
    o.remove("title");
    if o.get("additionalProperties") == Some(&Value::Bool(false)) {
        o.remove("additionalProperties");
    }
    if let Some(names) = o.get("oneOf").and_then(kinds) {
        let note = format!("Exactly one of: {}.", names.join(", "));
        let description = match o.get("description").and_then(Value::as_str) {
            Some(d) => format!("{d} {note}"),
            None => note,
        };
        o.insert("description".into(), json!(description));
    }
    for v in o.values_mut() {
        match v {
            Value::Object(_) => finish(v),
            Value::Array(items) => items.iter_mut().for_each(finish),
            _ => {}
        }
    }
}

/// The kinds of a `oneOf` left by kube-core's rewrite of an externally tagged enum (each
/// variant an optional property of one object, each branch only `required: [KIND]`, which
/// a structural schema allows), or `None` for any other `oneOf`.
fn kinds(one_of: &Value) -> Option<Vec<String>> {
    one_of
        .as_array()?
        .iter()
        .map(
            |branch| match branch.as_object()?.get("required")?.as_array()?.as_slice() {
                [kind] if branch.as_object()?.len() == 1 => kind.as_str().map(str::to_owned),
                _ => None,
            },
        )
        .collect()
}

/// The printer columns of `kubectl get rotationpolicies`.
fn printer_columns() -> Value {
    json!([
        {
            "name": "Ready",
            "type": "string",
            "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status",
            "description": "Whether the policy is valid and rotating on schedule."
        },
        {
            "name": "Reason",
            "type": "string",
            "jsonPath": ".status.conditions[?(@.type==\"Ready\")].reason",
            "description": "Why it is (or is not) ready."
        },
        {
            "name": "Last rotation",
            "type": "date",
            "jsonPath": ".status.lastRotation.time",
            "description": "When the last rotation finished."
        },
        {
            // A string, not a date: kubectl shows a date column as the time since it, and a
            // time still to come as "<invalid>".
            "name": "Next rotation",
            "type": "string",
            "jsonPath": ".status.nextRotation",
            "description": "When the next rotation falls due (RFC 3339)."
        },
        { "name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp" }
    ])
}

/// The CustomResourceDefinition `rotationpolicies.keyturn.dev`.
///
/// # Panics
/// Never for keyturn's own types: the generated definition is checked against
/// k8s-openapi's CustomResourceDefinition (a unit test builds it).
#[must_use]
pub fn definition() -> CustomResourceDefinition {
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{PLURAL}.{GROUP}"),
            "labels": { "app.kubernetes.io/part-of": "keyturn" }
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": super::KIND,
                "listKind": format!("{}List", super::KIND),
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES
            },
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "schema": { "openAPIV3Schema": open_api_v3_schema() },
                "subresources": { "status": {} },
                "additionalPrinterColumns": printer_columns()
            }]
        }
    });
    serde_json::from_value(crd).expect("the RotationPolicy CRD is a CustomResourceDefinition")
}

/// [`definition`] as the YAML document `keyturn crd` prints.
#[must_use]
pub fn definition_yaml() -> String {
    let body = serde_yaml::to_string(&definition()).expect("a CRD serializes to YAML");
    format!(
        "# The RotationPolicy CustomResourceDefinition, generated by `keyturn crd` from the\n\
         # policy file's own types: regenerate it, never edit it.\n{body}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `v` and every subschema below it (property, item, additional property and `oneOf`
    /// schemas), with their paths.
    fn walk<'a>(v: &'a Value, path: &str, out: &mut Vec<(String, &'a Value)>) {
        out.push((path.to_owned(), v));
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (k, sub) in props {
                walk(sub, &format!("{path}.{k}"), out);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(sub) = v.get(key).filter(|s| s.is_object()) {
                walk(sub, &format!("{path}.{key}"), out);
            }
        }
        for (i, sub) in v
            .get("oneOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            walk(sub, &format!("{path}.oneOf[{i}]"), out);
        }
    }

    #[test]
    fn crd_schema_has_no_refs_unions_or_type_lists() {
        let schema = open_api_v3_schema();
        let mut all = Vec::new();
        walk(&schema, "", &mut all);
        assert!(all.len() > 40, "the walk reaches the kinds' fields");
        for (path, v) in all {
            let Some(o) = v.as_object() else { continue };
            for bad in ["$ref", "$defs", "definitions", "anyOf", "const", "title"] {
                assert!(!o.contains_key(bad), "{bad} at {path}");
            }
            if let Some(one_of) = o.get("oneOf") {
                assert!(kinds(one_of).is_some(), "a oneOf with types at {path}");
            }
            assert!(
                o.get("type").is_none_or(Value::is_string),
                "type list at {path}"
            );
            assert_ne!(
                o.get("additionalProperties"),
                Some(&Value::Bool(false)),
                "additionalProperties: false at {path}"
            );
        }
    }

    #[test]
    fn crd_spec_fields_are_named_as_policy_files_name_them() {
        let schema = open_api_v3_schema();
        let spec = &schema["properties"]["spec"];
        assert_eq!(spec["required"], json!(["store", "target"]));
        for field in ["max-attempts", "every", "schedule", "window", "distribute"] {
            assert!(spec["properties"].get(field).is_some(), "spec.{field}");
        }
        let top: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        assert_eq!(
            top,
            ["apiVersion", "kind", "metadata", "spec", "status"],
            "the top level is camelCase, as in a policy file"
        );
        assert_eq!(
            spec["properties"]["distribute"]["items"]["properties"]["kubernetes"]["properties"]["type"]
                ["type"],
            "string"
        );
    }

    #[test]
    fn crd_store_and_target_kinds_are_optional_properties_of_one_object() {
        let schema = open_api_v3_schema();
        let spec = &schema["properties"]["spec"]["properties"];
        let store = &spec["store"];
        assert_eq!(store["type"], "object");
        assert_eq!(
            store["oneOf"],
            json!([{"required": ["vault-kv"]}, {"required": ["aws-secretsmanager"]}])
        );
        assert!(store.get("required").is_none(), "{store}");
        assert_eq!(store["properties"]["vault-kv"]["required"], json!(["path"]));
        assert!(
            store["description"]
                .as_str()
                .unwrap()
                .contains("Exactly one of: vault-kv, aws-secretsmanager."),
            "{store}"
        );
        let target = &spec["target"]["properties"];
        let kinds: Vec<&String> = target.as_object().unwrap().keys().collect();
        assert_eq!(kinds, ["generated", "mysql", "postgres", "redis"]);
        assert_eq!(
            target["postgres"]["properties"]["admin"]["oneOf"],
            store["oneOf"]
        );
        assert_eq!(
            target["postgres"]["properties"]["ca-file"]["type"],
            "string"
        );
        assert_eq!(target["generated"]["type"], "object");
    }

    #[test]
    fn crd_optional_values_are_nullable() {
        let schema = open_api_v3_schema();
        let window = &schema["properties"]["spec"]["properties"]["window"];
        assert_eq!(window["type"], "string");
        assert_eq!(window["nullable"], true);
    }

    #[test]
    fn crd_status_has_the_condition_shape_and_columns_read_it() {
        let crd = definition();
        let version = &crd.spec.versions[0];
        assert!(version.served && version.storage);
        let status = serde_json::to_value(&version.schema).unwrap()["openAPIV3Schema"]
            ["properties"]["status"]
            .clone();
        let condition = &status["properties"]["conditions"]["items"];
        assert_eq!(
            condition["required"],
            json!(["lastTransitionTime", "message", "reason", "status", "type"])
        );
        assert_eq!(
            condition["properties"]["status"]["enum"],
            json!(["True", "False", "Unknown"])
        );
        assert_eq!(
            condition["properties"]["lastTransitionTime"]["format"],
            "date-time"
        );
        for field in [
            "observedGeneration",
            "lastRotation",
            "nextRotation",
            "consecutiveFailures",
        ] {
            assert!(status["properties"].get(field).is_some(), "status.{field}");
        }
        let columns: Vec<&str> = version
            .additional_printer_columns
            .as_deref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            ["Ready", "Reason", "Last rotation", "Next rotation", "Age"]
        );
        assert!(version.subresources.as_ref().unwrap().status.is_some());
    }

    #[test]
    fn crd_yaml_says_it_is_generated_and_parses_back() {
        let yaml = definition_yaml();
        assert!(yaml.starts_with("# The RotationPolicy CustomResourceDefinition"));
        let back: CustomResourceDefinition = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back, definition());
    }
}

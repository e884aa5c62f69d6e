//! PATCH bodies: merge (RFC 7386), JSON (RFC 6902), strategic merge, and apply configurations.
//!
//! Strategic merge patch is a JSON merge patch that merges the lists of the served kinds by
//! their `patchMergeKey` (`containers` and `env` by `name`, container `ports` by
//! `containerPort`, `volumeMounts` by `mountPath`, …), unions `finalizers`, and understands
//! the directives `kubectl apply` and `kubectl patch` send: `$patch: replace|delete|merge`,
//! `$setElementOrder/<list>`, `$deleteFromPrimitiveList/<list>` and `$retainKeys`. Any other
//! list is replaced, as it is for lists without a merge key on the real server.

use serde_json::{Map, Value};

use super::status::ApiError;

/// The PATCH content types the real server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    /// `application/merge-patch+json`
    Merge,
    /// `application/json-patch+json`
    Json,
    /// `application/strategic-merge-patch+json`
    Strategic,
    /// `application/apply-patch+yaml`: server-side apply.
    Apply,
}

impl PatchType {
    /// Reads the request's `Content-Type`; anything else is a 415, as on the real server.
    pub fn from_content_type(content_type: Option<&str>) -> Result<Self, ApiError> {
        let media = content_type
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        match media.to_ascii_lowercase().as_str() {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/json-patch+json" => Ok(Self::Json),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml" => Ok(Self::Apply),
            _ => Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json; got {media:?}"
            ))),
        }
    }
}

/// Applies a merge, JSON or strategic patch to `target`.
///
/// # Errors
/// 400 when the body is not a patch of its declared type; 422 when a JSON patch operation
/// cannot apply (a failed `test`, a missing path), as the real server answers.
pub(crate) fn apply_patch(kind: PatchType, target: &Value, body: &[u8]) -> Result<Value, ApiError> {
    match kind {
        PatchType::Merge => {
            let patch: Value = decode_json(body)?;
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "json: cannot unmarshal a non-object merge patch into Go value of type map[string]interface {}",
                ));
            }
            let mut doc = target.clone();
            json_patch::merge(&mut doc, &patch);
            Ok(doc)
        }
        PatchType::Strategic => {
            let patch: Value = decode_json(body)?;
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "json: cannot unmarshal a non-object strategic merge patch into Go value of type map[string]interface {}",
                ));
            }
            let mut doc = target.clone();
            strategic_merge(&mut doc, &patch);
            Ok(doc)
        }
        PatchType::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding json patch: {e}")))?;
            let mut doc = target.clone();
            json_patch::patch(&mut doc, &patch)
                .map_err(|e| ApiError::unprocessable(e.to_string()))?;
            Ok(doc)
        }
        PatchType::Apply => Err(ApiError::internal("apply is not a patch of the target")),
    }
}

/// Parses an apply configuration: YAML (of which JSON is a subset), one object.
///
/// # Errors
/// 400 when the body is not a single YAML/JSON object.
pub(crate) fn parse_apply_config(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "error decoding YAML: the apply configuration is not an object",
        ));
    }
    Ok(value)
}

/// Decodes a JSON request body, answering 400 as the real server does when it cannot.
pub(crate) fn decode_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
}

/// The `patchMergeKey` of a list field of the served kinds (by the field's name, which is
/// unambiguous within them); `None`: the list is replaced.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => "name",
        "ports" => "containerPort",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ownerReferences" => "uid",
        "conditions" => "type",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

/// Lists of scalars whose patch strategy is `merge` (a union), not replace.
fn merges_scalars(field: &str) -> bool {
    field == "finalizers"
}

/// Strategic merge; see the module docs.
fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = Value::Object(without_directives(p));
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in p {
        if k.starts_with('$') {
            continue;
        }
        let deletes = v.is_null() || v.get("$patch").and_then(Value::as_str) == Some("delete");
        if deletes {
            t.remove(k);
            continue;
        }
        match (v, t.get_mut(k)) {
            (Value::Array(items), Some(Value::Array(current))) => {
                if let Some(key) = merge_key(k) {
                    merge_list(current, items, key);
                } else if merges_scalars(k) {
                    for item in items {
                        if !current.contains(item) {
                            current.push(item.clone());
                        }
                    }
                } else {
                    *current = items.iter().map(without_item_directives).collect();
                }
            }
            (Value::Array(items), _) => {
                let kept = items
                    .iter()
                    .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"))
                    .map(without_item_directives)
                    .collect();
                t.insert(k.clone(), Value::Array(kept));
            }
            _ => strategic_merge(t.entry(k.clone()).or_insert(Value::Null), v),
        }
    }
    for (directive, v) in p {
        if let Some(field) = directive.strip_prefix("$deleteFromPrimitiveList/")
            && let (Some(Value::Array(current)), Value::Array(gone)) = (t.get_mut(field), v)
        {
            current.retain(|x| !gone.contains(x));
        }
        if let Some(field) = directive.strip_prefix("$setElementOrder/")
            && let (Some(Value::Array(current)), Value::Array(order)) = (t.get_mut(field), v)
        {
            let key = merge_key(field);
            let position = |item: &Value| {
                order
                    .iter()
                    .position(|o| match key {
                        Some(key) => o.get(key).is_some() && o.get(key) == item.get(key),
                        None => o == item,
                    })
                    .unwrap_or(usize::MAX)
            };
            current.sort_by_key(|item| position(item));
        }
    }
    if let Some(Value::Array(retain)) = p.get("$retainKeys") {
        t.retain(|k, _| retain.iter().any(|r| r.as_str() == Some(k)));
    }
}

/// Merges `items` into `current` by `key`: an item with `$patch: delete` removes its match,
/// one with `$patch: replace` makes the list the patch's other items, any other item is
/// merged into its match or appended.
fn merge_list(current: &mut Vec<Value>, items: &[Value], key: &str) {
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *current = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .map(without_item_directives)
            .collect();
        return;
    }
    for item in items {
        let id = item.get(key);
        let found = id.and_then(|id| current.iter().position(|c| c.get(key) == Some(id)));
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = found {
                current.remove(i);
            }
            continue;
        }
        match found {
            Some(i) => strategic_merge(&mut current[i], item),
            None => current.push(without_item_directives(item)),
        }
    }
}

/// A list item as stored: its own `$…` directives removed (nested ones are applied by
/// merging it into an empty object).
fn without_item_directives(item: &Value) -> Value {
    if item.is_object() {
        let mut out = Value::Object(Map::new());
        strategic_merge(&mut out, item);
        out
    } else {
        item.clone()
    }
}

fn without_directives(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_maps_and_honours_delete_and_replace() {
        let target = json!({"a": {"x": 1, "y": 2}, "b": {"k": 1}, "c": [1, 2]});
        let patch = json!({
            "a": {"y": null, "z": 3},
            "b": {"$patch": "replace", "n": 2},
            "c": [3],
            "$setElementOrder/c": [3]
        });
        let out = apply_patch(PatchType::Strategic, &target, patch.to_string().as_bytes()).unwrap();
        assert_eq!(out, json!({"a": {"x": 1, "z": 3}, "b": {"n": 2}, "c": [3]}));
    }

    #[test]
    fn strategic_merge_merges_keyed_lists_and_applies_kubectl_directives() {
        let target = json!({"spec": {"containers": [
            {"name": "app", "image": "a:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
            {"name": "side", "image": "s:1"},
        ], "finalizers": ["x"], "args": ["old"]}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "side"}, {"name": "app"}],
            "containers": [
                {"name": "app", "$setElementOrder/env": [{"name": "A"}], "env": [{"name": "A", "value": "9"}, {"name": "B", "$patch": "delete"}]},
                {"name": "new", "image": "n:1"},
            ],
            "finalizers": ["y", "x"],
            "args": ["new"],
        }});
        let out = apply_patch(PatchType::Strategic, &target, patch.to_string().as_bytes()).unwrap();
        assert_eq!(
            out,
            json!({"spec": {"containers": [
                {"name": "side", "image": "s:1"},
                {"name": "app", "image": "a:1", "env": [{"name": "A", "value": "9"}]},
                {"name": "new", "image": "n:1"},
            ], "finalizers": ["x", "y"], "args": ["new"]}})
        );
        let retained = apply_patch(
            PatchType::Strategic,
            &json!({"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}),
            br#"{"strategy":{"$retainKeys":["type"],"type":"Recreate","rollingUpdate":null}}"#,
        )
        .unwrap();
        assert_eq!(retained, json!({"strategy": {"type": "Recreate"}}));
    }

    #[test]
    fn content_types_with_parameters_are_recognised() {
        assert_eq!(
            PatchType::from_content_type(Some("application/merge-patch+json; charset=utf-8"))
                .unwrap(),
            PatchType::Merge
        );
        assert_eq!(
            PatchType::from_content_type(Some("application/json"))
                .unwrap_err()
                .code,
            415
        );
    }

    #[test]
    fn a_failed_json_patch_test_is_unprocessable() {
        let err = apply_patch(
            PatchType::Json,
            &json!({"metadata": {"resourceVersion": "5"}}),
            br#"[{"op":"test","path":"/metadata/resourceVersion","value":"4"}]"#,
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
    }

    #[test]
    fn apply_configs_may_be_yaml() {
        let v =
            parse_apply_config(b"apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n").unwrap();
        assert_eq!(v["metadata"]["name"], "s");
    }
}

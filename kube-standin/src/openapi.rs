//! `/openapi/v3`: the OpenAPI v3 discovery kubectl reads before it writes.
//!
//! kubectl (1.27 and later) asks `/openapi/v3` which group-versions exist, then reads the
//! PATCH operation of the kind it is about to write to learn whether the server takes
//! `fieldValidation`; when it does, kubectl leaves validation to the server
//! (`fieldValidation=Strict`, see `strict`), and otherwise it falls back to client-side
//! validation against `/openapi/v2`, which the stand-in does not serve. So every served
//! resource gets its paths and operations here, with the `x-kubernetes-action` and
//! `x-kubernetes-group-version-kind` extensions and the query parameters the real server
//! lists. `components.schemas` stays empty: `kubectl apply` then computes its strategic
//! merge patch from its built-in types, as it does for any server whose schema it cannot
//! use.

use serde_json::{Value, json};
use sha2::Digest as _;

use super::resources::ResourceKind;

/// `/openapi/v3`: one entry per group-version, `serverRelativeURL` carrying a hash of the
/// document as the real server's does (clients cache by it).
pub(crate) fn index(kinds: &[&'static ResourceKind]) -> Value {
    let mut paths = serde_json::Map::new();
    for (group, version) in group_versions(kinds) {
        let key = gv_path(group, version);
        let hash = hex(&sha2::Sha256::digest(
            serde_json::to_vec(&document(group, version, kinds)).unwrap_or_default(),
        ));
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", &hash[..32])}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v3/api/v1`, `/openapi/v3/apis/GROUP/VERSION`; `None` for any other path.
pub(crate) fn for_path(rest: &[&str], kinds: &[&'static ResourceKind]) -> Option<Value> {
    let (group, version) = match rest {
        ["api", "v1"] => ("", "v1"),
        ["apis", group, version] => (*group, *version),
        _ => return None,
    };
    group_versions(kinds)
        .into_iter()
        .find(|gv| *gv == (group, version))
        .map(|(g, v)| document(g, v, kinds))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn group_versions(kinds: &[&'static ResourceKind]) -> Vec<(&'static str, &'static str)> {
    let mut out = vec![("", "v1")];
    for (g, versions) in super::crds::group_versions(kinds) {
        out.extend(versions.into_iter().map(|v| (g, v)));
    }
    out
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn query(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "description": description, "required": true, "schema": {"type": "string", "uniqueItems": true}})
}

fn write_params(patch: bool) -> Vec<Value> {
    let mut params = vec![
        query(
            "dryRun",
            "When present, indicates that modifications should not be persisted. Valid values are: - All: all dry run stages will be processed",
        ),
        query(
            "fieldManager",
            "fieldManager is a name associated with the actor or entity that is making these changes.",
        ),
        query(
            "fieldValidation",
            "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: - Ignore - Warn - Strict",
        ),
    ];
    if patch {
        params.push(json!({"name": "force", "in": "query", "description": "Force is going to \"force\" Apply requests.", "schema": {"type": "boolean", "uniqueItems": true}}));
    }
    params
}

fn operation(kind: &ResourceKind, action: &str, id: &str, params: Vec<Value>) -> Value {
    let schema = json!({"$ref": format!("#/components/schemas/{}", schema_name(kind))});
    let mut op = json!({
        "operationId": format!("{id}{}", kind.kind),
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": kind.group, "version": kind.version, "kind": kind.kind},
    });
    match action {
        "post" | "put" => {
            op["requestBody"] = json!({"content": {"*/*": {"schema": schema}}, "required": true});
        }
        "patch" => {
            let patch = json!({"schema": {"type": "object"}});
            op["requestBody"] = json!({"content": {
                "application/apply-patch+yaml": patch,
                "application/json-patch+json": patch,
                "application/merge-patch+json": patch,
                "application/strategic-merge-patch+json": patch,
            }, "required": true});
        }
        _ => {}
    }
    op
}

fn schema_name(kind: &ResourceKind) -> String {
    if kind.custom.is_some() {
        // The real server names a custom resource's schema by its reversed group.
        let reversed: Vec<&str> = kind.group.split('.').rev().collect();
        return format!("{}.{}.{}", reversed.join("."), kind.version, kind.kind);
    }
    let group = match kind.group {
        "" => "core",
        "rbac.authorization.k8s.io" => "rbac",
        "coordination.k8s.io" => "coordination",
        "authentication.k8s.io" => "authentication",
        "authorization.k8s.io" => "authorization",
        "admissionregistration.k8s.io" => "admissionregistration",
        "events.k8s.io" => "events",
        g => g,
    };
    format!("io.k8s.api.{group}.{}.{}", kind.version, kind.kind)
}

fn document(group: &str, version: &str, kinds: &[&'static ResourceKind]) -> Value {
    let prefix = format!("/{}", gv_path(group, version));
    let mut paths = serde_json::Map::new();
    for kind in kinds
        .iter()
        .filter(|k| k.group == group && k.version == version)
    {
        let (collection, mut base) = if kind.namespaced {
            (
                format!("{prefix}/namespaces/{{namespace}}/{}", kind.plural),
                vec![path_param(
                    "namespace",
                    "object name and auth scope, such as for teams and projects",
                )],
            )
        } else {
            (format!("{prefix}/{}", kind.plural), Vec::new())
        };
        base.push(query(
            "pretty",
            "If 'true', then the output is pretty printed.",
        ));
        let mut item_base = vec![path_param("name", &format!("name of the {}", kind.kind))];
        item_base.extend(base.iter().cloned());
        let verb = |v: &str| kind.verbs.contains(&v);

        let mut coll = json!({"parameters": base});
        if verb("list") {
            coll["get"] = operation(kind, "list", "list", Vec::new());
        }
        if verb("create") {
            coll["post"] = operation(kind, "post", "create", write_params(false));
        }
        if verb("deletecollection") {
            coll["delete"] = operation(
                kind,
                "deletecollection",
                "deleteCollection",
                vec![query("dryRun", "")],
            );
        }
        paths.insert(collection.clone(), coll);
        if kind.stored {
            let mut item = json!({"parameters": item_base});
            item["get"] = operation(kind, "get", "read", Vec::new());
            // Only the operations served (core/v1 Events are read-only, namespaces are never
            // deleted).
            if verb("update") {
                item["put"] = operation(kind, "put", "replace", write_params(false));
            }
            if verb("patch") {
                item["patch"] = operation(kind, "patch", "patch", write_params(true));
            }
            if verb("delete") {
                item["delete"] = operation(kind, "delete", "delete", vec![query("dryRun", "")]);
            }
            paths.insert(format!("{collection}/{{name}}"), item);
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.34.0"},
        "paths": paths,
        "components": {"schemas": {}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_patch_operation_declares_field_validation_and_its_kind() {
        let doc = for_path(&["api", "v1"], crate::resources::ALL).unwrap();
        let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/secrets/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({"group": "", "version": "v1", "kind": "Secret"})
        );
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
        );
        let index = index(crate::resources::ALL);
        assert!(
            index["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/apps/v1?hash=")
        );
        assert!(for_path(&["apis", "batch", "v1"], crate::resources::ALL).is_none());
    }
}

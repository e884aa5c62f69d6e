//! core/v1 Pods: defaulting, the built-in admission plugins that run before webhooks, the
//! validation a hand-written or webhook-patched pod most often trips, and spec immutability.
//!
//! Nothing schedules or runs a pod here: a pod is an object that stays `Pending`. What the
//! stand-in gets right is what a mutating admission webhook (keyturn's own) sees and what a
//! client reads back, in the real server's order:
//!
//! 1. decoding defaults (`SetDefaults_Pod`, `SetDefaults_PodSpec`, `SetDefaults_Container`, the
//!    volume and `fieldRef` defaults) — [`apply_defaults`];
//! 2. the in-tree mutating admission plugins kube-apiserver enables by default that touch a
//!    pod before webhooks run — [`admit_builtin`]: `ServiceAccount` (`serviceAccountName:
//!    default` and the `kube-api-access-XXXXX` projected volume mounted into every container,
//!    unless `automountServiceAccountToken: false`), `DefaultTolerationSeconds` and
//!    `Priority`. The `ServiceAccount` plugin's check that the account exists is left out: the
//!    stand-in's namespaces are virtual and have no `default` ServiceAccount;
//! 3. mutating webhooks (`admission`), each patch followed by the defaults again;
//! 4. `PrepareForCreate` (status `Pending` with its QoS class) and validation — [`validate`]:
//!    at least one container; container names unique DNS-1123 labels across `containers` and
//!    `initContainers`; images required; volume names unique DNS-1123 labels with exactly one
//!    volume type; every `volumeMount` naming a volume, with a unique `mountPath`.
//!
//! On update the spec may only change where the real server lets it (container images,
//! `activeDeadlineSeconds`, added tolerations); anything else is the real `Forbidden`, without
//! the object diff the real message appends. `status` is not writable through the main
//! resource.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use super::status::FieldError;
use super::validation;

/// Where the `ServiceAccount` admission plugin mounts the API credentials.
const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The real `Forbidden` detail for a spec change a pod does not allow.
const SPEC_UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

fn set_default(obj: &mut Map<String, Value>, key: &str, value: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj.insert(key.to_owned(), value);
    }
}

/// Every container of every list (`initContainers`, `containers`, `ephemeralContainers`).
fn containers_mut(spec: &mut Map<String, Value>) -> Vec<&mut Map<String, Value>> {
    let mut all = Vec::new();
    for (key, value) in spec.iter_mut() {
        if matches!(
            key.as_str(),
            "initContainers" | "containers" | "ephemeralContainers"
        ) && let Value::Array(cs) = value
        {
            all.extend(cs.iter_mut().filter_map(Value::as_object_mut));
        }
    }
    all
}

/// `fieldRef.apiVersion` defaults to `v1` wherever a `fieldRef` appears.
fn default_field_refs(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(field_ref)) = map.get_mut("fieldRef") {
                set_default(field_ref, "apiVersion", json!("v1"));
            }
            for child in map.values_mut() {
                default_field_refs(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(default_field_refs),
        _ => {}
    }
}

/// The decoding defaults of a Pod (idempotent: they run again after every webhook patch).
pub(crate) fn apply_defaults(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "enableServiceLinks", json!(true));
    for c in containers_mut(spec) {
        let image = c
            .get("image")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let last = image.rsplit('/').next().unwrap_or("");
        let latest = !image.contains('@') && (!last.contains(':') || last.ends_with(":latest"));
        set_default(
            c,
            "imagePullPolicy",
            json!(if latest { "Always" } else { "IfNotPresent" }),
        );
        set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
        set_default(c, "terminationMessagePolicy", json!("File"));
        set_default(c, "resources", json!({}));
        if let Some(Value::Array(ports)) = c.get_mut("ports") {
            for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                set_default(port, "protocol", json!("TCP"));
            }
        }
    }
    if let Some(Value::Array(volumes)) = spec.get_mut("volumes") {
        for v in volumes.iter_mut().filter_map(Value::as_object_mut) {
            for source in ["secret", "configMap", "downwardAPI", "projected"] {
                if let Some(Value::Object(s)) = v.get_mut(source) {
                    set_default(s, "defaultMode", json!(420));
                }
            }
            if let Some(Value::Array(sources)) =
                v.get_mut("projected").and_then(|p| p.get_mut("sources"))
            {
                for s in sources.iter_mut() {
                    if let Some(Value::Object(token)) = s.get_mut("serviceAccountToken") {
                        set_default(token, "expirationSeconds", json!(3600));
                    }
                }
            }
        }
    }
    if let Some(v) = obj.get_mut("spec") {
        default_field_refs(v);
    }
}

/// `[a-z0-9]` × 5, as `utilrand.String` makes the `kube-api-access-` suffix.
fn random_suffix() -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The in-tree mutating admission plugins that change a pod on create before webhooks run:
/// `ServiceAccount`, `DefaultTolerationSeconds`, `Priority` (see the module docs).
pub(crate) fn admit_builtin(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    // ServiceAccount: the account defaults to `default` (both the field and its deprecated
    // alias), and its token, the cluster CA and the namespace are mounted unless opted out.
    let account = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| {
            spec.get("serviceAccount")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        })
        .unwrap_or("default")
        .to_owned();
    spec.insert("serviceAccountName".into(), json!(account));
    spec.insert("serviceAccount".into(), json!(account));
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        != Some(false);
    if automount {
        let name = format!("kube-api-access-{}", random_suffix());
        let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
        if let Value::Array(volumes) = volumes {
            volumes.push(json!({
                "name": name,
                "projected": {
                    "defaultMode": 420,
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                    ],
                },
            }));
        }
        for c in containers_mut(spec) {
            let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
            if let Value::Array(mounts) = mounts
                && !mounts.iter().any(|m| {
                    m.get("mountPath").and_then(Value::as_str) == Some(SERVICE_ACCOUNT_MOUNT)
                })
            {
                mounts.push(
                    json!({"name": name, "readOnly": true, "mountPath": SERVICE_ACCOUNT_MOUNT}),
                );
            }
        }
    }
    // DefaultTolerationSeconds: tolerate not-ready and unreachable nodes for 300 s.
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if let Value::Array(tolerations) = tolerations {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let present = tolerations
                .iter()
                .any(|t| t.get("key").and_then(Value::as_str) == Some(key));
            if !present {
                tolerations.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
    }
    // Priority: no PriorityClass named, so the global default of 0.
    set_default(spec, "priority", json!(0));
    set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
}

/// The QoS class `PrepareForCreate` records: BestEffort without any requests or limits,
/// Guaranteed when every container's CPU and memory limits equal its requests, else Burstable.
fn qos_class(obj: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| obj.pointer(&format!("/spec/{k}")).and_then(Value::as_array))
        .flatten()
        .collect();
    let resources = |c: &Value, which: &str| {
        c.pointer(&format!("/resources/{which}"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let any = containers
        .iter()
        .any(|c| !resources(c, "requests").is_empty() || !resources(c, "limits").is_empty());
    if !any {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        let (requests, limits) = (resources(c, "requests"), resources(c, "limits"));
        ["cpu", "memory"].iter().all(|r| {
            limits.get(*r).is_some() && requests.get(*r).is_none_or(|q| Some(q) == limits.get(*r))
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// `PrepareForCreate`: a new pod is `Pending`, with its QoS class.
pub(crate) fn prepare_create(obj: &mut Value) {
    let qos = qos_class(obj);
    if let Some(map) = obj.as_object_mut() {
        map.insert(
            "status".into(),
            json!({"phase": "Pending", "qosClass": qos}),
        );
    }
}

/// `PrepareForUpdate`: status is kept (it has its own subresource on a real server).
pub(crate) fn prepare_update(obj: &mut Value, old: &Value) {
    if let Some(map) = obj.as_object_mut() {
        map.insert(
            "status".into(),
            old.get("status").cloned().unwrap_or_else(|| json!({})),
        );
    }
}

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// `ValidateVolumes`: the names of valid volumes, for the mounts to refer to.
fn validate_volumes(spec: &Value, errs: &mut Vec<FieldError>) -> HashSet<String> {
    let mut names = HashSet::new();
    let Some(volumes) = spec.get("volumes").and_then(Value::as_array) else {
        return names;
    };
    for (i, v) in volumes.iter().enumerate() {
        let path = format!("spec.volumes[{i}]");
        let name = str_at(v, "name");
        let mut ok = true;
        if name.is_empty() {
            errs.push(FieldError::required(format!("{path}.name"), ""));
            ok = false;
        } else {
            for msg in validation::dns1123_label_errors(name) {
                errs.push(FieldError::invalid_str(format!("{path}.name"), name, msg));
                ok = false;
            }
            if names.contains(name) {
                errs.push(FieldError::duplicate(format!("{path}.name"), name));
                ok = false;
            }
        }
        let sources: Vec<&String> = v
            .as_object()
            .map(|m| m.keys().filter(|k| *k != "name").collect())
            .unwrap_or_default();
        match sources.as_slice() {
            [] => {
                errs.push(FieldError::required(
                    path.clone(),
                    "must specify a volume type",
                ));
                ok = false;
            }
            [_] => {}
            [_, extra @ ..] => {
                for source in extra {
                    errs.push(FieldError::forbidden(
                        format!("{path}.{source}"),
                        "may not specify more than 1 volume type",
                    ));
                }
                ok = false;
            }
        }
        if ok {
            names.insert(name.to_owned());
        }
    }
    names
}

/// One container's name, image and mounts; `all_names` collects names across the lists.
fn validate_container(
    c: &Value,
    path: &str,
    volumes: &HashSet<String>,
    all_names: &mut HashSet<String>,
    errs: &mut Vec<FieldError>,
) {
    let name = str_at(c, "name");
    if name.is_empty() {
        errs.push(FieldError::required(format!("{path}.name"), ""));
    } else {
        for msg in validation::dns1123_label_errors(name) {
            errs.push(FieldError::invalid_str(format!("{path}.name"), name, msg));
        }
        if !all_names.insert(name.to_owned()) {
            errs.push(FieldError::duplicate(format!("{path}.name"), name));
        }
    }
    if str_at(c, "image").trim().is_empty() {
        errs.push(FieldError::required(format!("{path}.image"), ""));
    }
    let mut mount_paths = HashSet::new();
    for (j, m) in c
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let mpath = format!("{path}.volumeMounts[{j}]");
        let volume = str_at(m, "name");
        if volume.is_empty() {
            errs.push(FieldError::required(format!("{mpath}.name"), ""));
        } else if !volumes.contains(volume) {
            errs.push(FieldError::not_found(format!("{mpath}.name"), volume));
        }
        let mount_path = str_at(m, "mountPath");
        if mount_path.is_empty() {
            errs.push(FieldError::required(format!("{mpath}.mountPath"), ""));
        } else if !mount_paths.insert(mount_path.to_owned()) {
            errs.push(FieldError::invalid_str(
                format!("{mpath}.mountPath"),
                mount_path,
                "must be unique",
            ));
        }
    }
}

/// `ValidatePodCreate`/`ValidatePodUpdate` (the parts listed in the module docs).
pub(crate) fn validate(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").cloned().unwrap_or_else(|| json!({}));
    let volumes = validate_volumes(&spec, errs);
    let mut all_names = HashSet::new();
    match spec.get("containers").and_then(Value::as_array) {
        Some(cs) if !cs.is_empty() => {
            for (i, c) in cs.iter().enumerate() {
                validate_container(
                    c,
                    &format!("spec.containers[{i}]"),
                    &volumes,
                    &mut all_names,
                    errs,
                );
            }
        }
        _ => errs.push(FieldError::required("spec.containers", "")),
    }
    for (i, c) in spec
        .get("initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        validate_container(
            c,
            &format!("spec.initContainers[{i}]"),
            &volumes,
            &mut all_names,
            errs,
        );
    }
    if let Some(old) = old
        && !spec_update_allowed(&spec, old.get("spec").unwrap_or(&Value::Null))
    {
        errs.push(FieldError::forbidden("spec", SPEC_UPDATE_FORBIDDEN));
    }
}

/// Whether `new` differs from `old` only where a pod's spec may change.
fn spec_update_allowed(new: &Value, old: &Value) -> bool {
    let strip = |spec: &Value| -> Value {
        let mut spec = spec.clone();
        if let Some(map) = spec.as_object_mut() {
            map.remove("activeDeadlineSeconds");
            map.remove("tolerations");
            for list in ["containers", "initContainers"] {
                if let Some(Value::Array(cs)) = map.get_mut(list) {
                    for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                        c.remove("image");
                    }
                }
            }
        }
        spec
    };
    // Tolerations may only be added to.
    let tolerations = |spec: &Value| -> Vec<Value> {
        spec.get("tolerations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (new_t, old_t) = (tolerations(new), tolerations(old));
    strip(new) == strip(old) && old_t.iter().all(|t| new_t.contains(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "nginx:1"}]}})
    }

    #[test]
    fn a_defaulted_admitted_pod_is_valid_and_mounts_the_api_credentials() {
        let mut p = pod();
        apply_defaults(&mut p);
        admit_builtin(&mut p);
        apply_defaults(&mut p);
        let mut errs = Vec::new();
        validate(&p, None, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        let volume = p["spec"]["volumes"][0]["name"].as_str().unwrap();
        assert!(volume.starts_with("kube-api-access-"));
        assert_eq!(
            p["spec"]["containers"][0]["volumeMounts"][0]["name"],
            volume
        );
        assert_eq!(
            p["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
    }

    #[test]
    fn names_mounts_and_images_are_checked_with_the_real_wording() {
        let p = json!({"spec": {
            "volumes": [{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}],
            "containers": [{"name": "app", "image": "x", "volumeMounts": [{"name": "w", "mountPath": "/w"}]}],
            "initContainers": [{"name": "app", "image": " "}],
        }});
        let mut errs = Vec::new();
        validate(&p, None, &mut errs);
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                r#"spec.volumes[1].name: Duplicate value: "v""#,
                r#"spec.containers[0].volumeMounts[0].name: Not found: "w""#,
                r#"spec.initContainers[0].name: Duplicate value: "app""#,
                "spec.initContainers[0].image: Required value",
            ]
        );
    }

    #[test]
    fn only_images_may_change_in_an_update() {
        let old = pod();
        let mut new = pod();
        new["spec"]["containers"][0]["image"] = json!("nginx:2");
        assert!(spec_update_allowed(&new["spec"], &old["spec"]));
        new["spec"]["containers"][0]["args"] = json!(["x"]);
        let mut errs = Vec::new();
        validate(&new, Some(&old), &mut errs);
        assert_eq!(errs.last().unwrap().field, "spec");
    }
}

//! apps/v1 Deployments and StatefulSets: defaults, the validation a manifest most often
//! trips, and `metadata.generation`.
//!
//! No controller runs, so nothing here creates pods. What keyturn observes is the object:
//! a rollout restart is a pod-template annotation patch, and the proof it took effect is that
//! `metadata.generation` went up. The real strategies bump it on any `spec` change, and
//! Deployments also on any `metadata.annotations` change (they are copied to ReplicaSets);
//! `status` can't be written through the main resource. The stand-in does the same.
//!
//! Validation covers what makes a hand-written test manifest differ from a real cluster's
//! answer: a selector is required and must match the template labels, containers need a
//! name and an image, replicas ≥ 0, pod-template labels/annotations are checked like object
//! metadata, the selector is immutable, and a StatefulSet only lets the fields the real one
//! lists change.

use serde_json::{Map, Value, json};

use super::status::FieldError;
use super::validation::{self, go_value};

/// Which of the two workload kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
    Deployment,
    StatefulSet,
}

fn set_default(obj: &mut Map<String, Value>, key: &str, value: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj.insert(key.to_owned(), value);
    }
}

fn object_at<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Map<String, Value>> {
    let mut cur = v;
    for p in path {
        cur = cur.get_mut(*p)?;
    }
    cur.as_object_mut()
}

/// The defaults `SetDefaults_Deployment`/`SetDefaults_StatefulSet` and the pod defaults set,
/// for the fields a test is likely to read back.
pub(crate) fn apply_defaults(kind: Workload, obj: &mut Value) {
    if let Some(spec) = object_at(obj, &["spec"]) {
        set_default(spec, "replicas", json!(1));
        set_default(spec, "revisionHistoryLimit", json!(10));
        match kind {
            Workload::Deployment => {
                set_default(spec, "progressDeadlineSeconds", json!(600));
                set_default(spec, "strategy", json!({}));
                if let Some(strategy) = spec.get_mut("strategy").and_then(Value::as_object_mut) {
                    // `strategy: {}` (what `kubectl create deployment` sends) is defaulted too.
                    if strategy
                        .get("type")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        strategy.insert("type".into(), json!("RollingUpdate"));
                    }
                }
                if let Some(strategy) = spec.get_mut("strategy").and_then(Value::as_object_mut)
                    && strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate")
                {
                    set_default(strategy, "rollingUpdate", json!({}));
                    if let Some(ru) = strategy
                        .get_mut("rollingUpdate")
                        .and_then(Value::as_object_mut)
                    {
                        set_default(ru, "maxUnavailable", json!("25%"));
                        set_default(ru, "maxSurge", json!("25%"));
                    }
                }
            }
            Workload::StatefulSet => {
                set_default(spec, "podManagementPolicy", json!("OrderedReady"));
                set_default(spec, "updateStrategy", json!({"type": "RollingUpdate"}));
                if let Some(us) = spec
                    .get_mut("updateStrategy")
                    .and_then(Value::as_object_mut)
                    && us.get("type").and_then(Value::as_str) == Some("RollingUpdate")
                {
                    set_default(us, "rollingUpdate", json!({"partition": 0}));
                }
                set_default(
                    spec,
                    "persistentVolumeClaimRetentionPolicy",
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                );
            }
        }
    }
    if let Some(pod) = object_at(obj, &["spec", "template", "spec"]) {
        set_default(pod, "restartPolicy", json!("Always"));
        set_default(pod, "terminationGracePeriodSeconds", json!(30));
        set_default(pod, "dnsPolicy", json!("ClusterFirst"));
        set_default(pod, "securityContext", json!({}));
        set_default(pod, "schedulerName", json!("default-scheduler"));
        if let Some(Value::Array(containers)) = pod.get_mut("containers") {
            for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                let image = c
                    .get("image")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let latest = image
                    .rsplit('/')
                    .next()
                    .is_none_or(|last| !last.contains(':') || last.ends_with(":latest"));
                let pull = if latest && !image.contains('@') {
                    "Always"
                } else {
                    "IfNotPresent"
                };
                set_default(c, "imagePullPolicy", json!(pull));
                set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
                set_default(c, "terminationMessagePolicy", json!("File"));
                set_default(c, "resources", json!({}));
                if let Some(Value::Array(ports)) = c.get_mut("ports") {
                    for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                        set_default(port, "protocol", json!("TCP"));
                    }
                }
            }
        }
    }
    for path in [
        &["spec", "template", "metadata", "labels"][..],
        &["spec", "template", "metadata", "annotations"],
    ] {
        validation::drop_empty_map(obj, path);
    }
}

/// Carries status and generation over from `old` (status is not writable here) and bumps the
/// generation when the real strategy would.
pub(crate) fn prepare_update(kind: Workload, obj: &mut Value, old: &Value) {
    let old_generation = old
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let spec_changed = obj.get("spec") != old.get("spec");
    let annotations_changed = kind == Workload::Deployment
        && obj.pointer("/metadata/annotations") != old.pointer("/metadata/annotations");
    let generation = if spec_changed || annotations_changed {
        old_generation + 1
    } else {
        old_generation
    };
    if let Some(map) = obj.as_object_mut() {
        map.insert(
            "status".into(),
            old.get("status").cloned().unwrap_or_else(|| json!({})),
        );
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("generation".into(), json!(generation));
        }
    }
}

/// Status is cleared and generation starts at 1, as `PrepareForCreate` does.
pub(crate) fn prepare_create(obj: &mut Value) {
    if let Some(map) = obj.as_object_mut() {
        map.insert("status".into(), json!({}));
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("generation".into(), json!(1));
        }
    }
}

/// Whether `labels` satisfy a `LabelSelector` (`matchLabels` and `matchExpressions`).
fn selector_matches(selector: &Value, labels: &Map<String, Value>) -> bool {
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let match_labels_ok = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|m| m.iter().all(|(k, v)| label(k) == v.as_str()));
    let exprs_ok = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .is_none_or(|exprs| {
            exprs.iter().all(|e| {
                let key = e.get("key").and_then(Value::as_str).unwrap_or("");
                let values: Vec<&str> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                    "In" => label(key).is_some_and(|v| values.contains(&v)),
                    "NotIn" => label(key).is_none_or(|v| !values.contains(&v)),
                    "Exists" => label(key).is_some(),
                    "DoesNotExist" => label(key).is_none(),
                    _ => false,
                }
            })
        });
    match_labels_ok && exprs_ok
}

fn selector_is_empty(selector: &Value) -> bool {
    let empty = |k: &str| match selector.get(k) {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    };
    empty("matchLabels") && empty("matchExpressions")
}

/// `ValidateDeployment`/`ValidateStatefulSet` (the parts listed in the module docs).
pub(crate) fn validate(
    kind: Workload,
    obj: &Value,
    old: Option<&Value>,
    errs: &mut Vec<FieldError>,
) {
    let spec = obj.get("spec").cloned().unwrap_or_else(|| json!({}));
    let kind_word = match kind {
        Workload::Deployment => "deployment",
        Workload::StatefulSet => "statefulset",
    };

    if let Some(replicas) = spec.get("replicas").and_then(Value::as_i64)
        && replicas < 0
    {
        errs.push(FieldError::invalid_raw(
            "spec.replicas",
            replicas.to_string(),
            "must be greater than or equal to 0",
        ));
    }

    let template_labels = spec
        .pointer("/template/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    match spec.get("selector") {
        None | Some(Value::Null) => errs.push(FieldError::required("spec.selector", "")),
        Some(selector) if selector_is_empty(selector) => errs.push(FieldError::invalid_raw(
            "spec.selector",
            go_value(selector),
            format!("empty selector is invalid for {kind_word}"),
        )),
        Some(selector) => {
            if !selector_matches(selector, &template_labels) {
                errs.push(FieldError::invalid_raw(
                    "spec.template.metadata.labels",
                    go_value(&Value::Object(template_labels.clone())),
                    "`selector` does not match template `labels`",
                ));
            }
        }
    }
    validation::validate_labels(&template_labels, "spec.template.metadata.labels", errs);
    if let Some(annotations) = spec
        .pointer("/template/metadata/annotations")
        .and_then(Value::as_object)
    {
        validation::validate_annotations(annotations, "spec.template.metadata.annotations", errs);
    }

    match spec
        .pointer("/template/spec/containers")
        .and_then(Value::as_array)
    {
        None => errs.push(FieldError::required("spec.template.spec.containers", "")),
        Some(cs) if cs.is_empty() => {
            errs.push(FieldError::required("spec.template.spec.containers", ""))
        }
        Some(cs) => {
            for (i, c) in cs.iter().enumerate() {
                let path = format!("spec.template.spec.containers[{i}]");
                match c.get("name").and_then(Value::as_str).unwrap_or("") {
                    "" => errs.push(FieldError::required(format!("{path}.name"), "")),
                    name => {
                        for msg in validation::dns1123_label_errors(name) {
                            errs.push(FieldError::invalid_str(format!("{path}.name"), name, msg));
                        }
                    }
                }
                if c.get("image")
                    .and_then(Value::as_str)
                    .is_none_or(|s| s.trim().is_empty())
                {
                    errs.push(FieldError::required(format!("{path}.image"), ""));
                }
            }
        }
    }

    if let Some(old) = old {
        let old_spec = old.get("spec").cloned().unwrap_or_else(|| json!({}));
        if old_spec.get("selector") != spec.get("selector") {
            errs.push(FieldError::invalid_raw(
                "spec.selector",
                go_value(spec.get("selector").unwrap_or(&Value::Null)),
                "field is immutable",
            ));
        }
        if kind == Workload::StatefulSet {
            const MUTABLE: &[&str] = &[
                "replicas",
                "ordinals",
                "template",
                "updateStrategy",
                "revisionHistoryLimit",
                "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds",
            ];
            let strip = |s: &Value| -> Value {
                let mut s = s.clone();
                if let Some(m) = s.as_object_mut() {
                    m.retain(|k, _| !MUTABLE.contains(&k.as_str()) && k != "selector");
                }
                s
            };
            if strip(&spec) != strip(&old_spec) {
                errs.push(FieldError::forbidden(
                    "spec",
                    "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "generation": 1},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}
            }
        })
    }

    #[test]
    fn a_valid_deployment_has_no_errors_and_gets_defaults() {
        let mut d = deployment();
        apply_defaults(Workload::Deployment, &mut d);
        let mut errs = Vec::new();
        validate(Workload::Deployment, &d, None, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
    }

    #[test]
    fn a_template_annotation_change_bumps_generation_and_a_label_change_does_not() {
        let old = deployment();
        let mut new = deployment();
        new["spec"]["template"]["metadata"]["annotations"] =
            json!({"keyturn.dev/restartedAt": "now"});
        prepare_update(Workload::Deployment, &mut new, &old);
        assert_eq!(new["metadata"]["generation"], 2);

        let mut relabelled = deployment();
        relabelled["metadata"]["labels"] = json!({"team": "a"});
        prepare_update(Workload::Deployment, &mut relabelled, &old);
        assert_eq!(relabelled["metadata"]["generation"], 1);
    }

    #[test]
    fn a_selector_that_does_not_match_the_template_is_invalid() {
        let mut d = deployment();
        d["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
        let mut errs = Vec::new();
        validate(Workload::Deployment, &d, None, &mut errs);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.template.metadata.labels");
    }
}

//! admissionregistration.k8s.io/v1 MutatingWebhookConfigurations: defaults and validation,
//! as `SetDefaults_MutatingWebhook` and `ValidateMutatingWebhookConfiguration` do them.
//!
//! Defaults: `failurePolicy: Fail`, `matchPolicy: Equivalent`, `reinvocationPolicy: Never`,
//! `timeoutSeconds: 10`, `namespaceSelector: {}`, `objectSelector: {}`, each rule's
//! `scope: "*"` and a service's `port: 443`. Validation, with the real messages: webhook names
//! are fully qualified (a DNS subdomain of at least three segments) and unique; exactly one of
//! `clientConfig.url` and `clientConfig.service`, the URL `https` with a host and no user,
//! query or fragment; `admissionReviewVersions` given and naming `v1` or `v1beta1`;
//! `sideEffects` given and `None` or `NoneOnDryRun` (an update may keep `Some`/`Unknown` if
//! every webhook already had them, as the real ratcheting allows); `timeoutSeconds` within
//! 1..=30; the rules' operations, groups, versions, resources and scope; the selectors.
//! `matchConditions` (CEL) are not evaluated and not validated.
//!
//! `metadata.generation` starts at 1 and counts changes to `webhooks`.

use serde_json::{Map, Value, json};

use super::status::FieldError;
use super::validation;

/// The AdmissionReview versions this server speaks, in its order of preference.
pub(crate) const ADMISSION_REVIEW_VERSIONS: &[&str] = &["v1", "v1beta1"];

fn set_default(obj: &mut Map<String, Value>, key: &str, value: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj.insert(key.to_owned(), value);
    }
}

/// `SetDefaults_MutatingWebhook`, `SetDefaults_Rule`, `SetDefaults_ServiceReference`.
pub(crate) fn apply_defaults(obj: &mut Value) {
    let Some(Value::Array(hooks)) = obj.get_mut("webhooks") else {
        return;
    };
    for hook in hooks.iter_mut().filter_map(Value::as_object_mut) {
        set_default(hook, "failurePolicy", json!("Fail"));
        set_default(hook, "matchPolicy", json!("Equivalent"));
        set_default(hook, "namespaceSelector", json!({}));
        set_default(hook, "objectSelector", json!({}));
        set_default(hook, "timeoutSeconds", json!(10));
        set_default(hook, "reinvocationPolicy", json!("Never"));
        if let Some(Value::Array(rules)) = hook.get_mut("rules") {
            for rule in rules.iter_mut().filter_map(Value::as_object_mut) {
                set_default(rule, "scope", json!("*"));
            }
        }
        if let Some(Value::Object(service)) = hook
            .get_mut("clientConfig")
            .and_then(|c| c.get_mut("service"))
        {
            set_default(service, "port", json!(443));
        }
    }
}

/// `metadata.generation`: 1 on create, one more whenever `webhooks` change.
pub(crate) fn prepare(obj: &mut Value, old: Option<&Value>) {
    let generation = match old {
        None => 1,
        Some(old) => {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            if old.get("webhooks") == obj.get("webhooks") {
                g
            } else {
                g + 1
            }
        }
    };
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("generation".into(), json!(generation));
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Go's `%v`-ish rendering of a `[]string` in `field.Invalid`: `[]string{"a", "b"}`.
fn go_strings(values: &[String]) -> String {
    format!(
        "[]string{{{}}}",
        values
            .iter()
            .map(|v| validation::go_value(&json!(v)))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// `IsFullyQualifiedName`.
fn fully_qualified_name(path: &str, name: &str, errs: &mut Vec<FieldError>) {
    if name.is_empty() {
        errs.push(FieldError::required(path, ""));
        return;
    }
    let sub = validation::dns1123_subdomain_errors(name);
    if !sub.is_empty() {
        errs.push(FieldError::invalid_str(path, name, sub.join(",")));
        return;
    }
    if name.split('.').count() < 3 {
        errs.push(FieldError::invalid_str(
            path,
            name,
            "should be a domain with at least three segments separated by dots",
        ));
    }
}

/// `ValidateLabelSelector` (keys, operators, values).
fn validate_selector(selector: &Value, path: &str, errs: &mut Vec<FieldError>) {
    if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
        validation::validate_labels(labels, &format!("{path}.matchLabels"), errs);
    }
    for (i, e) in selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let epath = format!("{path}.matchExpressions[{i}]");
        let values = strings(e.get("values"));
        match e.get("operator").and_then(Value::as_str).unwrap_or("") {
            "In" | "NotIn" if values.is_empty() => errs.push(FieldError::required(
                format!("{epath}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => errs.push(FieldError::forbidden(
                format!("{epath}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errs.push(FieldError::invalid_str(
                format!("{epath}.operator"),
                other,
                "not a valid selector operator",
            )),
        }
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        for msg in validation::qualified_name_errors(key) {
            errs.push(FieldError::invalid_str(format!("{epath}.key"), key, msg));
        }
    }
}

/// `validateRuleWithOperations` and `validateRule` (subresources allowed).
fn validate_rule(rule: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let operations = strings(rule.get("operations"));
    if operations.is_empty() {
        errs.push(FieldError::required(format!("{path}.operations"), ""));
    }
    if operations.len() > 1 && operations.iter().any(|o| o == "*") {
        errs.push(FieldError::invalid_raw(
            format!("{path}.operations"),
            go_strings(&operations),
            "if '*' is present, must not specify other operations",
        ));
    }
    const OPERATIONS: &[&str] = &["*", "CONNECT", "CREATE", "DELETE", "UPDATE"];
    for (i, o) in operations.iter().enumerate() {
        if !OPERATIONS.contains(&o.as_str()) {
            errs.push(FieldError::not_supported(
                format!("{path}.operations[{i}]"),
                o,
                OPERATIONS,
            ));
        }
    }
    let groups = strings(rule.get("apiGroups"));
    if groups.is_empty() {
        errs.push(FieldError::required(format!("{path}.apiGroups"), ""));
    }
    if groups.len() > 1 && groups.iter().any(|g| g == "*") {
        errs.push(FieldError::invalid_raw(
            format!("{path}.apiGroups"),
            go_strings(&groups),
            "if '*' is present, must not specify other API groups",
        ));
    }
    let versions = strings(rule.get("apiVersions"));
    if versions.is_empty() {
        errs.push(FieldError::required(format!("{path}.apiVersions"), ""));
    }
    if versions.len() > 1 && versions.iter().any(|v| v == "*") {
        errs.push(FieldError::invalid_raw(
            format!("{path}.apiVersions"),
            go_strings(&versions),
            "if '*' is present, must not specify other API versions",
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        if v.is_empty() {
            errs.push(FieldError::required(format!("{path}.apiVersions[{i}]"), ""));
        }
    }
    let resources = strings(rule.get("resources"));
    let rpath = format!("{path}.resources");
    if resources.is_empty() {
        errs.push(FieldError::required(rpath.clone(), ""));
    }
    let (mut with_wild_sub, mut with_wild_res) = (Vec::<String>::new(), Vec::<String>::new());
    let (mut double, mut single, mut plain) = (false, false, false);
    for (i, r) in resources.iter().enumerate() {
        if r.is_empty() {
            errs.push(FieldError::required(format!("{rpath}[{i}]"), ""));
            continue;
        }
        double |= r == "*/*";
        single |= r == "*";
        let Some((res, sub)) = r.split_once('/') else {
            plain = r != "*";
            continue;
        };
        if with_wild_sub.iter().any(|x| x == res) {
            errs.push(FieldError::invalid_str(
                format!("{rpath}[{i}]"),
                r,
                format!("if '{res}/*' is present, must not specify {r}"),
            ));
        }
        if with_wild_res.iter().any(|x| x == sub) {
            errs.push(FieldError::invalid_str(
                format!("{rpath}[{i}]"),
                r,
                format!("if '*/{sub}' is present, must not specify {r}"),
            ));
        }
        if sub == "*" {
            with_wild_sub.push(res.to_owned());
        }
        if res == "*" {
            with_wild_res.push(sub.to_owned());
        }
    }
    if resources.len() > 1 && double {
        errs.push(FieldError::invalid_raw(
            rpath.clone(),
            go_strings(&resources),
            "if '*/*' is present, must not specify other resources",
        ));
    }
    if single && plain {
        errs.push(FieldError::invalid_raw(
            rpath,
            go_strings(&resources),
            "if '*' is present, must not specify other resources without subresources",
        ));
    }
    if let Some(scope) = rule.get("scope").and_then(Value::as_str)
        && !["*", "Cluster", "Namespaced"].contains(&scope)
    {
        errs.push(FieldError::not_supported(
            format!("{path}.scope"),
            scope,
            &["*", "Cluster", "Namespaced"],
        ));
    }
}

/// `ValidateWebhookURL` with https forced.
fn validate_url(path: &str, raw: &str, errs: &mut Vec<FieldError>) {
    const FORM: &str = "; desired format: https://host[/path]";
    let (scheme, rest) = raw.split_once("://").unwrap_or(("", raw));
    if scheme != "https" {
        errs.push(FieldError::invalid_str(
            path,
            scheme,
            format!("'https' is the only allowed URL scheme{FORM}"),
        ));
    }
    let authority = if raw.contains("://") {
        rest.split(['/', '?', '#']).next().unwrap_or("")
    } else {
        ""
    };
    let (user, host) = match authority.rsplit_once('@') {
        Some((user, host)) => (Some(user), host),
        None => (None, authority),
    };
    if host.is_empty() {
        errs.push(FieldError::invalid_str(
            path,
            host,
            format!("host must be provided{FORM}"),
        ));
    }
    if let Some(user) = user {
        errs.push(FieldError::invalid_str(
            path,
            user,
            "user information is not permitted in the URL",
        ));
    }
    if let Some((_, fragment)) = raw.split_once('#')
        && !fragment.is_empty()
    {
        errs.push(FieldError::invalid_str(
            path,
            fragment,
            "fragments are not permitted in the URL",
        ));
    }
    let before_fragment = raw.split('#').next().unwrap_or("");
    if let Some((_, query)) = before_fragment.split_once('?')
        && !query.is_empty()
    {
        errs.push(FieldError::invalid_str(
            path,
            query,
            "query parameters are not permitted in the URL",
        ));
    }
}

/// `ValidateWebhookService`. The real validator is called with the service's name and
/// namespace swapped (`ValidateWebhookService(fldPath, cc.Service.Name, cc.Service.Namespace,
/// …)` against a `(namespace, name)` signature), so a missing name is reported as a missing
/// namespace and the other way round; copied as is.
fn validate_service(path: &str, service: &Value, errs: &mut Vec<FieldError>) {
    let name = service.get("name").and_then(Value::as_str).unwrap_or("");
    let namespace = service
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    if namespace.is_empty() {
        errs.push(FieldError::required(
            format!("{path}.name"),
            "service name is required",
        ));
    }
    if name.is_empty() {
        errs.push(FieldError::required(
            format!("{path}.namespace"),
            "service namespace is required",
        ));
    }
    let port = service.get("port").and_then(Value::as_i64).unwrap_or(443);
    if !(1..=65535).contains(&port) {
        errs.push(FieldError::invalid_raw(
            format!("{path}.port"),
            port.to_string(),
            "port is not valid: must be between 1 and 65535, inclusive",
        ));
    }
    let Some(url_path) = service.get("path").and_then(Value::as_str) else {
        return;
    };
    if url_path.is_empty() || url_path == "/" {
        return;
    }
    let ppath = format!("{path}.path");
    if url_path == "//" {
        errs.push(FieldError::invalid_str(
            ppath,
            url_path,
            "segment[0] may not be empty",
        ));
        return;
    }
    if !url_path.starts_with('/') {
        errs.push(FieldError::invalid_str(
            ppath.clone(),
            url_path,
            "must start with a '/'",
        ));
    }
    let trimmed = url_path.get(1..).unwrap_or("");
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    for (i, step) in trimmed.split('/').enumerate() {
        if step.is_empty() {
            errs.push(FieldError::invalid_str(
                ppath.clone(),
                url_path,
                format!("segment[{i}] may not be empty"),
            ));
            continue;
        }
        for failure in validation::dns1123_subdomain_errors(step) {
            errs.push(FieldError::invalid_str(
                ppath.clone(),
                url_path,
                format!("segment[{i}]: {failure}"),
            ));
        }
    }
}

/// `validateAdmissionReviewVersions`.
fn validate_review_versions(
    path: &str,
    versions: Option<&Value>,
    require_known: bool,
    errs: &mut Vec<FieldError>,
) {
    let versions = strings(versions);
    let accepted = ADMISSION_REVIEW_VERSIONS.join(", ");
    if versions.is_empty() {
        errs.push(FieldError::required(
            path,
            format!("must specify one of {accepted}"),
        ));
        return;
    }
    let mut seen: Vec<&str> = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        if seen.contains(&v.as_str()) {
            errs.push(FieldError::invalid_str(
                format!("{path}[{i}]"),
                v,
                "duplicate version",
            ));
            continue;
        }
        seen.push(v);
    }
    if require_known
        && !versions
            .iter()
            .any(|v| ADMISSION_REVIEW_VERSIONS.contains(&v.as_str()))
    {
        errs.push(FieldError::invalid_raw(
            path,
            go_strings(&versions),
            format!("must include at least one of {accepted}"),
        ));
    }
}

const NO_SIDE_EFFECTS: &[&str] = &["None", "NoneOnDryRun"];
const ALL_SIDE_EFFECTS: &[&str] = &["None", "NoneOnDryRun", "Some", "Unknown"];

/// `ValidateMutatingWebhookConfiguration` / `…Update` (ratcheting on the old object's webhooks).
pub(crate) fn validate(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let empty = Vec::new();
    let hooks = obj
        .get("webhooks")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let old_hooks = old
        .and_then(|o| o.get("webhooks"))
        .and_then(Value::as_array);
    // What an update may keep because the old object already had it.
    let require_no_side_effects = old_hooks.is_none_or(|hs| {
        hs.iter().all(|h| {
            h.get("sideEffects")
                .and_then(Value::as_str)
                .is_some_and(|s| NO_SIDE_EFFECTS.contains(&s))
        })
    });
    let require_known_versions = old_hooks.is_none_or(|hs| {
        hs.iter().all(|h| {
            let vs = strings(h.get("admissionReviewVersions"));
            vs.is_empty()
                || vs
                    .iter()
                    .any(|v| ADMISSION_REVIEW_VERSIONS.contains(&v.as_str()))
        })
    });
    let mut names: Vec<&str> = Vec::new();
    for (i, hook) in hooks.iter().enumerate() {
        let path = format!("webhooks[{i}]");
        let name = hook.get("name").and_then(Value::as_str).unwrap_or("");
        fully_qualified_name(&format!("{path}.name"), name, errs);
        for (j, rule) in hook
            .get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            validate_rule(rule, &format!("{path}.rules[{j}]"), errs);
        }
        let field = |k: &str| hook.get(k).and_then(Value::as_str);
        if let Some(p) = field("failurePolicy")
            && !["Fail", "Ignore"].contains(&p)
        {
            errs.push(FieldError::not_supported(
                format!("{path}.failurePolicy"),
                p,
                &["Fail", "Ignore"],
            ));
        }
        if let Some(p) = field("matchPolicy")
            && !["Equivalent", "Exact"].contains(&p)
        {
            errs.push(FieldError::not_supported(
                format!("{path}.matchPolicy"),
                p,
                &["Equivalent", "Exact"],
            ));
        }
        let allowed = if require_no_side_effects {
            NO_SIDE_EFFECTS
        } else {
            ALL_SIDE_EFFECTS
        };
        match field("sideEffects") {
            None => errs.push(FieldError::required(
                format!("{path}.sideEffects"),
                format!("must specify one of {}", allowed.join(", ")),
            )),
            Some(s) if !allowed.contains(&s) => errs.push(FieldError::not_supported(
                format!("{path}.sideEffects"),
                s,
                allowed,
            )),
            Some(_) => {}
        }
        if let Some(t) = hook.get("timeoutSeconds").and_then(Value::as_i64)
            && !(1..=30).contains(&t)
        {
            errs.push(FieldError::invalid_raw(
                format!("{path}.timeoutSeconds"),
                t.to_string(),
                "the timeout value must be between 1 and 30 seconds",
            ));
        }
        for selector in ["namespaceSelector", "objectSelector"] {
            if let Some(s) = hook.get(selector) {
                validate_selector(s, &format!("{path}.{selector}"), errs);
            }
        }
        if let Some(p) = field("reinvocationPolicy")
            && !["IfNeeded", "Never"].contains(&p)
        {
            errs.push(FieldError::not_supported(
                format!("{path}.reinvocationPolicy"),
                p,
                &["IfNeeded", "Never"],
            ));
        }
        let cc = hook
            .get("clientConfig")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let cc_path = format!("{path}.clientConfig");
        match (cc.get("url").and_then(Value::as_str), cc.get("service")) {
            (Some(url), None) => validate_url(&format!("{cc_path}.url"), url, errs),
            (None, Some(service)) if service.is_object() => {
                validate_service(&format!("{cc_path}.service"), service, errs);
            }
            _ => errs.push(FieldError::required(
                cc_path,
                "exactly one of url or service is required",
            )),
        }
        validate_review_versions(
            &format!("{path}.admissionReviewVersions"),
            hook.get("admissionReviewVersions"),
            require_known_versions,
            errs,
        );
        if !name.is_empty() {
            if names.contains(&name) {
                errs.push(FieldError::duplicate(format!("{path}.name"), name));
            } else {
                names.push(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(hook: Value) -> Value {
        let mut obj = json!({"metadata": {"name": "c"}, "webhooks": [hook]});
        apply_defaults(&mut obj);
        obj
    }

    fn errors(obj: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        validate(obj, None, &mut errs);
        errs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_webhook_is_defaulted_as_the_real_server_defaults_it() {
        let obj = config(json!({
            "name": "inject.keyturn.dev", "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "clientConfig": {"service": {"name": "keyturn", "namespace": "keyturn"}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
        }));
        let hook = &obj["webhooks"][0];
        assert_eq!(hook["failurePolicy"], "Fail");
        assert_eq!(hook["matchPolicy"], "Equivalent");
        assert_eq!(hook["reinvocationPolicy"], "Never");
        assert_eq!(hook["timeoutSeconds"], 10);
        assert_eq!(hook["namespaceSelector"], json!({}));
        assert_eq!(hook["rules"][0]["scope"], "*");
        assert_eq!(hook["clientConfig"]["service"]["port"], 443);
        assert!(errors(&obj).is_empty(), "{:?}", errors(&obj));
    }

    #[test]
    fn names_side_effects_and_client_config_are_checked_with_the_real_wording() {
        let obj = config(json!({
            "name": "inject.keyturn", "admissionReviewVersions": ["v2"],
            "clientConfig": {"url": "http://example.com/x?y=1"}, "timeoutSeconds": 31,
        }));
        assert_eq!(
            errors(&obj),
            [
                r#"webhooks[0].name: Invalid value: "inject.keyturn": should be a domain with at least three segments separated by dots"#,
                "webhooks[0].sideEffects: Required value: must specify one of None, NoneOnDryRun",
                "webhooks[0].timeoutSeconds: Invalid value: 31: the timeout value must be between 1 and 30 seconds",
                r#"webhooks[0].clientConfig.url: Invalid value: "http": 'https' is the only allowed URL scheme; desired format: https://host[/path]"#,
                r#"webhooks[0].clientConfig.url: Invalid value: "y=1": query parameters are not permitted in the URL"#,
                r#"webhooks[0].admissionReviewVersions: Invalid value: []string{"v2"}: must include at least one of v1, v1beta1"#,
            ]
        );
        let both = config(json!({
            "name": "a.b.c", "sideEffects": "Some", "admissionReviewVersions": ["v1"],
            "clientConfig": {},
        }));
        assert_eq!(
            errors(&both),
            [
                r#"webhooks[0].sideEffects: Unsupported value: "Some": supported values: "None", "NoneOnDryRun""#,
                "webhooks[0].clientConfig: Required value: exactly one of url or service is required",
            ]
        );
    }
}

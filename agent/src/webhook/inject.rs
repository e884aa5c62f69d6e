//! The injection decision for one pod: skip it, inject keyturn-init (a JSONPatch and the
//! warnings to show), or deny it with a message naming the annotation.
//!
//! Pure: the pod's JSON and the webhook's settings in, a [`Decision`] out. The pod's
//! annotations are validated exactly as keyturn-init will read them (the same parser, fed the
//! file the kubelet's downward API will write), so a pod that would fail at start is refused
//! at admission instead. Every injector annotation gets the answer
//! [`keyturn_init::compat::TABLE`] gives it: read here, read by keyturn-init, warned about
//! (it tunes the injector's sidecar, which keyturn does not run), or denied.
//!
//! What is added, and why each piece looks as it does:
//! - the `keyturn-init` init container, last (first with `agent-init-first`), with only
//!   `args` (the image's entrypoint is the binary), the restricted security context and
//!   the user of the app container it serves, so the 0400 files are that user's;
//! - a downward-API volume with the pod's annotations (keyturn-init's `--annotations`);
//! - a projected service-account token (audience and lifetime from the webhook's flags):
//!   the pod's own identity, never the legacy Secret-based token;
//! - the audit HMAC key from a Secret in the pod's namespace (`--audit-hmac-secret`): every
//!   read keyturn-init makes is audited, keyed, before it happens, or does not happen;
//! - a memory-backed emptyDir at `/vault/secrets` (or `secret-volume-path`), mounted
//!   read-only into the app containers `agent-inject-containers` names (default all);
//! - `agent-inject-status: injected`, so a second admission (reinvocation, a re-created
//!   pod spec) never injects twice.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use keyturn_init::compat::{self, Answer, KEYTURN_PREFIX};

/// Namespaces never injected: the cluster's own.
const SYSTEM_NAMESPACES: [&str; 2] = ["kube-system", "kube-public"];
/// The injected init container's name; a pod that already has one is not injected again.
pub const INIT_CONTAINER: &str = "keyturn-init";
/// The volumes keyturn adds.
const PODINFO_VOLUME: &str = "keyturn-podinfo";
const TOKEN_VOLUME: &str = "keyturn-token";
const SECRETS_VOLUME: &str = "keyturn-secrets";
const TLS_VOLUME: &str = "keyturn-vault-tls";
const AUDIT_KEY_VOLUME: &str = "keyturn-audit-key";
/// Where they are mounted in the init container.
const PODINFO_DIR: &str = "/etc/keyturn/podinfo";
const TOKEN_DIR: &str = "/var/run/secrets/keyturn/serviceaccount";
const TLS_DIR: &str = "/vault/tls";
const AUDIT_KEY_DIR: &str = "/etc/keyturn/audit";
/// The file the audit HMAC key is mounted as.
const AUDIT_KEY_FILE: &str = "hmac.key";
/// The injector's default secrets directory.
const SECRETS_DIR: &str = "/vault/secrets";
/// The image's user (images/keyturn-init.Containerfile), when the app gives none.
const IMAGE_USER: i64 = 65532;

/// The init container's resources when the pod's annotations give none.
#[derive(Debug, Clone)]
pub struct InitResources {
    /// `requests.cpu`.
    pub cpu_request: String,
    /// `requests.memory`.
    pub memory_request: String,
    /// `limits.cpu`.
    pub cpu_limit: String,
    /// `limits.memory`.
    pub memory_limit: String,
}

impl Default for InitResources {
    fn default() -> Self {
        Self {
            cpu_request: "10m".into(),
            memory_request: "16Mi".into(),
            cpu_limit: "500m".into(),
            memory_limit: "64Mi".into(),
        }
    }
}

/// What the webhook adds to a pod, from its flags.
#[derive(Debug, Clone)]
pub struct InjectConfig {
    /// The keyturn-init image.
    pub init_image: String,
    /// Its pull policy.
    pub image_pull_policy: String,
    /// `VAULT_ADDR` for the init container (the pod's `service` annotation wins: keyturn-init
    /// reads it itself).
    pub vault_addr: Option<String>,
    /// `VAULT_CACERT` for the init container: a path inside the pod (`ca-cert` wins).
    pub vault_cacert: Option<String>,
    /// A Secret in the pod's namespace mounted at `/vault/tls` (`tls-secret` wins).
    pub vault_tls_secret: Option<String>,
    /// The projected token's audience; `None`: the API server's own.
    pub token_audience: Option<String>,
    /// The projected token's lifetime (the kubelet refreshes it; keyturn-init reads it once).
    pub token_expiration_seconds: i64,
    /// Default resources.
    pub resources: InitResources,
    /// The webhook's own namespace: its pods are never injected.
    pub own_namespace: String,
    /// The Secret, in the pod's namespace, whose key keyturn-init keys its audit events with:
    /// keyturn-init refuses to fetch a secret it cannot audit, and the FROM-scratch image has
    /// no state directory to keep a key of its own in. Never the daemon's key: everyone who
    /// can read Secrets or run pods in the namespace can read this one.
    pub audit_hmac_secret: String,
    /// The key in that Secret that holds it.
    pub audit_hmac_secret_key: String,
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            init_image: String::new(),
            image_pull_policy: "IfNotPresent".into(),
            vault_addr: None,
            vault_cacert: None,
            vault_tls_secret: None,
            token_audience: None,
            token_expiration_seconds: 3600,
            resources: InitResources::default(),
            own_namespace: String::new(),
            audit_hmac_secret: "keyturn-init-audit-hmac".into(),
            audit_hmac_secret_key: "hmac.key".into(),
        }
    }
}

/// The webhook's answer for one pod.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Not for keyturn (no inject annotation, already injected, an excluded namespace).
    Skip {
        /// Why, for the debug log.
        reason: &'static str,
    },
    /// Inject: the JSONPatch to return and the warnings to show the user.
    Inject {
        /// RFC 6902 operations on the pod.
        patch: json_patch::Patch,
        /// AdmissionReview `warnings`: annotations keyturn answers differently.
        warnings: Vec<String>,
    },
    /// Refuse the pod: the message names the annotation.
    Deny {
        /// Shown to whoever created the pod.
        message: String,
    },
}

/// Decides for pods.
#[derive(Debug, Clone)]
pub struct Injector {
    /// The settings.
    pub config: InjectConfig,
}

/// What the webhook-level annotations ask for, once read.
#[derive(Debug, Default)]
struct Asked {
    /// The prefix of the `agent-inject` annotation that asked (the status goes under it).
    prefix: &'static str,
    containers: Option<Vec<String>>,
    init_first: bool,
    out_dir: Option<String>,
    resources: BTreeMap<(&'static str, &'static str), String>,
    run_as_user: Option<i64>,
    run_as_group: Option<i64>,
    same_user: bool,
    ca_cert: Option<String>,
    tls_secret: Option<String>,
    log: Option<&'static str>,
    log_format: Option<&'static str>,
    skip_verify: bool,
}

/// Go's `strconv.ParseBool`, which the injector uses for its annotations.
fn go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// A Kubernetes quantity (`250m`, `64Mi`, `1.5`, `1e3`): checked here, because a bad one
/// fails the pod's create with a message about a container the user never wrote. Resources
/// cannot be negative, so a sign is refused.
#[must_use]
pub fn is_quantity(v: &str) -> bool {
    quantity_value(v).is_some()
}

/// A quantity's value, for comparing a request with a limit; `None` if it is not one.
fn quantity_value(v: &str) -> Option<f64> {
    let v = v.strip_prefix('+').unwrap_or(v);
    let digits_end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, suffix) = v.split_at(digits_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let n: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0_f64.powi(2),
        "Gi" => 1024.0_f64.powi(3),
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        e => {
            let exp = e.strip_prefix(['e', 'E'])?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            10f64.powi(exp.parse::<i32>().ok()?)
        }
    };
    Some(n * scale)
}

/// The resource name as `Asked::resources` keys it.
fn resource_key(resource: &str) -> &'static str {
    match resource {
        "cpu" => "cpu",
        "memory" => "memory",
        _ => "ephemeral-storage",
    }
}

/// A JSON pointer token (RFC 6901): `~` and `/` escaped, as annotation keys need.
fn pointer_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn annotations_of(pod: &Value) -> BTreeMap<String, String> {
    pod.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The file the kubelet's downward API writes for `metadata.annotations`: one `key="value"`
/// line per annotation, sorted by key, the value quoted as Go's `%q`.
#[must_use]
pub fn downward_api_file(annotations: &BTreeMap<String, String>) -> String {
    annotations
        .iter()
        .map(|(k, v)| format!("{k}={}\n", keyturn_init::annotations::go_quote(v)))
        .collect()
}

fn names(list: Option<&Value>) -> Vec<&str> {
    list.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

impl Injector {
    /// The decision for `pod` (the AdmissionReview's `object`) created in `namespace`.
    #[must_use]
    pub fn decide(&self, namespace: &str, pod: &Value) -> Decision {
        if SYSTEM_NAMESPACES.contains(&namespace) || namespace == self.config.own_namespace {
            return Decision::Skip {
                reason: "the namespace is never injected",
            };
        }
        let annotations = annotations_of(pod);
        let mut prefix = None;
        for p in compat::PREFIXES {
            let key = format!("{p}agent-inject");
            if let Some(v) = annotations.get(&key) {
                match go_bool(v) {
                    Some(true) => prefix = prefix.or(Some(p)),
                    Some(false) => {}
                    None => {
                        return Decision::Deny {
                            message: format!("{key} is not a boolean; write true or false"),
                        };
                    }
                }
            }
        }
        let Some(prefix) = prefix else {
            return Decision::Skip {
                reason: "no agent-inject annotation",
            };
        };
        let injected = compat::PREFIXES.iter().any(|p| {
            annotations
                .get(&format!("{p}agent-inject-status"))
                .is_some_and(|v| v == "injected")
        });
        let has_init = names(pod.pointer("/spec/initContainers")).contains(&INIT_CONTAINER);
        if injected || has_init {
            return Decision::Skip {
                reason: "already injected",
            };
        }

        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let asked = self.read_annotations(prefix, &annotations, pod, &mut problems, &mut warnings);
        // The same parse keyturn-init will run on the file the kubelet writes.
        if let Err(errors) =
            keyturn_init::annotations::parse("annotations", &downward_api_file(&annotations))
        {
            problems.extend(errors.into_iter().map(|e| e.message));
        }
        if !problems.is_empty() {
            return Decision::Deny {
                message: format!("keyturn cannot inject this pod: {}", problems.join("; ")),
            };
        }
        match self.patch(&asked, pod, &mut warnings) {
            Ok(patch) => Decision::Inject { patch, warnings },
            Err(message) => Decision::Deny {
                message: format!("keyturn cannot inject this pod: {message}"),
            },
        }
    }

    /// Reads the annotations the webhook acts on, and answers the rest per the table.
    #[allow(clippy::too_many_lines)] // one arm per annotation, in the table's order
    fn read_annotations(
        &self,
        prefix: &'static str,
        annotations: &BTreeMap<String, String>,
        pod: &Value,
        problems: &mut Vec<String>,
        warnings: &mut Vec<String>,
    ) -> Asked {
        let mut asked = Asked {
            prefix,
            ..Asked::default()
        };
        let mut pre_populate_only = false;
        let containers = names(pod.pointer("/spec/containers"));
        let init_containers = names(pod.pointer("/spec/initContainers"));
        for (key, value) in annotations {
            let Some((p, name)) = compat::split(key) else {
                continue;
            };
            if p == KEYTURN_PREFIX && name.starts_with(compat::SHARED) {
                continue;
            }
            let boolean = |problems: &mut Vec<String>| {
                let b = go_bool(value);
                if b.is_none() {
                    problems.push(format!("{key} is not a boolean; write true or false"));
                }
                b
            };
            match compat::lookup(name).map(|r| r.answer) {
                Some(Answer::Warn(why)) => warnings.push(format!("{key} is ignored: {why}")),
                // keyturn-init's parse reports these (and unknown agent-inject-*) by name.
                Some(Answer::Deny(_) | Answer::Init) => {}
                None if p == KEYTURN_PREFIX || name.starts_with("agent-inject") => {}
                None => warnings.push(format!(
                    "{key} is not a Vault injector annotation keyturn knows; it is ignored"
                )),
                Some(Answer::Webhook) => match name {
                    "agent-inject" | "agent-inject-status" => {}
                    "agent-inject-containers" => {
                        let wanted: Vec<String> = value
                            .split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect();
                        for w in &wanted {
                            if !containers.contains(&w.as_str())
                                && !init_containers.contains(&w.as_str())
                            {
                                problems.push(format!(
                                    "{key} names {w:?}, which is not a container of this pod"
                                ));
                            }
                        }
                        if wanted.is_empty() {
                            problems.push(format!("{key} names no container"));
                        }
                        asked.containers = Some(wanted);
                    }
                    "agent-init-first" => asked.init_first = boolean(problems).unwrap_or(false),
                    "agent-pre-populate" => {
                        if boolean(problems) == Some(false) {
                            problems.push(format!(
                                "{key}: \"false\" asks for the agent sidecar alone; keyturn only renders the files before the app starts (agent-pre-populate-only)"
                            ));
                        }
                    }
                    "agent-pre-populate-only" => {
                        pre_populate_only = boolean(problems).unwrap_or(false);
                    }
                    "agent-limits-cpu"
                    | "agent-limits-mem"
                    | "agent-limits-ephemeral"
                    | "agent-requests-cpu"
                    | "agent-requests-mem"
                    | "agent-requests-ephemeral" => {
                        if !is_quantity(value) {
                            problems.push(format!(
                                "{key} is not a Kubernetes quantity (such as 250m or 64Mi)"
                            ));
                            continue;
                        }
                        let (kind, rest) = name
                            .strip_prefix("agent-")
                            .and_then(|n| n.split_once('-'))
                            .unwrap_or_default();
                        let resource = match rest {
                            "cpu" => "cpu",
                            "mem" => "memory",
                            _ => "ephemeral-storage",
                        };
                        let kind = if kind == "limits" {
                            "limits"
                        } else {
                            "requests"
                        };
                        asked.resources.insert((kind, resource), value.clone());
                    }
                    "agent-run-as-user" | "agent-run-as-group" => match value.parse::<i64>() {
                        Ok(0) => problems.push(format!(
                            "{key}: keyturn-init runs as a non-root user; give a non-zero id"
                        )),
                        // Kubernetes takes ids up to 2^31 - 1.
                        Ok(id) if (1..=i64::from(i32::MAX)).contains(&id) => {
                            if name.ends_with("user") {
                                asked.run_as_user = Some(id);
                            } else {
                                asked.run_as_group = Some(id);
                            }
                        }
                        _ => problems.push(format!("{key} is not a numeric id")),
                    },
                    "agent-run-as-same-user" => {
                        asked.same_user = boolean(problems).unwrap_or(false)
                    }
                    "agent-set-security-context" => {
                        if boolean(problems) == Some(false) {
                            warnings.push(format!(
                                "{key} is ignored: keyturn-init always runs with the restricted security context"
                            ));
                        }
                    }
                    "secret-volume-path" => {
                        let dir = value.trim_end_matches('/');
                        let within = |own: &str| {
                            dir == own || dir.strip_prefix(own).is_some_and(|r| r.starts_with('/'))
                        };
                        if [PODINFO_DIR, TOKEN_DIR, TLS_DIR, AUDIT_KEY_DIR]
                            .into_iter()
                            .any(within)
                        {
                            problems.push(format!(
                                "{key} names a directory in or at one keyturn-init mounts its own volume at"
                            ));
                        } else if value.starts_with('/')
                            && !dir.is_empty()
                            && !dir[1..]
                                .split('/')
                                .any(|c| c.is_empty() || c == ".." || c == ".")
                        {
                            asked.out_dir = Some(dir.to_owned());
                        } else {
                            problems.push(format!(
                                "{key} must be an absolute directory path other than /"
                            ));
                        }
                    }
                    n if n.starts_with("error-on-missing-key-") => {
                        if boolean(problems) == Some(false) {
                            warnings.push(format!(
                                "{key} is ignored: keyturn-init always fails on a missing key, naming the secret and field"
                            ));
                        }
                    }
                    "auth-type" => {
                        if value != "kubernetes" {
                            problems.push(format!(
                                "{key}: keyturn-init logs in with the kubernetes auth method only"
                            ));
                        }
                    }
                    "ca-cert" => {
                        if value.starts_with('/') {
                            asked.ca_cert = Some(value.clone());
                        } else {
                            problems.push(format!("{key} must be an absolute path inside the pod"));
                        }
                    }
                    "tls-secret" => {
                        if value.is_empty() {
                            problems.push(format!("{key} names no Secret"));
                        } else {
                            asked.tls_secret = Some(value.clone());
                        }
                    }
                    "log-level" => match value.as_str() {
                        "trace" | "debug" | "info" | "warn" | "error" => {
                            asked.log = ["trace", "debug", "info", "warn", "error"]
                                .into_iter()
                                .find(|l| l == value);
                        }
                        _ => problems.push(format!(
                            "{key} is not one of trace, debug, info, warn, error"
                        )),
                    },
                    "log-format" => match value.as_str() {
                        "json" => asked.log_format = Some("json"),
                        "standard" => asked.log_format = Some("text"),
                        _ => problems.push(format!("{key} is not json or standard")),
                    },
                    "tls-skip-verify" => {
                        if boolean(problems) == Some(true) {
                            asked.skip_verify = true;
                            warnings.push(format!(
                                "{key}: keyturn-init will not verify Vault's certificate; anyone on the path can read the pod's secrets"
                            ));
                        }
                    }
                    other => {
                        // The table says the webhook reads it; a new row without an arm here
                        // is a bug, refused rather than ignored.
                        problems.push(format!("{key} is not handled by keyturn webhook ({other})"));
                    }
                },
            }
        }
        if !pre_populate_only {
            warnings.push(format!(
                "{prefix}agent-pre-populate-only is not \"true\": keyturn renders the files once, before the app starts, and runs no sidecar to keep them current"
            ));
        }
        asked
    }

    /// The JSONPatch for an injection, or why the pod cannot take one.
    fn patch(
        &self,
        asked: &Asked,
        pod: &Value,
        warnings: &mut Vec<String>,
    ) -> Result<json_patch::Patch, String> {
        let c = &self.config;
        let spec = pod.get("spec").unwrap_or(&Value::Null);
        let containers = spec
            .get("containers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let out_dir = asked.out_dir.as_deref().unwrap_or(SECRETS_DIR);

        let existing_volumes = names(spec.get("volumes"));
        for v in [
            PODINFO_VOLUME,
            TOKEN_VOLUME,
            SECRETS_VOLUME,
            TLS_VOLUME,
            AUDIT_KEY_VOLUME,
        ] {
            if existing_volumes.contains(&v) {
                return Err(format!("the pod already has a volume named {v}"));
            }
        }

        let wants = |ct: &Value| {
            let n = ct.get("name").and_then(Value::as_str).unwrap_or("");
            asked
                .containers
                .as_ref()
                .is_none_or(|w| w.iter().any(|w| w == n))
        };
        // The app containers that get the secrets, by index.
        let targets: Vec<usize> = containers
            .iter()
            .enumerate()
            .filter(|(_, ct)| wants(ct))
            .map(|(i, _)| i)
            .collect();
        // The pod's own init containers get them too when they run after keyturn-init
        // (`agent-init-first`), as the injector mounts them: a migration reading its
        // credentials is what init-first is for. Before it, they would see an empty dir.
        let inits = spec
            .get("initContainers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let init_targets: Vec<usize> = if asked.init_first {
            inits
                .iter()
                .enumerate()
                .filter(|(_, ct)| wants(ct))
                .map(|(i, _)| i)
                .collect()
        } else {
            if let Some(named) = &asked.containers {
                for ct in &inits {
                    let n = ct.get("name").and_then(Value::as_str).unwrap_or("");
                    if named.iter().any(|w| w == n) {
                        warnings.push(format!(
                            "{}agent-inject-containers names init container {n}, which runs before keyturn-init and sees no secrets; set agent-init-first to \"true\"",
                            asked.prefix
                        ));
                    }
                }
            }
            Vec::new()
        };
        let mounted = targets
            .iter()
            .map(|&i| &containers[i])
            .chain(init_targets.iter().map(|&i| &inits[i]));
        for ct in mounted {
            // The API server compares mount paths as written, the runtime as cleaned.
            let taken = ct
                .get("volumeMounts")
                .and_then(Value::as_array)
                .is_some_and(|m| {
                    m.iter().any(|m| {
                        m.get("mountPath")
                            .and_then(Value::as_str)
                            .is_some_and(|p| p.trim_end_matches('/') == out_dir)
                    })
                });
            if taken {
                return Err(format!(
                    "container {} already mounts a volume at {out_dir}",
                    ct.get("name").and_then(Value::as_str).unwrap_or("")
                ));
            }
        }

        let (user, group) = self.identity(asked, spec, &containers, &targets, warnings)?;

        let mut env = Vec::new();
        if let Some(addr) = &c.vault_addr {
            env.push(json!({"name": "VAULT_ADDR", "value": addr}));
        }
        if let Some(ca) = asked.ca_cert.as_ref().or(c.vault_cacert.as_ref()) {
            env.push(json!({"name": "VAULT_CACERT", "value": ca}));
        }
        if asked.skip_verify {
            env.push(json!({"name": "VAULT_SKIP_VERIFY", "value": "true"}));
        }
        env.push(json!({"name": "KEYTURN_INIT_JWT_FILE", "value": format!("{TOKEN_DIR}/token")}));
        env.push(json!({"name": "KEYTURN_AUDIT_HMAC_KEY_FILE", "value": format!("{AUDIT_KEY_DIR}/{AUDIT_KEY_FILE}")}));
        env.push(json!({"name": "KEYTURN_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}));
        env.push(
            json!({"name": "KEYTURN_LOG_FORMAT", "value": asked.log_format.unwrap_or("json")}),
        );
        if let Some(level) = asked.log {
            env.push(json!({"name": "KEYTURN_LOG", "value": level}));
        }

        let mut requests = serde_json::Map::new();
        let mut limits = serde_json::Map::new();
        requests.insert("cpu".into(), json!(c.resources.cpu_request));
        requests.insert("memory".into(), json!(c.resources.memory_request));
        limits.insert("cpu".into(), json!(c.resources.cpu_limit));
        limits.insert("memory".into(), json!(c.resources.memory_limit));
        for ((kind, resource), v) in &asked.resources {
            let map = if *kind == "limits" {
                &mut limits
            } else {
                &mut requests
            };
            map.insert((*resource).into(), json!(v));
        }
        // A request above its limit is refused by the API server, naming a container the
        // user never wrote: a default limit rises to an annotated request; an annotated
        // limit below its request is the user's to fix.
        for (resource, request) in requests.clone() {
            let (Some(req), Some(lim)) = (
                request.as_str().and_then(quantity_value),
                limits
                    .get(&resource)
                    .and_then(Value::as_str)
                    .and_then(quantity_value),
            ) else {
                continue;
            };
            if req <= lim {
                continue;
            }
            let short = if resource == "memory" {
                "mem"
            } else {
                resource.as_str()
            };
            if asked
                .resources
                .contains_key(&("limits", resource_key(&resource)))
            {
                return Err(format!(
                    "{p}agent-requests-{short} is above {p}agent-limits-{short}",
                    p = asked.prefix
                ));
            }
            limits.insert(resource.clone(), request.clone());
        }

        let tls_secret = asked.tls_secret.as_ref().or(c.vault_tls_secret.as_ref());
        let mut mounts = vec![
            json!({"name": PODINFO_VOLUME, "mountPath": PODINFO_DIR, "readOnly": true}),
            json!({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}),
            json!({"name": SECRETS_VOLUME, "mountPath": out_dir}),
            json!({"name": AUDIT_KEY_VOLUME, "mountPath": AUDIT_KEY_DIR, "readOnly": true}),
        ];
        if tls_secret.is_some() {
            mounts.push(json!({"name": TLS_VOLUME, "mountPath": TLS_DIR, "readOnly": true}));
        }
        let init = json!({
            "name": INIT_CONTAINER,
            "image": c.init_image,
            "imagePullPolicy": c.image_pull_policy,
            "args": ["--annotations", format!("{PODINFO_DIR}/annotations"), "--out", out_dir],
            "env": env,
            "resources": {"requests": requests, "limits": limits},
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": user,
                "runAsGroup": group,
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "volumeMounts": mounts,
        });

        let mut token = json!({"path": "token", "expirationSeconds": c.token_expiration_seconds});
        if let Some(aud) = &c.token_audience {
            token["audience"] = json!(aud);
        }
        let mut volumes = vec![
            json!({"name": PODINFO_VOLUME, "downwardAPI": {"items": [{"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}]}}),
            json!({"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": token}]}}),
            json!({"name": SECRETS_VOLUME, "emptyDir": {"medium": "Memory"}}),
            // 0444: the init container runs as the app's user, not the Secret volume's owner
            // (root), and it is the only container that mounts this volume.
            json!({"name": AUDIT_KEY_VOLUME, "secret": {"secretName": c.audit_hmac_secret, "defaultMode": 0o444, "items": [{"key": c.audit_hmac_secret_key, "path": AUDIT_KEY_FILE}]}}),
        ];
        if let Some(secret) = tls_secret {
            volumes.push(json!({"name": TLS_VOLUME, "secret": {"secretName": secret}}));
        }

        let mut ops = Vec::new();
        // An existing status (e.g. "update") is overwritten where it is, so the pod never
        // carries one under two prefixes (keyturn-init refuses a name given twice).
        let status_key = compat::PREFIXES
            .iter()
            .map(|p| format!("{p}agent-inject-status"))
            .find(|k| {
                pod.pointer(&format!("/metadata/annotations/{}", pointer_token(k)))
                    .is_some()
            })
            .unwrap_or_else(|| format!("{}agent-inject-status", asked.prefix));
        if pod.pointer("/metadata/annotations").is_some() {
            ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", pointer_token(&status_key)), "value": "injected"}));
        } else {
            ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {status_key: "injected"}}));
        }
        if spec.get("volumes").and_then(Value::as_array).is_some() {
            for v in volumes {
                ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": v}));
            }
        } else {
            ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
        }
        let app_mount = json!({"name": SECRETS_VOLUME, "mountPath": out_dir, "readOnly": true});
        // Before keyturn-init is inserted, so these indexes are still the pod's own.
        for &i in &init_targets {
            if inits[i]
                .get("volumeMounts")
                .and_then(Value::as_array)
                .is_some()
            {
                ops.push(json!({"op": "add", "path": format!("/spec/initContainers/{i}/volumeMounts/-"), "value": app_mount}));
            } else {
                ops.push(json!({"op": "add", "path": format!("/spec/initContainers/{i}/volumeMounts"), "value": [app_mount]}));
            }
        }
        match spec.get("initContainers").and_then(Value::as_array) {
            None => ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [init]})),
            Some(_) if asked.init_first => {
                ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": init}));
            }
            Some(_) => {
                ops.push(json!({"op": "add", "path": "/spec/initContainers/-", "value": init}))
            }
        }
        for &i in &targets {
            if containers[i]
                .get("volumeMounts")
                .and_then(Value::as_array)
                .is_some()
            {
                ops.push(json!({"op": "add", "path": format!("/spec/containers/{i}/volumeMounts/-"), "value": app_mount}));
            } else {
                ops.push(json!({"op": "add", "path": format!("/spec/containers/{i}/volumeMounts"), "value": [app_mount]}));
            }
        }
        serde_json::from_value(Value::Array(ops))
            .map_err(|e| format!("internal error building the patch: {e}"))
    }

    /// The init container's user and group: the annotations', else the app's (so the 0400
    /// files are the app's own), else the image's.
    fn identity(
        &self,
        asked: &Asked,
        spec: &Value,
        containers: &[Value],
        targets: &[usize],
        warnings: &mut Vec<String>,
    ) -> Result<(i64, i64), String> {
        let pod_ctx = spec.get("securityContext");
        let field = |ct: &Value, f: &str| {
            ct.pointer(&format!("/securityContext/{f}"))
                .and_then(Value::as_i64)
                .or_else(|| pod_ctx.and_then(|p| p.get(f)).and_then(Value::as_i64))
        };
        let app_users: Vec<(String, Option<i64>, Option<i64>)> = targets
            .iter()
            .map(|&i| {
                let ct = &containers[i];
                (
                    ct.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    field(ct, "runAsUser"),
                    field(ct, "runAsGroup"),
                )
            })
            .collect();
        let first = app_users.first();
        if asked.same_user && first.and_then(|f| f.1).is_none_or(|u| u == 0) {
            return Err(
                "agent-run-as-same-user is true, but the first app container has no non-root runAsUser to copy"
                    .into(),
            );
        }
        let app_user = first.and_then(|f| f.1).filter(|u| *u != 0);
        let user = asked.run_as_user.or(app_user).unwrap_or(IMAGE_USER);
        let group = asked
            .run_as_group
            .or(first.and_then(|f| f.2).filter(|g| *g != 0))
            .unwrap_or(IMAGE_USER);
        if asked.run_as_user.is_none() {
            let unknown: Vec<&str> = app_users
                .iter()
                .filter(|(_, u, _)| u.is_none())
                .map(|(n, _, _)| n.as_str())
                .collect();
            if !unknown.is_empty() {
                warnings.push(format!(
                    "container(s) {} declare no runAsUser, so the secret files (mode 0400 unless agent-inject-perms says otherwise) belong to uid {user}; set runAsUser or agent-run-as-user so the app can read them",
                    unknown.join(", ")
                ));
            }
            let mut others: Vec<i64> = app_users
                .iter()
                .filter_map(|(_, u, _)| *u)
                .filter(|u| *u != 0 && *u != user)
                .collect();
            others.dedup();
            if !others.is_empty() {
                warnings.push(format!(
                    "the app containers run as different users; the secret files belong to uid {user}, the first one's"
                ));
            }
        }
        Ok((user, group))
    }
}

#[cfg(test)]
mod tests;

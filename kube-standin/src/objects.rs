//! The verbs on stored objects: get, list, create, update, patch (merge/JSON/strategic/apply),
//! delete, deletecollection.
//!
//! Each write follows the real server's order, because clients depend on which error wins:
//! decode the body (400) → check name/namespace against the URL (400) → resourceVersion
//! precondition (409) → server-side-apply conflicts (409) → prepare and default → validate
//! (422) → store, bumping resourceVersion unless nothing changed.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use axum::http::StatusCode;
use rand::Rng as _;
use serde_json::{Value, json};

use super::auth::UserInfo;
use super::kinds;
use super::managed::{ManagedFields, Writer};
use super::patch::{self, PatchType};
use super::resources::ResourceKind;
use super::selectors::{FieldSelector, LabelSelector};
use super::server::Shared;
use super::status::{ApiError, FieldError, FieldErrorKind, go_quote};
use super::store::{Store, StoredObject};

/// A reply: HTTP status and JSON body.
pub(crate) type Reply = (StatusCode, Value);

/// Decoded query parameters.
#[derive(Debug, Default, Clone)]
pub(crate) struct Query(pub HashMap<String, String>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        let mut map = HashMap::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.insert(percent_decode(k), percent_decode(v));
        }
        Self(map)
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }

    pub fn flag(&self, k: &str) -> bool {
        matches!(
            self.0.get(k).map(String::as_str),
            Some("true" | "1" | "True")
        )
    }
}

/// `application/x-www-form-urlencoded` decoding of one query component.
fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi * 16 + lo);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One request on a stored resource.
#[derive(Debug)]
pub(crate) struct ObjectRequest<'a> {
    pub kind: &'static ResourceKind,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    /// `status` for a custom resource's status subresource; `None` for the object itself.
    pub subresource: Option<&'a str>,
    pub query: &'a Query,
    pub content_type: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub body: &'a [u8],
    /// Who is asking (admission webhooks are told).
    pub user: &'a UserInfo,
    /// `Warning` headers for the response (admission webhooks' `warnings`).
    pub warnings: &'a Mutex<Vec<String>>,
}

impl ObjectRequest<'_> {
    /// Adds a warning for the client, once, as the real server's warning recorder does.
    pub fn add_warning(&self, text: &str) {
        let mut warnings = self.warnings.lock().unwrap_or_else(PoisonError::into_inner);
        if !warnings.iter().any(|w| w == text) {
            warnings.push(text.to_owned());
        }
    }

    fn ns(&self) -> &str {
        self.namespace.unwrap_or("")
    }

    fn name(&self) -> &str {
        self.name.unwrap_or("")
    }

    /// A write to a custom resource's `/status` (see `crds`).
    fn status_write(&self) -> bool {
        self.subresource == Some("status")
    }

    fn dry_run(&self) -> bool {
        self.query.get("dryRun") == Some("All")
    }

    /// `fieldValidation=Strict`: unknown fields are an error (see `strict`).
    fn strict(&self) -> bool {
        self.query.get("fieldValidation") == Some("Strict")
    }

    /// The field manager of an Update: `fieldManager`, else the User-Agent up to its first `/`.
    fn update_manager(&self) -> String {
        if let Some(m) = self.query.get("fieldManager") {
            return m.to_owned();
        }
        self.user_agent
            .unwrap_or("")
            .split('/')
            .next()
            .unwrap_or("")
            .chars()
            .take(128)
            .collect()
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn set_meta(obj: &mut Value, field: &str, value: Value) {
    if let Some(map) = obj.as_object_mut() {
        let meta = map.entry("metadata").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert(field.to_owned(), value);
        }
    }
}

/// Decodes a create/update body (JSON, or YAML when sent as YAML).
fn decode_body(req: &ObjectRequest<'_>) -> Result<Value, ApiError> {
    let media = req
        .content_type
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    let value: Value = match media {
        "application/vnd.kubernetes.protobuf" => super::protobuf::decode(req.kind, req.body)?,
        "application/yaml" => serde_yaml::from_slice(req.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
        "application/json" | "" | "*/*" => serde_json::from_slice(req.body).map_err(|e| {
            ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                req.kind.kind, req.kind.version, req.kind.kind
            ))
        })?,
        other => {
            return Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf; got {other:?}"
            )));
        }
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: the body is not an object",
            req.kind.kind, req.kind.version, req.kind.kind
        )));
    }
    Ok(value)
}

/// `EnsureObjectNamespaceMatchesRequestNamespace` after the check: a namespaced object takes
/// the request's namespace, a cluster-scoped one (ClusterRole, …) loses any it was sent with.
fn scope_namespace(req: &ObjectRequest<'_>, obj: &mut Value) {
    if req.kind.namespaced {
        set_meta(obj, "namespace", json!(req.ns()));
    } else if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("namespace");
    }
}

/// `checkName` of the update/patch handlers: the body must name the object of the URL.
fn check_name_and_namespace(req: &ObjectRequest<'_>, obj: &Value) -> Result<(), ApiError> {
    let name = meta_str(obj, "name");
    if name != req.name() {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({name}) does not match the name on the URL ({})",
            req.name()
        )));
    }
    let ns = meta_str(obj, "namespace");
    if req.kind.namespaced && !ns.is_empty() && ns != req.ns() {
        return Err(ApiError::bad_request(format!(
            "the namespace of the object ({ns}) does not match the namespace on the request ({})",
            req.ns()
        )));
    }
    Ok(())
}

/// `SimpleNameGenerator`: `generateName` plus five random characters.
fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    let keep = prefix.len().min(253 - 5);
    format!("{}{suffix}", &prefix[..keep])
}

/// The 422 for a write that would be invalid.
fn check_valid(req: &ObjectRequest<'_>, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let errs = kinds::validate(req.kind, obj, old);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(req.kind, meta_str(obj, "name"), &errs))
    }
}

/// Stores a new object (after `prepare` and validation). `managed`: apply's ownership.
fn finish_create(
    store: &mut Store,
    req: &ObjectRequest<'_>,
    mut obj: Value,
    managed: Option<ManagedFields>,
) -> Result<Reply, ApiError> {
    // `BeforeCreate` generates the name after admission, so webhooks see `generateName` only.
    if meta_str(&obj, "name").is_empty() {
        let prefix = meta_str(&obj, "generateName").to_owned();
        if !prefix.is_empty() {
            set_meta(&mut obj, "name", json!(generate_name(&prefix)));
        }
    }
    kinds::prepare(req.kind, &mut obj, None, false);
    check_valid(req, &obj, None)?;
    let name = meta_str(&obj, "name").to_owned();
    if store.get(req.kind, req.ns(), &name).is_some() {
        return Err(ApiError::already_exists(req.kind, &name));
    }
    set_meta(&mut obj, "uid", json!(uuid::Uuid::new_v4().to_string()));
    set_meta(&mut obj, "creationTimestamp", json!(now_rfc3339()));
    let managed = managed.unwrap_or_else(|| {
        let mut m = ManagedFields::default();
        let (manager, api_version, now) =
            (req.update_manager(), req.kind.api_version(), now_rfc3339());
        let who = Writer {
            manager: &manager,
            api_version: &api_version,
            now: &now,
        };
        m.record_update(who, None, &obj);
        m
    });
    let stored = if req.dry_run() {
        StoredObject {
            object: obj,
            managed,
        }
    } else {
        store.put(req.kind, req.ns(), &name, obj, managed)
    };
    Ok((StatusCode::CREATED, stored.render()))
}

/// Stores a changed object over `existing`; a no-op keeps the old resourceVersion.
fn finish_update(
    store: &mut Store,
    req: &ObjectRequest<'_>,
    existing: &StoredObject,
    mut obj: Value,
    managed: Option<ManagedFields>,
) -> Result<Reply, ApiError> {
    kinds::prepare(
        req.kind,
        &mut obj,
        Some(&existing.object),
        req.status_write(),
    );
    check_valid(req, &obj, Some(&existing.object))?;
    set_meta(
        &mut obj,
        "resourceVersion",
        json!(existing.resource_version()),
    );
    let managed = managed.unwrap_or_else(|| {
        let mut m = existing.managed.clone();
        let (manager, api_version, now) =
            (req.update_manager(), req.kind.api_version(), now_rfc3339());
        let who = Writer {
            manager: &manager,
            api_version: &api_version,
            now: &now,
        };
        m.record_update(who, Some(&existing.object), &obj);
        m
    });
    if obj == existing.object && managed.same_ownership(&existing.managed) {
        return Ok((StatusCode::OK, existing.render()));
    }
    let stored = if req.dry_run() {
        StoredObject {
            object: obj,
            managed,
        }
    } else {
        store.put(req.kind, req.ns(), req.name(), obj, managed)
    };
    Ok((StatusCode::OK, stored.render()))
}

/// GET on one object.
pub(crate) fn get(shared: &Shared, req: &ObjectRequest<'_>) -> Result<Reply, ApiError> {
    let store = shared.store();
    let obj = store
        .get(req.kind, req.ns(), req.name())
        .ok_or_else(|| ApiError::not_found(req.kind, req.name()))?;
    Ok((StatusCode::OK, req.kind.render(obj.render())))
}

fn selected<'a>(
    store: &'a Store,
    req: &'a ObjectRequest<'_>,
) -> Result<Vec<&'a StoredObject>, ApiError> {
    let labels = LabelSelector::parse(req.query.get("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(req.query.get("fieldSelector").unwrap_or(""))?;
    Ok(store
        .list(req.kind, req.namespace)
        .filter(|o| labels.matches(&o.object) && fields.matches(&o.object))
        .collect())
}

fn list_body(kind: &ResourceKind, resource_version: u64, items: Vec<Value>) -> Value {
    json!({
        "kind": format!("{}List", kind.kind),
        "apiVersion": kind.api_version(),
        "metadata": {"resourceVersion": resource_version.to_string()},
        "items": items,
    })
}

/// List items omit `apiVersion`/`kind`, as the real server's do.
fn as_list_item(o: &StoredObject) -> Value {
    let mut v = o.render();
    if let Some(m) = v.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

/// GET on a collection: everything selected, at the resourceVersion `resourceVersion` and
/// `resourceVersionMatch` ask for (as `watch` describes); `paging` cuts the page from it and
/// turns a `continue` token into the resourceVersion to read at.
pub(crate) fn list(shared: &Shared, req: &ObjectRequest<'_>) -> Result<Reply, ApiError> {
    super::watch::check_list_options(req.query, false)?;
    let rv = super::watch::parse_resource_version(req.kind, req.query)?;
    let exact = req.query.get("resourceVersionMatch") == Some("Exact");
    let store = shared.store();
    let current = store.resource_version();
    match rv {
        Some(r) if r > current => {
            return Err(ApiError::too_large_resource_version(r, current));
        }
        Some(r) if exact && r < current => {
            if store.check_resource_version(r).is_err() {
                return Err(ApiError::expired(
                    "The resourceVersion for the provided list is too old.",
                ));
            }
            let labels = LabelSelector::parse(req.query.get("labelSelector").unwrap_or(""))?;
            let fields = FieldSelector::parse(req.query.get("fieldSelector").unwrap_or(""))?;
            let items = store
                .list_at(req.kind, req.namespace, r)
                .into_iter()
                .filter(|o| labels.matches(o) && fields.matches(o))
                .map(|mut o| {
                    if let Some(m) = o.as_object_mut() {
                        m.remove("apiVersion");
                        m.remove("kind");
                    }
                    o
                })
                .collect();
            return Ok((StatusCode::OK, list_body(req.kind, r, items)));
        }
        _ => {}
    }
    let items = selected(&store, req)?
        .into_iter()
        .map(as_list_item)
        .collect();
    Ok((StatusCode::OK, list_body(req.kind, current, items)))
}

/// `dryRun: Unsupported value: []string{"true"}: supported values: "All"`: any dry-run value
/// but `All`, as the real server's `ValidateDryRun` words it.
fn dry_run_error(values: &[&str]) -> Option<FieldError> {
    if values.iter().all(|v| *v == "All") {
        return None;
    }
    let listed: Vec<String> = values.iter().map(|v| go_quote(v)).collect();
    Some(FieldError {
        kind: FieldErrorKind::NotSupported(format!("[]string{{{}}}", listed.join(", "))),
        field: "dryRun".into(),
        detail: "supported values: \"All\"".into(),
    })
}

/// The options of a write, checked before its body is read, as the real handlers check
/// them (422 on `CreateOptions`, `UpdateOptions`, `PatchOptions`): a `dryRun` other than
/// `All` must not be mistaken for a real write, nor an unknown `fieldValidation` for one.
fn check_write_options(req: &ObjectRequest<'_>, options: &str) -> Result<(), ApiError> {
    let mut errs = Vec::new();
    if let Some(v) = req.query.get("dryRun") {
        errs.extend(dry_run_error(&[v]));
    }
    if let Some(v) = req.query.get("fieldValidation")
        && !["Ignore", "Strict", "Warn"].contains(&v)
    {
        errs.push(FieldError::not_supported(
            "fieldValidation",
            v,
            &["", "Ignore", "Strict", "Warn"],
        ));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid_kind("meta.k8s.io", options, "", &errs))
    }
}

/// POST on a collection. A pod goes through admission (see `admission`) first, without the
/// store's lock held.
pub(crate) async fn create(shared: &Shared, req: &ObjectRequest<'_>) -> Result<Reply, ApiError> {
    check_write_options(req, "CreateOptions")?;
    let mut obj = decode_body(req)?;
    kinds::check_type_meta(req.kind, &obj, false)?;
    let ns = meta_str(&obj, "namespace");
    if req.kind.namespaced && !ns.is_empty() && ns != req.ns() {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    scope_namespace(req, &mut obj);
    kinds::check_shape(req.kind, &obj)?;
    if req.strict() {
        super::strict::check_body(req.kind, &obj)?;
    }
    if !meta_str(&obj, "resourceVersion").is_empty() {
        return Err(ApiError::internal(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    if *req.kind == super::resources::PODS {
        super::pods::apply_defaults(&mut obj);
        super::pods::admit_builtin(&mut obj);
        super::admission::admit_pod_create(shared, req, &mut obj).await?;
        super::validation::strip_nulls(&mut obj);
    }
    let mut store = shared.store();
    finish_create(&mut store, req, obj, None)
}

/// PUT on one object.
pub(crate) fn update(shared: &Shared, req: &ObjectRequest<'_>) -> Result<Reply, ApiError> {
    check_write_options(req, "UpdateOptions")?;
    let mut obj = decode_body(req)?;
    kinds::check_type_meta(req.kind, &obj, false)?;
    check_name_and_namespace(req, &obj)?;
    scope_namespace(req, &mut obj);
    kinds::check_shape(req.kind, &obj)?;
    if req.strict() {
        super::strict::check_body(req.kind, &obj)?;
    }
    let rv = meta_str(&obj, "resourceVersion").to_owned();

    let mut store = shared.store();
    let Some(existing) = store.get(req.kind, req.ns(), req.name()).cloned() else {
        if req.kind.create_on_update && rv.is_empty() {
            return finish_create(&mut store, req, obj, None);
        }
        return Err(ApiError::not_found(req.kind, req.name()));
    };
    if rv.is_empty() && !req.kind.unconditional_update {
        return Err(ApiError::invalid(
            req.kind,
            req.name(),
            &[FieldError::invalid_raw(
                "metadata.resourceVersion",
                "0x0",
                "must be specified for an update",
            )],
        ));
    }
    if !rv.is_empty() && rv != existing.resource_version() {
        return Err(ApiError::conflict(req.kind, req.name()));
    }
    if req.status_write() {
        obj = super::crds::status_only(&existing.object, &obj);
    }
    finish_update(&mut store, req, &existing, obj, None)
}

fn patch_options_invalid(err: FieldError) -> ApiError {
    ApiError::invalid_kind("meta.k8s.io", "PatchOptions", "", &[err])
}

/// PATCH on one object, in any of the four patch types.
pub(crate) fn patch(shared: &Shared, req: &ObjectRequest<'_>) -> Result<Reply, ApiError> {
    let patch_type = PatchType::from_content_type(req.content_type)?;
    check_write_options(req, "PatchOptions")?;
    if patch_type == PatchType::Strategic && req.kind.custom.is_some() {
        return Err(ApiError::unsupported_media_type(
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
        ));
    }
    if patch_type == PatchType::Apply {
        return apply(shared, req);
    }
    if req.query.flag("force") {
        return Err(patch_options_invalid(FieldError::forbidden(
            "force",
            "may not be specified for non-apply patch",
        )));
    }
    let mut store = shared.store();
    let existing = store
        .get(req.kind, req.ns(), req.name())
        .cloned()
        .ok_or_else(|| ApiError::not_found(req.kind, req.name()))?;
    let mut patched = patch::apply_patch(patch_type, &existing.object, req.body)?;
    if !patched.is_object() {
        return Err(ApiError::bad_request("the patched object is not an object"));
    }
    kinds::check_type_meta(req.kind, &patched, false)?;
    check_name_and_namespace(req, &patched)?;
    if !req.kind.namespaced {
        scope_namespace(req, &mut patched);
    }
    kinds::check_shape(req.kind, &patched)?;
    if req.strict() {
        super::strict::check_patched(req.kind, &patched)?;
    }
    // A patch that carries metadata.resourceVersion is a precondition on it.
    let rv = meta_str(&patched, "resourceVersion");
    if !rv.is_empty() && rv != existing.resource_version() {
        return Err(ApiError::conflict(req.kind, req.name()));
    }
    if req.status_write() {
        patched = super::crds::status_only(&existing.object, &patched);
    }
    finish_update(&mut store, req, &existing, patched, None)
}

/// Server-side apply (`application/apply-patch+yaml`).
fn apply(shared: &Shared, req: &ObjectRequest<'_>) -> Result<Reply, ApiError> {
    let Some(manager) = req.query.get("fieldManager").map(str::to_owned) else {
        return Err(patch_options_invalid(FieldError::required(
            "fieldManager",
            "is required for apply patch",
        )));
    };
    let mut config = patch::parse_apply_config(req.body)?;
    kinds::check_type_meta(req.kind, &config, true)?;
    if meta_str(&config, "name").is_empty() {
        set_meta(&mut config, "name", json!(req.name()));
    }
    check_name_and_namespace(req, &config)?;
    if !req.kind.namespaced {
        scope_namespace(req, &mut config);
    }
    kinds::check_shape(req.kind, &config)?;
    kinds::prepare_apply_config(req.kind, &mut config);
    let rv = meta_str(&config, "resourceVersion").to_owned();
    let force = req.query.flag("force");
    let defaulted = kinds::with_defaults(req.kind, &config);
    let api_version = req.kind.api_version();
    let now = now_rfc3339();
    let who = Writer {
        manager: &manager,
        api_version: &api_version,
        now: &now,
    };

    let mut store = shared.store();
    match store.get(req.kind, req.ns(), req.name()).cloned() {
        None if req.status_write() => Err(ApiError::not_found(req.kind, req.name())),
        None => {
            if !rv.is_empty() {
                return Err(ApiError::internal(
                    "resourceVersion should not be set on objects to be created",
                ));
            }
            let mut managed = ManagedFields::default();
            let mut obj = managed.apply(who, None, &config, None, force)?;
            scope_namespace(req, &mut obj);
            finish_create(&mut store, req, obj, Some(managed))
        }
        Some(existing) => {
            if !rv.is_empty() && rv != existing.resource_version() {
                return Err(ApiError::conflict(req.kind, req.name()));
            }
            let mut managed = existing.managed.clone();
            let mut obj = managed.apply(
                who,
                Some(&existing.object),
                &config,
                defaulted.as_ref(),
                force,
            )?;
            if req.status_write() {
                obj = super::crds::status_only(&existing.object, &obj);
            }
            finish_update(&mut store, req, &existing, obj, Some(managed))
        }
    }
}

/// What a DELETE body (`DeleteOptions`) asks for.
#[derive(Debug, Default)]
struct DeleteOptions {
    uid: Option<String>,
    resource_version: Option<String>,
    /// `dryRun: ["All"]`: kubectl sends `--dry-run=server` for a delete in the body, not the
    /// query, and the real server honours either.
    dry_run: bool,
}

/// `DeleteOptions` from a DELETE body, if any.
fn delete_options(body: &[u8]) -> Result<DeleteOptions, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DeleteOptions::default());
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("DeleteOptions cannot be decoded: {e}")))?;
    let get = |k: &str| {
        v.pointer(&format!("/preconditions/{k}"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let dry_run_values: Vec<&str> = v
        .get("dryRun")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|x| x.as_str().unwrap_or("")).collect())
        .unwrap_or_default();
    if let Some(err) = dry_run_error(&dry_run_values) {
        return Err(ApiError::invalid_kind(
            "meta.k8s.io",
            "DeleteOptions",
            "",
            &[err],
        ));
    }
    let dry_run = !dry_run_values.is_empty();
    Ok(DeleteOptions {
        uid: get("uid"),
        resource_version: get("resourceVersion"),
        dry_run,
    })
}

/// A `dryRun` query parameter of a delete other than `All`: 422 on `DeleteOptions`.
fn check_delete_query(req: &ObjectRequest<'_>) -> Result<(), ApiError> {
    match req.query.get("dryRun").and_then(|v| dry_run_error(&[v])) {
        Some(err) => Err(ApiError::invalid_kind(
            "meta.k8s.io",
            "DeleteOptions",
            "",
            &[err],
        )),
        None => Ok(()),
    }
}

/// DELETE on one object. Answers `Status` Success, as the real server does for these kinds.
pub(crate) fn delete(shared: &Shared, req: &ObjectRequest<'_>) -> Result<Reply, ApiError> {
    check_delete_query(req)?;
    let options = delete_options(req.body)?;
    let (uid, rv) = (options.uid, options.resource_version);
    let mut store = shared.store();
    let existing = store
        .get(req.kind, req.ns(), req.name())
        .ok_or_else(|| ApiError::not_found(req.kind, req.name()))?;
    let actual_uid = meta_str(&existing.object, "uid").to_owned();
    if let Some(uid) = uid
        && uid != actual_uid
    {
        let mut err = ApiError::conflict(req.kind, req.name());
        err.message = format!(
            "Operation cannot be fulfilled on {} {:?}: Precondition failed: UID in precondition: {uid}, UID in object meta: {actual_uid}",
            req.kind.qualified_resource(),
            req.name()
        );
        return Err(err);
    }
    if let Some(rv) = rv
        && rv != existing.resource_version()
    {
        let mut err = ApiError::conflict(req.kind, req.name());
        err.message = format!(
            "Operation cannot be fulfilled on {} {:?}: the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record ({}). The object might have been modified",
            req.kind.qualified_resource(),
            req.name(),
            existing.resource_version()
        );
        return Err(err);
    }
    if !req.dry_run() && !options.dry_run {
        store.remove(req.kind, req.ns(), req.name());
    }
    let mut details = json!({"name": req.name(), "kind": req.kind.plural, "uid": actual_uid});
    if !req.kind.group.is_empty() {
        details["group"] = json!(req.kind.group);
    }
    Ok((
        StatusCode::OK,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
    ))
}

/// DELETE on a collection: deletes what the selectors match and returns it as a list.
pub(crate) fn delete_collection(
    shared: &Shared,
    req: &ObjectRequest<'_>,
) -> Result<Reply, ApiError> {
    check_delete_query(req)?;
    let dry_run = delete_options(req.body)?.dry_run;
    let mut store = shared.store();
    let doomed: Vec<StoredObject> = selected(&store, req)?.into_iter().cloned().collect();
    if !req.dry_run() && !dry_run {
        for o in &doomed {
            let ns = meta_str(&o.object, "namespace").to_owned();
            let name = meta_str(&o.object, "name").to_owned();
            store.remove(req.kind, &ns, &name);
        }
    }
    let items = doomed.iter().map(as_list_item).collect();
    Ok((
        StatusCode::OK,
        list_body(req.kind, store.resource_version(), items),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let q = Query::parse(Some(
            "labelSelector=app%3Dweb%2Ctier+in+(a)&force=true&dryRun=All",
        ));
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(q.flag("force"));
        assert_eq!(q.get("dryRun"), Some("All"));
    }

    #[test]
    fn a_dry_run_other_than_all_is_worded_as_validate_dry_run_words_it() {
        assert!(dry_run_error(&["All"]).is_none());
        let err = dry_run_error(&["true"]).unwrap();
        assert_eq!(
            err.to_string(),
            r#"dryRun: Unsupported value: []string{"true"}: supported values: "All""#
        );
        let refused =
            delete_options(br#"{"kind":"DeleteOptions","dryRun":["All","x"]}"#).unwrap_err();
        assert_eq!(refused.code, 422);
        assert_eq!(
            refused.message,
            r#"DeleteOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: []string{"All", "x"}: supported values: "All""#
        );
        assert!(delete_options(br#"{"dryRun":["All"]}"#).unwrap().dry_run);
        assert!(!delete_options(b"").unwrap().dry_run);
    }

    #[test]
    fn generated_names_keep_the_prefix() {
        let n = generate_name("db-creds-");
        assert!(n.starts_with("db-creds-") && n.len() == "db-creds-".len() + 5);
    }
}

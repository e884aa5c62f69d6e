//! Request bodies in Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`).
//!
//! kubectl's typed commands (`kubectl create secret generic`, `kubectl create deployment`)
//! send protobuf, which kube-apiserver accepts for every built-in kind. The stand-in decodes
//! it for Secrets and Deployments into the JSON the handlers work on, as the real server's
//! protobuf serializer decodes into the same Go types its JSON serializer does.
//!
//! The envelope is `k8s\0` followed by a `runtime.Unknown` (`typeMeta` 1, `raw` 2,
//! `contentEncoding` 3, `contentType` 4); `raw` is the object in the field numbers of
//! `k8s.io/api`'s `generated.proto`. Those field numbers are the tables below. Go's JSON
//! omits a zero scalar tagged `omitempty` and renders a non-pointer struct even when empty,
//! so a decoded zero scalar is dropped unless the Go field is a pointer (`replicas: 0` is
//! kept), and a non-pointer message is always rendered. A field the tables do not cover is
//! refused with 415 naming it: the stand-in never silently drops part of an object.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::resources::{self, ResourceKind};
use super::status::ApiError;

/// `runtime.protobufPrefix`.
const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, Copy)]
enum Ty {
    Str,
    I32,
    I64,
    Bool,
    Msg(&'static Message),
    /// `map<string, string>`.
    StrMap,
    /// `map<string, bytes>`.
    BytesMap,
    /// `map<string, Quantity>`: Quantity is `{string = 1}`, rendered as its string.
    QuantityMap,
    /// `metav1.Time`: `{seconds = 1, nanos = 2}`, RFC 3339 in JSON, null when zero.
    Time,
    /// `intstr.IntOrString`: `{type = 1, intVal = 2, strVal = 3}`.
    IntOrString,
}

struct Field {
    number: u64,
    name: &'static str,
    ty: Ty,
    repeated: bool,
    /// A Go pointer: present, even with a zero value, exactly when sent.
    pointer: bool,
}

struct Message {
    name: &'static str,
    fields: &'static [Field],
}

const fn f(number: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        number,
        name,
        ty,
        repeated: false,
        pointer: false,
    }
}

const fn ptr(number: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        number,
        name,
        ty,
        repeated: false,
        pointer: true,
    }
}

const fn rep(number: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        number,
        name,
        ty,
        repeated: true,
        pointer: false,
    }
}

static OWNER_REFERENCE: Message = Message {
    name: "OwnerReference",
    fields: &[
        f(5, "apiVersion", Ty::Str),
        f(1, "kind", Ty::Str),
        f(3, "name", Ty::Str),
        f(4, "uid", Ty::Str),
        ptr(6, "controller", Ty::Bool),
        ptr(7, "blockOwnerDeletion", Ty::Bool),
    ],
};

static OBJECT_META: Message = Message {
    name: "ObjectMeta",
    fields: &[
        f(1, "name", Ty::Str),
        f(2, "generateName", Ty::Str),
        f(3, "namespace", Ty::Str),
        f(4, "selfLink", Ty::Str),
        f(5, "uid", Ty::Str),
        f(6, "resourceVersion", Ty::Str),
        f(7, "generation", Ty::I64),
        f(8, "creationTimestamp", Ty::Time),
        ptr(9, "deletionTimestamp", Ty::Time),
        ptr(10, "deletionGracePeriodSeconds", Ty::I64),
        f(11, "labels", Ty::StrMap),
        f(12, "annotations", Ty::StrMap),
        rep(13, "ownerReferences", Ty::Msg(&OWNER_REFERENCE)),
        rep(14, "finalizers", Ty::Str),
    ],
};

static SECRET: Message = Message {
    name: "Secret",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        ptr(5, "immutable", Ty::Bool),
        f(2, "data", Ty::BytesMap),
        f(4, "stringData", Ty::StrMap),
        f(3, "type", Ty::Str),
    ],
};

static LABEL_SELECTOR_REQUIREMENT: Message = Message {
    name: "LabelSelectorRequirement",
    fields: &[
        f(1, "key", Ty::Str),
        f(2, "operator", Ty::Str),
        rep(3, "values", Ty::Str),
    ],
};

static LABEL_SELECTOR: Message = Message {
    name: "LabelSelector",
    fields: &[
        f(1, "matchLabels", Ty::StrMap),
        rep(2, "matchExpressions", Ty::Msg(&LABEL_SELECTOR_REQUIREMENT)),
    ],
};

static CONTAINER_PORT: Message = Message {
    name: "ContainerPort",
    fields: &[
        f(1, "name", Ty::Str),
        f(2, "hostPort", Ty::I32),
        f(3, "containerPort", Ty::I32),
        f(4, "protocol", Ty::Str),
        f(5, "hostIP", Ty::Str),
    ],
};

static ENV_VAR: Message = Message {
    name: "EnvVar",
    fields: &[f(1, "name", Ty::Str), f(2, "value", Ty::Str)],
};

static RESOURCE_REQUIREMENTS: Message = Message {
    name: "ResourceRequirements",
    fields: &[
        f(1, "limits", Ty::QuantityMap),
        f(2, "requests", Ty::QuantityMap),
    ],
};

static CONTAINER: Message = Message {
    name: "Container",
    fields: &[
        f(1, "name", Ty::Str),
        f(2, "image", Ty::Str),
        rep(3, "command", Ty::Str),
        rep(4, "args", Ty::Str),
        f(5, "workingDir", Ty::Str),
        rep(6, "ports", Ty::Msg(&CONTAINER_PORT)),
        rep(7, "env", Ty::Msg(&ENV_VAR)),
        f(8, "resources", Ty::Msg(&RESOURCE_REQUIREMENTS)),
        f(13, "terminationMessagePath", Ty::Str),
        f(20, "terminationMessagePolicy", Ty::Str),
        f(14, "imagePullPolicy", Ty::Str),
        f(16, "stdin", Ty::Bool),
        f(17, "stdinOnce", Ty::Bool),
        f(18, "tty", Ty::Bool),
        ptr(24, "restartPolicy", Ty::Str),
    ],
};

static LOCAL_OBJECT_REFERENCE: Message = Message {
    name: "LocalObjectReference",
    fields: &[f(1, "name", Ty::Str)],
};

static POD_SPEC: Message = Message {
    name: "PodSpec",
    fields: &[
        rep(20, "initContainers", Ty::Msg(&CONTAINER)),
        rep(2, "containers", Ty::Msg(&CONTAINER)),
        f(3, "restartPolicy", Ty::Str),
        ptr(4, "terminationGracePeriodSeconds", Ty::I64),
        ptr(5, "activeDeadlineSeconds", Ty::I64),
        f(6, "dnsPolicy", Ty::Str),
        f(7, "nodeSelector", Ty::StrMap),
        f(8, "serviceAccountName", Ty::Str),
        f(9, "serviceAccount", Ty::Str),
        ptr(21, "automountServiceAccountToken", Ty::Bool),
        f(10, "nodeName", Ty::Str),
        f(11, "hostNetwork", Ty::Bool),
        f(12, "hostPID", Ty::Bool),
        f(13, "hostIPC", Ty::Bool),
        rep(15, "imagePullSecrets", Ty::Msg(&LOCAL_OBJECT_REFERENCE)),
        f(16, "hostname", Ty::Str),
        f(17, "subdomain", Ty::Str),
        f(19, "schedulerName", Ty::Str),
        f(24, "priorityClassName", Ty::Str),
        ptr(29, "runtimeClassName", Ty::Str),
        ptr(30, "enableServiceLinks", Ty::Bool),
    ],
};

static POD_TEMPLATE_SPEC: Message = Message {
    name: "PodTemplateSpec",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&POD_SPEC)),
    ],
};

static ROLLING_UPDATE_DEPLOYMENT: Message = Message {
    name: "RollingUpdateDeployment",
    fields: &[
        ptr(1, "maxUnavailable", Ty::IntOrString),
        ptr(2, "maxSurge", Ty::IntOrString),
    ],
};

static DEPLOYMENT_STRATEGY: Message = Message {
    name: "DeploymentStrategy",
    fields: &[
        f(1, "type", Ty::Str),
        ptr(2, "rollingUpdate", Ty::Msg(&ROLLING_UPDATE_DEPLOYMENT)),
    ],
};

static DEPLOYMENT_SPEC: Message = Message {
    name: "DeploymentSpec",
    fields: &[
        ptr(1, "replicas", Ty::I32),
        ptr(2, "selector", Ty::Msg(&LABEL_SELECTOR)),
        f(3, "template", Ty::Msg(&POD_TEMPLATE_SPEC)),
        f(4, "strategy", Ty::Msg(&DEPLOYMENT_STRATEGY)),
        f(5, "minReadySeconds", Ty::I32),
        ptr(6, "revisionHistoryLimit", Ty::I32),
        f(7, "paused", Ty::Bool),
        ptr(9, "progressDeadlineSeconds", Ty::I32),
    ],
};

static DEPLOYMENT_STATUS: Message = Message {
    name: "DeploymentStatus",
    fields: &[
        f(1, "observedGeneration", Ty::I64),
        f(2, "replicas", Ty::I32),
        f(3, "updatedReplicas", Ty::I32),
        f(7, "readyReplicas", Ty::I32),
        f(4, "availableReplicas", Ty::I32),
        f(5, "unavailableReplicas", Ty::I32),
        ptr(9, "terminatingReplicas", Ty::I32),
        ptr(8, "collisionCount", Ty::I32),
    ],
};

static DEPLOYMENT: Message = Message {
    name: "Deployment",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&DEPLOYMENT_SPEC)),
        f(3, "status", Ty::Msg(&DEPLOYMENT_STATUS)),
    ],
};

/// The message of `kind`, when the stand-in decodes it from protobuf.
fn message_of(kind: &ResourceKind) -> Option<&'static Message> {
    if *kind == resources::SECRETS {
        Some(&SECRET)
    } else if *kind == resources::DEPLOYMENTS {
        Some(&DEPLOYMENT)
    } else {
        None
    }
}

/// One field read off the wire.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first().ok_or("truncated varint")?;
            self.buf = rest;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err("truncated field".into());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next `(field number, value)`, or `None` at the end.
    fn next(&mut self) -> Result<Option<(u64, Wire<'a>)>, String> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length overflows")?;
                Wire::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed
            }
            t => return Err(format!("unsupported wire type {t}")),
        };
        Ok(Some((key >> 3, wire)))
    }
}

fn fields(buf: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, String> {
    let mut reader = Reader { buf };
    let mut out = Vec::new();
    while let Some(field) = reader.next()? {
        out.push(field);
    }
    Ok(out)
}

fn bytes_of<'a>(wire: &Wire<'a>, what: &str) -> Result<&'a [u8], String> {
    match wire {
        Wire::Bytes(b) => Ok(b),
        _ => Err(format!("{what} is not length-delimited")),
    }
}

fn varint_of(wire: &Wire<'_>, what: &str) -> Result<u64, String> {
    match wire {
        Wire::Varint(v) => Ok(*v),
        _ => Err(format!("{what} is not a varint")),
    }
}

fn utf8(b: &[u8], what: &str) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

/// A map entry: `(key = 1, value = 2)`.
fn entry<'a>(b: &'a [u8], what: &str) -> Result<(String, Option<Wire<'a>>), String> {
    let mut key = String::new();
    let mut value = None;
    for (n, w) in fields(b)? {
        match n {
            1 => key = utf8(bytes_of(&w, what)?, what)?,
            2 => value = Some(w),
            _ => {}
        }
    }
    Ok((key, value))
}

/// A scalar or message value (`null`: a zero time, which Go's JSON renders as null).
// Varints are two's complement on the wire: the casts reinterpret, as Go's decoder does.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
fn value(field: &Field, wire: &Wire<'_>, path: &str) -> Result<Value, String> {
    Ok(match field.ty {
        Ty::Str => json!(utf8(bytes_of(wire, path)?, path)?),
        // Negative int32s are sign-extended to 64 bits on the wire.
        Ty::I32 => json!(varint_of(wire, path)? as i64 as i32),
        Ty::I64 => json!(varint_of(wire, path)? as i64),
        Ty::Bool => json!(varint_of(wire, path)? != 0),
        Ty::Msg(m) => message(m, bytes_of(wire, path)?, path)?,
        Ty::Time => {
            let (mut seconds, mut nanos) = (0i64, 0i64);
            for (n, w) in fields(bytes_of(wire, path)?)? {
                match n {
                    1 => seconds = varint_of(&w, path)? as i64,
                    2 => nanos = varint_of(&w, path)? as i64,
                    _ => {}
                }
            }
            if seconds == 0 && nanos == 0 {
                Value::Null
            } else {
                let t = chrono::DateTime::from_timestamp(seconds, 0)
                    .ok_or_else(|| format!("{path}: time out of range"))?;
                json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            }
        }
        Ty::IntOrString => {
            let (mut is_string, mut int, mut string) = (false, 0i64, String::new());
            for (n, w) in fields(bytes_of(wire, path)?)? {
                match n {
                    1 => is_string = varint_of(&w, path)? == 1,
                    2 => int = i64::from(varint_of(&w, path)? as i64 as i32),
                    3 => string = utf8(bytes_of(&w, path)?, path)?,
                    _ => {}
                }
            }
            if is_string { json!(string) } else { json!(int) }
        }
        Ty::StrMap | Ty::BytesMap | Ty::QuantityMap => {
            unreachable!("maps are collected by `message`")
        }
    })
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_i64() == Some(0),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn message(m: &Message, buf: &[u8], path: &str) -> Result<Value, String> {
    let mut out = Map::new();
    for (number, wire) in fields(buf)? {
        let field = m
            .fields
            .iter()
            .find(|f| f.number == number)
            .ok_or_else(|| {
                format!(
                    "field {number} of {} ({}) is not decoded by the stand-in",
                    m.name,
                    if path.is_empty() { "the object" } else { path }
                )
            })?;
        let here = if path.is_empty() {
            field.name.to_owned()
        } else {
            format!("{path}.{}", field.name)
        };
        match field.ty {
            Ty::StrMap | Ty::BytesMap | Ty::QuantityMap => {
                let (key, v) = entry(bytes_of(&wire, &here)?, &here)?;
                let rendered = match (field.ty, v) {
                    (_, None) => json!(""),
                    (Ty::StrMap, Some(w)) => json!(utf8(bytes_of(&w, &here)?, &here)?),
                    (Ty::BytesMap, Some(w)) => json!(
                        base64::engine::general_purpose::STANDARD.encode(bytes_of(&w, &here)?)
                    ),
                    (_, Some(w)) => {
                        let mut quantity = String::new();
                        for (n, qw) in fields(bytes_of(&w, &here)?)? {
                            if n == 1 {
                                quantity = utf8(bytes_of(&qw, &here)?, &here)?;
                            }
                        }
                        json!(quantity)
                    }
                };
                out.entry(field.name)
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .ok_or("map field repeated as a non-map")?
                    .insert(key, rendered);
            }
            _ if field.repeated => {
                let v = value(field, &wire, &here)?;
                out.entry(field.name)
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .ok_or("repeated field is not a list")?
                    .push(v);
            }
            _ => {
                let v = value(field, &wire, &here)?;
                let keep = field.pointer || matches!(field.ty, Ty::Msg(_)) || !is_zero(&v);
                if keep && !v.is_null() {
                    out.insert(field.name.to_owned(), v);
                } else {
                    out.remove(field.name);
                }
            }
        }
    }
    // Go renders a non-pointer struct even when nothing of it was sent.
    for field in m.fields {
        if let Ty::Msg(_) = field.ty
            && !field.pointer
            && !field.repeated
            && field.name != "metadata"
        {
            out.entry(field.name).or_insert_with(|| json!({}));
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a protobuf request body for `kind` into its JSON form.
///
/// # Errors
/// 415 for a kind (or a field) the stand-in does not decode, 400 for a malformed body.
pub(crate) fn decode(kind: &ResourceKind, body: &[u8]) -> Result<Value, ApiError> {
    let Some(m) = message_of(kind) else {
        return Err(ApiError::unsupported_media_type(format!(
            "the Kubernetes stand-in decodes application/vnd.kubernetes.protobuf only for Secrets and Deployments, not {}; send application/json",
            kind.qualified_resource()
        )));
    };
    let bad = |why: String| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {why}",
            kind.kind, kind.version, kind.kind
        ))
    };
    let unknown = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("provided data does not appear to be a protobuf message, expected prefix [107 56 115 0]".into()))?;
    let (mut api_version, mut object_kind, mut raw) = (String::new(), String::new(), None);
    for (n, w) in fields(unknown).map_err(bad)? {
        match n {
            1 => {
                for (tn, tw) in fields(bytes_of(&w, "typeMeta").map_err(bad)?).map_err(bad)? {
                    let s =
                        utf8(bytes_of(&tw, "typeMeta").map_err(bad)?, "typeMeta").map_err(bad)?;
                    match tn {
                        1 => api_version = s,
                        2 => object_kind = s,
                        _ => {}
                    }
                }
            }
            2 => raw = Some(bytes_of(&w, "raw").map_err(bad)?),
            3 | 4 => {
                let s =
                    utf8(bytes_of(&w, "contentType").map_err(bad)?, "contentType").map_err(bad)?;
                if !s.is_empty() {
                    return Err(bad(format!("unsupported content encoding or type {s:?}")));
                }
            }
            _ => {}
        }
    }
    let mut obj = message(m, raw.unwrap_or_default(), "").map_err(|e| {
        if e.contains("is not decoded by the stand-in") {
            ApiError::unsupported_media_type(format!("{e}; send application/json"))
        } else {
            bad(e)
        }
    })?;
    if let Some(map) = obj.as_object_mut() {
        if !api_version.is_empty() {
            map.insert("apiVersion".into(), json!(api_version));
        }
        if !object_kind.is_empty() {
            map.insert("kind".into(), json!(object_kind));
        }
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn bytes_field(n: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(n << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    fn varint_field(n: u64, v: u64, out: &mut Vec<u8>) {
        varint(n << 3, out);
        varint(v, out);
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut type_meta = Vec::new();
        bytes_field(1, api_version.as_bytes(), &mut type_meta);
        bytes_field(2, kind.as_bytes(), &mut type_meta);
        let mut unknown = Vec::new();
        bytes_field(1, &type_meta, &mut unknown);
        bytes_field(2, raw, &mut unknown);
        bytes_field(3, b"", &mut unknown);
        bytes_field(4, b"", &mut unknown);
        [MAGIC, &unknown].concat()
    }

    #[test]
    fn a_secret_decodes_with_zero_scalars_dropped_and_a_false_pointer_kept() {
        let mut meta = Vec::new();
        bytes_field(1, b"db", &mut meta);
        bytes_field(2, b"", &mut meta);
        bytes_field(8, b"", &mut meta);
        let mut entry = Vec::new();
        bytes_field(1, b"password", &mut entry);
        bytes_field(2, b"\x00hunter2", &mut entry);
        let mut secret = Vec::new();
        bytes_field(1, &meta, &mut secret);
        bytes_field(2, &entry, &mut secret);
        bytes_field(3, b"Opaque", &mut secret);
        varint_field(5, 0, &mut secret);
        let obj = decode(&resources::SECRETS, &envelope("v1", "Secret", &secret)).unwrap();
        assert_eq!(
            obj,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "db"},
                "data": {"password": "AGh1bnRlcjI="},
                "type": "Opaque",
                "immutable": false,
            })
        );
    }

    #[test]
    fn replicas_zero_is_kept_and_an_unknown_field_is_refused_by_name() {
        let mut spec = Vec::new();
        varint_field(1, 0, &mut spec);
        varint_field(5, 0, &mut spec);
        let mut deployment = Vec::new();
        bytes_field(2, &spec, &mut deployment);
        let obj = decode(
            &resources::DEPLOYMENTS,
            &envelope("apps/v1", "Deployment", &deployment),
        )
        .unwrap();
        assert_eq!(obj["spec"]["replicas"], 0);
        assert!(obj["spec"].get("minReadySeconds").is_none());
        assert_eq!(
            obj["spec"]["template"],
            json!({}),
            "a struct is always rendered"
        );
        assert_eq!(obj["status"], json!({}));

        varint_field(8, 1, &mut spec);
        let mut deployment = Vec::new();
        bytes_field(2, &spec, &mut deployment);
        let err = decode(
            &resources::DEPLOYMENTS,
            &envelope("apps/v1", "Deployment", &deployment),
        )
        .unwrap_err();
        assert_eq!(err.code, 415);
        assert!(
            err.message.contains("field 8 of DeploymentSpec (spec)"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_body_without_the_prefix_or_for_another_kind_is_refused() {
        assert_eq!(decode(&resources::SECRETS, b"{}").unwrap_err().code, 400);
        assert_eq!(decode(&resources::LEASES, MAGIC).unwrap_err().code, 415);
    }
}

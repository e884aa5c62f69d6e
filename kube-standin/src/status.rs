//! `Status` error bodies, shaped and worded as kube-apiserver writes them.
//!
//! Clients branch on these: kube-rs turns a non-2xx body into `kube::Error::Api(Status)` and
//! keyturn decides on `code`/`reason` whether to retry (409), give up (403, 422) or create
//! (404). So the stand-in copies the real reasons, codes, `details` and message wording
//! (from `k8s.io/apimachinery/pkg/api/errors` and `.../util/validation/field`), not just the
//! HTTP status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::resources::ResourceKind;

/// A failed API request, rendered as a `Status` object with `status: Failure`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub(crate) struct ApiError {
    /// HTTP status code, repeated in the body's `code`.
    pub code: u16,
    /// Machine-readable `reason` (`NotFound`, `Conflict`, `Invalid`, …).
    pub reason: &'static str,
    /// Human-readable `message`, worded as the real server words it.
    pub message: String,
    /// `details`, when the real server sends them (boxed: errors travel in every `Result`).
    pub details: Option<Box<Details>>,
    /// `metadata.continue`: the token the real server hands back with the `410 Expired` of a
    /// list continued from a compacted resourceVersion, to go on inconsistently (see `paging`).
    pub continue_token: Option<String>,
}

/// `Status.details`.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Details {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<Cause>,
}

/// `Status.details.causes[]`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Cause {
    pub reason: String,
    pub message: String,
    pub field: String,
}

/// The kinds of `field.Error` the stand-in produces, with the real `CauseType` and wording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FieldErrorKind {
    /// `Invalid value: <value>`; the value is already formatted (`"quoted"` or `0x0`).
    Invalid(String),
    /// `Required value`.
    Required,
    /// `Forbidden`.
    Forbidden,
    /// `Too long`.
    TooLong,
    /// `Unsupported value: <value>`; the value is already formatted (`"quoted"`).
    NotSupported(String),
    /// `Duplicate value: <value>`; the value is already formatted (`"quoted"`).
    Duplicate(String),
    /// `Not found: <value>`; the value is already formatted (`"quoted"`).
    NotFound(String),
    /// `Too many: <value>`; the value is already formatted (a count).
    TooMany(String),
}

/// One validation failure: `field.Error` from apimachinery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub kind: FieldErrorKind,
    /// The field path as Go prints it: `data[bad key]`, `metadata.name`.
    pub field: String,
    pub detail: String,
}

impl FieldError {
    /// `field.Invalid` with a string value (printed quoted, as Go's `%q`).
    pub fn invalid_str(field: impl Into<String>, value: &str, detail: impl Into<String>) -> Self {
        Self::invalid_raw(field, go_quote(value), detail)
    }

    /// `field.Invalid` with a value already formatted as Go would print it.
    pub fn invalid_raw(
        field: impl Into<String>,
        value: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind: FieldErrorKind::Invalid(value.into()),
            field: field.into(),
            detail: detail.into(),
        }
    }

    /// `field.Required`.
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            kind: FieldErrorKind::Required,
            field: field.into(),
            detail: detail.into(),
        }
    }

    /// `field.Forbidden`.
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            kind: FieldErrorKind::Forbidden,
            field: field.into(),
            detail: detail.into(),
        }
    }

    /// `field.Duplicate` with a string value.
    pub fn duplicate(field: impl Into<String>, value: &str) -> Self {
        Self {
            kind: FieldErrorKind::Duplicate(go_quote(value)),
            field: field.into(),
            detail: String::new(),
        }
    }

    /// `field.NotFound` with a string value.
    pub fn not_found(field: impl Into<String>, value: &str) -> Self {
        Self {
            kind: FieldErrorKind::NotFound(go_quote(value)),
            field: field.into(),
            detail: String::new(),
        }
    }

    /// `field.TooLong` with the wording of Kubernetes ≥ 1.32.
    pub fn too_long(field: impl Into<String>, max_bytes: usize) -> Self {
        Self {
            kind: FieldErrorKind::TooLong,
            field: field.into(),
            detail: format!("must have at most {max_bytes} bytes"),
        }
    }

    /// `field.NotSupported` with a string value and the values that are supported, worded
    /// `supported values: "a", "b"`.
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        Self {
            kind: FieldErrorKind::NotSupported(go_quote(value)),
            field: field.into(),
            detail: format!(
                "supported values: {}",
                supported
                    .iter()
                    .map(|v| go_quote(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn cause_type(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Invalid(_) => "FieldValueInvalid",
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::TooLong => "FieldValueTooLong",
            FieldErrorKind::NotSupported(_) => "FieldValueNotSupported",
            FieldErrorKind::Duplicate(_) => "FieldValueDuplicate",
            FieldErrorKind::NotFound(_) => "FieldValueNotFound",
            FieldErrorKind::TooMany(_) => "FieldValueTooMany",
        }
    }

    /// `ErrorBody()`: the message without the field path.
    pub fn body(&self) -> String {
        let mut s = match &self.kind {
            FieldErrorKind::Invalid(value) => format!("Invalid value: {value}"),
            FieldErrorKind::Required => "Required value".to_owned(),
            FieldErrorKind::Forbidden => "Forbidden".to_owned(),
            FieldErrorKind::TooLong => "Too long".to_owned(),
            FieldErrorKind::NotSupported(value) => format!("Unsupported value: {value}"),
            FieldErrorKind::Duplicate(value) => format!("Duplicate value: {value}"),
            FieldErrorKind::NotFound(value) => format!("Not found: {value}"),
            FieldErrorKind::TooMany(value) => format!("Too many: {value}"),
        };
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// Go's `%q` for the strings we print: quotes and backslashes escaped.
pub(crate) fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
            continue_token: None,
        }
    }

    fn with_details(mut self, details: Details) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    fn resource_details(kind: &ResourceKind, name: &str) -> Details {
        Details {
            name: name.to_owned(),
            group: kind.group.to_owned(),
            kind: kind.plural.to_owned(),
            ..Details::default()
        }
    }

    /// `secrets "x" not found`.
    pub fn not_found(kind: &ResourceKind, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} {} not found", kind.qualified_resource(), go_quote(name)),
        )
        .with_details(Self::resource_details(kind, name))
    }

    /// A path no handler serves; the real server answers `404 page not found` wrapped like this.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(Details {
            causes: vec![Cause {
                reason: "UnexpectedServerResponse".into(),
                message: "404 page not found".into(),
                field: String::new(),
            }],
            ..Details::default()
        })
    }

    /// `secrets "x" already exists`.
    pub fn already_exists(kind: &ResourceKind, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!(
                "{} {} already exists",
                kind.qualified_resource(),
                go_quote(name)
            ),
        )
        .with_details(Self::resource_details(kind, name))
    }

    /// The optimistic-concurrency failure every controller retries on.
    pub fn conflict(kind: &ResourceKind, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {}: the object has been modified; please apply your changes to the latest version and try again",
                kind.qualified_resource(),
                go_quote(name)
            ),
        )
        .with_details(Self::resource_details(kind, name))
    }

    /// Server-side apply found fields owned by other managers (`NewApplyConflict`).
    pub fn apply_conflict(message: String, causes: Vec<Cause>) -> Self {
        Self::new(409, "Conflict", message).with_details(Details {
            causes,
            ..Details::default()
        })
    }

    /// `Secret "x" is invalid: <field errors>` (`NewInvalid`).
    pub fn invalid_kind(group: &str, kind: &str, name: &str, errors: &[FieldError]) -> Self {
        let qualified = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{group}")
        };
        let aggregate = match errors {
            [] => String::new(),
            [one] => format!(": {one}"),
            many => format!(
                ": [{}]",
                many.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Self::new(
            422,
            "Invalid",
            format!("{qualified} {} is invalid{aggregate}", go_quote(name)),
        )
        .with_details(Details {
            name: name.to_owned(),
            group: group.to_owned(),
            kind: kind.to_owned(),
            uid: String::new(),
            causes: errors
                .iter()
                .map(|e| Cause {
                    reason: e.cause_type().to_owned(),
                    message: e.body(),
                    field: e.field.clone(),
                })
                .collect(),
        })
    }

    /// `NewInvalid` for one of the served resource kinds.
    pub fn invalid(kind: &ResourceKind, name: &str, errors: &[FieldError]) -> Self {
        Self::invalid_kind(kind.group, kind.kind, name, errors)
    }

    /// A 422 without field causes, as the real server answers a JSON patch that cannot apply.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    /// `secrets "x" is forbidden: User "u" cannot patch resource …` (`NewForbidden`).
    pub fn forbidden(
        qualified_resource: &str,
        group: &str,
        resource: &str,
        name: &str,
        why: &str,
    ) -> Self {
        let message = if name.is_empty() {
            format!("{qualified_resource} is forbidden: {why}")
        } else {
            format!(
                "{qualified_resource} {} is forbidden: {why}",
                go_quote(name)
            )
        };
        Self::new(403, "Forbidden", message).with_details(Details {
            name: name.to_owned(),
            group: group.to_owned(),
            kind: resource.to_owned(),
            ..Details::default()
        })
    }

    /// No or bad credentials. The real body carries no details.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 400, for bodies that cannot be decoded and name mismatches.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 415 for a PATCH content type the server does not know.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    /// 405 for a verb the resource does not support.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 413: the real server caps request bodies at 3 MiB.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    /// 500, used where the real server also answers 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// Any status with a reason of the caller's choosing (`""`: none), e.g. a webhook's denial.
    pub fn with_reason(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(code, reason, message)
    }

    /// 410 `Expired`: a resourceVersion older than the history reaches (`NewResourceExpired`).
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// The same error carrying `metadata.continue` (see [`Self::continue_token`]).
    pub fn with_continue(mut self, token: String) -> Self {
        self.continue_token = Some(token);
        self
    }

    /// 504 `Timeout`: a resourceVersion newer than any write, after the real server has
    /// waited for it in vain (`NewTooLargeResourceVersionError`).
    pub fn too_large_resource_version(requested: u64, current: u64) -> Self {
        Self::new(
            504,
            "Timeout",
            format!("Too large resource version: {requested}, current: {current}"),
        )
        .with_details(Details {
            causes: vec![Cause {
                reason: "ResourceVersionTooLarge".into(),
                message: "Too large resource version".into(),
                field: String::new(),
            }],
            ..Details::default()
        })
    }

    /// 429, as the real server's max-in-flight filter answers an overloaded server.
    pub fn too_many_requests() -> Self {
        Self::new(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
        )
    }

    /// 503, as the real server answers when it cannot serve (e.g. its storage is away).
    pub fn service_unavailable() -> Self {
        Self::new(
            503,
            "ServiceUnavailable",
            "The server is currently unable to handle the request",
        )
    }

    /// Any other status, with the reason the real server gives statuses it has no name for.
    pub fn other(code: u16, message: impl Into<String>) -> Self {
        Self::new(code, "Unknown", message)
    }

    /// The `Status` body.
    pub fn to_status_json(&self) -> serde_json::Value {
        let mut status = serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = serde_json::to_value(details).unwrap_or_default();
        }
        if let Some(token) = &self.continue_token {
            status["metadata"]["continue"] = serde_json::Value::String(token.clone());
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(code, &self.to_status_json())
    }
}

/// A JSON body with the content type the real server sends.
pub(crate) fn json_response(code: StatusCode, body: &serde_json::Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_with_one_error_is_worded_like_the_real_server() {
        let err = ApiError::invalid_kind(
            "",
            "Secret",
            "s",
            &[FieldError::too_long("data", 1_048_576)],
        );
        assert_eq!(
            err.message,
            "Secret \"s\" is invalid: data: Too long: must have at most 1048576 bytes"
        );
        let causes = &err.details.unwrap().causes;
        assert_eq!(causes[0].reason, "FieldValueTooLong");
        assert_eq!(causes[0].field, "data");
    }

    #[test]
    fn invalid_with_several_errors_lists_them_in_brackets() {
        let err = ApiError::invalid_kind(
            "apps",
            "Deployment",
            "d",
            &[
                FieldError::required("spec.selector", ""),
                FieldError::required("spec.x", ""),
            ],
        );
        assert_eq!(
            err.message,
            "Deployment.apps \"d\" is invalid: [spec.selector: Required value, spec.x: Required value]"
        );
    }
}

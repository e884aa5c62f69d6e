//! Errors from talking to Vault, classified so callers can decide: retry, give up, exit how.

use std::time::Duration;

use vaultrs::error::ClientError;

/// What went wrong talking to Vault. Every variant names the operation and the Vault path;
/// none carries a secret value or a raw response body (vaultrs keeps the body in its error's
/// `Debug`, which is why a `ClientError` is never printed or kept as a source here).
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The server could not be reached at all: connection refused, DNS, TLS handshake,
    /// request timeout.
    #[error("vault {op} {path}: cannot reach {addr}: {cause}")]
    Unreachable {
        /// The operation (`read`, `write`, `login`, …).
        op: &'static str,
        /// The Vault path.
        path: String,
        /// The server address.
        addr: String,
        /// The transport's own description (no request or response content).
        cause: String,
    },
    /// Vault answered 403: the token's policies do not allow this operation on this path.
    #[error("vault {op} {path}: permission denied")]
    PermissionDenied {
        /// The operation.
        op: &'static str,
        /// The Vault path.
        path: String,
    },
    /// Vault answered 404: nothing at this path (or the version was deleted).
    #[error("vault {op} {path}: not found")]
    NotFound {
        /// The operation.
        op: &'static str,
        /// The Vault path.
        path: String,
    },
    /// A KV v2 check-and-set write found a different current version than expected.
    #[error("vault write {path}: check-and-set conflict (expected version {expected})")]
    CasConflict {
        /// The Vault path.
        path: String,
        /// The version the writer expected to be current.
        expected: u64,
    },
    /// Vault answered with a status that may clear up on its own: 5xx, 429, 412.
    #[error("vault {op} {path}: server answered {code}: {}", messages.join("; "))]
    Unavailable {
        /// The operation.
        op: &'static str,
        /// The Vault path.
        path: String,
        /// The HTTP status.
        code: u16,
        /// Vault's own error messages.
        messages: Vec<String>,
    },
    /// Vault rejected the request (a 4xx other than 403/404/412/429).
    #[error("vault {op} {path}: rejected with {code}: {}", messages.join("; "))]
    Rejected {
        /// The operation.
        op: &'static str,
        /// The Vault path.
        path: String,
        /// The HTTP status.
        code: u16,
        /// Vault's own error messages.
        messages: Vec<String>,
    },
    /// The response did not have the expected shape (the content is not reproduced: it may
    /// hold secrets).
    #[error("vault {op} {path}: unexpected response: {what}")]
    BadResponse {
        /// The operation.
        op: &'static str,
        /// The Vault path.
        path: String,
        /// What was wrong, in words.
        what: String,
    },
    /// Retrying a retryable failure ran past the caller's deadline.
    #[error("vault {op} {path}: gave up after {}s: {last}", deadline.as_secs_f64())]
    DeadlineExceeded {
        /// The operation.
        op: &'static str,
        /// The Vault path.
        path: String,
        /// The deadline that ran out.
        deadline: Duration,
        /// The last failure seen before the deadline, or "no answer" if none completed.
        last: String,
    },
    /// A value to write is not valid UTF-8, and KV stores JSON strings.
    #[error("vault write {path}: field {key:?} is not valid UTF-8")]
    NotText {
        /// The Vault path.
        path: String,
        /// The field name.
        key: String,
    },
    /// Client-side configuration is unusable (bad address, unreadable CA file, missing
    /// credentials for an auth method).
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
}

impl VaultError {
    /// Whether trying again later may succeed: transport failures and 5xx/429/412 answers.
    /// A 403 or 404 is final and fails at once.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Unavailable { .. })
    }

    /// The process exit code this error maps to (sysexits, as DESIGN.md's table):
    /// 69 unavailable, 77 permission denied, 66 not found, 64 configuration, 70 otherwise.
    #[must_use]
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Unreachable { .. } | Self::Unavailable { .. } | Self::DeadlineExceeded { .. } => {
                69
            }
            Self::PermissionDenied { .. } => 77,
            Self::NotFound { .. } => 66,
            Self::Config(_) => 64,
            Self::CasConflict { .. }
            | Self::Rejected { .. }
            | Self::BadResponse { .. }
            | Self::NotText { .. } => 70,
        }
    }

    /// The Vault path the error is about.
    #[must_use]
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::Unreachable { path, .. }
            | Self::PermissionDenied { path, .. }
            | Self::NotFound { path, .. }
            | Self::CasConflict { path, .. }
            | Self::Unavailable { path, .. }
            | Self::Rejected { path, .. }
            | Self::BadResponse { path, .. }
            | Self::DeadlineExceeded { path, .. }
            | Self::NotText { path, .. } => Some(path),
            Self::Config(_) => None,
        }
    }

    /// The same error, naming `path` instead (for a caller that spells the path another
    /// way, e.g. a KV v2 API path `MOUNT/data/REST` rather than `MOUNT/REST`).
    #[must_use]
    pub fn with_path(mut self, path: &str) -> Self {
        match &mut self {
            Self::Unreachable { path: p, .. }
            | Self::PermissionDenied { path: p, .. }
            | Self::NotFound { path: p, .. }
            | Self::CasConflict { path: p, .. }
            | Self::Unavailable { path: p, .. }
            | Self::Rejected { path: p, .. }
            | Self::BadResponse { path: p, .. }
            | Self::DeadlineExceeded { path: p, .. }
            | Self::NotText { path: p, .. } => path.clone_into(p),
            Self::Config(_) => {}
        }
        self
    }

    /// Classifies a vaultrs error. `cas` is the expected version when the request was a
    /// check-and-set write, so a CAS mismatch comes back as [`VaultError::CasConflict`].
    pub(crate) fn classify(
        e: ClientError,
        op: &'static str,
        path: &str,
        addr: &str,
        cas: Option<u64>,
    ) -> Self {
        let path = path.to_owned();
        match e {
            ClientError::APIError { code, errors } => {
                Self::from_status(op, path, code, errors, cas)
            }
            ClientError::RestClientError { source } => {
                use rustify::errors::ClientError as R;
                match source {
                    R::ServerResponseError { code, .. } => {
                        Self::from_status(op, path, code, Vec::new(), cas)
                    }
                    R::RequestError { source, .. } | R::ResponseError { source } => {
                        Self::Unreachable {
                            op,
                            path,
                            addr: addr.to_owned(),
                            cause: innermost_cause(source.as_ref()),
                        }
                    }
                    // Parse errors keep the body in a field; report only that parsing failed.
                    other => Self::BadResponse {
                        op,
                        path,
                        what: other.to_string(),
                    },
                }
            }
            ClientError::ResponseDataEmptyError => Self::NotFound { op, path },
            // Display of the remaining variants is a fixed sentence without content.
            other => Self::BadResponse {
                op,
                path,
                what: other.to_string(),
            },
        }
    }

    fn from_status(
        op: &'static str,
        path: String,
        code: u16,
        messages: Vec<String>,
        cas: Option<u64>,
    ) -> Self {
        match code {
            403 => Self::PermissionDenied { op, path },
            404 => Self::NotFound { op, path },
            400 if cas.is_some() && messages.iter().any(|m| m.contains("check-and-set")) => {
                Self::CasConflict {
                    path,
                    expected: cas.unwrap_or_default(),
                }
            }
            412 | 429 | 500..=599 => Self::Unavailable {
                op,
                path,
                code,
                messages,
            },
            _ => Self::Rejected {
                op,
                path,
                code,
                messages,
            },
        }
    }
}

/// The deepest error in a chain: for a refused connection that is "Connection refused (os
/// error 111)" rather than reqwest's generic "error sending request".
fn innermost_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_and_missing_are_final_and_server_errors_are_retryable() {
        let e = |code| VaultError::from_status("read", "secret/x".into(), code, vec![], None);
        assert!(!e(403).is_retryable());
        assert_eq!(e(403).exit_code(), 77);
        assert!(!e(404).is_retryable());
        assert!(e(503).is_retryable());
        assert!(e(429).is_retryable());
        assert!(e(412).is_retryable());
        assert!(!e(400).is_retryable());
        assert_eq!(e(503).exit_code(), 69);
    }

    #[test]
    fn with_path_renames_only_the_path() {
        let e = VaultError::from_status("read", "secret/x".into(), 403, vec![], None)
            .with_path("secret/data/x");
        assert_eq!(e.to_string(), "vault read secret/data/x: permission denied");
    }

    #[test]
    fn a_cas_mismatch_is_its_own_error() {
        let msgs = vec!["check-and-set parameter did not match the current version".to_owned()];
        let e = VaultError::from_status("write", "secret/x".into(), 400, msgs, Some(3));
        assert!(
            matches!(e, VaultError::CasConflict { expected: 3, .. }),
            "{e}"
        );
    }
}

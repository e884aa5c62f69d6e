//! Errors from talking to Vault, classified so callers can decide: retry, give up, exit how.

use std::time::Duration;

use vaultrs::error::ClientError;

use crate::exit::{ExitCode, HasExitCode};

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
    /// The TLS handshake failed on the server's certificate: no root keyturn trusts signed
    /// it, or it does not name the address. Trying again meets the same certificate, so this
    /// is final: the operator must set `VAULT_CACERT` (or fix the address or the certificate).
    #[error("vault {op} {path}: cannot trust {addr}: {cause}")]
    UntrustedCertificate {
        /// The operation.
        op: &'static str,
        /// The Vault path.
        path: String,
        /// The server address.
        addr: String,
        /// rustls' words, then what to do about it.
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

impl HasExitCode for VaultError {
    /// README's table: 69 unavailable (past retries or the deadline), 77 permission denied
    /// (a 403, a 401, or a login refused with 400: most auth methods answer bad credentials
    /// so), 66 not found, 64 configuration (including a server certificate no trusted CA
    /// signed: no request reached Vault, and only the operator's `VAULT_CACERT` can fix it),
    /// 70 otherwise.
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Unreachable { .. } | Self::Unavailable { .. } | Self::DeadlineExceeded { .. } => {
                ExitCode::Unavailable
            }
            Self::PermissionDenied { .. }
            | Self::Rejected { code: 401, .. }
            | Self::Rejected {
                op: "login",
                code: 400,
                ..
            } => ExitCode::NoPermission,
            Self::NotFound { .. } => ExitCode::NotFound,
            Self::Config(_) | Self::UntrustedCertificate { .. } => ExitCode::Usage,
            Self::CasConflict { .. }
            | Self::Rejected { .. }
            | Self::BadResponse { .. }
            | Self::NotText { .. } => ExitCode::Software,
        }
    }
}

impl VaultError {
    /// Whether trying again later may succeed: transport failures and 5xx/429/412 answers.
    /// A 403 or 404 is final and fails at once, and so is a rejected server certificate
    /// ([`VaultError::UntrustedCertificate`]): waiting does not change who signed it.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Unavailable { .. })
    }

    /// The Vault path the error is about.
    #[must_use]
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::Unreachable { path, .. }
            | Self::UntrustedCertificate { path, .. }
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
            | Self::UntrustedCertificate { path: p, .. }
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
                        Self::transport(op, path, addr, source.as_ref())
                    }
                    // A 2xx whose body did not parse: say what it was, never what it said.
                    R::ResponseParseError { source, content } => Self::BadResponse {
                        op,
                        path,
                        what: describe_unparsable(source.as_ref(), content.as_deref()),
                    },
                    R::ResponseConversionError { .. } => Self::BadResponse {
                        op,
                        path,
                        what: "the server answered a success status with a body that is not \
                               UTF-8 text, so not JSON; is the address a Vault server?"
                            .to_owned(),
                    },
                    // Other parse errors keep the body in a field; report only that parsing failed.
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

    /// A request that got no answer: [`VaultError::UntrustedCertificate`] when rustls
    /// rejected the server's certificate, else [`VaultError::Unreachable`].
    pub(crate) fn transport(
        op: &'static str,
        path: String,
        addr: &str,
        e: &(dyn std::error::Error + 'static),
    ) -> Self {
        let addr = addr.to_owned();
        let cause = transport_cause(e);
        if rejected_certificate(e) {
            Self::UntrustedCertificate {
                op,
                path,
                addr,
                cause,
            }
        } else {
            Self::Unreachable {
                op,
                path,
                addr,
                cause,
            }
        }
    }

    fn from_status(
        op: &'static str,
        path: String,
        code: u16,
        messages: Vec<String>,
        cas: Option<u64>,
    ) -> Self {
        // Vault's words reach a terminal: no escape sequence of the server's may run there.
        let mut messages: Vec<String> = messages.iter().map(|m| server_text(m)).collect();
        if messages.is_empty() {
            messages.push(status_words(code).to_owned());
        }
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

/// The most characters of one server message kept in an error.
const SERVER_TEXT_MAX: usize = 200;

/// Server-provided text made safe to print: control characters (ESC, BEL, CR, …) escaped as
/// `\u{1b}`, and at most [`SERVER_TEXT_MAX`] characters, then `…`.
fn server_text(s: &str) -> String {
    crate::text::clean(s, SERVER_TEXT_MAX)
}

/// What a status without Vault's `errors` list means, for the message.
fn status_words(code: u16) -> &'static str {
    match code {
        300..=399 => {
            "a redirect, not a Vault answer (is the address a proxy or a login page rather \
             than the Vault server?)"
        }
        _ => "no Vault error message (the body is not Vault's JSON)",
    }
}

/// Describes a success answer whose body did not parse as the expected JSON, without
/// repeating any of it: the body of a read is a secret, and serde's own message may quote a
/// value (`invalid type: string "…"`).
fn describe_unparsable(
    source: &(dyn std::error::Error + Send + Sync + 'static),
    body: Option<&str>,
) -> String {
    let Some(body) = body else {
        return "the server answered a success status with a body that is not UTF-8 text, so \
                not JSON; is the address a Vault server?"
            .to_owned();
    };
    let trimmed = body.trim_start();
    if trimmed.is_empty() {
        return "the server answered a success status with an empty body, not JSON".to_owned();
    }
    let json = source.downcast_ref::<serde_json::Error>();
    match json.map(serde_json::Error::classify) {
        Some(serde_json::error::Category::Data) => {
            // Only serde's "missing field `name`" is repeated: it names a field, no value.
            let missing = json
                .map(ToString::to_string)
                .and_then(|m| {
                    m.strip_prefix("missing field `")
                        .and_then(|r| r.split_once('`'))
                        .map(|(f, _)| server_text(f))
                })
                .map_or_else(String::new, |f| format!(" (missing field `{f}`)"));
            format!(
                "the server answered a success status with JSON that is not shaped like Vault's \
                 answer{missing}"
            )
        }
        _ if trimmed.starts_with('<') => "the server answered a success status with a body \
            that is not JSON but starts with `<`, like an HTML page; is the address a Vault \
            server, not a proxy or a login page?"
            .to_owned(),
        _ => "the server answered a success status with a body that is not JSON; is the \
              address a Vault server?"
            .to_owned(),
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

/// What to do about a server certificate no trusted root signed (or that does not name the
/// address): which roots keyturn trusts is in `tls.rs`.
pub(crate) const CERTIFICATE_HINT: &str = "keyturn trusts the system's CA certificates, or its \
    built-in Mozilla roots where the system has none (a scratch image): set VAULT_CACERT to a \
    PEM bundle of the CA that signed Vault's certificate";

/// [`innermost_cause`], with [`CERTIFICATE_HINT`] after a rejected server certificate.
fn transport_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let cause = innermost_cause(e);
    if rejected_certificate(e) {
        format!("{cause} ({CERTIFICATE_HINT})")
    } else {
        cause
    }
}

/// Whether rustls rejected the server's certificate somewhere in `e`'s chain. An I/O error's
/// `source()` skips the error it wraps (hyper-rustls nests one I/O error in another around
/// rustls' error), so an I/O error is opened with `get_ref` instead.
fn rejected_certificate(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if matches!(
            err.downcast_ref::<rustls::Error>(),
            Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
        ) {
            return true;
        }
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner),
            None => err.source(),
        };
    }
    false
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
    fn a_refused_login_is_a_denial_and_a_bad_request_elsewhere_is_internal() {
        let e =
            |op, code| VaultError::from_status(op, "auth/approle/login".into(), code, vec![], None);
        assert_eq!(e("login", 400).exit_code(), ExitCode::NoPermission);
        assert_eq!(e("login", 401).exit_code(), ExitCode::NoPermission);
        assert_eq!(e("read", 401).exit_code(), ExitCode::NoPermission);
        assert_eq!(e("read", 400).exit_code(), ExitCode::Software);
        assert_eq!(e("read", 404).exit_code(), ExitCode::NotFound);
    }

    #[test]
    fn with_path_renames_only_the_path() {
        let e = VaultError::from_status("read", "secret/x".into(), 403, vec![], None)
            .with_path("secret/data/x");
        assert_eq!(e.to_string(), "vault read secret/data/x: permission denied");
    }

    #[test]
    fn server_text_cannot_drive_the_terminal_and_is_capped() {
        let msgs = vec![
            "\u{1b}]0;owned\u{7}\u{1b}[2Jboom\r".to_owned(),
            "x".repeat(1 << 20),
        ];
        let e = VaultError::from_status("read", "secret/x".into(), 500, msgs, None);
        let text = e.to_string();
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(text.contains("\\u{1b}[2Jboom\\r"), "{text}");
        assert!(text.len() < 600, "{}", text.len());
        assert!(text.ends_with('…'), "{text}");
    }

    #[test]
    fn a_redirect_or_a_status_without_vault_errors_says_so() {
        let e = VaultError::from_status("read", "secret/x".into(), 302, vec![], None);
        assert_eq!(e.exit_code(), 70);
        assert!(
            e.to_string().contains("rejected with 302: a redirect"),
            "{e}"
        );
        let e = VaultError::from_status("read", "secret/x".into(), 502, vec![], None);
        assert!(
            e.to_string()
                .ends_with("502: no Vault error message (the body is not Vault's JSON)"),
            "{e}"
        );
    }

    #[test]
    fn an_unparsable_success_answer_is_described_without_its_content() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Shape {
            data: std::collections::BTreeMap<String, String>,
        }
        let describe = |body: &str| {
            let err = serde_json::from_str::<Shape>(body).unwrap_err();
            describe_unparsable(&err, Some(body))
        };
        let secret = "KTCANARY-in-body";
        let html = describe(&format!("<html>{secret}</html>"));
        assert!(
            html.contains("starts with `<`, like an HTML page"),
            "{html}"
        );
        let garbage = describe(&format!("{secret} garbage"));
        assert!(garbage.contains("a body that is not JSON"), "{garbage}");
        let wrong = describe(&format!("{{\"data\": \"{secret}\"}}"));
        assert!(
            wrong.contains("JSON that is not shaped like Vault's answer"),
            "{wrong}"
        );
        let missing = describe(&format!("{{\"other\": \"{secret}\"}}"));
        assert!(missing.ends_with("(missing field `data`)"), "{missing}");
        assert!(describe("  ").contains("an empty body"));
        for d in [html, garbage, wrong, missing] {
            assert!(!d.contains(secret), "{d}");
        }
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

    /// An error holding another as its `source()`, as hyper-util's connect error does.
    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_rejected_server_certificate_says_to_set_vault_cacert() {
        // hyper-rustls' nesting: an I/O error in an I/O error around rustls' own error.
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let e = Outer(std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            tls,
        )));
        let cause = transport_cause(&e);
        assert!(
            cause.starts_with("invalid peer certificate: UnknownIssuer ("),
            "{cause}"
        );
        assert!(cause.contains("set VAULT_CACERT"), "{cause}");
        // Any other transport failure is reported as it is.
        let refused = Outer(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(transport_cause(&refused), "connection refused");
        let other_tls = Outer(std::io::Error::other(rustls::Error::DecryptError));
        assert!(!transport_cause(&other_tls).contains("VAULT_CACERT"));
    }

    #[test]
    fn a_rejected_server_certificate_is_final_and_a_configuration_error() {
        let untrusted = Outer(std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        )));
        let e = VaultError::transport("read", "secret/x".into(), "https://v:8200", &untrusted);
        assert!(
            matches!(e, VaultError::UntrustedCertificate { .. }),
            "{e:?}"
        );
        assert!(!e.is_retryable(), "the same certificate comes back");
        assert_eq!(e.exit_code(), ExitCode::Usage);
        assert_eq!(e.path(), Some("secret/x"));
        let m = e.to_string();
        assert!(
            m.starts_with(
                "vault read secret/x: cannot trust https://v:8200: invalid peer \
                 certificate: UnknownIssuer ("
            ) && m.contains("set VAULT_CACERT"),
            "{m}"
        );
        // A refused connection, or a TLS failure that is not about the certificate, may
        // clear up: retried as before.
        for other in [
            Outer(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            Outer(std::io::Error::other(rustls::Error::DecryptError)),
        ] {
            let e = VaultError::transport("read", "secret/x".into(), "https://v:8200", &other);
            assert!(matches!(e, VaultError::Unreachable { .. }), "{e:?}");
            assert!(e.is_retryable());
            assert_eq!(e.exit_code(), ExitCode::Unavailable);
        }
    }
}

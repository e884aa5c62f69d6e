//! [`DistributeError`]: why a delivery did not complete, in terms the engine can audit and
//! act on. Every variant names the object, the verb and (for API answers) the HTTP code, and
//! never a value: errors are built from names and from the API server's `Status`, never from
//! a request or response body.

use std::fmt;

use keyturn_core::exit::{ExitCode, HasExitCode};

/// An object of the Kubernetes API, for messages: `secrets "db" in namespace "shop"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// The resource as RBAC and the API server's messages spell it: `secrets`,
    /// `deployments.apps`, `statefulsets.apps`, `daemonsets.apps`.
    pub resource: String,
    /// The namespace.
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

impl ObjectRef {
    /// A Secret.
    #[must_use]
    pub fn secret(namespace: &str, name: &str) -> Self {
        Self {
            resource: "secrets".into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} in namespace {:?}",
            self.resource, self.name, self.namespace
        )
    }
}

/// Why a delivery (Secret write or rollout restart) failed.
///
/// What the caller should do is in [`DistributeError::is_retryable`]: a retryable failure is
/// worth another attempt later (the whole delivery is idempotent, so the engine just runs the
/// `distribute` step again); the others need a person (RBAC, a missing workload, a bad
/// policy) and the rotation stays resumable at `distribute` until one has acted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DistributeError {
    /// The policy maps a Secret key to a credential field the credential does not have.
    /// Nothing was written.
    #[error(
        "policy {policy:?}: {secret}: key {key:?} maps to credential field {field:?}, which this credential does not have; nothing was written"
    )]
    MissingField {
        /// The policy.
        policy: String,
        /// The Secret.
        secret: Box<ObjectRef>,
        /// The Secret key.
        key: String,
        /// The credential field it maps to.
        field: String,
    },

    /// A value to be delivered is empty. keyturn never writes an empty value (over a good one
    /// or at all): an empty credential is always a bug upstream. Nothing was written.
    #[error(
        "policy {policy:?}: {secret}: refusing to write an empty value for key {key:?} (credential field {field:?}); nothing was written"
    )]
    EmptyValue {
        /// The policy.
        policy: String,
        /// The Secret.
        secret: Box<ObjectRef>,
        /// The Secret key.
        key: String,
        /// The credential field it maps to.
        field: String,
    },

    /// 403: the agent's service account lacks the grant. Nothing was changed by this request;
    /// the rotation stays resumable once the Role is fixed.
    #[error("{object}: forbidden to {verb} — grant it with `keyturn policy rbac`{hint} ({message})", hint = create_hint(object, verb))]
    Forbidden {
        /// What was denied.
        object: Box<ObjectRef>,
        /// The verb denied (`get`, `patch`, `create`).
        verb: String,
        /// Always 403.
        code: u16,
        /// The API server's words (who was denied).
        message: String,
    },

    /// 404: the object (a workload to restart, or the namespace) does not exist.
    #[error("{object}: not found (on {verb}): {message}")]
    NotFound {
        /// What is missing.
        object: Box<ObjectRef>,
        /// The verb that found nothing.
        verb: String,
        /// Always 404.
        code: u16,
        /// The API server's words.
        message: String,
    },

    /// 422 (or 400): the API server refused the write as invalid, e.g. an `immutable` Secret
    /// or a Secret type whose required keys the policy does not write.
    #[error("{object}: {verb} refused as invalid (HTTP {code}): {message}")]
    Invalid {
        /// What was written.
        object: Box<ObjectRef>,
        /// The verb.
        verb: String,
        /// 422 or 400.
        code: u16,
        /// The API server's words.
        message: String,
    },

    /// 409 answers kept coming: other writers changed the object between every read and
    /// write, `attempts` times in a row.
    #[error("{object}: {verb} conflicted with other writers {attempts} times in a row (HTTP 409)")]
    Conflict {
        /// What was written.
        object: Box<ObjectRef>,
        /// The verb.
        verb: String,
        /// Always 409.
        code: u16,
        /// How many attempts were made.
        attempts: u32,
    },

    /// Any other HTTP error answer (401, 429, 5xx, …).
    #[error("{object}: {verb} failed with HTTP {code} {reason}: {message}")]
    Api {
        /// The object.
        object: Box<ObjectRef>,
        /// The verb.
        verb: String,
        /// The HTTP status.
        code: u16,
        /// The `Status` reason (`InternalError`, `TooManyRequests`, …).
        reason: String,
        /// The API server's words.
        message: String,
    },

    /// The API server could not be reached (connect, TLS, timeout, credentials refresh).
    #[error("{object}: {verb}: Kubernetes API unreachable: {cause}")]
    Unreachable {
        /// The object.
        object: Box<ObjectRef>,
        /// The verb.
        verb: String,
        /// The transport's words.
        cause: String,
    },

    /// The request could not be built or the answer not understood (never quotes the body).
    #[error("{object}: {verb}: {cause}")]
    Protocol {
        /// The object.
        object: Box<ObjectRef>,
        /// The verb.
        verb: String,
        /// What went wrong, without any body content.
        cause: String,
    },

    /// A restart target of a kind keyturn cannot restart.
    #[error(
        "{kind} {name:?} in namespace {namespace:?}: cannot restart this kind (Deployment, StatefulSet or DaemonSet)"
    )]
    UnsupportedWorkload {
        /// The namespace.
        namespace: String,
        /// The kind given.
        kind: String,
        /// The name.
        name: String,
    },

    /// This process may not write now: its membership Lease may be expiring (see
    /// [`crate::fence`]). Nothing was written; the replica that takes the policy over, or this
    /// one once its Lease is renewed, runs the step again.
    #[error("{object}: not written: {source}")]
    Fenced {
        /// What was not written.
        object: Box<ObjectRef>,
        /// Why.
        #[source]
        source: crate::fence::Fenced,
    },

    /// The debounced restart this request joined ended without an answer (its task
    /// panicked or the runtime is shutting down). Whether the workload was annotated is
    /// unknown; running the step again settles it.
    #[error("{object}: the batched rollout restart ended without a result")]
    RestartAbandoned {
        /// The workload.
        object: Box<ObjectRef>,
    },
}

/// Advice for the one grant whose fix is not simply "add it to the Role".
fn create_hint(object: &ObjectRef, verb: &str) -> &'static str {
    if verb == "create" && object.resource == "secrets" {
        " (RBAC cannot limit create to names: pre-create the Secret, empty is fine, or generate the Role with create allowed)"
    } else {
        ""
    }
}

impl DistributeError {
    /// Whether running the delivery again later may succeed without anyone changing
    /// anything: transport failures, 409s that did not settle, 429 and 5xx answers.
    /// 403, 404, 422 and the refusals of bad input are not.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable { .. }
            | Self::Conflict { .. }
            | Self::RestartAbandoned { .. }
            | Self::Fenced { .. } => true,
            Self::Api { code, .. } => *code == 429 || *code >= 500,
            Self::MissingField { .. }
            | Self::EmptyValue { .. }
            | Self::Forbidden { .. }
            | Self::NotFound { .. }
            | Self::Invalid { .. }
            | Self::Protocol { .. }
            | Self::UnsupportedWorkload { .. } => false,
        }
    }

    /// The HTTP status the API server answered, when the failure was an answer.
    #[must_use]
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Forbidden { code, .. }
            | Self::NotFound { code, .. }
            | Self::Invalid { code, .. }
            | Self::Conflict { code, .. }
            | Self::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The Kubernetes object concerned, when there is one.
    #[must_use]
    pub fn object(&self) -> Option<&ObjectRef> {
        match self {
            Self::Forbidden { object, .. }
            | Self::NotFound { object, .. }
            | Self::Invalid { object, .. }
            | Self::Conflict { object, .. }
            | Self::Api { object, .. }
            | Self::Unreachable { object, .. }
            | Self::Protocol { object, .. }
            | Self::RestartAbandoned { object }
            | Self::Fenced { object, .. } => Some(object.as_ref()),
            Self::MissingField { .. }
            | Self::EmptyValue { .. }
            | Self::UnsupportedWorkload { .. } => None,
        }
    }

    /// Classifies a kube-rs failure of `verb` on `object`.
    ///
    /// Never uses the text of a response body: `kube::Error::SerdeError`'s message can quote
    /// the JSON it choked on, which for a Secret is its data, so only its category is kept.
    pub(crate) fn from_kube(e: kube::Error, object: &ObjectRef, verb: &str) -> Self {
        let (object, verb) = (Box::new(object.clone()), verb.to_owned());
        match e {
            kube::Error::Api(status) => {
                let code = status.code;
                let message = status.message.clone();
                match code {
                    403 => Self::Forbidden {
                        object,
                        verb,
                        code,
                        message,
                    },
                    404 => Self::NotFound {
                        object,
                        verb,
                        code,
                        message,
                    },
                    400 | 422 => Self::Invalid {
                        object,
                        verb,
                        code,
                        message,
                    },
                    409 => Self::Conflict {
                        object,
                        verb,
                        code,
                        attempts: 1,
                    },
                    _ => Self::Api {
                        object,
                        verb,
                        code,
                        reason: status.reason.clone(),
                        message,
                    },
                }
            }
            kube::Error::SerdeError(se) => Self::Protocol {
                object,
                verb,
                cause: format!(
                    "the answer could not be decoded ({:?} error)",
                    se.classify()
                ),
            },
            kube::Error::FromUtf8(_) => Self::Protocol {
                object,
                verb,
                cause: "the answer was not UTF-8".into(),
            },
            kube::Error::BuildRequest(re) => Self::Protocol {
                object,
                verb,
                cause: format!("could not build the request: {re}"),
            },
            kube::Error::HttpError(he) => Self::Protocol {
                object,
                verb,
                cause: format!("could not build the request: {he}"),
            },
            other => Self::Unreachable {
                object,
                verb,
                cause: other.to_string(),
            },
        }
    }

    /// A body keyturn could not parse (the parser's category only, never the text).
    pub(crate) fn undecodable(object: &ObjectRef, verb: &str, e: &serde_json::Error) -> Self {
        Self::Protocol {
            object: Box::new(object.clone()),
            verb: verb.to_owned(),
            cause: format!("the answer could not be decoded ({:?} error)", e.classify()),
        }
    }
}

impl HasExitCode for DistributeError {
    /// 77 for an RBAC denial, 69 for an API that stayed unavailable (transport, 429, 5xx,
    /// conflicts that did not settle), 1 for the rest: the rotation is promoted but not
    /// delivered, and the next attempt delivers it once a person has fixed the cause.
    fn exit_code(&self) -> ExitCode {
        if matches!(self, Self::Forbidden { .. }) {
            ExitCode::NoPermission
        } else if self.is_retryable() {
            ExitCode::Unavailable
        } else {
            ExitCode::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("the server's words", reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn a_403_names_the_object_the_verb_and_the_fix() {
        let e = DistributeError::from_kube(
            api(403, "Forbidden"),
            &ObjectRef::secret("y", "x"),
            "patch",
        );
        assert!(!e.is_retryable());
        assert_eq!(e.code(), Some(403));
        assert!(
            e.to_string().starts_with(
                "secrets \"x\" in namespace \"y\": forbidden to patch — grant it with `keyturn policy rbac`"
            ),
            "{e}"
        );
    }

    #[test]
    fn server_errors_throttling_and_transport_are_retryable_and_client_errors_are_not() {
        let o = ObjectRef::secret("ns", "s");
        for (code, retryable) in [
            (500, true),
            (503, true),
            (429, true),
            (401, false),
            (404, false),
            (422, false),
            (400, false),
        ] {
            let e = DistributeError::from_kube(api(code, "X"), &o, "get");
            assert_eq!(e.is_retryable(), retryable, "HTTP {code}");
        }
        let conflict = DistributeError::Conflict {
            object: Box::new(o.clone()),
            verb: "patch".into(),
            code: 409,
            attempts: 8,
        };
        assert!(conflict.is_retryable());
        let empty = DistributeError::EmptyValue {
            policy: "p".into(),
            secret: Box::new(o),
            key: "password".into(),
            field: "password".into(),
        };
        assert!(!empty.is_retryable());
    }

    #[test]
    fn an_undecodable_body_is_described_by_category_only() {
        let se = serde_json::from_str::<serde_json::Value>("{\"data\": {\"k\": \"SECRETVALUE\"")
            .unwrap_err();
        let e = DistributeError::undecodable(&ObjectRef::secret("ns", "s"), "get", &se);
        assert!(!e.to_string().contains("SECRETVALUE"));
        assert!(!format!("{e:?}").contains("SECRETVALUE"));
    }
}

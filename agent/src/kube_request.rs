//! One failed request to the Kubernetes API, as the Lease loops (the webhook's caBundle upkeep,
//! the daemon's membership) report and retry it: the verb, the object, and the API server's
//! code and reason — never a body.

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum KubeRequestError {
    /// The API server answered with an error status.
    #[error("{verb} {object}: {code} {reason}: {message}")]
    Api {
        /// `get`, `create`, `update`, `list`, `delete`.
        verb: &'static str,
        /// `leases "x" in namespace "y"`, `mutatingwebhookconfigurations "z"`.
        object: String,
        /// The HTTP code.
        code: u16,
        /// The Status reason (`Conflict`, `Forbidden`, …).
        reason: String,
        /// The Status message.
        message: String,
    },
    /// The request did not get an answer (or one kube could not read).
    #[error("{verb} {object}: {source}")]
    Transport {
        /// The verb.
        verb: &'static str,
        /// The object.
        object: String,
        /// kube's error.
        source: kube::Error,
    },
}

impl KubeRequestError {
    /// `e` from `verb` on `object`.
    #[must_use]
    pub fn new(e: kube::Error, verb: &'static str, object: &str) -> Self {
        match e {
            kube::Error::Api(s) => Self::Api {
                verb,
                object: object.to_owned(),
                code: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
            },
            source => Self::Transport {
                verb,
                object: object.to_owned(),
                source,
            },
        }
    }

    /// The API server's code, when it answered.
    #[must_use]
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Api { code, .. } => Some(*code),
            Self::Transport { .. } => None,
        }
    }

    /// Worth another attempt within a round: a conflict (read again), throttling, a server
    /// error, no answer.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api { code, .. } => *code == 409 || *code == 429 || *code >= 500,
            Self::Transport { .. } => true,
        }
    }

    /// The failure's kind, for "log only when it changes": the message without the details
    /// that differ between otherwise identical failures.
    #[must_use]
    pub fn kind(&self) -> String {
        match self {
            Self::Api {
                verb,
                object,
                code,
                reason,
                ..
            } => format!("{verb} {object}: {code} {reason}"),
            other => other.to_string(),
        }
    }
}

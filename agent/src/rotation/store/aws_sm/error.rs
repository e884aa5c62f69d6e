//! Secrets Manager failures, classified by the service's own error codes: a denial (a
//! person must grant it), a transient failure (retry), or the rest.

use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::rotation::store::StoreErrorKind;

/// A failed Secrets Manager call. Names the operation and the secret, never a value.
#[derive(Debug, thiserror::Error)]
pub enum AwsSmError {
    /// Secrets Manager answered with an error.
    #[error("{op} {secret_id}: {code}: {message}")]
    Service {
        /// The API operation.
        op: &'static str,
        /// The secret it was called on.
        secret_id: String,
        /// The error code (`ResourceNotFoundException`, `AccessDeniedException`, …).
        code: String,
        /// Secrets Manager's message.
        message: String,
        /// The HTTP status.
        status: u16,
    },
    /// No usable answer: connect failure, timeout, unreadable response, or a request the SDK
    /// could not build.
    #[error("{op} {secret_id}: {detail}")]
    Transport {
        /// The API operation.
        op: &'static str,
        /// The secret it was called on.
        secret_id: String,
        /// What went wrong, with its causes.
        detail: String,
        /// Whether sending again may help (not for a request that could not be built).
        retryable: bool,
    },
    /// Secrets Manager's own rotation is switched on for the secret: two rotators would take
    /// `AWSPENDING` from each other.
    #[error(
        "{secret_id}: Secrets Manager's own rotation is enabled on this secret; turn it off (CancelRotateSecret) before keyturn rotates it"
    )]
    NativeRotationEnabled {
        /// The secret.
        secret_id: String,
    },
}

impl AwsSmError {
    /// The service's error code, if it answered.
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Service { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether a later attempt may succeed: throttling, server errors and transport
    /// failures; not denials, missing secrets or invalid requests.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Service { code, status, .. } => {
                *status >= 500 || *status == 429 || RETRYABLE_CODES.contains(&code.as_str())
            }
            Self::Transport { retryable, .. } => *retryable,
            Self::NativeRotationEnabled { .. } => false,
        }
    }

    /// Whether Secrets Manager refused for lack of permission or of valid credentials: a
    /// person must grant or fix them. Decided by the service's error code (or an HTTP 403),
    /// never by its message, which quotes the secret's name.
    #[must_use]
    pub fn is_permission_denied(&self) -> bool {
        match self {
            Self::Service { code, status, .. } => {
                *status == 403 || DENIED_CODES.contains(&code.as_str())
            }
            Self::Transport { .. } | Self::NativeRotationEnabled { .. } => false,
        }
    }

    /// What kind of failure this is, from the service's error code and HTTP status (never
    /// its message): a denial, a missing secret, throttling or an outage, or an answer
    /// keyturn cannot use.
    #[must_use]
    pub fn kind(&self) -> StoreErrorKind {
        match self {
            _ if self.is_permission_denied() => StoreErrorKind::PermissionDenied,
            Self::Service { code, .. } if code == "ResourceNotFoundException" => {
                StoreErrorKind::NotFound
            }
            _ if self.is_retryable() => StoreErrorKind::Unavailable,
            Self::Service { .. } | Self::Transport { .. } | Self::NativeRotationEnabled { .. } => {
                StoreErrorKind::Other
            }
        }
    }

    pub(super) fn from_sdk<E>(
        op: &'static str,
        secret_id: &str,
        e: SdkError<E, HttpResponse>,
    ) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &e {
            SdkError::ServiceError(se) => Self::Service {
                op,
                secret_id: secret_id.to_owned(),
                code: se.err().code().unwrap_or("UnknownError").to_owned(),
                message: se.err().message().unwrap_or_default().to_owned(),
                status: se.raw().status().as_u16(),
            },
            SdkError::ConstructionFailure(_) => Self::Transport {
                op,
                secret_id: secret_id.to_owned(),
                detail: DisplayErrorContext(&e).to_string(),
                retryable: false,
            },
            _ => Self::Transport {
                op,
                secret_id: secret_id.to_owned(),
                detail: DisplayErrorContext(&e).to_string(),
                retryable: true,
            },
        }
    }
}

/// The error codes of a request refused for its identity: not allowed (IAM, a resource or
/// KMS key policy), or credentials the service does not accept.
const DENIED_CODES: &[&str] = &[
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredTokenException",
    "ExpiredToken",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "MissingAuthenticationToken",
];

const RETRYABLE_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "InternalServiceError",
    "InternalFailure",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
];

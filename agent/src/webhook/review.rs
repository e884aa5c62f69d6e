//! AdmissionReview in and out. (Being written.)

use super::inject::Injector;

/// How one request ended, for the metric and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A patch was returned.
    Injected,
    /// Allowed unchanged.
    Skipped,
    /// Refused with a message.
    Denied,
    /// Not an AdmissionReview (answered 400).
    Malformed,
}

impl Outcome {
    /// The metric label.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Skipped => "skipped",
            Self::Denied => "denied",
            Self::Malformed => "malformed",
        }
    }
}

/// An Event to record about an admission, on the pod's owner.
#[derive(Debug, Clone)]
pub struct Notice {
    /// `Injected` or `InjectionDenied`.
    pub reason: &'static str,
    /// Normal for Injected, Warning for InjectionDenied.
    pub warning: bool,
    /// The Event's note.
    pub message: String,
    /// The object the Event is about (the pod's first owner reference, in its namespace).
    pub regarding: k8s_openapi::api::core::v1::ObjectReference,
}

/// The answer to one request to `/mutate`.
#[derive(Debug)]
pub struct Reply {
    /// 200, or 400 for a request that is not an AdmissionReview.
    pub status: u16,
    /// The response body (an AdmissionReview JSON, or a short text for a 400).
    pub body: Vec<u8>,
    /// How it ended.
    pub outcome: Outcome,
    /// The Event to record, if any.
    pub notice: Option<Notice>,
}

/// Answers one request: `content_type` is the request's header, `body` its bytes.
#[must_use]
pub fn review(_injector: &Injector, _content_type: Option<&str>, _body: &[u8]) -> Reply {
    todo!("being written")
}

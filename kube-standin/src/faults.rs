//! The failure switch: make requests for a verb on a resource answer an error status, as a
//! real API server does when it is in trouble (500, 503), throttling (429), or when every
//! write loses an optimistic-concurrency race (409).
//!
//! Rules are checked after authentication and the authorizer chain (a denied request is a 403
//! whatever the rule says, as on a real server where authorization runs first) and before
//! the object is touched: an injected failure changes nothing. The request is still recorded
//! in the request log with the status it got, so a test can count what its client sent
//! during the fault.
//!
//! Each status is worded as the real server words it, so clients classify it as they would
//! in production: a 409 on `create` is `AlreadyExists`, on any other write `Conflict`; a 500
//! is `InternalError`; a 503 `ServiceUnavailable`; a 429 `TooManyRequests`. A 429 or 503
//! carries no `Retry-After` here: kube-rs's default retry layer retries both on its own, with
//! its own backoff.

use super::auth::Attributes;
use super::resources::ResourceKind;
use super::status::ApiError;

/// One failure rule: `verb` on `resource` answers `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FailRule {
    /// `get`, `list`, `create`, `update`, `patch`, `delete`, `deletecollection`, or `*`.
    pub verb: String,
    /// `secrets`, `deployments`, `deployments.apps`, …, or `*` (matched as deny rules are).
    pub resource: String,
    /// The HTTP status to answer.
    pub status: u16,
}

impl FailRule {
    /// Whether the rule applies to a request with these attributes.
    pub(crate) fn matches(&self, a: &Attributes<'_>) -> bool {
        if self.verb != "*" && self.verb != a.verb {
            return false;
        }
        let resource = a.resource_with_subresource();
        let qualified = if a.group.is_empty() {
            resource.clone()
        } else {
            format!("{}.{}", a.resource, a.group)
        };
        self.resource == "*" || self.resource == resource || self.resource == qualified
    }

    /// The error a real server would answer with this status for this request.
    pub(crate) fn error(&self, kind: &ResourceKind, a: &Attributes<'_>) -> ApiError {
        injected(self.status, kind, a.verb, a.name)
    }
}

/// `status` for `verb` on the object `name` of `kind`, worded like kube-apiserver.
pub(crate) fn injected(status: u16, kind: &ResourceKind, verb: &str, name: &str) -> ApiError {
    match status {
        409 if verb == "create" => ApiError::already_exists(kind, name),
        409 => ApiError::conflict(kind, name),
        429 => ApiError::too_many_requests(),
        500 => ApiError::internal(
            "Internal error occurred: etcdserver: request timed out (injected by the stand-in)",
        ),
        503 => ApiError::service_unavailable(),
        other => ApiError::other(other, "injected failure"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;

    fn attrs<'a>(verb: &'a str, group: &'a str, resource: &'a str) -> Attributes<'a> {
        Attributes {
            verb,
            group,
            resource,
            subresource: None,
            namespace: Some("ns"),
            name: "x",
        }
    }

    #[test]
    fn rules_match_a_verb_and_a_plain_or_qualified_resource() {
        let rule = |verb: &str, resource: &str| FailRule {
            verb: verb.into(),
            resource: resource.into(),
            status: 500,
        };
        assert!(rule("patch", "secrets").matches(&attrs("patch", "", "secrets")));
        assert!(!rule("patch", "secrets").matches(&attrs("get", "", "secrets")));
        assert!(rule("*", "deployments.apps").matches(&attrs("get", "apps", "deployments")));
        assert!(rule("*", "deployments").matches(&attrs("get", "apps", "deployments")));
        assert!(!rule("*", "secrets").matches(&attrs("get", "apps", "deployments")));
        assert!(rule("*", "*").matches(&attrs("list", "", "secrets")));
    }

    #[test]
    fn a_409_is_already_exists_on_create_and_conflict_on_other_writes() {
        let create = injected(409, &resources::SECRETS, "create", "db");
        assert_eq!((create.code, create.reason), (409, "AlreadyExists"));
        let patch = injected(409, &resources::SECRETS, "patch", "db");
        assert_eq!((patch.code, patch.reason), (409, "Conflict"));
        assert!(patch.message.contains("the object has been modified"));
        for (code, reason) in [
            (429, "TooManyRequests"),
            (500, "InternalError"),
            (503, "ServiceUnavailable"),
        ] {
            let e = injected(code, &resources::SECRETS, "get", "db");
            assert_eq!((e.code, e.reason), (code, reason));
        }
    }
}

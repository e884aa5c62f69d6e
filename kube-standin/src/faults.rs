//! The failure switch: make requests for a verb on a resource answer an error status, as a
//! real API server does when it is in trouble (500, 503), throttling (429), or when every
//! write loses an optimistic-concurrency race (409) — or answer late, as a server or network
//! that stalls does.
//!
//! Status rules are checked after authentication and the authorizer chain (a denied request
//! is a 403 whatever the rule says, as on a real server where authorization runs first) and
//! before the object is touched: an injected failure changes nothing. The request is still
//! recorded in the request log with the status it got, so a test can count what its client
//! sent during the fault.
//!
//! Each status is worded as the real server words it, so clients classify it as they would
//! in production: a 404 is `NotFound`; a 409 on `create` is `AlreadyExists`, on any other
//! write `Conflict`; a 500 is `InternalError`; a 503 `ServiceUnavailable`; a 429
//! `TooManyRequests`. A 429 or 503 carries no `Retry-After` here: kube-rs's default retry
//! layer retries both on its own, with its own backoff.
//!
//! A hold rule ([`Fault::Hold`]) delays the *answer*: the request is served as usual (what it
//! writes is written, and it is recorded in the request log at once, so a test can count it
//! while its client still waits), then its response is held back for the rule's duration
//! before it is sent. That is a request that hangs as far as the client can tell: a client
//! without a timeout of its own waits the whole hold, and one that gives up never learns
//! whether its write happened. Because the object was read when the request arrived, a test
//! can also change it during a held read, so the client acts on a stale copy: the race
//! between a read and a conditional write, made deterministic. A hold applies whether or not
//! the request is authorized, and adds to a status rule that also matches (a slow error).

use std::time::Duration;

use super::auth::Attributes;
use super::resources::ResourceKind;
use super::status::ApiError;

/// What a matching request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Answered with this HTTP status instead of being served.
    Status(u16),
    /// Served, then its answer held back this long (see the module docs).
    Hold(Duration),
}

/// One failure rule: `verb` on `resource` gets `fault`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FailRule {
    /// `get`, `list`, `create`, `update`, `patch`, `delete`, `deletecollection`, `watch`, or
    /// `*`.
    pub verb: String,
    /// `secrets`, `deployments`, `deployments.apps`, …, or `*` (matched as deny rules are).
    pub resource: String,
    /// What the request gets.
    pub fault: Fault,
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
}

/// The error the first matching status rule makes a real server's answer to this request;
/// `None` when no status rule matches (hold rules are not failures).
pub(crate) fn failure(
    rules: &[FailRule],
    kind: &ResourceKind,
    a: &Attributes<'_>,
) -> Option<ApiError> {
    rules.iter().find_map(|r| match r.fault {
        Fault::Status(status) if r.matches(a) => Some(injected(status, kind, a.verb, a.name)),
        _ => None,
    })
}

/// How long the first matching hold rule holds the answer to this request; `None` when no
/// hold rule matches.
pub(crate) fn hold(rules: &[FailRule], a: &Attributes<'_>) -> Option<Duration> {
    rules.iter().find_map(|r| match r.fault {
        Fault::Hold(d) if r.matches(a) => Some(d),
        _ => None,
    })
}

/// `status` for `verb` on the object `name` of `kind`, worded like kube-apiserver.
pub(crate) fn injected(status: u16, kind: &ResourceKind, verb: &str, name: &str) -> ApiError {
    match status {
        404 => ApiError::not_found(kind, name),
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
            fault: Fault::Status(500),
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
            (404, "NotFound"),
            (429, "TooManyRequests"),
            (500, "InternalError"),
            (503, "ServiceUnavailable"),
        ] {
            let e = injected(code, &resources::SECRETS, "get", "db");
            assert_eq!((e.code, e.reason), (code, reason));
        }
    }

    #[test]
    fn status_rules_fail_and_hold_rules_delay_each_apart_the_first_match_winning() {
        let rule = |verb: &str, fault| FailRule {
            verb: verb.into(),
            resource: "leases.coordination.k8s.io".into(),
            fault,
        };
        let rules = [
            rule("delete", Fault::Hold(Duration::from_secs(7))),
            rule("get", Fault::Hold(Duration::from_secs(2))),
            rule("delete", Fault::Status(503)),
            rule("*", Fault::Hold(Duration::from_secs(9))),
            rule("delete", Fault::Status(500)),
        ];
        let delete = attrs("delete", "coordination.k8s.io", "leases");
        let kind = &resources::SECRETS;
        assert_eq!(hold(&rules, &delete), Some(Duration::from_secs(7)));
        assert_eq!(failure(&rules, kind, &delete).map(|e| e.code), Some(503));
        let get = attrs("get", "coordination.k8s.io", "leases");
        assert_eq!(hold(&rules, &get), Some(Duration::from_secs(2)));
        assert!(
            failure(&rules, kind, &get).is_none(),
            "a hold is no failure"
        );
        let other = attrs("get", "", "secrets");
        assert_eq!(hold(&rules, &other), None);
        assert!(failure(&rules, kind, &other).is_none());
    }
}

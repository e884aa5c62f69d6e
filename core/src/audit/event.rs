//! What an audit event says: who ([`Actor`]) did what ([`Event::action`]) to which resource,
//! with what [`Outcome`], and the builder callers make events with. The line an event becomes
//! once the log has stamped, numbered and chained it ([`Entry`](super::Entry)) is
//! [`chain`](super::chain)'s: that file owns the line format.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::hmac_key::HmacKey;
use crate::SecretValue;

/// What kind of principal performed an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActorKind {
    /// A workload, by its Kubernetes service account (the init container reads as one).
    ServiceAccount,
    /// A person, by their Vault token's display name (break-glass, `keyturn rotate`).
    Operator,
    /// keyturn itself, e.g. the rotation daemon acting on a schedule.
    Agent,
}

impl ActorKind {
    /// The spelling used in the log: `service-account`, `operator`, `agent`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ServiceAccount => "service-account",
            Self::Operator => "operator",
            Self::Agent => "agent",
        }
    }
}

/// Who performed an access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// What kind of principal.
    pub kind: ActorKind,
    /// Service account name, operator display name, or agent instance name.
    pub name: String,
    /// Kubernetes namespace, for service accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod name, for workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Vault entity id, where the token has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
}

impl Actor {
    fn new(kind: ActorKind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            namespace: None,
            pod: None,
            entity: None,
        }
    }

    /// A workload's service account `namespace/name`.
    #[must_use]
    pub fn service_account(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self::new(ActorKind::ServiceAccount, name).with_namespace(namespace)
    }

    /// A person, by display name.
    #[must_use]
    pub fn operator(name: impl Into<String>) -> Self {
        Self::new(ActorKind::Operator, name)
    }

    /// keyturn itself, by instance name.
    #[must_use]
    pub fn agent(name: impl Into<String>) -> Self {
        Self::new(ActorKind::Agent, name)
    }

    /// Sets the namespace.
    #[must_use]
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Sets the pod.
    #[must_use]
    pub fn with_pod(mut self, pod: impl Into<String>) -> Self {
        self.pod = Some(pod.into());
        self
    }

    /// Sets the Vault entity id.
    #[must_use]
    pub fn with_entity(mut self, entity: impl Into<String>) -> Self {
        self.entity = Some(entity.into());
        self
    }
}

/// How an access turned out. Details go in the entry's `detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Allowed and done: the outcome event written after the side effect.
    Ok,
    /// Refused: by Vault, by Kubernetes RBAC, or by keyturn's own policy.
    Denied,
    /// Failed.
    Error,
    /// The intent: written before a side effect (fail closed: if it cannot be written, the
    /// side effect does not happen), and followed by `ok`, `denied` or `error` once it ran.
    Started,
}

impl Outcome {
    /// The spelling used in the log: `ok`, `denied`, `error`, `started`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Denied => "denied",
            Self::Error => "error",
            Self::Started => "started",
        }
    }
}

/// One access, as the caller describes it; the log adds `time`, `seq`, `prev` and `hash`.
///
/// Made only by [`EventBuilder`], so that `value_hmac` can only ever be an HMAC computed from a
/// [`SecretValue`]: there is no way to put a value, or any other string, there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub(crate) actor: Actor,
    pub(crate) action: String,
    pub(crate) resource: String,
    pub(crate) outcome: Outcome,
    pub(crate) detail: Option<String>,
    pub(crate) reason: Option<String>,
    pub(crate) request_id: Option<String>,
    pub(crate) rotation_id: Option<String>,
    pub(crate) value_hmac: Option<String>,
    pub(crate) field_hmacs: Option<BTreeMap<String, String>>,
}

impl Event {
    /// Who.
    #[must_use]
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// What, e.g. `secret.read`, `rotate.create`, `break-glass.reveal`.
    #[must_use]
    pub fn action(&self) -> &str {
        &self.action
    }

    /// Which secret path or policy.
    #[must_use]
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// How it turned out.
    #[must_use]
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// The hex HMAC of the value involved, if one was given.
    #[must_use]
    pub fn value_hmac(&self) -> Option<&str> {
        self.value_hmac.as_deref()
    }

    /// The hex HMAC of each field of a secret with several, by field name.
    #[must_use]
    pub fn field_hmacs(&self) -> Option<&BTreeMap<String, String>> {
        self.field_hmacs.as_ref()
    }
}

/// Builds an [`Event`]. Get one from [`AuditLog::event`](super::AuditLog::event) or
/// [`EventBuilder::new`]; the outcome is [`Outcome::Ok`] unless set.
///
/// ```
/// # use keyturn_core::audit::{Actor, EventBuilder, HmacKey, Outcome};
/// # use keyturn_core::SecretValue;
/// let key = HmacKey::generate()?;
/// let value = SecretValue::from_str_copy("hunter2");
/// let event = EventBuilder::new(&key, Actor::service_account("shop", "orders-api"), "secret.read",
///                               "secret/data/orders/db")
///     .request_id("req-1")
///     .value(&value) // only HMAC-SHA256(key, value) is kept
///     .build();
/// assert_eq!(event.outcome(), Outcome::Ok);
/// # Ok::<(), keyturn_core::audit::KeyError>(())
/// ```
#[derive(Debug)]
#[must_use = "an event is recorded only by passing build()'s result to AuditLog::record"]
pub struct EventBuilder<'k> {
    key: &'k HmacKey,
    event: Event,
}

impl<'k> EventBuilder<'k> {
    /// Starts an event; `key` is the audit HMAC key used by [`EventBuilder::value`].
    pub fn new(
        key: &'k HmacKey,
        actor: Actor,
        action: impl Into<String>,
        resource: impl Into<String>,
    ) -> Self {
        Self {
            key,
            event: Event {
                actor,
                action: action.into(),
                resource: resource.into(),
                outcome: Outcome::Ok,
                detail: None,
                reason: None,
                request_id: None,
                rotation_id: None,
                value_hmac: None,
                field_hmacs: None,
            },
        }
    }

    /// How it turned out.
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.event.outcome = outcome;
        self
    }

    /// Free text about the outcome, e.g. the error's kind. Never a value.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.event.detail = Some(detail.into());
        self
    }

    /// Why it was done: the operator's `--reason`.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.event.reason = Some(reason.into());
        self
    }

    /// The request this access belongs to.
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.event.request_id = Some(id.into());
        self
    }

    /// The rotation this access belongs to.
    pub fn rotation_id(mut self, id: impl Into<String>) -> Self {
        self.event.rotation_id = Some(id.into());
        self
    }

    /// The value involved. Only its HMAC-SHA256 under the audit key is kept, so an
    /// investigator who holds a candidate value and the key can tell whether this was it.
    pub fn value(mut self, value: &SecretValue) -> Self {
        self.event.value_hmac = Some(self.key.hmac_hex(value));
        self
    }

    /// One field of a secret with several: only its HMAC-SHA256 under the audit key is kept, in
    /// `field_hmacs` under the field's name, so that `keyturn audit search --value-hmac` finds
    /// the read from any one leaked field. The name is kept as given: field names are not
    /// secret. A second call for the same name replaces the first.
    pub fn field_value(mut self, name: impl Into<String>, value: &SecretValue) -> Self {
        let hmac = self.key.hmac_hex(value);
        self.event
            .field_hmacs
            .get_or_insert_with(BTreeMap::new)
            .insert(name.into(), hmac);
        self
    }

    /// [`EventBuilder::field_value`] for each `(name, value)`, e.g. a `SecretData`'s `iter()`.
    pub fn field_values<'v, N: Into<String>>(
        mut self,
        fields: impl IntoIterator<Item = (N, &'v SecretValue)>,
    ) -> Self {
        for (name, value) in fields {
            self = self.field_value(name, value);
        }
        self
    }

    /// The event, ready for [`AuditLog::record`](super::AuditLog::record).
    pub fn build(self) -> Event {
        self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_keeps_only_the_hmac_of_a_value() {
        let key = HmacKey::generate().unwrap();
        let value = SecretValue::from_str_copy("canary-builder-7d1f");
        let event = EventBuilder::new(&key, Actor::agent("keyturn-0"), "rotate.create", "orders")
            .rotation_id("r-1")
            .value(&value)
            .build();
        assert_eq!(event.value_hmac(), Some(key.hmac_hex(&value).as_str()));
        assert!(!format!("{event:?}").contains("canary-builder-7d1f"));
    }

    #[test]
    fn actors_and_outcomes_serialize_in_kebab_case() {
        let a = Actor::service_account("shop", "orders-api").with_pod("orders-api-7f9c");
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"kind":"service-account","name":"orders-api","namespace":"shop","pod":"orders-api-7f9c"}"#
        );
        assert_eq!(
            serde_json::to_string(&Outcome::Started).unwrap(),
            "\"started\""
        );
        assert_eq!(ActorKind::ServiceAccount.as_str(), "service-account");
        assert_eq!(Outcome::Denied.as_str(), "denied");
    }
}

//! [`KubernetesSink`]: writes a policy's keys into a Kubernetes Secret, then hands the
//! workloads to the [`Restarter`].
//!
//! # How a Secret is written: read, compare, merge patch with a `resourceVersion` precondition
//!
//! 1. `GET` the Secret. Absent: `POST` it with the owned keys, `type` from the policy
//!    (default `Opaque`) and the labels `app.kubernetes.io/managed-by: keyturn` and
//!    `keyturn.dev/policy: NAME`. A 409 AlreadyExists (someone created it meanwhile) goes
//!    back to step 1.
//! 2. Compare each key the policy owns with the live value. All equal: done, nothing is
//!    written, the `resourceVersion` stays (a second delivery of the same version is free).
//! 3. Otherwise one JSON merge patch `{"metadata": {"resourceVersion": RV}, "data": {only the
//!    keys that differ}}` with `fieldManager=keyturn`. The `resourceVersion` makes it a
//!    compare-and-set: a 409 means someone wrote in between, and the loop goes back to step 1
//!    with a jittered backoff, up to [`MAX_ATTEMPTS`](super::api::MAX_ATTEMPTS) times.
//!
//! Why this and not server-side apply as field manager `keyturn`:
//!
//! - **SSA deletes what a manager stops applying.** Two policies may feed one Secret with
//!   different keys (a database login and an API token for the same app); both are
//!   `keyturn`, so each apply would remove the other policy's keys. The same happens when a
//!   policy drops a key: SSA would delete it from under running pods. A merge patch never
//!   deletes anything, which is the guarantee that matters here: keyturn never removes data.
//! - **Forcing is all or nothing.** Secrets keyturn rotates are often pre-created by Helm,
//!   Argo CD or a person with a placeholder value, so the owned keys already belong to
//!   another manager and a non-forced apply fails every time. The policy is the statement
//!   that keyturn owns those keys, so keyturn overwrites them: exactly the keys in
//!   `distribute[].kubernetes.keys`, nothing else. `managedFields` then shows `keyturn` as the
//!   manager of those keys (an `Update` entry), so `kubectl` users can see who set them.
//!   A GitOps tool that also writes the same key will fight keyturn on every sync; the fix is
//!   to drop the key from the manifest (or ignore its difference), which is the usual advice
//!   for any controller-written Secret key.
//! - **Metadata that is not ours stays as it is.** Labels are set only when keyturn creates
//!   the Secret. An existing Secret keeps its labels (overwriting `managed-by` would break
//!   Helm's ownership check) and its `type` (immutable anyway; a mismatch with the policy is
//!   logged).
//! - **The idempotency check is explicit**, so a no-op costs one `GET` and needs no `patch`.
//!
//! What it costs: one `GET` per delivery, and a retry loop. Both are cheap next to a rotation.
//! The RBAC that goes with it is `get`/`patch` on the named Secrets (see [`crate::policy::rbac`]).
//!
//! # Refusals
//!
//! Before any request, every owned key must map to a credential field that exists and is not
//! empty ([`DistributeError::MissingField`], [`DistributeError::EmptyValue`]); an empty value
//! is never written, over a good one or at all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keyturn_core::SecretValue;
use kube::Resource as _;
use kube::api::{GetParams, Patch, PatchParams, PostParams};
use serde::ser::{SerializeMap as _, Serializer};
use serde::{Deserialize, Deserializer, Serialize};
use tracing::instrument;
use zeroize::Zeroizing;

use super::api::{self, MAX_ATTEMPTS};
use super::restart::{DEFAULT_RESTART_WINDOW, RestartTicket, Restarter};
use super::{
    Delivery, DistributeError, FIELD_MANAGER, MANAGED_BY_LABEL, ObjectRef, POLICY_LABEL,
    RestartReport, SecretOutcome, SecretReport, Sink,
};

/// A Kubernetes client from KUBECONFIG or the in-cluster service account, without kube-rs's
/// own retry layer. That layer retries 429, 503 and 504 up to 15 times inside one request,
/// with delays growing toward 1000 s, under keyturn's own delivery retries and the daemon's
/// backoff: one throttled API server would get retries nested in retries and hold a rotation
/// for minutes. keyturn retries a retryable answer itself ([`super::DistributeError::is_retryable`]),
/// counted and backed off. Makes no request.
///
/// # Errors
/// No usable kubeconfig or in-cluster configuration.
pub async fn client_from_env() -> Result<kube::Client, kube::Error> {
    let mut config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    config.default_retry = false;
    kube::Client::try_from(config)
}

/// Delivers credentials into Kubernetes Secrets and rolls the workloads that use them.
///
/// Cheap to clone; clones share the [`Restarter`], so restarts requested through any of them
/// are debounced together. Use one per process.
#[derive(Clone)]
pub struct KubernetesSink {
    client: kube::Client,
    restarter: Restarter,
    guard: Option<Arc<dyn crate::fence::Guard>>,
}

impl std::fmt::Debug for KubernetesSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesSink")
            .field("restarter", &self.restarter)
            .finish_non_exhaustive()
    }
}

impl KubernetesSink {
    /// A sink talking through `client`, restarting with the default debounce window
    /// ([`DEFAULT_RESTART_WINDOW`]).
    #[must_use]
    pub fn new(client: kube::Client) -> Self {
        Self::with_restart_window(client, DEFAULT_RESTART_WINDOW)
    }

    /// A sink whose restarts are debounced over `window` (zero: no batching beyond requests
    /// made at the same instant).
    #[must_use]
    pub fn with_restart_window(client: kube::Client, window: Duration) -> Self {
        Self::guarded(client, window, None)
    }

    /// A sink that asks `guard` before every write (each Secret's, each batched restart's).
    #[must_use]
    pub fn guarded(
        client: kube::Client,
        window: Duration,
        guard: Option<Arc<dyn crate::fence::Guard>>,
    ) -> Self {
        Self {
            restarter: Restarter::guarded(client.clone(), window, guard.clone()),
            client,
            guard,
        }
    }

    /// The restarter, for callers that restart workloads outside a delivery.
    #[must_use]
    pub fn restarter(&self) -> &Restarter {
        &self.restarter
    }

    /// Makes the Secret of `delivery` hold the credential's values for the keys the policy
    /// owns; see the module docs for how.
    ///
    /// # Errors
    /// [`DistributeError::MissingField`] / [`DistributeError::EmptyValue`] before any request;
    /// otherwise the API's refusal (403, 404 of the namespace, 422), a transport failure, or
    /// [`DistributeError::Conflict`] when other writers won every attempt.
    #[instrument(
        name = "write_secret",
        skip_all,
        fields(policy = delivery.policy, namespace = %delivery.distribution.namespace, secret = %delivery.distribution.secret)
    )]
    pub async fn write_secret(
        &self,
        delivery: &Delivery<'_>,
    ) -> Result<SecretReport, DistributeError> {
        let dist = delivery.distribution;
        let object = ObjectRef::secret(&dist.namespace, &dist.secret);
        let wanted = owned_values(delivery)?;
        let request = kube::core::Request::new(secrets_path(&dist.namespace));
        let report = |outcome, resource_version| SecretReport {
            object: object.clone(),
            outcome,
            resource_version,
        };

        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(api::conflict_backoff(attempt - 1)).await;
            }
            if let Err(source) = crate::fence::check(self.guard.as_deref()) {
                return Err(DistributeError::Fenced {
                    object: Box::new(object),
                    source,
                });
            }
            let live = match api::send(
                &self.client,
                request.get(&dist.secret, &GetParams::default()),
                &object,
                "get",
            )
            .await
            {
                Ok(body) => Some(api::parse::<LiveSecret>(&body, &object, "get")?),
                Err(DistributeError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            };

            let Some(live) = live else {
                let body = NewSecret {
                    namespace: &dist.namespace,
                    name: &dist.secret,
                    policy: delivery.policy,
                    secret_type: dist.secret_type.as_deref().unwrap_or("Opaque"),
                    data: &wanted,
                };
                let bytes = serde_json::to_vec(&body).map_err(|e| DistributeError::Protocol {
                    object: Box::new(object.clone()),
                    verb: "create".into(),
                    cause: format!("could not encode the request ({:?} error)", e.classify()),
                })?;
                let pp = PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PostParams::default()
                };
                match api::send(&self.client, request.create(&pp, bytes), &object, "create").await {
                    Ok(body) => {
                        let written: api::Written = api::parse(&body, &object, "create")?;
                        tracing::info!(keys = ?key_names(&wanted), "created the Secret");
                        return Ok(report(
                            SecretOutcome::Created,
                            written.metadata.resource_version,
                        ));
                    }
                    Err(DistributeError::Conflict { .. }) => {
                        tracing::debug!(
                            attempt,
                            "the Secret was created meanwhile; reading it again"
                        );
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            };

            if let Some(wanted_type) = &dist.secret_type
                && live.secret_type.as_deref().unwrap_or("Opaque") != wanted_type
            {
                tracing::warn!(
                    policy_type = %wanted_type,
                    live_type = live.secret_type.as_deref().unwrap_or("Opaque"),
                    "the Secret exists with another type; keyturn leaves the type alone"
                );
            }
            let changed: Vec<(&str, &SecretValue)> = wanted
                .iter()
                .copied()
                .filter(|(key, value)| !live.holds(key, value))
                .collect();
            if changed.is_empty() {
                tracing::debug!("the Secret already holds every value; nothing to write");
                return Ok(report(
                    SecretOutcome::Unchanged,
                    live.metadata.resource_version,
                ));
            }
            let Some(resource_version) = live.metadata.resource_version.as_deref() else {
                return Err(DistributeError::Protocol {
                    object: Box::new(object),
                    verb: "get".into(),
                    cause: "the answer has no metadata.resourceVersion".into(),
                });
            };
            let patch = DataPatch {
                resource_version,
                data: &changed,
            };
            let pp = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            };
            match api::send(
                &self.client,
                request.patch(&dist.secret, &pp, &Patch::Merge(&patch)),
                &object,
                "patch",
            )
            .await
            {
                Ok(body) => {
                    let written: api::Written = api::parse(&body, &object, "patch")?;
                    let keys = key_names(&changed);
                    tracing::info!(keys = ?keys, "updated the Secret");
                    return Ok(report(
                        SecretOutcome::Updated { keys },
                        written.metadata.resource_version,
                    ));
                }
                Err(DistributeError::Conflict { .. }) => {
                    tracing::debug!(
                        attempt,
                        "the Secret changed between read and write; reading it again"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Err(DistributeError::Conflict {
            object: Box::new(object),
            verb: "patch".into(),
            code: 409,
            attempts: MAX_ATTEMPTS,
        })
    }
}

#[async_trait]
impl Sink for KubernetesSink {
    fn describe(&self) -> String {
        "kubernetes".into()
    }

    async fn write(&self, delivery: &Delivery<'_>) -> Result<SecretReport, DistributeError> {
        self.write_secret(delivery).await
    }

    async fn restart(
        &self,
        delivery: &Delivery<'_>,
    ) -> Result<Vec<RestartReport>, DistributeError> {
        let dist = delivery.distribution;
        let tickets = dist
            .restart
            .iter()
            .map(|w| {
                self.restarter
                    .request(&dist.namespace, w, delivery.policy, delivery.version)
            })
            .collect::<Result<Vec<_>, _>>()?;
        futures_util::future::join_all(tickets.into_iter().map(RestartTicket::wait))
            .await
            .into_iter()
            .collect()
    }
}

/// The policy's keys with their values, checked: every field present and non-empty.
fn owned_values<'a>(d: &Delivery<'a>) -> Result<Vec<(&'a str, &'a SecretValue)>, DistributeError> {
    let dist = d.distribution;
    dist.keys
        .iter()
        .map(|(key, field)| {
            let refusal = |empty: bool| {
                let (policy, key, field) = (d.policy.to_owned(), key.clone(), field.clone());
                let secret = Box::new(ObjectRef::secret(&dist.namespace, &dist.secret));
                if empty {
                    DistributeError::EmptyValue {
                        policy,
                        secret,
                        key,
                        field,
                    }
                } else {
                    DistributeError::MissingField {
                        policy,
                        secret,
                        key,
                        field,
                    }
                }
            };
            let value = d.credential.get(field).ok_or_else(|| refusal(false))?;
            if value.is_empty() {
                return Err(refusal(true));
            }
            Ok((key.as_str(), value))
        })
        .collect()
}

fn key_names(entries: &[(&str, &SecretValue)]) -> Vec<String> {
    entries.iter().map(|(k, _)| (*k).to_owned()).collect()
}

/// `/api/v1/namespaces/NS/secrets`, from the typed Secret's own metadata. Only its path is
/// used: the typed Secret is banned elsewhere (clippy.toml) because its `Debug` prints values.
#[allow(
    clippy::disallowed_types,
    reason = "only the resource path is taken from the type; no Secret value is held"
)]
fn secrets_path(namespace: &str) -> String {
    k8s_openapi::api::core::v1::Secret::url_path(&(), Some(namespace))
}

/// The parts of a live Secret keyturn reads. Values stay base64 text in zeroizing storage.
#[derive(Deserialize)]
struct LiveSecret {
    #[serde(default)]
    metadata: api::Meta,
    #[serde(default)]
    data: Option<BTreeMap<String, Base64Text>>,
    #[serde(default, rename = "type")]
    secret_type: Option<String>,
}

impl LiveSecret {
    /// Whether `key` holds exactly `value` (compared in constant time).
    fn holds(&self, key: &str, value: &SecretValue) -> bool {
        let Some(text) = self.data.as_ref().and_then(|d| d.get(key)) else {
            return false;
        };
        match STANDARD.decode(text.0.as_bytes()) {
            Ok(bytes) => SecretValue::new(bytes).ct_eq(value),
            Err(_) => false,
        }
    }
}

/// A base64 `data` value as received, zeroized on drop.
struct Base64Text(Zeroizing<String>);

impl<'de> Deserialize<'de> for Base64Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Self(Zeroizing::new(s)))
    }
}

/// `data` as a JSON object of base64 strings; each encoding lives in zeroizing storage only
/// while it is being written out.
struct DataMap<'a>(&'a [(&'a str, &'a SecretValue)]);

impl Serialize for DataMap<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            let encoded = Zeroizing::new(STANDARD.encode(value.expose()));
            m.serialize_entry(key, encoded.as_str())?;
        }
        m.end()
    }
}

/// The merge patch: the changed keys, conditional on the `resourceVersion` they were read at.
struct DataPatch<'a> {
    resource_version: &'a str,
    data: &'a [(&'a str, &'a SecretValue)],
}

impl Serialize for DataPatch<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry(
            "metadata",
            &serde_json::json!({ "resourceVersion": self.resource_version }),
        )?;
        m.serialize_entry("data", &DataMap(self.data))?;
        m.end()
    }
}

/// A Secret to create.
struct NewSecret<'a> {
    namespace: &'a str,
    name: &'a str,
    policy: &'a str,
    secret_type: &'a str,
    data: &'a [(&'a str, &'a SecretValue)],
}

impl Serialize for NewSecret<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("apiVersion", "v1")?;
        m.serialize_entry("kind", "Secret")?;
        m.serialize_entry(
            "metadata",
            &serde_json::json!({
                "name": self.name,
                "namespace": self.namespace,
                "labels": { MANAGED_BY_LABEL: FIELD_MANAGER, POLICY_LABEL: self.policy },
            }),
        )?;
        m.serialize_entry("type", self.secret_type)?;
        m.serialize_entry("data", &DataMap(self.data))?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Distribution;
    use keyturn_core::vault::SecretData;

    fn distribution() -> Distribution {
        Distribution {
            namespace: "shop".into(),
            secret: "orders-db".into(),
            keys: [
                ("DB_USER".to_owned(), "username".to_owned()),
                ("DB_PASS".to_owned(), "password".to_owned()),
            ]
            .into_iter()
            .collect(),
            secret_type: None,
            restart: vec![],
        }
    }

    fn credential(password: &str) -> SecretData {
        let mut c = SecretData::new();
        c.insert("username", SecretValue::from_str_copy("orders_a"));
        c.insert("password", SecretValue::from_str_copy(password));
        c
    }

    #[test]
    fn an_empty_or_missing_field_is_refused_before_any_request() {
        let dist = distribution();
        let empty = credential("");
        let d = Delivery {
            policy: "orders-db",
            distribution: &dist,
            credential: &empty,
            version: "v1",
        };
        let e = owned_values(&d).unwrap_err();
        assert!(
            matches!(&e, DistributeError::EmptyValue { key, .. } if key == "DB_PASS"),
            "{e}"
        );

        let mut partial = SecretData::new();
        partial.insert("password", SecretValue::from_str_copy("x"));
        let d = Delivery {
            credential: &partial,
            ..d
        };
        let e = owned_values(&d).unwrap_err();
        assert!(
            matches!(&e, DistributeError::MissingField { field, .. } if field == "username"),
            "{e}"
        );
    }

    #[test]
    fn the_patch_carries_the_precondition_and_only_the_given_keys_in_base64() {
        let v = SecretValue::from_str_copy("hunter2");
        let body = serde_json::to_value(DataPatch {
            resource_version: "42",
            data: &[("DB_PASS", &v)],
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"metadata": {"resourceVersion": "42"}, "data": {"DB_PASS": "aHVudGVyMg=="}})
        );
    }

    #[test]
    fn a_new_secret_is_labelled_with_its_manager_and_policy() {
        let v = SecretValue::from_str_copy("x");
        let body = serde_json::to_value(NewSecret {
            namespace: "shop",
            name: "orders-db",
            policy: "orders-db",
            secret_type: "Opaque",
            data: &[("k", &v)],
        })
        .unwrap();
        assert_eq!(
            body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "keyturn"
        );
        assert_eq!(
            body["metadata"]["labels"]["keyturn.dev/policy"],
            "orders-db"
        );
        assert_eq!(body["type"], "Opaque");
        assert_eq!(body["data"]["k"], "eA==");
    }

    #[test]
    fn a_live_secret_holds_a_value_only_when_the_decoded_bytes_match() {
        let live: LiveSecret = serde_json::from_str(
            r#"{"metadata": {"resourceVersion": "7"}, "data": {"a": "aHVudGVyMg==", "b": "not base64!"}, "type": "Opaque"}"#,
        )
        .unwrap();
        assert!(live.holds("a", &SecretValue::from_str_copy("hunter2")));
        assert!(!live.holds("a", &SecretValue::from_str_copy("hunter3")));
        assert!(!live.holds("b", &SecretValue::from_str_copy("x")));
        assert!(!live.holds("missing", &SecretValue::from_str_copy("x")));
        assert_eq!(live.metadata.resource_version.as_deref(), Some("7"));
    }

    /// A client for a port nothing listens on: a request sent is a transport error.
    fn unreachable_client() -> kube::Client {
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    #[tokio::test]
    async fn a_closed_guard_stops_a_secret_write_before_any_request_and_an_open_one_does_not() {
        let dist = distribution();
        let credential = credential("hunter2");
        let delivery = Delivery {
            policy: "orders-db",
            distribution: &dist,
            credential: &credential,
            version: "v1",
        };
        let closed: Arc<dyn crate::fence::Guard> =
            Arc::new(crate::fence::Fixed(Err(crate::fence::Fenced::Released)));
        let sink = KubernetesSink::guarded(unreachable_client(), Duration::ZERO, Some(closed));
        // Fenced, not a transport failure: the guard was asked before anything was sent.
        let e = sink.write_secret(&delivery).await.unwrap_err();
        assert!(
            matches!(
                &e,
                DistributeError::Fenced {
                    source: crate::fence::Fenced::Released,
                    ..
                }
            ),
            "{e}"
        );
        let open: Arc<dyn crate::fence::Guard> = Arc::new(crate::fence::Fixed(Ok(())));
        for guard in [Some(open), None] {
            let sink = KubernetesSink::guarded(unreachable_client(), Duration::ZERO, guard);
            let e = sink.write_secret(&delivery).await.unwrap_err();
            assert!(!matches!(e, DistributeError::Fenced { .. }), "{e}");
        }
    }
}

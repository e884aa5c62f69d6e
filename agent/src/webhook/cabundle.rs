//! Keeping the MutatingWebhookConfiguration's `caBundle` in step with the replicas' in-memory
//! CAs.
//!
//! Every replica makes its own CA at start (`certs`), and the API server must trust whichever
//! replica the Service routes to, so the `caBundle` of every webhook in the configuration is
//! the union of the live replicas' CAs:
//!
//! - **Membership**: each replica holds a Lease `keyturn-webhook-<holder>` (labelled
//!   `keyturn.dev/webhook-ca=member`, annotated `keyturn.dev/ca-bundle: <its CA PEM>`),
//!   renewed every third of `--lease-duration`. A replica that stops renewing (gone, or cut off
//!   from the API server) drops out once its Lease expires.
//! - **Writer**: one replica at a time holds the Lease `keyturn-webhook-ca-bundle` (taken when
//!   absent or expired, renewed while held, all with the `resourceVersion` the API server
//!   checks, so two replicas never both win; a replica that loses a race just tries again next
//!   round). The writer computes the union of the CAs of unexpired member Leases (plus its
//!   own), sorted and deduplicated, and writes it into every webhook of the configuration only
//!   when it differs, with a PUT carrying the `resourceVersion` it read (409: read again and
//!   retry). The configuration is handled as untyped JSON, so fields newer than keyturn's
//!   Kubernetes types survive the write. The writer also deletes member Leases expired for
//!   over [`MEMBER_GC_AFTER`], which every rollout leaves behind.
//! - **Readiness**: each replica reads the configuration every round and notes whether every
//!   webhook's `caBundle` carries its CA: the API server can only verify a replica once it
//!   does. `keyturn_webhook_ca_bundle_current` (and so `/readyz`) is 1 only while both the
//!   last successful membership renewal and the last configuration read that found the CA
//!   are younger than [`Freshness::max_age`] (two thirds of the lease duration). A replica
//!   cut off from the API server (throttled, an expired token, an egress change) can still be
//!   reached by it, but the writer drops its CA once its Lease expires: it turns unready a
//!   third of a lease before that, rather than stay Ready with a certificate the API server
//!   no longer trusts.
//!
//! A failed request is retried a few times with jittered exponential backoff (`backon`) within
//! a round, and a round runs every third of the lease duration: never a tight loop. Each
//! failure is counted (`keyturn_webhook_kubernetes_failures_total{op}`) and logged at warn when
//! it differs from that operation's previous failure, and at info when the operation works
//! again.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams, Preconditions,
};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use super::CaBundleSettings;
use super::metrics::WebhookMetrics;

/// The writer's Lease.
pub const WRITER_LEASE: &str = "keyturn-webhook-ca-bundle";

/// Member Leases are `keyturn-webhook-<holder>`.
pub const MEMBER_PREFIX: &str = "keyturn-webhook-";

/// The annotation carrying a member's CA (PEM).
pub const CA_ANNOTATION: &str = "keyturn.dev/ca-bundle";

/// The label key marking member Leases (value [`MEMBER_VALUE`]), so the writer lists only
/// them and never the daemon's rotation Leases in the same namespace.
pub const MEMBER_LABEL: &str = "keyturn.dev/webhook-ca";

/// The label value of member Leases.
pub const MEMBER_VALUE: &str = "member";

/// How long after its expiry the writer deletes a member Lease.
pub const MEMBER_GC_AFTER: Duration = Duration::from_secs(3600);

/// Why one request of the loop failed. Messages name the object and verb, and the API
/// server's code and reason; never a body.
#[derive(Debug, thiserror::Error)]
pub enum CaBundleError {
    /// A request failed.
    #[error(transparent)]
    Request(#[from] crate::kube_request::KubeRequestError),
    /// The configuration has no webhooks to put a `caBundle` in.
    #[error("mutatingwebhookconfigurations {0:?} has no webhooks")]
    NoWebhooks(String),
}

impl CaBundleError {
    fn from_kube(e: kube::Error, verb: &'static str, object: &str) -> Self {
        Self::Request(crate::kube_request::KubeRequestError::new(e, verb, object))
    }

    fn code(&self) -> Option<u16> {
        match self {
            Self::Request(r) => r.code(),
            _ => None,
        }
    }

    fn is_retryable(&self) -> bool {
        matches!(self, Self::Request(r) if r.is_retryable())
    }

    /// The failure's kind, for "log only when it changes".
    fn kind(&self) -> String {
        match self {
            Self::Request(r) => r.kind(),
            other => other.to_string(),
        }
    }
}

fn lease_object(namespace: &str, name: &str) -> String {
    format!("leases {name:?} in namespace {namespace:?}")
}

fn config_object(name: &str) -> String {
    format!("mutatingwebhookconfigurations {name:?}")
}

/// Whether `lease` was renewed within its duration before `now`.
#[must_use]
pub fn lease_live(lease: &Lease, now: Timestamp) -> bool {
    lease_expiry(lease).is_some_and(|end| end > now)
}

/// When `lease` expires: its renewal (or acquisition) plus its duration; `None` without those.
fn lease_expiry(lease: &Lease) -> Option<Timestamp> {
    let spec = lease.spec.as_ref()?;
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds?));
    renewed.checked_add(duration).ok()
}

/// The certificates in a PEM bundle, as DER; blocks other than CERTIFICATE are ignored.
fn certificates(pem_text: &[u8]) -> Vec<Vec<u8>> {
    pem::parse_many(pem_text)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect()
}

/// The bundle for the configuration: the CAs of the live member Leases and `own`, sorted and
/// deduplicated, as PEM.
#[must_use]
pub fn union(members: &[Lease], own: &str, now: Timestamp) -> String {
    let mut set: BTreeSet<Vec<u8>> = certificates(own.as_bytes()).into_iter().collect();
    for lease in members.iter().filter(|l| lease_live(l, now)) {
        if let Some(ca) = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CA_ANNOTATION))
        {
            set.extend(certificates(ca.as_bytes()));
        }
    }
    set.into_iter()
        .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der)))
        .collect()
}

/// Whether the PEM `bundle` carries every certificate of `ca` (PEM).
#[must_use]
pub fn carries(bundle: &[u8], ca: &str) -> bool {
    let have: BTreeSet<Vec<u8>> = certificates(bundle).into_iter().collect();
    let want = certificates(ca.as_bytes());
    !want.is_empty() && want.iter().all(|c| have.contains(c))
}

/// The decoded `caBundle` of each webhook in a configuration (as untyped JSON); an absent or
/// undecodable one is empty.
fn bundles(config: &Value) -> Vec<Vec<u8>> {
    config
        .get("webhooks")
        .and_then(Value::as_array)
        .map(|hooks| {
            hooks
                .iter()
                .map(|h| {
                    h.pointer("/clientConfig/caBundle")
                        .and_then(Value::as_str)
                        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Sets every webhook's `caBundle` in `config` to `bundle`; `false` when each already has it.
fn set_bundles(config: &mut Value, bundle: &str) -> bool {
    let encoded = base64::engine::general_purpose::STANDARD.encode(bundle);
    let mut changed = false;
    if let Some(hooks) = config.get_mut("webhooks").and_then(Value::as_array_mut) {
        for hook in hooks {
            let Some(obj) = hook.as_object_mut() else {
                continue;
            };
            let client = obj
                .entry("clientConfig")
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            if let Some(client) = client.as_object_mut()
                && client.get("caBundle").and_then(Value::as_str) != Some(encoded.as_str())
            {
                client.insert("caBundle".into(), Value::String(encoded.clone()));
                changed = true;
            }
        }
    }
    changed
}

/// What to do with the writer Lease as found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// Absent: create it.
    Create,
    /// Held by this replica: renew it.
    Renew,
    /// Held by another whose Lease has expired: take it over.
    TakeOver,
    /// Held by another, live.
    Held,
}

fn writer_action(lease: Option<&Lease>, holder: &str, now: Timestamp) -> Writer {
    let Some(lease) = lease else {
        return Writer::Create;
    };
    let current = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref());
    if current == Some(holder) {
        Writer::Renew
    } else if current.is_none() || !lease_live(lease, now) {
        Writer::TakeOver
    } else {
        Writer::Held
    }
}

/// Logs an operation's failures once per change of kind, and its recovery.
#[derive(Debug, Default)]
struct FailureLog {
    last: Option<String>,
}

impl FailureLog {
    fn note<T>(
        &mut self,
        op: &str,
        metrics: &WebhookMetrics,
        r: Result<T, CaBundleError>,
    ) -> Option<T> {
        match r {
            Ok(v) => {
                if self.last.take().is_some() {
                    tracing::info!(op, "webhook caBundle upkeep works again");
                }
                Some(v)
            }
            Err(e) => {
                metrics.kubernetes_failure(op);
                let kind = e.kind();
                if self.last.as_deref() != Some(kind.as_str()) {
                    tracing::warn!(op, error = %e, "webhook caBundle upkeep failed (repeats of this failure are only counted)");
                    self.last = Some(kind);
                } else {
                    tracing::debug!(op, error = %e, "webhook caBundle upkeep failed again");
                }
                None
            }
        }
    }
}

/// How recently this replica's membership and the configuration's trust in its CA were last
/// confirmed: shared by the upkeep loop (which notes them) and `/readyz` (which judges them
/// when asked, so a loop stuck on a request the API server never answers still ages them).
#[derive(Debug, Clone)]
pub struct Freshness {
    seen: Arc<Mutex<Seen>>,
    max_age: Duration,
}

#[derive(Debug, Default)]
struct Seen {
    /// When the last successful membership renewal started (its Lease's renewTime is no
    /// earlier).
    renewed: Option<Instant>,
    /// When the last configuration read that found this replica's CA in every webhook's
    /// `caBundle` started; `None` once a read found it missing.
    carried: Option<Instant>,
}

impl Freshness {
    /// Nothing confirmed yet, for Leases of `lease_duration`.
    #[must_use]
    pub fn new(lease_duration: Duration) -> Self {
        Self {
            seen: Arc::default(),
            // The writer drops a member's CA no sooner than a lease after its last renewal;
            // a third of a lease before that (one renewal period: a single failed round is
            // still tolerated) the replica stops claiming to be trusted.
            max_age: lease_duration - lease_duration / 3,
        }
    }

    /// How old a confirmation may be and still count: two thirds of the lease duration.
    #[must_use]
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes a membership renewal that started at `at` and succeeded.
    pub fn renewed(&self, at: Instant) {
        self.lock().renewed = Some(at);
    }

    /// Notes a configuration read that started at `at`: whether it found this replica's CA.
    pub fn read(&self, at: Instant, carried: bool) {
        self.lock().carried = carried.then_some(at);
    }

    /// Whether both confirmations are younger than [`Self::max_age`] at `now`.
    #[must_use]
    pub fn current_at(&self, now: Instant) -> bool {
        let seen = self.lock();
        let fresh =
            |t: Option<Instant>| t.is_some_and(|t| now.saturating_duration_since(t) < self.max_age);
        fresh(seen.renewed) && fresh(seen.carried)
    }

    /// [`Self::current_at`] now.
    #[must_use]
    pub fn current(&self) -> bool {
        self.current_at(Instant::now())
    }
}

/// The loop's handles and settings.
struct Upkeep {
    leases: Api<Lease>,
    configs: Api<DynamicObject>,
    settings: CaBundleSettings,
    ca_pem: String,
    backoff: ExponentialBuilder,
}

/// Runs the membership, writer and readiness rounds every third of the lease duration until
/// `stop` changes (or its sender is dropped), noting in `freshness` what each round
/// confirmed. A round in progress is abandoned when `stop` changes: a request the API server
/// is slow to answer never holds up shutdown.
pub async fn run(
    client: kube::Client,
    settings: CaBundleSettings,
    ca_pem: String,
    metrics: WebhookMetrics,
    freshness: Freshness,
    mut stop: watch::Receiver<()>,
) {
    let period = (settings.lease_duration / 3).max(Duration::from_millis(100));
    let upkeep = Upkeep {
        leases: Api::namespaced(client.clone(), &settings.namespace),
        configs: Api::all_with(
            client,
            &ApiResource::erase::<MutatingWebhookConfiguration>(&()),
        ),
        // A few attempts, all well within one round.
        backoff: ExponentialBuilder::default()
            .with_min_delay((period / 20).max(Duration::from_millis(20)))
            .with_max_delay(period / 4)
            .with_max_times(3)
            .with_jitter(),
        settings,
        ca_pem,
    };
    let mut logs: [FailureLog; 3] = Default::default();
    loop {
        let round = async {
            let started = Instant::now();
            let r = upkeep.renew_membership().await;
            if logs[0].note("membership", &metrics, r).is_some() {
                freshness.renewed(started);
            }
            let r = upkeep.writer().await;
            let writer = logs[1].note("writer", &metrics, r).unwrap_or(false);
            let started = Instant::now();
            let r = upkeep.configuration(writer).await;
            // A failed read changes nothing: the last confirmation ages out on its own, so
            // one failed round does not flap readiness, and a replica that can no longer
            // read turns unready before the writer drops its CA.
            if let Some(carried) = logs[2].note("configuration", &metrics, r) {
                freshness.read(started, carried);
            }
            metrics
                .ca_bundle_current
                .set(i64::from(freshness.current()));
        };
        tokio::select! {
            () = round => {}
            _ = stop.changed() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = stop.changed() => return,
        }
    }
}

impl Upkeep {
    fn seconds(&self) -> i32 {
        i32::try_from(self.settings.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    fn member_name(&self) -> String {
        format!("{MEMBER_PREFIX}{}", self.settings.holder)
    }

    /// Creates or renews this replica's member Lease with its CA.
    async fn renew_membership(&self) -> Result<(), CaBundleError> {
        let name = self.member_name();
        let object = lease_object(&self.settings.namespace, &name);
        let attempt = || async {
            let now = MicroTime(Timestamp::now());
            let found = self
                .leases
                .get_opt(&name)
                .await
                .map_err(|e| CaBundleError::from_kube(e, "get", &object))?;
            let mut lease = found.clone().unwrap_or_else(|| Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    acquire_time: Some(now.clone()),
                    ..LeaseSpec::default()
                }),
            });
            lease
                .metadata
                .labels
                .get_or_insert_default()
                .insert(MEMBER_LABEL.into(), MEMBER_VALUE.into());
            lease
                .metadata
                .annotations
                .get_or_insert_default()
                .insert(CA_ANNOTATION.into(), self.ca_pem.clone());
            let spec = lease.spec.get_or_insert_default();
            spec.holder_identity = Some(self.settings.holder.clone());
            spec.lease_duration_seconds = Some(self.seconds());
            spec.renew_time = Some(now);
            let pp = PostParams::default();
            if found.is_some() {
                // Carries the resourceVersion read: a concurrent change is a 409, retried.
                self.leases
                    .replace(&name, &pp, &lease)
                    .await
                    .map_err(|e| CaBundleError::from_kube(e, "update", &object))?;
            } else {
                self.leases
                    .create(&pp, &lease)
                    .await
                    .map_err(|e| CaBundleError::from_kube(e, "create", &object))?;
            }
            Ok(())
        };
        attempt
            .retry(self.backoff)
            .when(CaBundleError::is_retryable)
            .await
    }

    /// Takes or renews the writer Lease; `true` when this replica holds it now. Losing a race
    /// (409) is not an error: another replica is the writer.
    async fn writer(&self) -> Result<bool, CaBundleError> {
        let object = lease_object(&self.settings.namespace, WRITER_LEASE);
        let attempt = || async {
            let now = Timestamp::now();
            let found = self
                .leases
                .get_opt(WRITER_LEASE)
                .await
                .map_err(|e| CaBundleError::from_kube(e, "get", &object))?;
            let action = writer_action(found.as_ref(), &self.settings.holder, now);
            let mut lease = match (action, found) {
                (Writer::Held, _) => return Ok(false),
                (Writer::Create, _) | (_, None) => Lease {
                    metadata: ObjectMeta {
                        name: Some(WRITER_LEASE.into()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec::default()),
                },
                (_, Some(l)) => l,
            };
            let spec = lease.spec.get_or_insert_default();
            if action != Writer::Renew {
                spec.acquire_time = Some(MicroTime(now));
                if action == Writer::TakeOver {
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
            }
            spec.holder_identity = Some(self.settings.holder.clone());
            spec.lease_duration_seconds = Some(self.seconds());
            spec.renew_time = Some(MicroTime(now));
            let pp = PostParams::default();
            let written = if action == Writer::Create {
                self.leases
                    .create(&pp, &lease)
                    .await
                    .map_err(|e| CaBundleError::from_kube(e, "create", &object))
            } else {
                self.leases
                    .replace(WRITER_LEASE, &pp, &lease)
                    .await
                    .map_err(|e| CaBundleError::from_kube(e, "update", &object))
            };
            match written {
                Ok(_) => {
                    if action != Writer::Renew {
                        tracing::info!(
                            holder = %self.settings.holder,
                            "this replica now writes the webhook configuration's caBundle"
                        );
                    }
                    Ok(true)
                }
                // Another replica created or took it first: it is the writer this round.
                Err(e) if e.code() == Some(409) => Ok(false),
                Err(e) => Err(e),
            }
        };
        attempt
            .retry(self.backoff)
            .when(CaBundleError::is_retryable)
            .await
    }

    /// As the writer, brings every webhook's caBundle to the union of the live members'
    /// CAs; in any case, says whether the configuration carries this replica's CA.
    async fn configuration(&self, writer: bool) -> Result<bool, CaBundleError> {
        let name = &self.settings.configuration;
        let object = config_object(name);
        let members = if writer {
            let listed = self
                .leases
                .list(&ListParams::default().labels(&format!("{MEMBER_LABEL}={MEMBER_VALUE}")))
                .await
                .map_err(|e| {
                    CaBundleError::from_kube(
                        e,
                        "list",
                        &format!("leases in namespace {:?}", self.settings.namespace),
                    )
                })?;
            self.collect_garbage(&listed.items).await;
            Some(listed.items)
        } else {
            None
        };
        let attempt = || async {
            let mut config = self
                .configs
                .get(name)
                .await
                .map_err(|e| CaBundleError::from_kube(e, "get", &object))?;
            let Some(members) = &members else {
                return Ok(carried(&config.data, &self.ca_pem));
            };
            let bundle = union(members, &self.ca_pem, Timestamp::now());
            if bundles(&config.data).is_empty() {
                return Err(CaBundleError::NoWebhooks(name.clone()));
            }
            if !set_bundles(&mut config.data, &bundle) {
                return Ok(carried(&config.data, &self.ca_pem));
            }
            // The resourceVersion read is in `config`: a write in between is a 409, and the
            // retry reads again.
            let written = self
                .configs
                .replace(name, &PostParams::default(), &config)
                .await
                .map_err(|e| CaBundleError::from_kube(e, "update", &object))?;
            tracing::info!(
                configuration = %name,
                cas = certificates(bundle.as_bytes()).len(),
                "webhook configuration's caBundle updated"
            );
            Ok(carried(&written.data, &self.ca_pem))
        };
        attempt
            .retry(self.backoff)
            .when(CaBundleError::is_retryable)
            .await
    }

    /// Deletes member Leases expired for over [`MEMBER_GC_AFTER`] (each rollout leaves its
    /// old pods' behind). Best effort: a failure is retried next round.
    async fn collect_garbage(&self, members: &[Lease]) {
        let cutoff = Timestamp::now()
            .checked_sub(SignedDuration::from_secs(
                i64::try_from(MEMBER_GC_AFTER.as_secs()).unwrap_or(i64::MAX),
            ))
            .unwrap_or(Timestamp::MIN);
        for lease in members {
            let (Some(name), Some(end)) = (lease.metadata.name.as_deref(), lease_expiry(lease))
            else {
                continue;
            };
            if end >= cutoff || name == self.member_name() {
                continue;
            }
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: lease.metadata.resource_version.clone(),
                    uid: None,
                }),
                ..DeleteParams::default()
            };
            match self.leases.delete(name, &dp).await {
                Ok(_) => tracing::info!(lease = name, "expired webhook member Lease deleted"),
                Err(e) => tracing::debug!(
                    error = %CaBundleError::from_kube(e, "delete", &lease_object(&self.settings.namespace, name)),
                    "expired webhook member Lease not deleted"
                ),
            }
        }
    }
}

/// Whether every webhook of `config` (untyped JSON) carries `ca`; `false` with no webhooks.
fn carried(config: &Value, ca: &str) -> bool {
    let b = bundles(config);
    !b.is_empty() && b.iter().all(|b| carries(b, ca))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn ca(name: &str) -> String {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .pem()
    }

    fn member(ca: &str, renewed: Timestamp, seconds: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([(CA_ANNOTATION.into(), ca.into())])),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(seconds),
                holder_identity: Some("h".into()),
                ..LeaseSpec::default()
            }),
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    #[test]
    fn the_bundle_is_the_sorted_deduplicated_union_of_live_members_and_its_own_ca() {
        let (a, b, c, own) = (ca("a"), ca("b"), ca("c"), ca("own"));
        let members = [
            member(&a, at(0), 15),
            member(&b, at(10), 15),
            // The same CA twice (a renewed Lease read twice, two annotations alike).
            member(&b, at(12), 15),
            // Expired: renewed at 0 for 15 s, now is 20.
            member(&c, at(-10), 15),
        ];
        let bundle = union(&members, &own, at(20));
        assert_eq!(certificates(bundle.as_bytes()).len(), 2, "{bundle}");
        for kept in [&b, &own] {
            assert!(carries(bundle.as_bytes(), kept));
        }
        assert!(!carries(bundle.as_bytes(), &a), "a expired at 15");
        assert!(!carries(bundle.as_bytes(), &c));
        // Order does not depend on the order of the Leases.
        let mut reversed = members.clone();
        reversed.reverse();
        assert_eq!(union(&reversed, &own, at(20)), bundle);
        // Exactly at its end, a Lease is expired.
        assert!(!lease_live(&member(&a, at(0), 15), at(15)));
        assert!(lease_live(&member(&a, at(0), 15), at(14)));
    }

    #[test]
    fn a_lease_without_renewal_time_or_duration_is_not_live() {
        let mut l = member(&ca("x"), at(0), 15);
        l.spec.as_mut().unwrap().lease_duration_seconds = None;
        assert!(!lease_live(&l, at(1)));
        let mut l = member(&ca("x"), at(0), 15);
        l.spec.as_mut().unwrap().renew_time = None;
        assert!(!lease_live(&l, at(1)));
    }

    #[test]
    fn every_webhook_gets_the_bundle_and_an_unchanged_one_is_not_rewritten() {
        let (a, own) = (ca("a"), ca("own"));
        let bundle = union(&[member(&a, at(0), 15)], &own, at(1));
        let mut config = serde_json::json!({
            "metadata": {"name": "keyturn", "resourceVersion": "7"},
            "webhooks": [
                {"name": "one.keyturn.dev", "clientConfig": {"service": {"name": "w", "namespace": "k"}}},
                {"name": "two.keyturn.dev", "clientConfig": {"caBundle": "AAAA", "url": "https://x"}, "futureField": 1}
            ]
        });
        assert!(!carried(&config, &own));
        assert!(set_bundles(&mut config, &bundle));
        assert!(carried(&config, &own) && carried(&config, &a));
        // Fields keyturn does not know survive.
        assert_eq!(config["webhooks"][1]["futureField"], 1);
        assert_eq!(config["webhooks"][1]["clientConfig"]["url"], "https://x");
        assert!(!set_bundles(&mut config, &bundle), "rewritten unchanged");
        assert!(!carried(&serde_json::json!({"webhooks": []}), &own));
    }

    #[test]
    fn readiness_needs_a_renewal_and_a_read_finding_the_ca_both_younger_than_two_thirds_of_a_lease()
    {
        let f = Freshness::new(Duration::from_secs(15));
        assert_eq!(f.max_age(), Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(!f.current_at(t0), "nothing confirmed yet");
        f.renewed(t0);
        assert!(
            !f.current_at(t0),
            "renewed, but the CA not yet seen in the bundle"
        );
        f.read(t0, true);
        assert!(f.current_at(at(9)));
        // Nothing confirmed since (the API server refuses this replica): unready a third of
        // a lease before its Lease expires and the writer drops its CA.
        assert!(!f.current_at(at(10)));
        // The configuration read still works but the renewal keeps failing: still unready.
        f.read(at(12), true);
        assert!(!f.current_at(at(12)));
        f.renewed(at(12));
        assert!(f.current_at(at(12)));
        // Renewals work but reads fail: the last read ages out as well.
        f.renewed(at(21));
        assert!(!f.current_at(at(22)));
        // A read finding the CA gone is unready at once.
        f.read(at(22), true);
        assert!(f.current_at(at(22)));
        f.read(at(23), false);
        assert!(!f.current_at(at(23)));
    }

    #[test]
    fn the_writer_lease_is_taken_when_absent_or_expired_and_left_to_a_live_holder() {
        assert_eq!(writer_action(None, "me", at(0)), Writer::Create);
        let mine = member("", at(0), 15);
        let mut other = mine.clone();
        other.spec.as_mut().unwrap().holder_identity = Some("other".into());
        let mut mine = mine;
        mine.spec.as_mut().unwrap().holder_identity = Some("me".into());
        assert_eq!(writer_action(Some(&mine), "me", at(100)), Writer::Renew);
        assert_eq!(writer_action(Some(&other), "me", at(5)), Writer::Held);
        assert_eq!(writer_action(Some(&other), "me", at(15)), Writer::TakeOver);
        let mut released = other.clone();
        released.spec.as_mut().unwrap().holder_identity = None;
        assert_eq!(
            writer_action(Some(&released), "me", at(5)),
            Writer::TakeOver
        );
    }
}

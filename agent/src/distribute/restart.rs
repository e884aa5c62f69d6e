//! [`Restarter`]: rollout restarts, debounced per workload.
//!
//! A restart is what `kubectl rollout restart` does: a pod-template annotation changes, so the
//! workload's controller rolls its pods. keyturn writes three annotations on
//! `spec.template.metadata.annotations`:
//!
//! - `keyturn.dev/versions`: a JSON object, policy → version, of every policy that has fed
//!   this workload. It says exactly which credential versions the pods were started with.
//! - `keyturn.dev/version`: [`combined_version`] of that object: the one version when a
//!   single policy feeds the workload, else `sha256:` over the sorted `policy=version` lines.
//!   The versions are the caller's HMACs, so this is never a hash of a secret.
//! - `keyturn.dev/restartedAt`: RFC 3339, for people.
//!
//! **Debounce.** Requests for one workload within the window (default 2 s, from the first)
//! become one restart whose versions are all of theirs; every requester gets the same
//! [`RestartReport`]. So three policies rotated together roll their shared Deployment once,
//! not three times, and no restart is lost to a same-second annotation race.
//!
//! **Idempotent.** A workload whose template already carries every requested version is not
//! patched: after a crash the step runs again and rolls nothing twice.
//!
//! **Paused Deployments** (`spec.paused: true`) are skipped with a warning and reported
//! [`RestartOutcome::SkippedPaused`]: someone paused it on purpose, and a template change
//! would roll it the moment they resume, which is theirs to decide. It still picks up the new
//! Secret whenever it next rolls.
//!
//! The patch is a JSON merge patch with the `resourceVersion` read, like the Secret's, so two
//! keyturn processes cannot both decide a restart is needed and roll twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::Resource as _;
use kube::api::{GetParams, Patch, PatchParams};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tracing::instrument;

use super::api::{self, MAX_ATTEMPTS};
use super::debounce::{Action, Debouncer, Outcome};
use super::{
    DistributeError, FIELD_MANAGER, ObjectRef, RESTARTED_AT_ANNOTATION, RestartOutcome,
    RestartReport, VERSION_ANNOTATION, VERSIONS_ANNOTATION,
};
use crate::policy::Workload;

/// How long restart requests for one workload are collected before it is rolled.
pub const DEFAULT_RESTART_WINDOW: Duration = Duration::from_secs(2);

type BatchResult = Result<RestartReport, DistributeError>;

/// One workload, as the debouncer keys it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    workload: Workload,
}

/// One policy's request.
#[derive(Debug)]
struct Request {
    policy: String,
    version: String,
}

/// Rolls workloads after their Secrets changed, batching requests per workload. Cheap to
/// clone; clones share their batches.
#[derive(Clone)]
pub struct Restarter {
    client: kube::Client,
    batches: Arc<Debouncer<Key, Request, BatchResult>>,
}

impl std::fmt::Debug for Restarter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restarter")
            .field("window", &self.batches.window())
            .finish_non_exhaustive()
    }
}

/// The answer to one restart request: await [`RestartTicket::wait`].
#[derive(Debug)]
pub struct RestartTicket {
    object: ObjectRef,
    outcome: Outcome<BatchResult>,
}

impl RestartTicket {
    /// Waits for the batch this request joined to run.
    ///
    /// # Errors
    /// The batch's failure (the same for every request in it), or
    /// [`DistributeError::RestartAbandoned`] if it never answered.
    pub async fn wait(mut self) -> Result<RestartReport, DistributeError> {
        match self.outcome.wait_for(Option::is_some).await {
            Ok(result) => result.clone().unwrap_or_else(|| {
                Err(DistributeError::RestartAbandoned {
                    object: Box::new(self.object.clone()),
                })
            }),
            Err(_) => Err(DistributeError::RestartAbandoned {
                object: Box::new(self.object),
            }),
        }
    }
}

impl Restarter {
    /// A restarter using `client` that batches requests over `window`.
    #[must_use]
    pub fn new(client: kube::Client, window: Duration) -> Self {
        Self::guarded(client, window, None)
    }

    /// A restarter that asks `guard` right before each patch: a batch runs a window after
    /// the request that opened it, and the permission checked before the request may have
    /// ended since.
    #[must_use]
    pub fn guarded(
        client: kube::Client,
        window: Duration,
        guard: Option<Arc<dyn crate::fence::Guard>>,
    ) -> Self {
        let runner = client.clone();
        let action: Action<Key, Request, BatchResult> =
            Arc::new(move |key: Key, requests: Vec<Request>| {
                let client = runner.clone();
                let guard = guard.clone();
                Box::pin(async move {
                    if let Err(source) = crate::fence::check(guard.as_deref()) {
                        let (_, object) = endpoint(&key.namespace, &key.workload)?;
                        return Err(DistributeError::Fenced {
                            object: Box::new(object),
                            source,
                        });
                    }
                    let versions: BTreeMap<String, String> = requests
                        .into_iter()
                        .map(|r| (r.policy, r.version))
                        .collect();
                    restart(&client, &key.namespace, &key.workload, &versions).await
                })
            });
        Self {
            client,
            batches: Arc::new(Debouncer::new(window, action)),
        }
    }

    /// The debounce window.
    #[must_use]
    pub fn window(&self) -> Duration {
        self.batches.window()
    }

    /// Asks for `workload` in `namespace` to be rolled for `policy`'s new `version`. Call only
    /// once the Secrets `policy` feeds it hold that version. Must be called within a tokio
    /// runtime.
    ///
    /// # Errors
    /// [`DistributeError::UnsupportedWorkload`] for a kind other than Deployment, StatefulSet
    /// or DaemonSet.
    pub fn request(
        &self,
        namespace: &str,
        workload: &Workload,
        policy: &str,
        version: &str,
    ) -> Result<RestartTicket, DistributeError> {
        let (_, object) = endpoint(namespace, workload)?;
        let key = Key {
            namespace: namespace.to_owned(),
            workload: workload.clone(),
        };
        let outcome = self.batches.submit(
            key,
            Request {
                policy: policy.to_owned(),
                version: version.to_owned(),
            },
        );
        Ok(RestartTicket { object, outcome })
    }

    /// Rolls `workload` now for `versions` (policy → version), without debouncing: for
    /// break-glass, where seconds matter more than one extra rollout.
    ///
    /// # Errors
    /// As [`RestartTicket::wait`].
    pub async fn restart_now(
        &self,
        namespace: &str,
        workload: &Workload,
        versions: &BTreeMap<String, String>,
    ) -> Result<RestartReport, DistributeError> {
        restart(&self.client, namespace, workload, versions).await
    }
}

/// The value of `keyturn.dev/version` for `versions` (policy → version): the version itself
/// when there is one policy, else `sha256:` and the hex SHA-256 of the sorted
/// `policy=version\n` lines. The inputs are HMACs, never secrets.
#[must_use]
pub fn combined_version(versions: &BTreeMap<String, String>) -> String {
    if let [(_, only)] = versions.iter().collect::<Vec<_>>().as_slice() {
        return (*only).clone();
    }
    let mut h = Sha256::new();
    for (policy, version) in versions {
        h.update(policy.as_bytes());
        h.update(b"=");
        h.update(version.as_bytes());
        h.update(b"\n");
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// The RBAC resource (plural, API group) of a restartable kind.
pub(crate) fn resource_of(kind: &str) -> Option<(&'static str, &'static str)> {
    match kind {
        "Deployment" => Some(("deployments", "apps")),
        "StatefulSet" => Some(("statefulsets", "apps")),
        "DaemonSet" => Some(("daemonsets", "apps")),
        _ => None,
    }
}

/// The collection URL and the object for messages.
fn endpoint(namespace: &str, workload: &Workload) -> Result<(String, ObjectRef), DistributeError> {
    let ns = Some(namespace);
    let path = match workload.kind.as_str() {
        "Deployment" => Deployment::url_path(&(), ns),
        "StatefulSet" => StatefulSet::url_path(&(), ns),
        "DaemonSet" => DaemonSet::url_path(&(), ns),
        _ => {
            return Err(DistributeError::UnsupportedWorkload {
                namespace: namespace.to_owned(),
                kind: workload.kind.clone(),
                name: workload.name.clone(),
            });
        }
    };
    let (plural, group) = resource_of(&workload.kind).unwrap_or_default();
    let object = ObjectRef {
        resource: format!("{plural}.{group}"),
        namespace: namespace.to_owned(),
        name: workload.name.clone(),
    };
    Ok((path, object))
}

/// The parts of a workload keyturn reads.
#[derive(Deserialize)]
struct LiveWorkload {
    #[serde(default)]
    metadata: api::Meta,
    #[serde(default)]
    spec: Spec,
}

#[derive(Default, Deserialize)]
struct Spec {
    #[serde(default)]
    paused: Option<bool>,
    #[serde(default)]
    template: Template,
}

#[derive(Default, Deserialize)]
struct Template {
    #[serde(default)]
    metadata: TemplateMeta,
}

#[derive(Default, Deserialize)]
struct TemplateMeta {
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

/// Rolls one workload for `requested` (policy → version) unless it is paused or already
/// carries them.
#[instrument(skip(client, requested), fields(kind = %workload.kind, name = %workload.name, policies = ?requested.keys().collect::<Vec<_>>()))]
async fn restart(
    client: &kube::Client,
    namespace: &str,
    workload: &Workload,
    requested: &BTreeMap<String, String>,
) -> Result<RestartReport, DistributeError> {
    let (path, object) = endpoint(namespace, workload)?;
    let request = kube::core::Request::new(path);
    let report = |outcome| RestartReport {
        object: object.clone(),
        workload: workload.clone(),
        outcome,
        policies: requested.keys().cloned().collect(),
    };

    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(api::conflict_backoff(attempt - 1)).await;
        }
        let body = api::send(
            client,
            request.get(&workload.name, &GetParams::default()),
            &object,
            "get",
        )
        .await?;
        let live: LiveWorkload = api::parse(&body, &object, "get")?;

        if workload.kind == "Deployment" && live.spec.paused == Some(true) {
            tracing::warn!(
                "{object} is paused: not restarted; it picks up the new Secret when it is resumed and next rolls"
            );
            return Ok(report(RestartOutcome::SkippedPaused));
        }

        let annotations = live.spec.template.metadata.annotations.unwrap_or_default();
        let recorded: BTreeMap<String, String> = annotations
            .get(VERSIONS_ANNOTATION)
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default();
        let mut versions = recorded.clone();
        versions.extend(requested.iter().map(|(p, v)| (p.clone(), v.clone())));
        let version = combined_version(&versions);
        let current = requested.iter().all(|(p, v)| recorded.get(p) == Some(v))
            && annotations.get(VERSION_ANNOTATION) == Some(&version);
        if current {
            tracing::debug!(%version, "already running these versions; not restarted");
            return Ok(report(RestartOutcome::AlreadyCurrent { version }));
        }

        let Some(resource_version) = live.metadata.resource_version else {
            return Err(DistributeError::Protocol {
                object: Box::new(object),
                verb: "get".into(),
                cause: "the answer has no metadata.resourceVersion".into(),
            });
        };
        let restarted_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let versions_json = serde_json::to_string(&versions).unwrap_or_default();
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": resource_version },
            "spec": { "template": { "metadata": { "annotations": {
                RESTARTED_AT_ANNOTATION: restarted_at,
                VERSION_ANNOTATION: version,
                VERSIONS_ANNOTATION: versions_json,
            }}}},
        });
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        match api::send(
            client,
            request.patch(&workload.name, &pp, &Patch::Merge(&patch)),
            &object,
            "patch",
        )
        .await
        {
            Ok(_) => {
                tracing::info!(%version, %restarted_at, "rollout restarted");
                return Ok(report(RestartOutcome::Restarted {
                    restarted_at,
                    version,
                }));
            }
            Err(DistributeError::Conflict { .. }) => {
                tracing::debug!(
                    attempt,
                    "the workload changed between read and write; reading it again"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn one_policy_gives_its_own_version_and_several_give_an_order_free_combination() {
        assert_eq!(combined_version(&map(&[("orders-db", "hmac-1")])), "hmac-1");
        let ab = combined_version(&map(&[("a", "1"), ("b", "2")]));
        assert!(
            ab.starts_with("sha256:") && ab.len() == "sha256:".len() + 64,
            "{ab}"
        );
        assert_eq!(ab, combined_version(&map(&[("b", "2"), ("a", "1")])));
        assert_ne!(ab, combined_version(&map(&[("a", "1"), ("b", "3")])));
        // The pairing matters, not just the set of versions.
        assert_ne!(
            combined_version(&map(&[("a", "1"), ("b", "2")])),
            combined_version(&map(&[("a", "2"), ("b", "1")]))
        );
    }

    #[test]
    fn only_the_three_restartable_kinds_have_an_endpoint() {
        let w = |kind: &str| Workload {
            kind: kind.into(),
            name: "web".into(),
        };
        let (path, object) = endpoint("shop", &w("Deployment")).unwrap();
        assert_eq!(path, "/apis/apps/v1/namespaces/shop/deployments");
        assert_eq!(
            object.to_string(),
            "deployments.apps \"web\" in namespace \"shop\""
        );
        assert_eq!(
            endpoint("shop", &w("DaemonSet")).unwrap().0,
            "/apis/apps/v1/namespaces/shop/daemonsets"
        );
        assert!(matches!(
            endpoint("shop", &w("CronJob")),
            Err(DistributeError::UnsupportedWorkload { .. })
        ));
    }

    #[tokio::test]
    async fn a_closed_guard_stops_a_batch_before_its_patch_and_an_open_one_does_not() {
        let client = || {
            // Nothing listens there: a request sent is a transport error.
            let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
            kube::Client::try_from(config).unwrap()
        };
        let web = Workload {
            kind: "Deployment".into(),
            name: "web".into(),
        };
        let expired = crate::fence::Fenced::Expired {
            since: Duration::from_secs(20),
        };
        let closed: Arc<dyn crate::fence::Guard> = Arc::new(crate::fence::Fixed(Err(expired)));
        let restarter = Restarter::guarded(client(), Duration::ZERO, Some(closed));
        let ticket = restarter.request("shop", &web, "orders-db", "v1").unwrap();
        let e = ticket.wait().await.unwrap_err();
        assert!(
            matches!(&e, DistributeError::Fenced { source, .. } if *source == expired),
            "{e}"
        );
        let open: Arc<dyn crate::fence::Guard> = Arc::new(crate::fence::Fixed(Ok(())));
        for guard in [Some(open), None] {
            let restarter = Restarter::guarded(client(), Duration::ZERO, guard);
            let ticket = restarter.request("shop", &web, "orders-db", "v1").unwrap();
            let e = ticket.wait().await.unwrap_err();
            assert!(!matches!(e, DistributeError::Fenced { .. }), "{e}");
        }
    }
}

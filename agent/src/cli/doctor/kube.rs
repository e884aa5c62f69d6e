//! The Kubernetes checks: the API reachable, and RBAC allowing every access the policies
//! need (SelfSubjectAccessReview, one per access); the API server's clock, for the clock
//! check when Vault cannot tell the time.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use super::vault::parse_http_date;
use super::{PROBE_TIMEOUT, Report, fail, ok, skip};
use crate::policy::Policy;
use crate::policy::needs::Need as PolicyNeed;

/// One access a policy needs: `verb` on `group/resource` `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Access {
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    namespace: String,
    name: String,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resource = if self.group.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        write!(
            f,
            "{} {resource} {}/{}",
            self.verb, self.namespace, self.name
        )
    }
}

/// Each Kubernetes access `p` needs, one per verb (see [`Policy::needs`]).
pub(super) fn kube_needs(p: &Policy) -> Vec<Access> {
    let mut out = Vec::new();
    for n in p.needs() {
        if let PolicyNeed::Kubernetes {
            namespace,
            group,
            resource,
            name,
            verbs,
        } = n
        {
            out.extend(verbs.iter().map(|verb| Access {
                verb,
                group,
                resource,
                namespace: namespace.clone(),
                name: name.clone(),
            }));
        }
    }
    out.sort();
    out.dedup();
    out
}

pub(super) async fn kube_checks(
    report: &mut Report,
    policies: Option<&[Policy]>,
) -> Option<kube::Client> {
    let rbac = "kubernetes rbac";
    let Some(policies) = policies.filter(|ps| ps.iter().any(|p| !p.distribute.is_empty())) else {
        let why = if policies.is_none() {
            "no --policies given"
        } else {
            "no policy distributes to Kubernetes"
        };
        report.add("kubernetes api", &skip(why));
        report.add(rbac, &skip(why));
        // Still useful for the clock when Vault cannot tell the time.
        return kube_client().await.ok().map(|(c, _)| c);
    };
    let (client, host) = match kube_client().await {
        Ok(c) => c,
        Err(e) => {
            report.add(
                "kubernetes api",
                &fail(
                    format!("no usable configuration: {e}"),
                    "set KUBECONFIG, or run in a pod with a service account token mounted",
                ),
            );
            report.add(rbac, &skip("no Kubernetes API"));
            return None;
        }
    };
    let unreachable = match tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(v)) => {
            report.add("kubernetes api", &ok(format!("{host} ({})", v.git_version)));
            None
        }
        Ok(Err(e)) => Some(format!("cannot reach {host}: {e}")),
        Err(_) => Some(format!(
            "{host} did not answer within {}s",
            PROBE_TIMEOUT.as_secs()
        )),
    };
    if let Some(what) = unreachable {
        report.add(
            "kubernetes api",
            &fail(
                what,
                "check the server address in KUBECONFIG and the network path to it",
            ),
        );
        report.add(rbac, &skip("Kubernetes API not reachable"));
        return Some(client);
    }
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut answers: BTreeMap<Access, Result<bool, String>> = BTreeMap::new();
    for p in policies.iter().filter(|p| !p.distribute.is_empty()) {
        let needs = kube_needs(p);
        let mut denied = Vec::new();
        let mut errors = Vec::new();
        for a in &needs {
            if !answers.contains_key(a) {
                let r = review(&reviews, a).await;
                answers.insert(a.clone(), r);
            }
            match &answers[a] {
                Ok(true) => {}
                Ok(false) => denied.push(a.to_string()),
                Err(e) => errors.push(e.clone()),
            }
        }
        let check = format!("{rbac} (policy {})", p.name);
        let outcome = if let Some(e) = errors.first() {
            fail(
                format!("cannot check RBAC: {e}"),
                "allow `create` on selfsubjectaccessreviews.authorization.k8s.io (the system:basic-user ClusterRole does) and check the API server",
            )
        } else if denied.is_empty() {
            ok(format!("{} accesses allowed", needs.len()))
        } else {
            fail(
                format!("denied: {}", denied.join(", ")),
                format!(
                    "apply the Role that `keyturn policy rbac {}` prints to the agent's service account",
                    p.file.display()
                ),
            )
        };
        report.add(&check, &outcome);
    }
    Some(client)
}

/// A client from KUBECONFIG or the in-cluster configuration (as `keyturn run` builds it),
/// and the server's address for messages.
async fn kube_client() -> Result<(kube::Client, String), String> {
    let config = tokio::time::timeout(PROBE_TIMEOUT, kube::Config::infer())
        .await
        .map_err(|_| "loading the configuration timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let host = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
    Ok((client, host))
}

async fn review(api: &Api<SelfSubjectAccessReview>, a: &Access) -> Result<bool, String> {
    let ssar = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(a.verb.to_owned()),
                group: Some(a.group.to_owned()),
                resource: Some(a.resource.to_owned()),
                namespace: Some(a.namespace.clone()),
                name: Some(a.name.clone()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    match tokio::time::timeout(PROBE_TIMEOUT, api.create(&PostParams::default(), &ssar)).await {
        Ok(Ok(r)) => r
            .status
            .map(|s| s.allowed)
            .ok_or_else(|| "the SelfSubjectAccessReview came back without a status".to_owned()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
    }
}

pub(super) async fn kube_date(
    kube: Option<&kube::Client>,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let client = kube?;
    let req = http::Request::get("/version")
        .body(kube::client::Body::from(Vec::new()))
        .ok()?;
    let resp = tokio::time::timeout(PROBE_TIMEOUT, client.send(req))
        .await
        .ok()?
        .ok()?;
    let received = Utc::now();
    let date = resp
        .headers()
        .get("date")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date)?;
    Some((date, received))
}

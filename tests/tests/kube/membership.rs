//! The daemon replicas' membership through real Leases: live members seen by all, a stopped
//! replica's policies moving to the others once its Lease expires, and the fence closing on
//! a replica that cannot renew before the others consider its Lease expired.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use keyturn_agent::daemon::membership::{
    Fenced, MEMBER_LABEL, MEMBER_VALUE, Membership, MembershipError, MembershipSettings, rendezvous,
};
use keyturn_tests::kube::TestCluster;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(90);
const LEASE: Duration = Duration::from_secs(3);

async fn until<F: Future<Output = bool>>(what: &str, mut cond: impl FnMut() -> F) {
    let end = Instant::now() + DEADLINE;
    while !cond().await {
        assert!(Instant::now() < end, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One replica's membership, running.
struct Replica {
    membership: Membership,
    stop: watch::Sender<()>,
    task: JoinHandle<()>,
}

impl Replica {
    fn start(client: kube::Client, namespace: &str, holder: &str) -> Self {
        let mut settings = MembershipSettings::new(namespace, holder, LEASE);
        settings.margin = Duration::from_secs(1);
        let membership = Membership::new(client, settings);
        let (stop, rx) = watch::channel(());
        let m = membership.clone();
        let task = tokio::spawn(async move { m.run(rx).await });
        Self {
            membership,
            stop,
            task,
        }
    }

    fn members(&self) -> Vec<String> {
        self.membership.members().borrow().clone()
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap();
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_see_each_other_and_a_stopped_ones_policies_go_to_the_others_once_its_lease_expires()
 {
    let cluster = TestCluster::start().await.unwrap();
    let ns = cluster.namespace();
    let a = Replica::start(cluster.client(), ns, "replica-a");
    let b = Replica::start(cluster.client(), ns, "replica-b");
    let c = Replica::start(cluster.client(), ns, "replica-c");
    let all = strings(&["replica-a", "replica-b", "replica-c"]);
    until("every replica sees all three", || async {
        [&a, &b, &c].iter().all(|r| r.members() == all)
    })
    .await;
    for r in [&a, &b, &c] {
        r.membership.fence().unwrap();
    }
    // The Leases are labelled, so the daemon lists only its members.
    let leases: Api<Lease> = Api::namespaced(cluster.client(), ns);
    let l = leases.get("keyturn-member-replica-b").await.unwrap();
    assert_eq!(
        l.metadata.labels.unwrap()[MEMBER_LABEL],
        MEMBER_VALUE.to_owned()
    );
    assert_eq!(l.spec.unwrap().lease_duration_seconds, Some(3));
    let policies: Vec<String> = (0..200).map(|i| format!("policy-{i}")).collect();
    // Each policy is owned by exactly one replica, and they agree on which.
    for p in &policies {
        let owning = [&a, &b, &c].iter().filter(|r| r.membership.owns(p)).count();
        assert_eq!(owning, 1, "{p}");
    }
    let before: Vec<String> = policies
        .iter()
        .map(|p| rendezvous::owner(p, &all).unwrap().clone())
        .collect();

    // C stops (its process gone): once its Lease has gone unrenewed for its duration, the
    // others drop it.
    c.stop().await;
    let live = strings(&["replica-a", "replica-b"]);
    until("A and B drop C", || async {
        a.members() == live && b.members() == live
    })
    .await;
    for (p, was) in policies.iter().zip(&before) {
        let owner = rendezvous::owner(p, &live).unwrap();
        assert!(live.contains(owner));
        if was != "replica-c" {
            assert_eq!(owner, was, "{p} moved though its owner is still live");
        }
        assert_ne!(a.membership.owns(p), b.membership.owns(p), "{p}");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_renewals_are_denied_loses_its_fence_before_the_others_drop_it() {
    let cluster = TestCluster::start_standin().await.unwrap();
    let standin = cluster.standin().unwrap();
    let ns = cluster.namespace().to_owned();
    let token =
        standin.issue_service_account_token(&ns, "replica-c", &[], Duration::from_secs(3600));
    let user = format!("system:serviceaccount:{ns}:replica-c");
    let a = Replica::start(cluster.client(), &ns, "replica-a");
    let b = Replica::start(cluster.client(), &ns, "replica-b");
    let c = Replica::start(standin.client_with_token(&token).unwrap(), &ns, "replica-c");
    let all = strings(&["replica-a", "replica-b", "replica-c"]);
    until("every replica sees all three", || async {
        [&a, &b, &c].iter().all(|r| r.members() == all)
    })
    .await;
    let period = c.membership.period();
    let count = || {
        standin
            .requests()
            .iter()
            .filter(|r| r.user == user && r.resource == "leases")
            .count()
    };

    // Renewing while allowed: a get, an update and a list per round.
    let (start, sent) = (Instant::now(), count());
    tokio::time::sleep(period * 3).await;
    let rounds = start.elapsed().as_secs_f64() / period.as_secs_f64() + 1.0;
    let per_round = (count() - sent) as f64 / rounds;
    assert!(per_round <= 3.0, "{per_round} Lease requests a round");

    // C is cut off from the Leases.
    standin.deny_user(&user, "*", "leases");
    let (start, sent) = (Instant::now(), count());
    until("C fenced", || async { c.membership.fence().is_err() }).await;
    assert!(matches!(c.membership.fence(), Err(Fenced::Expired { .. })));
    // Its Lease is still valid for the others: C stopped acting before they could take its
    // policies.
    assert_eq!(a.members(), all);
    assert_eq!(b.members(), all);
    let live = strings(&["replica-a", "replica-b"]);
    until("A and B drop C", || async {
        a.members() == live && b.members() == live
    })
    .await;
    assert!(c.membership.fence().is_err());
    // Denied requests are retried within a round only when worth it (a 403 is not), and a
    // round comes once a period: a handful of requests, not a storm.
    let rounds = start.elapsed().as_secs_f64() / period.as_secs_f64() + 1.0;
    let per_round = (count() - sent) as f64 / rounds;
    assert!(
        per_round <= 3.0,
        "{per_round} denied Lease requests a round"
    );
    assert!(c.membership.failures() > 0);

    // Back on the API server: C renews, its fence opens, and the others take it back.
    standin.allow_all();
    until("C back", || async {
        c.membership.fence().is_ok() && a.members() == all && b.members() == all
    })
    .await;
    for r in [a, b, c] {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_lease_held_by_another_holder_is_left_alone_until_it_expires_as_observed_here() {
    let cluster = TestCluster::start().await.unwrap();
    let ns = cluster.namespace();
    let leases: Api<Lease> = Api::namespaced(cluster.client(), ns);
    // Written by another holder just now, whatever its clock says.
    let held = Lease {
        metadata: ObjectMeta {
            name: Some("keyturn-member-replica-d".into()),
            labels: Some([(MEMBER_LABEL.into(), MEMBER_VALUE.into())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("someone-else".into()),
            lease_duration_seconds: Some(3),
            renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            ..LeaseSpec::default()
        }),
    };
    leases.create(&PostParams::default(), &held).await.unwrap();
    let settings = MembershipSettings::new(ns, "replica-d", LEASE);
    let d = Membership::new(cluster.client(), settings);
    let r = d.round().await;
    assert!(
        matches!(r, Err(MembershipError::HeldByAnother { ref holder, .. }) if holder == "someone-else"),
        "{r:?}"
    );
    assert!(d.fence().is_err());
    let l = leases.get("keyturn-member-replica-d").await.unwrap();
    assert_eq!(
        l.spec.unwrap().holder_identity.as_deref(),
        Some("someone-else")
    );
    // Once that holder has not renewed for its duration (as d observed), d takes the Lease.
    until("d holds its Lease", || async {
        let _ = d.round().await;
        tokio::time::sleep(d.period()).await;
        d.fence().is_ok()
    })
    .await;
    let l = leases.get("keyturn-member-replica-d").await.unwrap();
    assert_eq!(
        l.spec.unwrap().holder_identity.as_deref(),
        Some("replica-d")
    );
}

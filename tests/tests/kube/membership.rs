//! The daemon replicas' membership through real Leases: live members seen by all, a stopped
//! replica's policies moving to the others once its Lease expires, and the fence closing on
//! a replica that cannot renew before the others consider its Lease expired; a round and a
//! release whose answers never come both abandoned within a lease duration; and a release
//! that meets a Lease already gone (404), changed by someone else (409) or a failing server
//! (5xx) sending its delete once, with the fence closed for good whatever happened.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use keyturn_agent::daemon::membership::{
    Fenced, MEMBER_LABEL, MEMBER_VALUE, Membership, MembershipError, MembershipSettings, rendezvous,
};
use keyturn_agent::kube_request::KubeRequestError;
use keyturn_tests::kube::{KubeStandin, TestCluster};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
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

/// How long the stand-in holds a read in the tests that change the Lease behind a release's
/// back: long enough for the change to land first, well within [`RELEASE_LEASE`].
const HOLD: Duration = Duration::from_secs(2);

/// The lease of the release tests: a release is bounded by it, so it must outlast [`HOLD`]
/// with room to spare on a busy machine.
const RELEASE_LEASE: Duration = Duration::from_secs(10);

/// A hold far longer than any bound under test: only the client's own bound ends the wait.
const FOREVER: Duration = Duration::from_secs(600);

/// One replica on a stand-in of its own, through a service account of its own so that the
/// request log tells its requests from the test's admin ones.
struct Solo {
    cluster: TestCluster,
    /// The test's (admin) view of the Leases.
    leases: Api<Lease>,
    m: Membership,
    user: String,
    lease_name: String,
}

impl Solo {
    /// `holder`'s membership, not running, after one round: its Lease written, its fence
    /// open.
    async fn renewed(holder: &str, lease: Duration) -> Self {
        let cluster = TestCluster::start_standin().await.unwrap();
        let ns = cluster.namespace();
        let standin = cluster.standin().unwrap();
        let token = standin.issue_service_account_token(ns, holder, &[], Duration::from_secs(3600));
        let mut settings = MembershipSettings::new(ns, holder, lease);
        settings.margin = Duration::from_secs(1);
        let lease_name = settings.lease_name();
        let m = Membership::new(standin.client_with_token(&token).unwrap(), settings);
        m.round().await.unwrap();
        m.fence().unwrap();
        Self {
            leases: Api::namespaced(cluster.client(), ns),
            user: format!("system:serviceaccount:{ns}:{holder}"),
            cluster,
            m,
            lease_name,
        }
    }

    fn standin(&self) -> &KubeStandin {
        self.cluster.standin().unwrap()
    }

    /// The codes answered to this replica's `verb` requests on Leases, in order.
    fn codes(&self, verb: &str) -> Vec<u16> {
        self.standin()
            .requests()
            .iter()
            .filter(|r| r.user == self.user && r.resource == "leases" && r.verb == verb)
            .map(|r| r.code)
            .collect()
    }

    /// Its Lease as the API server has it now.
    async fn lease(&self) -> Option<Lease> {
        self.leases.get_opt(&self.lease_name).await.unwrap()
    }

    /// Releases while the stand-in holds the release's read of the Lease, running
    /// `meanwhile` (as the test's admin) once that read has been served: the release then
    /// deletes with the uid and resourceVersion of a Lease that has changed since. Its
    /// result.
    async fn release_after(
        &self,
        meanwhile: impl Future<Output = ()>,
    ) -> Result<(), MembershipError> {
        let reads = self.codes("get").len();
        self.standin().hold("get", "leases", HOLD);
        let release = tokio::spawn({
            let m = self.m.clone();
            async move { m.release().await }
        });
        until("the release's read to be served", || async {
            self.codes("get").len() > reads
        })
        .await;
        meanwhile.await;
        let r = release.await.unwrap();
        self.standin().clear_failures();
        r
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_deletes_the_lease_with_one_request_and_the_fence_stays_closed_for_good() {
    let r = Solo::renewed("replica-r", RELEASE_LEASE).await;
    r.m.release().await.unwrap();
    assert_eq!(r.codes("delete"), [200]);
    assert!(r.lease().await.is_none());
    assert_eq!(r.m.fence(), Err(Fenced::Released));
    // A round after the release (a late tick) neither writes the Lease again nor reopens the
    // fence.
    r.m.round().await.unwrap();
    assert!(r.lease().await.is_none());
    assert_eq!(r.codes("create"), [201], "the first round's alone");
    assert_eq!(r.m.fence(), Err(Fenced::Released));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_finding_its_lease_gone_succeeds_without_sending_a_delete() {
    let r = Solo::renewed("replica-g", RELEASE_LEASE).await;
    r.leases
        .delete(&r.lease_name, &DeleteParams::default())
        .await
        .unwrap();
    r.m.release().await.unwrap();
    assert_eq!(r.codes("get").last(), Some(&404));
    assert_eq!(r.codes("delete"), [] as [u16; 0]);
    assert_eq!(r.m.fence(), Err(Fenced::Released));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_deleted_between_the_read_and_the_delete_is_released_after_one_404() {
    let r = Solo::renewed("replica-n", RELEASE_LEASE).await;
    let released = r
        .release_after(async {
            r.leases
                .delete(&r.lease_name, &DeleteParams::default())
                .await
                .unwrap();
        })
        .await;
    released.unwrap();
    assert_eq!(r.codes("delete"), [404]);
    assert_eq!(r.m.fence(), Err(Fenced::Released));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_written_by_someone_else_after_the_read_is_left_to_them_after_one_409() {
    let r = Solo::renewed("replica-c", RELEASE_LEASE).await;
    let released = r
        .release_after(async {
            let taken = json!({"spec": {"holderIdentity": "someone-else"}});
            r.leases
                .patch(&r.lease_name, &PatchParams::default(), &Patch::Merge(taken))
                .await
                .unwrap();
        })
        .await;
    // Not this replica's any more: nothing to give up, and no read-and-retry loop.
    released.unwrap();
    assert_eq!(r.codes("delete"), [409]);
    let holder = r.lease().await.unwrap().spec.unwrap().holder_identity;
    assert_eq!(holder.as_deref(), Some("someone-else"));
    assert_eq!(r.m.fence(), Err(Fenced::Released));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_meeting_an_internal_error_sends_its_delete_once_and_says_so() {
    let r = Solo::renewed("replica-e", RELEASE_LEASE).await;
    r.standin().fail("delete", "leases", 500);
    match &r.m.release().await {
        Err(MembershipError::Request(KubeRequestError::Api {
            verb, object, code, ..
        })) => {
            assert_eq!((*verb, *code), ("delete", 500));
            assert!(object.contains(&r.lease_name), "{object}");
        }
        other => panic!("{other:?}"),
    }
    // A 500 is not retried: the Lease simply expires.
    assert_eq!(r.codes("delete"), [500]);
    assert!(r.lease().await.is_some());
    assert_eq!(r.m.fence(), Err(Fenced::Released));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_meeting_unavailability_is_bounded_by_its_lease_whatever_kube_retries() {
    let r = Solo::renewed("replica-u", Duration::from_secs(3)).await;
    r.standin().fail("delete", "leases", 503);
    // kube's own retry layer resends a 503 (at most 15 times, its backoff growing to
    // minutes); the release is bounded by its lease duration whatever that layer does.
    let released = tokio::time::timeout(DEADLINE, r.m.release())
        .await
        .expect("a release bounded by its lease duration");
    assert!(
        matches!(
            released,
            Err(MembershipError::ReleaseTimedOut
                | MembershipError::Request(KubeRequestError::Api { code: 503, .. }))
        ),
        "{released:?}"
    );
    let deletes = r.codes("delete");
    assert!(
        (1..=16).contains(&deletes.len()) && deletes.iter().all(|c| *c == 503),
        "{deletes:?}"
    );
    assert_eq!(r.m.fence(), Err(Fenced::Released));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_delete_is_never_answered_is_abandoned_after_the_lease_duration() {
    let r = Solo::renewed("replica-h", Duration::from_secs(3)).await;
    r.standin().hold("delete", "leases", FOREVER);
    // The test's own bound is far below the hold: only the release's bound can end it.
    let released = tokio::time::timeout(DEADLINE, r.m.release())
        .await
        .expect("a release bounded by its lease duration");
    assert!(
        matches!(released, Err(MembershipError::ReleaseTimedOut)),
        "{released:?}"
    );
    assert_eq!(r.codes("delete").len(), 1);
    assert_eq!(r.m.fence(), Err(Fenced::Released));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_whose_read_is_never_answered_is_abandoned_each_lease_and_membership_recovers() {
    let cluster = TestCluster::start_standin().await.unwrap();
    let standin = cluster.standin().unwrap();
    let ns = cluster.namespace().to_owned();
    let token =
        standin.issue_service_account_token(&ns, "replica-s", &[], Duration::from_secs(3600));
    let user = format!("system:serviceaccount:{ns}:replica-s");
    let reads = || {
        standin
            .requests()
            .iter()
            .filter(|r| r.user == user && r.resource == "leases" && r.verb == "get")
            .map(|r| r.code)
            .collect::<Vec<_>>()
    };
    let s = Replica::start(standin.client_with_token(&token).unwrap(), &ns, "replica-s");
    until("S renewed", || async { s.membership.fence().is_ok() }).await;
    let failures = s.membership.failures();
    let (start, before) = (Instant::now(), reads().len());

    // Every read of the Lease is served but never answered: each round waits on it until its
    // lease-long bound abandons the round, which counts as a failure.
    standin.hold("get", "leases", FOREVER);
    until("a round abandoned", || async {
        s.membership.failures() > failures
    })
    .await;
    until("S fenced", || async { s.membership.fence().is_err() }).await;
    assert!(
        matches!(s.membership.fence(), Err(Fenced::Expired { .. })),
        "{:?}",
        s.membership.fence()
    );
    // No request failed: what was counted is the abandoned round. And a hanging read is not
    // sent again within its round: one read a round, a round at most every lease duration.
    let held = &reads()[before..];
    assert!(held.iter().all(|c| *c == 200), "{held:?}");
    let rounds = start.elapsed().as_secs_f64() / LEASE.as_secs_f64() + 1.0;
    assert!(
        (1..=rounds as usize + 1).contains(&held.len()),
        "{} reads in {rounds} rounds",
        held.len()
    );

    // The server answers again: the next round renews and the fence opens.
    standin.clear_failures();
    until("S renewed again", || async { s.membership.fence().is_ok() }).await;
    s.stop().await;
}

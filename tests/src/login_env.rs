//! What the process tests of the rotations whose CURRENT is a login (`username`,
//! `password`: PostgreSQL in `rotation::e2e`, MySQL, Redis) check alike, over the
//! [`LoginEnv`] each implements for its own `Env`:
//!
//! - [`alternating_rotations_switch_users`]: four alternating rotations, PREVIOUS keeping
//!   working and superseded passwords not.
//! - The crash matrix: `keyturn rotate` is killed by its own crash point right after one
//!   step (`KEYTURN_CRASH_AFTER`), what the app holds is checked, and a second run must
//!   converge. Its three phases ([`first_rotation`], [`crash_after`], [`resume`]) are
//!   separate so a test can look at its own world between them (e2e: the Deployment's
//!   rollout); [`crash_and_resume`] runs them back to back.

use std::future::Future;
use std::process::Output;

use crate::agent_env::{AgentEnv, output_text};

/// What the shared checks need of a test's `Env`.
pub trait LoginEnv {
    /// The `keyturn` set-up (OpenBao, token, home, cluster).
    fn agent(&self) -> &AgentEnv;
    /// The name of the policy under test; its CURRENT is at `secret/keyturn/NAME`.
    fn policy(&self) -> &str;
    /// Whether `user`/`password` logs in to the target.
    fn logs_in(&self, user: &str, password: &str) -> impl Future<Output = bool>;
    /// `(username, password)` in the Secret the policy distributes to.
    fn secret(&self) -> impl Future<Output = Option<(String, String)>>;
    /// The test's full leak check: keyturn's output and audit log and its servers' logs
    /// hold none of `values` (nor the test's own canaries).
    fn assert_clean(&self, outputs: &[&Output], values: &[String]) -> impl Future<Output = ()>;
}

/// After [`first_rotation`]: its output and the CURRENT it made.
#[derive(Debug)]
pub struct Before {
    pub first: Output,
    pub old_user: String,
    pub old_password: String,
    pub old_version: u64,
}

/// After [`crash_after`]: the killed run's output and the PENDING password it persisted.
#[derive(Debug)]
pub struct Crashed {
    pub before: Before,
    pub crashed: Output,
    pub pending_password: String,
}

/// After [`resume`]: every run's output and the CURRENT the resumed run promoted.
#[derive(Debug)]
pub struct Resumed {
    pub crashed: Crashed,
    pub resumed: Output,
    pub user: String,
    pub password: String,
}

impl Resumed {
    /// The three runs' outputs, for the leak check.
    #[must_use]
    pub fn outputs(&self) -> [&Output; 3] {
        [
            &self.crashed.before.first,
            &self.crashed.crashed,
            &self.resumed,
        ]
    }
}

/// A rotation that completes, so the crash interrupts a rotation from a real CURRENT.
///
/// # Panics
/// When it fails.
pub async fn first_rotation(e: &impl LoginEnv) -> Before {
    let first = e.agent().rotate(e.policy(), None).await;
    assert!(first.status.success(), "{}", output_text(&first));
    let (old_user, old_password, old_version) = e.agent().login_at(e.policy(), None).await;
    Before {
        first,
        old_user,
        old_password,
        old_version,
    }
}

/// Kills `keyturn rotate` right after `step` and checks the world it leaves: a PENDING
/// password persisted; before `distribute`, the audit log ends in that step's intent (the
/// kill came between the step's effect and its outcome event) and the Secret still holds
/// the old login; with alternating users the old login still works; CURRENT is promoted
/// only once the run got past `finish`.
///
/// # Panics
/// When any of that does not hold.
pub async fn crash_after(e: &impl LoginEnv, strategy: &str, step: &str, before: Before) -> Crashed {
    let crashed = e.agent().rotate_killed_after(e.policy(), step).await;
    let state = e.agent().state(e.policy()).await.unwrap_or_default();
    let pending_password = state["pending.password"].as_str().unwrap().to_owned();
    if step != "distribute" {
        assert_eq!(
            e.agent().audit_actions().last(),
            Some(&(format!("rotate.{step}"), "started".to_owned())),
            "the last event before the kill"
        );
        assert_eq!(
            e.secret().await,
            Some((before.old_user.clone(), before.old_password.clone())),
            "the Secret is not touched before distribute"
        );
    }
    if strategy == "alternating" {
        assert!(
            e.logs_in(&before.old_user, &before.old_password).await,
            "with alternating users the app's credential works at every crash point"
        );
    }
    let after_promote = matches!(step, "finish" | "distribute");
    let v1 = before.old_version;
    assert_eq!(
        e.agent().login_at(e.policy(), None).await.2,
        if after_promote { v1 + 1 } else { v1 },
        "promotion happens at finish, once"
    );
    Crashed {
        before,
        crashed,
        pending_password,
    }
}

/// Runs `keyturn rotate` again and checks it converged: it says it resumed, exactly one new
/// CURRENT version, which is the persisted PENDING value, logs in and is in the Secret, and
/// no rotation is left in flight.
///
/// # Panics
/// When any of that does not hold.
pub async fn resume(e: &impl LoginEnv, crashed: Crashed) -> Resumed {
    let resumed = e.agent().rotate(e.policy(), None).await;
    assert!(resumed.status.success(), "{}", output_text(&resumed));
    assert!(
        output_text(&resumed).contains("resumed"),
        "{}",
        output_text(&resumed)
    );
    let (user, password, v2) = e.agent().login_at(e.policy(), None).await;
    assert_eq!(
        v2,
        crashed.before.old_version + 1,
        "exactly one new version"
    );
    assert_eq!(
        password, crashed.pending_password,
        "the persisted value is promoted"
    );
    assert!(e.logs_in(&user, &password).await, "CURRENT logs in");
    assert_eq!(e.secret().await, Some((user.clone(), password.clone())));
    let after = e.agent().state(e.policy()).await.unwrap_or_default();
    assert!(
        after.get("rotation_id").is_none() && after.get("pending.password").is_none(),
        "no rotation left in flight: {after}"
    );
    Resumed {
        crashed,
        resumed,
        user,
        password,
    }
}

/// The whole matrix cell: [`first_rotation`], [`crash_after`] `step`, [`resume`], then the
/// test's leak check over all three runs with the old and the new password.
pub async fn crash_and_resume(e: &impl LoginEnv, strategy: &str, step: &str) {
    let before = first_rotation(e).await;
    let crashed = crash_after(e, strategy, step, before).await;
    let r = resume(e, crashed).await;
    let values = [r.crashed.before.old_password.clone(), r.password.clone()];
    e.assert_clean(&r.outputs(), &values).await;
}

/// Four alternating rotations by `keyturn rotate`: CURRENT switches between `app_a` and
/// `app_b`, logs in and is in the Secret; PREVIOUS (the other user) keeps logging in; the
/// password it superseded two rotations ago does not. Then the test's leak check.
///
/// # Panics
/// When any of that does not hold.
pub async fn alternating_rotations_switch_users(e: &impl LoginEnv) {
    let mut outputs = Vec::new();
    let mut seen: Vec<(String, String)> = Vec::new();
    for i in 0..4 {
        let out = e.agent().rotate(e.policy(), None).await;
        assert!(out.status.success(), "rotation {i}: {}", output_text(&out));
        outputs.push(out);
        let (user, password, version) = e.agent().login_at(e.policy(), None).await;
        assert_eq!(
            user,
            if i % 2 == 0 { "app_a" } else { "app_b" },
            "rotation {i}"
        );
        assert!(e.logs_in(&user, &password).await);
        assert_eq!(
            e.secret().await,
            Some((user.clone(), password.clone())),
            "the Secret holds CURRENT"
        );
        if i > 0 {
            let (prev_user, prev_password, _) =
                e.agent().login_at(e.policy(), Some(version - 1)).await;
            assert_ne!(prev_user, user);
            assert!(
                e.logs_in(&prev_user, &prev_password).await,
                "rotation {i}: PREVIOUS stopped working"
            );
        }
        if i > 1 {
            let (old_user, old_password) = &seen[i - 2];
            assert!(
                !e.logs_in(old_user, old_password).await,
                "rotation {i}: a superseded password still logs in"
            );
        }
        seen.push((user, password));
    }
    let refs: Vec<&Output> = outputs.iter().collect();
    let values: Vec<String> = seen.into_iter().map(|(_, p)| p).collect();
    e.assert_clean(&refs, &values).await;
}

//! `keyturn status`: one row per policy — where its credential lives, how the last rotation
//! went, how old CURRENT is, when the next rotation falls due, and anything in flight,
//! tainted or failed.
//!
//! Status reads only each policy's rotation *state* (ids, steps, holders, times), never a
//! credential: for Vault KV the state entry at `keyturn-state/PATH` (while a rotation is in
//! flight that entry also carries the PENDING value; it is dropped unread, in zeroizing
//! memory), for AWS the state secret, which holds no value. So it needs no audit log. It logs
//! in with the agent's Vault identity, as `keyturn rotate` does.
//!
//! With `--rotationpolicies all|NAMESPACE` it lists the RotationPolicy objects in scope too
//! (one paged LIST) and merges them with the files as the daemon does; `--policies` is then
//! optional. An object the daemon would not manage (invalid, or its name or store taken) is a
//! row of its own saying why, and counts as 64.
//!
//! Exit codes: 0; 64 for an invalid policy set or Vault configuration (before any network
//! call, but for a RotationPolicy object not managed: after the list); 77, 69 or 64 for a
//! list of the objects the API server refuses, does not answer, or that has no RotationPolicy
//! resource; otherwise every row is printed and the code is the most telling of the rows'
//! failures ([`most_telling`]): 77 when a store refused the read, 66 for a store path
//! that does not exist, 69 when a store could not be reached, 70 when a state entry is
//! unreadable; the same store error gives the same code as in `rotate` and `break-glass`.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::Args;
use keyturn_core::vault::{RetryPolicy, Vault, VaultError};
use serde::Serialize;

use super::doctor::human;
use super::exit::{ExitCode, HasExitCode, most_telling};
use super::rotation_args::PolicyObjectArgs;
use super::vault_args::VaultArgs;
use crate::backends::Backends;
use crate::backends::StoreSpec;
use crate::policy::kube_source::{self, Rejection};
use crate::policy::{self, Policy};
use crate::rotation::store::aws_sm;
use crate::rotation::store::{Failures, LastRotation, StateRecord, Taint};
use crate::schedule::jittered;

/// `keyturn status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A policy file or a directory of them. Required, except with `--rotationpolicies`.
    #[arg(long, env = "KEYTURN_POLICIES", value_name = "PATH")]
    pub policies: Option<std::path::PathBuf>,
    /// RotationPolicy objects too, merged with the files as the daemon merges them.
    #[command(flatten)]
    pub objects: PolicyObjectArgs,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The agent's Vault identity (as `keyturn rotate` takes it).
    #[command(flatten)]
    pub vault: VaultArgs,
}

/// Why a policy's state could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
struct ReadError {
    /// What went wrong (names the store, never a value).
    message: String,
    /// The exit code it maps to.
    code: ExitCode,
}

impl ReadError {
    /// Vault's own classification: a login refused (77) or at a missing auth path (66) is
    /// not an internal error.
    fn vault(e: &VaultError) -> Self {
        Self {
            message: e.to_string(),
            code: e.exit_code(),
        }
    }
}

/// One policy's row.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
struct Row {
    /// The policy's name.
    policy: String,
    /// Where its credential lives (`vault-kv:secret/keyturn/orders-db`).
    store: String,
    /// The last rotation that completed or was given up.
    last_rotation: Option<LastRotation>,
    /// Seconds since the last successful rotation started (the age of CURRENT).
    current_age_seconds: Option<i64>,
    /// When the schedule next falls due (the Unix epoch when it never rotated: due now).
    next_due: Option<DateTime<Utc>>,
    /// When the daemon starts that slot, inside the window.
    next_start: Option<DateTime<Utc>>,
    /// The rotation in flight.
    in_flight: Option<InFlightJson>,
    /// Set by `break-glass reveal`.
    taint: Option<Taint>,
    /// The daemon's record of a run of failed attempts: how many, and when it retries.
    failures: Option<Failures>,
    /// Whether the last rotation failed.
    failed: bool,
    /// Why the state could not be read.
    error: Option<String>,
    /// Why a RotationPolicy object of this name yields no policy (`REASON: message`, as its
    /// status says, and `(held by HOLDER)` for a clash); the daemon does not manage it.
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
struct InFlightJson {
    rotation_id: String,
    step: &'static str,
    holder: String,
    started_at: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    lease_expired: bool,
    attempts: u32,
}

/// The row for `p` given its state (or why it could not be read), at `now`.
fn row(
    p: &Policy,
    store: String,
    state: Result<StateRecord, ReadError>,
    now: DateTime<Utc>,
) -> Row {
    let state = match state {
        Ok(s) => s,
        Err(e) => {
            return Row {
                error: Some(e.message),
                ..Row::blank(p.name.clone(), store)
            };
        }
    };
    let last_ok = state
        .last
        .as_ref()
        .filter(|l| l.outcome == "ok")
        .map(|l| l.started_at);
    // `None` for a schedule whose slots ran out: shown as "?", never a panic.
    let due = p.schedule.next_due(last_ok);
    Row {
        policy: p.name.clone(),
        store,
        last_rotation: state.last.clone(),
        current_age_seconds: last_ok.map(|t| (now - t).num_seconds()),
        next_due: due,
        next_start: due.and_then(|d| jittered(&p.name, d, p.window)),
        in_flight: state.in_flight.as_ref().map(|f| InFlightJson {
            rotation_id: f.rotation_id.clone(),
            step: f.step.as_str(),
            holder: f.holder.clone(),
            started_at: f.started_at,
            lease_until: f.lease_until,
            lease_expired: f.lease_until <= now,
            attempts: f.attempts,
        }),
        taint: state.taint.clone(),
        failures: state.failures.clone(),
        failed: state.last.as_ref().is_some_and(|l| l.outcome == "failed"),
        error: None,
        rejected: None,
    }
}

/// The row of a RotationPolicy object the daemon does not manage: named by its policy name
/// and object, with its status's reason and message (never a value written in it) and, for a
/// clash, the holder (this is an operator's command).
fn rejected_row(r: &Rejection) -> Row {
    Row {
        rejected: Some(r.in_full()),
        ..Row::blank(r.object.name.clone(), r.object.origin())
    }
}

impl Row {
    /// A row that knows nothing of the policy's state yet.
    fn blank(policy: String, store: String) -> Self {
        Self {
            policy,
            store,
            last_rotation: None,
            current_age_seconds: None,
            next_due: None,
            next_start: None,
            in_flight: None,
            taint: None,
            failures: None,
            failed: false,
            error: None,
            rejected: None,
        }
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The table's cells for one row.
fn cells(r: &Row, now: DateTime<Utc>) -> [String; 6] {
    let last = match &r.last_rotation {
        _ if r.rejected.is_some() => "-".to_owned(),
        _ if r.error.is_some() => "?".to_owned(),
        None => "never".to_owned(),
        Some(l) => format!("{} {}", time(l.started_at), l.outcome),
    };
    let age = r.current_age_seconds.map_or_else(|| "-".to_owned(), human);
    let due = match r.next_due {
        None if r.rejected.is_some() => "-".to_owned(),
        None => "?".to_owned(),
        Some(d) if d <= now => "now".to_owned(),
        Some(d) => time(d),
    };
    let mut notes = Vec::new();
    if let Some(why) = &r.rejected {
        notes.push(format!("not managed: {why}"));
    }
    if let Some(e) = &r.error {
        notes.push(format!("unreadable: {e}"));
    }
    if let Some(f) = &r.in_flight {
        let lease = if f.lease_expired {
            format!("lease expired {}", time(f.lease_until))
        } else {
            format!("lease until {}", time(f.lease_until))
        };
        notes.push(format!(
            "in flight: step {} held by {} (rotation {}, since {}, {lease})",
            f.step,
            f.holder,
            f.rotation_id,
            time(f.started_at)
        ));
    }
    if let Some(t) = &r.taint {
        notes.push(format!(
            "tainted (rotate after {}, by {})",
            time(t.rotate_after),
            t.by
        ));
    }
    if r.failed {
        notes.push("failed".to_owned());
    }
    if let Some(f) = &r.failures {
        let s = if f.count == 1 { "" } else { "s" };
        notes.push(format!(
            "backing off: {} failed attempt{s} in a row, next try {}",
            f.count,
            time(f.retry_at)
        ));
    }
    let notes = if notes.is_empty() {
        "-".to_owned()
    } else {
        notes.join("; ")
    };
    [r.policy.clone(), r.store.clone(), last, age, due, notes]
}

/// The rows as an aligned table with a header.
fn table(rows: &[Row], now: DateTime<Utc>) -> String {
    let header = [
        "POLICY",
        "STORE",
        "LAST ROTATION",
        "AGE",
        "NEXT DUE",
        "NOTES",
    ]
    .map(String::from);
    let body: Vec<[String; 6]> = rows.iter().map(|r| cells(r, now)).collect();
    let mut widths = [0usize; 6];
    for r in std::iter::once(&header).chain(&body) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(&body) {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(widths).enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(c);
                line.push_str(&" ".repeat(w - c.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The exit code for the rows: the most telling failure, in the order every command uses.
fn exit_code(codes: &[ExitCode]) -> ExitCode {
    most_telling(codes.iter().copied())
}

/// The policy files, or an empty set where `--rotationpolicies` makes them optional.
fn load_files(args: &StatusArgs) -> Result<Vec<Policy>, ExitCode> {
    let loaded = match (&args.policies, &args.objects.rotationpolicies) {
        (Some(path), None) => policy::load(path),
        (Some(path), Some(_)) => policy::load_or_empty(path),
        (None, Some(_)) => return Ok(Vec::new()),
        (None, None) => {
            eprintln!(
                "keyturn: --policies (or KEYTURN_POLICIES) is required: the policy file or directory (or --rotationpolicies all|NAMESPACE for RotationPolicy objects)"
            );
            return Err(ExitCode::Usage);
        }
    };
    loaded.map_err(|e| {
        eprintln!("{e}");
        ExitCode::Usage
    })
}

/// Runs the subcommand; returns the exit code.
#[must_use]
pub fn run(args: StatusArgs) -> ExitCode {
    let files = match load_files(&args) {
        Ok(files) => files,
        Err(code) => return code,
    };
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    // With `--rotationpolicies`, the objects in scope (one paged LIST), merged with the files
    // as the daemon merges them: files win a name or store clash, then the oldest object.
    let (policies, rejected) = match &args.objects.rotationpolicies {
        None => (files, Vec::new()),
        Some(scope) => {
            let listed = match rt.block_on(args.objects.list(scope, "list the policies")) {
                Ok(listed) => listed,
                Err(code) => return code,
            };
            let merged = kube_source::merge(&files, &listed);
            let policies: Vec<Policy> = merged
                .policies
                .values()
                .filter_map(|p| p.as_deref().cloned())
                .collect();
            (policies, merged.rejected)
        }
    };
    let uses_vault = policies
        .iter()
        .any(|p| matches!(p.store, StoreSpec::VaultKv(_)));
    let vault_setup = if uses_vault {
        match args.vault.prepare() {
            Ok(x) => Some(x),
            Err(e) => {
                eprintln!("keyturn: {e}");
                return ExitCode::Usage;
            }
        }
    } else {
        None
    };
    rt.block_on(async move {
        // A short retry: status is for a person waiting at a terminal.
        let retry = RetryPolicy {
            max_retries: 2,
            ..RetryPolicy::default()
        };
        let vault: Option<Result<Arc<Vault>, ReadError>> = match vault_setup {
            None => None,
            Some((mut cfg, method)) => {
                cfg.request_timeout = std::time::Duration::from_secs(10);
                let login = async {
                    let mut v = Vault::connect(&cfg)?.with_retry(retry);
                    v.login(method.as_ref()).await?;
                    Ok::<_, VaultError>(Arc::new(v))
                };
                Some(login.await.map_err(|e| ReadError::vault(&e)))
            }
        };
        let aws = if Backends::needs_aws(&policies) {
            Some(aws_sm::client_from_env(None).await)
        } else {
            None
        };
        let mut set = tokio::task::JoinSet::new();
        let limit = Arc::new(tokio::sync::Semaphore::new(16));
        for (i, p) in policies.iter().enumerate() {
            let (name, store, vault, aws, limit) = (
                p.name.clone(),
                p.store.clone(),
                vault.clone(),
                aws.clone(),
                limit.clone(),
            );
            set.spawn(async move {
                let _permit = limit.acquire_owned().await;
                (i, read_state(&name, &store, vault, aws).await)
            });
        }
        let mut states: Vec<Option<Result<StateRecord, ReadError>>> = vec![None; policies.len()];
        while let Some(r) = set.join_next().await {
            if let Ok((i, s)) = r {
                states[i] = Some(s);
            }
        }
        let now = Utc::now();
        let mut codes = Vec::new();
        let mut rows: Vec<Row> = policies
            .iter()
            .zip(states)
            .map(|(p, s)| {
                let s = s.unwrap_or_else(|| {
                    Err(ReadError {
                        message: "internal error reading the state".to_owned(),
                        code: ExitCode::Software,
                    })
                });
                if let Err(e) = &s {
                    codes.push(e.code);
                }
                row(p, p.store.to_string(), s, now)
            })
            .collect();
        for r in &rejected {
            codes.push(ExitCode::Usage);
            rows.push(rejected_row(r));
        }
        if args.json {
            let doc = serde_json::json!({ "now": now, "policies": rows });
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        } else {
            print!("{}", table(&rows, now));
        }
        exit_code(&codes)
    })
}

/// Reads the rotation state (no credential) of the store at `r`, through the store itself.
async fn read_state(
    name: &str,
    r: &StoreSpec,
    vault: Option<Result<Arc<Vault>, ReadError>>,
    aws: Option<aws_sm::sdk::Client>,
) -> Result<StateRecord, ReadError> {
    let vault = match vault {
        Some(v) => Some(v?),
        None => None,
    };
    let backends = Backends {
        vault,
        aws,
        ..Backends::default()
    };
    let store = backends.store_at(name, r).map_err(|e| ReadError {
        message: e.to_string(),
        code: ExitCode::Software,
    })?;
    store.state().await.map_err(|e| ReadError {
        code: e.exit_code(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use crate::rotation::store::LastRotation;

    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn policy() -> Policy {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        std::fs::write(
            &f,
            "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: { name: api }\nspec:\n  every: 24h\n  store: { vault-kv: { path: keyturn/api } }\n  target: { generated: {} }\n",
        )
        .unwrap();
        policy::load(&f).unwrap().remove(0)
    }

    #[test]
    fn a_never_rotated_policy_says_never_and_is_due_now() {
        let now = t("2025-03-01T12:00:00Z");
        let r = row(
            &policy(),
            "vault-kv:secret/keyturn/api".into(),
            Ok(StateRecord::default()),
            now,
        );
        let c = cells(&r, now);
        assert_eq!(c[2], "never");
        assert_eq!(c[3], "-");
        assert_eq!(c[4], "now");
        assert_eq!(c[5], "-");
    }

    #[test]
    fn a_failed_last_rotation_is_flagged_and_due_at_once() {
        let now = t("2025-03-01T12:00:00Z");
        let s = StateRecord {
            last: Some(LastRotation {
                rotation_id: "r".into(),
                started_at: t("2025-03-01T11:00:00Z"),
                outcome: "failed".into(),
            }),
            ..StateRecord::default()
        };
        let r = row(&policy(), "x".into(), Ok(s), now);
        assert!(r.failed);
        let c = cells(&r, now);
        assert_eq!(c[2], "2025-03-01T11:00:00Z failed");
        assert_eq!(c[4], "now");
        assert_eq!(c[5], "failed");
    }

    #[test]
    fn a_run_of_failures_shows_the_backoff_and_the_next_try() {
        let now = t("2025-03-01T12:00:00Z");
        let s = StateRecord {
            failures: Some(Failures {
                count: 3,
                last_at: t("2025-03-01T11:58:00Z"),
                retry_at: t("2025-03-01T12:02:00Z"),
            }),
            ..StateRecord::default()
        };
        let r = row(&policy(), "x".into(), Ok(s), now);
        assert_eq!(
            cells(&r, now)[5],
            "backing off: 3 failed attempts in a row, next try 2025-03-01T12:02:00Z"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["failures"]["count"], 3);
    }

    #[test]
    fn a_denial_outranks_an_unreachable_store_as_in_keyturn_init() {
        assert_eq!(exit_code(&[]), 0);
        // This was 69: status ranked an outage first, keyturn-init a denial.
        assert_eq!(
            exit_code(&[ExitCode::NoPermission, ExitCode::Unavailable]),
            77
        );
        assert_eq!(exit_code(&[ExitCode::Unavailable, ExitCode::Software]), 69);
        assert_eq!(exit_code(&[ExitCode::Software, ExitCode::NoPermission]), 77);
    }

    #[test]
    fn a_login_vault_refused_keeps_vaults_code() {
        let e = VaultError::PermissionDenied {
            op: "login",
            path: "auth/kubernetes/login".into(),
        };
        assert_eq!(ReadError::vault(&e).code, 77);
        let e = VaultError::NotFound {
            op: "login",
            path: "auth/nope/login".into(),
        };
        // This was 70: every code but 69 and 77 became "internal".
        assert_eq!(ReadError::vault(&e).code, 66);
    }

    #[test]
    fn an_object_not_managed_is_a_row_saying_why() {
        let now = t("2025-03-01T12:00:00Z");
        let r = rejected_row(&Rejection {
            object: crate::policy::PolicyObject {
                namespace: "shop".into(),
                name: "db".into(),
                uid: None,
                generation: Some(2),
            },
            reason: kube_source::RejectReason::InvalidSpec,
            message: "spec.timezone: unknown time zone".into(),
            held_by: None,
        });
        let cells = cells(&r, now);
        assert_eq!(cells[0], "db");
        assert_eq!(cells[1], "rotationpolicy/shop/db");
        assert_eq!(
            cells[2..],
            [
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "not managed: InvalidSpec: spec.timezone: unknown time zone".to_owned()
            ]
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["rejected"],
            "InvalidSpec: spec.timezone: unknown time zone"
        );
        // A row read from a store has no `rejected` key at all.
        let read = row(&policy(), "s".into(), Ok(StateRecord::default()), now);
        assert!(
            serde_json::to_value(&read)
                .unwrap()
                .get("rejected")
                .is_none()
        );
    }

    #[test]
    fn the_table_aligns_its_columns() {
        let now = t("2025-03-01T12:00:00Z");
        let r = row(
            &policy(),
            "vault-kv:secret/keyturn/api".into(),
            Ok(StateRecord::default()),
            now,
        );
        let out = table(&[r], now);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].find("STORE"), lines[1].find("vault-kv:"));
    }
}

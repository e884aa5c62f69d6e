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
//! Exit codes: 0; 64 for an invalid policy set or Vault configuration (before any network
//! call); 69 when a store could not be reached (the other rows are still printed), 77 when
//! one refused the read, 70 when a state entry is unreadable.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::Args;
use keyturn_core::vault::{RetryPolicy, SecretData, Vault, VaultError};
use serde::{Deserialize, Serialize};

use super::doctor::human;
use super::exit;
use super::vault_args::VaultArgs;
use crate::backends::Backends;
use crate::policy::{self, Policy, StoreRef};
use crate::rotation::store::aws_sm;
use crate::rotation::store::vault_kv::STATE_PREFIX;
use crate::rotation::store::{InFlight, LastRotation, StateRecord, Step, Taint};
use crate::schedule::jittered;

/// `keyturn status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A policy file or a directory of them.
    #[arg(long, env = "KEYTURN_POLICIES", value_name = "PATH")]
    pub policies: std::path::PathBuf,
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
    code: u8,
}

impl ReadError {
    fn vault(e: &VaultError) -> Self {
        let code = match e.exit_code() {
            69 => exit::UNAVAILABLE,
            77 => exit::NO_PERMISSION,
            _ => exit::SOFTWARE,
        };
        Self {
            message: e.to_string(),
            code,
        }
    }

    fn corrupt(store: &str, what: impl std::fmt::Display) -> Self {
        Self {
            message: format!("{store}: corrupt rotation state: {what}"),
            code: exit::SOFTWARE,
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
    last_rotation: Option<LastJson>,
    /// Seconds since the last successful rotation started (the age of CURRENT).
    current_age_seconds: Option<i64>,
    /// When the schedule next falls due (the Unix epoch when it never rotated: due now).
    next_due: Option<DateTime<Utc>>,
    /// When the daemon starts that slot, inside the window.
    next_start: Option<DateTime<Utc>>,
    /// The rotation in flight.
    in_flight: Option<InFlightJson>,
    /// Set by `break-glass reveal`.
    taint: Option<TaintJson>,
    /// Whether the last rotation failed.
    failed: bool,
    /// Why the state could not be read.
    error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
struct LastJson {
    rotation_id: String,
    started_at: DateTime<Utc>,
    outcome: String,
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

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
struct TaintJson {
    at: DateTime<Utc>,
    rotate_after: DateTime<Utc>,
    by: String,
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
                policy: p.name.clone(),
                store,
                last_rotation: None,
                current_age_seconds: None,
                next_due: None,
                next_start: None,
                in_flight: None,
                taint: None,
                failed: false,
                error: Some(e.message),
            };
        }
    };
    let last_ok = state
        .last
        .as_ref()
        .filter(|l| l.outcome == "ok")
        .map(|l| l.started_at);
    let due = p.schedule.next_due(last_ok, now);
    Row {
        policy: p.name.clone(),
        store,
        last_rotation: state.last.as_ref().map(|l| LastJson {
            rotation_id: l.rotation_id.clone(),
            started_at: l.started_at,
            outcome: l.outcome.clone(),
        }),
        current_age_seconds: last_ok.map(|t| (now - t).num_seconds()),
        next_due: Some(due),
        next_start: Some(jittered(&p.name, due, p.window)),
        in_flight: state.in_flight.as_ref().map(|f| InFlightJson {
            rotation_id: f.rotation_id.clone(),
            step: f.step.as_str(),
            holder: f.holder.clone(),
            started_at: f.started_at,
            lease_until: f.lease_until,
            lease_expired: f.lease_until <= now,
            attempts: f.attempts,
        }),
        taint: state.taint.as_ref().map(|t| TaintJson {
            at: t.at,
            rotate_after: t.rotate_after,
            by: t.by.clone(),
        }),
        failed: state.last.as_ref().is_some_and(|l| l.outcome == "failed"),
        error: None,
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The table's cells for one row.
fn cells(r: &Row, now: DateTime<Utc>) -> [String; 6] {
    let last = match &r.last_rotation {
        _ if r.error.is_some() => "?".to_owned(),
        None => "never".to_owned(),
        Some(l) => format!("{} {}", time(l.started_at), l.outcome),
    };
    let age = r.current_age_seconds.map_or_else(|| "-".to_owned(), human);
    let due = match r.next_due {
        None => "?".to_owned(),
        Some(d) if d <= now => "now".to_owned(),
        Some(d) => time(d),
    };
    let mut notes = Vec::new();
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

/// The exit code for the rows: the most telling failure, unreachable first.
fn exit_code(codes: &[u8]) -> u8 {
    [exit::UNAVAILABLE, exit::NO_PERMISSION, exit::SOFTWARE]
        .into_iter()
        .find(|c| codes.contains(c))
        .unwrap_or(exit::OK)
}

/// Runs the subcommand; returns the exit code.
#[must_use]
pub fn run(args: StatusArgs) -> u8 {
    let policies = match policy::load(&args.policies) {
        Ok(ps) => ps,
        Err(e) => {
            eprintln!("{e}");
            return exit::USAGE;
        }
    };
    let uses_vault = policies
        .iter()
        .any(|p| matches!(p.store, StoreRef::VaultKv { .. }));
    let vault_setup = if uses_vault {
        match args.vault.prepare() {
            Ok(x) => Some(x),
            Err(e) => {
                eprintln!("keyturn: {e}");
                return exit::USAGE;
            }
        }
    } else {
        None
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyturn: cannot start runtime: {e}");
            return exit::SOFTWARE;
        }
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
            let (store, vault, aws, limit) =
                (p.store.clone(), vault.clone(), aws.clone(), limit.clone());
            set.spawn(async move {
                let _permit = limit.acquire_owned().await;
                (i, read_state(&store, vault, aws).await)
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
        let rows: Vec<Row> = policies
            .iter()
            .zip(states)
            .map(|(p, s)| {
                let s = s.unwrap_or_else(|| {
                    Err(ReadError {
                        message: "internal error reading the state".to_owned(),
                        code: exit::SOFTWARE,
                    })
                });
                if let Err(e) = &s {
                    codes.push(e.code);
                }
                row(p, p.store.to_string(), s, now)
            })
            .collect();
        if args.json {
            let doc = serde_json::json!({ "now": now, "policies": rows });
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        } else {
            print!("{}", table(&rows, now));
        }
        exit_code(&codes)
    })
}

/// Reads the rotation state (no credential) of the store at `r`.
async fn read_state(
    r: &StoreRef,
    vault: Option<Result<Arc<Vault>, ReadError>>,
    aws: Option<aws_sm::sdk::Client>,
) -> Result<StateRecord, ReadError> {
    match r {
        StoreRef::VaultKv { mount, path } => {
            let vault = vault.ok_or_else(|| ReadError {
                message: "Vault is not configured".to_owned(),
                code: exit::SOFTWARE,
            })??;
            let state_path = format!("{STATE_PREFIX}/{}", path.trim_matches('/'));
            match vault.kv2_read(mount, &state_path, None).await {
                Ok(v) => parse_vault_state(&r.to_string(), &v.data),
                Err(VaultError::NotFound { .. }) => Ok(StateRecord::default()),
                Err(e) => Err(ReadError::vault(&e)),
            }
        }
        StoreRef::AwsSecretsManager { secret_id, region } => {
            let client = aws.ok_or_else(|| ReadError {
                message: "AWS Secrets Manager is not configured".to_owned(),
                code: exit::SOFTWARE,
            })?;
            let client = match region {
                Some(reg) => aws_sm::with_region(&client, reg),
                None => client,
            };
            read_aws_state(
                &client,
                &r.to_string(),
                &aws_sm::default_state_id(secret_id),
            )
            .await
        }
    }
}

/// The Vault KV state entry's fields (see `rotation::store::vault_kv`), without the
/// `pending.*` value fields.
fn parse_vault_state(store: &str, d: &SecretData) -> Result<StateRecord, ReadError> {
    let text = |k: &str| -> Result<Option<String>, ReadError> {
        d.get(k)
            .map(|v| {
                v.expose_str()
                    .map(str::to_owned)
                    .map_err(|_| ReadError::corrupt(store, format!("{k} is not text")))
            })
            .transpose()
    };
    let at = |k: &str| -> Result<Option<DateTime<Utc>>, ReadError> {
        text(k)?
            .map(|s| {
                DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| ReadError::corrupt(store, format!("{k} is not an RFC 3339 time")))
            })
            .transpose()
    };
    let last = match (
        text("last_rotation_id")?,
        at("last_started_at")?,
        text("last_outcome")?,
    ) {
        (Some(rotation_id), Some(started_at), Some(outcome)) => Some(LastRotation {
            rotation_id,
            started_at,
            outcome,
        }),
        _ => None,
    };
    let in_flight = match text("rotation_id")? {
        None => None,
        Some(rotation_id) => Some(InFlight {
            rotation_id,
            step: text("step")?
                .and_then(|s| Step::parse(&s))
                .ok_or_else(|| ReadError::corrupt(store, "missing or unknown step"))?,
            pending: SecretData::new(),
            started_at: at("started_at")?
                .ok_or_else(|| ReadError::corrupt(store, "missing started_at"))?,
            holder: text("holder")?.unwrap_or_default(),
            lease_until: at("lease_until")?.unwrap_or(DateTime::<Utc>::MIN_UTC),
            attempts: text("attempts")?.and_then(|a| a.parse().ok()).unwrap_or(0),
        }),
    };
    let taint = match (
        at("taint_at")?,
        at("taint_rotate_after")?,
        text("taint_by")?,
    ) {
        (Some(at), Some(rotate_after), Some(by)) => Some(Taint {
            at,
            rotate_after,
            by,
        }),
        _ => None,
    };
    Ok(StateRecord {
        in_flight,
        last,
        taint,
    })
}

/// The AWS state secret's JSON (see `rotation::store::aws_sm`): ids, steps and times only.
#[derive(Deserialize)]
struct AwsStateDoc {
    #[serde(default)]
    in_flight: Option<AwsInFlight>,
    #[serde(default)]
    last: Option<AwsLast>,
    #[serde(default)]
    taint: Option<AwsTaint>,
}

#[derive(Deserialize)]
struct AwsInFlight {
    rotation_id: String,
    step: String,
    holder: String,
    lease_until: DateTime<Utc>,
    started_at: DateTime<Utc>,
    attempts: u32,
}

#[derive(Deserialize)]
struct AwsLast {
    rotation_id: String,
    started_at: DateTime<Utc>,
    outcome: String,
}

#[derive(Deserialize)]
struct AwsTaint {
    at: DateTime<Utc>,
    rotate_after: DateTime<Utc>,
    by: String,
}

async fn read_aws_state(
    client: &aws_sm::sdk::Client,
    store: &str,
    state_id: &str,
) -> Result<StateRecord, ReadError> {
    use aws_sm::sdk::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
    let out = match client
        .get_secret_value()
        .secret_id(state_id)
        .version_stage("AWSCURRENT")
        .send()
        .await
    {
        Ok(o) => o,
        Err(SdkError::ServiceError(se)) => {
            let code = se.err().code().unwrap_or("UnknownError");
            if code == "ResourceNotFoundException" {
                return Ok(StateRecord::default());
            }
            let status = se.raw().status().as_u16();
            return Err(ReadError {
                message: format!(
                    "{store}: GetSecretValue {state_id}: {code}: {}",
                    se.err().message().unwrap_or_default()
                ),
                code: if status >= 500 || status == 429 {
                    exit::UNAVAILABLE
                } else if code == "AccessDeniedException" {
                    exit::NO_PERMISSION
                } else {
                    exit::SOFTWARE
                },
            });
        }
        Err(e) => {
            return Err(ReadError {
                message: format!(
                    "{store}: GetSecretValue {state_id}: {}",
                    DisplayErrorContext(&e)
                ),
                code: exit::UNAVAILABLE,
            });
        }
    };
    let doc: AwsStateDoc = serde_json::from_str(out.secret_string().unwrap_or("{}"))
        .map_err(|e| ReadError::corrupt(store, format!("state secret {state_id}: {e}")))?;
    let in_flight = doc
        .in_flight
        .map(|f| {
            Ok::<_, ReadError>(InFlight {
                step: Step::parse(&f.step).ok_or_else(|| {
                    ReadError::corrupt(store, format!("unknown step {:?}", f.step))
                })?,
                rotation_id: f.rotation_id,
                pending: SecretData::new(),
                started_at: f.started_at,
                holder: f.holder,
                lease_until: f.lease_until,
                attempts: f.attempts,
            })
        })
        .transpose()?;
    Ok(StateRecord {
        in_flight,
        last: doc.last.map(|l| LastRotation {
            rotation_id: l.rotation_id,
            started_at: l.started_at,
            outcome: l.outcome,
        }),
        taint: doc.taint.map(|t| Taint {
            at: t.at,
            rotate_after: t.rotate_after,
            by: t.by,
        }),
    })
}

#[cfg(test)]
mod tests {
    use keyturn_core::SecretValue;

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

    fn data(fields: &[(&str, &str)]) -> SecretData {
        let mut d = SecretData::new();
        for (k, v) in fields {
            d.insert(*k, SecretValue::from_str_copy(v));
        }
        d
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
    fn the_vault_state_entry_reads_without_its_pending_value() {
        let d = data(&[
            ("last_rotation_id", "r1"),
            ("last_started_at", "2025-03-01T10:00:00+00:00"),
            ("last_outcome", "ok"),
            ("rotation_id", "r2"),
            ("step", "set"),
            ("holder", "agent-1"),
            ("lease_until", "2025-03-01T12:05:00+00:00"),
            ("started_at", "2025-03-01T11:59:00+00:00"),
            ("attempts", "1"),
            ("pending.value", "KTCANARY-pending"),
            ("taint_at", "2025-03-01T09:00:00+00:00"),
            ("taint_rotate_after", "2025-03-01T09:15:00+00:00"),
            ("taint_by", "alice"),
        ]);
        let s = parse_vault_state("vault-kv:secret/keyturn/api", &d).unwrap();
        let f = s.in_flight.as_ref().unwrap();
        assert!(f.pending.is_empty());
        assert_eq!(f.step, Step::Set);
        let now = t("2025-03-01T12:00:00Z");
        let r = row(&policy(), "vault-kv:secret/keyturn/api".into(), Ok(s), now);
        assert_eq!(r.current_age_seconds, Some(7200));
        assert_eq!(r.next_due, Some(t("2025-03-02T10:00:00Z")));
        let c = cells(&r, now);
        assert_eq!(c[2], "2025-03-01T10:00:00Z ok");
        assert_eq!(c[3], "2h");
        assert_eq!(c[4], "2025-03-02T10:00:00Z");
        assert!(
            c[5].contains("in flight: step set held by agent-1"),
            "{}",
            c[5]
        );
        assert!(
            c[5].contains("tainted (rotate after 2025-03-01T09:15:00Z, by alice)"),
            "{}",
            c[5]
        );
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains("KTCANARY"), "{json}");
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
    fn an_unreachable_store_maps_to_69_before_a_denial() {
        assert_eq!(exit_code(&[]), 0);
        assert_eq!(exit_code(&[exit::NO_PERMISSION, exit::UNAVAILABLE]), 69);
        assert_eq!(exit_code(&[exit::SOFTWARE, exit::NO_PERMISSION]), 77);
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

//! `keyturn break-glass rotate|revoke|reveal POLICY --reason TEXT`: the on-call engineer's
//! emergency commands for a leaked or stuck credential.
//!
//! Rules for all three: a reason is mandatory; confirm interactively or pass `--yes`; the
//! identity is the operator's own Vault token (`VAULT_TOKEN` or `~/.vault-token`), whose
//! display name and entity go into every audit record; a `break-glass.<action>` event is
//! written before acting (fail closed) and another with the outcome (`denied` when Vault or
//! AWS refused the operator's token, `error` for any other failure; `reveal` writes its
//! intent before it reads CURRENT, so a refused read is on record too, and a second intent
//! carrying the value's HMAC before it shows the value). They run through the same engine
//! and compare-and-set fence as the daemon, so they never rotate a policy at the same time
//! as it: a live holder's rotation is waited for, an expired one taken over.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use clap::{Args, Subcommand};
use keyturn_core::SecretValue;
use keyturn_core::audit::{Actor, AuditLog, Outcome};
use keyturn_core::vault::{SecretData, Vault};

use super::exit::{ExitCode, HasExitCode};
use super::rotation_args::{PolicyObjectArgs, Prepared, RotationArgs};
use crate::journal::{DEFAULT_JOURNAL, Journal};
use crate::policy::Policy;
use crate::rotation::store::{StateRecord, Store, StoreError, Taint};
use crate::rotation::{Engine, RotationOutcome, Trigger};

/// The emergency commands.
#[derive(Debug, Subcommand)]
pub enum BreakGlassCommand {
    /// Rotate now, ignoring schedule and window; take over a stuck rotation.
    Rotate(Common),
    /// Make the current value useless now: rotate, and with alternating users also reset the
    /// standby user; optionally revoke Vault leases under a prefix.
    Revoke(RevokeArgs),
    /// Print the current value once, to a terminal only, and have it rotated after a TTL.
    Reveal(RevealArgs),
}

/// What every break-glass command takes.
#[derive(Debug, Args)]
pub struct Common {
    /// The policy's `metadata.name`.
    pub policy: String,
    /// Why (mandatory; recorded in the audit log).
    #[arg(long)]
    pub reason: String,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// How long to wait for a rotation held by a live process before giving up (exit 75).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub wait: Duration,
    /// Where the daemon learns of break-glass actions (KV v2 `MOUNT/PATH`).
    #[arg(long, env = "KEYTURN_BREAK_GLASS_JOURNAL", default_value = DEFAULT_JOURNAL)]
    pub journal: String,
    /// Where else the policy may be: RotationPolicy objects.
    #[command(flatten)]
    pub objects: PolicyObjectArgs,
    /// Shared options (policies, Vault, audit).
    #[command(flatten)]
    pub common: RotationArgs,
}

/// `break-glass revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// Shared options.
    #[command(flatten)]
    pub c: Common,
    /// Also revoke every Vault lease under this prefix (dynamic credentials, e.g.
    /// `database/creds/orders`).
    #[arg(long, value_name = "PREFIX")]
    pub lease_prefix: Option<String>,
}

/// `break-glass reveal`.
#[derive(Debug, Args)]
pub struct RevealArgs {
    /// Shared options.
    #[command(flatten)]
    pub c: Common,
    /// Rotate the revealed value this long after now.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Write the value to this new file (mode 0400) instead of the terminal.
    #[arg(long, value_name = "PATH")]
    pub to_file: Option<PathBuf>,
}

/// Runs the subcommand; returns the exit code.
#[must_use]
pub fn run(cmd: BreakGlassCommand) -> ExitCode {
    let (action, c) = match &cmd {
        BreakGlassCommand::Rotate(c) => ("rotate", c),
        BreakGlassCommand::Revoke(a) => ("revoke", &a.c),
        BreakGlassCommand::Reveal(a) => ("reveal", &a.c),
    };
    // Everything checkable without a network call, first.
    if c.reason.trim().is_empty() {
        eprintln!("keyturn: --reason must say why (it goes into the audit log); nothing was done");
        return ExitCode::Usage;
    }
    let journal = match Journal::parse(&c.journal) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("keyturn: {e}");
            return ExitCode::Usage;
        }
    };
    if let BreakGlassCommand::Reveal(RevealArgs {
        to_file: Some(path),
        ..
    }) = &cmd
        && std::fs::symlink_metadata(path).is_ok()
    {
        eprintln!(
            "keyturn: {} exists; --to-file only creates a new file; nothing was done",
            path.display()
        );
        return ExitCode::Usage;
    }
    if let BreakGlassCommand::Reveal(a) = &cmd
        && a.to_file.is_none()
        && !std::io::stdout().is_terminal()
    {
        eprintln!(
            "keyturn: refusing to reveal a secret into a pipe or file; run it on a terminal, or pass --to-file PATH (created with mode 0400); nothing was done"
        );
        return ExitCode::Usage;
    }
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    // The policy is found before the operator is asked to confirm acting on it (with
    // `--rotationpolicies`, after listing the objects; else with no network call).
    let policies = match rt.block_on(c.common.find_named(&c.policy, &c.objects)) {
        Ok(ps) => ps,
        Err(code) => return code,
    };
    if !c.yes && !confirm(action, c, &cmd) {
        return if std::io::stdin().is_terminal() {
            eprintln!("keyturn: not confirmed; nothing was done");
            ExitCode::Failed
        } else {
            eprintln!(
                "keyturn: confirmation needed: stdin is not a terminal, pass --yes; nothing was done"
            );
            ExitCode::Usage
        };
    }
    rt.block_on(async {
        let p = match c.common.prepare_with(policies).await {
            Ok(p) => p,
            Err(code) => return code,
        };
        // `prepare_with` has logged in to Vault: no Vault now is a bug, not usage.
        let Some(vault) = p.backends.vault.clone() else {
            return ExitCode::Software;
        };
        let who = match vault.lookup_self().await {
            Ok(t) => t,
            Err(e) => {
                eprintln!("keyturn: {e}");
                return e.exit_code();
            }
        };
        let name = if who.display_name.is_empty() {
            "token".to_owned()
        } else {
            who.display_name.clone()
        };
        let mut actor = Actor::operator(name.clone());
        if !who.entity_id.is_empty() {
            actor = actor.with_entity(who.entity_id.clone());
        }
        let host = super::host_name();
        let holder = format!("break-glass:{name}@{host}");
        let by = name.clone();
        let engine = p.engine.clone().acting_as(actor.clone(), holder);
        let ctx = Ctx {
            p: &p,
            engine,
            actor,
            by,
            vault,
            journal,
            action,
            c,
        };
        match &cmd {
            BreakGlassCommand::Rotate(_) => ctx.rotate(None).await,
            BreakGlassCommand::Revoke(a) => ctx.rotate(Some(a.lease_prefix.as_deref())).await,
            BreakGlassCommand::Reveal(a) => ctx.reveal(a).await,
        }
    })
}

/// Asks on the terminal; `false` when there is none or the answer is not the policy name.
fn confirm(action: &str, c: &Common, cmd: &BreakGlassCommand) -> bool {
    if !std::io::stdin().is_terminal() {
        return false;
    }
    let what = match cmd {
        BreakGlassCommand::Rotate(_) => "rotate its credential now, ignoring the schedule".into(),
        BreakGlassCommand::Revoke(_) => {
            "rotate it now and invalidate every earlier value (no grace period: apps still using the old value will fail)".into()
        }
        BreakGlassCommand::Reveal(a) => format!(
            "show its current value once and rotate it in {}",
            humantime::format_duration(a.ttl)
        ),
    };
    eprint!(
        "break-glass {action} of policy {:?}: this will {what}.\nReason: {}\nType the policy name to confirm: ",
        c.policy, c.reason
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).is_ok() && line.trim() == c.policy
}

struct Ctx<'a> {
    p: &'a Prepared,
    engine: Engine,
    actor: Actor,
    by: String,
    vault: Arc<Vault>,
    journal: Journal,
    action: &'static str,
    c: &'a Common,
}

impl Ctx<'_> {
    fn policy(&self) -> &Policy {
        self.p
            .policies
            .iter()
            .find(|p| p.name == self.c.policy)
            .expect("checked before")
    }

    fn audit(&self) -> &AuditLog {
        &self.p.audit
    }

    async fn event(&self, outcome: Outcome, detail: Option<String>) -> Result<(), ExitCode> {
        self.event_about(outcome, detail, None).await
    }

    /// An event that also carries `value`'s HMAC, so `audit search --value-hmac` finds it.
    /// When the log refuses it, the exit code to leave with (the audit error's own: 77 for a
    /// file the system denies, 74 for other I/O).
    async fn event_about(
        &self,
        outcome: Outcome,
        detail: Option<String>,
        value: Option<&SecretValue>,
    ) -> Result<(), ExitCode> {
        let mut b = self
            .audit()
            .event(
                self.actor.clone(),
                format!("break-glass.{}", self.action),
                format!("policy/{}", self.c.policy),
            )
            .outcome(outcome)
            .reason(self.c.reason.clone());
        if let Some(d) = detail {
            b = b.detail(d);
        }
        if let Some(v) = value {
            b = b.value(v);
        }
        match self.audit().record(b.build()).await {
            Ok(_) => Ok(()),
            Err(e) => {
                eprintln!("keyturn: audit log refused the event, so nothing was done: {e}");
                Err(e.exit_code())
            }
        }
    }

    async fn note_in_journal(&self, rotate_after: Option<chrono::DateTime<Utc>>) {
        if let Err(e) = self
            .journal
            .append(&self.vault, &self.c.policy, self.action, rotate_after)
            .await
        {
            // The audit log is the record; the journal only tells a running daemon sooner.
            tracing::warn!(error = %e, "could not note the action in the break-glass journal; a running daemon learns of it at its next start");
        }
    }

    /// `rotate` (`revoke = None`) and `revoke` (`Some(lease prefix)`).
    async fn rotate(&self, revoke: Option<Option<&str>>) -> ExitCode {
        let policy = self.policy();
        let (store, target) = match (
            self.p.backends.store(policy),
            self.p.backends.target(policy).await,
        ) {
            (Ok(s), Ok(t)) => (s, t),
            // `prepare_with` built every backend a policy names (after calling Vault).
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("keyturn: {e}");
                return ExitCode::Software;
            }
        };
        if let Err(code) = self.event(Outcome::Started, None).await {
            return code;
        }
        let deadline = tokio::time::Instant::now() + self.c.wait;
        let trigger = Trigger::Manual {
            reason: Some(format!("break-glass {}: {}", self.action, self.c.reason)),
        };
        // Until a rotation this command started itself completes: a resumed one (taken over
        // from a dead holder) finishes someone else's value, so one more follows.
        let rotation_id = loop {
            match self
                .engine
                .rotate(policy, store.as_ref(), target.as_ref(), &trigger)
                .await
            {
                Ok(RotationOutcome::Rotated {
                    rotation_id,
                    resumed: false,
                    ..
                }) => break rotation_id,
                Ok(
                    RotationOutcome::Rotated { resumed: true, .. } | RotationOutcome::AlreadyDone,
                ) => {}
                Ok(RotationOutcome::Busy { holder }) => {
                    if tokio::time::Instant::now() >= deadline {
                        eprintln!(
                            "keyturn: policy {} is being rotated by {holder}, whose lease has not run out; waited {}; nothing was done",
                            policy.name,
                            humantime::format_duration(self.c.wait)
                        );
                        let _ = self
                            .event(Outcome::Error, Some(format!("busy: held by {holder}")))
                            .await;
                        return ExitCode::Busy;
                    }
                    tracing::info!(%holder, "waiting for the rotation in flight to finish");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok(RotationOutcome::Failed { rotation_id, error }) => {
                    eprintln!(
                        "keyturn: rotation {rotation_id} of {} failed and was rolled back: {error}",
                        policy.name
                    );
                    let _ = self.event(Outcome::Error, Some(error)).await;
                    return ExitCode::Failed;
                }
                Err(e) => {
                    eprintln!("keyturn: {e}");
                    let code = e.exit_code();
                    let _ = self.event(outcome_for(code), Some(e.to_string())).await;
                    return code;
                }
            }
        };
        let mut done = vec![format!("rotated (rotation {rotation_id})")];
        if let Some(lease_prefix) = revoke {
            let current = match store.view().await {
                Ok(v) => v.current.map(|c| c.fields).unwrap_or_else(SecretData::new),
                Err(e) => return self.fail(&format!("{e}"), e.exit_code()).await,
            };
            match target.invalidate_others(&current).await {
                Ok(Some(what)) => done.push(what),
                Ok(None) => {}
                Err(e) => return self.fail(&format!("{e}"), ExitCode::Failed).await,
            }
            if let Some(prefix) = lease_prefix {
                match self.vault.revoke_lease_prefix(prefix).await {
                    Ok(()) => done.push(format!("leases under {prefix} revoked")),
                    Err(e) => {
                        let code = e.exit_code();
                        return self.fail(&e.to_string(), code).await;
                    }
                }
            }
        }
        let summary = done.join("; ");
        if let Err(code) = self.event(Outcome::Ok, Some(summary.clone())).await {
            return code;
        }
        self.note_in_journal(None).await;
        println!("break-glass {} of {}: {summary}", self.action, policy.name);
        ExitCode::Ok
    }

    async fn fail(&self, error: &str, code: ExitCode) -> ExitCode {
        eprintln!(
            "keyturn: break-glass {} of {}: {error}",
            self.action, self.c.policy
        );
        let _ = self.event(outcome_for(code), Some(error.to_owned())).await;
        code
    }

    async fn reveal(&self, a: &RevealArgs) -> ExitCode {
        let policy = self.policy();
        let store = match self.p.backends.store(policy) {
            Ok(s) => s,
            // Built by `prepare_with`, after calling Vault: failing now is a bug.
            Err(e) => {
                eprintln!("keyturn: {e}");
                return ExitCode::Software;
            }
        };
        let rotate_after = Utc::now() + chrono::Duration::from_std(a.ttl).unwrap_or_default();
        let to = a
            .to_file
            .as_ref()
            .map_or_else(|| "terminal".to_owned(), |p| p.display().to_string());
        // Intent, before CURRENT is read: the read is itself an access, and an attempt that
        // the store refuses is exactly the record an investigator looks for.
        if let Err(code) = self
            .event(
                Outcome::Started,
                Some(format!(
                    "read and taint CURRENT in {} to show it on {to}; rotate after {}",
                    store.location(),
                    rotate_after.to_rfc3339()
                )),
            )
            .await
        {
            return code;
        }
        let deadline = tokio::time::Instant::now() + self.c.wait;
        // Taint first (so a crash after printing still gets the value rotated), under the
        // same fence as rotations: a rotation in flight is waited for, since it is about to
        // replace the value being revealed.
        let (current, rotate_after) = loop {
            match self.taint(store.as_ref(), rotate_after).await {
                Ok(Some(found)) => break found,
                Ok(None) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok(None) => {
                    eprintln!(
                        "keyturn: policy {} has a rotation in flight; waited {}; nothing was revealed",
                        policy.name,
                        humantime::format_duration(self.c.wait)
                    );
                    let _ = self
                        .event(
                            Outcome::Error,
                            Some("busy: a rotation is in flight; nothing revealed".into()),
                        )
                        .await;
                    return ExitCode::Busy;
                }
                Err(e) => {
                    eprintln!("keyturn: {e}");
                    let code = e.exit_code();
                    let _ = self
                        .event(
                            outcome_for(code),
                            Some(format!("cannot read CURRENT: {e}; nothing revealed")),
                        )
                        .await;
                    return code;
                }
            }
        };
        let Some(main) = current.get("password").or_else(|| current.get("value")) else {
            eprintln!(
                "keyturn: policy {} has no current value to reveal",
                policy.name
            );
            let _ = self
                .event(
                    Outcome::Error,
                    Some("no current value; nothing revealed".into()),
                )
                .await;
            return ExitCode::Failed;
        };
        // Intent to show, with the value's HMAC (`keyturn audit search --value-hmac` finds
        // it), durable before a person sees the value.
        if let Err(code) = self
            .event_about(
                Outcome::Started,
                Some(format!(
                    "showing it on {to}; tainted, rotate after {}",
                    rotate_after.to_rfc3339()
                )),
                Some(main),
            )
            .await
        {
            return code;
        }
        self.note_in_journal(Some(rotate_after)).await;
        let shown = match &a.to_file {
            Some(path) => write_private(path, &current).map_err(|e| (path.clone(), e)),
            None => {
                print_fields(&current);
                Ok(())
            }
        };
        if let Err((path, e)) = shown {
            eprintln!("keyturn: cannot write {}: {e}", path.display());
            let _ = self
                .event_about(
                    Outcome::Error,
                    Some(format!("cannot write {}", path.display())),
                    Some(main),
                )
                .await;
            // The output file is the operator's path: a directory they may not write is a
            // permission to fix (77), anything else an I/O error (74).
            return ExitCode::for_io(&e);
        }
        // The value has been shown: a failed outcome record cannot take that back, and the
        // intent before it is already durable.
        let _ = self
            .event_about(
                Outcome::Ok,
                Some(format!(
                    "revealed; tainted until rotated after {}",
                    rotate_after.to_rfc3339()
                )),
                Some(main),
            )
            .await;
        eprintln!(
            "keyturn: revealed once; {} will be rotated after {}",
            policy.name,
            rotate_after.to_rfc3339()
        );
        ExitCode::Ok
    }

    /// Marks CURRENT tainted with compare-and-set; returns it and when it will be rotated (an
    /// earlier taint's time stands); `None` while a rotation is in flight.
    async fn taint(
        &self,
        store: &dyn Store,
        rotate_after: chrono::DateTime<Utc>,
    ) -> Result<Option<(SecretData, chrono::DateTime<Utc>)>, StoreError> {
        let view = store.view().await?;
        if view.state.in_flight.is_some() {
            return Ok(None);
        }
        let Some(current) = view.current else {
            return Ok(Some((SecretData::new(), rotate_after)));
        };
        // An earlier, sooner taint stands.
        let rotate_after = view
            .state
            .taint
            .as_ref()
            .map_or(rotate_after, |t| t.rotate_after.min(rotate_after));
        let state = StateRecord {
            in_flight: None,
            last: view.state.last.clone(),
            taint: Some(Taint {
                at: Utc::now(),
                rotate_after,
                by: self.by.clone(),
            }),
            failures: view.state.failures.clone(),
        };
        match store.write_state(&view.fence, &state).await {
            Ok(_) => Ok(Some((current.fields, rotate_after))),
            Err(StoreError::Conflict { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The audit outcome of a failure that exits with `code`: `denied` for a permission the
/// operator's token lacks, `error` for everything else.
fn outcome_for(code: ExitCode) -> Outcome {
    if code == ExitCode::NoPermission {
        Outcome::Denied
    } else {
        Outcome::Error
    }
}

/// Writes the fields to stdout through a duplicate of fd 1, not through std's stdout buffer,
/// which is never zeroized and would keep a copy of the value.
fn print_fields(d: &SecretData) {
    use std::os::fd::AsFd;
    let stdout = std::io::stdout();
    let _ = stdout.lock().flush();
    if let Ok(fd) = stdout.as_fd().try_clone_to_owned() {
        let _ = std::fs::File::from(fd).write_all(&render_fields(d));
    }
}

/// `key: value` lines, in memory that is zeroized (sized up front, so never reallocated).
fn render_fields(d: &SecretData) -> zeroize::Zeroizing<Vec<u8>> {
    let len = d.iter().map(|(k, v)| k.len() + v.expose().len() + 3).sum();
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(len));
    for (k, v) in d.iter() {
        buf.extend_from_slice(k.as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(v.expose());
        buf.push(b'\n');
    }
    buf
}

/// Creates `path` (never an existing file or a symlink) with mode 0400 and the fields.
fn write_private(path: &std::path::Path, d: &SecretData) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    let buf = render_fields(d);
    f.write_all(&buf)?;
    f.sync_all()
}

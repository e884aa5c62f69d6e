//! One run, in order:
//!
//! 1. parse and validate the manifest (or annotations), open and check the output directory
//!    and every target, read credential files, open the audit log — no network call yet, and
//!    any problem exits 64 (or 74 for the output directory); a problem found after this
//!    point is never 64 (see [`after_network`]);
//! 2. (core dumps are already off: `main` turns them off before the command line is read,
//!    since step 1 reads credential files);
//! 3. log in and fetch every secret concurrently, all under one deadline;
//! 4. record one audit event per read (fail closed);
//! 5. render every file, then write them all atomically, or none;
//! 6. revoke the token, unless `--keep-token` (written with the files), the token was handed
//!    in (`auth: token`), or a dynamic secret was read (revoking the token would revoke its
//!    lease and so the credential just written: the token then expires with its TTL).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use keyturn_core::vault::{LoginInfo, RetryPolicy, Vault, VaultConfig};

use crate::auth;
use crate::cli::Cli;
use crate::exit::{ExitCode, HasExitCode};
use crate::fetch::{self, FetchError, FetchedSet, Progress, Read, ReadKey};
use keyturn_core::config::{ConfigError, Location};

use crate::manifest::Manifest;
use crate::paths::{OutDir, RelPath, RelPathError};
use crate::render::Format;
use crate::render::{self, Rendered};
use crate::write::{self, Item, Report};

/// One failure: an exit code and one line for stderr (no value, ever).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The exit code it maps to.
    pub code: ExitCode,
    /// The message, one line.
    pub message: String,
}

impl Failure {
    fn new(code: ExitCode, message: impl std::fmt::Display) -> Self {
        let message = message
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        // A backstop for text echoed without a cap or escaping at its source (a parser's
        // message, a server's): a message drives no terminal and buries nothing.
        let message = crate::text::clean(&message, crate::text::MESSAGE_MAX);
        Self { code, message }
    }

    fn of<E: HasExitCode + std::fmt::Display>(e: &E) -> Self {
        Self::new(e.exit_code(), e)
    }
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every failure (empty on success).
    pub failures: Vec<Failure>,
    /// Files written and left unchanged, on success.
    pub report: Option<Report>,
}

impl Outcome {
    fn failed(failures: Vec<Failure>) -> Self {
        Self {
            failures,
            report: None,
        }
    }

    /// The exit code.
    #[must_use]
    pub fn code(&self) -> ExitCode {
        crate::exit::most_telling(self.failures.iter().map(|f| f.code))
    }
}

/// The retry policy for every Vault call: fast first retries, capped at 2 s, and as many as
/// fit in the deadline (the deadline, not a count, ends them).
fn retry_policy() -> RetryPolicy {
    RetryPolicy {
        min_delay: Duration::from_millis(50),
        max_delay: Duration::from_secs(2),
        max_retries: 1_000_000,
    }
}

/// Loads the manifest from whichever source the command line names.
///
/// # Errors
/// Every problem found.
pub fn load_manifest(cli: &Cli) -> Result<Manifest, Vec<ConfigError>> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| vec![ConfigError::file(p.display().to_string(), e.to_string())])
    };
    if let Some(p) = &cli.annotations {
        return crate::annotations::parse(&p.display().to_string(), &read(p)?);
    }
    if let Some(text) = &cli.manifest_inline {
        return Manifest::parse("KEYTURN_INIT_MANIFEST_INLINE", text);
    }
    match &cli.manifest {
        Some(p) => Manifest::parse(&p.display().to_string(), &read(p)?),
        None => Err(vec![ConfigError::file(
            "keyturn-init",
            "no manifest: give --manifest, --manifest-inline or --annotations",
        )]),
    }
}

/// Where `--keep-token` goes: a directory and a file in it.
struct TokenTarget {
    /// A directory of its own, or `None` for the output directory.
    dir: Option<OutDir>,
    rel: RelPath,
}

fn token_target(
    path: &Path,
    out: &OutDir,
    allow_disk: bool,
    m: &Manifest,
) -> Result<TokenTarget, Failure> {
    let usage =
        |e: &dyn std::fmt::Display| Failure::new(ExitCode::Usage, format!("--keep-token: {e}"));
    let text = path.to_str().ok_or_else(|| usage(&"not UTF-8"))?;
    let t = if path.is_absolute() {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| usage(&"names no file"))?;
        let parent = path.parent().unwrap_or(Path::new("/"));
        let dir = OutDir::open(parent, allow_disk).map_err(|e| Failure::of(&e))?;
        TokenTarget {
            dir: Some(dir),
            rel: RelPath::parse(name).map_err(|e: RelPathError| usage(&e))?,
        }
    } else {
        TokenTarget {
            dir: None,
            rel: RelPath::parse(text).map_err(|e| usage(&e))?,
        }
    };
    let d = t.dir.as_ref().unwrap_or(out);
    if t.dir.is_none()
        && m.secrets
            .iter()
            .any(|s| s.file == t.rel || s.file.is_ancestor_of(&t.rel))
    {
        return Err(usage(&format!("{} is also a secret's file", t.rel)));
    }
    d.check_target(&t.rel).map_err(|e| Failure::of(&e))?;
    Ok(t)
}

/// The distinct reads the manifest needs: each entry's path (and version), and every
/// `secret "PATH"` its templates name. Reading a path once serves every file made from it.
fn plan_reads(m: &Manifest) -> Vec<Read> {
    let mut reads: Vec<Read> = Vec::with_capacity(m.secrets.len());
    let mut index: HashMap<ReadKey, usize> = HashMap::with_capacity(m.secrets.len());
    let mut add = |key: ReadKey, engine| match index.get(&key) {
        Some(&i) => {
            let r: &mut Read = &mut reads[i];
            r.engine = r.engine.or(engine);
        }
        None => {
            index.insert(key.clone(), reads.len());
            reads.push(Read { key, engine });
        }
    };
    for s in &m.secrets {
        add(
            ReadKey {
                path: s.path.clone(),
                version: s.version,
            },
            s.engine,
        );
        if let Format::Template(t) = &s.format {
            for p in t.secret_paths() {
                add(
                    ReadKey {
                        path: p,
                        version: None,
                    },
                    None,
                );
            }
        }
    }
    reads
}

/// Runs keyturn-init.
pub async fn run(cli: &Cli) -> Outcome {
    let started = Instant::now();
    // 1. Everything that needs no network.
    let manifest = match load_manifest(cli) {
        Ok(m) => m,
        Err(errs) => return Outcome::failed(errs.iter().map(Failure::of).collect()),
    };
    let out = match OutDir::open(&cli.out, cli.allow_disk) {
        Ok(d) => d,
        Err(e) => return Outcome::failed(vec![Failure::of(&e)]),
    };
    let mut failures: Vec<Failure> = manifest
        .secrets
        .iter()
        .filter_map(|s| out.check_target(&s.file).err())
        .map(|e| Failure::of(&e))
        .collect();
    let token_target = match &cli.keep_token {
        Some(p) => token_target(p, &out, cli.allow_disk, &manifest)
            .map_err(|f| failures.push(f))
            .ok(),
        None => None,
    };
    let mut cfg = match VaultConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            failures.push(Failure::new(ExitCode::Usage, e));
            return Outcome::failed(failures);
        }
    };
    if let Some(a) = &manifest.vault.address {
        cfg.addr.clone_from(a);
    }
    if manifest.vault.namespace.is_some() {
        cfg.namespace.clone_from(&manifest.vault.namespace);
    }
    let prepared = auth::prepare(&manifest.vault.auth, &cfg, cli.jwt_file.as_deref())
        .map_err(|e| failures.push(Failure::of(&e)));
    let vault = Vault::connect(&cfg).map_err(|e| failures.push(Failure::new(ExitCode::Usage, e)));
    // Every failure so far is in `failures`, so both are Ok exactly when it is empty.
    let (Ok(prepared), Ok(vault), true) = (prepared, vault, failures.is_empty()) else {
        return Outcome::failed(failures);
    };
    let audit_log = match crate::audit::open(cli.audit_file.as_deref(), cli.audit_stdout) {
        Ok(l) => l,
        Err(e) => return Outcome::failed(vec![Failure::of(&e)]),
    };
    tracing::debug!(
        elapsed_us = started.elapsed().as_micros() as u64,
        "checks done; contacting vault"
    );

    // 3. Login and fetch under one deadline.
    let mut vault = vault.with_retry(RetryPolicy::none());
    let retry = retry_policy();
    let progress = Progress::default();
    let reads = plan_reads(&manifest);
    let login: RefCell<Option<LoginInfo>> = RefCell::new(None);
    let deadline = cli.deadline;
    let fetched = tokio::time::timeout(deadline, async {
        let info = auth::login(&mut vault, prepared.method.as_ref(), &retry, &progress)
            .await
            .map_err(|e| Err(Failure::new(e.exit_code(), e)))?;
        *login.borrow_mut() = Some(info);
        fetch::fetch_all(&vault, &reads, &retry, &progress)
            .await
            .map_err(Ok)
    })
    .await;
    let login = login.into_inner();
    let vault = std::sync::Arc::new(vault);
    let actor = crate::audit::actor(
        &prepared.identity,
        login.as_ref().map_or("", |l| l.entity_id.as_str()),
        cli.pod_name.as_deref(),
    );

    let mut revoked = false;
    // A Vault that did not answer in time is not asked again for the anchor.
    let vault_answered = fetched.is_ok();
    let result = match fetched {
        Err(_elapsed) => Err(progress
            .unfinished(deadline)
            .iter()
            .map(|e| Failure::new(ExitCode::Unavailable, e))
            .collect::<Vec<_>>()),
        Ok(Err(Err(login_failure))) => Err(vec![login_failure]),
        Ok(Err(Ok(fetch_errors))) => {
            let vault_errors: Vec<(&str, &keyturn_core::vault::VaultError)> = fetch_errors
                .iter()
                .filter_map(|e| match e {
                    FetchError::Vault(v) => Some((v.path().unwrap_or_default(), v)),
                    _ => None,
                })
                .collect();
            crate::audit::record_failures(&audit_log, &actor, &vault_errors).await;
            Err(fetch_errors.iter().map(|e| located(&manifest, e)).collect())
        }
        Ok(Ok(set)) => {
            let finishing = finish(
                cli,
                &manifest,
                &out,
                token_target.as_ref(),
                login.as_ref(),
                &set,
                &audit_log,
                &actor,
            );
            // Every value is in memory, so a token that will be revoked whatever the writes
            // do is revoked while they run rather than after them.
            // (Not when the audit head is anchored: that write needs the token.)
            let r = if login.is_some()
                && cli.audit_anchor.is_none()
                && keep_reason(cli, prepared.owns_token, Some(set.has_leases())).is_none()
            {
                revoked = true;
                let left = deadline.saturating_sub(started.elapsed());
                tokio::join!(finishing, revoke(&vault, left)).0
            } else {
                finishing.await
            };
            r.map(|r| (r, set.has_leases()))
        }
    };

    // The audit head goes to its anchor while the token still works.
    if let Some(location) = &cli.audit_anchor
        && login.is_some()
        && vault_answered
    {
        let left = deadline.saturating_sub(started.elapsed());
        anchor_head(&vault, location, &audit_log, left).await;
    }
    // 6. Revoke, unless the token is wanted or not ours (or was revoked above).
    if let Some(info) = login.as_ref().filter(|_| !revoked) {
        let leases = result.as_ref().ok().map(|(_, leases)| *leases);
        match keep_reason(cli, prepared.owns_token, leases) {
            Some(why) => {
                tracing::info!(accessor = %info.accessor, reason = why, "token not revoked")
            }
            None => revoke(&vault, deadline.saturating_sub(started.elapsed())).await,
        }
    }
    match result {
        Ok((report, _)) => {
            tracing::info!(
                written = report.written,
                unchanged = report.unchanged,
                "secrets in place"
            );
            Outcome {
                failures: Vec::new(),
                report: Some(report),
            }
        }
        Err(f) => Outcome::failed(f),
    }
}

/// Records the audit log's last entry in its anchor, within what is left of the deadline
/// (1 to 5 s, as the revoke). A failure is a warning, not a failed
/// run: every read is already in the log (fail closed applies there); the anchor only adds
/// evidence against the log being cut later, and the previous anchor still holds.
async fn anchor_head(
    vault: &std::sync::Arc<Vault>,
    location: &keyturn_core::audit::AnchorLocation,
    audit_log: &keyturn_core::audit::AuditLog,
    left: Duration,
) {
    let Some(head) = audit_log.head() else { return };
    let anchor = keyturn_core::audit::Anchor::new(
        vault.clone(),
        location.clone(),
        audit_log.hmac_key().chain_key(),
    );
    // Bounded like the revoke: the files are in place whatever happens here.
    match tokio::time::timeout(
        left.clamp(Duration::from_secs(1), Duration::from_secs(5)),
        anchor.record(head),
    )
    .await
    {
        Ok(Ok(_)) => tracing::debug!(anchor = %location, seq = head.seq, "audit head anchored"),
        Ok(Err(e)) => {
            tracing::warn!(anchor = %location, error = %e, "could not anchor the audit head")
        }
        Err(_) => tracing::warn!(anchor = %location, "anchoring the audit head timed out"),
    }
}

/// Why the token is kept rather than revoked at exit, if it is. `leases` is whether the
/// secrets read hold leases, `None` when the run failed (its files were not written).
fn keep_reason(cli: &Cli, owns_token: bool, leases: Option<bool>) -> Option<&'static str> {
    match leases {
        Some(_) if cli.keep_token.is_some() => Some("--keep-token"),
        Some(true) => {
            Some("dynamic secrets were read: revoking the token would revoke their leases")
        }
        _ if !owns_token => Some("the token was handed in (auth: token)"),
        _ => None,
    }
}

async fn revoke(vault: &Vault, left: Duration) {
    // Bounded: the files are in place; a token that cannot be revoked expires with its TTL.
    let limit = left.clamp(Duration::from_secs(1), Duration::from_secs(5));
    match tokio::time::timeout(limit, vault.revoke_self()).await {
        Ok(Ok(())) => tracing::debug!("token revoked"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not revoke the token; it expires with its TTL")
        }
        Err(_) => tracing::warn!("revoking the token timed out; it expires with its TTL"),
    }
}

/// The manifest position of the first entry reading `path`, as a message prefix.
fn origin_of(m: &Manifest, path: Option<&str>) -> Option<(String, Location)> {
    let path = path?;
    m.secrets
        .iter()
        .find(|s| s.path == path)
        .map(|s| (m.origin.clone(), s.at))
}

fn located(m: &Manifest, e: &FetchError) -> Failure {
    let code = after_network(e.exit_code());
    match origin_of(m, e.path()) {
        Some((o, at)) => Failure::new(code, format!("{o}:{}:{}: {e}", at.line, at.column)),
        None => Failure::new(code, e),
    }
}

/// The code of a failure found after Vault answered. 64 promises that nothing was contacted
/// (README), so a manifest that turns out not to fit what Vault holds (a field the secret
/// lacks, a value over the size limit, a KV v2 path without `data/`) is 65 instead.
fn after_network(code: ExitCode) -> ExitCode {
    match code {
        ExitCode::Usage => ExitCode::Data,
        c => c,
    }
}

/// Steps 4 and 5: audit, render, write.
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(skip_all)]
async fn finish(
    cli: &Cli,
    m: &Manifest,
    out: &OutDir,
    token: Option<&TokenTarget>,
    login: Option<&LoginInfo>,
    set: &FetchedSet,
    audit_log: &keyturn_core::audit::AuditLog,
    actor: &keyturn_core::audit::Actor,
) -> Result<Report, Vec<Failure>> {
    crate::audit::record_reads(audit_log, actor, set)
        .await
        .map_err(|e| vec![Failure::of(&e)])?;

    let mut failures = Vec::new();
    let mut rendered: Vec<Rendered<'_>> = Vec::with_capacity(m.secrets.len());
    for s in &m.secrets {
        let key = ReadKey {
            path: s.path.clone(),
            version: s.version,
        };
        let Some(f) = set.get(&key) else {
            failures.push(Failure::new(
                ExitCode::Software,
                format!("{}: not fetched", s.path),
            ));
            continue;
        };
        match render::render(&s.format, s.key.as_deref(), &s.path, f, set) {
            Ok(r) => rendered.push(r),
            Err(e) => failures.push(Failure::new(
                after_network(e.exit_code()),
                format!(
                    "{}:{}:{}: {}: {e}",
                    m.origin, s.at.line, s.at.column, s.file
                ),
            )),
        }
    }
    if !failures.is_empty() {
        return Err(failures);
    }
    let mut items: Vec<Item<'_>> = m
        .secrets
        .iter()
        .zip(&rendered)
        .map(|(s, r)| Item {
            dir: out,
            rel: &s.file,
            content: r.bytes(),
            mode: s.mode,
        })
        .collect();
    if let (Some(t), Some(info)) = (token, login) {
        items.push(Item {
            dir: t.dir.as_ref().unwrap_or(out),
            rel: &t.rel,
            content: info.token.expose(),
            mode: 0o400,
        });
    }
    write::write_all(&items, cli.owner).map_err(|e| vec![Failure::of(&e)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_deduplicated_across_entries_and_templates() {
        let m = Manifest::parse(
            "m",
            r#"
vault: { auth: token }
secrets:
  - { path: secret/data/a, file: a.env, format: env }
  - { path: secret/data/a, file: a.json }
  - { path: secret/data/a, file: a3.json, version: 3 }
  - path: kv/b
    file: b
    template: '{{ with secret "secret/data/a" }}{{ end }}{{ with secret "db/creds/x" }}{{ end }}'
"#,
        )
        .unwrap();
        let keys: Vec<(String, Option<u64>)> = plan_reads(&m)
            .into_iter()
            .map(|r| (r.key.path, r.key.version))
            .collect();
        assert_eq!(
            keys,
            [
                ("secret/data/a".into(), None),
                ("secret/data/a".into(), Some(3)),
                ("kv/b".into(), None),
                ("db/creds/x".into(), None)
            ]
        );
    }

    #[test]
    fn a_manifest_that_does_not_fit_the_data_read_is_65_not_64() {
        let m = Manifest::parse(
            "m.yaml",
            "vault: { auth: token }\nsecrets:\n  - { path: secret/orders, file: a, key: v }\n",
        )
        .unwrap();
        // Found only once Vault said `secret/` is a KV v2 mount.
        let e = FetchError::NotKv2ApiPath {
            path: "secret/orders".into(),
            mount: "secret".into(),
            rest: "orders".into(),
        };
        let f = located(&m, &e);
        assert_eq!(f.code, ExitCode::Data);
        assert!(f.message.starts_with("m.yaml:3:5: "), "{}", f.message);
        let unknown = crate::render::RenderError::UnknownField {
            path: "secret/data/orders".into(),
            field: "nope".into(),
            hint: String::new(),
        };
        assert_eq!(after_network(unknown.exit_code()), ExitCode::Data);
        // The others keep theirs.
        assert_eq!(after_network(ExitCode::NotFound), ExitCode::NotFound);
        assert_eq!(after_network(ExitCode::Software), ExitCode::Software);
    }

    #[test]
    fn one_line_messages_never_carry_newlines() {
        assert_eq!(Failure::new(ExitCode::Software, "a\nb  c").message, "a b c");
    }

    #[test]
    fn a_message_is_escaped_and_capped_whatever_its_source() {
        let m = Failure::new(
            ExitCode::Usage,
            format!(
                "m.yaml:1:1: unknown field `\u{1b}[2J{}`",
                "x".repeat(1 << 20)
            ),
        )
        .message;
        assert!(!m.chars().any(char::is_control), "{}", &m[..60]);
        assert!(
            m.starts_with("m.yaml:1:1: unknown field `\\u{1b}[2Jxx"),
            "{}",
            &m[..60]
        );
        // One escaped character adds 7; the rest is the cap.
        assert!(
            m.len() < crate::text::MESSAGE_MAX + 16 && m.ends_with('…'),
            "{}",
            m.len()
        );
    }
}

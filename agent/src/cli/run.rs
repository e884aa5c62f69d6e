//! `keyturn run`: the rotation daemon.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use tokio::sync::watch;

use super::exit::{ExitCode, HasExitCode};
use super::rotation_args::RotationArgs;
use crate::daemon::{Daemon, DaemonConfig, Metrics, anchoring, server};
use keyturn_core::audit::Anchor;

/// `keyturn run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long, env = "KEYTURN_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Rotations that may run at once.
    #[arg(long, env = "KEYTURN_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,
    /// After SIGTERM, how long rotations in flight may take to finish.
    #[arg(long, env = "KEYTURN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// The break-glass journal (KV v2 `MOUNT/PATH`) read for operators' actions: counted in
    /// `keyturn_breakglass_total`, revealed values rotated when their TTL passes.
    #[arg(long, env = "KEYTURN_BREAK_GLASS_JOURNAL", default_value = crate::journal::DEFAULT_JOURNAL)]
    pub break_glass_journal: String,
    /// How often the break-glass journal is read (one request).
    #[arg(long, env = "KEYTURN_BREAK_GLASS_POLL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub break_glass_poll: Duration,
    /// The longest wait between two retries of a failing policy (the first retry comes at
    /// least 30 s after a failure, the wait doubling from there; never past the next slot).
    #[arg(long, env = "KEYTURN_RETRY_MAX", default_value = "1h", value_parser = retry_max)]
    pub retry_max: Duration,
    /// Where the audit log's head is anchored (`vault-kv:MOUNT/PATH`, one per daemon), so
    /// `keyturn audit verify --anchor` detects a cut or replaced audit file.
    #[arg(long, env = "KEYTURN_AUDIT_ANCHOR", value_name = "vault-kv:MOUNT/PATH")]
    pub audit_anchor: Option<keyturn_core::audit::AnchorLocation>,
    /// How often the audit head is anchored (and once more at shutdown).
    #[arg(long, env = "KEYTURN_AUDIT_ANCHOR_EVERY", default_value = "30s", value_parser = anchor_every)]
    pub audit_anchor_every: Duration,
    /// Shared options.
    #[command(flatten)]
    pub common: RotationArgs,
}

/// `--audit-anchor-every`: from 1s to 1h (one KV write per interval at most).
fn anchor_every(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&d) {
        return Err("must be between 1s and 1h".into());
    }
    Ok(d)
}

/// `--retry-max`: a duration from 30s to 24h (a longer cap would leave a failing credential
/// alone for days; a shorter one than the first retry means nothing).
fn retry_max(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if !(crate::schedule::RETRY_MIN..=Duration::from_secs(86_400)).contains(&d) {
        return Err("must be between 30s and 24h".into());
    }
    Ok(d)
}

/// Runs the daemon until SIGTERM or SIGINT; returns the exit code.
#[must_use]
pub fn run(args: RunArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyturn: cannot start runtime: {e}");
            return ExitCode::Software;
        }
    };
    let journal = match crate::journal::Journal::parse(&args.break_glass_journal) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("keyturn: {e}");
            return ExitCode::Usage;
        }
    };
    rt.block_on(async move {
        // Bound before any network call: a port in use or not allowed is a configuration
        // error of this process (64, or 77 for a privileged port), not a server being down.
        let listener = match args.listen {
            None => None,
            Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    eprintln!("keyturn: --listen {addr}: cannot listen: {e}");
                    return match ExitCode::for_io(&e) {
                        ExitCode::NoPermission => ExitCode::NoPermission,
                        _ => ExitCode::Usage,
                    };
                }
            },
        };
        let p = match args.common.prepare().await {
            Ok(p) => p,
            Err(code) => return code,
        };
        let metrics = Metrics::new(Some(p.audit.clone()));
        let (ready_tx, ready_rx) = watch::channel(false);
        let (stop_tx, stop_rx) = watch::channel(false);
        if let Some(listener) = listener {
            let metrics = metrics.clone();
            let mut stop = stop_rx.clone();
            // Header timeouts and a connection cap: idle sockets cannot starve the probes.
            tokio::spawn(server::serve_on(
                listener,
                metrics,
                ready_rx,
                server::Limits::default(),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            ));
        }
        let anchoring = match (&args.audit_anchor, &p.backends.vault) {
            (Some(location), Some(vault)) => {
                let anchor = Anchor::new(
                    vault.clone(),
                    location.clone(),
                    p.audit.hmac_key().chain_key(),
                );
                Some(tokio::spawn(anchoring::run(
                    p.audit.clone(),
                    anchor,
                    args.audit_anchor_every,
                    metrics.clone(),
                    stop_rx.clone(),
                )))
            }
            (Some(_), None) => {
                eprintln!("keyturn: --audit-anchor: the anchor is kept in Vault, and no Vault is configured");
                return ExitCode::Usage;
            }
            (None, _) => None,
        };
        let cfg = DaemonConfig {
            policies: args.common.policies.clone(),
            concurrency: args.concurrency,
            grace: args.grace,
            reload_debounce: Duration::from_millis(300),
            journal: Some(journal),
            journal_poll: args.break_glass_poll,
            retry_max: args.retry_max,
        };
        let daemon = Daemon::new(cfg, p.engine, p.backends, metrics, ready_tx);
        let result = daemon.run(shutdown_signal()).await;
        let _ = stop_tx.send(true);
        if let Some(task) = anchoring {
            // The last head is anchored on the way out; a Vault that does not answer in time
            // leaves the previous anchor, which still detects anything cut before it.
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        match result {
            Ok(()) => ExitCode::Ok,
            Err(e) => {
                eprintln!("keyturn: {e}");
                e.exit_code()
            }
        }
    })
}

/// Resolves on SIGTERM or SIGINT (every long-running command stops on either).
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

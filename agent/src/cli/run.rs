//! `keyturn run`: the rotation daemon.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use tokio::sync::watch;

use super::exit::{ExitCode, HasExitCode};
use super::rotation_args::{ClientNeeds, RotationArgs, Scope, rotationpolicies};
use std::sync::Arc;

use crate::daemon::membership::{Membership, MembershipSettings};
use crate::daemon::report::PolicyStatus;
use crate::daemon::status::{StatusReporter, StatusSettings};
use crate::daemon::{Daemon, DaemonConfig, Metrics, ObjectSource, anchoring, server};
use crate::policy::kube_source::{self, WatchConfig};

/// How long start-up waits for the first list of RotationPolicy objects before it goes on
/// with the policy files (the objects join when listed).
const FIRST_LIST: Duration = Duration::from_secs(30);
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
    /// Share the policies with the other replicas through membership Leases in this
    /// namespace (the daemon's own; in a pod, from the downward API). Each replica owns the
    /// policies rendezvous hashing assigns it and acts only while its Lease is valid. Unset:
    /// this daemon owns every policy.
    #[arg(long, env = "KEYTURN_MEMBERSHIP_NAMESPACE", value_name = "NAMESPACE")]
    pub membership_namespace: Option<String>,
    /// How long a replica's membership Lease lasts without renewal (renewed every third of
    /// it): how long a vanished replica's policies wait before the others take them.
    #[arg(long, env = "KEYTURN_MEMBERSHIP_LEASE", default_value = "15s", value_parser = membership_lease)]
    pub membership_lease: Duration,
    /// Also take policies from RotationPolicy objects (`rotationpolicies.keyturn.dev`), in
    /// every namespace (`all`) or in this one, watched, with their status and Events written
    /// back. Policy files win a name or store clash; `--policies` becomes optional.
    #[arg(long, env = "KEYTURN_ROTATIONPOLICIES", value_name = "all|NAMESPACE", value_parser = rotationpolicies)]
    pub rotationpolicies: Option<Scope>,
    /// The API group RotationPolicy objects are read from. Leave it: another group is for
    /// tests that define the resource under a name of their own on a shared cluster.
    #[arg(long, env = "KEYTURN_ROTATIONPOLICIES_GROUP", default_value = crate::policy::crd::GROUP)]
    pub rotationpolicies_group: String,
    /// Shared options.
    #[command(flatten)]
    pub common: RotationArgs,
}

/// `--membership-lease`: whole seconds from 3s to 5m (the Lease counts whole seconds; a
/// replica renews every third of it).
fn membership_lease(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.subsec_nanos() != 0 || !(Duration::from_secs(3)..=Duration::from_secs(300)).contains(&d) {
        return Err("must be whole seconds between 3s and 5m".into());
    }
    Ok(d)
}

/// Whether `name` can be part of a Lease name: a DNS-1123 subdomain's characters (lower-case
/// alphanumerics, '-' and '.', starting and ending alphanumeric), at most 253 with the prefix.
fn lease_name_part(name: &str) -> bool {
    let ok_end = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !name.is_empty()
        && name.len() + crate::daemon::membership::MEMBER_PREFIX.len() <= 253
        && ok_end(name.chars().next())
        && ok_end(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
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
        // One Kubernetes client for the membership Leases and the RotationPolicy objects.
        let kube = if args.membership_namespace.is_some() || args.rotationpolicies.is_some() {
            match crate::distribute::kubernetes::client_from_env().await {
                Ok(c) => Some(c),
                Err(e) => {
                    let flag = if args.membership_namespace.is_some() { "--membership-namespace" } else { "--rotationpolicies" };
                    eprintln!("keyturn: {flag}: no Kubernetes API is configured (set KUBECONFIG or run in a cluster): {e}");
                    return ExitCode::Usage;
                }
            }
        } else {
            None
        };
        let membership = match (&args.membership_namespace, &kube) {
            (Some(namespace), Some(client)) => {
                let holder = args.common.holder();
                if !lease_name_part(&holder) {
                    eprintln!("keyturn: --holder (or the host name): with --membership-namespace it names a Lease, so it must be lower-case letters, digits, '-' and '.', starting and ending with a letter or digit");
                    return ExitCode::Usage;
                }
                let settings = MembershipSettings::new(namespace, &holder, args.membership_lease);
                Some(Membership::new(client.clone(), settings))
            }
            _ => None,
        };
        // The policy files are checked here, before anything starts, and what clients they
        // need noted; the daemon reads them again itself, keeping whole only the policies it
        // owns, so none is kept from this read. With objects, the files are optional, and an
        // empty directory is a start.
        let mut needs = ClientNeeds::default();
        let path = match (&args.rotationpolicies, args.common.policies.as_deref()) {
            (None, None) => match args.common.policies_path() {
                // Says that --policies is required.
                Err(code) => return code,
                Ok(path) => Some(path),
            },
            (_, path) => path,
        };
        if let Some(path) = path {
            let checked = crate::policy::load_held(path, args.rotationpolicies.is_some(), &mut |p| {
                needs.note(p);
                false
            });
            if let Err(e) = checked {
                eprintln!("{e}");
                return ExitCode::Usage;
            }
        }
        // A replica's claim on a rotation lasts one membership lease, so a replica killed
        // mid-rotation holds it up no longer than its Lease holds its policies.
        let guard = membership
            .clone()
            .map(|m| (Arc::new(m) as Arc<dyn crate::fence::Guard>, args.membership_lease));
        let mut p = match args
            .common
            .prepare_daemon(needs, guard, args.rotationpolicies.is_some())
            .await
        {
            Ok(p) => p,
            Err(code) => return code,
        };
        let metrics = Metrics::new(Some(p.audit.clone()));
        // RotationPolicy objects: watched for policies, and told what happens to them.
        let (objects, status) = match (&args.rotationpolicies, kube) {
            (Some(scope), Some(client)) => {
                let namespace = match scope {
                    Scope::All => None,
                    Scope::Namespace(ns) => Some(ns.clone()),
                };
                let mut watch = WatchConfig::new(namespace);
                watch.resource = kube_source::api_resource_in(&args.rotationpolicies_group);
                watch.stats = metrics.source.clone();
                // Only the replica that owns a policy, while its fence is open, writes about it.
                let m = membership.clone();
                let fence = move |_: &str, name: &str| {
                    m.as_ref().is_none_or(|m| m.fence().is_ok() && m.owns(name))
                };
                let mut settings = StatusSettings::new(&args.common.holder());
                settings.group.clone_from(&args.rotationpolicies_group);
                let (reporter, _task) = StatusReporter::spawn(
                    client.clone(),
                    settings,
                    Arc::new(fence),
                    metrics.status.clone(),
                );
                let status = PolicyStatus::new(Some(reporter));
                p.engine = p.engine.with_observer(Arc::new(status.clone()));
                let source = ObjectSource {
                    client,
                    watch,
                    first_list: FIRST_LIST,
                };
                (Some(source), status)
            }
            _ => (None, PolicyStatus::default()),
        };
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
            objects,
            status,
            concurrency: args.concurrency,
            grace: args.grace,
            reload_debounce: Duration::from_millis(300),
            journal: Some(journal),
            journal_poll: args.break_glass_poll,
            retry_max: args.retry_max,
            membership,
        };
        let reporter = cfg.status.reporter().cloned();
        let daemon = Daemon::new(cfg, p.engine, p.backends, metrics, ready_tx);
        let result = daemon.run(shutdown_signal()).await;
        if let Some(r) = reporter {
            // The last status and Events out (a closed fence refuses them at once).
            let _ = tokio::time::timeout(Duration::from_secs(5), r.settled()).await;
        }
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

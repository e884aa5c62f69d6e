//! `keyturn webhook`: the mutating admission webhook that puts keyturn-init into pods
//! annotated for the Vault Agent Injector, so such a pod works unchanged.
//!
//! - [`inject`]: the decision for one pod — skip, inject (a JSONPatch and warnings) or deny —
//!   from its annotations and the webhook's settings. Pure: no I/O, unit-tested.
//! - [`review`]: AdmissionReview in and out (v1 and v1beta1, answered in the version asked),
//!   and the 400 for anything that is not one.
//! - [`certs`]: the in-memory CA and the short-lived serving certificate, renewed well before
//!   expiry and swapped live (or a certificate from files, for cert-manager).
//! - [`server`]: the HTTPS listener for `/mutate`, and `/metrics`, `/healthz`, `/readyz`.
//! - [`cabundle`]: membership Leases carrying each replica's CA, and the one replica (by
//!   Lease) that writes their union into the MutatingWebhookConfiguration's `caBundle`.
//! - [`events`]: Kubernetes Events ("Injected", "InjectionDenied") on the pod's owner.
//! - [`metrics`]: admissions by outcome, admission latency, certificate expiry.

pub mod cabundle;
pub mod certs;
pub mod events;
pub mod inject;
pub mod metrics;
pub mod review;
pub mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keyturn_core::exit::{ExitCode, HasExitCode};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::daemon::server::Limits;

/// How long a replica told to stop keeps accepting and serving, with `/readyz` answering
/// 503, before it closes its listeners. Once a pod is deleted the API server keeps dialing
/// its IP until the endpoints and every node's kube-proxy have caught up; a listener closed
/// at once in that window refuses those connections, and under `failurePolicy: Fail` every
/// pod create routed there fails.
pub const SHUTDOWN_DELAY: Duration = Duration::from_secs(5);

/// How long, once the listeners close, in-flight admissions and the rest of shutdown (the
/// caBundle upkeep's last request, queued Events) get to finish; whatever is left is cut
/// off. The API server's webhook timeout is at most 30 s; [`SHUTDOWN_DELAY`] plus this is
/// within the kubelet's default grace period of 30 s (the chart's
/// `terminationGracePeriodSeconds` leaves room for both).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Everything `keyturn webhook` runs with.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// HTTPS: `POST /mutate` (`--listen`).
    pub listen: SocketAddr,
    /// Plain HTTP: `/metrics`, `/healthz`, `/readyz` (`--metrics-listen`).
    pub metrics_listen: SocketAddr,
    /// The decision for each pod.
    pub injector: inject::Injector,
    /// Where the serving certificate comes from.
    pub tls: TlsSource,
    /// With the in-memory CA: the configuration whose `caBundle` the replicas keep. `None`
    /// leaves the `caBundle` to someone else (cert-manager's cainjector).
    pub ca_bundle: Option<CaBundleSettings>,
    /// How long to keep serving, unready, once shutdown starts (`--shutdown-delay`,
    /// [`SHUTDOWN_DELAY`] by default): the time the API server takes to stop routing here.
    /// Zero closes the listeners at once.
    pub shutdown_delay: Duration,
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// A CA made at start and kept in memory, and short-lived certificates from it for the
    /// Service's names (`--service`, `--namespace`, `--cert-validity`).
    InMemory {
        /// The webhook's Service.
        service: String,
        /// Its namespace.
        namespace: String,
        /// A serving certificate's validity; it is renewed at half of it.
        validity: Duration,
    },
    /// PEM files kept current by someone else (cert-manager): `--tls-cert`, `--tls-key`,
    /// re-read when they change.
    Files {
        /// The certificate chain, leaf first.
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
}

/// How the replicas keep the MutatingWebhookConfiguration's `caBundle` (see [`cabundle`]).
#[derive(Debug, Clone)]
pub struct CaBundleSettings {
    /// The MutatingWebhookConfiguration (`--configuration`).
    pub configuration: String,
    /// Where the Leases live: the webhook's own namespace (`--namespace`).
    pub namespace: String,
    /// This replica's name (`--holder`; the pod name).
    pub holder: String,
    /// How long a Lease lasts without renewal (`--lease-duration`); renewed every third.
    pub lease_duration: Duration,
}

/// Why `keyturn webhook` could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A listener could not be bound (a port in use, a privileged port).
    #[error("{flag} {addr}: cannot listen: {source}")]
    Listen {
        /// `--listen` or `--metrics-listen`.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The serving certificate could not be made or loaded.
    #[error(transparent)]
    Certificate(#[from] certs::CertError),
    /// No Kubernetes client: neither KUBECONFIG nor the in-cluster service account works.
    #[error("no Kubernetes configuration (KUBECONFIG or the in-cluster service account): {source}")]
    Kubernetes {
        /// kube's reason.
        source: kube::Error,
    },
    /// The in-memory CA was asked for without caBundle upkeep, or the reverse.
    #[error("{0}")]
    Settings(&'static str),
}

impl HasExitCode for WebhookError {
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Listen { source, .. } => match ExitCode::for_io(source) {
                ExitCode::NoPermission => ExitCode::NoPermission,
                _ => ExitCode::Usage,
            },
            Self::Certificate(certs::CertError::Read { source, .. }) => ExitCode::for_io(source),
            Self::Certificate(
                certs::CertError::Generate { .. } | certs::CertError::Load { .. },
            ) => ExitCode::Software,
            Self::Certificate(_) | Self::Kubernetes { .. } | Self::Settings(_) => ExitCode::Usage,
        }
    }
}

/// Runs `keyturn webhook` until `shutdown` resolves: a Kubernetes client from the in-cluster
/// service account or KUBECONFIG, then [`Webhook::bind`] and [`Webhook::serve`].
///
/// # Errors
/// A listener, the certificate or the Kubernetes configuration; each names its flag or file.
pub async fn run(
    settings: WebhookSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WebhookError> {
    let client = crate::distribute::kubernetes::client_from_env()
        .await
        .map_err(|source| WebhookError::Kubernetes { source })?;
    Webhook::bind(settings, client).await?.serve(shutdown).await;
    Ok(())
}

/// A webhook with its listeners bound and its certificate made, not yet serving.
pub struct Webhook {
    settings: WebhookSettings,
    client: kube::Client,
    https: TcpListener,
    metrics_listener: TcpListener,
    certs: certs::Certs,
    metrics: metrics::WebhookMetrics,
    shutdown_delay: Duration,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("settings", &self.settings)
            .field("https", &self.https)
            .field("metrics_listener", &self.metrics_listener)
            .field("shutdown_delay", &self.shutdown_delay)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// Binds both listeners and makes (or loads) the serving certificate. Makes no request.
    ///
    /// # Errors
    /// A listener cannot be bound, or the certificate cannot be made or loaded.
    pub async fn bind(
        settings: WebhookSettings,
        client: kube::Client,
    ) -> Result<Self, WebhookError> {
        let metrics = metrics::WebhookMetrics::new();
        let shutdown_delay = settings.shutdown_delay;
        let certs = match &settings.tls {
            TlsSource::InMemory {
                service,
                namespace,
                validity,
            } => certs::Certs::in_memory(service, namespace, *validity, metrics.clone())?,
            TlsSource::Files { cert, key } => {
                if settings.ca_bundle.is_some() {
                    return Err(WebhookError::Settings(
                        "--configuration is for the in-memory CA; with --tls-cert/--tls-key the caBundle is cert-manager's",
                    ));
                }
                certs::Certs::from_files(cert, key, certs::FILE_POLL, metrics.clone())?
            }
        };
        let bind = |flag: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| WebhookError::Listen { flag, addr, source })
        };
        let https = bind("--listen", settings.listen).await?;
        let metrics_listener = bind("--metrics-listen", settings.metrics_listen).await?;
        Ok(Self {
            settings,
            client,
            https,
            metrics_listener,
            certs,
            metrics,
            shutdown_delay,
        })
    }

    /// The HTTPS listener's address (`--listen` with its port resolved).
    ///
    /// # Panics
    /// Never: a bound listener has an address.
    #[must_use]
    pub fn https_addr(&self) -> SocketAddr {
        self.https.local_addr().expect("a bound listener")
    }

    /// The metrics listener's address.
    ///
    /// # Panics
    /// Never: a bound listener has an address.
    #[must_use]
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_listener
            .local_addr()
            .expect("a bound listener")
    }

    /// The in-memory CA (PEM); `None` with certificate files.
    #[must_use]
    pub fn ca_pem(&self) -> Option<&str> {
        self.certs.ca_pem()
    }

    /// Serves until `shutdown` resolves: both listeners, certificate upkeep, the caBundle
    /// loop (with [`CaBundleSettings`] and the in-memory CA) and the Event recorder.
    ///
    /// Shutdown drains before it stops: `/readyz` turns 503 at once while both listeners
    /// keep accepting and serving for the shutdown delay ([`SHUTDOWN_DELAY`], or
    /// `WebhookSettings::shutdown_delay`), the time the API server takes to stop routing here;
    /// then the listeners close, and requests in flight, the caBundle upkeep's last request
    /// and the queued Events share [`SHUTDOWN_GRACE`], after which whatever is left is cut
    /// off. So the whole of shutdown takes at most the delay plus the grace.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Self {
            settings,
            client,
            https,
            metrics_listener,
            certs,
            metrics,
            shutdown_delay,
        } = self;
        let (stop_tx, stop) = watch::channel(());
        let stopped = |mut rx: watch::Receiver<()>| async move {
            let _ = rx.changed().await;
        };
        let tls = match certs.server_config() {
            Ok(t) => t,
            Err(e) => {
                // Only a rustls without safe protocol versions gets here.
                tracing::error!(error = %e, "webhook TLS configuration");
                return;
            }
        };
        let maintain = tokio::spawn(certs.clone().maintain(stop.clone()));
        let holder = settings
            .ca_bundle
            .as_ref()
            .map_or_else(|| "keyturn-webhook".to_owned(), |c| c.holder.clone());
        let (notices, recorder) = events::spawn(client.clone(), &holder, metrics.clone());
        let (bundle, freshness) = match (&settings.ca_bundle, certs.ca_pem()) {
            (Some(cb), Some(ca)) => {
                let freshness = cabundle::Freshness::new(cb.lease_duration);
                let task = tokio::spawn(cabundle::run(
                    client,
                    cb.clone(),
                    ca.to_owned(),
                    metrics.clone(),
                    freshness.clone(),
                    stop.clone(),
                ));
                (Some(task), Some(freshness))
            }
            _ => (None, None),
        };
        let draining = Arc::new(AtomicBool::new(false));
        let readiness = server::Readiness {
            certs: certs.clone(),
            ca_bundle: freshness,
            draining: Arc::clone(&draining),
            metrics: metrics.clone(),
        };
        let router = server::https_router(server::Admission {
            injector: Arc::new(settings.injector),
            metrics: metrics.clone(),
            notices,
        });
        tracing::info!(
            listen = %settings.listen,
            metrics_listen = %settings.metrics_listen,
            ca = if certs.ca_pem().is_some() { "in-memory" } else { "files" },
            "keyturn webhook serving"
        );
        let https = tokio::spawn(server::serve_https(
            https,
            tls,
            router,
            metrics.shed("https"),
            Limits::default(),
            stopped(stop.clone()),
        ));
        let plain = tokio::spawn(server::serve_metrics(
            metrics_listener,
            readiness,
            Limits::default(),
            stopped(stop.clone()),
        ));
        shutdown.await;
        draining.store(true, Ordering::SeqCst);
        if !shutdown_delay.is_zero() {
            tracing::info!(
                delay = ?shutdown_delay,
                "keyturn webhook stopping: unready, still serving while the API server stops routing here"
            );
            tokio::time::sleep(shutdown_delay).await;
        }
        tracing::info!(
            "keyturn webhook stopping: no new connections, finishing requests in flight"
        );
        let _ = stop_tx.send(());
        // One deadline for everything left, so shutdown never outlasts delay + grace.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        let mut late = Vec::new();
        for (what, task) in [
            ("requests in flight", https),
            ("metrics requests", plain),
            ("certificate upkeep", maintain),
        ]
        .into_iter()
        .chain(bundle.map(|b| ("caBundle upkeep", b)))
        .chain(std::iter::once(("queued Events", recorder)))
        {
            // The recorder ends once every sender is gone, i.e. once the HTTPS router is:
            // it is waited on last, after the listeners.
            let mut task = task;
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                late.push(what);
            }
        }
        if !late.is_empty() {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, cut_off = ?late, "shutdown grace period over: what was still running was cut off");
        }
    }
}

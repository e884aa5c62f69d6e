//! The webhook's listeners: HTTPS for the API server (`POST /mutate`), and plain HTTP for
//! Prometheus and the kubelet (`/metrics`, `/healthz`, `/readyz`).
//!
//! Both run under the daemon's bounds (`daemon::server`): a header read timeout and a
//! connection cap that first evicts the connection idle longest. On the HTTPS listener the
//! TLS handshake must also finish within the header read timeout, and each connection speaks
//! what ALPN chose: HTTP/2 (what the API server uses for webhooks) or HTTP/1.1.
//!
//! `/mutate` reads at most [`MAX_BODY`] (the API server's own request limit: no AdmissionReview
//! it sends is larger); a request that declares more is answered 413 before a byte of its
//! body is read, and one that sends more is cut off at the limit. A body must arrive within
//! [`BODY_READ_TIMEOUT`]. Every answer, 4xx included, is counted in
//! `keyturn_webhook_admissions_total` (bad requests as `malformed`); no request can stop the
//! server.

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use super::cabundle::Freshness;
use super::certs::Certs;
use super::inject::Injector;
use super::metrics::WebhookMetrics;
use super::review::{self, Notice, Outcome};
use crate::daemon::server::{Limits, Slot, accept_loop, serve_router};

/// The largest request body `/mutate` reads: 3 MiB, the API server's limit on a request
/// (so on the object an AdmissionReview carries).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// How long a request's body may take to arrive once its headers have: the API server's
/// webhook timeout is at most 30 s, so nothing slower is a real request.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What `/mutate` needs for each request.
#[derive(Debug, Clone)]
pub struct Admission {
    /// The decision for each pod.
    pub injector: Arc<Injector>,
    /// Counts each answer.
    pub metrics: WebhookMetrics,
    /// To the Event recorder (`events`); bounded, never waited on.
    pub notices: mpsc::Sender<Notice>,
}

/// The HTTPS routes: `POST /mutate`; 405 for another method there, 404 elsewhere.
pub fn https_router(admission: Admission) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .with_state(admission)
}

/// A short text answer, counted as a malformed admission.
fn refuse(a: &Admission, started: Instant, status: StatusCode, why: &'static str) -> Response {
    a.metrics
        .admission(Outcome::Malformed, started.elapsed().as_secs_f64());
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        why,
    )
        .into_response()
}

async fn mutate(State(a): State<Admission>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        // Answered without reading the body; hyper then closes the connection.
        return refuse(
            &a,
            started,
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body over 3 MiB\n",
        );
    }
    let body =
        match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
            Ok(Ok(b)) => b,
            // Over the limit, or the client stopped sending (then nobody reads this answer).
            Ok(Err(_)) => {
                return refuse(
                    &a,
                    started,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body over 3 MiB or not received in full\n",
                );
            }
            Err(_) => {
                return refuse(
                    &a,
                    started,
                    StatusCode::REQUEST_TIMEOUT,
                    "request body not received in time\n",
                );
            }
        };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let reply = review::review(&a.injector, content_type, &body);
    a.metrics
        .admission(reply.outcome, started.elapsed().as_secs_f64());
    if let Some(notice) = reply.notice
        && a.notices.try_send(notice).is_err()
    {
        // Full (the API server is slow to take Events) or the recorder has stopped: the
        // admission never waits for an Event.
        a.metrics.events_dropped.inc();
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status == StatusCode::OK {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    (status, [(header::CONTENT_TYPE, content_type)], reply.body).into_response()
}

/// Whether this replica should get admissions, and whether it is healthy.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// The serving certificate (loaded before the listener opens).
    pub certs: Certs,
    /// With the in-memory CA and caBundle upkeep: ready only while the configuration is
    /// known to carry this replica's CA and its membership Lease is known to be renewed
    /// (see [`Freshness`]), since otherwise the API server cannot, or soon will not, verify
    /// it. `keyturn_webhook_ca_bundle_current` says the same.
    pub ca_bundle: Option<Freshness>,
    /// Set once shutdown starts: `/readyz` answers 503 while the listeners keep serving, so
    /// the replica leaves the Service's endpoints before it stops accepting.
    pub draining: Arc<AtomicBool>,
    /// The caBundle gauge is set here on each scrape, and the metrics served.
    pub metrics: WebhookMetrics,
}

/// Why `/readyz` answers 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotReady {
    Draining,
    CaBundle,
}

impl Readiness {
    /// Whether the caBundle is known to carry this replica's CA (always, without upkeep),
    /// with the gauge set to match.
    fn ca_bundle_current(&self) -> bool {
        let Some(f) = &self.ca_bundle else {
            return true;
        };
        let current = f.current();
        self.metrics.ca_bundle_current.set(i64::from(current));
        current
    }

    fn ready(&self) -> Result<(), NotReady> {
        if self.draining.load(Ordering::SeqCst) {
            Err(NotReady::Draining)
        } else if !self.ca_bundle_current() {
            Err(NotReady::CaBundle)
        } else {
            Ok(())
        }
    }
}

/// What `/healthz` says when the in-memory CA is about to expire.
const CA_EXPIRING: &str =
    "the in-memory CA expires within 7 days: restarting the replica makes a new one\n";

/// The plain-HTTP routes: `/metrics`, `/healthz`, `/readyz`.
pub fn metrics_router(readiness: Readiness) -> Router {
    let health = readiness.clone();
    let scrape = readiness.clone();
    Router::new()
        .route(
            "/metrics",
            get(move || {
                // The caBundle gauge ages with time, not only with the upkeep's rounds.
                scrape.ca_bundle_current();
                let text = scrape.metrics.encode();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let expiring = health.certs.ca_expiring();
                async move {
                    if expiring {
                        (StatusCode::SERVICE_UNAVAILABLE, CA_EXPIRING)
                    } else {
                        (StatusCode::OK, "ok\n")
                    }
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.ready();
                async move {
                    match ready {
                        Ok(()) => (StatusCode::OK, "ready\n"),
                        Err(NotReady::Draining) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: shutting down (still serving until the Service stops sending)\n",
                        ),
                        Err(NotReady::CaBundle) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: the MutatingWebhookConfiguration's caBundle is not known to carry this replica's CA (not yet, or the API server has not confirmed it or this replica's Lease lately)\n",
                        ),
                    }
                }
            }),
        )
}

/// Serves the metrics routes on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    readiness: Readiness,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let shed = readiness.metrics.shed("metrics");
    serve_router(listener, metrics_router(readiness), shed, limits, shutdown).await;
}

/// Serves `router` over TLS (`tls`) on `listener` under `limits` until `shutdown` resolves;
/// then stops accepting, lets requests in progress finish, and returns once every connection
/// has closed.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shed: Counter,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let acceptor = TlsAcceptor::from(tls);
    let timeout = limits.header_read_timeout;
    accept_loop(
        listener,
        shed,
        &limits,
        shutdown,
        move |stream, slot, stop| {
            tls_connection(
                stream,
                slot,
                acceptor.clone(),
                router.clone(),
                timeout,
                stop,
            )
        },
    )
    .await;
}

/// Serves one TLS connection until the client closes it, hyper closes it (header timeout, a
/// malformed request), it is evicted, or the server stops.
async fn tls_connection(
    stream: TcpStream,
    slot: Slot,
    acceptor: TlsAcceptor,
    router: Router,
    header_read_timeout: Duration,
    mut stop: watch::Receiver<()>,
) {
    let slot = Arc::new(slot);
    let tls = tokio::select! {
        r = tokio::time::timeout(header_read_timeout, acceptor.accept(stream)) => match r {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                // A client that does not trust the CA, a port scanner: the client's doing.
                tracing::debug!(error = %e, "webhook TLS handshake failed");
                return;
            }
            Err(_) => return,
        },
        () = slot.evicted() => return,
        _ = stop.changed() => return,
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    let inner = TowerToHyperService::new(router);
    // Busy while any request is in flight (HTTP/2 multiplexes), so a connection is never
    // evicted mid-response.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let service_slot = Arc::clone(&slot);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        if in_flight.fetch_add(1, Ordering::SeqCst) == 0 {
            service_slot.set_busy(true);
        }
        let response = hyper::service::Service::call(&inner, req);
        let (slot, in_flight) = (Arc::clone(&service_slot), Arc::clone(&in_flight));
        async move {
            let r: Result<_, Infallible> = response.await;
            if in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
                slot.set_busy(false);
            }
            r
        }
    });
    let io = TokioIo::new(tls);
    // The same three ends for either protocol; only the connection type differs.
    macro_rules! drive {
        ($conn:expr) => {{
            let mut conn = pin!($conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "webhook connection closed");
                    }
                }
                () = slot.evicted() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        }};
    }
    if h2 {
        let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        // Pings find a peer that vanished without closing; an idle but live API server
        // connection stays (it is reused for the next admission).
        http.timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10));
        drive!(http.serve_connection(io, service));
    } else {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        drive!(http.serve_connection(io, service));
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use rustls::pki_types::ServerName;
    use rustls::pki_types::pem::PemObject as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream;

    use super::super::inject::InjectConfig;
    use super::*;

    /// Generous: only ends a hang, never judges speed.
    const HANG_GUARD: Duration = Duration::from_secs(60);

    struct Server {
        addr: SocketAddr,
        certs: Certs,
        metrics: WebhookMetrics,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Server {
        async fn start() -> Self {
            let metrics = WebhookMetrics::new();
            let certs =
                Certs::in_memory("hook", "ns", Duration::from_secs(3600), metrics.clone()).unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (notices, _) = mpsc::channel(1);
            let router = https_router(Admission {
                injector: Arc::new(Injector {
                    config: InjectConfig::default(),
                }),
                metrics: metrics.clone(),
                notices,
            });
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(serve_https(
                listener,
                certs.server_config().unwrap(),
                router,
                metrics.shed("https"),
                Limits::default(),
                async move {
                    let _ = stopped.await;
                },
            ));
            Self {
                addr,
                certs,
                metrics,
                stop: Some(stop),
                task,
            }
        }

        /// A TLS connection trusting only the in-memory CA, for `hook.ns.svc`, HTTP/1.1.
        async fn connect(&self) -> TlsStream<TcpStream> {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(
                    rustls::pki_types::CertificateDer::from_pem_slice(
                        self.certs.ca_pem().unwrap().as_bytes(),
                    )
                    .unwrap(),
                )
                .unwrap();
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            let tcp = TcpStream::connect(self.addr).await.unwrap();
            TlsConnector::from(Arc::new(config))
                .connect(ServerName::try_from("hook.ns.svc").unwrap(), tcp)
                .await
                .unwrap()
        }

        async fn stop(mut self) {
            let _ = self.stop.take().unwrap().send(());
            tokio::time::timeout(HANG_GUARD, self.task)
                .await
                .expect("the server did not stop")
                .unwrap();
        }
    }

    /// Sends one keep-alive request and reads its whole response (by Content-Length).
    async fn request(s: &mut TlsStream<TcpStream>, head: &str) -> String {
        s.write_all(head.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(HANG_GUARD, async {
            loop {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(
                    n > 0,
                    "closed mid-response: {}",
                    String::from_utf8_lossy(&buf)
                );
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        return text;
                    }
                }
            }
        })
        .await
        .expect("no answer")
    }

    fn leaf(s: &TlsStream<TcpStream>) -> rustls::pki_types::CertificateDer<'static> {
        s.get_ref().1.peer_certificates().unwrap()[0]
            .clone()
            .into_owned()
    }

    #[tokio::test]
    async fn a_connection_open_across_a_renewal_keeps_working_and_a_new_one_gets_the_new_certificate()
     {
        let server = Server::start().await;
        let mut old = server.connect().await;
        let first = leaf(&old);
        let r = request(&mut old, "GET /nothing HTTP/1.1\r\nHost: h\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");

        server.certs.renew().unwrap();
        let mut new = server.connect().await;
        assert_ne!(
            leaf(&new),
            first,
            "a new handshake still got the old certificate"
        );
        assert_eq!(leaf(&new), server.certs.current_chain()[0]);
        // The connection from before the swap still answers, with its certificate.
        let r = request(&mut old, "GET /nothing HTTP/1.1\r\nHost: h\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        assert_eq!(leaf(&old), first);
        let r = request(&mut new, "GET /nothing HTTP/1.1\r\nHost: h\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        server.stop().await;
    }

    #[tokio::test]
    async fn a_body_declared_over_3_mib_is_refused_413_unread_and_counted_malformed() {
        let server = Server::start().await;
        let mut s = server.connect().await;
        // Headers only: the server must answer without waiting for the 10 MiB.
        let r = request(
            &mut s,
            "POST /mutate HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 10485760\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 413"), "{r}");
        let mut s = server.connect().await;
        let r = request(&mut s, "GET /mutate HTTP/1.1\r\nHost: h\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        let text = server.metrics.encode();
        assert!(
            text.contains("keyturn_webhook_admissions_total{outcome=\"malformed\"} 1\n"),
            "{text}"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn a_chunked_body_past_3_mib_is_cut_off_with_413() {
        let server = Server::start().await;
        let mut s = server.connect().await;
        s.write_all(
            b"POST /mutate HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
        // Exactly one byte past the limit, so nothing unread is left when the server stops.
        let chunk = vec![b'a'; MAX_BODY + 1];
        s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        s.write_all(&chunk).await.unwrap();
        s.write_all(b"\r\n0\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(HANG_GUARD, s.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
        server.stop().await;
    }
}

//! The daemon's HTTP endpoints: `/metrics` (Prometheus text format), `/healthz` (the process
//! is alive and its audit log writable), `/readyz` (policies loaded and stores reachable, the
//! audit log writable; not while shutting down).
//!
//! The listener must survive whatever connects to it: a probe that fails because a scanner
//! left thousands of sockets open gets a healthy daemon restarted, and every descriptor those
//! sockets hold is one a rotation cannot use for Vault or a database. So it is served with
//! hyper's own HTTP/1 connection rather than `axum::serve` (which sets no timer, so no
//! timeout, and takes every connection offered), under two bounds:
//!
//! - a **header read timeout**: a connection has [`Limits::header_read_timeout`] to deliver a
//!   request's headers, counted from when it opens and again after each response, so one
//!   that sends nothing, half a request, or sits idle on keep-alive is closed;
//! - a **connection cap**: at most [`Limits::max_connections`] are open at once. When a new
//!   one arrives at the cap, the connection that has waited longest without sending a
//!   request is closed to make room (a probe sends its request at once, so it is never the
//!   one waiting longest); only when every open connection is mid-request is the new one
//!   refused. Either way the connection is counted in
//!   `keyturn_http_connections_shed_total` and a WARN says so, at most once per
//!   [`Limits::warn_interval`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use super::Metrics;

/// The listener's bounds.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once. Each holds one descriptor; Prometheus and the kubelet's
    /// probes need a handful.
    pub max_connections: usize,
    /// How long a connection may take to deliver a request's headers, from when it opens or
    /// its previous response was sent.
    pub header_read_timeout: Duration,
    /// At most one WARN about shed connections (and one about failing accepts) per interval.
    pub warn_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(5),
            warn_interval: Duration::from_secs(60),
        }
    }
}

/// Serves the endpoints on a bound `listener` under `limits` until `shutdown` resolves; then
/// stops accepting, lets requests in progress finish, and returns once every connection has
/// closed (idle ones close at once).
pub async fn serve_on(
    listener: TcpListener,
    metrics: Metrics,
    ready: watch::Receiver<bool>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    serve_router(
        listener,
        router(metrics.clone(), ready),
        metrics.http_shed.clone(),
        limits,
        shutdown,
    )
    .await;
}

/// Serves `router` over plain HTTP/1 on `listener` under `limits` (`shed` counts the
/// connections closed at the cap) until `shutdown` resolves, as [`serve_on`] does. keyturn
/// webhook's metrics listener is served this way too.
pub(crate) async fn serve_router(
    listener: TcpListener,
    router: Router,
    shed: Counter,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let header_read_timeout = limits.header_read_timeout;
    accept_loop(
        listener,
        shed,
        &limits,
        shutdown,
        move |stream, slot, stop| {
            connection(stream, slot, router.clone(), header_read_timeout, stop)
        },
    )
    .await;
}

/// Accepts connections on `listener` under the connection cap of `limits` until `shutdown`
/// resolves, handing each to `serve` with its [`Slot`] and a receiver that changes when
/// serving stops (the connection should then finish its request and close); then returns once
/// every connection has closed. `shed` counts connections closed at the cap.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shed_total: Counter,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    serve: F,
) where
    F: Fn(TcpStream, Slot, watch::Receiver<()>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let table = Arc::new(Mutex::new(Table::default()));
    let mut shed = RateLimited::new(limits.warn_interval);
    let mut accept_errors = RateLimited::new(limits.warn_interval);
    let addr = listener.local_addr().ok();
    // Closed when serving stops; each connection holds a receiver, so `closed()` below
    // resolves once the last connection is gone.
    let (stop_tx, stop_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Small responses go out at once: without this, a reply written after a
                    // TLS 1.3 handshake's session tickets waits ~40 ms for the client's
                    // delayed ACK (Nagle), which dominated admission latency at p99.
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                    stream
                }
                Err(e) => {
                    // EMFILE and the like: the pending connection stays in the backlog, so
                    // pause instead of spinning on it.
                    if let Some(n) = accept_errors.note(Instant::now()) {
                        tracing::warn!(error = %e, failures = n, listen = ?addr, "the listener cannot accept connections");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(permit) = admit(&slots, &table, limits.header_read_timeout).await else {
            // Dropping the stream closes it: refused before a byte is read.
            drop(stream);
            shed_total.inc();
            if let Some(n) = shed.note(Instant::now()) {
                tracing::warn!(
                    limit = limits.max_connections,
                    shed = n,
                    listen = ?addr,
                    "listener at its connection cap with every connection mid-request; refusing new connections"
                );
            }
            continue;
        };
        if permit.evicted {
            shed_total.inc();
            if let Some(n) = shed.note(Instant::now()) {
                tracing::warn!(
                    limit = limits.max_connections,
                    shed = n,
                    listen = ?addr,
                    "listener at its connection cap; closing the connections that waited longest without a request"
                );
            }
        }
        tokio::spawn(serve(stream, permit, stop_rx.clone()));
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(());
    stop_tx.closed().await;
}

/// The piece of the exposition `/metrics` sends at a time.
const METRICS_CHUNK: usize = 64 * 1024;

/// `/metrics`, streamed: the text is written in a blocking thread (25,000 policies take tens
/// of milliseconds) and sent a piece at a time as it is written, two pieces in flight at most,
/// so a scrape holds about 200 KB of it rather than all of it (17 MB at 25,000 policies).
/// A scraper that goes away stops the writing at the next piece.
fn exposition(metrics: Metrics) -> axum::body::Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<axum::body::Bytes>(2);
    tokio::task::spawn_blocking(move || {
        metrics.encode_chunks(METRICS_CHUNK, &mut |piece| {
            tx.blocking_send(axum::body::Bytes::from(piece)).is_ok()
        });
    });
    let pieces = futures_util::stream::unfold(rx, |mut rx| async move {
        let piece = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(piece), rx))
    });
    axum::body::Body::from_stream(pieces)
}

/// What `/healthz` and `/readyz` answer while the audit log refuses events.
const AUDIT_FAILED: &str =
    "audit log failed: every rotation stops before its next step until keyturn restarts\n";

/// The routes, for serving on a listener of the caller's.
///
/// A failed audit log makes both probes answer 503: the process can rotate nothing until it
/// restarts (see [`Metrics::audit_failed`]), so the liveness probe gets it restarted, and
/// restarting is what reopens the log once its disk has room again.
pub fn router(metrics: Metrics, ready: watch::Receiver<bool>) -> Router {
    let health = metrics.clone();
    let readiness = metrics.clone();
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                        exposition(m),
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let failed = health.audit_failed();
                async move {
                    if failed {
                        (StatusCode::SERVICE_UNAVAILABLE, AUDIT_FAILED)
                    } else {
                        (StatusCode::OK, "ok\n")
                    }
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let ready = *ready.borrow();
                let failed = readiness.audit_failed();
                async move {
                    if failed {
                        (StatusCode::SERVICE_UNAVAILABLE, AUDIT_FAILED)
                    } else if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
}

/// A slot for one connection: its semaphore permit and its entry in the table.
pub(crate) struct Slot {
    /// Held, never read: the slot counts against the cap until it is dropped.
    _permit: OwnedSemaphorePermit,
    id: u64,
    evict: Arc<Notify>,
    table: Arc<Mutex<Table>>,
    /// Whether another connection was closed to make room for this one.
    evicted: bool,
}

impl Slot {
    /// Marks the connection busy (serving a request: never evicted) or idle again.
    pub(crate) fn set_busy(&self, busy: bool) {
        lock(&self.table).set_busy(self.id, busy);
    }

    /// Resolves when the connection is evicted to make room for a new one.
    pub(crate) async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.table).conns.remove(&self.id);
    }
}

/// Takes a slot for a new connection: a free one, else the one of the connection that has
/// waited longest for a request, which is told to close. `None` when every connection is
/// serving a request (or an evicted one did not let go within `wait`).
async fn admit(slots: &Arc<Semaphore>, table: &Arc<Mutex<Table>>, wait: Duration) -> Option<Slot> {
    let (permit, evicted) = match Arc::clone(slots).try_acquire_owned() {
        Ok(p) => (p, false),
        Err(_) => {
            let victim = lock(table).evict_longest_idle()?;
            victim.notify_one();
            // The victim's task drops its permit as it ends, which is as soon as it runs.
            let p = tokio::time::timeout(wait, Arc::clone(slots).acquire_owned())
                .await
                .ok()?
                .ok()?;
            (p, true)
        }
    };
    let evict = Arc::new(Notify::new());
    let id = lock(table).open(Arc::clone(&evict));
    Some(Slot {
        _permit: permit,
        id,
        evict,
        table: Arc::clone(table),
        evicted,
    })
}

/// Serves one connection until the client closes it, hyper closes it (header timeout, a
/// malformed request), it is evicted, or the server stops.
async fn connection(
    stream: TcpStream,
    slot: Slot,
    router: Router,
    header_read_timeout: Duration,
    mut stop: watch::Receiver<()>,
) {
    let inner = TowerToHyperService::new(router);
    let (table, id) = (Arc::clone(&slot.table), slot.id);
    // Marks the connection busy while a request is served, so it is never the one evicted
    // mid-response; idle again (and newest in line) once the response is ready.
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        lock(&table).set_busy(id, true);
        let response = hyper::service::Service::call(&inner, req);
        let table = Arc::clone(&table);
        async move {
            let r: Result<_, Infallible> = response.await;
            lock(&table).set_busy(id, false);
            r
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let mut conn = pin!(http.serve_connection(TokioIo::new(stream), service));
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                // A header timeout or a malformed request: the client's doing, not ours.
                tracing::debug!(error = %e, "metrics connection closed");
            }
        }
        () = slot.evict.notified() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    // `conn` (a local, holding the socket) is dropped before `slot` (an argument, holding
    // the permit): a slot is free only once its descriptor is.
}

/// The open connections: whether each is serving a request, and if not, since when (a
/// logical clock, so eviction order needs no time reading).
#[derive(Debug, Default)]
struct Table {
    conns: HashMap<u64, Entry>,
    next_id: u64,
    clock: u64,
}

#[derive(Debug)]
struct Entry {
    /// When it last became idle; `None` while a request is being served.
    idle_since: Option<u64>,
    evict: Arc<Notify>,
}

impl Table {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn open(&mut self, evict: Arc<Notify>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let idle_since = Some(self.tick());
        self.conns.insert(id, Entry { idle_since, evict });
        id
    }

    fn set_busy(&mut self, id: u64, busy: bool) {
        let idle_since = if busy { None } else { Some(self.tick()) };
        if let Some(e) = self.conns.get_mut(&id) {
            e.idle_since = idle_since;
        }
    }

    /// Removes the connection idle the longest and returns its eviction signal; `None` when
    /// every connection is serving a request.
    fn evict_longest_idle(&mut self) -> Option<Arc<Notify>> {
        let (&id, _) = self
            .conns
            .iter()
            .filter_map(|(id, e)| e.idle_since.map(|t| (id, t)))
            .min_by_key(|&(_, t)| t)?;
        self.conns.remove(&id).map(|e| e.evict)
    }
}

fn lock(table: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts events and says when one may be logged: the first at once, then at most one per
/// interval, carrying how many happened since the last.
#[derive(Debug)]
struct RateLimited {
    interval: Duration,
    last: Option<Instant>,
    pending: u64,
}

impl RateLimited {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            pending: 0,
        }
    }

    /// Notes one event at `now`; `Some(count since the last log line)` when it may be logged.
    fn note(&mut self, now: Instant) -> Option<u64> {
        self.pending += 1;
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < self.interval)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Generous: only ends a hang, never judges speed.
    const HANG_GUARD: Duration = Duration::from_secs(60);

    struct Server {
        addr: SocketAddr,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Server {
        async fn start(limits: Limits) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (_ready_tx, ready) = watch::channel(true);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(serve_on(
                listener,
                Metrics::new(None),
                ready,
                limits,
                async move {
                    let _ = stopped.await;
                },
            ));
            Self {
                addr,
                stop: Some(stop),
                task,
            }
        }

        /// One request on a fresh connection; the whole response.
        async fn get(&self, path: &str) -> String {
            let mut s = TcpStream::connect(self.addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            tokio::time::timeout(HANG_GUARD, s.read_to_string(&mut out))
                .await
                .expect("no answer")
                .unwrap();
            out
        }

        async fn stop(mut self) {
            let _ = self.stop.take().unwrap().send(());
            tokio::time::timeout(HANG_GUARD, self.task)
                .await
                .expect("the server did not stop")
                .unwrap();
        }
    }

    /// Reads until the server closes the connection; `None` if it never does.
    async fn until_closed(s: &mut TcpStream) -> Option<String> {
        let mut out = Vec::new();
        match tokio::time::timeout(HANG_GUARD, s.read_to_end(&mut out)).await {
            Ok(Ok(_)) => Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                Some(String::from_utf8_lossy(&out).into_owned())
            }
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => None,
        }
    }

    /// Makes room for `n` more descriptors under the soft limit, up to the hard one.
    fn ensure_descriptors(n: u64) {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let lim = getrlimit(Resource::Nofile);
        let want = n + 512;
        if lim.current.is_some_and(|c| c < want) {
            let raised = rustix::process::Rlimit {
                current: Some(lim.maximum.map_or(want, |m| want.min(m))),
                maximum: lim.maximum,
            };
            setrlimit(Resource::Nofile, raised).unwrap();
        }
        let now = getrlimit(Resource::Nofile).current;
        assert!(
            now.is_none_or(|c| c >= want),
            "need {want} descriptors, the hard limit allows {now:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_thousand_idle_connections_leave_healthz_answering_and_hold_at_most_the_cap() {
        const IDLE: usize = 2000;
        const CAP: usize = 64;
        // Both ends of every connection live in this process.
        ensure_descriptors(2 * IDLE as u64);
        // A long header timeout: whatever closes the idle connections below is the cap.
        let server = Server::start(Limits {
            max_connections: CAP,
            header_read_timeout: Duration::from_secs(600),
            ..Limits::default()
        })
        .await;
        let mut idle = Vec::with_capacity(IDLE);
        for _ in 0..IDLE {
            let s = TcpStream::connect(server.addr).await.unwrap();
            // Plain non-blocking sockets: a read says at once whether the server closed it.
            idle.push(s.into_std().unwrap());
        }

        // Accepted after every idle connection, so by its answer each of those was admitted
        // or shed.
        let health = server.get("/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(health.ends_with("ok\n"), "{health}");
        let ready = server.get("/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

        let mut open = 0;
        for s in &mut idle {
            match s.read(&mut [0u8; 16]) {
                Ok(0) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open += 1,
                other => panic!("an idle connection got {other:?}"),
            }
        }
        assert!(
            open <= CAP,
            "{open} of {IDLE} idle connections still open; the cap is {CAP}"
        );
        let metrics = server.get("/metrics").await;
        let shed: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("keyturn_http_connections_shed_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no shed counter in {metrics}"));
        assert!(shed >= (IDLE - CAP) as u64, "{shed} shed");
        drop(idle);
        server.stop().await;
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_half_a_request_or_idles_after_one_is_closed() {
        let server = Server::start(Limits {
            header_read_timeout: Duration::from_millis(200),
            ..Limits::default()
        })
        .await;
        let mut silent = TcpStream::connect(server.addr).await.unwrap();
        let mut half = TcpStream::connect(server.addr).await.unwrap();
        half.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
            .await
            .unwrap();
        let mut kept = TcpStream::connect(server.addr).await.unwrap();
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();

        let silent = until_closed(&mut silent).await;
        assert_eq!(
            silent.as_deref(),
            Some(""),
            "a silent connection stays open"
        );
        let half = until_closed(&mut half)
            .await
            .expect("a half request stays open");
        assert!(!half.contains("200 OK"), "{half}");
        // Answered, then closed once it sent no next request in time.
        let kept = until_closed(&mut kept)
            .await
            .expect("an idle keep-alive connection stays open");
        assert!(kept.starts_with("HTTP/1.1 200"), "{kept}");
        assert_eq!(kept.matches("HTTP/1.1").count(), 1, "{kept}");
        server.stop().await;
    }

    #[test]
    fn eviction_takes_the_connection_idle_longest_and_never_one_mid_request() {
        let mut t = Table::default();
        let a = t.open(Arc::new(Notify::new()));
        let b = t.open(Arc::new(Notify::new()));
        let c = t.open(Arc::new(Notify::new()));
        t.set_busy(a, true);
        // b is the oldest idle one.
        assert!(t.evict_longest_idle().is_some());
        assert!(!t.conns.contains_key(&b) && t.conns.len() == 2);
        // a finishes its request: now idle, but newer than c.
        t.set_busy(a, false);
        assert!(t.evict_longest_idle().is_some());
        assert!(!t.conns.contains_key(&c) && t.conns.contains_key(&a));
        t.set_busy(a, true);
        assert!(t.evict_longest_idle().is_none(), "a is mid-request");
    }

    #[test]
    fn shed_warnings_come_at_most_once_per_interval_and_carry_the_count() {
        let mut r = RateLimited::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(r.note(t0), Some(1));
        for _ in 0..999 {
            assert_eq!(r.note(t0 + Duration::from_secs(59)), None);
        }
        assert_eq!(r.note(t0 + Duration::from_secs(60)), Some(1000));
        assert_eq!(r.note(t0 + Duration::from_secs(61)), None);
    }
}

//! A TCP fault proxy: sits on a loopback port of its own between keyturn and a real server
//! (OpenBao, PostgreSQL, moto, the Kubernetes API) and, switched at run time, passes traffic,
//! refuses it, resets a connection part-way through an answer, delays it, swallows it, or
//! (for an HTTP upstream) answers every request itself with a fixed error status.
//!
//! It counts connections and, for HTTP, requests, under the mode that was in force when each
//! arrived, so a fault-injection test can say how many requests the failing server got and
//! hold that against what the client's backoff allows. Counting happens here rather than in
//! the server because a server that is "down" cannot count what it never saw.
//!
//! Switching modes ends every connection the proxy is carrying (as a server going away or a
//! network change would), except black-holed ones: a request lost in a black hole never gets
//! an answer, so only the client's own timeout ends it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// Forward both ways, untouched.
    Pass,
    /// Accept each connection and reset it at once (counted; the client sees a reset).
    Refuse,
    /// Stop listening: the kernel refuses connections, as for a server that is not running.
    /// Nothing is counted, because nothing arrives.
    Closed,
    /// Forward, but reset the connection once this many bytes of the upstream's answer have
    /// reached the client (a server dying mid-response).
    ResetAfter(usize),
    /// Forward, holding every chunk this long before passing it on, in each direction.
    Delay(Duration),
    /// Accept, read and discard, never answer.
    BlackHole,
    /// HTTP only: answer every request with this status (403, 409, 429, 500, 503, …) and a
    /// Vault-style JSON error body, never forwarding it.
    Status(u16),
}

/// What arrived under one mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Connections accepted.
    pub connections: u64,
    /// HTTP requests whose head arrived (always 0 for a plain TCP proxy).
    pub requests: u64,
}

impl std::ops::Add for Counts {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            connections: self.connections + o.connections,
            requests: self.requests + o.requests,
        }
    }
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    http: bool,
    mode: watch::Sender<Mode>,
    counts: Mutex<BTreeMap<Mode, Counts>>,
}

impl Shared {
    fn count(&self, mode: Mode, connections: u64, requests: u64) {
        let mut c = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let e = c.entry(mode).or_default();
        e.connections += connections;
        e.requests += requests;
    }
}

/// A running proxy. Dropping it stops it and ends every connection it carries.
#[derive(Debug)]
pub struct FaultProxy {
    shared: Arc<Shared>,
    port: u16,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// A plain TCP proxy (PostgreSQL) in front of `upstream`, in [`Mode::Pass`].
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn tcp(upstream: SocketAddr) -> std::io::Result<Self> {
        Self::start(upstream, false).await
    }

    /// An HTTP-aware proxy (OpenBao, moto, the Kubernetes API over plain HTTP) in front of
    /// `upstream`, in [`Mode::Pass`]: it also counts requests and can answer a status.
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn http(upstream: SocketAddr) -> std::io::Result<Self> {
        Self::start(upstream, true).await
    }

    async fn start(upstream: SocketAddr, http: bool) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (mode, _) = watch::channel(Mode::Pass);
        let shared = Arc::new(Shared {
            upstream,
            http,
            mode,
            counts: Mutex::new(BTreeMap::new()),
        });
        let task = tokio::spawn(accept_loop(shared.clone(), listener, port));
        Ok(Self { shared, port, task })
    }

    /// The proxy's port on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The mode in force.
    #[must_use]
    pub fn mode(&self) -> Mode {
        *self.shared.mode.borrow()
    }

    /// Switches to `mode`, ending the connections it carries (black-holed ones excepted).
    ///
    /// # Panics
    /// For [`Mode::Status`] on a plain TCP proxy, which cannot speak HTTP.
    pub fn set(&self, mode: Mode) {
        assert!(
            self.shared.http || !matches!(mode, Mode::Status(_)),
            "a status answer needs an HTTP proxy (FaultProxy::http)"
        );
        self.shared.mode.send_replace(mode);
    }

    /// What arrived under `mode` so far.
    #[must_use]
    pub fn counts(&self, mode: Mode) -> Counts {
        self.lock().get(&mode).copied().unwrap_or_default()
    }

    /// What arrived under every mode so far.
    #[must_use]
    pub fn total(&self) -> Counts {
        self.lock().values().fold(Counts::default(), |a, &b| a + b)
    }

    /// Every mode's counts so far (for a report line).
    #[must_use]
    pub fn all_counts(&self) -> BTreeMap<Mode, Counts> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Mode, Counts>> {
        self.shared
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept task owns every connection task (a JoinSet): aborting it ends them all.
        self.task.abort();
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, port: u16) {
    let mut listener = Some(listener);
    let mut conns = JoinSet::new();
    let mut changes = shared.mode.subscribe();
    loop {
        let mode = *changes.borrow_and_update();
        if mode == Mode::Closed {
            // Dropping the listener makes the kernel refuse new connections (and reset those
            // waiting in the backlog), exactly as for a stopped server.
            listener = None;
            if changes.changed().await.is_err() {
                return;
            }
            continue;
        }
        let l = match &listener {
            Some(l) => l,
            None => match TcpListener::bind(("127.0.0.1", port)).await {
                // tokio sets SO_REUSEADDR, so the port comes back at once.
                Ok(l) => listener.insert(l),
                Err(e) => {
                    tracing::warn!(port, error = %e, "fault proxy cannot listen again; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        tokio::select! {
            accepted = l.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let _ = client.set_nodelay(true);
                // The mode now, not the one this loop last saw: a switch is acted on at once.
                let mode = *shared.mode.borrow();
                shared.count(mode, 1, 0);
                conns.spawn(handle(shared.clone(), client, mode));
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Waits until the mode is no longer `mode`.
async fn mode_left(mut changes: watch::Receiver<Mode>, mode: Mode) {
    let _ = changes.wait_for(|m| *m != mode).await;
}

async fn handle(shared: Arc<Shared>, client: TcpStream, mode: Mode) {
    let changes = shared.mode.subscribe();
    match mode {
        Mode::Refuse | Mode::Closed => reset(client),
        Mode::BlackHole => black_hole(&shared, client, mode).await,
        Mode::Status(code) => {
            tokio::select! {
                () = answer_status(&shared, client, code) => {}
                () = mode_left(changes, mode) => {}
            }
        }
        Mode::Pass | Mode::Delay(_) | Mode::ResetAfter(_) => {
            forward(&shared, client, mode, changes).await;
        }
    }
}

/// Closes `s` with a TCP reset rather than an orderly FIN.
fn reset(s: TcpStream) {
    // Zero linger never blocks on close (the reason tokio deprecates other linger values).
    let _ = s.set_zero_linger();
    drop(s);
}

async fn black_hole(shared: &Shared, mut client: TcpStream, mode: Mode) {
    let mut framer = shared.http.then(HttpFramer::default);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Some(f) = framer.as_mut() {
                    let (heads, _) = f.feed(&buf[..n]);
                    shared.count(mode, 0, heads);
                }
            }
        }
    }
}

async fn answer_status(shared: &Shared, mut client: TcpStream, code: u16) {
    let mut framer = HttpFramer::default();
    let mut buf = vec![0u8; 16 * 1024];
    let body = format!("{{\"errors\":[\"fault proxy: injected {code}\"]}}");
    let answer = format!(
        "HTTP/1.1 {code} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        reason(code),
        body.len()
    );
    loop {
        let n = match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let (heads, complete) = framer.feed(&buf[..n]);
        shared.count(Mode::Status(code), 0, heads);
        for _ in 0..complete {
            if client.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
        if framer.broken {
            return;
        }
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Injected",
    }
}

/// How the upstream-to-client direction ended.
enum Ended {
    /// The upstream closed (or failed): close the client normally.
    Closed,
    /// The byte budget of [`Mode::ResetAfter`] ran out: reset the client.
    Reset,
}

async fn forward(
    shared: &Shared,
    mut client: TcpStream,
    mode: Mode,
    changes: watch::Receiver<Mode>,
) {
    let up =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(shared.upstream)).await;
    let Ok(Ok(mut up)) = up else {
        // The real server is not there: to the client, that is a refused connection.
        return reset(client);
    };
    let _ = up.set_nodelay(true);
    let delay = match mode {
        Mode::Delay(d) => Some(d),
        _ => None,
    };
    let budget = match mode {
        Mode::ResetAfter(n) => Some(n),
        _ => None,
    };
    let ended = {
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = up.split();
        let c2u = async {
            let mut framer = shared.http.then(HttpFramer::default);
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if let Some(f) = framer.as_mut() {
                    let (heads, _) = f.feed(&buf[..n]);
                    shared.count(mode, 0, heads);
                }
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                if uw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            // The client is done sending: pass the half-close on and let the answer finish.
            let _ = uw.shutdown().await;
            std::future::pending::<()>().await;
        };
        let u2c = async {
            let mut left = budget;
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match ur.read(&mut buf).await {
                    Ok(0) | Err(_) => return Ended::Closed,
                    Ok(n) => n,
                };
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                let n_out = left.map_or(n, |l| l.min(n));
                if cw.write_all(&buf[..n_out]).await.is_err() {
                    return Ended::Closed;
                }
                if let Some(l) = left.as_mut() {
                    *l -= n_out;
                    if *l == 0 {
                        let _ = cw.flush().await;
                        return Ended::Reset;
                    }
                }
            }
        };
        tokio::select! {
            () = c2u => Ended::Closed,
            e = u2c => e,
            () = mode_left(changes, mode) => Ended::Closed,
        }
    };
    match ended {
        Ended::Reset => reset(client),
        Ended::Closed => drop(client),
    }
}

/// Finds the boundaries of HTTP/1.1 requests in a client's byte stream, so requests can be
/// counted on a kept-alive connection and answered one by one. Bodies are framed by
/// `Content-Length` or chunked encoding; anything it cannot frame (a head over 64 KiB, a bad
/// length) marks it broken, and it counts nothing more on that connection.
#[derive(Debug, Default)]
struct HttpFramer {
    state: FrameState,
    line: Vec<u8>,
    broken: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum FrameState {
    #[default]
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd(u8),
    Trailer,
}

const MAX_HEAD: usize = 64 * 1024;

impl HttpFramer {
    /// Feeds bytes; returns how many request heads and how many whole requests ended in them.
    fn feed(&mut self, mut data: &[u8]) -> (u64, u64) {
        let (mut heads, mut complete) = (0, 0);
        while !data.is_empty() && !self.broken {
            match self.state {
                FrameState::Head => {
                    let (b, rest) = data.split_at(1);
                    data = rest;
                    self.line.push(b[0]);
                    if self.line == b"\r\n" || self.line == b"\n" {
                        // Stray line breaks between requests are allowed (RFC 9112 2.2).
                        self.line.clear();
                    } else if self.line.ends_with(b"\r\n\r\n") {
                        heads += 1;
                        match body_framing(&self.line) {
                            Some(Framing::None) => {
                                complete += 1;
                            }
                            Some(Framing::Length(n)) => self.state = FrameState::Body(n),
                            Some(Framing::Chunked) => self.state = FrameState::ChunkSize,
                            None => self.broken = true,
                        }
                        self.line.clear();
                    } else if self.line.len() > MAX_HEAD {
                        self.broken = true;
                    }
                }
                FrameState::Body(left) | FrameState::ChunkData(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                    data = &data[take..];
                    let left = left - take as u64;
                    self.state = match (self.state, left) {
                        (FrameState::Body(_), 0) => {
                            complete += 1;
                            FrameState::Head
                        }
                        (FrameState::Body(_), l) => FrameState::Body(l),
                        (_, 0) => FrameState::ChunkEnd(2),
                        (_, l) => FrameState::ChunkData(l),
                    };
                }
                FrameState::ChunkEnd(k) => {
                    let take = usize::from(k).min(data.len());
                    data = &data[take..];
                    let k = k - take as u8;
                    self.state = if k == 0 {
                        FrameState::ChunkSize
                    } else {
                        FrameState::ChunkEnd(k)
                    };
                }
                FrameState::ChunkSize | FrameState::Trailer => {
                    let (b, rest) = data.split_at(1);
                    data = rest;
                    self.line.push(b[0]);
                    if self.line.len() > MAX_HEAD {
                        self.broken = true;
                    } else if self.line.ends_with(b"\n") {
                        let text = String::from_utf8_lossy(&self.line).trim().to_owned();
                        self.line.clear();
                        if self.state == FrameState::Trailer {
                            if text.is_empty() {
                                complete += 1;
                                self.state = FrameState::Head;
                            }
                        } else {
                            let hex = text.split(';').next().unwrap_or("").trim();
                            match u64::from_str_radix(hex, 16) {
                                Ok(0) => self.state = FrameState::Trailer,
                                Ok(n) => self.state = FrameState::ChunkData(n),
                                Err(_) => self.broken = true,
                            }
                        }
                    }
                }
            }
        }
        (heads, complete)
    }
}

enum Framing {
    None,
    Length(u64),
    Chunked,
}

fn body_framing(head: &[u8]) -> Option<Framing> {
    let text = std::str::from_utf8(head).ok()?;
    let mut framing = Framing::None;
    for line in text.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            if value.to_ascii_lowercase().ends_with("chunked") {
                framing = Framing::Chunked;
            }
        } else if name.eq_ignore_ascii_case("content-length")
            && !matches!(framing, Framing::Chunked)
        {
            let n: u64 = value.parse().ok()?;
            framing = if n == 0 {
                Framing::None
            } else {
                Framing::Length(n)
            };
        }
    }
    Some(framing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// An echo server: what a plain TCP upstream looks like.
    async fn echo() -> (SocketAddr, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (addr, task)
    }

    /// A keep-alive HTTP/1.1 server answering every request with 200 and a 4000-byte body,
    /// counting the requests it saw (with the proxy's own framer, so bodies are skipped).
    async fn http_server() -> (SocketAddr, Arc<AtomicU64>, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let mut f = HttpFramer::default();
                    let mut buf = vec![0u8; 8192];
                    let body = "x".repeat(4000);
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    loop {
                        let n = match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let (_, done) = f.feed(&buf[..n]);
                        for _ in 0..done {
                            seen.fetch_add(1, Ordering::SeqCst);
                            if s.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, seen, task)
    }

    async fn round_trip(port: u16, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await?;
        Ok(got)
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn fault_proxy_passes_bytes_both_ways_and_counts_connections() {
        let (up, _t) = echo().await;
        let p = FaultProxy::tcp(up).await.unwrap();
        for i in 0..3u8 {
            let msg = vec![i; 100_000];
            assert_eq!(round_trip(p.port(), &msg).await.unwrap(), msg);
        }
        assert_eq!(
            p.counts(Mode::Pass),
            Counts {
                connections: 3,
                requests: 0
            }
        );
    }

    #[tokio::test]
    async fn fault_proxy_refuse_resets_each_connection_and_counts_it_then_passes_again() {
        let (up, _t) = echo().await;
        let p = FaultProxy::tcp(up).await.unwrap();
        p.set(Mode::Refuse);
        for _ in 0..4 {
            assert!(round_trip(p.port(), b"hello").await.is_err());
        }
        assert_eq!(p.counts(Mode::Refuse).connections, 4);
        p.set(Mode::Pass);
        assert_eq!(round_trip(p.port(), b"hello").await.unwrap(), b"hello");
        assert_eq!(p.counts(Mode::Pass).connections, 1);
    }

    #[tokio::test]
    async fn fault_proxy_closed_stops_listening_and_listens_again_on_the_same_port() {
        let (up, _t) = echo().await;
        let p = FaultProxy::tcp(up).await.unwrap();
        p.set(Mode::Closed);
        crate::process::eventually("the proxy stopped listening", || async {
            matches!(
                TcpStream::connect(("127.0.0.1", p.port())).await,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
            )
        })
        .await;
        p.set(Mode::Pass);
        crate::process::eventually("the proxy listens again", || async {
            round_trip(p.port(), b"back").await.is_ok()
        })
        .await;
        assert_eq!(p.counts(Mode::Closed), Counts::default());
    }

    #[tokio::test]
    async fn fault_proxy_a_mode_switch_ends_the_connections_it_carries() {
        let (up, _t) = echo().await;
        let p = FaultProxy::tcp(up).await.unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", p.port())).await.unwrap();
        s.write_all(b"one").await.unwrap();
        let mut got = [0u8; 3];
        s.read_exact(&mut got).await.unwrap();
        p.set(Mode::Refuse);
        // The server "went away": the client's open connection ends, nothing more is echoed.
        let mut rest = Vec::new();
        let _ = s.write_all(b"two").await;
        let n = s.read_to_end(&mut rest).await.unwrap_or(0);
        assert_eq!(n, 0, "{rest:?}");
    }

    #[tokio::test]
    async fn fault_proxy_delay_holds_each_chunk_and_still_delivers_it() {
        let (up, _t) = echo().await;
        let p = FaultProxy::tcp(up).await.unwrap();
        p.set(Mode::Delay(Duration::from_secs(2)));
        let mut s = TcpStream::connect(("127.0.0.1", p.port())).await.unwrap();
        s.write_all(b"late").await.unwrap();
        let mut got = [0u8; 4];
        // Not a timing assertion on the proxy's speed: the echo cannot come back before the
        // 2 s the proxy holds it in each direction, so a short read must find nothing.
        assert!(
            tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut got))
                .await
                .is_err(),
            "the answer came back undelayed"
        );
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"late");
        assert_eq!(p.counts(Mode::Delay(Duration::from_secs(2))).connections, 1);
    }

    #[tokio::test]
    async fn fault_proxy_reset_after_cuts_the_answer_with_a_reset() {
        let (up, _t) = echo().await;
        let p = FaultProxy::tcp(up).await.unwrap();
        p.set(Mode::ResetAfter(1000));
        let mut s = TcpStream::connect(("127.0.0.1", p.port())).await.unwrap();
        s.write_all(&[7u8; 5000]).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        let end = loop {
            match s.read(&mut buf).await {
                Ok(0) => break None,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break Some(e.kind()),
            }
        };
        assert_eq!(got.len(), 1000, "exactly the budget reached the client");
        assert_eq!(end, Some(std::io::ErrorKind::ConnectionReset));
    }

    #[tokio::test]
    async fn fault_proxy_http_counts_requests_on_kept_alive_connections() {
        let (up, seen, _t) = http_server().await;
        let p = FaultProxy::http(up).await.unwrap();
        let c = client();
        for i in 0..5 {
            let r = c
                .post(format!("{}/v1/x/{i}", p.url()))
                .body(vec![b'a'; 20_000])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.text().await.unwrap().len(), 4000);
        }
        let r = c.get(format!("{}/v1/y", p.url())).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
        assert_eq!(seen.load(Ordering::SeqCst), 6);
        let counts = p.counts(Mode::Pass);
        assert_eq!(counts.requests, 6);
        assert!(counts.connections < 6, "the client reused a connection");
    }

    #[tokio::test]
    async fn fault_proxy_answers_each_status_itself_and_forwards_nothing() {
        let (up, seen, _t) = http_server().await;
        let p = FaultProxy::http(up).await.unwrap();
        for code in [403u16, 409, 429, 500, 503] {
            p.set(Mode::Status(code));
            // A fresh client: the switch closed the previous one's kept-alive connection,
            // and a request racing that close would see a reset, not the status.
            let c = client();
            for _ in 0..3 {
                let r = c
                    .put(format!("{}/v1/secret/data/a", p.url()))
                    .json(&serde_json::json!({ "data": { "k": "v" } }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), code);
                let v: serde_json::Value = r.json().await.unwrap();
                assert!(v["errors"][0].as_str().unwrap().contains("fault proxy"));
            }
            assert_eq!(p.counts(Mode::Status(code)).requests, 3, "{code}");
        }
        assert_eq!(seen.load(Ordering::SeqCst), 0, "nothing reached the server");
        p.set(Mode::Pass);
        let r = client()
            .get(format!("{}/v1/b", p.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn fault_proxy_black_hole_takes_requests_and_never_answers() {
        let (up, seen, _t) = http_server().await;
        let p = FaultProxy::http(up).await.unwrap();
        p.set(Mode::BlackHole);
        let r = client().get(format!("{}/v1/c", p.url())).send().await;
        assert!(
            r.is_err_and(|e| e.is_timeout()),
            "the client had to time out"
        );
        assert_eq!(p.counts(Mode::BlackHole).requests, 1);
        assert_eq!(seen.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn fault_proxy_http_reset_mid_response_fails_the_request() {
        let (up, seen, _t) = http_server().await;
        let p = FaultProxy::http(up).await.unwrap();
        p.set(Mode::ResetAfter(100));
        let r = match client().get(format!("{}/v1/d", p.url())).send().await {
            Ok(r) => r.bytes().await.map(drop),
            Err(e) => Err(e),
        };
        assert!(r.is_err(), "a cut answer is an error");
        assert_eq!(seen.load(Ordering::SeqCst), 1, "the server did answer");
        assert_eq!(p.counts(Mode::ResetAfter(100)).requests, 1);
    }

    #[test]
    fn fault_framer_finds_requests_at_every_split_point() {
        let stream: &[u8] = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n\
POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
\r\nPUT /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nt: 1\r\n\r\n\
GET /d HTTP/1.1\r\ncontent-length: 0\r\n\r\n";
        for split in 0..stream.len() {
            let mut f = HttpFramer::default();
            let (h1, c1) = f.feed(&stream[..split]);
            let (h2, c2) = f.feed(&stream[split..]);
            assert_eq!((h1 + h2, c1 + c2), (4, 4), "split at {split}");
            assert!(!f.broken);
            assert_eq!(f.state, FrameState::Head);
        }
    }

    #[test]
    fn fault_framer_gives_up_on_a_bad_length() {
        let mut f = HttpFramer::default();
        let (heads, complete) =
            f.feed(b"POST / HTTP/1.1\r\ncontent-length: lots\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        assert_eq!((heads, complete), (1, 0));
        assert!(f.broken);
    }
}

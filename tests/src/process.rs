//! Child server processes that cannot outlive the test that started them.
//!
//! Every server is started through `setpriv --pdeathsig KILL`, so if the test process dies
//! (a panic that aborts, a nextest timeout, a SIGKILL), the kernel kills the server too and
//! no stray process holds a port or a temp dir. A normal drop stops it with the server's own
//! graceful signal first.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running server process; dropping it stops the server.
#[derive(Debug)]
pub struct ServerProcess {
    name: &'static str,
    child: Child,
    stop_signal: &'static str,
    log: PathBuf,
}

/// How to run one server.
#[derive(Debug)]
pub struct Spawn<'a> {
    /// A short name for messages (`openbao`, `postgres`, `moto`).
    pub name: &'static str,
    /// The program.
    pub program: &'a Path,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Run as this user instead (needed for PostgreSQL when the tests run as root).
    pub user: Option<&'a str>,
    /// Where stdout and stderr go.
    pub log: PathBuf,
    /// The signal for a graceful stop (`TERM`, `INT`).
    pub stop_signal: &'static str,
}

impl Spawn<'_> {
    /// Starts the process.
    ///
    /// # Errors
    /// When `setpriv` or the program cannot be started.
    pub fn start(self) -> anyhow::Result<ServerProcess> {
        let out =
            File::create(&self.log).with_context(|| format!("create {}", self.log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new("setpriv");
        cmd.arg("--pdeathsig").arg("KILL");
        if let Some(u) = self.user {
            cmd.args(["--reuid", u, "--regid", u, "--init-groups"]);
        }
        cmd.arg("--")
            .arg(self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("start {} ({})", self.name, self.program.display()))?;
        Ok(ServerProcess {
            name: self.name,
            child,
            stop_signal: self.stop_signal,
            log: self.log,
        })
    }
}

impl ServerProcess {
    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's combined stdout/stderr so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where the server's output goes.
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Fails with the log's tail if the process has already exited.
    ///
    /// # Errors
    /// When it exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status}; its output:\n{}",
                self.name,
                tail(&self.log(), 40)
            );
        }
        Ok(())
    }

    /// Waits until `ready` returns true, the process dies, or `within` passes.
    ///
    /// # Errors
    /// On death or time-out, with the server's log tail.
    pub async fn wait_ready<F, Fut>(&mut self, within: Duration, mut ready: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let start = Instant::now();
        loop {
            self.check_alive()?;
            if ready().await {
                return Ok(());
            }
            if start.elapsed() > within {
                bail!(
                    "{} not ready after {within:?}; its output:\n{}",
                    self.name,
                    tail(&self.log(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server now: its graceful signal, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args([&format!("-{}", self.stop_signal), &pid])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free on 127.0.0.1 a moment ago. Servers that fail to bind are retried
/// by their starters, which covers the small race.
///
/// # Panics
/// When no loopback port can be bound at all.
#[must_use]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A loopback port held bound and never listened on, for runs that must be refused at once.
///
/// A port that was merely free a moment ago (as [`free_port`] gives) can be taken by a server
/// another test starts meanwhile, and a run meant to be refused then reaches that server and
/// fails another way. This socket keeps the port for as long as the value lives: it is bound
/// without `SO_REUSEADDR`, so no other socket can bind it, and as nothing listens on it a
/// connection is answered with a reset.
#[derive(Debug)]
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    port: u16,
}

impl ClosedPort {
    /// Binds a fresh loopback port without listening on it.
    ///
    /// # Panics
    /// When no loopback port can be bound at all.
    #[must_use]
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket
            .bind(([127, 0, 0, 1], 0).into())
            .expect("bind 127.0.0.1:0");
        let port = socket.local_addr().expect("the bound address").port();
        Self {
            _socket: socket,
            port,
        }
    }

    /// The port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        Self::new()
    }
}

/// The last `n` lines of `s`.
#[must_use]
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether something accepts TCP connections at `port` on loopback.
pub async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// Polls `cond` every 100 ms until it holds. Tests wait on outcomes (a rotation happened),
/// never on how fast: there is no deadline here. A wait that never ends is ended by the test
/// runner's own limit (`slow-timeout` in `.config/nextest.toml`), and the line printed every
/// 300 polls says in the captured output what the test was still waiting for.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut polls: u64 = 0;
    while !cond().await {
        polls += 1;
        if polls.is_multiple_of(300) {
            eprintln!("still waiting for {what} ({polls} polls)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

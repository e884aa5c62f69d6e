//! A real MariaDB server (Debian's `mariadb-server`, 10.11) in a temp dir, on a loopback port
//! of its own, with every log a password could end up in written to files the tests read:
//! the general query log, the slow query log (`long_query_time=0`: every statement), the
//! binary log and the error log.
//!
//! The system's own MariaDB service is never used: `mariadb-install-db` makes a fresh data
//! directory in the temp dir, and the server gets its own port, socket, pid file and logs
//! (`--no-defaults`, so `/etc/mysql` is not read either). Grant tables are on; the harness's
//! superuser is `keyturn_root'@'127.0.0.1`, made by an `--init-file` that runs before the
//! server takes connections, with `sql_log_bin=0`, so its password reaches no log.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};

use crate::process::{ServerProcess, Spawn, free_port};

/// The superuser the harness creates (`'keyturn_root'@'127.0.0.1'`, all privileges).
pub const SUPERUSER: &str = "keyturn_root";

/// A running MariaDB. Dropping it stops the server (SIGTERM: a clean shutdown) and removes
/// its data and logs.
#[derive(Debug)]
pub struct MariaDb {
    proc: ServerProcess,
    port: u16,
    password: String,
    dir: tempfile::TempDir,
}

/// Where `mariadbd` and `mariadb-install-db` are: `$KEYTURN_MARIADB_BINDIR`, else Debian's
/// places.
fn program(name: &str) -> anyhow::Result<PathBuf> {
    let dirs: Vec<PathBuf> = match std::env::var_os("KEYTURN_MARIADB_BINDIR") {
        Some(d) => vec![d.into()],
        None => vec!["/usr/sbin".into(), "/usr/bin".into()],
    };
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{name} not found (set KEYTURN_MARIADB_BINDIR, or run dev/setup.sh to install mariadb-server)"
    )
}

impl MariaDb {
    /// Installs a fresh data directory and starts the server.
    ///
    /// # Errors
    /// When MariaDB is missing or does not come up.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_inner(None).await
    }

    /// As [`MariaDb::start`], with TLS on: the server presents `cert_pem` (its key
    /// `key_pem`). Plaintext logins stay allowed unless an account says `REQUIRE SSL`.
    ///
    /// # Errors
    /// As [`MariaDb::start`].
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        Self::start_inner(Some((cert_pem, key_pem))).await
    }

    async fn start_inner(tls: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let mariadbd = program("mariadbd")?;
        let install = program("mariadb-install-db")?;
        // mariadbd will not run as root unless told to; when the tests do, the server runs
        // as the Debian package's `mysql` user, as the PostgreSQL harness does.
        let user = is_root().then_some("mysql");
        let dir = tempfile::Builder::new()
            .prefix("keyturn-mariadb-")
            .tempdir()?;
        let data = dir.path().join("data");
        let password = format!("mdb-{}", uuid::Uuid::new_v4().simple());
        let init = dir.path().join("init.sql");
        // Replayed on every start (a start that lost the port race is retried), hence
        // CREATE OR REPLACE.
        std::fs::write(
            &init,
            format!(
                "SET sql_log_bin = 0;\n\
                 CREATE OR REPLACE USER '{SUPERUSER}'@'127.0.0.1' IDENTIFIED BY '{password}';\n\
                 GRANT ALL PRIVILEGES ON *.* TO '{SUPERUSER}'@'127.0.0.1' WITH GRANT OPTION;\n"
            ),
        )?;
        if let Some((cert, key)) = tls {
            std::fs::write(dir.path().join("server.crt"), cert)?;
            std::fs::write(dir.path().join("server.key"), key)?;
        }
        if let Some(u) = user {
            chown_r(dir.path(), u)?;
        }
        // The InnoDB redo log defaults to 96 MiB per server; a few MiB do for a test.
        let small = ["--innodb-log-file-size=4M", "--innodb-buffer-pool-size=16M"];
        let mut cmd = Command::new("setpriv");
        if let Some(u) = user {
            cmd.args(["--reuid", u, "--regid", u, "--init-groups"]);
        }
        let out = cmd
            .arg("--")
            .arg(&install)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--skip-test-db", "--skip-name-resolve"])
            // Its bootstrap server's temporary tables go to /tmp by default, named by pid:
            // servers installed at once in parallel tests trip over each other's there.
            .arg(format!("--tmpdir={}", dir.path().display()))
            .args(small)
            .output()
            .context("run mariadb-install-db")?;
        if !out.status.success() {
            bail!(
                "mariadb-install-db failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let p = |f: &str| dir.path().join(f).display().to_string();
        let mut last = None;
        for _ in 0..3 {
            let port = free_port();
            let mut args = vec![
                "--no-defaults".to_owned(),
                format!("--datadir={}", data.display()),
                format!("--port={port}"),
                "--bind-address=127.0.0.1".into(),
                format!("--socket={}", p("mysqld.sock")),
                format!("--pid-file={}", p("mysqld.pid")),
                format!("--tmpdir={}", dir.path().display()),
                format!("--init-file={}", init.display()),
                "--skip-name-resolve".into(),
                // Every log a statement can reach, to files the tests read.
                "--general-log=ON".into(),
                format!("--general-log-file={}", p("general.log")),
                "--slow-query-log=ON".into(),
                format!("--slow-query-log-file={}", p("slow.log")),
                "--long-query-time=0".into(),
                "--log-slow-admin-statements=ON".into(),
                format!("--log-bin={}", p("binlog")),
                "--server-id=1".into(),
                // Failed logins and aborted connections in the error log (stderr).
                "--log-warnings=4".into(),
                "--innodb-flush-log-at-trx-commit=0".into(),
                "--sync-binlog=0".into(),
            ];
            args.extend(small.iter().map(|s| (*s).to_owned()));
            if tls.is_some() {
                args.push(format!("--ssl-cert={}", p("server.crt")));
                args.push(format!("--ssl-key={}", p("server.key")));
            }
            let mut proc = Spawn {
                name: "mariadbd",
                program: &mariadbd,
                args,
                env: vec![],
                user,
                log: dir.path().join(format!("error-{port}.log")),
                stop_signal: "TERM",
            }
            .start()?;
            let ready = proc
                .wait_ready(Duration::from_secs(60), || {
                    let password = password.clone();
                    async move {
                        match connect(port, SUPERUSER, &password).await {
                            Ok(c) => {
                                let _ = c.disconnect().await;
                                true
                            }
                            Err(_) => false,
                        }
                    }
                })
                .await;
            match ready {
                Ok(()) => {
                    return Ok(Self {
                        proc,
                        port,
                        password,
                        dir,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("mariadbd did not start")))
    }

    /// The port on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password (a test credential).
    #[must_use]
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Logs in as `user` with `password` over TCP, as an app would.
    ///
    /// # Errors
    /// When the login fails (wrong password, no such account).
    pub async fn connect_as(&self, user: &str, password: &str) -> mysql_async::Result<Conn> {
        connect(self.port, user, password).await
    }

    /// Whether `user`/`password` logs in and can run `SELECT 1`.
    pub async fn logs_in(&self, user: &str, password: &str) -> bool {
        match self.connect_as(user, password).await {
            Ok(mut c) => {
                let ok = c.query_drop("SELECT 1").await.is_ok();
                let _ = c.disconnect().await;
                ok
            }
            Err(_) => false,
        }
    }

    /// A connection as the superuser.
    ///
    /// # Errors
    /// When the server refuses.
    pub async fn admin(&self) -> anyhow::Result<Conn> {
        Ok(self.connect_as(SUPERUSER, &self.password).await?)
    }

    /// Runs `sql` (one or more statements) as the superuser.
    ///
    /// # Errors
    /// When a statement fails.
    pub async fn exec(&self, sql: &str) -> anyhow::Result<()> {
        let mut c = self.admin().await?;
        let r = c.query_drop(sql).await;
        let _ = c.disconnect().await;
        Ok(r?)
    }

    /// The general query log: every statement the server received.
    #[must_use]
    pub fn general_log_path(&self) -> PathBuf {
        self.dir.path().join("general.log")
    }

    /// The slow query log (every statement: `long_query_time=0`).
    #[must_use]
    pub fn slow_log_path(&self) -> PathBuf {
        self.dir.path().join("slow.log")
    }

    /// The error log (the server's stderr).
    #[must_use]
    pub fn error_log_path(&self) -> &Path {
        self.proc.log_path()
    }

    /// The binary log files (`binlog.000001`, …).
    #[must_use]
    pub fn binlog_paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("binlog.0"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Every log the server writes, by name, as bytes (the binary log's statement events
    /// hold statement text as written, so a byte search finds a password in it).
    #[must_use]
    pub fn logs(&self) -> Vec<(String, Vec<u8>)> {
        let read = |p: &Path| std::fs::read(p).unwrap_or_default();
        let mut v = vec![
            (
                "general query log".to_owned(),
                read(&self.general_log_path()),
            ),
            ("slow query log".to_owned(), read(&self.slow_log_path())),
            ("error log".to_owned(), read(self.error_log_path())),
        ];
        for b in self.binlog_paths() {
            v.push((format!("binary log {}", b.display()), read(&b)));
        }
        v
    }
}

/// A TCP login (never the socket: the account would be `'user'@'localhost'`).
async fn connect(port: u16, user: &str, password: &str) -> mysql_async::Result<Conn> {
    let opts = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(user))
        .pass(Some(password))
        .prefer_socket(false);
    tokio::time::timeout(Duration::from_secs(10), Conn::new(opts))
        .await
        .unwrap_or_else(|_| {
            Err(mysql_async::Error::Io(mysql_async::IoError::Io(
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 10s"),
            )))
        })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

fn chown_r(path: &Path, user: &str) -> anyhow::Result<()> {
    let st = Command::new("chown")
        .args(["-R", &format!("{user}:{user}")])
        .arg(path)
        .status()?;
    if !st.success() {
        bail!("chown {} to {user} failed", path.display());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

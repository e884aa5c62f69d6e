//! A real PostgreSQL 15 cluster in a temp dir, on a loopback port of its own.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::process::{ServerProcess, Spawn, free_port};

/// The superuser the harness creates.
pub const SUPERUSER: &str = "postgres";

/// A running cluster with password (SCRAM) authentication over TCP. Dropping it stops the
/// server (fast shutdown) and removes its data. [`Postgres::restart`] stops it and starts it
/// again on the same port with the same data.
#[derive(Debug)]
pub struct Postgres {
    proc: ServerProcess,
    port: u16,
    password: String,
    /// The `postgres` command line, for a restart.
    args: Vec<String>,
    /// The user the server runs as (when the tests run as root).
    user: Option<&'static str>,
    /// How many times the server has been started, to name each run's log.
    starts: u32,
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// Starts a cluster with default settings.
    ///
    /// # Errors
    /// When PostgreSQL 15 is missing or does not come up.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// Starts a cluster with extra `postgresql.conf` settings, e.g.
    /// `[("log_statement", "all")]` to check that no password reaches the server log.
    ///
    /// # Errors
    /// As [`Postgres::start`].
    pub async fn start_with(settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let initdb = crate::tools::postgres("initdb")?;
        let postgres = crate::tools::postgres("postgres")?;
        // PostgreSQL refuses to run as root; when the tests do, the server runs as the
        // Debian package's `postgres` user.
        let user = is_root().then_some("postgres");
        let dir = tempfile::Builder::new().prefix("keyturn-pg-").tempdir()?;
        let data = dir.path().join("data");
        let password = format!("pg-{}", uuid::Uuid::new_v4().simple());
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, &password)?;
        if let Some(u) = user {
            chown_r(dir.path(), u)?;
        }
        let mut cmd = Command::new("setpriv");
        if let Some(u) = user {
            cmd.args(["--reuid", u, "--regid", u, "--init-groups"]);
        }
        let out = cmd
            .arg("--")
            .arg(&initdb)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                SUPERUSER,
                "-A",
                "scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .context("run initdb")?;
        std::fs::remove_file(&pwfile)?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut last = None;
        for _ in 0..3 {
            let port = free_port();
            let mut args = vec![
                "-D".to_owned(),
                data.display().to_string(),
                "-p".into(),
                port.to_string(),
                "-c".into(),
                "listen_addresses=127.0.0.1".into(),
                "-c".into(),
                format!("unix_socket_directories={}", dir.path().display()),
                "-c".into(),
                "fsync=off".into(),
            ];
            for (k, v) in settings {
                args.push("-c".into());
                args.push(format!("{k}={v}"));
            }
            let mut proc = spawn(
                &postgres,
                &args,
                user,
                &dir.path().join(format!("postgres-{port}.log")),
            )?;
            match wait_login(&mut proc, port, &password).await {
                Ok(()) => {
                    return Ok(Self {
                        proc,
                        port,
                        password,
                        args,
                        user,
                        starts: 1,
                        _dir: dir,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("postgres did not start")))
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

    /// A libpq-style connection string for `user`/`password` on database `postgres`.
    #[must_use]
    pub fn conn_string(&self, user: &str, password: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname=postgres connect_timeout=5",
            self.port
        )
    }

    /// Connects as `user` with `password`.
    ///
    /// # Errors
    /// When the login fails (wrong password, no such role).
    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) =
            tokio_postgres::connect(&self.conn_string(user, password), tokio_postgres::NoTls)
                .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Connects as the superuser.
    ///
    /// # Errors
    /// When the server refuses.
    pub async fn admin(&self) -> anyhow::Result<tokio_postgres::Client> {
        Ok(self.connect_as(SUPERUSER, &self.password).await?)
    }

    /// The server's log so far (with `log_statement=all`, every statement), since its last
    /// start.
    #[must_use]
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Stops the server (fast shutdown: clients are disconnected). Its port refuses
    /// connections until [`Postgres::restart`].
    pub fn stop(&mut self) {
        self.proc.stop();
    }

    /// Stops the server if it runs and starts it again on the same port with the same data;
    /// returns once it accepts logins.
    ///
    /// # Errors
    /// When it does not come back.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let postgres = crate::tools::postgres("postgres")?;
        self.proc.stop();
        let log = self
            ._dir
            .path()
            .join(format!("postgres-{}-run{}.log", self.port, self.starts));
        self.starts += 1;
        self.proc = spawn(&postgres, &self.args, self.user, &log)?;
        wait_login(&mut self.proc, self.port, &self.password).await
    }
}

fn spawn(
    postgres: &Path,
    args: &[String],
    user: Option<&str>,
    log: &Path,
) -> anyhow::Result<ServerProcess> {
    Spawn {
        name: "postgres",
        program: postgres,
        args: args.to_vec(),
        env: vec![],
        user,
        log: log.to_owned(),
        // SIGINT is PostgreSQL's fast shutdown: it does not wait for clients.
        stop_signal: "INT",
    }
    .start()
}

/// An open port is not enough: the server accepts TCP before it accepts logins ("the
/// database system is starting up"), so wait for a real login.
async fn wait_login(proc: &mut ServerProcess, port: u16, password: &str) -> anyhow::Result<()> {
    let conn = format!(
        "host=127.0.0.1 port={port} user={SUPERUSER} password={password} dbname=postgres connect_timeout=5"
    );
    proc.wait_ready(Duration::from_secs(30), || {
        let conn = conn.clone();
        async move {
            tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                .await
                .is_ok()
        }
    })
    .await
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
    // The temp dir's parent must let the server user reach it.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

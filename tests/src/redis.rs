//! A real `redis-server` (Debian's) in a temp dir, on a loopback port of its own, with an ACL
//! file so `ACL SAVE` works and every command in the slow log.
//!
//! The `default` user is the admin: its password is planted as a SHA-256 hash in the ACL file
//! (never in cleartext on disk or on a command line). Everything the server could leak a
//! password into can be read back for the canary checks: its log ([`Redis::log`], at
//! `loglevel verbose`), its slow log ([`Redis::slowlog`], `slowlog-log-slower-than 0` records
//! every command), `ACL LOG` ([`Redis::acl_log`]), the ACL file ([`Redis::acl_file`]) and a
//! `MONITOR` stream ([`Redis::monitor`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisConnectionInfo, RedisError, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{ServerProcess, Spawn, free_port};

/// The admin user: Redis's own `default` user, with every permission.
pub const ADMIN: &str = "default";

/// A running server. Dropping it stops the server (SIGTERM; it saves nothing: `save ""`) and
/// removes its files; the kernel kills it if the test process dies.
#[derive(Debug)]
pub struct Redis {
    proc: ServerProcess,
    port: u16,
    admin_password: String,
    conf: PathBuf,
    starts: u32,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts a server whose `default` user's password is `admin_password`.
    ///
    /// # Errors
    /// When `redis-server` is missing or does not come up.
    pub async fn start(admin_password: &str) -> anyhow::Result<Self> {
        let program = crate::tools::find("redis-server", "KEYTURN_REDIS_SERVER")?;
        let dir = tempfile::Builder::new()
            .prefix("keyturn-redis-")
            .tempdir()?;
        std::fs::write(
            dir.path().join("users.acl"),
            format!(
                "user {ADMIN} on {} ~* &* +@all\n",
                hash_rule(admin_password)
            ),
        )?;
        let mut last = None;
        for _ in 0..3 {
            let port = free_port();
            let conf = dir.path().join("redis.conf");
            std::fs::write(&conf, config(dir.path(), port))?;
            let mut proc = spawn(
                &program,
                &conf,
                &dir.path().join(format!("redis-{port}.log")),
            )?;
            match wait_ready(&mut proc, port, admin_password).await {
                Ok(()) => {
                    return Ok(Self {
                        proc,
                        port,
                        admin_password: admin_password.to_owned(),
                        conf,
                        starts: 1,
                        dir,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    /// The port on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `default` user's password (a test credential).
    #[must_use]
    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// A connection logged in as `user` with `password` (`AUTH user password`).
    ///
    /// # Errors
    /// When the server cannot be reached or refuses the login (`WRONGPASS`).
    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
    ) -> Result<MultiplexedConnection, RedisError> {
        connect(self.port, user, password).await
    }

    /// A connection logged in as the admin.
    ///
    /// # Errors
    /// When the server refuses.
    pub async fn admin(&self) -> anyhow::Result<MultiplexedConnection> {
        Ok(self.connect_as(ADMIN, &self.admin_password).await?)
    }

    /// Whether `user`/`password` logs in and may run `PING`, as an app would.
    pub async fn logs_in(&self, user: &str, password: &str) -> bool {
        match self.connect_as(user, password).await {
            Ok(mut c) => redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok(),
            Err(_) => false,
        }
    }

    /// Runs `ACL SETUSER NAME RULES…` as the admin, e.g. `acl_setuser("app", &["on", "~*",
    /// "+@all"])` (a user `on` without any password cannot log in yet).
    ///
    /// # Errors
    /// When the server refuses.
    pub async fn acl_setuser(&self, name: &str, rules: &[&str]) -> anyhow::Result<()> {
        let mut c = self.admin().await?;
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg(name);
        for r in rules {
            cmd.arg(*r);
        }
        cmd.query_async::<()>(&mut c).await?;
        Ok(())
    }

    /// `ACL GETUSER NAME` as text (flags, passwords (hashes), rules), or `None` when the
    /// user does not exist.
    ///
    /// # Errors
    /// When the server refuses.
    pub async fn acl_getuser(&self, name: &str) -> anyhow::Result<Option<String>> {
        let mut c = self.admin().await?;
        let v: Value = redis::cmd("ACL")
            .arg("GETUSER")
            .arg(name)
            .query_async(&mut c)
            .await?;
        Ok((!matches!(v, Value::Nil)).then(|| String::from_utf8_lossy(&flatten(&v)).into_owned()))
    }

    /// The whole slow log (`SLOWLOG GET`), every string of every entry, one per line.
    ///
    /// # Errors
    /// When the server refuses.
    pub async fn slowlog(&self) -> anyhow::Result<Vec<u8>> {
        let mut c = self.admin().await?;
        let v: Value = redis::cmd("SLOWLOG")
            .arg("GET")
            .arg(-1)
            .query_async(&mut c)
            .await?;
        Ok(flatten(&v))
    }

    /// `ACL LOG` (denied commands and failed logins), every string of every entry.
    ///
    /// # Errors
    /// When the server refuses.
    pub async fn acl_log(&self) -> anyhow::Result<Vec<u8>> {
        let mut c = self.admin().await?;
        let v: Value = redis::cmd("ACL").arg("LOG").query_async(&mut c).await?;
        Ok(flatten(&v))
    }

    /// How many failed logins `ACL LOG` counts for `user`: one per `AUTH` refused (the
    /// server groups equal entries and counts them).
    ///
    /// # Errors
    /// When the server refuses.
    pub async fn failed_logins(&self, user: &str) -> anyhow::Result<u64> {
        let mut c = self.admin().await?;
        let v: Value = redis::cmd("ACL").arg("LOG").query_async(&mut c).await?;
        let Value::Array(entries) = v else {
            anyhow::bail!("ACL LOG is not an array: {v:?}");
        };
        let mut total = 0;
        for e in entries {
            let Value::Array(kv) = e else { continue };
            let field = |k: &str| {
                kv.chunks(2).find_map(|p| match p {
                    [Value::BulkString(key), v] if key == k.as_bytes() => Some(v.clone()),
                    _ => None,
                })
            };
            let text = |v: Option<Value>| match v {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
                _ => String::new(),
            };
            if text(field("reason")) == "auth"
                && text(field("username")) == user
                && let Some(Value::Int(n)) = field("count")
            {
                total += u64::try_from(n).unwrap_or(0);
            }
        }
        Ok(total)
    }

    /// The ACL file as the server last saved it.
    #[must_use]
    pub fn acl_file(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("users.acl")).unwrap_or_default()
    }

    /// The server's log so far (`loglevel verbose`), since its last start.
    #[must_use]
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// The server's logs of every start so far.
    #[must_use]
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for e in entries.flatten() {
                let name = e.file_name();
                if name.to_string_lossy().ends_with(".log") {
                    out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    /// Starts a `MONITOR` as the admin: every command any client sends from now on, as the
    /// server shows it to monitors, until the [`Monitor`] is dropped.
    ///
    /// # Errors
    /// When the server refuses.
    pub async fn monitor(&self) -> anyhow::Result<Monitor> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        let cmd = |args: &[&[u8]]| {
            let mut out = format!("*{}\r\n", args.len()).into_bytes();
            for a in args {
                out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                out.extend_from_slice(a);
                out.extend_from_slice(b"\r\n");
            }
            out
        };
        s.write_all(&cmd(&[
            b"AUTH",
            ADMIN.as_bytes(),
            self.admin_password.as_bytes(),
        ]))
        .await?;
        s.write_all(&cmd(&[b"MONITOR"])).await?;
        // Both answers (+OK twice) before returning, so nothing sent after this is missed.
        let mut head = Vec::new();
        while !head.ends_with(b"+OK\r\n+OK\r\n") {
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
                .await
                .context("MONITOR did not answer")??;
            anyhow::ensure!(
                n == 1,
                "MONITOR refused: {}",
                String::from_utf8_lossy(&head)
            );
            head.push(b[0]);
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    seen.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }
        });
        Ok(Monitor { seen, task })
    }

    /// Stops the server and starts it again on the same port with the same files (the ACL
    /// file is loaded again: what `ACL SAVE` wrote is what the server then knows).
    ///
    /// # Errors
    /// When it does not come back.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let program = crate::tools::find("redis-server", "KEYTURN_REDIS_SERVER")?;
        self.proc.stop();
        let log = self
            .dir
            .path()
            .join(format!("redis-{}-run{}.log", self.port, self.starts));
        self.starts += 1;
        self.proc = spawn(&program, &self.conf, &log)?;
        wait_ready(&mut self.proc, self.port, &self.admin_password).await
    }
}

/// What a [`Redis::monitor`] saw.
#[derive(Debug)]
pub struct Monitor {
    seen: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    /// Everything the monitor received so far, raw.
    #[must_use]
    pub fn seen(&self) -> Vec<u8> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `#` and the hex SHA-256 of `password`: an `ACL SETUSER` rule that sets the password
/// without the cleartext reaching the server.
#[must_use]
pub fn hash_rule(password: &str) -> String {
    let digest = Sha256::digest(password.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("#{hex}")
}

/// A connection to `127.0.0.1:port`, logged in as `user`.
///
/// # Errors
/// When the server cannot be reached or refuses the login.
pub async fn connect(
    port: u16,
    user: &str,
    password: &str,
) -> Result<MultiplexedConnection, RedisError> {
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let info = RedisConnectionInfo::default().set_skip_set_lib_name();
    let config = AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    let (mut conn, driver) = MultiplexedConnection::new_with_config(&info, stream, config).await?;
    tokio::spawn(driver);
    redis::cmd("AUTH")
        .arg(user)
        .arg(password)
        .query_async::<()>(&mut conn)
        .await?;
    Ok(conn)
}

/// Every string, number and status in `v`, depth first, one per line.
fn flatten(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::BulkString(b) => out.extend_from_slice(b),
            Value::SimpleString(s) | Value::VerbatimString { text: s, .. } => {
                out.extend_from_slice(s.as_bytes());
            }
            Value::Int(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Value::Array(a) | Value::Set(a) => stack.extend(a.iter().rev()),
            Value::Map(m) => {
                for (k, v) in m.iter().rev() {
                    stack.push(v);
                    stack.push(k);
                }
            }
            other => out.extend_from_slice(format!("{other:?}").as_bytes()),
        }
        out.push(b'\n');
    }
    out
}

fn config(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "bind 127.0.0.1\nport {port}\ndaemonize no\ndir {d}\nsave \"\"\nappendonly no\n\
         aclfile {d}/users.acl\nlogfile \"\"\nloglevel verbose\n\
         slowlog-log-slower-than 0\nslowlog-max-len 100000\nacllog-max-len 1000\n"
    )
}

fn spawn(program: &Path, conf: &Path, log: &Path) -> anyhow::Result<ServerProcess> {
    Spawn {
        name: "redis-server",
        program,
        args: vec![conf.display().to_string()],
        env: vec![],
        user: None,
        log: log.to_owned(),
        // SIGTERM: Redis's clean shutdown (nothing to save with `save ""`).
        stop_signal: "TERM",
    }
    .start()
}

/// An open port is not enough: the server accepts TCP while it still loads, so wait for a
/// real login.
async fn wait_ready(proc: &mut ServerProcess, port: u16, password: &str) -> anyhow::Result<()> {
    proc.wait_ready(Duration::from_secs(30), || {
        let password = password.to_owned();
        async move {
            match connect(port, ADMIN, &password).await {
                Ok(mut c) => redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        }
    })
    .await
}

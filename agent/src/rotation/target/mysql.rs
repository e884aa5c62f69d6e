//! The `mysql` target: MySQL and MariaDB accounts (`'user'@'host'`) whose passwords keyturn
//! sets.
//!
//! - `set` logs in as the admin and runs
//!   ``ALTER USER `user`@`host` IDENTIFIED WITH mysql_native_password AS '*HASH'``, where
//!   `*HASH` is the `mysql_native_password` hash, `*` and the upper-case hex of
//!   SHA1(SHA1(password)), computed here. The cleartext never reaches the server. The same
//!   password gives the same hash, so `set` is idempotent. `IDENTIFIED WITH … AS` rather than
//!   MariaDB's older `IDENTIFIED BY PASSWORD '*HASH'`: both take the hash on MariaDB, but
//!   MySQL 8.0 removed the latter, and the former is accepted by MariaDB and MySQL 5.7/8.x
//!   alike.
//! - `test` opens a fresh connection as the account, over TCP to `host:port` exactly (never
//!   the server's Unix socket, where the account would be `'user'@'localhost'`), and runs
//!   `SELECT 1`.
//! - `revert` and `invalidate_others` work as the PostgreSQL target's (see [`super::users`]).
//!
//! **What the server writes down** (MariaDB 10.11.19, checked on the real server; the tests
//! check it again with canaries): the general query log, the slow query log (with
//! `long_query_time=0`) and the binary log each keep the *whole statement text* of every
//! account statement, passwords included: MariaDB redacts nothing.
//!
//! | statement | general log, slow log | binary log |
//! |---|---|---|
//! | `ALTER USER … IDENTIFIED BY 'clear'` | the cleartext | the cleartext |
//! | `SET PASSWORD FOR … = PASSWORD('clear')` | the cleartext | rewritten to the hash |
//! | `GRANT … IDENTIFIED BY 'clear'` | the cleartext | the cleartext |
//! | `ALTER USER … IDENTIFIED VIA … USING PASSWORD('clear')` | the cleartext | the cleartext |
//! | `ALTER USER … IDENTIFIED WITH mysql_native_password AS '*HASH'` (keyturn) | the hash | the hash |
//!
//! So keyturn sends the hash and nothing else. MySQL 5.7+/8.x rewrite these statements in
//! their logs themselves, but the hash is what keyturn sends there too. The hash is
//! unsalted SHA-1: useless for guessing a random 32-character password, but together with
//! one captured plaintext login handshake of that account it lets the holder log in (the
//! native protocol's known weakness). Treat these logs as sensitive, and use TLS (`tls:`)
//! where the network is not trusted. The error log names no password: with `log_warnings`
//! ≥ 4 a failed login is logged as `Access denied for user 'USER'@'CLIENT' (using password:
//! YES)`, by account and client address only.
//!
//! **The account's authentication plugin becomes `mysql_native_password`.** On MariaDB,
//! `ALTER USER … IDENTIFIED` replaces every authentication method the account had (an
//! `IDENTIFIED VIA unix_socket OR mysql_native_password` account is left with the password
//! only; `ed25519` and `parsec` accounts are switched to it). On MySQL 8.0 a
//! `caching_sha2_password` account is switched to `mysql_native_password`; MySQL 8.4 has
//! that plugin off unless started with `--mysql-native-password=ON`, and MySQL 9 removed it:
//! there `set` fails, refused, with the server's words. Accounts that must keep another
//! plugin are not for this target.
//!
//! Accounts are never created: an account that does not exist is a [`TargetError::Refused`]
//! naming it. The admin credential is read from an [`AdminSource`] at every `set`/`revert`,
//! because admin passwords rotate too. Each `set` opens one admin connection and closes it:
//! a MySQL connection is a thread, not a process, and a rotation runs one statement, so no
//! admin connections are kept.
//!
//! TLS is rustls only, with libpq's mode names (see [`TlsMode`]): `prefer` (the default)
//! encrypts when the server offers TLS (MariaDB 10.11 does not by default; MySQL 8 does),
//! `verify-full` checks the certificate against `ca-file` (else the system's roots, or
//! keyturn's built-in ones where it has none) and the host name.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keyturn_core::SecretValue;
use keyturn_core::vault::SecretData;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, SslOpts};
use serde::Deserialize;
use sha1::{Digest, Sha1};
use zeroize::{Zeroize, Zeroizing};

use super::tls::default_roots;
pub use super::tls::{TlsMode, TlsSpec};
pub use super::users::{PASSWORD, USERNAME};
use super::users::{Users, field_str, to_restore, user_and_password};
use super::{AdminSource, Target, TargetError, admin_credential, error_chain, host_port};
use crate::backends::{Backends, RawStore, StoreSpec, TargetKind};
use crate::policy::needs::Need;
use crate::policy::{S, Validator};

/// `mysql:` as a policy writes it.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Raw {
    /// The server's host name or address.
    #[schemars(with = "String")]
    host: S<String>,
    /// The server's port (default 3306).
    #[schemars(with = "Option<u16>")]
    port: Option<S<u16>>,
    /// Where the admin credential that changes the passwords is kept.
    #[schemars(with = "RawStore")]
    admin: S<RawStore>,
    /// The accounts whose passwords keyturn sets: one for `single`, two for `alternating`.
    #[schemars(with = "Vec<String>")]
    users: S<Vec<S<String>>>,
    /// The accounts' host part (`user@host`, default `%`).
    #[schemars(with = "Option<String>")]
    user_host: Option<S<String>>,
    /// `single` (default): one account; `alternating`: two taking turns, so the one in use
    /// keeps working while the other changes.
    #[schemars(with = "Option<String>")]
    strategy: Option<S<String>>,
    /// `disable`, `prefer` (default), `require` or `verify-full` (libpq's meanings).
    #[schemars(with = "Option<String>")]
    tls: Option<S<String>>,
    /// The CA certificate (PEM) `verify-full` checks the server against.
    #[schemars(with = "Option<String>")]
    ca_file: Option<S<String>>,
}

/// A MySQL/MariaDB target, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Server host.
    pub host: String,
    /// Server port (3306).
    pub port: u16,
    /// Where the admin credential (`username`, `password`) is stored.
    pub admin: StoreSpec,
    /// The account name(s) to rotate and how they take turns.
    pub users: Users,
    /// The host part of every rotated account (`%`).
    pub user_host: String,
    /// How the connections are protected (`prefer`), and the CA `verify-full` trusts.
    pub tls: TlsSpec,
}

/// The longest account name accepted: MariaDB 10.6+ allows 128 characters (checked on
/// 10.11: 129 is refused with error 1470), MySQL 5.7.8+ 32. The larger one, so that no
/// account that can exist is refused here; a name too long for a MySQL server cannot exist
/// there, and `set` says so in the server's words.
pub const USER_MAX: usize = 128;

/// The longest account host part (MariaDB 10.11 and MySQL 8.0.17+: 255 characters).
pub const HOST_MAX: usize = 255;

/// Why `name` cannot be an account's user name. The anonymous account (empty name) is not
/// one keyturn rotates; NUL cannot be written in a statement.
fn user_rule(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.chars().count() > USER_MAX || name.contains('\0') {
        Err("an account name must be 1 to 128 characters without NUL")
    } else {
        Ok(())
    }
}

impl Spec {
    /// Validates `raw`, found at `field`.
    pub(crate) fn validate(raw: &Raw, v: &mut Validator<'_>, field: &str) -> Option<Self> {
        let before = v.error_count();
        let users = Users::validate(v, &raw.users, raw.strategy.as_ref(), field, user_rule);
        if raw.host.value.trim().is_empty() {
            v.err(&raw.host, &format!("{field}.host"), "must not be empty");
        }
        if let Some(h) = &raw.user_host
            && (h.value.is_empty() || h.value.chars().count() > HOST_MAX || h.value.contains('\0'))
        {
            v.err(
                h,
                &format!("{field}.user-host"),
                "an account host must be 1 to 255 characters without NUL (% for any host)",
            );
        }
        let tls = TlsSpec::validate(v, raw.tls.as_ref(), raw.ca_file.as_ref(), field);
        let admin = StoreSpec::validate(&raw.admin, v, &format!("{field}.admin"));
        if v.error_count() > before {
            return None;
        }
        Some(Self {
            host: raw.host.value.clone(),
            port: raw.port.as_ref().map_or(3306, |p| p.value),
            admin: admin?,
            users: users?,
            user_host: raw
                .user_host
                .as_ref()
                .map_or_else(|| "%".to_owned(), |h| h.value.clone()),
            tls,
        })
    }
}

impl TargetKind for Spec {
    fn fields(&self) -> &'static [&'static str] {
        super::users::FIELDS
    }

    fn admin_store(&self) -> Option<&StoreSpec> {
        Some(&self.admin)
    }

    fn needs(&self) -> Vec<Need> {
        let target = Mysql::describe_at(&self.host, self.port);
        self.users
            .names
            .iter()
            .map(|u| Need::Admin {
                target: target.clone(),
                privilege: format!(
                    "ALTER USER {} IDENTIFIED WITH mysql_native_password (the CREATE USER privilege: GRANT CREATE USER ON *.* TO the admin); the account exists",
                    account(u, &self.user_host)
                ),
            })
            .collect()
    }

    fn build(&self, admin: Option<Arc<dyn AdminSource>>, _backends: &Backends) -> Arc<dyn Target> {
        let admin = admin.unwrap_or_else(|| Arc::new(SecretData::new()));
        Arc::new(Mysql::with_admin_source(self, admin))
    }
}

/// The default bound on one operation (connect, then the statement).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A MySQL/MariaDB target: the account(s) of one policy on one server.
#[derive(Clone)]
pub struct Mysql {
    host: String,
    port: u16,
    users: Users,
    user_host: String,
    admin: Arc<dyn AdminSource>,
    tls: TlsMode,
    ca_file: Option<PathBuf>,
    timeout: Duration,
}

impl fmt::Debug for Mysql {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mysql")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("users", &self.users)
            .field("user_host", &self.user_host)
            .field("admin", &self.admin)
            .field("tls", &self.tls)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What a connection is for, so an error can say what was refused.
#[derive(Clone, Copy)]
enum Doing<'a> {
    /// Logging in as the admin.
    AdminLogin(&'a str),
    /// Changing `account`'s password while logged in as `admin`.
    Alter { account: &'a str, admin: &'a str },
    /// Logging in as the rotated account.
    Login(&'a str),
}

impl fmt::Display for Doing<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AdminLogin(a) => write!(f, "admin login as user '{a}'"),
            Self::Alter { account, admin } => {
                write!(f, "changing the password of account {account} as '{admin}'")
            }
            Self::Login(u) => write!(f, "login as user '{u}'"),
        }
    }
}

impl Mysql {
    /// A target for `spec` whose admin credential is fixed. Prefer
    /// [`Mysql::with_admin_source`] where the admin password can rotate.
    #[must_use]
    pub fn new(spec: &Spec, admin: SecretData) -> Self {
        Self::with_admin_source(spec, Arc::new(admin))
    }

    /// A target for `spec` that asks `admin` for the admin credential each time it needs it.
    #[must_use]
    pub fn with_admin_source(spec: &Spec, admin: Arc<dyn AdminSource>) -> Self {
        Self {
            host: spec.host.clone(),
            port: spec.port,
            users: spec.users.clone(),
            user_host: spec.user_host.clone(),
            admin,
            tls: spec.tls.mode,
            ca_file: spec.tls.ca_file.clone(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Bounds each operation (connecting and running its statement) to `timeout`
    /// (default [`DEFAULT_TIMEOUT`]); past it the target is [`TargetError::Unreachable`].
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The account names this target may change.
    #[must_use]
    pub fn users(&self) -> &[String] {
        &self.users.names
    }

    /// `mysql:HOST:PORT`, with an IPv6 host in brackets.
    fn describe_at(host: &str, port: u16) -> String {
        host_port("mysql", host, port)
    }

    /// Sets `user`'s password to `value` now, outside any rotation (break-glass: make a
    /// leaked password useless, or reset the idle user of an alternating pair). The same
    /// statement `set` runs: only the hash reaches the server.
    ///
    /// # Errors
    /// [`TargetError::Refused`] when `user` is not one of this target's accounts, does not
    /// exist, or the admin may not change it; [`TargetError::Unreachable`] when the server
    /// cannot be reached in time; [`TargetError::Admin`] when the admin credential cannot be
    /// read.
    pub async fn reset_password(&self, user: &str, value: &SecretValue) -> Result<(), TargetError> {
        let acct = account(user, &self.user_host);
        if !self.users.contains(user) {
            return Err(self.refused(format!(
                "user '{user}' is not one of this target's accounts ({}); refusing to change it",
                self.users.names.join(", ")
            )));
        }
        // `test` logs in with the password as text (the driver takes a String), so a value
        // it could not send is refused before it is set.
        if value.is_empty() || value.expose_str().is_err() {
            return Err(self.refused(format!(
                "refusing to set an empty or non-UTF-8 password on account {acct}"
            )));
        }
        let admin = admin_credential(&*self.admin, &self.describe()).await?;
        let admin_user = field_str(&admin, USERNAME).unwrap_or_default();
        let admin_pw = admin
            .get(PASSWORD)
            .and_then(|p| p.expose_str().ok())
            .filter(|p| !p.is_empty())
            .ok_or_else(|| TargetError::Admin {
                target: self.describe(),
                cause: "has no (UTF-8) password field".into(),
            })?;
        let hash = native_password_hash(value.expose());
        let sql = alter_user_sql(user, &self.user_host, &hash);
        let doing = Doing::Alter {
            account: &acct,
            admin: admin_user,
        };
        self.bounded(async {
            let mut conn = self
                .connect(admin_user, admin_pw, Doing::AdminLogin(admin_user))
                .await?;
            let r = conn.query_drop(sql.as_str()).await;
            // Closed either way; a failed goodbye changes nothing the statement did.
            let _ = conn.disconnect().await;
            r.map_err(|e| self.classify(&e, doing))
        })
        .await?;
        tracing::info!(server = %self.describe(), account = %acct, "password changed");
        Ok(())
    }

    fn refused(&self, what: String) -> TargetError {
        TargetError::Refused {
            target: self.describe(),
            what,
        }
    }

    /// Runs `op` within the target's timeout.
    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, TargetError>>,
    ) -> Result<T, TargetError> {
        super::bounded(self.timeout, || self.describe(), op).await
    }

    /// Logs in as `user` over TCP, with TLS as the mode says. `prefer` tries TLS first and
    /// falls back to plaintext only when the server says it has no TLS.
    async fn connect(
        &self,
        user: &str,
        password: &str,
        doing: Doing<'_>,
    ) -> Result<Conn, TargetError> {
        let base = OptsBuilder::default()
            .ip_or_hostname(self.host.clone())
            .tcp_port(self.port)
            .user(Some(user))
            .pass(Some(password))
            // The driver's default reconnects to the server's Unix socket when the host is
            // loopback: the account would then be 'user'@'localhost', not the one rotated.
            .prefer_socket(false)
            .stmt_cache_size(0)
            .connect_attribute("program_name", "keyturn");
        let Some(ssl) = self.ssl_opts() else {
            return Conn::new(base).await.map_err(|e| self.classify(&e, doing));
        };
        match Conn::new(base.clone().ssl_opts(ssl)).await {
            Ok(c) => Ok(c),
            Err(mysql_async::Error::Driver(
                mysql_async::DriverError::NoClientSslFlagFromServer,
            )) if self.tls == TlsMode::Prefer => {
                Conn::new(base).await.map_err(|e| self.classify(&e, doing))
            }
            Err(e) => Err(self.classify(&e, doing)),
        }
    }

    /// The driver's TLS options for this target's mode; `None` for plaintext.
    fn ssl_opts(&self) -> Option<SslOpts> {
        // The driver builds its rustls config with the process's default provider; with
        // none installed and two compiled in, rustls would panic. Installing aws-lc-rs (the
        // one keyturn's other clients use) fails harmlessly when one is already set.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        match self.tls {
            TlsMode::Disable => None,
            // The handshake signatures are still checked; the certificate is not.
            TlsMode::Prefer | TlsMode::Require => Some(
                SslOpts::default()
                    .with_danger_accept_invalid_certs(true)
                    .with_danger_skip_domain_validation(true),
            ),
            TlsMode::VerifyFull => {
                let roots = match &self.ca_file {
                    Some(ca) => vec![ca.clone().into()],
                    None => default_roots()
                        .iter()
                        .map(|c| c.as_ref().to_vec().into())
                        .collect(),
                };
                // Only these roots: not the driver's compiled-in Mozilla list.
                Some(
                    SslOpts::default()
                        .with_root_certs(roots)
                        .with_disable_built_in_roots(true),
                )
            }
        }
    }

    /// Sorts a driver error into retryable or not, in words that name the host, port and
    /// account, and never a password or the hash (the server's messages hold neither, but
    /// for a syntax error, which quotes the statement: its message is left out).
    fn classify(&self, e: &mysql_async::Error, doing: Doing<'_>) -> TargetError {
        use mysql_async::{DriverError, Error, IoError};
        let unreachable = |cause: String| TargetError::Unreachable {
            target: self.describe(),
            cause: format!("{doing}: {cause}"),
        };
        match e {
            Error::Server(s) => {
                if transient_server_error(s.code) {
                    return unreachable(format!("{} (server error {})", s.message, s.code));
                }
                let what = match (doing, s.code) {
                    (Doing::Alter { account, .. }, 1396) => format!(
                        "account {account} does not exist (keyturn does not create accounts; CREATE USER it first) (server error 1396)"
                    ),
                    (_, 1064 | 1149) => {
                        format!(
                            "{doing} refused: SQL syntax error (server error {})",
                            s.code
                        )
                    }
                    _ => format!("{doing} refused: {} (server error {})", s.message, s.code),
                };
                self.refused(what)
            }
            // A failed TLS handshake comes back from the TLS stream as an I/O error around
            // rustls's: a certificate the mode refuses is a refusal, not an outage.
            Error::Io(IoError::Io(io))
                if io
                    .get_ref()
                    .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()) =>
            {
                self.refused(format!("{doing} refused: TLS: {io}"))
            }
            Error::Io(IoError::Io(io)) => unreachable(io.to_string()),
            Error::Io(IoError::Tls(t)) => {
                self.refused(format!("{doing} refused: TLS: {}", error_chain(t)))
            }
            Error::Driver(DriverError::ConnectionClosed | DriverError::PacketOutOfOrder) => {
                unreachable(e.to_string())
            }
            Error::Driver(DriverError::NoClientSslFlagFromServer) => self.refused(format!(
                "{doing} refused: the server does not offer TLS (tls: {})",
                match self.tls {
                    TlsMode::VerifyFull => "verify-full",
                    _ => "require",
                }
            )),
            Error::Driver(d) => self.refused(format!("{doing} refused: {d}")),
            Error::Other(_) | Error::Url(_) => {
                self.refused(format!("{doing} refused: {}", error_chain(e)))
            }
        }
    }
}

/// Server errors a later attempt may not see: the server out of connections or shutting
/// down, a connection killed, a lock wait or deadlock, a network timeout on the server's
/// side.
fn transient_server_error(code: u16) -> bool {
    matches!(
        code,
        1040 // too many connections
            | 1041 // out of memory
            | 1053 // server shutdown in progress
            | 1152
            ..=1161 // aborted connection, network read/write errors and timeouts
            | 1203 // max_user_connections
            | 1205 // lock wait timeout
            | 1213 // deadlock
            | 1927 // connection killed
    )
}

/// The `mysql_native_password` hash of `password`: `*` and the upper-case hex of
/// SHA1(SHA1(password)), what `PASSWORD('…')` returns and `mysql.user` keeps.
#[must_use]
pub fn native_password_hash(password: &[u8]) -> Zeroizing<String> {
    // SHA1(password) is what a native login proves knowledge of: wiped once hashed again.
    let mut inner = Sha1::digest(password);
    let outer = Sha1::digest(&inner[..]);
    inner[..].zeroize();
    Zeroizing::new(format!("*{}", hex::encode_upper(outer)))
}

/// `name` as a backtick-quoted identifier, inner backticks doubled. Backticks, unlike string
/// literals, mean the same under every `sql_mode`: no backslash escapes
/// (`NO_BACKSLASH_ESCAPES` would change what `'\\'` is) and unaffected by `ANSI_QUOTES`.
fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `'user'@'host'`, for messages.
fn account(user: &str, host: &str) -> String {
    format!("'{user}'@'{host}'")
}

/// The statement that installs `hash` as the account's password. A hash is `*` and hex
/// only, so its literal needs no escaping.
fn alter_user_sql(user: &str, host: &str, hash: &str) -> Zeroizing<String> {
    debug_assert!(hash.bytes().all(|b| b == b'*' || b.is_ascii_hexdigit()));
    Zeroizing::new(format!(
        "ALTER USER {}@{} IDENTIFIED WITH mysql_native_password AS '{hash}'",
        quote_ident(user),
        quote_ident(host),
    ))
}

#[async_trait]
impl Target for Mysql {
    fn describe(&self) -> String {
        Self::describe_at(&self.host, self.port)
    }

    fn compose(&self, value: SecretValue, current: Option<&SecretData>) -> SecretData {
        self.users.compose(value, current)
    }

    async fn invalidate_others(&self, current: &SecretData) -> Result<Option<String>, TargetError> {
        let Some(standby) = self.users.standby(current) else {
            return Ok(None);
        };
        // Random, never stored: the standby account is unusable until the next rotation.
        let throwaway = crate::rotation::generate::throwaway();
        self.reset_password(standby, &throwaway).await?;
        Ok(Some(format!(
            "standby account {} password reset",
            account(standby, &self.user_host)
        )))
    }

    async fn set(&self, pending: &SecretData) -> Result<(), TargetError> {
        let (user, password) =
            user_and_password(pending).map_err(|what| self.refused(format!("pending {what}")))?;
        self.reset_password(user, password).await
    }

    async fn test(&self, pending: &SecretData) -> Result<(), TargetError> {
        let (user, password) =
            user_and_password(pending).map_err(|what| self.refused(format!("pending {what}")))?;
        let password = password.expose_str().map_err(|_| {
            self.refused(format!("pending password for user '{user}' is not UTF-8"))
        })?;
        self.bounded(async {
            let mut conn = self.connect(user, password, Doing::Login(user)).await?;
            let r = conn.query_drop("SELECT 1").await;
            let _ = conn.disconnect().await;
            r.map_err(|e| self.classify(&e, Doing::Login(user)))
        })
        .await
    }

    /// As the PostgreSQL target's: puts CURRENT's password back when `set` changed the
    /// account CURRENT uses (`single`); with `alternating` the account in use was never
    /// touched.
    async fn revert(
        &self,
        current: Option<&SecretData>,
        pending: &SecretData,
    ) -> Result<(), TargetError> {
        match to_restore(current, pending).map_err(|what| self.refused(what))? {
            Some((user, password)) => self.reset_password(user, password).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::TargetSpec;
    use crate::rotation::store::vault_kv;
    use crate::rotation::target::users::Strategy;

    fn target(strategy: Strategy, users: &[&str]) -> Mysql {
        let spec = Spec {
            host: "127.0.0.1".into(),
            port: 3306,
            admin: StoreSpec::VaultKv(vault_kv::Spec {
                mount: "secret".into(),
                path: "mysql-admin".into(),
            }),
            users: Users::new(users.iter().map(|u| (*u).to_owned()).collect(), strategy),
            user_host: "%".into(),
            tls: TlsSpec {
                mode: TlsMode::Disable,
                ca_file: None,
            },
        };
        Mysql::new(&spec, SecretData::new())
    }

    fn cred(user: &str, pw: &str) -> SecretData {
        let mut d = SecretData::new();
        d.insert(USERNAME, SecretValue::from_str_copy(user));
        d.insert(PASSWORD, SecretValue::from_str_copy(pw));
        d
    }

    /// A policy whose `mysql:` target is `target` (YAML lines at its indentation).
    fn policy(target: &str) -> String {
        format!(
            "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: shop-db }}\nspec:\n  every: 24h\n  store: {{ vault-kv: {{ path: keyturn/shop-db }} }}\n  target:\n    mysql:\n{target}"
        )
    }

    fn load(text: &str) -> Result<Vec<crate::policy::Policy>, String> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        std::fs::write(&f, text).unwrap();
        crate::policy::load(&f).map_err(|e| e.to_string())
    }

    const ADMIN: &str = "      admin: { vault-kv: { path: keyturn/mysql-admin } }\n";

    #[test]
    fn a_minimal_policy_gets_the_defaults() {
        let ps = load(&policy(&format!(
            "      host: db.shop.svc\n{ADMIN}      users: [shop]\n"
        )))
        .unwrap();
        let TargetSpec::Mysql(s) = &ps[0].target else {
            panic!("a mysql target")
        };
        assert_eq!(s.port, 3306);
        assert_eq!(s.user_host, "%");
        assert_eq!(s.tls.mode, TlsMode::Prefer);
        assert_eq!(s.users.strategy, Strategy::Single);
        assert_eq!(ps[0].target.fields(), ["username", "password"]);
        let needs: Vec<String> = ps[0]
            .target
            .needs()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            needs,
            [
                "mysql:db.shop.svc:3306 admin: ALTER USER 'shop'@'%' IDENTIFIED WITH mysql_native_password (the CREATE USER privilege: GRANT CREATE USER ON *.* TO the admin); the account exists"
            ]
        );
    }

    #[test]
    fn every_field_is_read() {
        let ps = load(&policy(&format!(
            "      host: 10.0.0.5\n      port: 3307\n{ADMIN}      users: [shop_a, shop_b]\n      user-host: 10.0.%\n      strategy: alternating\n      tls: verify-full\n      ca-file: /etc/ssl/db-ca.pem\n"
        )))
        .unwrap();
        let TargetSpec::Mysql(s) = &ps[0].target else {
            panic!("a mysql target")
        };
        assert_eq!((s.port, s.user_host.as_str()), (3307, "10.0.%"));
        assert_eq!(s.users.names, ["shop_a", "shop_b"]);
        assert_eq!(s.tls.mode, TlsMode::VerifyFull);
        assert_eq!(
            s.tls.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ssl/db-ca.pem"))
        );
    }

    #[test]
    fn bad_fields_are_each_reported_at_their_place() {
        let long = "u".repeat(USER_MAX + 1);
        let e = load(&policy(&format!(
            "      host: \" \"\n{ADMIN}      users: [\"\", {long}]\n      strategy: alternating\n      user-host: \"\"\n      tls: verify-ca\n      ca-file: /ca.pem\n"
        )))
        .unwrap_err();
        for want in [
            "p.yaml:9:13: spec.target.mysql.host: must not be empty",
            "p.yaml:11:15: spec.target.mysql.users: an account name must be 1 to 128 characters without NUL",
            "p.yaml:11:19: spec.target.mysql.users: an account name must be 1 to 128 characters without NUL",
            "p.yaml:13:18: spec.target.mysql.user-host: an account host must be 1 to 255 characters",
            "p.yaml:14:12: spec.target.mysql.tls: unknown TLS mode \"verify-ca\"",
            "p.yaml:15:16: spec.target.mysql.ca-file: is only used with tls: verify-full",
        ] {
            assert!(e.contains(want), "{want:?} not in\n{e}");
        }
        // 128 characters (MariaDB's limit), a NUL-free name with every quote kind: accepted.
        let ok = "q".repeat(USER_MAX);
        load(&policy(&format!(
            "      host: h\n{ADMIN}      users: [{ok}, \"we'ird`\\\\name\"]\n      strategy: alternating\n"
        )))
        .unwrap();
    }

    #[test]
    fn a_nul_in_a_name_and_an_unknown_field_are_rejected() {
        let e = load(&policy(&format!(
            "      host: h\n{ADMIN}      users: [\"a\\0b\"]\n"
        )))
        .unwrap_err();
        assert!(
            e.contains(
                "spec.target.mysql.users: an account name must be 1 to 128 characters without NUL"
            ),
            "{e}"
        );
        let e = load(&policy(&format!(
            "      host: h\n{ADMIN}      users: [a]\n      database: x\n"
        )))
        .unwrap_err();
        assert!(e.contains("database"), "{e}");
    }

    #[test]
    fn the_hash_is_mysqls_password_function() {
        // SELECT PASSWORD('password') on MariaDB and MySQL 5.7.
        assert_eq!(
            native_password_hash(b"password").as_str(),
            "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"
        );
        assert_eq!(native_password_hash(b"password").len(), 41);
    }

    #[test]
    fn identifiers_are_backtick_quoted_with_inner_backticks_doubled() {
        assert_eq!(quote_ident("shop"), "`shop`");
        assert_eq!(
            quote_ident("x`; DROP USER root; -- '\\"),
            "`x``; DROP USER root; -- '\\`"
        );
    }

    #[test]
    fn the_alter_statement_carries_the_hash_and_not_the_password() {
        let hash = native_password_hash(b"hunter2-cleartext");
        let sql = alter_user_sql("app`x", "10.0.%", &hash);
        assert_eq!(
            sql.as_str(),
            format!(
                "ALTER USER `app``x`@`10.0.%` IDENTIFIED WITH mysql_native_password AS '{}'",
                hash.as_str()
            )
        );
        assert!(!sql.contains("hunter2"));
    }

    #[tokio::test]
    async fn set_refuses_a_user_that_is_not_the_targets() {
        let t = target(Strategy::Single, &["app"]);
        let err = t.set(&cred("root", "x")).await.unwrap_err();
        assert!(matches!(err, TargetError::Refused { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("user 'root' is not one of this target's accounts"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn alternating_revert_leaves_the_current_user_alone() {
        // No admin credential and no server: any attempt to connect would fail.
        let t = target(Strategy::Alternating, &["a", "b"]);
        t.revert(Some(&cred("a", "cur")), &cred("b", "pending"))
            .await
            .unwrap();
        t.revert(None, &cred("a", "pending")).await.unwrap();
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_and_retryable() {
        let (_held, port) = crate::rotation::target::closed_port();
        let mut spec_target = target(Strategy::Single, &["app"]);
        spec_target.port = port;
        let err = spec_target
            .test(&cred("app", "KTCANARY-pw"))
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert!(
            err.to_string().starts_with(&format!(
                "mysql:127.0.0.1:{port}: unreachable: login as user 'app'"
            )),
            "{err}"
        );
        assert!(!err.to_string().contains("KTCANARY"), "{err}");
    }

    #[test]
    fn transient_server_errors_are_retryable_and_refusals_are_not() {
        for c in [1040, 1053, 1205, 1213, 1927] {
            assert!(transient_server_error(c), "{c}");
        }
        for c in [1045, 1227, 1396, 1064, 1470, 1290] {
            assert!(!transient_server_error(c), "{c}");
        }
    }

    #[test]
    fn describe_names_host_and_port() {
        assert_eq!(
            target(Strategy::Single, &["app"]).describe(),
            "mysql:127.0.0.1:3306"
        );
        assert_eq!(Mysql::describe_at("::1", 3306), "mysql:[::1]:3306");
    }
}

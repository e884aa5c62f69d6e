//! The `postgres` target: PostgreSQL roles whose passwords keyturn sets.
//!
//! - `set` logs in as the admin and runs `ALTER ROLE "user" WITH PASSWORD '<verifier>'`, where
//!   the verifier is a SCRAM-SHA-256 verifier computed here with a random salt (as psql's
//!   `\password` does). The cleartext password never reaches the server, so it cannot appear
//!   in `log_statement` output, `pg_stat_activity` or the server's error reports. Setting the
//!   same password again only changes the salt, so `set` is idempotent. The verifier keeps
//!   PostgreSQL's 4096 iterations. The server runs them once per `ALTER ROLE`, to refuse an
//!   empty password, so a lower count would be cheaper. It would also buy keyturn's random
//!   passwords nothing. But some client drivers refuse counts under 4096, and apps could then
//!   not log in.
//! - `test` logs in as the pending user with the pending password (SCRAM) and runs `SELECT 1`.
//! - `revert` puts CURRENT's password back when `set` changed the role CURRENT uses (always
//!   with `strategy: single`); with `strategy: alternating` the role in use was never touched,
//!   so there is nothing to undo.
//!
//! Roles are never created: a role that does not exist is a [`TargetError::Refused`] naming
//! it. The admin credential is read from an [`AdminSource`] at every `set`/`revert`, because
//! admin passwords rotate too.
//!
//! TLS is rustls only, with libpq's modes (see [`TlsMode`]); the default is `prefer`.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use keyturn_core::SecretValue;
use keyturn_core::vault::SecretData;
use rustls::pki_types::CertificateDer;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;
use zeroize::Zeroizing;

use serde::Deserialize;

pub use super::users::{PASSWORD, USERNAME};
mod pool;

use super::tls::{EncryptOnly, ca_certificates, default_roots};
pub use super::tls::{TlsConfigError, TlsMode, TlsSpec};
use super::users::{Users, check_change, field_str, to_restore, user_and_password};
use super::{AdminSource, Target, TargetError, admin_credential, error_chain, host_port};
use crate::backends::{Backends, RawStore, StoreSpec, TargetKind};
use crate::policy::needs::Need;
use crate::policy::{S, Validator};
pub use pool::AdminPool;

/// `postgres:` as a policy writes it.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Raw {
    /// The server's host name or address.
    #[schemars(with = "String")]
    host: S<String>,
    /// The server's port (default 5432).
    #[schemars(with = "Option<u16>")]
    port: Option<S<u16>>,
    /// The database to connect to (default `postgres`).
    #[schemars(with = "Option<String>")]
    database: Option<S<String>>,
    /// Where the admin credential that changes the passwords is kept.
    #[schemars(with = "RawStore")]
    admin: S<RawStore>,
    /// The accounts whose passwords keyturn sets: one for `single`, two for `alternating`.
    #[schemars(with = "Vec<String>")]
    users: S<Vec<S<String>>>,
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

/// A PostgreSQL target, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Server host.
    pub host: String,
    /// Server port (5432).
    pub port: u16,
    /// Database to connect to (`postgres`).
    pub database: String,
    /// Where the admin credential (`username`, `password`) is stored.
    pub admin: StoreSpec,
    /// The role(s) to rotate and how they take turns.
    pub users: Users,
    /// How the connections are protected (`prefer`), and the CA `verify-full` trusts.
    pub tls: TlsSpec,
}

impl Spec {
    /// Validates `raw`, found at `field`.
    pub(crate) fn validate(raw: &Raw, v: &mut Validator<'_>, field: &str) -> Option<Self> {
        let before = v.error_count();
        let users = Users::validate(v, &raw.users, raw.strategy.as_ref(), field, |u| {
            if u.is_empty() || u.len() > 63 || u.contains('\0') {
                Err("a role name must be 1 to 63 characters without NUL")
            } else {
                Ok(())
            }
        });
        if raw.host.value.trim().is_empty() {
            v.err(&raw.host, &format!("{field}.host"), "must not be empty");
        }
        let tls = TlsSpec::validate(v, raw.tls.as_ref(), raw.ca_file.as_ref(), field);
        let admin = StoreSpec::validate(&raw.admin, v, &format!("{field}.admin"));
        if v.error_count() > before {
            return None;
        }
        Some(Self {
            host: raw.host.value.clone(),
            port: raw.port.as_ref().map_or(5432, |p| p.value),
            database: raw
                .database
                .as_ref()
                .map_or_else(|| "postgres".to_owned(), |d| d.value.clone()),
            admin: admin?,
            users: users?,
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
        let target = Postgres::describe_at(&self.host, self.port, &self.database);
        self.users
            .names
            .iter()
            .map(|u| Need::Admin {
                target: target.clone(),
                privilege: format!(
                    "ALTER ROLE \"{u}\" PASSWORD (CREATEROLE with ADMIN OPTION on the role, or superuser); the role exists with LOGIN"
                ),
            })
            .collect()
    }

    fn build(&self, admin: Option<Arc<dyn AdminSource>>, backends: &Backends) -> Arc<dyn Target> {
        let admin = admin.unwrap_or_else(|| Arc::new(SecretData::new()));
        Arc::new(Postgres::with_admin_source(self, admin).with_pool(backends.pg_admin.clone()))
    }
}

/// The default bound on one operation (connect, then the statement).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A PostgreSQL target: the role(s) of one policy on one server.
#[derive(Clone)]
pub struct Postgres {
    host: String,
    port: u16,
    database: String,
    users: Users,
    admin: Arc<dyn AdminSource>,
    tls: TlsMode,
    ca: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// Read at the first `verify-full` connection when `ca` is not given in memory.
    ca_file: Option<PathBuf>,
    tls_connector: Arc<OnceLock<MakeRustlsConnect>>,
    timeout: Duration,
    pool: Arc<AdminPool>,
}

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Postgres")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("users", &self.users)
            .field("admin", &self.admin)
            .field("tls", &self.tls)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What a connection is for, so an error can say what was refused.
#[derive(Clone, Copy)]
enum Doing<'a> {
    /// Logging in as the admin role.
    AdminLogin(&'a str),
    /// Changing `role`'s password while logged in as `admin`.
    Alter { role: &'a str, admin: &'a str },
    /// Logging in as the rotated role.
    Login(&'a str),
}

impl fmt::Display for Doing<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AdminLogin(a) => write!(f, "admin login as role \"{a}\""),
            Self::Alter { role, admin } => {
                write!(f, "changing the password of role \"{role}\" as \"{admin}\"")
            }
            Self::Login(r) => write!(f, "login as role \"{r}\""),
        }
    }
}

impl Postgres {
    /// A target for `spec` whose admin credential is fixed. Prefer
    /// [`Postgres::with_admin_source`] where the admin password can rotate.
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
            database: spec.database.clone(),
            users: spec.users.clone(),
            admin,
            tls: spec.tls.mode,
            ca: None,
            ca_file: spec.tls.ca_file.clone(),
            tls_connector: Arc::new(OnceLock::new()),
            timeout: DEFAULT_TIMEOUT,
            pool: Arc::default(),
        }
    }

    /// Reuses admin connections from `pool` (one pool per process, shared by its targets).
    #[must_use]
    pub fn with_pool(mut self, pool: Arc<AdminPool>) -> Self {
        self.pool = pool;
        self
    }

    /// Sets the TLS mode (default [`TlsMode::Prefer`]).
    #[must_use]
    pub fn with_tls(mut self, mode: TlsMode) -> Self {
        self.tls = mode;
        self.tls_connector = Arc::new(OnceLock::new());
        self
    }

    /// Trusts only the CA certificates in `pem` (instead of the default roots) in
    /// [`TlsMode::VerifyFull`], as libpq's `sslrootcert`. Other modes do not check
    /// certificates.
    ///
    /// # Errors
    /// When `pem` holds no parsable certificate.
    pub fn with_ca_pem(mut self, pem: &[u8]) -> Result<Self, TlsConfigError> {
        self.ca = Some(Arc::new(ca_certificates(pem)?));
        self.tls_connector = Arc::new(OnceLock::new());
        Ok(self)
    }

    /// Bounds each operation (connecting and running its statement) to `timeout`
    /// (default [`DEFAULT_TIMEOUT`]); past it the target is [`TargetError::Unreachable`].
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The roles this target may change.
    #[must_use]
    pub fn users(&self) -> &[String] {
        &self.users.names
    }

    /// `postgres:HOST:PORT/DATABASE`, with an IPv6 host in brackets.
    fn describe_at(host: &str, port: u16, database: &str) -> String {
        format!("{}/{database}", host_port("postgres", host, port))
    }

    /// Sets `user`'s password to `value` now, outside any rotation (break-glass: make a
    /// leaked password useless, or reset the idle user of an alternating pair). The same
    /// statement `set` runs: only a verifier reaches the server.
    ///
    /// # Errors
    /// [`TargetError::Refused`] when `user` is not one of this target's roles, does not exist,
    /// or the admin may not change it; [`TargetError::Unreachable`] when the server cannot be
    /// reached in time; [`TargetError::Admin`] when the admin credential cannot be read.
    pub async fn reset_password(&self, user: &str, value: &SecretValue) -> Result<(), TargetError> {
        check_change(&self.users, user, value, "role").map_err(|what| self.refused(what))?;
        let admin = admin_credential(&*self.admin, &self.describe()).await?;
        let admin_user = field_str(&admin, USERNAME).unwrap_or_default();
        let admin_pw = admin
            .get(PASSWORD)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| TargetError::Admin {
                target: self.describe(),
                cause: "has no password field".into(),
            })?;
        // The verifier is salted and iterated; the cleartext stays in this process.
        let verifier = Zeroizing::new(postgres_protocol::password::scram_sha_256(value.expose()));
        let sql = Zeroizing::new(alter_role_sql(user, &verifier));
        let key = format!("{}:{}/{}/{admin_user}", self.host, self.port, self.database);
        self.bounded(async {
            let mut slot = self.pool.take(&key, admin_pw).await;
            let client = match slot.client.take() {
                Some(c) => c,
                None => {
                    self.connect(admin_user, admin_pw.expose(), Doing::AdminLogin(admin_user))
                        .await?
                }
            };
            client.batch_execute(&sql).await.map_err(|e| {
                self.classify(
                    &e,
                    Doing::Alter {
                        role: user,
                        admin: admin_user,
                    },
                )
            })?;
            self.pool.put(&key, slot, admin_pw.clone(), client);
            Ok(())
        })
        .await?;
        tracing::info!(server = %self.describe(), role = user, "password changed");
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

    /// Logs in as `user` to the target's database.
    async fn connect(
        &self,
        user: &str,
        password: &[u8],
        doing: Doing<'_>,
    ) -> Result<tokio_postgres::Client, TargetError> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&self.host)
            .port(self.port)
            .dbname(&self.database)
            .user(user)
            .password(password)
            .application_name("keyturn")
            .connect_timeout(self.timeout)
            .ssl_mode(match self.tls {
                TlsMode::Disable => SslMode::Disable,
                TlsMode::Prefer => SslMode::Prefer,
                TlsMode::Require | TlsMode::VerifyFull => SslMode::Require,
            });
        // The connection task ends when the client is dropped.
        if self.tls == TlsMode::Disable {
            let (client, conn) = cfg
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| self.classify(&e, doing))?;
            tokio::spawn(conn);
            Ok(client)
        } else {
            let tls = self.tls_connector()?;
            let (client, conn) = cfg
                .connect(tls)
                .await
                .map_err(|e| self.classify(&e, doing))?;
            tokio::spawn(conn);
            Ok(client)
        }
    }

    /// The rustls connector for this target's mode, built on first use.
    fn tls_connector(&self) -> Result<MakeRustlsConnect, TargetError> {
        if let Some(c) = self.tls_connector.get() {
            return Ok(c.clone());
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| self.refused(format!("TLS setup: {e}")))?;
        let config = if self.tls == TlsMode::VerifyFull {
            let mut roots = rustls::RootCertStore::empty();
            match (&self.ca, &self.ca_file) {
                (Some(ca), _) => {
                    roots.add_parsable_certificates(ca.iter().cloned());
                }
                (None, Some(file)) => {
                    let pem = std::fs::read(file)
                        .map_err(|e| self.refused(format!("CA file {}: {e}", file.display())))?;
                    let certs = ca_certificates(&pem)
                        .map_err(|e| self.refused(format!("CA file {}: {e}", file.display())))?;
                    roots.add_parsable_certificates(certs);
                }
                (None, None) => {
                    roots.add_parsable_certificates(default_roots().iter().cloned());
                }
            }
            if roots.is_empty() {
                return Err(self.refused(
                    "TLS verify-full: no trusted CA certificate (configure a CA bundle)".into(),
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
                .with_no_client_auth()
        };
        Ok(self
            .tls_connector
            .get_or_init(|| MakeRustlsConnect::new(config))
            .clone())
    }

    /// Sorts a driver error into retryable or not, in words that name the host, port and
    /// role, and never a password (the driver's and the server's messages hold none).
    fn classify(&self, e: &tokio_postgres::Error, doing: Doing<'_>) -> TargetError {
        if let Some(db) = e.as_db_error() {
            let code = db.code().code();
            if transient_sqlstate(code) {
                return TargetError::Unreachable {
                    target: self.describe(),
                    cause: format!("{doing}: {} (SQLSTATE {code})", db.message()),
                };
            }
            let what = match (doing, code) {
                (Doing::Alter { role, .. }, "42704") => {
                    format!(
                        "role \"{role}\" does not exist (keyturn does not create roles; create it with LOGIN first)"
                    )
                }
                _ => format!("{doing} refused: {} (SQLSTATE {code})", db.message()),
            };
            return self.refused(what);
        }
        // The driver's own errors: its top line says which kind, the chain says why.
        let kind = e.to_string();
        let refused = [
            "error performing TLS handshake",
            "authentication error",
            "invalid configuration",
            "invalid connection string",
        ];
        if refused.contains(&kind.as_str()) {
            self.refused(format!("{doing} refused: {}", error_chain(e)))
        } else {
            TargetError::Unreachable {
                target: self.describe(),
                cause: format!("{doing}: {}", error_chain(e)),
            }
        }
    }
}

/// SQLSTATEs a later attempt may not see: the server starting or stopping, out of
/// connections or resources, a lock or serialization conflict, a cancelled statement.
fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "57014" | "40001" | "40P01" | "55P03"
        )
}

/// `name` as an SQL identifier: double-quoted, inner double quotes doubled. Case and every
/// character are kept (the policy's role names are exact, not folded to lower case).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The statement that installs `verifier` as `role`'s password. A verifier is base64, digits
/// and `$:=+/` only, so it needs no escaping; quotes are doubled anyway.
fn alter_role_sql(role: &str, verifier: &str) -> String {
    format!(
        "ALTER ROLE {} WITH PASSWORD '{}'",
        quote_ident(role),
        verifier.replace('\'', "''")
    )
}

#[async_trait]
impl Target for Postgres {
    fn describe(&self) -> String {
        Self::describe_at(&self.host, self.port, &self.database)
    }

    fn compose(&self, value: SecretValue, current: Option<&SecretData>) -> SecretData {
        self.users.compose(value, current)
    }

    async fn invalidate_others(&self, current: &SecretData) -> Result<Option<String>, TargetError> {
        let Some(standby) = self.users.standby(current) else {
            return Ok(None);
        };
        // Random, never stored: the standby user is unusable until the next rotation sets it.
        let throwaway = crate::rotation::generate::throwaway();
        self.reset_password(standby, &throwaway).await?;
        Ok(Some(format!("standby role \"{standby}\" password reset")))
    }

    async fn set(&self, pending: &SecretData) -> Result<(), TargetError> {
        let (user, password) =
            user_and_password(pending).map_err(|what| self.refused(format!("pending {what}")))?;
        self.reset_password(user, password).await
    }

    async fn test(&self, pending: &SecretData) -> Result<(), TargetError> {
        let (user, password) =
            user_and_password(pending).map_err(|what| self.refused(format!("pending {what}")))?;
        self.bounded(async {
            let client = self
                .connect(user, password.expose(), Doing::Login(user))
                .await?;
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| self.classify(&e, Doing::Login(user)))?;
            Ok(())
        })
        .await
    }

    /// Puts CURRENT's password back on its role when `set` changed that same role, which is
    /// always the case with `strategy: single`. With `alternating`, `set` changed the idle
    /// role only: CURRENT works untouched, and the idle role keeps the abandoned password
    /// (PREVIOUS, which named it, was already superseded by `set`; the next rotation sets it
    /// afresh). Without a CURRENT (the very first rotation) there is nothing to go back to.
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
    use crate::rotation::store::vault_kv;
    use crate::rotation::target::users::Strategy;

    fn target(strategy: Strategy, users: &[&str]) -> Postgres {
        let spec = Spec {
            host: "127.0.0.1".into(),
            port: 5432,
            database: "postgres".into(),
            admin: StoreSpec::VaultKv(vault_kv::Spec {
                mount: "secret".into(),
                path: "pg-admin".into(),
            }),
            users: Users::new(users.iter().map(|u| (*u).to_owned()).collect(), strategy),
            tls: TlsSpec::default(),
        };
        Postgres::new(&spec, SecretData::new())
    }

    fn cred(user: &str, pw: &str) -> SecretData {
        let mut d = SecretData::new();
        d.insert(USERNAME, SecretValue::from_str_copy(user));
        d.insert(PASSWORD, SecretValue::from_str_copy(pw));
        d
    }

    fn user_of(d: &SecretData) -> &str {
        field_str(d, USERNAME).unwrap()
    }

    #[test]
    fn identifiers_are_double_quoted_with_inner_quotes_doubled() {
        assert_eq!(quote_ident("orders_a"), "\"orders_a\"");
        assert_eq!(
            quote_ident("Robert\"; DROP ROLE x; --"),
            "\"Robert\"\"; DROP ROLE x; --\""
        );
    }

    #[test]
    fn the_alter_statement_carries_a_verifier_and_not_the_password() {
        let verifier = postgres_protocol::password::scram_sha_256(b"hunter2-cleartext");
        let sql = alter_role_sql("app", &verifier);
        assert!(
            sql.starts_with("ALTER ROLE \"app\" WITH PASSWORD 'SCRAM-SHA-256$4096:"),
            "{sql}"
        );
        assert!(!sql.contains("hunter2"));
        // Random salt: the same password gives a different verifier each time.
        assert_ne!(
            verifier,
            postgres_protocol::password::scram_sha_256(b"hunter2-cleartext")
        );
    }

    #[test]
    fn single_composes_its_one_user() {
        let t = target(Strategy::Single, &["app"]);
        let d = t.compose(SecretValue::from_str_copy("new"), Some(&cred("app", "old")));
        assert_eq!(user_of(&d), "app");
        assert_eq!(d.get(PASSWORD).unwrap().expose(), b"new");
    }

    #[test]
    fn alternating_composes_the_user_not_in_use() {
        let t = target(Strategy::Alternating, &["a", "b"]);
        assert_eq!(
            user_of(&t.compose(SecretValue::from_str_copy("x"), None)),
            "a"
        );
        assert_eq!(
            user_of(&t.compose(SecretValue::from_str_copy("x"), Some(&cred("a", "p")))),
            "b"
        );
        assert_eq!(
            user_of(&t.compose(SecretValue::from_str_copy("x"), Some(&cred("b", "p")))),
            "a"
        );
        // A CURRENT naming neither (the policy's users changed) starts over with the first.
        assert_eq!(
            user_of(&t.compose(SecretValue::from_str_copy("x"), Some(&cred("old", "p")))),
            "a"
        );
    }

    #[tokio::test]
    async fn set_refuses_a_role_that_is_not_the_targets() {
        let t = target(Strategy::Single, &["app"]);
        let err = t.set(&cred("postgres", "x")).await.unwrap_err();
        assert!(matches!(err, TargetError::Refused { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("\"postgres\" is not one of this target's roles"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn alternating_revert_leaves_the_current_role_alone() {
        // No admin credential and no server: any attempt to connect would fail.
        let t = target(Strategy::Alternating, &["a", "b"]);
        t.revert(Some(&cred("a", "cur")), &cred("b", "pending"))
            .await
            .unwrap();
        t.revert(None, &cred("a", "pending")).await.unwrap();
    }

    #[test]
    fn transient_server_states_are_retryable_and_refusals_are_not() {
        for c in ["08006", "53300", "57P03", "40001"] {
            assert!(transient_sqlstate(c), "{c}");
        }
        for c in ["28P01", "28000", "42501", "42704", "3D000"] {
            assert!(!transient_sqlstate(c), "{c}");
        }
    }

    #[test]
    fn describe_names_host_port_and_database() {
        assert_eq!(
            target(Strategy::Single, &["app"]).describe(),
            "postgres:127.0.0.1:5432/postgres"
        );
    }
}

//! The `redis` target: Redis ACL users (Redis 6+) whose passwords keyturn sets.
//!
//! - `set` logs in as the admin (`AUTH admin password`), checks the user exists (`ACL
//!   GETUSER`: keyturn never creates users), and runs `ACL SETUSER <user> resetpass
//!   #<sha256-hex>`: the server stores SHA-256 hashes of passwords, and `#` hands it the hash
//!   directly, so the cleartext never crosses the wire. `resetpass` drops the user's other
//!   passwords (a leaked one must stop working) and touches nothing else: the user's
//!   commands, keys, channels and `on`/`off` state stay as they were. The same password gives
//!   the same hash, so `set` is idempotent. Then `ACL SAVE` writes the server's ACL file.
//! - `test` opens a fresh connection, sends `AUTH user password` and `PING`.
//! - `revert` and `invalidate_others` work as the PostgreSQL target's (see [`super::users`]).
//!
//! What the server keeps of these commands (Redis 7.0, checked by the tests): `MONITOR` shows
//! no `ACL` command at all (administrative commands are left out) and shows `AUTH`/`HELLO`
//! with their credentials as `"(redacted)"`; the slow log keeps `ACL SETUSER` with every
//! argument from the user name on redacted, and `AUTH` redacted; `ACL LOG` records a failed
//! login by user name only; the server log names no password at any level. And only a hash is
//! ever sent to be redacted: the cleartext crosses the wire only in `test`'s `AUTH`.
//!
//! Persistence: with an `aclfile` configured, `ACL SAVE` makes the change survive a restart.
//! Without one (users declared with `user` lines in `redis.conf`, or made at run time) the
//! server answers that no ACL file is configured; the change then lives in memory only, a
//! restart puts the old password back, and keyturn logs a warning at every rotation. It does
//! not run `CONFIG REWRITE` (that would need `+config|rewrite` and rewrite the operator's
//! `redis.conf`). ACLs are per server and not replicated: one target is one server.
//!
//! TLS is not supported yet: the target speaks plaintext RESP, for a server on loopback or a
//! private network. (keyturn opens the TCP stream itself, so TLS is a rustls wrapper around
//! it when it is added, not a change of client.)

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keyturn_core::SecretValue;
use keyturn_core::vault::SecretData;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisConnectionInfo, RedisError, Value};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use super::users::{PASSWORD, USERNAME};
use super::users::{Users, check_change, field_str, to_restore, user_and_password};
use super::{AdminSource, Target, TargetError, admin_credential, host_port};
use crate::backends::{Backends, RawStore, StoreSpec, TargetKind};
use crate::policy::needs::Need;
use crate::policy::{S, Validator};

/// `redis:` as a policy writes it.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Raw {
    /// The server's host name or address.
    #[schemars(with = "String")]
    host: S<String>,
    /// The server's port (default 6379).
    #[schemars(with = "Option<u16>")]
    port: Option<S<u16>>,
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
}

/// A Redis target, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Server host.
    pub host: String,
    /// Server port (6379).
    pub port: u16,
    /// Where the admin credential (`username`, `password`) is stored: an ACL user allowed
    /// `ACL GETUSER`, `ACL SETUSER` and `ACL SAVE` (`default` works too).
    pub admin: StoreSpec,
    /// The ACL user(s) to rotate and how they take turns.
    pub users: Users,
}

/// The longest ACL user name keyturn accepts. Redis sets no limit; names longer than this are
/// almost certainly a mistake in the policy, and they end up in every audit record.
pub const NAME_MAX: usize = 128;

/// Why `name` is not an ACL user name: Redis refuses names with white space or NUL ("Usernames
/// can't contain spaces or null characters"); keyturn also refuses other control characters
/// (they would be echoed into logs) and names longer than [`NAME_MAX`].
fn name_rule(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > NAME_MAX {
        Err("an ACL user name must be 1 to 128 bytes")
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("an ACL user name may not contain spaces or control characters")
    } else {
        Ok(())
    }
}

impl Spec {
    /// Validates `raw`, found at `field`.
    pub(crate) fn validate(raw: &Raw, v: &mut Validator<'_>, field: &str) -> Option<Self> {
        let before = v.error_count();
        let users = Users::validate(v, &raw.users, raw.strategy.as_ref(), field, name_rule);
        if raw.host.value.trim().is_empty() {
            v.err(&raw.host, &format!("{field}.host"), "must not be empty");
        }
        if let Some(p) = &raw.port
            && p.value == 0
        {
            v.err(p, &format!("{field}.port"), "must be 1 to 65535");
        }
        let admin = StoreSpec::validate(&raw.admin, v, &format!("{field}.admin"));
        if v.error_count() > before {
            return None;
        }
        Some(Self {
            host: raw.host.value.clone(),
            port: raw.port.as_ref().map_or(DEFAULT_PORT, |p| p.value),
            admin: admin?,
            users: users?,
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
        let target = Redis::describe_at(&self.host, self.port);
        let mut needs = vec![Need::Admin {
            target: target.clone(),
            privilege: "ACL rules +acl|getuser +acl|setuser +acl|save (this lets it change any \
                        user: an administrator); an aclfile, or a restart reverts the passwords \
                        of users from redis.conf"
                .into(),
        }];
        needs.extend(self.users.names.iter().map(|u| Need::Admin {
            target: target.clone(),
            privilege: format!("ACL user \"{u}\" exists and is on (keyturn never creates users)"),
        }));
        needs
    }

    fn build(&self, admin: Option<Arc<dyn AdminSource>>, _backends: &Backends) -> Arc<dyn Target> {
        let admin = admin.unwrap_or_else(|| Arc::new(SecretData::new()));
        Arc::new(Redis::with_admin_source(self, admin))
    }
}

/// Redis's own default port.
pub const DEFAULT_PORT: u16 = 6379;

/// The default bound on one operation (connect, then its commands).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A Redis target: the ACL user(s) of one policy on one server.
#[derive(Clone)]
pub struct Redis {
    host: String,
    port: u16,
    users: Users,
    admin: Arc<dyn AdminSource>,
    timeout: Duration,
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("users", &self.users)
            .field("admin", &self.admin)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What a connection is doing, so an error can say what was refused.
#[derive(Clone, Copy)]
enum Doing<'a> {
    /// Logging in as the admin user.
    AdminLogin(&'a str),
    /// Reading or changing `user`'s ACL entry while logged in as `admin`.
    Acl { user: &'a str, admin: &'a str },
    /// Saving the ACL file as `admin`.
    Save(&'a str),
    /// Logging in as the rotated user.
    Login(&'a str),
}

impl fmt::Display for Doing<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AdminLogin(a) => write!(f, "admin login as user \"{a}\""),
            Self::Acl { user, admin } => {
                write!(f, "changing the password of user \"{user}\" as \"{admin}\"")
            }
            Self::Save(a) => write!(f, "ACL SAVE as \"{a}\""),
            Self::Login(u) => write!(f, "login as user \"{u}\""),
        }
    }
}

impl Redis {
    /// A target for `spec` whose admin credential is fixed. Prefer
    /// [`Redis::with_admin_source`] where the admin password can rotate.
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
            admin,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Bounds each operation (connecting and its commands) to `timeout` (default
    /// [`DEFAULT_TIMEOUT`]); past it the target is [`TargetError::Unreachable`].
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `redis:HOST:PORT`, with an IPv6 host in brackets.
    fn describe_at(host: &str, port: u16) -> String {
        host_port("redis", host, port)
    }

    /// Sets `user`'s password to `value` now, outside any rotation (break-glass, and the
    /// standby user of an alternating pair). The same commands `set` runs: only a hash
    /// reaches the server.
    ///
    /// # Errors
    /// [`TargetError::Refused`] when `user` is not one of this target's users, does not exist,
    /// or the admin may not change it; [`TargetError::Unreachable`] when the server cannot be
    /// reached in time or is busy (loading, a script running); [`TargetError::Admin`] when
    /// the admin credential cannot be read.
    pub async fn reset_password(&self, user: &str, value: &SecretValue) -> Result<(), TargetError> {
        check_change(&self.users, user, value, "user").map_err(|what| self.refused(what))?;
        let admin = admin_credential(&*self.admin, &self.describe()).await?;
        let admin_user = field_str(&admin, USERNAME).unwrap_or_default();
        let admin_pw = admin
            .get(PASSWORD)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| TargetError::Admin {
                target: self.describe(),
                cause: "has no password field".into(),
            })?;
        let rule = Zeroizing::new(password_rule(value));
        let saved = self
            .bounded(async {
                let mut conn = self
                    .login(admin_user, admin_pw, Doing::AdminLogin(admin_user))
                    .await?;
                let doing = Doing::Acl {
                    user,
                    admin: admin_user,
                };
                // ACL SETUSER creates a user it does not know; keyturn only changes existing
                // ones. (A user deleted between the two commands is re-created without
                // permissions, `off`: it can do nothing and cannot even log in.)
                let entry: Value = redis::cmd("ACL")
                    .arg("GETUSER")
                    .arg(user)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.classify(&e, doing))?;
                if matches!(entry, Value::Nil) {
                    return Err(self.refused(format!(
                        "user \"{user}\" does not exist (keyturn does not create users; create it with ACL SETUSER first)"
                    )));
                }
                let () = redis::cmd("ACL")
                    .arg("SETUSER")
                    .arg(user)
                    .arg("resetpass")
                    .arg(rule.as_str())
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.classify(&e, doing))?;
                self.save(&mut conn, admin_user).await
            })
            .await?;
        if saved {
            tracing::info!(server = %self.describe(), user, "password changed and the ACL file saved");
        } else {
            tracing::warn!(
                server = %self.describe(),
                user,
                "password changed in memory only: the server has no aclfile, so a restart puts the old password back"
            );
        }
        Ok(())
    }

    /// `ACL SAVE`; `false` when the server has no ACL file to save to.
    async fn save(
        &self,
        conn: &mut MultiplexedConnection,
        admin: &str,
    ) -> Result<bool, TargetError> {
        match redis::cmd("ACL").arg("SAVE").query_async::<()>(conn).await {
            Ok(()) => Ok(true),
            Err(e)
                if e.detail()
                    .is_some_and(|d| d.contains("not configured to use an ACL file")) =>
            {
                Ok(false)
            }
            // The file could not be written (the server logs why): the password is changed in
            // memory but a restart would put the old one back, so the step is not done. A
            // retry may find the disk writable again.
            Err(e) if e.code() == Some("ERR") => Err(TargetError::Unreachable {
                target: self.describe(),
                cause: format!(
                    "{}: the server could not write its ACL file ({}); see its log",
                    Doing::Save(admin),
                    e.detail().unwrap_or_default()
                ),
            }),
            Err(e) => Err(self.classify(&e, Doing::Save(admin))),
        }
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

    /// A fresh connection, logged in as `user` with `AUTH user password`.
    async fn login(
        &self,
        user: &str,
        password: &SecretValue,
        doing: Doing<'_>,
    ) -> Result<MultiplexedConnection, TargetError> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| TargetError::Unreachable {
                target: self.describe(),
                cause: format!("{doing}: connect: {e}"),
            })?;
        // No credentials and no CLIENT SETINFO in the connection info: the client sends
        // nothing on its own, and AUTH below is the one login (a failed one is one ACL LOG
        // entry, not two, as the client's own fallback to a password-only AUTH would make).
        let info = RedisConnectionInfo::default().set_skip_set_lib_name();
        let config = AsyncConnectionConfig::new().set_response_timeout(Some(self.timeout));
        let (mut conn, driver) = MultiplexedConnection::new_with_config(&info, stream, config)
            .await
            .map_err(|e| self.classify(&e, doing))?;
        // The driver ends when the connection is dropped.
        tokio::spawn(driver);
        let () = redis::cmd("AUTH")
            .arg(user)
            .arg(password.expose())
            .query_async(&mut conn)
            .await
            .map_err(|e| self.classify(&e, doing))?;
        Ok(conn)
    }

    /// Sorts a client or server error into retryable or not, in words that name the server,
    /// the user and the operation. Redis's error texts hold no argument of the command that
    /// failed (the one exception, ACL SETUSER's syntax errors, cannot happen for the rule
    /// keyturn sends, which is a fixed keyword and a 64-digit hash).
    fn classify(&self, e: &RedisError, doing: Doing<'_>) -> TargetError {
        let code = e.code();
        if transient(e) {
            return TargetError::Unreachable {
                target: self.describe(),
                cause: format!("{doing}: {}", words(e)),
            };
        }
        let what = match code {
            Some("WRONGPASS") => {
                format!("{doing} refused: WRONGPASS (wrong password, or the user is off)")
            }
            Some("NOPERM") => match doing {
                Doing::Login(_) | Doing::AdminLogin(_) => {
                    format!("{doing} refused: NOPERM {}", e.detail().unwrap_or_default())
                }
                _ => format!(
                    "{doing} refused: NOPERM {} (the admin needs +acl|getuser +acl|setuser +acl|save)",
                    e.detail().unwrap_or_default()
                ),
            },
            _ => format!("{doing} refused: {}", words(e)),
        };
        self.refused(what)
    }
}

/// Whether a later attempt may succeed: the server unreachable or gone mid-command, or busy
/// (loading its data, a script or function running, a cluster reconfiguring).
fn transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.code(),
            Some("LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN")
        )
}

/// A Redis error in words: the server's code and message, or the client's.
fn words(e: &RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => e.to_string(),
    }
}

/// `#` and the lower-case hex SHA-256 of `password`: the form in which `ACL SETUSER` takes a
/// password already hashed (the server stores exactly this hash and compares a login's
/// SHA-256 with it).
fn password_rule(password: &SecretValue) -> String {
    let digest = Sha256::digest(password.expose());
    format!("#{}", hex::encode(digest))
}

#[async_trait]
impl Target for Redis {
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
        // Random, never stored: the standby user is unusable until the next rotation sets it.
        let throwaway = crate::rotation::generate::throwaway();
        self.reset_password(standby, &throwaway).await?;
        Ok(Some(format!("standby user \"{standby}\" password reset")))
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
            let mut conn = self.login(user, password, Doing::Login(user)).await?;
            match redis::cmd("PING").query_async::<()>(&mut conn).await {
                Ok(()) => Ok(()),
                // AUTH succeeded, which is what proves the password; a user whose rules do
                // not include PING is still logged in.
                Err(e) if e.code() == Some("NOPERM") => Ok(()),
                Err(e) => Err(self.classify(&e, Doing::Login(user))),
            }
        })
        .await
    }

    /// Puts CURRENT's password back on its user when `set` changed that same user (always
    /// the case with `strategy: single`); with `alternating` the user in use was never
    /// touched. Without a CURRENT (the very first rotation) there is nothing to go back to.
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

    fn target(strategy: Strategy, users: &[&str]) -> Redis {
        let spec = Spec {
            host: "127.0.0.1".into(),
            port: DEFAULT_PORT,
            admin: StoreSpec::VaultKv(vault_kv::Spec {
                mount: "secret".into(),
                path: "redis-admin".into(),
            }),
            users: Users::new(users.iter().map(|u| (*u).to_owned()).collect(), strategy),
        };
        Redis::new(&spec, SecretData::new())
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
    fn the_rule_is_the_sha256_of_the_password_and_not_the_password() {
        // echo -n 'hunter2-cleartext' | sha256sum
        let rule = password_rule(&SecretValue::from_str_copy("hunter2-cleartext"));
        assert_eq!(rule.len(), 65);
        assert!(rule.starts_with('#'));
        assert!(!rule.contains("hunter2"));
        assert_eq!(
            rule,
            format!("#{}", hex::encode(Sha256::digest(b"hunter2-cleartext")))
        );
        // Unsalted, so setting the same password again sends the same command: idempotent.
        assert_eq!(
            rule,
            password_rule(&SecretValue::from_str_copy("hunter2-cleartext"))
        );
    }

    #[test]
    fn user_names_follow_what_redis_accepts() {
        for ok in [
            "app",
            "orders_a",
            "svc-1.read",
            "default",
            "ÄÖü",
            &"x".repeat(128),
        ] {
            assert!(name_rule(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "two words",
            "tab\tbed",
            "nul\0",
            "bell\u{7}",
            &"x".repeat(129),
        ] {
            assert!(name_rule(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn single_composes_its_one_user_and_alternating_the_other() {
        let t = target(Strategy::Single, &["app"]);
        let d = t.compose(SecretValue::from_str_copy("new"), Some(&cred("app", "old")));
        assert_eq!(user_of(&d), "app");
        assert_eq!(d.get(PASSWORD).unwrap().expose(), b"new");
        let t = target(Strategy::Alternating, &["a", "b"]);
        let x = || SecretValue::from_str_copy("x");
        assert_eq!(user_of(&t.compose(x(), None)), "a");
        assert_eq!(user_of(&t.compose(x(), Some(&cred("a", "p")))), "b");
        assert_eq!(user_of(&t.compose(x(), Some(&cred("b", "p")))), "a");
    }

    #[tokio::test]
    async fn set_refuses_a_user_that_is_not_the_targets_before_any_connection() {
        let t = target(Strategy::Single, &["app"]);
        let err = t.set(&cred("default", "x")).await.unwrap_err();
        assert!(matches!(err, TargetError::Refused { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("\"default\" is not one of this target's users"),
            "{err}"
        );
        let err = t.set(&cred("app", "")).await.unwrap_err();
        assert!(err.to_string().contains("has no password"), "{err}");
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
    async fn a_port_nobody_listens_on_is_unreachable_and_retryable() {
        let (_held, port) = crate::rotation::target::closed_port();
        let mut t = target(Strategy::Single, &["app"]);
        t.port = port;
        let err = t.test(&cred("app", "secret-pw")).await.unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert!(
            err.to_string().contains(&format!("redis:127.0.0.1:{port}")),
            "{err}"
        );
        assert!(!err.to_string().contains("secret-pw"), "{err}");
    }

    /// The policy loader's errors for `target` (YAML under `target:`), one per line.
    fn policy_errors(target: &str) -> Result<crate::policy::Policy, String> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        std::fs::write(
            &f,
            format!(
                "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: cache }}\nspec:\n  every: 24h\n  store: {{ vault-kv: {{ path: keyturn/cache }} }}\n  target:\n{target}"
            ),
        )
        .unwrap();
        crate::policy::load(&f)
            .map(|mut p| p.remove(0))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_policy_with_a_redis_target_loads_with_its_defaults_and_needs() {
        let p = policy_errors(
            "    redis:\n      host: cache\n      admin: { vault-kv: { path: keyturn/redis-admin } }\n      users: [cache_a, cache_b]\n      strategy: alternating\n",
        )
        .unwrap();
        let crate::backends::TargetSpec::Redis(spec) = &p.target else {
            panic!("a redis target: {:?}", p.target)
        };
        assert_eq!((spec.host.as_str(), spec.port), ("cache", 6379));
        assert_eq!(spec.users.strategy, Strategy::Alternating);
        assert_eq!(p.target.fields(), &["username", "password"]);
        let needs: Vec<String> = p.target.needs().iter().map(ToString::to_string).collect();
        assert!(
            needs.iter().any(|n| n.contains("redis:cache:6379")
                && n.contains("+acl|getuser +acl|setuser +acl|save")),
            "{needs:?}"
        );
        assert!(
            needs.iter().any(|n| n.contains("\"cache_b\" exists")),
            "{needs:?}"
        );
    }

    #[test]
    fn each_mistake_in_a_redis_target_is_located() {
        let e = policy_errors(
            "    redis:\n      host: \" \"\n      port: 0\n      admin: { vault-kv: { path: keyturn/redis-admin } }\n      users: [\"a b\", \"\"]\n      strategy: alternating\n",
        )
        .unwrap_err();
        for want in [
            ":9:13: spec.target.redis.host: must not be empty",
            ":10:13: spec.target.redis.port: must be 1 to 65535",
            ":12:15: spec.target.redis.users: an ACL user name may not contain spaces",
            ":12:22: spec.target.redis.users: an ACL user name must be 1 to 128 bytes",
        ] {
            assert!(e.contains(want), "{want:?} not in:\n{e}");
        }
        let e = policy_errors(
            "    redis:\n      host: cache\n      admin: { vault-kv: { path: keyturn/redis-admin } }\n      users: [a, b]\n",
        )
        .unwrap_err();
        assert!(
            e.contains(
                ":11:14: spec.target.redis.users: strategy single needs exactly 1 user(s), found 2"
            ),
            "{e}"
        );
        let e = policy_errors(
            "    redis:\n      host: cache\n      admin: { vault-kv: { path: keyturn/redis-admin } }\n      users: [a]\n      tls: true\n",
        )
        .unwrap_err();
        assert!(e.contains(":12:") && e.contains("tls"), "{e}");
    }

    #[test]
    fn describe_names_host_and_port() {
        assert_eq!(
            target(Strategy::Single, &["app"]).describe(),
            "redis:127.0.0.1:6379"
        );
        assert_eq!(Redis::describe_at("::1", 6380), "redis:[::1]:6380");
    }
}

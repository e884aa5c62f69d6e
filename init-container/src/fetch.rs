//! Fetching every secret concurrently, retrying only what may clear up, under one deadline.
//!
//! # Which engine a path belongs to
//!
//! A manifest entry may say `engine: kv1 | kv2 | dynamic`. Without it, keyturn-init asks
//! Vault once, `GET sys/internal/ui/mounts` (allowed for every token, and filtered to the
//! mounts the token can use), and takes the longest mount that is a prefix of the path:
//!
//! - a KV v2 mount: the path must be the API path, `MOUNT/data/REST` (as Vault Agent
//!   templates write it); `version:` pins a version;
//! - a KV v1 mount: a plain read;
//! - anything else (`database/creds/ROLE`, `aws/creds/ROLE`, …): a plain logical read; the
//!   lease id, duration and renewability are kept and written beside the data.
//!
//! A path under no listed mount is read plainly too, so Vault's own answer (403, 404)
//! names it. With `engine:` on every entry, the mount lookup is skipped; `kv2` then takes
//! the mount to be everything before the first `/data/`.
//!
//! # Retries and the deadline
//!
//! The `Vault` client is built with no retries of its own; every call here goes through
//! [`retried`], which applies the caller's [`RetryPolicy`] (capped exponential backoff with
//! jitter, retryable errors only) and remembers each operation's last failure in
//! [`Progress`], so that when the caller's total deadline cuts everything short, each
//! unfinished operation can still be reported with what went wrong.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::StreamExt as _;
use keyturn_core::vault::{RetryPolicy, SecretData, Vault, VaultError};
use serde::Deserialize as _;

use crate::exit::{ExitCode, HasExitCode};

/// The secrets engine behind a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    /// KV version 1.
    Kv1,
    /// KV version 2.
    Kv2,
    /// Any other engine, read with a plain `GET` (dynamic credentials).
    Dynamic,
}

impl Engine {
    /// The manifest's spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kv1 => "kv1",
            Self::Kv2 => "kv2",
            Self::Dynamic => "dynamic",
        }
    }
}

/// A dynamic secret's lease. The id is not a secret (it cannot be used without a token
/// allowed on `sys/leases`), so it is logged and audited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The lease id.
    pub id: String,
    /// Seconds the credential is valid for.
    pub duration: u64,
    /// Whether the lease can be renewed.
    pub renewable: bool,
}

/// One read: a path and, for KV v2, an optional pinned version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReadKey {
    /// The Vault API path, normalized (no leading or trailing `/`).
    pub path: String,
    /// A pinned KV v2 version.
    pub version: Option<u64>,
}

/// A read to do, with the engine if the manifest named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// What to read.
    pub key: ReadKey,
    /// The engine, or `None` to look it up.
    pub engine: Option<Engine>,
}

/// A fetched secret. `Debug` shows field names only.
#[derive(Debug)]
pub struct Fetched {
    /// The engine it came from.
    pub engine: Engine,
    /// Its fields.
    pub data: SecretData,
    /// The KV v2 version read.
    pub version: Option<u64>,
    /// The lease, for dynamic secrets.
    pub lease: Option<Lease>,
}

/// Everything fetched, by read.
#[derive(Debug, Default)]
pub struct FetchedSet(HashMap<ReadKey, Fetched>);

impl FetchedSet {
    /// The secret for `key`.
    #[must_use]
    pub fn get(&self, key: &ReadKey) -> Option<&Fetched> {
        self.0.get(key)
    }

    /// Adds a secret.
    pub fn insert(&mut self, key: ReadKey, f: Fetched) {
        self.0.insert(key, f);
    }

    /// Every secret.
    pub fn iter(&self) -> impl Iterator<Item = (&ReadKey, &Fetched)> {
        self.0.iter()
    }

    /// Whether any secret carries a lease.
    #[must_use]
    pub fn has_leases(&self) -> bool {
        self.0.values().any(|f| f.lease.is_some())
    }
}

/// A read that failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Vault said no, or could not be reached.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// A KV v2 path written without its `data/` segment.
    #[error("{path}: {mount}/ is a KV v2 mount; write the API path {mount}/data/{rest}")]
    NotKv2ApiPath {
        /// The path as given.
        path: String,
        /// The mount.
        mount: String,
        /// The path below the mount.
        rest: String,
    },
    /// `version:` on a path that is not KV v2.
    #[error("{path}: version: applies to KV v2 only, and this path is {engine}")]
    VersionNotKv2 {
        /// The path.
        path: String,
        /// What it is.
        engine: &'static str,
    },
}

impl FetchError {
    /// The Vault path.
    #[must_use]
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::Vault(e) => e.path(),
            Self::NotKv2ApiPath { path, .. } | Self::VersionNotKv2 { path, .. } => Some(path),
        }
    }
}

impl HasExitCode for FetchError {
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Vault(e) => e.exit_code(),
            Self::NotKv2ApiPath { .. } | Self::VersionNotKv2 { .. } => ExitCode::Usage,
        }
    }
}

/// The state of every Vault operation so far, kept outside the futures so a deadline that
/// drops them can still say what each was waiting on.
#[derive(Debug, Default)]
pub struct Progress {
    ops: RefCell<Vec<OpState>>,
}

#[derive(Debug)]
struct OpState {
    op: &'static str,
    path: String,
    done: bool,
    last: Option<String>,
}

impl Progress {
    fn start(&self, op: &'static str, path: &str) -> usize {
        let mut ops = self.ops.borrow_mut();
        ops.push(OpState {
            op,
            path: path.to_owned(),
            done: false,
            last: None,
        });
        ops.len() - 1
    }

    fn failed(&self, i: usize, e: &VaultError) {
        // "vault read PATH: cause" → "cause": the deadline message names op and path itself.
        let s = e.to_string();
        let cause = match s.strip_prefix("vault ").and_then(|r| r.split_once(": ")) {
            Some((_, cause)) => cause.to_owned(),
            None => s,
        };
        self.ops.borrow_mut()[i].last = Some(cause);
    }

    fn done(&self, i: usize) {
        self.ops.borrow_mut()[i].done = true;
    }

    /// One [`VaultError::DeadlineExceeded`] per operation still unfinished.
    #[must_use]
    pub fn unfinished(&self, deadline: Duration) -> Vec<VaultError> {
        self.ops
            .borrow()
            .iter()
            .filter(|o| !o.done)
            .map(|o| VaultError::DeadlineExceeded {
                op: o.op,
                path: o.path.clone(),
                deadline,
                last: o.last.clone().unwrap_or_else(|| "no answer".into()),
            })
            .collect()
    }
}

/// Runs `attempt` under `retry`, recording each failure in `progress`.
///
/// # Errors
/// The final error.
pub async fn retried<T, F, Fut>(
    retry: &RetryPolicy,
    progress: &Progress,
    op: &'static str,
    path: &str,
    mut attempt: F,
) -> Result<T, VaultError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, VaultError>>,
{
    let i = progress.start(op, path);
    let r = retry
        .run(|| {
            let fut = attempt();
            async move {
                let r = fut.await;
                if let Err(e) = &r {
                    progress.failed(i, e);
                }
                r
            }
        })
        .await;
    progress.done(i);
    r
}

/// Reads in flight at once.
pub const MAX_IN_FLIGHT: usize = 16;

/// A mount from `sys/internal/ui/mounts`: its path with a trailing `/`, and its engine.
type Mount = (String, Engine);

/// Fetches every read concurrently. Stops at the first failure that will not clear up (a
/// 403, a 404), reporting it and any other failure already in.
///
/// # Errors
/// One [`FetchError`] per failed read (at least one).
pub async fn fetch_all(
    vault: &Vault,
    reads: &[Read],
    retry: &RetryPolicy,
    progress: &Progress,
) -> Result<FetchedSet, Vec<FetchError>> {
    let mounts = if reads.iter().any(|r| r.engine.is_none()) {
        mounts(vault, retry, progress)
            .await
            .map_err(|e| vec![FetchError::Vault(e)])?
    } else {
        Vec::new()
    };
    let mounts = &mounts;
    // At most MAX_IN_FLIGHT requests at once: each in-flight request holds a connection and
    // its buffers, and past a handful, more of them only add memory and server contention.
    let mut pending = futures_util::stream::iter(reads)
        .map(|r| async move { (r, fetch_one(vault, r, mounts, retry, progress).await) })
        .buffer_unordered(MAX_IN_FLIGHT);
    let mut set = FetchedSet::default();
    let mut errors = Vec::new();
    while let Some((read, result)) = pending.next().await {
        match result {
            Ok(f) => set.insert(read.key.clone(), f),
            Err(e) => {
                errors.push(e);
                // Collect whatever else has already finished, then stop waiting.
                while let Some(Some((_, r))) = pending.next().now_or_never() {
                    if let Err(e) = r {
                        errors.push(e);
                    }
                }
                return Err(errors);
            }
        }
    }
    Ok(set)
}

async fn mounts(
    vault: &Vault,
    retry: &RetryPolicy,
    progress: &Progress,
) -> Result<Vec<Mount>, VaultError> {
    const PATH: &str = "sys/internal/ui/mounts";
    let r = retried(retry, progress, "read", PATH, || vault.logical_read(PATH)).await?;
    let Some(secret) = r.data.get("secret").and_then(|v| v.as_object()) else {
        return Err(VaultError::BadResponse {
            op: "read",
            path: PATH.into(),
            what: "no secret mounts listed".into(),
        });
    };
    Ok(secret
        .iter()
        .map(|(path, m)| {
            let kind = m.get("type").and_then(|t| t.as_str()).unwrap_or_default();
            let version = m
                .get("options")
                .and_then(|o| o.get("version"))
                .and_then(|v| v.as_str());
            let engine = match (kind, version) {
                ("kv", Some("2")) => Engine::Kv2,
                ("kv" | "generic", _) => Engine::Kv1,
                _ => Engine::Dynamic,
            };
            (path.clone(), engine)
        })
        .collect())
}

/// The longest mount that holds `path`, if any.
fn mount_of<'m>(path: &str, mounts: &'m [Mount]) -> Option<&'m Mount> {
    mounts
        .iter()
        .filter(|(m, _)| {
            // `m` ends in `/`: it holds `path` when `path` is `m` less the `/`, or under it.
            let base = m.strip_suffix('/').unwrap_or(m);
            path.strip_prefix(base)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .max_by_key(|(m, _)| m.len())
}

#[tracing::instrument(skip_all, fields(path = %read.key.path))]
async fn fetch_one(
    vault: &Vault,
    read: &Read,
    mounts: &[Mount],
    retry: &RetryPolicy,
    progress: &Progress,
) -> Result<Fetched, FetchError> {
    let path = read.key.path.as_str();
    let (engine, mount) = match read.engine {
        Some(e) => (e, None),
        None => match mount_of(path, mounts) {
            Some((m, e)) => (*e, Some(m.trim_end_matches('/'))),
            None => (Engine::Dynamic, None),
        },
    };
    if read.key.version.is_some() && engine != Engine::Kv2 {
        return Err(FetchError::VersionNotKv2 {
            path: path.to_owned(),
            engine: engine.as_str(),
        });
    }
    match engine {
        Engine::Kv2 => {
            let (mount, rest) = match mount {
                Some(m) => {
                    let below = path.get(m.len() + 1..).unwrap_or_default();
                    match below.strip_prefix("data/") {
                        Some(rest) if !rest.is_empty() => (m, rest),
                        _ => {
                            return Err(FetchError::NotKv2ApiPath {
                                path: path.to_owned(),
                                mount: m.to_owned(),
                                rest: below.to_owned(),
                            });
                        }
                    }
                }
                None => match path.split_once("/data/") {
                    Some((m, rest)) if !rest.is_empty() => (m, rest),
                    _ => {
                        let (m, rest) = path.split_once('/').unwrap_or((path, ""));
                        return Err(FetchError::NotKv2ApiPath {
                            path: path.to_owned(),
                            mount: m.to_owned(),
                            rest: rest.to_owned(),
                        });
                    }
                },
            };
            let v = retried(retry, progress, "read", path, || async {
                // Core names a KV v2 error by mount and secret path; the manifest and every
                // message here use the API path.
                vault
                    .kv2_read(mount, rest, read.key.version)
                    .await
                    .map_err(|e| e.with_path(path))
            })
            .await?;
            Ok(Fetched {
                engine,
                data: v.data,
                version: Some(v.version),
                lease: None,
            })
        }
        Engine::Kv1 => {
            let (m, rest) = match mount {
                Some(m) => (m, path.get(m.len() + 1..).unwrap_or_default()),
                None => path.split_once('/').unwrap_or((path, "")),
            };
            let data = retried(retry, progress, "read", path, || vault.kv1_read(m, rest)).await?;
            Ok(Fetched {
                engine,
                data,
                version: None,
                lease: None,
            })
        }
        Engine::Dynamic => {
            let r = retried(retry, progress, "read", path, || vault.logical_read(path)).await?;
            let data = SecretData::deserialize(r.data).map_err(|_| VaultError::BadResponse {
                op: "read",
                path: path.to_owned(),
                what: "data is not an object".into(),
            })?;
            let lease = (!r.lease_id.is_empty()).then(|| Lease {
                id: r.lease_id,
                duration: u64::try_from(r.lease_duration).unwrap_or(0),
                renewable: r.renewable,
            });
            if let Some(l) = &lease {
                tracing::info!(lease_id = %l.id, ttl_s = l.duration, "dynamic secret leased (not renewed)");
            }
            Ok(Fetched {
                engine,
                data,
                version: None,
                lease,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(list: &[(&str, Engine)]) -> Vec<Mount> {
        list.iter().map(|(p, e)| ((*p).to_owned(), *e)).collect()
    }

    #[test]
    fn the_longest_mount_prefix_wins() {
        let ms = m(&[
            ("team/", Engine::Kv1),
            ("team/kv/", Engine::Kv2),
            ("secret/", Engine::Kv2),
        ]);
        assert_eq!(
            mount_of("team/kv/data/x", &ms).map(|x| x.0.as_str()),
            Some("team/kv/")
        );
        assert_eq!(
            mount_of("team/other", &ms).map(|x| x.0.as_str()),
            Some("team/")
        );
        assert_eq!(mount_of("secretx/a", &ms), None);
        assert_eq!(
            mount_of("secret", &ms).map(|x| x.0.as_str()),
            Some("secret/")
        );
    }

    #[test]
    fn unfinished_operations_are_reported_with_their_last_error() {
        let p = Progress::default();
        let a = p.start("read", "secret/data/a");
        let b = p.start("read", "secret/data/b");
        p.failed(
            a,
            &VaultError::Unavailable {
                op: "read",
                path: "secret/data/a".into(),
                code: 503,
                messages: vec![],
            },
        );
        p.done(b);
        let left = p.unfinished(Duration::from_secs(2));
        assert_eq!(left.len(), 1);
        assert_eq!(
            left[0].to_string(),
            "vault read secret/data/a: gave up after 2s: server answered 503: "
        );
        assert_eq!(left[0].exit_code(), 69);
    }
}

//! Rotation policies: what to rotate, when, where the value lives and who gets it.
//!
//! [`load`] reads a file or a directory of YAML files (several policies per file, `---`
//! separated), checks every rule without touching any server, and returns either the whole
//! validated set or every problem found, each naming `file:line:column` and the field.
//! Nothing half-valid is ever returned: the daemon swaps policy sets whole.

pub mod crd;
mod error;
pub mod kube_source;
pub mod needs;
pub mod rbac;
mod schema;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub use error::{PolicyError, PolicyErrors};
use schema::RawPolicy;
pub use schema::S;
pub(crate) use validate::Validator;

use crate::backends::{StoreSpec, TargetSpec};
use crate::schedule::Schedule;
use keyturn_core::config::{self, Location};

/// The `apiVersion` this build understands.
pub const API_VERSION: &str = "keyturn.dev/v1";
/// The `kind` of a rotation policy.
pub const KIND: &str = "RotationPolicy";
/// Attempts of `set`/`test` before a rotation is declared failed, unless the policy says.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// One validated rotation policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `metadata.name`, unique across the set.
    pub name: String,
    /// The file it came from: one shared copy for every policy of the file (a daemon holds
    /// up to 100,000 policies, usually from a few files).
    pub file: Arc<Path>,
    /// When rotations fall due.
    pub schedule: Schedule,
    /// Rotations start somewhere in `[due, due + window)`.
    pub window: Duration,
    /// Where the credential's versions live.
    pub store: StoreSpec,
    /// What the credential is for.
    pub target: TargetSpec,
    /// How new values are made.
    pub generator: Generator,
    /// Who receives the new value (Kubernetes Secrets, rollout restarts).
    pub distribute: Vec<Distribution>,
    /// Attempts of `set`/`test` before the rotation is reported failed.
    pub max_attempts: u32,
    /// The RotationPolicy object it came from (`None` for a policy file); `file` then reads
    /// `rotationpolicy/NAMESPACE/NAME`, so messages that print it still name the origin.
    /// Boxed: most policies come from files, and an absent object then costs 8 bytes, not 88.
    pub object: Option<Box<PolicyObject>>,
}

/// A RotationPolicy object a policy came from: what its status is written to, and what a
/// rejection names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyObject {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`, also the policy's name.
    pub name: String,
    /// `metadata.uid`: tells a re-created object from the one it replaced.
    pub uid: Option<String>,
    /// `metadata.generation` of the spec the policy was made from (the status's
    /// `observedGeneration`).
    pub generation: Option<i64>,
}

/// How new values are generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generator {
    /// Length in characters.
    pub length: u32,
    /// The characters to draw from, after exclusions, in a fixed order. Shared: a daemon
    /// holds up to 100,000 policies and nearly all of them draw from one of a few alphabets,
    /// so [`Generator::new`] interns it (one allocation per distinct alphabet, not 248 bytes
    /// per policy). Equality is still by content.
    pub alphabet: Arc<[char]>,
}

impl Generator {
    /// A generator of `length` characters from `alphabet`, the alphabet interned.
    #[must_use]
    pub fn new(length: u32, alphabet: &[char]) -> Self {
        Self {
            length,
            alphabet: intern_alphabet(alphabet),
        }
    }
}

/// The one shared copy of `alphabet`: every policy with the same characters in the same order
/// points at the same allocation.
///
/// Alphabets no policy uses any more are dropped when a new one is added, so a daemon whose
/// RotationPolicy objects keep changing their exclusions does not accumulate them.
fn intern_alphabet(alphabet: &[char]) -> Arc<[char]> {
    static ALPHABETS: Mutex<BTreeSet<Arc<[char]>>> = Mutex::new(BTreeSet::new());
    // A panic while holding the lock cannot leave the set inconsistent (each operation on it
    // is a single insert or retain), so a poisoned lock is still good to use.
    let mut set = ALPHABETS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(shared) = set.get(alphabet) {
        return Arc::clone(shared);
    }
    set.retain(|a| Arc::strong_count(a) > 1);
    let shared: Arc<[char]> = Arc::from(alphabet);
    set.insert(Arc::clone(&shared));
    shared
}

/// Character sets a generator can draw from.
pub const CHARSETS: &[(&str, &str)] = &[
    (
        "alphanumeric",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
    ),
    (
        "alphanumeric-symbols",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&()*+,-.:;<=>?@[]^_{|}~",
    ),
    ("hex", "0123456789abcdef"),
    (
        "base64url",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
    ),
];

/// One Kubernetes Secret to keep in step with the store, and the workloads to roll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distribution {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub secret: String,
    /// Secret key → credential field (`username`, `password`, `value`).
    pub keys: BTreeMap<String, String>,
    /// The Secret's `type`, when keyturn creates it.
    pub secret_type: Option<String>,
    /// Workloads to restart once the Secret holds the new value.
    pub restart: Vec<Workload>,
}

/// A workload to roll.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: String,
    /// Its name (in the Secret's namespace).
    pub name: String,
}

/// Reads and validates `path`: one YAML file, or every `*.yaml`/`*.yml` file directly in a
/// directory (in name order).
///
/// # Errors
/// Every problem found, each with file, line, column and field.
pub fn load(path: &Path) -> Result<Vec<Policy>, PolicyErrors> {
    let mut policies = Vec::new();
    each_policy(path, false, &mut |p| policies.push(p))?;
    Ok(policies)
}

/// [`load`], where finding no policy at all is no error: for a daemon that also takes its
/// policies from RotationPolicy objects, an empty directory is a valid start.
///
/// # Errors
/// As [`load`].
pub fn load_or_empty(path: &Path) -> Result<Vec<Policy>, PolicyErrors> {
    let mut policies = Vec::new();
    each_policy(path, true, &mut |p| policies.push(p))?;
    Ok(policies)
}

/// A policy of the policy files as the daemon holds it: every policy's name, store and file,
/// and the whole policy only where it was asked for. A replica keeps whole only the policies
/// it owns: at 100,000 policies on 4 replicas, the other three quarters cost about 70 MiB
/// per replica whole, and under 10 MiB like this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePolicy {
    /// `metadata.name`.
    pub name: Arc<str>,
    /// Its store's identity, for the clash checks against RotationPolicy objects.
    pub store: StoreKey,
    /// The file it came from.
    pub file: Arc<Path>,
    /// The whole policy, when it was kept.
    pub policy: Option<Arc<Policy>>,
}

impl FilePolicy {
    /// `policy`, kept whole or not.
    #[must_use]
    pub fn new(policy: Policy, whole: bool) -> Self {
        Self {
            name: Arc::from(policy.name.as_str()),
            store: StoreKey::of(&policy.store),
            file: Arc::clone(&policy.file),
            policy: whole.then(|| Arc::new(policy)),
        }
    }
}

/// A store's identity in 16 bytes: the first half of the SHA-256 of its spec. Two specs have
/// the same key exactly when they are the same store, short of a 128-bit collision (about
/// 10^-29 for 100,000 stores), so the clash checks need no copy of every policy's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreKey([u8; 16]);

impl StoreKey {
    /// The key of `spec`.
    #[must_use]
    pub fn of(spec: &StoreSpec) -> Self {
        use sha2::Digest as _;
        // `Debug` of the spec names its kind and every field, strings quoted and escaped:
        // distinct specs print differently.
        let digest = sha2::Sha256::digest(format!("{spec:?}").as_bytes());
        let mut key = [0; 16];
        key.copy_from_slice(&digest[..16]);
        Self(key)
    }
}

/// Reads and validates `path` as [`load`] does (or [`load_or_empty`] with `allow_empty`),
/// and keeps each policy whole only where `whole` says so; `whole` sees every valid policy.
///
/// # Errors
/// As [`load`].
pub fn load_held(
    path: &Path,
    allow_empty: bool,
    whole: &mut dyn FnMut(&Policy) -> bool,
) -> Result<Vec<FilePolicy>, PolicyErrors> {
    let mut held = Vec::new();
    each_policy(path, allow_empty, &mut |p| {
        let keep = whole(&p);
        held.push(FilePolicy::new(p, keep));
    })?;
    Ok(held)
}

/// Reads and validates `path`, handing each valid policy to `each` as it is made (so a caller
/// keeps only what it needs of them); the whole set is valid only when this returns `Ok`.
fn each_policy(
    path: &Path,
    allow_empty: bool,
    each: &mut dyn FnMut(Policy),
) -> Result<(), PolicyErrors> {
    let files = policy_files(path)?;
    let mut errors = Vec::new();
    let mut found = 0usize;
    let mut seen_names: BTreeMap<String, (Arc<Path>, u64)> = BTreeMap::new();
    let mut seen_stores: BTreeMap<StoreSpec, String> = BTreeMap::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(file_error(&file, format!("cannot read: {e}")));
                continue;
            }
        };
        let raws: Vec<RawPolicy> =
            match config::from_yaml_documents(&file.display().to_string(), &text) {
                Ok(r) => r,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
        let shared: Arc<Path> = Arc::from(file.as_path());
        for raw in raws {
            let mut v = Validator::new(&shared);
            let at = Location::of(&raw.metadata.name);
            let p = v.policy(raw);
            errors.append(&mut v.into_errors());
            let Some(p) = p else { continue };
            if let Some((f, l)) = seen_names.get(&p.name) {
                errors.push(PolicyError {
                    origin: file.display().to_string(),
                    at: Some(at),
                    field: "metadata.name".into(),
                    message: format!(
                        "duplicate policy name {:?} (first defined at {}:{l})",
                        p.name,
                        f.display()
                    ),
                });
                continue;
            }
            if let Some(other) = seen_stores.get(&p.store) {
                errors.push(PolicyError {
                    origin: file.display().to_string(),
                    at: Some(at),
                    field: "spec.store".into(),
                    message: format!("store {} is already used by policy {other:?}", p.store),
                });
                continue;
            }
            seen_names.insert(p.name.clone(), (Arc::clone(&shared), at.line));
            seen_stores.insert(p.store.clone(), p.name.clone());
            found += 1;
            each(p);
        }
    }
    if errors.is_empty() && found == 0 && !allow_empty {
        // A daemon with nothing to do is a misconfiguration (a wrong path or an empty
        // ConfigMap), not a success; a reload to an empty set keeps the old one.
        errors.push(file_error(
            path,
            "no rotation policies found (a directory is read for *.yaml and *.yml files)".into(),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PolicyErrors(errors))
    }
}

fn policy_files(path: &Path) -> Result<Vec<PathBuf>, PolicyErrors> {
    let meta = std::fs::metadata(path)
        .map_err(|e| PolicyErrors(vec![file_error(path, format!("cannot read: {e}"))]))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| PolicyErrors(vec![file_error(path, format!("cannot list: {e}"))]))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    Ok(files)
}

fn file_error(file: &Path, message: String) -> PolicyError {
    PolicyError::file(file.display().to_string(), message)
}

#[cfg(test)]
mod tests;

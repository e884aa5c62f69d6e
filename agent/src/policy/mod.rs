//! Rotation policies: what to rotate, when, where the value lives and who gets it.
//!
//! [`load`] reads a file or a directory of YAML files (several policies per file, `---`
//! separated), checks every rule without touching any server, and returns either the whole
//! validated set or every problem found, each naming `file:line:column` and the field.
//! Nothing half-valid is ever returned: the daemon swaps policy sets whole.

mod error;
mod schema;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{PolicyError, PolicyErrors};
use schema::{RawPolicy, RawStore, RawTarget, S};

use crate::schedule::{MAX_WINDOW, Schedule, parse_duration};
use keyturn_core::text::echo;

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
    /// The file it came from.
    pub file: PathBuf,
    /// When rotations fall due.
    pub schedule: Schedule,
    /// Rotations start somewhere in `[due, due + window)`.
    pub window: Duration,
    /// Where the credential's versions live.
    pub store: StoreRef,
    /// What the credential is for.
    pub target: Target,
    /// How new values are made.
    pub generator: Generator,
    /// Who receives the new value (Kubernetes Secrets, rollout restarts).
    pub distribute: Vec<Distribution>,
    /// Attempts of `set`/`test` before the rotation is reported failed.
    pub max_attempts: u32,
}

/// A place a secret is kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StoreRef {
    /// A Vault KV v2 path.
    VaultKv {
        /// The KV v2 mount.
        mount: String,
        /// The path inside the mount.
        path: String,
    },
    /// An AWS Secrets Manager secret.
    AwsSecretsManager {
        /// Name or ARN.
        secret_id: String,
        /// Region, else the SDK's default chain.
        region: Option<String>,
    },
}

impl std::fmt::Display for StoreRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::VaultKv { mount, path } => write!(f, "vault-kv:{mount}/{path}"),
            Self::AwsSecretsManager { secret_id, .. } => {
                write!(f, "aws-secretsmanager:{secret_id}")
            }
        }
    }
}

/// What a credential is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// No external system: a random token or API key.
    Generated,
    /// PostgreSQL roles whose passwords keyturn sets.
    Postgres(PostgresTarget),
}

/// A PostgreSQL target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresTarget {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Database to connect to.
    pub database: String,
    /// Where the admin credential (`username`, `password`) is stored.
    pub admin: StoreRef,
    /// The role(s) to rotate: one for `single`, two for `alternating`.
    pub users: Vec<String>,
    /// Single user, or two users taking turns.
    pub strategy: Strategy,
}

/// How PostgreSQL users are rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// One user; its password changes in place.
    Single,
    /// Two users; each rotation changes the one not in use, then switches.
    Alternating,
}

/// How new values are generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generator {
    /// Length in characters.
    pub length: u32,
    /// The characters to draw from, after exclusions, in a fixed order.
    pub alphabet: Vec<char>,
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
    let files = policy_files(path)?;
    let mut errors = Vec::new();
    let mut policies: Vec<Policy> = Vec::new();
    let mut seen_names: BTreeMap<String, (PathBuf, u64)> = BTreeMap::new();
    let mut seen_stores: BTreeMap<StoreRef, String> = BTreeMap::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(file_error(&file, format!("cannot read: {e}")));
                continue;
            }
        };
        let raws: Vec<RawPolicy> =
            match serde_saphyr::from_multiple_with_options(&text, yaml_options()) {
                Ok(r) => r,
                Err(e) => {
                    errors.push(yaml_error(&file, &e));
                    continue;
                }
            };
        for raw in raws {
            let mut v = Validator {
                file: &file,
                errors: Vec::new(),
            };
            let (line, column) = (
                raw.metadata.name.referenced.line(),
                raw.metadata.name.referenced.column(),
            );
            let p = v.policy(raw);
            errors.append(&mut v.errors);
            let Some(p) = p else { continue };
            if let Some((f, l)) = seen_names.get(&p.name) {
                errors.push(PolicyError {
                    file: file.clone(),
                    line,
                    column,
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
                    file: file.clone(),
                    line,
                    column,
                    field: "spec.store".into(),
                    message: format!("store {} is already used by policy {other:?}", p.store),
                });
                continue;
            }
            seen_names.insert(p.name.clone(), (file.clone(), line));
            seen_stores.insert(p.store.clone(), p.name.clone());
            policies.push(p);
        }
    }
    if errors.is_empty() && policies.is_empty() {
        // A daemon with nothing to do is a misconfiguration (a wrong path or an empty
        // ConfigMap), not a success; a reload to an empty set keeps the old one.
        errors.push(file_error(
            path,
            "no rotation policies found (a directory is read for *.yaml and *.yml files)".into(),
        ));
    }
    if errors.is_empty() {
        Ok(policies)
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
    PolicyError {
        file: file.to_owned(),
        line: 0,
        column: 0,
        field: String::new(),
        message,
    }
}

/// The parser's defaults guard against YAML bombs in untrusted input; a policy file is an
/// operator's own configuration and may hold thousands of policies, so the document and node
/// caps are raised (still bounded, so a runaway generator cannot exhaust memory).
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 100_000,
            max_nodes: 10_000_000,
            max_events: 40_000_000,
        },
    }
}

fn yaml_error(file: &Path, e: &serde_saphyr::Error) -> PolicyError {
    let plain = e.without_snippet();
    let (line, column) = plain.location().map_or((0, 0), |l| (l.line(), l.column()));
    // The library appends " at line N column M"; the location is already in front.
    let text = plain.to_string();
    let message = text
        .split(" at line ")
        .next()
        .unwrap_or(&text)
        .trim()
        .to_owned();
    PolicyError {
        file: file.to_owned(),
        line,
        column,
        field: String::new(),
        message,
    }
}

/// Collects errors for one policy document.
struct Validator<'a> {
    file: &'a Path,
    errors: Vec<PolicyError>,
}

impl Validator<'_> {
    fn err<T>(&mut self, at: &S<T>, field: &str, message: impl Into<String>) {
        self.errors.push(PolicyError {
            file: self.file.to_owned(),
            line: at.referenced.line(),
            column: at.referenced.column(),
            field: field.to_owned(),
            message: message.into(),
        });
    }

    fn policy(&mut self, raw: RawPolicy) -> Option<Policy> {
        let before = self.errors.len();
        if raw.api_version.value != API_VERSION {
            self.err(
                &raw.api_version,
                "apiVersion",
                format!("must be {API_VERSION:?}"),
            );
        }
        if raw.kind.value != KIND {
            self.err(&raw.kind, "kind", format!("must be {KIND:?}"));
        }
        let name = raw.metadata.name.value.clone();
        if let Err(m) = dns_label(&name) {
            self.err(&raw.metadata.name, "metadata.name", m);
        }
        let spec = raw.spec;
        let schedule = self.schedule(&spec.schedule, &spec.every, &spec.timezone);
        let window = match &spec.window {
            None => Duration::ZERO,
            Some(w) => match parse_duration(&w.value) {
                Ok(d) if d > MAX_WINDOW => {
                    self.err(w, "spec.window", "must be at most 31d");
                    Duration::ZERO
                }
                Ok(d) => d,
                Err(m) => {
                    self.err(w, "spec.window", m);
                    Duration::ZERO
                }
            },
        };
        // A window as long as the gap to the next slot would let a jittered start pass that
        // slot (and, for cron, overlap the next rotation).
        if let (Some(s), Some(w)) = (&schedule, &spec.window)
            && !window.is_zero()
            && s.shortest_gap(chrono::Utc::now())
                .is_some_and(|gap| window >= gap)
        {
            let what = match s {
                Schedule::Every(_) => "the `every` interval",
                Schedule::Cron { .. } => "the shortest gap between two of the schedule's slots",
            };
            self.err(w, "spec.window", format!("must be shorter than {what}"));
        }
        let store = self.store(&spec.store, "spec.store");
        let target = self.target(&spec.target);
        let generator = self.generator(spec.generator.as_ref());
        let distribute = spec
            .distribute
            .iter()
            .enumerate()
            .map(|(i, d)| self.distribution(i, d, target.as_ref()))
            .collect::<Vec<_>>();
        let max_attempts = match &spec.max_attempts {
            None => DEFAULT_MAX_ATTEMPTS,
            Some(n) if (1..=100).contains(&n.value) => n.value,
            Some(n) => {
                self.err(n, "spec.max-attempts", "must be between 1 and 100");
                DEFAULT_MAX_ATTEMPTS
            }
        };
        if self.errors.len() > before {
            return None;
        }
        Some(Policy {
            name,
            file: self.file.to_owned(),
            schedule: schedule?,
            window,
            store: store?,
            target: target?,
            generator: generator?,
            distribute: distribute.into_iter().collect::<Option<Vec<_>>>()?,
            max_attempts,
        })
    }

    fn schedule(
        &mut self,
        cron: &Option<S<String>>,
        every: &Option<S<String>>,
        tz: &Option<S<String>>,
    ) -> Option<Schedule> {
        match (cron, every) {
            (Some(c), None) => {
                match Schedule::cron(&c.value, tz.as_ref().map(|t| t.value.as_str())) {
                    Ok(s) => Some(s),
                    Err(crate::schedule::ScheduleError::BadTimezone(_)) if tz.is_some() => {
                        let t = tz.as_ref()?;
                        self.err(
                            t,
                            "spec.timezone",
                            format!(
                                "unknown time zone {} (use an IANA name such as Europe/Berlin)",
                                echo(&t.value)
                            ),
                        );
                        None
                    }
                    Err(e) => {
                        self.err(c, "spec.schedule", e.to_string());
                        None
                    }
                }
            }
            (None, Some(e)) => {
                if let Some(t) = tz {
                    self.err(
                        t,
                        "spec.timezone",
                        "only applies to a cron `schedule`, not to `every`",
                    );
                }
                match Schedule::every(&e.value) {
                    Ok(s) => Some(s),
                    Err(err) => {
                        self.err(e, "spec.every", err.to_string());
                        None
                    }
                }
            }
            (Some(c), Some(_)) => {
                self.err(
                    c,
                    "spec.schedule",
                    "give either `schedule` or `every`, not both",
                );
                None
            }
            (None, None) => {
                self.errors.push(PolicyError {
                    file: self.file.to_owned(),
                    line: 0,
                    column: 0,
                    field: "spec.schedule".into(),
                    message: "missing: give a cron `schedule` or an `every` interval".into(),
                });
                None
            }
        }
    }

    fn store(&mut self, raw: &S<RawStore>, field: &str) -> Option<StoreRef> {
        match &raw.value {
            RawStore::VaultKv(kv) => {
                let mount = kv
                    .mount
                    .as_ref()
                    .map_or_else(|| "secret".to_owned(), |m| m.value.clone());
                if let Some(m) = &kv.mount
                    && let Err(msg) = vault_segment_path(&m.value)
                {
                    self.err(m, &format!("{field}.vault-kv.mount"), msg);
                    return None;
                }
                if let Err(msg) = vault_segment_path(&kv.path.value) {
                    self.err(&kv.path, &format!("{field}.vault-kv.path"), msg);
                    return None;
                }
                Some(StoreRef::VaultKv {
                    mount: mount.trim_matches('/').to_owned(),
                    path: kv.path.value.trim_matches('/').to_owned(),
                })
            }
            RawStore::AwsSecretsmanager(a) => {
                if let Err(m) = aws_secret_id(&a.secret_id.value) {
                    self.err(
                        &a.secret_id,
                        &format!("{field}.aws-secretsmanager.secret-id"),
                        m,
                    );
                    return None;
                }
                if let Some(r) = &a.region
                    && let Err(m) = aws_region(&r.value)
                {
                    self.err(r, &format!("{field}.aws-secretsmanager.region"), m);
                    return None;
                }
                Some(StoreRef::AwsSecretsManager {
                    secret_id: a.secret_id.value.clone(),
                    region: a.region.as_ref().map(|r| r.value.clone()),
                })
            }
        }
    }

    fn target(&mut self, raw: &S<RawTarget>) -> Option<Target> {
        match &raw.value {
            RawTarget::Generated(_) => Some(Target::Generated),
            RawTarget::Postgres(pg) => {
                let before = self.errors.len();
                let strategy = match pg.strategy.as_ref().map(|s| s.value.as_str()) {
                    None | Some("single") => Strategy::Single,
                    Some("alternating") => Strategy::Alternating,
                    Some(other) => {
                        let s = pg.strategy.as_ref()?;
                        self.err(
                            s,
                            "spec.target.postgres.strategy",
                            format!("unknown strategy {} (single or alternating)", echo(other)),
                        );
                        Strategy::Single
                    }
                };
                let users: Vec<String> = pg.users.value.iter().map(|u| u.value.clone()).collect();
                let want = if strategy == Strategy::Alternating {
                    2
                } else {
                    1
                };
                if users.len() != want {
                    self.err(
                        &pg.users,
                        "spec.target.postgres.users",
                        format!(
                            "strategy {strategy:?} needs exactly {want} user(s), found {}",
                            users.len()
                        )
                        .to_lowercase(),
                    );
                } else if want == 2 && users[0] == users[1] {
                    self.err(
                        &pg.users,
                        "spec.target.postgres.users",
                        "the two alternating users must differ",
                    );
                }
                for u in &pg.users.value {
                    if u.value.is_empty() || u.value.len() > 63 || u.value.contains('\0') {
                        self.err(
                            u,
                            "spec.target.postgres.users",
                            "a role name must be 1 to 63 characters without NUL",
                        );
                    }
                }
                if pg.host.value.trim().is_empty() {
                    self.err(&pg.host, "spec.target.postgres.host", "must not be empty");
                }
                let admin = self.store(&pg.admin, "spec.target.postgres.admin");
                if self.errors.len() > before {
                    return None;
                }
                Some(Target::Postgres(PostgresTarget {
                    host: pg.host.value.clone(),
                    port: pg.port.as_ref().map_or(5432, |p| p.value),
                    database: pg
                        .database
                        .as_ref()
                        .map_or_else(|| "postgres".to_owned(), |d| d.value.clone()),
                    admin: admin?,
                    users,
                    strategy,
                }))
            }
        }
    }

    fn generator(&mut self, raw: Option<&schema::RawGenerator>) -> Option<Generator> {
        let length = raw.and_then(|g| g.length.as_ref());
        let len = length.map_or(32, |l| l.value);
        if let Some(l) = length
            && !(12..=1024).contains(&l.value)
        {
            self.err(l, "spec.generator.length", "must be between 12 and 1024");
            return None;
        }
        let charset = raw.and_then(|g| g.charset.as_ref());
        let name = charset.map_or("alphanumeric", |c| c.value.as_str());
        let Some((_, chars)) = CHARSETS.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = CHARSETS.iter().map(|(n, _)| *n).collect();
            if let Some(c) = charset {
                self.err(
                    c,
                    "spec.generator.charset",
                    format!(
                        "unknown charset {} (one of {})",
                        echo(name),
                        names.join(", ")
                    ),
                );
            }
            return None;
        };
        let exclude = raw.and_then(|g| g.exclude.as_ref());
        let alphabet: Vec<char> = chars
            .chars()
            .filter(|c| exclude.is_none_or(|e| !e.value.contains(*c)))
            .collect();
        if alphabet.len() < 10 {
            if let Some(e) = exclude {
                self.err(
                    e,
                    "spec.generator.exclude",
                    format!(
                        "leaves only {} characters; at least 10 are needed",
                        alphabet.len()
                    ),
                );
            }
            return None;
        }
        Some(Generator {
            length: len,
            alphabet,
        })
    }

    fn distribution(
        &mut self,
        i: usize,
        d: &schema::RawDistribute,
        target: Option<&Target>,
    ) -> Option<Distribution> {
        let before = self.errors.len();
        let base = format!("spec.distribute[{i}].kubernetes");
        let k = &d.kubernetes;
        if let Err(m) = dns_label(&k.namespace.value) {
            self.err(&k.namespace, &format!("{base}.namespace"), m);
        }
        if let Err(m) = dns_subdomain(&k.secret.value) {
            self.err(&k.secret, &format!("{base}.secret"), m);
        }
        // With an invalid target there is nothing to check field names against; the
        // target's own error is already reported.
        let fields: &[&str] = match target {
            Some(Target::Postgres(_)) => &["username", "password"],
            Some(Target::Generated) => &["value"],
            None => &[],
        };
        if k.keys.value.is_empty() {
            self.err(
                &k.keys,
                &format!("{base}.keys"),
                "must map at least one Secret key to a field",
            );
        }
        for (key, field) in &k.keys.value {
            if !valid_secret_key(key) {
                self.err(field, &format!("{base}.keys"), format!("{} is not a valid Secret key (letters, digits, '-', '_', '.'; at most 253)", echo(key)));
            }
            if target.is_some() && !fields.contains(&field.value.as_str()) {
                self.err(
                    field,
                    &format!("{base}.keys.{key}"),
                    // Not echoed: the one thing written here by mistake is the credential itself
                    // (`password: hunter2` for `password: password`).
                    format!(
                        "not a field this target provides (it provides {})",
                        fields.join(", ")
                    ),
                );
            }
        }
        let mut restart = Vec::new();
        for (j, r) in d.restart.iter().enumerate() {
            if !matches!(
                r.kind.value.as_str(),
                "Deployment" | "StatefulSet" | "DaemonSet"
            ) {
                self.err(
                    &r.kind,
                    &format!("spec.distribute[{i}].restart[{j}].kind"),
                    "must be Deployment, StatefulSet or DaemonSet",
                );
            }
            if let Err(m) = dns_subdomain(&r.name.value) {
                self.err(
                    &r.name,
                    &format!("spec.distribute[{i}].restart[{j}].name"),
                    m,
                );
            }
            restart.push(Workload {
                kind: r.kind.value.clone(),
                name: r.name.value.clone(),
            });
        }
        if self.errors.len() > before {
            return None;
        }
        Some(Distribution {
            namespace: k.namespace.value.clone(),
            secret: k.secret.value.clone(),
            keys: k
                .keys
                .value
                .iter()
                .map(|(a, b)| (a.clone(), b.value.clone()))
                .collect(),
            secret_type: k.secret_type.as_ref().map(|t| t.value.clone()),
            restart,
        })
    }
}

/// A Vault path: non-empty segments, no `.` or `..`, no empty segment, printable.
fn vault_segment_path(p: &str) -> Result<(), String> {
    let t = p.trim_matches('/');
    if t.is_empty() {
        return Err("must not be empty".into());
    }
    if p.starts_with('/') {
        return Err("must be relative (no leading '/')".into());
    }
    for seg in t.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!("{} has an empty, '.' or '..' segment", echo(p)));
        }
        if seg.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!(
                "{} contains whitespace or control characters",
                echo(p)
            ));
        }
    }
    Ok(())
}

/// What AWS Secrets Manager accepts as a `SecretId`: a name (1–512 of `A–Z a–z 0–9 /_+=.@-`)
/// or a secret ARN (`arn:PARTITION:secretsmanager:…`, at most 2048, the same characters plus
/// `:`). Anything else would only fail later, at the first rotation, against the live API.
fn aws_secret_id(id: &str) -> Result<(), String> {
    let name_char = |c: char| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c);
    if let Some(rest) = id.strip_prefix("arn:") {
        let parts: Vec<&str> = rest.splitn(6, ':').collect();
        let ok = id.len() <= 2048
            && parts.len() == 6
            && parts[1] == "secretsmanager"
            && parts[4] == "secret"
            && !parts[5].is_empty()
            && id.chars().all(|c| name_char(c) || c == ':');
        return if ok {
            Ok(())
        } else {
            Err("an ARN must be arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME (at most 2048 characters)".into())
        };
    }
    if id.is_empty() || id.len() > 512 || !id.chars().all(name_char) {
        return Err(
            "must be a secret name of 1 to 512 characters (letters, digits and /_+=.@-) or a secret ARN"
                .into(),
        );
    }
    Ok(())
}

/// An AWS region name such as `eu-central-1`: lowercase letters, digits and `-`.
fn aws_region(r: &str) -> Result<(), String> {
    let ok = (4..=32).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !r.starts_with('-')
        && !r.ends_with('-')
        && r.contains('-');
    if ok {
        Ok(())
    } else {
        Err("not an AWS region name (such as eu-central-1)".into())
    }
}

/// A DNS-1123 label: what Kubernetes accepts for namespaces and keyturn for policy names.
fn dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not a DNS-1123 label (lowercase letters, digits, '-'; at most 63)",
            echo(s)
        ))
    }
}

/// A DNS-1123 subdomain: what Kubernetes accepts for object names.
fn dns_subdomain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| !l.is_empty() && dns_label(l).is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not a valid object name (DNS-1123 subdomain)",
            echo(s)
        ))
    }
}

/// A key Kubernetes accepts in a Secret's `data`.
fn valid_secret_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && k != "."
        && k != ".."
}

#[cfg(test)]
mod tests;

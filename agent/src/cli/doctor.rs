//! `keyturn doctor`: checks, one line each, that this process could do its job — Vault
//! reachable and the token valid, the token's capabilities on every policy's store paths, the
//! AWS secrets reachable, the Kubernetes API reachable and its RBAC allowing every patch a
//! policy will make, the audit sink writable, `keyturn-init`'s output on tmpfs, the clock in
//! step with the servers'.
//!
//! Each line is `ok   CHECK[: detail]`, `FAIL CHECK: what — fix: how` or `skip CHECK: why`
//! (a check that does not apply, or that cannot run because one it depends on failed). The
//! exit code is 0 when nothing failed, 1 otherwise, 64 for an invalid policy set (found
//! before any network call).
//!
//! Doctor changes nothing: it asks Vault (`sys/capabilities-self`) and Kubernetes
//! (SelfSubjectAccessReview) what the identity *may* do instead of trying it, calls
//! `DescribeSecret` (metadata only) on AWS, and probes the audit directory with a temporary
//! file, never an audit event. It reads no secret value and prints none; the Vault token
//! goes only into request headers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Args;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use keyturn_core::vault::{Health, RetryPolicy, Vault, VaultConfig, VaultError};
use kube::api::{Api, PostParams};

use super::audit_log::AuditLogArgs;
use super::exit;
use super::vault_args::VaultArgs;
use crate::backends::Backends;
use crate::policy::needs::Need as PolicyNeed;
use crate::policy::{self, Policy};
use crate::rotation::store::aws_sm;

/// The largest clock difference to a server that leases, token TTLs and rotation leases
/// tolerate.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);

/// How long one probe may take: doctor reports a hung server, it does not wait it out.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// `keyturn doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// A policy file or a directory of them; without it, the per-policy checks are skipped.
    #[arg(long, env = "KEYTURN_POLICIES", value_name = "PATH")]
    pub policies: Option<PathBuf>,
    /// `keyturn-init`'s output directory, to check that it is memory-backed (tmpfs/ramfs).
    #[arg(long = "init-out", env = "KEYTURN_INIT_OUT", value_name = "DIR")]
    pub init_out: Option<PathBuf>,
    /// The agent's Vault identity (as `keyturn run` takes it).
    #[command(flatten)]
    pub vault: VaultArgs,
    /// The audit log (as `keyturn run` takes it); only its location is checked.
    #[command(flatten)]
    pub audit: AuditLogArgs,
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Passed, with an optional detail.
    Ok(Option<String>),
    /// Failed: what is wrong, and a one-line fix.
    Fail { what: String, fix: String },
    /// Does not apply, or cannot run.
    Skip(String),
}

fn ok(detail: impl Into<String>) -> Outcome {
    Outcome::Ok(Some(detail.into()))
}

fn fail(what: impl Into<String>, fix: impl Into<String>) -> Outcome {
    Outcome::Fail {
        what: what.into(),
        fix: fix.into(),
    }
}

fn skip(why: impl Into<String>) -> Outcome {
    Outcome::Skip(why.into())
}

/// The line for one check.
fn line(check: &str, outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ok(None) => format!("ok   {check}"),
        Outcome::Ok(Some(d)) => format!("ok   {check}: {d}"),
        Outcome::Fail { what, fix } => format!("FAIL {check}: {what} — fix: {fix}"),
        Outcome::Skip(why) => format!("skip {check}: {why}"),
    }
}

/// Prints lines as checks finish (a slow server shows where it is slow) and counts failures.
#[derive(Debug, Default)]
struct Report {
    failed: usize,
}

impl Report {
    fn add(&mut self, check: &str, outcome: &Outcome) {
        if matches!(outcome, Outcome::Fail { .. }) {
            self.failed += 1;
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", line(check, outcome));
        let _ = out.flush();
    }
}

/// Runs the subcommand; returns the exit code.
#[must_use]
pub fn run(args: DoctorArgs) -> u8 {
    // Validate the policy set before any network call.
    let policies = match &args.policies {
        None => None,
        Some(path) => match policy::load(path) {
            Ok(ps) => Some(ps),
            Err(e) => {
                eprintln!("{e}");
                return exit::USAGE;
            }
        },
    };
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let mut report = Report::default();
    rt.block_on(async {
        let policies = policies.as_deref();
        let vault = vault_checks(&mut report, &args.vault, policies).await;
        aws_checks(&mut report, policies).await;
        let kube = kube_checks(&mut report, policies).await;
        report.add("audit sink", &audit_check(&args.audit));
        report.add("init output", &init_out_check(args.init_out.as_deref()));
        let clock = clock_check(vault.date, kube.as_ref()).await;
        report.add("clock", &clock);
    });
    if report.failed == 0 {
        exit::OK
    } else {
        exit::FAILED
    }
}

// ---- Vault ---------------------------------------------------------------------------

/// What the Vault checks leave for later ones.
#[derive(Debug, Default)]
struct VaultFacts {
    /// The server's `Date` and the local time its answer arrived.
    date: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

async fn vault_checks(
    report: &mut Report,
    args: &VaultArgs,
    policies: Option<&[Policy]>,
) -> VaultFacts {
    let mut facts = VaultFacts::default();
    let uses_vault = policies.is_none_or(|ps| ps.iter().any(|p| !vault_needs(p).is_empty()));
    let caps_check = "vault capabilities";
    if !uses_vault {
        for check in ["vault reachable", "vault token", caps_check] {
            report.add(check, &skip("no policy keeps anything in Vault"));
        }
        return facts;
    }
    let connected = VaultConfig::from_env()
        .map_err(VaultError::from)
        .and_then(|mut cfg| {
            cfg.request_timeout = PROBE_TIMEOUT;
            Vault::connect(&cfg)
        });
    let mut vault = match connected {
        Ok(v) => v.with_retry(RetryPolicy::none()),
        Err(e) => {
            let outcome = fail(
                e.to_string(),
                "set VAULT_ADDR to the server's http(s)://host:port (and VAULT_CACERT for a private CA)",
            );
            report.add("vault reachable", &outcome);
            report.add("vault token", &skip("Vault is not configured"));
            report.add(caps_check, &skip("Vault is not configured"));
            return facts;
        }
    };

    // Reachable: sys/health, unauthenticated. A healthy standby answers too; a sealed or
    // uninitialised server answers 503/501.
    let health = tokio::time::timeout(PROBE_TIMEOUT, vault.health()).await;
    let reachable = match health {
        Ok(Ok(h)) => {
            facts.date = h.date.map(|d| (d, h.received));
            let outcome = health_outcome(vault.addr(), &h);
            report.add("vault reachable", &outcome);
            h.is_up()
        }
        failed => {
            let cause = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {}s", PROBE_TIMEOUT.as_secs()),
            };
            report.add(
                "vault reachable",
                &fail(
                    cause,
                    "check VAULT_ADDR, that Vault is running, and that this host can reach it (firewall, NetworkPolicy, VAULT_CACERT for TLS)",
                ),
            );
            false
        }
    };
    if !reachable {
        report.add("vault token", &skip("Vault is not reachable"));
        report.add(caps_check, &skip("Vault is not reachable"));
        return facts;
    }

    // The token: log in with the configured method, then look it up.
    let method = match args.prepare() {
        Ok((_, m)) => m,
        Err(e) => {
            report.add(
                "vault token",
                &fail(
                    e.to_string(),
                    "set VAULT_TOKEN (or ~/.vault-token), or --vault-auth with its role and credential",
                ),
            );
            report.add(caps_check, &skip("no Vault token"));
            return facts;
        }
    };
    let login = match vault.login(method.as_ref()).await {
        Ok(_) => vault.lookup_self().await,
        Err(e) => Err(e),
    };
    match login {
        Ok(info) => {
            let ttl = if info.ttl == 0 {
                "no expiry".to_owned()
            } else {
                format!("TTL {}", human(i64::try_from(info.ttl).unwrap_or(i64::MAX)))
            };
            report.add(
                "vault token",
                &ok(format!(
                    "display name {:?}, policies [{}], {ttl}",
                    info.display_name,
                    info.policies.join(", ")
                )),
            );
        }
        Err(e) => {
            let fix = match &e {
                VaultError::PermissionDenied { .. } => {
                    "the token is invalid or expired, or the auth role refused it: log in again (vault login) or check the role's bound service account"
                }
                _ => "check VAULT_ADDR and that Vault answers",
            };
            report.add("vault token", &fail(e.to_string(), fix));
            report.add(caps_check, &skip("no valid Vault token"));
            return facts;
        }
    }

    // Capabilities on every path the policies use.
    let Some(policies) = policies else {
        report.add(caps_check, &skip("no --policies given"));
        return facts;
    };
    let needs: Vec<(&Policy, Vec<Need>)> = policies
        .iter()
        .map(|p| (p, vault_needs(p)))
        .filter(|(_, n)| !n.is_empty())
        .collect();
    if needs.is_empty() {
        report.add(caps_check, &skip("no policy keeps anything in Vault"));
        return facts;
    }
    let mut paths: Vec<&str> = needs
        .iter()
        .flat_map(|(_, n)| n.iter().map(|n| n.path.as_str()))
        .collect();
    paths.sort_unstable();
    paths.dedup();
    let granted = match tokio::time::timeout(PROBE_TIMEOUT, vault.capabilities_self(&paths)).await {
        Ok(Ok(caps)) => Ok(caps),
        Ok(Err(VaultError::PermissionDenied { .. })) => Err(fail(
            "permission denied on sys/capabilities-self",
            "attach Vault's `default` policy to the token (it grants sys/capabilities-self), or add path \"sys/capabilities-self\" { capabilities = [\"update\"] }",
        )),
        Ok(Err(e)) => Err(fail(
            e.to_string(),
            "check that Vault stays reachable and its logs",
        )),
        Err(_) => Err(fail(
            format!("no answer within {}s", PROBE_TIMEOUT.as_secs()),
            "check that Vault stays reachable",
        )),
    };
    match granted {
        Err(outcome) => report.add(&format!("{caps_check}: cannot check"), &outcome),
        Ok(body) => {
            for (p, needs) in &needs {
                report.add(
                    &format!("{caps_check} (policy {})", p.name),
                    &capabilities_outcome(needs, &body),
                );
            }
        }
    }
    facts
}

/// What `sys/health` said.
fn health_outcome(addr: &str, h: &Health) -> Outcome {
    let version = h.version.as_deref().unwrap_or("unknown version");
    match h.status {
        200 => ok(format!("{addr} ({version})")),
        429 | 472 | 473 => ok(format!("{addr} ({version}, standby)")),
        501 => fail(
            format!("{addr} is not initialised"),
            "initialise it (bao/vault operator init)",
        ),
        503 => fail(
            format!("{addr} is sealed"),
            "unseal it (bao/vault operator unseal)",
        ),
        s => {
            let errors = if h.errors.is_empty() {
                String::new()
            } else {
                format!(": {}", h.errors.join("; "))
            };
            fail(
                format!("{addr} answered {s} to sys/health{errors}"),
                "check VAULT_ADDR points at Vault itself, not a proxy or another service",
            )
        }
    }
}

/// A Vault path a policy needs, and the capabilities on it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Need {
    /// The full API path (`secret/data/keyturn/orders-db`).
    path: String,
    /// The capabilities needed.
    caps: &'static [&'static str],
}

/// The Vault paths `p` uses and the capabilities it needs on them (see
/// [`Policy::needs`]).
fn vault_needs(p: &Policy) -> Vec<Need> {
    p.needs()
        .into_iter()
        .filter_map(|n| match n {
            PolicyNeed::Vault { path, capabilities } => Some(Need {
                path,
                caps: capabilities,
            }),
            _ => None,
        })
        .collect()
}

/// Compares what `sys/capabilities-self` granted (its answer `body`) with `needs`.
fn capabilities_outcome(needs: &[Need], granted: &BTreeMap<String, Vec<String>>) -> Outcome {
    let mut missing = Vec::new();
    let mut fixes = Vec::new();
    for n in needs {
        let granted: Vec<&str> = granted
            .get(&n.path)
            .map(|caps| caps.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let has = |c: &str| granted.contains(&"root") || granted.contains(&c);
        let lacking: Vec<&str> = n.caps.iter().copied().filter(|c| !has(c)).collect();
        if lacking.is_empty() {
            continue;
        }
        let shown = if granted.is_empty() || granted == ["deny"] {
            "nothing".to_owned()
        } else {
            granted.join(", ")
        };
        missing.push(format!(
            "{} needs {} (token has {shown})",
            n.path,
            lacking.join(", ")
        ));
        let caps: Vec<String> = n.caps.iter().map(|c| format!("{c:?}")).collect();
        fixes.push(format!(
            "path {:?} {{ capabilities = [{}] }}",
            n.path,
            caps.join(", ")
        ));
    }
    if missing.is_empty() {
        let paths: Vec<&str> = needs.iter().map(|n| n.path.as_str()).collect();
        ok(paths.join(", "))
    } else {
        fail(
            missing.join("; "),
            format!(
                "add to the token's Vault policy {} (policies/vault/keyturn-agent.hcl grants these for secret/data/keyturn/* and secret/data/keyturn-state/*)",
                fixes.join(" ")
            ),
        )
    }
}

/// An HTTP `Date` (`Tue, 15 Nov 1994 08:12:31 GMT`).
fn parse_http_date(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc2822(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

// ---- AWS -----------------------------------------------------------------------------

async fn aws_checks(report: &mut Report, policies: Option<&[Policy]>) {
    let check = "aws secrets manager";
    let Some(policies) = policies.filter(|ps| Backends::needs_aws(ps)) else {
        let why = if policies.is_none() {
            "no --policies given"
        } else {
            "no policy uses AWS Secrets Manager"
        };
        report.add(check, &skip(why));
        return;
    };
    // Each secret once: the credential (may not exist yet) and admin credentials (must).
    let mut secrets: BTreeMap<(String, Option<String>), (Vec<String>, bool)> = BTreeMap::new();
    for p in policies {
        for n in p.needs() {
            // The state secret is created with the first rotation; only the credential's
            // own secret is described.
            if let PolicyNeed::Aws {
                secret_id,
                region,
                must_exist,
                ..
            } = n
                && !secret_id.starts_with(aws_sm::STATE_PREFIX)
            {
                let e = secrets.entry((secret_id, region)).or_default();
                if !e.0.contains(&p.name) {
                    e.0.push(p.name.clone());
                }
                e.1 |= must_exist;
            }
        }
    }
    let client = aws_sm::client_from_env(None).await;
    for ((secret_id, region), (names, admin)) in secrets {
        let client = match &region {
            Some(r) => aws_sm::with_region(&client, r),
            None => client.clone(),
        };
        let outcome = describe(&client, &secret_id, admin).await;
        report.add(
            &format!("{check} {secret_id} (policy {})", names.join(", ")),
            &outcome,
        );
    }
}

async fn describe(client: &aws_sm::sdk::Client, secret_id: &str, admin: bool) -> Outcome {
    use aws_sm::sdk::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
    let grant = "grant secretsmanager:DescribeSecret, GetSecretValue, PutSecretValue, UpdateSecretVersionStage and CreateSecret on it and on keyturn-state/<name>";
    match client.describe_secret().secret_id(secret_id).send().await {
        Ok(out) if out.rotation_enabled == Some(true) => fail(
            "Secrets Manager's own rotation is enabled on it; two rotators would take AWSPENDING from each other",
            "turn it off (aws secretsmanager cancel-rotate-secret)",
        ),
        Ok(_) => ok("reachable"),
        Err(SdkError::ServiceError(se)) => {
            let code = se.err().code().unwrap_or("UnknownError");
            let message = se.err().message().unwrap_or_default();
            match code {
                "ResourceNotFoundException" if !admin => {
                    ok("reachable; the secret does not exist yet (the first rotation creates it)")
                }
                "ResourceNotFoundException" => fail(
                    "the admin credential's secret does not exist",
                    "create it with username and password fields",
                ),
                "AccessDeniedException" => fail(format!("{code}: {message}"), grant),
                _ => fail(
                    format!("{code}: {message}"),
                    "check AWS_REGION and the credentials in use",
                ),
            }
        }
        Err(e) => fail(
            DisplayErrorContext(&e).to_string(),
            "check AWS_REGION, AWS_ENDPOINT_URL and the network path to Secrets Manager",
        ),
    }
}

// ---- Kubernetes ----------------------------------------------------------------------

/// One access a policy needs: `verb` on `group/resource` `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Access {
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    namespace: String,
    name: String,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resource = if self.group.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        write!(
            f,
            "{} {resource} {}/{}",
            self.verb, self.namespace, self.name
        )
    }
}

/// Each Kubernetes access `p` needs, one per verb (see [`Policy::needs`]).
fn kube_needs(p: &Policy) -> Vec<Access> {
    let mut out = Vec::new();
    for n in p.needs() {
        if let PolicyNeed::Kubernetes {
            namespace,
            group,
            resource,
            name,
            verbs,
        } = n
        {
            out.extend(verbs.iter().map(|verb| Access {
                verb,
                group,
                resource,
                namespace: namespace.clone(),
                name: name.clone(),
            }));
        }
    }
    out.sort();
    out.dedup();
    out
}

async fn kube_checks(report: &mut Report, policies: Option<&[Policy]>) -> Option<kube::Client> {
    let rbac = "kubernetes rbac";
    let Some(policies) = policies.filter(|ps| ps.iter().any(|p| !p.distribute.is_empty())) else {
        let why = if policies.is_none() {
            "no --policies given"
        } else {
            "no policy distributes to Kubernetes"
        };
        report.add("kubernetes api", &skip(why));
        report.add(rbac, &skip(why));
        // Still useful for the clock when Vault cannot tell the time.
        return kube_client().await.ok().map(|(c, _)| c);
    };
    let (client, host) = match kube_client().await {
        Ok(c) => c,
        Err(e) => {
            report.add(
                "kubernetes api",
                &fail(
                    format!("no usable configuration: {e}"),
                    "set KUBECONFIG, or run in a pod with a service account token mounted",
                ),
            );
            report.add(rbac, &skip("no Kubernetes API"));
            return None;
        }
    };
    let unreachable = match tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(v)) => {
            report.add("kubernetes api", &ok(format!("{host} ({})", v.git_version)));
            None
        }
        Ok(Err(e)) => Some(format!("cannot reach {host}: {e}")),
        Err(_) => Some(format!(
            "{host} did not answer within {}s",
            PROBE_TIMEOUT.as_secs()
        )),
    };
    if let Some(what) = unreachable {
        report.add(
            "kubernetes api",
            &fail(
                what,
                "check the server address in KUBECONFIG and the network path to it",
            ),
        );
        report.add(rbac, &skip("Kubernetes API not reachable"));
        return Some(client);
    }
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut answers: BTreeMap<Access, Result<bool, String>> = BTreeMap::new();
    for p in policies.iter().filter(|p| !p.distribute.is_empty()) {
        let needs = kube_needs(p);
        let mut denied = Vec::new();
        let mut errors = Vec::new();
        for a in &needs {
            if !answers.contains_key(a) {
                let r = review(&reviews, a).await;
                answers.insert(a.clone(), r);
            }
            match &answers[a] {
                Ok(true) => {}
                Ok(false) => denied.push(a.to_string()),
                Err(e) => errors.push(e.clone()),
            }
        }
        let check = format!("{rbac} (policy {})", p.name);
        let outcome = if let Some(e) = errors.first() {
            fail(
                format!("cannot check RBAC: {e}"),
                "allow `create` on selfsubjectaccessreviews.authorization.k8s.io (the system:basic-user ClusterRole does) and check the API server",
            )
        } else if denied.is_empty() {
            ok(format!("{} accesses allowed", needs.len()))
        } else {
            fail(
                format!("denied: {}", denied.join(", ")),
                format!(
                    "apply the Role that `keyturn policy rbac {}` prints to the agent's service account",
                    p.file.display()
                ),
            )
        };
        report.add(&check, &outcome);
    }
    Some(client)
}

/// A client from KUBECONFIG or the in-cluster configuration (as `keyturn run` builds it),
/// and the server's address for messages.
async fn kube_client() -> Result<(kube::Client, String), String> {
    let config = tokio::time::timeout(PROBE_TIMEOUT, kube::Config::infer())
        .await
        .map_err(|_| "loading the configuration timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let host = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
    Ok((client, host))
}

async fn review(api: &Api<SelfSubjectAccessReview>, a: &Access) -> Result<bool, String> {
    let ssar = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(a.verb.to_owned()),
                group: Some(a.group.to_owned()),
                resource: Some(a.resource.to_owned()),
                namespace: Some(a.namespace.clone()),
                name: Some(a.name.clone()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    match tokio::time::timeout(PROBE_TIMEOUT, api.create(&PostParams::default(), &ssar)).await {
        Ok(Ok(r)) => r
            .status
            .map(|s| s.allowed)
            .ok_or_else(|| "the SelfSubjectAccessReview came back without a status".to_owned()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
    }
}

// ---- Local ---------------------------------------------------------------------------

/// The audit file's directory takes a new file (created and removed again: no audit event
/// is written), an existing audit file opens for appending, and a given HMAC key loads.
fn audit_check(args: &AuditLogArgs) -> Outcome {
    let Some(file) = &args.file else {
        return if args.stdout {
            ok("stdout")
        } else {
            fail(
                "no audit sink: an access that cannot be audited does not happen",
                "set KEYTURN_AUDIT_FILE (or --audit-file), or KEYTURN_AUDIT_STDOUT=true",
            )
        };
    };
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let probe = dir.join(format!(
        ".keyturn-doctor-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    if let Err(e) = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        return fail(
            format!("cannot create a file in {}: {e}", dir.display()),
            format!(
                "create {} and make it writable by keyturn's user",
                dir.display()
            ),
        );
    }
    let _ = std::fs::remove_file(&probe);
    if file.exists()
        && let Err(e) = std::fs::OpenOptions::new().append(true).open(file)
    {
        return fail(
            format!("cannot open {} for appending: {e}", file.display()),
            format!("make {} writable by keyturn's user", file.display()),
        );
    }
    if let Some(key) = &args.hmac_key_file
        && let Err(e) = keyturn_core::audit::HmacKey::load(key)
    {
        return fail(
            e.to_string(),
            "point KEYTURN_AUDIT_HMAC_KEY_FILE at a readable file of at least 32 random bytes",
        );
    }
    let mut detail = format!("{} (directory writable)", file.display());
    if args.stdout {
        detail.push_str(", and stdout");
    }
    ok(detail)
}

fn init_out_check(dir: Option<&Path>) -> Outcome {
    let Some(dir) = dir else {
        return skip("no --init-out given");
    };
    match keyturn_core::sys::is_memory_backed(dir) {
        Ok(true) => ok(format!("{} is memory-backed", dir.display())),
        Ok(false) => fail(
            format!(
                "{} is on a disk-backed filesystem: rendered secrets would reach a disk",
                dir.display()
            ),
            "mount an emptyDir with medium: Memory there",
        ),
        Err(e) => fail(
            format!("cannot stat {}: {e}", dir.display()),
            "create the directory (an emptyDir with medium: Memory) before keyturn-init runs",
        ),
    }
}

/// Local time against Vault's `Date`, else the Kubernetes API server's.
async fn clock_check(
    vault: Option<(DateTime<Utc>, DateTime<Utc>)>,
    kube: Option<&kube::Client>,
) -> Outcome {
    let (server, (date, received)) = match vault {
        Some(d) => ("Vault", d),
        None => match kube_date(kube).await {
            Some(d) => ("the Kubernetes API server", d),
            None => return skip("no server told its time (Vault and Kubernetes not reachable)"),
        },
    };
    clock_outcome(server, date, received)
}

fn clock_outcome(server: &str, date: DateTime<Utc>, received: DateTime<Utc>) -> Outcome {
    // `Date` has whole seconds: allow the truncation on top of the tolerance.
    let skew = received - date;
    let off = skew.num_milliseconds().unsigned_abs();
    let limit = u64::try_from(MAX_CLOCK_SKEW.as_millis()).unwrap_or(u64::MAX) + 1000;
    let ahead = if skew.num_milliseconds() >= 0 {
        "ahead of"
    } else {
        "behind"
    };
    if off > limit {
        fail(
            format!(
                "this host is {} {ahead} {server} (more than {}s breaks leases and TTLs)",
                human(skew.num_seconds().abs()),
                MAX_CLOCK_SKEW.as_secs()
            ),
            "run NTP (chrony/systemd-timesyncd) on this host and on the server",
        )
    } else {
        ok(format!("within {}s of {server}", off.div_ceil(1000)))
    }
}

async fn kube_date(kube: Option<&kube::Client>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let client = kube?;
    let req = http::Request::get("/version")
        .body(kube::client::Body::from(Vec::new()))
        .ok()?;
    let resp = tokio::time::timeout(PROBE_TIMEOUT, client.send(req))
        .await
        .ok()?
        .ok()?;
    let received = Utc::now();
    let date = resp
        .headers()
        .get("date")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date)?;
    Some((date, received))
}

/// `1d2h`, `5m3s`, `42s`: the two largest units.
pub(crate) fn human(secs: i64) -> String {
    let secs = secs.max(0);
    let parts = [
        (secs / 86_400, "d"),
        (secs % 86_400 / 3600, "h"),
        (secs % 3600 / 60, "m"),
        (secs % 60, "s"),
    ];
    let Some(first) = parts.iter().position(|(n, _)| *n > 0) else {
        return "0s".to_owned();
    };
    let mut out = String::new();
    for (n, unit) in parts.iter().skip(first).take(2) {
        if *n > 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml_spec: &str) -> Policy {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        std::fs::write(
            &f,
            format!(
                "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: orders }}\nspec:\n  every: 24h\n{yaml_spec}"
            ),
        )
        .unwrap();
        policy::load(&f).unwrap().remove(0)
    }

    #[test]
    fn lines_read_ok_fail_and_skip() {
        assert_eq!(line("clock", &Outcome::Ok(None)), "ok   clock");
        assert_eq!(line("clock", &ok("within 1s")), "ok   clock: within 1s");
        assert_eq!(
            line("vault token", &fail("expired", "log in again")),
            "FAIL vault token: expired — fix: log in again"
        );
        assert_eq!(line("aws", &skip("unused")), "skip aws: unused");
    }

    #[test]
    fn a_vault_policy_needs_its_data_and_state_paths_and_its_admin_path() {
        use crate::rotation::store::vault_kv::{ADMIN_CAPS, OWN_CAPS};
        let p = policy(
            "  store: { vault-kv: { mount: kv, path: keyturn/orders } }\n  target:\n    postgres: { host: db, port: 5432, database: app, admin: { vault-kv: { mount: kv, path: keyturn/admin } }, users: [a], strategy: single }\n",
        );
        let needs = vault_needs(&p);
        let paths: Vec<(&str, &[&str])> = needs.iter().map(|n| (n.path.as_str(), n.caps)).collect();
        assert_eq!(
            paths,
            vec![
                ("kv/data/keyturn-state/keyturn/orders", OWN_CAPS),
                ("kv/data/keyturn/admin", ADMIN_CAPS),
                ("kv/data/keyturn/orders", OWN_CAPS),
            ]
        );
    }

    #[test]
    fn missing_capabilities_name_the_path_and_the_fix() {
        let needs = vec![
            Need {
                path: "secret/data/keyturn/x".into(),
                caps: crate::rotation::store::vault_kv::OWN_CAPS,
            },
            Need {
                path: "secret/data/keyturn-state/keyturn/x".into(),
                caps: crate::rotation::store::vault_kv::OWN_CAPS,
            },
        ];
        let caps = |pairs: &[(&str, &[&str])]| -> BTreeMap<String, Vec<String>> {
            pairs
                .iter()
                .map(|(p, c)| ((*p).to_owned(), c.iter().map(|c| (*c).to_owned()).collect()))
                .collect()
        };
        let body = caps(&[
            ("secret/data/keyturn/x", &["create", "read", "update"]),
            ("secret/data/keyturn-state/keyturn/x", &["read"]),
        ]);
        let Outcome::Fail { what, fix } = capabilities_outcome(&needs, &body) else {
            panic!("expected a failure");
        };
        assert_eq!(
            what,
            "secret/data/keyturn-state/keyturn/x needs create, update (token has read)"
        );
        assert!(fix.contains(r#"path "secret/data/keyturn-state/keyturn/x" { capabilities = ["create", "read", "update"] }"#), "{fix}");
        let root = caps(&[
            ("secret/data/keyturn/x", &["root"]),
            ("secret/data/keyturn-state/keyturn/x", &["root"]),
        ]);
        assert!(matches!(
            capabilities_outcome(&needs, &root),
            Outcome::Ok(_)
        ));
        let deny = caps(&[("secret/data/keyturn/x", &["deny"])]);
        let Outcome::Fail { what, .. } = capabilities_outcome(&needs[..1], &deny) else {
            panic!("expected a failure");
        };
        assert!(what.contains("token has nothing"), "{what}");
    }

    #[test]
    fn a_distribution_needs_get_and_patch_on_its_secret_and_workloads() {
        let p = policy(
            "  store: { vault-kv: { path: keyturn/orders } }\n  target: { generated: {} }\n  distribute:\n    - kubernetes: { namespace: shop, secret: orders, keys: { v: value } }\n      restart: [ { kind: Deployment, name: api } ]\n",
        );
        let needs: Vec<String> = kube_needs(&p).iter().map(ToString::to_string).collect();
        assert_eq!(
            needs,
            vec![
                "get secrets shop/orders",
                "get deployments.apps shop/api",
                "patch secrets shop/orders",
                "patch deployments.apps shop/api",
            ]
        );
    }

    #[test]
    fn a_clock_more_than_thirty_seconds_off_fails() {
        let t = DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert!(matches!(
            clock_outcome("Vault", t, t + chrono::Duration::seconds(2)),
            Outcome::Ok(_)
        ));
        let Outcome::Fail { what, .. } =
            clock_outcome("Vault", t, t - chrono::Duration::seconds(95))
        else {
            panic!("expected a failure");
        };
        assert!(what.contains("1m35s behind Vault"), "{what}");
    }

    #[test]
    fn http_dates_parse() {
        let t = parse_http_date("Tue, 15 Nov 1994 08:12:31 GMT").unwrap();
        assert_eq!(t.to_rfc3339(), "1994-11-15T08:12:31+00:00");
    }

    #[test]
    fn the_audit_directory_is_probed_without_leaving_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let args = AuditLogArgs {
            file: Some(dir.path().join("audit.jsonl")),
            ..AuditLogArgs::default()
        };
        assert!(matches!(audit_check(&args), Outcome::Ok(_)));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let missing = AuditLogArgs {
            file: Some(dir.path().join("no/such/dir/audit.jsonl")),
            ..AuditLogArgs::default()
        };
        assert!(matches!(audit_check(&missing), Outcome::Fail { .. }));
        assert!(matches!(
            audit_check(&AuditLogArgs::default()),
            Outcome::Fail { .. }
        ));
    }

    #[test]
    fn durations_read_short() {
        assert_eq!(human(0), "0s");
        assert_eq!(human(42), "42s");
        assert_eq!(human(3600 + 120), "1h2m");
        assert_eq!(human(2 * 86_400 + 5), "2d");
        assert_eq!(human(2 * 86_400 + 7200), "2d2h");
    }
}

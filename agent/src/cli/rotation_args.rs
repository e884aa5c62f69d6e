//! What `run`, `rotate` and `break-glass` share: the policy path, the holder name, the
//! agent's Vault identity and the audit log, all checked before any network call; and
//! `--rotationpolicies`, with which `rotate` and `break-glass` find the named policy among
//! RotationPolicy objects as the daemon would (and `status` lists them).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use keyturn_core::audit::{Actor, AuditLog};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};

use super::audit_log::AuditLogArgs;
use super::exit::{ExitCode, HasExitCode};
use super::vault_args::VaultArgs;
use crate::backends::Backends;
use crate::distribute::KubernetesSink;
use crate::fence::Guard;
use crate::policy::kube_source::{self, ObjectPolicy, Rejection};
use crate::policy::{self, Policy};
use crate::rotation::Engine;

/// Where `--rotationpolicies` reads RotationPolicy objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace.
    All,
    /// One namespace.
    Namespace(String),
}

impl Scope {
    /// The namespace; `None`: every one.
    #[must_use]
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Self::All => None,
            Self::Namespace(ns) => Some(ns),
        }
    }

    /// `every namespace`, `namespace NS`: for a message.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::All => "every namespace".to_owned(),
            Self::Namespace(ns) => format!("namespace {ns}"),
        }
    }
}

/// The flag's value: `all` or the namespace.
impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Namespace(ns) => f.write_str(ns),
        }
    }
}

/// `--rotationpolicies`: `all`, or a namespace's name (a DNS-1123 label).
///
/// # Errors
/// Why `s` is neither.
pub fn rotationpolicies(s: &str) -> Result<Scope, String> {
    if s == "all" {
        return Ok(Scope::All);
    }
    let label = s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if label {
        Ok(Scope::Namespace(s.to_owned()))
    } else {
        Err(
            "must be `all` or a namespace name (lower-case letters, digits and '-', at most 63)"
                .into(),
        )
    }
}

/// How `rotate`, `break-glass` and `status` find policies among RotationPolicy objects.
#[derive(Debug, Clone, Args)]
pub struct PolicyObjectArgs {
    /// Also look the policy up among RotationPolicy objects (`rotationpolicies.keyturn.dev`),
    /// in every namespace (`all`) or in this one, as `keyturn run --rotationpolicies` resolves
    /// them: policy files win a name or store clash, then the oldest object. `--policies`
    /// becomes optional.
    #[arg(long, env = "KEYTURN_ROTATIONPOLICIES", value_name = "all|NAMESPACE", value_parser = rotationpolicies)]
    pub rotationpolicies: Option<Scope>,
    /// The API group RotationPolicy objects are read from. Leave it: another group is for
    /// tests that define the resource under a name of their own on a shared cluster.
    #[arg(long, env = "KEYTURN_ROTATIONPOLICIES_GROUP", default_value = crate::policy::crd::GROUP)]
    pub rotationpolicies_group: String,
}

impl PolicyObjectArgs {
    /// `RotationPolicy objects (rotationpolicies.keyturn.dev) in namespace NS`, and the flag
    /// as given: for messages.
    fn describe(&self, scope: &Scope) -> (String, String) {
        let resource = kube_source::api_resource_in(&self.rotationpolicies_group);
        (
            format!(
                "RotationPolicy objects ({}.{}) in {}",
                resource.plural,
                resource.group,
                scope.describe()
            ),
            format!("--rotationpolicies {scope}"),
        )
    }

    /// Every RotationPolicy object in `scope`, validated: one paged LIST. On failure, after
    /// printing `keyturn: cannot PURPOSE among OBJECTS (FLAG): WHY`: [`ExitCode::Usage`] when
    /// no Kubernetes API is configured or it has no RotationPolicy resource,
    /// [`ExitCode::NoPermission`] when it refuses the list, [`ExitCode::Unavailable`] when it
    /// does not answer (after [`LIST_ATTEMPTS`] tries).
    pub async fn list(
        &self,
        scope: &Scope,
        purpose: &str,
    ) -> Result<Vec<Arc<ObjectPolicy>>, ExitCode> {
        let (kind, flag) = self.describe(scope);
        let client = crate::distribute::kubernetes::client_from_env()
            .await
            .map_err(|e| {
                eprintln!(
                    "keyturn: cannot {purpose} among {kind} ({flag}): no Kubernetes API is configured (set KUBECONFIG or run in a cluster): {e}"
                );
                ExitCode::Usage
            })?;
        let resource = kube_source::api_resource_in(&self.rotationpolicies_group);
        list_objects(client, &resource, scope).await.map_err(|f| {
            eprintln!(
                "keyturn: cannot {purpose} among {kind} ({flag}): list: {}",
                f.what
            );
            f.code
        })
    }
}

/// How long one page of the RotationPolicy list may take (kube's client sets no read
/// timeout, and a hung API server must not hang an on-call engineer's command).
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// Tries of the list when the API server is unavailable (no answer, 429, 5xx), 1 s then 2 s
/// apart, or its continue token expired (410; listed again from the start): kube's client
/// does not retry (see `client_from_env`).
const LIST_ATTEMPTS: u32 = 3;

/// Objects per page of the list.
const LIST_PAGE: u32 = 500;

/// A failed list of RotationPolicy objects: the exit code and what to say (never a response
/// body, which may quote the objects).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListFailure {
    code: ExitCode,
    what: String,
}

impl ListFailure {
    /// Classifies kube's error: 401 and 403 are 77 (credentials it refuses, or RBAC); 404 is
    /// a configuration to fix (no RotationPolicy resource in that group); no answer, 429 and
    /// 5xx (and 410, an expired continue token, after listing again) are an unavailable API
    /// server; anything else (an answer kube could not decode, a refused request) is
    /// keyturn's to fix.
    fn of(e: &kube::Error, resource: &str) -> Self {
        match e {
            kube::Error::Api(s) => {
                let (code, hint) = match s.code {
                    401 => (
                        ExitCode::NoPermission,
                        " (the API server does not accept these credentials)".to_owned(),
                    ),
                    403 => (
                        ExitCode::NoPermission,
                        format!(" (this needs `list` on {resource})"),
                    ),
                    404 => (
                        ExitCode::Usage,
                        " (is the RotationPolicy CRD installed? `keyturn crd` prints it)"
                            .to_owned(),
                    ),
                    410 | 429 | 500.. => (ExitCode::Unavailable, String::new()),
                    _ => (ExitCode::Software, String::new()),
                };
                Self {
                    code,
                    what: format!("{} {}: {}{hint}", s.code, s.reason, s.message),
                }
            }
            kube::Error::SerdeError(se) => Self {
                code: ExitCode::Software,
                // The category only: serde's message can quote the JSON it choked on.
                what: format!(
                    "the answer could not be decoded ({:?} error)",
                    se.classify()
                ),
            },
            kube::Error::Auth(_) => Self {
                code: ExitCode::Usage,
                what: format!("the Kubernetes credentials cannot be used: {}", chain(e)),
            },
            kube::Error::BuildRequest(_) | kube::Error::HttpError(_) => Self {
                code: ExitCode::Software,
                what: chain(e),
            },
            _ => Self {
                code: ExitCode::Unavailable,
                what: chain(e),
            },
        }
    }
}

/// `e` and its causes, each once (kube's own message repeats its source's).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Every RotationPolicy object of `resource` in `scope`, each validated ([`ObjectPolicy`]:
/// its policy or its problems, never its JSON): one LIST, paged.
async fn list_objects(
    client: kube::Client,
    resource: &ApiResource,
    scope: &Scope,
) -> Result<Vec<Arc<ObjectPolicy>>, ListFailure> {
    let api: Api<DynamicObject> = match scope.namespace() {
        Some(ns) => Api::namespaced_with(client, ns, resource),
        None => Api::all_with(client, resource),
    };
    let name = format!("{}.{}", resource.plural, resource.group);
    let mut objects = Vec::new();
    let mut token: Option<String> = None;
    let mut attempt = 1;
    loop {
        let mut params = ListParams::default().limit(LIST_PAGE);
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        let (failure, expired) = match tokio::time::timeout(LIST_TIMEOUT, api.list(&params)).await {
            Ok(Ok(page)) => {
                objects.extend(
                    page.items
                        .iter()
                        .map(|o| Arc::new(ObjectPolicy::from_object(o))),
                );
                match page.metadata.continue_ {
                    Some(t) if !t.is_empty() => {
                        token = Some(t);
                        continue;
                    }
                    _ => return Ok(objects),
                }
            }
            Ok(Err(e)) => {
                let expired = matches!(&e, kube::Error::Api(s) if s.code == 410);
                (ListFailure::of(&e, &name), expired)
            }
            Err(_) => (
                ListFailure {
                    code: ExitCode::Unavailable,
                    what: format!(
                        "no answer within {}",
                        humantime::format_duration(LIST_TIMEOUT)
                    ),
                },
                false,
            ),
        };
        if failure.code != ExitCode::Unavailable || attempt == LIST_ATTEMPTS {
            return Err(failure);
        }
        tracing::debug!(error = %failure.what, attempt, "listing RotationPolicy objects failed; trying again");
        if expired {
            // The continue token outlived what the API server keeps: list from the start.
            objects.clear();
            token = None;
        } else {
            tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
        }
        attempt += 1;
    }
}

/// The named policy among `files` and `objects`, merged as the daemon merges them.
#[derive(Debug)]
enum Lookup {
    /// A policy file's, or the object's that won its name and store.
    Found(Box<Policy>),
    /// Objects of that name that yield no policy (invalid, or their store is another's).
    Rejected(Vec<Rejection>),
    /// Neither.
    Missing,
}

fn resolve(name: &str, files: &[Policy], objects: &[Arc<ObjectPolicy>]) -> Lookup {
    let mut merged = kube_source::merge(files, objects);
    if let Some(p) = merged.policy(name) {
        return Lookup::Found(Box::new(Policy::clone(p)));
    }
    merged.rejected.retain(|r| r.object.name == name);
    if merged.rejected.is_empty() {
        Lookup::Missing
    } else {
        Lookup::Rejected(merged.rejected)
    }
}

/// Options for the commands that rotate.
#[derive(Debug, Clone, Args)]
pub struct RotationArgs {
    /// A policy file or a directory of them. Required, except with `--rotationpolicies`
    /// (`run`, `rotate`, `break-glass`), which takes policies from RotationPolicy objects.
    #[arg(long, env = "KEYTURN_POLICIES", value_name = "PATH")]
    pub policies: Option<PathBuf>,
    /// This instance's name in rotation state and audit records. Keep it stable across
    /// restarts (the pod name of a StatefulSet, the host name) so an instance resumes its own
    /// interrupted rotations at once.
    #[arg(long, env = "KEYTURN_HOLDER")]
    pub holder: Option<String>,
    /// The agent's Vault identity.
    #[command(flatten)]
    pub vault: VaultArgs,
    /// The audit log.
    #[command(flatten)]
    pub audit: AuditLogArgs,
    /// How long restart requests for one workload are collected before it rolls, so several
    /// policies feeding one Deployment restart it once.
    #[arg(long, env = "KEYTURN_RESTART_WINDOW", default_value = "2s", value_parser = humantime::parse_duration)]
    pub restart_window: std::time::Duration,
    /// How long a claim on an in-flight rotation stands without renewal; after it, another
    /// process (a replica, break-glass) may take the rotation over.
    #[arg(long, env = "KEYTURN_LEASE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub lease: std::time::Duration,
}

/// Which clients a policy set needs beyond Vault's.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientNeeds {
    /// A policy distributes to Kubernetes Secrets.
    pub kubernetes: bool,
    /// A policy's store, or its target's admin store, is in AWS Secrets Manager.
    pub aws: bool,
}

impl ClientNeeds {
    /// Adds what `p` needs.
    pub fn note(&mut self, p: &Policy) {
        self.kubernetes |= !p.distribute.is_empty();
        self.aws |= Backends::needs_aws(std::slice::from_ref(p));
    }
}

/// Everything ready for rotating.
#[derive(Debug)]
pub struct Prepared {
    /// The validated policies.
    pub policies: Vec<Policy>,
    /// The engine.
    pub engine: Engine,
    /// The clients.
    pub backends: Backends,
    /// The audit log.
    pub audit: Arc<AuditLog>,
}

impl RotationArgs {
    pub(crate) fn holder(&self) -> String {
        self.holder.clone().unwrap_or_else(|| {
            Some(super::host_name())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "keyturn".to_owned())
        })
    }

    /// Validates the policies and configuration (no network), opens the audit log, then logs
    /// in to Vault.
    ///
    /// # Errors
    /// The exit code, after printing one line per problem.
    pub async fn prepare(&self) -> Result<Prepared, ExitCode> {
        let policies = self.load_policies()?;
        self.prepare_with(policies).await
    }

    /// Loads and validates the policy set, and checks that it has one named `name` (no
    /// network): what `rotate` and `break-glass` check before anything else.
    ///
    /// # Errors
    /// [`ExitCode::Usage`], after printing the problem.
    pub fn load_named(&self, name: &str) -> Result<Vec<Policy>, ExitCode> {
        let policies = self.load_policies()?;
        if policies.iter().any(|p| p.name == name) {
            Ok(policies)
        } else {
            eprintln!(
                "keyturn: no policy named {name:?} in {}",
                self.policies_path()?.display()
            );
            Err(ExitCode::Usage)
        }
    }

    /// `--policies`, which every command needs but those given `--rotationpolicies`.
    ///
    /// # Errors
    /// [`ExitCode::Usage`], after saying so, when it is not given.
    pub(crate) fn policies_path(&self) -> Result<&std::path::Path, ExitCode> {
        self.policies.as_deref().ok_or_else(|| {
            eprintln!("keyturn: --policies (or KEYTURN_POLICIES) is required: the policy file or directory");
            ExitCode::Usage
        })
    }

    /// [`RotationArgs::load_named`], or with `objects.rotationpolicies` the policy set the
    /// daemon would have for `name`: the policy files (if `--policies` is given; then
    /// optional, and may be an empty directory) and the RotationPolicy objects in scope (one
    /// paged LIST), merged as the daemon merges them (files win a name or store clash, then
    /// the oldest object). A policy file of that name needs no list at all: it wins whatever
    /// the objects say. What is returned holds the policy named `name`.
    ///
    /// # Errors
    /// After printing one line naming the policy, the scope and the flag:
    /// [`ExitCode::Usage`] when no file or object has the name, when the object of that
    /// name is rejected (its reason and message, which never hold a value written in it),
    /// when no Kubernetes API is configured or it has no RotationPolicy resource;
    /// [`ExitCode::NoPermission`] when the API server refuses the list;
    /// [`ExitCode::Unavailable`] when it does not answer.
    pub async fn find_named(
        &self,
        name: &str,
        objects: &PolicyObjectArgs,
    ) -> Result<Vec<Policy>, ExitCode> {
        let Some(scope) = &objects.rotationpolicies else {
            return self.load_named(name);
        };
        let files = match &self.policies {
            Some(path) => policy::load_or_empty(path).map_err(|e| {
                eprintln!("{e}");
                ExitCode::Usage
            })?,
            None => Vec::new(),
        };
        if files.iter().any(|p| p.name == name) {
            return Ok(files);
        }
        let (kind, flag) = objects.describe(scope);
        let listed = objects
            .list(scope, &format!("look up policy {name:?}"))
            .await?;
        match resolve(name, &files, &listed) {
            Lookup::Found(p) => Ok(vec![*p]),
            Lookup::Rejected(rejected) => {
                for r in rejected {
                    eprintln!(
                        "keyturn: policy {name:?} is not usable: {} is rejected ({flag}): {}",
                        r.object.origin(),
                        r.in_full()
                    );
                }
                Err(ExitCode::Usage)
            }
            Lookup::Missing => {
                match &self.policies {
                    Some(files) => eprintln!(
                        "keyturn: no policy named {name:?} in {} or {kind} ({flag})",
                        files.display()
                    ),
                    None => eprintln!(
                        "keyturn: no policy named {name:?} among {kind} ({flag}; no --policies given)"
                    ),
                }
                Err(ExitCode::Usage)
            }
        }
    }

    pub(crate) fn load_policies(&self) -> Result<Vec<Policy>, ExitCode> {
        policy::load(self.policies_path()?).map_err(|e| {
            eprintln!("{e}");
            ExitCode::Usage
        })
    }

    /// [`RotationArgs::prepare`] with policies already found by [`RotationArgs::find_named`].
    ///
    /// # Errors
    /// The exit code, after printing one line per problem.
    pub async fn prepare_with(&self, policies: Vec<Policy>) -> Result<Prepared, ExitCode> {
        let mut needs = ClientNeeds::default();
        policies.iter().for_each(|p| needs.note(p));
        let mut prepared = self.prepare_daemon(needs, None, false).await?;
        prepared.policies = policies;
        Ok(prepared)
    }

    /// [`RotationArgs::prepare_with`] for the daemon: every side effect asks `guard` first
    /// (the engine's and the Kubernetes writes'), and a claim on a rotation lasts
    /// `claim_lease` instead of `--lease`. With `more_to_come` (policies also arrive later,
    /// from RotationPolicy objects) the Kubernetes and AWS clients are made whatever the first
    /// policies need, since a later one may need them.
    ///
    /// # Errors
    /// As [`RotationArgs::prepare`].
    pub async fn prepare_daemon(
        &self,
        needs: ClientNeeds,
        guard: Option<(Arc<dyn Guard>, std::time::Duration)>,
        more_to_come: bool,
    ) -> Result<Prepared, ExitCode> {
        let (cfg, method) = self.vault.prepare().map_err(|e| {
            eprintln!("keyturn: {e}");
            ExitCode::Usage
        })?;
        // The Kubernetes client is built only when a policy distributes, from KUBECONFIG or the
        // in-cluster service account; building it makes no request.
        let kube_sink = if more_to_come || needs.kubernetes {
            let client = crate::distribute::kubernetes::client_from_env().await.map_err(|e| {
                eprintln!(
                    "keyturn: policies distribute to Kubernetes, but no Kubernetes API is configured (set KUBECONFIG or run in a cluster): {e}"
                );
                ExitCode::Usage
            })?;
            Some(KubernetesSink::guarded(
                client,
                self.restart_window,
                guard.as_ref().map(|(g, _)| g.clone()),
            ))
        } else {
            None
        };
        let audit = self.audit.open().map_err(|e| {
            eprintln!("keyturn: {e}");
            e.exit_code()
        })?;
        let audit = Arc::new(audit);
        let vault = VaultArgs::login(&cfg, method.as_ref()).await.map_err(|e| {
            eprintln!("keyturn: {e}");
            e.exit_code()
        })?;
        let aws = if more_to_come || needs.aws {
            Some(crate::rotation::store::aws_sm::client_from_env(None).await)
        } else {
            None
        };
        let holder = self.holder();
        let mut engine =
            Engine::new(audit.clone(), Actor::agent(holder.clone()), holder).with_lease(self.lease);
        if let Some(sink) = kube_sink {
            engine = engine.with_sink(Arc::new(sink));
        }
        if let Some((guard, claim_lease)) = guard {
            engine = engine.with_guard(guard).with_lease(claim_lease);
        }
        Ok(Prepared {
            policies: Vec::new(),
            engine,
            backends: Backends {
                vault: Some(vault),
                aws,
                ..Backends::default()
            },
            audit,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// A value planted in an object's spec: no message may hold it.
    const CANARY: &str = "Canary/Zq7Wx9Vv";

    fn spec(path: &str) -> Value {
        json!({
            "every": "1d",
            "store": {"vault-kv": {"path": path}},
            "target": {"generated": {}},
        })
    }

    fn object(namespace: &str, name: &str, created: &str, spec: Value) -> Arc<ObjectPolicy> {
        let o: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "keyturn.dev/v1",
            "kind": "RotationPolicy",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": format!("uid-{namespace}-{name}"),
                "generation": 1,
                "creationTimestamp": created,
            },
            "spec": spec,
        }))
        .unwrap();
        Arc::new(ObjectPolicy::from_object(&o))
    }

    fn file_policy(name: &str, path: &str) -> Vec<Policy> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        std::fs::write(
            &f,
            format!(
                "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: {name} }}\nspec:\n  every: 1d\n  store: {{ vault-kv: {{ path: {path} }} }}\n  target: {{ generated: {{}} }}\n"
            ),
        )
        .unwrap();
        crate::policy::load(&f).unwrap()
    }

    const T0: &str = "2025-01-01T00:00:00Z";
    const T1: &str = "2025-01-01T00:00:01Z";

    #[test]
    fn the_scope_is_all_or_a_namespace_label() {
        assert_eq!(rotationpolicies("all"), Ok(Scope::All));
        assert_eq!(
            rotationpolicies("shop-1"),
            Ok(Scope::Namespace("shop-1".into()))
        );
        for bad in ["", "Shop", "-shop", "shop-", "a.b", &"a".repeat(64)] {
            assert!(rotationpolicies(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Scope::All.to_string(), "all");
        assert_eq!(Scope::Namespace("shop".into()).to_string(), "shop");
        assert_eq!(Scope::Namespace("shop".into()).describe(), "namespace shop");
    }

    #[test]
    fn rotate_and_break_glass_take_the_flag_and_its_variable_as_run_does() {
        use clap::Parser as _;
        let cli = super::super::Cli::try_parse_from([
            "keyturn",
            "rotate",
            "db",
            "--rotationpolicies",
            "shop",
            "--rotationpolicies-group",
            "x.test",
        ])
        .unwrap();
        let super::super::Command::Rotate(r) = cli.command else {
            panic!("rotate")
        };
        assert_eq!(
            r.objects.rotationpolicies,
            Some(Scope::Namespace("shop".into()))
        );
        assert_eq!(r.objects.rotationpolicies_group, "x.test");
        for sub in ["rotate", "revoke", "reveal"] {
            let cli = super::super::Cli::try_parse_from([
                "keyturn",
                "break-glass",
                sub,
                "db",
                "--reason",
                "r",
                "--rotationpolicies",
                "all",
            ])
            .unwrap();
            let super::super::Command::BreakGlass(_) = cli.command else {
                panic!("break-glass")
            };
        }
        let refused = super::super::Cli::try_parse_from([
            "keyturn",
            "rotate",
            "db",
            "--rotationpolicies",
            "Not_A_Namespace",
        ]);
        assert!(refused.is_err());
        let plain = super::super::Cli::try_parse_from(["keyturn", "rotate", "db"]).unwrap();
        let super::super::Command::Rotate(r) = plain.command else {
            panic!("rotate")
        };
        assert_eq!(r.objects.rotationpolicies, None, "files only, as before");
        assert_eq!(r.objects.rotationpolicies_group, crate::policy::crd::GROUP);
    }

    #[test]
    fn an_object_policy_is_found_and_a_file_of_its_name_wins() {
        let objects = [object("shop", "db", T0, spec("keyturn/object-db"))];
        let Lookup::Found(p) = resolve("db", &[], &objects) else {
            panic!("found")
        };
        assert_eq!(p.file.to_str(), Some("rotationpolicy/shop/db"));
        assert!(p.object.is_some());
        let files = file_policy("db", "keyturn/file-db");
        let Lookup::Found(p) = resolve("db", &files, &objects) else {
            panic!("found")
        };
        assert!(p.object.is_none(), "the file's policy");
        assert_eq!(p.store.to_string(), "vault-kv:secret/keyturn/file-db");
    }

    #[test]
    fn the_oldest_object_keeps_a_name_and_a_store() {
        let objects = [
            object("b", "db", T0, spec("keyturn/b")),
            object("a", "db", T1, spec("keyturn/a")),
        ];
        let Lookup::Found(p) = resolve("db", &[], &objects) else {
            panic!("found")
        };
        assert_eq!(p.object.unwrap().namespace, "b");
        // A store a file already has: rejected, with who has it.
        let files = file_policy("other", "keyturn/taken");
        let objects = [object("shop", "db", T0, spec("keyturn/taken"))];
        let Lookup::Rejected(r) = resolve("db", &files, &objects) else {
            panic!("rejected")
        };
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].reason, kube_source::RejectReason::StoreConflict);
        assert!(r[0].message.contains("other"), "{}", r[0].message);
    }

    #[test]
    fn an_invalid_object_is_rejected_by_field_and_never_by_value() {
        let mut bad = spec("keyturn/bad");
        bad["timezone"] = json!(CANARY);
        let objects = [object("shop", "bad", T0, bad)];
        let Lookup::Rejected(r) = resolve("bad", &[], &objects) else {
            panic!("rejected")
        };
        assert_eq!(r[0].reason, kube_source::RejectReason::InvalidSpec);
        assert!(r[0].message.contains("spec.timezone"), "{}", r[0].message);
        assert!(!r[0].message.contains(CANARY), "{}", r[0].message);
        assert!(!r[0].message.contains("Zq7Wx9Vv"), "{}", r[0].message);
        assert!(matches!(resolve("ghost", &[], &objects), Lookup::Missing));
    }

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("the server's words", reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn list_failures_exit_by_their_kind() {
        let r = "rotationpolicies.keyturn.dev";
        for (code, want) in [
            (401, ExitCode::NoPermission),
            (403, ExitCode::NoPermission),
            (404, ExitCode::Usage),
            (410, ExitCode::Unavailable),
            (429, ExitCode::Unavailable),
            (500, ExitCode::Unavailable),
            (503, ExitCode::Unavailable),
            (400, ExitCode::Software),
        ] {
            let f = ListFailure::of(&api_error(code, "Reason"), r);
            assert_eq!(f.code, want, "{code}");
            assert!(
                f.what
                    .starts_with(&format!("{code} Reason: the server's words")),
                "{}",
                f.what
            );
        }
        assert!(
            ListFailure::of(&api_error(403, "Forbidden"), r)
                .what
                .contains(r)
        );
        // An answer kube could not decode: its category, never the JSON it quotes.
        let se = serde_json::from_str::<u32>(&format!("\"{CANARY}\"")).unwrap_err();
        let f = ListFailure::of(&kube::Error::SerdeError(se), r);
        assert_eq!(f.code, ExitCode::Software);
        assert!(!f.what.contains("Zq7Wx9Vv"), "{}", f.what);
    }
}

//! What `run` and `rotate` share: the policy path, the holder name, the agent's Vault
//! identity and the audit log, all checked before any network call.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use keyturn_core::audit::{Actor, AuditLog};

use super::audit_log::AuditLogArgs;
use super::exit::{ExitCode, HasExitCode};
use super::vault_args::VaultArgs;
use crate::backends::Backends;
use crate::distribute::KubernetesSink;
use crate::fence::Guard;
use crate::policy::{self, Policy};
use crate::rotation::Engine;

/// Options for the commands that rotate.
#[derive(Debug, Clone, Args)]
pub struct RotationArgs {
    /// A policy file or a directory of them. Required, except for `keyturn run
    /// --rotationpolicies`, which can take every policy from RotationPolicy objects.
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

    /// `--policies`, which every command but `run --rotationpolicies` needs.
    ///
    /// # Errors
    /// [`ExitCode::Usage`], after saying so, when it is not given.
    pub(crate) fn policies_path(&self) -> Result<&std::path::Path, ExitCode> {
        self.policies.as_deref().ok_or_else(|| {
            eprintln!("keyturn: --policies (or KEYTURN_POLICIES) is required: the policy file or directory");
            ExitCode::Usage
        })
    }

    pub(crate) fn load_policies(&self) -> Result<Vec<Policy>, ExitCode> {
        policy::load(self.policies_path()?).map_err(|e| {
            eprintln!("{e}");
            ExitCode::Usage
        })
    }

    /// [`RotationArgs::prepare`] with policies already loaded by [`RotationArgs::load_named`].
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

//! `keyturn webhook`: the mutating admission webhook that injects keyturn-init into pods
//! annotated for the Vault Agent Injector (see [`crate::webhook`]).
//!
//! Every setting is checked before anything listens or calls the API server: a bad one exits
//! 64 naming the flag (and its variable), never the value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::exit::ExitCode;
use crate::webhook::inject::{InitResources, InjectConfig, Injector};
use crate::webhook::{CaBundleSettings, TlsSource, WebhookSettings};

/// `keyturn webhook`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct WebhookArgs {
    /// Serve AdmissionReviews (POST /mutate) over HTTPS here.
    #[arg(
        long,
        env = "KEYTURN_WEBHOOK_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:8443"
    )]
    pub listen: SocketAddr,
    /// Serve /metrics, /healthz and /readyz (plain HTTP) here.
    #[arg(
        long,
        env = "KEYTURN_WEBHOOK_METRICS_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:9090"
    )]
    pub metrics_listen: SocketAddr,
    /// The keyturn-init image injected into pods.
    #[arg(long, env = "KEYTURN_WEBHOOK_INIT_IMAGE", value_name = "IMAGE")]
    pub init_image: String,
    /// The injected container's imagePullPolicy.
    #[arg(long, env = "KEYTURN_WEBHOOK_INIT_IMAGE_PULL_POLICY", value_name = "POLICY", default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"])]
    pub init_image_pull_policy: String,
    /// VAULT_ADDR of the injected container (a pod's `service` annotation overrides it).
    #[arg(long, env = "KEYTURN_WEBHOOK_VAULT_ADDR", value_name = "URL")]
    pub vault_addr: Option<String>,
    /// VAULT_CACERT of the injected container: a path inside the pod, e.g. in
    /// --vault-tls-secret's volume at /vault/tls (a pod's `ca-cert` annotation overrides it).
    #[arg(long, env = "KEYTURN_WEBHOOK_VAULT_CACERT", value_name = "PATH")]
    pub vault_cacert: Option<String>,
    /// A Secret in the pod's namespace mounted at /vault/tls in the injected container (a
    /// pod's `tls-secret` annotation overrides it).
    #[arg(long, env = "KEYTURN_WEBHOOK_VAULT_TLS_SECRET", value_name = "NAME")]
    pub vault_tls_secret: Option<String>,
    /// The audience of the projected service-account token keyturn-init logs in with
    /// (default: the API server's own; match the Vault role's `audience`).
    #[arg(long, env = "KEYTURN_WEBHOOK_TOKEN_AUDIENCE", value_name = "AUDIENCE")]
    pub token_audience: Option<String>,
    /// The projected token's lifetime (at least 10m, as the API server requires).
    #[arg(long, env = "KEYTURN_WEBHOOK_TOKEN_EXPIRATION", value_name = "DURATION", default_value = "1h", value_parser = token_expiration)]
    pub token_expiration: Duration,
    /// The injected container's CPU request (the pod's `agent-requests-cpu` overrides it).
    #[arg(long, env = "KEYTURN_WEBHOOK_INIT_CPU_REQUEST", value_name = "QUANTITY", default_value = "10m", value_parser = quantity)]
    pub init_cpu_request: String,
    /// Its memory request (`agent-requests-mem`).
    #[arg(long, env = "KEYTURN_WEBHOOK_INIT_MEMORY_REQUEST", value_name = "QUANTITY", default_value = "16Mi", value_parser = quantity)]
    pub init_memory_request: String,
    /// Its CPU limit (`agent-limits-cpu`).
    #[arg(long, env = "KEYTURN_WEBHOOK_INIT_CPU_LIMIT", value_name = "QUANTITY", default_value = "500m", value_parser = quantity)]
    pub init_cpu_limit: String,
    /// Its memory limit (`agent-limits-mem`).
    #[arg(long, env = "KEYTURN_WEBHOOK_INIT_MEMORY_LIMIT", value_name = "QUANTITY", default_value = "64Mi", value_parser = quantity)]
    pub init_memory_limit: String,
    /// The webhook's own namespace: its pods are never injected, its Leases live there.
    #[arg(long, env = "KEYTURN_WEBHOOK_NAMESPACE", value_name = "NAMESPACE")]
    pub namespace: String,
    /// The webhook's Service: the serving certificate names NAME, NAME.NAMESPACE,
    /// NAME.NAMESPACE.svc and NAME.NAMESPACE.svc.cluster.local (in-memory CA only).
    #[arg(
        long,
        env = "KEYTURN_WEBHOOK_SERVICE",
        value_name = "NAME",
        required_unless_present = "tls_cert"
    )]
    pub service: Option<String>,
    /// The MutatingWebhookConfiguration whose caBundle the webhook keeps current (in-memory
    /// CA only).
    #[arg(
        long,
        env = "KEYTURN_WEBHOOK_CONFIGURATION",
        value_name = "NAME",
        required_unless_present = "tls_cert",
        conflicts_with = "tls_cert"
    )]
    pub configuration: Option<String>,
    /// The Secret whose key (--audit-hmac-secret-key) keys the injected keyturn-init's audit
    /// events. It must exist in every namespace whose pods are injected, and must not be the
    /// daemon's key: whoever reads Secrets or runs pods there can read it.
    #[arg(
        long,
        env = "KEYTURN_WEBHOOK_AUDIT_HMAC_SECRET",
        value_name = "NAME",
        default_value = "keyturn-init-audit-hmac"
    )]
    pub audit_hmac_secret: String,
    /// The key in that Secret.
    #[arg(
        long,
        env = "KEYTURN_WEBHOOK_AUDIT_HMAC_SECRET_KEY",
        value_name = "KEY",
        default_value = "hmac.key"
    )]
    pub audit_hmac_secret_key: String,
    /// This replica's name in its Lease (the chart passes the pod name).
    #[arg(long, env = "KEYTURN_HOLDER", value_name = "NAME")]
    pub holder: Option<String>,
    /// How long a replica's Lease lasts without renewal.
    #[arg(long, env = "KEYTURN_WEBHOOK_LEASE_DURATION", value_name = "DURATION", default_value = "15s", value_parser = lease_duration)]
    pub lease_duration: Duration,
    /// After SIGTERM, how long to keep serving while unready, so the API server stops routing
    /// here before the listener closes (a refused call fails pod creation under Fail).
    #[arg(long, env = "KEYTURN_WEBHOOK_SHUTDOWN_DELAY", value_name = "DURATION", default_value = "5s", value_parser = shutdown_delay)]
    pub shutdown_delay: Duration,
    /// The serving certificate's lifetime; it is renewed at half of it.
    #[arg(long, env = "KEYTURN_WEBHOOK_CERT_VALIDITY", value_name = "DURATION", default_value = "24h", value_parser = cert_validity)]
    pub cert_validity: Duration,
    /// A serving certificate from a file (PEM, e.g. cert-manager's `tls.crt`), re-read when
    /// it changes, instead of the in-memory CA.
    #[arg(
        long,
        env = "KEYTURN_WEBHOOK_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(
        long,
        env = "KEYTURN_WEBHOOK_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

const EXAMPLES: &str = "\
Examples:
  # In a cluster, as the chart runs it: an in-memory CA, the caBundle kept by the replicas.
  keyturn webhook --init-image registry.example/keyturn-init:0.1.0 \\
    --namespace keyturn --service keyturn-webhook --configuration keyturn-webhook \\
    --vault-addr https://vault.vault.svc:8200

  # With a certificate from cert-manager, mounted from its Secret.
  keyturn webhook --init-image registry.example/keyturn-init:0.1.0 --namespace keyturn \\
    --tls-cert /etc/keyturn/tls/tls.crt --tls-key /etc/keyturn/tls/tls.key";

fn duration_between(
    s: &str,
    min: Duration,
    max: Duration,
    shown: &str,
) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if !(min..=max).contains(&d) {
        return Err(format!("must be between {shown}"));
    }
    Ok(d)
}

/// `--token-expiration`: the API server refuses a projected token shorter than 10 minutes,
/// and keyturn-init reads it once at start, so a day is plenty.
fn token_expiration(s: &str) -> Result<Duration, String> {
    duration_between(
        s,
        Duration::from_secs(600),
        Duration::from_secs(86_400),
        "10m and 24h",
    )
}

/// `--shutdown-delay`: up to 1m (the pod's grace period must cover it and the 20 s drain).
fn shutdown_delay(s: &str) -> Result<Duration, String> {
    duration_between(s, Duration::ZERO, Duration::from_secs(60), "0s and 1m")
}

/// `--lease-duration`: long enough to renew at a third of it over a slow API server.
fn lease_duration(s: &str) -> Result<Duration, String> {
    duration_between(
        s,
        Duration::from_secs(5),
        Duration::from_secs(300),
        "5s and 5m",
    )
}

/// `--cert-validity`: renewed at half; shorter than 10 minutes would renew constantly, and
/// longer than 30 days defeats a short-lived certificate.
fn cert_validity(s: &str) -> Result<Duration, String> {
    duration_between(
        s,
        Duration::from_secs(600),
        Duration::from_secs(30 * 86_400),
        "10m and 30d",
    )
}

fn quantity(s: &str) -> Result<String, String> {
    if crate::webhook::inject::is_quantity(s) {
        Ok(s.to_owned())
    } else {
        Err("is not a Kubernetes quantity (such as 250m or 64Mi)".into())
    }
}

impl WebhookArgs {
    /// The settings, or the message for a bad combination clap cannot express.
    fn settings(&self) -> Result<WebhookSettings, String> {
        if let Some(addr) = &self.vault_addr {
            keyturn_core::vault::config::check_addr(
                "--vault-addr (KEYTURN_WEBHOOK_VAULT_ADDR)",
                addr,
            )
            .map_err(|e| e.to_string())?;
        }
        if let Some(ca) = &self.vault_cacert
            && !ca.starts_with('/')
        {
            return Err("--vault-cacert (KEYTURN_WEBHOOK_VAULT_CACERT) must be an absolute path inside the pod".into());
        }
        for (flag, value) in [
            (
                "--namespace (KEYTURN_WEBHOOK_NAMESPACE)",
                Some(&self.namespace),
            ),
            (
                "--init-image (KEYTURN_WEBHOOK_INIT_IMAGE)",
                Some(&self.init_image),
            ),
            ("--service (KEYTURN_WEBHOOK_SERVICE)", self.service.as_ref()),
            (
                "--configuration (KEYTURN_WEBHOOK_CONFIGURATION)",
                self.configuration.as_ref(),
            ),
            (
                "--audit-hmac-secret (KEYTURN_WEBHOOK_AUDIT_HMAC_SECRET)",
                Some(&self.audit_hmac_secret),
            ),
        ] {
            if value.is_some_and(|v| v.trim().is_empty()) {
                return Err(format!("{flag} is empty"));
            }
        }
        let holder = match &self.holder {
            Some(h) if !h.is_empty() => h.clone(),
            _ => Some(super::host_name())
                .filter(|h| !h.is_empty())
                .ok_or("--holder (KEYTURN_HOLDER) is not set and the host has no name")?,
        };
        // It names this replica's Lease (keyturn-webhook-HOLDER): a DNS subdomain.
        let lease_name_ok = holder.len() <= 200
            && holder
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && holder.starts_with(|c: char| c.is_ascii_alphanumeric())
            && holder.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !lease_name_ok {
            return Err("--holder (KEYTURN_HOLDER) must be lowercase letters, digits, '-' and '.' (it names a Lease), as a pod name is".into());
        }
        let injector = Injector {
            config: InjectConfig {
                init_image: self.init_image.clone(),
                image_pull_policy: self.init_image_pull_policy.clone(),
                vault_addr: self.vault_addr.clone(),
                vault_cacert: self.vault_cacert.clone(),
                vault_tls_secret: self.vault_tls_secret.clone(),
                token_audience: self.token_audience.clone(),
                token_expiration_seconds: i64::try_from(self.token_expiration.as_secs())
                    .unwrap_or(3600),
                resources: InitResources {
                    cpu_request: self.init_cpu_request.clone(),
                    memory_request: self.init_memory_request.clone(),
                    cpu_limit: self.init_cpu_limit.clone(),
                    memory_limit: self.init_memory_limit.clone(),
                },
                own_namespace: self.namespace.clone(),
                audit_hmac_secret: self.audit_hmac_secret.clone(),
                audit_hmac_secret_key: self.audit_hmac_secret_key.clone(),
            },
        };
        let (tls, ca_bundle) = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => (
                TlsSource::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                None,
            ),
            _ => {
                let service = self.service.clone().unwrap_or_default();
                let configuration = self.configuration.clone().unwrap_or_default();
                (
                    TlsSource::InMemory {
                        service,
                        namespace: self.namespace.clone(),
                        validity: self.cert_validity,
                    },
                    Some(CaBundleSettings {
                        configuration,
                        namespace: self.namespace.clone(),
                        holder,
                        lease_duration: self.lease_duration,
                    }),
                )
            }
        };
        Ok(WebhookSettings {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            injector,
            tls,
            ca_bundle,
            shutdown_delay: self.shutdown_delay,
        })
    }
}

/// Runs the webhook until SIGTERM or SIGINT; returns the exit code.
#[must_use]
pub fn run(args: WebhookArgs) -> ExitCode {
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("keyturn: {e}");
            return ExitCode::Usage;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyturn: cannot start runtime: {e}");
            return ExitCode::Software;
        }
    };
    rt.block_on(async move {
        match crate::webhook::run(settings, super::run::shutdown_signal()).await {
            Ok(()) => ExitCode::Ok,
            Err(e) => {
                eprintln!("keyturn: {e}");
                super::exit::HasExitCode::exit_code(&e)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn args(extra: &[&str]) -> Result<WebhookArgs, clap::Error> {
        let mut argv = vec!["keyturn", "webhook"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Webhook(a) => a,
            other => panic!("{other:?}"),
        })
    }

    const BASE: [&str; 10] = [
        "--init-image",
        "registry.example/keyturn-init:1",
        "--namespace",
        "keyturn",
        "--service",
        "keyturn-webhook",
        "--configuration",
        "keyturn-webhook",
        "--holder",
        "keyturn-webhook-7d9f-x2",
    ];

    #[test]
    fn the_flags_become_the_settings() {
        let s = args(&BASE).unwrap().settings().unwrap();
        assert!(
            matches!(&s.tls, TlsSource::InMemory { service, .. } if service == "keyturn-webhook")
        );
        let bundle = s.ca_bundle.unwrap();
        assert_eq!(
            (bundle.holder.as_str(), bundle.lease_duration),
            ("keyturn-webhook-7d9f-x2", Duration::from_secs(15))
        );
        assert_eq!(s.shutdown_delay, Duration::from_secs(5));
        assert_eq!(
            s.injector.config.audit_hmac_secret,
            "keyturn-init-audit-hmac"
        );
        assert_eq!(s.injector.config.token_expiration_seconds, 3600);
    }

    #[test]
    fn bad_settings_are_refused_naming_the_flag_never_the_value() {
        // BASE with `flag` set to `value` (replaced where BASE has it: a flag given twice is
        // a usage error of its own).
        let with = |flag: &'static str, value: &'static str| {
            let mut a = BASE.to_vec();
            match a.iter().position(|f| *f == flag) {
                Some(i) => a[i + 1] = value,
                None => a.extend_from_slice(&[flag, value]),
            }
            a
        };
        let refused = |extra: &[&'static str]| {
            args(&with(extra[0], extra[1]))
                .unwrap()
                .settings()
                .unwrap_err()
        };
        let e = refused(&["--holder", "Not_A_Lease_Name"]);
        assert!(
            e.starts_with("--holder (KEYTURN_HOLDER)") && !e.contains("Not_A"),
            "{e}"
        );
        let e = refused(&["--init-image", " "]);
        assert!(
            e.starts_with("--init-image (KEYTURN_WEBHOOK_INIT_IMAGE) is empty"),
            "{e}"
        );
        let e = refused(&["--vault-cacert", "relative/ca.pem"]);
        assert!(
            e.starts_with("--vault-cacert") && !e.contains("relative"),
            "{e}"
        );
        // clap refuses what it can check itself: a usage error, exit 64.
        for bad in [
            &["--token-expiration", "5m"][..],
            &["--cert-validity", "1m"],
            &["--init-cpu-limit", "lots"],
            &["--tls-cert", "/tmp/c.pem"],
        ] {
            assert!(args(&with(bad[0], bad[1])).is_err(), "{bad:?}");
        }
    }
}

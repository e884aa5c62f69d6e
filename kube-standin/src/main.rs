//! `keyturn-kube-standin`: the Kubernetes API stand-in as a process, for the demo, for
//! scripts and for trying keyturn by hand with kubectl.
//!
//! ```text
//! keyturn-kube-standin --listen 127.0.0.1:6443 --kubeconfig /tmp/kubeconfig \
//!     [--ca-cert /tmp/ca.pem] [--deny patch:secrets]
//! kubectl --kubeconfig /tmp/kubeconfig get secrets
//! ```
//!
//! Serves HTTPS with a CA made at start. Writes an admin kubeconfig to `--kubeconfig` (mode
//! 0600; the CA as `certificate-authority-data`, the admin bearer token), the CA certificate
//! to `--ca-cert` if given (for curl's `--cacert`), prints the API URL (`https://…`) as the
//! first line on stdout, and serves until SIGTERM or ctrl-c. It refuses a non-loopback
//! `--listen` (exit 64): its certificate names only loopback addresses, and its admin token
//! may do anything.
//!
//! RBAC denials can be set at start with `--deny VERB:RESOURCE` (repeatable; `*` allowed) and
//! changed while running through the control endpoints, with the kubeconfig's admin token:
//!
//! ```text
//! curl --cacert /tmp/ca.pem -H "Authorization: Bearer $TOKEN" -d '{"verb":"patch","resource":"secrets"}' $URL/_standin/deny
//! curl --cacert /tmp/ca.pem -H "Authorization: Bearer $TOKEN" -X POST $URL/_standin/allow-all
//! curl --cacert /tmp/ca.pem -H "Authorization: Bearer $TOKEN" -d '{"namespace":"app","name":"web","audiences":["vault"]}' $URL/_standin/token
//! ```

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use keyturn_kube_standin::KubeStandin;

/// Exit code for a bad command line (`EX_USAGE`).
const EXIT_USAGE: i32 = 64;

#[derive(Debug, Parser)]
#[command(version, about = "Runs keyturn's Kubernetes API stand-in on loopback")]
struct Args {
    /// Loopback address to listen on; port 0 picks a free one.
    #[arg(
        long,
        env = "KEYTURN_KUBE_STANDIN_LISTEN",
        default_value = "127.0.0.1:0"
    )]
    listen: SocketAddr,

    /// Where to write the admin kubeconfig.
    #[arg(long, env = "KEYTURN_KUBE_STANDIN_KUBECONFIG")]
    kubeconfig: PathBuf,

    /// Where to write the CA certificate (PEM) the server's certificate is signed by.
    #[arg(long, env = "KEYTURN_KUBE_STANDIN_CA_CERT")]
    ca_cert: Option<PathBuf>,

    /// Answer 403 to VERB on RESOURCE (e.g. `patch:secrets`, `*:leases`); repeatable.
    #[arg(long = "deny", value_name = "VERB:RESOURCE")]
    deny: Vec<String>,
}

fn usage_error(message: &str) -> ! {
    eprintln!("keyturn-kube-standin: {message}");
    std::process::exit(EXIT_USAGE);
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Validate everything before binding anything.
    if !args.listen.ip().is_loopback() {
        usage_error(&format!(
            "--listen {} is not a loopback address; the stand-in only serves 127.0.0.1/::1",
            args.listen
        ));
    }
    let mut deny = Vec::new();
    for rule in &args.deny {
        match rule.split_once(':') {
            Some((verb, resource)) if !verb.is_empty() && !resource.is_empty() => {
                deny.push((verb.to_owned(), resource.to_owned()));
            }
            _ => usage_error(&format!("--deny {rule:?} is not VERB:RESOURCE")),
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let standin = KubeStandin::start_on(args.listen).await?;
        for (verb, resource) in &deny {
            standin.deny(verb, resource);
        }
        standin.write_kubeconfig(&args.kubeconfig)?;
        if let Some(path) = &args.ca_cert {
            std::fs::write(path, standin.ca_pem())
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        }
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", standin.url())?;
        stdout.flush()?;
        drop(stdout);
        eprintln!(
            "keyturn-kube-standin: serving {} (kubeconfig {}); stop with SIGTERM or ctrl-c",
            standin.url(),
            args.kubeconfig.display()
        );
        shutdown_signal().await?;
        drop(standin);
        anyhow::Ok(())
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}

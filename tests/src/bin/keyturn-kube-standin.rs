//! `keyturn-kube-standin`: the Kubernetes API stand-in as a process, for the demo, for
//! scripts and for trying keyturn by hand with kubectl.
//!
//! ```text
//! keyturn-kube-standin --listen 127.0.0.1:6443 --kubeconfig /tmp/kubeconfig [--deny patch:secrets]
//! ```
//!
//! Writes an admin kubeconfig to `--kubeconfig` (mode 0600), prints the API URL as the first
//! line on stdout, and serves until SIGTERM or ctrl-c. It refuses a non-loopback `--listen`
//! (exit 64): there is no TLS and the admin token is a plain bearer token.
//!
//! RBAC denials can be set at start with `--deny VERB:RESOURCE` (repeatable; `*` allowed) and
//! changed while running through the control endpoints, with the kubeconfig's admin token:
//!
//! ```text
//! curl -H "Authorization: Bearer $TOKEN" -d '{"verb":"patch","resource":"secrets"}' $URL/_standin/deny
//! curl -H "Authorization: Bearer $TOKEN" -X POST $URL/_standin/allow-all
//! curl -H "Authorization: Bearer $TOKEN" -d '{"namespace":"app","name":"web","audiences":["vault"]}' $URL/_standin/token
//! ```

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use keyturn_tests::kube::KubeStandin;

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

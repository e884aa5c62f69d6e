//! The end-to-end demo behind `dev/demo.sh`: real servers on loopback, keyturn's real
//! binaries, every step narrated. Nothing here prints a secret value: files are listed with
//! their size and mode, values by their audit HMAC.
//!
//! 1. Start OpenBao and the Kubernetes API stand-in; wire Vault's kubernetes auth to it.
//! 2. `keyturn-init` logs in as a pod's service account and renders its secrets into tmpfs.
//! 3. `keyturn rotate` rotates a PostgreSQL password three times (alternating users) with a
//!    least-privilege agent token, delivers it to a Kubernetes Secret and rolls the
//!    Deployment; the delivered credential is shown to log in.
//! 4. `keyturn audit tail` shows the trail; `keyturn audit verify` checks the chain, then
//!    catches an edited copy.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use keyturn_core::SecretValue;
use keyturn_core::vault::SecretData;
use keyturn_tests::kube::TestCluster;
use keyturn_tests::openbao::OpenBao;
use keyturn_tests::postgres::Postgres as PgServer;
use kube::api::{Api, PostParams};
use serde_json::json;

fn step(n: u32, what: &str) {
    println!("\n\x1b[1m== {n}. {what}\x1b[0m");
}

fn bin(env: &str, name: &str) -> PathBuf {
    std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        keyturn_tests::tools::repo_root()
            .join("target/debug")
            .join(name)
    })
}

/// Runs a keyturn binary to completion. The Kubernetes stand-in serves from this process,
/// so the wait must not block the runtime's only thread (OpenBao calls back into it).
fn run(cmd: &mut Command) -> anyhow::Result<(i32, String)> {
    let out =
        tokio::task::block_in_place(|| cmd.output()).with_context(|| format!("run {cmd:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code().unwrap_or(-1), text))
}

fn show(text: &str) {
    for l in text.lines() {
        println!("   {l}");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let keyturn = bin("KEYTURN_BIN", "keyturn");
    let init = bin("KEYTURN_INIT_BIN", "keyturn-init");
    for b in [&keyturn, &init] {
        if !b.is_file() {
            bail!(
                "{} is missing: run dev/demo.sh, which builds it",
                b.display()
            );
        }
    }
    let work = tempfile::Builder::new().prefix("keyturn-demo-").tempdir()?;
    let out = tempfile::Builder::new()
        .prefix("keyturn-demo-")
        .tempdir_in("/dev/shm")?;
    let audit = work.path().join("audit.jsonl");
    let key = work.path().join("audit-hmac.key");
    std::fs::write(&key, rand_key())?;

    step(
        1,
        "Start OpenBao and the Kubernetes API stand-in on loopback",
    );
    let bao = OpenBao::start().await?;
    let cluster = TestCluster::start().await?;
    println!("   OpenBao    {}", bao.addr());
    println!(
        "   Kubernetes {} (namespace {})",
        cluster.kubernetes_host(),
        cluster.namespace()
    );
    bao.enable_auth("kubernetes", "kubernetes").await?;
    let mut kcfg = json!({
        "kubernetes_host": cluster.kubernetes_host(),
        "token_reviewer_jwt": cluster.token_reviewer_jwt().await?,
        "disable_local_ca_jwt": true,
    });
    if let Some(ca) = cluster.kubernetes_ca_pem() {
        kcfg["kubernetes_ca_cert"] = json!(ca);
    }
    bao.api("POST", "auth/kubernetes/config", Some(kcfg))
        .await?;
    let init_hcl = std::fs::read_to_string(
        keyturn_tests::tools::repo_root().join("policies/vault/keyturn-init.hcl"),
    )?;
    println!("   policies/vault/keyturn-init.hcl → role orders-api (service account orders-api)");
    bao.put_policy("keyturn-init", &init_hcl).await?;
    bao.api(
        "POST",
        "auth/kubernetes/role/orders-api",
        Some(json!({
            "bound_service_account_names": ["orders-api"],
            "bound_service_account_namespaces": [cluster.namespace()],
            "token_policies": ["keyturn-init"],
            "token_ttl": "5m",
        })),
    )
    .await?;
    let root = bao.root_client()?;
    let mut db = SecretData::new();
    db.insert("username", SecretValue::from_str_copy("orders"));
    db.insert("password", SecretValue::from(random_text()));
    db.insert("host", SecretValue::from_str_copy("db.shop.svc"));
    root.kv2_write("secret", "orders/db", &db, None).await?;
    let mut api = SecretData::new();
    api.insert("token", SecretValue::from(random_text()));
    root.kv2_write("secret", "orders/payments-api", &api, None)
        .await?;
    println!("   wrote secret/data/orders/db and secret/data/orders/payments-api");

    step(
        2,
        "keyturn-init renders the pod's secrets into tmpfs, logged in as its service account",
    );
    let sa_token = work.path().join("sa-token");
    std::fs::write(
        &sa_token,
        cluster
            .service_account_token(cluster.namespace(), "orders-api")
            .await?,
    )?;
    let manifest = work.path().join("manifest.yaml");
    std::fs::write(
        &manifest,
        format!(
            "vault: {{ auth: kubernetes, role: orders-api, jwt-file: {} }}\nsecrets:\n  - path: secret/data/orders/db\n    file: db.env\n    format: env\n  - path: secret/data/orders/db\n    file: database-url\n    format: template\n    template: \"postgres://{{{{ .username }}}}:{{{{ .password | urlquery }}}}@{{{{ .host }}}}/orders\"\n  - path: secret/data/orders/payments-api\n    file: payments/token\n    key: token\n",
            sa_token.display()
        ),
    )?;
    let (code, text) = run(Command::new(&init)
        .args(["--manifest"])
        .arg(&manifest)
        .arg("--out")
        .arg(out.path())
        .env("VAULT_ADDR", bao.addr())
        .env("KEYTURN_AUDIT_FILE", &audit)
        .env("KEYTURN_AUDIT_HMAC_KEY_FILE", &key)
        .env("KEYTURN_POD_NAME", "orders-api-7f9c"))?;
    show(&text);
    if code != 0 {
        bail!("keyturn-init exited {code}");
    }
    println!(
        "   exit 0; {} now holds (values not shown):",
        out.path().display()
    );
    list(out.path(), out.path())?;

    step(
        3,
        "keyturn rotate: a PostgreSQL password (alternating users), delivered to a Kubernetes Secret, Deployment rolled",
    );
    let pg = PgServer::start_with(&[("log_statement", "all")]).await?;
    let su = pg.admin().await?;
    su.batch_execute(
        "CREATE ROLE keyturn_admin LOGIN CREATEROLE; CREATE ROLE orders_a LOGIN; CREATE ROLE orders_b LOGIN",
    )
    .await?;
    // The admin's password is set with statement logging off for this session, so it never
    // reaches the server log; it is kept only in Vault, where the agent reads it at each use.
    let admin_password_text = random_text();
    // Two round trips: a multi-statement string is logged whole before its SET applies.
    su.batch_execute("SET log_statement = 'none'").await?;
    su.batch_execute(&format!(
        "ALTER ROLE keyturn_admin PASSWORD '{admin_password_text}'"
    ))
    .await?;
    let admin_password = SecretValue::from_str_copy(&admin_password_text);
    let mut admin = SecretData::new();
    admin.insert("username", SecretValue::from_str_copy("keyturn_admin"));
    admin.insert("password", admin_password);
    root.kv2_write("secret", "keyturn/pg-admin", &admin, None)
        .await?;
    println!(
        "   PostgreSQL 15 on 127.0.0.1:{} (log_statement=all): roles orders_a, orders_b, keyturn_admin",
        pg.port()
    );
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "orders-api"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "orders-api"}},
                 "template": {"metadata": {"labels": {"app": "orders-api"}},
                              "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}}}
    }))?;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client(), cluster.namespace());
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    let agent_hcl = std::fs::read_to_string(
        keyturn_tests::tools::repo_root().join("policies/vault/keyturn-agent.hcl"),
    )?;
    bao.put_policy("keyturn-agent", &agent_hcl).await?;
    let agent_token = bao.create_token(&["keyturn-agent"]).await?;
    let policies = work.path().join("policies");
    std::fs::create_dir(&policies)?;
    std::fs::write(
        policies.join("orders-db.yaml"),
        format!(
            "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: orders-db }}\nspec:\n  schedule: \"0 3 * * *\"\n  window: 30m\n  store: {{ vault-kv: {{ path: keyturn/orders-db }} }}\n  target:\n    postgres:\n      host: 127.0.0.1\n      port: {}\n      admin: {{ vault-kv: {{ path: keyturn/pg-admin }} }}\n      users: [orders_a, orders_b]\n      strategy: alternating\n  distribute:\n    - kubernetes: {{ namespace: {}, secret: orders-db, keys: {{ DB_USER: username, DB_PASSWORD: password }} }}\n      restart: [ {{ kind: Deployment, name: orders-api }} ]\n",
            pg.port(),
            cluster.namespace()
        ),
    )?;
    let (_, text) = run(Command::new(&keyturn)
        .args(["policy", "check"])
        .arg(&policies))?;
    show(&text);
    let (_, text) = run(Command::new(&keyturn)
        .args(["policy", "rbac"])
        .arg(&policies))?;
    println!("   keyturn policy rbac: the agent's Role allows exactly these rules");
    let rules = text
        .split("---")
        .find(|d| d.contains("kind: Role\n"))
        .and_then(|d| d.split("rules:\n").nth(1))
        .unwrap_or_default();
    show(rules);
    let kubeconfig = cluster.kubeconfig_path().to_owned();
    let secrets: Api<Secret> = Api::namespaced(cluster.client(), cluster.namespace());
    let mut delivered = vec![admin_password_text];
    for _ in 0..3 {
        let (code, text) = run(Command::new(&keyturn)
            .args(["--log", "warn", "rotate", "orders-db", "--reason", "demo"])
            .env("KEYTURN_POLICIES", &policies)
            .env("KEYTURN_HOLDER", "demo-agent")
            .env("KEYTURN_RESTART_WINDOW", "0s")
            .env("KUBECONFIG", &kubeconfig)
            .env("VAULT_ADDR", bao.addr())
            .env("VAULT_TOKEN", &agent_token)
            .env("HOME", work.path())
            .env("KEYTURN_AUDIT_FILE", &audit)
            .env("KEYTURN_AUDIT_HMAC_KEY_FILE", &key))?;
        show(&text);
        if code != 0 {
            bail!("keyturn rotate exited {code}");
        }
        let data = secrets
            .get("orders-db")
            .await?
            .data
            .context("the Secret has data")?;
        let user = String::from_utf8_lossy(&data["DB_USER"].0).into_owned();
        let password = String::from_utf8_lossy(&data["DB_PASSWORD"].0).into_owned();
        let works = pg.connect_as(&user, &password).await.is_ok();
        let version = deployments
            .get("orders-api")
            .await?
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .and_then(|a| a.get("keyturn.dev/version").cloned())
            .unwrap_or_default();
        println!(
            "   Secret orders-db: DB_USER={user}, DB_PASSWORD ({} chars) logs in: {}; Deployment orders-api rolled, keyturn.dev/version={version}",
            password.len(),
            if works { "yes" } else { "NO" }
        );
        if !works {
            bail!("the delivered credential does not log in");
        }
        delivered.push(password);
    }
    let log = pg.log();
    let leaked = delivered
        .iter()
        .filter(|p| log.contains(p.as_str()))
        .count();
    println!(
        "   PostgreSQL's statement log ({} lines) holds none of the {} passwords: {}",
        log.lines().count(),
        delivered.len(),
        if leaked == 0 { "yes" } else { "NO" }
    );
    if leaked != 0 {
        bail!("a password reached the PostgreSQL log");
    }

    step(
        4,
        "The audit trail: every access, in a keyed hash chain, values only as HMACs",
    );
    let (_, text) = run(Command::new(&keyturn)
        .args(["audit", "tail", "-n", "100"])
        .arg(&audit))?;
    show(&text);
    // Verifying the keyed chain needs the audit key, as rewriting it would.
    let (code, text) = run(Command::new(&keyturn)
        .args(["audit", "verify"])
        .arg(&audit)
        .env("KEYTURN_AUDIT_HMAC_KEY_FILE", &key))?;
    show(&text);
    println!("   exit {code}");
    let tampered = work.path().join("tampered.jsonl");
    let original = std::fs::read_to_string(&audit)?;
    let mut lines: Vec<String> = original.lines().map(str::to_owned).collect();
    // An `ok` event from the middle of the log: half the events are intents (`started`),
    // which an edit of `ok` would leave untouched.
    let victim = (lines.len() / 2..lines.len())
        .find(|&i| lines[i].contains("\"outcome\":\"ok\""))
        .ok_or_else(|| anyhow::anyhow!("no ok event in the second half of the audit log"))?;
    lines[victim] = lines[victim].replacen("\"outcome\":\"ok\"", "\"outcome\":\"denied\"", 1);
    std::fs::write(&tampered, lines.join("\n") + "\n")?;
    println!("   an attacker edits one event's outcome in a copy of the log:");
    let (code, text) = run(Command::new(&keyturn)
        .args(["audit", "verify"])
        .arg(&tampered)
        .env("KEYTURN_AUDIT_HMAC_KEY_FILE", &key))?;
    show(&text);
    println!("   exit {code}");
    // The demo's claim is that the edit is caught: if verify accepts the copy, the demo fails.
    anyhow::ensure!(
        code == 1,
        "audit verify accepted an edited log (exit {code})"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    println!("\n\x1b[1mdone.\x1b[0m Servers stop and temp files go away now.");
    Ok(())
}

fn list(root: &Path, dir: &Path) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(Result::ok).collect();
    entries.sort_by_key(std::fs::DirEntry::path);
    for e in entries {
        let m = e.metadata()?;
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap_or(&e.path())
            .display()
            .to_string();
        if m.is_dir() {
            list(root, &e.path())?;
        } else {
            println!(
                "   {:o}  {:>5} bytes  {rel}",
                m.permissions().mode() & 0o777,
                m.len()
            );
        }
    }
    Ok(())
}

fn rand_key() -> Vec<u8> {
    (0..32).map(|_| rand::random::<u8>()).collect()
}

fn random_text() -> String {
    use rand::Rng;
    let mut r = rand::rng();
    (0..24)
        .map(|_| {
            char::from(
                b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"[r.random_range(0..56)],
            )
        })
        .collect()
}

//! Canary secret values never reach logs or errors, even with every library's tracing
//! turned up to TRACE.

use keyturn_core::SecretValue;
use keyturn_core::vault::auth::AppRole;
use keyturn_core::vault::{SecretData, Vault};
use keyturn_tests::canary::{LogCapture, assert_absent, canary};
use keyturn_tests::openbao::OpenBao;
use serde_json::json;

#[tokio::test]
async fn trace_level_logs_of_login_write_read_and_failures_hold_no_secret() {
    let capture = LogCapture::default();
    // The libraries keyturn quiets by default named, so that they log at TRACE too.
    let _guard = capture.install("trace,rustify=trace,vaultrs=trace");

    let bao = OpenBao::start().await.unwrap();
    bao.enable_auth("approle", "approle").await.unwrap();
    bao.put_policy(
        "rw",
        r#"path "secret/data/app/*" { capabilities = ["create", "read", "update"] }"#,
    )
    .await
    .unwrap();
    bao.api(
        "POST",
        "auth/approle/role/app",
        Some(json!({"token_policies": ["rw"]})),
    )
    .await
    .unwrap();
    let role_id = bao
        .api("GET", "auth/approle/role/app/role-id", None)
        .await
        .unwrap()["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_id = bao
        .api("POST", "auth/approle/role/app/secret-id", None)
        .await
        .unwrap()["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let value = canary("trace");
    let mut v = Vault::connect(&bao.config(None)).unwrap();
    let info = v
        .login(&AppRole {
            mount: "approle".into(),
            role_id,
            secret_id: SecretValue::from_str_copy(&secret_id),
        })
        .await
        .unwrap();
    let token = info.token.expose_str().unwrap().to_owned();
    let mut d = SecretData::new();
    d.insert("password", SecretValue::from_str_copy(&value));
    v.kv2_write("secret", "app/db", &d, None).await.unwrap();
    let got = v.kv2_read("secret", "app/db", None).await.unwrap();
    assert_eq!(got.data.get("password").unwrap().expose(), value.as_bytes());
    // Failures on the way: a CAS conflict, a denied path, a missing one.
    let mut errors = String::new();
    for e in [
        v.kv2_write("secret", "app/db", &d, Some(0))
            .await
            .unwrap_err(),
        v.kv2_read("secret", "other/db", None).await.unwrap_err(),
        v.kv2_read("secret", "app/missing", None).await.unwrap_err(),
    ] {
        errors.push_str(&format!("{e}\n{e:?}\n"));
    }
    tracing::info!(data = ?got, "read done");

    let logs = capture.bytes();
    assert!(
        logs.len() > 1000,
        "expected trace output from the libraries, got {} bytes",
        logs.len()
    );
    for (place, text) in [
        ("trace logs", logs.as_slice()),
        ("errors", errors.as_bytes()),
    ] {
        assert_absent(place, text, &[&value, &secret_id, &token]);
    }
}

/// Neither binary can leave a core file holding the Vault token or a secret, nor have its
/// memory read by another process of its user: checked on the running processes, started
/// with core files allowed (`RLIMIT_CORE` unlimited, soft and hard) as an unprivileged user,
/// while each waits on a Vault that accepts the connection and never answers.
mod core_dumps {
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use keyturn_tests::agent_env::write_generated_policy;
    use keyturn_tests::bins;
    use keyturn_tests::canary::canary;
    use tokio::net::{TcpListener, TcpStream};

    /// The user the binaries run as. Tests run as root, and every /proc/PID file of a root
    /// process is root's anyway; run as another user, a process's /proc/PID files are that
    /// user's while it is dumpable and root's once it is not. That is how dumpability shows
    /// from outside (`PR_GET_DUMPABLE` answers only for the caller).
    const NOBODY: u32 = 65534;

    /// What /proc says about a process's core dumps.
    #[derive(Debug, PartialEq, Eq)]
    struct CoreFacts {
        /// `Max core file size`, soft and hard, as /proc/PID/limits prints them.
        core_limit: (String, String),
        /// The owner of /proc/PID/status: [`NOBODY`] while dumpable, 0 once not.
        proc_owner: u32,
    }

    /// A process that can leave no core file and whose memory only root can read.
    fn not_dumpable() -> CoreFacts {
        CoreFacts {
            core_limit: ("0".to_owned(), "0".to_owned()),
            proc_owner: 0,
        }
    }

    fn facts(pid: u32) -> CoreFacts {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .unwrap_or_else(|| panic!("no core limit in /proc/{pid}/limits:\n{limits}"));
        let mut values = line["Max core file size".len()..].split_whitespace();
        let mut next = || values.next().unwrap_or_default().to_owned();
        let core_limit = (next(), next());
        let proc_owner = std::fs::metadata(format!("/proc/{pid}/status"))
            .unwrap()
            .uid();
        CoreFacts {
            core_limit,
            proc_owner,
        }
    }

    /// A child killed when the test ends (and by the kernel if the test process dies first).
    struct Running {
        child: Child,
        log: PathBuf,
    }

    impl Running {
        /// `program args` as [`NOBODY`], with core files allowed and only `env`.
        fn start(program: &Path, args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Self {
            let out = std::fs::File::create(&log).unwrap();
            // prlimit and setpriv each exec the next, so the pid stays the program's.
            let child = Command::new("prlimit")
                .args([
                    "--core=unlimited:unlimited",
                    "--",
                    "setpriv",
                    "--pdeathsig",
                    "KILL",
                ])
                .args([
                    "--reuid",
                    "65534",
                    "--regid",
                    "65534",
                    "--clear-groups",
                    "--",
                ])
                .arg(program)
                .args(args)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .expect("run prlimit and setpriv (util-linux; dev/setup.sh installs it)");
            Self { child, log }
        }

        fn pid(&self) -> u32 {
            self.child.id()
        }

        /// Waits for the process's first connection to `vault`, which it makes only after
        /// `main` has begun, and returns it open so that the process stays waiting.
        async fn first_connection(&mut self, vault: &TcpListener) -> TcpStream {
            loop {
                tokio::select! {
                    accepted = vault.accept() => return accepted.unwrap().0,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {
                        if let Some(status) = self.child.try_wait().unwrap() {
                            panic!(
                                "{} exited ({status}) before contacting Vault; its output:\n{}",
                                self.log.display(),
                                std::fs::read_to_string(&self.log).unwrap_or_default()
                            );
                        }
                    }
                }
            }
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// A Vault that accepts connections and never answers, so a process contacting it stays
    /// alive (for the 30 s of a request timeout at least) without any secret existing.
    async fn black_hole() -> (TcpListener, String) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", l.local_addr().unwrap());
        (l, addr)
    }

    /// A directory [`NOBODY`] owns, in `parent` (or the default temp dir).
    fn nobody_dir(parent: Option<&Path>) -> tempfile::TempDir {
        let d = match parent {
            Some(p) => tempfile::tempdir_in(p).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        std::os::unix::fs::chown(d.path(), Some(NOBODY), Some(NOBODY)).unwrap();
        d
    }

    /// Writes `content` at `path`, owned by [`NOBODY`].
    fn nobody_file(path: &Path, content: &str) -> PathBuf {
        std::fs::write(path, content).unwrap();
        std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
        path.to_owned()
    }

    /// The way of looking is sound: a program that does nothing about core dumps, started
    /// the same way, shows as dumpable with core files allowed.
    #[tokio::test]
    async fn a_process_started_this_way_is_dumpable_unless_it_says_otherwise() {
        let dir = nobody_dir(None);
        let sleep = PathBuf::from("/bin/sleep");
        let control = Running::start(&sleep, &["60"], &[], dir.path().join("sleep.log"));
        keyturn_tests::process::eventually("sleep to be exec'd as nobody", || async {
            std::fs::read_to_string(format!("/proc/{}/comm", control.pid()))
                .is_ok_and(|c| c.trim() == "sleep")
        })
        .await;
        let f = facts(control.pid());
        assert_eq!(
            f,
            CoreFacts {
                core_limit: ("unlimited".to_owned(), "unlimited".to_owned()),
                proc_owner: NOBODY,
            }
        );
        assert_ne!(f, not_dumpable());
    }

    #[tokio::test]
    async fn the_keyturn_daemon_cannot_dump_core() {
        let home = nobody_dir(None);
        let policies = home.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        write_generated_policy(&policies, "orders-db", "");
        for p in [&policies, &policies.join("orders-db.yaml")] {
            std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        let key = nobody_file(&home.path().join("hmac.key"), &"ab".repeat(32));
        // Read as `~/.vault-token`, as the Vault CLI would.
        nobody_file(&home.path().join(".vault-token"), &canary("vault-token"));
        let (vault, addr) = black_hole().await;
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        let mut daemon = Running::start(
            &bins::keyturn(),
            &["run"],
            &[
                ("HOME", &path(home.path())),
                ("VAULT_ADDR", &addr),
                ("KEYTURN_POLICIES", &path(&policies)),
                (
                    "KEYTURN_AUDIT_FILE",
                    &path(&home.path().join("audit.jsonl")),
                ),
                ("KEYTURN_AUDIT_HMAC_KEY_FILE", &path(&key)),
            ],
            home.path().join("keyturn.log"),
        );
        let _held = daemon.first_connection(&vault).await;
        assert_eq!(facts(daemon.pid()), not_dumpable());
    }

    #[tokio::test]
    async fn keyturn_init_cannot_dump_core() {
        let scratch = nobody_dir(None);
        let shm = nobody_dir(Some(Path::new("/dev/shm")));
        let out = shm.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::os::unix::fs::chown(&out, Some(NOBODY), Some(NOBODY)).unwrap();
        let token = nobody_file(&scratch.path().join("token"), &canary("vault-token"));
        let manifest = nobody_file(
            &scratch.path().join("manifest.yaml"),
            &format!(
                "vault: {{ auth: token, token-file: {} }}\nsecrets:\n  - {{ path: secret/data/orders/a, file: a, key: v }}\n",
                token.display()
            ),
        );
        let key = nobody_file(&scratch.path().join("audit.key"), &"cd".repeat(32));
        let (vault, addr) = black_hole().await;
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        let mut init = Running::start(
            &bins::keyturn_init(),
            &["--manifest", &path(&manifest), "--out", &path(&out)],
            &[
                ("HOME", &path(scratch.path())),
                ("VAULT_ADDR", &addr),
                (
                    "KEYTURN_AUDIT_FILE",
                    &path(&scratch.path().join("audit.jsonl")),
                ),
                ("KEYTURN_AUDIT_HMAC_KEY_FILE", &path(&key)),
            ],
            scratch.path().join("keyturn-init.log"),
        );
        let _held = init.first_connection(&vault).await;
        assert_eq!(facts(init.pid()), not_dumpable());
    }
}

/// `--audit-file` pointed at a token file, directly or through a symlink: both binaries refuse
/// it before any network call, with exit 74 and a message naming the path, and the token file
/// is left byte for byte as it was, its value in no output. (keyturn once "repaired" such a
/// file by truncating it to nothing, and exited 0.)
#[test]
fn neither_binary_adopts_a_token_file_or_a_symlink_to_one_as_its_audit_file() {
    let dir = tempfile::tempdir().unwrap();
    let token = canary("token-as-audit-file");
    // A Vault token file has no trailing newline: the case that used to be cut as a torn line.
    let token_file = dir.path().join("vault-token");
    std::fs::write(&token_file, &token).unwrap();
    let link = dir.path().join("audit.jsonl");
    std::os::unix::fs::symlink(&token_file, &link).unwrap();
    let key = dir.path().join("hmac.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    keyturn_tests::agent_env::write_generated_policy(&policies, "orders-db", "");
    let out = tempfile::Builder::new()
        .prefix("keyturn-audit-refusal-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let manifest = dir.path().join("manifest.yaml");
    std::fs::write(
        &manifest,
        format!(
            "vault: {{ auth: token, token-file: {} }}\nsecrets:\n  - {{ path: secret/data/orders/a, file: a, key: v }}\n",
            token_file.display()
        ),
    )
    .unwrap();
    // Nothing listens here: the refusal must come before any network call.
    let closed = keyturn_tests::process::ClosedPort::new();
    let vault = closed.url();

    for audit in [&token_file, &link] {
        let mut agent = std::process::Command::new(keyturn_tests::bins::keyturn());
        agent.args(["rotate", "orders-db"]);
        let mut init = std::process::Command::new(keyturn_tests::bins::keyturn_init());
        init.arg("--manifest")
            .arg(&manifest)
            .arg("--out")
            .arg(out.path());
        for (name, mut cmd) in [("keyturn rotate", agent), ("keyturn-init", init)] {
            let o = cmd
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", dir.path())
                .env("VAULT_ADDR", &vault)
                .env("VAULT_TOKEN", "not-used")
                .env("KEYTURN_POLICIES", &policies)
                .env("KEYTURN_AUDIT_FILE", audit)
                .env("KEYTURN_AUDIT_HMAC_KEY_FILE", &key)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&o.stderr);
            let what = format!("{name} with the audit file {}", audit.display());
            assert_eq!(o.status.code(), Some(74), "{what}: {stderr}");
            assert!(
                stderr.contains(&audit.display().to_string()),
                "{what}: the message names the path: {stderr}"
            );
            let why = if audit == &link {
                "symbolic link"
            } else {
                "not a keyturn audit log"
            };
            assert!(stderr.contains(why), "{what}: {stderr}");
            assert_absent(&format!("{what}: stderr"), &o.stderr, &[&token]);
            assert_absent(&format!("{what}: stdout"), &o.stdout, &[&token]);
            assert_eq!(
                std::fs::read(&token_file).unwrap(),
                token.as_bytes(),
                "{what}: the token file was changed"
            );
            assert_eq!(
                std::fs::read_dir(out.path()).unwrap().count(),
                0,
                "{what}: nothing rendered"
            );
        }
    }
}

//! Shared by the `init_*` end-to-end tests: the real `keyturn-init` binary, a real OpenBao,
//! a fresh tmpfs output directory, and the canaries.
//!
//! # Finding the binary
//!
//! Cargo only builds a package's binaries for that package's own tests, so this crate's
//! tests build `keyturn-init` themselves: `cargo build -p keyturn-init --bin keyturn-init`
//! into the same target directory and profile as the running test (found from
//! `current_exe()`: `TARGET/PROFILE/deps/TEST`). When it is up to date that is a no-op
//! taking a fraction of a second; concurrent tests wait on Cargo's build lock. Set
//! `KEYTURN_INIT_BIN` to test a prebuilt binary (a release or static build) instead.
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use keyturn_tests::canary::assert_absent;
use keyturn_tests::openbao::OpenBao;
use serde_json::{Value, json};

/// The `keyturn-init` binary, built on first use.
pub fn bin() -> PathBuf {
    keyturn_tests::bins::keyturn_init()
}

#[derive(Debug)]
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// Standard output (audit events when the audit goes to stdout).
    pub stdout: Vec<u8>,
    /// Standard error: logs and one line per failure.
    pub stderr: String,
}

impl Run {
    /// The failure lines keyturn-init printed (not the JSON logs).
    pub fn failure_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("keyturn-init: "))
            .collect()
    }
}

/// What a run's stdout is, for [`Fixture::run_audit_to_stdout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdoutIs {
    /// A pipe the test reads.
    Read,
    /// Closed before keyturn-init starts (`>&-`).
    Closed,
    /// A pipe whose read end the test dropped.
    ReaderGone,
}

/// A test's world: OpenBao, an output directory on tmpfs, a scratch directory on disk for
/// manifests and the audit files.
pub struct Fixture {
    pub bao: OpenBao,
    /// The output directory (on /dev/shm, a tmpfs).
    pub out: PathBuf,
    /// Scratch space on disk.
    pub scratch: tempfile::TempDir,
    /// Every canary planted so far.
    pub canaries: Vec<String>,
    _shm: tempfile::TempDir,
}

impl Fixture {
    /// Starts OpenBao with a KV v1 mount at `kv/` (KV v2 is at `secret/` already).
    pub async fn start() -> Self {
        let bao = OpenBao::start().await.unwrap();
        bao.mount("kv", "kv", Some(json!({"version": "1"})))
            .await
            .unwrap();
        let shm = tempfile::Builder::new()
            .prefix("keyturn-init-test-")
            .tempdir_in("/dev/shm")
            .unwrap();
        let out = shm.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        std::fs::write(
            scratch.path().join("audit.key"),
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        )
        .unwrap();
        Self {
            bao,
            out,
            scratch,
            canaries: Vec::new(),
            _shm: shm,
        }
    }

    /// A canary, remembered for [`Fixture::assert_no_canary_leaked`].
    pub fn canary(&mut self, label: &str) -> String {
        let c = keyturn_tests::canary::canary(label);
        self.canaries.push(c.clone());
        c
    }

    /// Writes a KV v2 secret as root.
    pub async fn kv2(&self, path: &str, data: Value) {
        self.bao
            .api(
                "POST",
                &format!("secret/data/{path}"),
                Some(json!({ "data": data })),
            )
            .await
            .unwrap();
    }

    /// Writes a KV v1 secret as root.
    pub async fn kv1(&self, path: &str, data: Value) {
        self.bao
            .api("POST", &format!("kv/{path}"), Some(data))
            .await
            .unwrap();
    }

    /// Writes a scratch file and returns its path.
    pub fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.scratch.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    /// The audit HMAC key file the runs use.
    pub fn audit_key(&self) -> PathBuf {
        self.scratch.path().join("audit.key")
    }

    /// The audit file the runs append to.
    pub fn audit_file(&self) -> PathBuf {
        self.scratch.path().join("audit.jsonl")
    }

    /// Runs keyturn-init with `args`, the Vault address of this fixture, the audit going to
    /// [`Fixture::audit_file`], a HOME of its own, and `env`.
    pub async fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(bin(), args, env);
        let o = cmd.output().await.expect("run keyturn-init");
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: o.stdout,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Runs keyturn-init as [`Fixture::run`] does, but with the audit going to stdout only
    /// (its default: no `KEYTURN_AUDIT_FILE`), and stdout as `how` says.
    pub async fn run_audit_to_stdout(&self, args: &[&str], how: StdoutIs) -> Run {
        let mut cmd = match how {
            // Through a shell, so the descriptor is really closed when keyturn-init starts.
            StdoutIs::Closed => {
                let mut sh_args = vec!["-c", "exec \"$0\" \"$@\" >&-"];
                let b = bin();
                let b = b.to_str().unwrap().to_owned();
                sh_args.push(&b);
                sh_args.extend_from_slice(args);
                self.command(PathBuf::from("/bin/sh"), &sh_args, &[])
            }
            StdoutIs::Read | StdoutIs::ReaderGone => self.command(bin(), args, &[]),
        };
        cmd.env_remove("KEYTURN_AUDIT_FILE")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("run keyturn-init");
        if matches!(how, StdoutIs::ReaderGone) {
            // Nobody reads the pipe any more: every write to it fails with EPIPE.
            drop(child.stdout.take());
        }
        let o = child
            .wait_with_output()
            .await
            .expect("wait for keyturn-init");
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: o.stdout,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// `program` (keyturn-init, or a shell running it) with `args` and the environment
    /// [`Fixture::run`] describes.
    fn command(
        &self,
        program: PathBuf,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.scratch.path())
            .env("VAULT_ADDR", self.bao.addr())
            .env("KEYTURN_AUDIT_FILE", self.audit_file())
            .env(
                "KEYTURN_AUDIT_HMAC_KEY_FILE",
                self.scratch.path().join("audit.key"),
            )
            .env("KEYTURN_LOG", "info")
            .envs(env.iter().copied())
            .kill_on_drop(true);
        cmd
    }

    /// Runs with `--manifest` (written from `yaml`) and `--out`.
    pub async fn run_manifest(&self, yaml: &str, extra: &[&str], env: &[(&str, &str)]) -> Run {
        let m = self.file("manifest.yaml", yaml);
        let mut args = vec![
            "--manifest",
            m.to_str().unwrap(),
            "--out",
            self.out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.run(&args, env).await
    }

    /// Panics if any canary is in the run's output or the audit file.
    pub fn assert_no_canary_leaked(&self, run: &Run) {
        let c: Vec<&str> = self.canaries.iter().map(String::as_str).collect();
        assert_absent("stdout", &run.stdout, &c);
        assert_absent("stderr", run.stderr.as_bytes(), &c);
        assert_absent(
            "audit file",
            &std::fs::read(self.audit_file()).unwrap_or_default(),
            &c,
        );
    }

    /// The audit file's entries.
    pub fn audit_entries(&self) -> Vec<Value> {
        std::fs::read_to_string(self.audit_file())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// A file in the output directory.
    pub fn read_out(&self, name: &str) -> String {
        std::fs::read_to_string(self.out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// `(name, inode, mtime ns, mode)` of everything in the output directory, sorted.
    pub fn snapshot(&self) -> Vec<(String, u64, i64, u32)> {
        snapshot(&self.out)
    }

    /// A token with `policies`, as root.
    pub async fn token(&self, policies: &[&str]) -> String {
        self.bao.create_token(policies).await.unwrap()
    }
}

/// `(name, inode, mtime ns, mode)` of everything under `dir`, sorted.
pub fn snapshot(dir: &Path) -> Vec<(String, u64, i64, u32)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.ino(),
                m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                m.mode(),
            )
        })
        .collect();
    v.sort();
    v
}

/// The mode bits of a file.
pub fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

/// The policy file the tests give a pod's role.
pub fn init_policy() -> String {
    std::fs::read_to_string(
        keyturn_tests::tools::repo_root().join("policies/vault/keyturn-init.hcl"),
    )
    .unwrap()
}

/// OpenBao's kubernetes auth against `c`, with role `sa` (bound to that service account in
/// the test namespace) holding the keyturn-init policy.
pub async fn kubernetes_auth(f: &Fixture, c: &keyturn_tests::kube::TestCluster, sa: &str) {
    f.bao
        .put_policy("keyturn-init", &init_policy())
        .await
        .unwrap();
    f.bao.enable_kubernetes_auth(c).await.unwrap();
    let role = json!({
        "bound_service_account_names": [sa],
        "bound_service_account_namespaces": [c.namespace()],
        "audience": "vault",
        "token_policies": ["keyturn-init"],
        "token_ttl": "10m",
    });
    f.bao
        .api("POST", &format!("auth/kubernetes/role/{sa}"), Some(role))
        .await
        .unwrap();
}

//! The static binaries and their FROM-scratch images.
//!
//! - Both binaries are static (no ELF interpreter, no needed library) and run in an empty
//!   chroot as the images' user 65532, holding only the binary and what the test writes:
//!   `keyturn-init` logs in to a real OpenBao and renders a secret; `keyturn doctor` prints
//!   its checks.
//! - An https Vault with no CA bundle on disk (a scratch image): a server no trusted root
//!   signed fails at once (exit 64, not retried) with the certificate named and
//!   `VAULT_CACERT` suggested (not the misleading "is not an http:// or https:// URL" of
//!   before); its CA in `VAULT_CACERT` makes the handshake succeed; a `VAULT_CACERT` holding
//!   no certificate exits 64 naming the file.
//! - hadolint passes both Containerfiles and fails a bad one; podman builds both images (in
//!   a storage of the test's own, vfs), whose config says user 65532:65532 and the binary as
//!   entrypoint, whose one layer holds the binary and nothing else (no shell), and the
//!   keyturn-init image is at most 12 MB.
//!
//! The binaries are the static release build of dev/build-static.sh (`bins::static_bins`,
//! a no-op after dev/test.sh has run that script).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keyturn_tests::canary::{assert_absent, canary};
use keyturn_tests::kube::KubeStandin;
use keyturn_tests::openbao::OpenBao;
use keyturn_tests::tools::{find, repo_root};
use serde_json::{Value, json};

/// The images' user (images/*.Containerfile).
const IMAGE_UID: u32 = 65532;

/// The keyturn-init image's budget (bytes, uncompressed, as `podman image inspect` reports).
const INIT_IMAGE_MAX: u64 = 12_000_000;

const AUDIT_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn keyturn() -> PathBuf {
    keyturn_tests::bins::static_bins().0
}

fn keyturn_init() -> PathBuf {
    keyturn_tests::bins::static_bins().1
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

// ---------------------------------------------------------------------------------------
// Static

/// What makes an ELF file depend on anything outside itself: its interpreter (`PT_INTERP`,
/// the dynamic loader) and the libraries its dynamic section names (`DT_NEEDED`). A
/// static-pie binary has a dynamic section (for its own relocations) but neither.
fn elf_dependencies(path: &Path) -> (bool, usize) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{} is not ELF", path.display());
    assert_eq!((b[4], b[5]), (2, 1), "64-bit little-endian ELF expected");
    let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at =
        |o: usize| usize::try_from(u64::from_le_bytes(b[o..o + 8].try_into().unwrap())).unwrap();
    let (phoff, phentsize, phnum) = (u64_at(0x20), usize::from(u16_at(0x36)), u16_at(0x38));
    let (mut interp, mut needed) = (false, 0);
    for i in 0..usize::from(phnum) {
        let ph = phoff + i * phentsize;
        match u32_at(ph) {
            3 => interp = true, // PT_INTERP
            2 => {
                // PT_DYNAMIC: (d_tag, d_val) pairs up to DT_NULL.
                let (off, size) = (u64_at(ph + 8), u64_at(ph + 32));
                for e in (off..off + size).step_by(16) {
                    match u64_at(e) {
                        0 => break,
                        1 => needed += 1, // DT_NEEDED
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    (interp, needed)
}

#[test]
fn both_binaries_are_static() {
    for bin in [keyturn(), keyturn_init()] {
        assert_eq!(
            elf_dependencies(&bin),
            (false, 0),
            "{} has an interpreter or needs libraries",
            bin.display()
        );
    }
    // The check can fail: this test binary is an ordinary dynamic one.
    let me = std::env::current_exe().unwrap();
    let (interp, needed) = elf_dependencies(&me);
    assert!(interp && needed > 0, "{}", me.display());
}

// ---------------------------------------------------------------------------------------
// An empty chroot

/// A root directory holding one static binary and what the test writes into it, on
/// /dev/shm so that keyturn-init's output directory inside is memory-backed.
struct Jail {
    root: tempfile::TempDir,
    program: String,
}

impl Jail {
    fn new(binary: &Path) -> Self {
        let root = tempfile::Builder::new()
            .prefix("keyturn-jail-")
            .tempdir_in("/dev/shm")
            .unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let program = binary.file_name().unwrap().to_str().unwrap().to_owned();
        std::fs::copy(binary, root.path().join(&program)).unwrap();
        Self { root, program }
    }

    /// Writes `/name` (mode 0400, owned by the images' user) and returns its path inside.
    fn file(&self, name: &str, content: &str) -> String {
        let p = self.root.path().join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        std::os::unix::fs::chown(&p, Some(IMAGE_UID), Some(IMAGE_UID)).unwrap();
        format!("/{name}")
    }

    /// Makes `/name`, a directory of the images' user (mode 0700).
    fn dir(&self, name: &str) -> String {
        let p = self.root.path().join(name);
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&p, Some(IMAGE_UID), Some(IMAGE_UID)).unwrap();
        format!("/{name}")
    }

    /// Writes `/etc/NAME` (mode 0644), as a pod's runtime mounts /etc/hosts and
    /// /etc/resolv.conf over any image.
    fn etc(&self, name: &str, content: &str) {
        let etc = self.root.path().join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join(name), content).unwrap();
    }

    /// What the jail holds, relative paths, sorted.
    fn listing(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(base).unwrap().display().to_string());
                if p.is_dir() {
                    walk(&p, base, out);
                }
            }
        }
        let mut v = Vec::new();
        walk(self.root.path(), self.root.path(), &mut v);
        v.sort();
        v
    }

    /// The jail's binary with `args` and only `env`, chrooted as uid/gid 65532 (the
    /// workspace forbids `unsafe`, so no `pre_exec` chroot: coreutils' chroot does it).
    async fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = tokio::process::Command::new("/usr/sbin/chroot");
        cmd.arg(format!("--userspec={IMAGE_UID}:{IMAGE_UID}"))
            .arg(self.root.path())
            .arg(format!("/{}", self.program))
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .kill_on_drop(true);
        cmd.output().await.expect("run chroot")
    }
}

#[tokio::test]
async fn keyturn_init_renders_a_secret_in_an_empty_chroot() {
    let bao = OpenBao::start().await.unwrap();
    let value = canary("static-init");
    bao.api(
        "POST",
        "secret/data/shop/db",
        Some(json!({"data": {"password": value}})),
    )
    .await
    .unwrap();
    let token = bao.create_token(&["root"]).await.unwrap();
    let jail = Jail::new(&keyturn_init());
    let token_file = jail.file("token", &token);
    let key = jail.file("audit.key", AUDIT_KEY);
    let out = jail.dir("out");
    let manifest = jail.file(
        "manifest.yaml",
        &format!(
            "vault: {{ auth: token, token-file: {token_file} }}\nsecrets:\n  - {{ path: secret/data/shop/db, file: password, key: password }}\n"
        ),
    );
    // Vault by name, from /etc/hosts: the static glibc resolves it without NSS modules.
    jail.etc("hosts", "127.0.0.1 vault.keyturn.test\n");
    let addr = format!("http://vault.keyturn.test:{}", bao.port());
    let o = jail
        .run(
            &["--manifest", &manifest, "--out", &out, "--deadline", "20s"],
            &[
                ("VAULT_ADDR", &addr),
                ("KEYTURN_AUDIT_HMAC_KEY_FILE", &key),
                ("KEYTURN_LOG", "info"),
            ],
        )
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let written = jail.root.path().join("out/password");
    assert_eq!(std::fs::read_to_string(&written).unwrap(), value);
    let meta = std::fs::metadata(&written).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (IMAGE_UID, 0o400));
    // The audit events went to stdout (no audit file): the read, hashed, never the value.
    let events: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "secret.read" && e["outcome"] == "ok"),
        "{}",
        text(&o)
    );
    assert_absent("keyturn-init output", text(&o).as_bytes(), &[&value]);
    // Nothing else was needed: the jail holds only the binary and what the test wrote.
    assert_eq!(
        jail.listing(),
        [
            "audit.key",
            "etc",
            "etc/hosts",
            "keyturn-init",
            "manifest.yaml",
            "out",
            "out/password",
            "token"
        ]
    );
}

/// A DNS server on `127.0.0.1.x:53` answering every A query with 127.0.0.1 (and every other
/// query with no answer), for as long as the returned task runs; and its address.
async fn loopback_dns() -> (std::net::IpAddr, tokio::task::JoinHandle<()>) {
    let mut last = None;
    // A loopback address of its own, so that no other server on port 53 is in the way.
    for i in 0..20u8 {
        let ip = std::net::IpAddr::from([127, 53, (std::process::id() % 250) as u8, 10 + i]);
        match tokio::net::UdpSocket::bind((ip, 53)).await {
            Ok(sock) => {
                let task = tokio::spawn(async move {
                    let mut buf = [0u8; 512];
                    while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                        if let Some(answer) = dns_answer(&buf[..n]) {
                            let _ = sock.send_to(&answer, from).await;
                        }
                    }
                });
                return (ip, task);
            }
            Err(e) => last = Some(e),
        }
    }
    panic!("no loopback address for a DNS server: {last:?}");
}

/// The answer to one DNS query: its question back, and for type A one record, 127.0.0.1.
fn dns_answer(q: &[u8]) -> Option<Vec<u8>> {
    let mut i = 12;
    while *q.get(i)? != 0 {
        i += 1 + usize::from(q[i]);
    }
    let question_end = i + 5; // the name's 0, then type and class
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let a = qtype == 1;
    let mut r = Vec::with_capacity(question_end + 16);
    r.extend_from_slice(&q[..2]); // id
    r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(a), 0, 0, 0, 0]);
    r.extend_from_slice(q.get(12..question_end)?);
    if a {
        // A pointer to the question's name, type A, class IN, TTL 60, 4 bytes: 127.0.0.1.
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
    }
    Some(r)
}

#[tokio::test]
async fn keyturn_doctor_prints_its_checks_in_an_empty_chroot() {
    let bao = OpenBao::start().await.unwrap();
    let jail = Jail::new(&keyturn());
    let out = jail.dir("out");
    // Vault by a DNS name, as in a cluster: the static glibc's resolver asks the server
    // /etc/resolv.conf names.
    let (dns, server) = loopback_dns().await;
    jail.etc("resolv.conf", &format!("nameserver {dns}\n"));
    let addr = format!("http://vault.keyturn.test:{}", bao.port());
    let o = jail
        .run(
            &["doctor", "--init-out", &out],
            &[
                ("VAULT_ADDR", &addr),
                ("VAULT_TOKEN", bao.root_token()),
                ("KEYTURN_AUDIT_STDOUT", "true"),
            ],
        )
        .await;
    let s = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for l in s.lines() {
        assert!(
            l.starts_with("ok   ") || l.starts_with("skip "),
            "unexpected line {l:?}\n{}",
            text(&o)
        );
    }
    for check in [
        "ok   vault reachable: ",
        "ok   vault token: ",
        "ok   audit sink: stdout",
        "ok   init output: ",
        "ok   clock: ",
    ] {
        assert!(
            s.lines().any(|l| l.starts_with(check)),
            "no {check:?} line\n{}",
            text(&o)
        );
    }
    server.abort();
}

/// A `keyturn-init` run in `jail` against `addr` with a token file and a short deadline.
async fn init_against(jail: &Jail, addr: &str, extra_env: &[(&str, &str)]) -> Output {
    let token_file = jail.file("token", "not-a-real-token");
    let key = jail.file("audit.key", AUDIT_KEY);
    let manifest = format!(
        "{{vault: {{auth: token, token-file: {token_file}}}, secrets: [{{path: secret/data/x, file: x, key: k}}]}}"
    );
    let mut env = vec![
        ("VAULT_ADDR", addr),
        ("KEYTURN_AUDIT_HMAC_KEY_FILE", key.as_str()),
    ];
    env.extend_from_slice(extra_env);
    jail.run(
        &[
            "--manifest-inline",
            &manifest,
            "--out",
            "/out",
            "--deadline",
            "2s",
        ],
        &env,
    )
    .await
}

#[tokio::test]
async fn https_without_a_ca_bundle_names_the_certificate_and_vault_cacert() {
    // An https server whose CA is its own (the Kubernetes stand-in): no root the jail can
    // find signed it.
    let server = KubeStandin::start().await.unwrap();
    let addr = server.url();
    let jail = Jail::new(&keyturn_init());
    jail.dir("out");

    let o = init_against(&jail, &addr, &[]).await;
    let err = String::from_utf8_lossy(&o.stderr);
    // A configuration problem (64), not an outage (69): not retried until the deadline.
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    let last = err
        .lines()
        .rfind(|l| l.starts_with("keyturn-init: "))
        .unwrap_or_else(|| panic!("no failure line\n{}", text(&o)));
    assert!(
        last.contains(&format!("cannot trust {addr}"))
            && last.contains("invalid peer certificate: UnknownIssuer")
            && last.contains("set VAULT_CACERT"),
        "{last}"
    );
    assert!(!err.contains("is not an http:// or https:// URL"), "{err}");

    // keyturn doctor says the same about the same server.
    let jail2 = Jail::new(&keyturn());
    let o2 = jail2
        .run(
            &["doctor"],
            &[
                ("VAULT_ADDR", addr.as_str()),
                ("VAULT_TOKEN", "t"),
                ("KEYTURN_AUDIT_STDOUT", "true"),
            ],
        )
        .await;
    let s = String::from_utf8_lossy(&o2.stdout);
    assert_eq!(o2.status.code(), Some(1), "{}", text(&o2));
    let fail = s
        .lines()
        .find(|l| l.starts_with("FAIL vault reachable: "))
        .unwrap_or_else(|| panic!("{}", text(&o2)));
    // Named as a trust problem, not as an unreachable server.
    assert!(
        fail.contains(&format!("cannot trust {addr}"))
            && fail.contains("UnknownIssuer")
            && fail.contains("VAULT_CACERT"),
        "{fail}"
    );

    // Its CA in VAULT_CACERT: the handshake succeeds, and what fails is the stand-in not
    // being Vault.
    let ca = jail.file("ca.pem", &server.ca_pem());
    let o = init_against(&jail, &addr, &[("VAULT_CACERT", &ca)]).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !matches!(o.status.code(), Some(0 | 64 | 69)),
        "{}",
        text(&o)
    );
    assert!(!err.contains("certificate"), "{}", text(&o));

    // A VAULT_CACERT with no certificate in it: refused before any connection.
    let empty = jail.file("empty.pem", "");
    let o = init_against(&jail, &addr, &[("VAULT_CACERT", &empty)]).await;
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("VAULT_CACERT /empty.pem: no certificate in the file"),
        "{}",
        text(&o)
    );
}

// ---------------------------------------------------------------------------------------
// Containerfiles and images

fn containerfile(bin: &str) -> PathBuf {
    repo_root().join(format!("images/{bin}.Containerfile"))
}

fn hadolint(file: &Path) -> Output {
    Command::new(find("hadolint", "KEYTURN_HADOLINT").unwrap())
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn hadolint_passes_both_containerfiles_and_fails_a_bad_one() {
    for bin in ["keyturn", "keyturn-init"] {
        let o = hadolint(&containerfile(bin));
        assert!(o.status.success(), "{bin}: {}", text(&o));
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.Containerfile");
    std::fs::write(
        &bad,
        "FROM debian:latest\nRUN apt-get update && apt-get install -y curl\nCOPY keyturn /keyturn\n",
    )
    .unwrap();
    let o = hadolint(&bad);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{}", text(&o));
    // :latest, unpinned packages, no --no-install-recommends, no USER.
    assert!(out.contains("DL3007") && out.contains("DL3008"), "{out}");
}

/// A podman whose storage (vfs) lives in `dir`: nothing in the machine's own store is
/// touched, and tests building at once do not share one.
struct Podman {
    dir: tempfile::TempDir,
    program: PathBuf,
}

impl Podman {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            program: find("podman", "KEYTURN_PODMAN").unwrap(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Output {
        let o = Command::new(&self.program)
            .arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("TMPDIR", self.dir.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "podman {args:?}: {}", text(&o));
        o
    }

    /// Builds `images/BIN.Containerfile` with the static binary as the only file of the
    /// context, as dev/images.sh does; returns the image's `podman image inspect`.
    fn build(&self, bin: &str, binary: &Path) -> Value {
        let ctx = self.dir.path().join(format!("ctx-{bin}"));
        std::fs::create_dir(&ctx).unwrap();
        std::fs::copy(binary, ctx.join(bin)).unwrap();
        let tag = format!("localhost/{bin}:test");
        let file = containerfile(bin);
        self.cmd(&[
            "build",
            "--quiet",
            "--layers=false",
            "-f",
            file.to_str().unwrap(),
            "-t",
            &tag,
            ctx.to_str().unwrap(),
        ]);
        let o = self.cmd(&["image", "inspect", &tag]);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v[0].clone()
    }

    /// `(mode, size, path)` of every entry in the image's layers, from `podman save` of it
    /// as an OCI directory (no container is created or run).
    fn layer_entries(&self, bin: &str) -> Vec<(String, u64, String)> {
        let oci = self.dir.path().join(format!("oci-{bin}"));
        self.cmd(&[
            "save",
            "--format",
            "oci-dir",
            "-o",
            oci.to_str().unwrap(),
            &format!("localhost/{bin}:test"),
        ]);
        let blob = |digest: &str| {
            oci.join("blobs/sha256")
                .join(digest.strip_prefix("sha256:").unwrap())
        };
        let index: Value =
            serde_json::from_slice(&std::fs::read(oci.join("index.json")).unwrap()).unwrap();
        let manifest: Value = serde_json::from_slice(
            &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
        )
        .unwrap();
        let mut entries = Vec::new();
        for layer in manifest["layers"].as_array().unwrap() {
            let o = Command::new("tar")
                .arg("-tvf")
                .arg(blob(layer["digest"].as_str().unwrap()))
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", text(&o));
            for l in String::from_utf8_lossy(&o.stdout).lines() {
                // -rwxr-xr-x 0/0 11700656 2026-01-01 00:00 keyturn-init
                let f: Vec<&str> = l.split_whitespace().collect();
                entries.push((f[0].to_owned(), f[2].parse().unwrap(), f[5..].join(" ")));
            }
        }
        entries
    }
}

/// Builds `bin`'s image and checks what every image must be; returns what podman says of it.
fn check_image(bin: &str, binary: &Path) -> Value {
    let podman = Podman::new();
    let image = podman.build(bin, binary);
    let config = &image["Config"];
    assert_eq!(config["User"], "65532:65532", "{image:#}");
    assert_eq!(
        config["Entrypoint"],
        json!([format!("/{bin}")]),
        "{image:#}"
    );
    let labels = &config["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], bin, "{labels}");
    assert_eq!(
        labels["org.opencontainers.image.licenses"], "Apache-2.0",
        "{labels}"
    );
    for key in [
        "org.opencontainers.image.description",
        "org.opencontainers.image.version",
        "org.opencontainers.image.revision",
    ] {
        assert!(labels[key].is_string(), "no {key}: {labels}");
    }
    // One layer holding the binary alone: no shell, no libraries, no CA bundle.
    let entries = podman.layer_entries(bin);
    let size = std::fs::metadata(binary).unwrap().len();
    assert_eq!(
        entries,
        [("-rwxr-xr-x".to_owned(), size, bin.to_owned())],
        "{bin}"
    );
    image
}

#[test]
fn the_keyturn_init_image_is_the_binary_alone_as_65532_within_12_mb() {
    let size = check_image("keyturn-init", &keyturn_init())["Size"]
        .as_u64()
        .unwrap();
    assert!(
        size <= INIT_IMAGE_MAX,
        "the keyturn-init image is {size} bytes, over {INIT_IMAGE_MAX}"
    );
}

#[test]
fn the_keyturn_image_is_the_binary_alone_as_65532() {
    let image = check_image("keyturn", &keyturn());
    // The allocator's options the replicas benchmark measured (it reads them from the
    // Containerfile): what the image runs with is what BENCHMARKS.md's figures are of.
    let env: Vec<&str> = image["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for var in ["MIMALLOC_ARENA_EAGER_COMMIT=0", "MIMALLOC_PURGE_DELAY=0"] {
        assert!(
            env.contains(&var),
            "{var} not in the image's environment: {env:?}"
        );
    }
}

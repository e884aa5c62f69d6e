//! keyturn's own binaries, built for the end-to-end tests that run them as real processes.
//!
//! A test binary of this crate cannot use `CARGO_BIN_EXE_*` for another package's binary, so
//! the first call builds it with cargo into the test's own target directory and profile (a
//! no-op when it is up to date). `KEYTURN_INIT_BIN` / `KEYTURN_BIN` override the path, to
//! test a release or static build.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn build(package: &str, bin: &str, features: &[&str], env_override: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_override) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("TARGET/PROFILE/deps/TEST");
    let target = profile_dir.parent().expect("TARGET");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    let profile = if profile == "debug" { "dev" } else { profile };
    let mut cmd = std::process::Command::new(env!("CARGO"));
    cmd.args([
        "build",
        "--quiet",
        "-p",
        package,
        "--bin",
        bin,
        "--profile",
        profile,
    ]);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    let status = cmd
        .arg("--target-dir")
        .arg(target)
        .current_dir(crate::tools::repo_root())
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build -p {package} failed");
    profile_dir.join(bin)
}

/// `keyturn-init`.
///
/// # Panics
/// When it cannot be built.
pub fn keyturn_init() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build("keyturn-init", "keyturn-init", &[], "KEYTURN_INIT_BIN"))
        .clone()
}

/// `keyturn`, with the test-only crash points (`KEYTURN_CRASH_AFTER=<step>`) compiled in.
///
/// # Panics
/// When it cannot be built.
pub fn keyturn() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build("keyturn-agent", "keyturn", &["crash-points"], "KEYTURN_BIN"))
        .clone()
}

/// `keyturn-kube-standin`, the Kubernetes API stand-in as a process (its own package, so
/// built like keyturn's). `KEYTURN_KUBE_STANDIN_BIN` overrides the path.
///
/// # Panics
/// When it cannot be built.
pub fn kube_standin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        build(
            "keyturn-kube-standin",
            "keyturn-kube-standin",
            &[],
            "KEYTURN_KUBE_STANDIN_BIN",
        )
    })
    .clone()
}

/// The static build's target triple, given explicitly so that only the binaries get
/// `+crt-static`: build scripts and proc-macros are built for the host and stay dynamic.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The static build's profile (Cargo.toml): release, plus fat LTO in one codegen unit and
/// opt-level "s".
pub const STATIC_PROFILE: &str = "image";

/// The static build's `RUSTFLAGS`: glibc linked statically (a static-pie binary).
pub const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static";

/// The static builds of `keyturn` and `keyturn-init` that the images ship, as
/// `(keyturn, keyturn-init)`.
///
/// Built with exactly dev/build-static.sh's command (one cargo call for both binaries, so
/// features unify the same way; the same `RUSTFLAGS`, target and profile) into `static/`
/// inside the test's own target directory (`target/static`, or `$CARGO_TARGET_DIR/static`),
/// which is where the script builds: after it (dev/test.sh runs it before the tests) this is
/// a no-op. The static build has a target directory of its own because its `RUSTFLAGS`
/// differ: in the main one each switch would rebuild everything. `KEYTURN_STATIC_DIR` names
/// a directory holding both binaries instead.
///
/// # Panics
/// When they cannot be built.
pub fn static_bins() -> (PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| {
        let dir = match std::env::var_os("KEYTURN_STATIC_DIR") {
            Some(d) => PathBuf::from(d),
            None => build_static(),
        };
        (dir.join("keyturn"), dir.join("keyturn-init"))
    })
    .clone()
}

/// Runs dev/build-static.sh's cargo command; returns the directory the binaries are in.
fn build_static() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("TARGET/PROFILE/deps/TEST")
        .join("static");
    let status = std::process::Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "--profile",
            STATIC_PROFILE,
            "--locked",
            "--target",
            STATIC_TARGET,
            "-p",
            "keyturn-agent",
            "--bin",
            "keyturn",
            "-p",
            "keyturn-init",
            "--bin",
            "keyturn-init",
        ])
        .arg("--target-dir")
        .arg(&target)
        // CARGO_ENCODED_RUSTFLAGS would win over RUSTFLAGS.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", STATIC_RUSTFLAGS)
        .current_dir(crate::tools::repo_root())
        .status()
        .expect("run cargo build");
    assert!(
        status.success(),
        "the static build failed (dev/build-static.sh)"
    );
    target.join(STATIC_TARGET).join(STATIC_PROFILE)
}

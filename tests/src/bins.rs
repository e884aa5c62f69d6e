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

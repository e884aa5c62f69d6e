//! What the tests that run the `keyturn` binary against a real OpenBao share: a token holding
//! only the repository's agent policy, a home directory with a policy directory and an audit
//! HMAC key, and the `keyturn` command with a cleared environment.

use std::path::Path;
use std::process::Command;

use crate::openbao::OpenBao;

/// The agent's own Vault policy, relative to the repository root.
pub const AGENT_POLICY: &str = "policies/vault/keyturn-agent.hcl";

/// Writes the repository's Vault policy `file` (relative to the repository root) into `bao`
/// as `name`.
///
/// # Panics
/// When the file cannot be read or OpenBao refuses it.
pub async fn put_repo_policy(bao: &OpenBao, name: &str, file: &str) {
    let hcl = std::fs::read_to_string(crate::tools::repo_root().join(file)).unwrap();
    bao.put_policy(name, &hcl).await.unwrap();
}

/// A token holding only [`AGENT_POLICY`] (as `keyturn-agent`) and Vault's `default`.
///
/// # Panics
/// When OpenBao refuses.
pub async fn agent_token(bao: &OpenBao) -> String {
    put_repo_policy(bao, "keyturn-agent", AGENT_POLICY).await;
    bao.create_token(&["keyturn-agent"]).await.unwrap()
}

/// A fresh home directory for `keyturn`: an empty `policies/` and a 32-byte `hmac.key` of
/// `key_byte`s.
///
/// # Panics
/// When the temp directory cannot be written.
pub fn home(key_byte: u8) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("hmac.key"), [key_byte; 32]).unwrap();
    dir
}

/// `keyturn ARGS` with a cleared environment but for `PATH`, `HOME` (`home`), `VAULT_ADDR`,
/// `VAULT_TOKEN` and `KEYTURN_POLICIES` (`home/policies`). Callers add the rest (audit,
/// holder, log level).
pub fn keyturn(args: &[&str], home: &Path, vault_addr: &str, token: &str) -> Command {
    let mut c = Command::new(crate::bins::keyturn());
    c.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("VAULT_ADDR", vault_addr)
        .env("VAULT_TOKEN", token)
        .env("KEYTURN_POLICIES", home.join("policies"));
    c
}

/// Writes `policies/NAME.yaml`: a rotation policy every 24h of a generated value stored at
/// `keyturn/NAME`, with `extra` (YAML under `spec:`) appended.
///
/// # Panics
/// When the file cannot be written.
pub fn write_generated_policy(policies: &Path, name: &str, extra: &str) {
    std::fs::write(
        policies.join(format!("{name}.yaml")),
        format!(
            "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: {name} }}\nspec:\n  every: 24h\n  store: {{ vault-kv: {{ path: keyturn/{name} }} }}\n  target: {{ generated: {{}} }}\n{extra}"
        ),
    )
    .unwrap();
}

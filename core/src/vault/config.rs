//! Where to find Vault and who to be: the `VAULT_*` environment, as the Vault CLI reads it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::SecretValue;

/// The Vault CLI's default address, used when `VAULT_ADDR` is unset.
pub const DEFAULT_ADDR: &str = "https://127.0.0.1:8200";

/// Client-side configuration problems, found before any network call.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The address is not an http(s) URL.
    #[error(
        "{source_name}: {} is not an http:// or https:// URL",
        crate::text::echo(addr)
    )]
    BadAddress {
        /// Where the address came from (`VAULT_ADDR`, a manifest field, …).
        source_name: String,
        /// The address as given (an address is not a secret).
        addr: String,
    },
    /// The address carries credentials (`https://user:password@vault`): every message and
    /// log line about a request names the address, so the password would follow it. The
    /// address is not echoed.
    #[error(
        "{source_name}: a Vault address must not carry credentials (user:password@); keyturn logs in with an auth method or a token"
    )]
    AddressWithCredentials {
        /// Where the address came from.
        source_name: String,
    },
    /// The CA bundle cannot be read.
    #[error("VAULT_CACERT {path}: {cause}")]
    CaCert {
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        cause: String,
    },
    /// An https address and not one CA certificate to verify the server with: the system has
    /// none, keyturn's built-in roots are empty, and `VAULT_CACERT` is unset (see `tls.rs`).
    #[error(
        "no CA certificates to verify Vault's server certificate with: set VAULT_CACERT to a PEM bundle of the CA that signed it"
    )]
    NoCaCertificates,
    /// The HTTP client cannot be set up (a client certificate, proxy or root reqwest
    /// refuses).
    #[error("Vault HTTP client: {cause}")]
    HttpClient {
        /// reqwest's description.
        cause: String,
    },
    /// A flag-like variable has a value that is neither true nor false.
    #[error("{name}: {value:?} is not a boolean (use true/false/1/0)")]
    BadBool {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// A credential file for an auth method cannot be read.
    #[error("{what} {path}: {cause}")]
    CredentialFile {
        /// Which credential (`service account token`, `jwt`, `secret-id`, `~/.vault-token`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it cannot be read (an I/O error; never its content).
        cause: String,
    },
    /// A required setting is absent.
    #[error("missing {what}")]
    Missing {
        /// Which setting.
        what: &'static str,
    },
    /// No token was found for token auth.
    #[error("no Vault token: set VAULT_TOKEN or write one to ~/.vault-token")]
    NoToken,
}

impl crate::exit::HasExitCode for ConfigError {
    /// Vault's configuration and the credential files are read before any network call: 64.
    fn exit_code(&self) -> crate::exit::ExitCode {
        crate::exit::ExitCode::Usage
    }
}

/// How to reach Vault. Build it with [`VaultConfig::from_env`], adjust, then hand it to
/// [`super::Vault::connect`].
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// Base URL, e.g. `http://127.0.0.1:8200`.
    pub addr: String,
    /// Enterprise/OpenBao namespace (`X-Vault-Namespace`).
    pub namespace: Option<String>,
    /// A PEM bundle of CAs to trust for an https address.
    pub ca_cert: Option<PathBuf>,
    /// Accept any server certificate (`VAULT_SKIP_VERIFY`); a warning is logged.
    pub skip_verify: bool,
    /// A token to start with (`VAULT_TOKEN`, else `~/.vault-token`), if any.
    pub token: Option<SecretValue>,
    /// Per-request timeout, so one hung request cannot eat a whole deadline.
    pub request_timeout: Duration,
}

impl VaultConfig {
    /// Reads `VAULT_ADDR`, `VAULT_NAMESPACE`, `VAULT_CACERT`, `VAULT_SKIP_VERIFY`,
    /// `VAULT_TOKEN` and `~/.vault-token` from the process environment.
    ///
    /// # Errors
    /// A malformed address or boolean, an unreadable CA file or token file.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(
            |k| std::env::var(k).ok(),
            std::env::var_os("HOME").map(PathBuf::from),
        )
    }

    /// [`VaultConfig::from_env`] over any variable source, so tests need not touch the
    /// process environment (which is shared between parallel tests).
    ///
    /// # Errors
    /// As [`VaultConfig::from_env`].
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
        home: Option<PathBuf>,
    ) -> Result<Self, ConfigError> {
        let addr = get("VAULT_ADDR")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_ADDR.into());
        check_addr("VAULT_ADDR", &addr)?;
        let ca_cert = get("VAULT_CACERT")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        if let Some(p) = &ca_cert {
            std::fs::metadata(p).map_err(|e| ConfigError::CaCert {
                path: p.clone(),
                cause: e.to_string(),
            })?;
        }
        let skip_verify = match get("VAULT_SKIP_VERIFY") {
            None => false,
            Some(v) => parse_bool("VAULT_SKIP_VERIFY", &v)?,
        };
        let token = match get("VAULT_TOKEN").filter(|s| !s.is_empty()) {
            Some(t) => Some(SecretValue::from(t)),
            None => match home {
                Some(h) => read_token_file(&h.join(".vault-token"))?,
                None => None,
            },
        };
        Ok(Self {
            addr,
            namespace: get("VAULT_NAMESPACE").filter(|s| !s.is_empty()),
            ca_cert,
            skip_verify,
            token,
            request_timeout: Duration::from_secs(30),
        })
    }

    /// A configuration for `addr` with no token and defaults for the rest.
    ///
    /// # Errors
    /// When `addr` is not an http(s) URL.
    pub fn for_addr(addr: &str) -> Result<Self, ConfigError> {
        check_addr("address", addr)?;
        Ok(Self {
            addr: addr.to_owned(),
            namespace: None,
            ca_cert: None,
            skip_verify: false,
            token: None,
            request_timeout: Duration::from_secs(30),
        })
    }
}

/// Checks that `addr` is an http(s) URL with a host.
///
/// # Errors
/// [`ConfigError::BadAddress`] naming `source_name`.
pub fn check_addr(source_name: &str, addr: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::BadAddress {
        source_name: source_name.into(),
        addr: addr.into(),
    };
    // First: every other error echoes the address, and a password in it must not follow.
    if has_userinfo(addr) {
        return Err(ConfigError::AddressWithCredentials {
            source_name: source_name.into(),
        });
    }
    let rest = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .ok_or_else(bad)?;
    if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok(())
}

/// Whether a URL's authority carries credentials (`user:password@host`).
fn has_userinfo(addr: &str) -> bool {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    rest.split(['/', '?', '#'])
        .next()
        .is_some_and(|authority| authority.contains('@'))
}

fn parse_bool(name: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "yes" => Ok(true),
        "" | "0" | "f" | "false" | "no" => Ok(false),
        _ => Err(ConfigError::BadBool {
            name,
            value: v.to_owned(),
        }),
    }
}

/// Reads a token file as the Vault CLI does (trimmed). A missing file is no token.
fn read_token_file(path: &Path) -> Result<Option<SecretValue>, ConfigError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let v = SecretValue::new(bytes);
            let trimmed = v.expose().trim_ascii();
            Ok((!trimmed.is_empty()).then(|| SecretValue::new(trimmed.to_vec())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError::CredentialFile {
            what: "~/.vault-token",
            path: path.to_owned(),
            cause: e.to_string(),
        }),
    }
}

/// Reads a whole credential file (a JWT, a secret-id) into zeroizing storage, trimmed.
///
/// # Errors
/// [`ConfigError::CredentialFile`] naming the file and the I/O error.
pub fn read_credential_file(what: &'static str, path: &Path) -> Result<SecretValue, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| ConfigError::CredentialFile {
        what,
        path: path.to_owned(),
        cause: e.to_string(),
    })?;
    let v = SecretValue::new(bytes);
    Ok(SecretValue::new(v.expose().trim_ascii().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)], home: Option<PathBuf>) -> Result<VaultConfig, ConfigError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        VaultConfig::from_lookup(|k| m.get(k).cloned(), home)
    }

    #[test]
    fn reads_the_vault_cli_variables() {
        let c = cfg(
            &[
                ("VAULT_ADDR", "http://127.0.0.1:9"),
                ("VAULT_NAMESPACE", "team-a"),
                ("VAULT_SKIP_VERIFY", "true"),
                ("VAULT_TOKEN", "s.abc"),
            ],
            None,
        )
        .unwrap();
        assert_eq!(c.addr, "http://127.0.0.1:9");
        assert_eq!(c.namespace.as_deref(), Some("team-a"));
        assert!(c.skip_verify);
        assert_eq!(c.token.unwrap().expose(), b"s.abc");
    }

    #[test]
    fn falls_back_to_the_token_file_in_home() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join(".vault-token"), "s.fromfile\n").unwrap();
        let c = cfg(&[], Some(home.path().to_owned())).unwrap();
        assert_eq!(c.addr, DEFAULT_ADDR);
        assert_eq!(c.token.unwrap().expose(), b"s.fromfile");
    }

    #[test]
    fn an_address_with_credentials_is_refused_without_echoing_them() {
        let e = check_addr("VAULT_ADDR", "https://admin:canary-pw@vault:8200").unwrap_err();
        assert!(matches!(e, ConfigError::AddressWithCredentials { .. }));
        assert!(e.to_string().starts_with("VAULT_ADDR:"), "{e}");
        assert!(!e.to_string().contains("canary-pw"), "{e}");
        // Whatever else is wrong with the address: the scheme is checked after.
        let e = check_addr("VAULT_ADDR", "htps://admin:canary-pw@vault").unwrap_err();
        assert!(!e.to_string().contains("canary-pw"), "{e}");
        // An @ in the path or query is not userinfo.
        assert!(check_addr("VAULT_ADDR", "https://vault:8200/x@y").is_ok());
    }

    #[test]
    fn rejects_a_malformed_address_naming_the_variable() {
        let e = cfg(&[("VAULT_ADDR", "127.0.0.1:8200")], None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "VAULT_ADDR: \"127.0.0.1:8200\" is not an http:// or https:// URL"
        );
    }

    #[test]
    fn rejects_a_missing_ca_file_naming_it() {
        let e = cfg(&[("VAULT_CACERT", "/nonexistent/ca.pem")], None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("VAULT_CACERT /nonexistent/ca.pem:"),
            "{e}"
        );
    }

    #[test]
    fn rejects_a_non_boolean_skip_verify() {
        let e = cfg(&[("VAULT_SKIP_VERIFY", "maybe")], None).unwrap_err();
        assert!(matches!(
            e,
            ConfigError::BadBool {
                name: "VAULT_SKIP_VERIFY",
                ..
            }
        ));
    }
}

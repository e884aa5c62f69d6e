//! Which CA certificates verify Vault's server certificate.
//!
//! keyturn ships as `FROM scratch` images with no CA bundle on disk. Before, an https
//! `VAULT_ADDR` there failed when the client was built, under a misleading "not an http:// or
//! https:// URL", because the platform verifier refuses to start with an empty system store.
//!
//! The choice (the rule in `crate::tls`, which every TLS client of keyturn shares): **built-in
//! roots as a fallback**, not an error. Most users of a scratch image
//! expect a Vault with a publicly trusted certificate (HCP Vault, a cloud load balancer) to
//! just work, and those with a private CA already set `VAULT_CACERT`, as for the Vault CLI. So:
//!
//! - the system has CA certificates (`SSL_CERT_FILE`, `SSL_CERT_DIR`, the distribution's
//!   bundle): they are used, as before, plus `VAULT_CACERT`'s;
//! - the system has none (a scratch image): the Mozilla root program's certificates compiled
//!   into keyturn (the `webpki-root-certs` crate, pinned in Cargo.toml so the set changes only
//!   with a deliberate update) stand in for the system's store, plus `VAULT_CACERT`'s;
//! - nothing at all to verify with (a build whose built-in set is empty): a typed
//!   [`ConfigError::NoCaCertificates`] naming `VAULT_CACERT`, exit 64, before any network call.
//!
//! A `VAULT_CACERT` file holding no certificate is refused ([`ConfigError::CaCert`]) rather
//! than ignored: whoever set it meant to trust something. A server whose certificate none of
//! these roots signed fails its handshake with "invalid peer certificate: UnknownIssuer" and a
//! hint to set `VAULT_CACERT` (see `error.rs`).
//!
//! `webpki-root-certs` rather than its sibling `webpki-roots` (same maintainers, same data):
//! reqwest's API takes whole certificates (`Certificate::from_der`), and `webpki-roots` holds
//! only trust anchors, which would mean building rustls' configuration by hand and with it
//! the client identity and `VAULT_SKIP_VERIFY` handling that reqwest does now.

use std::path::Path;

use super::config::ConfigError;

/// The roots a verifying https client trusts.
#[derive(Debug)]
pub(crate) enum Trust {
    /// The system's store (through reqwest's platform verifier) plus these, from
    /// `VAULT_CACERT`.
    System(Vec<reqwest::Certificate>),
    /// Exactly these: the built-in roots (the system has none) plus `VAULT_CACERT`'s.
    Only(Vec<reqwest::Certificate>),
}

impl Trust {
    /// Configures `b` to trust these roots.
    pub(crate) fn apply(self, b: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        match self {
            Self::System(extra) => b.tls_certs_merge(extra),
            Self::Only(certs) => b.tls_certs_only(certs),
        }
    }
}

/// The roots for a verifying https client: see the module's description.
///
/// # Errors
/// [`ConfigError::CaCert`] for a `VAULT_CACERT` file that cannot be read or holds no
/// certificate; [`ConfigError::NoCaCertificates`] when there is no root at all.
pub(crate) fn trust(ca_file: Option<&Path>) -> Result<Trust, ConfigError> {
    let extra = match ca_file {
        Some(p) => read_ca_file(p)?,
        None => Vec::new(),
    };
    // The rule every client shares (`crate::tls`): it reads the system's store with the same
    // loader (and `SSL_CERT_FILE`/`SSL_CERT_DIR`) as reqwest's platform verifier, so "the
    // system has roots" means the same to both.
    let roots = crate::tls::roots();
    choose(extra, !roots.built_in, &roots.certs)
}

/// [`trust`] with its inputs given, so every branch is testable.
fn choose(
    extra: Vec<reqwest::Certificate>,
    system_has_roots: bool,
    built_in: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<Trust, ConfigError> {
    if system_has_roots {
        return Ok(Trust::System(extra));
    }
    let mut certs = Vec::with_capacity(built_in.len() + extra.len());
    for der in built_in {
        // Only copies the bytes; rustls parses them when the client is built.
        certs.push(reqwest::Certificate::from_der(der.as_ref()).map_err(|e| {
            ConfigError::HttpClient {
                cause: format!("a built-in root certificate: {e}"),
            }
        })?);
    }
    certs.extend(extra);
    if certs.is_empty() {
        return Err(ConfigError::NoCaCertificates);
    }
    // Which set is in use is logged once, by `crate::tls::roots`.
    Ok(Trust::Only(certs))
}

/// The certificates of a `VAULT_CACERT` PEM bundle: at least one.
fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, ConfigError> {
    let ca = |cause: &str| ConfigError::CaCert {
        path: path.to_owned(),
        cause: cause.to_owned(),
    };
    let pem = std::fs::read(path).map_err(|e| ca(&e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|_| ca("not a PEM certificate bundle"))?;
    if certs.is_empty() {
        return Err(ca(
            "no certificate in the file (expected PEM \"BEGIN CERTIFICATE\" blocks)",
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{ExitCode, HasExitCode};

    fn a_cert() -> reqwest::Certificate {
        reqwest::Certificate::from_der(webpki_root_certs::TLS_SERVER_ROOT_CERTS[0].as_ref())
            .unwrap()
    }

    #[test]
    fn the_system_store_is_used_when_it_has_roots() {
        let t = choose(
            vec![a_cert()],
            true,
            webpki_root_certs::TLS_SERVER_ROOT_CERTS,
        )
        .unwrap();
        assert!(matches!(t, Trust::System(extra) if extra.len() == 1));
    }

    #[test]
    fn without_system_roots_the_built_in_ones_stand_in_plus_vault_cacert() {
        let built_in = webpki_root_certs::TLS_SERVER_ROOT_CERTS;
        assert!(built_in.len() > 50, "the Mozilla set is compiled in");
        let t = choose(vec![a_cert()], false, built_in).unwrap();
        assert!(matches!(t, Trust::Only(c) if c.len() == built_in.len() + 1));
        let t = choose(Vec::new(), false, built_in).unwrap();
        assert!(matches!(t, Trust::Only(c) if c.len() == built_in.len()));
    }

    #[test]
    fn vault_cacert_alone_is_enough_without_any_other_root() {
        let t = choose(vec![a_cert()], false, &[]).unwrap();
        assert!(matches!(t, Trust::Only(c) if c.len() == 1));
    }

    #[test]
    fn no_root_at_all_is_a_configuration_error_naming_vault_cacert() {
        let e = choose(Vec::new(), false, &[]).unwrap_err();
        assert!(matches!(e, ConfigError::NoCaCertificates));
        assert!(e.to_string().contains("set VAULT_CACERT"), "{e}");
        assert_eq!(e.exit_code(), ExitCode::Usage);
        assert_eq!(u8::from(e.exit_code()), 64);
    }

    #[test]
    fn the_built_in_roots_build_a_verifying_client() {
        let b = reqwest::ClientBuilder::new().tls_backend_rustls();
        let t = choose(Vec::new(), false, webpki_root_certs::TLS_SERVER_ROOT_CERTS).unwrap();
        t.apply(b).build().unwrap();
    }

    #[test]
    fn a_vault_cacert_without_a_certificate_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = read_ca_file(&empty).unwrap_err();
        assert!(matches!(e, ConfigError::CaCert { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("VAULT_CACERT {}:", empty.display())),
            "{e}"
        );
        assert!(e.to_string().contains("no certificate"), "{e}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = read_ca_file(&garbage).unwrap_err();
        assert!(
            e.to_string().contains("not a PEM certificate bundle"),
            "{e}"
        );
    }
}

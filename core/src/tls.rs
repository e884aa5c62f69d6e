//! The one rule for which root certificates keyturn's TLS clients trust when nothing more
//! specific is configured (a Vault `VAULT_CACERT`, a target's `ca-file`).
//!
//! keyturn ships as `FROM scratch` images with no CA bundle on disk. Every client (Vault, the
//! PostgreSQL and MySQL targets, AWS Secrets Manager) follows the same rule, so an image
//! verifies the same servers whichever client talks to them:
//!
//! - the system has CA certificates (`SSL_CERT_FILE`, `SSL_CERT_DIR`, the distribution's
//!   bundle): those, as on any normal machine;
//! - it has none (a scratch image): the Mozilla root program's certificates compiled into
//!   keyturn (`webpki-root-certs`, pinned in the workspace Cargo.toml so the set changes
//!   only with a deliberate update).
//!
//! The system's store is read once per process ([`roots`]): reading it parses every file of
//! the bundle, and a process that changed its answer halfway would trust different servers
//! from one connection to the next.

use std::sync::OnceLock;

use rustls::pki_types::CertificateDer;

/// keyturn's built-in roots: the Mozilla root program's, compiled in.
pub const BUILT_IN: &[CertificateDer<'static>] = webpki_root_certs::TLS_SERVER_ROOT_CERTS;

/// The root certificates to trust, and where they come from.
#[derive(Debug)]
pub struct Roots {
    /// The certificates (DER).
    pub certs: Vec<CertificateDer<'static>>,
    /// `true` when these are keyturn's built-in roots because the system has none.
    pub built_in: bool,
}

/// The roots for this process: the system's, else the built-in ones. Read on first use,
/// logged once at info with which set it is.
pub fn roots() -> &'static Roots {
    static ROOTS: OnceLock<Roots> = OnceLock::new();
    ROOTS.get_or_init(|| {
        // The same loader as reqwest's platform verifier and the AWS SDK's, so "the system
        // has roots" means the same to every client.
        let system = rustls_native_certs::load_native_certs();
        for e in &system.errors {
            tracing::warn!(error = %e, "could not load some of the system's CA certificates");
        }
        let r = choose(system.certs, BUILT_IN);
        if r.built_in {
            tracing::info!(
                roots = r.certs.len(),
                "no CA certificates on this system: TLS clients trust keyturn's built-in \
                 Mozilla roots"
            );
        } else {
            tracing::info!(
                roots = r.certs.len(),
                "TLS clients trust the system's CA certificates"
            );
        }
        r
    })
}

/// [`roots`] with its inputs given (the system's certificates as loaded, and the built-in
/// set), so both branches are testable without touching the machine's store.
#[must_use]
pub fn choose(system: Vec<CertificateDer<'static>>, built_in: &[CertificateDer<'static>]) -> Roots {
    if system.is_empty() {
        Roots {
            certs: built_in.to_vec(),
            built_in: true,
        }
    } else {
        Roots {
            certs: system,
            built_in: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_systems_roots_are_used_when_it_has_some() {
        let system = vec![BUILT_IN[1].clone()];
        let r = choose(system.clone(), BUILT_IN);
        assert!(!r.built_in);
        assert_eq!(r.certs, system);
    }

    #[test]
    fn without_system_roots_the_built_in_ones_stand_in() {
        let r = choose(Vec::new(), BUILT_IN);
        assert!(r.built_in);
        assert!(r.certs.len() > 50, "the Mozilla set is compiled in");
        assert_eq!(r.certs, BUILT_IN);
    }

    #[test]
    fn the_process_wide_set_is_never_empty_and_read_once() {
        let r = roots();
        assert!(!r.certs.is_empty());
        assert!(std::ptr::eq(r, roots()));
    }
}

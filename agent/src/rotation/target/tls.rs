//! TLS for the targets that speak their own wire protocol (PostgreSQL, MySQL/MariaDB): one
//! set of modes with libpq's names and meanings, and the rustls pieces they share.
//!
//! In `prefer` and `require` the server's certificate is not checked (as with libpq): the
//! link is encrypted against a passive listener; the handshake signatures are still checked,
//! so the peer holds the key of the certificate it shows, which is what PostgreSQL's SCRAM
//! channel binding relies on to defeat a man in the middle. `verify-full` checks the chain
//! (against a configured CA, else the system's roots or, where it has none, keyturn's
//! built-in ones) and the host name.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use keyturn_core::text::echo;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::policy::{S, Validator};

/// How the connection to the server is protected; the names and meanings are libpq's
/// `sslmode` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, else plaintext.
    #[default]
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS with the certificate chain checked against the configured CA (else the default
    /// roots) and the host name matched.
    VerifyFull,
}

impl FromStr for TlsMode {
    type Err = TlsConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-full" => Ok(Self::VerifyFull),
            other => Err(TlsConfigError::UnknownMode(other.to_owned())),
        }
    }
}

/// TLS settings that cannot be used. Found at configuration time, before any connection.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A mode name that is not one of libpq's that keyturn supports.
    #[error("unknown TLS mode {0:?} (disable, prefer, require or verify-full)")]
    UnknownMode(String),
    /// The CA bundle holds no usable certificate.
    #[error("CA bundle: {0}")]
    BadCa(String),
}

/// A target's `tls:` and `ca-file:`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSpec {
    /// How the connections are protected (`prefer`).
    pub mode: TlsMode,
    /// The CA bundle `verify-full` trusts instead of the default roots.
    pub ca_file: Option<PathBuf>,
}

impl TlsSpec {
    /// Validates a target's `tls` and `ca-file`, found under `field`. A CA file without
    /// `verify-full` is an error: no other mode checks certificates, so it would be a
    /// promise keyturn does not keep.
    pub(crate) fn validate(
        v: &mut Validator<'_>,
        tls: Option<&S<String>>,
        ca_file: Option<&S<String>>,
        field: &str,
    ) -> Self {
        let mode = match tls {
            None => TlsMode::default(),
            Some(t) => t.value.parse().unwrap_or_else(|_| {
                v.err(
                    t,
                    &format!("{field}.tls"),
                    format!(
                        "unknown TLS mode {} (disable, prefer, require or verify-full)",
                        echo(&t.value)
                    ),
                );
                TlsMode::default()
            }),
        };
        if let Some(ca) = ca_file {
            if ca.value.trim().is_empty() || ca.value.contains('\0') {
                v.err(ca, &format!("{field}.ca-file"), "must be a file path");
            } else if mode != TlsMode::VerifyFull {
                v.err(
                    ca,
                    &format!("{field}.ca-file"),
                    "is only used with tls: verify-full (other modes do not check certificates)",
                );
            }
        }
        Self {
            mode,
            ca_file: ca_file.map(|c| PathBuf::from(&c.value)),
        }
    }
}

/// The certificates of a PEM bundle (a CA file).
///
/// # Errors
/// When `pem` holds no parsable certificate.
pub fn ca_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::BadCa(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsConfigError::BadCa("no certificate found".into()));
    }
    Ok(certs)
}

/// The roots `verify-full` trusts without a `ca-file`: the system's, else keyturn's built-in
/// ones (a scratch image has no CA bundle on disk); the rule and its once-per-process read
/// are `keyturn_core::tls`'s, shared with the Vault and AWS clients.
pub fn default_roots() -> &'static [CertificateDer<'static>] {
    &keyturn_core::tls::roots().certs
}

/// `prefer`/`require`: encrypt, do not authenticate the server's certificate (see the module
/// docs).
#[derive(Debug)]
pub struct EncryptOnly(pub Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_modes_parse_by_their_libpq_names() {
        assert_eq!(
            "verify-full".parse::<TlsMode>().unwrap(),
            TlsMode::VerifyFull
        );
        assert_eq!("prefer".parse::<TlsMode>().unwrap(), TlsMode::Prefer);
        assert!("verify-ca".parse::<TlsMode>().is_err());
    }

    #[test]
    fn a_ca_bundle_without_certificates_is_rejected() {
        assert!(ca_certificates(b"not a pem").is_err());
        assert!(ca_certificates(b"").is_err());
    }
}

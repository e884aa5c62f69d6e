//! The webhook's serving certificate, swapped live.
//!
//! Two sources ([`super::TlsSource`]):
//!
//! - **In-memory CA** (the default): at start keyturn makes a CA (ECDSA P-256, valid
//!   [`CA_VALIDITY`] less a random part of [`CA_VALIDITY_JITTER`], so replicas started
//!   together do not all ask to be restarted on the same day) that exists only in this
//!   process's memory, never on disk, and signs with
//!   it a short-lived serving certificate (`--cert-validity`, 24 h by default) for the Service's
//!   names (`NAME`, `NAME.NS`, `NAME.NS.svc`, `NAME.NS.svc.cluster.local`). A task issues a
//!   fresh one at half its life. Nothing secret is ever stored: a replica that restarts makes
//!   a new CA, and `cabundle` puts it in the MutatingWebhookConfiguration.
//! - **Files** (`--tls-cert`, `--tls-key`; cert-manager): the files are read every
//!   [`FILE_POLL`] and loaded when either's content changed. A pair that does not load (a half-written
//!   rotation, a key that does not match) is logged, naming the file, and the previous pair
//!   keeps serving.
//!
//! Either way the certificate is served through a [`ResolvesServerCert`] that hands each new
//! handshake the current one: a swap changes what new connections get, and connections
//! already open keep theirs (TLS 1.3 never re-authenticates the server mid-connection).
//!
//! Private keys: the PKCS#8 bytes keyturn handles are zeroized ([`Zeroizing`]) and a file's
//! key is read into a zeroizing buffer; the signing keys rustls and rcgen hold are aws-lc
//! objects, which aws-lc cleanses when freed. rcgen keeps its own serialized copy of a key
//! pair it generated, which it does not zeroize.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use zeroize::Zeroizing;

use super::metrics::WebhookMetrics;

/// The in-memory CA's validity. Its serving certificates never outlive it; `/healthz` fails
/// once it has less than [`CA_RESTART_BEFORE`] left, so the kubelet restarts the replica,
/// which makes a new CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Up to how much each process takes off [`CA_VALIDITY`], at random: replicas started
/// together (a fresh install, a cluster restored at once) would otherwise all reach
/// [`CA_RESTART_BEFORE`] in the same probe period and fail `/healthz` together, leaving the
/// API server no webhook to call until their successors are ready. Spread over 30 days,
/// their restarts are days apart.
pub const CA_VALIDITY_JITTER: Duration = Duration::from_secs(30 * 24 * 3600);

/// The in-memory CA's validity for a draw `r` from the process's random numbers:
/// [`CA_VALIDITY`] less `r` seconds modulo [`CA_VALIDITY_JITTER`] (so between 335 and 365
/// days).
fn ca_validity(r: u64) -> Duration {
    CA_VALIDITY - Duration::from_secs(r % (CA_VALIDITY_JITTER.as_secs() + 1))
}

/// How long before the in-memory CA's end the replica asks to be restarted.
pub const CA_RESTART_BEFORE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How often certificate files are checked for a change.
pub const FILE_POLL: Duration = Duration::from_secs(5);

/// Certificates start this long in the past: API servers whose clocks run a little behind
/// this replica's must not see a certificate from the future.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// The shortest serving-certificate validity: renewal at half life must not spin.
pub const MIN_VALIDITY: Duration = Duration::from_secs(60);

/// Why a certificate could not be made or loaded. Messages name files, never their content.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen could not make a key or sign a certificate.
    #[error("cannot make the webhook's {what}: {source}")]
    Generate {
        /// `CA`, `serving certificate`.
        what: &'static str,
        /// rcgen's reason.
        source: rcgen::Error,
    },
    /// A certificate or key file could not be read.
    #[error("cannot read {flag} {path}: {source}")]
    Read {
        /// `--tls-cert` or `--tls-key`.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("--tls-cert {path}: no PEM certificate in the file ({reason})")]
    NoCertificate {
        /// The file.
        path: PathBuf,
        /// What the PEM reader found.
        reason: String,
    },
    /// The key file holds no PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[error("--tls-key {path}: no PEM private key in the file ({reason})")]
    NoKey {
        /// The file.
        path: PathBuf,
        /// What the PEM reader found (never key material).
        reason: String,
    },
    /// rustls refused the pair: an unsupported key type, or a key that does not match the
    /// certificate.
    #[error("--tls-key {key} does not fit --tls-cert {cert}: {source}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// The certificate's validity period could not be decoded.
    #[error("--tls-cert {path}: not an X.509 certificate: {reason}")]
    Undecodable {
        /// The file.
        path: PathBuf,
        /// The DER decoder's reason.
        reason: String,
    },
    /// The serving names do not make a certificate (an invalid `--service` or namespace).
    #[error("{name:?} is not a DNS name a certificate can hold: {source}")]
    Name {
        /// The name.
        name: String,
        /// rcgen's reason.
        source: rcgen::Error,
    },
    /// The in-memory certificate's key did not load into rustls (a bug).
    #[error("cannot load the webhook's serving key: {source}")]
    Load {
        /// rustls' reason.
        source: rustls::Error,
    },
}

/// Hands each TLS handshake the current certificate.
#[derive(Debug)]
pub struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Resolver {
    fn new(first: Arc<CertifiedKey>) -> Self {
        Self {
            current: RwLock::new(first),
        }
    }

    /// The certificate new handshakes get.
    #[must_use]
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn swap(&self, next: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The in-memory CA and the names its serving certificates carry.
struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pem: String,
    not_after: SystemTime,
    names: Vec<String>,
    validity: Duration,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("names", &self.names)
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

/// Where certificates come from, and what maintaining them needs.
#[derive(Debug)]
enum Source {
    InMemory(Box<Ca>),
    Files {
        cert: PathBuf,
        key: PathBuf,
        poll: Duration,
        /// The files' digests when they were loaded at start (taken before reading them, so
        /// a change in between is seen as one).
        loaded: (Stamp, Stamp),
    },
}

/// The serving certificate: its resolver, its source and its expiry gauge.
#[derive(Debug, Clone)]
pub struct Certs {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    resolver: Arc<Resolver>,
    source: Source,
    /// The current certificate's notAfter.
    expiry: RwLock<SystemTime>,
    metrics: WebhookMetrics,
}

/// The crypto provider every TLS object here uses: named rather than the process default, as
/// a binary may link both of rustls' providers (then there is no default).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The names a serving certificate for Service `service` in `namespace` carries.
#[must_use]
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

fn to_offset(t: SystemTime) -> time::OffsetDateTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Ca {
    fn new(service: &str, namespace: &str, validity: Duration) -> Result<Self, CertError> {
        let generate = |source| CertError::Generate { what: "CA", source };
        let names = service_names(service, namespace);
        let now = SystemTime::now();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        // The Service in the name, so an operator reading the caBundle knows whose it is.
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("keyturn webhook CA ({service}.{namespace})"),
        );
        let not_after = now + ca_validity(rand::random());
        params.not_before = to_offset(now - BACKDATE);
        params.not_after = to_offset(not_after);
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).map_err(generate)?;
        Ok(Self {
            pem: issuer.pem(),
            issuer,
            not_after,
            names,
            validity,
        })
    }

    /// A fresh serving certificate and key, and its notAfter.
    fn issue(&self) -> Result<(CertifiedKey, SystemTime), CertError> {
        let generate = |source| CertError::Generate {
            what: "serving certificate",
            source,
        };
        let now = SystemTime::now();
        let not_after = (now + self.validity).min(self.not_after);
        let mut params = rcgen::CertificateParams::new(self.names.clone()).map_err(|source| {
            CertError::Name {
                name: self.names.join(", "),
                source,
            }
        })?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, self.names[2].clone());
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = to_offset(now - BACKDATE);
        params.not_after = to_offset(not_after);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        let pkcs8 = Zeroizing::new(key.serialize_der());
        // Borrowed, so the only copy of the key's bytes keyturn made is the zeroizing one.
        let signing = rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(&PrivateKeyDer::Pkcs8(
            PrivatePkcs8KeyDer::from(pkcs8.as_slice()),
        ))
        .map_err(|source| CertError::Load { source })?;
        let chain = vec![cert.der().clone()];
        Ok((CertifiedKey::new(chain, signing), not_after))
    }
}

/// A digest of a file's content (`None` when it cannot be read), to notice a change. The
/// content rather than the modification time: two writes within the file system's timestamp
/// granularity, of equal length, would look alike.
type Stamp = Option<[u8; 32]>;

fn stamp(path: &Path) -> Stamp {
    use sha2::Digest as _;
    let bytes = Zeroizing::new(std::fs::read(path).ok()?);
    Some(sha2::Sha256::digest(bytes.as_slice()).into())
}

/// Loads a certificate chain and its key from PEM files; the chain's notAfter.
fn load_files(cert: &Path, key: &Path) -> Result<(CertifiedKey, SystemTime), CertError> {
    let cert_pem = std::fs::read(cert).map_err(|source| CertError::Read {
        flag: "--tls-cert",
        path: cert.to_owned(),
        source,
    })?;
    let key_pem = Zeroizing::new(std::fs::read(key).map_err(|source| CertError::Read {
        flag: "--tls-key",
        path: key.to_owned(),
        source,
    })?);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::NoCertificate {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(CertError::NoCertificate {
            path: cert.to_owned(),
            reason: "the file has no CERTIFICATE block".into(),
        });
    };
    let not_after = not_after(leaf).map_err(|reason| CertError::Undecodable {
        path: cert.to_owned(),
        reason,
    })?;
    // The PEM reader's errors name a section kind or an I/O failure, never the bytes.
    let mut private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertError::NoKey {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let pair = |source| CertError::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    // Loaded from a borrow, so `private` can be zeroized here whatever happens.
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&private);
    zeroize::Zeroize::zeroize(&mut private);
    let certified = CertifiedKey::new(chain, signing.map_err(pair)?);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => return Err(pair(e)),
    }
    Ok((certified, not_after))
}

/// A certificate's notAfter.
fn not_after(der: &CertificateDer<'_>) -> Result<SystemTime, String> {
    use x509_cert::der::Decode as _;
    let cert = x509_cert::Certificate::from_der(der.as_ref()).map_err(|e| e.to_string())?;
    Ok(SystemTime::UNIX_EPOCH + cert.tbs_certificate.validity.not_after.to_unix_duration())
}

impl Certs {
    /// An in-memory CA and a first serving certificate for `service` in `namespace`, valid
    /// for `validity` (at least [`MIN_VALIDITY`]).
    ///
    /// # Errors
    /// A key or certificate cannot be made (an invalid name).
    pub fn in_memory(
        service: &str,
        namespace: &str,
        validity: Duration,
        metrics: WebhookMetrics,
    ) -> Result<Self, CertError> {
        let ca = Ca::new(service, namespace, validity.max(MIN_VALIDITY))?;
        let (first, expiry) = ca.issue()?;
        Ok(Self::with(
            first,
            expiry,
            Source::InMemory(Box::new(ca)),
            metrics,
        ))
    }

    /// The pair in `cert` and `key` (PEM), re-read every `poll` when either changes.
    ///
    /// # Errors
    /// A file cannot be read or the pair does not load; the error names the file.
    pub fn from_files(
        cert: &Path,
        key: &Path,
        poll: Duration,
        metrics: WebhookMetrics,
    ) -> Result<Self, CertError> {
        let loaded = (stamp(cert), stamp(key));
        let (first, expiry) = load_files(cert, key)?;
        Ok(Self::with(
            first,
            expiry,
            Source::Files {
                cert: cert.to_owned(),
                key: key.to_owned(),
                poll: poll.max(Duration::from_millis(10)),
                loaded,
            },
            metrics,
        ))
    }

    fn with(
        first: CertifiedKey,
        expiry: SystemTime,
        source: Source,
        metrics: WebhookMetrics,
    ) -> Self {
        metrics.certificate_expiry.set(unix_seconds(expiry));
        Self {
            inner: Arc::new(Inner {
                resolver: Arc::new(Resolver::new(Arc::new(first))),
                source,
                expiry: RwLock::new(expiry),
                metrics,
            }),
        }
    }

    /// The rustls configuration serving the current certificate, offering HTTP/2 and
    /// HTTP/1.1 (the API server calls webhooks over HTTP/2).
    ///
    /// # Errors
    /// rustls has no safe protocol version (a bug).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, CertError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| CertError::Load { source })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&self.inner.resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The in-memory CA's certificate (PEM, public); `None` with certificate files.
    #[must_use]
    pub fn ca_pem(&self) -> Option<&str> {
        match &self.inner.source {
            Source::InMemory(ca) => Some(&ca.pem),
            Source::Files { .. } => None,
        }
    }

    /// The current serving certificate's notAfter.
    #[must_use]
    pub fn expiry(&self) -> SystemTime {
        *self.inner.expiry.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The certificate new handshakes get (its chain, leaf first).
    #[must_use]
    pub fn current_chain(&self) -> Vec<CertificateDer<'static>> {
        self.inner.resolver.current().cert.clone()
    }

    /// `true` when the in-memory CA is within [`CA_RESTART_BEFORE`] of its end: the replica
    /// should be restarted (it then makes a new CA).
    #[must_use]
    pub fn ca_expiring(&self) -> bool {
        match &self.inner.source {
            Source::InMemory(ca) => SystemTime::now() + CA_RESTART_BEFORE >= ca.not_after,
            Source::Files { .. } => false,
        }
    }

    fn install(&self, next: CertifiedKey, expiry: SystemTime) {
        self.inner.resolver.swap(Arc::new(next));
        *self.inner.expiry.write().unwrap_or_else(|e| e.into_inner()) = expiry;
        self.inner
            .metrics
            .certificate_expiry
            .set(unix_seconds(expiry));
    }

    /// Issues a fresh serving certificate from the in-memory CA and serves it to new
    /// handshakes. Does nothing with certificate files.
    ///
    /// # Errors
    /// The certificate could not be made; the current one keeps serving.
    pub fn renew(&self) -> Result<(), CertError> {
        if let Source::InMemory(ca) = &self.inner.source {
            let (next, expiry) = ca.issue()?;
            self.install(next, expiry);
            tracing::info!(
                expires = %humantime::format_rfc3339_seconds(expiry),
                "webhook serving certificate renewed"
            );
        }
        Ok(())
    }

    /// Keeps the certificate current until `stop` changes (or its sender is dropped): renews
    /// the in-memory one at half its life, or reloads changed files.
    pub async fn maintain(self, mut stop: watch::Receiver<()>) {
        match &self.inner.source {
            Source::InMemory(ca) => {
                let half = ca.validity / 2;
                loop {
                    // Half of the current certificate's remaining life, so a renewal that
                    // failed is retried well before the certificate runs out.
                    let left = self
                        .expiry()
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    let wait = half.min(left / 2).max(Duration::from_secs(1));
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => return,
                    }
                    if let Err(e) = self.renew() {
                        tracing::error!(error = %e, "webhook serving certificate not renewed; the current one keeps serving");
                    }
                }
            }
            Source::Files {
                cert,
                key,
                poll,
                loaded,
            } => {
                let mut seen = *loaded;
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(*poll) => {}
                        _ = stop.changed() => return,
                    }
                    let now = (stamp(cert), stamp(key));
                    if now == seen {
                        continue;
                    }
                    // Noted whether or not the pair loads: a bad pair is logged once, and
                    // tried again at its next change (cert-manager writes both files).
                    seen = now;
                    match load_files(cert, key) {
                        Ok((next, expiry)) => {
                            self.install(next, expiry);
                            tracing::info!(
                                cert = %cert.display(),
                                expires = %humantime::format_rfc3339_seconds(expiry),
                                "webhook serving certificate reloaded from its files"
                            );
                        }
                        Err(e) => {
                            self.inner.metrics.certificate_reload_failures.inc();
                            tracing::error!(error = %e, "webhook certificate files changed but do not load; the previous certificate keeps serving");
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier as _;

    use super::*;

    fn leaf_not_after(c: &Certs) -> SystemTime {
        not_after(&c.current_chain()[0]).unwrap()
    }

    #[test]
    fn the_in_memory_certificate_names_the_service_and_is_signed_by_the_ca() {
        let m = WebhookMetrics::new();
        let c = Certs::in_memory(
            "keyturn-webhook",
            "keyturn",
            Duration::from_secs(3600),
            m.clone(),
        )
        .unwrap();
        let ca_pem = c.ca_pem().unwrap();
        assert!(ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!ca_pem.contains("PRIVATE"));
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        let chain = c.current_chain();
        for name in service_names("keyturn-webhook", "keyturn") {
            let server = rustls::pki_types::ServerName::try_from(name.clone()).unwrap();
            verifier
                .verify_server_cert(
                    &chain[0],
                    &[],
                    &server,
                    &[],
                    rustls::pki_types::UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let other = rustls::pki_types::ServerName::try_from("other.keyturn.svc").unwrap();
        assert!(
            verifier
                .verify_server_cert(
                    &chain[0],
                    &[],
                    &other,
                    &[],
                    rustls::pki_types::UnixTime::now()
                )
                .is_err()
        );
        // Valid for the hour asked, not the CA's year.
        let left = leaf_not_after(&c)
            .duration_since(SystemTime::now())
            .unwrap();
        assert!(left <= Duration::from_secs(3600), "{left:?}");
        assert!(left > Duration::from_secs(3000), "{left:?}");
        assert_eq!(m.certificate_expiry.get(), unix_seconds(leaf_not_after(&c)));
        assert!(!c.ca_expiring());
    }

    fn ca_not_after(c: &Certs) -> SystemTime {
        match &c.inner.source {
            Source::InMemory(ca) => {
                let der = CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap();
                let decoded = not_after(&der).unwrap();
                assert_eq!(
                    unix_seconds(decoded),
                    unix_seconds(ca.not_after),
                    "the CA certificate and the replica's idea of its end differ"
                );
                decoded
            }
            Source::Files { .. } => panic!("not an in-memory CA"),
        }
    }

    #[test]
    fn replicas_started_together_get_cas_ending_on_different_days_within_335_to_365_days() {
        assert_eq!(ca_validity(0), CA_VALIDITY);
        assert_eq!(
            ca_validity(CA_VALIDITY_JITTER.as_secs()),
            CA_VALIDITY - CA_VALIDITY_JITTER
        );
        assert_eq!(ca_validity(CA_VALIDITY_JITTER.as_secs() + 1), CA_VALIDITY);
        assert_eq!(
            ca_validity(u64::MAX),
            CA_VALIDITY - Duration::from_secs(u64::MAX % (CA_VALIDITY_JITTER.as_secs() + 1))
        );
        let started = SystemTime::now();
        let ends: Vec<SystemTime> = (0..3)
            .map(|_| {
                let c =
                    Certs::in_memory("w", "ns", Duration::from_secs(3600), WebhookMetrics::new())
                        .unwrap();
                ca_not_after(&c)
            })
            .collect();
        for end in &ends {
            let validity = end.duration_since(started).unwrap();
            assert!(
                validity >= CA_VALIDITY - CA_VALIDITY_JITTER - Duration::from_secs(1)
                    && validity <= CA_VALIDITY + Duration::from_secs(60),
                "{validity:?}"
            );
        }
        // Three draws from 30 days of seconds all within an hour of each other: about one
        // chance in 10^5, where without the jitter they are always within a second or two.
        let (first, last) = (ends.iter().min().unwrap(), ends.iter().max().unwrap());
        assert!(
            last.duration_since(*first).unwrap() > Duration::from_secs(3600),
            "{ends:?}"
        );
    }

    #[test]
    fn renewing_swaps_the_certificate_new_handshakes_get_and_keeps_the_ca() {
        let c =
            Certs::in_memory("w", "ns", Duration::from_secs(3600), WebhookMetrics::new()).unwrap();
        let ca = c.ca_pem().unwrap().to_owned();
        let before = c.current_chain();
        c.renew().unwrap();
        assert_ne!(c.current_chain(), before);
        assert_eq!(c.ca_pem().unwrap(), ca);
    }

    /// A CA and a leaf it signs for `name`, as PEM (cert, key).
    fn files_pair(name: &str) -> (String, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[tokio::test]
    async fn changed_files_are_reloaded_and_a_pair_that_does_not_load_leaves_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (c1, k1) = files_pair("one.example");
        std::fs::write(&cert, &c1).unwrap();
        std::fs::write(&key, &k1).unwrap();
        let m = WebhookMetrics::new();
        let certs = Certs::from_files(&cert, &key, Duration::from_millis(20), m.clone()).unwrap();
        assert!(certs.ca_pem().is_none());
        let first = certs.current_chain();
        let (stop_tx, stop) = watch::channel(());
        let task = tokio::spawn(certs.clone().maintain(stop));

        // A key that does not match the new certificate: logged, counted, the old pair stays.
        let (c2, _) = files_pair("two.example");
        std::fs::write(&cert, &c2).unwrap();
        wait_for(|| m.certificate_reload_failures.get() >= 1).await;
        assert_eq!(certs.current_chain(), first);

        // Then its key: the new pair serves.
        let (c3, k3) = files_pair("three.example");
        std::fs::write(&key, &k3).unwrap();
        std::fs::write(&cert, &c3).unwrap();
        wait_for(|| certs.current_chain() != first).await;
        assert_eq!(
            certs.current_chain()[0],
            CertificateDer::from_pem_slice(c3.as_bytes()).unwrap()
        );

        // Garbage: the error names the file, never its content.
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = load_files(&cert, &key).unwrap_err().to_string();
        assert!(e.contains("tls.key"), "{e}");
        assert!(!e.contains("c2VjcmV0"), "{e}");
        let _ = stop_tx.send(());
        task.await.unwrap();
    }

    /// Polls `cond` until it holds (a generous bound only ends a hang).
    async fn wait_for(mut cond: impl FnMut() -> bool) {
        for _ in 0..3000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition never held");
    }

    #[test]
    fn missing_or_empty_files_are_errors_naming_the_flag_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let e = load_files(&cert, &key).unwrap_err().to_string();
        assert!(e.contains("--tls-cert") && e.contains("tls.crt"), "{e}");
        std::fs::write(&cert, "").unwrap();
        std::fs::write(&key, "").unwrap();
        let e = load_files(&cert, &key).unwrap_err().to_string();
        assert!(
            e.contains("--tls-cert") && e.contains("no PEM certificate"),
            "{e}"
        );
    }
}

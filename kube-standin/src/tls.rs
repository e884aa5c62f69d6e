//! HTTPS: the stand-in's own CA, its serving certificate, and the accept loop.
//!
//! client-go (kubectl) sends a kubeconfig's bearer token only over TLS, and keyturn's own
//! client must be exercised verifying a cluster CA, so the stand-in serves HTTPS only, as
//! kube-apiserver does. Each stand-in makes a fresh CA (ECDSA P-256, aws-lc-rs, as kube's
//! rustls uses) and signs one serving certificate with it for `127.0.0.1`, `::1` and
//! `localhost`; clients get the CA through the kubeconfig's `certificate-authority-data`.
//! The CA's key lives only in memory and is dropped once the serving certificate is signed.
//!
//! Connections are HTTP/1.1 (ALPN `http/1.1`): every client keyturn's tests use falls back to
//! it, and kube-apiserver speaks it too. A plain-HTTP request on the TLS port is answered as
//! Go's TLS server answers it (400 "Client sent an HTTP request to an HTTPS server."), so a
//! client configured with `http://` gets a clear error instead of a hang.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// A client that opens a connection and sends nothing must not hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What Go's `net/http` server writes to a plain-HTTP client on a TLS port.
const PLAIN_HTTP_REPLY: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// The CA clients must trust and the acceptor that serves with a certificate it signed.
pub(crate) struct Tls {
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    pub acceptor: TlsAcceptor,
}

impl Tls {
    /// A fresh CA, and a serving certificate from it valid for `ip` (the bound address),
    /// both loopback addresses and `localhost`.
    ///
    /// # Errors
    /// When a key or certificate cannot be made.
    pub fn new(ip: IpAddr) -> anyhow::Result<Self> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "keyturn-kube-standin-ca");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;

        let mut names = vec![
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
            "localhost".to_owned(),
        ];
        if !names.contains(&ip.to_string()) {
            names.push(ip.to_string());
        }
        let mut params = rcgen::CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;

        // The provider is named rather than taken from the process default: a test binary
        // may link both of rustls' providers, and then there is no default.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .context("the stand-in's serving certificate")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            ca_pem: ca.pem(),
            ca_der: ca.der().to_vec(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// Serves `app` over TLS on `listener` until `shutdown` changes (or its sender is dropped),
/// then lets each open connection finish the request it is on and closes it, as
/// `axum::serve`'s graceful shutdown does.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: axum::Router,
    mut shutdown: tokio::sync::watch::Receiver<()>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "Kubernetes stand-in: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let (acceptor, app, shutdown) = (acceptor.clone(), app.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, acceptor, app, shutdown).await {
                tracing::debug!(error = %e, "Kubernetes stand-in: connection ended");
            }
        });
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    acceptor: TlsAcceptor,
    app: axum::Router,
    mut shutdown: tokio::sync::watch::Receiver<()>,
) -> anyhow::Result<()> {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await??;
    if peeked == 1 && first[0] != TLS_HANDSHAKE_RECORD {
        stream.write_all(PLAIN_HTTP_REPLY).await?;
        stream.shutdown().await?;
        return Ok(());
    }
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .context("TLS handshake timed out")??;
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => served?,
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await?;
        }
    }
    Ok(())
}

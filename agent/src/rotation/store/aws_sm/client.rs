//! The Secrets Manager client, from the standard AWS configuration chain.
//!
//! Which CA certificates verify AWS's endpoints follows keyturn's one rule
//! (`keyturn_core::tls`): where the system has CA certificates the SDK's default HTTPS client
//! is kept untouched (it reads the same system store); where it has none (a `FROM scratch`
//! image) the SDK would trust nothing, so keyturn hands it a client built like the default
//! one (hyper + rustls on aws-lc, the proxy from `HTTPS_PROXY`/`NO_PROXY`) that trusts the
//! built-in roots. The SDK does not read `AWS_CA_BUNDLE` (that is the AWS CLI's and the
//! Python and JavaScript SDKs'), and neither does keyturn.

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::SharedHttpClient;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
use aws_smithy_http_client::{Builder, ConnectorBuilder, proxy::ProxyConfig};
use rustls::pki_types::CertificateDer;

/// A Secrets Manager client from the standard AWS configuration chain: credentials (env,
/// web identity / IRSA, profile, container and instance metadata), `AWS_REGION` unless
/// `region` is given, and `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_SECRETS_MANAGER`) when
/// set. Calls time out after 30 s in all, 10 s per attempt; the SDK retries throttling and
/// transient failures, which every call this store makes tolerates.
pub async fn client_from_env(region: Option<&str>) -> Client {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .operation_attempt_timeout(std::time::Duration::from_secs(10))
        .operation_timeout(std::time::Duration::from_secs(30))
        .build();
    let mut loader =
        aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(timeouts);
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_owned()));
    }
    let roots = keyturn_core::tls::roots();
    if roots.built_in {
        match https_client_trusting(&roots.certs) {
            Ok(http) => loader = loader.http_client(http),
            // Not expected (the context only stores the certificates); the SDK's default
            // client still works where the system store is reachable some other way.
            Err(e) => tracing::warn!(
                error = %e,
                "AWS: could not build an HTTPS client with the built-in roots; using the SDK's default"
            ),
        }
    }
    Client::new(&loader.load().await)
}

/// An HTTPS client like the SDK's default (`default-https-client` with behaviour version
/// `latest`: rustls on aws-lc, the proxy from the environment, the SDK's connect and read
/// timeouts) that trusts exactly `roots`, not the system's store.
///
/// # Errors
/// When the SDK refuses the TLS context.
fn https_client_trusting(
    roots: &[CertificateDer<'static>],
) -> Result<SharedHttpClient, aws_smithy_http_client::HttpClientError> {
    // The trust store takes PEM; the roots are DER.
    let mut store = TrustStore::empty().with_native_roots(false);
    for der in roots {
        store.add_pem_certificate(pem(der));
    }
    let context = TlsContext::builder().with_trust_store(store).build()?;
    Ok(
        Builder::new().build_with_connector_fn(move |settings, components| {
            let mut conn = ConnectorBuilder::default()
                .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
                .tls_context(context.clone());
            conn.set_connector_settings(settings.cloned());
            if let Some(c) = components {
                conn.set_sleep_impl(c.sleep_impl());
            }
            conn.set_proxy_config(Some(ProxyConfig::from_env()));
            conn.build()
        }),
    )
}

/// One certificate as a PEM block.
fn pem(der: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.as_ref()))
}

/// `client` for another region (a policy's `region:`), sharing its credentials, endpoint
/// and HTTP connections.
#[must_use]
pub fn with_region(client: &Client, region: &str) -> Client {
    let conf = client
        .config()
        .to_builder()
        .region(aws_config::Region::new(region.to_owned()));
    Client::from_conf(conf.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    use keyturn_core::tls::BUILT_IN;

    #[test]
    fn pem_blocks_parse_back_to_the_same_certificates() {
        let pems: String = BUILT_IN.iter().map(|c| pem(c)).collect();
        let back = crate::rotation::target::tls::ca_certificates(pems.as_bytes()).unwrap();
        assert_eq!(back, BUILT_IN);
    }

    #[tokio::test]
    async fn a_client_trusting_the_built_in_roots_builds() {
        let http = https_client_trusting(BUILT_IN).unwrap();
        let conf = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("eu-west-1"))
            .http_client(http)
            .build();
        assert!(conf.http_client().is_some());
    }
}

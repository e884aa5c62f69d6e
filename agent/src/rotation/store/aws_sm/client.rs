//! The Secrets Manager client, from the standard AWS configuration chain.

use aws_sdk_secretsmanager::Client;

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
    Client::new(&loader.load().await)
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

//! The AWS check: each Secrets Manager secret the policies name, described (metadata only).

use std::collections::BTreeMap;

use super::{Outcome, Report, fail, ok, skip};
use crate::backends::{Backends, StoreSpec};
use crate::policy::Policy;
use crate::rotation::store::aws_sm;

pub(super) async fn aws_checks(report: &mut Report, policies: Option<&[Policy]>) {
    let check = "aws secrets manager";
    let Some(policies) = policies.filter(|ps| Backends::needs_aws(ps)) else {
        let why = if policies.is_none() {
            "no --policies given"
        } else {
            "no policy uses AWS Secrets Manager"
        };
        report.add(check, &skip(why));
        return;
    };
    // Each secret once: the credential (may not exist yet) and admin credentials (must).
    let mut secrets: BTreeMap<(String, Option<String>), (Vec<String>, bool)> = BTreeMap::new();
    for p in policies {
        // The policy's own secret (created by the first rotation if absent) and its target's
        // admin credential (which must exist). The state secret is the store's own business.
        let own = std::iter::once((&p.store, false));
        let admin = p.target.admin_store().map(|s| (s, true));
        for (store, must_exist) in own.chain(admin) {
            if let StoreSpec::AwsSecretsManager(a) = store {
                let e = secrets
                    .entry((a.secret_id.clone(), a.region.clone()))
                    .or_default();
                if !e.0.contains(&p.name) {
                    e.0.push(p.name.clone());
                }
                e.1 |= must_exist;
            }
        }
    }
    let client = aws_sm::client_from_env(None).await;
    for ((secret_id, region), (names, admin)) in secrets {
        let client = match &region {
            Some(r) => aws_sm::with_region(&client, r),
            None => client.clone(),
        };
        let outcome = describe(&client, &secret_id, admin).await;
        report.add(
            &format!("{check} {secret_id} (policy {})", names.join(", ")),
            &outcome,
        );
    }
}

async fn describe(client: &aws_sm::sdk::Client, secret_id: &str, admin: bool) -> Outcome {
    use aws_sm::sdk::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
    let grant = "grant secretsmanager:DescribeSecret, GetSecretValue, PutSecretValue, UpdateSecretVersionStage and CreateSecret on it and on keyturn-state/<name>";
    match client.describe_secret().secret_id(secret_id).send().await {
        Ok(out) if out.rotation_enabled == Some(true) => fail(
            "Secrets Manager's own rotation is enabled on it; two rotators would take AWSPENDING from each other",
            "turn it off (aws secretsmanager cancel-rotate-secret)",
        ),
        Ok(_) => ok("reachable"),
        Err(SdkError::ServiceError(se)) => {
            let code = se.err().code().unwrap_or("UnknownError");
            let message = se.err().message().unwrap_or_default();
            match code {
                "ResourceNotFoundException" if !admin => {
                    ok("reachable; the secret does not exist yet (the first rotation creates it)")
                }
                "ResourceNotFoundException" => fail(
                    "the admin credential's secret does not exist",
                    "create it with username and password fields",
                ),
                "AccessDeniedException" => fail(format!("{code}: {message}"), grant),
                _ => fail(
                    format!("{code}: {message}"),
                    "check AWS_REGION and the credentials in use",
                ),
            }
        }
        Err(e) => fail(
            DisplayErrorContext(&e).to_string(),
            "check AWS_REGION, AWS_ENDPOINT_URL and the network path to Secrets Manager",
        ),
    }
}

//! The policy's `aws-secretsmanager:`: its form, validation, the IAM actions it needs and
//! how the store is built from it.

use serde::Deserialize;

use super::{AwsSmStore, default_state_id, with_region};

/// The actions a policy needs on its credential's secret and on its state secret.
pub const OWN_ACTIONS: &[&str] = &[
    "secretsmanager:DescribeSecret",
    "secretsmanager:GetSecretValue",
    "secretsmanager:PutSecretValue",
    "secretsmanager:UpdateSecretVersionStage",
    "secretsmanager:CreateSecret",
];
/// The actions needed on a target's admin credential.
pub const ADMIN_ACTIONS: &[&str] = &[
    "secretsmanager:DescribeSecret",
    "secretsmanager:GetSecretValue",
];

/// `aws-secretsmanager:` as a policy writes it.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Raw {
    /// The secret's name or ARN.
    #[schemars(with = "String")]
    secret_id: crate::policy::S<String>,
    /// Its region (default: the AWS SDK's own chain).
    #[schemars(with = "Option<String>")]
    region: Option<crate::policy::S<String>>,
}

/// An AWS Secrets Manager secret, validated: a name or ARN Secrets Manager accepts, and a
/// region name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Spec {
    /// Name or ARN.
    pub secret_id: String,
    /// Region, else the SDK's default chain.
    pub region: Option<String>,
}

impl Spec {
    /// Validates `raw`, found at `field` (`spec.store.aws-secretsmanager`).
    pub(crate) fn validate(
        raw: &Raw,
        v: &mut crate::policy::Validator<'_>,
        field: &str,
    ) -> Option<Self> {
        if let Err(m) = secret_id_rule(&raw.secret_id.value) {
            v.err(&raw.secret_id, &format!("{field}.secret-id"), m);
            return None;
        }
        if let Some(r) = &raw.region
            && let Err(m) = region_rule(&r.value)
        {
            v.err(r, &format!("{field}.region"), m);
            return None;
        }
        Some(Self {
            secret_id: raw.secret_id.value.clone(),
            region: raw.region.as_ref().map(|r| r.value.clone()),
        })
    }
}

impl std::fmt::Display for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "aws-secretsmanager:{}", self.secret_id)
    }
}

impl crate::backends::StoreKind for Spec {
    fn needs(&self, holding: crate::policy::needs::Holding) -> Vec<crate::policy::needs::Need> {
        use crate::policy::needs::{Holding, Need};
        let need = |secret_id: String, actions, must_exist| Need::Aws {
            secret_id,
            region: self.region.clone(),
            actions,
            must_exist,
        };
        match holding {
            Holding::Own => vec![
                need(self.secret_id.clone(), OWN_ACTIONS, false),
                need(default_state_id(&self.secret_id), OWN_ACTIONS, false),
            ],
            Holding::Admin => vec![need(self.secret_id.clone(), ADMIN_ACTIONS, true)],
        }
    }

    fn build(
        &self,
        backends: &crate::backends::Backends,
        policy: &str,
    ) -> Result<std::sync::Arc<dyn super::Store>, crate::backends::BackendError> {
        let client = backends.aws_for(policy)?;
        let client = match &self.region {
            Some(r) => with_region(client, r),
            None => client.clone(),
        };
        Ok(std::sync::Arc::new(AwsSmStore::for_secret(
            client,
            &self.secret_id,
        )))
    }
}

/// What AWS Secrets Manager accepts as a `SecretId`: a name (1–512 of `A–Z a–z 0–9 /_+=.@-`)
/// or a secret ARN (`arn:PARTITION:secretsmanager:…`, at most 2048, the same characters plus
/// `:`). Anything else would only fail later, at the first rotation, against the live API.
fn secret_id_rule(id: &str) -> Result<(), String> {
    let name_char = |c: char| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c);
    if let Some(rest) = id.strip_prefix("arn:") {
        let parts: Vec<&str> = rest.splitn(6, ':').collect();
        let ok = id.len() <= 2048
            && parts.len() == 6
            && parts[1] == "secretsmanager"
            && parts[4] == "secret"
            && !parts[5].is_empty()
            && id.chars().all(|c| name_char(c) || c == ':');
        return if ok {
            Ok(())
        } else {
            Err("an ARN must be arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME (at most 2048 characters)".into())
        };
    }
    if id.is_empty() || id.len() > 512 || !id.chars().all(name_char) {
        return Err(
            "must be a secret name of 1 to 512 characters (letters, digits and /_+=.@-) or a secret ARN"
                .into(),
        );
    }
    Ok(())
}

/// An AWS region name such as `eu-central-1`: lowercase letters, digits and `-`.
fn region_rule(r: &str) -> Result<(), String> {
    let ok = (4..=32).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !r.starts_with('-')
        && !r.ends_with('-')
        && r.contains('-');
    if ok {
        Ok(())
    } else {
        Err("not an AWS region name (such as eu-central-1)".into())
    }
}

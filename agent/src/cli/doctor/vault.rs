//! The Vault checks: reachable (`sys/health`), the token valid, and its capabilities on every
//! path the policies use (`sys/capabilities-self`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use keyturn_core::vault::{Health, RetryPolicy, Vault, VaultConfig, VaultError};

use super::human;
use super::{Outcome, PROBE_TIMEOUT, Report, fail, ok, skip};
use crate::cli::vault_args::VaultArgs;
use crate::policy::Policy;
use crate::policy::needs::Need as PolicyNeed;

/// What the Vault checks leave for later ones.
#[derive(Debug, Default)]
pub(super) struct VaultFacts {
    /// The server's `Date` and the local time its answer arrived.
    pub(super) date: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

pub(super) async fn vault_checks(
    report: &mut Report,
    args: &VaultArgs,
    policies: Option<&[Policy]>,
) -> VaultFacts {
    let mut facts = VaultFacts::default();
    let uses_vault = policies.is_none_or(|ps| ps.iter().any(|p| !vault_needs(p).is_empty()));
    let caps_check = "vault capabilities";
    if !uses_vault {
        for check in ["vault reachable", "vault token", caps_check] {
            report.add(check, &skip("no policy keeps anything in Vault"));
        }
        return facts;
    }
    let connected = VaultConfig::from_env()
        .map_err(VaultError::from)
        .and_then(|mut cfg| {
            cfg.request_timeout = PROBE_TIMEOUT;
            Vault::connect(&cfg)
        });
    let mut vault = match connected {
        Ok(v) => v.with_retry(RetryPolicy::none()),
        Err(e) => {
            let outcome = fail(
                e.to_string(),
                "set VAULT_ADDR to the server's http(s)://host:port (and VAULT_CACERT for a private CA)",
            );
            report.add("vault reachable", &outcome);
            report.add("vault token", &skip("Vault is not configured"));
            report.add(caps_check, &skip("Vault is not configured"));
            return facts;
        }
    };

    // Reachable: sys/health, unauthenticated. A healthy standby answers too; a sealed or
    // uninitialised server answers 503/501.
    let health = tokio::time::timeout(PROBE_TIMEOUT, vault.health()).await;
    let reachable = match health {
        Ok(Ok(h)) => {
            facts.date = h.date.map(|d| (d, h.received));
            let outcome = health_outcome(vault.addr(), &h);
            report.add("vault reachable", &outcome);
            h.is_up()
        }
        failed => {
            let cause = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {}s", PROBE_TIMEOUT.as_secs()),
            };
            report.add(
                "vault reachable",
                &fail(
                    cause,
                    "check VAULT_ADDR, that Vault is running, and that this host can reach it (firewall, NetworkPolicy, VAULT_CACERT for TLS)",
                ),
            );
            false
        }
    };
    if !reachable {
        report.add("vault token", &skip("Vault is not reachable"));
        report.add(caps_check, &skip("Vault is not reachable"));
        return facts;
    }

    // The token: log in with the configured method, then look it up.
    let method = match args.prepare() {
        Ok((_, m)) => m,
        Err(e) => {
            report.add(
                "vault token",
                &fail(
                    e.to_string(),
                    "set VAULT_TOKEN (or ~/.vault-token), or --vault-auth with its role and credential",
                ),
            );
            report.add(caps_check, &skip("no Vault token"));
            return facts;
        }
    };
    let login = match vault.login(method.as_ref()).await {
        Ok(_) => vault.lookup_self().await,
        Err(e) => Err(e),
    };
    match login {
        Ok(info) => {
            let ttl = if info.ttl == 0 {
                "no expiry".to_owned()
            } else {
                format!("TTL {}", human(i64::try_from(info.ttl).unwrap_or(i64::MAX)))
            };
            report.add(
                "vault token",
                &ok(format!(
                    "display name {:?}, policies [{}], {ttl}",
                    info.display_name,
                    info.policies.join(", ")
                )),
            );
        }
        Err(e) => {
            let fix = match &e {
                VaultError::PermissionDenied { .. } => {
                    "the token is invalid or expired, or the auth role refused it: log in again (vault login) or check the role's bound service account"
                }
                _ => "check VAULT_ADDR and that Vault answers",
            };
            report.add("vault token", &fail(e.to_string(), fix));
            report.add(caps_check, &skip("no valid Vault token"));
            return facts;
        }
    }

    // Capabilities on every path the policies use.
    let Some(policies) = policies else {
        report.add(caps_check, &skip("no --policies given"));
        return facts;
    };
    let needs: Vec<(&Policy, Vec<Need>)> = policies
        .iter()
        .map(|p| (p, vault_needs(p)))
        .filter(|(_, n)| !n.is_empty())
        .collect();
    if needs.is_empty() {
        report.add(caps_check, &skip("no policy keeps anything in Vault"));
        return facts;
    }
    let mut paths: Vec<&str> = needs
        .iter()
        .flat_map(|(_, n)| n.iter().map(|n| n.path.as_str()))
        .collect();
    paths.sort_unstable();
    paths.dedup();
    let granted = match tokio::time::timeout(PROBE_TIMEOUT, vault.capabilities_self(&paths)).await {
        Ok(Ok(caps)) => Ok(caps),
        Ok(Err(VaultError::PermissionDenied { .. })) => Err(fail(
            "permission denied on sys/capabilities-self",
            "attach Vault's `default` policy to the token (it grants sys/capabilities-self), or add path \"sys/capabilities-self\" { capabilities = [\"update\"] }",
        )),
        Ok(Err(e)) => Err(fail(
            e.to_string(),
            "check that Vault stays reachable and its logs",
        )),
        Err(_) => Err(fail(
            format!("no answer within {}s", PROBE_TIMEOUT.as_secs()),
            "check that Vault stays reachable",
        )),
    };
    match granted {
        Err(outcome) => report.add(&format!("{caps_check}: cannot check"), &outcome),
        Ok(body) => {
            for (p, needs) in &needs {
                report.add(
                    &format!("{caps_check} (policy {})", p.name),
                    &capabilities_outcome(needs, &body),
                );
            }
        }
    }
    facts
}

/// What `sys/health` said.
pub(super) fn health_outcome(addr: &str, h: &Health) -> Outcome {
    let version = h.version.as_deref().unwrap_or("unknown version");
    match h.status {
        200 => ok(format!("{addr} ({version})")),
        429 | 472 | 473 => ok(format!("{addr} ({version}, standby)")),
        501 => fail(
            format!("{addr} is not initialised"),
            "initialise it (bao/vault operator init)",
        ),
        503 => fail(
            format!("{addr} is sealed"),
            "unseal it (bao/vault operator unseal)",
        ),
        s => {
            let errors = if h.errors.is_empty() {
                String::new()
            } else {
                format!(": {}", h.errors.join("; "))
            };
            fail(
                format!("{addr} answered {s} to sys/health{errors}"),
                "check VAULT_ADDR points at Vault itself, not a proxy or another service",
            )
        }
    }
}

/// A Vault path a policy needs, and the capabilities on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Need {
    /// The full API path (`secret/data/keyturn/orders-db`).
    pub(super) path: String,
    /// The capabilities needed.
    pub(super) caps: &'static [&'static str],
}

/// The Vault paths `p` uses and the capabilities it needs on them (see
/// [`Policy::needs`]).
pub(super) fn vault_needs(p: &Policy) -> Vec<Need> {
    p.needs()
        .into_iter()
        .filter_map(|n| match n {
            PolicyNeed::Vault { path, capabilities } => Some(Need {
                path,
                caps: capabilities,
            }),
            _ => None,
        })
        .collect()
}

/// Compares what `sys/capabilities-self` granted (its answer `body`) with `needs`.
pub(super) fn capabilities_outcome(
    needs: &[Need],
    granted: &BTreeMap<String, Vec<String>>,
) -> Outcome {
    let mut missing = Vec::new();
    let mut fixes = Vec::new();
    for n in needs {
        let granted: Vec<&str> = granted
            .get(&n.path)
            .map(|caps| caps.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let has = |c: &str| granted.contains(&"root") || granted.contains(&c);
        let lacking: Vec<&str> = n.caps.iter().copied().filter(|c| !has(c)).collect();
        if lacking.is_empty() {
            continue;
        }
        let shown = if granted.is_empty() || granted == ["deny"] {
            "nothing".to_owned()
        } else {
            granted.join(", ")
        };
        missing.push(format!(
            "{} needs {} (token has {shown})",
            n.path,
            lacking.join(", ")
        ));
        let caps: Vec<String> = n.caps.iter().map(|c| format!("{c:?}")).collect();
        fixes.push(format!(
            "path {:?} {{ capabilities = [{}] }}",
            n.path,
            caps.join(", ")
        ));
    }
    if missing.is_empty() {
        let paths: Vec<&str> = needs.iter().map(|n| n.path.as_str()).collect();
        ok(paths.join(", "))
    } else {
        fail(
            missing.join("; "),
            format!(
                "add to the token's Vault policy {} (policies/vault/keyturn-agent.hcl grants these for secret/data/keyturn/* and secret/data/keyturn-state/*)",
                fixes.join(" ")
            ),
        )
    }
}

/// An HTTP `Date` (`Tue, 15 Nov 1994 08:12:31 GMT`).
pub(super) fn parse_http_date(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc2822(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

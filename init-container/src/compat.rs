//! Every Vault Agent Injector annotation and keyturn's answer to it: read by keyturn-init,
//! read by the webhook, warned about, or denied. One table, so keyturn-init (which reads the
//! pod's annotations file) and `keyturn webhook` (which answers the pod's admission) never
//! disagree about an annotation, and the README's compatibility list is this table.
//!
//! Annotations are accepted under three prefixes: the injector's `vault.hashicorp.com/`,
//! OpenBao's fork's `openbao.org/`, and keyturn's own `keyturn.dev/` (where keyturn's one
//! extra annotation, `shared-NAME`, also lives). A name given under two prefixes is given
//! twice, and refused.

/// The prefixes an injector annotation may carry.
pub const PREFIXES: [&str; 3] = ["vault.hashicorp.com/", "openbao.org/", "keyturn.dev/"];

/// keyturn's own prefix: an unknown name under it is an error (it can only be a typo).
pub const KEYTURN_PREFIX: &str = "keyturn.dev/";

/// Who acts on an annotation, or why nobody does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// keyturn-init reads it (secrets, templates, files, modes, the Vault login).
    Init,
    /// The webhook reads it (what is injected, and how); keyturn-init ignores it.
    Webhook,
    /// Accepted and ignored, with this warning: it tunes the injector's long-running agent
    /// sidecar, which keyturn does not run.
    Warn(&'static str),
    /// Refused with this reason: ignoring it would silently change what the pod gets.
    Deny(&'static str),
}

/// One row: the annotation's name (after the prefix), whether it is a prefix of a family
/// (`agent-inject-secret-NAME`), and the answer.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// The name, or the family's prefix (ending in `-`).
    pub name: &'static str,
    /// A family (`agent-inject-secret-` + the secret's name), not one annotation.
    pub family: bool,
    /// What keyturn does with it.
    pub answer: Answer,
}

const fn one(name: &'static str, answer: Answer) -> Row {
    Row {
        name,
        family: false,
        answer,
    }
}

const fn family(name: &'static str, answer: Answer) -> Row {
    Row {
        name,
        family: true,
        answer,
    }
}

const NO_SIDECAR: &str =
    "keyturn-init renders the files once before the app starts and runs no agent sidecar";

/// The table, in the injector's documentation's order. Families come after the single
/// annotations that share their prefix (`agent-inject-secret-volume-path` is not a secret).
pub const TABLE: &[Row] = &[
    one("agent-inject", Answer::Webhook),
    one("agent-inject-status", Answer::Webhook),
    one(
        "agent-configmap",
        Answer::Deny(
            "a Vault Agent configuration has no keyturn equivalent; use the agent-inject-secret-*/template-* annotations or a keyturn-init manifest",
        ),
    ),
    one(
        "agent-image",
        Answer::Warn(
            "the init container runs the keyturn-init image the webhook is configured with",
        ),
    ),
    one("agent-init-first", Answer::Webhook),
    one("agent-inject-containers", Answer::Webhook),
    one("agent-inject-default-template", Answer::Init),
    one(
        "agent-inject-token",
        Answer::Deny(
            "keyturn-init revokes its Vault token before it exits; a sidecar that needs the token takes a keyturn-init manifest and --keep-token",
        ),
    ),
    one("agent-pre-populate", Answer::Webhook),
    one("agent-pre-populate-only", Answer::Webhook),
    one(
        "agent-revoke-on-shutdown",
        Answer::Warn(
            "keyturn-init revokes its Vault token before it exits; there is no agent left to revoke it at shutdown",
        ),
    ),
    one(
        "agent-revoke-grace",
        Answer::Warn(
            "keyturn-init revokes its Vault token before it exits; there is no agent left to revoke it at shutdown",
        ),
    ),
    one("agent-limits-cpu", Answer::Webhook),
    one("agent-limits-mem", Answer::Webhook),
    one("agent-limits-ephemeral", Answer::Webhook),
    one("agent-requests-cpu", Answer::Webhook),
    one("agent-requests-mem", Answer::Webhook),
    one("agent-requests-ephemeral", Answer::Webhook),
    one("agent-run-as-user", Answer::Webhook),
    one("agent-run-as-group", Answer::Webhook),
    one("agent-run-as-same-user", Answer::Webhook),
    one("agent-set-security-context", Answer::Webhook),
    one("agent-share-process-namespace", Answer::Warn(NO_SIDECAR)),
    one(
        "agent-extra-secret",
        Answer::Warn(
            "keyturn-init reads no agent configuration, so an extra secret for it is not mounted",
        ),
    ),
    one(
        "agent-copy-volume-mounts",
        Answer::Warn("keyturn-init needs no volume of the app container; none is copied"),
    ),
    one(
        "agent-service-account-token-volume-name",
        Answer::Warn(
            "keyturn-init logs in with a projected token of the pod's own service account; the named volume is not used",
        ),
    ),
    one("agent-cache-enable", Answer::Warn(NO_SIDECAR)),
    one("agent-cache-use-auto-auth-token", Answer::Warn(NO_SIDECAR)),
    one("agent-cache-listener-port", Answer::Warn(NO_SIDECAR)),
    one("agent-cache-exit-on-err", Answer::Warn(NO_SIDECAR)),
    one("agent-enable-quit", Answer::Warn(NO_SIDECAR)),
    one(
        "agent-auth-min-backoff",
        Answer::Warn("keyturn-init retries with its own backoff within its deadline"),
    ),
    one(
        "agent-auth-max-backoff",
        Answer::Warn("keyturn-init retries with its own backoff within its deadline"),
    ),
    one(
        "agent-auto-auth-exit-on-err",
        Answer::Warn("keyturn-init always exits non-zero when it cannot log in"),
    ),
    one("agent-disable-idle-connections", Answer::Warn(NO_SIDECAR)),
    one("agent-disable-keep-alives", Answer::Warn(NO_SIDECAR)),
    one(
        "agent-template-config-exit-on-retry-failure",
        Answer::Warn("keyturn-init always exits non-zero when a secret cannot be rendered"),
    ),
    one(
        "template-static-secret-render-interval",
        Answer::Warn(NO_SIDECAR),
    ),
    one(
        "template-max-connections-per-host",
        Answer::Warn("keyturn-init opens one connection per Vault address"),
    ),
    one(
        "go-max-procs",
        Answer::Warn("keyturn-init is not a Go program"),
    ),
    one(
        "agent-json-patch",
        Answer::Deny("a patch of the agent container has no keyturn-init equivalent"),
    ),
    one(
        "agent-init-json-patch",
        Answer::Deny("a patch of the agent container has no keyturn-init equivalent"),
    ),
    one(
        "preserve-secret-case",
        Answer::Warn("keyturn-init always keeps a secret's name as written"),
    ),
    one("secret-volume-path", Answer::Webhook),
    family(
        "secret-volume-path-",
        Answer::Deny(
            "keyturn-init writes every secret into the one secret volume; use agent-inject-file-NAME for a sub-path",
        ),
    ),
    family("agent-inject-secret-", Answer::Init),
    family(
        "agent-inject-template-file-",
        Answer::Deny(
            "a template file inside the agent's container has no keyturn-init equivalent; put the template in agent-inject-template-NAME",
        ),
    ),
    family("agent-inject-template-", Answer::Init),
    family("agent-inject-file-", Answer::Init),
    family("agent-inject-perms-", Answer::Init),
    family(
        "agent-inject-command-",
        Answer::Deny(
            "keyturn-init runs no command after rendering (no sidecar runs it either); have the app read the file at start",
        ),
    ),
    family("error-on-missing-key-", Answer::Webhook),
    family("agent-telemetry-", Answer::Warn(NO_SIDECAR)),
    one("auth-path", Answer::Init),
    one("auth-type", Answer::Webhook),
    family(
        "auth-config-",
        Answer::Deny(
            "keyturn-init logs in with the kubernetes auth method, which takes no extra configuration",
        ),
    ),
    one("role", Answer::Init),
    one("namespace", Answer::Init),
    one("service", Answer::Init),
    one("ca-cert", Answer::Webhook),
    one(
        "ca-key",
        Answer::Deny("keyturn-init does not present a client certificate to Vault"),
    ),
    one(
        "client-cert",
        Answer::Deny("keyturn-init does not present a client certificate to Vault"),
    ),
    one(
        "client-key",
        Answer::Deny("keyturn-init does not present a client certificate to Vault"),
    ),
    one(
        "client-max-retries",
        Answer::Warn(
            "keyturn-init retries within its deadline (KEYTURN_INIT_DEADLINE), not a count",
        ),
    ),
    one(
        "client-timeout",
        Answer::Warn(
            "keyturn-init retries within its deadline (KEYTURN_INIT_DEADLINE), not a per-request timeout",
        ),
    ),
    one("log-level", Answer::Webhook),
    one("log-format", Answer::Webhook),
    one(
        "proxy-address",
        Answer::Deny("keyturn-init does not reach Vault through a proxy"),
    ),
    one("tls-secret", Answer::Webhook),
    one(
        "tls-server-name",
        Answer::Deny(
            "keyturn-init verifies Vault's certificate against the address's own host name",
        ),
    ),
    one("tls-skip-verify", Answer::Webhook),
];

/// keyturn's own annotation: `keyturn.dev/shared-NAME` opts a file into group/other bits.
pub const SHARED: &str = "shared-";

/// Splits `key` into its injector prefix and name; `None` for other annotations.
#[must_use]
pub fn split(key: &str) -> Option<(&'static str, &str)> {
    PREFIXES
        .iter()
        .find_map(|p| key.strip_prefix(p).map(|name| (*p, name)))
}

/// The row for an annotation name (after its prefix); `None` for a name the injector does
/// not define.
#[must_use]
pub fn lookup(name: &str) -> Option<&'static Row> {
    TABLE.iter().find(|r| {
        if r.family {
            name.strip_prefix(r.name)
                .is_some_and(|rest| !rest.is_empty())
        } else {
            name == r.name
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_annotations_win_over_families_that_share_their_prefix() {
        assert_eq!(
            lookup("secret-volume-path").unwrap().answer,
            Answer::Webhook
        );
        assert!(matches!(
            lookup("secret-volume-path-db").unwrap().answer,
            Answer::Deny(_)
        ));
        assert!(matches!(
            lookup("agent-inject-template-file-db").unwrap().answer,
            Answer::Deny(_)
        ));
        assert_eq!(
            lookup("agent-inject-template-db").unwrap().answer,
            Answer::Init
        );
        assert!(matches!(
            lookup("agent-inject-token").unwrap().answer,
            Answer::Deny(_)
        ));
        assert!(lookup("agent-inject-secret-").is_none());
        assert!(lookup("made-up").is_none());
    }

    #[test]
    fn every_prefix_splits_and_others_do_not() {
        assert_eq!(split("openbao.org/role"), Some(("openbao.org/", "role")));
        assert_eq!(
            split("keyturn.dev/agent-inject"),
            Some(("keyturn.dev/", "agent-inject"))
        );
        assert_eq!(split("example.com/role"), None);
    }

    #[test]
    fn no_name_is_listed_twice() {
        let mut names: Vec<_> = TABLE.iter().map(|r| (r.name, r.family)).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len());
    }
}

//! The break-glass journal, shared by the `keyturn break-glass` commands (which append to it)
//! and the daemon (which watches it). The commands themselves are in `cli/break_glass.rs`.
//!
//! The audit log is the record of every break-glass action. The **journal** is how a running
//! daemon, possibly on another machine, learns of one: a small KV v2 entry (default
//! `secret/keyturn-state/_break-glass`) holding the last [`JOURNAL_KEEP`] actions, appended
//! with check-and-set. The daemon reads that one entry on a timer (one request, whatever the
//! number of policies) to count `keyturn_breakglass_total{action}` and to schedule the
//! rotation of a revealed credential when its TTL has passed. Vault has no change
//! notification for KV, so a timer over one entry is the cheapest correct way; the taint
//! itself lives in the policy's own state, so a daemon started later still finds it.

use chrono::{DateTime, Utc};
use keyturn_core::SecretValue;
use keyturn_core::vault::{SecretData, Vault, VaultError};
use serde::{Deserialize, Serialize};

/// How many actions the journal keeps.
pub const JOURNAL_KEEP: usize = 200;

/// Where the journal lives by default: `MOUNT/PATH` in KV v2.
pub const DEFAULT_JOURNAL: &str = "secret/keyturn-state/_break-glass";

/// One break-glass action, as the daemon needs to know it. No values, no reasons (those are
/// in the audit log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Increasing number, so a reader can tell new entries from seen ones.
    pub seq: u64,
    /// The policy.
    pub policy: String,
    /// `rotate`, `revoke` or `reveal`.
    pub action: String,
    /// When.
    pub at: DateTime<Utc>,
    /// For `reveal`: when the revealed value must be rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_after: Option<DateTime<Utc>>,
}

/// The journal's location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    mount: String,
    path: String,
}

impl Journal {
    /// Parses `MOUNT/PATH`.
    ///
    /// # Errors
    /// A location without both parts.
    pub fn parse(location: &str) -> Result<Self, String> {
        match location.trim_matches('/').split_once('/') {
            Some((m, p)) if !m.is_empty() && !p.is_empty() && !p.split('/').any(|s| s == "..") => {
                Ok(Self {
                    mount: m.to_owned(),
                    path: p.to_owned(),
                })
            }
            _ => Err(format!(
                "break-glass journal {location:?}: expected MOUNT/PATH (KV v2), e.g. {DEFAULT_JOURNAL}"
            )),
        }
    }

    /// The entries, oldest first, and the KV version they were read at (0: none yet).
    ///
    /// # Errors
    /// The Vault failure; an unreadable entry reads as empty (it is rewritten whole).
    pub async fn read(&self, vault: &Vault) -> Result<(Vec<JournalEntry>, u64), VaultError> {
        match vault.kv2_read(&self.mount, &self.path, None).await {
            Ok(r) => {
                let entries = r
                    .data
                    .get("entries")
                    .and_then(|v| v.expose_str().ok())
                    .and_then(|s| serde_json::from_str(s).ok())
                    .unwrap_or_default();
                Ok((entries, r.version))
            }
            Err(VaultError::NotFound { .. }) => Ok((Vec::new(), 0)),
            Err(e) => Err(e),
        }
    }

    /// Appends an action (read, append, check-and-set write; retried on a lost race).
    ///
    /// # Errors
    /// The Vault failure.
    pub async fn append(
        &self,
        vault: &Vault,
        policy: &str,
        action: &str,
        rotate_after: Option<DateTime<Utc>>,
    ) -> Result<(), VaultError> {
        let mut attempt = 0;
        loop {
            let (mut entries, version) = self.read(vault).await?;
            let seq = entries.last().map_or(1, |e| e.seq + 1);
            entries.push(JournalEntry {
                seq,
                policy: policy.to_owned(),
                action: action.to_owned(),
                at: Utc::now(),
                rotate_after,
            });
            if entries.len() > JOURNAL_KEEP {
                entries.drain(..entries.len() - JOURNAL_KEEP);
            }
            let mut d = SecretData::new();
            d.insert(
                "entries",
                SecretValue::from(serde_json::to_string(&entries).unwrap_or_default()),
            );
            match vault
                .kv2_write(&self.mount, &self.path, &d, Some(version))
                .await
            {
                Ok(_) => return Ok(()),
                Err(VaultError::CasConflict { .. }) if attempt < 5 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_location_needs_a_mount_and_a_path() {
        assert!(Journal::parse(DEFAULT_JOURNAL).is_ok());
        assert!(Journal::parse("secret").is_err());
        assert!(Journal::parse("secret/../x").is_err());
        assert!(Journal::parse("/secret/").is_err());
    }
}

//! The anchor: the chain's head, recorded outside the audit file, where whoever can rewrite the
//! file cannot reach it.
//!
//! A keyed chain catches an edited, inserted or deleted entry, but not a deleted *tail*: the
//! entries that remain are still a valid chain. So the writer records its head — the `seq` and
//! `hash` of an entry it wrote — in its store, and `keyturn audit verify --anchor` checks that
//! the files still hold that entry with that hash: a shorter file is a truncation, another hash
//! a replaced or rewritten log.
//!
//! The one store so far is a Vault KV v2 secret (`vault-kv:MOUNT/PATH`), written with
//! check-and-set, holding four fields:
//!
//! | field | what |
//! |---|---|
//! | `seq` | the anchored entry's `seq`, in decimal |
//! | `hash` | its `hash`, 64 lowercase hex digits |
//! | `mac` | HMAC-SHA-256 under the chain key of a label, `seq` and `hash` ([`AnchorHead`]) |
//! | `key_id` | the audit key's id ([`HmacKey::id`](super::HmacKey::id)), to tell a wrong key from tampering |
//!
//! The MAC means that whoever can write the anchor's path, but has no audit key, cannot point
//! the anchor at an entry of their choosing: at most they can restore an older anchor (KV keeps
//! its versions) or delete it, which `verify` reports as missing. The anchor only moves
//! forward: a writer never records a head below the one stored, and says so when its own chain
//! is behind the anchor (its file lost its tail before it resumed).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use super::chain::{ChainHash, ChainKey};
use super::log::RecordedEvent;
use crate::SecretValue;
use crate::exit::{ExitCode, HasExitCode};
use crate::vault::{SecretData, Vault, VaultError};

/// What the anchor's MAC covers, before `seq` and `hash`; the `v1` names the layout.
const MAC_LABEL: &[u8] = b"keyturn audit anchor v1";

/// How often [`Anchor::record`] retries after losing a check-and-set race before giving up.
const MAX_CAS_ATTEMPTS: u32 = 5;

/// An entry of the chain, as the anchor records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnchorHead {
    /// The entry's `seq`.
    pub seq: u64,
    /// The entry's `hash`.
    pub hash: ChainHash,
}

impl From<RecordedEvent> for AnchorHead {
    fn from(r: RecordedEvent) -> Self {
        Self {
            seq: r.seq,
            hash: r.hash,
        }
    }
}

/// Where an anchor is kept: `vault-kv:MOUNT/PATH` (a KV v2 mount; the mount is the first path
/// segment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorLocation {
    /// A KV v2 secret.
    VaultKv {
        /// The KV v2 mount, e.g. `secret`.
        mount: String,
        /// The secret's path inside the mount, e.g. `keyturn/audit-anchor/daemon-0`.
        path: String,
    },
}

impl fmt::Display for AnchorLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::VaultKv { mount, path } => write!(f, "vault-kv:{mount}/{path}"),
        }
    }
}

/// The text is not an anchor location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an anchor is `vault-kv:MOUNT/PATH` (a KV v2 mount, then the secret's path); got {0}")]
pub struct InvalidAnchorLocation(String);

impl FromStr for AnchorLocation {
    type Err = InvalidAnchorLocation;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidAnchorLocation(crate::text::echo(s));
        let rest = s.strip_prefix("vault-kv:").ok_or_else(bad)?;
        let (mount, path) = rest.trim_matches('/').split_once('/').ok_or_else(bad)?;
        let path = path.trim_matches('/');
        // `..` would let Vault resolve another path than the one named in messages.
        if mount.is_empty()
            || path.is_empty()
            || path
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
            || s.chars().any(char::is_control)
        {
            return Err(bad());
        }
        Ok(Self::VaultKv {
            mount: mount.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// Errors reading or recording an anchor. None carries a stored value: a location that turns
/// out to name some other secret must not echo it.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// Vault refused, failed, or could not be reached.
    #[error("audit anchor {location}: {source}")]
    Vault {
        /// The anchor.
        location: AnchorLocation,
        /// Why (boxed: it is large, and this error is returned on every path).
        source: Box<VaultError>,
    },
    /// Nothing has been recorded there.
    #[error("audit anchor {location}: nothing is recorded there")]
    Missing {
        /// The anchor.
        location: AnchorLocation,
    },
    /// What is there is not an anchor.
    #[error("audit anchor {location}: not a keyturn audit anchor: field {field:?} {problem}")]
    Malformed {
        /// The anchor.
        location: AnchorLocation,
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it (never its value).
        problem: &'static str,
    },
    /// The anchor's MAC does not verify under the key given.
    #[error(
        "audit anchor {location}: its MAC does not verify under the audit key given (id \
         {key_id}){}",
        match stored_key_id {
            Some(id) if id != key_id => format!("; it names audit key id {id}: give that key"),
            _ => "; the anchor was altered by someone without the key".to_owned(),
        }
    )]
    BadMac {
        /// The anchor.
        location: AnchorLocation,
        /// The id of the key used.
        key_id: String,
        /// The key id the anchor names, if any.
        stored_key_id: Option<String>,
    },
    /// The writer's chain ends before the anchored entry: its file lost its tail (or was
    /// replaced) before it was reopened. The anchor is left as it is, as evidence.
    #[error(
        "audit anchor {location} records seq {anchored_seq}, beyond this writer's head at seq \
         {seq}: the audit file lost entries from its end; run `keyturn audit verify --anchor \
         {location}` on it"
    )]
    Behind {
        /// The anchor.
        location: AnchorLocation,
        /// The seq the anchor holds.
        anchored_seq: u64,
        /// The seq the writer tried to record.
        seq: u64,
    },
    /// The anchor holds this seq with another hash: the writer's chain is not the anchored one.
    #[error(
        "audit anchor {location} records another hash for seq {seq} than this writer's: the \
         audit file was replaced; run `keyturn audit verify --anchor {location}` on it"
    )]
    Diverged {
        /// The anchor.
        location: AnchorLocation,
        /// The seq.
        seq: u64,
    },
    /// Another writer kept winning the check-and-set race.
    #[error("audit anchor {location}: gave up after {attempts} check-and-set conflicts")]
    Contended {
        /// The anchor.
        location: AnchorLocation,
        /// How many writes were tried.
        attempts: u32,
    },
}

impl HasExitCode for AnchorError {
    /// README's table: Vault's own classification; 66 when nothing is recorded; 1 for an
    /// anchor that does not verify or does not match the chain (evidence of tampering, like a
    /// broken chain); 75 when the store stayed busy.
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Vault { source, .. } => source.exit_code(),
            Self::Missing { .. } => ExitCode::NotFound,
            Self::Malformed { .. }
            | Self::BadMac { .. }
            | Self::Behind { .. }
            | Self::Diverged { .. } => ExitCode::Failed,
            Self::Contended { .. } => ExitCode::Busy,
        }
    }
}

/// What [`Anchor::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The head was written, as this KV version.
    Advanced {
        /// The KV v2 version written.
        version: u64,
    },
    /// The anchor already held this head or a later one of the same chain: nothing written.
    AlreadyThere,
}

/// An anchor in a store, with the key its MAC is made and checked with.
#[derive(Debug, Clone)]
pub struct Anchor {
    vault: Arc<Vault>,
    location: AnchorLocation,
    key: ChainKey,
}

impl Anchor {
    /// The anchor at `location`, through `vault`, under `key` (the log's
    /// [`HmacKey::chain_key`](super::HmacKey::chain_key)).
    #[must_use]
    pub fn new(vault: Arc<Vault>, location: AnchorLocation, key: ChainKey) -> Self {
        Self {
            vault,
            location,
            key,
        }
    }

    /// Where it is kept.
    #[must_use]
    pub fn location(&self) -> &AnchorLocation {
        &self.location
    }

    /// Reads the anchor and checks its MAC.
    ///
    /// # Errors
    /// [`AnchorError::Missing`] when nothing is recorded, [`AnchorError::Malformed`],
    /// [`AnchorError::BadMac`], [`AnchorError::Vault`].
    pub async fn read(&self) -> Result<AnchorHead, AnchorError> {
        match self.read_versioned().await? {
            Some((head, _)) => Ok(head),
            None => Err(AnchorError::Missing {
                location: self.location.clone(),
            }),
        }
    }

    /// Records `head` unless the anchor already holds it: reads the current anchor and its KV
    /// version, then writes with check-and-set on that version, so two writers cannot move it
    /// backwards; a lost race is retried on what the winner wrote. Give heads in the order the
    /// log recorded them (e.g. the latest [`RecordedEvent`] at each tick): an anchor beyond
    /// `head` is taken to mean the file lost its tail.
    ///
    /// # Errors
    /// [`AnchorError::Behind`] and [`AnchorError::Diverged`] when the anchor shows that the
    /// writer's chain is not (or no longer) the anchored one; [`AnchorError::BadMac`] and
    /// [`AnchorError::Malformed`] for an anchor that does not verify (left in place: it is
    /// evidence); [`AnchorError::Contended`]; [`AnchorError::Vault`].
    pub async fn record(&self, head: AnchorHead) -> Result<Recorded, AnchorError> {
        let (VaultKvRef { mount, path }, location) = (self.kv(), &self.location);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let current = self.read_versioned().await?;
            let cas = match current {
                Some((stored, _)) if stored.seq == head.seq && stored.hash != head.hash => {
                    return Err(AnchorError::Diverged {
                        location: location.clone(),
                        seq: head.seq,
                    });
                }
                Some((stored, _)) if stored.seq > head.seq => {
                    return Err(AnchorError::Behind {
                        location: location.clone(),
                        anchored_seq: stored.seq,
                        seq: head.seq,
                    });
                }
                Some((stored, _)) if stored.seq == head.seq => return Ok(Recorded::AlreadyThere),
                Some((_, version)) => version,
                None => 0,
            };
            match self
                .vault
                .kv2_write(mount, path, &self.encode(head), Some(cas))
                .await
            {
                Ok(version) => return Ok(Recorded::Advanced { version }),
                Err(VaultError::CasConflict { .. }) => {}
                Err(source) => {
                    return Err(AnchorError::Vault {
                        location: location.clone(),
                        source: Box::new(source),
                    });
                }
            }
        }
        Err(AnchorError::Contended {
            location: location.clone(),
            attempts: MAX_CAS_ATTEMPTS,
        })
    }

    fn kv(&self) -> VaultKvRef<'_> {
        let AnchorLocation::VaultKv { mount, path } = &self.location;
        VaultKvRef { mount, path }
    }

    fn encode(&self, head: AnchorHead) -> SecretData {
        let mut d = SecretData::new();
        d.insert("seq", SecretValue::from_str_copy(&head.seq.to_string()));
        d.insert("hash", SecretValue::from_str_copy(&head.hash.to_hex()));
        d.insert(
            "mac",
            SecretValue::from_str_copy(&anchor_mac(&self.key, head).to_hex()),
        );
        d.insert("key_id", SecretValue::from_str_copy(self.key.key_id()));
        d
    }

    /// The verified anchor and its KV version, or `None` when nothing is recorded.
    async fn read_versioned(&self) -> Result<Option<(AnchorHead, u64)>, AnchorError> {
        let VaultKvRef { mount, path } = self.kv();
        let versioned = match self.vault.kv2_read(mount, path, None).await {
            Ok(v) => v,
            Err(VaultError::NotFound { .. }) => return Ok(None),
            Err(source) => {
                return Err(AnchorError::Vault {
                    location: self.location.clone(),
                    source: Box::new(source),
                });
            }
        };
        let head = decode(&versioned.data, &self.key, &self.location)?;
        Ok(Some((head, versioned.version)))
    }
}

struct VaultKvRef<'a> {
    mount: &'a str,
    path: &'a str,
}

/// The MAC over the label, `seq` (8 bytes, big-endian) and `hash`.
fn anchor_mac(key: &ChainKey, head: AnchorHead) -> ChainHash {
    key.mac_record(MAC_LABEL, &[&head.seq.to_be_bytes(), head.hash.as_bytes()])
}

/// Reads the fields back and checks the MAC.
fn decode(
    data: &SecretData,
    key: &ChainKey,
    location: &AnchorLocation,
) -> Result<AnchorHead, AnchorError> {
    let malformed = |field, problem| AnchorError::Malformed {
        location: location.clone(),
        field,
        problem,
    };
    let text = |field: &'static str| -> Result<&str, AnchorError> {
        data.get(field)
            .ok_or_else(|| malformed(field, "is missing"))?
            .expose_str()
            .map_err(|_| malformed(field, "is not text"))
    };
    let seq = text("seq")?
        .parse::<u64>()
        .map_err(|_| malformed("seq", "is not a sequence number"))?;
    let hash = text("hash")?
        .parse::<ChainHash>()
        .map_err(|_| malformed("hash", "is not 64 hex digits"))?;
    let mac = text("mac")?
        .parse::<ChainHash>()
        .map_err(|_| malformed("mac", "is not 64 hex digits"))?;
    let head = AnchorHead { seq, hash };
    if !key.verify_record(
        MAC_LABEL,
        &[&head.seq.to_be_bytes(), head.hash.as_bytes()],
        &mac,
    ) {
        return Err(AnchorError::BadMac {
            location: location.clone(),
            key_id: key.key_id().to_owned(),
            stored_key_id: data
                .get("key_id")
                .and_then(|v| v.expose_str().ok())
                // An id is 16 hex digits; anything else is not echoed.
                .filter(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(str::to_owned),
        });
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::HmacKey;

    fn loc() -> AnchorLocation {
        "vault-kv:secret/keyturn/anchor".parse().unwrap()
    }

    fn head() -> AnchorHead {
        AnchorHead {
            seq: 41,
            hash: ChainHash::of(b"entry 41"),
        }
    }

    fn encoded(key: &HmacKey, h: AnchorHead) -> SecretData {
        let mut d = SecretData::new();
        d.insert("seq", SecretValue::from_str_copy(&h.seq.to_string()));
        d.insert("hash", SecretValue::from_str_copy(&h.hash.to_hex()));
        let mac = anchor_mac(&key.chain_key(), h);
        d.insert("mac", SecretValue::from_str_copy(&mac.to_hex()));
        d.insert("key_id", SecretValue::from_str_copy(&key.id()));
        d
    }

    #[test]
    fn locations_are_vault_kv_mount_then_path() {
        assert_eq!(
            loc(),
            AnchorLocation::VaultKv {
                mount: "secret".into(),
                path: "keyturn/anchor".into()
            }
        );
        assert_eq!(loc().to_string(), "vault-kv:secret/keyturn/anchor");
        for bad in [
            "secret/keyturn/anchor",
            "vault-kv:secret",
            "vault-kv:/x",
            "vault-kv:secret/a/../b",
            "vault-kv:secret/a//b",
            "file:/tmp/x",
            "vault-kv:secret/a\u{1b}[2J",
        ] {
            let e = bad.parse::<AnchorLocation>().unwrap_err();
            assert!(e.to_string().contains("vault-kv:MOUNT/PATH"), "{bad}: {e}");
            assert!(!e.to_string().contains('\u{1b}'), "{bad}: {e}");
        }
    }

    #[test]
    fn an_anchor_written_under_the_key_reads_back() {
        let key = HmacKey::generate().unwrap();
        let got = decode(&encoded(&key, head()), &key.chain_key(), &loc()).unwrap();
        assert_eq!(got, head());
    }

    #[test]
    fn a_moved_anchor_or_another_key_fails_the_mac_and_says_which() {
        let key = HmacKey::generate().unwrap();
        // Someone without the key points the anchor at an earlier entry, keeping the MAC.
        let mut moved = encoded(&key, head());
        moved.insert("seq", SecretValue::from_str_copy("40"));
        let e = decode(&moved, &key.chain_key(), &loc()).unwrap_err();
        assert!(matches!(e, AnchorError::BadMac { .. }), "{e:?}");
        assert!(e.to_string().contains("altered"), "{e}");
        assert_eq!(e.exit_code(), 1);

        let other = HmacKey::generate().unwrap();
        let e = decode(&encoded(&other, head()), &key.chain_key(), &loc()).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("names audit key id {}", other.id())),
            "{e}"
        );
    }

    #[test]
    fn another_secret_at_the_location_is_malformed_and_its_values_are_not_echoed() {
        let key = HmacKey::generate().unwrap();
        let mut d = SecretData::new();
        d.insert("password", SecretValue::from_str_copy("canary-anchor-5b7e"));
        let e = decode(&d, &key.chain_key(), &loc()).unwrap_err();
        assert!(
            matches!(e, AnchorError::Malformed { field: "seq", .. }),
            "{e:?}"
        );
        let mut d = encoded(&key, head());
        d.insert("seq", SecretValue::from_str_copy("canary-anchor-5b7e"));
        d.insert("key_id", SecretValue::from_str_copy("canary-anchor-5b7e"));
        for e in [decode(&d, &key.chain_key(), &loc()).unwrap_err(), {
            let mut d = encoded(&key, head());
            d.insert("mac", SecretValue::from_str_copy(&"0".repeat(64)));
            d.insert("key_id", SecretValue::from_str_copy("canary-anchor-5b7e"));
            decode(&d, &key.chain_key(), &loc()).unwrap_err()
        }] {
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("canary-anchor"), "{shown}");
        }
    }

    #[test]
    fn a_recorded_event_is_a_head() {
        let r = RecordedEvent {
            seq: 3,
            time: chrono::Utc::now(),
            hash: ChainHash::of(b"3"),
        };
        assert_eq!(
            AnchorHead::from(r),
            AnchorHead {
                seq: 3,
                hash: ChainHash::of(b"3")
            }
        );
    }
}

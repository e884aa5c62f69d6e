//! The chain: an entry's canonical form, its hash, its MAC, and the head a writer continues
//! from.
//!
//! # Canonical form
//!
//! The canonical form of an entry is its compact `serde_json` serialization with every member
//! but `hash` and `mac`, in this fixed order (the field order of [`Entry`](super::Entry)):
//!
//! ```text
//! time, seq, actor{kind, name, namespace?, pod?, entity?}, action, resource, outcome,
//! detail?, reason?, request_id?, rotation_id?, value_hmac?, field_hmacs?, prev
//! ```
//!
//! - No whitespace between tokens; members marked `?` are left out when absent (never `null`).
//! - Strings use `serde_json`'s escaping: `"` `\` and control characters are escaped (`\n`,
//!   `\u001f`, …), everything else, non-ASCII included, is written as raw UTF-8.
//! - `time` is RFC 3339 in UTC with milliseconds and a `Z` (`2025-01-31T03:00:00.123Z`);
//!   `seq` is a decimal integer; `prev`, `hash` and `mac` are 64 lowercase hex digits;
//!   `field_hmacs` is an object whose members are in name order.
//!
//! # Hash and MAC
//!
//! `hash` is the lowercase hex SHA-256 of the canonical form; the next entry's `prev` is this
//! `hash`, so each hash covers every entry before it. `mac` is HMAC-SHA-256 of the 32 bytes of
//! `hash` under the **chain key**, a key derived from the audit HMAC key
//! ([`HmacKey::chain_key`](super::HmacKey::chain_key)). The hash alone has no secret: anyone
//! who can write the file can edit an entry and recompute every hash after it. The MAC is what
//! makes that need the key; and since `hash` covers `prev`, one entry's MAC vouches for the
//! whole chain up to it.
//!
//! The MAC is over the hash rather than over the canonical form so that the line stays
//! checkable without the key (the file sink checks the last line's hash when it reopens a
//! file, and has no key), and so that the MAC costs two SHA-256 blocks whatever the line's
//! length.
//!
//! The line on disk is the canonical form with `,"hash":"<hex>","mac":"<hex>"` inserted before
//! the closing brace, then `\n`. An independent checker needs no JSON library: cut the last
//! 148 bytes (both members and the `}`), put back the `}`, hash; then HMAC the hash.
//!
//! Lines written before keyed chaining (keyturn up to 0.x, "format 1") end with the `hash`
//! member alone. They are still read and linked, and reported as *unkeyed*: nothing protects
//! them against a rewrite except a keyed entry written after them, whose MAC covers them
//! through `prev`.
//!
//! The verifier works on the bytes as they are on disk. It does not re-serialize, so the hash
//! binds exactly what is stored; the writer only ever stores the canonical form.

use std::fmt;
use std::str::FromStr;

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use super::event::{Actor, Event, Outcome};

/// Length of a hash in hex digits.
pub const HASH_HEX_LEN: usize = 64;

/// What precedes the hex digits of the trailing `hash` member.
const HASH_MEMBER_PREFIX: &[u8] = b",\"hash\":\"";

/// Bytes from the start of the `hash` member to the end of an unkeyed line (newline excluded):
/// `,"hash":"` + 64 hex digits + `"}`.
pub(crate) const HASH_TAIL_LEN: usize = HASH_MEMBER_PREFIX.len() + HASH_HEX_LEN + 2;

/// What precedes the hex digits of the `mac` member, which follows `hash` on keyed lines.
const MAC_MEMBER_PREFIX: &[u8] = b",\"mac\":\"";

/// The `mac` member: `,"mac":"` + 64 hex digits + `"`.
const MAC_MEMBER_LEN: usize = MAC_MEMBER_PREFIX.len() + HASH_HEX_LEN + 1;

/// A SHA-256 digest in the chain: an entry's `hash`, or the `prev` that links to it.
///
/// Written and parsed as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainHash([u8; 32]);

impl ChainHash {
    /// The `prev` of the first entry of a chain: 64 zeros.
    pub const GENESIS: ChainHash = ChainHash([0; 32]);

    /// Wraps a raw digest.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether this is [`ChainHash::GENESIS`].
    #[must_use]
    pub fn is_genesis(&self) -> bool {
        *self == Self::GENESIS
    }

    /// SHA-256 of `bytes`.
    #[must_use]
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The 64 lowercase hex digits.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn write_hex(&self, out: &mut [u8; HASH_HEX_LEN]) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
        }
    }

    /// Parses exactly 64 *lowercase* hex digits, the only spelling the writer produces.
    /// Branch-free over a table, as the verifier calls it twice per line.
    pub(crate) fn from_canonical_hex(s: &[u8]) -> Option<Self> {
        if s.len() != HASH_HEX_LEN {
            return None;
        }
        let mut out = [0u8; 32];
        let mut bad = 0u8;
        for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
            let (hi, lo) = (
                HEX_VALUE[usize::from(pair[0])],
                HEX_VALUE[usize::from(pair[1])],
            );
            bad |= hi | lo;
            *o = (hi << 4) | (lo & 0x0f);
        }
        // Digits map to 0..=15; anything else to 0xff, which sets the high bits.
        (bad & 0xf0 == 0).then_some(Self(out))
    }
}

/// The value of each lowercase hex digit; 0xff for every other byte.
const HEX_VALUE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hex = [0u8; HASH_HEX_LEN];
        self.write_hex(&mut hex);
        // The digits are ASCII by construction.
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainHash({self})")
    }
}

/// The text is not 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a chain hash is 64 hex digits (SHA-256); got {len} characters that are not")]
pub struct InvalidChainHash {
    /// Length of the rejected text, in characters.
    pub len: usize,
}

/// Accepts upper- or lowercase, for anchors typed or pasted by people.
impl FromStr for ChainHash {
    type Err = InvalidChainHash;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_canonical_hex(s.trim().to_ascii_lowercase().as_bytes()).ok_or(InvalidChainHash {
            len: s.chars().count(),
        })
    }
}

impl Serialize for ChainHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut hex = [0u8; HASH_HEX_LEN];
        self.write_hex(&mut hex);
        s.serialize_str(std::str::from_utf8(&hex).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> Deserialize<'de> for ChainHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::from_canonical_hex(s.as_bytes())
            .ok_or_else(|| serde::de::Error::custom("expected 64 lowercase hex digits"))
    }
}

/// The key the chain's MACs are made with: derived from the audit HMAC key by
/// [`HmacKey::chain_key`](super::HmacKey::chain_key), never the audit key itself.
///
/// Holds HMAC-SHA-256 already keyed (the inner and outer pads hashed once), so a MAC costs two
/// SHA-256 blocks. `hmac` 0.12 cannot zeroize that state; it lives as long as the
/// [`HmacKey`](super::HmacKey) it comes from, in the same process. `Debug` shows only the
/// audit key's id.
#[derive(Clone)]
pub struct ChainKey {
    keyed: Hmac<Sha256>,
    key_id: String,
}

impl ChainKey {
    /// A chain key from derived key bytes; `key_id` is the audit key's id.
    pub(crate) fn new(derived: &[u8], key_id: String) -> Self {
        Self {
            keyed: <Hmac<Sha256> as Mac>::new_from_slice(derived)
                .expect("HMAC takes keys of any length"),
            key_id,
        }
    }

    /// The id of the audit key this was derived from ([`HmacKey::id`](super::HmacKey::id)):
    /// not secret, so it can name the key in messages.
    #[must_use]
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The MAC of an entry whose hash is `hash`.
    pub(crate) fn mac(&self, hash: &ChainHash) -> ChainHash {
        let mut m = self.keyed.clone();
        m.update(&hash.0);
        ChainHash(m.finalize().into_bytes().into())
    }

    /// Whether `mac` is the MAC of `hash`, compared in constant time by `hmac`.
    pub(crate) fn verify(&self, hash: &ChainHash, mac: &ChainHash) -> bool {
        let mut m = self.keyed.clone();
        m.update(&hash.0);
        m.verify_slice(&mac.0).is_ok()
    }

    /// A MAC over `label` and `parts` (each length-prefixed), for records kept outside the
    /// log under the same key, such as the [anchor](super::anchor). An entry's MAC is over
    /// exactly 32 bytes and this one over more, so the two can never be confused.
    pub(crate) fn mac_record(&self, label: &[u8], parts: &[&[u8]]) -> ChainHash {
        ChainHash(self.record(label, parts).finalize().into_bytes().into())
    }

    /// Whether `mac` is [`ChainKey::mac_record`] of `label` and `parts`, in constant time.
    pub(crate) fn verify_record(&self, label: &[u8], parts: &[&[u8]], mac: &ChainHash) -> bool {
        self.record(label, parts).verify_slice(&mac.0).is_ok()
    }

    fn record(&self, label: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut m = self.keyed.clone();
        m.update(label);
        for p in parts {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        m
    }
}

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainKey(audit key id {})", self.key_id)
    }
}

/// Where the next entry goes: its `seq` and its `prev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// The `seq` the next entry gets.
    pub next_seq: u64,
    /// The `prev` the next entry gets: the last entry's `hash`.
    pub prev: ChainHash,
}

impl ChainHead {
    /// The head of an empty chain: `seq` 0, `prev` all zeros.
    pub const GENESIS: ChainHead = ChainHead {
        next_seq: 0,
        prev: ChainHash::GENESIS,
    };

    /// The head after an entry with this `seq` and `hash`; `None` if `seq` is `u64::MAX`.
    #[must_use]
    pub fn after(seq: u64, hash: ChainHash) -> Option<Self> {
        Some(Self {
            next_seq: seq.checked_add(1)?,
            prev: hash,
        })
    }
}

/// Why a line is not a well-formed audit entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The line does not end with the `"hash":"<64 lowercase hex>"}` member that every entry
    /// ends with.
    #[error("the line does not end with a \"hash\" member of 64 lowercase hex digits")]
    NoHashMember,
    /// The line is longer than any line the writer makes
    /// ([`MAX_LINE_LEN`](super::tail::MAX_LINE_LEN)).
    #[error("the line is longer than {} bytes", super::tail::MAX_LINE_LEN)]
    TooLong,
    /// The line is not JSON, or lacks `seq`/`prev`/`hash`, or has them twice or mistyped.
    #[error("not an audit entry: {reason}")]
    NotAnEntry {
        /// What kind of problem, and where ([`json_error_reason`]): never the line's content.
        reason: String,
    },
}

/// What is wrong with a line serde_json refused, without serde_json's own words: those quote
/// the input (`invalid type: string "…"`), and a file given as an audit log may hold anything,
/// a token pasted by mistake included. Only a missing member is named, since its name is
/// keyturn's own.
#[must_use]
pub fn json_error_reason(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let text = e.to_string();
    let what = match e.classify() {
        Category::Data => match text
            .strip_prefix("missing field `")
            .and_then(|r| r.split_once('`'))
        {
            Some((field, _)) => format!("missing member `{field}`"),
            None => "a member is of the wrong type, unknown or repeated".to_owned(),
        },
        Category::Syntax => "not valid JSON".to_owned(),
        Category::Eof => "ends in the middle of a JSON value".to_owned(),
        Category::Io => "cannot be read".to_owned(),
    };
    format!("{what} at column {}", e.column())
}

/// What the verifier and the file sink need from one line, with its hash recomputed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CheckedLine {
    /// The entry's `seq`.
    pub seq: u64,
    /// The entry's `prev`.
    pub prev: ChainHash,
    /// The `hash` stored in the line.
    pub stored: ChainHash,
    /// The hash of the line's canonical form, recomputed.
    pub computed: ChainHash,
    /// The line's `mac`, and whether it was checked.
    pub mac: MacCheck,
}

/// The state of a line's `mac`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MacCheck {
    /// The line has no `mac`: written before keyed chaining.
    Absent,
    /// The line has a `mac`, and no key was given to check it.
    Unchecked,
    /// The `mac` is the MAC of the stored `hash` under the key given.
    Valid,
    /// The `mac` is not: the line was rewritten, or written under another key.
    Invalid,
}

/// The members the chain checks need, for lines not in the writer's exact layout; serde skips
/// (but still syntax-checks) the others. Byte slices rather than `&str`: hex needs no UTF-8
/// check, and the hash covers the bytes anyway.
#[derive(Deserialize)]
struct LineView<'a> {
    seq: u64,
    #[serde(borrow)]
    prev: &'a [u8],
    #[serde(borrow)]
    hash: &'a [u8],
    #[serde(borrow, default)]
    mac: Option<&'a [u8]>,
}

/// Every line starts `{"time":"<24 bytes>","seq":<digits>,"actor":{`.
const TIME_PREFIX: &[u8] = b"{\"time\":\"";
const TIME_LEN: usize = "2025-01-31T03:00:00.123Z".len();
const SEQ_PREFIX: &[u8] = b"\",\"seq\":";
const SEQ_AT: usize = TIME_PREFIX.len() + TIME_LEN + SEQ_PREFIX.len();
const AFTER_SEQ: &[u8] = b",\"actor\":{";
/// …and ends `,"prev":"<64 hex>"` followed by the hash member (and, on keyed lines, the mac
/// member, which [`check_line`] has cut off before this is used).
const PREV_MEMBER: &[u8] = b",\"prev\":\"";
const PREV_TAIL_LEN: usize = PREV_MEMBER.len() + HASH_HEX_LEN + 1 + HASH_TAIL_LEN;

/// `seq` and the `prev` digits of a line in the writer's exact layout, read at their fixed
/// places without a JSON parser; `None` when the line is laid out any other way. `line` ends
/// with the hash member and one more byte (the `}`, or the `,` of the mac member).
fn canonical_fields(line: &[u8]) -> Option<(u64, &[u8])> {
    let n = line.len();
    if n < SEQ_AT + 1 + AFTER_SEQ.len() + PREV_TAIL_LEN
        || !line.starts_with(TIME_PREFIX)
        || &line[SEQ_AT - SEQ_PREFIX.len()..SEQ_AT] != SEQ_PREFIX
    {
        return None;
    }
    let prev_at = n - PREV_TAIL_LEN;
    let digits = line[SEQ_AT..prev_at]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0
        || (digits > 1 && line[SEQ_AT] == b'0')
        || !line[SEQ_AT + digits..prev_at].starts_with(AFTER_SEQ)
        || !line[prev_at..].starts_with(PREV_MEMBER)
        || line[prev_at + PREV_MEMBER.len() + HASH_HEX_LEN] != b'"'
    {
        return None;
    }
    let seq = line[SEQ_AT..SEQ_AT + digits]
        .iter()
        .try_fold(0u64, |acc, d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })?;
    let prev_hex = &line[prev_at + PREV_MEMBER.len()..prev_at + PREV_MEMBER.len() + HASH_HEX_LEN];
    Some((seq, prev_hex))
}

/// The trailing `mac` member of a keyed line: its value, and where the member starts.
fn trailing_mac(line: &[u8]) -> Option<(ChainHash, usize)> {
    let n = line.len();
    if n < MAC_MEMBER_LEN + 1 + HASH_TAIL_LEN || !line.ends_with(b"\"}") {
        return None;
    }
    let at = n - 1 - MAC_MEMBER_LEN;
    let member = &line[at..n - 1];
    if !member.starts_with(MAC_MEMBER_PREFIX) {
        return None;
    }
    let hex = &member[MAC_MEMBER_PREFIX.len()..MAC_MEMBER_PREFIX.len() + HASH_HEX_LEN];
    ChainHash::from_canonical_hex(hex).map(|mac| (mac, at))
}

/// [`check_line_with`] without a key: the hash is checked, a `mac` only noted.
pub(crate) fn check_line(line: &[u8]) -> Result<CheckedLine, LineError> {
    check_line_with(line, None)
}

/// Parses `line` (without its `\n`) just enough for the chain checks, recomputes its hash
/// from its bytes, and checks its `mac` under `key` if both are there.
///
/// Lines in the writer's exact layout (all of them, unless edited) are read at fixed places:
/// `seq` after the fixed-width `time`, `prev`, `hash` and `mac` at the end. That is what makes
/// the verifier fast, and it is enough: the hash then covers every byte but the `mac`, which
/// is checked against the hash, so a line whose other members were changed fails. Any other
/// line goes through serde, which accepts any member order and says precisely what is wrong
/// when it is not an entry at all.
pub(crate) fn check_line_with(
    line: &[u8],
    key: Option<&ChainKey>,
) -> Result<CheckedLine, LineError> {
    // Where the hash member ends: the `}` of an unkeyed line, the `,` of a keyed line's mac.
    let (mac, end) = match trailing_mac(line) {
        Some((mac, at)) => (Some(mac), at),
        None => (None, line.len().saturating_sub(1)),
    };
    if end < HASH_TAIL_LEN || line.last() != Some(&b'}') || line[end - 1] != b'"' {
        return Err(LineError::NoHashMember);
    }
    let hash_at = end + 1 - HASH_TAIL_LEN;
    let member = &line[hash_at..end];
    if !member.starts_with(HASH_MEMBER_PREFIX) {
        return Err(LineError::NoHashMember);
    }
    let hex = &member[HASH_MEMBER_PREFIX.len()..HASH_MEMBER_PREFIX.len() + HASH_HEX_LEN];
    let stored = ChainHash::from_canonical_hex(hex).ok_or(LineError::NoHashMember)?;

    let (seq, prev_hex) = match canonical_fields(&line[..=end]) {
        Some(fields) => fields,
        None => {
            let view: LineView<'_> =
                serde_json::from_slice(line).map_err(|e| LineError::NotAnEntry {
                    reason: json_error_reason(&e),
                })?;
            // serde rejects a duplicated member, so the ones parsed are the trailing ones cut.
            let same_mac = match (view.mac, mac) {
                (None, None) => true,
                (Some(v), Some(m)) => v == m.to_hex().as_bytes(),
                _ => false,
            };
            if view.hash != hex || !same_mac {
                return Err(LineError::NoHashMember);
            }
            (view.seq, view.prev)
        }
    };
    let prev = ChainHash::from_canonical_hex(prev_hex).ok_or_else(|| LineError::NotAnEntry {
        reason: "\"prev\" is not 64 lowercase hex digits".to_owned(),
    })?;

    let mut h = Sha256::new();
    h.update(&line[..hash_at]);
    h.update(b"}");
    let mac = match (mac, key) {
        (None, _) => MacCheck::Absent,
        (Some(_), None) => MacCheck::Unchecked,
        (Some(m), Some(k)) if k.verify(&stored, &m) => MacCheck::Valid,
        (Some(_), Some(_)) => MacCheck::Invalid,
    };
    Ok(CheckedLine {
        seq,
        prev,
        stored,
        computed: ChainHash(h.finalize().into()),
        mac,
    })
}

/// Appends `event` to `buf` as one sealed line at `head`, stamped `time`, MACed under `key`,
/// and returns its hash.
///
/// On error `buf` is left as it was.
pub(crate) fn seal_into(
    buf: &mut Vec<u8>,
    key: &ChainKey,
    head: ChainHead,
    time: DateTime<Utc>,
    event: &Event,
) -> Result<ChainHash, serde_json::Error> {
    let start = buf.len();
    let body = EntryBody::new(event, time, head);
    if let Err(e) = serde_json::to_writer(&mut *buf, &body) {
        buf.truncate(start);
        return Err(e);
    }
    let hash = ChainHash::of(&buf[start..]);
    let mac = key.mac(&hash);
    buf.pop(); // the closing brace; the hash and mac members go in front of it
    let mut hex = [0u8; HASH_HEX_LEN];
    buf.extend_from_slice(HASH_MEMBER_PREFIX);
    hash.write_hex(&mut hex);
    buf.extend_from_slice(&hex);
    buf.push(b'"');
    buf.extend_from_slice(MAC_MEMBER_PREFIX);
    mac.write_hex(&mut hex);
    buf.extend_from_slice(&hex);
    buf.extend_from_slice(b"\"}\n");
    Ok(hash)
}

/// One line of the audit log: an [`Event`] stamped, numbered and chained.
///
/// The field order here *is* the canonical order (see the module docs); a test checks
/// that serializing a parsed entry gives back the exact line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// When the log sealed it: RFC 3339, UTC, milliseconds.
    #[serde(with = "rfc3339_millis")]
    pub time: DateTime<Utc>,
    /// Position in the chain, from 0, continuing across files.
    pub seq: u64,
    /// Who.
    pub actor: Actor,
    /// What.
    pub action: String,
    /// Which secret path or policy.
    pub resource: String,
    /// How it turned out.
    pub outcome: Outcome,
    /// More about the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Rotation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_id: Option<String>,
    /// Hex HMAC-SHA256 of the value under the audit key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_hmac: Option<String>,
    /// For a secret with several fields: the hex HMAC-SHA256 of each under the audit key, by
    /// field name (in name order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_hmacs: Option<BTreeMap<String, String>>,
    /// The previous entry's `hash`, or 64 zeros for the first entry of a chain.
    pub prev: ChainHash,
    /// SHA-256 of this entry's canonical form (every member above).
    pub hash: ChainHash,
    /// HMAC-SHA-256 of `hash` under the chain key; absent on entries written before keyed
    /// chaining. See [`chain`](super::chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<ChainHash>,
}

impl Entry {
    /// Parses one line (with or without its trailing newline). Does not check the hash.
    ///
    /// # Errors
    /// [`LineError::NotAnEntry`] when the line is not an entry.
    pub fn parse(line: &[u8]) -> Result<Entry, LineError> {
        serde_json::from_slice(line.strip_suffix(b"\n").unwrap_or(line)).map_err(|e| {
            LineError::NotAnEntry {
                reason: json_error_reason(&e),
            }
        })
    }

    /// `time` as written in the log.
    #[must_use]
    pub fn time_rfc3339(&self) -> String {
        self.time.to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

/// [`Entry`] without `hash`, borrowing from the [`Event`]: what gets serialized and hashed.
/// Field names and order must match [`Entry`].
#[derive(Serialize)]
pub(crate) struct EntryBody<'a> {
    #[serde(with = "rfc3339_millis")]
    time: DateTime<Utc>,
    seq: u64,
    actor: &'a Actor,
    action: &'a str,
    resource: &'a str,
    outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rotation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_hmac: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field_hmacs: Option<&'a BTreeMap<String, String>>,
    prev: ChainHash,
}

impl<'a> EntryBody<'a> {
    pub(crate) fn new(event: &'a Event, time: DateTime<Utc>, head: ChainHead) -> Self {
        Self {
            time,
            seq: head.next_seq,
            actor: &event.actor,
            action: &event.action,
            resource: &event.resource,
            outcome: event.outcome,
            detail: event.detail.as_deref(),
            reason: event.reason.as_deref(),
            request_id: event.request_id.as_deref(),
            rotation_id: event.rotation_id.as_deref(),
            value_hmac: event.value_hmac.as_deref(),
            field_hmacs: event.field_hmacs.as_ref(),
            prev: head.prev,
        }
    }
}

/// `time` as RFC 3339, UTC, milliseconds, `Z`: fixed width, so lines sort and align.
mod rfc3339_millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretValue;
    use crate::audit::{EventBuilder, HmacKey};

    fn test_key() -> HmacKey {
        HmacKey::from_bytes_for_test(&[0x5a; 32])
    }

    fn sealed_line(head: ChainHead) -> (Vec<u8>, ChainHash) {
        let key = test_key();
        let event = crate::audit::EventBuilder::new(
            &key,
            Actor::operator("alice").with_entity("ent-1"),
            "break-glass.reveal",
            "orders-db",
        )
        .outcome(Outcome::Started)
        .reason("leaked in \"chat\"\n")
        .build();
        let time = DateTime::parse_from_rfc3339("2025-01-31T03:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut buf = Vec::new();
        let hash = seal_into(&mut buf, &key.chain_key(), head, time, &event).unwrap();
        (buf, hash)
    }

    /// The line as keyturn wrote it before keyed chaining: the same, without the `mac`.
    fn unkeyed(line: &[u8]) -> Vec<u8> {
        let n = line.len();
        let mut v = line[..n - 2 - MAC_MEMBER_LEN].to_vec();
        v.extend_from_slice(b"}\n");
        v
    }

    #[test]
    fn a_sealed_line_hashes_its_canonical_form_and_macs_the_hash_under_the_chain_key() {
        let (line, hash) = sealed_line(ChainHead::GENESIS);
        let text = std::str::from_utf8(&line).unwrap();
        let mac = test_key().chain_key().mac(&hash);
        assert!(
            text.ends_with(&format!(",\"hash\":\"{hash}\",\"mac\":\"{mac}\"}}\n")),
            "{text}"
        );
        assert!(text.starts_with("{\"time\":\"2025-01-31T03:00:00.123Z\",\"seq\":0,"));
        // As the module documentation tells an independent checker: cut 148 bytes, put back
        // the brace, hash; then HMAC-SHA-256 the 32 bytes under the chain key.
        let canonical = format!("{}}}", &text[..text.len() - 1 - 148]);
        assert_eq!(ChainHash::of(canonical.as_bytes()), hash);
        assert!(canonical.ends_with(&format!("\"prev\":\"{}\"}}", "0".repeat(64))));
        let mut m =
            <Hmac<Sha256> as Mac>::new_from_slice(&test_key().chain_key_bytes_for_test()).unwrap();
        m.update(hash.as_bytes());
        assert_eq!(hex::encode(m.finalize().into_bytes()), mac.to_hex());
    }

    #[test]
    fn the_mac_is_checked_under_the_key_given_and_only_noted_without_one() {
        let (line, hash) = sealed_line(ChainHead::GENESIS);
        let body = &line[..line.len() - 1];
        let own = test_key().chain_key();
        let other = HmacKey::from_bytes_for_test(&[0xa5; 32]).chain_key();
        let mac = |key| check_line_with(body, key).unwrap().mac;
        assert_eq!(mac(Some(&own)), MacCheck::Valid);
        assert_eq!(mac(Some(&other)), MacCheck::Invalid);
        assert_eq!(mac(None), MacCheck::Unchecked);
        let c = check_line_with(body, Some(&own)).unwrap();
        assert_eq!((c.stored, c.computed), (hash, hash));
    }

    #[test]
    fn a_line_without_a_mac_is_an_unkeyed_entry_with_the_same_hash() {
        let (line, hash) = sealed_line(ChainHead::GENESIS);
        let old = unkeyed(&line);
        let c = check_line_with(&old[..old.len() - 1], Some(&test_key().chain_key())).unwrap();
        assert_eq!(
            (c.stored, c.computed, c.mac),
            (hash, hash, MacCheck::Absent)
        );
    }

    #[test]
    fn a_mac_that_is_not_64_lowercase_hex_digits_leaves_no_hash_member() {
        let (line, _) = sealed_line(ChainHead::GENESIS);
        let text = std::str::from_utf8(&line[..line.len() - 1]).unwrap();
        let at = text.len() - 2 - HASH_HEX_LEN;
        let upper = format!("{}{}", &text[..at], text[at..].to_uppercase());
        assert_eq!(check_line(upper.as_bytes()), Err(LineError::NoHashMember));
    }

    #[test]
    fn chain_keys_are_derived_not_the_audit_key_and_differ_per_audit_key() {
        let key = test_key();
        let a = key.chain_key_bytes_for_test();
        assert_ne!(a.as_slice(), [0x5a; 32].as_slice());
        // No value's value_hmac can be the chain key, whatever the value.
        let label = SecretValue::from_str_copy("keyturn audit chain key v1");
        assert_ne!(key.hmac_hex(&label), hex::encode(a));
        let b = HmacKey::from_bytes_for_test(&[0xa5; 32]).chain_key_bytes_for_test();
        assert_ne!(a, b);
        assert!(!format!("{:?}", key.chain_key()).contains(&hex::encode(a)));
    }

    #[test]
    fn reserializing_a_parsed_entry_gives_back_the_exact_line() {
        let (line, _) = sealed_line(ChainHead {
            next_seq: 41,
            prev: ChainHash::of(b"x"),
        });
        let entry = Entry::parse(&line[..line.len() - 1]).unwrap();
        let again = serde_json::to_vec(&entry).unwrap();
        assert_eq!(again, &line[..line.len() - 1]);
    }

    #[test]
    fn check_line_recomputes_the_stored_hash() {
        let (line, hash) = sealed_line(ChainHead::GENESIS);
        let c = check_line(&line[..line.len() - 1]).unwrap();
        assert_eq!(
            (c.seq, c.prev, c.stored, c.computed),
            (0, ChainHash::GENESIS, hash, hash)
        );
    }

    #[test]
    fn check_line_rejects_lines_without_the_trailing_hash_member() {
        assert_eq!(check_line(b"{}"), Err(LineError::NoHashMember));
        let (line, _) = sealed_line(ChainHead::GENESIS);
        let upper = String::from_utf8(line[..line.len() - 1].to_vec())
            .unwrap()
            .to_uppercase();
        assert_eq!(check_line(upper.as_bytes()), Err(LineError::NoHashMember));
        let text = String::from_utf8(line[..line.len() - 1].to_vec()).unwrap();
        let spaced = text.replacen(",\"seq\"", ", \"seq\"", 1);
        // Still JSON, but no longer the bytes that were hashed.
        let c = check_line(spaced.as_bytes()).unwrap();
        assert_ne!(c.computed, c.stored);
    }

    #[test]
    fn json_that_merely_ends_like_an_entry_is_not_one() {
        let z = "0".repeat(64);
        for line in [
            format!("{{\"seq\":\"x\",\"prev\":\"{z}\",\"hash\":\"{z}\"}}"),
            format!("{{\"seq\":1,\"prev\":\"{z}\",\"hash\":\"{z}\",\"mac\":7}}"),
            format!("{{\"seq\":\"x\",\"prev\":\"{z}\",\"hash\":\"{z}\",\"mac\":\"{z}\"}}"),
        ] {
            assert!(check_line(line.as_bytes()).is_err(), "{line}");
        }
    }

    #[test]
    fn check_line_rejects_a_duplicated_hash_member() {
        let (line, hash) = sealed_line(ChainHead::GENESIS);
        let text = String::from_utf8(line[..line.len() - 1].to_vec()).unwrap();
        let forged = text.replacen("{\"time\"", &format!("{{\"hash\":\"{hash}\",\"time\""), 1);
        assert!(matches!(
            check_line(forged.as_bytes()),
            Err(LineError::NotAnEntry { .. })
        ));
    }

    #[test]
    fn the_fixed_layout_and_serde_read_the_same_seq_and_prev() {
        let prev = ChainHash::of(b"p");
        let (line, _) = sealed_line(ChainHead {
            next_seq: 1_234_567,
            prev,
        });
        let line = &line[..line.len() - 1];
        let (_, mac_at) = trailing_mac(line).expect("a keyed line");
        let (seq, prev_hex) = canonical_fields(&line[..=mac_at]).expect("the writer's own layout");
        assert_eq!((seq, prev_hex), (1_234_567, prev.to_hex().as_bytes()));
        let view: LineView<'_> = serde_json::from_slice(line).unwrap();
        assert_eq!((view.seq, view.prev), (seq, prev_hex));
        assert!(view.mac.is_some());
    }

    #[test]
    fn lines_in_another_layout_are_read_by_serde() {
        let (line, hash) = sealed_line(ChainHead::GENESIS);
        let text = std::str::from_utf8(&line[..line.len() - 1]).unwrap();
        // Members reordered: still an entry, but not the bytes that were hashed.
        let moved =
            text.replacen("\"seq\":0,", "", 1)
                .replacen("\"action\"", "\"seq\":0,\"action\"", 1);
        let cut = |t: &str| t.len() - MAC_MEMBER_LEN;
        assert_eq!(canonical_fields(&moved.as_bytes()[..cut(&moved)]), None);
        let c = check_line(moved.as_bytes()).unwrap();
        assert_eq!((c.seq, c.stored, c.mac), (0, hash, MacCheck::Unchecked));
        assert_ne!(c.computed, hash);
        // A leading zero is not the writer's layout either.
        let zero = text.replacen("\"seq\":0,", "\"seq\":00,", 1);
        assert_eq!(canonical_fields(&zero.as_bytes()[..cut(&zero)]), None);
        assert!(check_line(zero.as_bytes()).is_err());
        // Nor is a mac moved away from the end.
        let (mac, at) = trailing_mac(text.as_bytes()).unwrap();
        let mac_first = format!("{{\"mac\":\"{mac}\",{}}}", &text[1..at]);
        assert_eq!(
            check_line(mac_first.as_bytes()),
            Err(LineError::NoHashMember)
        );
    }

    #[test]
    fn a_seq_too_large_for_u64_is_not_an_entry() {
        let (line, _) = sealed_line(ChainHead {
            next_seq: 7,
            prev: ChainHash::GENESIS,
        });
        let text = std::str::from_utf8(&line[..line.len() - 1]).unwrap();
        let huge = text.replacen("\"seq\":7,", "\"seq\":99999999999999999999999,", 1);
        assert!(matches!(
            check_line(huge.as_bytes()),
            Err(LineError::NotAnEntry { .. })
        ));
    }

    #[test]
    fn chain_hashes_parse_from_either_case_but_print_lowercase() {
        let h = ChainHash::of(b"abc");
        let upper = h.to_hex().to_uppercase();
        assert_eq!(upper.parse::<ChainHash>().unwrap(), h);
        assert_eq!(h.to_string(), h.to_hex());
        assert!("xyz".parse::<ChainHash>().is_err());
        assert_eq!(ChainHash::GENESIS.to_string(), "0".repeat(64));
    }

    #[test]
    fn the_head_after_the_last_possible_seq_does_not_exist() {
        assert_eq!(ChainHead::after(u64::MAX, ChainHash::GENESIS), None);
        assert_eq!(ChainHead::after(4, ChainHash::GENESIS).unwrap().next_seq, 5);
    }

    #[test]
    fn a_refused_line_is_described_without_its_content() {
        // serde_json's own message would be `invalid type: string "hvs.…", expected u64`.
        let line = format!(
            r#"{{"seq":"hvs.KTCANARYchainline","prev":"{z}","hash":"{z}"}}"#,
            z = "0".repeat(64)
        );
        let e = check_line(line.as_bytes()).unwrap_err().to_string();
        assert!(!e.contains("KTCANARY"), "{e}");
        assert!(e.contains("column"), "{e}");
    }

    #[test]
    fn each_field_is_kept_only_as_its_hmac_by_name() {
        let key = HmacKey::generate().unwrap();
        let user = SecretValue::from_str_copy("canary-field-user-3c1a");
        let pass = SecretValue::from_str_copy("canary-field-pass-8e2b");
        let event = EventBuilder::new(&key, Actor::agent("keyturn-init"), "secret.read", "kv/x")
            .field_values([("username", &user), ("password", &pass)])
            .build();
        let fields = event.field_hmacs().unwrap();
        assert_eq!(
            fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect::<Vec<_>>(),
            [
                ("password", key.hmac_hex(&pass)),
                ("username", key.hmac_hex(&user))
            ]
        );
        let shown = format!("{event:?}");
        assert!(!shown.contains("canary-field"), "{shown}");
        let body =
            serde_json::to_string(&EntryBody::new(&event, Utc::now(), ChainHead::GENESIS)).unwrap();
        assert!(!body.contains("canary-field"), "{body}");
        assert!(
            body.contains(&format!(
                "\"field_hmacs\":{{\"password\":\"{}\",\"username\":\"{}\"}},\"prev\"",
                key.hmac_hex(&pass),
                key.hmac_hex(&user)
            )),
            "{body}"
        );
    }
}

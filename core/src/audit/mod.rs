//! The audit trail: every access to a secret, by anyone, as one keyed hash-chained JSON Lines
//! log.
//!
//! - [`Event`], built with [`EventBuilder`]: who did what to which resource, how it went, and
//!   — never the value — the value's HMAC under the audit key ([`HmacKey`]).
//! - [`AuditLog`]: numbers, timestamps and chains events, writes them to every [`AuditSink`]
//!   ([`FileSink`], [`StdoutSink`]) with group commit, and fails closed: an access whose event
//!   is not durable must not happen.
//! - [`chain`]: the canonical form, hash and MAC of an [`Entry`], the line an event becomes;
//!   the MAC is under a [`ChainKey`] derived from the audit key, so rewriting needs the key.
//! - [`verify_with`]: checks files, in order, as one chain under the key, against an
//!   [`anchor`] if given, and reports the first break; [`verify()`] checks without a key.
//! - [`anchor`]: the chain's head recorded outside the file (Vault KV v2, check-and-set), so a
//!   deleted tail or a replaced file shows.
//!
//! A line looks like this (wrapped here):
//!
//! ```text
//! {"time":"2025-01-31T03:00:00.123Z","seq":42,
//!  "actor":{"kind":"service-account","name":"orders-api","namespace":"shop","pod":"orders-api-7f9c"},
//!  "action":"secret.read","resource":"secret/data/orders/db","outcome":"ok","request_id":"…",
//!  "value_hmac":"…64 hex…","prev":"…64 hex…","hash":"…64 hex…","mac":"…64 hex…"}
//! ```
//!
//! The first entry of a chain has `seq` 0 and `prev` = 64 zeros. A new file continues a chain
//! from the last entry of the previous one ([`AuditLogOptions::continue_from`]); reopening a
//! file continues from its own last entry. `seq` therefore runs on across files.

pub mod anchor;
pub mod chain;
mod error;
mod event;
mod hmac_key;
mod log;
pub mod sink;
pub mod tail;
mod verify;

#[cfg(test)]
mod test_support;

pub use anchor::{Anchor, AnchorError, AnchorHead, AnchorLocation};
pub use chain::{ChainHash, ChainHead, ChainKey, Entry, InvalidChainHash, LineError};
pub use error::AuditError;
pub use event::{Actor, ActorKind, Event, EventBuilder, Outcome};
pub use hmac_key::{CHAIN_KEY_LABEL, HmacKey, KEY_FILE_ENV, KeyError, KeySource, STATE_DIR_ENV};
pub use log::{AuditLog, AuditLogOptions, AuditStats, DEFAULT_MAX_BATCH, RecordedEvent};
pub use sink::{AuditSink, FileSink, SinkError, StdoutSink};
pub use verify::{
    BreakKind, ChainBreak, VerifyError, VerifyFailure, VerifyOptions, VerifyReport, verify,
    verify_with,
};

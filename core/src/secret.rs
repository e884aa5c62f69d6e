//! [`SecretValue`]: the one type a secret's bytes live in, from fetch to write.
//!
//! Why a type of our own rather than `secrecy::SecretSlice<u8>` directly: keyturn needs a
//! few things on top — deserializing from Vault's JSON (strings, but also numbers, booleans
//! and nested objects that KV v2 allows), cheap constant-time comparison for the idempotency
//! checks in rotation, and an HMAC for the audit log. The bytes still sit in a
//! `secrecy::SecretBox`, so they are zeroized on drop and never printed.

use std::fmt;

use secrecy::{ExposeSecret, SecretBox};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use zeroize::{Zeroize, Zeroizing};

/// A secret's bytes: zeroized on drop, `[REDACTED]` in `Debug` and `Display`, and not
/// `Serialize`, so it cannot slip into a log line, an error or an audit record by accident.
///
/// The bytes are reached only through [`SecretValue::expose`], which makes every place that
/// touches them easy to find with a grep.
pub struct SecretValue(SecretBox<[u8]>);

impl SecretValue {
    /// Takes ownership of `bytes`. A vector with spare capacity is copied into an
    /// exact-size buffer and its own buffer zeroized (whole capacity), because
    /// `into_boxed_slice` would reallocate and free the old buffer with the secret still in it.
    #[must_use]
    pub fn new(mut bytes: Vec<u8>) -> Self {
        if bytes.len() == bytes.capacity() {
            return Self(SecretBox::new(bytes.into_boxed_slice()));
        }
        let exact: Box<[u8]> = bytes.as_slice().into();
        bytes.zeroize();
        Self(SecretBox::new(exact))
    }

    /// Copies `s` into zeroizing storage. The caller remains responsible for `s` itself.
    #[must_use]
    pub fn from_str_copy(s: &str) -> Self {
        Self::new(s.as_bytes().to_vec())
    }

    /// The raw bytes. Call this only at the boundary that needs them: a file write, an HTTP
    /// body, an SQL statement, a terminal.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }

    /// The bytes as UTF-8, for the boundaries that need text.
    ///
    /// # Errors
    /// When the value is not valid UTF-8. The error holds no part of the value.
    pub fn expose_str(&self) -> Result<&str, NotUtf8> {
        std::str::from_utf8(self.expose()).map_err(|_| NotUtf8)
    }

    /// Length in bytes (not secret: sizes are checked against limits and logged).
    #[must_use]
    pub fn len(&self) -> usize {
        self.expose().len()
    }

    /// Whether the value holds no bytes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }

    /// Constant-time equality, so comparing a candidate against a stored value leaks no
    /// timing about where they first differ.
    #[must_use]
    pub fn ct_eq(&self, other: &SecretValue) -> bool {
        let (a, b) = (self.expose(), other.expose());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl Clone for SecretValue {
    fn clone(&self) -> Self {
        Self::new(self.expose().to_vec())
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl From<String> for SecretValue {
    fn from(s: String) -> Self {
        Self::new(s.into_bytes())
    }
}

impl From<Vec<u8>> for SecretValue {
    fn from(v: Vec<u8>) -> Self {
        Self::new(v)
    }
}

/// The value is not valid UTF-8 (the value itself is not part of the error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("secret value is not valid UTF-8")]
pub struct NotUtf8;

/// Deserializes from any JSON scalar or structure. Strings are taken as their bytes; numbers
/// and booleans as their JSON text; arrays and objects as compact JSON text. That is how KV
/// v2 data with non-string fields renders into a file, and it never routes the value through
/// an error message (serde's "invalid type" errors would otherwise quote it).
impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SecretVisitor)
    }
}

struct SecretVisitor;

impl<'de> Visitor<'de> for SecretVisitor {
    type Value = SecretValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a secret value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretValue, E> {
        Ok(SecretValue::from_str_copy(v))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<SecretValue, E> {
        Ok(SecretValue::from(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<SecretValue, E> {
        Ok(SecretValue::new(v.to_vec()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<SecretValue, E> {
        Ok(SecretValue::from(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<SecretValue, E> {
        Ok(SecretValue::from(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<SecretValue, E> {
        Ok(SecretValue::from(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<SecretValue, E> {
        Ok(SecretValue::from(v.to_string()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<SecretValue, E> {
        Ok(SecretValue::new(Vec::new()))
    }

    fn visit_none<E: de::Error>(self) -> Result<SecretValue, E> {
        Ok(SecretValue::new(Vec::new()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<SecretValue, A::Error> {
        let v = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Ok(json_text(&v))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SecretValue, A::Error> {
        let v = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(json_text(&v))
    }
}

fn json_text(v: &serde_json::Value) -> SecretValue {
    // Serializing to a Vec we own keeps the text in one buffer that SecretValue then zeroizes.
    let buf = Zeroizing::new(serde_json::to_vec(v).unwrap_or_default());
    SecretValue::new(buf.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "canary-5ecret-do-not-print";

    #[test]
    fn a_vector_with_spare_capacity_keeps_exactly_its_bytes() {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(b"abc");
        assert_eq!(SecretValue::new(v).expose(), b"abc");
        let exact = b"xyz".to_vec();
        assert_eq!(exact.len(), exact.capacity());
        assert_eq!(SecretValue::new(exact).expose(), b"xyz");
    }

    #[test]
    fn debug_and_display_never_show_the_value() {
        let v = SecretValue::from_str_copy(CANARY);
        assert_eq!(format!("{v:?}"), "[REDACTED]");
        assert_eq!(format!("{v}"), "[REDACTED]");
        let wrapped = Some(vec![v]);
        assert!(!format!("{wrapped:?}").contains(CANARY));
    }

    #[test]
    fn expose_returns_the_exact_bytes() {
        let v = SecretValue::from_str_copy(CANARY);
        assert_eq!(v.expose(), CANARY.as_bytes());
        assert_eq!(v.expose_str().unwrap(), CANARY);
        assert_eq!(v.len(), CANARY.len());
    }

    #[test]
    fn constant_time_equality_compares_contents() {
        let a = SecretValue::from_str_copy("abc");
        assert!(a.ct_eq(&SecretValue::from_str_copy("abc")));
        assert!(!a.ct_eq(&SecretValue::from_str_copy("abd")));
        assert!(!a.ct_eq(&SecretValue::from_str_copy("abcd")));
    }

    #[test]
    fn deserializes_strings_numbers_and_nested_json() {
        let m: std::collections::BTreeMap<String, SecretValue> =
            serde_json::from_str(r#"{"a":"x","n":42,"b":true,"o":{"k":[1,"y"]}}"#).unwrap();
        assert_eq!(m["a"].expose(), b"x");
        assert_eq!(m["n"].expose(), b"42");
        assert_eq!(m["b"].expose(), b"true");
        assert_eq!(m["o"].expose(), br#"{"k":[1,"y"]}"#);
    }

    #[test]
    fn invalid_utf8_error_does_not_carry_the_bytes() {
        let v = SecretValue::new(vec![0xff, 0xfe, b's']);
        let e = v.expose_str().unwrap_err();
        assert_eq!(e.to_string(), "secret value is not valid UTF-8");
    }
}

//! A RotationPolicy's `spec` (JSON, as the API server sends it) read into the policy file's
//! own `Raw` types, so objects and files go through one set of types and one validation.
//!
//! serde_json's own deserializer would do, but its errors carry no field path and quote the
//! value (`invalid type: string "hunter2", expected u32`), and whatever is wrong in an object
//! ends up in its status and in the daemon's log. Errors here name the field as validation
//! names it (`spec.distribute[0].kubernetes.keys`) and say what was expected and what kind of
//! value was found, never the value itself. The path is put together only when an error
//! travels back up, so reading a valid object costs no allocation for it.

use std::fmt;

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, Expected, Unexpected, Visitor};
use serde_json::Value;

/// A problem reading a `spec`: the field it is at and what is wrong, without the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DeError {
    /// Path segments from the innermost out (each frame adds its own on the way up).
    reversed: Vec<Segment>,
    /// A field named by the error itself (missing, unknown or given twice), below the path.
    field: Option<String>,
    message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl DeError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            reversed: Vec::new(),
            field: None,
            message: message.into(),
        }
    }

    fn with_field(field: &str, message: &str) -> Self {
        Self {
            field: Some(field.to_owned()),
            ..Self::new(message)
        }
    }

    fn at_key(mut self, key: &str) -> Self {
        self.reversed.push(Segment::Key(key.to_owned()));
        self
    }

    fn at_index(mut self, index: usize) -> Self {
        self.reversed.push(Segment::Index(index));
        self
    }

    /// The field path below `root` (`spec`), as validation writes it:
    /// `spec.distribute[0].kubernetes.namespace`.
    pub(super) fn field(&self, root: &str) -> String {
        let mut out = root.to_owned();
        let named = self.field.iter().map(|f| Segment::Key(f.clone()));
        for segment in self.reversed.iter().rev().cloned().chain(named) {
            match segment {
                Segment::Key(k) if out.is_empty() => out = k,
                Segment::Key(k) => {
                    out.push('.');
                    out.push_str(&k);
                }
                Segment::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }

    /// What is wrong.
    pub(super) fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = self.field("");
        if field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{field}: {}", self.message)
        }
    }
}

impl std::error::Error for DeError {}

/// What kind of value was found, without the value.
fn kind(unexpected: &Unexpected<'_>) -> &'static str {
    match unexpected {
        Unexpected::Bool(_) => "a boolean",
        Unexpected::Unsigned(_) | Unexpected::Signed(_) | Unexpected::Float(_) => "a number",
        Unexpected::Char(_) | Unexpected::Str(_) => "a string",
        Unexpected::Bytes(_) => "bytes",
        Unexpected::Unit => "null",
        Unexpected::Seq => "a list",
        Unexpected::Map => "an object",
        _ => "another kind of value",
    }
}

/// What a visitor expected, in the words of the CRD's schema rather than Rust's.
fn expected(exp: &dyn Expected) -> String {
    let said = exp.to_string();
    match said.as_str() {
        "u8" | "u16" | "u32" | "u64" | "i8" | "i16" | "i32" | "i64" => "an integer".into(),
        "a map" => "an object".into(),
        "a sequence" => "a list".into(),
        s if s.starts_with("struct ") => "an object".into(),
        s if s == "enum" || s.starts_with("enum ") => "an object naming one kind".into(),
        _ => said,
    }
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::new(msg.to_string())
    }

    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        Self::new(format!(
            "expected {}, found {}",
            expected(exp),
            kind(&unexp)
        ))
    }

    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        Self::new(format!(
            "this {} is not valid here: expected {}",
            kind(&unexp).trim_start_matches("a "),
            expected(exp)
        ))
    }

    fn invalid_length(len: usize, exp: &dyn Expected) -> Self {
        Self::new(format!("expected {}, found {len} items", expected(exp)))
    }

    fn unknown_variant(_variant: &str, expected: &'static [&'static str]) -> Self {
        // The variant is not repeated: for a string enum it is the value written.
        Self::new(format!("unknown kind (one of {})", expected.join(", ")))
    }

    fn unknown_field(field: &str, _expected: &'static [&'static str]) -> Self {
        Self::with_field(field, "unknown field")
    }

    fn missing_field(field: &'static str) -> Self {
        Self::with_field(field, "missing")
    }

    fn duplicate_field(field: &'static str) -> Self {
        Self::with_field(field, "given more than once")
    }
}

/// `value` as a `T`.
pub(super) fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, DeError> {
    T::deserialize(De(value))
}

struct De<'de>(&'de Value);

impl<'de> de::Deserializer<'de> for De<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(items) => {
                let mut seq = Seq {
                    items: items.iter(),
                    index: 0,
                };
                let out = visitor.visit_seq(&mut seq)?;
                if seq.items.len() > 0 {
                    return Err(DeError::new(format!(
                        "expected at most {} items, found {}",
                        seq.index,
                        items.len()
                    )));
                }
                Ok(out)
            }
            Value::Object(entries) => {
                let mut map = Map {
                    entries: entries.iter(),
                    value: None,
                };
                let out = visitor.visit_map(&mut map)?;
                // Every struct and map reads all its entries; only a kind (`store: {vault-kv:
                // …}`) stops after the first, and a second one must not pass unnoticed.
                if map.entries.len() > 0 {
                    return Err(DeError::new(format!(
                        "must name exactly one kind, not {}",
                        entries.len()
                    )));
                }
                Ok(out)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self.0 {
            Value::String(s) => visitor.visit_enum(BorrowedStrDeserializer::new(s)),
            Value::Object(entries) if entries.len() == 1 => {
                let Some((key, value)) = entries.iter().next() else {
                    unreachable!("one entry")
                };
                visitor.visit_enum(Enum { key, value })
            }
            Value::Object(_) => Err(DeError::new(format!(
                "must name exactly one kind (one of {})",
                variants.join(", ")
            ))),
            other => Err(de::Error::invalid_type(unexpected(other), &"an object")),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

fn unexpected(v: &Value) -> Unexpected<'_> {
    match v {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(_) => Unexpected::Float(0.0),
        Value::String(_) => Unexpected::Str(""),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

struct Seq<'de> {
    items: std::slice::Iter<'de, Value>,
    index: usize,
}

impl<'de> de::SeqAccess<'de> for Seq<'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(item) = self.items.next() else {
            return Ok(None);
        };
        let index = self.index;
        self.index += 1;
        seed.deserialize(De(item))
            .map(Some)
            .map_err(|e| e.at_index(index))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct Map<'de> {
    entries: serde_json::map::Iter<'de>,
    value: Option<(&'de str, &'de Value)>,
}

impl<'de> de::MapAccess<'de> for Map<'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some((key, value));
        seed.deserialize(BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some((key, value)) = self.value.take() else {
            return Err(DeError::new("a value was read before its key"));
        };
        seed.deserialize(De(value)).map_err(|e| e.at_key(key))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// `{KIND: {…}}`: a store or target kind and its fields.
struct Enum<'de> {
    key: &'de str,
    value: &'de Value,
}

impl<'de> de::EnumAccess<'de> for Enum<'de> {
    type Error = DeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), DeError> {
        let variant = seed.deserialize(BorrowedStrDeserializer::<DeError>::new(self.key))?;
        Ok((variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for Enum<'de> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        match self.value {
            Value::Null => Ok(()),
            Value::Object(o) if o.is_empty() => Ok(()),
            other => Err(<DeError as de::Error>::invalid_type(
                unexpected(other),
                &"an empty object",
            )
            .at_key(self.key)),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(De(self.value))
            .map_err(|e| e.at_key(self.key))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_seq(De(self.value), visitor).map_err(|e| e.at_key(self.key))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_map(De(self.value), visitor).map_err(|e| e.at_key(self.key))
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::schema::RawSpec;
    use super::*;
    use serde_json::json;

    fn error(spec: Value) -> (String, String) {
        let e = from_value::<RawSpec>(&spec).expect_err("an invalid spec");
        (e.field("spec"), e.message().to_owned())
    }

    fn valid() -> Value {
        json!({
            "every": "1d",
            "store": {"vault-kv": {"path": "keyturn/api"}},
            "target": {"generated": {}},
        })
    }

    #[test]
    fn a_valid_spec_reads_with_every_part() {
        let mut spec = valid();
        spec["distribute"] = json!([{
            "kubernetes": {"namespace": "shop", "secret": "api", "keys": {"TOKEN": "value"}},
            "restart": [{"kind": "Deployment", "name": "web"}],
        }]);
        spec["max-attempts"] = json!(3);
        spec["window"] = json!(null);
        let raw: RawSpec = from_value(&spec).unwrap();
        assert_eq!(raw.every.unwrap().value, "1d");
        assert!(raw.window.is_none(), "null is an absent optional value");
        assert_eq!(raw.max_attempts.unwrap().value, 3);
        let d = &raw.distribute[0];
        assert_eq!(d.kubernetes.keys.value["TOKEN"].value, "value");
        assert_eq!(d.restart[0].name.value, "web");
    }

    #[test]
    fn errors_name_the_field_and_the_kind_of_value_never_the_value() {
        const CANARY: &str = "sk_live_CANARY_4f9d2c";
        let cases = [
            (
                json!({"max-attempts": CANARY}),
                "spec.max-attempts",
                "expected an integer, found a string",
            ),
            (
                json!({"every": {"secret": CANARY}}),
                "spec.every",
                "expected a string, found an object",
            ),
            (
                json!({"distribute": [{"kubernetes": {"namespace": "a", "secret": "b", "keys": {"K": 7}}}]}),
                "spec.distribute[0].kubernetes.keys.K",
                "expected a string, found a number",
            ),
            (
                json!({"store": {CANARY: {}}}),
                "spec.store",
                "unknown kind (one of vault-kv, aws-secretsmanager)",
            ),
            (
                json!({"store": {"vault-kv": {"path": "a"}, "aws-secretsmanager": {"secret-id": "b"}}}),
                "spec.store",
                "must name exactly one kind, not 2",
            ),
            (
                json!({"store": {}}),
                "spec.store",
                "expected an object naming one kind, found an object",
            ),
            (
                json!({"store": {"vault-kv": {"pth": CANARY}}}),
                "spec.store.vault-kv.pth",
                "unknown field",
            ),
            (
                json!({"max-attempts": -1}),
                "spec.max-attempts",
                "this number is not valid here: expected an integer",
            ),
        ];
        for (edit, field, message) in cases {
            let mut spec = valid();
            for (k, v) in edit.as_object().unwrap() {
                spec[k] = v.clone();
            }
            let (f, m) = error(spec);
            assert_eq!((f.as_str(), m.as_str()), (field, message));
            assert!(!m.contains(CANARY) && !f.contains(CANARY), "{f}: {m}");
        }
    }

    #[test]
    fn a_missing_field_is_named_below_its_parent() {
        let mut spec = valid();
        spec.as_object_mut().unwrap().remove("store");
        assert_eq!(error(spec), ("spec.store".to_owned(), "missing".to_owned()));
        let mut spec = valid();
        spec["distribute"] = json!([{"kubernetes": {"namespace": "a", "keys": {}}}]);
        assert_eq!(
            error(spec),
            (
                "spec.distribute[0].kubernetes.secret".to_owned(),
                "missing".to_owned()
            )
        );
    }
}

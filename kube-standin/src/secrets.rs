//! core/v1 Secret: decoding, `stringData` folding and validation, as kube-apiserver does them.
//!
//! keyturn's whole job ends in a Secret write, so the rules that can make that write fail on
//! a real cluster are all here, with the real wording:
//!
//! - `data` values are base64 (Go's `StdEncoding`: padded, trailing bits and line breaks
//!   tolerated). A value that is not is a **400 BadRequest** (`Secret in version "v1" cannot
//!   be handled as a Secret: illegal base64 data at input byte N`), because on the real server
//!   this fails while decoding the body, before validation.
//! - `stringData` is merged over `data` on every write and never stored or returned.
//! - 422 `Invalid` for a key that is not `[-._a-zA-Z0-9]+`, longer than 253, `.`/`..`/`..x`;
//!   for more than 1 MiB of decoded data; for a `type` change; for a change to an
//!   `immutable: true` Secret; for the required keys of the built-in types (`basic-auth`,
//!   `ssh-auth`, `tls`, `dockercfg`, `dockerconfigjson`, `service-account-token`).
//! - An unset `type` defaults to `Opaque`; any other string is accepted.

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use serde_json::{Map, Value};

use super::status::{ApiError, FieldError, go_quote};
use super::validation::{self, JsonType, expect_type};

/// `MaxSecretSize`: the most bytes of decoded `data` a Secret may hold.
pub(crate) const MAX_SECRET_BYTES: usize = 1024 * 1024;

/// Go's `base64.StdEncoding`: canonical padding required, non-zero trailing bits allowed.
const GO_STD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// Decodes as Go's `encoding/json` decodes a `[]byte`, with Go's error wording.
pub(crate) fn go_base64_decode(s: &str) -> Result<Vec<u8>, String> {
    // Go's decoder skips '\r' and '\n' anywhere in the input.
    let cleaned: String = s.chars().filter(|c| *c != '\r' && *c != '\n').collect();
    GO_STD.decode(cleaned.as_bytes()).map_err(|e| {
        let at = match e {
            base64::DecodeError::InvalidByte(at, _)
            | base64::DecodeError::InvalidLastSymbol(at, _) => at,
            // Go reports a short or badly padded last quantum at the quantum's start.
            base64::DecodeError::InvalidLength(_) | base64::DecodeError::InvalidPadding => {
                cleaned.len() - cleaned.len() % 4
            }
        };
        format!("illegal base64 data at input byte {at}")
    })
}

fn cannot_handle(why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "Secret in version \"v1\" cannot be handled as a Secret: {why}"
    ))
}

/// The decode step: field types and base64. Fails with 400 like the real JSON decoder.
pub(crate) fn check_shape(obj: &Value) -> Result<(), ApiError> {
    let fields = [
        (
            "data",
            JsonType::StringMap,
            "Secret.data",
            "map[string][]uint8",
        ),
        (
            "stringData",
            JsonType::StringMap,
            "Secret.stringData",
            "map[string]string",
        ),
        ("type", JsonType::String, "Secret.type", "v1.SecretType"),
        ("immutable", JsonType::Bool, "Secret.immutable", "bool"),
    ];
    for (key, ty, go_field, go_type) in fields {
        if let Some(v) = obj.get(key) {
            expect_type(v, ty, go_field, go_type).map_err(|e| cannot_handle(&e))?;
        }
    }
    if let Some(Value::Object(data)) = obj.get("data") {
        for v in data.values().filter_map(Value::as_str) {
            go_base64_decode(v).map_err(|e| cannot_handle(&e))?;
        }
    }
    Ok(())
}

/// Folds `stringData` into `data` (base64-encoding it) and removes it.
pub(crate) fn fold_string_data(obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    let Some(Value::Object(string_data)) = map.remove("stringData") else {
        return;
    };
    let data = map
        .entry("data")
        .or_insert_with(|| Value::Object(Map::new()));
    if !data.is_object() {
        *data = Value::Object(Map::new());
    }
    if let Value::Object(data) = data {
        for (k, v) in string_data {
            if let Some(s) = v.as_str() {
                data.insert(k, Value::String(STANDARD.encode(s.as_bytes())));
            }
        }
    }
}

/// What the real server stores: `stringData` folded in, base64 re-encoded canonically, `type`
/// defaulted, unknown top-level fields dropped (the default `fieldValidation=Warn` drops them).
pub(crate) fn normalize(obj: &mut Value) {
    fold_string_data(obj);
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    map.retain(|k, _| {
        matches!(
            k.as_str(),
            "apiVersion" | "kind" | "metadata" | "data" | "type" | "immutable"
        )
    });
    if let Some(Value::Object(data)) = map.get_mut("data") {
        for v in data.values_mut() {
            if let Some(decoded) = v.as_str().and_then(|s| go_base64_decode(s).ok()) {
                *v = Value::String(STANDARD.encode(decoded));
            }
        }
    }
    let type_empty = map
        .get("type")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    if type_empty {
        map.insert("type".into(), Value::String("Opaque".into()));
    }
    validation::drop_empty_map(obj, &["data"]);
}

fn decoded_data(obj: &Value) -> Vec<(String, Vec<u8>)> {
    obj.get("data")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .and_then(|s| go_base64_decode(s).ok())
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn data_key(key: &str) -> String {
    format!("data[{key}]")
}

/// `ValidateSecret` (and `ValidateSecretUpdate` when `old` is given), on a normalized Secret.
pub(crate) fn validate(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let data = decoded_data(obj);
    let mut total = 0usize;
    for (key, value) in &data {
        for msg in validation::config_key_errors(key) {
            errs.push(FieldError::invalid_str(data_key(key), key, msg));
        }
        total += value.len();
    }
    if total > MAX_SECRET_BYTES {
        errs.push(FieldError::too_long("data", MAX_SECRET_BYTES));
    }

    let has = |k: &str| data.iter().any(|(key, _)| key == k);
    let get = |k: &str| {
        data.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_slice())
    };
    let secret_type = obj.get("type").and_then(Value::as_str).unwrap_or("Opaque");
    match secret_type {
        "kubernetes.io/service-account-token" => {
            let annotated = obj
                .pointer("/metadata/annotations/kubernetes.io~1service-account.name")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty());
            if !annotated {
                errs.push(FieldError::required(
                    "metadata.annotations[kubernetes.io/service-account.name]",
                    "",
                ));
            }
        }
        "kubernetes.io/dockercfg" | "kubernetes.io/dockerconfigjson" => {
            let key = if secret_type.ends_with("json") {
                ".dockerconfigjson"
            } else {
                ".dockercfg"
            };
            match get(key) {
                None => errs.push(FieldError::required(data_key(key), "")),
                Some(bytes) => {
                    if let Err(e) = serde_json::from_slice::<Map<String, Value>>(bytes) {
                        errs.push(FieldError::invalid_str(
                            data_key(key),
                            "<secret contents redacted>",
                            e.to_string(),
                        ));
                    }
                }
            }
        }
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            errs.push(FieldError::required(data_key("username"), ""));
            errs.push(FieldError::required(data_key("password"), ""));
        }
        "kubernetes.io/ssh-auth" if get("ssh-privatekey").is_none_or(<[u8]>::is_empty) => {
            errs.push(FieldError::required(data_key("ssh-privatekey"), ""));
        }
        "kubernetes.io/tls" => {
            if !has("tls.crt") {
                errs.push(FieldError::required(data_key("tls.crt"), ""));
            }
            if !has("tls.key") {
                errs.push(FieldError::required(data_key("tls.key"), ""));
            }
        }
        _ => {}
    }

    if let Some(old) = old {
        let old_type = old.get("type").and_then(Value::as_str).unwrap_or("Opaque");
        if old_type != secret_type {
            errs.push(FieldError::invalid_raw(
                "type",
                go_quote(secret_type),
                "field is immutable",
            ));
        }
        if old.get("immutable").and_then(Value::as_bool) == Some(true) {
            if obj.get("immutable").and_then(Value::as_bool) != Some(true) {
                errs.push(FieldError::forbidden(
                    "immutable",
                    "field is immutable when `immutable` is set",
                ));
            }
            if old.get("data") != obj.get("data") {
                errs.push(FieldError::forbidden(
                    "data",
                    "field is immutable when `immutable` is set",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn go_base64_accepts_line_breaks_and_rejects_missing_padding() {
        assert_eq!(go_base64_decode("aGVs\nbG8=").unwrap(), b"hello");
        assert_eq!(
            go_base64_decode("aGVsbG8").unwrap_err(),
            "illegal base64 data at input byte 4"
        );
        assert_eq!(
            go_base64_decode("not base64!").unwrap_err(),
            "illegal base64 data at input byte 3"
        );
    }

    #[test]
    fn string_data_is_folded_into_data_and_type_defaults_to_opaque() {
        let mut s = json!({"metadata": {"name": "s"}, "data": {"a": "MQ=="}, "stringData": {"a": "x", "b": "y"}});
        normalize(&mut s);
        assert_eq!(
            s,
            json!({"metadata": {"name": "s"}, "data": {"a": "eA==", "b": "eQ=="}, "type": "Opaque"})
        );
    }

    #[test]
    fn basic_auth_needs_a_username_or_a_password() {
        let mut errs = Vec::new();
        validate(
            &json!({"type": "kubernetes.io/basic-auth", "data": {"x": "eA=="}}),
            None,
            &mut errs,
        );
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].to_string(), "data[username]: Required value");
    }
}

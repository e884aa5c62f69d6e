//! KV secrets engines, version 1 and 2, with check-and-set on v2.
//!
//! Values stay [`SecretValue`]s from the response to the caller. They do pass through
//! `vaultrs`'s `serde_json::Value` on the way (that is how vaultrs decodes every response),
//! which keyturn cannot zeroize; the copy lives only for the duration of the decode.

use std::collections::BTreeMap;
use std::fmt;

use serde::ser::{Serialize, SerializeMap, Serializer};
use vaultrs::api::kv2::requests::{ReadSecretRequest, SetSecretRequestOptions};

use super::{Vault, VaultError};
use crate::SecretValue;

/// Which KV engine version a mount runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum KvVersion {
    /// KV v1: one unversioned value per path.
    V1,
    /// KV v2: versioned, with metadata and check-and-set.
    V2,
}

/// The fields of one secret. `Debug` lists the field names only.
#[derive(Clone, Default, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretData(pub BTreeMap<String, SecretValue>);

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretData")
            .field("keys", &self.0.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SecretData {
    /// An empty secret.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a field.
    pub fn insert(&mut self, key: impl Into<String>, value: SecretValue) {
        self.0.insert(key.into(), value);
    }

    /// One field.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&SecretValue> {
        self.0.get(key)
    }

    /// Field names and values in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &SecretValue)> {
        self.0.iter()
    }

    /// Number of fields.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no fields.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A KV v2 secret with the version it was read at.
#[derive(Debug, Clone)]
pub struct Versioned {
    /// The fields.
    pub data: SecretData,
    /// The version number.
    pub version: u64,
    /// When the version was written (KV v2 `metadata.created_time`), if it parses.
    pub created: Option<chrono::DateTime<chrono::Utc>>,
}

/// Serializes a [`SecretData`] for a write request body: the one place its values become
/// JSON strings. Private, so nothing else can serialize secrets by accident.
struct WriteBody<'a> {
    data: &'a SecretData,
}

impl Serialize for WriteBody<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.data.len()))?;
        for (k, v) in self.data.iter() {
            m.serialize_entry(k, &Text(v))?;
        }
        m.end()
    }
}

/// One value as a JSON string (checked to be UTF-8 by `check_text` before a write).
struct Text<'a>(&'a SecretValue);

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.expose_str().unwrap_or_default())
    }
}

fn check_text(data: &SecretData, path: &str) -> Result<(), VaultError> {
    match data.iter().find(|(_, v)| v.expose_str().is_err()) {
        Some((k, _)) => Err(VaultError::NotText {
            path: path.to_owned(),
            key: k.clone(),
        }),
        None => Ok(()),
    }
}

/// Joins a mount and a path for messages: `secret` + `orders/db` → `secret/orders/db`.
fn full(mount: &str, path: &str) -> String {
    format!(
        "{}/{}",
        mount.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

impl Vault {
    /// Reads a KV v1 secret (or any plain logical read that returns a `data` object).
    ///
    /// # Errors
    /// [`VaultError::NotFound`], [`VaultError::PermissionDenied`], or a transport failure
    /// after retries.
    pub async fn kv1_read(&self, mount: &str, path: &str) -> Result<SecretData, VaultError> {
        let p = full(mount, path);
        self.retry
            .run(|| async {
                vaultrs::kv1::get::<SecretData>(&self.client, mount, path)
                    .await
                    .map_err(|e| self.classify(e, "read", &p))
            })
            .await
    }

    /// A plain logical read, `GET /v1/PATH`, for endpoints without a typed wrapper: dynamic
    /// secrets engines (`database/creds/ROLE`), `sys/internal/ui/mounts`. The whole response
    /// comes back, lease fields included; its `data` is vaultrs's `serde_json::Value` (the same
    /// not-zeroized decode copy as every read here).
    ///
    /// # Errors
    /// As [`Vault::kv1_read`].
    pub async fn logical_read(
        &self,
        path: &str,
    ) -> Result<vaultrs::api::kv1::responses::GetSecretResponse, VaultError> {
        let p = path.trim_matches('/');
        let (mount, rest) = p.split_once('/').unwrap_or((p, ""));
        self.retry
            .run(|| async {
                vaultrs::kv1::get_raw(&self.client, mount, rest)
                    .await
                    .map_err(|e| self.classify(e, "read", p))
            })
            .await
    }

    /// Writes a KV v1 secret, replacing every field.
    ///
    /// # Errors
    /// As [`Vault::kv1_read`], and [`VaultError::NotText`] for a non-UTF-8 value.
    pub async fn kv1_write(
        &self,
        mount: &str,
        path: &str,
        data: &SecretData,
    ) -> Result<(), VaultError> {
        let p = full(mount, path);
        check_text(data, &p)?;
        let body: std::collections::HashMap<&str, Text<'_>> =
            data.iter().map(|(k, v)| (k.as_str(), Text(v))).collect();
        self.retry
            .run(|| async {
                vaultrs::kv1::set(&self.client, mount, path, &body)
                    .await
                    .map_err(|e| self.classify(e, "write", &p))
            })
            .await
    }

    /// Reads a KV v2 secret: the latest version, or `version` if given.
    ///
    /// # Errors
    /// [`VaultError::NotFound`] also when the version was deleted or destroyed.
    pub async fn kv2_read(
        &self,
        mount: &str,
        path: &str,
        version: Option<u64>,
    ) -> Result<Versioned, VaultError> {
        let p = full(mount, path);
        self.retry
            .run(|| async {
                let req = ReadSecretRequest::builder()
                    .mount(mount)
                    .path(path)
                    .version(version)
                    .build()
                    .map_err(|e| VaultError::BadResponse {
                        op: "read",
                        path: p.clone(),
                        what: e.to_string(),
                    })?;
                let res = vaultrs::api::exec_with_result(&self.client, req)
                    .await
                    .map_err(|e| self.classify(e, "read", &p))?;
                if res.data.is_null() {
                    return Err(VaultError::NotFound {
                        op: "read",
                        path: p.clone(),
                    });
                }
                let data: SecretData =
                    serde_json::from_value(res.data).map_err(|_| VaultError::BadResponse {
                        op: "read",
                        path: p.clone(),
                        what: "data is not an object".into(),
                    })?;
                Ok(Versioned {
                    data,
                    version: res.metadata.version,
                    created: chrono::DateTime::parse_from_rfc3339(&res.metadata.created_time)
                        .ok()
                        .map(|t| t.with_timezone(&chrono::Utc)),
                })
            })
            .await
    }

    /// Writes a new KV v2 version. With `cas = Some(n)` the write succeeds only if the
    /// current version is `n` (`Some(0)`: only if the secret does not exist yet).
    /// Returns the new version number.
    ///
    /// # Errors
    /// [`VaultError::CasConflict`] when the current version differs from `cas`.
    pub async fn kv2_write(
        &self,
        mount: &str,
        path: &str,
        data: &SecretData,
        cas: Option<u64>,
    ) -> Result<u64, VaultError> {
        let p = full(mount, path);
        check_text(data, &p)?;
        let body = WriteBody { data };
        let cas32 = match cas {
            Some(n) => Some(u32::try_from(n).map_err(|_| VaultError::BadResponse {
                op: "write",
                path: p.clone(),
                what: format!("check-and-set version {n} is out of range"),
            })?),
            None => None,
        };
        self.retry
            .run(|| async {
                let r = match cas32 {
                    Some(cas) => {
                        vaultrs::kv2::set_with_options(
                            &self.client,
                            mount,
                            path,
                            &body,
                            SetSecretRequestOptions { cas },
                        )
                        .await
                    }
                    None => vaultrs::kv2::set(&self.client, mount, path, &body).await,
                };
                r.map(|m| m.version)
                    .map_err(|e| VaultError::classify(e, "write", &p, &self.addr, cas))
            })
            .await
    }

    /// The current version of a KV v2 secret, or `None` if nothing was ever written there.
    ///
    /// # Errors
    /// As [`Vault::kv2_read`], except that a missing secret is `Ok(None)`.
    pub async fn kv2_current_version(
        &self,
        mount: &str,
        path: &str,
    ) -> Result<Option<u64>, VaultError> {
        let p = full(mount, path);
        let r = self
            .retry
            .run(|| async {
                vaultrs::kv2::read_metadata(&self.client, mount, path)
                    .await
                    .map_err(|e| self.classify(e, "read-metadata", &p))
            })
            .await;
        match r {
            Ok(m) => Ok(Some(m.current_version)),
            Err(VaultError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_data_debug_lists_keys_not_values() {
        let mut d = SecretData::new();
        d.insert("password", SecretValue::from_str_copy("canary-kv-value"));
        let s = format!("{d:?}");
        assert!(s.contains("password"));
        assert!(!s.contains("canary-kv-value"));
    }

    #[test]
    fn the_write_body_is_a_json_object_of_strings() {
        let mut d = SecretData::new();
        d.insert("a", SecretValue::from_str_copy("1"));
        d.insert("b", SecretValue::from_str_copy("x\"y"));
        let j = serde_json::to_string(&WriteBody { data: &d }).unwrap();
        assert_eq!(j, r#"{"a":"1","b":"x\"y"}"#);
    }

    #[test]
    fn a_non_utf8_value_is_refused_by_field_name() {
        let mut d = SecretData::new();
        d.insert("bin", SecretValue::new(vec![0xff]));
        let e = check_text(&d, "secret/x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "vault write secret/x: field \"bin\" is not valid UTF-8"
        );
    }
}

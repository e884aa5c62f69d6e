//! The `sys/` calls `keyturn doctor` makes: the server's health (with its clock, for the skew
//! check) and the capabilities the token in use has on given paths. vaultrs has no wrapper
//! for `sys/capabilities-self`, so it is a small rustify endpoint; `sys/health` answers
//! non-2xx statuses by design (sealed, standby), so it is read through the client's own HTTP
//! client, whose TLS settings, timeout and no-redirect rule apply.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rustify::endpoint::Endpoint;
use rustify::enums::{RequestMethod, RequestType, ResponseType};
use serde::Serialize;

use super::{Vault, VaultError};

/// What `sys/health` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The HTTP status: 200 active, 429/472/473 standby kinds, 501 not initialised,
    /// 503 sealed.
    pub status: u16,
    /// The server's version, when it said.
    pub version: Option<String>,
    /// The server's `Date` header.
    pub date: Option<DateTime<Utc>>,
    /// When the answer arrived here (with `date`, the clock difference).
    pub received: DateTime<Utc>,
    /// The body's `errors`, for a status Vault's health endpoint does not use.
    pub errors: Vec<String>,
}

impl Health {
    /// Whether the server can serve requests (active, or a standby that forwards them).
    #[must_use]
    pub fn is_up(&self) -> bool {
        matches!(self.status, 200 | 429 | 472 | 473)
    }
}

#[derive(Serialize)]
struct CapabilitiesSelf<'a> {
    paths: &'a [&'a str],
}

impl Endpoint for CapabilitiesSelf<'_> {
    type Response = BTreeMap<String, serde_json::Value>;
    const REQUEST_BODY_TYPE: RequestType = RequestType::JSON;
    const RESPONSE_BODY_TYPE: ResponseType = ResponseType::JSON;

    fn path(&self) -> String {
        "sys/capabilities-self".to_owned()
    }

    fn method(&self) -> RequestMethod {
        RequestMethod::POST
    }

    fn body(&self) -> Result<Option<Vec<u8>>, rustify::errors::ClientError> {
        serde_json::to_vec(self)
            .map(Some)
            .map_err(|e| rustify::errors::ClientError::DataParseError { source: e.into() })
    }
}

impl Vault {
    /// `GET sys/health` (standbys answer 200 too), without the token. Not retried: it is a
    /// probe.
    ///
    /// # Errors
    /// [`VaultError::Unreachable`] when no answer came (the transport's innermost cause).
    pub async fn health(&self) -> Result<Health, VaultError> {
        const PATH: &str = "sys/health";
        let url = format!(
            "{}/v1/{PATH}?standbyok=true&perfstandbyok=true",
            self.addr().trim_end_matches('/')
        );
        let unreachable = |e: &(dyn std::error::Error + 'static)| VaultError::Unreachable {
            op: "health",
            path: PATH.to_owned(),
            addr: self.addr().to_owned(),
            cause: innermost(e),
        };
        let resp = self
            .client()
            .http
            .http
            .get(&url)
            .send()
            .await
            // A rejected certificate is named as such (and is final), as for every other
            // request: `doctor` must not call a trust problem "unreachable".
            .map_err(|e| VaultError::transport("health", PATH.to_owned(), self.addr(), &e))?;
        let received = Utc::now();
        let status = resp.status().as_u16();
        let date = resp
            .headers()
            .get("date")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| DateTime::parse_from_rfc2822(s).ok())
            .map(|t| t.with_timezone(&Utc));
        let bytes = resp.bytes().await.map_err(|e| unreachable(&e))?;
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        Ok(Health {
            status,
            version: body["version"].as_str().map(str::to_owned),
            date,
            received,
            errors: body["errors"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str())
                        .map(|e| crate::text::clean(e, crate::text::ECHO_MAX))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// The capabilities the token in use has on each of `paths` (`sys/capabilities-self`):
    /// `deny` for none, `root` for all.
    ///
    /// # Errors
    /// The classified failure; [`VaultError::PermissionDenied`] when the token may not ask
    /// (Vault's `default` policy allows it).
    pub async fn capabilities_self(
        &self,
        paths: &[&str],
    ) -> Result<BTreeMap<String, Vec<String>>, VaultError> {
        const PATH: &str = "sys/capabilities-self";
        let answer = self
            .retry
            .run(|| async {
                vaultrs::api::exec_with_result(self.client(), CapabilitiesSelf { paths })
                    .await
                    .map_err(|e| self.classify(e, "check", PATH))
            })
            .await?;
        Ok(paths
            .iter()
            .map(|p| {
                let caps = answer
                    .get(*p)
                    .and_then(serde_json::Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|c| c.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                ((*p).to_owned(), caps)
            })
            .collect())
    }
}

/// The deepest error of a chain: "Connection refused (os error 111)", not "error sending
/// request".
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    crate::text::clean(&cur.to_string(), crate::text::MESSAGE_MAX)
}

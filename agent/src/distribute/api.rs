//! The few raw Kubernetes API calls distribution makes, and the retry pacing for 409s.
//!
//! Why raw requests (`kube::core::Request` + `Client::request_text`) rather than the typed
//! `Api<Secret>`: kube-rs logs the whole response body at `warn` when it cannot deserialize
//! one into the typed object, and a Secret's body is its data; and `k8s_openapi::ByteString`
//! is not zeroized. Here a body is kept as zeroizing text, parsed into minimal views, and
//! never printed.

use std::time::Duration;

use rand::Rng as _;
use zeroize::Zeroizing;

use super::error::{DistributeError, ObjectRef};

/// How many times a write is attempted when other writers keep causing 409s.
pub(crate) const MAX_ATTEMPTS: u32 = 8;

/// A built request, or why it could not be built.
pub(crate) type Built = Result<http::Request<Vec<u8>>, kube::core::request::Error>;

/// Sends `request` (the `verb` on `object`) and returns the answer's body as zeroizing text.
///
/// # Errors
/// The API's answer or the transport failure, classified.
pub(crate) async fn send(
    client: &kube::Client,
    request: Built,
    object: &ObjectRef,
    verb: &str,
) -> Result<Zeroizing<String>, DistributeError> {
    let request = request
        .map_err(|e| DistributeError::from_kube(kube::Error::BuildRequest(e), object, verb))?;
    let answer = client
        .request_text(request)
        .await
        .map(Zeroizing::new)
        .map_err(|e| DistributeError::from_kube(e, object, verb));
    crate::daemon::metrics::kube_request(&object.resource, verb, answer.as_ref().map(|_| ()));
    answer
}

/// Parses an answer into a view of the fields keyturn reads.
///
/// # Errors
/// [`DistributeError::Protocol`], naming the parser's category only.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    body: &str,
    object: &ObjectRef,
    verb: &str,
) -> Result<T, DistributeError> {
    serde_json::from_str(body).map_err(|e| DistributeError::undecodable(object, verb, &e))
}

/// The pause before attempt `attempt + 1` after a 409: exponential from 25 ms, capped at 1 s,
/// with jitter so that writers who collided once do not collide again in lockstep.
pub(crate) fn conflict_backoff(attempt: u32) -> Duration {
    let ceiling = backoff_ceiling_ms(attempt);
    Duration::from_millis(rand::rng().random_range(ceiling / 2..=ceiling))
}

/// The jitter range's top for `attempt`, in milliseconds.
fn backoff_ceiling_ms(attempt: u32) -> u64 {
    25u64.saturating_mul(1 << attempt.min(6)).min(1000)
}

/// `{"resourceVersion": ...}` out of `metadata`; what every view needs.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Meta {
    #[serde(default)]
    pub resource_version: Option<String>,
}

/// An answer of which only the metadata matters.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Written {
    #[serde(default)]
    pub metadata: Meta,
}

#[cfg(test)]
mod tests {
    use super::*;

    // Arithmetic on the computed pauses; nothing here reads a clock.
    #[test]
    fn the_backoff_ceiling_doubles_from_25_ms_and_stops_at_1_s() {
        let ceilings: Vec<u64> = (0..8).map(backoff_ceiling_ms).collect();
        assert_eq!(ceilings, [25, 50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff_ceiling_ms(u32::MAX), 1000);
    }

    #[test]
    fn a_pause_is_jittered_within_the_upper_half_of_its_ceiling() {
        for attempt in [0, 3, 20] {
            let top = backoff_ceiling_ms(attempt);
            for _ in 0..50 {
                let ms = u64::try_from(conflict_backoff(attempt).as_millis()).unwrap();
                assert!((top / 2..=top).contains(&ms), "attempt {attempt}: {ms} ms");
            }
        }
    }
}

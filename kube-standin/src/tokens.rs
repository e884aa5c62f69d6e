//! Service-account tokens: issuing projected-token JWTs, verifying them, and the OIDC
//! discovery documents.
//!
//! OpenBao's kubernetes auth parses the pod's JWT itself (go-jose, asymmetric algorithms
//! only) before it asks TokenReview, and its jwt auth can verify against `/openid/v1/jwks`;
//! so the tokens are real ES256 JWTs with the claims a real projected token has, signed by a
//! P-256 key made per stand-in. ES256 rather than RS256 only because making an RSA key in a
//! debug build takes seconds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// The audience real clusters put in tokens by default (`--api-audiences` on kubeadm/kind).
pub(crate) const DEFAULT_CLUSTER_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// A name and uid, as in `kubernetes.io.serviceaccount` / `.pod`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ObjectRef {
    pub name: String,
    pub uid: String,
}

/// The `kubernetes.io` claim of a projected token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KubernetesClaim {
    pub namespace: String,
    pub serviceaccount: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
}

/// The claims of a projected service-account token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub iss: String,
    pub jti: String,
    pub sub: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaim,
}

/// Who a verified token belongs to.
#[derive(Debug, Clone)]
pub(crate) struct TokenSubject {
    pub claims: Claims,
    /// The token's audiences that the check asked for (TokenReview's `status.audiences`).
    pub audiences: Vec<String>,
}

/// What a token to issue is for.
#[derive(Debug, Clone)]
pub(crate) struct TokenSpec<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub sa_uid: &'a str,
    pub audiences: Vec<String>,
    pub ttl: Duration,
    pub pod: Option<ObjectRef>,
}

/// The signing key and issuer of one stand-in.
pub(crate) struct TokenAuthority {
    issuer: String,
    api_audiences: Vec<String>,
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    x: String,
    y: String,
    /// uids of service accounts that have no stored object, stable per (namespace, name).
    uids: Mutex<HashMap<(String, String), String>>,
}

impl std::fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthority")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Unix seconds now.
pub(crate) fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

impl TokenAuthority {
    /// A fresh P-256 key. `issuer` is the stand-in's URL so OIDC discovery finds itself.
    ///
    /// # Errors
    /// Only if the key cannot be encoded, which would be a bug.
    pub fn new(issuer: &str) -> anyhow::Result<Self> {
        let secret = loop {
            // A uniformly random 32-byte string is a valid scalar except with ~2^-128 odds.
            if let Ok(k) = p256::SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
                break k;
            }
        };
        let der = secret.to_pkcs8_der()?;
        let public = secret.public_key();
        let point = public.to_encoded_point(false);
        let x = URL_SAFE_NO_PAD.encode(point.x().ok_or_else(|| anyhow::anyhow!("no x"))?);
        let y = URL_SAFE_NO_PAD.encode(point.y().ok_or_else(|| anyhow::anyhow!("no y"))?);
        // Real clusters use the SHA-256 of the PKIX public key as the key id.
        let kid =
            URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(public.to_public_key_der()?.as_bytes()));
        Ok(Self {
            issuer: issuer.to_owned(),
            api_audiences: vec![issuer.to_owned(), DEFAULT_CLUSTER_AUDIENCE.to_owned()],
            encoding: EncodingKey::from_ec_der(der.as_bytes()),
            decoding: DecodingKey::from_ec_components(&x, &y)?,
            kid,
            x,
            y,
            uids: Mutex::new(HashMap::new()),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audiences the API server itself accepts (`--api-audiences`).
    pub fn api_audiences(&self) -> &[String] {
        &self.api_audiences
    }

    /// A stable uid for a service account that has no stored object.
    pub fn remembered_uid(&self, namespace: &str, name: &str) -> String {
        let mut uids = self
            .uids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        uids.entry((namespace.to_owned(), name.to_owned()))
            .or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone()
    }

    /// Whether `uid` is the uid this authority handed out for a service account it minted
    /// tokens for without a stored object.
    pub fn is_remembered(&self, namespace: &str, name: &str, uid: &str) -> bool {
        let uids = self
            .uids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        uids.get(&(namespace.to_owned(), name.to_owned()))
            .is_some_and(|u| u == uid)
    }

    /// Signs a projected token. Empty `audiences` means the API server's own audience.
    pub fn issue(&self, spec: &TokenSpec<'_>) -> (String, i64) {
        let now = now_unix();
        let exp = now + i64::try_from(spec.ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let aud = if spec.audiences.is_empty() {
            vec![self.issuer.clone()]
        } else {
            spec.audiences.clone()
        };
        let claims = Claims {
            aud,
            exp,
            iat: now,
            nbf: now,
            iss: self.issuer.clone(),
            jti: uuid::Uuid::new_v4().to_string(),
            sub: format!("system:serviceaccount:{}:{}", spec.namespace, spec.name),
            kubernetes: KubernetesClaim {
                namespace: spec.namespace.to_owned(),
                serviceaccount: ObjectRef {
                    name: spec.name.to_owned(),
                    uid: spec.sa_uid.to_owned(),
                },
                pod: spec.pod.clone(),
            },
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = None;
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .expect("signing with a freshly generated P-256 key cannot fail");
        (token, exp)
    }

    /// Verifies a token for one of `audiences` (empty: the API audiences).
    ///
    /// # Errors
    /// The reason as the real authenticator words it, for TokenReview's `status.error`.
    pub fn verify(&self, token: &str, audiences: &[String]) -> Result<TokenSubject, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| invalid("not a compact JWS"))?;
        // A token from another issuer is not ours to judge: the real authenticator skips it.
        let unverified: Claims = jsonwebtoken::dangerous::insecure_decode(token)
            .map_err(|_| invalid("token lookup failed"))?
            .claims;
        if unverified.iss != self.issuer {
            return Err(invalid("token issuer is not trusted"));
        }
        if header.alg != Algorithm::ES256 {
            return Err(invalid("go-jose/go-jose: unexpected signature algorithm"));
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|_| invalid("go-jose/go-jose: error in cryptographic primitive"))?
            .claims;
        let now = now_unix();
        if now >= claims.exp {
            return Err(invalid("service account token has expired"));
        }
        if now < claims.nbf {
            return Err(invalid("service account token is not valid yet"));
        }
        let wanted = if audiences.is_empty() {
            self.api_audiences.clone()
        } else {
            audiences.to_vec()
        };
        let matched: Vec<String> = wanted
            .iter()
            .filter(|a| claims.aud.contains(a))
            .cloned()
            .collect();
        if matched.is_empty() {
            return Err(invalid(&format!(
                "token audiences {:?} is invalid for the target audiences {:?}",
                claims.aud, wanted
            )));
        }
        Ok(TokenSubject {
            claims,
            audiences: matched,
        })
    }

    /// `/openid/v1/jwks`.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": [{
            "use": "sig", "kty": "EC", "kid": self.kid, "crv": "P-256", "alg": "ES256",
            "x": self.x, "y": self.y,
        }]})
    }

    /// `/.well-known/openid-configuration`, as kube-apiserver serves it.
    pub fn openid_configuration(&self) -> serde_json::Value {
        serde_json::json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/openid/v1/jwks", self.issuer),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }
}

/// The union authenticator's wording: `[invalid bearer token, <why>]`.
fn invalid(why: &str) -> String {
    format!("[invalid bearer token, {why}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ttl: Duration, aud: &[&str]) -> TokenSpec<'static> {
        TokenSpec {
            namespace: "ns",
            name: "app",
            sa_uid: "uid-1",
            audiences: aud.iter().map(|s| (*s).to_owned()).collect(),
            ttl,
            pod: None,
        }
    }

    #[test]
    fn an_issued_token_verifies_for_its_audience_only() {
        let ta = TokenAuthority::new("http://127.0.0.1:1").unwrap();
        let (token, _) = ta.issue(&spec(Duration::from_secs(60), &["vault"]));
        let subject = ta.verify(&token, &["vault".to_owned()]).unwrap();
        assert_eq!(subject.claims.sub, "system:serviceaccount:ns:app");
        assert!(ta.verify(&token, &[]).unwrap_err().contains("audiences"));
    }

    #[test]
    fn expired_tampered_and_foreign_tokens_are_rejected() {
        let ta = TokenAuthority::new("http://127.0.0.1:1").unwrap();
        let (expired, _) = ta.issue(&spec(Duration::ZERO, &[]));
        assert!(ta.verify(&expired, &[]).unwrap_err().contains("expired"));

        let (token, _) = ta.issue(&spec(Duration::from_secs(60), &[]));
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        claims["sub"] = "system:serviceaccount:kube-system:admin".into();
        parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
        assert!(
            ta.verify(&parts.join("."), &[])
                .unwrap_err()
                .contains("cryptographic")
        );

        let other = TokenAuthority::new("http://127.0.0.1:1").unwrap();
        let (foreign, _) = other.issue(&spec(Duration::from_secs(60), &[]));
        assert!(ta.verify(&foreign, &[]).is_err());
    }
}

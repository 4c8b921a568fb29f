//! Bearer tokens that authenticate proxies on the xDS TLS port.
//!
//! In file mode pilotfish signs the tokens itself (`pilotfish token`): compact JWS, ES256,
//! with `iss`, `aud`, `sub = system:serviceaccount:<ns>:<sa>`, `iat`, `exp`. Verification is
//! strict: the algorithm must be ES256 (so `alg: none` and HMAC confusion are refused), the
//! signature must check, every claim must be present and right. The Kubernetes path plugs a
//! TokenReview-backed verifier in behind the same trait.

use super::{CaError, Identity};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Why a token was refused. The text never includes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("unsupported token algorithm {0:?}")]
    Algorithm(String),
    #[error("bad token signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token audience mismatch")]
    Audience,
    #[error("token issuer mismatch")]
    Issuer,
    #[error("token missing claim {0}")]
    MissingClaim(&'static str),
    #[error("token subject is not a service account")]
    Subject,
    #[error("token review: {0}")]
    Review(String),
}

/// Checks a bearer token and says which identity it proves (async: on Kubernetes the
/// answer comes from the API server's TokenReview).
pub trait TokenVerifier: Send + Sync {
    fn verify<'a>(
        &'a self,
        token: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Identity, AuthError>> + Send + 'a>>;
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: String,
}

#[derive(Serialize, Deserialize, Default)]
struct Claims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    exp: Option<u64>,
}

pub const ISSUER: &str = "pilotfish";
pub const AUDIENCE: &str = "pilotfish";

/// File-mode tokens: an ES256 key in the state directory.
pub struct LocalTokens {
    key: EcdsaKeyPair,
    public: Vec<u8>,
    audience: String,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

const SKEW: u64 = 60;

impl LocalTokens {
    /// Load `token-key.pem` from the state directory, creating it (mode 0600) if missing.
    pub fn load_or_create(state_dir: &Path) -> Result<LocalTokens, CaError> {
        std::fs::create_dir_all(state_dir).map_err(|source| CaError::Write {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join("token-key.pem");
        if !path.exists() {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &SystemRandom::new(),
            )
            .map_err(|_| CaError::Invalid {
                what: "token key".into(),
                reason: "generation failed".into(),
            })?;
            let pem = format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
            );
            super::write_private(&path, &pem)?;
        }
        let pem = super::read(&path)?;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map_err(|_| CaError::Invalid {
                what: path.display().to_string(),
                reason: "not a PEM private key".into(),
            })?;
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &SystemRandom::new())
                .map_err(|_| CaError::Invalid {
                    what: path.display().to_string(),
                    reason: "not a P-256 PKCS#8 key".into(),
                })?;
        let public = key.public_key().as_ref().to_vec();
        Ok(LocalTokens {
            key,
            public,
            audience: AUDIENCE.into(),
        })
    }

    /// Sign a token for a service account.
    pub fn sign(&self, id: &Identity, ttl: Duration) -> String {
        let iat = now();
        let claims = Claims {
            iss: Some(ISSUER.into()),
            aud: Some(serde_json::json!([self.audience])),
            sub: Some(format!(
                "system:serviceaccount:{}:{}",
                id.namespace, id.service_account
            )),
            iat: Some(iat),
            exp: Some(iat + ttl.as_secs()),
        };
        self.sign_claims(
            &Header {
                alg: "ES256".into(),
                typ: "JWT".into(),
            },
            &claims,
        )
    }

    fn sign_claims(&self, h: &Header, c: &Claims) -> String {
        let signing_input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(h).unwrap_or_default()),
            B64.encode(serde_json::to_vec(c).unwrap_or_default())
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map(|s| B64.encode(s.as_ref()))
            .unwrap_or_default();
        format!("{signing_input}.{sig}")
    }
}

impl TokenVerifier for LocalTokens {
    fn verify<'a>(
        &'a self,
        token: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Identity, AuthError>> + Send + 'a>>
    {
        Box::pin(std::future::ready(self.check(token)))
    }
}

impl LocalTokens {
    /// The identity a token signed by this key proves (file mode's tokens).
    pub fn check(&self, token: &str) -> Result<Identity, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 || token.len() > 16 * 1024 {
            return Err(AuthError::Malformed);
        }
        let header: Header = B64
            .decode(parts[0])
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(AuthError::Malformed)?;
        if header.alg != "ES256" {
            return Err(AuthError::Algorithm(header.alg.chars().take(16).collect()));
        }
        let sig = B64.decode(parts[2]).map_err(|_| AuthError::Malformed)?;
        let signing_input = &token[..parts[0].len() + 1 + parts[1].len()];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public)
            .verify(signing_input.as_bytes(), &sig)
            .map_err(|_| AuthError::Signature)?;
        let claims: Claims = B64
            .decode(parts[1])
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(AuthError::Malformed)?;
        let t = now();
        let exp = claims.exp.ok_or(AuthError::MissingClaim("exp"))?;
        if exp + SKEW < t {
            return Err(AuthError::Expired);
        }
        let iat = claims.iat.ok_or(AuthError::MissingClaim("iat"))?;
        if iat > t + SKEW {
            return Err(AuthError::NotYetValid);
        }
        if claims
            .iss
            .as_deref()
            .ok_or(AuthError::MissingClaim("iss"))?
            != ISSUER
        {
            return Err(AuthError::Issuer);
        }
        let aud_ok = match claims.aud.ok_or(AuthError::MissingClaim("aud"))? {
            serde_json::Value::String(s) => s == self.audience,
            serde_json::Value::Array(a) => {
                a.iter().any(|v| v.as_str() == Some(self.audience.as_str()))
            }
            _ => false,
        };
        if !aud_ok {
            return Err(AuthError::Audience);
        }
        let sub = claims.sub.ok_or(AuthError::MissingClaim("sub"))?;
        let rest = sub
            .strip_prefix("system:serviceaccount:")
            .ok_or(AuthError::Subject)?;
        let (ns, sa) = rest.split_once(':').ok_or(AuthError::Subject)?;
        if ns.is_empty() || sa.is_empty() || sa.contains(':') {
            return Err(AuthError::Subject);
        }
        Ok(Identity {
            namespace: ns.into(),
            service_account: sa.into(),
        })
    }
}

#[cfg(test)]
pub(crate) fn forge(t: &LocalTokens, alg: &str, claims: serde_json::Value) -> String {
    let h = Header {
        alg: alg.into(),
        typ: "JWT".into(),
    };
    let c: Claims = serde_json::from_value(claims).unwrap();
    t.sign_claims(&h, &c)
}

//! Proxy authentication on Kubernetes: a stream's bearer token is a projected
//! service-account token, and the API server says whose it is (TokenReview), checked for
//! the audience sidecars are given (`--injection-token-audience`). The identity is the
//! token's namespace and service account; the node must claim exactly it (`xds::auth`).
//!
//! Answers are cached for a short while by the token's hash (every stream of a sidecar
//! presents the same token; a reconnect storm would otherwise be one TokenReview a stream).
//! Tokens pilotfish signed itself (`pilotfish token`) are still accepted, checked locally.

use super::token::{AuthError, LocalTokens, TokenVerifier};
use super::Identity;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::warn;

/// How long an answer is reused.
const TTL: Duration = Duration::from_secs(30);
/// Answers kept at most (the cache is emptied past it).
const CACHE_MAX: usize = 20_000;

pub struct TokenReviewer {
    client: kube::Client,
    audience: String,
    local: Arc<LocalTokens>,
    cache: Mutex<HashMap<[u8; 32], (Identity, Instant)>>,
}

impl TokenReviewer {
    pub fn new(client: kube::Client, audience: String, local: Arc<LocalTokens>) -> TokenReviewer {
        TokenReviewer {
            client,
            audience,
            local,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn review(&self, token: &str) -> Result<Identity, AuthError> {
        use sha2::Digest;
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some((id, at)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            if at.elapsed() < TTL {
                return Ok(id.clone());
            }
        }
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let answer = api
            .create(&Default::default(), &review)
            .await
            .map_err(|e| {
                warn!(error = %e, "TokenReview failed");
                AuthError::Review("the API server could not review the token".into())
            })?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthError::Review(
                status
                    .error
                    .unwrap_or_else(|| "token not authenticated".into()),
            ));
        }
        if !status
            .audiences
            .unwrap_or_default()
            .iter()
            .any(|a| a == &self.audience)
        {
            return Err(AuthError::Audience);
        }
        let user = status.user.and_then(|u| u.username).unwrap_or_default();
        let id = service_account(&user).ok_or(AuthError::Subject)?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, (id.clone(), Instant::now()));
        Ok(id)
    }
}

/// `system:serviceaccount:<ns>:<sa>` → the identity.
fn service_account(user: &str) -> Option<Identity> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (ns, sa) = rest.split_once(':')?;
    (!ns.is_empty() && !sa.is_empty() && !sa.contains(':')).then(|| Identity {
        namespace: ns.to_string(),
        service_account: sa.to_string(),
    })
}

impl TokenVerifier for TokenReviewer {
    fn verify<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Identity, AuthError>> + Send + 'a>> {
        Box::pin(async move {
            let token = token.trim();
            if token.is_empty() {
                return Err(AuthError::Missing);
            }
            if token.len() > 16 * 1024 {
                return Err(AuthError::Malformed);
            }
            // pilotfish's own tokens first (no round trip); anything else goes to the API server.
            match self.local.check(token) {
                Ok(id) => Ok(id),
                Err(_) => self.review(token).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn service_account_usernames() {
        let id = super::service_account("system:serviceaccount:shop:web").unwrap();
        assert_eq!(
            (id.namespace.as_str(), id.service_account.as_str()),
            ("shop", "web")
        );
        for bad in [
            "alice",
            "system:serviceaccount:shop",
            "system:serviceaccount::web",
            "system:serviceaccount:a:b:c",
        ] {
            assert!(super::service_account(bad).is_none(), "{bad}");
        }
    }
}

//! Who is on the other end of a stream, and the secrets that identity may have.
//!
//! On the TLS port every stream must present `authorization: Bearer <token>`; the token's
//! identity must equal the namespace and service account the node claims (a missing claim
//! is a refusal). Only an authenticated stream gets secrets, and only its own identity's:
//! `default` (its SVID) and `ROOTCA`. Anything else asked for is refused, logged, counted.

use super::cache::{encode_secret, Res};
use crate::api::{Kind, Spec};
use crate::ca::token::TokenVerifier;
use crate::ca::{Ca, Identity};
use crate::model::{Proxy, World};
use crate::translate::secret::{tls_certificate, validation_context, DEFAULT, ROOTCA};
use crate::translate::tls::credential_sds_names;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::metadata::MetadataMap;
use tonic::Status;
use tracing::warn;

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

pub struct Security {
    pub ca: Arc<Ca>,
    pub verifier: Arc<dyn TokenVerifier>,
    /// Bumped whenever a certificate may have been re-minted: streams re-check SDS.
    pub rotation: watch::Receiver<u64>,
    pub refusals: Family<ReasonLabel, Counter>,
    pub sds_denied: Counter,
}

impl Security {
    /// The bearer token of a stream's gRPC metadata ("" when there is none).
    pub fn bearer(md: &MetadataMap) -> String {
        md.get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .unwrap_or("")
            .to_string()
    }

    /// Authenticate a stream from its bearer token.
    pub async fn authenticate(&self, token: &str, peer: &str) -> Result<Identity, Status> {
        self.verifier.verify(token).await.map_err(|e| {
            warn!(%peer, reason = %e, "xDS stream refused: authentication failed");
            self.refuse("token");
            Status::unauthenticated(format!("authentication failed: {e}"))
        })
    }

    pub fn refuse(&self, reason: &str) {
        self.refusals
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// The node must claim exactly the identity its token proves.
    pub fn check_node(&self, id: &Identity, proxy: &Proxy, peer: &str) -> Result<(), Status> {
        if proxy.service_account.is_empty() || proxy.namespace.is_empty() {
            warn!(%peer, proxy = %proxy.id, "xDS stream refused: node metadata lacks NAMESPACE or SERVICE_ACCOUNT");
            self.refuse("node_claims");
            return Err(Status::permission_denied(
                "node metadata must carry NAMESPACE and SERVICE_ACCOUNT",
            ));
        }
        if proxy.namespace != id.namespace || proxy.service_account != id.service_account {
            warn!(%peer, proxy = %proxy.id, token_ns = %id.namespace, token_sa = %id.service_account,
                  node_ns = %proxy.namespace, node_sa = %proxy.service_account,
                  "xDS stream refused: node identity differs from the token's");
            self.refuse("identity_mismatch");
            return Err(Status::permission_denied(
                "node namespace/service account differ from the token's identity",
            ));
        }
        Ok(())
    }

    /// Log and count secret names asked for that this stream will not get.
    pub fn audit(&self, id: Option<&Identity>, proxy: &Proxy, asked: &[String], world: &World) {
        if asked.is_empty() {
            return;
        }
        if id.is_none() {
            warn!(proxy = %proxy.id, "SDS refused: the stream is not authenticated");
            self.sds_denied.inc();
            return;
        }
        let ns = id.map(|i| i.namespace.clone()).unwrap_or_default();
        let own_ns = |n: &str| {
            n.strip_prefix("kubernetes://").is_some_and(|name| {
                let name = name.strip_suffix("-cacert").unwrap_or(name);
                let key = crate::api::ObjectKey {
                    kind: Kind::Secret,
                    namespace: ns.clone(),
                    name: name.to_string(),
                };
                world.objects.contains_key(&key) && credential_names(world, proxy).contains(name)
            })
        };
        for n in asked
            .iter()
            .filter(|n| *n != DEFAULT && *n != ROOTCA && !own_ns(n))
        {
            warn!(proxy = %proxy.id, secret = %n, "SDS refused: not a secret of this identity");
            self.sds_denied.inc();
        }
    }

    /// Every secret the identity may have: its own SVID, the trust bundle, and the
    /// Kubernetes Secrets of its own namespace that config reaching this proxy names as
    /// `credentialName` (a DestinationRule of its namespace, a Gateway selecting it). Other
    /// TLS Secrets of the namespace (a webhook's, cert-manager's) are never sent.
    pub fn secrets(&self, id: Option<&Identity>, proxy: &Proxy, world: &World) -> Vec<Res> {
        let Some(id) = id else { return Vec::new() };
        let mut out = self.own_secrets(id, proxy);
        let named = credential_names(world, proxy);
        for r in world.objects.values().filter(|r| {
            r.key.kind == Kind::Secret
                && r.key.namespace == id.namespace
                && named.contains(r.key.name.as_str())
        }) {
            let Spec::Secret(sec) = &r.spec else { continue };
            let (cert_name, ca_name) = credential_sds_names(&r.key.name);
            if let (Some(c), Some(k)) = (sec.get("tls.crt"), sec.get("tls.key")) {
                out.push(encode_secret(&tls_certificate(&cert_name, &c, &k)));
            }
            if let Some(ca) = sec.get("ca.crt") {
                out.push(encode_secret(&validation_context(&ca_name, &ca)));
            }
        }
        out
    }

    fn own_secrets(&self, id: &Identity, proxy: &Proxy) -> Vec<Res> {
        let mut out = Vec::new();
        match self.ca.svid(id, &proxy.id) {
            Ok(svid) => out.push(encode_secret(&tls_certificate(
                DEFAULT,
                &svid.cert_chain_pem,
                &svid.key_pem,
            ))),
            Err(e) => warn!(proxy = %proxy.id, error = %e, "minting a certificate failed"),
        }
        out.push(encode_secret(&validation_context(
            ROOTCA,
            &self.ca.bundle_pem(),
        )));
        out
    }
}

/// The `credentialName`s that reach a proxy: those of DestinationRules of its namespace
/// (their Secrets resolve there) and of the Gateways that select it (a gateway's Secrets
/// resolve in its own namespace).
pub fn credential_names<'w>(
    world: &'w World,
    proxy: &Proxy,
) -> std::collections::BTreeSet<&'w str> {
    let mut out = std::collections::BTreeSet::new();
    for dr in world.destination_rules.values() {
        if dr.key.namespace != proxy.namespace {
            continue;
        }
        let tp = dr.spec.traffic_policy.iter().chain(
            dr.spec
                .subsets
                .iter()
                .filter_map(|s| s.traffic_policy.as_ref()),
        );
        for tp in tp {
            let tls = tp
                .tls
                .iter()
                .chain(tp.port_level_settings.iter().filter_map(|p| p.tls.as_ref()));
            out.extend(tls.filter_map(|t| t.credential_name.as_deref()));
        }
    }
    if proxy.router {
        for g in crate::translate::gateway::selecting(world, proxy) {
            out.extend(
                g.servers
                    .iter()
                    .filter_map(|s| s.tls.as_ref()?.credential_name.as_deref()),
            );
        }
    }
    out
}

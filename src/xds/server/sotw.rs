//! State of the world: per-type state of a stream, requests and responses.

use super::{Stream, Variant};
use crate::xds::cache::Names;
use crate::xds::wire::{Plan, SotwRequest};
use crate::xds::{is_wildcard_type, short, ENDPOINT, ROUTE, SECRET};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tracing::debug;

#[derive(Default)]
pub(super) struct SotwType {
    /// Names asked for (interned; shared by every proxy asking for the same set).
    names: Arc<Names>,
    wildcard: bool,
    nonce: String,
    version: String,
    /// Set when a response is in flight: the change time, for convergence to ACK.
    pending: Option<Instant>,
}

/// Types whose state-of-the-world responses may carry only what changed: Envoy keeps the
/// resources of these types that a response leaves out (incremental EDS, as Istio does).
/// Clusters and listeners always carry the full set (a missing name means deleted).
fn partial_ok(type_url: &str) -> bool {
    type_url == ENDPOINT || type_url == ROUTE
}

impl Stream {
    /// The response for a type, if the proxy's version differs (or `force`). `partial`: only
    /// resources the proxy does not hold yet, where the type allows it.
    fn sotw_response(
        &mut self,
        type_url: &str,
        ts: &mut SotwType,
        force: bool,
        partial: bool,
    ) -> Option<Plan> {
        let started = Instant::now();
        let gen = self.published.gen.clone();
        let filter = (!ts.wildcard).then(|| ts.names.clone());
        let cur = self.view(type_url, filter);
        let resolved = cur.resolve(&gen);
        if resolved.version == ts.version && !force {
            // Same content, maybe newer maps: remember those (cheaper diffs later).
            self.held.insert(type_url.to_string(), cur);
            return None;
        }
        let mut items = Vec::new();
        if partial && !force && partial_ok(type_url) {
            if let Some(old) = self.held.get(type_url) {
                items = cur.diff(old, &gen).0.clone();
            }
        }
        if items.is_empty() {
            items = resolved.items.clone();
        }
        let nonce = self.next_nonce();
        let version = resolved.version.clone();
        self.held.insert(type_url.to_string(), cur);
        ts.version = version.clone();
        ts.nonce = nonce.clone();
        ts.pending = Some(self.published.changed_at);
        let head = DiscoveryResponse {
            version_info: version.clone(),
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        let plan = Plan::sotw(&head, items);
        self.sent(type_url, &version, &nonce, &plan, started);
        debug!(proxy = %self.proxy.id, r#type = short(type_url), %version, n = plan.resources(), "push");
        Some(plan)
    }

    /// Handle one request; returns a response to send, if any.
    fn sotw_request(
        &mut self,
        types: &mut HashMap<String, SotwType>,
        req: SotwRequest,
    ) -> Option<Plan> {
        let type_url = req.type_url.clone();
        let ts = types.entry(type_url.clone()).or_default();
        let first = ts.nonce.is_empty() && ts.version.is_empty();
        if !req.response_nonce.is_empty() && req.response_nonce != ts.nonce {
            self.srv.metrics.stale_nonces.inc();
            debug!(proxy = %self.proxy.id, r#type = short(&type_url), nonce = %req.response_nonce, "stale nonce ignored");
            return None;
        }
        let mut ts = std::mem::take(ts);
        if let Some(err) = &req.error_detail {
            self.nack(&type_url, &ts.version, &err.message);
            ts.pending = None;
        } else if !req.response_nonce.is_empty() {
            self.ack(&type_url, &req.version_info, &mut ts.pending);
        }
        // An ACK repeats the names: compare before building (and interning) a new set.
        let same_names = req
            .matched
            .as_ref()
            .is_some_and(|m| Arc::ptr_eq(m, &ts.names))
            || req.name_bytes().len() == ts.names.set.len()
                && (req.names_wire() == Some(ts.names.wire())
                    || req
                        .name_bytes()
                        .zip(&ts.names.set)
                        .all(|(a, b)| a == b.as_bytes()));
        let names = if same_names {
            ts.names.clone()
        } else {
            Names::intern(req.names().collect())
        };
        let wildcard = is_wildcard_type(&type_url) && (names.set.is_empty() || names.contains("*"));
        let changed = !Arc::ptr_eq(&names, &ts.names) || wildcard != ts.wildcard;
        if type_url == SECRET && changed {
            if let Some(sec) = &self.srv.security {
                sec.audit(
                    self.identity.as_ref(),
                    &self.proxy,
                    &req.names().collect::<Vec<_>>(),
                    &self.published.gen.world,
                );
            }
        }
        ts.names = names;
        ts.wildcard = wildcard;
        let resp = if first {
            // A reconnecting proxy that already has our current version needs nothing.
            let filter = (!ts.wildcard).then(|| ts.names.clone());
            let cur = self.view(&type_url, filter);
            let current = cur.resolve(&self.published.gen).version.clone();
            if !req.version_info.is_empty() && req.version_info == current {
                ts.version = current;
                self.held.insert(type_url.clone(), cur);
                self.update_status(&type_url, |t| t.acked_version = req.version_info.clone());
                None
            } else {
                self.sotw_response(&type_url, &mut ts, true, false)
            }
        } else if changed {
            self.sotw_response(&type_url, &mut ts, false, false)
        } else {
            None
        };
        types.insert(type_url, ts);
        resp
    }
}

pub(super) struct Sotw;

impl Variant for Sotw {
    type Req = SotwRequest;
    type State = SotwType;
    const DELTA: bool = false;
    fn type_url(r: &mut SotwRequest) -> &mut String {
        &mut r.type_url
    }
    fn node(r: &SotwRequest) -> Option<Node> {
        r.node.clone()
    }
    fn hints(types: &HashMap<String, SotwType>) -> Vec<Arc<Names>> {
        types
            .values()
            .filter(|t| !t.names.set.is_empty())
            .map(|t| t.names.clone())
            .collect()
    }
    fn request(
        st: &mut Stream,
        types: &mut HashMap<String, SotwType>,
        r: SotwRequest,
    ) -> Option<Plan> {
        st.sotw_request(types, r)
    }
    fn refresh(st: &mut Stream, type_url: &str, ts: &mut SotwType) -> Option<Plan> {
        st.sotw_response(type_url, ts, false, true)
    }
    fn in_flight(ts: &SotwType) -> bool {
        ts.pending.is_some()
    }
}

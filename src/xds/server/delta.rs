//! Delta (incremental) xDS: per-type state of a stream, requests and responses.

use super::{Stream, Variant};
use crate::xds::cache::Names;
use crate::xds::claims::{Claims, DeltaRequest};
use crate::xds::wire::Plan;
use crate::xds::{is_wildcard_type, short, ROUTE, SECRET, VHOST};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

#[derive(Default)]
pub(super) struct DeltaType {
    subscribed: Arc<Names>,
    wildcard: bool,
    /// What a reconnecting client said it holds (name → version), until the first answer.
    /// After that, what it holds is `Stream::held` (everything sent is what it has).
    claims: Option<Claims>,
    nonce: String,
    started: bool,
    pending: Option<Instant>,
}

impl Stream {
    fn delta_response(
        &mut self,
        type_url: &str,
        ts: &mut DeltaType,
        forced: &BTreeSet<String>,
    ) -> Option<Plan> {
        if type_url == VHOST && !self.routes_settled {
            // Asked again once the route configurations in flight are answered.
            return None;
        }
        let started = Instant::now();
        let gen = self.published.gen.clone();
        let filter = (!ts.wildcard).then(|| ts.subscribed.clone());
        let cur = self.view(type_url, filter);
        let reconnected = ts.claims.as_ref().is_some_and(|c| !c.is_empty());
        let (mut changed, mut removed) = match ts.claims.take() {
            // Usually every claim is current: one fingerprint comparison shows it.
            Some(claims) if claims.fingerprint() == cur.resolve(&gen).fingerprint() => {
                (Vec::new(), Vec::new())
            }
            Some(claims) => {
                let all = cur.resolve(&gen);
                let changed = all
                    .items
                    .iter()
                    .filter(|r| claims.get(&r.name) != Some(r.version.as_bytes()))
                    .cloned()
                    .collect();
                // Claimed names we no longer have are removed. Usually every claim is
                // still current: count the matches first (hash lookups) and look closer
                // only when some claim is left over.
                let matched = all
                    .items
                    .iter()
                    .filter(|r| claims.contains(&r.name))
                    .count();
                let removed = if matched == claims.len() {
                    Vec::new()
                } else {
                    let have: std::collections::HashSet<&str> =
                        all.items.iter().map(|r| r.name.as_str()).collect();
                    claims
                        .names()
                        .filter(|n| !have.contains(n.as_str()))
                        .collect()
                };
                (changed, removed)
            }
            None => match self.held.get(type_url) {
                Some(old) => {
                    let d = cur.diff(old, &gen);
                    (d.0.clone(), d.1.clone())
                }
                None => (cur.resolve(&gen).items.clone(), Vec::new()),
            },
        };
        // Names just subscribed are always answered (or reported removed).
        if !forced.is_empty() {
            let have: std::collections::HashSet<String> =
                changed.iter().map(|c| c.name.clone()).collect();
            for n in forced {
                match cur.get(n) {
                    Some(r) if !have.contains(n) => changed.push(r.clone()),
                    Some(_) => {}
                    None if n != "*" => removed.push(n.clone()),
                    None => {}
                }
            }
        }
        changed.sort_by(|a, b| a.name.cmp(&b.name));
        removed.sort();
        removed.dedup();
        let version = cur.resolve(&gen).version.clone();
        self.held.insert(type_url.to_string(), cur);
        if changed.is_empty() && removed.is_empty() {
            if reconnected {
                // A reconnect whose claims are all current: it holds this version.
                self.update_status(type_url, |t| {
                    t.sent_version = version.clone();
                    t.acked_version = version;
                });
            }
            return None;
        }
        let nonce = self.next_nonce();
        ts.nonce = nonce.clone();
        ts.pending = Some(self.published.changed_at);
        let head = DeltaDiscoveryResponse {
            system_version_info: version.clone(),
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce: nonce.clone(),
            ..Default::default()
        };
        let plan = Plan::delta(&head, changed);
        self.sent(type_url, &version, &nonce, &plan, started);
        Some(plan)
    }

    /// Route configurations are settled when none is in flight; virtual hosts are then due.
    fn settle_routes(&mut self, ts: &DeltaType) {
        let settled = ts.started && ts.pending.is_none();
        self.vhds_due |= settled && self.vhds;
        self.routes_settled = settled;
    }

    fn delta_request(
        &mut self,
        types: &mut HashMap<String, DeltaType>,
        req: DeltaRequest,
    ) -> Option<Plan> {
        let DeltaRequest {
            msg: mut req,
            claims,
        } = req;
        let type_url = req.type_url.clone();
        let mut ts = types.remove(&type_url).unwrap_or_default();
        let stale = !req.response_nonce.is_empty() && req.response_nonce != ts.nonce;
        let sent_version = || {
            self.status
                .lock()
                .unwrap()
                .types
                .get(short(&type_url))
                .map(|t| t.sent_version.clone())
                .unwrap_or_default()
        };
        if stale {
            self.srv.metrics.stale_nonces.inc();
        } else if let Some(err) = &req.error_detail {
            let v = sent_version();
            self.nack(&type_url, &v, &err.message);
            ts.pending = None;
        } else if !req.response_nonce.is_empty() {
            let v = sent_version();
            self.ack(&type_url, &v, &mut ts.pending);
        }
        let mut forced = BTreeSet::new();
        if !ts.started {
            ts.started = true;
            ts.claims = Some(claims);
            if is_wildcard_type(&type_url) && req.resource_names_subscribe.is_empty() {
                ts.wildcard = true;
            }
        }
        if type_url == SECRET {
            if let Some(sec) = &self.srv.security {
                sec.audit(
                    self.identity.as_ref(),
                    &self.proxy,
                    &req.resource_names_subscribe,
                    &self.published.gen.world,
                );
            }
        }
        if !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty() {
            ts.wildcard |= req.resource_names_subscribe.iter().any(|n| n == "*");
            let names = std::mem::take(&mut req.resource_names_subscribe)
                .into_iter()
                .filter(|n| n != "*");
            let first = ts.subscribed.set.is_empty();
            let new: BTreeSet<String> = names.collect();
            // Names subscribed are always answered, even if we think the client has them,
            // unless the client said on this first request which version it holds. A
            // reconnect claims exactly what it subscribes: one fingerprint shows it.
            let claims = ts.claims.as_ref().filter(|c| !c.is_empty());
            let all_claimed = first && claims.is_some_and(|c| c.same_names(&new));
            if !all_claimed {
                forced.extend(
                    new.iter()
                        .filter(|n| !claims.is_some_and(|c| c.contains(n)))
                        .cloned(),
                );
            }
            let mut set = if first {
                // A (re)connect subscribing thousands of names: built in one go.
                new
            } else {
                let mut set = ts.subscribed.set.clone();
                set.extend(new);
                set
            };
            let mut dropped = Vec::new();
            for n in &req.resource_names_unsubscribe {
                if n == "*" {
                    ts.wildcard = false;
                } else if set.remove(n) {
                    dropped.push(n.as_str());
                }
            }
            ts.subscribed = Names::intern(set);
            // The client forgets what it unsubscribed from: no removal is due for it.
            if let Some(c) = &mut ts.claims {
                for n in &dropped {
                    c.remove(n);
                }
            }
            if !dropped.is_empty() {
                if let Some(h) = self.held.get_mut(&type_url) {
                    if h.filter.is_some() {
                        let kept: BTreeSet<String> = h
                            .filter
                            .iter()
                            .flat_map(|f| f.set.iter())
                            .filter(|n| !dropped.contains(&n.as_str()))
                            .cloned()
                            .collect();
                        h.filter = Some(Names::intern(kept));
                        h.extra.retain(|r| !dropped.contains(&r.name.as_str()));
                    }
                }
            }
        }
        let resp = if stale && forced.is_empty() && req.resource_names_unsubscribe.is_empty() {
            None
        } else if req.response_nonce.is_empty()
            || !forced.is_empty()
            || !req.resource_names_unsubscribe.is_empty()
        {
            self.delta_response(&type_url, &mut ts, &forced)
        } else {
            None
        };
        if type_url == ROUTE {
            self.settle_routes(&ts);
        }
        types.insert(type_url, ts);
        resp
    }
}

pub(super) struct Delta;

impl Variant for Delta {
    type Req = DeltaRequest;
    type State = DeltaType;
    const DELTA: bool = true;
    fn type_url(r: &mut DeltaRequest) -> &mut String {
        &mut r.msg.type_url
    }
    fn node(r: &DeltaRequest) -> Option<Node> {
        r.msg.node.clone()
    }
    fn request(
        st: &mut Stream,
        types: &mut HashMap<String, DeltaType>,
        r: DeltaRequest,
    ) -> Option<Plan> {
        st.delta_request(types, r)
    }
    fn refresh(st: &mut Stream, type_url: &str, ts: &mut DeltaType) -> Option<Plan> {
        let resp = st.delta_response(type_url, ts, &BTreeSet::new());
        if type_url == ROUTE {
            st.settle_routes(ts);
        }
        resp
    }
    fn in_flight(ts: &DeltaType) -> bool {
        ts.pending.is_some()
    }
}

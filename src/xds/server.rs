//! The ADS server: one task per stream, state of the world and delta.
//!
//! ```text
//!  requests ──► per-type state (nonce, subscription, sent/acked) ◄── generation watch
//!                       │
//!                       └──► bounded channel ──► gRPC response stream
//! ```
//! Rules kept (see docs/xds-protocol): fresh nonce per response; stale nonces ignored;
//! NACKs logged, counted, shown and never answered with the same version; unchanged
//! resources never resent; content-derived versions; `Unavailable` before the first load;
//! a slow stream only ever blocks its own task (newest generation wins).

use super::auth::Security;
use super::cache::{set_version, Generation, Res};
use super::status::{ConnStatus, Connections};
use super::{is_wildcard_type, short, CLUSTER, ENDPOINT, LISTENER, ORDER, ROUTE, SECRET};
use crate::ca::Identity;
use crate::metrics::Metrics;
use crate::model::Proxy;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf as pbw;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

/// A published generation and when the change that produced it happened.
#[derive(Clone)]
pub struct Published {
    pub gen: Arc<Generation>,
    pub changed_at: Instant,
}

#[derive(Clone)]
pub struct XdsServer {
    pub current: watch::Receiver<Option<Published>>,
    pub metrics: Arc<Metrics>,
    pub conns: Arc<Connections>,
    /// Becomes true at shutdown: every stream ends so the gRPC server can stop.
    pub stop: watch::Receiver<bool>,
    /// CA and token verification; without it no secret is ever served.
    pub security: Option<Arc<Security>>,
    /// Every stream must authenticate (the TLS port). Unauthenticated streams (the loopback
    /// plaintext port) get config but never a secret.
    pub require_auth: bool,
    /// Rate limit on new streams (a reconnect storm is spread out, not served all at once).
    pub admission: Arc<Admission>,
}

/// A token bucket for new streams: `rate` per second, up to `burst` at once. Excess streams
/// get `ResourceExhausted` and retry with their backoff. A rate of 0 admits everything.
pub struct Admission {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
    pub rejected: prometheus_client::metrics::counter::Counter,
}

impl Admission {
    pub fn new(rate: u32, burst: u32) -> Admission {
        let burst = f64::from(burst.max(1));
        Admission {
            rate: f64::from(rate),
            burst,
            state: Mutex::new((burst, Instant::now())),
            rejected: Default::default(),
        }
    }

    pub fn unlimited() -> Admission {
        Admission::new(0, 1)
    }

    pub fn try_admit(&self) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let mut st = self.state.lock().unwrap();
        let now = Instant::now();
        let (tokens, last) = *st;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        if tokens >= 1.0 {
            *st = (tokens - 1.0, now);
            true
        } else {
            *st = (tokens, now);
            self.rejected.inc();
            false
        }
    }
}

/// Per-stream response queue depth. Small on purpose: a proxy that does not read only
/// holds up its own task, and the task always generates from the newest generation.
const QUEUE: usize = 4;
/// Largest message accepted from a proxy.
pub const MAX_MESSAGE: usize = 64 << 20;

impl XdsServer {
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<XdsServer> {
        AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(usize::MAX)
    }

    fn current(&self) -> Result<Published, Status> {
        self.current
            .borrow()
            .clone()
            .ok_or_else(|| Status::unavailable("pilotfish has not loaded its configuration yet"))
    }
}

fn struct_to_json(s: &pbw::Struct) -> BTreeMap<String, serde_json::Value> {
    fn val(v: &pbw::Value) -> serde_json::Value {
        use pbw::value::Kind;
        match &v.kind {
            Some(Kind::NullValue(_)) | None => serde_json::Value::Null,
            Some(Kind::NumberValue(n)) => serde_json::json!(n),
            Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
            Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
            Some(Kind::StructValue(s)) => {
                serde_json::Value::Object(struct_to_json(s).into_iter().collect())
            }
            Some(Kind::ListValue(l)) => {
                serde_json::Value::Array(l.values.iter().map(val).collect())
            }
        }
    }
    s.fields.iter().map(|(k, v)| (k.clone(), val(v))).collect()
}

pub fn proxy_from_node(node: &Node) -> Proxy {
    let meta = node
        .metadata
        .as_ref()
        .map(struct_to_json)
        .unwrap_or_default();
    Proxy::from_node(&node.id, &meta)
}

/// State shared by both protocol variants for one stream.
struct Stream {
    srv: XdsServer,
    proxy: Proxy,
    conn_id: String,
    status: Arc<Mutex<ConnStatus>>,
    published: Published,
    nonce: u64,
    /// What the proxy holds, per type (make-before-break bookkeeping).
    held: HashMap<String, BTreeMap<String, Res>>,
    /// The identity the stream authenticated as (None: unauthenticated, no secrets).
    identity: Option<Identity>,
    /// A route or listener update was just ACKed: clusters kept only for the old routes
    /// can go now.
    refs_acked: bool,
}

impl Stream {
    fn open(
        srv: &XdsServer,
        node: &Node,
        peer: String,
        delta: bool,
        published: Published,
        identity: Option<Identity>,
    ) -> Result<Stream, Status> {
        if node.id.is_empty() {
            return Err(Status::invalid_argument(
                "the first request of a stream must carry node.id",
            ));
        }
        let mut proxy = proxy_from_node(node);
        if let (Some(id), Some(sec)) = (&identity, &srv.security) {
            sec.check_node(id, &proxy, &peer)?;
        }
        proxy.mtls = identity.is_some();
        let (conn_id, status) = srv.conns.add(proxy.clone(), peer.clone(), delta);
        srv.metrics.connected.inc();
        info!(proxy = %proxy.id, %peer, delta, "xDS stream connected");
        Ok(Stream {
            srv: srv.clone(),
            proxy,
            conn_id,
            status,
            published,
            nonce: 0,
            held: HashMap::new(),
            identity,
            refs_acked: false,
        })
    }

    fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        format!("{}", self.nonce)
    }

    /// The resources of a type for this proxy: the current generation's, plus (for clusters
    /// and endpoints) those the proxy holds that routes or listeners it holds still name.
    /// Make before break: a cluster goes only after no route the proxy has names it.
    fn resources(&self, type_url: &str) -> Vec<Res> {
        if type_url == SECRET {
            return match &self.srv.security {
                Some(sec) => sec.secrets(
                    self.identity.as_ref(),
                    &self.proxy,
                    &self.published.gen.world,
                ),
                None => Vec::new(),
            };
        }
        let r = self.class_resources();
        let mut out = r.values(type_url);
        if type_url == CLUSTER || type_url == ENDPOINT {
            if let Some(held) = self.held.get(type_url) {
                let refs: BTreeSet<&str> = [ROUTE, LISTENER]
                    .iter()
                    .filter_map(|t| self.held.get(*t))
                    .flat_map(|m| m.values())
                    .flat_map(|r| r.refs.iter().map(String::as_str))
                    .collect();
                for (name, res) in held {
                    if refs.contains(name.as_str()) && !r.contains(type_url, name) {
                        out.push(res.clone());
                    }
                }
                out.sort_by(|a, b| a.name.cmp(&b.name));
            }
        }
        out
    }

    /// This proxy's resources. Building a new class is CPU work: on the multi-threaded
    /// runtime it runs with `block_in_place`, so the worker's other streams move elsewhere.
    fn class_resources(&self) -> Arc<super::cache::ProxyResources> {
        let build = || self.published.gen.for_proxy(&self.proxy);
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(build),
            _ => build(),
        }
    }

    fn update_status(&self, type_url: &str, f: impl FnOnce(&mut super::status::TypeStatus)) {
        let mut st = self.status.lock().unwrap();
        st.world_version = self.published.gen.world.version;
        f(st.types.entry(short(type_url).to_string()).or_default());
    }

    fn nack(&self, type_url: &str, version: &str, error: &str) {
        warn!(proxy = %self.proxy.id, r#type = short(type_url), version, error, "proxy rejected config (NACK)");
        self.srv.metrics.reject(short(type_url));
        self.update_status(type_url, |t| {
            t.nacked_version = version.to_string();
            t.nack_error = error.to_string();
        });
    }

    fn ack(&mut self, type_url: &str, version: &str, pending: &mut Option<Instant>) {
        if type_url == ROUTE || type_url == LISTENER {
            self.refs_acked = true;
        }
        if let Some(t) = pending.take() {
            self.srv
                .metrics
                .convergence
                .observe(t.elapsed().as_secs_f64());
        }
        self.update_status(type_url, |t| {
            t.acked_version = version.to_string();
            if t.nacked_version == version {
                t.nacked_version.clear();
                t.nack_error.clear();
            }
        });
    }

    fn sent(
        &self,
        type_url: &str,
        version: &str,
        nonce: &str,
        n: usize,
        bytes: usize,
        started: Instant,
    ) {
        let m = &self.srv.metrics;
        let label = crate::metrics::TypeLabel {
            r#type: short(type_url).to_string(),
        };
        m.pushes.get_or_create(&label).inc();
        m.push_time
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
        m.bytes_sent.inc_by(bytes as u64);
        self.update_status(type_url, |t| {
            t.sent_version = version.to_string();
            t.sent_nonce = nonce.to_string();
            t.sent_resources = n;
            t.pushes += 1;
        });
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.srv.conns.remove(&self.conn_id);
        self.srv.metrics.connected.dec();
        self.published.gen.forget(&self.proxy);
        info!(proxy = %self.proxy.id, "xDS stream closed");
    }
}

// ---------------------------------------------------------------- state of the world

#[derive(Default)]
struct SotwType {
    names: BTreeSet<String>,
    wildcard: bool,
    nonce: String,
    version: String,
    /// Set when a response is in flight: the change time, for convergence to ACK.
    pending: Option<Instant>,
}

impl Stream {
    fn sotw_response(
        &mut self,
        type_url: &str,
        ts: &mut SotwType,
        force: bool,
    ) -> Option<DiscoveryResponse> {
        let started = Instant::now();
        let all = self.resources(type_url);
        let chosen: Vec<Res> = if ts.wildcard {
            all
        } else {
            all.into_iter()
                .filter(|r| ts.names.contains(&r.name))
                .collect()
        };
        let version = set_version(chosen.iter());
        if version == ts.version && !force {
            return None;
        }
        let nonce = self.next_nonce();
        self.held.insert(
            type_url.to_string(),
            chosen.iter().map(|r| (r.name.clone(), r.clone())).collect(),
        );
        ts.version = version.clone();
        ts.nonce = nonce.clone();
        ts.pending = Some(self.published.changed_at);
        let bytes = chosen.iter().map(|r| r.any.value.len()).sum();
        self.sent(type_url, &version, &nonce, chosen.len(), bytes, started);
        debug!(proxy = %self.proxy.id, r#type = short(type_url), %version, n = chosen.len(), "push");
        Some(DiscoveryResponse {
            version_info: version,
            resources: chosen.iter().map(|r| r.any.clone()).collect(),
            type_url: type_url.to_string(),
            nonce,
            ..Default::default()
        })
    }

    /// Handle one request; returns a response to send, if any.
    fn sotw_request(
        &mut self,
        types: &mut HashMap<String, SotwType>,
        req: DiscoveryRequest,
    ) -> Option<DiscoveryResponse> {
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
        let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        let wildcard = is_wildcard_type(&type_url) && (names.is_empty() || names.contains("*"));
        let changed = names != ts.names || wildcard != ts.wildcard;
        if type_url == SECRET && changed {
            if let Some(sec) = &self.srv.security {
                sec.audit(
                    self.identity.as_ref(),
                    &self.proxy,
                    &req.resource_names,
                    &self.published.gen.world,
                );
            }
        }
        ts.names = names;
        ts.wildcard = wildcard;
        let resp = if first {
            // A reconnecting proxy that already has our current version needs nothing.
            let all = self.resources(&type_url);
            let chosen: Vec<&Res> = all
                .iter()
                .filter(|r| ts.wildcard || ts.names.contains(&r.name))
                .collect();
            let current = set_version(chosen.into_iter());
            if !req.version_info.is_empty() && req.version_info == current {
                ts.version = current;
                self.update_status(&type_url, |t| t.acked_version = req.version_info.clone());
                None
            } else {
                self.sotw_response(&type_url, &mut ts, true)
            }
        } else if changed {
            self.sotw_response(&type_url, &mut ts, false)
        } else {
            None
        };
        types.insert(type_url, ts);
        resp
    }
}

/// Resolves when certificates may have rotated; never, without a CA.
async fn rotation_changed(r: &mut Option<watch::Receiver<u64>>) {
    if let Some(r) = r {
        if r.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending::<()>().await
}

type SotwStream = Pin<Box<dyn futures::Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream =
    Pin<Box<dyn futures::Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

fn peer_of<T>(r: &Request<T>) -> String {
    r.remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into())
}

// ---------------------------------------------------------------- delta

#[derive(Default)]
struct DeltaType {
    subscribed: BTreeSet<String>,
    wildcard: bool,
    /// What the client holds: name → version.
    client: HashMap<String, String>,
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
    ) -> Option<DeltaDiscoveryResponse> {
        let started = Instant::now();
        let all = self.resources(type_url);
        let by_name: BTreeMap<&str, &Res> = all.iter().map(|r| (r.name.as_str(), r)).collect();
        let wanted = |n: &str| ts.wildcard || ts.subscribed.contains(n);
        let mut resources = Vec::new();
        for r in all.iter().filter(|r| wanted(&r.name)) {
            if forced.contains(&r.name) || ts.client.get(&r.name) != Some(&r.version) {
                resources.push(r.clone());
            }
        }
        let mut removed: Vec<String> = ts
            .client
            .keys()
            .filter(|n| !by_name.contains_key(n.as_str()) || !wanted(n))
            .cloned()
            .collect();
        for n in forced {
            if !by_name.contains_key(n.as_str()) && !removed.contains(n) && n != "*" {
                removed.push(n.clone());
            }
        }
        removed.sort();
        if resources.is_empty() && removed.is_empty() {
            return None;
        }
        let held = self.held.entry(type_url.to_string()).or_default();
        for r in &resources {
            ts.client.insert(r.name.clone(), r.version.clone());
            held.insert(r.name.clone(), r.clone());
        }
        for n in &removed {
            ts.client.remove(n);
            held.remove(n);
        }
        let nonce = self.next_nonce();
        ts.nonce = nonce.clone();
        ts.pending = Some(self.published.changed_at);
        let mut held: Vec<&Res> = ts
            .client
            .keys()
            .filter_map(|n| by_name.get(n.as_str()).copied())
            .collect();
        held.sort_by(|a, b| a.name.cmp(&b.name));
        let version = set_version(held.into_iter());
        let bytes = resources.iter().map(|r| r.any.value.len()).sum();
        self.sent(type_url, &version, &nonce, resources.len(), bytes, started);
        Some(DeltaDiscoveryResponse {
            system_version_info: version,
            resources: resources
                .iter()
                .map(|r| Resource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.any.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        })
    }

    fn delta_request(
        &mut self,
        types: &mut HashMap<String, DeltaType>,
        req: DeltaDiscoveryRequest,
    ) -> Option<DeltaDiscoveryResponse> {
        let type_url = req.type_url.clone();
        let mut ts = types.remove(&type_url).unwrap_or_default();
        let stale = !req.response_nonce.is_empty() && req.response_nonce != ts.nonce;
        if stale {
            self.srv.metrics.stale_nonces.inc();
        } else if let Some(err) = &req.error_detail {
            let v = self
                .status
                .lock()
                .unwrap()
                .types
                .get(short(&type_url))
                .map(|t| t.sent_version.clone())
                .unwrap_or_default();
            self.nack(&type_url, &v, &err.message);
            ts.pending = None;
        } else if !req.response_nonce.is_empty() {
            let v = self
                .status
                .lock()
                .unwrap()
                .types
                .get(short(&type_url))
                .map(|t| t.sent_version.clone())
                .unwrap_or_default();
            self.ack(&type_url, &v, &mut ts.pending);
        }
        let mut forced = BTreeSet::new();
        if !ts.started {
            ts.started = true;
            ts.client = req.initial_resource_versions.clone().into_iter().collect();
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
        for n in &req.resource_names_subscribe {
            if n == "*" {
                ts.wildcard = true;
            } else {
                ts.subscribed.insert(n.clone());
                // Always answered, even if we think the client has it.
                if !req.initial_resource_versions.contains_key(n) {
                    forced.insert(n.clone());
                }
            }
        }
        for n in &req.resource_names_unsubscribe {
            if n == "*" {
                ts.wildcard = false;
            } else if ts.subscribed.remove(n) {
                ts.client.remove(n);
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
        types.insert(type_url, ts);
        resp
    }
}

/// The two protocol variants: what differs between state of the world and delta.
trait Variant {
    type Req: Send + 'static;
    type Resp: Send + 'static;
    type State: Default + Send;
    const DELTA: bool;
    fn type_url(r: &mut Self::Req) -> &mut String;
    fn node(r: &Self::Req) -> Option<Node>;
    /// Handle one request; a response to send, if any.
    fn request(
        st: &mut Stream,
        types: &mut HashMap<String, Self::State>,
        r: Self::Req,
    ) -> Option<Self::Resp>;
    /// Re-evaluate one subscribed type; a response if what the proxy should have changed.
    fn refresh(st: &mut Stream, type_url: &str, ts: &mut Self::State) -> Option<Self::Resp>;
}

struct Sotw;
struct Delta;

impl Variant for Sotw {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;
    type State = SotwType;
    const DELTA: bool = false;
    fn type_url(r: &mut DiscoveryRequest) -> &mut String {
        &mut r.type_url
    }
    fn node(r: &DiscoveryRequest) -> Option<Node> {
        r.node.clone()
    }
    fn request(
        st: &mut Stream,
        types: &mut HashMap<String, SotwType>,
        r: DiscoveryRequest,
    ) -> Option<DiscoveryResponse> {
        st.sotw_request(types, r)
    }
    fn refresh(st: &mut Stream, type_url: &str, ts: &mut SotwType) -> Option<DiscoveryResponse> {
        st.sotw_response(type_url, ts, false)
    }
}

impl Variant for Delta {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;
    type State = DeltaType;
    const DELTA: bool = true;
    fn type_url(r: &mut DeltaDiscoveryRequest) -> &mut String {
        &mut r.type_url
    }
    fn node(r: &DeltaDiscoveryRequest) -> Option<Node> {
        r.node.clone()
    }
    fn request(
        st: &mut Stream,
        types: &mut HashMap<String, DeltaType>,
        r: DeltaDiscoveryRequest,
    ) -> Option<DeltaDiscoveryResponse> {
        st.delta_request(types, r)
    }
    fn refresh(
        st: &mut Stream,
        type_url: &str,
        ts: &mut DeltaType,
    ) -> Option<DeltaDiscoveryResponse> {
        st.delta_response(type_url, ts, &BTreeSet::new())
    }
}

/// Re-evaluate the given types (those subscribed) and send what changed, in order.
/// Returns false when the client is gone.
async fn refresh<V: Variant>(
    st: &mut Stream,
    types: &mut HashMap<String, V::State>,
    order: Vec<String>,
    tx: &mpsc::Sender<Result<V::Resp, Status>>,
) -> bool {
    for t in order {
        let Some(mut ts) = types.remove(&t) else {
            continue;
        };
        let resp = V::refresh(st, &t, &mut ts);
        types.insert(t, ts);
        if let Some(resp) = resp {
            if tx.send(Ok(resp)).await.is_err() {
                return false;
            }
        }
    }
    true
}

/// Every subscribed type, in make-before-break order.
fn push_order<S>(types: &HashMap<String, S>) -> Vec<String> {
    let mut order: Vec<String> = ORDER.iter().map(|s| s.to_string()).collect();
    order.extend(
        types
            .keys()
            .filter(|k| !ORDER.contains(&k.as_str()))
            .cloned(),
    );
    order
}

/// One stream, either variant: the first request opens it (node, authentication check),
/// then requests, config changes, certificate rotations and shutdown drive it.
async fn run<V: Variant>(
    srv: XdsServer,
    mut inbound: Streaming<V::Req>,
    tx: mpsc::Sender<Result<V::Resp, Status>>,
    peer: String,
    fixed_type: Option<&'static str>,
    identity: Option<Identity>,
) where
    V::Req: prost::Message + Default,
{
    let fill = |mut r: V::Req| {
        let t = V::type_url(&mut r);
        if t.is_empty() {
            if let Some(f) = fixed_type {
                *t = f.to_string();
            }
        }
        r
    };
    let first = match inbound.message().await {
        Ok(Some(r)) => fill(r),
        _ => return,
    };
    let Ok(published) = srv.current() else {
        let _ = tx
            .send(Err(Status::unavailable(
                "pilotfish has not loaded its configuration yet",
            )))
            .await;
        return;
    };
    let mut current = srv.current.clone();
    current.mark_unchanged();
    let node = V::node(&first).unwrap_or_default();
    let mut st = match Stream::open(&srv, &node, peer, V::DELTA, published, identity) {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    let mut types: HashMap<String, V::State> = HashMap::new();
    let mut next = Some(first);
    let mut stop = srv.stop.clone();
    let mut rotation = srv.security.as_ref().map(|s| s.rotation.clone());
    loop {
        if let Some(mut req) = next.take() {
            if V::type_url(&mut req).is_empty() {
                let _ = tx
                    .send(Err(Status::invalid_argument("type_url is required on ADS")))
                    .await;
                return;
            }
            if let Some(resp) = V::request(&mut st, &mut types, req) {
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
            // New routes/listeners were ACKed: clusters kept only for the old ones can go.
            if std::mem::take(&mut st.refs_acked)
                && !refresh::<V>(
                    &mut st,
                    &mut types,
                    vec![CLUSTER.into(), ENDPOINT.into()],
                    &tx,
                )
                .await
            {
                return;
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            msg = inbound.message() => match msg {
                Ok(Some(r)) => next = Some(fill(r)),
                Ok(None) => return,
                Err(e) => { debug!(proxy = %st.proxy.id, error = %e, "stream error"); return; }
            },
            _ = rotation_changed(&mut rotation) => {
                if !refresh::<V>(&mut st, &mut types, vec![SECRET.into()], &tx).await { return; }
            }
            ch = current.changed() => {
                if ch.is_err() { return; }
                let Some(p) = current.borrow_and_update().clone() else { continue };
                st.published.gen.forget(&st.proxy);
                st.published = p;
                let order = push_order(&types);
                if !refresh::<V>(&mut st, &mut types, order, &tx).await { return; }
            }
        }
    }
}

impl XdsServer {
    /// On the TLS port: the identity the stream's bearer token proves, or a refusal.
    fn admit(&self) -> Result<(), Status> {
        if self.admission.try_admit() {
            Ok(())
        } else {
            Err(Status::resource_exhausted(
                "too many new xDS streams; retry with backoff",
            ))
        }
    }

    fn authenticate<T>(&self, req: &Request<T>, peer: &str) -> Result<Option<Identity>, Status> {
        if !self.require_auth {
            return Ok(None);
        }
        let sec = self
            .security
            .as_ref()
            .ok_or_else(|| Status::internal("authentication is not configured"))?;
        sec.authenticate(req.metadata(), peer).map(Some)
    }

    pub fn sotw(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
        fixed: Option<&'static str>,
    ) -> Result<Response<SotwStream>, Status> {
        self.current()?;
        self.admit()?;
        let peer = peer_of(&req);
        let identity = self.authenticate(&req, &peer)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run::<Sotw>(
            self.clone(),
            req.into_inner(),
            tx,
            peer,
            fixed,
            identity,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    pub fn delta(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
        fixed: Option<&'static str>,
    ) -> Result<Response<DeltaStream>, Status> {
        self.current()?;
        self.admit()?;
        let peer = peer_of(&req);
        let identity = self.authenticate(&req, &peer)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run::<Delta>(
            self.clone(),
            req.into_inner(),
            tx,
            peer,
            fixed,
            identity,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = SotwStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        self.sotw(req, None)
    }

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.delta(req, None)
    }
}

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

mod delta;
mod sotw;

use super::auth::Security;
use super::cache::{Generation, Names, ProxyResources, View};
use super::status::{ConnStatus, Connections};
use super::wire::{Plan, Requests, SotwRequest};
use super::{short, CLUSTER, ENDPOINT, LISTENER, ORDER, ROUTE, SECRET, VHOST};
use crate::ca::Identity;
use crate::metrics::Metrics;
use crate::model::Proxy;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf as pbw;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Status};
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
    /// Delta ADS streams get route configurations in their VHDS form (virtual hosts as
    /// resources of their own).
    pub vhds: bool,
}

/// A token bucket for new streams: `rate` per second, up to `burst` at once. Excess streams
/// get `ResourceExhausted` and retry with their backoff. A rate of 0 admits everything.
///
/// Per source: while the bucket is below half full (contended), a source address that took
/// more than the average share (plus 8) of the streams admitted lately (counts halve every
/// second) is refused, so one client opening streams in a loop cannot drain the bucket that every
/// sidecar's reconnect needs. A single source (a load test on loopback) is never over the
/// average, so a storm from one host is only bound by the bucket itself.
pub struct Admission {
    rate: f64,
    burst: f64,
    state: Mutex<Bucket>,
    pub rejected: prometheus_client::metrics::counter::Counter,
}

struct Bucket {
    tokens: f64,
    last: Instant,
    /// Admissions per source, halved each second (`since`: the last halving), with
    /// whether the source asked since then; a source silent for a whole second is dropped.
    since: Instant,
    by_source: HashMap<std::net::IpAddr, (u32, bool)>,
    total: u32,
}

/// Admissions a source may take over the average share before it counts as a hog.
const HOG_SLACK: u32 = 8;

/// Sources remembered per window; past this the window restarts (addresses are real TCP
/// peers, but the map must stay bounded).
const SOURCES_MAX: usize = 16_384;

impl Admission {
    pub fn new(rate: u32, burst: u32) -> Admission {
        let burst = f64::from(burst.max(1));
        let now = Instant::now();
        Admission {
            rate: f64::from(rate),
            burst,
            state: Mutex::new(Bucket {
                tokens: burst,
                last: now,
                since: now,
                by_source: HashMap::new(),
                total: 0,
            }),
            rejected: Default::default(),
        }
    }

    pub fn unlimited() -> Admission {
        Admission::new(0, 1)
    }

    /// Whether a new stream from `source` may open now.
    pub fn try_admit(&self, source: Option<std::net::IpAddr>) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        b.tokens =
            (b.tokens + now.duration_since(b.last).as_secs_f64() * self.rate).min(self.burst);
        b.last = now;
        if b.by_source.len() >= SOURCES_MAX {
            b.by_source.clear();
            b.total = 0;
        }
        if now.duration_since(b.since) >= std::time::Duration::from_secs(1) {
            b.since = now;
            b.by_source.retain(|_, (n, asked)| {
                *n /= 2;
                std::mem::take(asked)
            });
            b.total = b.by_source.values().map(|v| v.0).sum();
        }
        // Every source that asks is counted, admitted or not: a sidecar refused once is a
        // source the others must leave room for.
        let mine = source.map_or(0, |ip| {
            let e = b.by_source.entry(ip).or_insert((0, true));
            e.1 = true;
            e.0
        });
        let sources = b.by_source.len().max(1) as u32;
        let hog = b.tokens < self.burst / 2.0 && mine > b.total / sources + HOG_SLACK;
        if hog || b.tokens < 1.0 {
            self.rejected.inc();
            return false;
        }
        b.tokens -= 1.0;
        b.total += 1;
        if let Some(ip) = source {
            b.by_source.entry(ip).or_insert((0, true)).0 += 1;
        }
        true
    }
}

/// Per-stream response queue depth. Small on purpose: a proxy that does not read only
/// holds up its own task, and the task always generates from the newest generation.
const QUEUE: usize = 4;
/// Largest request message accepted from a proxy (gRPC's own default is 4 MiB; an xDS
/// request naming 100,000 resources is a few MB).
pub const MAX_MESSAGE: usize = 16 << 20;

impl XdsServer {
    fn current(&self) -> Result<Published, Status> {
        self.current
            .borrow()
            .clone()
            .ok_or_else(|| Status::unavailable("pilotfish has not loaded its configuration yet"))
    }
}

pub fn struct_to_json(s: &pbw::Struct) -> BTreeMap<String, serde_json::Value> {
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
    let mut p = Proxy::from_node(&node.id, &meta);
    if let Some(l) = &node.locality {
        if !(l.region.is_empty() && l.zone.is_empty() && l.sub_zone.is_empty()) {
            p.locality = format!("{}/{}/{}", l.region, l.zone, l.sub_zone)
                .trim_end_matches('/')
                .to_string();
        }
    }
    if p.locality.is_empty() {
        p.locality = crate::model::locality_of("", &p.labels);
    }
    p
}

/// State shared by both protocol variants for one stream.
struct Stream {
    srv: XdsServer,
    proxy: Proxy,
    conn_id: String,
    status: Arc<Mutex<ConnStatus>>,
    published: Published,
    nonce: u64,
    /// What the proxy holds (was last sent), per type: shared layers, not copies.
    held: HashMap<String, View>,
    /// This proxy's maps in `published` (None until first needed).
    class: Option<Arc<ProxyResources>>,
    /// The identity the stream authenticated as (None: unauthenticated, no secrets).
    identity: Option<Identity>,
    /// A route or listener update was just ACKed: clusters kept only for the old routes
    /// can go now.
    refs_acked: bool,
    /// This stream gets route configurations in their VHDS form (delta ADS).
    vhds: bool,
    /// Every route configuration sent was answered (VHDS): the proxy holds, with their VHDS
    /// subscriptions, exactly those in `held`, so their virtual hosts can be delivered.
    /// Envoy drops virtual hosts of a configuration it has not applied yet.
    routes_settled: bool,
    /// Virtual hosts are due for a look (the route configurations just settled).
    vhds_due: bool,
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
            class: None,
            identity,
            refs_acked: false,
            vhds: false,
            routes_settled: false,
            vhds_due: false,
        })
    }

    fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        format!("{}", self.nonce)
    }

    /// What this proxy should have of a type: the current generation's resources (only
    /// `filter`'s names when given), plus, for clusters and endpoints, those it holds that
    /// routes or listeners it holds still name. Make before break: a cluster goes only after
    /// no route the proxy has names it.
    fn view(&mut self, type_url: &str, filter: Option<Arc<Names>>) -> View {
        if type_url == VHOST {
            return self.vhost_view();
        }
        if type_url == SECRET {
            let mut extra = match &self.srv.security {
                Some(sec) => sec.secrets(
                    self.identity.as_ref(),
                    &self.proxy,
                    &self.published.gen.world,
                ),
                None => Vec::new(),
            };
            extra.sort_by(|a, b| a.name.cmp(&b.name));
            return View {
                layers: Vec::new(),
                filter,
                extra,
            };
        }
        let r = self.class_resources();
        let mut v = View {
            layers: r.layers(type_url).to_vec(),
            filter,
            extra: Vec::new(),
        };
        if type_url != CLUSTER && type_url != ENDPOINT {
            return v;
        }
        let Some(held) = self.held.get(type_url) else {
            return v;
        };
        // The proxy holds exactly these maps: nothing it has is missing from them.
        if held.extra.is_empty() && held.same_layers(&v.layers) {
            return v;
        }
        // Routes and listeners held are this generation's: they name only its clusters.
        let current = HOLDERS
            .iter()
            .all(|t| self.held.get(*t).is_none_or(|h| h.same_layers(r.layers(t))));
        if current {
            return v;
        }
        let holders: Vec<&View> = HOLDERS.iter().filter_map(|t| self.held.get(*t)).collect();
        let missing = self.published.gen.missing_refs(&holders, &v.layers);
        let mut extra: Vec<_> = missing
            .iter()
            .filter(|n| v.wanted(n))
            .filter_map(|n| held.get(n).cloned())
            .collect();
        extra.sort_by(|a, b| a.name.cmp(&b.name));
        v.extra = extra;
        v
    }

    /// The virtual hosts of the route configurations the proxy holds (all of them, unless
    /// one is still on its way): a proxy subscribes to virtual hosts once, with a wildcard,
    /// and expects those of every configuration it applies. Call only when the route
    /// configurations are settled (`held` is what the proxy has).
    fn vhost_view(&mut self) -> View {
        let r = self.class_resources();
        let layers = r.layers(VHOST).to_vec();
        let Some(held) = self.held.get(ROUTE) else {
            return View::default();
        };
        let configs = held.resolve(&self.published.gen);
        let has = |rc: &str| configs.items.iter().any(|c| c.name == rc);
        let every = r
            .layers(ROUTE)
            .iter()
            .flat_map(|m| m.keys())
            .all(|n| has(n));
        let filter = (!every).then(|| {
            Names::intern(
                layers
                    .iter()
                    .flat_map(|m| m.keys())
                    .filter(|n| n.split_once('/').is_some_and(|(rc, _)| has(rc)))
                    .cloned()
                    .collect(),
            )
        });
        View {
            layers,
            filter,
            extra: Vec::new(),
        }
    }

    /// This proxy's resources in the current generation, looked up once per generation.
    /// Building a new class is CPU work: on the multi-threaded runtime it runs with
    /// `block_in_place`, so the worker's other streams move elsewhere.
    fn class_resources(&mut self) -> Arc<ProxyResources> {
        if let Some(c) = &self.class {
            return c.clone();
        }
        // Usually the class is built already: then a few lookups, no hand-off of the worker.
        let c = match self.published.gen.built_for(&self.proxy, self.vhds) {
            Some(c) => c,
            None => {
                let build = || self.published.gen.for_stream(&self.proxy, self.vhds);
                match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                    Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                        tokio::task::block_in_place(build)
                    }
                    _ => build(),
                }
            }
        };
        self.class = Some(c.clone());
        c
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
        if HOLDERS.contains(&type_url) {
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

    fn sent(&self, type_url: &str, version: &str, nonce: &str, plan: &Plan, started: Instant) {
        let (n, bytes) = (plan.resources(), plan.payload_bytes());
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

/// Types whose resources name clusters (make-before-break holds clusters they name).
const HOLDERS: [&str; 3] = [ROUTE, LISTENER, VHOST];

impl Drop for Stream {
    fn drop(&mut self) {
        self.srv.conns.remove(&self.conn_id);
        self.srv.metrics.connected.dec();
        info!(proxy = %self.proxy.id, "xDS stream closed");
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

fn peer_of<T>(r: &Request<T>) -> String {
    r.remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The two protocol variants: what differs between state of the world and delta.
trait Variant: 'static {
    type Req: super::wire::Decode + Send + 'static;
    type State: Default + Send;
    const DELTA: bool;
    fn type_url(r: &mut Self::Req) -> &mut String;
    fn node(r: &Self::Req) -> Option<Node>;
    /// Name sets the next requests will likely repeat (decoding hints).
    fn hints(_types: &HashMap<String, Self::State>) -> Vec<Arc<super::cache::Names>> {
        Vec::new()
    }
    /// Handle one request; a response to send, if any.
    fn request(
        st: &mut Stream,
        types: &mut HashMap<String, Self::State>,
        r: Self::Req,
    ) -> Option<Plan>;
    /// Re-evaluate one subscribed type; a response if what the proxy should have changed.
    fn refresh(st: &mut Stream, type_url: &str, ts: &mut Self::State) -> Option<Plan>;
    /// A response of this type is not ACKed (or NACKed) yet.
    fn in_flight(ts: &Self::State) -> bool;
}

type Tx = mpsc::Sender<Result<Plan, Status>>;

/// Re-evaluate the given types (those subscribed) and send what changed, in order.
/// A type whose last response is not ACKed yet is deferred (recorded in `deferred`) and
/// re-evaluated when the ACK comes, from the newest generation: a slow proxy gets one
/// response per round trip with everything that changed meanwhile, not a backlog (newest
/// state wins). A deferred type holds back the types after it in make-before-break order.
/// Returns false when the client is gone.
async fn refresh<V: Variant>(
    st: &mut Stream,
    types: &mut HashMap<String, V::State>,
    order: Vec<String>,
    deferred: &mut BTreeSet<String>,
    tx: &Tx,
) -> bool {
    let mut held_back = false;
    for t in order {
        let Some(mut ts) = types.remove(&t) else {
            continue;
        };
        let ordered = ORDER.contains(&t.as_str());
        if V::in_flight(&ts) || (held_back && ordered) {
            held_back |= ordered;
            deferred.insert(t.clone());
            types.insert(t, ts);
            continue;
        }
        deferred.remove(&t);
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
    mut inbound: Requests<V::Req>,
    tx: Tx,
    peer: String,
    fixed_type: Option<&'static str>,
    token: Option<String>,
) {
    let identity = match (&token, &srv.security) {
        (Some(t), Some(sec)) => match sec.authenticate(t, &peer).await {
            Ok(id) => Some(id),
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        },
        _ => None,
    };
    drop(token);
    let fill = |mut r: Box<V::Req>| {
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
        Ok(None) => return,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
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
    let opened = {
        let node = V::node(&first).unwrap_or_default();
        Stream::open(&srv, &node, peer, V::DELTA, published, identity).map(Box::new)
    };
    let mut st = match opened {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    // VHDS travels on the ADS stream itself, and only a delta stream can carry it.
    st.vhds = V::DELTA && fixed_type.is_none() && srv.vhds;
    let mut types: HashMap<String, V::State> = HashMap::new();
    let mut deferred: BTreeSet<String> = BTreeSet::new();
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
            if let Some(resp) = V::request(&mut st, &mut types, *req) {
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
            // New routes/listeners were ACKed: clusters kept only for the old ones can go.
            // And types deferred while a response was in flight may go now.
            // Virtual hosts wait for their route configurations.
            let mut again: BTreeSet<String> = std::mem::take(&mut deferred);
            if std::mem::take(&mut st.refs_acked) {
                again.extend([CLUSTER, ENDPOINT, VHOST].map(String::from));
            }
            if std::mem::take(&mut st.vhds_due) {
                again.insert(VHOST.to_string());
            }
            if !again.is_empty() {
                let order = push_order(&types)
                    .into_iter()
                    .filter(|t| again.contains(t))
                    .collect();
                if !refresh::<V>(&mut st, &mut types, order, &mut deferred, &tx).await {
                    return;
                }
            }
        }
        inbound.hints = V::hints(&types);
        tokio::select! {
            _ = stop.changed() => return,
            msg = inbound.message() => match msg {
                Ok(Some(r)) => next = Some(fill(r)),
                Ok(None) => return,
                Err(e) => { debug!(proxy = %st.proxy.id, error = %e, "stream error"); return; }
            },
            _ = rotation_changed(&mut rotation) => {
                if !refresh::<V>(&mut st, &mut types, vec![SECRET.into()], &mut deferred, &tx).await { return; }
            }
            ch = current.changed() => {
                if ch.is_err() { return; }
                let Some(p) = current.borrow_and_update().clone() else { continue };
                st.published = p;
                st.class = None;
                let order = push_order(&types);
                if !refresh::<V>(&mut st, &mut types, order, &mut deferred, &tx).await { return; }
            }
        }
    }
}

impl XdsServer {
    /// On the TLS port: the identity the stream's bearer token proves, or a refusal.
    fn admit<T>(&self, head: &Request<T>) -> Result<(), Status> {
        if self.admission.try_admit(head.remote_addr().map(|a| a.ip())) {
            Ok(())
        } else {
            Err(Status::resource_exhausted(
                "too many new xDS streams; retry with backoff",
            ))
        }
    }

    /// The bearer token to check in the stream's task (None: no authentication on this
    /// port). The check itself may ask the API server (TokenReview), so it is not done on
    /// the connection's task.
    fn token<T>(&self, req: &Request<T>) -> Result<Option<String>, Status> {
        if !self.require_auth {
            return Ok(None);
        }
        if self.security.is_none() {
            return Err(Status::internal("authentication is not configured"));
        }
        Ok(Some(super::auth::Security::bearer(req.metadata())))
    }

    /// Open a stream of either variant: checks, then the stream's task; the receiver feeds
    /// the response body.
    fn open<V: Variant>(
        &self,
        head: &Request<()>,
        body: Requests<V::Req>,
        fixed: Option<&'static str>,
    ) -> Result<mpsc::Receiver<Result<Plan, Status>>, Status> {
        self.current()?;
        self.admit(head)?;
        let peer = peer_of(head);
        let token = self.token(head)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run::<V>(self.clone(), body, tx, peer, fixed, token));
        Ok(rx)
    }

    /// A state-of-the-world stream (ADS, or one type when `fixed`).
    pub fn sotw(
        &self,
        head: &Request<()>,
        body: Requests<SotwRequest>,
        fixed: Option<&'static str>,
    ) -> Result<mpsc::Receiver<Result<Plan, Status>>, Status> {
        self.open::<sotw::Sotw>(head, body, fixed)
    }

    /// A delta stream (ADS, or one type when `fixed`).
    pub fn delta(
        &self,
        head: &Request<()>,
        body: Requests<super::claims::DeltaRequest>,
        fixed: Option<&'static str>,
    ) -> Result<mpsc::Receiver<Result<Plan, Status>>, Status> {
        self.open::<delta::Delta>(head, body, fixed)
    }
}

#[cfg(test)]
mod tests {
    use super::Admission;
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn one_source_cannot_drain_admission_for_the_others() {
        let ip = |n| Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)));
        // A rate too slow to refill during the test: only the burst counts.
        let a = Admission::new(1, 100);
        // A sidecar connects, then one source opens streams in a loop.
        assert!(a.try_admit(ip(2)));
        let hog = (0..1000).filter(|_| a.try_admit(ip(1))).count();
        // It gets streams only while the bucket is more than half full.
        assert!((40..=60).contains(&hog), "hog admitted {hog}");
        // The rest of the bucket is left for everyone else.
        let others = (3..=40).filter(|&n| a.try_admit(ip(n))).count();
        assert_eq!(others, 38, "other sources refused");
        // A single source (a load test from one host) drains the bucket alone, as before.
        let single = Admission::new(1, 100);
        assert_eq!((0..1000).filter(|_| single.try_admit(ip(9))).count(), 100);
    }
}

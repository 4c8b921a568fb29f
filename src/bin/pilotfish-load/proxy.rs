//! One simulated Envoy: an ADS stream (state of the world or delta) on its own HTTP/2
//! connection, subscribing the way Envoy does.
//!
//! ```text
//!  CDS wildcard ──► ACK ──► EDS for the EDS clusters received ──► ACK ──► LDS wildcard
//!      ──► ACK ──► RDS for the route names the listeners' HTTP connection managers name
//!      ──► ACK ──► (delta, first route configuration naming VHDS) VirtualHost wildcard
//! ```
//! VHDS as Envoy does it on an ADS stream: one wildcard subscription to
//! `envoy.config.route.v3.VirtualHost` after the first route configuration with `vhds` is
//! applied, never another one on that stream (later configurations with `vhds` do not
//! trigger one); virtual hosts are ACKed/NACKed like any other type, and a reconnect sends
//! the type again with the versions held. A virtual host whose `name` is not its resource
//! name (`<route config>/<virtual host>`, which Envoy needs to remove it) is NACKed.
//! Every resource is decoded before the ACK (see `decode`); a resource that does not decode
//! gets a NACK; `--nack-percent` NACKs some updates on purpose. Stream errors (including
//! `Unavailable` and `ResourceExhausted`) and server-closed streams lead to a reconnect after
//! Envoy's backoff (jittered exponential: 500 ms base, 30 s cap, reset when a response
//! arrives). A reconnect sends what Envoy sends: the versions it holds (SotW `version_info`,
//! delta `initial_resource_versions`) and its current subscriptions.
//!
//! Memory per simulated proxy stays small: the stream is the tool's own gRPC client
//! (`grpc`: no buffer kept between messages), what a delta proxy holds is shared with the
//! proxies holding the same (`held`), and name sets and their encodings are shared.

use crate::config::ProxySpec;
use crate::decode::{self, Cache, CDS, EDS, LDS, NTYPES, RDS, VHDS};
use crate::grpc;
use crate::held::{self, Held};
use crate::sys::Rng;
use crate::track::{Seen, Slot, Tracker};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use envoy_types::pb::google::rpc;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Counters over all streams.
#[derive(Default)]
pub struct Stats {
    pub bytes: AtomicU64,
    pub responses: AtomicU64,
    pub resources: AtomicU64,
    pub acks: AtomicU64,
    pub nacks: AtomicU64,
    pub injected: AtomicU64,
    pub decode_errors: AtomicU64,
    pub err_unavailable: AtomicU64,
    pub err_exhausted: AtomicU64,
    pub err_connect: AtomicU64,
    pub err_ended: AtomicU64,
    pub err_other: AtomicU64,
    pub connects: AtomicU64,
    pub max_msg: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StatsSnap {
    pub bytes: u64,
    pub responses: u64,
    pub resources: u64,
    pub acks: u64,
    pub nacks: u64,
    pub injected_nacks: u64,
    pub decode_errors: u64,
    pub unavailable: u64,
    pub resource_exhausted: u64,
    pub connect_failures: u64,
    pub ended_by_server: u64,
    pub other_errors: u64,
    pub connects: u64,
    pub max_message_bytes: u64,
}

impl StatsSnap {
    pub fn minus(&self, o: &StatsSnap) -> StatsSnap {
        StatsSnap {
            bytes: self.bytes - o.bytes,
            responses: self.responses - o.responses,
            resources: self.resources - o.resources,
            acks: self.acks - o.acks,
            nacks: self.nacks - o.nacks,
            injected_nacks: self.injected_nacks - o.injected_nacks,
            decode_errors: self.decode_errors - o.decode_errors,
            unavailable: self.unavailable - o.unavailable,
            resource_exhausted: self.resource_exhausted - o.resource_exhausted,
            connect_failures: self.connect_failures - o.connect_failures,
            ended_by_server: self.ended_by_server - o.ended_by_server,
            other_errors: self.other_errors - o.other_errors,
            connects: self.connects - o.connects,
            max_message_bytes: self.max_message_bytes,
        }
    }
    /// Stream errors of any kind.
    pub fn errors(&self) -> u64 {
        self.unavailable
            + self.resource_exhausted
            + self.connect_failures
            + self.ended_by_server
            + self.other_errors
    }
}

impl Stats {
    pub fn snap(&self) -> StatsSnap {
        StatsSnap {
            bytes: self.bytes.load(Relaxed),
            responses: self.responses.load(Relaxed),
            resources: self.resources.load(Relaxed),
            acks: self.acks.load(Relaxed),
            nacks: self.nacks.load(Relaxed),
            injected_nacks: self.injected.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
            unavailable: self.err_unavailable.load(Relaxed),
            resource_exhausted: self.err_exhausted.load(Relaxed),
            connect_failures: self.err_connect.load(Relaxed),
            ended_by_server: self.err_ended.load(Relaxed),
            other_errors: self.err_other.load(Relaxed),
            connects: self.connects.load(Relaxed),
            max_message_bytes: self.max_msg.load(Relaxed),
        }
    }
}

/// What every stream shares.
pub struct Shared {
    /// `host:port` of the control plane's xDS port.
    pub addr: String,
    pub delta: bool,
    pub nack_percent: f64,
    pub cache: Cache,
    pub tracker: Tracker,
    pub stats: Stats,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Marker slots (services + 1 for the gateway config).
    pub slots: usize,
    /// Stream errors by message (first 160 characters).
    pub error_messages: Mutex<BTreeMap<String, u64>>,
}

/// One stream as the report sees it.
#[derive(Debug, Default, Clone)]
pub struct View {
    pub connected: bool,
    /// Last ACKed version per type (SotW `version_info`, delta `system_version_info`).
    pub acked: [String; NTYPES],
    pub acked_once: [bool; NTYPES],
    /// Subscribed to virtual hosts (VHDS).
    pub vhds: bool,
    pub routes_seen: usize,
    pub nacks: u64,
    pub injected: u64,
    pub errors: u64,
    pub last_error: String,
    pub max_msg: u64,
}

impl View {
    /// Every type subscribed was ACKed at least once (VHDS only if subscribed).
    pub fn types_synced(&self) -> bool {
        (0..NTYPES).all(|t| self.acked_once[t] || (t == VHDS && !self.vhds))
    }
}

#[derive(Debug, Clone)]
pub enum Cmd {
    Run,
    /// Drop the connection now, reconnect after the delay (a storm).
    Reconnect(Duration),
    Close,
}

pub struct Handle {
    pub spec: Arc<ProxySpec>,
    pub cmd: watch::Sender<Cmd>,
    pub view: Arc<Mutex<View>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Handle {
    pub fn view(&self) -> View {
        self.view.lock().unwrap().clone()
    }
}

pub fn spawn(sh: Arc<Shared>, spec: ProxySpec, seed: u64) -> Handle {
    let spec = Arc::new(spec);
    let (tx, rx) = watch::channel(Cmd::Run);
    let view = Arc::new(Mutex::new(View::default()));
    let task = tokio::spawn(run(sh, spec.clone(), view.clone(), rx, seed));
    Handle {
        spec,
        cmd: tx,
        view,
        task,
    }
}

fn sv(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

/// Istio's node: id, cluster and the metadata keys pilot-agent writes.
pub fn node(spec: &ProxySpec) -> Node {
    let labels = Struct {
        fields: spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), sv(v)))
            .collect(),
    };
    let mut f = BTreeMap::new();
    f.insert("NAMESPACE".to_string(), sv(&spec.namespace));
    f.insert(
        "LABELS".to_string(),
        Value {
            kind: Some(Kind::StructValue(labels)),
        },
    );
    f.insert("INSTANCE_IPS".to_string(), sv(&spec.ip));
    f.insert("SERVICE_ACCOUNT".to_string(), sv(&spec.service_account));
    f.insert("WORKLOAD_NAME".to_string(), sv(&spec.pod));
    f.insert("NAME".to_string(), sv(&spec.pod));
    f.insert("INTERCEPTION_MODE".to_string(), sv("REDIRECT"));
    f.insert("CLUSTER_ID".to_string(), sv("Kubernetes"));
    f.insert("ISTIO_VERSION".to_string(), sv("pilotfish-load"));
    f.insert(
        "PROXY_CONFIG".to_string(),
        Value {
            kind: Some(Kind::StructValue(Struct::default())),
        },
    );
    f.insert(
        "APP_CONTAINERS".to_string(),
        Value {
            kind: Some(Kind::ListValue(ListValue {
                values: vec![sv("app")],
            })),
        },
    );
    Node {
        id: spec.node_id.clone(),
        cluster: spec.node_cluster.clone(),
        metadata: Some(Struct {
            fields: f.into_iter().collect(),
        }),
        user_agent_name: "envoy".into(),
        ..Default::default()
    }
}

#[derive(Default)]
struct TypeState {
    version: String,
    nonce: String,
    names: Arc<BTreeSet<String>>,
    started: bool,
    acked_once: bool,
    /// Delta: what the proxy holds (shared with the proxies holding the same).
    held: Arc<Held>,
}

struct State {
    t: [TypeState; NTYPES],
    lds_started: bool,
    seen: Seen,
    rng: Rng,
}

enum ErrKind {
    Unavailable,
    Exhausted,
    Connect,
    Ended,
    Other,
}

enum End {
    Cmd(Cmd),
    Err(ErrKind, String),
}

fn status_end(s: &grpc::Status) -> End {
    let k = match s.code {
        tonic::Code::Unavailable => ErrKind::Unavailable,
        tonic::Code::ResourceExhausted => ErrKind::Exhausted,
        _ => ErrKind::Other,
    };
    End::Err(k, format!("{:?}: {}", s.code, s.message))
}

/// Envoy's JitteredExponentialBackOffStrategy.
struct Backoff {
    base: u64,
    max: u64,
    next: u64,
}

impl Backoff {
    fn next(&mut self, rng: &mut Rng) -> Duration {
        let b = self.next.max(1);
        self.next = if b < self.max / 2 { b * 2 } else { self.max };
        Duration::from_millis(rng.below(b).min(self.max))
    }
    fn reset(&mut self) {
        self.next = self.base;
    }
}

async fn run(
    sh: Arc<Shared>,
    spec: Arc<ProxySpec>,
    view: Arc<Mutex<View>>,
    mut cmd: watch::Receiver<Cmd>,
    seed: u64,
) {
    let mut st = State {
        t: Default::default(),
        lds_started: false,
        seen: Seen::new(sh.slots),
        rng: Rng::new(seed),
    };
    let mut backoff = Backoff {
        base: sh.backoff_base_ms,
        max: sh.backoff_max_ms,
        next: sh.backoff_base_ms,
    };
    loop {
        if matches!(*cmd.borrow_and_update(), Cmd::Close) {
            break;
        }
        let end = session(&sh, &spec, &mut st, &view, &mut cmd, &mut backoff).await;
        view.lock().unwrap().connected = false;
        let mut wait = match end {
            End::Cmd(Cmd::Close) => break,
            End::Cmd(Cmd::Reconnect(d)) => d,
            End::Cmd(Cmd::Run) => Duration::ZERO,
            End::Err(kind, msg) => {
                let c = match kind {
                    ErrKind::Unavailable => &sh.stats.err_unavailable,
                    ErrKind::Exhausted => &sh.stats.err_exhausted,
                    ErrKind::Connect => &sh.stats.err_connect,
                    ErrKind::Ended => &sh.stats.err_ended,
                    ErrKind::Other => &sh.stats.err_other,
                };
                c.fetch_add(1, Relaxed);
                *sh.error_messages
                    .lock()
                    .unwrap()
                    .entry(msg.chars().take(160).collect())
                    .or_default() += 1;
                {
                    let mut v = view.lock().unwrap();
                    v.errors += 1;
                    v.last_error = msg;
                }
                backoff.next(&mut st.rng)
            }
        };
        // Sleep, unless told otherwise meanwhile.
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => break,
                ch = cmd.changed() => {
                    if ch.is_err() { return; }
                    match cmd.borrow_and_update().clone() {
                        Cmd::Close => return,
                        Cmd::Reconnect(d) => wait = d,
                        Cmd::Run => break,
                    }
                }
            }
        }
    }
}

/// One connection's life; returns why it ended.
async fn session(
    sh: &Shared,
    spec: &ProxySpec,
    st: &mut State,
    view: &Mutex<View>,
    cmd: &mut watch::Receiver<Cmd>,
    backoff: &mut Backoff,
) -> End {
    let mut conn = tokio::select! {
        c = grpc::connect(&sh.addr) => match c {
            Ok(c) => c,
            Err(e) => return End::Err(ErrKind::Connect, e),
        },
        _ = cmd.changed() => return End::Cmd(cmd.borrow_and_update().clone()),
    };
    for t in &mut st.t {
        t.nonce.clear();
    }
    let path = if sh.delta {
        grpc::DELTA_PATH
    } else {
        grpc::SOTW_PATH
    };
    let (mut tx, pending) = tokio::select! {
        c = conn.call(path) => match c {
            Ok(c) => c,
            Err(s) => return status_end(&s),
        },
        _ = cmd.changed() => return End::Cmd(cmd.borrow_and_update().clone()),
    };
    // First stream: CDS. Reconnect: every subscription, with the versions held.
    st.t[CDS].started = true;
    let sent = if sh.delta {
        first_delta(spec, st, &mut tx)
    } else {
        first_sotw(spec, st, &mut tx)
    };
    if let Err(s) = sent {
        return status_end(&s);
    }
    let mut rx = tokio::select! {
        r = pending.response() => match r {
            Ok(rx) => rx,
            Err(s) => return status_end(&s),
        },
        _ = cmd.changed() => return End::Cmd(cmd.borrow_and_update().clone()),
    };
    sh.stats.connects.fetch_add(1, Relaxed);
    view.lock().unwrap().connected = true;
    loop {
        let m = tokio::select! {
            _ = cmd.changed() => return End::Cmd(cmd.borrow_and_update().clone()),
            m = rx.message() => m,
        };
        let b = match m {
            Ok(Some(b)) => b,
            Ok(None) => {
                return End::Err(ErrKind::Ended, "stream ended by the control plane".into())
            }
            Err(s) => return status_end(&s),
        };
        backoff.reset();
        let len = b.len();
        let bad = |what: &str, e: prost::DecodeError| {
            End::Err(ErrKind::Other, format!("Internal: decoding a {what}: {e}"))
        };
        let done = if sh.delta {
            match DeltaDiscoveryResponse::decode(b) {
                Ok(r) => on_delta(sh, spec, st, view, &mut tx, r, len),
                Err(e) => return bad("DeltaDiscoveryResponse", e),
            }
        } else {
            match DiscoveryResponse::decode(b) {
                Ok(r) => on_sotw(sh, spec, st, view, &mut tx, r, len),
                Err(e) => return bad("DiscoveryResponse", e),
            }
        };
        if let Err(s) = done {
            return status_end(&s);
        }
    }
}

fn record_response(sh: &Shared, view: &Mutex<View>, len: usize, n: usize) {
    sh.stats.bytes.fetch_add(len as u64, Relaxed);
    sh.stats.responses.fetch_add(1, Relaxed);
    sh.stats.resources.fetch_add(n as u64, Relaxed);
    sh.stats.max_msg.fetch_max(len as u64, Relaxed);
    let mut v = view.lock().unwrap();
    v.max_msg = v.max_msg.max(len as u64);
}

/// Whether to NACK this update on purpose (never a type's first response).
fn inject(sh: &Shared, st: &mut State, t: usize) -> bool {
    sh.nack_percent > 0.0 && st.t[t].acked_once && st.rng.unit() * 100.0 < sh.nack_percent
}

fn injected_error() -> rpc::Status {
    rpc::Status {
        code: tonic::Code::InvalidArgument as i32,
        message: "pilotfish-load: injected NACK".into(),
        ..Default::default()
    }
}

fn after_ack(
    sh: &Shared,
    st: &mut State,
    view: &Mutex<View>,
    idx: usize,
    t: usize,
    obs: &[(Slot, u32)],
    acked: bool,
) {
    let now = Instant::now();
    sh.tracker.observe(idx, &mut st.seen, obs, now, acked);
    let mut v = view.lock().unwrap();
    if acked {
        sh.stats.acks.fetch_add(1, Relaxed);
        v.acked[t] = st.t[t].version.clone();
        v.acked_once[t] = true;
    } else {
        sh.stats.nacks.fetch_add(1, Relaxed);
        v.nacks += 1;
    }
    v.routes_seen = st.seen.routes_seen;
}

// ------------------------------------------------------------------ state of the world

/// A SotW request as Envoy sends it: every subscribed name, in every ACK. The names are
/// the bulk of it (6,000 endpoint names in each EDS ACK), so their encoding is shared per
/// name set (`names_wire`) and only the few other fields are encoded per request.
fn sotw_req(
    spec: Option<&ProxySpec>,
    t: usize,
    ts: &TypeState,
    error: Option<rpc::Status>,
) -> RawRequest {
    let head = DiscoveryRequest {
        node: spec.map(node),
        type_url: decode::type_url(t).to_string(),
        version_info: ts.version.clone(),
        response_nonce: ts.nonce.clone(),
        error_detail: error,
        ..Default::default()
    };
    RawRequest {
        head: head.encode_to_vec(),
        names: names_wire(&ts.names),
    }
}

/// An encoded `DiscoveryRequest`: its fields other than `resource_names`, then those
/// (protobuf fields may come in any order).
pub struct RawRequest {
    head: Vec<u8>,
    names: bytes::Bytes,
}

type WireCache = HashMap<usize, (std::sync::Weak<BTreeSet<String>>, bytes::Bytes)>;
static WIRE: std::sync::LazyLock<Mutex<WireCache>> = std::sync::LazyLock::new(Default::default);

/// `resource_names` (field 3) encoded, once per shared name set.
fn names_wire(names: &Arc<BTreeSet<String>>) -> bytes::Bytes {
    if names.is_empty() {
        return bytes::Bytes::new();
    }
    let key = Arc::as_ptr(names) as usize;
    let mut cache = WIRE.lock().unwrap();
    if let Some((w, b)) = cache.get(&key) {
        if w.upgrade().is_some_and(|n| Arc::ptr_eq(&n, names)) {
            return b.clone();
        }
    }
    let msg = DiscoveryRequest {
        resource_names: names.iter().cloned().collect(),
        ..Default::default()
    };
    let b = bytes::Bytes::from(msg.encode_to_vec());
    // Drop dead sets when the map doubles past what was live at the last sweep.
    static SWEEP_AT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1024);
    if cache.len() >= SWEEP_AT.load(Relaxed) {
        cache.retain(|_, (w, _)| w.strong_count() > 0);
        SWEEP_AT.store((cache.len() * 2).max(1024), Relaxed);
    }
    cache.insert(key, (Arc::downgrade(names), b.clone()));
    b
}

/// The initial requests of a SotW stream: every type subscribed, with the versions held.
fn first_sotw(spec: &ProxySpec, st: &State, tx: &mut grpc::Sender) -> Result<(), grpc::Status> {
    let mut first = true;
    for t in [CDS, EDS, LDS, RDS] {
        if st.t[t].started {
            let r = sotw_req(first.then_some(spec), t, &st.t[t], None);
            tx.send(&r.head, &[r.names])?;
            first = false;
        }
    }
    Ok(())
}

fn on_sotw(
    sh: &Shared,
    spec: &ProxySpec,
    st: &mut State,
    view: &Mutex<View>,
    tx: &mut grpc::Sender,
    r: DiscoveryResponse,
    len: usize,
) -> Result<(), grpc::Status> {
    // Virtual hosts are not subscribed to over SotW.
    let Some(t) = decode::type_index(&r.type_url).filter(|t| *t != VHDS) else {
        return Ok(());
    };
    record_response(sh, view, len, r.resources.len());
    let xs = sh.cache.response(
        t,
        r.resources
            .iter()
            .map(|a| Some((a.type_url.as_str(), a.value.as_slice()))),
    );
    st.t[t].nonce = r.nonce.clone();
    let mut send = |req: RawRequest| tx.send(&req.head, &[req.names]);
    let xs = match xs {
        Ok(xs) => xs,
        Err(e) => {
            sh.stats.decode_errors.fetch_add(1, Relaxed);
            let error = rpc::Status {
                code: tonic::Code::InvalidArgument as i32,
                message: e,
                ..Default::default()
            };
            send(sotw_req(None, t, &st.t[t], Some(error)))?;
            after_ack(sh, st, view, spec.idx, t, &[], false);
            return Ok(());
        }
    };
    let obs = &xs.obs;
    if inject(sh, st, t) {
        send(sotw_req(None, t, &st.t[t], Some(injected_error())))?;
        sh.stats.injected.fetch_add(1, Relaxed);
        view.lock().unwrap().injected += 1;
        after_ack(sh, st, view, spec.idx, t, obs, false);
        return Ok(());
    }
    st.t[t].version = r.version_info.clone();
    st.t[t].acked_once = true;
    send(sotw_req(None, t, &st.t[t], None))?;
    after_ack(sh, st, view, spec.idx, t, obs, true);
    match t {
        CDS => {
            let eds = &xs.eds;
            if !eds.is_empty() && (eds != &st.t[EDS].names || !st.t[EDS].started) {
                st.t[EDS].names = eds.clone();
                st.t[EDS].started = true;
                send(sotw_req(None, EDS, &st.t[EDS], None))?;
            } else if eds.is_empty() && !st.lds_started {
                start_lds_sotw(st, &mut send)?;
            }
        }
        EDS if !st.lds_started => start_lds_sotw(st, &mut send)?,
        LDS => {
            let rds = &xs.rds;
            if !rds.is_empty() && (rds != &st.t[RDS].names || !st.t[RDS].started) {
                st.t[RDS].names = rds.clone();
                st.t[RDS].started = true;
                send(sotw_req(None, RDS, &st.t[RDS], None))?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn start_lds_sotw<F>(st: &mut State, send: &mut F) -> Result<(), grpc::Status>
where
    F: FnMut(RawRequest) -> Result<(), grpc::Status>,
{
    st.lds_started = true;
    st.t[LDS].started = true;
    send(sotw_req(None, LDS, &st.t[LDS], None))
}

// ------------------------------------------------------------------ delta

fn delta_base(spec: Option<&ProxySpec>, t: usize) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: spec.map(node),
        type_url: decode::type_url(t).to_string(),
        ..Default::default()
    }
}

/// The initial requests of a delta stream: every type subscribed, with the versions held.
fn first_delta(spec: &ProxySpec, st: &State, tx: &mut grpc::Sender) -> Result<(), grpc::Status> {
    let mut first = true;
    for t in [CDS, EDS, LDS, RDS, VHDS] {
        if st.t[t].started {
            let head = delta_base(first.then_some(spec), t).encode_to_vec();
            first = false;
            // Fields 1–2, then the names subscribed (3), then the versions held (5): both
            // encoded once per shared set.
            let names = if t == EDS || t == RDS {
                names_wire(&st.t[t].names)
            } else {
                bytes::Bytes::new()
            };
            tx.send(&head, &[names, st.t[t].held.irv_wire()])?;
        }
    }
    Ok(())
}

fn send_delta(tx: &mut grpc::Sender, req: DeltaDiscoveryRequest) -> Result<(), grpc::Status> {
    tx.send(&req.encode_to_vec(), &[])
}

/// Subscribe/unsubscribe request moving `t`'s subscription to `want` (None if unchanged).
fn delta_resubscribe(
    st: &mut State,
    t: usize,
    want: Arc<BTreeSet<String>>,
) -> Option<DeltaDiscoveryRequest> {
    let ts = &mut st.t[t];
    if ts.started && (Arc::ptr_eq(&want, &ts.names) || want == ts.names) {
        // The same names: share the set the others hold.
        ts.names = want;
        return None;
    }
    if want.is_empty() && !ts.started {
        return None;
    }
    let mut req = delta_base(None, t);
    req.resource_names_subscribe = want.difference(&ts.names).cloned().collect();
    req.resource_names_unsubscribe = ts.names.difference(&want).cloned().collect();
    let gone: Vec<&str> = req
        .resource_names_unsubscribe
        .iter()
        .map(String::as_str)
        .collect();
    held::apply(t, &mut ts.held, &[], &gone);
    ts.names = want;
    ts.started = true;
    Some(req)
}

fn on_delta(
    sh: &Shared,
    spec: &ProxySpec,
    st: &mut State,
    view: &Mutex<View>,
    tx: &mut grpc::Sender,
    r: DeltaDiscoveryResponse,
    len: usize,
) -> Result<(), grpc::Status> {
    let Some(t) = decode::type_index(&r.type_url) else {
        return Ok(());
    };
    record_response(sh, view, len, r.resources.len());
    let xs = sh.cache.response(
        t,
        r.resources.iter().map(|res| {
            res.resource
                .as_ref()
                .map(|a| (a.type_url.as_str(), a.value.as_slice()))
        }),
    );
    st.t[t].nonce = r.nonce.clone();
    let mut send = |req: DeltaDiscoveryRequest| send_delta(tx, req);
    let ack = |error: Option<rpc::Status>| DeltaDiscoveryRequest {
        response_nonce: r.nonce.clone(),
        error_detail: error,
        ..delta_base(None, t)
    };
    // A virtual host must be named as its resource: Envoy removes it by that name.
    let xs = xs.and_then(|xs| {
        match r
            .resources
            .iter()
            .zip(&xs.items)
            .find(|(res, x)| t == VHDS && res.name != x.name)
        {
            Some((res, x)) => Err(format!(
                "virtual host resource {:?} has name {:?}",
                res.name, x.name
            )),
            None => Ok(xs),
        }
    });
    let xs = match xs {
        Ok(xs) => xs,
        Err(e) => {
            sh.stats.decode_errors.fetch_add(1, Relaxed);
            send(ack(Some(rpc::Status {
                code: tonic::Code::InvalidArgument as i32,
                message: e,
                ..Default::default()
            })))?;
            after_ack(sh, st, view, spec.idx, t, &[], false);
            return Ok(());
        }
    };
    let obs = &xs.obs;
    if inject(sh, st, t) {
        send(ack(Some(injected_error())))?;
        sh.stats.injected.fetch_add(1, Relaxed);
        view.lock().unwrap().injected += 1;
        after_ack(sh, st, view, spec.idx, t, obs, false);
        return Ok(());
    }
    {
        let ts = &mut st.t[t];
        let upserts: Vec<(&str, &str, &Arc<decode::Extracted>)> = r
            .resources
            .iter()
            .zip(&xs.items)
            .map(|(res, x)| (res.name.as_str(), res.version.as_str(), x))
            .collect();
        let removes: Vec<&str> = r.removed_resources.iter().map(String::as_str).collect();
        held::apply(t, &mut ts.held, &upserts, &removes);
        ts.version = r.system_version_info.clone();
        ts.acked_once = true;
    }
    send(ack(None))?;
    after_ack(sh, st, view, spec.idx, t, obs, true);
    match t {
        CDS => {
            let want = st.t[CDS].held.links();
            let empty = want.is_empty();
            if let Some(req) = delta_resubscribe(st, EDS, want) {
                send(req)?;
            } else if empty && !st.lds_started {
                st.lds_started = true;
                st.t[LDS].started = true;
                send(delta_base(None, LDS))?;
            }
        }
        EDS if !st.lds_started => {
            st.lds_started = true;
            st.t[LDS].started = true;
            send(delta_base(None, LDS))?;
        }
        LDS => {
            let want = st.t[LDS].held.links();
            if let Some(req) = delta_resubscribe(st, RDS, want) {
                send(req)?;
            }
        }
        // Once, with a wildcard: the first route configuration applied that names VHDS.
        RDS if xs.vhds && !st.t[VHDS].started => {
            st.t[VHDS].started = true;
            view.lock().unwrap().vhds = true;
            send(delta_base(None, VHDS))?;
        }
        _ => {}
    }
    Ok(())
}

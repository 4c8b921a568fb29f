//! Mixer's telemetry half, from stock Envoy: the sidecars stream their access logs to
//! pilotfish (`sink`, Envoy's AccessLogService on the xDS ports), which turns each entry
//! into Istio's request metrics (`store`) with both sides resolved from its own registry
//! and the verified peer identity (`labels`), never from a header a client sent.
//!
//! ```text
//!  Envoy ──StreamAccessLogs──▶ sink (auth, decode) ──try_send──▶ queue ──▶ worker
//!                                  (full: drop, count)          (bounded)   │
//!                          Resolver (registry + connected proxies) ◀────────┤
//!                          Store (series, capped) ◀─────────────────────────┘
//!                          /metrics ◀── render
//! ```
//!
//! Ingest never holds a sidecar up: the sink reads every message as it arrives and hands
//! it to a bounded queue; when the queue is full the message is dropped and its entries
//! counted (`pilotfish_telemetry_dropped_entries_total`). Envoy's own gRPC logger buffers
//! and drops on its side too, never blocking a request.

pub mod file_log;
pub mod graph;
pub mod labels;
pub mod sink;
pub mod store;

use crate::model::Proxy;
use crate::xds::server::Published;
use crate::xds::status::Connections;
use envoy_types::pb::envoy::data::accesslog::v3 as data;
use labels::{Resolver, Workload};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{HttpObservation, Store, TcpObservation};
use tokio::sync::watch;

/// Messages waiting for the worker at most.
pub const QUEUE: usize = 1024;
/// Entries waiting for the worker at most, whatever the size of the messages they came in
/// (about 1 KiB each decoded: ~16 MiB; ~80 ms of 200,000 entries/s).
pub const QUEUED_ENTRIES: u64 = 16_384;
/// Open TCP connections whose byte counts are tracked at most (for deltas between the
/// periodic entries).
const MAX_TCP_CONNS: usize = 100_000;

/// Who sends a log stream: the proxy (as its node says), its address, and its identity
/// (verified on the TLS port from its certificate).
#[derive(Debug, Clone)]
pub struct Reporter {
    pub proxy: Proxy,
    pub ip: String,
    pub principal: String,
    pub inbound: bool,
    /// Its identity was proven by a mesh certificate (it has certificates: it can speak
    /// mTLS).
    pub mtls: bool,
}

/// A message's entries, for the worker.
pub enum Entries {
    Http(Vec<data::HttpAccessLogEntry>),
    Tcp(Vec<data::TcpAccessLogEntry>),
}

pub struct Batch {
    pub reporter: Arc<Reporter>,
    pub entries: Entries,
}

impl Batch {
    /// Entries in it.
    pub fn len(&self) -> u64 {
        (match &self.entries {
            Entries::Http(v) => v.len(),
            Entries::Tcp(v) => v.len(),
        }) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Counters of the pipeline itself.
#[derive(Default)]
pub struct Counts {
    pub entries: AtomicU64,
    pub dropped: AtomicU64,
    pub refused_streams: AtomicU64,
    /// Entries waiting for the worker now.
    pub queued: AtomicU64,
}

pub struct Telemetry {
    pub store: Mutex<Store>,
    pub graph: Mutex<graph::Graph>,
    pub counts: Counts,
    current: watch::Receiver<Option<Published>>,
    conns: Arc<Connections>,
    cluster: String,
    resolver: Mutex<Option<(u64, Instant, Arc<Resolver>)>>,
    /// Bytes already counted per open TCP connection (reporter id, stream id).
    tcp: Mutex<HashMap<(String, String), (u64, u64)>>,
    queue: Mutex<Option<tokio::sync::mpsc::Sender<Batch>>>,
    /// The JSON access log, when asked for.
    pub file_log: Mutex<Option<file_log::FileLog>>,
}

impl Telemetry {
    pub fn new(
        current: watch::Receiver<Option<Published>>,
        conns: Arc<Connections>,
        max_series: usize,
        max_edges: usize,
    ) -> Arc<Telemetry> {
        Arc::new(Telemetry {
            store: Mutex::new(Store::new(max_series)),
            graph: Mutex::new(graph::Graph::new(max_edges)),
            counts: Counts::default(),
            current,
            conns,
            cluster: "Kubernetes".into(),
            resolver: Mutex::new(None),
            tcp: Mutex::new(HashMap::new()),
            queue: Mutex::new(None),
            file_log: Mutex::new(None),
        })
    }

    /// Also writes every entry as a JSON line to `path` (rotated past `max_bytes`, `keep`
    /// old files).
    pub fn log_to_file(
        &self,
        path: std::path::PathBuf,
        max_bytes: u64,
        keep: u32,
    ) -> std::io::Result<()> {
        *self.file_log.lock().unwrap() = Some(file_log::FileLog::new(path, max_bytes, keep)?);
        Ok(())
    }

    /// Starts the worker thread; `submit` queues for it from then on.
    pub fn start(self: &Arc<Self>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(QUEUE);
        *self.queue.lock().unwrap() = Some(tx);
        let me = self.clone();
        std::thread::Builder::new()
            .name("telemetry".into())
            .spawn(move || {
                while let Some(b) = rx.blocking_recv() {
                    me.process(&b);
                    me.counts.queued.fetch_sub(b.len(), Ordering::Relaxed);
                    if rx.is_empty() {
                        if let Some(l) = me.file_log.lock().unwrap().as_mut() {
                            l.flush();
                        }
                    }
                }
            })
            .expect("telemetry thread");
    }

    /// Queues a message's entries for the worker, or drops and counts them when the queue
    /// is full. Without a worker (tests), processes them at once.
    pub fn submit(&self, b: Batch) {
        let n = b.len();
        let q = self.queue.lock().unwrap().clone();
        match q {
            Some(q) => {
                let queued = self.counts.queued.fetch_add(n, Ordering::Relaxed);
                if queued + n > QUEUED_ENTRIES || q.try_send(b).is_err() {
                    self.counts.queued.fetch_sub(n, Ordering::Relaxed);
                    self.counts.dropped.fetch_add(n, Ordering::Relaxed);
                }
            }
            None => self.process(&b),
        }
    }

    /// The resolver for the current snapshot (rebuilt when the snapshot changes, or every
    /// 2 s for the connected proxies).
    fn resolver(&self) -> Option<Arc<Resolver>> {
        let p = self.current.borrow().clone()?;
        let w = p.gen.world.clone();
        let mut r = self.resolver.lock().unwrap();
        if let Some((v, at, res)) = &*r {
            if *v == w.version && at.elapsed() < Duration::from_secs(2) {
                return Some(res.clone());
            }
        }
        let proxies: Vec<Proxy> = self.conns.snapshot().into_iter().map(|c| c.proxy).collect();
        let res = Arc::new(Resolver::new(w.clone(), &proxies, &self.cluster));
        *r = Some((w.version, Instant::now(), res.clone()));
        Some(res)
    }

    /// Turns a batch into metrics.
    pub fn process(&self, b: &Batch) {
        let Some(res) = self.resolver() else {
            return;
        };
        let r = &*b.reporter;
        let me = self.reporter_workload(&res, r);
        match &b.entries {
            Entries::Http(v) => {
                self.counts
                    .entries
                    .fetch_add(v.len() as u64, Ordering::Relaxed);
                let mut store = self.store.lock().unwrap();
                for e in v {
                    self.http(&res, r, &me, e, &mut store);
                }
            }
            Entries::Tcp(v) => {
                self.counts
                    .entries
                    .fetch_add(v.len() as u64, Ordering::Relaxed);
                for e in v {
                    self.tcp(&res, r, &me, e);
                }
            }
        }
    }

    /// The reporting proxy's workload: the registry's (or what its node says), with the
    /// principal it proved.
    fn reporter_workload(&self, res: &Resolver, r: &Reporter) -> Workload {
        let mut w = match res.workload(&r.ip) {
            Some(w) if w.namespace == r.proxy.namespace => (**w).clone(),
            _ => Workload::of(
                &res.world.mesh.trust_domain,
                &self.cluster,
                &r.proxy.workload_name,
                &r.proxy.namespace,
                &r.proxy.service_account,
                &r.proxy.labels,
            ),
        };
        w.principal = r.principal.clone();
        w
    }

    /// Both sides of an entry and how they talked.
    fn sides(
        &self,
        res: &Resolver,
        r: &Reporter,
        me: &Workload,
        c: &data::AccessLogCommon,
        authority: &str,
    ) -> (Workload, Workload, (String, String, String), &'static str) {
        if r.inbound {
            // The peer's certificate (verified by this sidecar) names the source.
            let peer = c
                .tls_properties
                .as_ref()
                .and_then(|t| t.peer_certificate_properties.as_ref())
                .and_then(|p| {
                    p.subject_alt_name.iter().find_map(|s| match &s.san {
                        Some(data::tls_properties::certificate_properties::subject_alt_name::San::Uri(u))
                            if u.starts_with("spiffe://") => Some(u.clone()),
                        _ => None,
                    })
                });
            let ip = ip_of(c.downstream_remote_address.as_ref());
            let by_ip = res.workload(&ip).map(|w| (**w).clone());
            let src = match (&peer, by_ip) {
                (Some(p), Some(w)) if &w.principal == p => w,
                (Some(p), _) => Workload {
                    principal: p.clone(),
                    ..Workload::unknown()
                },
                (None, Some(w)) => Workload {
                    principal: "unknown".into(),
                    ..w
                },
                (None, None) => Workload::unknown(),
            };
            let port = port_of(c.downstream_local_address.as_ref());
            let svc = res
                .inbound_service(&r.ip, port, authority)
                .unwrap_or_else(unknown_service);
            let policy = if peer.is_some() { "mutual_tls" } else { "none" };
            (src, me.clone(), svc, policy)
        } else {
            let ip = ip_of(c.upstream_remote_address.as_ref());
            let dst = res
                .workload(&ip)
                .map(|w| (**w).clone())
                .unwrap_or_else(Workload::unknown);
            let svc = match c.upstream_cluster.as_str() {
                "" => outbound_by_authority(res, &me.namespace, authority),
                x if x.starts_with("outbound|") => res.service_of_cluster(x),
                other => Some((
                    if ip.is_empty() {
                        other.to_string()
                    } else {
                        format!("{ip}:{}", port_of(c.upstream_remote_address.as_ref()))
                    },
                    other.to_string(),
                    "unknown".to_string(),
                )),
            }
            .unwrap_or_else(unknown_service);
            // Istio's client side says "unknown"; pilotfish knows what it configured: mTLS
            // when the proxy has certificates and the cluster to that endpoint speaks Istio
            // mTLS (DestinationRule, else auto mTLS).
            let policy = if dst.name == "unknown" {
                "unknown"
            } else if r.mtls
                && res.mutual_tls_to(
                    &svc.0,
                    c.upstream_cluster
                        .split('|')
                        .nth(1)
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(0),
                    &dst,
                )
            {
                "mutual_tls"
            } else {
                "none"
            };
            (me.clone(), dst, svc, policy)
        }
    }

    fn http(
        &self,
        res: &Resolver,
        r: &Reporter,
        me: &Workload,
        e: &data::HttpAccessLogEntry,
        store: &mut Store,
    ) {
        let Some(c) = &e.common_properties else {
            return;
        };
        let (no_req, no_resp) = Default::default();
        let req: &data::HttpRequestProperties = e.request.as_ref().unwrap_or(&no_req);
        let resp: &data::HttpResponseProperties = e.response.as_ref().unwrap_or(&no_resp);
        let (src, dst, svc, policy) = self.sides(res, r, me, c, &req.authority);
        let grpc = req
            .request_headers
            .get("content-type")
            .is_some_and(|t| t.starts_with("application/grpc"));
        let grpc_status = resp
            .response_trailers
            .get("grpc-status")
            .or_else(|| resp.response_headers.get("grpc-status"))
            .cloned()
            .unwrap_or_default();
        let code = resp
            .response_code
            .map(|c| c.value.to_string())
            .unwrap_or_else(|| "0".into());
        let flags = response_flags(c.response_flags.as_ref());
        let labels = label_set(
            r,
            &src,
            &dst,
            &svc,
            if grpc { "grpc" } else { "http" },
            &code,
            &grpc_status,
            &flags,
            policy,
        );
        let ms = |d: &Option<envoy_types::pb::google::protobuf::Duration>| {
            d.as_ref()
                .map(|d| d.seconds as f64 * 1000.0 + d.nanos as f64 / 1e6)
        };
        let duration_ms = ms(&c.time_to_last_downstream_tx_byte)
            .or_else(|| ms(&c.duration))
            .unwrap_or(0.0);
        store.record_http(
            &labels.as_array(),
            &HttpObservation {
                duration_ms,
                request_bytes: req.request_body_bytes,
                response_bytes: resp.response_body_bytes,
            },
        );
        if let Some(l) = self.file_log.lock().unwrap().as_mut() {
            l.write(&serde_json::json!({
                "start_time": c.start_time.as_ref().map(|t| t.seconds as f64 + t.nanos as f64 / 1e9),
                "reporter": labels.v[0],
                "source_workload": src.name, "source_namespace": src.namespace, "source_principal": src.principal,
                "destination_service": svc.0, "destination_workload": dst.name, "destination_namespace": dst.namespace,
                "destination_principal": dst.principal,
                "protocol": if grpc { "grpc" } else { "http" },
                "method": envoy_types::pb::envoy::config::core::v3::RequestMethod::try_from(req.request_method).map(|m| m.as_str_name()).unwrap_or("-"),
                "authority": req.authority, "path": req.path,
                "response_code": code, "grpc_status": grpc_status, "response_flags": flags,
                "duration_ms": duration_ms,
                "request_bytes": req.request_body_bytes, "response_bytes": resp.response_body_bytes,
                "connection_security_policy": policy,
                "upstream_cluster": c.upstream_cluster,
            }));
        }
        let error = code == "0"
            || code.starts_with('5')
            || (grpc && !grpc_status.is_empty() && grpc_status != "0");
        self.edge(
            r,
            &src,
            &dst,
            &svc,
            &graph::Observation {
                requests: 1,
                error,
                mtls: policy == "mutual_tls",
                sent: req.request_body_bytes,
                received: resp.response_body_bytes,
                latency_ms: Some(duration_ms),
                protocol: if grpc { "grpc" } else { "http" },
            },
        );
    }

    /// The graph edge of an entry: workload → service from the client's side, service →
    /// workload from the server's.
    fn edge(
        &self,
        r: &Reporter,
        src: &Workload,
        dst: &Workload,
        svc: &(String, String, String),
        o: &graph::Observation,
    ) {
        let workload = |w: &Workload| graph::Node {
            id: format!("workload:{}/{}", w.namespace, w.name),
            kind: "workload",
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            app: w.app.clone(),
            version: w.version.clone(),
        };
        let service = graph::Node {
            id: format!("service:{}", svc.0),
            kind: "service",
            name: svc.1.clone(),
            namespace: svc.2.clone(),
            app: String::new(),
            version: String::new(),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut g = self.graph.lock().unwrap();
        if r.inbound {
            g.record(&service, &workload(dst), o, now);
        } else {
            g.record(&workload(src), &service, o, now);
        }
    }

    /// The service graph over the last `window` seconds.
    pub fn graph_view(&self, window: u64) -> graph::View {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.graph.lock().unwrap().view(window, now)
    }

    fn tcp(&self, res: &Resolver, r: &Reporter, me: &Workload, e: &data::TcpAccessLogEntry) {
        let Some(c) = &e.common_properties else {
            return;
        };
        let cp = e.connection_properties.unwrap_or_default();
        let kind =
            data::AccessLogType::try_from(c.access_log_type).unwrap_or(data::AccessLogType::NotSet);
        let opened = kind == data::AccessLogType::TcpUpstreamConnected;
        let closed =
            kind == data::AccessLogType::TcpConnectionEnd || kind == data::AccessLogType::NotSet;
        // Byte counts are the connection's totals so far: count what is new.
        let (received, sent) = {
            let mut t = self.tcp.lock().unwrap();
            let key = (r.proxy.id.clone(), c.stream_id.clone());
            let (r0, s0) = if c.stream_id.is_empty() {
                (0, 0)
            } else {
                t.get(&key).copied().unwrap_or((0, 0))
            };
            let d = (
                cp.received_bytes.saturating_sub(r0),
                cp.sent_bytes.saturating_sub(s0),
            );
            if closed || c.stream_id.is_empty() {
                t.remove(&key);
            } else if t.len() < MAX_TCP_CONNS || t.contains_key(&key) {
                t.insert(key, (cp.received_bytes, cp.sent_bytes));
            }
            d
        };
        if !opened && !closed && received == 0 && sent == 0 {
            return;
        }
        let (src, dst, svc, policy) = self.sides(res, r, me, c, "");
        let flags = response_flags(c.response_flags.as_ref());
        let labels = label_set(r, &src, &dst, &svc, "tcp", "", "", &flags, policy);
        self.store.lock().unwrap().record_tcp(
            &labels.as_array(),
            &TcpObservation {
                sent,
                received,
                opened,
                closed,
            },
        );
        if let Some(l) = self.file_log.lock().unwrap().as_mut() {
            l.write(&serde_json::json!({
                "start_time": c.start_time.as_ref().map(|t| t.seconds as f64 + t.nanos as f64 / 1e9),
                "reporter": labels.v[0],
                "event": format!("{kind:?}"),
                "source_workload": src.name, "source_namespace": src.namespace, "source_principal": src.principal,
                "destination_service": svc.0, "destination_workload": dst.name, "destination_namespace": dst.namespace,
                "destination_principal": dst.principal,
                "protocol": "tcp",
                "received_bytes": received, "sent_bytes": sent,
                "response_flags": flags,
                "connection_security_policy": policy,
                "upstream_cluster": c.upstream_cluster,
            }));
        }
        self.edge(
            r,
            &src,
            &dst,
            &svc,
            &graph::Observation {
                requests: opened as u64,
                error: false,
                mtls: policy == "mutual_tls",
                sent: received,
                received: sent,
                latency_ms: None,
                protocol: "tcp",
            },
        );
    }

    /// The pipeline's own figures, for `/debug/telemetryz`.
    pub fn status(&self) -> serde_json::Value {
        let (h, t, overflow) = {
            let s = self.store.lock().unwrap();
            let (h, t) = s.len();
            (h, t, s.overflow_entries)
        };
        let queued = self.counts.queued.load(Ordering::Relaxed);
        let g = self.graph.lock().unwrap();
        serde_json::json!({
            "entries": self.counts.entries.load(Ordering::Relaxed),
            "dropped_entries": self.counts.dropped.load(Ordering::Relaxed),
            "overflow_entries": overflow,
            "refused_streams": self.counts.refused_streams.load(Ordering::Relaxed),
            "series": {"http": h, "tcp": t, "max": self.store.lock().unwrap().max_series},
            "graph_edges": g.len(),
            "graph_dropped": g.dropped,
            "queued_entries": queued,
            "queue_capacity_entries": QUEUED_ENTRIES,
        })
    }

    /// The Istio series and the pipeline's own counters as OpenMetrics text (no `# EOF`),
    /// in chunks of about `chunk` bytes, from a snapshot (ingest goes on meanwhile).
    pub fn render(&self, chunk: usize, emit: &mut dyn FnMut(String)) {
        let (snap, overflow, (h, t)) = {
            let s = self.store.lock().unwrap();
            (s.snapshot(), s.overflow_entries, s.len())
        };
        snap.render(chunk, emit);
        let c = &self.counts;
        emit(format!(
            "# HELP pilotfish_telemetry_entries Access-log entries received from sidecars.\n# TYPE pilotfish_telemetry_entries counter\npilotfish_telemetry_entries_total {}\n\
             # HELP pilotfish_telemetry_dropped_entries Access-log entries dropped because the ingest queue was full.\n# TYPE pilotfish_telemetry_dropped_entries counter\npilotfish_telemetry_dropped_entries_total {}\n\
             # HELP pilotfish_telemetry_overflow_entries Entries counted in an overflow series (the series cap was reached).\n# TYPE pilotfish_telemetry_overflow_entries counter\npilotfish_telemetry_overflow_entries_total {overflow}\n\
             # HELP pilotfish_telemetry_refused_streams Access-log streams refused (identity not proven).\n# TYPE pilotfish_telemetry_refused_streams counter\npilotfish_telemetry_refused_streams_total {}\n\
             # HELP pilotfish_telemetry_series Istio metric series held.\n# TYPE pilotfish_telemetry_series gauge\npilotfish_telemetry_series{{kind=\"http\"}} {h}\npilotfish_telemetry_series{{kind=\"tcp\"}} {t}\n\
             # HELP pilotfish_graph_edges Service-graph edges held.\n# TYPE pilotfish_graph_edges gauge\npilotfish_graph_edges {}\n",
            c.entries.load(Ordering::Relaxed),
            c.dropped.load(Ordering::Relaxed),
            c.refused_streams.load(Ordering::Relaxed),
            self.graph.lock().unwrap().len(),
        ));
    }
}

fn unknown_service() -> (String, String, String) {
    ("unknown".into(), "unknown".into(), "unknown".into())
}

/// A request that never reached the router (a fault abort): its service from the authority,
/// as the client named it from its namespace.
fn outbound_by_authority(
    res: &Resolver,
    ns: &str,
    authority: &str,
) -> Option<(String, String, String)> {
    let host = authority
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(authority);
    if host.is_empty() {
        return None;
    }
    let domain = &res.world.mesh.domain;
    [
        host.to_string(),
        format!("{host}.{ns}.svc.{domain}"),
        format!("{host}.svc.{domain}"),
        format!("{host}.{domain}"),
    ]
    .iter()
    .find_map(|h| res.world.services.get(h))
    .map(|s| (s.hostname.clone(), s.name.clone(), s.namespace.clone()))
}

fn ip_of(a: Option<&envoy_types::pb::envoy::config::core::v3::Address>) -> String {
    use envoy_types::pb::envoy::config::core::v3::address::Address as A;
    match a.and_then(|a| a.address.as_ref()) {
        Some(A::SocketAddress(s)) => s.address.clone(),
        _ => String::new(),
    }
}

fn port_of(a: Option<&envoy_types::pb::envoy::config::core::v3::Address>) -> u32 {
    use envoy_types::pb::envoy::config::core::v3::address::Address as A;
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    match a.and_then(|a| a.address.as_ref()) {
        Some(A::SocketAddress(s)) => match s.port_specifier {
            Some(PortSpecifier::PortValue(p)) => p,
            _ => 0,
        },
        _ => 0,
    }
}

/// Envoy's short response flags (`%RESPONSE_FLAGS%`), comma separated; `-` for none.
pub fn response_flags(f: Option<&data::ResponseFlags>) -> String {
    let Some(f) = f else {
        return "-".into();
    };
    let all = [
        (f.failed_local_healthcheck, "LH"),
        (f.no_healthy_upstream, "UH"),
        (f.upstream_request_timeout, "UT"),
        (f.local_reset, "LR"),
        (f.upstream_remote_reset, "UR"),
        (f.upstream_connection_failure, "UF"),
        (f.upstream_connection_termination, "UC"),
        (f.upstream_overflow, "UO"),
        (f.no_route_found, "NR"),
        (f.delay_injected, "DI"),
        (f.fault_injected, "FI"),
        (f.rate_limited, "RL"),
        (f.unauthorized_details.is_some(), "UAEX"),
        (f.rate_limit_service_error, "RLSE"),
        (f.downstream_connection_termination, "DC"),
        (f.upstream_retry_limit_exceeded, "URX"),
        (f.stream_idle_timeout, "SI"),
        (f.invalid_envoy_request_headers, "IH"),
        (f.downstream_protocol_error, "DPE"),
        (f.upstream_max_stream_duration_reached, "UMSDR"),
        (f.response_from_cache_filter, "RFCF"),
        (f.no_filter_config_found, "NFCF"),
        (f.duration_timeout, "DT"),
        (f.upstream_protocol_error, "UPE"),
        (f.no_cluster_found, "NC"),
        (f.overload_manager, "OM"),
        (f.dns_resolution_failure, "DF"),
        (f.downstream_remote_reset, "DR"),
    ];
    let set: Vec<&str> = all.iter().filter(|(b, _)| *b).map(|(_, n)| *n).collect();
    if set.is_empty() {
        "-".into()
    } else {
        set.join(",")
    }
}

/// The 25 label values of one entry, owned where they are computed.
struct LabelSet<'a> {
    v: [&'a str; 25],
}

impl<'a> LabelSet<'a> {
    fn as_array(&self) -> [&'a str; 25] {
        self.v
    }
}

#[allow(clippy::too_many_arguments)]
fn label_set<'a>(
    r: &Reporter,
    src: &'a Workload,
    dst: &'a Workload,
    svc: &'a (String, String, String),
    protocol: &'a str,
    code: &'a str,
    grpc_status: &'a str,
    flags: &'a str,
    policy: &'a str,
) -> LabelSet<'a> {
    LabelSet {
        v: [
            if r.inbound { "destination" } else { "source" },
            &src.name,
            &src.canonical_service,
            &src.canonical_revision,
            &src.namespace,
            &src.principal,
            &src.app,
            &src.version,
            &src.cluster,
            &dst.name,
            &dst.namespace,
            &dst.principal,
            &dst.app,
            &dst.version,
            &svc.0,
            &dst.canonical_service,
            &dst.canonical_revision,
            &svc.1,
            &svc.2,
            &dst.cluster,
            protocol,
            code,
            grpc_status,
            flags,
            policy,
        ],
    }
}

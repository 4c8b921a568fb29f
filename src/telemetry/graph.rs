//! The service graph (`/debug/graphz`): workloads and services as nodes, traffic as edges,
//! over a sliding window of 1 minute, 5 minutes or 1 hour, in memory with a bounded size.
//!
//! Edges come from the entries the metrics come from: a client's sidecar reports
//! workload → service (reporter=source), a server's sidecar service → workload
//! (reporter=destination), so a request through two sidecars counts once on each edge, and
//! traffic from outside the mesh still shows on the service → workload edge. Each edge keeps
//! 10-second slots for the last 5 minutes and 1-minute slots for the last hour: requests,
//! errors (5xx, gRPC status other than 0, no response), bytes each way, mutual-TLS requests
//! and a log-scale latency histogram from which p50/p90/p99 are estimated.

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Latency histogram bounds in ms (log scale); the last slot is everything above.
const LAT_BOUNDS: [f64; 19] = [
    0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
    16384.0, 32768.0, 65536.0, 131072.0,
];

#[derive(Clone, Default)]
struct Slot {
    /// Which period (seconds since the epoch / slot length) this slot holds.
    epoch: u64,
    requests: u64,
    errors: u64,
    mtls: u64,
    sent: u64,
    received: u64,
    lat: [u32; 20],
}

impl Slot {
    fn add(&mut self, o: &Observation) {
        self.requests += o.requests;
        self.errors += o.error as u64;
        self.mtls += if o.mtls { o.requests } else { 0 };
        self.sent += o.sent;
        self.received += o.received;
        if let Some(ms) = o.latency_ms {
            let i = LAT_BOUNDS.iter().position(|b| ms <= *b).unwrap_or(19);
            self.lat[i] += 1;
        }
    }
}

/// A ring of slots of `len` seconds.
#[derive(Clone)]
struct Ring {
    len: u64,
    slots: Vec<Slot>,
}

impl Ring {
    fn new(len: u64, n: usize) -> Ring {
        Ring {
            len,
            slots: vec![Slot::default(); n],
        }
    }

    fn slot(&mut self, now: u64) -> &mut Slot {
        let epoch = now / self.len;
        let n = self.slots.len();
        let s = &mut self.slots[(epoch as usize) % n];
        if s.epoch != epoch {
            *s = Slot {
                epoch,
                ..Default::default()
            };
        }
        s
    }

    /// The sum of the slots within the last `secs` seconds.
    fn sum(&self, now: u64, secs: u64) -> Slot {
        let newest = now / self.len;
        let count = secs.div_ceil(self.len);
        let mut out = Slot::default();
        for s in &self.slots {
            if s.epoch + count > newest && s.epoch <= newest {
                out.requests += s.requests;
                out.errors += s.errors;
                out.mtls += s.mtls;
                out.sent += s.sent;
                out.received += s.received;
                for (a, b) in out.lat.iter_mut().zip(s.lat.iter()) {
                    *a += b;
                }
            }
        }
        out
    }
}

#[derive(Clone)]
struct Edge {
    protocols: BTreeSet<&'static str>,
    fine: Ring,
    coarse: Ring,
    last_seen: u64,
}

/// One request (or TCP event) on an edge.
pub struct Observation {
    pub requests: u64,
    pub error: bool,
    pub mtls: bool,
    pub sent: u64,
    pub received: u64,
    pub latency_ms: Option<f64>,
    pub protocol: &'static str,
}

/// A node: a workload (`namespace/name`) or a service (its host name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Node {
    pub id: String,
    pub kind: &'static str,
    pub name: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
}

pub struct Graph {
    edges: HashMap<(String, String), Edge>,
    nodes: BTreeMap<String, Node>,
    pub max_edges: usize,
    /// Observations of edges not kept because the graph was full.
    pub dropped: u64,
}

#[derive(Debug, Serialize)]
pub struct EdgeView {
    pub source: String,
    pub target: String,
    pub protocols: Vec<&'static str>,
    pub requests: u64,
    pub requests_per_second: f64,
    pub error_rate: f64,
    pub mtls_rate: f64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

#[derive(Debug, Serialize)]
pub struct View {
    pub window_seconds: u64,
    pub nodes: Vec<Node>,
    pub edges: Vec<EdgeView>,
}

impl Graph {
    pub fn new(max_edges: usize) -> Graph {
        Graph {
            edges: HashMap::new(),
            nodes: BTreeMap::new(),
            max_edges,
            dropped: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.edges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    /// Records `o` on the edge `from` → `to` at `now` (Unix seconds).
    pub fn record(&mut self, from: &Node, to: &Node, o: &Observation, now: u64) {
        let key = (from.id.clone(), to.id.clone());
        if !self.edges.contains_key(&key) {
            if self.edges.len() >= self.max_edges {
                self.evict(now);
            }
            if self.edges.len() >= self.max_edges {
                self.dropped += 1;
                return;
            }
            self.edges.insert(
                key.clone(),
                Edge {
                    protocols: BTreeSet::new(),
                    fine: Ring::new(10, 31),
                    coarse: Ring::new(60, 61),
                    last_seen: now,
                },
            );
        }
        for n in [from, to] {
            if !self.nodes.contains_key(&n.id) {
                self.nodes.insert(n.id.clone(), n.clone());
            }
        }
        let e = self.edges.get_mut(&key).unwrap();
        e.protocols.insert(o.protocol);
        e.last_seen = now;
        e.fine.slot(now).add(o);
        e.coarse.slot(now).add(o);
    }

    /// Drops edges quiet for over an hour (and nodes no edge names).
    fn evict(&mut self, now: u64) {
        self.edges.retain(|_, e| e.last_seen + 3600 > now);
        let used: BTreeSet<&String> = self.edges.keys().flat_map(|(a, b)| [a, b]).collect();
        self.nodes.retain(|id, _| used.contains(id));
    }

    /// The graph over the last `window` seconds (60, 300 or 3600).
    pub fn view(&self, window: u64, now: u64) -> View {
        let mut edges = Vec::new();
        let mut used = BTreeSet::new();
        for ((a, b), e) in &self.edges {
            let s = if window <= 300 {
                e.fine.sum(now, window)
            } else {
                e.coarse.sum(now, window)
            };
            if s.requests == 0 && s.sent == 0 && s.received == 0 {
                continue;
            }
            used.insert(a.clone());
            used.insert(b.clone());
            let ratio = |x: u64| {
                if s.requests == 0 {
                    0.0
                } else {
                    x as f64 / s.requests as f64
                }
            };
            edges.push(EdgeView {
                source: a.clone(),
                target: b.clone(),
                protocols: e.protocols.iter().copied().collect(),
                requests: s.requests,
                requests_per_second: s.requests as f64 / window as f64,
                error_rate: ratio(s.errors),
                mtls_rate: ratio(s.mtls),
                p50_ms: quantile(&s.lat, 0.5),
                p90_ms: quantile(&s.lat, 0.9),
                p99_ms: quantile(&s.lat, 0.99),
                bytes_sent: s.sent,
                bytes_received: s.received,
            });
        }
        edges.sort_by(|x, y| (&x.source, &x.target).cmp(&(&y.source, &y.target)));
        View {
            window_seconds: window,
            nodes: self
                .nodes
                .values()
                .filter(|n| used.contains(&n.id))
                .cloned()
                .collect(),
            edges,
        }
    }
}

/// The q-quantile of a latency histogram, interpolated within its bucket.
fn quantile(h: &[u32; 20], q: f64) -> Option<f64> {
    let total: u64 = h.iter().map(|x| *x as u64).sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0.0;
    for (i, c) in h.iter().enumerate() {
        let c = *c as f64;
        if c > 0.0 && seen + c >= rank {
            let lo = if i == 0 { 0.0 } else { LAT_BOUNDS[i - 1] };
            let hi = LAT_BOUNDS.get(i).copied().unwrap_or(lo * 2.0);
            return Some(lo + (hi - lo) * ((rank - seen) / c).clamp(0.0, 1.0));
        }
        seen += c;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            kind: "workload",
            name: id.into(),
            namespace: "default".into(),
            app: id.into(),
            version: "v1".into(),
        }
    }

    fn req(ms: f64, error: bool) -> Observation {
        Observation {
            requests: 1,
            error,
            mtls: true,
            sent: 10,
            received: 100,
            latency_ms: Some(ms),
            protocol: "http",
        }
    }

    #[test]
    fn windows_rates_and_percentiles() {
        let mut g = Graph::new(10);
        let (a, b) = (node("a"), node("b"));
        let t = 1_000_000;
        for i in 0..90 {
            g.record(&a, &b, &req(3.0, false), t);
            if i % 10 == 0 {
                g.record(&a, &b, &req(300.0, true), t);
            }
        }
        // Ten minutes earlier: in the hour, not in the last minute or five.
        g.record(&a, &b, &req(3.0, false), t - 600);
        let v = g.view(60, t);
        assert_eq!(v.edges.len(), 1);
        let e = &v.edges[0];
        assert_eq!(e.requests, 99);
        assert!((e.error_rate - 9.0 / 99.0).abs() < 1e-9);
        assert!((e.requests_per_second - 99.0 / 60.0).abs() < 1e-9);
        let p50 = e.p50_ms.unwrap();
        let p99 = e.p99_ms.unwrap();
        assert!((2.0..=4.0).contains(&p50), "{p50}");
        assert!((256.0..=512.0).contains(&p99), "{p99}");
        assert_eq!(e.bytes_received, 9900);
        assert_eq!(g.view(3600, t).edges[0].requests, 100);
        assert_eq!(v.nodes.len(), 2);
        // An hour later nothing is left in any window.
        assert!(g.view(3600, t + 7200).edges.is_empty());
    }

    #[test]
    fn the_graph_is_bounded() {
        let mut g = Graph::new(3);
        let t = 1_000_000;
        for i in 0..10 {
            g.record(&node("a"), &node(&format!("b{i}")), &req(1.0, false), t);
        }
        assert_eq!(g.len(), 3);
        assert_eq!(g.dropped, 7);
        // Quiet edges make room an hour later.
        g.record(&node("a"), &node("c"), &req(1.0, false), t + 3700);
        assert_eq!(g.len(), 1);
    }
}

//! Istio's request and TCP metrics, kept in memory with a cap on the number of series, and
//! rendered in the OpenMetrics text `/metrics` serves.
//!
//! One series is one label set (Istio's 25 labels, in `LABELS` order). An HTTP series holds
//! `istio_requests_total` and the three histograms; a TCP series the four TCP counters.
//! Lookups hash the label strings of an entry as they are (no allocation for a series that
//! exists); a new series interns its strings. Past `max_series` a new label set is counted
//! in its reporter's overflow series (every other label `overflow`) and in
//! `pilotfish_telemetry_overflow_entries_total`, so memory stays bounded whatever the
//! traffic.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

pub type Str = Arc<str>;

/// Istio's label names, in the order series are keyed and printed.
pub const LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];
/// Positions in `LABELS` TCP series do not carry (Istio's TCP metrics have no response code
/// or gRPC status).
const NOT_TCP: [usize; 2] = [21, 22];

/// `istio_request_duration_milliseconds` bucket bounds (Istio's).
pub const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// `istio_request_bytes` / `istio_response_bytes` bucket bounds (Istio's: 1 to 10^9).
pub const BYTES_BUCKETS: [f64; 10] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

#[derive(Clone, Debug, Default)]
pub struct Hist<const N: usize> {
    /// Observations per bucket (not cumulative); the last is +Inf.
    counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl<const N: usize> Hist<N> {
    fn observe(&mut self, bounds: &[f64; N], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; N + 1];
        }
        let i = bounds.iter().position(|b| v <= *b).unwrap_or(N);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Clone, Debug, Default)]
pub struct HttpSeries {
    pub requests: u64,
    pub duration: Hist<19>,
    pub request_bytes: Hist<10>,
    pub response_bytes: Hist<10>,
}

#[derive(Clone, Debug, Default)]
pub struct TcpSeries {
    pub sent: u64,
    pub received: u64,
    pub opened: u64,
    pub closed: u64,
}

/// One HTTP request as the metrics see it.
pub struct HttpObservation {
    pub duration_ms: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

/// A TCP connection event: bytes since the last event of the connection, and whether it
/// opened or closed.
#[derive(Default)]
pub struct TcpObservation {
    pub sent: u64,
    pub received: u64,
    pub opened: bool,
    pub closed: bool,
}

/// Series of one kind, by the hash of their label strings (collisions compared).
struct Series<T> {
    map: HashMap<u64, Vec<(Box<[Str; 25]>, T)>>,
    len: usize,
}

impl<T: Default> Series<T> {
    fn new() -> Self {
        Series {
            map: HashMap::new(),
            len: 0,
        }
    }
}

/// The metrics store (one per pilotfish; behind a lock).
pub struct Store {
    hasher: std::collections::hash_map::RandomState,
    http: Series<HttpSeries>,
    tcp: Series<TcpSeries>,
    interned: HashSet<Str>,
    pub max_series: usize,
    /// Entries counted in an overflow series.
    pub overflow_entries: u64,
}

impl Store {
    pub fn new(max_series: usize) -> Store {
        Store {
            hasher: Default::default(),
            http: Series::new(),
            tcp: Series::new(),
            interned: HashSet::new(),
            max_series,
            overflow_entries: 0,
        }
    }

    /// Series held (HTTP, TCP).
    pub fn len(&self) -> (usize, usize) {
        (self.http.len, self.tcp.len)
    }

    pub fn is_empty(&self) -> bool {
        self.http.len == 0 && self.tcp.len == 0
    }

    fn intern(&mut self, s: &str) -> Str {
        if let Some(x) = self.interned.get(s) {
            return x.clone();
        }
        let x: Str = Arc::from(s);
        self.interned.insert(x.clone());
        x
    }

    fn hash(&self, labels: &[&str; 25]) -> u64 {
        let mut h = self.hasher.build_hasher();
        for l in labels {
            l.hash(&mut h);
        }
        h.finish()
    }

    fn slot<'a, T: Default>(
        hasher: u64,
        series: &'a mut Series<T>,
        labels: &[&str; 25],
    ) -> Option<&'a mut T> {
        series.map.get_mut(&hasher).and_then(|v| {
            v.iter_mut()
                .find(|(k, _)| k.iter().zip(labels).all(|(a, b)| &**a == *b))
                .map(|(_, t)| t)
        })
    }

    /// The series of `labels` in `which`, created (or the overflow series) when new.
    fn entry<T: Default>(
        &mut self,
        labels: &[&str; 25],
        which: fn(&mut Store) -> &mut Series<T>,
    ) -> &mut T {
        let h = self.hash(labels);
        let exists = Self::slot(h, which(self), labels).is_some();
        if exists {
            return Self::slot(h, which(self), labels).unwrap();
        }
        let full = self.http.len + self.tcp.len >= self.max_series;
        let mut owned: [&str; 25] = *labels;
        if full {
            self.overflow_entries += 1;
            for l in owned.iter_mut().skip(1) {
                *l = "overflow";
            }
            let h = self.hash(&owned);
            if Self::slot(h, which(self), &owned).is_some() {
                return Self::slot(h, which(self), &owned).unwrap();
            }
        }
        let key: Box<[Str; 25]> = Box::new(std::array::from_fn(|i| self.intern(owned[i])));
        let h = self.hash(&owned);
        let s = which(self);
        s.len += 1;
        let v = s.map.entry(h).or_default();
        v.push((key, T::default()));
        &mut v.last_mut().unwrap().1
    }

    pub fn record_http(&mut self, labels: &[&str; 25], o: &HttpObservation) {
        let s = self.entry(labels, |s| &mut s.http);
        s.requests += 1;
        s.duration.observe(&DURATION_BUCKETS, o.duration_ms);
        s.request_bytes
            .observe(&BYTES_BUCKETS, o.request_bytes as f64);
        s.response_bytes
            .observe(&BYTES_BUCKETS, o.response_bytes as f64);
    }

    pub fn record_tcp(&mut self, labels: &[&str; 25], o: &TcpObservation) {
        let s = self.entry(labels, |s| &mut s.tcp);
        s.sent += o.sent;
        s.received += o.received;
        s.opened += o.opened as u64;
        s.closed += o.closed as u64;
    }

    /// A copy of every series, sorted, to render without holding the store.
    pub fn snapshot(&self) -> Snapshot {
        let mut http: Vec<(Box<[Str; 25]>, HttpSeries)> = self
            .http
            .map
            .values()
            .flatten()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        http.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tcp: Vec<(Box<[Str; 25]>, TcpSeries)> = self
            .tcp
            .map
            .values()
            .flatten()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        tcp.sort_by(|a, b| a.0.cmp(&b.0));
        Snapshot { http, tcp }
    }

    /// The OpenMetrics text of every series (no `# EOF`), in one string (tests).
    pub fn render(&self, out: &mut String) {
        self.snapshot()
            .render(usize::MAX, &mut |chunk| out.push_str(&chunk));
    }
}

/// Every series at one moment.
pub struct Snapshot {
    pub http: Vec<(Box<[Str; 25]>, HttpSeries)>,
    pub tcp: Vec<(Box<[Str; 25]>, TcpSeries)>,
}

fn label_text(k: &[Str; 25], tcp: bool) -> String {
    let mut s = String::with_capacity(600);
    for (i, (name, v)) in LABELS.iter().zip(k.iter()).enumerate() {
        if tcp && NOT_TCP.contains(&i) {
            continue;
        }
        if !s.is_empty() {
            s.push(',');
        }
        s.push_str(name);
        s.push_str("=\"");
        escape(&mut s, v);
        s.push('"');
    }
    s
}

impl Snapshot {
    /// The OpenMetrics text of every series (no `# EOF`), handed to `emit` in chunks of
    /// about `chunk` bytes: a scrape of 10,000 series with their histograms is hundreds of
    /// megabytes of text, which is streamed, never held whole.
    pub fn render(&self, chunk: usize, emit: &mut dyn FnMut(String)) {
        let mut out = String::new();
        let mut flush = |out: &mut String, force: bool| {
            if force || out.len() >= chunk {
                emit(std::mem::take(out));
            }
        };
        let http_labels: Vec<String> = self
            .http
            .iter()
            .map(|(k, _)| label_text(k, false))
            .collect();
        let tcp_labels: Vec<String> = self.tcp.iter().map(|(k, _)| label_text(k, true)).collect();
        if !self.http.is_empty() {
            out.push_str("# HELP istio_requests Requests, as Istio counts them (from the sidecars' access logs).\n# TYPE istio_requests counter\n");
            for (l, (_, s)) in http_labels.iter().zip(&self.http) {
                let _ = writeln!(out, "istio_requests_total{{{l}}} {}", s.requests);
                flush(&mut out, false);
            }
            let hists: [(&str, &str, fn(&HttpSeries) -> (&[u64], f64, u64), &[f64]); 3] = [
                (
                    "istio_request_duration_milliseconds",
                    "Request duration in milliseconds.",
                    |s| (&s.duration.counts, s.duration.sum, s.duration.count),
                    &DURATION_BUCKETS,
                ),
                (
                    "istio_request_bytes",
                    "HTTP request body sizes in bytes.",
                    |s| {
                        (
                            &s.request_bytes.counts,
                            s.request_bytes.sum,
                            s.request_bytes.count,
                        )
                    },
                    &BYTES_BUCKETS,
                ),
                (
                    "istio_response_bytes",
                    "HTTP response body sizes in bytes.",
                    |s| {
                        (
                            &s.response_bytes.counts,
                            s.response_bytes.sum,
                            s.response_bytes.count,
                        )
                    },
                    &BYTES_BUCKETS,
                ),
            ];
            for (name, help, get, bounds) in hists {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
                for (l, (_, s)) in http_labels.iter().zip(&self.http) {
                    let (counts, sum, count) = get(s);
                    let mut cum = 0;
                    for (i, b) in bounds.iter().enumerate() {
                        cum += counts.get(i).copied().unwrap_or(0);
                        let _ = writeln!(out, "{name}_bucket{{{l},le=\"{b}\"}} {cum}");
                    }
                    let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {count}");
                    let _ = writeln!(out, "{name}_sum{{{l}}} {sum}");
                    let _ = writeln!(out, "{name}_count{{{l}}} {count}");
                    flush(&mut out, false);
                }
            }
        }
        if !self.tcp.is_empty() {
            let counters: [(&str, &str, fn(&TcpSeries) -> u64); 4] = [
                (
                    "istio_tcp_sent_bytes",
                    "Bytes sent back on TCP connections (responses).",
                    |s| s.sent,
                ),
                (
                    "istio_tcp_received_bytes",
                    "Bytes received on TCP connections (requests).",
                    |s| s.received,
                ),
                (
                    "istio_tcp_connections_opened",
                    "TCP connections opened.",
                    |s| s.opened,
                ),
                (
                    "istio_tcp_connections_closed",
                    "TCP connections closed.",
                    |s| s.closed,
                ),
            ];
            for (name, help, f) in counters {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for (l, (_, s)) in tcp_labels.iter().zip(&self.tcp) {
                    let _ = writeln!(out, "{name}_total{{{l}}} {}", f(s));
                    flush(&mut out, false);
                }
            }
        }
        flush(&mut out, true);
    }
}

fn escape(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(code: &'static str, dst: &'static str) -> [&'static str; 25] {
        let mut l = ["x"; 25];
        l[0] = "source";
        l[9] = dst;
        l[21] = code;
        l
    }

    #[test]
    fn counts_buckets_and_renders() {
        let mut s = Store::new(100);
        let o = |ms| HttpObservation {
            duration_ms: ms,
            request_bytes: 0,
            response_bytes: 150,
        };
        s.record_http(&labels("200", "b"), &o(3.0));
        s.record_http(&labels("200", "b"), &o(700.0));
        s.record_http(&labels("503", "b"), &o(1.0));
        assert_eq!(s.len(), (2, 0));
        let mut out = String::new();
        s.render(&mut out);
        assert!(out.contains("response_code=\"200\""));
        let line = out
            .lines()
            .find(|l| l.starts_with("istio_requests_total") && l.contains("\"200\""))
            .unwrap();
        assert!(line.ends_with(" 2"), "{line}");
        // 3 ms in le=5, 700 ms in le=1000: cumulative.
        let b = |le: &str| {
            out.lines()
                .find(|l| {
                    l.starts_with("istio_request_duration_milliseconds_bucket")
                        && l.contains("\"200\"")
                        && l.contains(&format!("le=\"{le}\""))
                })
                .unwrap()
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(b("1"), "0");
        assert_eq!(b("5"), "1");
        assert_eq!(b("500"), "1");
        assert_eq!(b("1000"), "2");
        assert_eq!(b("+Inf"), "2");
        assert!(
            out.contains("istio_request_duration_milliseconds_sum{") && out.contains("} 703\n")
        );
    }

    #[test]
    fn past_the_cap_new_label_sets_overflow() {
        let mut s = Store::new(2);
        let o = TcpObservation {
            sent: 5,
            ..Default::default()
        };
        s.record_tcp(&labels("", "a"), &o);
        s.record_tcp(&labels("", "b"), &o);
        s.record_tcp(&labels("", "c"), &o);
        s.record_tcp(&labels("", "d"), &o);
        s.record_tcp(&labels("", "a"), &o);
        // a, b, and one overflow series (c and d).
        assert_eq!(s.len(), (0, 3));
        assert_eq!(s.overflow_entries, 2);
        let mut out = String::new();
        s.render(&mut out);
        assert!(out.contains("destination_workload=\"overflow\""), "{out}");
        assert!(
            !out.contains("response_code"),
            "TCP series have no response code"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = Store::new(10);
        let mut l = labels("200", "b");
        l[1] = "a\"b\\c\nd";
        s.record_tcp(&l, &TcpObservation::default());
        let mut out = String::new();
        s.render(&mut out);
        assert!(out.contains("source_workload=\"a\\\"b\\\\c\\nd\""), "{out}");
    }
}

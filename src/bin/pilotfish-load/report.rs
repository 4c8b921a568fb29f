//! Figures: per scenario, printed as a table or as JSON.

use crate::proxy::{Handle, StatsSnap};
use crate::track::quantile;
use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub n: usize,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Percentiles {
    pub fn of(sorted: &[f32]) -> Percentiles {
        let q = |p| quantile(sorted, p).map(|v| v as f64);
        Percentiles {
            n: sorted.len(),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: sorted.last().map(|v| *v as f64),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub target: String,
    pub value: Option<String>,
    /// None: reported, no pass/fail.
    pub met: Option<bool>,
}

impl Target {
    pub fn new(target: String, value: Option<String>, met: Option<bool>) -> Target {
        Target { target, value, met }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub streams_checked: usize,
    /// (stream, type) pairs for which the control plane recorded no version because it sent
    /// nothing on the current connection (delta reconnect with current versions).
    pub not_recorded: usize,
    pub ok: bool,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub name: String,
    /// Streams connected at the end of the scenario.
    pub streams: usize,
    /// Config changes written.
    pub events: usize,
    pub unconverged_events: usize,
    pub laggards: Vec<String>,
    /// Per (change, stream): ms from the file write to the stream's ACK of the new content.
    pub ack_ms: Percentiles,
    /// Per change: ms from the file write to the last stream's ACK.
    pub last_ack_ms: Percentiles,
    pub wall_s: f64,
    /// Encoded size of every response the streams received.
    pub bytes_received: u64,
    pub responses: u64,
    /// `pilotfish_xds_sent_bytes_total` (resource bytes) over the scenario.
    pub server_bytes_sent: Option<u64>,
    /// `pilot_total_xds_rejects_total` over the scenario.
    pub server_rejects: Option<u64>,
    /// `pilotfish_xds_admission_rejected_total` over the scenario (streams refused with
    /// ResourceExhausted by the admission rate limit).
    pub server_admission_rejected: Option<u64>,
    /// Control plane utime + stime over the scenario.
    pub cp_cpu_s: Option<f64>,
    /// The load tool's own CPU over the scenario (it shares the machine).
    pub tool_cpu_s: f64,
    /// The load tool's own RSS at the end of the scenario (~0.15–0.25 MB per proxy at
    /// 1,000 services in either mode, plus what the allocator kept of the messages in
    /// flight during the scenario).
    pub tool_rss_mb: Option<f64>,
    pub cp_rss_mb: Option<f64>,
    /// Highest RSS sampled every 100 ms during the scenario.
    pub cp_peak_rss_mb: Option<f64>,
    /// VmHWM (reset at the scenario start when permitted).
    pub cp_hwm_mb: Option<f64>,
    /// (RSS − RSS before any proxy connected) / connected proxies.
    pub rss_per_proxy_kb: Option<f64>,
    pub stats: StatsSnap,
    pub extra: serde_json::Map<String, serde_json::Value>,
    pub targets: Vec<Target>,
    pub verified: Option<Verified>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamDump {
    pub idx: usize,
    pub node_id: String,
    pub namespace: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub ip: String,
    pub connected: bool,
    pub versions: serde_json::Value,
    pub nacks: u64,
    pub errors: u64,
    pub last_error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Every stream converged, no unexpected NACK, no stream error, syncz agrees.
    pub ok: bool,
    pub problems: Vec<String>,
    pub machine: serde_json::Value,
    pub params: serde_json::Value,
    pub scenarios: Vec<ScenarioReport>,
    pub totals: StatsSnap,
    /// Stream errors by message.
    pub error_messages: std::collections::BTreeMap<String, u64>,
    pub streams: Option<Vec<StreamDump>>,
}

pub fn dump_streams<'a>(hs: impl Iterator<Item = &'a Handle>) -> Vec<StreamDump> {
    hs.map(|h| {
        let v = h.view();
        StreamDump {
            idx: h.spec.idx,
            node_id: h.spec.node_id.clone(),
            namespace: h.spec.namespace.clone(),
            labels: h.spec.labels.clone(),
            ip: h.spec.ip.clone(),
            connected: v.connected,
            versions: serde_json::json!({
                "cds": v.acked[0], "eds": v.acked[1], "lds": v.acked[2], "rds": v.acked[3],
                "vhds": v.acked[4],
            }),
            nacks: v.nacks,
            errors: v.errors,
            last_error: v.last_error,
        }
    })
    .collect()
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 10_000.0 => format!("{:.1}s", v / 1e3),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
        None => "-".into(),
    }
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map(|v| format!("{v:.prec$}"))
        .unwrap_or_else(|| "-".into())
}

fn bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GB", b as f64 / 1e9)
    } else if b >= 1 << 20 {
        format!("{:.1} MB", b as f64 / 1e6)
    } else {
        format!("{:.0} kB", b as f64 / 1e3)
    }
}

pub fn print_table(r: &Run) {
    println!(
        "machine: {} cores, {} GiB, {}",
        r.machine["nproc"],
        r.machine["memory_gib"],
        r.machine["cpu"].as_str().unwrap_or("")
    );
    println!("params:  {}", r.params);
    println!();
    println!(
        "{:<8} {:>6} {:>6} | {:>8} {:>8} {:>8} {:>8} | {:>8} | {:>10} {:>7} {:>7} | {:>7} {:>7} {:>9} {:>8} | {:>5} {:>6}",
        "scenario", "prox", "chg", "ack p50", "p90", "p99", "max", "last max", "bytes rx", "cp cpu", "tool", "cp rss", "peak", "rss/prox", "tool rss", "nack", "errs"
    );
    println!("{:<8} {:>6} {:>6} | {:>8} {:>8} {:>8} {:>8} | {:>8} | {:>10} {:>7} {:>7} | {:>7} {:>7} {:>9} {:>8} | {:>5} {:>6}",
        "", "", "", "ms", "ms", "ms", "ms", "ms", "", "s", "s", "MB", "MB", "kB", "MB", "", "");
    for s in &r.scenarios {
        println!(
            "{:<8} {:>6} {:>6} | {:>8} {:>8} {:>8} {:>8} | {:>8} | {:>10} {:>7} {:>7.1} | {:>7} {:>7} {:>9} {:>8} | {:>5} {:>6}",
            s.name,
            s.streams,
            s.events,
            ms(s.ack_ms.p50),
            ms(s.ack_ms.p90),
            ms(s.ack_ms.p99),
            ms(s.ack_ms.max),
            ms(s.last_ack_ms.max),
            bytes(s.bytes_received),
            opt(s.cp_cpu_s, 1),
            s.tool_cpu_s,
            opt(s.cp_rss_mb, 0),
            opt(s.cp_peak_rss_mb, 0),
            opt(s.rss_per_proxy_kb, 0),
            opt(s.tool_rss_mb, 0),
            s.stats.nacks,
            s.stats.errors(),
        );
    }
    println!();
    for s in &r.scenarios {
        if !s.extra.is_empty() {
            let kv: Vec<String> = s
                .extra
                .iter()
                .map(|(k, v)| match v.as_f64() {
                    Some(f) if f.fract() != 0.0 => format!("{k}={f:.2}"),
                    _ => format!("{k}={v}"),
                })
                .collect();
            println!("{:<8} {}", s.name, kv.join(" "));
        }
    }
    println!();
    println!("targets:");
    for s in &r.scenarios {
        for t in &s.targets {
            let verdict = match t.met {
                Some(true) => "MET    ",
                Some(false) => "NOT MET",
                None => "report ",
            };
            println!(
                "  [{verdict}] {:<7} {} — {}",
                s.name,
                t.target,
                t.value.as_deref().unwrap_or("-")
            );
        }
    }
    println!();
    if !r.error_messages.is_empty() {
        println!("stream errors:");
        for (m, n) in &r.error_messages {
            println!("  {n:>6} × {m}");
        }
        println!();
    }
    if r.ok {
        println!("correctness: OK (every stream ACKed the latest content; /debug/syncz agrees; no unexpected NACK or stream error)");
    } else {
        println!("correctness: PROBLEMS");
        for p in &r.problems {
            println!("  - {p}");
        }
    }
}

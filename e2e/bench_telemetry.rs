//! `cargo bench --bench telemetry`: pilotfish's access-log sink under load.
//!
//! 1. Memory of 10,000 active Istio series: RSS before and after entries that make 10,000
//!    distinct label sets (1,000 source workloads × 10 destinations).
//! 2. Ingest capacity: a paced, open-loop ramp of entries/s (batches of 100 entries, as
//!    Envoy's logger sends them) from 10 synthetic sidecars; per step, entries processed,
//!    dropped, and pilotfish's CPU; entries per CPU-second. The capacity is the highest step
//!    processed in full with nothing dropped.
//! 3. Overload: 10× that capacity for 10 s: drops counted, memory bounded.
//! 4. The service graph's JSON with 1,000 nodes: time to build and serialize `/debug/graphz`
//!    (in process).
//!
//! Prints figures; asserts only that the pipeline counts right (no timing asserts). Knobs:
//! `BENCH_TELEMETRY_STEP_SECONDS` (5), `BENCH_TELEMETRY_RATES` (comma separated entries/s).

#[path = "support/als.rs"]
mod als;
#[path = "support/bench.rs"]
mod bench;

use bench::{cpu_seconds, free_port, http_get, rss_mb, Proc};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SERVICES: usize = 10;
const CLIENTS: usize = 1000;

fn ip(i: usize) -> String {
    format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256)
}

/// 10 services of one workload each (the reporters) and 1,000 client workloads in a
/// `clients` service (so the registry knows them by address).
fn registry() -> String {
    let mut y = String::new();
    for s in 0..SERVICES {
        y.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}}}\nspec:\n  selector: {{app: svc-{s}}}\n  ports: [{{name: http, port: 9080}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: svc-{s}-v1}}\nspec:\n  address: {}\n  serviceAccount: svc-{s}\n  labels: {{app: svc-{s}, version: v1}}\n---\n",
            ip(100_000 + s)
        ));
    }
    y.push_str("apiVersion: v1\nkind: Service\nmetadata: {name: clients}\nspec:\n  selector: {role: client}\n  ports: [{name: http, port: 8080}]\n---\n");
    for c in 0..CLIENTS {
        y.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: client-{c}}}\nspec:\n  address: {}\n  serviceAccount: client-{c}\n  labels: {{role: client, app: client-{c}}}\n---\n",
            ip(c)
        ));
    }
    y
}

struct Pilotfish {
    proc: Proc,
    xds: String,
    http: String,
}

fn start(dir: &Path) -> Pilotfish {
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("registry.yaml"), registry()).unwrap();
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let (xds, http, secure, authz) = (
        addr(free_port()),
        addr(free_port()),
        addr(free_port()),
        addr(free_port()),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pilotfish"));
    cmd.arg("serve")
        .arg("--config-dir")
        .arg(&config)
        .args(["--xds-address", &xds, "--http-address", &http])
        .args(["--secure-xds-address", &secure, "--authz-address", &authz])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("RUST_LOG", "warn");
    let mut proc = Proc::spawn("pilotfish", &mut cmd, dir.join("pilotfish.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(http_get(&http, "/ready"), Some((200, _))) {
        assert!(
            proc.exited().is_none(),
            "pilotfish exited:\n{}",
            proc.log_tail()
        );
        assert!(
            Instant::now() < deadline,
            "pilotfish not ready:\n{}",
            proc.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Pilotfish { proc, xds, http }
}

/// A figure of `/debug/telemetryz` (a JSON pointer, e.g. `/entries`).
fn metric(p: &Pilotfish, pointer: &str) -> f64 {
    let (_, text) = http_get(&p.http, "/debug/telemetryz").unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v.pointer(pointer)
        .and_then(|x| x.as_f64())
        .unwrap_or(f64::NAN)
}

/// The 10 reporters (inbound sides of svc-0..9) and, per reporter, batches of 100 entries
/// cycling through the 1,000 clients with `codes` response codes.
fn fleet(codes: &[u32], per: usize) -> Vec<(als::Sidecar, bytes::Bytes, Arc<Vec<bytes::Bytes>>)> {
    (0..SERVICES)
        .map(|s| {
            let me = als::Sidecar {
                ip: ip(100_000 + s),
                pod: format!("svc-{s}-v1-abc"),
                namespace: "default".into(),
                service_account: format!("svc-{s}"),
                inbound: true,
            };
            let cluster = "inbound|9080||".to_string();
            let mut batches = Vec::new();
            let mut i = 0;
            for _ in 0..(CLIENTS * codes.len() / per).max(1) {
                let entries = (0..per)
                    .map(|_| {
                        let e = als::entry(
                            &ip(i % CLIENTS),
                            &me.ip,
                            &cluster,
                            codes[(i / CLIENTS) % codes.len()],
                            (i % 50) as u32,
                        );
                        i += 1;
                        e
                    })
                    .collect();
                batches.push(als::message(&me, entries, false));
            }
            let first = als::message(&me, vec![], true);
            (me, first, Arc::new(batches))
        })
        .collect()
}

/// Sends `rate` entries/s spread over the fleet for `secs`; returns what the senders did.
fn flood(
    rt: &tokio::runtime::Runtime,
    p: &Pilotfish,
    fleet: &[(als::Sidecar, bytes::Bytes, Arc<Vec<bytes::Bytes>>)],
    rate: f64,
    secs: f64,
    per: u64,
) -> Arc<als::Sent> {
    let sent = Arc::new(als::Sent::default());
    rt.block_on(async {
        let tasks: Vec<_> = fleet
            .iter()
            .map(|(_, first, batches)| {
                tokio::spawn(als::stream(
                    p.xds.clone(),
                    first.clone(),
                    batches.clone(),
                    per,
                    rate / fleet.len() as f64,
                    Duration::from_secs_f64(secs),
                    sent.clone(),
                ))
            })
            .collect();
        for t in tasks {
            if let Ok(Err(e)) = t.await {
                panic!("sender: {e}");
            }
        }
    });
    sent
}

fn main() {
    let step: f64 = std::env::var("BENCH_TELEMETRY_STEP_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5.0);
    let rates: Vec<f64> = std::env::var("BENCH_TELEMETRY_RATES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| {
            vec![
                25_000.0, 50_000.0, 100_000.0, 150_000.0, 200_000.0, 300_000.0,
            ]
        });
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let pid = p.proc.pid();
    println!(
        "pilotfish telemetry benchmark ({} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    // 1. 10,000 series.
    std::thread::sleep(Duration::from_secs(1));
    let (rss0, _) = rss_mb(pid);
    let warm = fleet(&[200], 100);
    let sent = flood(&rt, &p, &warm, 20_000.0, 1.5, 100);
    std::thread::sleep(Duration::from_secs(2));
    let series = metric(&p, "/series/http");
    let (rss1, _) = rss_mb(pid);
    println!(
        "series: {series} after {} entries; RSS {rss0:.1} MB -> {rss1:.1} MB (+{:.1} MB for {series} series, {:.0} bytes each)",
        sent.entries.load(Ordering::Relaxed),
        rss1 - rss0,
        (rss1 - rss0) * 1048576.0 / series.max(1.0)
    );
    assert_eq!(
        series,
        (SERVICES * CLIENTS) as f64,
        "one series per (client, service)"
    );
    let t = Instant::now();
    let mut text = Vec::new();
    let code = match ureq::get(&format!("http://{}/metrics", p.http))
        .timeout(Duration::from_secs(120))
        .call()
    {
        Ok(r) => {
            let c = r.status();
            let _ = std::io::Read::read_to_end(&mut r.into_reader(), &mut text);
            c
        }
        Err(_) => 0,
    };
    let took = t.elapsed();
    let (_, hwm) = rss_mb(pid);
    println!(
        "one /metrics scrape of those series: {code}, {:.1} MB of text in {:.2} s (streamed; pilotfish peak RSS so far {hwm:.1} MB)",
        text.len() as f64 / 1048576.0,
        took.as_secs_f64()
    );
    drop(text);

    // 2. The ramp.
    let big = fleet(&[200, 503], 1000);
    let fleet = fleet(&[200, 503], 100);
    let mut capacity = 0.0;
    println!(
        "{:>10} {:>10} {:>10} {:>10} {:>8} {:>14}",
        "offered/s", "sent/s", "done/s", "dropped", "cpu", "entries/cpu-s"
    );
    for rate in &rates {
        let (e0, d0, c0) = (
            metric(&p, "/entries"),
            metric(&p, "/dropped_entries"),
            cpu_seconds(pid),
        );
        let t = Instant::now();
        let sent = flood(&rt, &p, &fleet, *rate, step, 100);
        std::thread::sleep(Duration::from_millis(500));
        let wall = t.elapsed().as_secs_f64();
        let (e1, d1, c1) = (
            metric(&p, "/entries"),
            metric(&p, "/dropped_entries"),
            cpu_seconds(pid),
        );
        let (done, dropped, cpu) = (e1 - e0, d1 - d0, c1 - c0);
        let offered = sent.entries.load(Ordering::Relaxed) as f64;
        println!(
            "{rate:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>7.2}c {:>14.0}{}",
            offered / step,
            done / step,
            dropped,
            cpu / wall,
            done / cpu.max(1e-9),
            if sent.pushed_back.load(Ordering::Relaxed) > 0 {
                format!(
                    "  (pushed back {})",
                    sent.pushed_back.load(Ordering::Relaxed)
                )
            } else {
                String::new()
            }
        );
        if dropped == 0.0 && sent.pushed_back.load(Ordering::Relaxed) == 0 && done >= offered * 0.99
        {
            capacity = done / step;
        }
    }
    println!("capacity (highest step in full, nothing dropped): {capacity:.0} entries/s");

    // 3. Overload: 10× the capacity for 10 s, in messages of 1,000 entries (the sender
    // could not make 10× in Envoy's ~100-entry messages on the cores it shares).
    let d0 = metric(&p, "/dropped_entries");
    let e0 = metric(&p, "/entries");
    let offered_rate = (capacity * 10.0).max(100_000.0);
    let t = Instant::now();
    let sent = flood(&rt, &p, &big, offered_rate, 10.0, 1000);
    let wall = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let (rss, hwm) = rss_mb(pid);
    let offered = sent.entries.load(Ordering::Relaxed) + sent.pushed_back.load(Ordering::Relaxed);
    println!(
        "overload: {:.0} entries/s offered for 10 s ({:.1}x the capacity): sent {}, held back by flow control {}, taken {}, dropped and counted {}; RSS {rss:.1} MB after (peak {hwm:.1} MB)",
        offered as f64 / wall,
        offered as f64 / wall / capacity.max(1.0),
        sent.entries.load(Ordering::Relaxed),
        sent.pushed_back.load(Ordering::Relaxed),
        metric(&p, "/entries") - e0,
        metric(&p, "/dropped_entries") - d0
    );

    // 4. The graph's JSON with 1,000 nodes.
    let mut g = pilotfish::telemetry::graph::Graph::new(2000);
    let now = 1_000_000;
    let node = |id: String, kind: &'static str| pilotfish::telemetry::graph::Node {
        id: id.clone(),
        kind,
        name: id,
        namespace: "default".into(),
        app: String::new(),
        version: String::new(),
    };
    for w in 0..990 {
        let o = pilotfish::telemetry::graph::Observation {
            requests: 1,
            error: w % 7 == 0,
            mtls: true,
            sent: 100,
            received: 1000,
            latency_ms: Some((w % 100) as f64),
            protocol: "http",
        };
        for k in 0..2 {
            g.record(
                &node(format!("workload:default/w{w}"), "workload"),
                &node(format!("service:s{}", (w + k) % 10), "service"),
                &o,
                now - (k as u64) * 20,
            );
        }
    }
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..50 {
        let t = Instant::now();
        let v = g.view(300, now);
        let json = serde_json::to_vec(&v).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        size = json.len();
        assert_eq!(v.nodes.len(), 1000);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "graph JSON, 1,000 nodes and {} edges ({} KiB): p50 {:.2} ms, p99 {:.2} ms (build + serialize, in process)",
        g.len(),
        size / 1024,
        times[times.len() / 2],
        times[times.len() * 99 / 100]
    );
}

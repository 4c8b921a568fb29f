//! Attacks on the plaintext xDS port (pilotfish's own HTTP/2 server), each from a client in
//! this process, bounded in count and time, while a real Envoy sidecar stays connected to
//! the same control plane. For every attack the test prints a figure and asserts:
//! - the offending connection is closed (GOAWAY, then EOF) or its calls refused;
//! - pilotfish's peak RSS during the attack stays within the bound the attack states;
//! - pilotfish's CPU returns to idle afterwards;
//! - the sidecar keeps its xDS connection and stream and receives the next config change.
#[path = "support/h2.rs"]
mod h2;
#[path = "support/mod.rs"]
mod support;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use h2::{frame, grpc, grpc_headers, literal_block, preface, ADS};
use prost::Message;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{need_root, wait_until, write_file, ControlPlane, Mesh, Pod, PodSpec};

const READY: Duration = Duration::from_secs(40);
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn ads_headers() -> Vec<u8> {
    grpc_headers(ADS)
}

fn cds_request(node: &str) -> Vec<u8> {
    DiscoveryRequest {
        node: Some(envoy_types::pb::envoy::config::core::v3::Node {
            id: node.into(),
            cluster: "attacker".into(),
            ..Default::default()
        }),
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Frames read until EOF or `timeout`: the GOAWAY code if one came, and whether the
/// server closed the connection.
fn drain(s: &mut TcpStream, timeout: Duration) -> (Option<u32>, bool) {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut goaway = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (goaway, false);
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut chunk) {
            Ok(0) => return (goaway, true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return (goaway, false),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return (goaway, false),
            Err(_) => return (goaway, true), // reset: closed
        }
        let mut pos = 0;
        while buf.len() - pos >= 9 {
            let len = u32::from_be_bytes([0, buf[pos], buf[pos + 1], buf[pos + 2]]) as usize;
            if buf.len() - pos < 9 + len {
                break;
            }
            if buf[pos + 3] == 7 && len >= 8 {
                let p = &buf[pos + 9..];
                goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
            }
            pos += 9 + len;
        }
        buf.drain(..pos);
    }
}

fn connect(cp: &ControlPlane) -> TcpStream {
    let s = TcpStream::connect(&cp.xds_address).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Writes as much as the server takes; `false` once it closed the connection.
fn send(s: &mut TcpStream, b: &[u8]) -> bool {
    s.write_all(b).is_ok()
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|r| r.1).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

/// Samples RSS every 10 ms until dropped; `peak()` is the highest seen.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    t: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kb(pid)));
        let (s, p) = (stop.clone(), peak.clone());
        let t = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kb(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Sampler {
            stop,
            peak,
            t: Some(t),
        }
    }

    fn peak(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.t.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

struct Bench<'a> {
    cp: &'a ControlPlane,
    pid: u32,
    dir: &'a std::path::Path,
    pod: &'a Pod,
    xds_cx: Option<u64>,
    xds_rq: Option<u64>,
    changes: u32,
    rows: Vec<String>,
}

impl Bench<'_> {
    /// Runs `attack` (it returns its figure) with RSS sampled, then checks the bound, the
    /// sidecar's stream and a config change reaching it, and CPU back to idle.
    fn run(&mut self, name: &str, rss_bound_mb: u64, attack: impl FnOnce(&ControlPlane) -> String) {
        let before = rss_kb(self.pid);
        let sampler = Sampler::start(self.pid);
        let t = Instant::now();
        let figure = attack(self.cp);
        let took = t.elapsed();
        let peak = sampler.peak();
        let grew_mb = peak.saturating_sub(before) as f64 / 1024.0;
        assert!(
            self.cp_alive(),
            "{name}: pilotfish died\n{}",
            self.cp.log_tail(30)
        );
        // CPU back to idle: some one-second window within 20 s uses under 10 % of a core.
        let hz = 100.0;
        let mut idle_cpu = f64::MAX;
        let idle = wait_until(Duration::from_secs(20), || {
            let c0 = cpu_ticks(self.pid);
            std::thread::sleep(Duration::from_secs(1));
            idle_cpu = (cpu_ticks(self.pid) - c0) as f64 / hz;
            idle_cpu < 0.10
        });
        // The sidecar keeps its connection and stream, and gets the next change.
        self.changes += 1;
        let svc = format!("attack-check-{}", self.changes);
        write_file(
            self.dir,
            &format!("{svc}.yaml"),
            &format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {svc}}}\nspec:\n  ports: [{{name: http, port: 80}}]\n"),
        );
        let cluster = format!("outbound|80||{svc}.default.svc.cluster.local");
        let t = Instant::now();
        let got = wait_until(READY, || {
            self.pod.envoy_admin("/clusters").contains(&cluster)
        });
        let change_ms = t.elapsed().as_millis();
        let cx = self.pod.envoy_stat("cluster.xds-grpc.upstream_cx_total");
        let rq = self.pod.envoy_stat("cluster.xds-grpc.upstream_rq_total");
        let row = format!(
            "{name:<34} | {figure:<58} | {:>6.1} MB | {took:>6.1?} | cpu after {idle_cpu:.2} | change in {change_ms} ms",
            grew_mb
        );
        println!("{row}");
        self.rows.push(row);
        assert!(
            grew_mb <= rss_bound_mb as f64,
            "{name}: RSS grew {grew_mb:.1} MB, over the {rss_bound_mb} MB bound"
        );
        assert!(
            idle,
            "{name}: CPU did not return to idle ({idle_cpu:.2} s/s)"
        );
        assert!(
            got,
            "{name}: the sidecar never got the change\n{}",
            self.cp.log_tail(20)
        );
        assert_eq!(
            (cx, rq),
            (self.xds_cx, self.xds_rq),
            "{name}: the sidecar's xDS connection or stream was replaced"
        );
    }

    fn cp_alive(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

#[test]
fn attacks_on_the_xds_port_are_bounded_and_a_sidecar_keeps_its_stream() {
    if !need_root("attacks") {
        return;
    }
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        "registry.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  ports: [{name: http, port: 8080}]\n",
    );
    let cp = ControlPlane::start_with(&mesh, dir.path(), &["--debounce-ms", "50"]);
    let pod = mesh.start_pod(PodSpec::new("a").host(20).control_plane(&cp));
    assert!(
        wait_until(READY, || pod
            .envoy_admin("/clusters")
            .contains("outbound|8080||b.default.svc.cluster.local")),
        "the sidecar never got its config\n{}",
        cp.log_tail(20)
    );
    let pid = cp.pid().expect("pilotfish pid");
    assert!(
        pod.envoy_stat("cluster.xds-grpc.upstream_rq_total")
            .is_some(),
        "no xds-grpc stats"
    );
    let mut bench = Bench {
        cp: &cp,
        pid,
        dir: dir.path(),
        pod: &pod,
        xds_cx: pod.envoy_stat("cluster.xds-grpc.upstream_cx_total"),
        xds_rq: pod.envoy_stat("cluster.xds-grpc.upstream_rq_total"),
        changes: 0,
        rows: Vec::new(),
    };
    println!("pilotfish idle RSS {} MB", rss_kb(pid) / 1024);
    println!(
        "{:<34} | {:<58} | RSS peak+ | time    | CPU after (s/s) | config change",
        "attack", "figure"
    );

    // Rapid Reset (CVE-2023-44487): 10,000 ADS calls opened and reset at once.
    bench.run("rapid reset, 10,000 streams", 20, |cp| {
        let mut s = connect(cp);
        let mut out = preface(&[]);
        let block = ads_headers();
        for i in 0..10_000u32 {
            let id = 1 + 2 * i;
            out.extend(frame(1, 0x4, id, &block));
            out.extend(frame(3, 0, id, &8u32.to_be_bytes())); // CANCEL
        }
        let sent = out
            .chunks(64 * 1024)
            .take_while(|c| send(&mut s, c))
            .count()
            * 64
            * 1024;
        let (goaway, closed) = drain(&mut s, Duration::from_secs(10));
        assert_eq!(goaway, Some(ENHANCE_YOUR_CALM), "rapid reset: GOAWAY");
        assert!(closed, "rapid reset: the connection stays open");
        format!(
            "GOAWAY ENHANCE_YOUR_CALM after {} of {} KB sent",
            sent.min(out.len()) / 1024,
            out.len() / 1024
        )
    });

    // CONTINUATION flood (CVE-2024-27316): a header block that never ends, fast and slow.
    bench.run("CONTINUATION flood", 10, |cp| {
        let mut s = connect(cp);
        let mut out = preface(&[]);
        out.extend(frame(1, 0, 1, &ads_headers()));
        for _ in 0..100_000 {
            out.extend(frame(9, 0, 1, &[]));
        }
        let _ = send(&mut s, &out);
        let (fast, closed) = drain(&mut s, Duration::from_secs(10));
        assert!(
            closed && fast == Some(ENHANCE_YOUR_CALM),
            "fast flood: {fast:?}"
        );
        // One CONTINUATION a second: closed at the header block's deadline.
        let mut s = connect(cp);
        let mut first = preface(&[]);
        first.extend(frame(1, 0, 1, &ads_headers()));
        let t = Instant::now();
        let mut ok = send(&mut s, &first);
        while ok && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_secs(1));
            ok = send(&mut s, &frame(9, 0, 1, &[]));
        }
        let (slow, closed) = drain(&mut s, Duration::from_secs(5));
        assert!(!ok || closed, "slow header block never closed");
        assert_eq!(slow, Some(ENHANCE_YOUR_CALM), "slow block: GOAWAY");
        format!(
            "fast: GOAWAY at once; slow: GOAWAY after {:.0?}",
            t.elapsed()
        )
    });

    // HPACK bomb: a 64 KB header block of references to one 4,000-byte table entry decodes
    // to ~240 MB.
    bench.run("HPACK bomb, 64 KB -> 240 MB", 10, |cp| {
        let mut s = connect(cp);
        let mut block = vec![0x40, 6];
        block.extend_from_slice(b"x-bomb");
        block.extend_from_slice(&[0x7f, (4000 - 127) as u8 | 0x80, ((4000 - 127) >> 7) as u8]);
        block.extend(std::iter::repeat_n(b'a', 4000));
        let head = literal_block(&[(":method", "POST"), (":scheme", "http"), (":path", ADS)]);
        let mut full = head;
        full.extend(block);
        while full.len() < 64_000 {
            full.push(0xbe); // index 62: the entry just added
        }
        let refs = full.len() - 4_040;
        let mut out = preface(&[]);
        let mut chunks = full.chunks(16_384).peekable();
        let mut first = true;
        while let Some(c) = chunks.next() {
            let last = chunks.peek().is_none();
            out.extend(frame(
                if first { 1 } else { 9 },
                if last { 4 } else { 0 },
                1,
                c,
            ));
            first = false;
        }
        let _ = send(&mut s, &out);
        let (goaway, closed) = drain(&mut s, Duration::from_secs(10));
        assert!(
            closed && goaway == Some(ENHANCE_YOUR_CALM),
            "bomb: {goaway:?}"
        );
        format!(
            "{refs} references ({} MB decoded): GOAWAY",
            refs * 4_038 / 1_000_000
        )
    });

    // A gRPC length prefix of 4 GB: refused on its stream, nothing allocated.
    bench.run("4 GB gRPC length prefix", 10, |cp| {
        let mut s = connect(cp);
        let mut out = preface(&[]);
        out.extend(frame(1, 0x4, 1, &ads_headers()));
        out.extend(frame(0, 0, 1, &[0, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]));
        assert!(send(&mut s, &out));
        // The trailers (HEADERS, END_STREAM) carry grpc-status 8.
        let mut buf = vec![0u8; 65536];
        let mut got = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if got.windows(13).any(|w| w == b"grpc-status\x018") {
                break;
            }
        }
        assert!(
            got.windows(13).any(|w| w == b"grpc-status\x018"),
            "no RESOURCE_EXHAUSTED for a 4 GB prefix"
        );
        "RESOURCE_EXHAUSTED on the stream".to_string()
    });

    // Unfinished large messages: 8 connections x 4 streams each announce a 16 MiB message
    // (the limit) and send as fast as flow control lets them, never finishing.
    bench.run("unfinished 16 MiB messages, 8x4", 100, |cp| {
        let closed: Vec<_> = (0..8)
            .map(|_| {
                let addr = cp.xds_address.clone();
                std::thread::spawn(move || large_messages(&addr, 4, Duration::from_secs(8)))
            })
            .collect();
        let results: Vec<(u64, Option<u32>)> =
            closed.into_iter().map(|t| t.join().unwrap()).collect();
        let sent: u64 = results.iter().map(|r| r.0).sum();
        let calm = results
            .iter()
            .filter(|r| r.1 == Some(ENHANCE_YOUR_CALM))
            .count();
        assert_eq!(calm, 8, "every connection is closed: {results:?}");
        format!("{} MB sent, all 8 closed (ENHANCE_YOUR_CALM)", sent >> 20)
    });

    // Zero-window clients: 200 connections ask for everything and never open a window.
    bench.run("200 zero-window clients", 40, |cp| {
        let mut conns = Vec::new();
        for i in 0..200 {
            let mut s = connect(cp);
            let mut out = preface(&[(4, 0)]);
            out.extend(frame(1, 0x4, 1, &ads_headers()));
            out.extend(frame(0, 0, 1, &grpc(&cds_request(&format!("zero-{i}")))));
            assert!(send(&mut s, &out));
            conns.push(s);
        }
        std::thread::sleep(Duration::from_secs(3));
        let rss = rss_kb(bench_pid(cp));
        drop(conns);
        format!("held 3 s, RSS {} MB while held", rss / 1024)
    });

    // Slowloris: 2,000 connections that send only the magic, never SETTINGS.
    bench.run("slowloris, 2,000 connections", 30, |cp| {
        let mut conns: Vec<TcpStream> = (0..2000)
            .map(|_| {
                let mut s = connect(cp);
                assert!(send(&mut s, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
                s
            })
            .collect();
        let t = Instant::now();
        let closed = closed_within(&mut conns, Duration::from_secs(20));
        assert_eq!(closed, 2000, "slowloris connections left open");
        format!("all closed by the server after {:.1?}", t.elapsed())
    });

    // The same on the TLS port: connections that never start the TLS handshake.
    bench.run("TLS slowloris, 1,000 connections", 30, |cp| {
        let mut conns: Vec<TcpStream> = (0..1000)
            .map(|_| TcpStream::connect(&cp.secure_address).unwrap())
            .collect();
        let t = Instant::now();
        let closed = closed_within(&mut conns, Duration::from_secs(20));
        assert_eq!(
            closed, 1000,
            "TLS connections without a handshake left open"
        );
        format!("all closed by the server after {:.1?}", t.elapsed())
    });

    // Streams opened in a loop from one host, over fresh connections (each connection may
    // open 32 calls per 10 s): the shared admission bucket is drained, but a source over
    // its share is refused while the bucket is contended, so calls from another source
    // (another sidecar, here this host's loopback address) are still admitted.
    bench.run("admission hog, 2 threads x 6 s", 20, |cp| {
        let stop = Arc::new(AtomicBool::new(false));
        let hogs: Vec<_> = (0..2)
            .map(|_| {
                let (addr, stop) = (cp.xds_address.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut calls = 0u64;
                    let block = ads_headers();
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut s) = TcpStream::connect(&addr) else {
                            continue;
                        };
                        let mut out = preface(&[]);
                        for i in 0..32u32 {
                            out.extend(frame(1, 0x4 | 0x1, 1 + 2 * i, &block));
                        }
                        if send(&mut s, &out) {
                            calls += 32;
                        }
                        let _ = drain(&mut s, Duration::from_millis(20));
                    }
                    calls
                })
            })
            .collect();
        let refused0 = metric(cp, "pilotfish_xds_admission_rejected_total");
        std::thread::sleep(Duration::from_secs(1));
        // Another source: a call every 200 ms, each on a connection of its own. Its first
        // call may find the bucket empty (a source never seen is not known to be another
        // one yet); from then on it is, and every call must be admitted.
        let call = || {
            let mut s = connect_from("127.0.0.1", &cp.xds_address);
            let mut out = preface(&[]);
            out.extend(frame(1, 0x4 | 0x1, 1, &ads_headers()));
            assert!(send(&mut s, &out));
            let got = read_for(&mut s, Duration::from_millis(150));
            std::thread::sleep(Duration::from_millis(50));
            !got.windows(13).any(|w| w == b"grpc-status\x018")
        };
        let first = call();
        let tries = 40;
        let admitted = (0..tries).filter(|_| call()).count();
        stop.store(true, Ordering::Relaxed);
        let calls: u64 = hogs.into_iter().map(|h| h.join().unwrap()).sum();
        let refused = metric(cp, "pilotfish_xds_admission_rejected_total") - refused0;
        assert!(
            refused > 1000,
            "the hog never contended the bucket ({calls} calls, {refused} refused)"
        );
        assert_eq!(
            admitted, tries,
            "another source got {admitted} of {tries} calls admitted during the hog"
        );
        format!(
            "hog {calls} calls, {refused} refused; other source {admitted}/{tries} admitted (first: {})",
            if first { "admitted" } else { "refused" }
        )
    });

    // PING and SETTINGS floods (answered at our cost) from a client that never reads.
    bench.run("PING flood, 100,000", 10, |cp| {
        flood(cp, |i| frame(6, 0, 0, &(i as u64).to_be_bytes()))
    });
    bench.run("SETTINGS flood, 100,000", 10, |cp| {
        flood(cp, |_| frame(4, 0, 0, &[0, 4, 0, 1, 0, 0]))
    });
    println!("{} attacks, each bounded", bench.rows.len());
}

/// A connection from the local address `ip` (another source than the default one).
fn connect_from(ip: &str, addr: &str) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt
        .block_on(async {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(format!("{ip}:0").parse().unwrap())?;
            sock.connect(addr.parse().unwrap()).await
        })
        .unwrap();
    let s = s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Whatever the server sends within `d`.
fn read_for(s: &mut TcpStream, d: Duration) -> Vec<u8> {
    let deadline = Instant::now() + d;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return got;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// How many of `conns` the server closes within `limit` (all of them waited on together).
fn closed_within(conns: &mut [TcpStream], limit: Duration) -> usize {
    let t = Instant::now();
    conns
        .iter_mut()
        .map(|s| drain(s, limit.saturating_sub(t.elapsed())).1 as usize)
        .sum()
}

/// 100,000 frames from `f` on one connection that never reads: it must be closed. (The
/// GOAWAY may sit behind answers the client never read: closed is the outcome.)
fn flood(cp: &ControlPlane, f: impl Fn(usize) -> Vec<u8>) -> String {
    let mut s = connect(cp);
    let mut out = preface(&[]);
    for i in 0..100_000 {
        out.extend(f(i));
    }
    let _ = send(&mut s, &out);
    let (goaway, closed) = drain(&mut s, Duration::from_secs(10));
    assert!(closed, "flood: the connection stays open");
    format!(
        "closed (GOAWAY seen: {:?})",
        goaway == Some(ENHANCE_YOUR_CALM)
    )
}

/// A counter from pilotfish's /metrics.
fn metric(cp: &ControlPlane, name: &str) -> u64 {
    let (_, m) = cp.get("/metrics").unwrap();
    m.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

fn bench_pid(cp: &ControlPlane) -> u32 {
    cp.pid().unwrap_or(0)
}

/// One connection with `streams` streams, each announcing a 16 MiB message and sending
/// what the server's windows allow until the server closes the connection or `limit`
/// passes. Returns the bytes sent and the GOAWAY code.
fn large_messages(addr: &str, streams: u32, limit: Duration) -> (u64, Option<u32>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut r = s.try_clone().unwrap();
    // Windows the server grants: [0] the connection's, [1..] the streams'.
    let windows: Arc<Vec<AtomicI64>> = Arc::new(
        std::iter::once(65_535)
            .chain(std::iter::repeat_n(1 << 20, streams as usize))
            .map(AtomicI64::new)
            .collect(),
    );
    let goaway = Arc::new(AtomicI64::new(-1));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (w, g, d) = (windows.clone(), goaway.clone(), done.clone());
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 65536];
            loop {
                match r.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                let mut pos = 0;
                while buf.len() - pos >= 9 {
                    let len =
                        u32::from_be_bytes([0, buf[pos], buf[pos + 1], buf[pos + 2]]) as usize;
                    if buf.len() - pos < 9 + len {
                        break;
                    }
                    let (ty, id) = (
                        buf[pos + 3],
                        u32::from_be_bytes([
                            buf[pos + 5],
                            buf[pos + 6],
                            buf[pos + 7],
                            buf[pos + 8],
                        ]),
                    );
                    let p = &buf[pos + 9..pos + 9 + len];
                    if ty == 8 && len == 4 {
                        let inc = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as i64;
                        let k = if id == 0 { 0 } else { id.div_ceil(2) as usize };
                        if let Some(x) = w.get(k) {
                            x.fetch_add(inc, Ordering::SeqCst);
                        }
                    }
                    if ty == 7 && len >= 8 {
                        g.store(
                            u32::from_be_bytes([p[4], p[5], p[6], p[7]]) as i64,
                            Ordering::SeqCst,
                        );
                    }
                    pos += 9 + len;
                }
                buf.drain(..pos);
            }
            d.store(true, Ordering::SeqCst);
        })
    };
    let mut out = preface(&[]);
    let len: u32 = (16 << 20) - 64;
    for k in 0..streams {
        out.extend(frame(1, 0x4, 1 + 2 * k, &ads_headers()));
    }
    let mut sent = 0u64;
    let mut open = send(&mut s, &out);
    let started = Instant::now();
    let mut first = vec![true; streams as usize];
    let payload = vec![7u8; 16_384];
    while open && !done.load(Ordering::SeqCst) && started.elapsed() < limit {
        let mut progressed = false;
        for k in 0..streams as usize {
            let n = 16_384i64
                .min(windows[0].load(Ordering::SeqCst))
                .min(windows[k + 1].load(Ordering::SeqCst));
            if n < 16_384 {
                continue;
            }
            windows[0].fetch_sub(n, Ordering::SeqCst);
            windows[k + 1].fetch_sub(n, Ordering::SeqCst);
            let mut body = Vec::with_capacity(n as usize);
            if first[k] {
                body.push(0);
                body.extend_from_slice(&len.to_be_bytes());
                first[k] = false;
            }
            body.extend_from_slice(&payload[..n as usize - body.len()]);
            open = send(&mut s, &frame(0, 0, 1 + 2 * k as u32, &body));
            sent += n as u64;
            progressed = true;
            if !open {
                break;
            }
        }
        if !progressed {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = reader.join();
    let g = goaway.load(Ordering::SeqCst);
    (sent, (g >= 0).then_some(g as u32))
}

//! Telemetry end to end: real pods with stock Envoy sidecars (mutual TLS, certificates from
//! pilotfish) stream their access logs to pilotfish, which serves Istio's request and TCP
//! metrics on /metrics with both sides resolved from its registry and the verified peer
//! identity.
#[path = "support/als.rs"]
mod als;
#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;
use support::{need_root, wait_until, write_file as write, ControlPlane, Mesh, Pod, PodSpec};

const READY: Duration = Duration::from_secs(40);

/// The flood of one test would starve the other's sidecars and sink of CPU: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
const SETTLE: Duration = Duration::from_secs(20);

/// One sample of /metrics: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn samples(cp: &ControlPlane) -> Vec<Sample> {
    let (_, text) = cp.get("/metrics").unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (head, ""),
            };
            Some((name.to_string(), parse_labels(labels), value.parse().ok()?))
        })
        .collect()
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((k, r)) = rest.split_once("=\"") {
        let mut v = String::new();
        let mut chars = r.char_indices();
        let mut end = r.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        v.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => v.push(c),
            }
        }
        out.insert(k.trim_start_matches(',').to_string(), v);
        rest = &r[end..];
    }
    out
}

/// The sum of `metric` over the series whose labels include every pair of `want`.
fn total(s: &[Sample], metric: &str, want: &[(&str, &str)]) -> f64 {
    s.iter()
        .filter(|(n, l, _)| {
            n == metric
                && want
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

/// curl from a pod with its own -w: (status, seconds, bytes sent, bytes received).
fn call(p: &Pod, url: &str, extra: &str) -> (u16, f64, u64, u64) {
    let o = p.exec(&format!(
        "curl -sS -o /dev/null --noproxy '*' -m 10 -w '%{{http_code}} %{{time_total}} %{{size_request}} %{{size_upload}} %{{size_header}} %{{size_download}}' {extra} '{url}'"
    ));
    let f: Vec<&str> = o.stdout.split_whitespace().collect();
    if f.len() != 6 {
        return (0, 0.0, 0, 0);
    }
    let n = |i: usize| f[i].parse::<u64>().unwrap_or(0);
    (
        f[0].parse().unwrap_or(0),
        f[1].parse().unwrap_or(0.0),
        n(2) + n(3),
        n(4) + n(5),
    )
}

/// A raw TCP client: sends a fixed request, reads until the server closes, prints the
/// bytes sent and received.
const TCP_CLIENT: &str = r#"import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
req = ('GET %s HTTP/1.0\r\nHost: d\r\n\r\nhello over tcp' % sys.argv[3]).encode()
s.sendall(req)
n = 0
while True:
    b = s.recv(65536)
    if not b:
        break
    n += len(b)
print(len(req), n)
"#;

/// Services b (HTTP; a VirtualService aborts `/fault` with 500), c (HTTP) and d (raw TCP
/// on 9000 to the app's 8080), their workloads b-1, c-1, d-1 at hosts 11, 12, 13 (sidecars
/// with certificates).
fn registry(mesh: &Mesh) -> String {
    format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec:\n  clusterIP: {vb}\n  selector: {{app: b}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: b-1}}\nspec:\n  address: {b}\n  serviceAccount: b\n  labels: {{app: b, version: v1, security.istio.io/tlsMode: istio}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: c}}\nspec:\n  clusterIP: {vc}\n  selector: {{app: c}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: d}}\nspec:\n  clusterIP: {vd}\n  selector: {{app: d}}\n  ports: [{{name: tcp-raw, port: 9000, targetPort: 8080}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: d-1}}\nspec:\n  address: {d}\n  serviceAccount: d\n  labels: {{app: d, security.istio.io/tlsMode: istio}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: c-1}}\nspec:\n  address: {c}\n  serviceAccount: c\n  labels: {{app: c, version: v2, security.istio.io/tlsMode: istio}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: b}}\nspec:\n  hosts: [b]\n  http:\n  - match: [{{uri: {{prefix: /fault}}}}]\n    fault: {{abort: {{httpStatus: 500, percentage: {{value: 100}}}}}}\n    route: [{{destination: {{host: b}}}}]\n  - route: [{{destination: {{host: b}}}}]\n",
            vb = mesh.vip(0),
            vc = mesh.vip(1),
            vd = mesh.vip(2),
            b = mesh.addr(11),
            c = mesh.addr(12),
            d = mesh.addr(13),
        )
}

const A: &str = "spiffe://cluster.local/ns/default/sa/a";
const B: &str = "spiffe://cluster.local/ns/default/sa/b";

#[test]
fn requests_are_counted_with_istios_labels() {
    if !need_root("telemetry") {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "registry.yaml", &registry(&mesh));
    let logs = tempfile::tempdir().unwrap();
    let log_file = logs.path().join("access.log");
    let cp = ControlPlane::start_with(
        &mesh,
        dir.path(),
        &[
            "--debounce-ms",
            "50",
            "--access-log-file",
            log_file.to_str().unwrap(),
            "--access-log-max-bytes",
            "16384",
        ],
    );
    let b = mesh.start_pod(PodSpec::new("b").host(11).service_account("b").secure(&cp));
    let c = mesh.start_pod(PodSpec::new("c").host(12).service_account("c").secure(&cp));
    let d = mesh.start_pod(PodSpec::new("d").host(13).service_account("d").secure(&cp));
    let a = mesh.start_pod(PodSpec::new("a").host(10).service_account("a").secure(&cp));
    for p in [&a, &c] {
        p.hosts(&[
            ("b", &mesh.vip(0).to_string()),
            ("c", &mesh.vip(1).to_string()),
            ("d", &mesh.vip(2).to_string()),
        ]);
    }
    let up = wait_until(READY, || {
        call(&a, "http://b:8080/", "").0 == 200
            && call(&c, "http://b:8080/", "").0 == 200
            && call(&a, "http://c:8080/", "").0 == 200
            && call(&a, "http://d:9000/", "").0 == 200
    });
    assert!(up, "the mesh never converged\n{}", cp.log_tail(30));
    // Every sidecar's log streams work before counting starts: Envoy's gRPC logger makes
    // its stream at its first entry, and the entries sent on a stream that could not be
    // made yet (the TLS cluster still warming) are lost. Warm up until each reporter and
    // direction has delivered.
    let live = |s: &[Sample]| {
        [
            ("istio_requests_total", "source", "source_workload", "a"),
            ("istio_requests_total", "source", "source_workload", "c-1"),
            (
                "istio_requests_total",
                "destination",
                "destination_workload",
                "b-1",
            ),
            (
                "istio_requests_total",
                "destination",
                "destination_workload",
                "c-1",
            ),
            (
                "istio_tcp_connections_closed_total",
                "source",
                "source_workload",
                "a",
            ),
            (
                "istio_tcp_connections_closed_total",
                "destination",
                "destination_workload",
                "d-1",
            ),
        ]
        .iter()
        .all(|(m, r, k, v)| total(s, m, &[("reporter", r), (k, v)]) > 0.0)
    };
    let streams = wait_until(Duration::from_secs(60), || {
        if live(&samples(&cp)) {
            return true;
        }
        call(&a, "http://b:8080/", "");
        call(&c, "http://b:8080/", "");
        call(&a, "http://c:8080/", "");
        call(&a, "http://d:9000/", "");
        false
    });
    assert!(
        streams,
        "not every sidecar's access logs arrive\n{}",
        cp.log_tail(30)
    );
    // Let the warm-up requests' entries arrive (a sidecar's log stream may connect after
    // its first requests), then count from here: wait until the totals stop moving.
    let settled_total = |s: &[Sample]| {
        total(s, "istio_requests_total", &[]) + total(s, "istio_tcp_connections_closed_total", &[])
    };
    let mut before = samples(&cp);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(1500));
        let now = samples(&cp);
        let still = settled_total(&now) == settled_total(&before);
        before = now;
        if still {
            break;
        }
    }

    let mut took = 0.0;
    let mut codes = BTreeMap::new();
    let mut go = |p: &Pod, url: &str, extra: &str, n: usize| {
        for _ in 0..n {
            let (code, secs, _, _) = call(p, url, extra);
            *codes
                .entry((p.dir().display().to_string(), url.to_string(), code))
                .or_insert(0) += 1;
            took += secs;
        }
    };
    go(&a, "http://b:8080/", "", 20);
    go(&a, "http://b:8080/?status=503", "", 5);
    go(&a, "http://b:8080/?status=404", "", 2);
    go(&a, "http://b:8080/fault", "", 4);
    // A forged client certificate header and a forged peer header change nothing.
    go(
        &a,
        "http://b:8080/forged",
        "-H 'x-forwarded-client-cert: By=spiffe://cluster.local/ns/default/sa/b;URI=spiffe://cluster.local/ns/default/sa/admin' -H 'x-envoy-peer-metadata-id: sidecar~10.0.0.1~admin.default~default.svc.cluster.local'",
        3,
    );
    go(&c, "http://b:8080/", "", 7);
    go(&a, "http://c:8080/", "", 3);
    let http_took = took;
    // TCP: 4 connections to d's raw port (its app speaks HTTP, which the mesh carries as
    // bytes), counted as curl counted them.
    let (mut sent, mut received) = (0, 0);
    let client = dir.path().join("tcp_client.py");
    std::fs::write(&client, TCP_CLIENT).unwrap();
    for i in 0..4 {
        let o = a.exec(&format!("python3 {} d 9000 /tcp{i}", client.display()));
        let f: Vec<u64> = o
            .stdout
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        assert_eq!(f.len(), 2, "tcp client: {}", o.describe());
        assert!(f[1] > 0, "no answer over TCP: {}", o.describe());
        sent += f[0];
        received += f[1];
    }
    println!("calls: {codes:?}");

    // Exactly N, per (source, destination, response code), on each side.
    let delta = |s: &[Sample], metric: &str, want: &[(&str, &str)]| {
        total(s, metric, want) - total(&before, metric, want)
    };
    let src_ab = [
        ("reporter", "source"),
        ("source_workload", "a"),
        ("destination_service", "b.default.svc.cluster.local"),
    ];
    let dst_ab = [
        ("reporter", "destination"),
        ("source_workload", "a"),
        ("destination_workload", "b-1"),
    ];
    let want: Vec<(Vec<(&str, &str)>, f64)> = vec![
        ([&src_ab[..], &[("response_code", "200")]].concat(), 23.0),
        ([&src_ab[..], &[("response_code", "503")]].concat(), 5.0),
        ([&src_ab[..], &[("response_code", "404")]].concat(), 2.0),
        (
            [
                &src_ab[..],
                &[("response_code", "500"), ("response_flags", "FI")],
            ]
            .concat(),
            4.0,
        ),
        ([&dst_ab[..], &[("response_code", "200")]].concat(), 23.0),
        // Each 503 is tried 3 times (Istio's default retry policy retries 503 twice), and
        // the destination sees every attempt.
        ([&dst_ab[..], &[("response_code", "503")]].concat(), 15.0),
        ([&dst_ab[..], &[("response_code", "500")]].concat(), 0.0),
        // c is in the registry (WorkloadEntry c-1): that is its workload.
        (
            vec![
                ("reporter", "source"),
                ("source_workload", "c-1"),
                ("source_app", "c"),
                ("source_version", "v2"),
                ("destination_service", "b.default.svc.cluster.local"),
                ("response_code", "200"),
            ],
            7.0,
        ),
        (
            vec![
                ("reporter", "destination"),
                ("source_workload", "c-1"),
                ("source_principal", "spiffe://cluster.local/ns/default/sa/c"),
                ("destination_workload", "b-1"),
                ("response_code", "200"),
            ],
            7.0,
        ),
        (
            vec![
                ("reporter", "source"),
                ("source_workload", "a"),
                ("destination_service", "c.default.svc.cluster.local"),
                ("destination_workload", "c-1"),
                ("response_code", "200"),
            ],
            3.0,
        ),
        (
            vec![
                ("reporter", "destination"),
                ("source_workload", "a"),
                ("destination_workload", "c-1"),
                ("request_protocol", "http"),
                ("response_code", "200"),
            ],
            3.0,
        ),
    ];
    let mut now = Vec::new();
    let settled = wait_until(SETTLE, || {
        now = samples(&cp);
        want.iter()
            .all(|(l, n)| delta(&now, "istio_requests_total", l) == *n)
            && delta(
                &now,
                "istio_tcp_connections_closed_total",
                &[("reporter", "source"), ("source_workload", "a")],
            ) >= 4.0
            && delta(
                &now,
                "istio_tcp_connections_closed_total",
                &[("reporter", "destination"), ("source_workload", "a")],
            ) >= 4.0
    });
    for (l, n) in &want {
        let got = delta(&now, "istio_requests_total", l);
        println!("istio_requests_total{l:?}: {got} (want {n})");
    }
    for r in ["source", "destination"] {
        println!(
            "TCP closed ({r}): {}",
            delta(
                &now,
                "istio_tcp_connections_closed_total",
                &[("reporter", r), ("source_workload", "a")]
            )
        );
    }
    if !settled {
        for (n, l, v) in now.iter().filter(|(n, l, _)| {
            n == "istio_requests_total"
                && l.get("reporter").map(String::as_str) == Some("destination")
        }) {
            let was = before
                .iter()
                .find(|(bn, bl, _)| bn == n && bl == l)
                .map(|x| x.2)
                .unwrap_or(0.0);
            println!("destination series: +{} {:?}", v - was, l);
        }
        println!("telemetryz: {:?}", cp.get("/debug/telemetryz"));
        for p in [&a, &b, &c, &d] {
            println!("{:?}", p.envoy_stats("access_log"));
            println!("{:?}", p.envoy_stats("pilotfish-telemetry"));
            let log = std::fs::read_to_string(p.envoy_log()).unwrap_or_default();
            for l in log
                .lines()
                .filter(|l| l.contains("grpc") || l.contains("access") || l.contains("telemetry"))
                .take(20)
            {
                println!("envoy: {l}");
            }
        }
        let log = std::fs::read_to_string(cp.log_path()).unwrap_or_default();
        for l in log
            .lines()
            .filter(|l| l.contains("access") || l.contains("refused") || l.contains("WARN"))
            .take(20)
        {
            println!("pilotfish: {l}");
        }
    }
    assert!(settled, "counts differ (above)\n{}", cp.log_tail(20));

    // The destination side's labels: verified principals, mutual TLS, the registry's
    // workload, app and version; no trace of the forged identity anywhere.
    let dst: Vec<&Sample> = now
        .iter()
        .filter(|(n, l, _)| {
            n == "istio_requests_total"
                && l["reporter"] == "destination"
                && l["source_workload"] == "a"
                && l["destination_workload"] == "b-1"
        })
        .collect();
    assert!(!dst.is_empty());
    for (_, l, _) in &dst {
        assert_eq!(l["source_principal"], A, "{l:?}");
        assert_eq!(l["destination_principal"], B, "{l:?}");
        assert_eq!(l["connection_security_policy"], "mutual_tls", "{l:?}");
        assert_eq!(l["destination_app"], "b");
        assert_eq!(l["destination_version"], "v1");
        assert_eq!(l["destination_service"], "b.default.svc.cluster.local");
        assert_eq!(l["destination_service_name"], "b");
        assert_eq!(l["destination_service_namespace"], "default");
        assert_eq!(l["source_workload_namespace"], "default");
        assert_eq!(l["destination_canonical_service"], "b");
        assert_eq!(l["destination_canonical_revision"], "v1");
        assert_eq!(l["request_protocol"], "http");
    }
    let (_, text) = cp.get("/metrics").unwrap();
    assert!(
        !text.contains("sa/admin") && !text.contains("admin.default"),
        "a forged identity reached the labels"
    );
    let src: Vec<&Sample> = now
        .iter()
        .filter(|(n, l, _)| {
            n == "istio_requests_total" && l["reporter"] == "source" && l["source_workload"] == "a"
        })
        .collect();
    for (_, l, _) in &src {
        assert_eq!(l["source_principal"], A, "{l:?}");
        // Istio's client side says "unknown"; pilotfish knows what it configured.
        let want = if l["destination_workload"] == "unknown" {
            "unknown"
        } else {
            "mutual_tls"
        };
        assert_eq!(l["connection_security_policy"], want, "{l:?}");
    }
    json_access_log(&log_file);
    dashboards_find_their_series(&now);
    service_graph(&cp);
    istioctl_commands(&cp, &mesh);
    dashboard_in_a_browser(&cp, &mesh, dir.path());

    // Durations: every request's duration is within its measured call time.
    let dsum = delta(
        &now,
        "istio_request_duration_milliseconds_sum",
        &[("reporter", "source")],
    );
    let dcount = delta(
        &now,
        "istio_request_duration_milliseconds_count",
        &[("reporter", "source")],
    );
    println!(
        "source-side durations: {dcount} requests, {dsum:.1} ms in all; the calls took {:.1} ms",
        http_took * 1000.0
    );
    assert_eq!(dcount, 44.0);
    assert!(
        dsum > 0.0 && dsum <= http_took * 1000.0,
        "durations {dsum} ms outside the measured {} ms",
        http_took * 1000.0
    );
    let le_inf = delta(
        &now,
        "istio_request_duration_milliseconds_bucket",
        &[("reporter", "source"), ("le", "+Inf")],
    );
    assert_eq!(le_inf, 44.0);

    // TCP: connections opened and closed, and the bytes curl sent and received.
    let tcp = [
        ("reporter", "source"),
        ("source_workload", "a"),
        ("destination_service", "d.default.svc.cluster.local"),
        ("destination_workload", "d-1"),
    ];
    let t = |m: &str| delta(&now, m, &tcp);
    println!(
        "TCP: opened {} closed {} received {} (curl sent {sent}) sent {} (curl received {received})",
        t("istio_tcp_connections_opened_total"),
        t("istio_tcp_connections_closed_total"),
        t("istio_tcp_received_bytes_total"),
        t("istio_tcp_sent_bytes_total")
    );
    assert_eq!(t("istio_tcp_connections_opened_total"), 4.0);
    assert_eq!(t("istio_tcp_connections_closed_total"), 4.0);
    assert_eq!(t("istio_tcp_received_bytes_total"), sent as f64);
    assert_eq!(t("istio_tcp_sent_bytes_total"), received as f64);
    let tcp_dst = [
        ("reporter", "destination"),
        ("source_workload", "a"),
        ("destination_workload", "d-1"),
        ("request_protocol", "tcp"),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert_eq!(
        delta(&now, "istio_tcp_connections_closed_total", &tcp_dst),
        4.0
    );
    assert_eq!(
        delta(&now, "istio_tcp_received_bytes_total", &tcp_dst),
        sent as f64
    );
    assert_eq!(
        total(&now, "pilotfish_telemetry_dropped_entries_total", &[]),
        0.0
    );
    let _ = (&b, &c, &d);
}

/// Istio's Grafana dashboards (Mesh, Service, Workload) find every series they query: each
/// metric exists, carries every label the queries match or group by, and a fixed value they
/// select (`reporter="source"`, `response_code=~"4.*"`, `connection_security_policy=
/// "mutual_tls"`, ...) is there. The queries' metric and label names are in
/// `e2e/testdata/istio-dashboards.tsv`, taken from the dashboards' JSON (origin noted there).
fn dashboards_find_their_series(now: &[Sample]) {
    let tsv = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/testdata/istio-dashboards.tsv"),
    )
    .unwrap();
    let mut checked = 0;
    for line in tsv
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 4, "{line}");
        let (board, metric) = (f[0], f[1]);
        // Istio's own build info, and the seconds-bucket fallback of a `... or ...` query.
        if metric == "istio_build" || metric == "istio_request_duration_seconds_bucket" {
            continue;
        }
        let series: Vec<&BTreeMap<String, String>> = now
            .iter()
            .filter(|(n, _, _)| n == metric)
            .map(|(_, l, _)| l)
            .collect();
        assert!(!series.is_empty(), "{board}: no {metric}");
        let mut names: Vec<&str> = f[3].split(',').filter(|x| *x != "-").collect();
        for m in f[2].split(',').filter(|x| !x.is_empty() && *x != "-") {
            let (name, op, value) = ["!~", "=~", "!=", "="]
                .iter()
                .find_map(|op| m.split_once(op).map(|(n, v)| (n, *op, Some(v))))
                .unwrap_or((m, "", None));
            names.push(name);
            // A positive fixed value must select something (a negative one only needs the
            // label).
            if let (Some(v), "=" | "=~") = (value, op) {
                let re = regex::Regex::new(&format!("^(?:{v})$")).unwrap();
                let hit = series.iter().any(|l| {
                    let x = l.get(name).map(String::as_str).unwrap_or("");
                    if op == "=" {
                        x == v
                    } else {
                        re.is_match(x)
                    }
                });
                assert!(hit, "{board}: no {metric} with {name}{op}\"{v}\"");
            }
        }
        for l in &series {
            for n in &names {
                assert!(
                    l.contains_key(*n),
                    "{board}: {metric} lacks label {n}: {l:?}"
                );
            }
        }
        checked += 1;
    }
    println!("dashboard queries checked: {checked} (dashboard, metric) pairs");
    assert!(checked >= 16);
}

/// `/debug/graphz`: the edges the traffic above made, with rates, errors, latency, bytes,
/// protocol and mTLS.
fn service_graph(cp: &ControlPlane) {
    let (code, body) = cp.get("/debug/graphz?window=1m").unwrap();
    assert_eq!(code, 200, "{body}");
    let g: serde_json::Value = serde_json::from_str(&body).unwrap();
    let edge = |from: &str, to: &str| {
        g["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["source"] == from && e["target"] == to)
            .cloned()
            .unwrap_or_else(|| panic!("no edge {from} -> {to}: {body}"))
    };
    let ab = edge("workload:default/a", "service:b.default.svc.cluster.local");
    println!("edge a -> b: {ab}");
    // 20 + 3 forged (200), 5 (503), 2 (404), 4 fault-injected (500), plus the warm-up
    // calls (successes, however many the streams took to come up).
    let requests = ab["requests"].as_u64().unwrap();
    assert!(requests >= 34, "{ab}");
    let errors = (ab["error_rate"].as_f64().unwrap() * requests as f64).round() as u64;
    assert!(
        (9..=11).contains(&errors),
        "9 failed, {errors} counted: {ab}"
    );
    assert!(ab["requests_per_second"].as_f64().unwrap() > 0.0);
    assert!(
        ab["p50_ms"].as_f64().is_some() && ab["p99_ms"].as_f64().is_some(),
        "{ab}"
    );
    assert_eq!(ab["protocols"], serde_json::json!(["http"]));
    let bb = edge(
        "service:b.default.svc.cluster.local",
        "workload:default/b-1",
    );
    assert_eq!(bb["mtls_rate"].as_f64(), Some(1.0), "{bb}");
    let cb = edge(
        "workload:default/c-1",
        "service:b.default.svc.cluster.local",
    );
    assert!(cb["requests"].as_u64().unwrap() >= 7);
    let ad = edge("workload:default/a", "service:d.default.svc.cluster.local");
    assert_eq!(ad["protocols"], serde_json::json!(["tcp"]));
    assert!(
        ad["bytes_sent"].as_u64().unwrap() > 0 && ad["bytes_received"].as_u64().unwrap() > 0,
        "{ad}"
    );
    let nodes: Vec<&str> = g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    for n in [
        "workload:default/a",
        "workload:default/b-1",
        "service:b.default.svc.cluster.local",
        "workload:default/d-1",
    ] {
        assert!(nodes.contains(&n), "no node {n}: {nodes:?}");
    }
    assert_eq!(cp.get("/debug/graphz?window=2d").map(|r| r.0), Ok(400));
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Overload: synthetic sidecars flood the sink far past what it can take (2,000,000 entries/s
/// offered in messages of 1,000, for 10 s) while real sidecars serve traffic: every request still succeeds,
/// what the sink could not take is dropped and counted, and pilotfish's memory stays
/// bounded.
#[test]
fn an_overloaded_sink_drops_and_counts_and_sidecars_keep_serving() {
    if !need_root("telemetry") {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "registry.yaml", &registry(&mesh));
    let cp = ControlPlane::start_with(&mesh, dir.path(), &["--debounce-ms", "50"]);
    let _b = mesh.start_pod(PodSpec::new("b").host(11).service_account("b").secure(&cp));
    let a = mesh.start_pod(PodSpec::new("a").host(10).service_account("a").secure(&cp));
    a.hosts(&[("b", &mesh.vip(0).to_string())]);
    assert!(
        wait_until(READY, || call(&a, "http://b:8080/", "").0 == 200),
        "the mesh never converged\n{}",
        cp.log_tail(30)
    );
    let calls = |n: usize| -> (usize, f64) {
        let mut ok = 0;
        let mut secs = Vec::new();
        for _ in 0..n {
            let (code, s, _, _) = call(&a, "http://b:8080/", "");
            ok += (code == 200) as usize;
            secs.push(s);
        }
        secs.sort_by(|x, y| x.partial_cmp(y).unwrap());
        (ok, secs[secs.len() / 2] * 1000.0)
    };
    let (ok0, p50_0) = calls(30);
    assert_eq!(ok0, 30);

    // 4 synthetic sidecars, batches of 100 entries, 2,000,000 entries/s offered.
    let fleet: Vec<_> = (0..4)
        .map(|i| {
            let me = als::Sidecar {
                ip: format!("10.200.0.{i}"),
                pod: format!("flood-{i}"),
                namespace: "default".into(),
                service_account: "flood".into(),
                inbound: false,
            };
            let batches: Vec<_> = (0..20)
                .map(|j| {
                    als::message(
                        &me,
                        (0..1000)
                            .map(|k| {
                                als::entry(
                                    &me.ip,
                                    &format!("10.201.{j}.{}", k % 250),
                                    "outbound|8080||b.default.svc.cluster.local",
                                    200,
                                    3,
                                )
                            })
                            .collect(),
                        false,
                    )
                })
                .collect();
            (
                als::message(&me, vec![], true),
                std::sync::Arc::new(batches),
            )
        })
        .collect();
    let sent = std::sync::Arc::new(als::Sent::default());
    let addr = cp.xds_address.clone();
    let flood = {
        let sent = sent.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let tasks: Vec<_> = fleet
                    .into_iter()
                    .map(|(first, batches)| {
                        tokio::spawn(als::stream(
                            addr.clone(),
                            first,
                            batches,
                            1000,
                            2_000_000.0,
                            Duration::from_secs(10),
                            sent.clone(),
                        ))
                    })
                    .collect();
                for t in tasks {
                    let _ = t.await;
                }
            })
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let (ok1, p50_1) = calls(30);
    flood.join().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let (_, status) = cp.get("/debug/telemetryz").unwrap();
    let st: serde_json::Value = serde_json::from_str(&status).unwrap();
    let peak = rss_mb(cp.pid().unwrap());
    let sent_n = sent.entries.load(std::sync::atomic::Ordering::Relaxed);
    let pushed = sent.pushed_back.load(std::sync::atomic::Ordering::Relaxed);
    // What the sink took in the 10 s is its capacity under this load (it was saturated);
    // what was offered is a multiple of it.
    let taken = st["entries"].as_u64().unwrap_or(0);
    println!(
        "overload: offered {} entries in 10 s ({sent_n} sent, {pushed} held back by flow control), {:.1}x what the sink took ({taken}); dropped and counted {}; pilotfish peak RSS {peak:.1} MB; sidecar calls during the flood: {ok1}/30 ok, p50 {p50_1:.1} ms (before: {p50_0:.1} ms)",
        sent_n + pushed,
        (sent_n + pushed) as f64 / taken.max(1) as f64,
        st["dropped_entries"]
    );
    assert_eq!(ok1, 30, "requests failed while the sink was flooded");
    assert!(
        st["dropped_entries"].as_u64().unwrap_or(0) + pushed > 0,
        "the flood never exceeded the sink: {st}"
    );
    assert!(peak < 512.0, "pilotfish's memory grew to {peak} MB");
}

fn pilotfish(args: &[&str]) -> (i32, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pilotfish"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// A proxy (a plain ADS client) that NACKs the clusters it is sent, with `error`.
fn nacking_proxy(xds: &str, ip: &str, error: &str) -> std::thread::JoinHandle<()> {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::google::rpc::Status;
    let (xds, ip, error) = (xds.to_string(), ip.to_string(), error.to_string());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = loop {
                match AggregatedDiscoveryServiceClient::connect(format!("http://{xds}")).await {
                    Ok(c) => break c,
                    Err(e) => {
                        eprintln!("nacking proxy: connect: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            };
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let node = Node {
                id: format!("sidecar~{ip}~nacker.default~default.svc.cluster.local"),
                ..Default::default()
            };
            let cds = "type.googleapis.com/envoy.config.cluster.v3.Cluster".to_string();
            tx.send(DiscoveryRequest {
                node: Some(node),
                type_url: cds.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
            let mut s = c
                .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            let r = s.message().await.unwrap().unwrap();
            tx.send(DiscoveryRequest {
                type_url: cds,
                response_nonce: r.nonce.clone(),
                error_detail: Some(Status {
                    code: 3,
                    message: error,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
            // Stay connected a while so the status can be read.
            tokio::time::sleep(Duration::from_secs(40)).await;
            drop(tx);
        })
    })
}

/// `pilotfish proxy-status` and `proxy-config` against the running pilotfish, with the
/// sidecars above and one proxy that NACKs.
fn istioctl_commands(cp: &ControlPlane, mesh: &Mesh) {
    let debug = cp.http_address.clone();
    let _nacker = nacking_proxy(
        &cp.xds_address,
        &mesh.addr(99).to_string(),
        "cluster foo: bad weights for the test",
    );
    let mut out = String::new();
    let ok = wait_until(Duration::from_secs(10), || {
        out = pilotfish(&["proxy-status", "--debug-address", &debug]).1;
        out.lines()
            .any(|l| l.starts_with("nacker.default") && l.contains("NACKED"))
    });
    println!("{out}");
    assert!(ok, "{out}");
    let row = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or("")
            .to_string()
    };
    assert!(out.lines().next().unwrap().starts_with("NAME"), "{out}");
    for p in ["a.default", "b.default"] {
        let r = row(p);
        assert_eq!(
            r.matches("SYNCED").count(),
            5,
            "{p} is synced on CDS, LDS, EDS, RDS and SDS: {r}"
        );
    }
    assert!(row("nacker.default").contains("NACKED"), "{out}");
    assert!(
        out.contains("nacker.default CDS: cluster foo: bad weights for the test"),
        "{out}"
    );
    let (code, one) = pilotfish(&["proxy-status", "a.default", "--debug-address", &debug]);
    assert_eq!(code, 0);
    assert_eq!(one.lines().count(), 2, "{one}");

    let (code, clusters) = pilotfish(&[
        "proxy-config",
        "clusters",
        "a.default",
        "--debug-address",
        &debug,
    ]);
    println!("{clusters}");
    assert_eq!(code, 0, "{clusters}");
    assert!(clusters.lines().next().unwrap().starts_with("SERVICE FQDN"));
    assert!(
        clusters
            .lines()
            .any(|l| l.starts_with("b.default.svc.cluster.local")
                && l.contains("8080")
                && l.contains("outbound")
                && l.contains("EDS")),
        "{clusters}"
    );
    let (_, endpoints) = pilotfish(&[
        "proxy-config",
        "endpoints",
        "a.default",
        "--debug-address",
        &debug,
    ]);
    assert!(
        endpoints.contains(&format!("{}:8080", mesh.addr(11))) && endpoints.contains("HEALTHY"),
        "{endpoints}"
    );
    let (_, listeners) = pilotfish(&[
        "proxy-config",
        "listeners",
        "a.default",
        "--debug-address",
        &debug,
    ]);
    assert!(
        listeners.contains("15001")
            && listeners.contains("15006")
            && listeners.contains("Route: 8080"),
        "{listeners}"
    );
    let (_, routes) = pilotfish(&[
        "proxy-config",
        "routes",
        "a.default",
        "--debug-address",
        &debug,
    ]);
    assert!(
        routes.lines().next().unwrap().starts_with("NAME"),
        "{routes}"
    );
    assert!(routes.contains("8080"), "{routes}");
    let (_, json) = pilotfish(&[
        "proxy-config",
        "clusters",
        "a.default",
        "-o",
        "json",
        "--debug-address",
        &debug,
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "outbound|8080||b.default.svc.cluster.local"));
    let (_, secrets) = pilotfish(&[
        "proxy-config",
        "secrets",
        "a.default",
        "--debug-address",
        &debug,
    ]);
    println!("{secrets}");
    assert!(
        secrets
            .lines()
            .any(|l| l.starts_with("default") && l.contains(A)),
        "{secrets}"
    );
    assert!(
        secrets
            .lines()
            .any(|l| l.starts_with("ROOTCA") && l.contains("signing")),
        "{secrets}"
    );
    assert!(!secrets.contains("PRIVATE KEY"));
    let (code, e) = pilotfish(&[
        "proxy-config",
        "clusters",
        "nobody",
        "--debug-address",
        &debug,
    ]);
    assert_ne!(code, 0);
    assert!(e.contains("no connected proxy matches"), "{e}");
}

/// The dashboard at `/ui` in a real browser (Debian's Chromium, headless): the graph shows
/// the traffic's edges with their rates and a chosen node's panel, the proxies page a NACK
/// with its error and the object it blames, the config page a broken file's field error.
/// Screenshots of each page go to `target/ui-screenshots/`.
fn dashboard_in_a_browser(cp: &ControlPlane, mesh: &Mesh, config_dir: &std::path::Path) {
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    write(
        config_dir,
        "broken.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: broken}\nspec:\n  hosts: [c]\n  http:\n  - timeout: soon\n    route: [{destination: {host: c}}]\n",
    );
    assert!(
        wait_until(Duration::from_secs(10), || cp
            .get("/debug/configz")
            .map(|r| r.1.contains("broken.yaml"))
            .unwrap_or(false)),
        "the broken file is not reported"
    );
    let _nacker = nacking_proxy(
        &cp.xds_address,
        &mesh.addr(98).to_string(),
        "cluster outbound|8080||b.default.svc.cluster.local: rejected for the test",
    );
    assert!(wait_until(Duration::from_secs(10), || cp
        .get("/debug/syncz")
        .map(|r| r.1.contains("rejected for the test"))
        .unwrap_or(false)));
    let base = format!("http://{}/ui", cp.http_address);

    let dom = support::browse(
        &format!("{base}#/graph?node=workload:default/a&window=1m"),
        &shots.join("graph.png"),
    )
    .unwrap();
    assert!(
        dom.contains("data-loaded=\"graph\""),
        "the graph page did not load: {}",
        &dom[..dom.len().min(2000)]
    );
    assert!(
        dom.contains("data-source=\"workload:default/a\" data-target=\"service:b.default.svc.cluster.local\""),
        "no edge a -> b drawn"
    );
    assert!(dom.contains(
        "data-source=\"service:b.default.svc.cluster.local\" data-target=\"workload:default/b-1\""
    ));
    let edge_texts: Vec<&str> = dom.split("<text").filter(|t| t.contains(" rps")).collect();
    assert!(
        !edge_texts.is_empty() && edge_texts.iter().any(|t| !t.contains(">0.00 rps")),
        "rates are zero"
    );
    assert!(
        dom.contains("<h3 id=\"panel-title\">workload:default/a</h3>"),
        "the chosen node's panel"
    );
    assert!(
        dom.contains("Outbound") && dom.contains("service:b.default.svc.cluster.local</td>"),
        "the panel lists a's outbound traffic"
    );

    // A real click on a node (Playwright driving the same Chromium) opens its panel.
    support::chromium_bin().unwrap();
    let py = support::playwright_python().unwrap();
    let o = support::run(
        std::process::Command::new(py)
            .arg(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("e2e")
                    .join("ui_click.py"),
            )
            .arg(format!("{base}#/graph?window=1m"))
            .arg("service:b.default.svc.cluster.local")
            .arg(shots.join("graph-click.png")),
        Duration::from_secs(120),
    );
    println!("{}", o.stdout);
    assert!(o.ok(), "click: {}", o.describe());
    assert!(
        o.stdout
            .contains("TITLE: service:b.default.svc.cluster.local"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("workload:default/a") && o.stdout.contains("workload:default/b-1"),
        "inbound from a, outbound to b-1: {}",
        o.stdout
    );
    assert!(
        o.stdout.contains("VirtualService default/b"),
        "the config that applies: {}",
        o.stdout
    );

    let dom = support::browse(&format!("{base}#/proxies"), &shots.join("proxies.png")).unwrap();
    assert!(dom.contains("data-loaded=\"proxies\""));
    let row = dom
        .split("<tr")
        .find(|r| r.contains("nacker.default"))
        .unwrap_or("");
    assert!(row.contains("class=\"NACKED\""), "the NACK shows: {row}");
    assert!(
        row.contains("rejected for the test"),
        "with its error: {row}"
    );
    assert!(
        row.contains("blamed: VirtualService default/b"),
        "and the object blamed: {row}"
    );
    assert!(dom
        .split("<tr")
        .any(|r| r.contains("a.default") && r.matches("class=\"SYNCED\"").count() == 5));

    let dom = support::browse(&format!("{base}#/config"), &shots.join("config.png")).unwrap();
    assert!(dom.contains("data-loaded=\"config\""));
    let err = dom
        .split("<tr")
        .find(|r| r.contains("broken.yaml"))
        .unwrap_or("");
    assert!(
        err.contains("spec.http[0].timeout") && err.contains("VirtualService default/broken"),
        "the field error: {err}"
    );
    assert!(dom.contains("class=\"accepted\""));
    for page in ["graph", "proxies", "config"] {
        let png = shots.join(format!("{page}.png"));
        assert!(
            std::fs::metadata(&png)
                .map(|m| m.len() > 10_000)
                .unwrap_or(false),
            "{page} screenshot"
        );
    }
    println!("dashboard screenshots in {}", shots.display());
    std::fs::remove_file(config_dir.join("broken.yaml")).unwrap();
}

/// `--access-log-file`: every entry as a JSON line, rotated by size.
fn json_access_log(file: &std::path::Path) {
    std::thread::sleep(Duration::from_millis(1500));
    let mut lines = Vec::new();
    let files: Vec<std::path::PathBuf> = std::iter::once(file.to_path_buf())
        .chain((1..=20).map(|i| file.with_extension(format!("log.{i}"))))
        .filter(|f| f.exists())
        .collect();
    println!("JSON access log files: {}", files.len());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        if f != file {
            assert!(std::fs::metadata(&f)
                .map(|m| m.len() <= 16384)
                .unwrap_or(true));
        }
        for l in text.lines() {
            lines.push(
                serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{l}: {e}")),
            );
        }
    }
    assert!(
        file.with_extension("log.1").exists(),
        "no rotation at 16 KiB"
    );
    let n503 = lines
        .iter()
        .filter(|l| {
            l["reporter"] == "source"
                && l["source_workload"] == "a"
                && l["destination_service"] == "b.default.svc.cluster.local"
                && l["response_code"] == "503"
                && l["method"] == "GET"
                && l["path"] == "/?status=503"
        })
        .count();
    println!(
        "JSON access log: {} lines kept, {n503} for a -> b 503",
        lines.len()
    );
    assert_eq!(n503, 5, "the 503s in the JSON log");
    assert!(lines.iter().any(|l| l["protocol"] == "tcp"
        && l["event"] == "TcpConnectionEnd"
        && l["destination_workload"] == "d-1"));
    assert!(lines.iter().all(|l| !l.to_string().contains("PRIVATE KEY")));
}

/// On the TLS port the sink takes a log stream only with a mesh certificate whose identity is
/// the one the node claims: a proxy reports only as itself.
#[tokio::test]
async fn the_tls_sink_takes_only_a_proxy_reporting_as_itself() {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_client::AccessLogServiceClient;
    use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::{
        HttpAccessLogEntries, Identifier, LogEntries,
    };
    use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    let dir = tempfile::tempdir().unwrap();
    let cp = tokio::task::spawn_blocking({
        let d = dir.path().to_path_buf();
        move || ControlPlane::start_local(&d, &[])
    })
    .await
    .unwrap();
    let ca = pilotfish::ca::Ca::load_or_create(&pilotfish::ca::CaConfig {
        state_dir: cp.state_dir(),
        ..Default::default()
    })
    .unwrap();
    let svid = ca
        .mint(
            &pilotfish::ca::Identity {
                namespace: "default".into(),
                service_account: "a".into(),
            },
            Duration::from_secs(600),
        )
        .unwrap();
    let root = std::fs::read_to_string(cp.state_dir().join("root-cert.pem")).unwrap();
    let channel = |cert: bool| {
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&root))
            .domain_name("pilotfish");
        if cert {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                &svid.cert_chain_pem,
                &svid.key_pem,
            ));
        }
        tonic::transport::Channel::from_shared(format!("https://{}", cp.secure_address))
            .unwrap()
            .tls_config(tls)
            .unwrap()
    };
    let message = |sa: &str| {
        let meta = |v: &str| Value {
            kind: Some(Kind::StringValue(v.into())),
        };
        StreamAccessLogsMessage {
            identifier: Some(Identifier {
                node: Some(Node {
                    id: "sidecar~10.9.9.9~a.default~default.svc.cluster.local".into(),
                    metadata: Some(Struct {
                        fields: [
                            ("NAMESPACE".to_string(), meta("default")),
                            ("SERVICE_ACCOUNT".to_string(), meta(sa)),
                        ]
                        .into(),
                    }),
                    ..Default::default()
                }),
                log_name: "pilotfish-outbound".into(),
            }),
            log_entries: Some(LogEntries::HttpLogs(HttpAccessLogEntries {
                log_entry: vec![als::entry(
                    "10.9.9.9",
                    "10.9.9.10",
                    "outbound|80||x.default.svc.cluster.local",
                    200,
                    5,
                )],
            })),
        }
    };
    let send = |ch: tonic::transport::Endpoint, m: StreamAccessLogsMessage| async move {
        let mut c = AccessLogServiceClient::new(ch.connect().await.unwrap());
        c.stream_access_logs(tokio_stream::iter(vec![m])).await
    };
    let status = || {
        let v: serde_json::Value =
            serde_json::from_str(&cp.get("/debug/telemetryz").unwrap().1).unwrap();
        (
            v["entries"].as_u64().unwrap(),
            v["refused_streams"].as_u64().unwrap(),
        )
    };
    // As itself: taken.
    let r = send(channel(true), message("a")).await;
    assert!(r.is_ok(), "{r:?}");
    let taken = wait_until(Duration::from_secs(5), || status().0 == 1);
    assert!(taken, "the entry was not taken: {:?}", status());
    // Claiming another service account than its certificate's: refused.
    let r = send(channel(true), message("b")).await;
    assert_eq!(
        r.as_ref().err().map(|s| s.code()),
        Some(tonic::Code::PermissionDenied),
        "{r:?}"
    );
    // Without a certificate: refused.
    let r = send(channel(false), message("a")).await;
    assert_eq!(
        r.as_ref().err().map(|s| s.code()),
        Some(tonic::Code::PermissionDenied),
        "{r:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status(), (1, 2), "one entry taken, two streams refused");
}

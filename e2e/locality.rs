//! Locality-aware load balancing with real Envoy pods: a client in us-east/zone1 sends all
//! its traffic to the endpoint of its own zone; when that endpoint fails, outlier detection
//! ejects it and traffic fails over to the next priority (another region); when it heals,
//! traffic comes back. The same with `failoverPriority` (labels shared with the client
//! rather than localities), and `distribute` weights measured on real traffic.
#[path = "support/mod.rs"]
mod support;

use std::time::Duration;
use support::{need_root, wait_until, write_file as write, ControlPlane, Mesh, Pod, PodSpec};

const READY: Duration = Duration::from_secs(40);

/// Service b with two WorkloadEntries, `first` (host 11) and `second` (host 12), each
/// with its extra labels or locality, and a DestinationRule with outlier detection and
/// `lb` as its load balancer (indented YAML under `loadBalancer:`, may be empty).
fn config(mesh: &Mesh, first: &str, second: &str, lb: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec:\n  clusterIP: {vb}\n  selector: {{app: b}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: b-first}}\nspec:\n  address: {a1}\n{first}---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: b-second}}\nspec:\n  address: {a2}\n{second}---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: b}}\nspec:\n  host: b\n  trafficPolicy:\n    outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3s, maxEjectionPercent: 100}}\n{lb}",
        vb = mesh.vip(0),
        a1 = mesh.addr(11),
        a2 = mesh.addr(12),
    )
}

/// Who answers `n` requests from `a`: (first, second, failed).
fn answers(a: &Pod, n: usize) -> (usize, usize, usize) {
    let (mut first, mut second, mut failed) = (0, 0, 0);
    for _ in 0..n {
        let (code, body) = a.curl("http://b:8080/", &["-m", "5"]);
        let name = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["name"].as_str().map(str::to_string))
            .unwrap_or_default();
        match (code, name.as_str()) {
            (200, "b-first") => first += 1,
            (200, "b-second") => second += 1,
            _ => failed += 1,
        }
    }
    (first, second, failed)
}

/// Starts the two b pods (the first fails while the returned file exists) and the client
/// `a` (with `client` applied to its spec), and waits until a reaches b.
fn start(
    mesh: &Mesh,
    cp: &ControlPlane,
    client: impl FnOnce(PodSpec) -> PodSpec,
) -> (Vec<Pod>, Pod, std::path::PathBuf) {
    let fail = mesh.dir().join("b-first-fails");
    let first = mesh.start_pod(
        PodSpec::new("b-first")
            .host(11)
            .label("app", "b")
            .control_plane(cp)
            .app_arg("--fail-file")
            .app_arg(fail.to_str().unwrap()),
    );
    let second = mesh.start_pod(
        PodSpec::new("b-second")
            .host(12)
            .label("app", "b")
            .control_plane(cp),
    );
    let a = mesh.start_pod(client(PodSpec::new("a").host(10).control_plane(cp)));
    a.hosts(&[("b", &mesh.vip(0).to_string())]);
    let up = wait_until(READY, || a.curl("http://b:8080/", &["-m", "5"]).0 == 200);
    assert!(up, "{}\n{}", cp.log_tail(20), a.logs());
    (vec![first, second], a, fail)
}

/// All traffic on the first endpoint; when it fails, outlier detection ejects it and
/// traffic moves to the second; when it heals, traffic comes back.
fn fails_over_and_back(a: &Pod, fail: &std::path::Path) {
    let (first, second, failed) = answers(a, 30);
    println!("healthy: first {first}, second {second}, failed {failed}");
    assert_eq!((first, second, failed), (30, 0, 0));

    std::fs::write(fail, "").unwrap();
    let moved = wait_until(Duration::from_secs(20), || answers(a, 10) == (0, 10, 0));
    assert!(moved, "no failover: {:?}", answers(a, 10));
    let ejected = a
        .envoy_stat("cluster.outbound|8080||b.default.svc.cluster.local.outlier_detection.ejections_enforced_total")
        .unwrap_or(0);
    assert!(ejected >= 1, "outlier detection ejected the first endpoint");

    std::fs::remove_file(fail).unwrap();
    let back = wait_until(Duration::from_secs(30), || answers(a, 10) == (10, 0, 0));
    assert!(back, "traffic did not come back: {:?}", answers(a, 10));
    println!("failover and return: ejections {ejected}");
}

#[test]
fn traffic_stays_local_fails_over_and_comes_back() {
    if !need_root("locality") {
        return;
    }
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &mesh,
        "  locality: us-east/zone1\n  labels: {app: b}\n",
        "  labels: {app: b, topology.kubernetes.io/region: us-west, topology.kubernetes.io/zone: zone1}\n",
        "",
    );
    write(dir.path(), "registry.yaml", &cfg);
    let cp = ControlPlane::start_with(&mesh, dir.path(), &["--debounce-ms", "50"]);
    let (_b, a, fail) = start(&mesh, &cp, |p| p.locality("us-east/zone1/sub1"));
    fails_over_and_back(&a, &fail);
}

/// `failoverPriority: [rack]`: the endpoint of the client's rack first, whatever the
/// localities (both are in the same zone here, and the client has none).
#[test]
fn failover_priority_prefers_the_clients_rack() {
    if !need_root("locality") {
        return;
    }
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &mesh,
        "  locality: us-east/zone1\n  labels: {app: b, rack: r1}\n",
        "  locality: us-east/zone1\n  labels: {app: b, rack: r2}\n",
        "    loadBalancer:\n      localityLbSetting:\n        failoverPriority: [rack]\n",
    );
    write(dir.path(), "registry.yaml", &cfg);
    let cp = ControlPlane::start_with(&mesh, dir.path(), &["--debounce-ms", "50"]);
    let (_b, a, fail) = start(&mesh, &cp, |p| p.label("rack", "r1"));
    fails_over_and_back(&a, &fail);
}

/// `distribute`: a client in us-east/zone1 sends 80% to its zone and 20% to us-west.
#[test]
fn distribute_weighs_real_traffic() {
    if !need_root("locality") {
        return;
    }
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &mesh,
        "  locality: us-east/zone1\n  labels: {app: b}\n",
        "  locality: us-west/zone1\n  labels: {app: b}\n",
        "    loadBalancer:\n      localityLbSetting:\n        distribute:\n        - from: us-east/zone1/*\n          to: {\"us-east/zone1/*\": 80, \"us-west/*\": 20}\n",
    );
    write(dir.path(), "registry.yaml", &cfg);
    let cp = ControlPlane::start_with(&mesh, dir.path(), &["--debounce-ms", "50"]);
    let (_b, a, _fail) = start(&mesh, &cp, |p| p.locality("us-east/zone1/sub1"));
    let (east, west, failed) = answers(&a, 200);
    println!("distribute 80/20: us-east {east}, us-west {west}, failed {failed}");
    assert_eq!(failed, 0);
    // 80/20 in expectation; the bounds are several standard deviations wide.
    assert!((130..=185).contains(&east), "us-east {east} of 200");
}

//! Locality-aware load balancing with real Envoy pods: a client in us-east/zone1 sends all
//! its traffic to the endpoint of its own zone; when that endpoint fails, outlier detection
//! ejects it and traffic fails over to the next priority (another region); when it heals,
//! traffic comes back.
#[path = "support/mod.rs"]
mod support;

use std::time::Duration;
use support::{need_root, wait_until, write_file as write, ControlPlane, Mesh, Pod, PodSpec};

const READY: Duration = Duration::from_secs(40);

fn config(mesh: &Mesh) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec:\n  clusterIP: {vb}\n  selector: {{app: b}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: b-local}}\nspec:\n  address: {local}\n  locality: us-east/zone1\n  labels: {{app: b}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: b-remote}}\nspec:\n  address: {remote}\n  labels: {{app: b, topology.kubernetes.io/region: us-west, topology.kubernetes.io/zone: zone1}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: b}}\nspec:\n  host: b\n  trafficPolicy:\n    outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3s, maxEjectionPercent: 100}}\n",
        vb = mesh.vip(0),
        local = mesh.addr(11),
        remote = mesh.addr(12),
    )
}

/// Who answers `n` requests from `a`: (local, remote, failed).
fn answers(a: &Pod, n: usize) -> (usize, usize, usize) {
    let (mut local, mut remote, mut failed) = (0, 0, 0);
    for _ in 0..n {
        let (code, body) = a.curl("http://b:8080/", &["-m", "5"]);
        let name = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["name"].as_str().map(str::to_string))
            .unwrap_or_default();
        match (code, name.as_str()) {
            (200, "b-local") => local += 1,
            (200, "b-remote") => remote += 1,
            _ => failed += 1,
        }
    }
    (local, remote, failed)
}

#[test]
fn traffic_stays_local_fails_over_and_comes_back() {
    if !need_root("locality") {
        return;
    }
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "registry.yaml", &config(&mesh));
    let cp = ControlPlane::start_with(&mesh, dir.path(), &["--debounce-ms", "50"]);
    let fail = mesh.dir().join("b-local-fails");
    let _local = mesh.start_pod(
        PodSpec::new("b-local")
            .host(11)
            .label("app", "b")
            .control_plane(&cp)
            .app_arg("--fail-file")
            .app_arg(fail.to_str().unwrap()),
    );
    let _remote = mesh.start_pod(
        PodSpec::new("b-remote")
            .host(12)
            .label("app", "b")
            .control_plane(&cp),
    );
    let a = mesh.start_pod(
        PodSpec::new("a")
            .host(10)
            .locality("us-east/zone1/sub1")
            .control_plane(&cp),
    );
    a.hosts(&[("b", &mesh.vip(0).to_string())]);
    let up = wait_until(READY, || a.curl("http://b:8080/", &["-m", "5"]).0 == 200);
    assert!(up, "{}\n{}", cp.log_tail(20), a.logs());

    // Healthy: every request stays in the client's zone.
    let (local, remote, failed) = answers(&a, 30);
    println!("healthy: local {local}, remote {remote}, failed {failed}");
    assert_eq!((local, remote, failed), (30, 0, 0));

    // The local endpoint fails: ejected, and traffic goes to the next priority.
    std::fs::write(&fail, "").unwrap();
    let moved = wait_until(Duration::from_secs(20), || answers(&a, 10) == (0, 10, 0));
    assert!(moved, "no failover: {:?}", answers(&a, 10));
    let ejected = a
        .envoy_stat("cluster.outbound|8080||b.default.svc.cluster.local.outlier_detection.ejections_enforced_total")
        .unwrap_or(0);
    assert!(ejected >= 1, "outlier detection ejected the local endpoint");

    // It heals: after the ejection time, traffic comes back.
    std::fs::remove_file(&fail).unwrap();
    let back = wait_until(Duration::from_secs(30), || answers(&a, 10) == (10, 0, 0));
    assert!(back, "traffic did not come back: {:?}", answers(&a, 10));
    println!("failover and return: ejections {ejected}");
}

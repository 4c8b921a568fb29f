//! DNS without an agent: a pod's app resolves through its own stock Envoy (the DNS filter
//! listener pilotfish sends, UDP 53 redirected by `pilotfish iptables --redirect-dns`):
//! mesh names, a ServiceEntry host with no address (an auto-allocated virtual IP, stable
//! across a pilotfish restart), and an outside name forwarded to the pod's resolver.
#[path = "support/mod.rs"]
mod support;

use std::time::Duration;
use support::{need_root, wait_until, write_file as write, ControlPlane, Mesh, Pod, PodSpec};

const READY: Duration = Duration::from_secs(40);

/// IPv4 addresses `getent ahostsv4 NAME` gives in the pod (empty when it does not resolve).
fn resolve(p: &Pod, name: &str) -> Vec<String> {
    let o = p.exec(&format!("getent ahostsv4 {name}"));
    let mut v: Vec<String> = o
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    v.sort();
    v.dedup();
    v
}

fn config(mesh: &Mesh) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec:\n  clusterIP: {vb}\n  selector: {{app: b}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: b-1}}\nspec:\n  address: {b}\n  labels: {{app: b}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ext}}\nspec:\n  hosts: [api.ext.example]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints: [{{address: {ext}, ports: {{http: 8080}}}}]\n",
        vb = mesh.vip(0),
        b = mesh.addr(11),
        ext = mesh.addr(13),
    )
}

#[test]
fn sidecar_answers_dns_without_an_agent() {
    if !need_root("dns") {
        return;
    }
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "registry.yaml", &config(&mesh));
    let mut cp = ControlPlane::start_with(&mesh, dir.path(), &["--debounce-ms", "50"]);
    let outside = mesh.addr(77).to_string();
    let resolver = mesh.start_pod(
        PodSpec::new("resolver")
            .host(12)
            .sidecar(false)
            .app_arg("--dns-port")
            .app_arg("53")
            .app_arg("--dns-answer")
            .app_arg(&format!("outside.example={outside}")),
    );
    let _b = mesh.start_pod(PodSpec::new("b").host(11).control_plane(&cp));
    let _ext = mesh.start_pod(PodSpec::new("ext").host(13).sidecar(false));
    let a = mesh.start_pod(
        PodSpec::new("a")
            .host(10)
            .control_plane(&cp)
            .dns()
            .nameserver(&resolver.ip.to_string()),
    );

    // A mesh service, by its full name and a short form.
    let vip = mesh.vip(0).to_string();
    let ok = wait_until(READY, || {
        resolve(&a, "b.default.svc.cluster.local") == vec![vip.clone()]
    });
    assert!(
        ok,
        "b.default.svc.cluster.local: {:?}\n{}\n{}",
        resolve(&a, "b.default.svc.cluster.local"),
        cp.log_tail(20),
        a.logs()
    );
    assert_eq!(resolve(&a, "b.default"), vec![vip.clone()]);
    // The global name: the same service (across clusters), in DNS and in routing.
    assert_eq!(resolve(&a, "b.default.global"), vec![vip.clone()]);
    let (code, body) = a.curl("http://b.default.global:8080/", &["-m", "5"]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"b\""), "{body}");
    let (code, body) = a.curl("http://b.default.svc.cluster.local:8080/", &["-m", "5"]);
    assert_eq!(code, 200, "{body}");

    // A ServiceEntry host without addresses: an address from 240.240.0.0/16, and traffic to
    // it reaches the entry's endpoint through the sidecar.
    let auto = resolve(&a, "api.ext.example");
    assert_eq!(auto.len(), 1, "{auto:?}");
    assert!(auto[0].starts_with("240.240."), "{auto:?}");
    let (code, body) = a.curl("http://api.ext.example/", &["-m", "5"]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"ext\""), "answered by ext: {body}");

    // Anything else goes to the pod's own resolver (as the proxy: not captured again).
    assert_eq!(resolve(&a, "outside.example"), vec![outside.clone()]);
    assert!(resolve(&a, "nowhere.example").is_empty());
    let log = std::fs::read_to_string(resolver.app_log()).unwrap_or_default();
    assert!(
        log.contains("dns query outside.example"),
        "the resolver saw the forwarded query:\n{log}"
    );
    assert!(
        !log.contains("dns query b.default"),
        "mesh names are answered by the sidecar, not forwarded:\n{log}"
    );
    let answered: u64 = a
        .envoy_stats("dns")
        .iter()
        .filter(|(k, _)| k.ends_with("local_a_record_answers"))
        .map(|(_, v)| *v)
        .sum();
    println!(
        "sidecar DNS: {answered} local A answers; api.ext.example = {}",
        auto[0]
    );
    assert!(
        answered >= 3,
        "the sidecar answered: {:?}",
        a.envoy_stats("dns")
    );

    // The allocation is stable across a restart of pilotfish.
    cp.restart();
    let again = wait_until(READY, || {
        let (code, _) = a.curl("http://b.default.svc.cluster.local:8080/", &["-m", "5"]);
        code == 200
    });
    assert!(again, "{}", cp.log_tail(20));
    assert_eq!(
        resolve(&a, "api.ext.example"),
        auto,
        "same address after a restart"
    );
}

/// The Sidecar resource's listeners with real pods: b's app listens on 8080 while its
/// service port is 9080 (an ingress listener with `defaultEndpoint: 127.0.0.1:8080`), and a
/// client whose Sidecar has an egress listener on 9080 for `b` only (REGISTRY_ONLY) reaches
/// b but not c, which shares the port; a client whose egress listener is bound on loopback
/// (`bind: 127.0.0.1`, `captureMode: NONE`) calls it directly.
#[test]
fn sidecar_ingress_and_per_port_egress_listeners() {
    if !need_root("sidecar listeners") {
        return;
    }
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec:\n  clusterIP: {vb}\n  selector: {{app: b}}\n  ports: [{{name: http, port: 9080}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: b-1}}\nspec:\n  address: {b}\n  labels: {{app: b}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: c}}\nspec:\n  clusterIP: {vc}\n  selector: {{app: c}}\n  ports: [{{name: http, port: 9080}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: c-1}}\nspec:\n  address: {c}\n  ports: {{http: 8080}}\n  labels: {{app: c}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: b}}\nspec:\n  workloadSelector: {{labels: {{app: b}}}}\n  ingress:\n  - port: {{number: 9080, protocol: HTTP, name: http}}\n    defaultEndpoint: 127.0.0.1:8080\n---\n\
         apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: a}}\nspec:\n  workloadSelector: {{labels: {{app: a}}}}\n  outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}\n  egress:\n  - port: {{number: 9080, protocol: HTTP, name: http}}\n    hosts: [./b]\n  - hosts: [./c]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: d}}\nspec:\n  workloadSelector: {{labels: {{app: d}}}}\n  egress:\n  - port: {{number: 9080, protocol: HTTP, name: http}}\n    bind: 127.0.0.1\n    captureMode: NONE\n    hosts: [./b]\n",
        vb = mesh.vip(0),
        vc = mesh.vip(1),
        b = mesh.addr(11),
        c = mesh.addr(12),
    );
    write(dir.path(), "registry.yaml", &config);
    let cp = ControlPlane::start_with(&mesh, dir.path(), &["--debounce-ms", "50"]);
    let _b = mesh.start_pod(PodSpec::new("b").host(11).control_plane(&cp));
    let _c = mesh.start_pod(PodSpec::new("c").host(12).control_plane(&cp));
    let a = mesh.start_pod(PodSpec::new("a").host(10).control_plane(&cp));
    a.hosts(&[
        ("b", &mesh.vip(0).to_string()),
        ("c", &mesh.vip(1).to_string()),
    ]);
    // b's service port 9080 reaches its app on 8080 through the ingress listener.
    let ok = wait_until(READY, || {
        let (code, body) = a.curl("http://b:9080/", &["-m", "5"]);
        code == 200 && body.contains("\"b\"")
    });
    assert!(
        ok,
        "{:?}\n{}",
        a.curl("http://b:9080/", &["-m", "5"]),
        cp.log_tail(20)
    );
    // c on the same port is not in a's 9080 listener: REGISTRY_ONLY blocks it.
    let (code, body) = a.curl("http://c:9080/", &["-m", "5"]);
    assert_eq!(
        code, 502,
        "c is outside a's egress listener on 9080: {body}"
    );
    let dump = a.envoy_admin("/config_dump");
    assert!(
        dump.contains("outbound|9080||c.default.svc.cluster.local"),
        "c's cluster is still there (the catch-all listener sees it)"
    );

    // d's Sidecar binds its 9080 egress listener on loopback (captureMode NONE): the app
    // calls 127.0.0.1:9080 itself and reaches b by its Host.
    let d = mesh.start_pod(PodSpec::new("d").host(13).control_plane(&cp));
    let ok = wait_until(READY, || {
        let (code, body) = d.curl("http://127.0.0.1:9080/", &["-m", "5", "-H", "Host: b"]);
        code == 200 && body.contains("\"b\"")
    });
    assert!(
        ok,
        "{:?}\n{}",
        d.curl("http://127.0.0.1:9080/", &["-m", "5", "-H", "Host: b"]),
        d.logs()
    );
    let dump = d.envoy_admin("/config_dump");
    assert!(
        dump.contains("127.0.0.1_9080"),
        "the listener is named by its bind address"
    );
    assert!(
        !dump.contains("\"0.0.0.0_9080\""),
        "no capturing 9080 listener besides the bound one"
    );
}

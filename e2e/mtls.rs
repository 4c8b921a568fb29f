//! Citadel end to end: real pods whose stock Envoy sidecars authenticate to pilotfish's TLS
//! xDS port with bearer tokens, get their SPIFFE certificates over SDS, and speak mutual TLS
//! to each other; PeerAuthentication STRICT/PERMISSIVE; an impostor gets nothing;
//! certificates rotate under traffic; a restart keeps the root; nothing leaks.
#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::{need_root, wait_until, write_file as write, ControlPlane, Mesh, Pod, PodSpec};

const READY: Duration = Duration::from_secs(40);
const SPIFFE_A: &str = "spiffe://cluster.local/ns/default/sa/a";

fn registry(mesh: &Mesh, b: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec:\n  clusterIP: {vip}\n  selector: {{app: b}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: b-1}}\nspec:\n  address: {b}\n  serviceAccount: b\n  labels: {{app: b, security.istio.io/tlsMode: istio}}\n",
        vip = mesh.vip(0)
    )
}

fn connected(p: &Pod) -> bool {
    p.envoy_stat("control_plane.connected_state") == Some(1)
}

/// A request from A to B through both sidecars: (status, body).
fn call_b(a: &Pod) -> (u16, String) {
    a.curl("http://b:8080/", &["-m", "5"])
}

fn xfcc(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["headers"].as_object().cloned())
        .and_then(|h| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("x-forwarded-client-cert"))
                .map(|(_, v)| v.to_string())
        })
        .unwrap_or_default()
}

/// Serial numbers of the certificates an Envoy holds (admin /certs).
fn serials(p: &Pod) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&p.envoy_admin("/certs")).unwrap_or_default();
    let mut out = Vec::new();
    for c in v["certificates"].as_array().into_iter().flatten() {
        for cc in c["cert_chain"].as_array().into_iter().flatten() {
            if let Some(s) = cc["serial_number"].as_str() {
                out.push(s.to_string());
            }
        }
    }
    out
}

struct Bed {
    mesh: Mesh,
    dir: tempfile::TempDir,
    cp: ControlPlane,
    a: Pod,
    b: Pod,
}

fn bed(extra: &[&str]) -> Bed {
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    let b_ip = mesh.addr(11).to_string();
    write(dir.path(), "registry.yaml", &registry(&mesh, &b_ip));
    let mut args = vec!["--debounce-ms", "50"];
    args.extend_from_slice(extra);
    let cp = ControlPlane::start_with(&mesh, dir.path(), &args);
    let b = mesh.start_pod(PodSpec::new("b").host(11).service_account("b").secure(&cp));
    let a = mesh.start_pod(PodSpec::new("a").host(10).service_account("a").secure(&cp));
    a.hosts(&[("b", &mesh.vip(0).to_string())]);
    let ok = wait_until(READY, || {
        connected(&a) && connected(&b) && call_b(&a).0 == 200
    });
    assert!(
        ok,
        "A never reached B over the mesh: {:?}\n{}",
        call_b(&a),
        cp.log_tail(30)
    );
    Bed {
        mesh,
        dir,
        cp,
        a,
        b,
    }
}

/// No debug page, metric or log line holds a private key or a token.
fn assert_no_leaks(bed: &Bed, tokens: &[String]) {
    let mut pages = Vec::new();
    for p in [
        "/metrics",
        "/debug/syncz",
        "/debug/adsz",
        "/debug/configz",
        "/debug/registryz",
        "/debug/endpointz",
        "/debug/clusterz",
        "/debug/push_status",
        "/debug/certz",
        "/debug/config_dump?proxyID=a",
        "/debug/config_dump?proxyID=b",
    ] {
        let (code, body) = bed.cp.get(p).unwrap();
        assert_eq!(code, 200, "{p}");
        pages.push((p.to_string(), body));
    }
    pages.push((
        "log".into(),
        std::fs::read_to_string(bed.cp.log_path()).unwrap(),
    ));
    for (name, body) in &pages {
        assert!(
            !body.contains("PRIVATE KEY"),
            "{name} contains a private key"
        );
        for t in tokens {
            assert!(!body.contains(t.as_str()), "{name} contains a token");
            let sig = t.rsplit('.').next().unwrap();
            assert!(!body.contains(sig), "{name} contains a token signature");
        }
    }
    let page = |p: &str| &pages.iter().find(|(n, _)| n == p).unwrap().1;
    // The pages say what they claim: a's config in Envoy's JSON form, the registry, endpoints.
    let dump: serde_json::Value =
        serde_json::from_str(page("/debug/config_dump?proxyID=a")).unwrap();
    let types: Vec<&str> = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["@type"].as_str())
        .collect();
    assert!(
        types.contains(&"type.googleapis.com/envoy.admin.v3.ClustersConfigDump"),
        "{types:?}"
    );
    assert!(
        page("/debug/config_dump?proxyID=a").contains("outbound|8080||b.default.svc.cluster.local")
    );
    assert!(page("/debug/registryz").contains("b.default.svc.cluster.local"));
    assert!(page("/debug/endpointz").contains(&bed.b.ip.to_string()));
    let certz = page("/debug/certz");
    assert!(
        certz.contains(SPIFFE_A) && certz.contains("serial"),
        "certz lists issued certificates: {certz}"
    );
}

fn pod_token(p: &Pod) -> String {
    std::fs::read_to_string(p.dir().join("token")).unwrap()
}

#[test]
fn mtls_between_sidecars_then_strict_refuses_plaintext() {
    if !need_root("mtls_between_sidecars_then_strict_refuses_plaintext") {
        return;
    }
    let bed = bed(&[]);
    // a) A → B over mTLS: B's sidecar verified A's certificate and told the app who called.
    let (code, body) = call_b(&bed.a);
    assert_eq!(code, 200, "{body}");
    let x = xfcc(&body);
    assert!(
        x.contains(&format!("URI={SPIFFE_A}")),
        "B's sidecar saw A's SPIFFE ID: {x:?}"
    );
    assert!(bed
        .b
        .envoy_stats("ssl.handshake")
        .iter()
        .any(|(k, v)| k.contains("15006") && *v > 0));
    // b) PERMISSIVE (the default): plaintext from outside the mesh also works on the port.
    let outsider = bed.mesh.plain_pod("outsider");
    let b_url = format!("http://{}:8080/", bed.b.ip);
    let (pc, pbody) = outsider.curl(&b_url, &["-m", "5"]);
    assert_eq!(pc, 200, "PERMISSIVE accepts plaintext: {pbody}");
    assert!(
        xfcc(&pbody).is_empty(),
        "a plaintext caller has no verified identity"
    );
    // A forged x-forwarded-client-cert from a plaintext client is dropped.
    let (_, forged) = outsider.curl(
        &b_url,
        &[
            "-m",
            "5",
            "-H",
            "x-forwarded-client-cert: URI=spiffe://cluster.local/ns/default/sa/admin",
        ],
    );
    assert!(
        !forged.contains("sa/admin"),
        "forged identity header reached the app: {forged}"
    );
    // STRICT on B's namespace: plaintext is refused, mTLS still works.
    write(
        bed.dir.path(),
        "strict.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default}\nspec:\n  mtls: {mode: STRICT}\n",
    );
    let refused = wait_until(READY, || outsider.curl(&b_url, &["-m", "3"]).0 != 200);
    assert!(refused, "STRICT must refuse plaintext");
    for _ in 0..5 {
        assert_ne!(outsider.curl(&b_url, &["-m", "3"]).0, 200);
        let (c, body) = call_b(&bed.a);
        assert_eq!(c, 200, "mTLS keeps working under STRICT: {body}");
    }
    // Back to PERMISSIVE on port 8080 only (workload selector + port level).
    write(
        bed.dir.path(),
        "strict.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default}\nspec:\n  mtls: {mode: STRICT}\n---\n\
         apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: b}\nspec:\n  selector: {matchLabels: {app: b}}\n  portLevelMtls:\n    \"8080\": {mode: PERMISSIVE}\n",
    );
    assert!(
        wait_until(READY, || outsider.curl(&b_url, &["-m", "3"]).0 == 200),
        "port-level PERMISSIVE"
    );
    assert_eq!(call_b(&bed.a).0, 200);
    for p in [&bed.a, &bed.b] {
        for (k, v) in p.envoy_stats("update_rejected") {
            assert_eq!(v, 0, "{}: {k}", p.name);
        }
    }
    assert_no_leaks(&bed, &[pod_token(&bed.a), pod_token(&bed.b)]);
}

#[test]
fn a_token_for_c_cannot_get_bs_certificate() {
    if !need_root("a_token_for_c_cannot_get_bs_certificate") {
        return;
    }
    let bed = bed(&[]);
    // A pod that claims to be B but holds C's token.
    let impostor = bed.mesh.start_pod(
        PodSpec::new("impostor")
            .host(12)
            .service_account("b")
            .secure(&bed.cp)
            .token_of("c"),
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_ne!(
        impostor.envoy_stat("control_plane.connected_state"),
        Some(1),
        "the impostor must not be served"
    );
    assert!(
        serials(&impostor).is_empty(),
        "the impostor holds no certificate"
    );
    let log = std::fs::read_to_string(bed.cp.log_path()).unwrap();
    assert!(
        log.contains("node identity differs from the token"),
        "the refusal is logged"
    );
    let (_, metrics) = bed.cp.get("/metrics").unwrap();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("pilotfish_xds_auth_refusals_total{reason=\"identity_mismatch\"}")
            && !l.ends_with(" 0")),
        "refusals are counted"
    );
    let (_, certz) = bed.cp.get("/debug/certz").unwrap();
    assert!(
        !certz.contains("impostor"),
        "no certificate went to the impostor: {certz}"
    );
    // Its connection attempts as B fail: B (STRICT) refuses it, since it has no certificate.
    write(
        bed.dir.path(),
        "strict.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default}\nspec:\n  mtls: {mode: STRICT}\n",
    );
    let b_url = format!("http://{}:8080/", bed.b.ip);
    assert!(wait_until(READY, || impostor.curl(&b_url, &["-m", "3"]).0 != 200));
    assert_eq!(call_b(&bed.a).0, 200, "the real mesh keeps working");
}

#[test]
fn certificates_rotate_under_traffic_and_survive_a_restart() {
    if !need_root("certificates_rotate_under_traffic_and_survive_a_restart") {
        return;
    }
    // d) one-minute certificates: re-minted at 30 s.
    let mut bed = bed(&["--workload-cert-ttl", "1m"]);
    let (a0, b0) = (serials(&bed.a), serials(&bed.b));
    assert!(
        !a0.is_empty() && !b0.is_empty(),
        "both sidecars hold a certificate"
    );
    // A request loop across the rotation (inside A, one process): every request must pass.
    let script = "import time,urllib.request\nok=fail=0\nend=time.time()+45\nwhile time.time()<end:\n    try:\n        r=urllib.request.urlopen('http://b:8080/',timeout=5); ok+= r.status==200; fail+= r.status!=200\n    except Exception as e:\n        fail+=1\n    time.sleep(0.1)\nprint(ok,fail)\n";
    let start = Instant::now();
    let out = bed
        .a
        .exec(&format!("python3 -c \"{}\"", script.replace('"', "\\\"")));
    let counts: Vec<u64> = out
        .stdout
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert_eq!(counts.len(), 2, "loop output: {}", out.describe());
    assert!(counts[0] > 100, "requests made: {counts:?}");
    assert_eq!(
        counts[1], 0,
        "no request may fail across a rotation: {counts:?}"
    );
    assert!(start.elapsed() >= Duration::from_secs(40));
    let (a1, b1) = (serials(&bed.a), serials(&bed.b));
    assert!(
        a1.iter().all(|s| !a0.contains(s)),
        "A got a new certificate before expiry: {a0:?} → {a1:?}"
    );
    assert!(
        b1.iter().all(|s| !b0.contains(s)),
        "B got a new certificate before expiry: {b0:?} → {b1:?}"
    );
    let (_, m) = bed.cp.get("/metrics").unwrap();
    assert!(
        m.lines()
            .any(|l| l.starts_with("pilotfish_cert_rotations_total") && !l.ends_with(" 0")),
        "rotations counted"
    );
    // e) restart: same root, mTLS keeps working, proxies reconnect.
    let root = std::fs::read_to_string(bed.cp.state_dir().join("root-cert.pem")).unwrap();
    bed.cp.restart();
    assert_eq!(
        std::fs::read_to_string(bed.cp.state_dir().join("root-cert.pem")).unwrap(),
        root
    );
    assert_eq!(call_b(&bed.a).0, 200, "existing mTLS keeps working");
    assert!(
        wait_until(READY, || connected(&bed.a) && connected(&bed.b)),
        "proxies reconnect"
    );
    let (c, body) = call_b(&bed.a);
    assert_eq!(c, 200);
    assert!(xfcc(&body).contains(SPIFFE_A));
    for p in [&bed.a, &bed.b] {
        for (k, v) in p.envoy_stats("update_rejected") {
            assert_eq!(v, 0, "{}: {k}", p.name);
        }
    }
    assert_no_leaks(&bed, &[pod_token(&bed.a), pod_token(&bed.b)]);
}

#[test]
fn root_rotation_under_traffic_without_failures() {
    if !need_root("root_rotation_under_traffic_without_failures") {
        return;
    }
    let bed = bed(&["--root-rotation-grace", "4s"]);
    let (a0, b0) = (serials(&bed.a), serials(&bed.b));
    let old_root = std::fs::read_to_string(bed.cp.state_dir().join("root-cert.pem")).unwrap();
    // Requests A → B for 20 s while the root rotates.
    let script = "import time,urllib.request\nok=fail=0\nend=time.time()+20\nwhile time.time()<end:\n    try:\n        r=urllib.request.urlopen('http://b:8080/',timeout=5); ok+= r.status==200; fail+= r.status!=200\n    except Exception as e:\n        fail+=1\n    time.sleep(0.1)\nprint(ok,fail)\n";
    let loop_thread = {
        let netns = bed.a.netns.clone();
        let script = script.to_string();
        std::thread::spawn(move || {
            std::process::Command::new("ip")
                .args(["netns", "exec", &netns, "python3", "-c", &script])
                .output()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pilotfish"))
        .args(["rotate-root", "--state-dir"])
        .arg(bed.cp.state_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = loop_thread.join().unwrap();
    let counts: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert_eq!(counts.len(), 2, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(counts[0] > 50, "{counts:?}");
    assert_eq!(
        counts[1], 0,
        "no request may fail during a root rotation: {counts:?}"
    );
    let new_root = std::fs::read_to_string(bed.cp.state_dir().join("root-cert.pem")).unwrap();
    assert_ne!(new_root, old_root, "the new root signs now");
    let (a1, b1) = (serials(&bed.a), serials(&bed.b));
    assert!(
        a1.iter().all(|s| !a0.contains(s)) && b1.iter().all(|s| !b0.contains(s)),
        "leaves re-minted under the new root"
    );
    // Both roots are trusted until the old root's leaves have expired.
    let certs = bed.b.envoy_admin("/certs");
    assert!(certs.matches("\"ca_cert\"").count() >= 1);
    let (c, body) = call_b(&bed.a);
    assert_eq!(c, 200);
    assert!(xfcc(&body).contains(SPIFFE_A));
}

#[test]
fn client_refuses_a_server_with_the_wrong_identity() {
    if !need_root("client_refuses_a_server_with_the_wrong_identity") {
        return;
    }
    // The registry says b runs as service account b; the pod at b's address is "evil".
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "registry.yaml",
        &registry(&mesh, &mesh.addr(11).to_string()),
    );
    let cp = ControlPlane::start_with(&mesh, dir.path(), &["--debounce-ms", "50"]);
    let evil = mesh.start_pod(
        PodSpec::new("b")
            .host(11)
            .service_account("evil")
            .secure(&cp),
    );
    let a = mesh.start_pod(PodSpec::new("a").host(10).service_account("a").secure(&cp));
    a.hosts(&[("b", &mesh.vip(0).to_string())]);
    assert!(wait_until(READY, || connected(&a)
        && connected(&evil)
        && !serials(&evil).is_empty()));
    // Give routing time to settle, then every call must fail the SAN check (503 from A's sidecar).
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..5 {
        let (code, body) = call_b(&a);
        assert_eq!(
            code, 503,
            "A must not talk to a server that is not spiffe://.../sa/b: {body}"
        );
    }
    let fails: u64 = a
        .envoy_stats("ssl.fail_verify_san")
        .into_iter()
        .filter(|(k, _)| k.contains("b.default.svc.cluster.local"))
        .map(|(_, v)| v)
        .sum();
    assert!(fails > 0, "the handshake failed on the SAN check");
}

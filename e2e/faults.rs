//! Faults: the control plane killed (SIGKILL) and restarted while real sidecars keep
//! serving, and a config file left half-written at the moment of the restart.
#[path = "support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{need_root, wait_until, write_file as write, ControlPlane, Mesh, Pod, PodSpec};

const READY: Duration = Duration::from_secs(40);

/// A VirtualService that answers `/teapot` with 418 itself (a fault abort) and routes the
/// rest to b: 418 on `/teapot` shows the VirtualService is served.
const ROUTES: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: b}\nspec:\n  hosts: [b]\n  http:\n  - match: [{uri: {prefix: /teapot}}]\n    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}\n    route: [{destination: {host: b}}]\n  - route: [{destination: {host: b}}]\n---\n\
    apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: b}\nspec:\n  host: b\n  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n";

fn call(a: &Pod, path: &str) -> u16 {
    a.curl(&format!("http://b:8080{path}"), &["-m", "5"]).0
}

/// Pod b (an instance of service b, whose routes are `ROUTES`) and pod a calling it, both
/// with sidecars, on a fresh control plane; returns once a's calls are routed.
fn two_pods(mesh: &Mesh, dir: &std::path::Path) -> (ControlPlane, Pod, Pod) {
    write(
        dir,
        "registry.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec:\n  clusterIP: {vip}\n  selector: {{app: b}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: b-1}}\nspec:\n  address: {b}\n  labels: {{app: b}}\n",
            vip = mesh.vip(0),
            b = mesh.addr(11)
        ),
    );
    write(dir, "routes.yaml", ROUTES);
    let cp = ControlPlane::start_with(mesh, dir, &["--debounce-ms", "50"]);
    let b = mesh.start_pod(PodSpec::new("b").host(11).port(8080).control_plane(&cp));
    let a = mesh.start_pod(PodSpec::new("a").host(20).control_plane(&cp));
    a.hosts(&[("b", &mesh.vip(0).to_string())]);
    assert!(
        wait_until(READY, || call(&a, "/") == 200 && call(&a, "/teapot") == 418),
        "routing never converged\n{}",
        cp.log_tail(20)
    );
    (cp, b, a)
}

/// 40 calls from a to b alternating `/` (200) and `/teapot` (418): how many were answered
/// otherwise, and the codes.
fn outage_calls(a: &Pod) -> (usize, Vec<u16>) {
    let codes: Vec<u16> = (0..40)
        .map(|i| call(a, if i % 2 == 0 { "/" } else { "/teapot" }))
        .collect();
    let bad = codes
        .iter()
        .enumerate()
        .filter(|(i, c)| **c != if i % 2 == 0 { 200 } else { 418 })
        .count();
    (bad, codes)
}

/// SIGTERM: pilotfish sends GOAWAY, ends every xDS stream and exits 0 before its 5 s
/// deadline; the sidecars see their stream end at once (not after a TCP timeout), so they
/// would move to another replica, and keep serving their last config meanwhile.
#[test]
fn graceful_stop_drains_streams_and_exits_cleanly() {
    if !need_root("faults") {
        return;
    }
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    let (mut cp, b, a) = two_pods(&mesh, dir.path());
    let connected = |p: &Pod| p.envoy_stat("control_plane.connected_state");
    assert!(
        wait_until(READY, || connected(&a) == Some(1)
            && connected(&b) == Some(1)),
        "the sidecars are not connected"
    );
    let t = Instant::now();
    let code = cp.stop();
    let took = t.elapsed();
    println!("SIGTERM with 2 sidecars connected: exit {code:?} after {took:?}");
    assert_eq!(code, Some(0), "{}", cp.log_tail(20));
    let log = std::fs::read_to_string(cp.log_path()).unwrap_or_default();
    assert!(
        log.contains("shutting down") && !log.contains("shutdown took over"),
        "the drain hit its deadline\n{}",
        cp.log_tail(20)
    );
    assert!(
        wait_until(Duration::from_secs(5), || connected(&a) == Some(0)
            && connected(&b) == Some(0)),
        "a sidecar still thinks it is connected: a={:?} b={:?}",
        connected(&a),
        connected(&b)
    );
    let (bad, codes) = outage_calls(&a);
    assert_eq!(bad, 0, "requests failed after the stop: {codes:?}");
    cp.restart();
    assert!(
        wait_until(READY, || connected(&a) == Some(1)),
        "a never reconnected"
    );
}

#[test]
fn kill_restart_and_a_half_written_file_keep_traffic_and_config() {
    if !need_root("faults") {
        return;
    }
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    let (mut cp, _b, a) = two_pods(&mesh, dir.path());

    // SIGKILL: the sidecars keep their last config; no request fails during the outage.
    cp.kill();
    let (bad, outage) = outage_calls(&a);
    println!("outage: 40 requests, {bad} answered otherwise than before");
    assert_eq!(
        bad, 0,
        "requests failed while the control plane was down: {outage:?}"
    );

    // The routes file is half-written when pilotfish comes back: its last good objects are
    // served from the state directory (not an empty set), and the error names the file.
    let cut = ROUTES.len() * 2 / 5;
    std::fs::write(dir.path().join("routes.yaml"), &ROUTES[..cut]).unwrap();
    cp.restart();
    assert!(
        wait_until(READY, || a.envoy_stat("control_plane.connected_state")
            == Some(1)),
        "a never reconnected"
    );
    let (_, configz) = cp.get("/debug/configz").unwrap();
    let v: serde_json::Value = serde_json::from_str(&configz).unwrap();
    let errors = v["errors"].to_string();
    assert!(
        errors.contains("routes.yaml"),
        "the broken file is reported: {errors}"
    );
    let served: Vec<String> = v["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            format!(
                "{} {}",
                o["kind"].as_str().unwrap_or(""),
                o["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert!(
        served.contains(&"VirtualService b".to_string())
            && served.contains(&"DestinationRule b".to_string()),
        "the last good objects of routes.yaml are served: {served:?}"
    );
    // Give a's sidecar a push to apply, then the VirtualService must still route.
    std::thread::sleep(Duration::from_millis(500));
    let after: Vec<u16> = (0..10).map(|_| call(&a, "/teapot")).collect();
    assert!(
        after.iter().all(|c| *c == 418),
        "the VirtualService was lost: {after:?}"
    );
    let nacks = a.envoy_stats("update_rejected");
    assert!(nacks.iter().all(|(_, v)| *v == 0), "NACKs: {nacks:?}");

    // Fixed again: the new text is taken (a route to /teapot now passes).
    write(
        dir.path(),
        "routes.yaml",
        &ROUTES.replace("/teapot", "/kettle"),
    );
    assert!(
        wait_until(READY, || call(&a, "/teapot") == 200
            && call(&a, "/kettle") == 418),
        "the fixed file was not taken"
    );
}

/// What the simulated proxies saw: per proxy, the clusters of the last CDS response it
/// ACKed; responses that did not decode (each NACKed); connections made.
#[derive(Default)]
struct Sims {
    clusters: Vec<AtomicUsize>,
    bad: AtomicUsize,
    connects: AtomicUsize,
    stop: AtomicBool,
}

impl Sims {
    /// How many proxies hold at least `n` clusters.
    fn at_least(&self, n: usize) -> usize {
        self.clusters
            .iter()
            .filter(|c| c.load(Ordering::SeqCst) >= n)
            .count()
    }
}

/// A simulated sidecar: an ADS stream (state of the world) subscribed to every cluster,
/// each response decoded and ACKed (NACKed if a resource does not decode), reconnecting
/// with Envoy's backoff (0.5 s base, jittered) when the stream ends.
async fn simulated_proxy(addr: String, i: usize, sims: Arc<Sims>) {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use prost::Message;
    const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    let node = Node {
        id: format!("sidecar~10.99.0.{i}~sim-{i}.default~default.svc.cluster.local"),
        cluster: "sim".into(),
        ..Default::default()
    };
    while !sims.stop.load(Ordering::SeqCst) {
        let backoff = Duration::from_millis(250 + (i as u64 * 37) % 500);
        let Ok(mut client) =
            AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await
        else {
            tokio::time::sleep(backoff).await;
            continue;
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let _ = tx
            .send(DiscoveryRequest {
                node: Some(node.clone()),
                type_url: CDS.into(),
                ..Default::default()
            })
            .await;
        let Ok(resp) = client
            .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        else {
            tokio::time::sleep(backoff).await;
            continue;
        };
        sims.connects.fetch_add(1, Ordering::SeqCst);
        let mut stream = resp.into_inner();
        while let Ok(Some(r)) = stream.message().await {
            let ok = r
                .resources
                .iter()
                .all(|res| Cluster::decode(&res.value[..]).is_ok());
            let mut ack = DiscoveryRequest {
                type_url: CDS.into(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            };
            if ok {
                ack.version_info = r.version_info.clone();
                sims.clusters[i].store(r.resources.len(), Ordering::SeqCst);
            } else {
                sims.bad.fetch_add(1, Ordering::SeqCst);
                ack.error_detail = Some(envoy_types::pb::google::rpc::Status {
                    code: 3,
                    message: "a cluster did not decode".into(),
                    ..Default::default()
                });
            }
            if tx.send(ack).await.is_err() {
                break;
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

/// The control plane SIGKILLed in the middle of a push to 50 proxies (2 real sidecars, 48
/// simulated), then restarted with a config file half-written: no request between the
/// real pods fails during the outage, every proxy reconverges on the config that was being
/// pushed, the half-written file's objects are still served, nothing is NACKed.
#[test]
fn killed_mid_push_to_50_proxies_all_reconverge() {
    if !need_root("faults") {
        return;
    }
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    let (mut cp, b, a) = two_pods(&mesh, dir.path());
    const SIMS: usize = 48;
    let sims = Arc::new(Sims {
        clusters: (0..SIMS).map(|_| AtomicUsize::new(0)).collect(),
        ..Default::default()
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    for i in 0..SIMS {
        rt.spawn(simulated_proxy(cp.xds_address.clone(), i, sims.clone()));
    }
    assert!(
        wait_until(READY, || sims.at_least(1) == SIMS),
        "the simulated proxies never got their clusters"
    );
    let before = sims.clusters[0].load(Ordering::SeqCst);
    // Each round adds 1,000 services (a push of 1,000 more clusters to each of 50 proxies) and
    // kills the control plane as soon as one simulated proxy has it, unless every one
    // already had it by then (then the next round tries again).
    let mut round = 0;
    let mut services = 0;
    let had_it = loop {
        round += 1;
        assert!(round <= 5, "never caught a push in the middle");
        let mut text = String::new();
        for k in 0..1000 {
            text.push_str(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: big-{round}-{k}}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\n"
            ));
        }
        services += 1000;
        let want = before + services;
        write(dir.path(), &format!("big-{round}.yaml"), &text);
        let t = Instant::now();
        while sims.at_least(want) == 0 && t.elapsed() < READY {
            std::hint::spin_loop();
        }
        let n = sims.at_least(want);
        if n < SIMS {
            cp.kill();
            break n;
        }
    };
    let want = before + services;
    println!(
        "SIGKILL in round {round}: {had_it} of {SIMS} simulated proxies had the new {want} clusters"
    );
    assert!(had_it < SIMS, "the kill came after the push");

    // The outage: the real sidecars keep their last config.
    let connects = sims.connects.load(Ordering::SeqCst);
    let (bad, codes) = outage_calls(&a);
    println!("outage: 40 requests, {bad} answered otherwise than before");
    assert_eq!(bad, 0, "requests failed during the outage: {codes:?}");

    // And the routes file is half-written at the moment of the restart: its last good
    // objects come back from the state directory.
    std::fs::write(
        dir.path().join("routes.yaml"),
        &ROUTES[..ROUTES.len() * 2 / 5],
    )
    .unwrap();
    cp.restart();
    let t = Instant::now();
    let real_has = |p: &Pod| {
        p.envoy_admin("/clusters")
            .contains(&format!("big-{round}-999.default.svc.cluster.local"))
    };
    let converged = wait_until(READY, || {
        sims.at_least(want) == SIMS && real_has(&a) && real_has(&b)
    });
    let took = t.elapsed();
    sims.stop.store(true, Ordering::SeqCst);
    println!(
        "after the restart: {} of {SIMS} simulated and {} of 2 real proxies converged in {took:.1?}; {} reconnects",
        sims.at_least(want),
        real_has(&a) as u8 + real_has(&b) as u8,
        sims.connects.load(Ordering::SeqCst) - connects
    );
    assert!(
        converged,
        "not every proxy reconverged\n{}",
        cp.log_tail(20)
    );
    assert_eq!(
        sims.bad.load(Ordering::SeqCst),
        0,
        "simulated proxies NACKed"
    );
    for p in [&a, &b] {
        let nacks = p.envoy_stats("update_rejected");
        assert!(nacks.iter().all(|(_, v)| *v == 0), "NACKs: {nacks:?}");
    }
    // Traffic still flows after the restart.
    // Traffic still flows after the restart, through the VirtualService kept from the
    // half-written file (`/teapot` answered 418 by its fault rule).
    let (bad, codes) = outage_calls(&a);
    assert_eq!(bad, 0, "requests failed after the restart: {codes:?}");
    let (_, configz) = cp.get("/debug/configz").unwrap();
    assert!(
        configz.contains("routes.yaml"),
        "the half-written file is reported"
    );
}

/// A FIFO named like a config file used to block the reader forever, and one file that is
/// not UTF-8 failed the whole read: each is now an error of that file alone.
#[test]
fn unreadable_files_are_errors_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let good = "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  ports: [{name: http, port: 80}]\n";
    std::fs::write(dir.path().join("good.yaml"), good).unwrap();
    std::fs::write(
        dir.path().join("binary.yaml"),
        b"\xff\xfe\x00kind: Service\n",
    )
    .unwrap();
    let fifo = dir.path().join("pipe.yaml");
    let o = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(o.success(), "mkfifo");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pilotfish"))
        .arg("validate")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let finished = wait_until(Duration::from_secs(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !finished {
        let _ = child.kill();
        panic!("pilotfish validate hangs on a FIFO");
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("binary.yaml: file: not UTF-8 text"), "{text}");
    assert!(
        text.contains("pipe.yaml: file: not a regular file"),
        "{text}"
    );
    assert!(
        text.contains("1 object(s) accepted"),
        "the good file still loads: {text}"
    );
}

/// A full state directory: pilotfish says it cannot keep the last good copies and goes on
/// serving (no crash, every object served).
#[test]
fn a_full_state_directory_is_an_error_not_a_crash() {
    if !need_root("faults: tmpfs") {
        return;
    }
    use support::control_plane::http_get;
    use support::mesh::free_port;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48k", "tmpfs"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a small tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(state.clone());
    // ~120 kB of valid Services: its last good copy cannot fit in 48 kB.
    let mut big = String::new();
    for i in 0..600 {
        big.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc{i}}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\n"
        ));
    }
    std::fs::write(cfg.join("big.yaml"), &big).unwrap();
    let port = |_| format!("127.0.0.1:{}", free_port(std::net::Ipv4Addr::LOCALHOST));
    let (xds, http, secure, authz) = (port(0), port(1), port(2), port(3));
    let log = dir.path().join("serve.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pilotfish"))
        .args(["serve", "--config-dir"])
        .arg(&cfg)
        .args(["--xds-address", &xds, "--http-address", &http])
        .args(["--secure-xds-address", &secure, "--authz-address", &authz])
        .arg("--state-dir")
        .arg(&state)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("serve.err")).unwrap())
        .spawn()
        .unwrap();
    let ready = wait_until(Duration::from_secs(30), || {
        http_get(&http, "/ready", Duration::from_secs(2)).is_ok_and(|(c, _)| c == 200)
    });
    let running = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default()
        + &std::fs::read_to_string(dir.path().join("serve.err")).unwrap_or_default();
    assert!(
        ready && running,
        "pilotfish did not serve with a full state directory:\n{text}"
    );
    assert!(
        text.contains("cannot keep the last good copy"),
        "the full disk is reported:\n{text}"
    );
}

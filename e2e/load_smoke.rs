//! Smoke tests of `pilotfish-load` (they run in CI with `cargo test`): the tool at a small N
//! against the `pilotfish` cargo built, asserting correctness only — every stream ACKed the
//! latest content, `/debug/syncz` agrees, no NACK without injection, no stream error.
//! Nothing here asserts a time: figures belong in BENCHMARKS.md.
//!
//! The last test connects one real Envoy during a load run (mirroring simulated proxy 0:
//! same namespace and labels, an address that is an instance of the same service) and
//! checks it converges to the versions the simulated streams ACKed: SotW versions are
//! content hashes, equal for equal content.

#[path = "support/mod.rs"]
mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{envoy_bin, pilotfish_bin, ControlPlane};

fn load_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pilotfish-load"))
}

/// Runs the tool with `--json`; returns its report (panics with its output on exit 2).
fn run_load(args: &[&str]) -> Value {
    let o = support::run(
        Command::new(load_bin()).args(args).arg("--json"),
        Duration::from_secs(240),
    );
    assert!(
        !o.timed_out && matches!(o.code, Some(0) | Some(1)),
        "pilotfish-load failed: {}",
        o.describe()
    );
    serde_json::from_str(&o.stdout)
        .unwrap_or_else(|e| panic!("pilotfish-load --json output: {e}\n{}", o.describe()))
}

fn scenario<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["scenarios"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no scenario {name} in {v:#}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// Every stream converged on every change, syncz agrees, no NACK, no stream error.
fn assert_correct(v: &Value, proxies: u64, changes: u64, nacks_expected: bool) {
    assert_eq!(v["ok"], true, "problems: {:#}", v["problems"]);
    for s in v["scenarios"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        assert_eq!(
            u(&s["unconverged_events"]),
            0,
            "{name}: {:#}",
            s["laggards"]
        );
        assert_eq!(u(&s["streams"]), proxies, "{name}: streams connected");
        let ver = &s["verified"];
        assert_eq!(
            ver["ok"], true,
            "{name}: /debug/syncz: {:#}",
            ver["problems"]
        );
        assert_eq!(u(&ver["streams_checked"]), proxies, "{name}");
        assert_eq!(u(&s["stats"]["decode_errors"]), 0, "{name}");
    }
    let c = scenario(v, "change");
    assert_eq!(u(&c["events"]), changes);
    // One ACK of the new content per (change, stream).
    assert_eq!(u(&c["ack_ms"]["n"]), proxies * changes, "{c:#}");
    let t = &v["totals"];
    for k in [
        "unavailable",
        "resource_exhausted",
        "connect_failures",
        "ended_by_server",
        "other_errors",
        "decode_errors",
    ] {
        assert_eq!(u(&t[k]), 0, "stream errors ({k}): {t:#}");
    }
    if nacks_expected {
        assert!(u(&t["injected_nacks"]) > 0, "{t:#}");
        assert_eq!(u(&t["nacks"]), u(&t["injected_nacks"]), "{t:#}");
    } else {
        assert_eq!(u(&t["nacks"]), 0, "{t:#}");
    }
    assert_eq!(
        u(&t["connects"]),
        proxies,
        "every stream connected once: {t:#}"
    );
}

fn smoke(extra: &[&str], scenarios: &str, proxies: u64, services: u64, changes: u64) -> Value {
    let bin = pilotfish_bin();
    let (p, s, c) = (
        proxies.to_string(),
        services.to_string(),
        changes.to_string(),
    );
    let mut args = vec![
        "--spawn-pilotfish",
        bin.to_str().unwrap(),
        "--proxies",
        &p,
        "--services",
        &s,
        "--scenario",
        scenarios,
        "--changes",
        &c,
        "--decode",
        "full",
        "--timeout",
        "60",
    ];
    args.extend_from_slice(extra);
    run_load(&args)
}

#[test]
fn smoke_sotw_50_proxies() {
    // Churn too (5 s at 40 pod events/s): every stream must reach each service's latest
    // endpoints, through the incremental EDS and the reuse of unchanged encodings.
    let v = smoke(&["--duration", "5"], "change,churn", 50, 100, 2);
    assert_correct(&v, 50, 2, false);
    assert!(u(&scenario(&v, "churn")["events"]) > 0);
    assert_eq!(v["params"]["mode"], "sotw");
}

#[test]
fn smoke_delta_50_proxies() {
    let v = smoke(
        &["--delta", "--duration", "5", "--dump-streams"],
        "change,churn",
        50,
        100,
        2,
    );
    assert_correct(&v, 50, 2, false);
    assert!(u(&scenario(&v, "churn")["events"]) > 0);
    assert_eq!(v["params"]["mode"], "delta");
    // Route configurations name VHDS on delta streams: every stream subscribed to virtual
    // hosts and ACKed them (the markers of the edits arrive in virtual hosts).
    let streams = v["streams"].as_array().expect("--dump-streams");
    assert_eq!(streams.len(), 50);
    for s in streams {
        let vhds = s["versions"]["vhds"].as_str().unwrap_or_default();
        assert!(!vhds.is_empty(), "no virtual hosts ACKed: {s:#}");
    }
}

#[test]
fn smoke_nack_injection() {
    // NACKed updates are counted by the control plane and not resent in a loop; the next
    // change still reaches every stream.
    let v = smoke(&["--nack-percent", "50"], "change", 10, 30, 4);
    assert_correct(&v, 10, 4, true);
    let injected = u(&v["totals"]["injected_nacks"]);
    let rejects: u64 = v["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["server_rejects"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(rejects, injected, "pilot_total_xds_rejects vs NACKs sent");
}

// ------------------------------------------------------------------ one real Envoy

struct Envoy {
    child: Child,
    admin: String,
    log: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "=== envoy log {} ===\n{}",
                self.log.display(),
                support::tail(&self.log, 60)
            );
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// Envoy bootstrapped by `pilotfish bootstrap` as proxy 0's twin (namespace ns0, labels
/// app=svc0,version=v1, address 127.0.0.1, which the tool registers as an svc0 instance).
fn start_envoy(dir: &Path, xds: &str, delta: bool) -> Envoy {
    let admin_port = free_port();
    let o = support::run(
        Command::new(pilotfish_bin())
            .arg("bootstrap")
            .args(delta.then_some("--delta"))
            .args([
                "--namespace",
                "ns0",
                "--workload",
                "envoy-twin",
                "--ip",
                "127.0.0.1",
                "--labels",
                "app=svc0,version=v1",
                "--xds-address",
                xds,
                "--admin-port",
                &admin_port.to_string(),
            ]),
        Duration::from_secs(30),
    );
    assert!(o.ok(), "{}", o.describe());
    let mut b: Value = serde_json::from_str(&o.stdout).unwrap();
    // The static health and Prometheus listeners on free ports (the root namespace is shared).
    for l in b["static_resources"]["listeners"].as_array_mut().unwrap() {
        l["address"]["socket_address"]["address"] = "127.0.0.1".into();
        l["address"]["socket_address"]["port_value"] = free_port().into();
    }
    let file = dir.join("envoy.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&b).unwrap()).unwrap();
    let log = dir.join("envoy.log");
    let f = std::fs::File::create(&log).unwrap();
    let child = Command::new(envoy_bin())
        .arg("-c")
        .arg(&file)
        .args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warning",
        ])
        .args([
            "--base-id",
            &(40_000 + std::process::id() % 20_000).to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .expect("starting envoy");
    Envoy {
        child,
        admin: format!("127.0.0.1:{admin_port}"),
        log,
    }
}

/// Envoy's text stats (`name: value`, text readouts quoted). curl: the admin interface
/// speaks HTTP/1.1 (chunked), not the harness's HTTP/1.0.
fn envoy_stats(admin: &str) -> Option<Vec<(String, String)>> {
    let o = support::run(
        Command::new("curl").args([
            "-sf",
            "--noproxy",
            "*",
            "-m",
            "5",
            &format!("http://{admin}/stats"),
        ]),
        Duration::from_secs(10),
    );
    o.ok().then(|| {
        o.stdout
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.trim().trim_matches('"').to_string()))
            .collect()
    })
}

fn stat<'a>(s: &'a [(String, String)], name: &str) -> Option<&'a str> {
    s.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn real_envoy_converges_with_the_simulated_proxies() {
    twin_converges(false);
}

/// Delta: routes come over VHDS; the real Envoy must also hold the simulated proxy's virtual
/// hosts version for each route configuration.
#[test]
fn real_envoy_converges_with_the_simulated_proxies_delta_vhds() {
    twin_converges(true);
}

fn twin_converges(delta: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let cp = ControlPlane::start_local(&config, &[]);
    let envoy = start_envoy(tmp.path(), &cp.xds_address, delta);
    let pid = cp.pid().unwrap().to_string();
    let mut args = vec![
        "--xds-address",
        &cp.xds_address,
        "--http-address",
        &cp.http_address,
        "--config-dir",
        config.to_str().unwrap(),
        "--pid",
        &pid,
        "--twin-ip",
        "127.0.0.1",
        "--proxies",
        "20",
        "--services",
        "30",
        "--scenario",
        "change",
        "--changes",
        "2",
        "--decode",
        "full",
        "--dump-streams",
        "--timeout",
        "60",
    ];
    if delta {
        args.push("--delta");
    }
    let v = run_load(&args);
    assert_correct(&v, 20, 2, false);
    let streams = v["streams"].as_array().expect("--dump-streams");
    let p0 = streams
        .iter()
        .find(|s| s["idx"] == 0)
        .expect("stream of proxy 0");
    assert_eq!(p0["namespace"], "ns0");
    assert_eq!(p0["labels"]["app"], "svc0");
    let want_cds = p0["versions"]["cds"].as_str().unwrap().to_string();
    let want_lds = p0["versions"]["lds"].as_str().unwrap().to_string();
    let want_rds = p0["versions"]["rds"].as_str().unwrap().to_string();
    assert!(!want_cds.is_empty() && !want_lds.is_empty() && !want_rds.is_empty());
    let want_vhds = p0["versions"]["vhds"].as_str().unwrap_or("").to_string();
    assert_eq!(
        !want_vhds.is_empty(),
        delta,
        "virtual hosts over VHDS only in delta"
    );
    // The same class: every simulated proxy of ns0 with svc0's v1 labels ACKed the same.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    loop {
        if let Some(s) = envoy_stats(&envoy.admin) {
            let cds = stat(&s, "cluster_manager.cds.version_text").map(str::to_string);
            let lds = stat(&s, "listener_manager.lds.version_text").map(str::to_string);
            let versions = |vhds: bool| -> Vec<String> {
                s.iter()
                    .filter(|(k, _)| k.contains(".rds.") && k.ends_with(".version_text"))
                    .filter(|(k, _)| k.contains(".vhds.") == vhds)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect()
            };
            // Inbound route configurations (`inbound|<port>||`) belong to the twin's own
            // workload and change with its policies only: not compared with proxy 0's.
            let (rds, vhds) = (versions(false), versions(true));
            let rds: Vec<String> = rds
                .into_iter()
                .filter(|r| !r.contains(".rds.inbound|"))
                .collect();
            let rejected: Vec<&(String, String)> = s
                .iter()
                .filter(|(k, v)| k.ends_with("update_rejected") && v != "0")
                .collect();
            assert!(rejected.is_empty(), "Envoy rejected config: {rejected:?}");
            let ok = cds.as_deref() == Some(want_cds.as_str())
                && lds.as_deref() == Some(want_lds.as_str())
                && !rds.is_empty()
                && rds.iter().all(|r| r.ends_with(&format!("={want_rds}")))
                && vhds.len() == if delta { rds.len() } else { 0 }
                && vhds.iter().all(|r| r.ends_with(&format!("={want_vhds}")));
            if ok {
                break;
            }
            last = Some((cds, lds, rds, vhds));
        }
        assert!(
            Instant::now() < deadline,
            "Envoy did not converge to proxy 0's versions (cds {want_cds}, lds {want_lds}, rds {want_rds}, vhds {want_vhds:?}); Envoy has {last:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(envoy);
}

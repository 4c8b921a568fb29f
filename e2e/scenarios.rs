//! Traffic-management scenarios end to end: real pods (network namespaces, Istio iptables,
//! stock Envoy 1.40 sidecars as uid 1337) driven by `pilotfish serve` from a config
//! directory. Every assertion is on what the client pod really got, or on Envoy's own
//! counters. Needs root (skips loudly otherwise).
//!
//! Every test builds its own mesh: a `reviews` Service on a VIP (port 8080), one
//! WorkloadEntry per backend pod (labels `app=reviews`, `version=...`), and a `client` pod
//! whose hosts file maps `reviews` to the VIP. Requests in bulk come from a small Python
//! load generator run inside the client pod (one process for hundreds of requests).
#[path = "support/mod.rs"]
mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{need_root, run, trace, wait_until, ControlPlane, Mesh, Pod, PodSpec};

const PORT: u16 = 8080;
const SVC_URL: &str = "http://reviews:8080";
/// Envoy's name for the service's cluster without subset.
const CLUSTER: &str = "outbound|8080||reviews.default.svc.cluster.local";
const READY: Duration = Duration::from_secs(30);

/// Sends N GET requests (C at a time, all threads released together) with fresh
/// connections, printing one JSON array of [status, x-app-name, seconds, error-or-body].
const LOADGEN: &str = r#"
import http.client, json, sys, threading, time
from urllib.parse import urlsplit
url, n, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
headers = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
u = urlsplit(url)
path = (u.path or "/") + ("?" + u.query if u.query else "")
out = [None] * n
nxt = [0]
lock = threading.Lock()
barrier = threading.Barrier(conc)
def one():
    t0 = time.monotonic()
    try:
        c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30)
        c.request("GET", path, headers=headers)
        r = c.getresponse()
        body = r.read()
        c.close()
        extra = "" if r.status == 200 else body[:200].decode("utf-8", "replace")
        return [r.status, r.getheader("x-app-name") or "", time.monotonic() - t0, extra]
    except Exception as e:
        return [0, "", time.monotonic() - t0, repr(e)]
def worker():
    barrier.wait()
    while True:
        with lock:
            i = nxt[0]
            nxt[0] += 1
        if i >= n:
            return
        out[i] = one()
ts = [threading.Thread(target=worker) for _ in range(conc)]
for t in ts:
    t.start()
for t in ts:
    t.join()
print(json.dumps(out))
"#;

/// One answer from the load generator.
#[derive(Debug, Clone)]
struct Res {
    status: u16,
    name: String,
    secs: f64,
    note: String,
}

/// Counts per (status, name).
fn tally(rs: &[Res]) -> BTreeMap<(u16, String), usize> {
    let mut m = BTreeMap::new();
    for r in rs {
        *m.entry((r.status, r.name.clone())).or_insert(0) += 1;
    }
    m
}

/// A backend pod: its name (also the name its app answers with) and `version` label.
struct Backend {
    name: &'static str,
    version: &'static str,
}

/// The test bed. Fields drop in order: pods, control plane, config dir, then the mesh.
struct Bed {
    client: Pod,
    backends: Vec<Pod>,
    /// App processes the test started itself (see [`Bed::restart_app`]); killed on drop.
    apps: Vec<Child>,
    cp: ControlPlane,
    config: tempfile::TempDir,
    loadgen: std::path::PathBuf,
    _mesh: Mesh,
}

impl Drop for Bed {
    fn drop(&mut self) {
        for c in &mut self.apps {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn registry_yaml(mesh: &Mesh, backends: &[Backend]) -> String {
    let vip = mesh.vip(0);
    let mut y = format!(
        "apiVersion: v1
kind: Service
metadata:
  name: reviews
  namespace: default
spec:
  clusterIP: {vip}
  selector:
    app: reviews
  ports:
  - name: http
    port: {PORT}
    targetPort: {PORT}
"
    );
    for (i, b) in backends.iter().enumerate() {
        let ip = mesh.addr(20 + i as u8);
        y.push_str(&format!(
            "---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {name}
  namespace: default
spec:
  address: {ip}
  labels:
    app: reviews
    version: {version}
",
            name = b.name,
            version = b.version
        ));
    }
    y
}

/// A DestinationRule for `reviews` with subsets v1 and v2 (and an optional trafficPolicy,
/// given as YAML indented under `spec:`).
fn dr_yaml(traffic_policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews
{traffic_policy}  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
"
    )
}

/// A VirtualService for `reviews` whose `http:` list is `http` (indented by 2).
fn vs_yaml(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews
  http:
{http}"
    )
}

/// A VirtualService sending everything to one subset.
fn vs_all_to(subset: &str) -> String {
    vs_yaml(&format!(
        "  - route:
    - destination:
        host: reviews
        subset: {subset}
"
    ))
}

/// Writes a config file the way an editor does: a temp file (ignored: not .yaml) renamed
/// over the target, so the watcher never sees a half-written file.
fn write_config(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

impl Bed {
    /// Mesh, config dir (registry.yaml plus `files`), control plane (debounce 50 ms),
    /// backends on pinned addresses .20, .21, ..., the client; waits until every sidecar is
    /// connected. `delta`: every sidecar uses delta xDS.
    fn new(backends: &[Backend], files: &[(&str, String)], delta: bool) -> Bed {
        let mesh = Mesh::new();
        let config = tempfile::tempdir().unwrap();
        write_config(
            config.path(),
            "registry.yaml",
            &registry_yaml(&mesh, backends),
        );
        for (name, text) in files {
            write_config(config.path(), name, text);
        }
        let cp = ControlPlane::start_with(&mesh, config.path(), &["--debounce-ms", "50"]);
        trace("control plane ready");
        let mut pods = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            pods.push(
                mesh.start_pod(
                    PodSpec::new(b.name)
                        .label("app", "reviews")
                        .label("version", b.version)
                        .host(20 + i as u8)
                        .delta(delta)
                        .control_plane(&cp),
                ),
            );
        }
        let client = mesh.start_pod(PodSpec::new("client").delta(delta).control_plane(&cp));
        client.hosts(&[("reviews", &mesh.vip(0).to_string())]);
        let loadgen = mesh.dir().join("loadgen.py");
        std::fs::write(&loadgen, LOADGEN).unwrap();
        let bed = Bed {
            client,
            backends: pods,
            apps: Vec::new(),
            cp,
            config,
            loadgen,
            _mesh: mesh,
        };
        for p in bed.pods() {
            let ok = wait_until(READY, || {
                p.envoy_stat("control_plane.connected_state") == Some(1)
            });
            assert!(ok, "pod {} not connected\n{}", p.name, bed.diag());
        }
        trace("sidecars connected");
        bed
    }

    fn pods(&self) -> Vec<&Pod> {
        std::iter::once(&self.client)
            .chain(self.backends.iter())
            .collect()
    }

    fn config_dir(&self) -> &Path {
        self.config.path()
    }

    /// The client's view and the control plane's, for failure messages.
    fn diag(&self) -> String {
        format!(
            "--- client /clusters (outbound|8080) ---\n{}\n--- client stats (rejected/connected) ---\n{:?}\n--- pilotfish /debug/syncz ---\n{}\n--- pilotfish /debug/configz errors ---\n{}",
            self.client
                .envoy_admin("/clusters")
                .lines()
                .filter(|l| l.starts_with("outbound|8080|"))
                .collect::<Vec<_>>()
                .join("\n"),
            self.client
                .envoy_stats("update_rejected|connected_state"),
            self.cp.get("/debug/syncz").map(|r| r.1).unwrap_or_else(|e| e),
            self.configz()
                .map(|v| v["errors"].to_string())
                .unwrap_or_else(|e| e)
        )
    }

    fn configz(&self) -> Result<Value, String> {
        let (status, body) = self.cp.get("/debug/configz")?;
        if status != 200 {
            return Err(format!("/debug/configz: {status}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("/debug/configz: {e}: {body}"))
    }

    /// `n` GETs of `SVC_URL + path` from the client, `conc` at a time, with `headers`.
    fn load(&self, path: &str, n: usize, conc: usize, headers: &[(&str, &str)]) -> Vec<Res> {
        let hdrs: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        let o = run(
            self.client
                .netns_cmd()
                .arg("python3")
                .arg(&self.loadgen)
                .arg(format!("{SVC_URL}{path}"))
                .arg(n.to_string())
                .arg(conc.to_string())
                .arg(Value::Object(hdrs).to_string()),
            Duration::from_secs(300),
        );
        assert!(o.ok(), "load generator: {}", o.describe());
        let v: Vec<(u16, String, f64, String)> = serde_json::from_str(o.stdout.trim())
            .unwrap_or_else(|e| panic!("load generator output: {e}: {}", o.describe()));
        v.into_iter()
            .map(|(status, name, secs, note)| Res {
                status,
                name,
                secs,
                note,
            })
            .collect()
    }

    /// Waits until a batch of `n` requests all answer 200 from backends `pred` accepts;
    /// panics with the last batch and diagnostics otherwise.
    fn wait_all(
        &self,
        what: &str,
        path: &str,
        n: usize,
        headers: &[(&str, &str)],
        pred: impl Fn(&str) -> bool,
    ) {
        let mut last = Vec::new();
        let ok = wait_until(READY, || {
            last = self.load(path, n, 1, headers);
            last.iter().all(|r| r.status == 200 && pred(&r.name))
        });
        assert!(
            ok,
            "{what}: not reached within {READY:?}; last batch {:?}\n{}",
            tally(&last),
            self.diag()
        );
    }

    /// curl from the client: (status, total seconds).
    fn timed_curl(&self, path: &str) -> (u16, f64) {
        let o = run(
            self.client.netns_cmd().args([
                "curl",
                "-sS",
                "--noproxy",
                "*",
                "-o",
                "/dev/null",
                "-m",
                "20",
                "-w",
                "%{http_code} %{time_total}",
                &format!("{SVC_URL}{path}"),
            ]),
            Duration::from_secs(60),
        );
        let mut it = o.stdout.split_whitespace();
        let status = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let secs = it.next().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
        assert!(status != 0, "curl {path}: {}", o.describe());
        (status, secs)
    }

    /// Replaces a backend's app with one started with `args` (e.g. `--fail-all`), logging
    /// to the pod's app.log. The old app is found by its command line among the pod's
    /// processes and killed by pid.
    fn restart_app(&mut self, backend: usize, args: &[&str]) {
        let pod = &self.backends[backend];
        let pids = run(
            Command::new("ip").args(["netns", "pids", &pod.netns]),
            Duration::from_secs(20),
        );
        let app_pids: Vec<String> = pids
            .stdout
            .split_whitespace()
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains("app.py"))
                    .unwrap_or(false)
            })
            .map(str::to_string)
            .collect();
        assert_eq!(
            app_pids.len(),
            1,
            "app pid in {}: {}",
            pod.netns,
            pids.describe()
        );
        let killed = run(
            Command::new("kill").args(["-KILL", &app_pids[0]]),
            Duration::from_secs(10),
        );
        assert!(killed.ok(), "{}", killed.describe());
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(pod.app_log())
            .unwrap();
        let log2 = log.try_clone().unwrap();
        let child = pod
            .netns_cmd()
            .args(["setpriv", "--pdeathsig", "KILL", "python3"])
            .arg(support::app_py())
            .args(["--name", &pod.name, "--port", &pod.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .unwrap();
        self.apps.push(child);
        // Inbound traffic to the pod is captured by its sidecar: ask on loopback inside.
        let ok = wait_until(READY, || {
            let (status, body) = pod.curl(&format!("http://127.0.0.1:{}/", pod.port), &["-m", "2"]);
            status != 0 && body.contains(&format!("\"{}\"", pod.name))
        });
        assert!(
            ok,
            "restarted app of {} does not answer\n{}",
            pod.name,
            pod.logs()
        );
    }
}

/// The cluster stat `cluster.<cluster>.<suffix>` of `pod`'s Envoy (0 when absent).
fn cluster_stat(pod: &Pod, cluster: &str, suffix: &str) -> u64 {
    pod.envoy_stat(&format!("cluster.{cluster}.{suffix}"))
        .unwrap_or(0)
}

/// Every `*update_rejected` counter of the pod's Envoy (CDS, LDS, every RDS, ...).
fn rejections(pod: &Pod) -> Vec<(String, u64)> {
    pod.envoy_stats("update_rejected")
}

fn assert_no_rejections(bed: &Bed) {
    for p in bed.pods() {
        let rej = rejections(p);
        for must in [
            "cluster_manager.cds.update_rejected",
            "listener_manager.lds.update_rejected",
        ] {
            assert!(
                rej.iter().any(|(k, _)| k == must),
                "pod {}: {must} missing from {rej:?}",
                p.name
            );
        }
        assert!(
            rej.iter().any(|(k, _)| k.contains(".rds.")),
            "pod {}: no RDS stats in {rej:?}",
            p.name
        );
        let bad: Vec<_> = rej.iter().filter(|(_, v)| *v != 0).collect();
        assert!(
            bad.is_empty(),
            "pod {}: NACKs {bad:?}\n{}",
            p.name,
            bed.diag()
        );
    }
}

fn two_versions() -> [Backend; 2] {
    [
        Backend {
            name: "reviews-v1",
            version: "v1",
        },
        Backend {
            name: "reviews-v2",
            version: "v2",
        },
    ]
}

// ---------------------------------------------------------------------------------------
// b) weighted split

#[test]
fn weighted_split_80_20_across_subsets() {
    if !need_root("weighted_split_80_20_across_subsets") {
        return;
    }
    let vs = vs_yaml(
        "  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 80
    - destination:
        host: reviews
        subset: v2
      weight: 20
",
    );
    let bed = Bed::new(
        &two_versions(),
        &[("dr.yaml", dr_yaml("")), ("vs.yaml", vs)],
        false,
    );
    // Ready: both subsets answer (each subset cluster has its endpoint).
    let mut last = Vec::new();
    let ok = wait_until(READY, || {
        last = bed.load("/ready", 40, 4, &[]);
        let t = tally(&last);
        t.contains_key(&(200, "reviews-v1".into())) && t.contains_key(&(200, "reviews-v2".into()))
    });
    assert!(
        ok,
        "both subsets never answered: {:?}\n{}",
        tally(&last),
        bed.diag()
    );

    let n = 1000;
    let rs = bed.load("/split", n, 4, &[]);
    let t = tally(&rs);
    let v1 = t.get(&(200, "reviews-v1".into())).copied().unwrap_or(0);
    let v2 = t.get(&(200, "reviews-v2".into())).copied().unwrap_or(0);
    assert_eq!(v1 + v2, n, "every request answered 200 by v1 or v2: {t:?}");
    let share = 100.0 * v1 as f64 / n as f64;
    eprintln!("split: v1 {v1}, v2 {v2} of {n} ({share:.1}% v1)");
    assert!(
        (75.0..=85.0).contains(&share),
        "v1 share {share:.1}% not within 80±5 ({t:?})\n{}",
        bed.diag()
    );
    assert_no_rejections(&bed);
}

// ---------------------------------------------------------------------------------------
// c) header match (state of the world and delta xDS)

/// VirtualService routes: `end-user: jason` to one subset, everybody else to the other.
fn jason_to(jason: &str, others: &str) -> String {
    format!(
        "  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: {jason}
  - route:
    - destination:
        host: reviews
        subset: {others}
"
    )
}

fn header_routing(delta: bool) {
    let vs = vs_yaml(&jason_to("v2", "v1"));
    let mut bed = Bed::new(
        &two_versions(),
        &[("dr.yaml", dr_yaml("")), ("vs.yaml", vs)],
        delta,
    );
    // Ready: jason reaches v2 (its subset cluster is there with its endpoint).
    bed.wait_all("jason -> v2", "/", 5, &[("end-user", "jason")], |n| {
        n == "reviews-v2"
    });
    let jason = bed.load("/jason", 20, 2, &[("end-user", "jason")]);
    assert!(
        jason
            .iter()
            .all(|r| r.status == 200 && r.name == "reviews-v2"),
        "end-user: jason must go to v2: {:?}",
        tally(&jason)
    );
    for (what, headers) in [
        ("no header", vec![]),
        ("end-user: mike", vec![("end-user", "mike")]),
        ("end-user: jasonx", vec![("end-user", "jasonx")]),
    ] {
        let rs = bed.load("/other", 20, 2, &headers);
        assert!(
            rs.iter().all(|r| r.status == 200 && r.name == "reviews-v1"),
            "{what} must go to v1: {:?}",
            tally(&rs)
        );
    }
    // The sidecars really use the protocol asked for.
    let (_, syncz) = bed.cp.get("/debug/syncz").unwrap();
    let rows: Vec<Value> = serde_json::from_str(&syncz).unwrap();
    for p in bed.pods() {
        let id = format!("sidecar~{}~{}.default~", p.ip, p.name);
        let row = rows
            .iter()
            .find(|r| r["proxy"].as_str().is_some_and(|s| s.starts_with(&id)))
            .unwrap_or_else(|| panic!("{id} not in syncz: {syncz}"));
        assert_eq!(row["delta"], Value::Bool(delta), "{row}");
    }
    if delta {
        vhds_applies_edits(&mut bed);
    }
    assert_no_rejections(&bed);
}

/// Delta sidecars get their routes over VHDS: Envoy's route configuration names VHDS and
/// holds the virtual hosts that came as resources of their own, and an edit of the
/// VirtualService (one virtual host resent) changes where requests go.
fn vhds_applies_edits(bed: &mut Bed) {
    let dump: Value = serde_json::from_str(
        &bed.client
            .envoy_admin("/config_dump?resource=dynamic_route_configs"),
    )
    .unwrap();
    let rc = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["route_config"])
        .find(|rc| rc["name"] == "8080")
        .unwrap_or_else(|| panic!("no route configuration 8080: {dump:#}"));
    assert!(rc["vhds"].is_object(), "8080 uses VHDS: {rc:#}");
    let vhosts: Vec<&str> = rc["virtual_hosts"]
        .as_array()
        .map(|v| v.iter().filter_map(|h| h["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        vhosts.contains(&"8080/reviews.default.svc.cluster.local:8080"),
        "Envoy applied the virtual hosts VHDS delivered: {vhosts:?}"
    );
    // Flip the rule: jason now goes to v1, everybody else to v2.
    let flipped = vs_yaml(&jason_to("v1", "v2"));
    write_config(bed.config_dir(), "vs.yaml", &flipped);
    bed.wait_all("jason -> v1", "/", 5, &[("end-user", "jason")], |n| {
        n == "reviews-v1"
    });
    let rs = bed.load("/other", 20, 2, &[]);
    assert!(
        rs.iter().all(|r| r.status == 200 && r.name == "reviews-v2"),
        "after the edit, no header must go to v2: {:?}",
        tally(&rs)
    );
    let updates = bed
        .client
        .envoy_stats("vhds")
        .into_iter()
        .filter(|(n, _)| n.ends_with("config_reload"))
        .map(|(_, v)| v)
        .sum::<u64>();
    assert!(updates >= 2, "VHDS delivered the edit ({updates} reloads)");
    // After a control plane restart the sidecar reconnects, claims the virtual hosts it
    // holds, and still gets the next edit (Envoy subscribes to them again on the new
    // stream): jason back to v2.
    bed.cp.restart();
    let id = format!("sidecar~{}~client.default~", bed.client.ip);
    let ok = wait_until(READY, || {
        let rows: Vec<Value> = bed
            .cp
            .get("/debug/syncz")
            .ok()
            .and_then(|(_, b)| serde_json::from_str(&b).ok())
            .unwrap_or_default();
        rows.iter().any(|r| {
            r["proxy"].as_str().is_some_and(|p| p.starts_with(&id))
                && !r["types"]["vhds"]["acked_version"]
                    .as_str()
                    .unwrap_or("")
                    .is_empty()
        })
    });
    assert!(
        ok,
        "the client's virtual hosts are current after the restart\n{}",
        bed.diag()
    );
    write_config(bed.config_dir(), "vs.yaml", &vs_yaml(&jason_to("v2", "v1")));
    bed.wait_all("jason -> v2 again", "/", 5, &[("end-user", "jason")], |n| {
        n == "reviews-v2"
    });
}

#[test]
fn header_end_user_jason_goes_to_v2() {
    if !need_root("header_end_user_jason_goes_to_v2") {
        return;
    }
    header_routing(false);
}

#[test]
fn header_end_user_jason_goes_to_v2_delta_xds() {
    if !need_root("header_end_user_jason_goes_to_v2_delta_xds") {
        return;
    }
    header_routing(true);
}

// ---------------------------------------------------------------------------------------
// d) faults, retries, timeouts

#[test]
fn faults_retries_and_timeouts() {
    if !need_root("faults_retries_and_timeouts") {
        return;
    }
    let vs = vs_yaml(
        "  - match:
    - uri:
        prefix: /abort
    fault:
      abort:
        percentage:
          value: 50
        httpStatus: 503
    route:
    - destination:
        host: reviews
  - match:
    - uri:
        prefix: /delay
    fault:
      delay:
        percentage:
          value: 100
        fixedDelay: 1s
    route:
    - destination:
        host: reviews
  - match:
    - uri:
        prefix: /retry
    retries:
      attempts: 3
      retryOn: 5xx
    route:
    - destination:
        host: reviews
  - match:
    - uri:
        prefix: /noretry
    retries:
      attempts: 0
    route:
    - destination:
        host: reviews
  - match:
    - uri:
        prefix: /timeout
    timeout: 1s
    route:
    - destination:
        host: reviews
  - route:
    - destination:
        host: reviews
",
    );
    let bed = Bed::new(
        &[Backend {
            name: "reviews-v1",
            version: "v1",
        }],
        &[("vs.yaml", vs)],
        false,
    );
    let backend = &bed.backends[0];
    bed.wait_all("plain route", "/plain", 3, &[], |n| n == "reviews-v1");

    // Abort 50% with 503.
    let n = 400;
    let rs = bed.load("/abort", n, 4, &[]);
    let t = tally(&rs);
    let aborted = rs
        .iter()
        .filter(|r| r.status == 503 && r.name.is_empty())
        .count();
    let ok = rs
        .iter()
        .filter(|r| r.status == 200 && r.name == "reviews-v1")
        .count();
    assert_eq!(aborted + ok, n, "only 503 (fault) or 200 (backend): {t:?}");
    let share = 100.0 * aborted as f64 / n as f64;
    eprintln!("abort: {aborted} of {n} ({share:.1}%) got the fault's 503");
    assert!(
        (40.0..=60.0).contains(&share),
        "abort share {share:.1}% not within 50±10 ({t:?})"
    );
    let fault_note = rs.iter().find(|r| r.status == 503).map(|r| r.note.clone());
    assert!(
        fault_note
            .as_deref()
            .is_some_and(|b| b.contains("fault filter abort")),
        "a fault abort's body says so: {fault_note:?}"
    );

    // Fixed delay 1s at 100%.
    for _ in 0..2 {
        let (status, secs) = bed.timed_curl("/delay");
        assert_eq!(status, 200, "/delay");
        assert!(
            secs >= 0.9,
            "/delay took {secs:.3}s, expected the 1s fault delay"
        );
    }
    let rs = bed.load("/delay", 4, 4, &[]);
    assert!(
        rs.iter().all(|r| r.status == 200 && r.secs >= 0.9),
        "4 concurrent delayed requests: {rs:?}"
    );

    // Retries: attempts 3 on 5xx turn a backend failing twice into a 200, after 3 attempts.
    let inbound = || cluster_stat(backend, "inbound|8080||", "upstream_rq_total");
    let retries = || cluster_stat(&bed.client, CLUSTER, "upstream_rq_retry");
    let (in0, re0) = (inbound(), retries());
    let (status, body) = bed
        .client
        .curl(&format!("{SVC_URL}/retry?flaky=retry-key&fail=2"), &[]);
    assert_eq!(status, 200, "retried flaky call: {body}\n{}", bed.diag());
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["name"], "reviews-v1");
    let attempts = wait_until(Duration::from_secs(5), || inbound() - in0 >= 3);
    assert!(
        attempts,
        "backend inbound requests: {} (expected 3)",
        inbound() - in0
    );
    assert_eq!(inbound() - in0, 3, "the backend saw exactly 3 attempts");
    assert_eq!(retries() - re0, 2, "client sidecar retried twice");
    assert_eq!(
        cluster_stat(&bed.client, CLUSTER, "upstream_rq_retry_success"),
        1,
        "one retry succeeded"
    );

    // Without retries the same flaky call fails, after exactly one attempt.
    let (in0, re0) = (inbound(), retries());
    let (status, body) = bed
        .client
        .curl(&format!("{SVC_URL}/noretry?flaky=noretry-key&fail=2"), &[]);
    assert_eq!(status, 503, "flaky call without retries: {body}");
    assert!(
        body.contains("reviews-v1"),
        "the 503 is the backend's: {body}"
    );
    assert!(wait_until(Duration::from_secs(5), || inbound() - in0 >= 1));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(inbound() - in0, 1, "exactly one attempt without retries");
    assert_eq!(retries() - re0, 0, "no retry without retries");

    // A 1s timeout cuts a 3s backend; the same backend without the timeout takes 3s.
    let (status, secs) = bed.timed_curl("/timeout?delay=3");
    assert_eq!(status, 504, "timeout 1s vs delay 3s");
    assert!(secs < 2.5, "504 came after {secs:.3}s, expected ~1s");
    assert!(
        secs >= 0.9,
        "504 came after {secs:.3}s, before the 1s timeout"
    );
    let (status, secs) = bed.timed_curl("/plain?delay=3");
    assert_eq!(status, 200, "no timeout on the catch-all route");
    assert!(secs >= 2.9, "the backend's delay is 3s, took {secs:.3}s");
    assert!(
        cluster_stat(&bed.client, CLUSTER, "upstream_rq_timeout") >= 1,
        "client sidecar counted the timeout"
    );
    assert_no_rejections(&bed);
}

// ---------------------------------------------------------------------------------------
// e) live reload, bad edits keep the last good config

/// `/debug/configz` errors: objects with `file`, `object`, `field`, `reason`.
fn config_errors(bed: &Bed) -> Vec<Value> {
    bed.configz()
        .map(|v| v["errors"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default()
}

/// The first error reported for the config file `name` (by its path).
fn error_for<'a>(errs: &'a [Value], name: &str) -> Option<&'a Value> {
    let suffix = format!("/{name}");
    errs.iter()
        .find(|e| e["file"].as_str().is_some_and(|f| f.ends_with(&suffix)))
}

#[test]
fn config_edits_apply_live_and_bad_edits_keep_routing() {
    if !need_root("config_edits_apply_live_and_bad_edits_keep_routing") {
        return;
    }
    let mut bed = Bed::new(
        &two_versions(),
        &[("dr.yaml", dr_yaml("")), ("vs.yaml", vs_all_to("v1"))],
        false,
    );
    bed.wait_all("all to v1", "/", 10, &[], |n| n == "reviews-v1");
    let envoy_pids: Vec<_> = bed.pods().iter().map(|p| p.envoy_pid()).collect();
    let cp_pid = bed.cp.pid();
    assert!(cp_pid.is_some());

    // Edit: 100% v2.
    write_config(bed.config_dir(), "vs.yaml", &vs_all_to("v2"));
    bed.wait_all("after edit: all to v2", "/", 10, &[], |n| n == "reviews-v2");
    let rs = bed.load("/after-edit", 40, 4, &[]);
    assert!(
        rs.iter().all(|r| r.status == 200 && r.name == "reviews-v2"),
        "{:?}",
        tally(&rs)
    );
    let now: Vec<_> = bed.pods().iter().map(|p| p.envoy_pid()).collect();
    assert_eq!(now, envoy_pids, "no Envoy restarted");
    assert_eq!(bed.cp.pid(), cp_pid, "pilotfish not restarted");
    assert!(bed.cp.running(), "pilotfish still running");
    for i in 0..bed.backends.len() {
        assert!(bed.backends[i].envoy_running());
    }
    assert!(bed.client.envoy_running());
    assert!(config_errors(&bed).is_empty(), "{:?}", config_errors(&bed));

    // A VirtualService routing to a subset the DestinationRule does not define.
    write_config(bed.config_dir(), "vs.yaml", &vs_all_to("v9"));
    let mut errs = Vec::new();
    let seen = wait_until(READY, || {
        errs = config_errors(&bed);
        error_for(&errs, "vs.yaml").is_some()
    });
    assert!(
        seen,
        "no config error for vs.yaml: {errs:?}\n{}",
        bed.diag()
    );
    let e = error_for(&errs, "vs.yaml").unwrap();
    eprintln!("missing-subset error as reported: {e}");
    assert_eq!(
        e["field"], "spec.http[0].route[0].destination.subset",
        "error names the field path: {e}"
    );
    assert!(
        e["object"]
            .as_str()
            .is_some_and(|o| o.contains("VirtualService") && o.contains("reviews")),
        "error names the object: {e}"
    );
    assert!(
        e["reason"].as_str().is_some_and(|r| r.contains("v9")),
        "error names the subset: {e}"
    );
    let rs = bed.load("/after-missing-subset", 40, 4, &[]);
    assert!(
        rs.iter().all(|r| r.status == 200 && r.name == "reviews-v2"),
        "routing stays on v2 after a bad VirtualService: {:?}\n{}",
        tally(&rs),
        bed.diag()
    );
    // The last good VirtualService is what is served.
    let cz = bed.configz().unwrap();
    let served = cz["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "VirtualService" && o["name"] == "reviews")
        .unwrap_or_else(|| panic!("VirtualService reviews not served: {cz}"));
    assert!(served.to_string().contains("\"v2\""), "served VS: {served}");

    // Malformed YAML in the same file.
    write_config(
        bed.config_dir(),
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews\n  http:\n  - route: {\n",
    );
    let mut errs = Vec::new();
    let seen = wait_until(READY, || {
        errs = config_errors(&bed);
        error_for(&errs, "vs.yaml").is_some_and(|e| !e.to_string().contains("v9"))
    });
    assert!(seen, "no YAML error for vs.yaml: {errs:?}\n{}", bed.diag());
    let e = error_for(&errs, "vs.yaml").unwrap();
    eprintln!("malformed-YAML error as reported: {e}");
    assert!(
        e["reason"].as_str().is_some_and(|r| r.contains("line 7")),
        "the YAML error says where (line 7): {e}"
    );
    let rs = bed.load("/after-bad-yaml", 40, 4, &[]);
    assert!(
        rs.iter().all(|r| r.status == 200 && r.name == "reviews-v2"),
        "routing stays on v2 after malformed YAML: {:?}\n{}",
        tally(&rs),
        bed.diag()
    );
    let now: Vec<_> = bed.pods().iter().map(|p| p.envoy_pid()).collect();
    assert_eq!(now, envoy_pids, "no Envoy restarted");
    assert_eq!(bed.cp.pid(), cp_pid, "pilotfish not restarted");
    assert_no_rejections(&bed);

    // Fixing the file clears the error and applies it.
    write_config(bed.config_dir(), "vs.yaml", &vs_all_to("v1"));
    bed.wait_all("after fix: all to v1", "/", 10, &[], |n| n == "reviews-v1");
    let cleared = wait_until(READY, || config_errors(&bed).is_empty());
    assert!(cleared, "errors after the fix: {:?}", config_errors(&bed));
}

// ---------------------------------------------------------------------------------------
// f) control plane crash and restart

#[test]
fn pilotfish_crash_keeps_traffic_and_proxies_resync() {
    if !need_root("pilotfish_crash_keeps_traffic_and_proxies_resync") {
        return;
    }
    let mut bed = Bed::new(
        &two_versions(),
        &[("dr.yaml", dr_yaml("")), ("vs.yaml", vs_all_to("v2"))],
        false,
    );
    bed.wait_all("all to v2", "/", 10, &[], |n| n == "reviews-v2");

    bed.cp.kill();
    assert!(!bed.cp.running());
    for p in bed.pods() {
        let down = wait_until(READY, || {
            p.envoy_stat("control_plane.connected_state") == Some(0)
        });
        assert!(down, "pod {} still connected after SIGKILL", p.name);
    }
    let rs = bed.load("/while-down", 40, 4, &[]);
    assert!(
        rs.iter().all(|r| r.status == 200 && r.name == "reviews-v2"),
        "traffic without a control plane: {:?}\n{}",
        tally(&rs),
        bed.diag()
    );

    bed.cp.restart();
    for p in bed.pods() {
        let up = wait_until(Duration::from_secs(45), || {
            p.envoy_stat("control_plane.connected_state") == Some(1)
        });
        assert!(up, "pod {} did not reconnect\n{}", p.name, bed.diag());
    }
    // The new instance knows every proxy.
    let mut syncz = String::new();
    let listed = wait_until(READY, || {
        syncz = bed.cp.get("/debug/syncz").map(|r| r.1).unwrap_or_default();
        bed.pods()
            .iter()
            .all(|p| syncz.contains(&format!("sidecar~{}~{}.default~", p.ip, p.name)))
    });
    assert!(listed, "syncz of the new instance: {syncz}");
    let rows: Vec<Value> = serde_json::from_str(&syncz).unwrap();
    assert_eq!(
        rows.len(),
        bed.pods().len(),
        "one stream per proxy: {syncz}"
    );

    let rs = bed.load("/after-restart", 40, 4, &[]);
    assert!(
        rs.iter().all(|r| r.status == 200 && r.name == "reviews-v2"),
        "traffic after the restart: {:?}\n{}",
        tally(&rs),
        bed.diag()
    );
    // Still driven by the new instance: an edit applies.
    write_config(bed.config_dir(), "vs.yaml", &vs_all_to("v1"));
    bed.wait_all("edit after restart: all to v1", "/", 10, &[], |n| {
        n == "reviews-v1"
    });
    assert_no_rejections(&bed);
}

// ---------------------------------------------------------------------------------------
// g) circuit breaking and outlier detection

#[test]
fn circuit_breaker_trips_under_concurrency() {
    if !need_root("circuit_breaker_trips_under_concurrency") {
        return;
    }
    let dr = dr_yaml(
        "  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 1
      http:
        http1MaxPendingRequests: 1
        maxRequestsPerConnection: 1
",
    );
    let bed = Bed::new(
        &[Backend {
            name: "reviews-v1",
            version: "v1",
        }],
        &[("dr.yaml", dr)],
        false,
    );
    bed.wait_all("one request", "/", 3, &[], |n| n == "reviews-v1");
    let cb = bed
        .client
        .envoy_admin("/config_dump?resource=dynamic_active_clusters");
    assert!(
        cb.contains("\"max_pending_requests\": 1"),
        "circuit breaker not in CDS"
    );
    let overflow0 = cluster_stat(&bed.client, CLUSTER, "upstream_rq_pending_overflow");

    let rs = bed.load("/?hold=1", 20, 20, &[]);
    let t = tally(&rs);
    eprintln!("circuit breaker: {t:?}");
    let rejected = rs.iter().filter(|r| r.status == 503).count();
    let ok = rs
        .iter()
        .filter(|r| r.status == 200 && r.name == "reviews-v1")
        .count();
    assert_eq!(rejected + ok, 20, "only 200 or 503: {t:?}");
    assert!(ok >= 1, "some requests get through: {t:?}");
    assert!(
        rejected >= 1,
        "some requests are shed: {t:?}\n{}",
        bed.diag()
    );
    let overflow = cluster_stat(&bed.client, CLUSTER, "upstream_rq_pending_overflow") - overflow0;
    assert!(
        overflow > 0,
        "upstream_rq_pending_overflow {overflow}: {:?}",
        bed.client
            .envoy_stats("reviews.*(overflow|cx_open|rq_pending)")
    );
    // Shed requests are Envoy's own (no backend name), marked as overflow.
    assert!(
        rs.iter()
            .filter(|r| r.status == 503)
            .all(|r| r.name.is_empty()),
        "shed requests never reached the backend: {t:?}"
    );
    assert_no_rejections(&bed);
}

#[test]
fn outlier_detection_ejects_failing_endpoint() {
    if !need_root("outlier_detection_ejects_failing_endpoint") {
        return;
    }
    let dr = dr_yaml(
        "  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 30s
      maxEjectionPercent: 100
",
    );
    let mut bed = Bed::new(
        &[
            Backend {
                name: "reviews-good",
                version: "v1",
            },
            Backend {
                name: "reviews-bad",
                version: "v1",
            },
        ],
        &[("dr.yaml", dr)],
        false,
    );
    // The harness waits for a pod's app to answer 200, so the failing app replaces the
    // healthy one once the pod is up.
    bed.restart_app(1, &["--fail-all"]);
    let (status, body) = bed.backends[1].curl(&format!("http://127.0.0.1:{PORT}/"), &[]);
    assert_eq!(status, 503, "the bad backend fails everything: {body}");
    // Ready: the client has both endpoints.
    let bad_ep = bed.backends[1].addr();
    let good_ep = bed.backends[0].addr();
    let ok = wait_until(READY, || {
        let c = bed.client.envoy_admin("/clusters");
        c.contains(&format!("{CLUSTER}::{bad_ep}::"))
            && c.contains(&format!("{CLUSTER}::{good_ep}::"))
    });
    assert!(ok, "client lacks the two endpoints\n{}", bed.diag());

    let ejected = || {
        cluster_stat(
            &bed.client,
            CLUSTER,
            "outlier_detection.ejections_enforced_total",
        )
    };
    assert_eq!(ejected(), 0);
    let mut seen = Vec::new();
    let ok = wait_until(READY, || {
        seen.extend(bed.load("/warm", 10, 1, &[]));
        ejected() > 0
    });
    assert!(
        ok,
        "no ejection after {} requests: {:?}\n{}",
        seen.len(),
        tally(&seen),
        bed.diag()
    );
    let clusters = bed.client.envoy_admin("/clusters");
    assert!(
        clusters.contains(&format!(
            "{CLUSTER}::{bad_ep}::health_flags::/failed_outlier_check"
        )),
        "bad endpoint flagged: {}",
        clusters
            .lines()
            .filter(|l| l.contains("health_flags"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let rs = bed.load("/after-ejection", 40, 4, &[]);
    assert!(
        rs.iter()
            .all(|r| r.status == 200 && r.name == "reviews-good"),
        "after ejection every request is served by the healthy pod: {:?}\n{}",
        tally(&rs),
        bed.diag()
    );
    assert_no_rejections(&bed);
}

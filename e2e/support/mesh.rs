//! Pods on one machine: a Linux bridge `pfbr<N>` (10.77.<N>.1/24 in the root namespace) and
//! network namespaces `pf-<N>-<name>` joined to it by veth pairs, each with the test app, and
//! optionally a stock Envoy sidecar (uid/gid 1337) behind Istio's iptables rules.
//!
//! N is claimed through a file `mesh-<N>.owner` (holding the owner's pid) in a state
//! directory shared by all test binaries, under a lock; resources of an N whose owner is gone
//! are swept before claiming.
use super::cmd::{must, quiet, run, Out};
use super::{app_py, envoy_bin, pilotfish_bin, tail, trace, wait_until, ControlPlane, SERIAL};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

const NETNS_PREFIX: &str = "pf-";
const BRIDGE_PREFIX: &str = "pfbr";
const VETH_PREFIX: &str = "pfv";
/// The sidecar's uid and gid, as Istio's.
pub const PROXY_UID: u32 = 1337;
/// Pod addresses are 10..200; VIPs ([`Mesh::vip`]) from 200.
const FIRST_HOST: u8 = 10;

// ---------------------------------------------------------------------------------------
// Claiming N and sweeping leftovers.

/// Shared by every test binary: `/run/pilotfish-e2e` (or `$TMPDIR/pilotfish-e2e`).
fn state_dir() -> PathBuf {
    let run = PathBuf::from("/run/pilotfish-e2e");
    if fs::create_dir_all(&run).is_ok() {
        return run;
    }
    let tmp = std::env::temp_dir().join("pilotfish-e2e");
    fs::create_dir_all(&tmp).expect("creating the e2e state dir");
    tmp
}

fn owner_file(n: u8) -> PathBuf {
    state_dir().join(format!("mesh-{n}.owner"))
}

fn pids_file(n: u8) -> PathBuf {
    state_dir().join(format!("mesh-{n}.pids"))
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn owner_alive(n: u8) -> bool {
    fs::read_to_string(owner_file(n))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .is_some_and(pid_alive)
}

fn list_netns() -> Vec<String> {
    let o = run(
        Command::new("ip").args(["netns", "list"]),
        Duration::from_secs(20),
    );
    o.stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn list_links() -> Vec<String> {
    let o = run(
        Command::new("ip").args(["-o", "link", "show"]),
        Duration::from_secs(20),
    );
    o.stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|s| {
            s.trim_end_matches(':')
                .split('@')
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

fn etc_netns_dirs() -> Vec<String> {
    fs::read_dir("/etc/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(NETNS_PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

fn n_of_netns(name: &str) -> Option<u8> {
    name.strip_prefix(NETNS_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

fn n_of_link(name: &str) -> Option<u8> {
    if let Some(rest) = name.strip_prefix(BRIDGE_PREFIX) {
        return rest.parse().ok();
    }
    let rest = name.strip_prefix(VETH_PREFIX)?;
    rest.split('h').next()?.parse().ok()
}

fn n_of_state_file(name: &str) -> Option<u8> {
    let rest = name.strip_prefix("mesh-")?;
    rest.split('.').next()?.parse().ok()
}

fn kill_pid(pid: u32) {
    quiet(&["kill", "-KILL", &pid.to_string()]);
}

fn netns_pids(ns: &str) -> Vec<u32> {
    run(
        Command::new("ip").args(["netns", "pids", ns]),
        Duration::from_secs(20),
    )
    .stdout
    .split_whitespace()
    .filter_map(|p| p.parse().ok())
    .collect()
}

/// Kills every process in a namespace and deletes it with its /etc/netns dir.
fn delete_netns(ns: &str) {
    for _ in 0..50 {
        let pids = netns_pids(ns);
        if pids.is_empty() {
            break;
        }
        for p in pids {
            kill_pid(p);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if list_netns().iter().any(|n| n == ns) {
        quiet(&["ip", "netns", "del", ns]);
    }
    let _ = fs::remove_dir_all(Path::new("/etc/netns").join(ns));
}

/// Removes everything that belongs to mesh N (not the owner file).
fn cleanup_n(n: u8) {
    for ns in list_netns() {
        if n_of_netns(&ns) == Some(n) {
            delete_netns(&ns);
        }
    }
    for d in etc_netns_dirs() {
        if n_of_netns(&d) == Some(n) {
            let _ = fs::remove_dir_all(Path::new("/etc/netns").join(d));
        }
    }
    // veths first, then the bridge.
    let mut links = list_links();
    links.sort_by_key(|l| l.starts_with(BRIDGE_PREFIX));
    for l in links {
        if n_of_link(&l) == Some(n) {
            quiet(&["ip", "link", "del", &l]);
        }
    }
    if let Ok(text) = fs::read_to_string(pids_file(n)) {
        for pid in text
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if ["pilotfish", "envoy", "app.py"]
                .iter()
                .any(|k| cmdline.contains(k))
            {
                kill_pid(pid);
            }
        }
    }
    let _ = fs::remove_file(pids_file(n));
    // Temp dirs (logs, bootstraps) of a crashed run.
    let prefix = format!("pf-mesh-{n}-");
    if let Ok(rd) = fs::read_dir(std::env::temp_dir()) {
        for e in rd.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Sweeps resources of every mesh whose owner process is gone. Call under the claim lock.
fn sweep_stale() {
    let mut ns: BTreeSet<u8> = BTreeSet::new();
    ns.extend(list_netns().iter().filter_map(|n| n_of_netns(n)));
    ns.extend(etc_netns_dirs().iter().filter_map(|n| n_of_netns(n)));
    ns.extend(list_links().iter().filter_map(|n| n_of_link(n)));
    if let Ok(rd) = fs::read_dir(state_dir()) {
        ns.extend(
            rd.filter_map(|e| e.ok())
                .filter_map(|e| n_of_state_file(&e.file_name().to_string_lossy())),
        );
    }
    for n in ns {
        if !owner_alive(n) {
            eprintln!("e2e: sweeping leftovers of mesh {n} (owner gone)");
            cleanup_n(n);
            let _ = fs::remove_file(owner_file(n));
        }
    }
}

fn subnet_in_use(n: u8) -> bool {
    let o = run(
        Command::new("ip").args(["-o", "-4", "addr", "show"]),
        Duration::from_secs(20),
    );
    o.stdout.contains(&format!(" 10.77.{n}."))
}

/// Claims a free N (1..=250), distinct from every live mesh of every process.
fn claim() -> u8 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let lock_path = state_dir().join("claim.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", lock_path.display()));
    lock.lock().expect("locking the mesh claim file");
    sweep_stale();
    let pid = std::process::id();
    let start = pid
        .wrapping_mul(7)
        .wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(13));
    for i in 0..250u32 {
        let n = ((start.wrapping_add(i)) % 250 + 1) as u8;
        if subnet_in_use(n) {
            continue;
        }
        let path = owner_file(n);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                writeln!(f, "{pid}").expect("writing the mesh owner file");
                let _ = lock.unlock();
                return n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("claiming {}: {e}", path.display()),
        }
    }
    panic!(
        "no free mesh number in 1..=250 (see {})",
        state_dir().display()
    );
}

/// Records a root-namespace process of mesh `n` for the sweep of a later run.
pub fn register_pid(n: u8, pid: u32) {
    if let Ok(mut f) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(pids_file(n))
    {
        let _ = writeln!(f, "{pid}");
    }
}

/// A free TCP port on `ip` (bound and released).
pub fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on {ip}: {e}"))
}

// ---------------------------------------------------------------------------------------
// Mesh.

/// A bridge `pfbr<N>` with 10.77.<N>.1/24 in the root namespace. Holds a lock that
/// serializes meshes within one test binary. Drop removes every pod, veth, namespace and
/// process of this N, then the bridge.
pub struct Mesh {
    n: u8,
    bridge: String,
    dir: Option<tempfile::TempDir>,
    used_hosts: Mutex<BTreeSet<u8>>,
    _serial: Option<MutexGuard<'static, ()>>,
}

impl Mesh {
    /// Claims N, creates the bridge. Panics with a clear message on failure.
    pub fn new() -> Mesh {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        Mesh::build(Some(serial))
    }

    /// A second mesh (another bridge and subnet, no route to this one) for the same test:
    /// two clusters on two networks.
    pub fn another(&self) -> Mesh {
        Mesh::build(None)
    }

    fn build(serial: Option<MutexGuard<'static, ()>>) -> Mesh {
        if let Err(e) = super::ensure_host_tools() {
            panic!("Mesh::new: {e}");
        }
        trace("mesh: claiming");
        let n = claim();
        trace(&format!("mesh: claimed {n}"));
        let dir = tempfile::Builder::new()
            .prefix(&format!("pf-mesh-{n}-"))
            .tempdir()
            .expect("creating the mesh temp dir");
        // The sidecar (uid 1337) reads its bootstrap from here.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let mesh = Mesh {
            n,
            bridge: format!("{BRIDGE_PREFIX}{n}"),
            dir: Some(dir),
            used_hosts: Mutex::new(BTreeSet::new()),
            _serial: serial,
        };
        let br = mesh.bridge.as_str();
        must(&[
            "ip",
            "link",
            "add",
            br,
            "type",
            "bridge",
            "forward_delay",
            "0",
            "nf_call_iptables",
            "0",
        ]);
        let cidr = format!("{}/24", mesh.gateway());
        must(&["ip", "addr", "add", &cidr, "dev", br]);
        must(&["ip", "link", "set", br, "up"]);
        trace("mesh: bridge up");
        mesh
    }

    /// This mesh's number (third octet of its subnet).
    pub fn n(&self) -> u8 {
        self.n
    }

    /// The bridge's name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// 10.77.<N>.<host>.
    pub fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.n, host)
    }

    /// 10.77.<N>.1: the bridge, in the root namespace (where the control plane listens).
    pub fn gateway(&self) -> Ipv4Addr {
        self.addr(1)
    }

    /// 10.77.<N>.(200+i): an address no interface has, for service VIPs.
    pub fn vip(&self, i: u8) -> Ipv4Addr {
        assert!(i < 50, "vip index {i} too large");
        self.addr(200 + i)
    }

    /// A temp dir that lives as long as the mesh (readable by the sidecar's uid).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    /// Records a root-namespace process (a control plane) so a later run can kill it if this
    /// one crashes.
    pub fn register_pid(&self, pid: u32) {
        register_pid(self.n, pid);
    }

    /// A pod with a sidecar pointed at `cp` (labels app=<name>, namespace default, port 8080).
    pub fn pod(&self, name: &str, cp: &ControlPlane) -> Pod {
        self.start_pod(PodSpec::new(name).control_plane(cp))
    }

    /// A plain pod outside the mesh: the app only, no sidecar, no iptables.
    pub fn plain_pod(&self, name: &str) -> Pod {
        self.start_pod(PodSpec::new(name).sidecar(false))
    }

    /// Creates the namespace, veth and address, starts the app and waits until it answers
    /// across the bridge; with a sidecar, applies `pilotfish iptables`, writes the bootstrap
    /// with `pilotfish bootstrap` and starts Envoy as uid/gid 1337, waiting for its admin.
    pub fn start_pod(&self, spec: PodSpec) -> Pod {
        assert!(
            !spec.name.is_empty()
                && spec
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "pod name {:?}: use [a-z0-9-]",
            spec.name
        );
        let host = {
            let mut used = self.used_hosts.lock().unwrap_or_else(|e| e.into_inner());
            let host = match spec.host {
                Some(h) => {
                    assert!(
                        (FIRST_HOST..200).contains(&h) && !used.contains(&h),
                        "pod {}: address 10.77.{}.{h} is taken or outside {FIRST_HOST}..200",
                        spec.name,
                        self.n
                    );
                    h
                }
                None => (FIRST_HOST..200)
                    .find(|h| !used.contains(h))
                    .expect("too many pods in one mesh"),
            };
            used.insert(host);
            host
        };
        let netns = format!("{NETNS_PREFIX}{}-{}", self.n, spec.name);
        let dir = self.dir().join(&spec.name);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("pod {}: {e}", spec.name));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let ip = self.addr(host);
        let mut pod = Pod {
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            netns: netns.clone(),
            ip,
            port: spec.port,
            labels: spec.labels.clone(),
            sidecar: spec.sidecar,
            gateway: self.gateway(),
            dir: dir.clone(),
            host_if: format!("{VETH_PREFIX}{}h{host}", self.n),
            app: None,
            envoy: None,
            envoy_cmd: None,
        };

        // /etc/netns/<ns>/hosts is bind-mounted over /etc/hosts by `ip netns exec`.
        let etc = Path::new("/etc/netns").join(&netns);
        fs::create_dir_all(&etc).unwrap();
        pod.hosts(&[]);
        // No DNS server outside the test: lookups that miss the hosts file go to the pod's
        // own loopback and fail at once.
        fs::write(
            etc.join("resolv.conf"),
            format!(
                "nameserver {}\noptions timeout:1 attempts:1\n",
                spec.nameserver.as_deref().unwrap_or("127.0.0.1")
            ),
        )
        .unwrap();

        must(&["ip", "netns", "add", &netns]);
        must(&[
            "ip",
            "link",
            "add",
            &pod.host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns,
        ]);
        must(&["ip", "link", "set", &pod.host_if, "master", &self.bridge]);
        must(&["ip", "link", "set", &pod.host_if, "up"]);
        let cidr = format!("{ip}/24");
        let gw = self.gateway().to_string();
        for args in [
            vec!["ip", "link", "set", "lo", "up"],
            vec!["ip", "addr", "add", &cidr, "dev", "eth0"],
            vec!["ip", "link", "set", "eth0", "up"],
            vec!["ip", "route", "add", "default", "via", &gw],
        ] {
            let mut full = vec!["ip", "netns", "exec", &netns];
            full.extend(args);
            must(&full);
        }

        trace(&format!("pod {}: netns ready", spec.name));
        // The app, as root (never uid 1337, or its traffic would bypass the sidecar).
        let app_log = dir.join("app.log");
        let mut app = pod.netns_cmd();
        app.args(["setpriv", "--pdeathsig", "KILL", "python3"])
            .arg(app_py())
            .args(["--name", &spec.name, "--port", &spec.port.to_string()])
            .args(&spec.app_args);
        pod.app = Some(spawn_logged(&mut app, &app_log));
        let url = pod.url("/");
        let answered = wait_until(Duration::from_secs(30), || {
            if let Some(Ok(Some(_))) = pod.app.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            let o = run(
                Command::new("curl").args(curl_args(&url, &["-m", "2"])),
                Duration::from_secs(5),
            );
            // Any status will do (a `--fail-all` app answers 503) as long as it is this app.
            o.stdout.contains(&format!("\"{}\"", spec.name))
        });
        assert!(
            answered,
            "pod {}: app did not answer on {url} across the bridge within 30s\n--- app log ---\n{}",
            spec.name,
            tail(&app_log, 40)
        );

        trace(&format!("pod {}: app answers", spec.name));
        if spec.sidecar {
            // Interception first, as Istio's init container does (a gateway has none).
            if !spec.gateway {
                let o = run(
                    pod.netns_cmd()
                        .arg(pilotfish_bin())
                        .arg("iptables")
                        .args(spec.dns.then_some("--redirect-dns"))
                        .args(&spec.iptables_args),
                    Duration::from_secs(60),
                );
                assert!(
                    o.ok(),
                    "pod {}: pilotfish iptables: {}",
                    spec.name,
                    o.describe()
                );
            }

            let bootstrap = dir.join("envoy.json");
            let labels = spec
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let xds = spec
                .xds_address
                .clone()
                .unwrap_or_else(|| format!("{}:15010", self.gateway()));
            let mut b = Command::new(pilotfish_bin());
            b.args(["bootstrap", "--namespace", &spec.namespace])
                .args(["--workload", &spec.name, "--ip", &ip.to_string()])
                .args(["--service-account", &spec.service_account])
                .args(["--xds-address", &xds, "-o"])
                .arg(&bootstrap);
            if !labels.is_empty() {
                b.args(["--labels", &labels]);
            }
            if spec.delta {
                b.arg("--delta");
            }
            if spec.gateway {
                b.arg("--gateway");
            }
            if spec.dns {
                b.arg("--dns-capture");
            }
            if let Some(l) = &spec.locality {
                b.args(["--locality", l]);
            }
            if let Some(n) = &spec.network {
                b.args(["--network", n]);
            }
            if let Some(sec) = &spec.secure {
                // Root and token where uid 1337 can read them (the control plane's state dir
                // is private).
                let root = dir.join("root-cert.pem");
                fs::copy(sec.state_dir.join("root-cert.pem"), &root)
                    .expect("copying the root certificate");
                let token = dir.join("token");
                let sa = sec
                    .token_service_account
                    .clone()
                    .unwrap_or_else(|| spec.service_account.clone());
                let o = run(
                    Command::new(pilotfish_bin())
                        .args([
                            "token",
                            "--namespace",
                            &spec.namespace,
                            "--service-account",
                            &sa,
                            "--ttl",
                            "24h",
                        ])
                        .arg("--state-dir")
                        .arg(&sec.state_dir)
                        .arg("-o")
                        .arg(&token),
                    Duration::from_secs(30),
                );
                assert!(
                    o.ok(),
                    "pod {}: pilotfish token: {}",
                    spec.name,
                    o.describe()
                );
                for f in [&root, &token] {
                    fs::set_permissions(f, fs::Permissions::from_mode(0o644)).unwrap();
                }
                b.arg("--root-cert")
                    .arg(&root)
                    .arg("--token-file")
                    .arg(&token);
            }
            let o = run(&mut b, Duration::from_secs(60));
            assert!(
                o.ok(),
                "pod {}: pilotfish bootstrap: {}",
                spec.name,
                o.describe()
            );
            fs::set_permissions(&bootstrap, fs::Permissions::from_mode(0o644)).unwrap();

            let base_id = u32::from(self.n) * 1000 + u32::from(host);
            pod.envoy_cmd = Some(EnvoyCmd {
                bootstrap,
                base_id,
                extra: spec.envoy_args.clone(),
            });
            trace(&format!("pod {}: iptables and bootstrap done", spec.name));
            pod.start_envoy();
            trace(&format!("pod {}: envoy admin up", spec.name));
        }
        pod
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        trace(&format!("mesh {}: dropping", self.n));
        cleanup_n(self.n);
        trace(&format!("mesh {}: dropped", self.n));
        let _ = fs::remove_file(owner_file(self.n));
    }
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
    let f2 = f.try_clone().unwrap();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(f))
        .stderr(Stdio::from(f2))
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"))
}

/// curl arguments: quiet but showing errors, no proxy from the environment, timeouts, and
/// the status code on a last line of its own.
fn curl_args(url: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "-sS",
        "--noproxy",
        "*",
        "--connect-timeout",
        "5",
        "-m",
        "20",
        "-w",
        "\n%{http_code}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v.push(url.to_string());
    v
}

fn kill_child(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

// ---------------------------------------------------------------------------------------
// PodSpec and Pod.

/// What a pod runs. `PodSpec::new("a")`: namespace `default`, labels `app=a`, app on port
/// 8080, with a sidecar pointed at 10.77.<N>.1:15010 unless [`PodSpec::xds`] /
/// [`PodSpec::control_plane`] says otherwise.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub port: u16,
    pub sidecar: bool,
    pub xds_address: Option<String>,
    pub delta: bool,
    pub app_args: Vec<String>,
    pub iptables_args: Vec<String>,
    pub envoy_args: Vec<String>,
    /// Last octet of the pod's address; None: the lowest free one from 10.
    pub host: Option<u8>,
    /// Connect to the TLS xDS port with a token (see [`PodSpec::secure`]).
    pub secure: Option<Secure>,
    /// A standalone gateway: Envoy with a `--gateway` bootstrap and no traffic capture.
    pub gateway: bool,
    /// The sidecar answers the app's DNS (`--redirect-dns`, `--dns-capture`).
    pub dns: bool,
    /// The pod's resolver (resolv.conf); None: 127.0.0.1 (nothing answers).
    pub nameserver: Option<String>,
    /// The sidecar's locality, `region/zone/subzone` (bootstrap `--locality`).
    pub locality: Option<String>,
    /// The sidecar's network (bootstrap `--network`).
    pub network: Option<String>,
}

/// How a secure sidecar authenticates.
#[derive(Clone, Debug)]
pub struct Secure {
    pub state_dir: PathBuf,
    /// Present a token for this service account instead of the pod's own.
    pub token_service_account: Option<String>,
}

impl PodSpec {
    pub fn new(name: &str) -> PodSpec {
        PodSpec {
            name: name.to_string(),
            namespace: "default".to_string(),
            labels: BTreeMap::from([("app".to_string(), name.to_string())]),
            service_account: "default".to_string(),
            port: 8080,
            sidecar: true,
            xds_address: None,
            delta: false,
            app_args: vec![],
            iptables_args: vec![],
            envoy_args: vec![],
            host: None,
            secure: None,
            gateway: false,
            dns: false,
            nameserver: None,
            locality: None,
            network: None,
        }
    }
    /// The sidecar's network (node metadata NETWORK).
    pub fn network(mut self, n: &str) -> Self {
        self.network = Some(n.to_string());
        self
    }
    /// The sidecar's locality (`region/zone/subzone`).
    pub fn locality(mut self, l: &str) -> Self {
        self.locality = Some(l.to_string());
        self
    }
    /// The sidecar answers the app's DNS: iptables redirects UDP 53 to it and its node
    /// metadata asks pilotfish for the DNS listener.
    pub fn dns(mut self) -> Self {
        self.dns = true;
        self
    }
    /// The pod's resolv.conf names this server.
    pub fn nameserver(mut self, ip: &str) -> Self {
        self.nameserver = Some(ip.to_string());
        self
    }
    /// A gateway pod: its Envoy is a standalone gateway (`pilotfish bootstrap --gateway`,
    /// node type `router`) configured by Gateway resources, with no iptables capture.
    pub fn gateway(mut self) -> Self {
        self.gateway = true;
        self.sidecar = true;
        self
    }
    /// Connect to the control plane's TLS port with a bearer token for the pod's service
    /// account, and so get certificates (mTLS).
    pub fn secure(mut self, cp: &ControlPlane) -> Self {
        self.xds_address = Some(cp.secure_address.clone());
        self.secure = Some(Secure {
            state_dir: cp.state_dir(),
            token_service_account: None,
        });
        self
    }
    /// Present another service account's token (to show it gets nothing).
    pub fn token_of(mut self, service_account: &str) -> Self {
        if let Some(s) = &mut self.secure {
            s.token_service_account = Some(service_account.to_string());
        }
        self
    }
    /// Pins the pod's address to 10.77.<N>.<host> (10..200), e.g. to write a
    /// WorkloadEntry before the pod exists.
    pub fn host(mut self, host: u8) -> Self {
        self.host = Some(host);
        self
    }
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.to_string();
        self
    }
    /// Adds (or replaces) a label.
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.to_string(), v.to_string());
        self
    }
    pub fn service_account(mut self, sa: &str) -> Self {
        self.service_account = sa.to_string();
        self
    }
    /// The app's port.
    pub fn port(mut self, p: u16) -> Self {
        self.port = p;
        self
    }
    pub fn sidecar(mut self, on: bool) -> Self {
        self.sidecar = on;
        self
    }
    pub fn xds(mut self, addr: &str) -> Self {
        self.xds_address = Some(addr.to_string());
        self
    }
    pub fn control_plane(self, cp: &ControlPlane) -> Self {
        let a = cp.xds_address.clone();
        self.xds(&a)
    }
    /// DELTA_GRPC instead of GRPC.
    pub fn delta(mut self, on: bool) -> Self {
        self.delta = on;
        self
    }
    /// An extra argument for `e2e/app.py` (e.g. `--fail-all`).
    pub fn app_arg(mut self, a: &str) -> Self {
        self.app_args.push(a.to_string());
        self
    }
    /// An extra argument for `pilotfish iptables`.
    pub fn iptables_arg(mut self, a: &str) -> Self {
        self.iptables_args.push(a.to_string());
        self
    }
    /// An extra argument for Envoy.
    pub fn envoy_arg(mut self, a: &str) -> Self {
        self.envoy_args.push(a.to_string());
        self
    }
}

#[derive(Clone, Debug)]
struct EnvoyCmd {
    bootstrap: PathBuf,
    base_id: u32,
    extra: Vec<String>,
}

/// A running pod. Drop kills its processes and deletes its namespace (printing the Envoy and
/// app log tails when the test is panicking).
pub struct Pod {
    pub name: String,
    /// Kubernetes namespace (node metadata), not the network namespace.
    pub namespace: String,
    /// The network namespace, `pf-<N>-<name>`.
    pub netns: String,
    pub ip: Ipv4Addr,
    /// The app's port.
    pub port: u16,
    pub labels: BTreeMap<String, String>,
    pub sidecar: bool,
    gateway: Ipv4Addr,
    dir: PathBuf,
    host_if: String,
    app: Option<Child>,
    envoy: Option<Child>,
    envoy_cmd: Option<EnvoyCmd>,
}

impl Pod {
    /// `ip netns exec <netns>` (add the program and its arguments).
    pub fn netns_cmd(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns]);
        c
    }

    /// `http://<ip>:<port><path>`: the app, by pod IP.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{}", self.ip, self.port, path)
    }

    /// `<ip>:<port>`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// `sh -c cmd` inside the pod, as root (60s timeout).
    pub fn exec(&self, cmd: &str) -> Out {
        run(
            self.netns_cmd().args(["sh", "-c", cmd]),
            Duration::from_secs(60),
        )
    }

    /// `sh -c cmd` inside the pod as the sidecar's uid/gid 1337 (bypasses interception).
    pub fn exec_as_proxy(&self, cmd: &str) -> Out {
        let id = PROXY_UID.to_string();
        run(
            self.netns_cmd()
                .args(["setpriv", "--reuid", &id, "--regid", &id, "--clear-groups"])
                .args(["sh", "-c", cmd]),
            Duration::from_secs(60),
        )
    }

    /// curl inside the pod (as the app would: through the sidecar when there is one).
    /// Returns (status, body); status 0 when no HTTP answer came, with curl's error as body.
    pub fn curl(&self, url: &str, extra_args: &[&str]) -> (u16, String) {
        let o = run(
            self.netns_cmd()
                .arg("curl")
                .args(curl_args(url, extra_args)),
            Duration::from_secs(60),
        );
        parse_curl(&o)
    }

    /// curl inside the pod as uid 1337 (not intercepted).
    pub fn curl_as_proxy(&self, url: &str, extra_args: &[&str]) -> (u16, String) {
        let id = PROXY_UID.to_string();
        let o = run(
            self.netns_cmd()
                .args(["setpriv", "--reuid", &id, "--regid", &id, "--clear-groups"])
                .arg("curl")
                .args(curl_args(url, extra_args)),
            Duration::from_secs(60),
        );
        parse_curl(&o)
    }

    /// GET http://127.0.0.1:15000<path> inside the pod (Envoy's admin); empty on failure.
    pub fn envoy_admin(&self, path: &str) -> String {
        let (status, body) = self.curl(&format!("http://127.0.0.1:15000{path}"), &["-m", "10"]);
        if status == 0 {
            String::new()
        } else {
            body
        }
    }

    /// Every counter/gauge whose name matches the regex `filter`, as (name, value).
    pub fn envoy_stats(&self, filter: &str) -> Vec<(String, u64)> {
        self.envoy_admin(&format!("/stats?filter={}", pct_encode(filter)))
            .lines()
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(": ")?;
                Some((k.trim().to_string(), v.trim().parse().ok()?))
            })
            .collect()
    }

    /// The value of the stat named exactly `name` (e.g. `control_plane.connected_state`).
    pub fn envoy_stat(&self, name: &str) -> Option<u64> {
        self.envoy_stats(&format!("^{}$", regex_escape(name)))
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Rewrites /etc/netns/<netns>/hosts: localhost, this pod, and `entries` (name, ip).
    /// Takes effect for every later `exec`/`curl`.
    pub fn hosts(&self, entries: &[(&str, &str)]) {
        let mut text = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{}\n",
            self.ip, self.name
        );
        for (name, ip) in entries {
            text.push_str(&format!("{ip}\t{name}\n"));
        }
        let path = Path::new("/etc/netns").join(&self.netns).join("hosts");
        // Written in place (same inode), so an existing bind mount sees it too.
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        f.write_all(text.as_bytes()).unwrap();
    }

    /// The mesh's gateway (the bridge address, 10.77.<N>.1).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The pod's directory (bootstrap `envoy.json`, `envoy.log`, `app.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn envoy_log(&self) -> PathBuf {
        self.dir.join("envoy.log")
    }

    pub fn app_log(&self) -> PathBuf {
        self.dir.join("app.log")
    }

    /// Envoy and app log tails, for panic messages.
    pub fn logs(&self) -> String {
        let mut s = format!("=== pod {} ({}, {}) ===\n", self.name, self.netns, self.ip);
        if self.sidecar {
            s.push_str(&format!(
                "--- envoy log ({}) ---\n{}\n",
                self.envoy_log().display(),
                tail(&self.envoy_log(), 60)
            ));
        }
        s.push_str(&format!("--- app log ---\n{}\n", tail(&self.app_log(), 20)));
        s
    }

    /// Whether the sidecar process is still running.
    pub fn envoy_running(&mut self) -> bool {
        matches!(self.envoy.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The sidecar's pid.
    pub fn envoy_pid(&self) -> Option<u32> {
        self.envoy.as_ref().map(|c| c.id())
    }

    /// Kills the sidecar (SIGKILL).
    pub fn kill_envoy(&mut self) {
        if let Some(mut c) = self.envoy.take() {
            kill_child(&mut c);
        }
    }

    /// Starts (or restarts) the sidecar as uid/gid 1337 and waits until its admin answers.
    pub fn start_envoy(&mut self) {
        self.kill_envoy();
        let spec = self
            .envoy_cmd
            .clone()
            .unwrap_or_else(|| panic!("pod {} has no sidecar", self.name));
        let id = PROXY_UID.to_string();
        let mut c = self.netns_cmd();
        c.args(["setpriv", "--reuid", &id, "--regid", &id, "--clear-groups"])
            .args(["--pdeathsig", "KILL"])
            .arg(envoy_bin())
            .arg("-c")
            .arg(&spec.bootstrap)
            .args([
                "--disable-hot-restart",
                "--base-id",
                &spec.base_id.to_string(),
            ])
            .args(["-l", "warning", "--concurrency", "1"])
            .args(&spec.extra);
        let log = self.envoy_log();
        self.envoy = Some(spawn_logged(&mut c, &log));
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut up = false;
        while std::time::Instant::now() < deadline && self.envoy_running() {
            let (status, _) = self.curl("http://127.0.0.1:15000/ready", &["-m", "2"]);
            if status != 0 {
                up = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let running = self.envoy_running();
        assert!(
            up,
            "pod {}: Envoy's admin did not come up within 60s (running: {running})\n{}",
            self.name,
            self.logs()
        );
    }
}

fn parse_curl(o: &Out) -> (u16, String) {
    let (body, code) = o
        .stdout
        .rsplit_once('\n')
        .unwrap_or(("", o.stdout.as_str()));
    match code.trim().parse::<u16>() {
        Ok(c) if c != 0 => (c, body.to_string()),
        _ => {
            let mut why = o.stderr.trim().to_string();
            if o.timed_out {
                why.push_str(" (timed out)");
            }
            (0, why)
        }
    }
}

fn pct_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Drop for Pod {
    fn drop(&mut self) {
        trace(&format!("pod {}: dropping", self.name));
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        self.kill_envoy();
        if let Some(mut c) = self.app.take() {
            kill_child(&mut c);
        }
        delete_netns(&self.netns);
        if list_links().iter().any(|l| *l == self.host_if) {
            quiet(&["ip", "link", "del", &self.host_if]);
        }
        trace(&format!("pod {}: dropped", self.name));
    }
}

//! A real Kubernetes API server for tests (envtest style): etcd and kube-apiserver v1.37.2
//! built once from their Go modules into `tools_cache()` by `e2e/support/kube/build.sh`
//! (about 7 minutes on 2 cores, the first time only), started on free loopback ports by
//! `start.sh` with RBAC, an admin token and service-account keys (TokenRequest/TokenReview
//! work), stopped on Drop. No kubelet: Pods are stored, never run. `kubectl` is Debian's
//! (installed with apt when missing).

use super::{repo_root, run, tools_cache, with_file_lock, Out};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

pub const KUBE_VERSION: &str = "v1.37.2";

fn scripts() -> PathBuf {
    repo_root().join("e2e").join("support").join("kube")
}

/// The directory with etcd and kube-apiserver (built if missing).
pub fn kube_bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tools_cache()
            .join(format!("kube-{KUBE_VERSION}"))
            .join("bin");
        let have = |d: &Path| d.join("etcd").is_file() && d.join("kube-apiserver").is_file();
        if !have(&dir) {
            with_file_lock(&dir.with_file_name("build.lock"), || {
                if have(&dir) {
                    return;
                }
                eprintln!(
                    "e2e: building etcd and kube-apiserver {KUBE_VERSION} into {} (once, ~7 min)",
                    dir.display()
                );
                let o = run(
                    Command::new(scripts().join("build.sh"))
                        .arg(&dir)
                        .env("WITH_KCM", "0"),
                    Duration::from_secs(40 * 60),
                );
                assert!(
                    o.ok(),
                    "building the Kubernetes control plane failed: {}",
                    o.describe()
                );
            });
        }
        assert!(
            have(&dir),
            "etcd/kube-apiserver missing in {}",
            dir.display()
        );
        dir
    })
    .clone()
}

/// `kubectl`, installed from Debian's packages when missing.
pub fn kubectl_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let works = || {
            run(
                Command::new("kubectl").args(["version", "--client"]),
                Duration::from_secs(20),
            )
            .ok()
        };
        if !works() {
            with_file_lock(&super::tools_dir().join("apt.lock"), || {
                if works() {
                    return;
                }
                eprintln!("e2e: installing kubectl with apt-get");
                let o = super::sh(
                    "export DEBIAN_FRONTEND=noninteractive; apt-get update -q && \
                     (apt-get install -y -q kubectl || apt-get install -y -q kubernetes-client)",
                    Duration::from_secs(600),
                );
                assert!(o.ok(), "installing kubectl failed: {}", o.describe());
            });
        }
        PathBuf::from("kubectl")
    })
    .clone()
}

/// A running API server; stopped (and its state removed) on Drop.
pub struct KubeApi {
    pub kubeconfig: PathBuf,
    state: tempfile::TempDir,
    _slot: Slot,
}

/// API servers a test binary runs at once (each takes ~250 MB and a core while starting;
/// more at once on two cores makes them and pilotfish miss their deadlines).
const AT_ONCE: usize = 2;
static RUNNING: std::sync::Mutex<usize> = std::sync::Mutex::new(0);
static FREED: std::sync::Condvar = std::sync::Condvar::new();

/// One of the `AT_ONCE` places, held while an API server runs.
struct Slot;

impl Slot {
    fn take() -> Slot {
        let mut n = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        while *n >= AT_ONCE {
            n = FREED.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *RUNNING.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        FREED.notify_one();
    }
}

impl KubeApi {
    pub fn start() -> KubeApi {
        KubeApi::start_with_service_cidr("10.0.0.0/24")
    }

    /// With Service cluster IPs from `cidr` (a test mesh's VIPs).
    pub fn start_with_service_cidr(cidr: &str) -> KubeApi {
        let bin = kube_bin_dir();
        let slot = Slot::take();
        let state = tempfile::tempdir().unwrap();
        // start.sh picks free ports and then binds them: another process can take one in
        // between (a bind error); a fresh try picks others.
        let mut o = None;
        for _ in 0..3 {
            let out = run(
                Command::new(scripts().join("start.sh"))
                    .env("KUBEAPI_BIN_DIR", &bin)
                    .env("KUBEAPI_STATE_DIR", state.path().join("kubeapi"))
                    .env("KUBEAPI_SERVICE_CIDR", cidr),
                Duration::from_secs(180),
            );
            let retry = !out.ok() && out.stderr.contains("address already in use");
            o = Some(out);
            if !retry {
                break;
            }
        }
        let o = o.unwrap();
        assert!(o.ok(), "starting kube-apiserver failed: {}", o.describe());
        let kubeconfig = PathBuf::from(o.stdout.trim());
        assert!(kubeconfig.is_file(), "no kubeconfig: {}", o.describe());
        KubeApi {
            kubeconfig,
            state,
            _slot: slot,
        }
    }

    /// `kubectl --kubeconfig … ARGS`.
    pub fn kubectl(&self, args: &[&str]) -> Out {
        run(
            Command::new(kubectl_bin())
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(args),
            Duration::from_secs(60),
        )
    }

    /// `kubectl apply -f FILE` with `yaml` written to FILE.
    pub fn apply(&self, yaml: &str) -> Out {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let f = self.state.path().join(format!("apply-{n}.yaml"));
        std::fs::write(&f, yaml).unwrap();
        self.kubectl(&["apply", "-f", f.to_str().unwrap()])
    }

    /// Kills kube-apiserver (SIGKILL; etcd keeps the data) and returns its command line.
    pub fn kill_apiserver(&self) -> Vec<String> {
        let st = self.state.path().join("kubeapi");
        let pid = std::fs::read_to_string(st.join("apiserver.pid")).unwrap();
        let pid = pid.trim();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let _ = run(
            Command::new("kill").args(["-9", pid]),
            Duration::from_secs(10),
        );
        std::thread::sleep(Duration::from_millis(300));
        args
    }

    /// Starts kube-apiserver again with `args` (from `kill_apiserver`) and waits until it
    /// answers.
    pub fn start_apiserver(&self, args: &[String]) {
        let port = args
            .iter()
            .position(|a| a == "--secure-port")
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_default();
        self.start_apiserver_at(args, &port)
    }

    /// Starts a kube-apiserver with `args` serving on `port` (another port than the
    /// kubeconfig's: a second API server on the same etcd) and waits until it answers.
    pub fn start_apiserver_at(&self, args: &[String], port: &str) {
        let st = self.state.path().join("kubeapi");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(st.join("logs").join("apiserver.log"))
            .unwrap();
        let child = Command::new(&args[0])
            .args(&args[1..])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::fs::write(st.join("apiserver.pid"), child.id().to_string()).unwrap();
        std::mem::forget(child); // stop.sh stops it by pid
        let server = format!("https://127.0.0.1:{port}");
        let up = super::wait_until(Duration::from_secs(60), || {
            self.kubectl(&["--server", &server, "get", "--raw", "/readyz"])
                .ok()
        });
        assert!(
            up,
            "kube-apiserver did not come back:\n{}",
            self.log_tail(20)
        );
    }

    /// The kube-apiserver log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self
            .state
            .path()
            .join("kubeapi")
            .join("logs")
            .join("apiserver.log");
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        let _ = run(
            Command::new(scripts().join("stop.sh"))
                .env("KUBEAPI_STATE_DIR", self.state.path().join("kubeapi")),
            Duration::from_secs(30),
        );
    }
}

pub const HELM_VERSION: &str = "v3.21.4";

/// `helm`, built once from its Go module (`helm.sh/helm/v3/cmd/helm`) into `tools_cache()`.
pub fn helm_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = tools_cache().join(format!("helm-{HELM_VERSION}"));
        let bin = dir.join("bin").join("helm");
        let works = |b: &Path| {
            b.is_file() && run(Command::new(b).arg("version"), Duration::from_secs(20)).ok()
        };
        if !works(&bin) {
            with_file_lock(&dir.join("install.lock"), || {
                if works(&bin) {
                    return;
                }
                eprintln!("e2e: building helm {HELM_VERSION} into {}", dir.display());
                let o = run(
                    Command::new("go")
                        .arg("install")
                        .arg(format!("helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"))
                        .env("GOBIN", dir.join("bin"))
                        .env("GOPATH", dir.join("gopath"))
                        .env("GOFLAGS", "-modcacherw")
                        .env("CGO_ENABLED", "0"),
                    Duration::from_secs(40 * 60),
                );
                assert!(o.ok(), "building helm failed: {}", o.describe());
            });
        }
        assert!(works(&bin), "helm not usable at {}", bin.display());
        bin
    })
    .clone()
}

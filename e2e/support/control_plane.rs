//! `pilotfish serve` as a guard: started in the root namespace, waited for until `/ready`
//! answers 200, killed on Drop (printing its log tail when the test panics).
use super::mesh::{free_port, register_pid};
use super::{pilotfish_bin, tail, Mesh};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `start`/`restart` wait for `/ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct ControlPlane {
    /// xDS listen address (10.77.<N>.1:<port> for a mesh; pods connect here).
    pub xds_address: String,
    /// Debug/monitoring HTTP address (127.0.0.1:<port>).
    pub http_address: String,
    pub config_dir: PathBuf,
    /// xDS over TLS (same IP as `xds_address`, another free port).
    pub secure_address: String,
    /// The plaintext ext_authz port (loopback).
    pub authz_address: String,
    extra_args: Vec<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
    mesh_pids: Option<u8>,
    /// Starting is done once `/ready` answers at all (200 or not).
    unready_ok: bool,
}

impl ControlPlane {
    /// Starts `pilotfish serve` for a mesh: xDS on the mesh's gateway address, HTTP on
    /// loopback, both on free ports. Panics (with the log tail) if it is not ready in time.
    pub fn start(mesh: &Mesh, config_dir: &Path) -> ControlPlane {
        Self::start_with(mesh, config_dir, &[])
    }

    /// [`ControlPlane::start`] with extra `serve` flags.
    pub fn start_with(mesh: &Mesh, config_dir: &Path, extra_args: &[&str]) -> ControlPlane {
        Self::try_start(mesh, config_dir, extra_args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`ControlPlane::start_with`], returning the failure instead of panicking.
    pub fn try_start(
        mesh: &Mesh,
        config_dir: &Path,
        extra_args: &[&str],
    ) -> Result<ControlPlane, String> {
        retry_taken_ports(|| {
            let gw = mesh.gateway();
            let xds = format!("{gw}:{}", free_port(gw));
            let http = format!("127.0.0.1:{}", free_port(Ipv4Addr::LOCALHOST));
            let mut cp = Self::new(&xds, &http, config_dir, extra_args, Some(mesh.dir()));
            cp.mesh_pids = Some(mesh.n());
            cp.spawn_and_wait()?;
            if let Some(pid) = cp.pid() {
                register_pid(mesh.n(), pid);
            }
            Ok(cp)
        })
    }

    /// A control plane on loopback only (no mesh): xDS and HTTP on 127.0.0.1 free ports.
    pub fn start_local(config_dir: &Path, extra_args: &[&str]) -> ControlPlane {
        retry_taken_ports(|| {
            let xds = format!("127.0.0.1:{}", free_port(Ipv4Addr::LOCALHOST));
            let http = format!("127.0.0.1:{}", free_port(Ipv4Addr::LOCALHOST));
            Self::try_start_at(&xds, &http, config_dir, extra_args)
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like `start_local`, but returns as soon as the debug port answers, ready or not (for
    /// tests of what happens before pilotfish is ready).
    pub fn start_local_unready(config_dir: &Path, extra_args: &[&str]) -> ControlPlane {
        let xds = format!("127.0.0.1:{}", free_port(Ipv4Addr::LOCALHOST));
        let http = format!("127.0.0.1:{}", free_port(Ipv4Addr::LOCALHOST));
        let mut cp = Self::new(&xds, &http, config_dir, extra_args, None);
        cp.unready_ok = true;
        cp.spawn_and_wait().unwrap_or_else(|e| panic!("{e}"));
        cp
    }

    /// Starts on the given addresses.
    pub fn try_start_at(
        xds_address: &str,
        http_address: &str,
        config_dir: &Path,
        extra_args: &[&str],
    ) -> Result<ControlPlane, String> {
        let mut cp = Self::new(xds_address, http_address, config_dir, extra_args, None);
        cp.spawn_and_wait().map(|_| cp)
    }

    fn new(
        xds: &str,
        http: &str,
        config_dir: &Path,
        extra_args: &[&str],
        parent: Option<&Path>,
    ) -> ControlPlane {
        let mut b = tempfile::Builder::new();
        b.prefix("pf-cp-");
        // Inside the mesh's dir when there is one, so a crashed run's sweep removes it.
        let dir = match parent {
            Some(p) => b.tempdir_in(p),
            None => b.tempdir(),
        }
        .expect("control plane temp dir");
        let ip: std::net::Ipv4Addr = xds
            .rsplit_once(':')
            .and_then(|(h, _)| h.parse().ok())
            .unwrap_or(std::net::Ipv4Addr::LOCALHOST);
        let secure_address = format!("{ip}:{}", super::mesh::free_port(ip));
        let authz_address = format!(
            "127.0.0.1:{}",
            super::mesh::free_port(std::net::Ipv4Addr::LOCALHOST)
        );
        ControlPlane {
            secure_address,
            authz_address,
            xds_address: xds.to_string(),
            http_address: http.to_string(),
            config_dir: config_dir.to_path_buf(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            dir,
            child: None,
            mesh_pids: None,
            unready_ok: false,
        }
    }

    /// The xDS port.
    pub fn xds_port(&self) -> u16 {
        self.xds_address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0)
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `serve`'s stdout and stderr (appended across restarts).
    /// The CA root, token key and other state (kept across `restart`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A bearer token for a service account, signed by this control plane's key.
    pub fn token(&self, namespace: &str, service_account: &str, ttl: &str) -> String {
        let out = Command::new(pilotfish_bin())
            .args([
                "token",
                "--namespace",
                namespace,
                "--service-account",
                service_account,
                "--ttl",
                ttl,
            ])
            .arg("--state-dir")
            .arg(self.state_dir())
            .output()
            .expect("running pilotfish token");
        assert!(
            out.status.success(),
            "pilotfish token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("serve.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines)
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = self.log_path();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("opening {}: {e}", log.display()))?;
        let _ = writeln!(f, "=== harness: starting pilotfish serve ===");
        let f2 = f.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL"])
            .arg(pilotfish_bin())
            .arg("serve")
            .arg("--config-dir")
            .arg(&self.config_dir)
            .args(["--xds-address", &self.xds_address])
            .args(["--http-address", &self.http_address])
            .args(["--secure-xds-address", &self.secure_address])
            .args(["--authz-address", &self.authz_address])
            .arg("--state-dir")
            .arg(self.state_dir())
            // Pods reach the plaintext port across the test bridge.
            .arg("--allow-plaintext-xds")
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting pilotfish serve: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!(
                    "pilotfish serve exited ({status}) before /ready on {}\n--- serve log ---\n{}",
                    self.http_address,
                    self.log_tail(60)
                ));
            }
            match self.get("/ready") {
                Ok((200, _)) => return Ok(()),
                Ok(_) if self.unready_ok => return Ok(()),
                _ => {}
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "pilotfish serve: GET http://{}/ready not 200 within {:?}\n--- serve log ---\n{}",
                    self.http_address,
                    READY_TIMEOUT,
                    self.log_tail(60)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL (a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after 10s (a graceful shutdown). Returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok().and_then(|s| s.code())
    }

    /// Kills and starts again on the same addresses; panics if it does not become ready.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn_and_wait() {
            panic!("restart: {e}");
        }
        if let (Some(n), Some(pid)) = (self.mesh_pids, self.pid()) {
            register_pid(n, pid);
        }
    }

    /// A gRPC channel to the TLS port, trusting the control plane's root and checking the
    /// name `pilotfish` (no client certificate).
    pub async fn secure_channel(&self) -> tonic::transport::Channel {
        let root = std::fs::read_to_string(self.state_dir().join("root-cert.pem")).unwrap();
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(root))
            .domain_name("pilotfish");
        tonic::transport::Channel::from_shared(format!("https://{}", self.secure_address))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// GET http://<http_address><path> (HTTP/1.0, 10s timeout) → (status, body).
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        http_get(&self.http_address, path, Duration::from_secs(10))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "=== control plane (xds {}, http {}) log {} ===\n{}",
                self.xds_address,
                self.http_address,
                self.log_path().display(),
                self.log_tail(80)
            );
        }
        self.kill();
    }
}

/// A minimal HTTP/1.0 GET (no new crates): (status, body).
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let sa = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let mut s = TcpStream::connect_timeout(&sa, timeout).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{addr}: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("{addr}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{addr}{path}: not an HTTP answer: {head:.200}"))?;
    Ok((status, body.to_string()))
}

/// Starts with `start`, again (on new ports) when a port picked free was taken by another
/// test before pilotfish bound it.
fn retry_taken_ports(
    mut start: impl FnMut() -> Result<ControlPlane, String>,
) -> Result<ControlPlane, String> {
    let mut attempt = 0;
    loop {
        match start() {
            Err(e) if attempt < 3 && e.contains("ddress already in use") => {
                attempt += 1;
                eprintln!("=== harness: a picked port was taken meanwhile; starting again ===");
            }
            r => return r,
        }
    }
}

//! `pilotfish-load`: plays N Envoy sidecars against pilotfish and measures it.
//!
//! ```text
//!  config dir (generated, edited) ──watch──► pilotfish ──ADS──► N simulated Envoys
//!       │ change written at t0                                  │ ACK of the new content at t1
//!       └──────────────── per stream: t1 − t0 (p50/p90/p99/max) ◄┘
//!  /proc/<pid>: CPU seconds, RSS, peak RSS          /metrics, /debug/syncz: cross-checks
//! ```
//! It starts pilotfish itself (`--spawn-pilotfish PATH`) or attaches to a running one
//! (`--xds-address`, `--http-address`, `--config-dir` = the directory it watches). "The new
//! version" is recognised by content, never by time: a marker header value in the routes and
//! fresh endpoint addresses (see `config`). Figures are printed as a table, or as JSON with
//! `--json`. Exit status: 0 when every stream converged with no unexpected NACK and the
//! control plane's `/debug/syncz` agrees with what the streams ACKed; 1 otherwise; 2 on
//! setup errors. Targets not met do not change the exit status.

mod config;
mod decode;
mod envoy;
mod grpc;
mod held;
mod proxy;
mod report;
mod sys;
mod track;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use config::{Gen, ProxySpec};
use proxy::{Cmd, Handle, Shared, StatsSnap};
use report::{Percentiles, ScenarioReport, Target};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use sys::{proc_stat, Rng};
use track::{Bits, Slot};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Idle,
    Change,
    Churn,
    Fanout,
    Storm,
    Large,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DecodeMode {
    /// Decode every resource of every response.
    Full,
    /// Decode each distinct resource content once and reuse the result for identical bytes.
    Cached,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "pilotfish-load",
    about = "Plays N Envoy sidecars (ADS, SotW or delta) against pilotfish, drives config changes and measures convergence, CPU and memory"
)]
pub struct Args {
    /// xDS address of a running pilotfish (default 127.0.0.1:15010; a free port with --spawn-pilotfish).
    #[arg(long)]
    pub xds_address: Option<String>,
    /// Monitoring/debug HTTP address (default 127.0.0.1:15014; a free port with --spawn-pilotfish).
    #[arg(long)]
    pub http_address: Option<String>,
    /// Start this pilotfish binary (`serve`) on the generated config instead of attaching.
    #[arg(long)]
    pub spawn_pilotfish: Option<PathBuf>,
    /// Extra argument for the spawned `pilotfish serve` (repeatable).
    #[arg(long = "pilotfish-arg", allow_hyphen_values = true)]
    pub pilotfish_args: Vec<String>,
    /// Directory the config is generated into (the one pilotfish watches). Required when
    /// attaching; a temporary directory by default with --spawn-pilotfish.
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    /// pid of the control plane for /proc figures when attaching (default: the process
    /// listening on the xDS port).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Simulated proxies (one ADS stream and one HTTP/2 connection each).
    #[arg(long, default_value_t = 2000)]
    pub proxies: usize,
    /// Services generated (each: Service, 3 WorkloadEntries, DestinationRule, VirtualService).
    #[arg(long, default_value_t = 1000)]
    pub services: usize,
    /// Namespaces the services are spread over.
    #[arg(long, default_value_t = 10)]
    pub namespaces: usize,
    /// Give every proxy the same labels (app=load-client) instead of its pod's app/version.
    #[arg(long)]
    pub shared_labels: bool,
    /// Incremental (delta) xDS instead of state of the world.
    #[arg(long)]
    pub delta: bool,
    /// NACK this percentage of updates (never a type's first response).
    #[arg(long, default_value_t = 0.0)]
    pub nack_percent: f64,
    /// Scenarios to run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub scenario: Vec<Scenario>,
    /// Churn duration in seconds.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Churn rate: pod events (endpoint address changes) per second.
    #[arg(long, default_value_t = 40.0)]
    pub churn_rate: f64,
    /// VirtualService edits in the change scenario (one at a time, each waited for).
    #[arg(long, default_value_t = 5)]
    pub changes: usize,
    /// Seconds of idle CPU measurement.
    #[arg(long, default_value_t = 10)]
    pub idle_seconds: u64,
    /// Reconnect storms in the storm scenario (one after the other; the control plane's RSS
    /// after each shows whether reconnects leak).
    #[arg(long, default_value_t = 1)]
    pub storms: usize,
    /// Proxies kept for the fan-out scenario.
    #[arg(long, default_value_t = 1000)]
    pub fanout_proxies: usize,
    /// Routes in the large (gateway) scenario.
    #[arg(long, default_value_t = 10_000)]
    pub large_routes: usize,
    /// The control plane's debounce quiet period in ms (passed to a spawned pilotfish; the
    /// change target is "p99 ≤ 300 ms beyond the debounce window").
    #[arg(long, default_value_t = 100)]
    pub debounce_ms: u64,
    /// Seconds to wait for convergence of one step before giving up.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Streams started at a time during the initial connect (each batch waited for).
    #[arg(long, default_value_t = 250)]
    pub connect_batch: usize,
    /// Resource decoding: full (every response) or cached (once per distinct content).
    #[arg(long, value_enum, default_value = "cached")]
    pub decode: DecodeMode,
    /// Reconnect backoff base and cap in ms (Envoy: 500 and 30000).
    #[arg(long, default_value_t = 500)]
    pub backoff_base_ms: u64,
    #[arg(long, default_value_t = 30_000)]
    pub backoff_max_ms: u64,
    /// Add a WorkloadEntry at this IP with proxy 0's labels and namespace, so a real Envoy
    /// bootstrapped with `--ip IP --namespace ns0 --labels app=svc0,version=v1` gets the
    /// same config as simulated proxy 0.
    #[arg(long)]
    pub twin_ip: Option<String>,
    /// A real Envoy binary: the large scenario starts it as the gateway proxy's twin and
    /// checks it accepts the config (same CDS/LDS/RDS versions, nothing rejected).
    #[arg(long)]
    pub envoy: Option<PathBuf>,
    /// pilotfish binary for `pilotfish bootstrap` (default: --spawn-pilotfish).
    #[arg(long)]
    pub pilotfish_bin: Option<PathBuf>,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file (with the table on stdout).
    #[arg(long)]
    pub json_file: Option<PathBuf>,
    /// Include every stream's ACKed versions in the JSON.
    #[arg(long)]
    pub dump_streams: bool,
    /// Keep the generated config directory (and the spawned pilotfish's log).
    #[arg(long)]
    pub keep: bool,
    /// PRNG seed (default: time).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// The control plane under test.
struct ControlPlane {
    xds: String,
    http: String,
    pid: Option<u32>,
    child: Option<std::process::Child>,
    log: Option<PathBuf>,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl ControlPlane {
    async fn spawn(
        a: &Args,
        bin: &PathBuf,
        dir: &std::path::Path,
        log: PathBuf,
    ) -> anyhow::Result<ControlPlane> {
        let xds = a
            .xds_address
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{}", sys::free_port()));
        let http = a
            .http_address
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{}", sys::free_port()));
        // Flags of newer pilotfish versions, passed when `serve --help` lists them: its own
        // state directory and TLS port, so runs never collide with another instance.
        let help = std::process::Command::new(bin)
            .args(["serve", "--help"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut extra: Vec<String> = Vec::new();
        let state = log.with_file_name("state");
        if help.contains("--state-dir")
            && !a
                .pilotfish_args
                .iter()
                .any(|x| x.starts_with("--state-dir"))
        {
            extra.extend(["--state-dir".to_string(), state.display().to_string()]);
        }
        if help.contains("--secure-xds-address")
            && !a
                .pilotfish_args
                .iter()
                .any(|x| x.starts_with("--secure-xds-address"))
        {
            extra.extend([
                "--secure-xds-address".to_string(),
                format!("127.0.0.1:{}", sys::free_port()),
            ]);
        }
        if help.contains("--authz-address")
            && !a
                .pilotfish_args
                .iter()
                .any(|x| x.starts_with("--authz-address"))
        {
            extra.extend([
                "--authz-address".to_string(),
                format!("127.0.0.1:{}", sys::free_port()),
            ]);
        }
        let f =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let setpriv = std::path::Path::new("/usr/bin/setpriv").exists();
        let mut cmd = if setpriv {
            let mut c = std::process::Command::new("/usr/bin/setpriv");
            c.args(["--pdeathsig", "KILL"]).arg(bin);
            c
        } else {
            std::process::Command::new(bin)
        };
        cmd.arg("serve")
            .arg("--config-dir")
            .arg(dir)
            .args(["--xds-address", &xds, "--http-address", &http])
            .args(["--debounce-ms", &a.debounce_ms.to_string()])
            .args(&extra)
            .args(&a.pilotfish_args)
            .stdin(std::process::Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut cp = ControlPlane {
            xds,
            http,
            pid: Some(child.id()),
            child: Some(child),
            log: Some(log),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(Ok(Some(st))) = cp.child.as_mut().map(|c| c.try_wait()) {
                cp.child = None;
                bail!(
                    "pilotfish exited ({st}) before /ready; log {}",
                    cp.log.as_ref().unwrap().display()
                );
            }
            if let Ok((200, _)) = sys::http_get(&cp.http, "/ready").await {
                return Ok(cp);
            }
            if Instant::now() > deadline {
                bail!("pilotfish not ready on {} within 120 s", cp.http);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The tool's scratch directory (spawned pilotfish's log and state, default config dir).
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Figures at the start of a measured step.
struct Mark {
    t: Instant,
    cpu: Option<f64>,
    tool_cpu: f64,
    stats: StatsSnap,
    server_bytes: Option<f64>,
    server_rejects: Option<f64>,
    server_admission: Option<f64>,
}

struct Load {
    a: Args,
    sh: Arc<Shared>,
    gen: Gen,
    cp: ControlPlane,
    handles: Vec<Option<Handle>>,
    active: Bits,
    rng: Rng,
    sampler: Option<sys::RssSampler>,
    baseline_rss_kb: Option<u64>,
    reports: Vec<ScenarioReport>,
    problems: Vec<String>,
    work: PathBuf,
}

fn kb_to_mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// The tool's own RSS, after giving back what the allocator kept of freed memory (the
/// messages in flight during the scenario), so that it shows what the streams hold.
fn tool_rss_mb() -> Option<f64> {
    // SAFETY: malloc_trim is thread safe and only releases memory that is already free.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
    proc_stat(std::process::id()).map(|s| kb_to_mb(s.rss_kb))
}

impl Load {
    fn slots(&self) -> usize {
        self.a.services + 1
    }

    fn active_handles(&self) -> impl Iterator<Item = &Handle> {
        self.handles
            .iter()
            .enumerate()
            .filter(|(i, _)| self.active.has(*i))
            .filter_map(|(_, h)| h.as_ref())
    }

    fn active_count(&self) -> usize {
        self.active.count()
    }

    /// (resource bytes sent, NACKs counted, streams refused by admission control).
    async fn metrics(&self) -> (Option<f64>, Option<f64>, Option<f64>) {
        match sys::http_get(&self.cp.http, "/metrics").await {
            Ok((200, text)) => (
                sys::metric_sum(&text, "pilotfish_xds_sent_bytes_total"),
                sys::metric_sum(&text, "pilot_total_xds_rejects_total"),
                sys::metric_sum(&text, "pilotfish_xds_admission_rejected_total"),
            ),
            _ => (None, None, None),
        }
    }

    async fn mark(&self) -> Mark {
        if let (Some(pid), Some(s)) = (self.cp.pid, &self.sampler) {
            sys::reset_hwm(pid);
            s.reset(pid);
        }
        let (server_bytes, server_rejects, server_admission) = self.metrics().await;
        Mark {
            t: Instant::now(),
            cpu: self.cp.pid.and_then(proc_stat).map(|s| s.cpu_s),
            tool_cpu: sys::self_cpu(),
            stats: self.sh.stats.snap(),
            server_bytes,
            server_rejects,
            server_admission,
        }
    }

    async fn figures(&self, name: &str, m: &Mark, out: track::Outcome) -> ScenarioReport {
        let now = self.cp.pid.and_then(proc_stat);
        let (server_bytes, server_rejects, server_admission) = self.metrics().await;
        let stats = self.sh.stats.snap().minus(&m.stats);
        let streams = self.active_count();
        let rss = now.map(|s| s.rss_kb);
        ScenarioReport {
            name: name.to_string(),
            streams,
            events: out.events,
            unconverged_events: out.unconverged_events,
            laggards: Vec::new(),
            ack_ms: Percentiles::of(&out.lat_ms),
            last_ack_ms: Percentiles::of(&out.last_ms),
            wall_s: m.t.elapsed().as_secs_f64(),
            bytes_received: stats.bytes,
            responses: stats.responses,
            server_bytes_sent: match (server_bytes, m.server_bytes) {
                (Some(a), Some(b)) => Some((a - b) as u64),
                _ => None,
            },
            server_rejects: match (server_rejects, m.server_rejects) {
                (Some(a), Some(b)) => Some((a - b) as u64),
                _ => None,
            },
            server_admission_rejected: match (server_admission, m.server_admission) {
                (Some(a), Some(b)) => Some((a - b) as u64),
                _ => None,
            },
            cp_cpu_s: match (now, m.cpu) {
                (Some(n), Some(c)) => Some(n.cpu_s - c),
                _ => None,
            },
            tool_cpu_s: sys::self_cpu() - m.tool_cpu,
            tool_rss_mb: tool_rss_mb(),
            cp_rss_mb: rss.map(kb_to_mb),
            cp_peak_rss_mb: self
                .sampler
                .as_ref()
                .map(|s| kb_to_mb(s.peak_kb().max(rss.unwrap_or(0)))),
            cp_hwm_mb: now.map(|s| kb_to_mb(s.hwm_kb)),
            rss_per_proxy_kb: match (rss, self.baseline_rss_kb) {
                (Some(r), Some(b)) if streams > 0 => Some((r as f64 - b as f64) / streams as f64),
                _ => None,
            },
            stats,
            extra: serde_json::Map::new(),
            targets: Vec::new(),
            verified: None,
        }
    }

    fn spawn_stream(&mut self, spec: ProxySpec) {
        let idx = spec.idx;
        let seed = self.rng.next_u64();
        let h = proxy::spawn(self.sh.clone(), spec, seed);
        if self.handles.len() <= idx {
            self.handles.resize_with(idx + 1, || None);
        }
        self.handles[idx] = Some(h);
        self.active.set(idx);
    }

    async fn close_stream(&mut self, idx: usize) {
        if let Some(h) = self.handles.get_mut(idx).and_then(Option::take) {
            let _ = h.cmd.send(Cmd::Close);
            let _ = tokio::time::timeout(Duration::from_secs(10), h.task).await;
        }
        self.active.clear(idx);
    }

    fn synced(&self, h: &Handle, routes: usize) -> bool {
        let v = h.view.lock().unwrap();
        v.connected && v.types_synced() && v.routes_seen >= routes
    }

    /// Waits until every stream in `idxs` has ACKed every type it subscribed to and seen
    /// every marker.
    async fn wait_synced(&self, idxs: &[usize], routes: usize, timeout: Duration) -> Vec<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let behind: Vec<usize> = idxs
                .iter()
                .copied()
                .filter(|i| {
                    self.handles
                        .get(*i)
                        .and_then(Option::as_ref)
                        .is_none_or(|h| !self.synced(h, routes))
                })
                .collect();
            if behind.is_empty() || Instant::now() > deadline {
                return behind;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every registered event reached every stream it expects (or times out).
    async fn wait_converged(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(self.a.timeout);
        while self.sh.tracker.open() > 0 {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    fn laggard_names(&self) -> Vec<String> {
        self.sh
            .tracker
            .laggards()
            .into_iter()
            .take(5)
            .filter_map(|i| self.handles.get(i).and_then(Option::as_ref))
            .map(|h| {
                let v = h.view();
                format!(
                    "{} (connected {}, errors {}, last error {:?})",
                    h.spec.node_id, v.connected, v.errors, v.last_error
                )
            })
            .collect()
    }

    async fn finish(&mut self, name: &str, m: &Mark) -> ScenarioReport {
        let laggards = self.laggard_names();
        let out = self.sh.tracker.finish();
        // Let the last ACKs/NACKs reach the control plane (and the follow-up pushes they
        // trigger run) before reading its counters.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut r = self.figures(name, m, out).await;
        r.laggards = laggards;
        if r.unconverged_events > 0 {
            self.problems.push(format!(
                "{name}: {} event(s) did not reach every stream within {} s: {:?}",
                r.unconverged_events, self.a.timeout, r.laggards
            ));
        }
        r
    }

    // ------------------------------------------------------------------ connect

    async fn connect(&mut self) -> anyhow::Result<ScenarioReport> {
        let m = self.mark().await;
        let n = self.a.proxies;
        let batch = self.a.connect_batch.max(1);
        let mut i = 0;
        while i < n {
            let end = (i + batch).min(n);
            for j in i..end {
                let spec =
                    config::proxy_spec(j, self.a.services, self.a.namespaces, self.a.shared_labels);
                self.spawn_stream(spec);
            }
            let idxs: Vec<usize> = (i..end).collect();
            let behind = self
                .wait_synced(&idxs, self.a.services, Duration::from_secs(self.a.timeout))
                .await;
            if !behind.is_empty() {
                let h = self.handles[behind[0]].as_ref().unwrap();
                let v = h.view();
                bail!(
                    "{} of {} streams did not sync within {} s (e.g. {}: connected {}, acked {:?}, markers seen {}/{}, last error {:?}){}",
                    behind.len(),
                    idxs.len(),
                    self.a.timeout,
                    h.spec.node_id,
                    v.connected,
                    v.acked_once,
                    v.routes_seen,
                    self.a.services,
                    v.last_error,
                    if i == 0 { " — is pilotfish watching --config-dir?" } else { "" }
                );
            }
            i = end;
        }
        let out = self.sh.tracker.finish();
        let mut r = self.figures("connect", &m, out).await;
        r.extra.insert(
            "initial_sync_s".into(),
            serde_json::json!(m.t.elapsed().as_secs_f64()),
        );
        r.extra.insert(
            "bytes_per_proxy".into(),
            serde_json::json!(r.bytes_received / n.max(1) as u64),
        );
        Ok(r)
    }

    // ------------------------------------------------------------------ scenarios

    async fn idle(&mut self) -> ScenarioReport {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let m = self.mark().await;
        tokio::time::sleep(Duration::from_secs(self.a.idle_seconds)).await;
        let mut r = self.finish("idle", &m).await;
        let secs = m.t.elapsed().as_secs_f64();
        let cores = r.cp_cpu_s.map(|c| c / secs);
        r.extra
            .insert("idle_cpu_cores".into(), serde_json::json!(cores));
        r.extra
            .insert("idle_seconds".into(), serde_json::json!(secs));
        r.targets.push(Target::new(
            format!(
                "control plane RSS ≤ 150 MB with {} proxies (issue: 2,000)",
                r.streams
            ),
            r.cp_rss_mb.map(|v| format!("{v:.0} MB")),
            r.cp_rss_mb.map(|v| v <= 150.0),
        ));
        r.targets.push(Target::new(
            "idle CPU ≈ 0 (≤ 1% of a core)".into(),
            cores.map(|c| format!("{:.2}% of a core", c * 100.0)),
            cores.map(|c| c <= 0.01),
        ));
        r
    }

    fn register(&self, slot: Slot, seq: u32, at: Instant) {
        self.sh.tracker.register(slot, seq, at, &self.active);
    }

    async fn change(&mut self) -> anyhow::Result<ScenarioReport> {
        let m = self.mark().await;
        for _ in 0..self.a.changes.max(1) {
            let k = self.rng.below(self.a.services as u64) as usize;
            self.register(
                Slot::Route(k as u32),
                self.gen.route_seq[k] + 1,
                Instant::now(),
            );
            self.gen.edit_route(k)?;
            if !self.wait_converged().await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut r = self.finish("change", &m).await;
        let beyond = r.ack_ms.p99.map(|p| p - self.a.debounce_ms as f64);
        r.extra
            .insert("debounce_ms".into(), serde_json::json!(self.a.debounce_ms));
        r.targets.push(Target::new(
            format!(
                "p99 to last ACK ≤ 300 ms beyond the {} ms debounce, {} proxies (issue: 2,000)",
                self.a.debounce_ms, r.streams
            ),
            beyond.map(|b| format!("p99 {:.0} ms = debounce + {b:.0} ms", r.ack_ms.p99.unwrap())),
            beyond.map(|b| b <= 300.0 && r.unconverged_events == 0),
        ));
        Ok(r)
    }

    async fn churn(&mut self) -> anyhow::Result<ScenarioReport> {
        let pid = self.cp.pid;
        let rss = || pid.and_then(proc_stat).map(|s| s.rss_kb);
        let m = self.mark().await;
        let rss_start = rss();
        let mut rss_10s = None;
        let dur = Duration::from_secs(self.a.duration);
        let interval = Duration::from_secs_f64(1.0 / self.a.churn_rate.max(0.001));
        let start = Instant::now();
        let mut i: u32 = 0;
        loop {
            let due = start + interval * i;
            if due.duration_since(start) >= dur {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
            let k = self.rng.below(self.a.services as u64) as usize;
            self.register(Slot::Ep(k as u32), self.gen.ep_seq[k] + 1, Instant::now());
            self.gen.churn(k)?;
            i += 1;
            if rss_10s.is_none() && start.elapsed() >= Duration::from_secs(10) {
                rss_10s = rss();
            }
        }
        // The working set of the last push, for the drift during the churn.
        let rss_last = rss();
        let converged = self.wait_converged().await;
        // Freed memory goes back to the kernel within one of pilotfish's trim periods (5 s):
        // what is still held after that was kept, not merely in flight.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let rss_end = rss();
        let mut r = self.finish("churn", &m).await;
        r.extra.insert(
            "rss_last_event_mb".into(),
            serde_json::json!(rss_last.map(kb_to_mb)),
        );
        r.extra.insert("pod_events".into(), serde_json::json!(i));
        r.extra.insert(
            "events_per_s".into(),
            serde_json::json!(i as f64 / dur.as_secs_f64().max(0.001)),
        );
        r.extra
            .insert("converged".into(), serde_json::json!(converged));
        r.extra.insert(
            "rss_start_mb".into(),
            serde_json::json!(rss_start.map(kb_to_mb)),
        );
        r.extra.insert(
            "rss_after_10s_mb".into(),
            serde_json::json!(rss_10s.map(kb_to_mb)),
        );
        r.extra.insert(
            "rss_end_mb".into(),
            serde_json::json!(rss_end.map(kb_to_mb)),
        );
        r.targets.push(Target::new(
            format!("p99 to ACK ≤ 1 s at {} pod events/s", self.a.churn_rate),
            r.ack_ms.p99.map(|p| format!("p99 {p:.0} ms")),
            r.ack_ms
                .p99
                .map(|p| p <= 1000.0 && r.unconverged_events == 0),
        ));
        // Growth while churning: from 10 s in (the working set of pushes in flight is
        // there by then) to the last event. What stays after the churn is reported too
        // (`rss_start_mb` → `rss_end_mb`): a one-time step there is allocator placement,
        // growth during the minute would be accumulation.
        let growth = match (rss_10s, rss_last) {
            (Some(a), Some(b)) => Some(b as f64 / a.max(1) as f64 - 1.0),
            _ => None,
        };
        r.targets.push(Target::new(
            "no memory growth during the churn (RSS at the last event ≤ 5% above 10 s in)".into(),
            growth.map(|g| {
                format!(
                    "{:.0} → {:.0} MB ({:+.1}%); before {:.0}, 6 s after {:.0} MB",
                    kb_to_mb(rss_10s.unwrap()),
                    kb_to_mb(rss_last.unwrap()),
                    g * 100.0,
                    rss_start.map(kb_to_mb).unwrap_or(0.0),
                    rss_end.map(kb_to_mb).unwrap_or(0.0),
                )
            }),
            growth.map(|g| g <= 0.05),
        ));
        Ok(r)
    }

    async fn storm(&mut self) -> anyhow::Result<ScenarioReport> {
        let m = self.mark().await;
        let mut converged = true;
        let mut all_s: f64 = 0.0;
        let mut rss_after = Vec::new();
        for round in 0..self.a.storms.max(1) {
            if round > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let k = self.rng.below(self.a.services as u64) as usize;
            let t0 = Instant::now();
            self.register(Slot::Route(k as u32), self.gen.route_seq[k] + 1, t0);
            let base = self.a.backoff_base_ms.max(1);
            let delays: Vec<u64> = (0..self.handles.len())
                .map(|_| self.rng.below(base))
                .collect();
            for (i, h) in self.handles.iter().enumerate() {
                if let Some(h) = h.as_ref().filter(|_| self.active.has(i)) {
                    let _ = h.cmd.send(Cmd::Reconnect(Duration::from_millis(delays[i])));
                }
            }
            self.gen.edit_route(k)?;
            converged &= self.wait_converged().await;
            all_s = all_s.max(t0.elapsed().as_secs_f64());
            rss_after.push(self.cp.pid.and_then(proc_stat).map(|s| kb_to_mb(s.rss_kb)));
        }
        let mut r = self.finish("storm", &m).await;
        let last_s = r.last_ack_ms.max.map(|v| v / 1e3);
        r.extra
            .insert("converged".into(), serde_json::json!(converged));
        r.extra.insert(
            "all_converged_s".into(),
            serde_json::json!(last_s.unwrap_or(all_s)),
        );
        r.extra.insert(
            "resource_exhausted".into(),
            serde_json::json!(r.stats.resource_exhausted),
        );
        r.extra
            .insert("reconnects".into(), serde_json::json!(r.stats.connects));
        r.extra
            .insert("rss_after_each_mb".into(), serde_json::json!(rss_after));
        r.targets.push(Target::new(
            format!(
                "all {} proxies reconnect and converge within 20 s",
                r.streams
            ),
            last_s.map(|s| format!("{s:.2} s")),
            Some(converged && last_s.is_some_and(|s| s <= 20.0)),
        ));
        let exhausted = r.stats.resource_exhausted;
        let (value, met) = match (exhausted, r.server_admission_rejected) {
            (n, _) if n > 0 => (
                format!(
                    "{n} ResourceExhausted (control plane counted {}), all retried and converged",
                    r.server_admission_rejected.map_or("-".into(), |v| v.to_string())
                ),
                Some(converged),
            ),
            (_, Some(_)) => (
                "0 ResourceExhausted: admission control present but not exercised (all within its burst)".into(),
                None,
            ),
            (_, None) => (
                "0 ResourceExhausted: the control plane has no admission control".into(),
                Some(false),
            ),
        };
        r.targets.push(Target::new(
            "admission rate limited: excess streams get ResourceExhausted and retry".into(),
            Some(value),
            met,
        ));
        Ok(r)
    }

    async fn fanout(&mut self) -> anyhow::Result<ScenarioReport> {
        let keep = self.a.fanout_proxies.min(self.a.proxies);
        let extra: Vec<usize> = self.active.iter().filter(|i| *i >= keep).collect();
        for i in extra {
            self.close_stream(i).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let m = self.mark().await;
        let seqs = self.gen.bump_all_routing();
        let events: Vec<(Slot, u32)> = seqs
            .iter()
            .enumerate()
            .map(|(k, s)| (Slot::Route(k as u32), *s))
            .collect();
        let t = Instant::now();
        for (s, q) in &events {
            self.register(*s, *q, t);
        }
        for k in 0..self.a.services {
            self.gen.write_routing(k)?;
        }
        let written = Instant::now();
        self.sh.tracker.set_time(&events, written);
        let converged = self.wait_converged().await;
        let mut r = self.finish("fanout", &m).await;
        let n = r.streams.max(1);
        let per_proxy = r.stats.bytes / n as u64;
        let push_ms = r.last_ack_ms.max.unwrap_or(f64::NAN);
        let floor = sys::loopback_floor(n, per_proxy as usize).await?;
        let floor_ms = floor.as_secs_f64() * 1e3;
        r.extra
            .insert("converged".into(), serde_json::json!(converged));
        r.extra.insert(
            "write_ms".into(),
            serde_json::json!((written - t).as_secs_f64() * 1e3),
        );
        r.extra
            .insert("bytes_per_proxy".into(), serde_json::json!(per_proxy));
        r.extra
            .insert("time_to_last_ack_ms".into(), serde_json::json!(push_ms));
        r.extra
            .insert("floor_ms".into(), serde_json::json!(floor_ms));
        r.extra
            .insert("ratio".into(), serde_json::json!(push_ms / floor_ms));
        r.targets.push(Target::new(
            format!(
                "full push to {n} proxies: time to last ACK vs writing the same bytes to {n} loopback sockets"
            ),
            Some(format!(
                "{:.0} ms vs floor {floor_ms:.0} ms ({:.1} MB/proxy): ratio {:.1}",
                push_ms,
                per_proxy as f64 / 1e6,
                push_ms / floor_ms
            )),
            None,
        ));
        Ok(r)
    }

    async fn large(&mut self) -> anyhow::Result<ScenarioReport> {
        let sidecars: Vec<usize> = self.active.iter().collect();
        let closed = sidecars.len();
        for i in sidecars {
            self.close_stream(i).await;
        }
        // What the control plane gives back when the proxies leave.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss_after = self.cp.pid.and_then(proc_stat).map(|s| kb_to_mb(s.rss_kb));
        let gw = self.a.proxies;
        self.spawn_stream(config::gateway_spec(gw));
        let behind = self
            .wait_synced(&[gw], self.a.services, Duration::from_secs(self.a.timeout))
            .await;
        if !behind.is_empty() {
            bail!("the gateway proxy did not sync");
        }
        self.sh
            .stats
            .max_msg
            .store(0, std::sync::atomic::Ordering::Relaxed);
        let m = self.mark().await;
        let seq = self.gen.large_seq + 1;
        self.register(Slot::Route(self.a.services as u32), seq, Instant::now());
        let (_, yaml) = self.gen.write_large(self.a.large_routes)?;
        let converged = self.wait_converged().await;
        let mut r = self.finish("large", &m).await;
        let v = self.handles[gw].as_ref().unwrap().view();
        let went = converged && v.errors == 0 && v.nacks == 0;
        r.rss_per_proxy_kb = None;
        r.extra.insert(
            "cp_rss_after_disconnecting_all_mb".into(),
            serde_json::json!(rss_after),
        );
        r.extra
            .insert("disconnected".into(), serde_json::json!(closed));
        r.extra
            .insert("routes".into(), serde_json::json!(self.a.large_routes));
        r.extra.insert("yaml_bytes".into(), serde_json::json!(yaml));
        r.extra
            .insert("max_message_bytes".into(), serde_json::json!(v.max_msg));
        r.extra
            .insert("went_through".into(), serde_json::json!(went));
        // The real client: Envoy as the gateway's twin gets the same config.
        let bin = self
            .a
            .pilotfish_bin
            .clone()
            .or(self.a.spawn_pilotfish.clone());
        let envoy_ok = match (&self.a.envoy, bin) {
            (Some(e), Some(p)) if went => {
                let spec = self.handles[gw].as_ref().unwrap().spec.clone();
                let res = match envoy::Envoy::start(
                    e,
                    &p,
                    &spec,
                    &self.cp.xds,
                    &self.work.join("envoy"),
                    self.a.delta,
                ) {
                    Ok(env) => {
                        let want = [
                            v.acked[0].as_str(),
                            v.acked[2].as_str(),
                            v.acked[3].as_str(),
                            v.acked[decode::VHDS].as_str(),
                        ];
                        let res = env
                            .converge(want, Duration::from_secs(self.a.timeout))
                            .await;
                        if res.is_err() {
                            r.extra.insert(
                                "envoy_log".into(),
                                serde_json::json!(env.log.display().to_string()),
                            );
                        }
                        res
                    }
                    Err(e) => Err(format!("{e:#}")),
                };
                match res {
                    Ok(secs) => {
                        r.extra
                            .insert("envoy_converged_s".into(), serde_json::json!(secs));
                        Some(true)
                    }
                    Err(e) => {
                        r.extra.insert("envoy_error".into(), serde_json::json!(e));
                        Some(false)
                    }
                }
            }
            (Some(_), None) => {
                r.extra.insert(
                    "envoy_error".into(),
                    serde_json::json!("--envoy needs --pilotfish-bin or --spawn-pilotfish (for `pilotfish bootstrap`)"),
                );
                Some(false)
            }
            _ => None,
        };
        r.extra
            .insert("envoy_accepted".into(), serde_json::json!(envoy_ok));
        if envoy_ok == Some(false) {
            self.problems.push(format!(
                "large: the real Envoy did not accept the config: {}",
                r.extra["envoy_error"]
            ));
        }
        r.targets.push(Target::new(
            format!(
                "{} routes on one gateway-sized proxy go through (message > 4 MiB)",
                self.a.large_routes
            ),
            Some(format!(
                "{}: largest message {:.2} MiB, ACKed {:.0} ms after the write",
                if went {
                    "went through"
                } else {
                    "did NOT go through"
                },
                v.max_msg as f64 / (1 << 20) as f64,
                r.last_ack_ms.max.unwrap_or(f64::NAN)
            )),
            Some(went && v.max_msg > 4 << 20),
        ));
        r.targets.push(Target::new(
            "a real Envoy accepts it (twin of the gateway proxy: same versions, nothing rejected)"
                .into(),
            Some(match envoy_ok {
                Some(true) => format!(
                    "accepted: converged to the same CDS/LDS/RDS versions in {:.1} s",
                    r.extra["envoy_converged_s"].as_f64().unwrap_or(f64::NAN)
                ),
                Some(false) => format!("NOT accepted: {}", r.extra["envoy_error"]),
                None => "not checked (pass --envoy PATH)".into(),
            }),
            envoy_ok,
        ));
        r.verified = Some(self.verify().await);
        self.gen.remove_large();
        self.close_stream(gw).await;
        Ok(r)
    }

    // ------------------------------------------------------------------ verification

    /// Every active stream is connected, has ACKed all types, and its ACKed versions are
    /// what `/debug/syncz` says the control plane sent and saw ACKed.
    async fn verify(&mut self) -> report::Verified {
        let deadline = Instant::now() + Duration::from_secs(10);
        let injected = self.a.nack_percent > 0.0;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut problems = Vec::new();
            let syncz: Vec<serde_json::Value> =
                match sys::http_get(&self.cp.http, "/debug/syncz").await {
                    Ok((200, body)) => serde_json::from_str(&body).unwrap_or_default(),
                    Ok((s, _)) => {
                        problems.push(format!("/debug/syncz answered {s}"));
                        Vec::new()
                    }
                    Err(e) => {
                        problems.push(format!("/debug/syncz: {e:#}"));
                        Vec::new()
                    }
                };
            // The newest connection per proxy id.
            let mut by_id: HashMap<String, (u64, &serde_json::Value)> = HashMap::new();
            for row in &syncz {
                let id = row["proxy"].as_str().unwrap_or_default().to_string();
                let n: u64 = row["conn_id"]
                    .as_str()
                    .and_then(|c| c.rsplit('-').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let e = by_id.entry(id).or_insert((n, row));
                if n >= e.0 {
                    *e = (n, row);
                }
            }
            let mut checked = 0;
            let mut not_recorded = 0;
            for h in self.active_handles() {
                checked += 1;
                let v = h.view();
                let id = &h.spec.node_id;
                if !v.connected || !v.types_synced() {
                    problems.push(format!(
                        "{id}: connected {} acked {:?}",
                        v.connected, v.acked_once
                    ));
                    continue;
                }
                let Some((_, row)) = by_id.get(id) else {
                    problems.push(format!("{id}: not in /debug/syncz"));
                    continue;
                };
                for (t, short) in decode::SHORT.iter().enumerate() {
                    let ty = &row["types"][short];
                    // Virtual hosts: checked when the stream subscribed or the control
                    // plane shows the type.
                    if t == decode::VHDS && !v.vhds && ty.is_null() {
                        continue;
                    }
                    let sent = ty["sent_version"].as_str().unwrap_or_default();
                    let acked = ty["acked_version"].as_str().unwrap_or_default();
                    let nacked = ty["nacked_version"].as_str().unwrap_or_default();
                    if sent.is_empty() && acked.is_empty() {
                        // Nothing sent on this connection (a delta reconnect with every
                        // version current): the control plane records no version.
                        not_recorded += 1;
                        continue;
                    }
                    if acked.is_empty() {
                        if injected && !nacked.is_empty() {
                            continue;
                        }
                        problems.push(format!("{id} {short}: sent {sent:?}, never ACKed"));
                    } else if acked != v.acked[t] {
                        problems.push(format!(
                            "{id} {short}: the stream ACKed {:?}, the control plane recorded {acked:?}",
                            v.acked[t]
                        ));
                    }
                    if !injected && !sent.is_empty() && (sent != acked || !nacked.is_empty()) {
                        problems.push(format!(
                            "{id} {short}: sent {sent:?}, acked {acked:?}, nacked {nacked:?}"
                        ));
                    }
                }
            }
            if problems.is_empty() || Instant::now() > deadline {
                let ok = problems.is_empty();
                problems.truncate(10);
                return report::Verified {
                    streams_checked: checked,
                    not_recorded,
                    ok,
                    problems,
                };
            }
        }
    }

    async fn verified(&mut self, mut r: ScenarioReport) -> ScenarioReport {
        let v = self.verify().await;
        if !v.ok {
            self.problems.push(format!(
                "{}: /debug/syncz disagrees: {:?}",
                r.name, v.problems
            ));
        }
        r.verified = Some(v);
        r
    }
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    serde_json::json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": (mem_kb as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "cpu": cpu,
    })
}

async fn run(a: Args) -> anyhow::Result<bool> {
    if a.services == 0 || a.proxies == 0 {
        bail!("--services and --proxies must be at least 1");
    }
    let seed = a.seed.unwrap_or_else(sys::seed_from_time);
    let mut rng = Rng::new(seed);
    config::set_run_token((rng.next_u64() % 1_000_000_000) as u32);
    let all = a.scenario.contains(&Scenario::All);
    let want = |s: Scenario| all || a.scenario.contains(&s);

    // Config directory and control plane.
    let work = std::env::temp_dir().join(format!("pilotfish-load-{}", std::process::id()));
    // Declared before the control plane: dropped (removed) after it was stopped.
    let _work_guard = WorkDir {
        path: work.clone(),
        keep: a.keep,
    };
    let dir = match (&a.config_dir, &a.spawn_pilotfish) {
        (Some(d), _) => d.clone(),
        (None, Some(_)) => work.join("config"),
        (None, None) => {
            bail!("attaching to a running pilotfish needs --config-dir (the directory it watches)")
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut gen = Gen::new(&dir, a.services, a.namespaces);
    gen.twin_ip = a.twin_ip.clone();
    gen.write_all()?;
    let cp = match &a.spawn_pilotfish {
        Some(bin) => {
            std::fs::create_dir_all(&work)?;
            // A port picked free can be taken by another process before pilotfish binds
            // it (parallel runs): such a start is retried on new ports.
            let mut attempt = 0;
            loop {
                match ControlPlane::spawn(&a, bin, &dir, work.join("serve.log")).await {
                    Ok(cp) => break cp,
                    Err(e) if attempt < 3 => {
                        let log =
                            std::fs::read_to_string(work.join("serve.log")).unwrap_or_default();
                        if !log.contains("ddress already in use") {
                            return Err(e);
                        }
                        attempt += 1;
                        eprintln!("pilotfish could not bind a port (taken meanwhile); retrying");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        None => {
            let xds = a
                .xds_address
                .clone()
                .unwrap_or_else(|| "127.0.0.1:15010".into());
            let http = a
                .http_address
                .clone()
                .unwrap_or_else(|| "127.0.0.1:15014".into());
            let port = xds
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or(0);
            let pid = a.pid.or_else(|| sys::pid_listening_on(port));
            ControlPlane {
                xds,
                http,
                pid,
                child: None,
                log: None,
            }
        }
    };
    let sh = Arc::new(Shared {
        addr: cp.xds.clone(),
        delta: a.delta,
        nack_percent: a.nack_percent,
        cache: decode::Cache::new(a.decode == DecodeMode::Full),
        tracker: track::Tracker::default(),
        stats: Default::default(),
        backoff_base_ms: a.backoff_base_ms,
        backoff_max_ms: a.backoff_max_ms,
        slots: a.services + 1,
        error_messages: Default::default(),
    });
    let sampler = cp.pid.map(sys::RssSampler::start);
    let mut load = Load {
        a: a.clone(),
        sh,
        gen,
        cp,
        handles: Vec::new(),
        active: Bits::new(a.proxies + 1),
        rng,
        sampler,
        baseline_rss_kb: None,
        reports: Vec::new(),
        problems: Vec::new(),
        work: work.clone(),
    };
    let _ = load.slots();
    // Let the control plane load the generated config before the baseline.
    tokio::time::sleep(Duration::from_millis(a.debounce_ms + 500)).await;
    load.baseline_rss_kb = load.cp.pid.and_then(proc_stat).map(|s| s.rss_kb);
    if !a.json {
        eprintln!(
            "pilotfish-load: {} proxies ({}), {} services, control plane xds {} http {} pid {:?}",
            a.proxies,
            if a.delta { "delta" } else { "SotW" },
            a.services,
            load.cp.xds,
            load.cp.http,
            load.cp.pid
        );
    }
    let progress = |s: &str| {
        if !a.json {
            eprintln!("pilotfish-load: {s}");
        }
    };
    progress("connecting");
    let r = load.connect().await?;
    let r = load.verified(r).await;
    load.reports.push(r);
    if want(Scenario::Idle) {
        progress("idle");
        let r = load.idle().await;
        load.reports.push(r);
    }
    if want(Scenario::Change) {
        progress("change");
        let r = load.change().await?;
        let r = load.verified(r).await;
        load.reports.push(r);
    }
    if want(Scenario::Churn) {
        progress("churn");
        let r = load.churn().await?;
        let r = load.verified(r).await;
        load.reports.push(r);
    }
    if want(Scenario::Storm) {
        progress("storm");
        let r = load.storm().await?;
        let r = load.verified(r).await;
        load.reports.push(r);
    }
    if want(Scenario::Fanout) {
        progress("fanout");
        let r = load.fanout().await?;
        let r = load.verified(r).await;
        load.reports.push(r);
    }
    let dump = if a.dump_streams {
        Some(report::dump_streams(load.active_handles()))
    } else {
        None
    };
    if want(Scenario::Large) {
        progress("large");
        let r = load.large().await?;
        if let Some(v) = &r.verified {
            if !v.ok {
                load.problems
                    .push(format!("large: /debug/syncz disagrees: {:?}", v.problems));
            }
        }
        load.reports.push(r);
    }
    // Correctness over the whole run.
    let total: StatsSnap = load.sh.stats.snap();
    if total.decode_errors > 0 {
        load.problems
            .push(format!("{} responses did not decode", total.decode_errors));
    }
    let unexpected_nacks = total.nacks - total.injected_nacks;
    if unexpected_nacks > 0 {
        load.problems
            .push(format!("{unexpected_nacks} NACK(s) not injected"));
    }
    // ResourceExhausted is the control plane's admission control working (the stream
    // retries after the backoff); any other stream error is a problem.
    let errors = total.errors() - total.resource_exhausted;
    if errors > 0 {
        load.problems.push(format!(
            "{errors} stream error(s) other than ResourceExhausted: {total:?}"
        ));
    }
    // Leave nothing running.
    let idxs: Vec<usize> = (0..load.handles.len()).collect();
    for i in idxs {
        load.close_stream(i).await;
    }
    let ok = load.problems.is_empty();
    let out = report::Run {
        ok,
        problems: load.problems.clone(),
        machine: machine(),
        params: serde_json::json!({
            "proxies": a.proxies,
            "services": a.services,
            "namespaces": a.namespaces,
            "mode": if a.delta { "delta" } else { "sotw" },
            "decode": format!("{:?}", a.decode).to_lowercase(),
            "shared_labels": a.shared_labels,
            "nack_percent": a.nack_percent,
            "churn_rate": a.churn_rate,
            "duration_s": a.duration,
            "debounce_ms": a.debounce_ms,
            "seed": seed,
            "spawned": load.cp.child.is_some(),
            "control_plane_pid": load.cp.pid,
            "baseline_rss_mb": load.baseline_rss_kb.map(kb_to_mb),
        }),
        scenarios: load.reports.clone(),
        totals: total,
        error_messages: load.sh.error_messages.lock().unwrap().clone(),
        streams: dump,
    };
    if let Some(f) = &a.json_file {
        std::fs::write(f, serde_json::to_string_pretty(&out)?)
            .with_context(|| format!("writing {}", f.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        report::print_table(&out);
    }
    drop(load);
    if a.keep && !a.json {
        eprintln!(
            "pilotfish-load: kept {} and {}",
            dir.display(),
            work.display()
        );
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let a = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let res = rt.block_on(async {
        tokio::select! {
            r = run(a) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

//! One real Envoy next to the simulated proxies (`--envoy PATH`): bootstrapped with
//! `pilotfish bootstrap` as the twin of a simulated proxy (same namespace, labels and
//! address) and in the same mode (`--delta`: incremental xDS, route configurations in their
//! VHDS form), so the control plane sends it the same content and versions. Used by the
//! large scenario to show that Envoy itself accepts the > 4 MiB config.

use crate::config::ProxySpec;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Envoy {
    child: Child,
    admin: String,
    pub log: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envoy {
    /// Starts Envoy as `spec`'s twin; its static health/Prometheus listeners move to free
    /// loopback ports (the root network namespace is shared).
    pub fn start(
        envoy: &Path,
        pilotfish: &Path,
        spec: &ProxySpec,
        xds: &str,
        dir: &Path,
        delta: bool,
    ) -> anyhow::Result<Envoy> {
        let admin_port = crate::sys::free_port();
        let labels: Vec<String> = spec
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let o = Command::new(pilotfish)
            .args(["bootstrap", "--namespace", &spec.namespace])
            .args(["--workload", &format!("{}-envoy", spec.pod)])
            .args(["--ip", &spec.ip, "--labels", &labels.join(",")])
            .args([
                "--xds-address",
                xds,
                "--admin-port",
                &admin_port.to_string(),
            ])
            .args(delta.then_some("--delta"))
            .output()
            .with_context(|| format!("running {} bootstrap", pilotfish.display()))?;
        if !o.status.success() {
            bail!(
                "pilotfish bootstrap: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let mut b: serde_json::Value = serde_json::from_slice(&o.stdout)?;
        if let Some(ls) = b["static_resources"]["listeners"].as_array_mut() {
            for l in ls {
                l["address"]["socket_address"]["address"] = "127.0.0.1".into();
                l["address"]["socket_address"]["port_value"] = crate::sys::free_port().into();
            }
        }
        std::fs::create_dir_all(dir)?;
        let file = dir.join("envoy.json");
        std::fs::write(&file, serde_json::to_vec_pretty(&b)?)?;
        let log = dir.join("envoy.log");
        let f = std::fs::File::create(&log)?;
        let child = Command::new(envoy)
            .arg("-c")
            .arg(&file)
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args(["--log-level", "warning"])
            .args([
                "--base-id",
                &(20_000 + std::process::id() % 20_000).to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {}", envoy.display()))?;
        Ok(Envoy {
            child,
            admin: format!("127.0.0.1:{admin_port}"),
            log,
        })
    }

    /// `/stats` as (name, value) pairs (curl: the admin interface speaks HTTP/1.1).
    fn stats(&self) -> Option<Vec<(String, String)>> {
        let o = Command::new("curl")
            .args(["-sf", "--noproxy", "*", "-m", "5"])
            .arg(format!("http://{}/stats", self.admin))
            .output()
            .ok()?;
        o.status.success().then(|| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_string(), v.trim().trim_matches('"').to_string()))
                .collect()
        })
    }

    /// Waits until Envoy's CDS/LDS/RDS (and VHDS, when `want[3]` is not empty) versions are
    /// `want` (cds, lds, rds, vhds) and nothing was rejected; Ok(seconds) or Err(what
    /// Envoy has).
    pub async fn converge(&self, want: [&str; 4], timeout: Duration) -> Result<f64, String> {
        let start = Instant::now();
        let mut last = String::from("no /stats answer");
        loop {
            if let Some(s) = self.stats() {
                let get = |n: &str| s.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
                let rejected: Vec<String> = s
                    .iter()
                    .filter(|(k, v)| k.ends_with("update_rejected") && v != "0")
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                if !rejected.is_empty() {
                    return Err(format!("Envoy rejected config: {rejected:?}"));
                }
                // `http.<prefix>.rds.<config>.version_text`, and for a configuration using
                // VHDS `http.<prefix>.rds.vhds.<config>.version_text`.
                let versions = |vhds: bool| -> Vec<&str> {
                    s.iter()
                        .filter(|(k, _)| {
                            k.contains(".rds.")
                                && k.ends_with(".version_text")
                                && k.contains(".rds.vhds.") == vhds
                        })
                        .map(|(_, v)| v.as_str())
                        .collect()
                };
                let (rds, vhds) = (versions(false), versions(true));
                let cds = get("cluster_manager.cds.version_text");
                let lds = get("listener_manager.lds.version_text");
                if cds == Some(want[0])
                    && lds == Some(want[1])
                    && !rds.is_empty()
                    && rds.iter().all(|r| *r == want[2])
                    && (want[3].is_empty()
                        || (!vhds.is_empty() && vhds.iter().all(|v| *v == want[3])))
                {
                    return Ok(start.elapsed().as_secs_f64());
                }
                last = format!("cds {cds:?} lds {lds:?} rds {rds:?} vhds {vhds:?}");
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "Envoy did not reach cds {} lds {} rds {} vhds {:?} within {timeout:?}: it has {last}",
                    want[0], want[1], want[2], want[3]
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

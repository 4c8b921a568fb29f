//! The config directory the load tool generates and edits (what `pilotfish serve` watches).
//!
//! Layout, all under `<config-dir>/pf-load/` (one small file per object group, so an edit
//! is one file write, as `kubectl apply` of one object would be):
//! ```text
//!  services/svc-<k>.yaml   Service svc<k> (ports http 8080, grpc 9090) in namespace ns<k % NS>
//!  workloads/svc-<k>.yaml  WorkloadEntries: v1 (10.a.b.1), v2 (10.a.b.2) and a churned pod
//!                          (version v2) whose address moves on every churn event
//!  routing/svc-<k>.yaml    DestinationRule (subsets v1/v2, pool, outlier detection) and a
//!                          VirtualService (header match, 80/20 split, retries, timeout) whose
//!                          default route sets the response header `x-pf-load: <run>.<k>.<seq>`
//!  twin.yaml               (--twin-ip) a WorkloadEntry for a real Envoy that mirrors proxy 0
//!  large.yaml              (scenario large) 10,000 routes on one host for the gateway proxy
//! ```
//! How a proxy shows which version it has: the marker header value in the routes it ACKed
//! (`<run>.<k>.<seq>`) and, for endpoints, the churned pod's address: every churn event gets
//! a fresh address in 172.16.0.0/12 whose number maps back to (service, seq).

use anyhow::Context;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// Routes per VirtualService in the large scenario.
pub const LARGE_ROUTES_PER_HOST: usize = 20;

/// Header whose value carries the marker.
pub const MARKER_HEADER: &str = "x-pf-load";

/// Churned addresses: 172.16.0.0/12; address number n ↔ `CHURN[n]` = (service, seq).
static CHURN: RwLock<Vec<(u32, u32)>> = RwLock::new(Vec::new());

/// The run token this process writes into markers (markers of other runs are ignored).
static RUN: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

pub fn run_token() -> u32 {
    *RUN.get().expect("run token set")
}

pub fn set_run_token(t: u32) {
    let _ = RUN.set(t);
}

/// The churn address for a new event; registers (service, seq) for it.
fn alloc_churn(k: u32, seq: u32) -> String {
    let mut t = CHURN.write().unwrap();
    let n = t.len() as u32 + 1;
    assert!(n < (1 << 20), "churn address space exhausted");
    t.push((k, seq));
    format!("172.{}.{}.{}", 16 + (n >> 16), (n >> 8) & 255, n & 255)
}

/// (service, seq) of a churned address, if it is one.
pub fn churn_of(addr: &str) -> Option<(u32, u32)> {
    let rest = addr.strip_prefix("172.")?;
    let mut it = rest.split('.');
    let a: u32 = it.next()?.parse().ok()?;
    let b: u32 = it.next()?.parse().ok()?;
    let c: u32 = it.next()?.parse().ok()?;
    if !(16..32).contains(&a) || b > 255 || c > 255 || it.next().is_some() {
        return None;
    }
    let n = ((a - 16) << 16) | (b << 8) | c;
    if n == 0 {
        return None;
    }
    CHURN.read().unwrap().get(n as usize - 1).copied()
}

/// Parses a marker value `<run>.<k>.<seq>` of this run.
pub fn parse_marker(v: &str) -> Option<(u32, u32)> {
    let mut it = v.split('.');
    let run: u32 = it.next()?.parse().ok()?;
    if run != run_token() {
        return None;
    }
    let k = it.next()?.parse().ok()?;
    let seq = it.next()?.parse().ok()?;
    Some((k, seq))
}

/// Writes `text` to `path` atomically (temp file + rename), skipping identical content.
/// Returns whether it wrote.
pub fn write_file(path: &Path, text: &str) -> anyhow::Result<bool> {
    if std::fs::read(path).ok().as_deref() == Some(text.as_bytes()) {
        return Ok(false);
    }
    let dir = path.parent().context("file without parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Not .yaml: the control plane reads only .yaml/.yml/.json, so the temp file is ignored.
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(true)
}

pub struct Gen {
    pub root: PathBuf,
    pub services: usize,
    pub namespaces: usize,
    /// Per service: marker seq of its VirtualService.
    pub route_seq: Vec<u32>,
    /// Per service: churn seq and the churned pod's current address.
    pub ep_seq: Vec<u32>,
    ep_addr: Vec<String>,
    /// DestinationRule connection pool size (changed by the fan-out scenario).
    pub pool: u32,
    pub twin_ip: Option<String>,
    pub large_seq: u32,
}

/// Address block of service k: (a, b) in 10.a.b.x.
pub fn svc_block(k: usize) -> (usize, usize) {
    (k / 250, k % 250)
}

pub fn svc_namespace(k: usize, namespaces: usize) -> String {
    format!("ns{}", k % namespaces.max(1))
}

impl Gen {
    pub fn new(config_dir: &Path, services: usize, namespaces: usize) -> Gen {
        assert!(services <= 62_500, "at most 62,500 services");
        Gen {
            root: config_dir.join("pf-load"),
            services,
            namespaces,
            route_seq: vec![0; services],
            ep_seq: vec![0; services],
            ep_addr: (0..services)
                .map(|k| {
                    let (a, b) = svc_block(k);
                    format!("10.{a}.{b}.3")
                })
                .collect(),
            pool: 100,
            twin_ip: None,
            large_seq: 0,
        }
    }

    fn ns(&self, k: usize) -> String {
        svc_namespace(k, self.namespaces)
    }

    fn service_yaml(&self, k: usize) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc{k}, namespace: {ns}}}\nspec:\n  selector: {{app: svc{k}}}\n  ports: [{{name: http, port: 8080}}, {{name: grpc, port: 9090}}]\n",
            ns = self.ns(k)
        )
    }

    fn workloads_yaml(&self, k: usize) -> String {
        let (a, b) = svc_block(k);
        let ns = self.ns(k);
        let mut s = String::new();
        for (name, addr, version) in [
            (format!("svc{k}-v1"), format!("10.{a}.{b}.1"), "v1"),
            (format!("svc{k}-v2"), format!("10.{a}.{b}.2"), "v2"),
            (format!("svc{k}-churn"), self.ep_addr[k].clone(), "v2"),
        ] {
            let _ = write!(
                s,
                "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{address: {addr}, labels: {{app: svc{k}, version: {version}}}}}\n---\n"
            );
        }
        s
    }

    fn routing_yaml(&self, k: usize) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc{k}, namespace: {ns}}}\nspec:\n  host: svc{k}\n  trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: {pool}}}}}, outlierDetection: {{consecutive5xxErrors: 5}}}}\n  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc{k}, namespace: {ns}}}\nspec:\n  hosts: [svc{k}]\n  http:\n  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n    route: [{{destination: {{host: svc{k}, subset: v2}}}}]\n  - route:\n    - {{destination: {{host: svc{k}, subset: v1}}, weight: 80}}\n    - {{destination: {{host: svc{k}, subset: v2}}, weight: 20}}\n    timeout: 5s\n    retries: {{attempts: 3, perTryTimeout: 2s}}\n    headers: {{response: {{set: {{{MARKER_HEADER}: \"{run}.{k}.{seq}\"}}}}}}\n",
            ns = self.ns(k),
            pool = self.pool,
            run = run_token(),
            seq = self.route_seq[k],
        )
    }

    fn path(&self, dir: &str, k: usize) -> PathBuf {
        self.root.join(dir).join(format!("svc-{k}.yaml"))
    }

    /// Writes the whole tree (unchanged files are left alone) and removes generated files
    /// of an earlier, larger run.
    pub fn write_all(&self) -> anyhow::Result<()> {
        for k in 0..self.services {
            write_file(&self.path("services", k), &self.service_yaml(k))?;
            write_file(&self.path("workloads", k), &self.workloads_yaml(k))?;
            write_file(&self.path("routing", k), &self.routing_yaml(k))?;
        }
        for dir in ["services", "workloads", "routing"] {
            if let Ok(rd) = std::fs::read_dir(self.root.join(dir)) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().to_string();
                    let keep = name
                        .strip_prefix("svc-")
                        .and_then(|n| n.strip_suffix(".yaml"))
                        .and_then(|n| n.parse::<usize>().ok())
                        .is_some_and(|n| n < self.services);
                    if !keep {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
        let twin = self.root.join("twin.yaml");
        match &self.twin_ip {
            Some(ip) => {
                write_file(
                    &twin,
                    &format!(
                        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: svc0-twin, namespace: {ns}}}\nspec: {{address: {ip}, labels: {{app: svc0, version: v1}}}}\n",
                        ns = self.ns(0)
                    ),
                )?;
            }
            None => {
                let _ = std::fs::remove_file(&twin);
            }
        }
        let _ = std::fs::remove_file(self.root.join("large.yaml"));
        Ok(())
    }

    /// Edits one VirtualService (its marker); returns the new seq.
    pub fn edit_route(&mut self, k: usize) -> anyhow::Result<u32> {
        self.route_seq[k] += 1;
        write_file(&self.path("routing", k), &self.routing_yaml(k))?;
        Ok(self.route_seq[k])
    }

    /// Bumps every marker and the pool size without writing (see `write_routing`).
    pub fn bump_all_routing(&mut self) -> Vec<u32> {
        self.pool += 1;
        for s in self.route_seq.iter_mut() {
            *s += 1;
        }
        self.route_seq.clone()
    }

    pub fn write_routing(&self, k: usize) -> anyhow::Result<()> {
        write_file(&self.path("routing", k), &self.routing_yaml(k)).map(|_| ())
    }

    /// A pod event: service k's churned pod gets a new address. Returns the new seq.
    pub fn churn(&mut self, k: usize) -> anyhow::Result<u32> {
        self.ep_seq[k] += 1;
        self.ep_addr[k] = alloc_churn(k as u32, self.ep_seq[k]);
        write_file(&self.path("workloads", k), &self.workloads_yaml(k))?;
        Ok(self.ep_seq[k])
    }

    /// The gateway-sized config: `routes` routes on port 80, as VirtualServices of
    /// `LARGE_ROUTES_PER_HOST` routes each (hosts `gw-<j>.pf-large`; one object per YAML
    /// document, as Kubernetes would store them: a single 10,000-route object would be far
    /// over its 1.5 MB object limit). Marker slot `services` (one past the last service).
    /// Returns (seq, bytes of YAML).
    pub fn write_large(&mut self, routes: usize) -> anyhow::Result<(u32, usize)> {
        self.large_seq += 1;
        let k = self.services;
        let run = run_token();
        let hosts = routes.div_ceil(LARGE_ROUTES_PER_HOST).max(1);
        let mut s = String::with_capacity(routes * 700);
        for j in 0..hosts {
            let _ = write!(
                s,
                "apiVersion: v1\nkind: Service\nmetadata: {{name: gw-{j}, namespace: pf-large}}\nspec:\n  selector: {{app: gw-{j}}}\n  ports: [{{name: http, port: 80}}]\n---\n\
                 apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: gw-{j}-1, namespace: pf-large}}\nspec: {{address: 10.251.{}.{}, labels: {{app: gw-{j}}}}}\n---\n\
                 apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: gw-{j}, namespace: pf-large}}\nspec:\n  hosts: [gw-{j}]\n  http:\n",
                j / 250,
                j % 250 + 1
            );
            let first = j * LARGE_ROUTES_PER_HOST;
            for i in first..(first + LARGE_ROUTES_PER_HOST).min(routes) {
                let t = i % self.services.max(1);
                let ns = self.ns(t);
                let host = format!("svc{t}.{ns}.svc.cluster.local");
                let marker = if i == 0 {
                    format!(", {MARKER_HEADER}: \"{run}.{k}.{}\"", self.large_seq)
                } else {
                    String::new()
                };
                let _ = write!(
                    s,
                    "  - name: tenant-{i}\n    match: [{{uri: {{prefix: /api/v1/tenants/tenant-{i}/}}, headers: {{x-tenant-id: {{exact: tenant-{i}}}}}, queryParams: {{api-version: {{exact: v1-2024}}}}}}]\n    rewrite: {{uri: /tenants/tenant-{i}/}}\n    route:\n    - {{destination: {{host: {host}, subset: v1, port: {{number: 8080}}}}, weight: 90}}\n    - {{destination: {{host: {host}, subset: v2, port: {{number: 8080}}}}, weight: 10}}\n    timeout: 3s\n    retries: {{attempts: 2, perTryTimeout: 1s, retryOn: \"5xx,reset,connect-failure\"}}\n    headers:\n      request: {{set: {{x-tenant-route: tenant-{i}-route-{i}, x-gateway-class: large-gateway-class, x-tenant-tier: standard}}}}\n      response: {{set: {{x-served-by: tenant-{i}{marker}}}}}\n"
                );
            }
            s.push_str("---\n");
        }
        write_file(&self.root.join("large.yaml"), &s)?;
        Ok((self.large_seq, s.len()))
    }

    pub fn remove_large(&self) {
        let _ = std::fs::remove_file(self.root.join("large.yaml"));
    }
}

/// One simulated sidecar's identity, Istio-style.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    pub idx: usize,
    pub node_id: String,
    pub node_cluster: String,
    pub namespace: String,
    pub pod: String,
    pub ip: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
}

/// Proxy i: for i < S the v1 pod of svc i, for S ≤ i < 2S the v2 pod of svc i-S (their
/// addresses are WorkloadEntry addresses, so they get inbound listeners), beyond that a
/// client pod of svc (i mod S) at an address outside the registry.
/// `shared_labels` gives every proxy the labels `app: load-client` (one class per namespace).
pub fn proxy_spec(i: usize, services: usize, namespaces: usize, shared_labels: bool) -> ProxySpec {
    let s = services.max(1);
    let k = i % s;
    let (a, b) = svc_block(k);
    let (version, ip) = match i / s {
        0 => ("v1", format!("10.{a}.{b}.1")),
        1 => ("v2", format!("10.{a}.{b}.2")),
        r => ("v1", format!("10.{}.{}.{}", 128 + a, b, (r - 2) % 250 + 1)),
    };
    let ns = svc_namespace(k, namespaces);
    let pod = format!("svc{k}-{version}-{i}");
    let mut labels = BTreeMap::new();
    if shared_labels {
        labels.insert("app".to_string(), "load-client".to_string());
    } else {
        labels.insert("app".to_string(), format!("svc{k}"));
        labels.insert("version".to_string(), version.to_string());
    }
    ProxySpec {
        idx: i,
        node_id: format!("sidecar~{ip}~{pod}.{ns}~{ns}.svc.cluster.local"),
        node_cluster: format!("{}.{ns}", labels["app"]),
        namespace: ns,
        pod,
        ip,
        labels,
        service_account: format!("svc{k}"),
    }
}

/// The gateway-sized proxy of the large scenario.
pub fn gateway_spec(idx: usize) -> ProxySpec {
    let mut labels = BTreeMap::new();
    labels.insert("app".to_string(), "istio-ingressgateway".to_string());
    labels.insert("istio".to_string(), "ingressgateway".to_string());
    ProxySpec {
        idx,
        node_id:
            "router~10.255.0.1~istio-ingressgateway-0.istio-system~istio-system.svc.cluster.local"
                .into(),
        node_cluster: "istio-ingressgateway.istio-system".into(),
        namespace: "istio-system".into(),
        pod: "istio-ingressgateway-0".into(),
        ip: "10.255.0.1".into(),
        labels,
        service_account: "istio-ingressgateway".into(),
    }
}

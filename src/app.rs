//! Wiring: sources → index → translate → xds cache → servers; graceful shutdown.
use crate::api::{ConfigError, Resource};
use crate::ca::token::LocalTokens;
use crate::ca::{Ca, CaConfig, Identity};
use crate::debug::DebugState;
use crate::metrics::Metrics;
use crate::model::{Index, MeshConfig, Proxy, World};
use crate::translate;
use crate::xds::auth::Security;
use crate::xds::cache::Generation;
use crate::xds::server::{Admission, Published, XdsServer};
use crate::xds::status::Connections;
use crate::xds::wire::{Ads, Cds, Eds, Lds, Rds, Sds, XdsService};
use anyhow::Context;
use notify::Watcher;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Directory of Istio / Kubernetes YAML (watched recursively). With `--kubernetes` both
    /// sources are read (an object defined in both is a duplicate error).
    #[arg(long, default_value = "config")]
    pub config_dir: PathBuf,
    /// Also read config from a Kubernetes API server: Istio's CRDs, Services, Pods,
    /// Namespaces and EndpointSlices (watched). The credentials come from `--kubeconfig`,
    /// else `KUBECONFIG` / `~/.kube/config`, else the in-cluster service account.
    #[arg(long)]
    pub kubernetes: bool,
    /// Kubeconfig file for `--kubernetes` (implies it).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The validating admission webhook's TLS listen address (with `--kubernetes`; empty
    /// turns it off). Its certificate is the xDS serving certificate (`--tls-dns-names`
    /// adds names or IP addresses to it).
    #[arg(long, default_value = "127.0.0.1:15017")]
    pub webhook_address: String,
    /// The URL the API server calls the webhook at (pilotfish outside the cluster). Default:
    /// the Service `pilotfish` in `--system-namespace`, port 15017.
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// `Fail` (an object cannot be stored while the webhook is unreachable) or `Ignore`.
    #[arg(long, default_value = "Fail")]
    pub webhook_failure_policy: String,
    /// Connections to the xDS ports older than this (±10 %) get GOAWAY and are closed 10 s
    /// later, so their proxies reconnect, spreading them over the replicas (`0s`: never).
    #[arg(long, default_value = "30m")]
    pub max_connection_age: String,
    /// Sidecar injection through the webhook (pods in namespaces labelled
    /// `istio-injection=enabled`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub injection: bool,
    /// The injected proxy's image (stock Envoy).
    #[arg(long, default_value = "envoyproxy/envoy:v1.40.0")]
    pub proxy_image: String,
    /// The injected init container's image (one with the pilotfish binary: `pilotfish
    /// iptables`).
    #[arg(long, default_value = "pilotfish:latest")]
    pub proxy_init_image: String,
    /// Audience of the projected service-account token injected sidecars present.
    #[arg(long, default_value = "pilotfish")]
    pub injection_token_audience: String,
    /// Where injected sidecars reach pilotfish's TLS port. Default:
    /// `pilotfish.<system-namespace>.svc:15012`.
    #[arg(long)]
    pub injection_xds_address: Option<String>,
    /// The injection template (YAML; see `src/inject/template.yaml`, the default).
    #[arg(long)]
    pub injection_template: Option<PathBuf>,
    /// Injected sidecars use delta xDS.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub injection_delta: bool,
    /// Plaintext xDS (ADS) listen address.
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub xds_address: String,
    /// Monitoring and debug HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub http_address: String,
    /// Quiet period before a push, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub debounce_ms: u64,
    /// Longest a push may be delayed by a stream of changes, in milliseconds. Istio's is
    /// 10 s, which under steady endpoint churn delays every push by the full 10 s.
    #[arg(long, default_value_t = 400)]
    pub debounce_max_ms: u64,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    pub log_format: String,
    /// Outbound traffic to unknown destinations: ALLOW_ANY or REGISTRY_ONLY.
    #[arg(long, default_value = "ALLOW_ANY")]
    pub outbound_traffic_policy: String,
    /// DNS domain of the mesh.
    #[arg(long, default_value = "cluster.local")]
    pub domain: String,
    /// Namespace whose unselected policies apply mesh-wide (Istio's root namespace).
    #[arg(long, default_value = "istio-system")]
    pub root_namespace: String,
    /// Istio MeshConfig YAML (the `mesh` key of Istio's ConfigMap): extensionProviders,
    /// pathNormalization, rootNamespace, outboundTrafficPolicy. What it sets wins over flags.
    #[arg(long)]
    pub mesh_config: Option<PathBuf>,
    /// Serve plaintext xDS on a non-loopback address (development only: no authentication).
    #[arg(long)]
    pub allow_plaintext_xds: bool,
    /// New xDS streams admitted per second (both ports together); the excess gets
    /// ResourceExhausted and retries. 0: no limit.
    #[arg(long, default_value_t = 500)]
    pub xds_admission_rate: u32,
    /// New xDS streams admitted at once before the rate applies.
    #[arg(long, default_value_t = 500)]
    pub xds_admission_burst: u32,
    /// Virtual Host Discovery for delta ADS streams: route configurations name VHDS and each
    /// virtual host is a resource of its own, so a VirtualService edit sends one virtual
    /// host instead of its port's whole route configuration. `false` serves them inline.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub vhds: bool,
    /// The xDS ports' HTTP/2 server: `own` (`xds::http2`, the default: no buffers held by
    /// idle connections; the TLS port runs it behind rustls) or `hyper` (tonic on hyper's
    /// h2 for both, tuned; for comparison).
    #[arg(long, default_value = "own")]
    pub xds_http2: String,
    /// xDS + SDS over TLS with bearer-token authentication; also pilotfish's ext_authz
    /// service for sidecars (mutual TLS).
    #[arg(long, default_value = "127.0.0.1:15012")]
    pub secure_xds_address: String,
    /// Plaintext ext_authz service (the built-in provider) for local callers; empty: off.
    #[arg(long, default_value = "127.0.0.1:15011")]
    pub authz_address: String,
    /// Where sidecars reach the TLS port for the built-in provider (`host:port`). Default:
    /// --secure-xds-address when it names an address (not 0.0.0.0).
    #[arg(long)]
    pub authz_advertise_address: Option<String>,
    /// The bearer token the debug pages need when --http-address is not loopback (a file
    /// holding it). Without it pilotfish makes one into `<state-dir>/debug-token` (0600).
    #[arg(long)]
    pub debug_token_file: Option<PathBuf>,
    /// Paths of the debug port open without the token (comma separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "/ready,/healthz,/metrics"
    )]
    pub debug_open_paths: Vec<String>,
    /// Sidecars stream their access logs to pilotfish, which serves Istio's request
    /// metrics from them on /metrics.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub telemetry: bool,
    /// Where ServiceEntry hosts without addresses get the virtual IPs that sidecar DNS
    /// answers with (IPv4 CIDR, /8 to /30).
    #[arg(long, default_value = "240.240.0.0/16", value_parser = parse_vip_range)]
    pub dns_vip_range: (u32, u8),
    /// This cluster's network: endpoints and proxies that name none are on it; endpoints on
    /// other networks are reached through those networks' east-west gateways.
    #[arg(long, default_value = "")]
    pub network: String,
    /// Another cluster's registry, read from a directory of its objects (Services,
    /// Endpoints, EndpointSlices, Pods, WorkloadEntries): `NAME=DIR[,network=NET]`;
    /// repeatable. Its services join this cluster's of the same name.
    #[arg(long = "remote-cluster", value_parser = crate::model::remote::parse_remote)]
    pub remote_clusters: Vec<crate::model::remote::RemoteCluster>,
    /// Global names `name.ns.<suffix>` for Kubernetes services, across clusters (sidecar
    /// DNS and virtual hosts); empty turns them off.
    #[arg(long, default_value = "global")]
    pub global_suffix: String,
    /// Istio metric label sets kept at most (HTTP and TCP together); past it, new label
    /// sets are counted in an overflow series per reporter.
    #[arg(long, default_value_t = 10_000)]
    pub telemetry_max_series: usize,
    /// Service-graph edges kept at most (about 12 KiB each, for an hour of history); edges
    /// quiet for an hour make room.
    #[arg(long, default_value_t = 2_000)]
    pub graph_max_edges: usize,
    /// Also write every access-log entry as a JSON line to this file.
    #[arg(long)]
    pub access_log_file: Option<PathBuf>,
    /// Rotate the JSON access log past this size (bytes): FILE becomes FILE.1, and so on.
    #[arg(long, default_value_t = 100 * 1024 * 1024)]
    pub access_log_max_bytes: u64,
    /// Rotated JSON access logs kept.
    #[arg(long, default_value_t = 3)]
    pub access_log_keep: u32,
    #[command(flatten)]
    pub ca: CaArgs,
}

/// Certificate authority and proxy authentication settings (shared by `serve` and `token`).
#[derive(clap::Args, Debug, Clone)]
pub struct CaArgs {
    /// Where the CA root, the token key and other state live.
    #[arg(long, default_value = "pilotfish-state")]
    pub state_dir: PathBuf,
    /// SPIFFE trust domain.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Lifetime of workload certificates (e.g. 24h, 1m); re-minted at half life.
    #[arg(long, default_value = "24h")]
    pub workload_cert_ttl: String,
    /// Plug-in CA certificate (root or intermediate), PEM.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Plug-in CA private key, PEM.
    #[arg(long)]
    pub ca_key: Option<PathBuf>,
    /// Certificates from the plug-in CA's issuer up to the root, PEM.
    #[arg(long)]
    pub ca_chain: Option<PathBuf>,
    /// Namespace pilotfish runs in (its serving certificate names pilotfish.<ns>.svc).
    #[arg(long, default_value = "pilotfish-system")]
    pub system_namespace: String,
    /// Root rotation: how long a new root is trusted before it signs.
    #[arg(long, default_value = "1m")]
    pub root_rotation_grace: String,
    /// More DNS names for the xDS serving certificate (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub tls_dns_names: Vec<String>,
}

impl CaArgs {
    pub fn load(&self) -> anyhow::Result<(Arc<Ca>, Arc<LocalTokens>)> {
        let ttl = crate::api::parse_duration(&self.workload_cert_ttl)
            .map_err(|e| anyhow::anyhow!("--workload-cert-ttl: {e}"))?;
        if ttl < Duration::from_secs(10) {
            anyhow::bail!("--workload-cert-ttl must be at least 10s");
        }
        let ca = Ca::load_or_create(&CaConfig {
            state_dir: self.state_dir.clone(),
            trust_domain: self.trust_domain.clone(),
            workload_ttl: ttl,
            ca_cert: self.ca_cert.clone(),
            ca_key: self.ca_key.clone(),
            ca_chain: self.ca_chain.clone(),
            root_rotation_grace: crate::api::parse_duration(&self.root_rotation_grace)
                .map_err(|e| anyhow::anyhow!("--root-rotation-grace: {e}"))?,
        })?;
        let tokens = LocalTokens::load_or_create(&self.state_dir)?;
        Ok((Arc::new(ca), Arc::new(tokens)))
    }

    /// DNS names of the xDS serving certificate.
    pub fn dns_names(&self) -> Vec<String> {
        let ns = &self.system_namespace;
        let mut v = vec![
            "pilotfish".to_string(),
            format!("pilotfish.{ns}"),
            format!("pilotfish.{ns}.svc"),
            format!("pilotfish.{ns}.svc.cluster.local"),
        ];
        v.extend(self.tls_dns_names.iter().filter(|n| !n.is_empty()).cloned());
        v
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    #[arg(long)]
    pub namespace: String,
    #[arg(long)]
    pub service_account: String,
    /// Token lifetime (e.g. 1h, 24h).
    #[arg(long, default_value = "24h")]
    pub ttl: String,
    /// Write the token to this file (mode 0600, no trailing newline: Envoy sends the file's
    /// bytes as the header value, and a newline makes every call fail).
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub ca: CaArgs,
}

#[derive(clap::Args, Debug)]
pub struct RotateRootArgs {
    /// Rotate the root every replica shares through the Secret `pilotfish-ca` in
    /// `--system-namespace` (credentials as for `serve --kubernetes`).
    #[arg(long)]
    pub kubernetes: bool,
    /// Kubeconfig file (implies --kubernetes).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub ca: CaArgs,
}

/// `pilotfish rotate-root`: start a root rotation (a running pilotfish completes it).
pub fn rotate_root(a: RotateRootArgs) -> anyhow::Result<ExitCode> {
    if a.kubernetes || a.kubeconfig.is_some() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let client = kube_client(a.kubeconfig.as_deref()).await?;
            crate::ca::shared::start_rotation(&client, &a.ca.system_namespace, &a.ca.trust_domain)
                .await
        })?;
        println!(
            "next root written to Secret {}/{}; every replica adds it to its trust bundle within seconds, the leader makes it the signer after --root-rotation-grace, and the old root goes once its leaves have expired",
            a.ca.system_namespace,
            crate::ca::shared::SECRET
        );
        return Ok(ExitCode::SUCCESS);
    }
    let a = a.ca;
    let (ca, _) = a.load()?;
    drop(ca);
    let cfg = CaConfig {
        state_dir: a.state_dir.clone(),
        trust_domain: a.trust_domain.clone(),
        ca_cert: a.ca_cert.clone(),
        ..Default::default()
    };
    let path = Ca::prepare_root_rotation(&cfg)?;
    println!(
        "next root written to {}; a running pilotfish adds it to the trust bundle now, signs with it after --root-rotation-grace, and drops the old root once its leaves have expired",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `pilotfish token`: print a bearer token for a service account (file mode).
pub fn token(a: TokenArgs) -> anyhow::Result<ExitCode> {
    let ttl = crate::api::parse_duration(&a.ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
    if a.namespace.is_empty()
        || a.service_account.is_empty()
        || a.namespace.contains(':')
        || a.service_account.contains(':')
    {
        anyhow::bail!("--namespace and --service-account must be non-empty and contain no ':'");
    }
    // The token key only: a CA is neither needed nor made (a state directory of a
    // pilotfish with a plug-in CA must not get a stray root).
    let tokens = crate::ca::token::LocalTokens::load_or_create(&a.ca.state_dir)?;
    let id = Identity {
        namespace: a.namespace,
        service_account: a.service_account,
    };
    let token = tokens.sign(&id, ttl);
    match &a.output {
        Some(path) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("writing {}", path.display()))?;
            f.write_all(token.as_bytes())?;
        }
        None => println!("{token}"),
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug, Clone)]
pub struct ValidateArgs {
    /// Files or directories to check.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Istio MeshConfig YAML the config is checked against (ext_authz providers, ...).
    #[arg(long)]
    pub mesh_config: Option<PathBuf>,
}

/// Read `--mesh-config` over `mesh`: its settings win; unused Istio fields are warnings,
/// anything else an error naming the file and field.
pub fn load_mesh_config(path: &std::path::Path, mesh: &mut MeshConfig) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading mesh config {}", path.display()))?;
    let (file, warnings) = crate::api::mesh::parse_mesh(&text).map_err(|errs| {
        anyhow::anyhow!(
            "{}",
            errs.iter()
                .map(|e| format!("{}: MeshConfig: {e}", path.display()))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    for w in warnings {
        warn!("{}: MeshConfig: {w}", path.display());
    }
    if let Some(td) = &file.trust_domain {
        if *td != mesh.trust_domain {
            anyhow::bail!(
                "{}: MeshConfig: trustDomain: {td:?} differs from --trust-domain {:?} (the CA \
                 signs with the flag's; set both the same)",
                path.display(),
                mesh.trust_domain
            );
        }
    }
    mesh.apply_file(file);
    Ok(())
}

pub fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    init_tracing(&a.log_format)?;
    crate::mem::tune();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(a))?;
    Ok(ExitCode::SUCCESS)
}

fn init_tracing(format: &str) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        "json" => b.json().init(),
        "text" => b.init(),
        other => anyhow::bail!("--log-format must be text or json, not {other:?}"),
    }
    Ok(())
}

/// Parse every file of a set into an index-ready list (an unreadable file is an error of
/// that file).
pub fn parse_all(
    files: Vec<crate::source::file::FileRead>,
) -> Vec<(String, Vec<Resource>, Vec<ConfigError>)> {
    files
        .into_iter()
        .map(|(f, text)| {
            let (r, e) = match text {
                Ok(text) => crate::api::parse_file(&f, &text),
                Err(why) => (vec![], vec![unreadable(&f, why)]),
            };
            (f, r, e)
        })
        .collect()
}

fn unreadable(file: &str, why: String) -> ConfigError {
    ConfigError {
        file: file.into(),
        object: "file".into(),
        field: String::new(),
        reason: format!("{why} (what it held before is kept)"),
    }
}

/// Apply to the index what changed since the last read: files gone, new or edited. Files
/// that parse cleanly are remembered in `last_good`; a file first seen broken (at start)
/// gets back, from its last good text, every object its broken text no longer yields.
fn apply_changed(
    index: &mut Index,
    applied: &mut HashMap<String, u64>,
    changed: crate::source::file::Changed,
    last_good: Option<&crate::source::last_good::LastGood>,
    remotes: &[crate::model::remote::RemoteCluster],
) -> bool {
    let crate::source::file::Changed { files, gone } = changed;
    let mut any = false;
    for f in gone {
        any |= remove_unit(index, applied, &f);
        if let Some(lg) = last_good {
            lg.forget(&f);
        }
    }
    for (f, text) in files {
        let text = match text {
            Ok(t) => t,
            Err(why) => {
                // Its objects stay (an error keeps what a file served); read again next time.
                index.apply_file(&f, vec![], vec![unreadable(&f, why)]);
                applied.insert(f, 0);
                any = true;
                continue;
            }
        };
        // A remote cluster's file: its registry only, renamed and labelled.
        let remote = remotes
            .iter()
            .find(|c| std::path::Path::new(&f).starts_with(&c.dir));
        any |= apply_unit(index, applied, f, &text, |name, first, r, e| {
            if let Some(lg) = last_good {
                lg.keep_or_mend(name, &text, first, r, e);
            }
            if let Some(c) = remote {
                crate::model::remote::as_remote(r, c);
            }
        });
    }
    any
}

/// Parses `text` as the unit `name` (a file, a Kubernetes object) and applies it, unless it
/// is the text last applied (by hash). `mend(name, first seen, objects, errors)` may change
/// the result first. True when the index changed.
fn apply_unit(
    index: &mut Index,
    applied: &mut HashMap<String, u64>,
    name: String,
    text: &str,
    mend: impl FnOnce(&str, bool, &mut Vec<crate::api::Resource>, &mut Vec<ConfigError>),
) -> bool {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    let h = h.finish();
    if applied.get(&name) == Some(&h) {
        return false;
    }
    let first = !applied.contains_key(&name);
    let (mut r, mut e) = crate::api::parse_file(&name, text);
    mend(&name, first, &mut r, &mut e);
    index.apply_file(&name, r, e);
    applied.insert(name, h);
    true
}

/// The unit `name` is gone: its objects go. True when the index held it.
fn remove_unit(index: &mut Index, applied: &mut HashMap<String, u64>, name: &str) -> bool {
    index.remove_file(name);
    applied.remove(name).is_some()
}

/// Applies what the Kubernetes watchers saw: relisted kinds replace everything the source
/// held for them, then single objects change or go. Unchanged texts are not parsed again.
fn apply_kube(
    index: &mut Index,
    applied: &mut HashMap<String, u64>,
    source: &crate::source::kube::Pending,
    batch: crate::source::kube::Batch,
    remote: Option<&crate::model::remote::RemoteCluster>,
) -> bool {
    let mut any = false;
    let mut apply = |index: &mut Index, name: String, text: Option<String>| {
        any |= match text {
            Some(text) => apply_unit(index, applied, name, &text, |_, _, r, _| {
                // A remote cluster's object: its registry only, renamed and labelled.
                if let Some(c) = remote {
                    crate::model::remote::as_remote(r, c);
                }
            }),
            None => remove_unit(index, applied, &name),
        };
    };
    for (kind, objects) in batch.relists {
        let listed: HashSet<&str> = objects.iter().map(|(n, _)| n.as_str()).collect();
        for gone in index.file_names(&source.kind_prefix(&kind)) {
            if !listed.contains(gone.as_str()) {
                apply(index, gone, None);
            }
        }
        for (name, text) in objects {
            apply(index, name, Some(text));
        }
    }
    for (name, text) in batch.changes {
        apply(index, name, text);
    }
    any
}

/// The next generation, if it passes the consistency check, and the time each took.
/// Names and references are what the check looks at; they come from the route inputs only.
/// When those equal the last published World's (which passed), so does the result: endpoint
/// churn skips the check. When only VirtualServices changed, clusters are the checked ones:
/// the new generation checks its own references instead of a second translation.
fn build_checked(
    world: World,
    prev: Option<&Generation>,
    change: crate::model::Change,
) -> (Result<Generation, Vec<String>>, Duration, Duration) {
    let unchecked = change.routes == crate::model::RouteChange::None
        && prev.is_some_and(|p| p.world.peer_authn == world.peer_authn);
    if unchecked || change.only_virtual_services {
        let t = Instant::now();
        let gen = Generation::next_with(Arc::new(world), prev, change);
        let gen_time = t.elapsed();
        let t = Instant::now();
        let checked = if unchecked {
            Ok(())
        } else {
            gen.check_references(&check_proxy())
        };
        (checked.map(|()| gen), t.elapsed(), gen_time)
    } else {
        let t = Instant::now();
        let checked = consistency(&world);
        let check_time = t.elapsed();
        let t = Instant::now();
        let built = checked.map(|()| Generation::next_with(Arc::new(world), prev, change));
        (built, check_time, t.elapsed())
    }
}

/// Build a world from in-memory files (tests, benchmarks, `validate`).
pub fn world_from_files(files: &[(&str, &str)], mesh: MeshConfig) -> World {
    let mut index = Index::new(mesh);
    index.reset(parse_all(
        files
            .iter()
            .map(|(f, t)| (f.to_string(), Ok(t.to_string())))
            .collect(),
    ));
    index.snapshot()
}

/// Check a world's translation for consistency before it is served.
pub fn consistency(world: &World) -> Result<(), Vec<String>> {
    translate::check(&translate::generate(world, &check_proxy()))?;
    // Each Gateway, as a proxy it selects (in its namespace, with its selector's labels)
    // would get it.
    for g in &world.gateways {
        let proxy = Proxy {
            namespace: g.key.namespace.clone(),
            labels: g.selector.clone(),
            mtls: true,
            router: true,
            ..Default::default()
        };
        translate::check(&translate::generate(world, &proxy)).map_err(|e| {
            e.into_iter()
                .map(|e| format!("gateway {}: {e}", g.key))
                .collect::<Vec<_>>()
        })?;
    }
    Ok(())
}

/// The proxy whose config the consistency check looks at.
fn check_proxy() -> Proxy {
    Proxy {
        namespace: "default".into(),
        ..Default::default()
    }
}

/// The config loop: load, publish, watch, debounce, reload. Runs on its own thread
/// (file IO and parsing are blocking work).
/// A remote cluster read from its API server: its registry's watchers.
pub struct RemoteKube {
    pub cluster: crate::model::remote::RemoteCluster,
    pub client: kube::Client,
    pub pending: Arc<crate::source::kube::Pending>,
}

/// The Kubernetes source of a config loop: the client, and the runtime its watchers run on.
pub struct KubeSource {
    pub client: kube::Client,
    pub runtime: tokio::runtime::Handle,
    /// What the watchers saw (the status writer reads it too).
    pub pending: Arc<crate::source::kube::Pending>,
    /// Remote clusters from remote Secrets of this namespace (Istio's multicluster
    /// model), but not those named here (given with `--remote-cluster`).
    pub remote_secrets: (String, std::collections::BTreeSet<String>),
    pub remotes: Arc<crate::source::remote_secrets::Remotes>,
}

/// A wake-up for the config loop (an empty change event), for watchers on other threads.
fn waker(tx: &std::sync::mpsc::Sender<Option<Vec<PathBuf>>>) -> Arc<dyn Fn() + Send + Sync> {
    let tx = std::sync::Mutex::new(tx.clone());
    Arc::new(move || {
        let _ = tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Some(vec![]));
    })
}

#[allow(clippy::too_many_arguments)]
fn config_loop(
    dir: PathBuf,
    remotes: Vec<crate::model::remote::RemoteCluster>,
    state_dir: Option<PathBuf>,
    mesh: MeshConfig,
    debounce: Duration,
    debounce_max: Duration,
    tx: watch::Sender<Option<Published>>,
    metrics: Arc<Metrics>,
    kube_source: Option<KubeSource>,
    (remote_kube, runtime): (Vec<RemoteKube>, tokio::runtime::Handle),
) -> anyhow::Result<()> {
    // The watcher's events name the paths that changed (None: read everything again).
    let (ev_tx, ev_rx) = std::sync::mpsc::channel::<Option<Vec<PathBuf>>>();
    let jwks_tx = ev_tx.clone();
    // The Kubernetes watchers wake the loop the way the JWKS fetcher does.
    let mut secret_remotes = None;
    let kube = kube_source.map(|k| {
        let pending = k.pending;
        let wake = waker(&ev_tx);
        let (ns, named) = k.remote_secrets;
        k.runtime.spawn(crate::source::remote_secrets::watch(
            k.client.clone(),
            ns,
            named,
            k.remotes.clone(),
            wake.clone(),
        ));
        secret_remotes = Some(k.remotes);
        k.runtime
            .spawn(crate::source::kube::run(k.client, pending.clone(), wake));
        pending
    });
    let mut kube_applied: HashMap<String, u64> = HashMap::new();
    // Remote clusters' watchers wake the loop too; their registries do not hold serving
    // back (as istiod goes on without a remote cluster it cannot reach).
    for r in &remote_kube {
        let wake = waker(&ev_tx);
        runtime.spawn(crate::source::kube::run_kinds(
            r.client.clone(),
            r.pending.clone(),
            wake,
            crate::source::kube::REMOTE_KINDS,
        ));
    }
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let _ = match res {
            Ok(ev) if matches!(ev.kind, notify::EventKind::Access(_)) => Ok(()),
            Ok(ev) if ev.need_rescan() || ev.paths.is_empty() => ev_tx.send(None),
            Ok(ev) => ev_tx.send(Some(ev.paths)),
            Err(_) => ev_tx.send(None),
        };
    })?;
    watcher.watch(&dir, notify::RecursiveMode::Recursive)?;
    for r in &remotes {
        watcher.watch(&r.dir, notify::RecursiveMode::Recursive)?;
    }
    let roots: Vec<PathBuf> = std::iter::once(dir.clone())
        .chain(remotes.iter().map(|r| r.dir.clone()))
        .collect();
    // The JWKS source: fetched key sets come back through the same wake-up (an empty
    // change event) and enter the index before the next snapshot.
    let jwks_wanted: crate::source::jwks::Wanted = Default::default();
    let jwks_fetched: crate::source::jwks::Fetched = Default::default();
    {
        let (w, f, tx) = (jwks_wanted.clone(), jwks_fetched.clone(), jwks_tx);
        std::thread::Builder::new()
            .name("jwks".into())
            .spawn(move || crate::source::jwks::run(w, f, move || tx.send(Some(vec![])).is_ok()))?;
    }
    let last_good = state_dir.and_then(|d| match crate::source::last_good::LastGood::new(&d) {
        Ok(lg) => Some(lg),
        Err(e) => {
            warn!(error = %e, "cannot keep last good config copies in the state directory");
            None
        }
    });
    let mut index = Index::new(mesh);
    let mut changed_at = Instant::now();
    let mut last_errors: Vec<ConfigError> = Vec::new();
    // Hash of each file's text as last applied: only changed files are parsed again.
    let mut applied: HashMap<String, u64> = HashMap::new();
    // Paths reported since the last read (None: read the whole tree).
    let mut dirty: Option<std::collections::BTreeSet<PathBuf>> = None;
    loop {
        let t_dir = Instant::now();
        let partial = dirty
            .take()
            .and_then(|d| crate::source::file::read_changed(&dir, &d));
        let whole = partial.is_none();
        let read = match partial {
            Some(changed) => Ok(changed),
            None => crate::source::file::read_tree(&roots).map(|files| {
                let now: HashSet<&str> = files.iter().map(|(f, _)| f.as_str()).collect();
                let gone = applied
                    .keys()
                    .filter(|f| !now.contains(f.as_str()))
                    .cloned()
                    .collect();
                crate::source::file::Changed { files, gone }
            }),
        };
        match read {
            Ok(changed) => {
                let dir_ms = t_dir.elapsed().as_millis() as u64;
                let t0 = Instant::now();
                let mut any = apply_changed(
                    &mut index,
                    &mut applied,
                    changed,
                    last_good.as_ref(),
                    &remotes,
                );
                any |= index.set_jwks(jwks_fetched.lock().unwrap().clone());
                if let Some(k) = &kube {
                    any |= apply_kube(&mut index, &mut kube_applied, k, k.take(), None);
                }
                // Remote clusters: from flags, and from remote Secrets (a dropped
                // cluster's objects go with it).
                let (live, gone) = match &secret_remotes {
                    Some(rs) => rs.take(),
                    None => Default::default(),
                };
                for name in gone {
                    let prefix = crate::source::kube::Pending::remote(&name)
                        .prefix()
                        .to_string();
                    for unit in index.file_names(&prefix) {
                        any |= remove_unit(&mut index, &mut kube_applied, &unit);
                    }
                }
                let remotes = remote_kube
                    .iter()
                    .map(|r| (&r.cluster, &r.pending))
                    .chain(live.iter().map(|r| (&r.cluster, &r.pending)));
                for (cluster, pending) in remotes {
                    let batch = pending.take();
                    any |= apply_kube(&mut index, &mut kube_applied, pending, batch, Some(cluster));
                }
                let t_read = t0.elapsed();
                let unsynced = kube.as_ref().is_some_and(|k| !k.synced());
                if unsynced {
                    // Nothing is served before every Kubernetes watch listed once: a partial
                    // view would remove what a proxy has (streams get Unavailable).
                    debug!("waiting for the Kubernetes watches to sync");
                } else if !any && tx.borrow().is_some() {
                    // Only editors' temp files or identical content: nothing to publish
                    // (a new snapshot would wake every stream for nothing).
                    debug!(dir_ms, "no config file changed");
                } else {
                    let world = index.snapshot();
                    *jwks_wanted.lock().unwrap() = world.jwks_wanted();
                    let t_world = t0.elapsed();
                    for e in world.errors.iter().filter(|e| !last_errors.contains(e)) {
                        warn!(file = %e.file, object = %e.object, field = %e.field, reason = %e.reason, "config error");
                    }
                    last_errors = world.errors.clone();
                    metrics.config_errors.set(world.errors.len() as i64);
                    let prev = tx.borrow().as_ref().map(|p| p.gen.clone());
                    let change = world.change_since(prev.as_ref().map(|p| &*p.world));
                    let only_vs = change.only_virtual_services;
                    let version = world.version;
                    let (built, check_time, gen_time) =
                        build_checked(world, prev.as_deref(), change);
                    match built {
                        Ok(gen) => {
                            metrics.debounce.observe(changed_at.elapsed().as_secs_f64());
                            metrics.config_updates.inc();
                            tx.send_replace(Some(Published {
                                gen: Arc::new(gen),
                                changed_at,
                            }));
                            info!(
                                version,
                                errors = last_errors.len(),
                                dir_ms,
                                whole_tree = whole,
                                read_ms = t_read.as_millis() as u64,
                                world_ms = (t_world - t_read).as_millis() as u64,
                                check_ms = check_time.as_millis() as u64,
                                generation_ms = gen_time.as_millis() as u64,
                                only_virtual_services = only_vs,
                                since_change_ms = changed_at.elapsed().as_millis() as u64,
                                "configuration published"
                            );
                        }
                        Err(problems) => {
                            for p in problems {
                                error!(problem = %p, "generated config is inconsistent; keeping the previous version");
                            }
                        }
                    }
                }
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "reading the config directory failed; keeping the previous version")
            }
        }
        // Wait for a change, then for a quiet period (bounded by debounce_max).
        let Ok(ev) = ev_rx.recv() else {
            return Ok(());
        };
        let mut paths = std::collections::BTreeSet::new();
        let mut full = false;
        let mut note = |ev: Option<Vec<PathBuf>>| match ev {
            Some(p) => paths.extend(p),
            None => full = true,
        };
        note(ev);
        changed_at = Instant::now();
        loop {
            let left = debounce_max.saturating_sub(changed_at.elapsed());
            if left.is_zero() {
                break;
            }
            match ev_rx.recv_timeout(debounce.min(left)) {
                Ok(ev) => note(ev),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
        dirty = (!full).then_some(paths);
    }
}

async fn run(a: ServeArgs) -> anyhow::Result<()> {
    let allow_any = match a.outbound_traffic_policy.as_str() {
        "ALLOW_ANY" => true,
        "REGISTRY_ONLY" => false,
        other => anyhow::bail!(
            "--outbound-traffic-policy must be ALLOW_ANY or REGISTRY_ONLY, not {other:?}"
        ),
    };
    let mut mesh = MeshConfig {
        domain: a.domain.clone(),
        allow_any,
        trust_domain: a.ca.trust_domain.clone(),
        root_namespace: a.root_namespace.clone(),
        ..Default::default()
    };
    if let Some(path) = &a.mesh_config {
        load_mesh_config(path, &mut mesh)?;
    }
    mesh.builtin_authz = a.authz_advertise_address.clone().or_else(|| {
        let addr: SocketAddr = a.secure_xds_address.parse().ok()?;
        (!addr.ip().is_unspecified()).then(|| addr.to_string())
    });
    mesh.telemetry = a.telemetry;
    mesh.dns_vip_range = a.dns_vip_range;
    mesh.network = a.network.clone();
    mesh.global_suffix = a.global_suffix.clone();
    if !a.config_dir.is_dir() {
        anyhow::bail!("config directory {} does not exist", a.config_dir.display());
    }
    // Remote directories, canonical: a remote file is told by its path, so neither may
    // hold the other or the config directory (a remote file read as local config would
    // bring its policies in).
    let config_real = a.config_dir.canonicalize()?;
    let (kube_remotes, mut remotes): (Vec<_>, Vec<_>) = a
        .remote_clusters
        .iter()
        .cloned()
        .partition(|r| r.kubeconfig.is_some());
    for r in &mut remotes {
        r.dir = r.dir.canonicalize().map_err(|e| {
            anyhow::anyhow!("--remote-cluster {}: {}: {e}", r.name, r.dir.display())
        })?;
        if r.dir.starts_with(&config_real) || config_real.starts_with(&r.dir) {
            anyhow::bail!(
                "--remote-cluster {}: {} overlaps the config directory {}",
                r.name,
                r.dir.display(),
                config_real.display()
            );
        }
    }
    for (i, r) in a.remote_clusters.iter().enumerate() {
        if a.remote_clusters[..i].iter().any(|o| o.name == r.name) {
            anyhow::bail!("--remote-cluster {}: named twice", r.name);
        }
    }
    for (i, r) in remotes.iter().enumerate() {
        if remotes[..i]
            .iter()
            .any(|o| o.dir.starts_with(&r.dir) || r.dir.starts_with(&o.dir))
        {
            anyhow::bail!(
                "--remote-cluster {}: overlaps another remote cluster",
                r.name
            );
        }
    }
    let xds_addr: SocketAddr = a
        .xds_address
        .parse()
        .with_context(|| format!("--xds-address {}", a.xds_address))?;
    let http_addr: SocketAddr = a
        .http_address
        .parse()
        .with_context(|| format!("--http-address {}", a.http_address))?;
    let (tx, rx) = watch::channel(None);
    let metrics = Arc::new(Metrics::new());
    let conns = Arc::new(Connections::default());
    let kube = if a.kubernetes || a.kubeconfig.is_some() {
        Some(kube_client(a.kubeconfig.as_deref()).await?)
    } else {
        None
    };
    // Remote clusters read from their API servers (registry kinds only).
    let secret_remotes: Arc<crate::source::remote_secrets::Remotes> = Default::default();
    let mut remote_view = crate::debug::RemoteView {
        flags: remotes.iter().map(|r| (r.clone(), None)).collect(),
        secrets: kube.is_some().then(|| secret_remotes.clone()),
    };
    let mut remote_sources = Vec::new();
    for r in kube_remotes {
        let path = r.kubeconfig.clone().unwrap_or_default();
        let client = kube_client(Some(&path))
            .await
            .with_context(|| format!("--remote-cluster {}", r.name))?;
        let pending = Arc::new(crate::source::kube::Pending::remote(&r.name));
        remote_view.flags.push((r.clone(), Some(pending.clone())));
        remote_sources.push(RemoteKube {
            pending,
            cluster: r,
            client,
        });
    }
    let kube_pending: Arc<crate::source::kube::Pending> = Default::default();
    let kube_source = kube.clone().map(|client| KubeSource {
        client,
        runtime: tokio::runtime::Handle::current(),
        pending: kube_pending.clone(),
        remote_secrets: (
            a.ca.system_namespace.clone(),
            a.remote_clusters.iter().map(|r| r.name.clone()).collect(),
        ),
        remotes: secret_remotes.clone(),
    });
    if !matches!(a.webhook_failure_policy.as_str(), "Fail" | "Ignore") {
        anyhow::bail!(
            "--webhook-failure-policy must be Fail or Ignore, not {:?}",
            a.webhook_failure_policy
        );
    }
    {
        let (dir, m, state, remotes) = (
            a.config_dir.clone(),
            metrics.clone(),
            a.ca.state_dir.clone(),
            remotes,
        );
        let (d, dm) = (
            Duration::from_millis(a.debounce_ms),
            Duration::from_millis(a.debounce_max_ms),
        );
        let handle = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("config".into())
            .spawn(move || {
                if let Err(e) = config_loop(
                    dir,
                    remotes,
                    Some(state),
                    mesh,
                    d,
                    dm,
                    tx,
                    m,
                    kube_source,
                    (remote_sources, handle),
                ) {
                    error!(error = %format!("{e:#}"), "config loop stopped");
                }
            })?;
    }
    if !xds_addr.ip().is_loopback() && !a.allow_plaintext_xds {
        anyhow::bail!(
            "--xds-address {xds_addr} is not loopback: plaintext xDS has no authentication; \
             use the TLS port (--secure-xds-address) or pass --allow-plaintext-xds for development"
        );
    }
    let secure_addr: SocketAddr = a
        .secure_xds_address
        .parse()
        .with_context(|| format!("--secure-xds-address {}", a.secure_xds_address))?;
    if !matches!(a.xds_http2.as_str(), "own" | "hyper") {
        anyhow::bail!("--xds-http2 must be own or hyper, not {:?}", a.xds_http2);
    }
    // On Kubernetes the root is shared through a Secret (unless plugged in from files).
    let share_root = kube.as_ref().filter(|_| a.ca.ca_cert.is_none());
    let mut shared_already = false;
    if let Some(client) = share_root {
        shared_already =
            crate::ca::shared::pull(client, &a.ca.system_namespace, &a.ca.state_dir).await?;
    }
    let (mut ca, mut tokens) = a.ca.load()?;
    if let Some(client) = share_root.filter(|_| !shared_already) {
        match crate::ca::shared::publish(client, &a.ca.system_namespace, &a.ca.state_dir).await {
            Ok(true) => info!(
                secret = crate::ca::shared::SECRET,
                "CA root shared through a Kubernetes Secret"
            ),
            Ok(false) => {
                // Another replica published its root first: take it.
                crate::ca::shared::pull(client, &a.ca.system_namespace, &a.ca.state_dir).await?;
                (ca, tokens) = a.ca.load()?;
            }
            // Serving goes on with this replica's own root; replicas will not agree on it.
            Err(e) => warn!(
                error = %format!("{e:#}"),
                "the CA root is not shared (replicas and restarts will each have their own)"
            ),
        }
    }
    // On Kubernetes a stream's token is a projected service-account token the API server
    // reviews (pilotfish's own tokens still work); otherwise only pilotfish's own.
    let verifier: Arc<dyn crate::ca::token::TokenVerifier> = match &kube {
        Some(client) => Arc::new(crate::ca::review::TokenReviewer::new(
            client.clone(),
            a.injection_token_audience.clone(),
            tokens,
        )),
        None => tokens,
    };
    let (security, rotation_tx) = security(&ca, verifier, &metrics);
    let rotation_rx = rotation_tx.subscribe();
    let (stop_tx, stop_rx) = watch::channel(false);
    let xds = XdsServer {
        current: rx.clone(),
        metrics: metrics.clone(),
        conns: conns.clone(),
        stop: stop_rx,
        security: Some(security.clone()),
        require_auth: false,
        admission: Arc::new(Admission::new(a.xds_admission_rate, a.xds_admission_burst)),
        vhds: a.vhds,
    };
    metrics.register(
        "pilotfish_xds_admission_rejected",
        "New xDS streams refused by the admission rate limit",
        xds.admission.rejected.clone(),
    );
    let secure = XdsServer {
        require_auth: true,
        ..xds.clone()
    };
    let telemetry = crate::telemetry::Telemetry::new(
        rx.clone(),
        conns.clone(),
        a.telemetry_max_series,
        a.graph_max_edges,
    );
    if let Some(f) = &a.access_log_file {
        telemetry
            .log_to_file(f.clone(), a.access_log_max_bytes, a.access_log_keep)
            .with_context(|| format!("--access-log-file {}", f.display()))?;
    }
    telemetry.start();
    let sink = |require_peer: bool| {
        envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::AccessLogServiceServer::new(
            crate::telemetry::sink::Sink {
                telemetry: telemetry.clone(),
                require_peer,
                trust_domain: a.ca.trust_domain.clone(),
            },
        )
    };
    let debug_token: Option<Arc<str>> = if http_addr.ip().is_loopback() {
        None
    } else {
        Some(debug_token(a.debug_token_file.as_deref(), &a.ca.state_dir)?.into())
    };
    let debug = crate::debug::router(DebugState {
        token: debug_token,
        open_paths: Arc::new(a.debug_open_paths.clone()),
        current: rx.clone(),
        metrics: metrics.clone(),
        conns,
        ca: Some(ca.clone()),
        telemetry: Some(telemetry.clone()),
        remotes: Arc::new(remote_view),
    });
    // Hand freed memory back to the kernel now and then (see `mem`).
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            tokio::task::spawn_blocking(crate::mem::trim);
        }
    });
    // Singleton work (webhook configuration, root rotation steps, status) runs on the
    // Lease holder only.
    let leader = kube
        .as_ref()
        .map(|client| crate::webhook::leader_election(client.clone(), &a.ca.system_namespace));
    if let (Some(client), Some(leader)) = (&kube, &leader) {
        tokio::spawn(crate::source::status::keep(
            client.clone(),
            rx.clone(),
            kube_pending.clone(),
            leader.clone(),
        ));
    }
    // Re-mint certificates at half life and tell the streams. Root rotation: alone, each
    // step as the state directory says; on Kubernetes every replica mirrors the Secret and
    // only the leader takes steps and writes them back.
    {
        let ca = ca.clone();
        let shared = share_root.cloned().zip(leader.clone());
        let (ns, state_dir) = (a.ca.system_namespace.clone(), a.ca.state_dir.clone());
        tokio::spawn(async move {
            let mut tick = 0u64;
            let mut unpushed = false;
            let mut failing = false;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                tick += 1;
                let step = match &shared {
                    None => ca.maintain().map_err(anyhow::Error::from),
                    // Every 2 s.
                    Some(_) if tick % 4 != 0 => Ok(false),
                    Some((client, leader)) => {
                        let lead = *leader.borrow();
                        async {
                            // A step not yet in the Secret goes first (pulling would undo it).
                            if unpushed {
                                crate::ca::shared::push(client, &ns, &state_dir).await?;
                                unpushed = false;
                            }
                            crate::ca::shared::pull(client, &ns, &state_dir).await?;
                            if !lead {
                                return Ok(ca.adopt_state()?);
                            }
                            let changed = ca.maintain()?;
                            if changed {
                                unpushed = true;
                                crate::ca::shared::push(client, &ns, &state_dir).await?;
                                unpushed = false;
                            }
                            Ok(changed)
                        }
                        .await
                    }
                };
                let rotated = match step {
                    Ok(c) => {
                        failing = false;
                        c
                    }
                    Err(e) => {
                        if !failing {
                            error!(error = %format!("{e:#}"), "root rotation step failed");
                        }
                        failing = true;
                        false
                    }
                };
                if rotated {
                    info!(roots = ca.roots().len(), "CA roots changed");
                }
                if ca.expire_due() | rotated {
                    rotation_tx.send_modify(|v| *v += 1);
                }
            }
        });
    }
    let server_cert = ca.server_cert(&a.ca.dns_names(), Duration::from_secs(365 * 86400))?;
    if let (Some(client), false) = (&kube, a.webhook_address.is_empty()) {
        let addr: SocketAddr = a
            .webhook_address
            .parse()
            .with_context(|| format!("--webhook-address {}", a.webhook_address))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let acceptor = webhook_acceptor(&server_cert.cert_chain_pem, &server_cert.key_pem)?;
        let injector = if a.injection {
            let template = match &a.injection_template {
                Some(p) => Some(
                    std::fs::read_to_string(p)
                        .with_context(|| format!("--injection-template {}", p.display()))?,
                ),
                None => None,
            };
            let roots_ca = ca.clone();
            let opts = crate::inject::Options {
                proxy_image: a.proxy_image.clone(),
                init_image: a.proxy_init_image.clone(),
                token_audience: a.injection_token_audience.clone(),
                xds_address: a
                    .injection_xds_address
                    .clone()
                    .unwrap_or_else(|| format!("pilotfish.{}.svc:15012", a.ca.system_namespace)),
                xds_server_name: "pilotfish".into(),
                delta: a.injection_delta,
                cluster_id: "Kubernetes".into(),
                roots: Arc::new(move || roots_ca.bundle_pem()),
            };
            let inj = crate::inject::Injector::new(template.as_deref(), opts);
            Some(Arc::new(inj.map_err(|e| anyhow::anyhow!(e))?))
        } else {
            None
        };
        tokio::spawn(crate::webhook::serve(
            listener,
            acceptor,
            injector,
            xds.stop.clone(),
        ));
        let endpoint = match &a.webhook_url {
            Some(u) => crate::webhook::Endpoint::Url(u.clone()),
            None => crate::webhook::Endpoint::Service(
                a.ca.system_namespace.clone(),
                "pilotfish".into(),
                15017,
            ),
        };
        let roots_ca = ca.clone();
        let leader = leader.clone().expect("a leader election with Kubernetes");
        tokio::spawn(crate::webhook::keep_config(
            client.clone(),
            endpoint,
            Arc::new(move || roots_ca.bundle_pem()),
            rotation_rx,
            leader,
            a.webhook_failure_policy == "Fail",
            a.injection,
        ));
        info!(%addr, "validating webhook serving");
    }
    // Client certificates are optional (xDS streams authenticate with tokens); the
    // ext_authz service requires one of the mesh's.
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            &server_cert.cert_chain_pem,
            &server_cert.key_pem,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(ca.bundle_pem()))
        .client_auth_optional(true);
    let authz = crate::authz::server::AuthzService {
        current: rx.clone(),
        quotas: Arc::new(std::sync::Mutex::new(crate::authz::builtin::Quotas::new(
            crate::authz::server::MAX_BUCKETS,
        ))),
        metrics: metrics.clone(),
        require_peer: true,
    };
    if !a.authz_address.is_empty() {
        let addr: SocketAddr = a
            .authz_address
            .parse()
            .with_context(|| format!("--authz-address {}", a.authz_address))?;
        if !addr.ip().is_loopback() && !a.allow_plaintext_xds {
            anyhow::bail!(
                "--authz-address {addr} is not loopback: plaintext ext_authz has no \
                 authentication; sidecars use the TLS port (or pass --allow-plaintext-xds)"
            );
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let plain = crate::authz::server::AuthzService {
            require_peer: false,
            ..authz.clone()
        };
        let mut stop = stop_tx.subscribe();
        tokio::spawn(
            hardened(tonic::transport::Server::builder())
                .add_routes(with_fallback(tonic::service::Routes::new(
                    envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer::new(plain),
                )))
                .serve_with_incoming_shutdown(
                    nodelay(listener),
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                    },
                ),
        );
        info!(%addr, "ext_authz (plaintext, built-in provider) serving");
    }
    let secure_listener = tokio::net::TcpListener::bind(secure_addr)
        .await
        .with_context(|| format!("binding {secure_addr}"))?;
    let http = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("binding {http_addr}"))?;
    // Every sidecar reconnects at once after a restart: a listen queue of 4,096 (tokio's
    // default is 1,024) keeps a storm of 2,000 connects from overflowing it.
    let xds_listener = listen(xds_addr, 4096).with_context(|| format!("binding {xds_addr}"))?;
    info!(%xds_addr, %http_addr, dir = %a.config_dir.display(), "pilotfish serving");
    // One signal fans out: streams end, both servers drain, and a deadline bounds it all.
    let stopping = stop_tx.subscribe();
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutting down");
        let _ = stop_tx.send(true);
        tokio::time::sleep(Duration::from_secs(5)).await;
        warn!("shutdown took over 5 s; exiting");
        std::process::exit(0);
    });
    let mut http_stop = stopping.clone();
    let http_task = tokio::spawn(async move {
        axum::serve(http, debug)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await
    });
    let max_age = crate::api::parse_duration(&a.max_connection_age)
        .map_err(|e| anyhow::anyhow!("--max-connection-age: {e}"))?;
    let max_age = (!max_age.is_zero()).then_some(max_age);
    let secure_stop = stopping.clone();
    let secure_task = if a.xds_http2 == "own" {
        // Both xDS ports on one HTTP/2 stack: the own server, here behind rustls, with the
        // built-in ext_authz provider next to xDS and SDS.
        let acceptor = tls_acceptor(
            &server_cert.cert_chain_pem,
            &server_cert.key_pem,
            &ca.bundle_pem(),
        )?;
        let svc = envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer::new(authz);
        let extra = vec![
            extra_service("/envoy.service.auth.v3.Authorization/", svc),
            extra_service("/envoy.service.accesslog.v3.AccessLogService/", sink(true)),
        ];
        tokio::spawn(async move {
            crate::xds::http2::serve_tls(
                secure_listener,
                acceptor,
                secure,
                extra,
                secure_stop,
                Duration::from_secs(2),
                max_age,
            )
            .await;
            Ok(())
        })
    } else {
        let mut secure_stop = secure_stop;
        tokio::spawn(
            hardened(tonic::transport::Server::builder())
                .tls_config(tls)?
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .add_routes(with_fallback(
                    xds_routes(secure).add_service(
                            envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer::new(authz),
                        ).add_service(sink(true)),
                ))
                .serve_with_incoming_shutdown(
                    nodelay(secure_listener),
                    async move {
                        let _ = secure_stop.wait_for(|s| *s).await;
                    },
                ),
        )
    };
    info!(%secure_addr, "xDS over TLS serving");
    // The plaintext port, where every sidecar connects, runs pilotfish's own HTTP/2 server
    // (see `xds::http2`: no buffers held by idle connections).
    match a.xds_http2.as_str() {
        "hyper" => {
            // The same services on hyper's HTTP/2, tuned as the own server is: 1 MiB stream
            // and connection windows for large pushes, keepalive, one ADS stream per proxy
            // (a few more for non-aggregated clients).
            let mut stop = stopping.clone();
            let plain = tonic::transport::Server::builder()
                .initial_stream_window_size(Some(1 << 20))
                .initial_connection_window_size(Some(1 << 20))
                .max_frame_size(Some(16 * 1024))
                .max_concurrent_streams(Some(16))
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .add_routes(with_fallback(xds_routes(xds).add_service(sink(false))))
                .serve_with_incoming_shutdown(nodelay(xds_listener), async move {
                    let _ = stop.wait_for(|s| *s).await;
                });
            if let Err(e) = plain.await {
                error!(error = %e, "plaintext xDS server stopped");
            }
        }
        _ => {
            crate::xds::http2::serve_plain(
                xds_listener,
                xds,
                vec![extra_service(
                    "/envoy.service.accesslog.v3.AccessLogService/",
                    sink(false),
                )],
                stopping,
                Duration::from_secs(2),
                max_age,
            )
            .await
        }
    }
    http_task.abort();
    secure_task.abort();
    info!("pilotfish stopped");
    Ok(())
}

/// The debug port's bearer token: the file's (trimmed), else `<state-dir>/debug-token`,
/// made (32 random bytes, hex, mode 0600) when missing.
fn debug_token(
    file: Option<&std::path::Path>,
    state_dir: &std::path::Path,
) -> anyhow::Result<String> {
    if let Some(f) = file {
        let t = std::fs::read_to_string(f)
            .with_context(|| format!("--debug-token-file {}", f.display()))?
            .trim()
            .to_string();
        if t.len() < 16 {
            anyhow::bail!(
                "--debug-token-file {}: the token must be at least 16 characters",
                f.display()
            );
        }
        return Ok(t);
    }
    let path = state_dir.join("debug-token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if t.trim().len() >= 16 {
            return Ok(t.trim().to_string());
        }
    }
    std::fs::create_dir_all(state_dir)?;
    let t = hex::encode(rand::random::<[u8; 32]>());
    crate::source::last_good::write_owner_only(&path, t.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    info!(path = %path.display(), "debug pages need a bearer token (the port is not loopback); it is in this file");
    Ok(t)
}

/// A tonic service served next to xDS by the own HTTP/2 server, for paths under `prefix`.
fn extra_service<S>(prefix: &'static str, svc: S) -> crate::xds::http2::Extra
where
    S: tonic::codegen::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    crate::xds::http2::Extra {
        prefix,
        call: Box::new(move |req| {
            let mut svc = svc.clone();
            Box::pin(async move {
                match svc.call(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                }
            })
        }),
    }
}

/// A Kubernetes client from `kubeconfig`, else inferred (`KUBECONFIG`, `~/.kube/config`,
/// in-cluster).
async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("--kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("--kubeconfig {}", p.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes credentials (--kubeconfig, KUBECONFIG, ~/.kube/config or in-cluster)",
        )?,
    };
    kube::Client::try_from(config).context("Kubernetes client")
}

/// The webhook's TLS config: the serving certificate, ALPN h2 and HTTP/1.1, no client
/// certificate (the API server is the only caller, over its own network path).
fn webhook_acceptor(chain_pem: &str, key_pem: &str) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the serving certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("the serving key")?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// The TLS port's server config for the own HTTP/2 server: the xDS serving certificate,
/// ALPN `h2`, client certificates optional and verified against the mesh's roots (xDS
/// streams authenticate with tokens; the ext_authz service requires a certificate).
fn tls_acceptor(
    chain_pem: &str,
    key_pem: &str,
    roots_pem: &str,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the xDS serving certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("the xDS serving key")?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(c.context("the mesh's roots")?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// The xDS services (ADS and the per-type ones) of one server.
fn xds_routes(srv: XdsServer) -> tonic::service::Routes {
    tonic::service::Routes::new(XdsService::<Cds>::new(srv.clone()))
        .add_service(XdsService::<Eds>::new(srv.clone()))
        .add_service(XdsService::<Lds>::new(srv.clone()))
        .add_service(XdsService::<Rds>::new(srv.clone()))
        .add_service(XdsService::<Sds>::new(srv.clone()))
        .add_service(XdsService::<Ads>::new(srv))
}

/// The limits the tonic ports enforce, the same as the own server's (see README, security):
/// 100 concurrent streams a connection, a 64 KiB decoded header list.
fn hardened(b: tonic::transport::Server) -> tonic::transport::Server {
    b.max_concurrent_streams(Some(100))
        .http2_max_header_list_size(Some(64 * 1024))
}

/// gRPC routes, answering anything else as an HTTP server would: a gRPC call to a method
/// pilotfish does not serve gets `UNIMPLEMENTED`, any other request a 404 with a body (an
/// HTTP/2 client expects a response body; h2spec checks frames against it).
fn with_fallback(routes: tonic::service::Routes) -> tonic::service::Routes {
    async fn fallback(req: axum::extract::Request) -> axum::response::Response {
        use axum::response::IntoResponse;
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("application/grpc"));
        let path = req.uri().path().to_string();
        // The whole request first (bounded in size and time), so a malformed one is
        // answered with the stream or connection error it deserves, not a 404 that races it.
        let body = tokio::time::timeout(
            Duration::from_secs(5),
            axum::body::to_bytes(req.into_body(), 64 * 1024),
        )
        .await;
        if !matches!(body, Ok(Ok(_))) {
            return http::StatusCode::BAD_REQUEST.into_response();
        }
        if grpc {
            tonic::Status::unimplemented(format!("no method {path}"))
                .into_http::<axum::body::Body>()
        } else {
            (
                http::StatusCode::NOT_FOUND,
                "pilotfish: not a gRPC method of this port\n",
            )
                .into_response()
        }
    }
    tonic::service::Routes::from(routes.into_axum_router().fallback(fallback))
}

/// Accepted connections with Nagle's algorithm off (tonic leaves a stream it is handed as
/// it is): a small response (a Check answer, an xDS ACK-driven push) must not wait for the
/// peer's delayed ACK (41–45 ms stalls under load in `cargo bench --bench authz`).
fn nodelay(l: tokio::net::TcpListener) -> impl futures::Stream<Item = std::io::Result<Conn>> {
    use futures::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(l).map(|r| {
        r.map(|s| {
            let _ = s.set_nodelay(true);
            Conn(s)
        })
    })
}

/// An accepted connection that reads what the peer already sent before it closes: a socket
/// closed with unread input is reset (RST) by the kernel, and a peer that sent something
/// invalid (a bad HTTP/2 preface) should see the connection closed, not reset.
pub struct Conn(tokio::net::TcpStream);

impl Drop for Conn {
    fn drop(&mut self) {
        let mut buf = [0u8; 4096];
        for _ in 0..16 {
            match self.0.try_read(&mut buf) {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// A TCP listener with address reuse and a listen queue of `backlog`.
fn listen(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(backlog)
}

/// Proxy authentication and secret serving, with their metrics registered.
fn security(
    ca: &Arc<Ca>,
    verifier: Arc<dyn crate::ca::token::TokenVerifier>,
    metrics: &Metrics,
) -> (Arc<Security>, watch::Sender<u64>) {
    let (rotation_tx, rotation) = watch::channel(0u64);
    let sec = Arc::new(Security {
        ca: ca.clone(),
        verifier,
        rotation,
        refusals: Default::default(),
        sds_denied: Default::default(),
    });
    metrics.register(
        "citadel_server_success_cert_issuance_count",
        "Workload certificates issued",
        ca.issued_total.clone(),
    );
    metrics.register(
        "pilotfish_cert_rotations",
        "Workload certificates re-minted at half life",
        ca.rotations_total.clone(),
    );
    metrics.register(
        "pilotfish_xds_auth_refusals",
        "xDS streams refused, by reason",
        sec.refusals.clone(),
    );
    metrics.register(
        "pilotfish_sds_denied",
        "Secret requests refused",
        sec.sds_denied.clone(),
    );
    (sec, rotation_tx)
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The World `serve` would build from these files: parse, validate, then cross-reference
/// checks (for `validate` and `analyze`).
pub fn world_from_paths(
    paths: &[PathBuf],
    mesh_config: Option<&std::path::Path>,
) -> anyhow::Result<Arc<crate::model::World>> {
    let mut mesh = MeshConfig {
        // `serve` turns the built-in provider on by default: check policies as it would.
        builtin_authz: Some("pilotfish:15012".into()),
        ..Default::default()
    };
    if let Some(path) = mesh_config {
        load_mesh_config(path, &mut mesh)?;
    }
    let mut index = Index::new(mesh);
    index.reset(parse_all(crate::source::file::read_tree(paths)?));
    Ok(Arc::new(index.snapshot()))
}

pub fn validate(a: ValidateArgs) -> anyhow::Result<ExitCode> {
    let world = world_from_paths(&a.paths, a.mesh_config.as_deref())?;
    for e in &world.errors {
        println!("{e}");
    }
    let objects = world.objects.len();
    if world.errors.is_empty() {
        println!("{objects} valid object(s)");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "{} error(s), {objects} object(s) accepted",
            world.errors.len()
        );
        Ok(ExitCode::from(1))
    }
}

/// `A.B.C.D/N` (N in 8..=30) as (network address, N).
pub fn parse_vip_range(s: &str) -> Result<(u32, u8), String> {
    let (ip, n) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected an IPv4 CIDR such as 240.240.0.0/16"))?;
    let ip: std::net::Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{s:?}: not an IPv4 address"))?;
    let n: u8 = n.parse().map_err(|_| format!("{s:?}: bad prefix length"))?;
    if !(8..=30).contains(&n) {
        return Err(format!("{s:?}: the prefix length must be 8 to 30"));
    }
    let mask = u32::MAX << (32 - n);
    Ok((u32::from(ip) & mask, n))
}

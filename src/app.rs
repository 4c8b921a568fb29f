//! Wiring: sources → index → translate → xds cache → servers; graceful shutdown.
use crate::api::{ConfigError, Resource};
use crate::debug::DebugState;
use crate::metrics::Metrics;
use crate::model::{Index, MeshConfig, Proxy, World};
use crate::translate;
use crate::xds::cache::Generation;
use crate::xds::server::{Published, XdsServer};
use crate::xds::services::{Cds, Eds, Lds, Rds};
use crate::xds::status::Connections;
use anyhow::Context;
use notify::Watcher;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{error, info, warn};

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Directory of Istio / Kubernetes YAML (watched recursively).
    #[arg(long, default_value = "config")]
    pub config_dir: PathBuf,
    /// Plaintext xDS (ADS) listen address.
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub xds_address: String,
    /// Monitoring and debug HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub http_address: String,
    /// Quiet period before a push, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub debounce_ms: u64,
    /// Longest a push may be delayed by a stream of changes, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
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
}

#[derive(clap::Args, Debug, Clone)]
pub struct ValidateArgs {
    /// Files or directories to check.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

pub fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    init_tracing(&a.log_format)?;
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

/// Parse every file of a set into an index-ready list.
pub fn parse_all(files: Vec<(String, String)>) -> Vec<(String, Vec<Resource>, Vec<ConfigError>)> {
    files
        .into_iter()
        .map(|(f, text)| {
            let (r, e) = crate::api::parse_file(&f, &text);
            (f, r, e)
        })
        .collect()
}

/// Build a world from in-memory files (tests, benchmarks, `validate`).
pub fn world_from_files(files: &[(&str, &str)], mesh: MeshConfig) -> World {
    let mut index = Index::new(mesh);
    index.reset(parse_all(
        files
            .iter()
            .map(|(f, t)| (f.to_string(), t.to_string()))
            .collect(),
    ));
    index.snapshot()
}

/// Check a world's translation for consistency before it is served.
pub fn consistency(world: &World) -> Result<(), Vec<String>> {
    translate::check(&translate::generate(
        world,
        &Proxy {
            namespace: "default".into(),
            ..Default::default()
        },
    ))
}

/// The config loop: load, publish, watch, debounce, reload. Runs on its own thread
/// (file IO and parsing are blocking work).
fn config_loop(
    dir: PathBuf,
    mesh: MeshConfig,
    debounce: Duration,
    debounce_max: Duration,
    tx: watch::Sender<Option<Published>>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let (ev_tx, ev_rx) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !matches!(ev.kind, notify::EventKind::Access(_)) {
                let _ = ev_tx.send(());
            }
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::Recursive)?;
    let mut index = Index::new(mesh);
    let mut changed_at = Instant::now();
    let mut last_errors: Vec<ConfigError> = Vec::new();
    loop {
        match crate::source::file::read_tree(std::slice::from_ref(&dir)) {
            Ok(files) => {
                index.reset(parse_all(files));
                let world = index.snapshot();
                for e in world.errors.iter().filter(|e| !last_errors.contains(e)) {
                    warn!(file = %e.file, object = %e.object, field = %e.field, reason = %e.reason, "config error");
                }
                last_errors = world.errors.clone();
                metrics.config_errors.set(world.errors.len() as i64);
                match consistency(&world) {
                    Ok(()) => {
                        let version = world.version;
                        let gen = Arc::new(Generation::new(Arc::new(world)));
                        metrics.debounce.observe(changed_at.elapsed().as_secs_f64());
                        metrics.config_updates.inc();
                        tx.send_replace(Some(Published { gen, changed_at }));
                        info!(
                            version,
                            errors = last_errors.len(),
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
            Err(e) => {
                error!(error = %format!("{e:#}"), "reading the config directory failed; keeping the previous version")
            }
        }
        // Wait for a change, then for a quiet period (bounded by debounce_max).
        if ev_rx.recv().is_err() {
            return Ok(());
        }
        changed_at = Instant::now();
        loop {
            let left = debounce_max.saturating_sub(changed_at.elapsed());
            if left.is_zero() {
                break;
            }
            match ev_rx.recv_timeout(debounce.min(left)) {
                Ok(()) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
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
    let mesh = MeshConfig {
        domain: a.domain.clone(),
        allow_any,
    };
    if !a.config_dir.is_dir() {
        anyhow::bail!("config directory {} does not exist", a.config_dir.display());
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
    {
        let (dir, m) = (a.config_dir.clone(), metrics.clone());
        let (d, dm) = (
            Duration::from_millis(a.debounce_ms),
            Duration::from_millis(a.debounce_max_ms),
        );
        std::thread::Builder::new()
            .name("config".into())
            .spawn(move || {
                if let Err(e) = config_loop(dir, mesh, d, dm, tx, m) {
                    error!(error = %format!("{e:#}"), "config loop stopped");
                }
            })?;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let xds = XdsServer {
        current: rx.clone(),
        metrics: metrics.clone(),
        conns: conns.clone(),
        stop: stop_rx,
    };
    let debug = crate::debug::router(DebugState {
        current: rx,
        metrics,
        conns,
    });
    let http = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("binding {http_addr}"))?;
    let xds_listener = tokio::net::TcpListener::bind(xds_addr)
        .await
        .with_context(|| format!("binding {xds_addr}"))?;
    info!(%xds_addr, %http_addr, dir = %a.config_dir.display(), "pilotfish serving");
    // One signal fans out: streams end, both servers drain, and a deadline bounds it all.
    let mut stopping = stop_tx.subscribe();
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
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(Cds(xds.clone()).into_service())
        .add_service(Eds(xds.clone()).into_service())
        .add_service(Lds(xds.clone()).into_service())
        .add_service(Rds(xds.clone()).into_service())
        .add_service(xds.into_service())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(xds_listener),
            async move {
                let _ = stopping.wait_for(|s| *s).await;
            },
        )
        .await?;
    http_task.abort();
    info!("pilotfish stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub fn validate(a: ValidateArgs) -> anyhow::Result<ExitCode> {
    // The same pipeline as `serve`: parse, validate, then cross-reference checks.
    let mut index = Index::new(MeshConfig::default());
    index.reset(parse_all(crate::source::file::read_tree(&a.paths)?));
    let world = index.snapshot();
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

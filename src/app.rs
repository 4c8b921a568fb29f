//! Wiring: sources → index → translate → xds cache → servers; graceful shutdown.
use std::path::PathBuf;
use std::process::ExitCode;

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

pub fn serve(_a: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}

pub fn validate(a: ValidateArgs) -> anyhow::Result<ExitCode> {
    let mut errors = 0usize;
    let mut objects = 0usize;
    for (file, text) in crate::source::file::read_tree(&a.paths)? {
        let (res, errs) = crate::api::parse_file(&file, &text);
        objects += res.len();
        for e in errs {
            println!("{e}");
            errors += 1;
        }
    }
    if errors > 0 {
        println!("{errors} error(s), {objects} valid object(s)");
        Ok(ExitCode::from(1))
    } else {
        println!("{objects} valid object(s)");
        Ok(ExitCode::SUCCESS)
    }
}

//! `pilotfish` command line: parses arguments and hands off to the library.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "pilotfish",
    version,
    about = "Service-mesh control plane for stock Envoy"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the control plane: watch a config directory, serve xDS and debug HTTP.
    Serve(pilotfish::app::ServeArgs),
    /// Check Istio / Kubernetes YAML offline; exit 1 with every error.
    Validate(pilotfish::app::ValidateArgs),
    /// Print a bearer token for a service account (file mode; signed with the state dir's key).
    Token(pilotfish::app::TokenArgs),
    /// Start a root CA rotation (in the state directory, or with --kubernetes in the shared
    /// Secret); running pilotfish replicas complete it without downtime.
    RotateRoot(pilotfish::app::RotateRootArgs),
    /// Would a request pass? Decide offline from config files with the mesh's policies.
    Check(pilotfish::check::CheckArgs),
    /// Print an Envoy bootstrap for a sidecar.
    Bootstrap(pilotfish::bootstrap::BootstrapArgs),
    /// Apply (or print) Istio's sidecar interception iptables rules.
    Iptables(pilotfish::iptables::IptablesArgs),
    /// Print the CustomResourceDefinitions of the Istio kinds pilotfish reads (crds/istio.yaml).
    Crds,
    /// Per connected proxy and type: SYNCED, STALE, NACKED (with the error) or NOT SENT.
    ProxyStatus(pilotfish::cli::ProxyStatusArgs),
    /// The clusters, listeners, routes, endpoints or secrets a proxy is served.
    ProxyConfig(pilotfish::cli::ProxyConfigArgs),
    /// Validation plus Istio's everyday analyzers, offline (exit 1 on an error).
    Analyze(pilotfish::cli::AnalyzeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Serve(a) => pilotfish::app::serve(a),
        Cmd::Validate(a) => pilotfish::app::validate(a),
        Cmd::Token(a) => pilotfish::app::token(a),
        Cmd::RotateRoot(a) => pilotfish::app::rotate_root(a),
        Cmd::Check(a) => pilotfish::check::run(a),
        Cmd::Bootstrap(a) => pilotfish::bootstrap::run(a),
        Cmd::Iptables(a) => pilotfish::iptables::run(a),
        Cmd::ProxyStatus(a) => pilotfish::cli::proxy_status(a),
        Cmd::ProxyConfig(a) => pilotfish::cli::proxy_config(a),
        Cmd::Analyze(a) => pilotfish::cli::analyze(a),
        Cmd::Crds => {
            print!("{}", pilotfish::api::crds::render());
            Ok(ExitCode::SUCCESS)
        }
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}

//! `pilotfish bootstrap`: prints an Envoy bootstrap for a stock sidecar.
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct BootstrapArgs {}

pub fn run(_a: BootstrapArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}

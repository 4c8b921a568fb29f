//! `pilotfish iptables`: Istio's interception rules.
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct IptablesArgs {}

pub fn run(_a: IptablesArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}

//! `pilotfish check`: would this request pass? Answers offline, from a config directory,
//! with the same pure decision the built-in provider uses (`authz::decide`), naming the
//! policy and rule that decided.

use crate::authz::decide::{decide, HttpAttrs, Request, Verdict};
use crate::model::{AuthzAction, MeshConfig};
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// Config files or directories (as `pilotfish validate` takes them).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Destination workload: `namespace/name` of a WorkloadEntry or Pod, or its address.
    #[arg(long)]
    pub to: String,
    /// Destination port (the workload's port).
    #[arg(long)]
    pub port: u32,
    /// Caller identity `namespace/service-account` (its mTLS principal); none: plaintext.
    #[arg(long)]
    pub from: Option<String>,
    /// Caller address (ipBlocks, source.ip).
    #[arg(long)]
    pub source_ip: Option<std::net::IpAddr>,
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Path as the sidecar sees it after normalization.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Host / :authority (default: the destination address and port).
    #[arg(long)]
    pub host: Option<String>,
    /// Request headers, `name: value` (repeatable).
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// A plain TCP connection instead of an HTTP request.
    #[arg(long)]
    pub tcp: bool,
    /// The verified JWT payload (JSON) the request carries.
    #[arg(long)]
    pub jwt_claims: Option<String>,
    /// SPIFFE trust domain of --from.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Istio MeshConfig YAML (root namespace, ...).
    #[arg(long)]
    pub mesh_config: Option<PathBuf>,
}

/// Exit 0: allowed; 1: denied; 2: the question could not be answered.
pub fn run(a: CheckArgs) -> anyhow::Result<ExitCode> {
    let mut mesh = MeshConfig {
        trust_domain: a.trust_domain.clone(),
        builtin_authz: Some("pilotfish:15012".into()),
        ..Default::default()
    };
    if let Some(p) = &a.mesh_config {
        crate::app::load_mesh_config(p, &mut mesh)?;
    }
    let mut index = crate::model::Index::new(mesh);
    index.reset(crate::app::parse_all(crate::source::file::read_tree(
        &a.paths,
    )?));
    let world = index.snapshot();
    for e in &world.errors {
        eprintln!("config error (the object is left out): {e}");
    }
    // The destination: an address, or a WorkloadEntry / Pod by namespace/name.
    let ip = match a.to.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => {
            let (ns, name) =
                a.to.split_once('/')
                    .context("--to: expected namespace/name or an address")?;
            world
                .services
                .values()
                .flat_map(|s| s.endpoints.iter())
                .find(|e| {
                    e.namespace == ns
                        && (e.origin == format!("WorkloadEntry {ns}/{name}")
                            || e.origin == format!("Pod {ns}/{name}"))
                })
                .map(|e| e.address.clone())
                .with_context(|| format!("--to {}: no WorkloadEntry or Pod of that name", a.to))?
        }
    };
    let (ep, policies) = world
        .authz_at(&ip, a.port)
        .with_context(|| format!("{ip} is no workload of the registry"))?;
    let principal = a.from.as_ref().map(|f| {
        let (ns, sa) = f.split_once('/').unwrap_or(("default", f));
        format!("spiffe://{}/ns/{ns}/sa/{sa}", a.trust_domain)
    });
    let headers: Vec<(String, String)> = a
        .headers
        .iter()
        .filter_map(|h| h.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let host = a.host.clone().unwrap_or_else(|| format!("{ip}:{}", a.port));
    let claims: Option<serde_json::Value> = match &a.jwt_claims {
        Some(j) => Some(serde_json::from_str(j).context("--jwt-claims: not JSON")?),
        None => None,
    };
    let req = Request {
        source_principal: principal.as_deref(),
        source_ip: a.source_ip,
        destination_ip: ip.parse().ok(),
        destination_port: a.port,
        http: (!a.tcp).then_some(HttpAttrs {
            method: &a.method,
            path: &a.path,
            host: &host,
            headers: &headers,
        }),
        jwt: claims.as_ref(),
        ..Default::default()
    };
    let d = decide(&policies, &req);
    println!(
        "workload {}/{} ({ip}), port {}: {} polic{} apply",
        ep.namespace,
        ep.origin.rsplit('/').next().unwrap_or(""),
        a.port,
        policies.len(),
        if policies.len() == 1 { "y" } else { "ies" }
    );
    for p in policies.iter().filter(|p| p.action == AuthzAction::Custom) {
        println!(
            "note: CUSTOM {} asks provider {:?} first for the requests its rules select",
            p.key,
            p.provider.as_deref().unwrap_or("")
        );
    }
    for (k, i) in &d.audited {
        println!("audited by {k} rule[{i}]");
    }
    let verdict = match d.verdict {
        Verdict::Allow => "ALLOW",
        Verdict::Deny => "DENY",
    };
    println!("{verdict}: {}", d.reason);
    Ok(if d.verdict == Verdict::Allow {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

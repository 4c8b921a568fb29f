//! istioctl's everyday commands against a running pilotfish (its debug port):
//! `proxy-status`, `proxy-config clusters|listeners|routes|endpoints|secrets PROXY`, and
//! `analyze` (offline: validation plus the analyzers users rely on).

use crate::api::ConfigError;
use anyhow::Context;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

/// Where the running pilotfish's debug port is, and its token when it is not on loopback.
#[derive(clap::Args, Debug, Clone)]
pub struct DebugArgs {
    /// pilotfish's debug address.
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub debug_address: String,
    /// A file holding the debug port's bearer token (or set PILOTFISH_DEBUG_TOKEN).
    #[arg(long)]
    pub debug_token_file: Option<PathBuf>,
    /// Output: a table as istioctl prints it, or the JSON pilotfish serves.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
    pub output: String,
}

impl DebugArgs {
    fn get(&self, path: &str) -> anyhow::Result<Value> {
        let token = match &self.debug_token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("--debug-token-file {}", f.display()))?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var("PILOTFISH_DEBUG_TOKEN").ok(),
        };
        let url = format!("http://{}{path}", self.debug_address);
        let mut req = ureq::get(&url).timeout(std::time::Duration::from_secs(30));
        if let Some(t) = &token {
            req = req.set("authorization", &format!("Bearer {t}"));
        }
        match req.call() {
            Ok(r) => {
                let mut body = Vec::new();
                std::io::Read::read_to_end(&mut r.into_reader(), &mut body)?;
                Ok(serde_json::from_slice(&body).with_context(|| format!("{url}: not JSON"))?)
            }
            Err(ureq::Error::Status(401, _)) => anyhow::bail!(
                "{url}: 401: the debug port needs its token (--debug-token-file or PILOTFISH_DEBUG_TOKEN)"
            ),
            Err(ureq::Error::Status(code, r)) => {
                anyhow::bail!("{url}: {code}: {}", r.into_string().unwrap_or_default().trim())
            }
            Err(e) => Err(e).with_context(|| format!("is pilotfish running? GET {url}")),
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct ProxyStatusArgs {
    /// Only this proxy (its id or a part of it, e.g. the pod name).
    pub proxy: Option<String>,
    #[command(flatten)]
    pub debug: DebugArgs,
}

/// A type's sync state as istioctl names it.
fn sync_state(t: &Value) -> String {
    let sent = t["sent_version"].as_str().unwrap_or("");
    let acked = t["acked_version"].as_str().unwrap_or("");
    let nacked = t["nacked_version"].as_str().unwrap_or("");
    if sent.is_empty() {
        "NOT SENT".into()
    } else if !nacked.is_empty() && nacked == sent {
        "NACKED".into()
    } else if sent == acked {
        "SYNCED".into()
    } else {
        "STALE".into()
    }
}

/// Columns padded to the widest cell, three spaces apart (istioctl's tabwriter look).
fn table(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

/// `pilotfish proxy-status [PROXY]`: per proxy and type, SYNCED / STALE / NACKED / NOT
/// SENT, and every NACK's error.
pub fn proxy_status(a: ProxyStatusArgs) -> anyhow::Result<ExitCode> {
    let rows = a.debug.get("/debug/syncz")?;
    let mut rows: Vec<&Value> = rows
        .as_array()
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    if let Some(p) = &a.proxy {
        rows.retain(|r| {
            r["proxy"]
                .as_str()
                .is_some_and(|id| id.contains(p.as_str()))
        });
        if rows.is_empty() {
            anyhow::bail!("no connected proxy matches {p:?}");
        }
    }
    rows.sort_by_key(|r| s(&r["proxy"]));
    if a.debug.output == "json" {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = vec![[
        "NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "SDS", "VERSION",
    ]
    .map(String::from)
    .to_vec()];
    let mut nacks = Vec::new();
    for r in &rows {
        let name = name_of(&s(&r["proxy"]));
        let mut row = vec![name.clone(), "Kubernetes".into()];
        for ty in ["cds", "lds", "eds", "rds", "sds"] {
            let st = r["types"]
                .get(ty)
                .map(sync_state)
                .unwrap_or_else(|| "NOT SENT".into());
            if st == "NACKED" {
                nacks.push(format!(
                    "{name} {}: {}",
                    ty.to_uppercase(),
                    s(&r["types"][ty]["nack_error"])
                ));
            }
            row.push(st);
        }
        row.push(s(&r["world_version"]));
        t.push(row);
    }
    print!("{}", table(&t));
    if !nacks.is_empty() {
        println!("\nNACKs:");
        for n in nacks {
            println!("  {n}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `sidecar~IP~POD.NS~...` → `POD.NS` (istioctl's NAME column).
fn name_of(id: &str) -> String {
    id.split('~')
        .nth(2)
        .map(String::from)
        .unwrap_or_else(|| id.to_string())
}

#[derive(clap::Args, Debug)]
pub struct ProxyConfigArgs {
    /// clusters, listeners, routes, endpoints or secrets.
    #[arg(value_parser = ["clusters", "listeners", "routes", "endpoints", "secrets", "all"])]
    pub what: String,
    /// The proxy (its id or a part of it, e.g. the pod name).
    pub proxy: String,
    #[command(flatten)]
    pub debug: DebugArgs,
}

/// `pilotfish proxy-config WHAT PROXY`: the config pilotfish serves that proxy.
pub fn proxy_config(a: ProxyConfigArgs) -> anyhow::Result<ExitCode> {
    if a.what == "secrets" {
        return secrets(&a);
    }
    let dump = a.debug.get(&format!(
        "/debug/config_dump?proxyID={}",
        urlencode(&a.proxy)
    ))?;
    let section = |ty: &str, key: &str, field: &str| -> Vec<Value> {
        dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(ty)))
            .flat_map(|c| c[key].as_array().cloned().unwrap_or_default())
            .map(|x| x[field].clone())
            .collect()
    };
    let clusters = section("ClustersConfigDump", "dynamic_active_clusters", "cluster");
    let endpoints = section(
        "EndpointsConfigDump",
        "dynamic_endpoint_configs",
        "endpoint_config",
    );
    let listeners = section("ListenersConfigDump", "dynamic_listeners", "active_state");
    let routes = section("RoutesConfigDump", "dynamic_route_configs", "route_config");
    let items = match a.what.as_str() {
        "clusters" => &clusters,
        "endpoints" => &endpoints,
        "listeners" => &listeners,
        "routes" => &routes,
        _ => {
            if a.debug.output == "json" {
                println!("{}", serde_json::to_string_pretty(&dump)?);
            } else {
                for w in ["clusters", "listeners", "routes", "endpoints"] {
                    println!("--- {w} ---");
                    let rows = rows_of(w, &clusters, &endpoints, &listeners, &routes);
                    print!("{}", table(&rows));
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    if a.debug.output == "json" {
        println!("{}", serde_json::to_string_pretty(items)?);
    } else {
        print!(
            "{}",
            table(&rows_of(
                &a.what, &clusters, &endpoints, &listeners, &routes
            ))
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn urlencode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn rows_of(
    what: &str,
    clusters: &[Value],
    endpoints: &[Value],
    listeners: &[Value],
    routes: &[Value],
) -> Vec<Vec<String>> {
    let head = |h: &[&str]| h.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    match what {
        "clusters" => {
            let mut t = vec![head(&[
                "SERVICE FQDN",
                "PORT",
                "SUBSET",
                "DIRECTION",
                "TYPE",
            ])];
            for c in clusters {
                let name = s(&c["name"]);
                let parts: Vec<&str> = name.split('|').collect();
                let row = if parts.len() == 4 {
                    let fqdn = if parts[3].is_empty() { "" } else { parts[3] };
                    vec![
                        fqdn.into(),
                        parts[1].into(),
                        if parts[2].is_empty() {
                            "-".into()
                        } else {
                            parts[2].into()
                        },
                        parts[0].into(),
                        s(&c["type"]),
                    ]
                } else {
                    vec![name, "-".into(), "-".into(), "-".into(), s(&c["type"])]
                };
                t.push(row);
            }
            t
        }
        "endpoints" => {
            let mut t = vec![head(&["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"])];
            for e in endpoints {
                for l in e["endpoints"].as_array().into_iter().flatten() {
                    for lb in l["lbEndpoints"].as_array().into_iter().flatten() {
                        let sa = &lb["endpoint"]["address"]["socketAddress"];
                        t.push(vec![
                            format!("{}:{}", s(&sa["address"]), s(&sa["portValue"])),
                            lb["healthStatus"].as_str().unwrap_or("HEALTHY").to_string(),
                            "OK".into(),
                            s(&e["clusterName"]),
                        ]);
                    }
                }
            }
            t
        }
        "listeners" => {
            let mut t = vec![head(&["ADDRESSES", "PORT", "MATCH", "DESTINATION"])];
            for l in listeners {
                // Envoy's dump nests the listener in `active_state.listener`; pilotfish's
                // holds it in `active_state`.
                let l = l.get("listener").unwrap_or(l);
                let sa = &l["address"]["socketAddress"];
                let (addr, port) = (s(&sa["address"]), s(&sa["portValue"]));
                let mut chains: Vec<&Value> = l["filterChains"]
                    .as_array()
                    .map(|v| v.iter().collect())
                    .unwrap_or_default();
                if let Some(d) = l.get("defaultFilterChain") {
                    chains.push(d);
                }
                for c in chains {
                    t.push(vec![
                        addr.clone(),
                        port.clone(),
                        chain_match(&c["filterChainMatch"]),
                        chain_destination(c),
                    ]);
                }
            }
            t
        }
        _ => {
            let mut t = vec![head(&["NAME", "VHOST NAME", "DOMAINS", "MATCH"])];
            for r in routes {
                let vhosts = r["virtualHosts"].as_array().cloned().unwrap_or_default();
                if vhosts.is_empty() {
                    t.push(vec![
                        s(&r["name"]),
                        "-".into(),
                        "-".into(),
                        if r.get("vhds").is_some() {
                            "(VHDS)".into()
                        } else {
                            "-".into()
                        },
                    ]);
                }
                for v in vhosts {
                    let domains: Vec<String> = v["domains"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(s)
                        .collect();
                    let shown = match domains.len() {
                        0 => "-".to_string(),
                        1 => domains[0].clone(),
                        n => format!("{} + {} more...", domains[0], n - 1),
                    };
                    for rt in v["routes"].as_array().into_iter().flatten() {
                        let m = &rt["match"];
                        let matched = ["prefix", "path", "pathSeparatedPrefix"]
                            .iter()
                            .find_map(|k| m.get(*k).map(s))
                            .or_else(|| m.get("safeRegex").map(|r| s(&r["regex"])))
                            .unwrap_or_else(|| "/*".into());
                        let matched = if m.get("prefix").is_some() {
                            format!("{matched}*")
                        } else {
                            matched
                        };
                        t.push(vec![s(&r["name"]), s(&v["name"]), shown.clone(), matched]);
                    }
                }
            }
            t
        }
    }
}

fn chain_match(m: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(r) = m["prefixRanges"].as_array() {
        let a: Vec<String> = r
            .iter()
            .map(|x| format!("{}/{}", s(&x["addressPrefix"]), s(&x["prefixLen"])))
            .collect();
        parts.push(format!("Addr: {}", a.join(",")));
    }
    if let Some(p) = m.get("destinationPort") {
        parts.push(format!("Port: {}", s(p)));
    }
    if let Some(t) = m["transportProtocol"].as_str() {
        parts.push(format!("Trans: {t}"));
    }
    if let Some(a) = m["applicationProtocols"].as_array() {
        let a: Vec<String> = a.iter().map(s).collect();
        parts.push(format!("App: {}", a.join(",")));
    }
    if parts.is_empty() {
        "ALL".into()
    } else {
        parts.join("; ")
    }
}

fn chain_destination(c: &Value) -> String {
    for f in c["filters"].as_array().into_iter().flatten() {
        let tc = &f["typedConfig"];
        match f["name"].as_str().unwrap_or("") {
            "envoy.filters.network.http_connection_manager" => {
                return match tc.get("rds") {
                    Some(r) => format!("Route: {}", s(&r["routeConfigName"])),
                    None => "Inline Route".into(),
                }
            }
            "envoy.filters.network.tcp_proxy" => {
                return match tc.get("cluster") {
                    Some(c) => format!("Cluster: {}", s(c)),
                    None => "Weighted clusters".into(),
                }
            }
            _ => {}
        }
    }
    "-".into()
}

/// `proxy-config secrets PROXY`: the proxy's certificate and roots, from `/debug/certz`
/// (serials and validity; never a key).
fn secrets(a: &ProxyConfigArgs) -> anyhow::Result<ExitCode> {
    let certz = a.debug.get("/debug/certz")?;
    let mine: Vec<&Value> = certz["issued"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["holders"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|h| h.as_str().is_some_and(|h| h.contains(a.proxy.as_str())))
        })
        .collect();
    if a.debug.output == "json" {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"default": mine, "ROOTCA": certz["roots"]})
            )?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let when = |t: &Value| {
        t.as_i64()
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| "-".into())
    };
    let mut t = vec![[
        "RESOURCE NAME",
        "TYPE",
        "STATUS",
        "VALID CERT",
        "SERIAL NUMBER",
        "NOT AFTER",
        "SPIFFE ID",
    ]
    .map(String::from)
    .to_vec()];
    for c in &mine {
        t.push(vec![
            "default".into(),
            "Cert Chain".into(),
            "ACTIVE".into(),
            "true".into(),
            s(&c["serial"]),
            when(&c["not_after_unix"]),
            s(&c["spiffe_id"]),
        ]);
    }
    for r in certz["roots"].as_array().into_iter().flatten() {
        t.push(vec![
            "ROOTCA".into(),
            "CA".into(),
            "ACTIVE".into(),
            "true".into(),
            s(&r["sha256"]).chars().take(16).collect(),
            when(&r["not_after_unix"]),
            s(&r["role"]),
        ]);
    }
    print!("{}", table(&t));
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct AnalyzeArgs {
    /// Files or directories to analyze.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Istio MeshConfig YAML the config is checked against.
    #[arg(long)]
    pub mesh_config: Option<PathBuf>,
}

/// One finding, as istioctl analyze prints it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    pub level: &'static str,
    pub code: &'static str,
    pub object: String,
    pub file: String,
    pub message: String,
}

/// Istio's analyzer code for a config error.
fn classify(e: &ConfigError) -> &'static str {
    let r = &e.reason;
    if r.contains("already routed by VirtualService") {
        "IST0109"
    } else if [
        "not found",
        "not in the service registry",
        "not defined by any DestinationRule",
        "no Service",
        "does not exist",
        "has no port",
    ]
    .iter()
    .any(|p| r.contains(p))
    {
        "IST0101"
    } else {
        "IST0106"
    }
}

/// Validation (every config error) plus the analyzers that are not errors: a Service port
/// whose name does not say its protocol (IST0118).
pub fn findings(world: &crate::model::World) -> Vec<Finding> {
    let mut out: Vec<Finding> = world
        .errors
        .iter()
        .map(|e| Finding {
            level: "Error",
            code: classify(e),
            object: e.object.clone(),
            file: e.file.clone(),
            message: if e.field.is_empty() {
                e.reason.clone()
            } else {
                format!("{}: {}", e.field, e.reason)
            },
        })
        .collect();
    for r in world.objects.values() {
        if let crate::api::Spec::Service(svc) = &r.spec {
            for p in &svc.ports {
                let proto = crate::model::Protocol::from_name(&p.name, &p.app_protocol);
                if proto == crate::model::Protocol::Unknown {
                    out.push(Finding {
                        level: "Info",
                        code: "IST0118",
                        object: r.key.to_string(),
                        file: r.origin.clone(),
                        message: format!(
                            "Port name {:?} (port: {}) does not follow the protocol naming convention (http-, grpc-, tcp-, ... or appProtocol): its protocol is sniffed",
                            p.name, p.port
                        ),
                    });
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `pilotfish analyze PATH...`: exit 1 when an error is found.
pub fn analyze(a: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let world = crate::app::world_from_paths(&a.paths, a.mesh_config.as_deref())?;
    let f = findings(&world);
    for x in &f {
        println!(
            "{} [{}] ({} {}) {}",
            x.level, x.code, x.object, x.file, x.message
        );
    }
    let errors = f.iter().filter(|x| x.level == "Error").count();
    let namespaces: std::collections::BTreeSet<&str> =
        world.objects.keys().map(|k| k.namespace.as_str()).collect();
    let ns = namespaces.into_iter().collect::<Vec<_>>().join(", ");
    if f.is_empty() {
        println!("✔ No validation issues found when analyzing namespace: {ns}.");
    } else if errors > 0 {
        println!("Error: Analyzers found issues when analyzing namespace: {ns}.");
    }
    Ok(if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

//! `pilotfish bootstrap`: prints an Envoy bootstrap for a stock sidecar.
//!
//! The bootstrap is Istio-shaped: the node id and metadata keys are Istio's, so a proxy
//! started from it is identified exactly as istiod would identify it. Everything else
//! (listeners, clusters, routes) arrives over ADS from `pilotfish serve`.
//!
//! Static parts:
//! - cluster `xds-grpc`: HTTP/2 to the control plane, with large flow-control windows so
//!   big xDS responses (> 4 MiB) pass, and circuit breakers that never trip on xDS.
//! - listener `0.0.0.0:15021`: Istio's health port, `/healthz/ready` answers 200.
//! - listener `0.0.0.0:15090`: Istio's Prometheus port, `/stats/prometheus` is proxied to
//!   the admin interface (cluster `prometheus_stats`).
//!
//! Like Istio, `initial_fetch_timeout` is 0s: Envoy starts no listener (not even the health
//! port) until the control plane has sent its first configuration, so an unconfigured
//! sidecar is never reported ready.
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Istio's health port.
pub const HEALTH_PORT: u16 = 15021;
/// Istio's Prometheus port.
pub const PROMETHEUS_PORT: u16 = 15090;
/// 64 MiB HTTP/2 windows towards the control plane.
const XDS_WINDOW: u32 = 64 * 1024 * 1024;

#[derive(clap::Args, Debug, Clone)]
pub struct BootstrapArgs {
    /// Kubernetes namespace of the workload.
    #[arg(long)]
    pub namespace: String,
    /// Pod name of the workload.
    #[arg(long)]
    pub workload: String,
    /// Pod IP.
    #[arg(long)]
    pub ip: IpAddr,
    /// Pod labels, `k=v,k=v`.
    #[arg(long, value_parser = parse_labels)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Kubernetes service account of the workload.
    #[arg(long, default_value = "default")]
    pub service_account: String,
    /// Control plane xDS address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub xds_address: String,
    /// Cluster id reported in node metadata.
    #[arg(long, default_value = "Kubernetes")]
    pub cluster_id: String,
    /// Use incremental xDS (DELTA_GRPC) instead of state-of-the-world (GRPC).
    #[arg(long)]
    pub delta: bool,
    /// Envoy admin port (on 127.0.0.1).
    #[arg(long, default_value_t = 15000)]
    pub admin_port: u16,
    /// Write the bootstrap here instead of stdout.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Secure mode: the trust bundle (PEM file) that signs pilotfish's xDS serving
    /// certificate. With --token-file, Envoy connects over TLS (port 15012) with google_grpc.
    #[arg(long, requires = "token_file")]
    pub root_cert: Option<PathBuf>,
    /// Secure mode: a file holding the bearer token; Envoy re-reads it for every call, so the
    /// token can rotate.
    #[arg(long, requires = "root_cert")]
    pub token_file: Option<PathBuf>,
    /// Secure mode: the name to verify pilotfish's certificate against.
    #[arg(long, default_value = "pilotfish")]
    pub xds_server_name: String,
    /// A standalone gateway rather than a sidecar: the node type is Istio's `router`, and
    /// Gateway resources whose selector matches --labels configure it (no traffic capture).
    #[arg(long)]
    pub gateway: bool,
    /// The sidecar answers its workload's DNS (node metadata `DNS_CAPTURE: "true"`, as
    /// Istio's `ISTIO_META_DNS_CAPTURE`): pilotfish sends it a DNS listener on
    /// 127.0.0.1:15053 (pair with `pilotfish iptables --redirect-dns`).
    #[arg(long)]
    pub dns_capture: bool,
    /// The proxy's locality, `region/zone/subzone` (node.locality), for locality-aware load
    /// balancing; on Kubernetes, the node's topology labels.
    #[arg(long, default_value = "")]
    pub locality: String,
    /// The proxy's network (node metadata `NETWORK`, Istio's `ISTIO_META_NETWORK`): endpoints
    /// on other networks are reached through their east-west gateways.
    #[arg(long, default_value = "")]
    pub network: String,
}

/// Parses `k=v,k=v` (an empty string is no labels).
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("label {part:?} is not of the form key=value"))?;
        let k = k.trim();
        if k.is_empty() {
            return Err(format!("label {part:?} has an empty key"));
        }
        out.insert(k.to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// Splits HOST:PORT (HOST may be `[v6]`).
fn split_host_port(addr: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("--xds-address {addr:?}: expected HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow::anyhow!("--xds-address {addr:?}: bad port {port:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        anyhow::bail!("--xds-address {addr:?}: empty host");
    }
    Ok((host.to_string(), port))
}

/// Istio's proxy node id: `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local` (`router~...`
/// for a gateway).
pub fn node_id(a: &BootstrapArgs) -> String {
    format!(
        "{}~{}~{}.{}~{}.svc.cluster.local",
        if a.gateway { "router" } else { "sidecar" },
        a.ip,
        a.workload,
        a.namespace,
        a.namespace
    )
}

/// Istio's node cluster: `<app label or workload>.<ns>`.
pub fn node_cluster(a: &BootstrapArgs) -> String {
    let app = a
        .labels
        .as_ref()
        .and_then(|l| l.get("app"))
        .filter(|v| !v.is_empty())
        .cloned()
        .unwrap_or_else(|| a.workload.clone());
    format!("{app}.{}", a.namespace)
}

fn socket_address(host: &str, port: u16) -> Value {
    json!({ "socket_address": { "address": host, "port_value": port } })
}

fn router_filter() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        }
    })
}

fn hcm(stat_prefix: &str, routes: Value) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "codec_type": "AUTO",
            "route_config": {
                "name": stat_prefix,
                "virtual_hosts": [{ "name": stat_prefix, "domains": ["*"], "routes": routes }]
            },
            "http_filters": [router_filter()]
        }
    })
}

/// The ADS gRPC service: Envoy's own client to the `xds-grpc` cluster, or in secure mode
/// Google gRPC over TLS with the token as call credentials (`file_based_metadata`).
fn grpc_service(a: &BootstrapArgs, host: &str, port: u16) -> Value {
    match (&a.root_cert, &a.token_file) {
        (Some(root), Some(token)) => json!({
            "google_grpc": {
                "target_uri": format!("{host}:{port}"),
                "stat_prefix": "xds-grpc",
                "channel_credentials": { "ssl_credentials": { "root_certs": { "filename": root } } },
                "credentials_factory_name": "envoy.grpc_credentials.file_based_metadata",
                "call_credentials": [{ "from_plugin": {
                    "name": "envoy.grpc_credentials.file_based_metadata",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.config.grpc_credential.v3.FileBasedMetadataConfig",
                        "secret_data": { "filename": token },
                        "header_key": "authorization",
                        "header_prefix": "Bearer "
                    }
                }}],
                "channel_args": { "args": {
                    "grpc.ssl_target_name_override": { "string_value": a.xds_server_name },
                    "grpc.default_authority": { "string_value": a.xds_server_name },
                    "grpc.max_receive_message_length": { "int_value": 268435456 }
                }}
            }
        }),
        _ => json!({ "envoy_grpc": { "cluster_name": "xds-grpc" } }),
    }
}

/// The bootstrap as JSON.
pub fn render(a: &BootstrapArgs) -> Value {
    render_checked(a).unwrap_or_else(|e| json!({ "error": e.to_string() }))
}

fn render_checked(a: &BootstrapArgs) -> anyhow::Result<Value> {
    let labels = a.labels.clone().unwrap_or_default();
    let (xds_host, xds_port) = split_host_port(&a.xds_address)?;
    let xds_is_ip = xds_host.parse::<IpAddr>().is_ok();
    let api_type = if a.delta { "DELTA_GRPC" } else { "GRPC" };
    let thresholds = json!([
        { "priority": "DEFAULT", "max_connections": 100000, "max_pending_requests": 100000,
          "max_requests": 100000, "max_retries": 3 },
        { "priority": "HIGH", "max_connections": 100000, "max_pending_requests": 100000,
          "max_requests": 100000, "max_retries": 3 }
    ]);

    Ok(json!({
        "node": {
            "id": node_id(a),
            "cluster": node_cluster(a),
            "locality": {
                "region": a.locality.split('/').next().unwrap_or(""),
                "zone": a.locality.split('/').nth(1).unwrap_or(""),
                "sub_zone": a.locality.split('/').nth(2).unwrap_or(""),
            },
            "metadata": {
                "NAMESPACE": a.namespace,
                "LABELS": labels,
                "SERVICE_ACCOUNT": a.service_account,
                "WORKLOAD_NAME": a.workload,
                "NAME": a.workload,
                "INSTANCE_IPS": a.ip.to_string(),
                "INTERCEPTION_MODE": "REDIRECT",
                "CLUSTER_ID": a.cluster_id,
                "ISTIO_VERSION": "pilotfish",
                "DNS_CAPTURE": if a.dns_capture { "true" } else { "false" },
                "NETWORK": a.network,
                "PROXY_CONFIG": {}
            }
        },
        "admin": {
            "address": socket_address("127.0.0.1", a.admin_port),
            "access_log": [{
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": "/dev/null"
                }
            }]
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [grpc_service(a, &xds_host, xds_port)],
                "set_node_on_first_message_only": true
            },
            "cds_config": { "ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3" },
            "lds_config": { "ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3" }
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds-grpc",
                    "type": if xds_is_ip { "STATIC" } else { "STRICT_DNS" },
                    "connect_timeout": "1s",
                    "lb_policy": "ROUND_ROBIN",
                    "load_assignment": {
                        "cluster_name": "xds-grpc",
                        "endpoints": [{ "lb_endpoints": [{
                            "endpoint": { "address": socket_address(&xds_host, xds_port) }
                        }]}]
                    },
                    "circuit_breakers": { "thresholds": thresholds },
                    "upstream_connection_options": {
                        "tcp_keepalive": { "keepalive_time": 300 }
                    },
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {
                                "http2_protocol_options": {
                                    "initial_stream_window_size": XDS_WINDOW,
                                    "initial_connection_window_size": XDS_WINDOW
                                }
                            }
                        }
                    }
                },
                {
                    "name": "prometheus_stats",
                    "type": "STATIC",
                    "connect_timeout": "0.250s",
                    "lb_policy": "ROUND_ROBIN",
                    "load_assignment": {
                        "cluster_name": "prometheus_stats",
                        "endpoints": [{ "lb_endpoints": [{
                            "endpoint": { "address": socket_address("127.0.0.1", a.admin_port) }
                        }]}]
                    }
                }
            ],
            "listeners": [
                {
                    "name": "health",
                    "address": socket_address("0.0.0.0", HEALTH_PORT),
                    "filter_chains": [{ "filters": [hcm("agent", json!([
                        {
                            "match": { "path": "/healthz/ready" },
                            "direct_response": { "status": 200, "body": { "inline_string": "ok\n" } }
                        },
                        {
                            "match": { "prefix": "/" },
                            "direct_response": { "status": 404 }
                        }
                    ]))]}]
                },
                {
                    "name": "prometheus",
                    "address": socket_address("0.0.0.0", PROMETHEUS_PORT),
                    "filter_chains": [{ "filters": [hcm("stats", json!([
                        {
                            "match": { "prefix": "/stats/prometheus" },
                            "route": { "cluster": "prometheus_stats" }
                        }
                    ]))]}]
                }
            ]
        }
    }))
}

pub fn run(a: BootstrapArgs) -> anyhow::Result<ExitCode> {
    let v = render_checked(&a)?;
    let mut text = serde_json::to_string_pretty(&v)?;
    text.push('\n');
    match &a.output {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?,
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: BootstrapArgs,
    }

    fn parse(args: &[&str]) -> BootstrapArgs {
        let mut v = vec!["bootstrap"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).expect("parse").a
    }

    fn sample() -> BootstrapArgs {
        parse(&[
            "--namespace",
            "shop",
            "--workload",
            "reviews-v1-abc",
            "--ip",
            "10.1.2.3",
            "--labels",
            "app=reviews,version=v1",
            "--service-account",
            "bookinfo-reviews",
        ])
    }

    #[test]
    fn node_id_is_istio_shaped() {
        let b = render(&sample());
        assert_eq!(
            b["node"]["id"],
            "sidecar~10.1.2.3~reviews-v1-abc.shop~shop.svc.cluster.local"
        );
        assert_eq!(b["node"]["cluster"], "reviews.shop");
    }

    #[test]
    fn node_cluster_falls_back_to_workload() {
        let a = parse(&["--namespace", "ns", "--workload", "w", "--ip", "10.0.0.1"]);
        assert_eq!(render(&a)["node"]["cluster"], "w.ns");
    }

    #[test]
    fn metadata_has_istio_keys() {
        let b = render(&sample());
        let m = &b["node"]["metadata"];
        assert_eq!(m["NAMESPACE"], "shop");
        assert_eq!(m["LABELS"], json!({"app": "reviews", "version": "v1"}));
        assert_eq!(m["SERVICE_ACCOUNT"], "bookinfo-reviews");
        assert_eq!(m["WORKLOAD_NAME"], "reviews-v1-abc");
        assert_eq!(m["NAME"], "reviews-v1-abc");
        assert_eq!(m["INSTANCE_IPS"], "10.1.2.3");
        assert_eq!(m["INTERCEPTION_MODE"], "REDIRECT");
        assert_eq!(m["CLUSTER_ID"], "Kubernetes");
        assert_eq!(m["ISTIO_VERSION"], "pilotfish");
        assert_eq!(m["PROXY_CONFIG"], json!({}));
    }

    #[test]
    fn defaults_and_ads() {
        let a = parse(&["--namespace", "ns", "--workload", "w", "--ip", "10.0.0.1"]);
        assert_eq!(a.service_account, "default");
        assert_eq!(a.admin_port, 15000);
        let b = render(&a);
        assert_eq!(b["node"]["metadata"]["LABELS"], json!({}));
        let ads = &b["dynamic_resources"]["ads_config"];
        assert_eq!(ads["api_type"], "GRPC");
        assert_eq!(ads["transport_api_version"], "V3");
        assert_eq!(ads["set_node_on_first_message_only"], true);
        assert_eq!(
            ads["grpc_services"][0]["envoy_grpc"]["cluster_name"],
            "xds-grpc"
        );
        let xds = &b["static_resources"]["clusters"][0];
        assert_eq!(xds["name"], "xds-grpc");
        assert_eq!(xds["type"], "STATIC");
        let addr = &xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            ["address"]["socket_address"];
        assert_eq!(addr["address"], "127.0.0.1");
        assert_eq!(addr["port_value"], 15010);
        assert_eq!(
            b["admin"]["address"]["socket_address"]["address"],
            "127.0.0.1"
        );
    }

    #[test]
    fn delta_and_dns_xds() {
        let a = parse(&[
            "--namespace",
            "ns",
            "--workload",
            "w",
            "--ip",
            "10.0.0.1",
            "--delta",
            "--xds-address",
            "istiod.istio-system.svc:15010",
            "--admin-port",
            "19000",
        ]);
        let b = render(&a);
        assert_eq!(
            b["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
        assert_eq!(b["static_resources"]["clusters"][0]["type"], "STRICT_DNS");
        assert_eq!(b["admin"]["address"]["socket_address"]["port_value"], 19000);
    }

    #[test]
    fn bad_input_is_rejected() {
        assert!(parse_labels("app").is_err());
        assert!(parse_labels("=x").is_err());
        assert_eq!(parse_labels("").unwrap(), BTreeMap::new());
        let mut v = vec!["bootstrap", "--namespace", "n", "--workload", "w"];
        v.extend(["--ip", "not-an-ip"]);
        assert!(Cli::try_parse_from(v).is_err());
        let mut a = sample();
        a.xds_address = "no-port".into();
        assert!(render_checked(&a).is_err());
        a.xds_address = "host:99999".into();
        assert!(render_checked(&a).is_err());
    }
}

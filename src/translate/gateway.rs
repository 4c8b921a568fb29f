//! Gateways: the config of a standalone Envoy (node type `router`, `pilotfish bootstrap
//! --gateway`) from the Gateway resources whose selector its labels match, in any
//! namespace (Istio's default).
//!
//! ```text
//!  Gateway servers, by port ─► listener 0.0.0.0_<port> (tls_inspector when TLS)
//!    HTTP  (all on the port) ─► one chain ─► RDS http.<port>
//!    HTTPS (each server)     ─► chain by SNI, TLS context ─► RDS https.<port>.<server>.<gw>.<ns>
//!    TLS PASSTHROUGH         ─► chain per VirtualService tls route's sniHosts ─► tcp_proxy
//!  VirtualServices bound to the gateway (`gateways: [ns/name]`) ─► virtual hosts <host>:<port>
//! ```
//!
//! Clusters and endpoints are the unscoped outbound ones every sidecar has (a Sidecar
//! resource does not apply to a gateway); the gateway has no capture listeners.

use super::telemetry::LogTo;
use super::*;
use crate::api::networking::{GatewayServer, ServerTlsSettings};
use crate::model::{GatewayCfg, Proxy, VirtualSvc, World};
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::endpoint::v3 as ep;
use envoy_types::pb::envoy::config::listener::v3::{self as ls, FilterChain, FilterChainMatch};
use envoy_types::pb::envoy::config::route::v3 as rt;
use envoy_types::pb::envoy::extensions::filters::http::{
    cors::v3 as cors, fault::v3 as fault, router::v3 as router,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3 as tls_inspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::sni_cluster::v3 as sni_cluster;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tlsv3;
use std::collections::{BTreeMap, BTreeSet};

/// The Gateways that select this proxy, in (namespace, name) order.
pub fn selecting<'w>(world: &'w World, proxy: &Proxy) -> Vec<&'w GatewayCfg> {
    world
        .gateways
        .iter()
        .filter(|g| {
            !g.selector.is_empty()
                && crate::model::selects(&g.selector, &proxy.labels)
                && (!g.namespace_only || g.key.namespace == proxy.namespace)
        })
        .map(|g| &**g)
        .collect()
}

/// One server of one gateway.
#[derive(Clone, Copy)]
struct Srv<'w> {
    gw: &'w GatewayCfg,
    index: usize,
    s: &'w GatewayServer,
}

impl Srv<'_> {
    fn protocol(&self) -> String {
        self.s.port.protocol.to_ascii_uppercase()
    }
    fn tls(&self) -> Option<&ServerTlsSettings> {
        self.s.tls.as_ref()
    }
    fn mode(&self) -> &str {
        self.tls().and_then(|t| t.mode.as_deref()).unwrap_or("")
    }
    /// Istio's route name of an HTTPS server: `https.<port>.<port name>.<gateway>.<ns>`
    /// (the server's name, or its index, when the port has no name).
    fn https_route_name(&self, bind: u32) -> String {
        let name = if !self.s.port.name.is_empty() {
            self.s.port.name.clone()
        } else if !self.s.name.is_empty() {
            self.s.name.clone()
        } else {
            format!("server-{}", self.index)
        };
        format!(
            "https.{bind}.{name}.{}.{}",
            self.gw.key.name, self.gw.key.namespace
        )
    }
}

/// Listeners and route configurations of a gateway proxy.
pub fn generate(world: &World, proxy: &Proxy) -> (Vec<ls::Listener>, Vec<rt::RouteConfiguration>) {
    let mut by_port: BTreeMap<u32, Vec<Srv>> = BTreeMap::new();
    for gw in selecting(world, proxy) {
        for (index, s) in gw.servers.iter().enumerate() {
            by_port
                .entry(bind_port(world, proxy, s.port.number))
                .or_default()
                .push(Srv { gw, index, s });
        }
    }
    let log = super::telemetry::log_cluster(&world.mesh, proxy.mtls).map(|cluster| LogTo {
        cluster,
        inbound: false,
    });
    let mut listeners = Vec::new();
    let mut routes = Vec::new();
    for (port, servers) in by_port {
        let mut chains = Vec::new();
        let mut tls_chains = false;
        let mut seen_sni: BTreeSet<String> = BTreeSet::new();
        // TLS first: chains matched by SNI; the plain HTTP chain (no match) comes last.
        for srv in servers.iter().filter(|s| s.protocol() == "HTTPS") {
            if srv.mode() == "ISTIO_MUTUAL" && !proxy.mtls {
                // No mesh certificate to serve with: the chain would wait for it forever.
                continue;
            }
            let names = server_names(&srv.s.hosts);
            if !claim_sni(&mut seen_sni, &names) {
                // Envoy refuses two chains with the same match: the first server wins.
                continue;
            }
            let rname = srv.https_route_name(port);
            let mut rc = route_config(&rname);
            rc.virtual_hosts = vhosts(world, proxy, &[*srv]);
            routes.push(rc);
            chains.push(FilterChain {
                name: rname.clone(),
                filter_chain_match: Some(tls_match(names)),
                filters: vec![gateway_hcm(&rname, log)],
                transport_socket: Some(downstream_tls(srv.tls().expect("validated"))),
                ..Default::default()
            });
            tls_chains = true;
        }
        for srv in servers
            .iter()
            .filter(|s| s.protocol() == "TLS" && s.mode() == "AUTO_PASSTHROUGH")
        {
            // East-west: the SNI a sidecar set (`outbound_.<port>_.<subset>_.<host>`) names
            // the cluster of this network's endpoints (see `sni_clusters`); mTLS passes
            // through end to end.
            let names = server_names(&srv.s.hosts);
            if !claim_sni(&mut seen_sni, &names) {
                continue;
            }
            chains.push(FilterChain {
                name: format!(
                    "auto-passthrough|{port}|{}/{}|{}",
                    srv.gw.key.namespace, srv.gw.key.name, srv.index
                ),
                filter_chain_match: Some(tls_match(names)),
                filters: vec![
                    listener::filter(
                        "envoy.filters.network.sni_cluster",
                        sni_cluster::SniCluster::default(),
                    ),
                    listener::tcp_proxy_logged("auto_passthrough", BLACKHOLE, log),
                ],
                ..Default::default()
            });
            tls_chains = true;
        }
        for srv in servers
            .iter()
            .filter(|s| s.protocol() == "TLS" && s.mode() == "PASSTHROUGH")
        {
            for (sni, target) in passthrough_routes(world, srv) {
                if !seen_sni.insert(sni.clone()) {
                    continue;
                }
                chains.push(FilterChain {
                    name: format!("passthrough|{sni}"),
                    filter_chain_match: Some(tls_match(vec![sni])),
                    filters: vec![target.filter_logged(log)],
                    ..Default::default()
                });
                tls_chains = true;
            }
        }
        let http: Vec<Srv> = servers
            .iter()
            .filter(|s| matches!(s.protocol().as_str(), "HTTP" | "HTTP2" | "GRPC"))
            .copied()
            .collect();
        // TCP: the first server of the port whose gateway a VirtualService's `tcp` route
        // binds; it takes the port's plain (unmatched) chain, so not beside HTTP servers.
        if http.is_empty() {
            if let Some(t) = servers
                .iter()
                .filter(|s| s.protocol() == "TCP")
                .find_map(|srv| tcp_route(world, srv))
            {
                chains.push(FilterChain {
                    name: format!("tcp.{port}"),
                    filters: vec![t.filter_logged(log)],
                    ..Default::default()
                });
            }
        }
        if !http.is_empty() {
            let rname = format!("http.{port}");
            let mut rc = route_config(&rname);
            rc.virtual_hosts = vhosts(world, proxy, &http);
            routes.push(rc);
            chains.push(FilterChain {
                name: rname.clone(),
                filters: vec![gateway_hcm(&rname, log)],
                ..Default::default()
            });
        }
        if chains.is_empty() {
            continue;
        }
        listeners.push(ls::Listener {
            name: format!("0.0.0.0_{port}"),
            address: socket("0.0.0.0", port),
            filter_chains: chains,
            listener_filters: if tls_chains {
                vec![listener::listener_filter(
                    "envoy.filters.listener.tls_inspector",
                    tls_inspector::TlsInspector::default(),
                )]
            } else {
                Vec::new()
            },
            traffic_direction: core::TrafficDirection::Outbound as i32,
            ..Default::default()
        });
    }
    (listeners, routes)
}

/// The TCP route of a TCP server: the first `tcp` route of a VirtualService bound to its
/// gateway (one of whose hosts the server takes) that matches the server's port.
fn tcp_route(world: &World, srv: &Srv) -> Option<listener::TcpTarget> {
    let port = srv.s.port.number;
    for vs in &world.virtual_services {
        let takes = vs
            .spec
            .hosts
            .iter()
            .any(|h| bound_host(srv, vs, h).is_some());
        if !vs.binds(&srv.gw.name()) || !takes {
            continue;
        }
        for t in &vs.spec.tcp {
            let applies = t.matches.is_empty()
                || t.matches.iter().any(|m| {
                    m.port.is_none_or(|p| p == port)
                        && (m.gateways.is_empty() || m.gateways.contains(&srv.gw.name()))
                });
            if applies && !t.route.is_empty() {
                return Some(listener::TcpTarget {
                    stat: format!("tcp.{port}.{}.{}", vs.key.namespace, vs.key.name),
                    clusters: listener::tcp_clusters(world, &t.route, port),
                });
            }
        }
    }
    None
}

/// The port a server listens on: as in Istio, the target port of the Service port that
/// reaches this gateway (a Service `port: 443` with `targetPort: 8443` whose endpoints
/// include the gateway's address: it listens on 8443, so Envoy needs no privilege), else
/// the server's own port. Listener and route names use it (`0.0.0.0_8443`, `http.8080`);
/// VirtualService port matches and virtual host names use the server's port.
pub fn bind_port(world: &World, proxy: &Proxy, port: u32) -> u32 {
    let index = world.index_addresses();
    for ip in &proxy.ips {
        for (host, i) in index.get(ip).into_iter().flatten() {
            let Some(svc) = world.services.get(host) else {
                continue;
            };
            if let (Some(sp), Some(ep)) = (svc.port(port), svc.endpoints.get(*i)) {
                return svc.endpoint_port(sp, ep);
            }
        }
    }
    port
}

/// Takes the SNI names of a TLS chain (none: any name) unless another chain of the port
/// has one of them already (Envoy refuses two chains with one match: the first server
/// wins); nothing is taken when the chain is skipped.
fn claim_sni(seen: &mut BTreeSet<String>, names: &[String]) -> bool {
    let wanted: Vec<String> = if names.is_empty() {
        vec!["*".into()]
    } else {
        names.to_vec()
    };
    if wanted.iter().any(|n| seen.contains(n)) {
        return false;
    }
    seen.extend(wanted);
    true
}

/// A TLS chain's match: its SNI names and the TLS transport, so it never equals the plain
/// HTTP chain of the same port (Envoy would refuse the listener).
fn tls_match(server_names: Vec<String>) -> FilterChainMatch {
    FilterChainMatch {
        server_names,
        transport_protocol: "tls".into(),
        ..Default::default()
    }
}

fn route_config(name: &str) -> rt::RouteConfiguration {
    rt::RouteConfiguration {
        name: name.into(),
        validate_clusters: boolv(false),
        ..Default::default()
    }
}

/// SNI names of a TLS server's hosts (`ns/` dropped); none (any name) when one is `*`.
fn server_names(hosts: &[String]) -> Vec<String> {
    let names: Vec<String> = hosts.iter().map(|h| strip_ns(h).1.to_string()).collect();
    if names.iter().any(|n| n == "*") {
        return Vec::new();
    }
    let mut names = names;
    names.sort();
    names.dedup();
    names
}

/// `ns/host` → (ns, host); no prefix is any namespace.
fn strip_ns(h: &str) -> (&str, &str) {
    h.split_once('/').unwrap_or(("*", h))
}

/// `pattern` (a host, `*`, or `*.suffix`) covers `host` (which may itself be a wildcard).
fn covers(pattern: &str, host: &str) -> bool {
    if pattern == "*" || pattern == host {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            let h = host.strip_prefix('*').unwrap_or(host);
            h.ends_with(suffix) && h.len() > suffix.len() || (host.starts_with('*') && h == suffix)
        }
        None => false,
    }
}

/// The host a VirtualService host gets on a server, if the server takes it: the more
/// specific of the two (a `*` VirtualService host on a server for `a.example.com` answers
/// `a.example.com` only). `ns/` on the server host limits the VirtualService's namespace
/// (`.`: the gateway's own).
fn bound_host(srv: &Srv, vs: &VirtualSvc, vs_host: &str) -> Option<String> {
    for h in &srv.s.hosts {
        let (ns, pattern) = strip_ns(h);
        let ns_ok = match ns {
            "*" => true,
            "." => vs.key.namespace == srv.gw.key.namespace,
            n => vs.key.namespace == n,
        };
        if !ns_ok {
            continue;
        }
        if covers(pattern, vs_host) {
            return Some(vs_host.to_string());
        }
        if covers(vs_host, pattern) {
            return Some(pattern.to_string());
        }
    }
    None
}

/// Virtual hosts of servers sharing one route configuration: for each VirtualService bound
/// to a server's gateway, in order, each of its hosts the server takes. Several
/// VirtualServices (and HTTPRoutes) for one host are merged into its virtual host, as
/// Istio merges them on gateways: VirtualServices' routes in (namespace, name) order, then
/// HTTPRoutes' in the Gateway API's precedence.
fn vhosts(world: &World, proxy: &Proxy, servers: &[Srv]) -> Vec<rt::VirtualHost> {
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut out: Vec<rt::VirtualHost> = Vec::new();
    let mut keyed: Vec<Vec<(Option<crate::model::RouteOrder>, rt::Route)>> = Vec::new();
    for vs in &world.virtual_services {
        if vs.spec.http.is_empty() {
            continue;
        }
        for srv in servers {
            if !vs.binds(&srv.gw.name()) {
                continue;
            }
            let port = srv.s.port.number;
            let redirect = srv.tls().is_some_and(|t| t.https_redirect);
            for h in &vs.spec.hosts {
                let Some(host) = bound_host(srv, vs, h) else {
                    continue;
                };
                let routes = route::vs_routes(world, proxy, &vs.spec, port, &srv.gw.name());
                // One Envoy route per HTTPRoute route (each has one match).
                let ordered = !vs.order.is_empty() && routes.len() == vs.order.len();
                let routes = routes
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| (ordered.then(|| vs.order[i].clone()), r));
                if let Some(&at) = index.get(&host) {
                    keyed[at].extend(routes);
                    continue;
                }
                index.insert(host.clone(), out.len());
                keyed.push(routes.collect());
                let domains = if host == "*" {
                    vec!["*".to_string()]
                } else {
                    vec![host.clone(), format!("{host}:*")]
                };
                out.push(rt::VirtualHost {
                    name: format!("{host}:{port}"),
                    domains,
                    require_tls: if redirect {
                        rt::virtual_host::TlsRequirementType::All as i32
                    } else {
                        0
                    },
                    include_request_attempt_count: true,
                    ..Default::default()
                });
            }
        }
    }
    for (vh, mut routes) in out.iter_mut().zip(keyed) {
        // Stable: VirtualServices' routes (no key) first, in order.
        routes.sort_by(|a, b| a.0.cmp(&b.0));
        vh.routes = routes.into_iter().map(|(_, r)| r).collect();
    }
    out
}

/// SNI → where it goes, for a PASSTHROUGH server: the `tls` routes of VirtualServices
/// bound to its gateway whose sniHosts the server takes (and whose port, if set, is this
/// one); one destination or weighted ones.
fn passthrough_routes(world: &World, srv: &Srv) -> Vec<(String, listener::TcpTarget)> {
    let port = srv.s.port.number;
    let mut out = Vec::new();
    for vs in &world.virtual_services {
        if !vs.binds(&srv.gw.name()) {
            continue;
        }
        for t in &vs.spec.tls {
            let clusters = listener::tcp_clusters(world, &t.route, port);
            let Some((first, _)) = clusters.first() else {
                continue;
            };
            let target = || listener::TcpTarget {
                stat: first.clone(),
                clusters: clusters.clone(),
            };
            for m in t.matches.iter().filter(|m| {
                m.port.is_none_or(|p| p == port)
                    && (m.gateways.is_empty() || m.gateways.contains(&srv.gw.name()))
            }) {
                for sni in &m.sni_hosts {
                    if let Some(host) = bound_host(srv, vs, sni) {
                        out.push((host, target()));
                    }
                }
            }
        }
    }
    out
}

/// The connection manager of a gateway server: fault and CORS filters (VirtualService
/// features), the router; the gateway is the edge, so it uses the peer's address and
/// clears a client's `x-forwarded-client-cert`.
fn gateway_hcm(route_name: &str, log: Option<LogTo>) -> ls::Filter {
    listener::filter(
        "envoy.filters.network.http_connection_manager",
        hcm::HttpConnectionManager {
            stat_prefix: format!("outbound_0.0.0.0_{route_name}"),
            codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
            http_filters: vec![
                listener::http_filter("envoy.filters.http.fault", fault::HttpFault::default()),
                listener::http_filter("envoy.filters.http.cors", cors::Cors::default()),
                listener::http_filter("envoy.filters.http.router", router::Router::default()),
            ],
            route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
                hcm::Rds {
                    config_source: ads(),
                    route_config_name: route_name.into(),
                },
            )),
            access_log: log.map(super::telemetry::http_log).into_iter().collect(),
            use_remote_address: boolv(true),
            forward_client_cert_details:
                hcm::http_connection_manager::ForwardClientCertDetails::Sanitize as i32,
            normalize_path: boolv(true),
            ..Default::default()
        },
    )
}

fn tls_version(v: Option<&str>) -> i32 {
    use tlsv3::tls_parameters::TlsProtocol;
    (match v {
        Some("TLSV1_0") => TlsProtocol::TlSv10,
        Some("TLSV1_1") => TlsProtocol::TlSv11,
        Some("TLSV1_2") => TlsProtocol::TlSv12,
        Some("TLSV1_3") => TlsProtocol::TlSv13,
        _ => TlsProtocol::TlsAuto,
    }) as i32
}

/// The server side of an HTTPS server: SIMPLE (a certificate), MUTUAL (and a client
/// certificate signed by the given CA, optionally with given SANs), ISTIO_MUTUAL (the
/// gateway's mesh certificate; clients with mesh certificates). `credentialName` is the
/// Secret of the gateway's namespace, over SDS (`kubernetes://<name>`, CA
/// `kubernetes://<name>-cacert`); otherwise files on the gateway's disk.
fn downstream_tls(t: &ServerTlsSettings) -> core::TransportSocket {
    use tlsv3::common_tls_context::ValidationContextType as Vct;
    let mode = t.mode.as_deref().unwrap_or("SIMPLE");
    if mode == "ISTIO_MUTUAL" {
        return tls::istio_downstream();
    }
    let mut ctx = tlsv3::CommonTlsContext {
        alpn_protocols: vec!["h2".into(), "http/1.1".into()],
        tls_params: Some(tlsv3::TlsParameters {
            tls_minimum_protocol_version: tls_version(t.min_protocol_version.as_deref()),
            tls_maximum_protocol_version: tls_version(t.max_protocol_version.as_deref()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (cert_sds, ca_sds) = match &t.credential_name {
        Some(n) => {
            let (c, ca) = tls::credential_sds_names(n);
            (Some(c), Some(ca))
        }
        None => (None, None),
    };
    match &cert_sds {
        Some(c) => ctx.tls_certificate_sds_secret_configs = vec![tls::sds(c)],
        None => {
            ctx.tls_certificates = vec![tlsv3::TlsCertificate {
                certificate_chain: tls::file(t.server_certificate.as_deref().unwrap_or_default()),
                private_key: tls::file(t.private_key.as_deref().unwrap_or_default()),
                ..Default::default()
            }]
        }
    }
    // OPTIONAL_MUTUAL: a client certificate is verified (CA, SANs) when presented, and
    // a client without one is let in.
    let mutual = mode == "MUTUAL";
    if mutual || mode == "OPTIONAL_MUTUAL" {
        let sans = tlsv3::CertificateValidationContext {
            match_typed_subject_alt_names: tls::san_matchers(&t.subject_alt_names),
            ..Default::default()
        };
        ctx.validation_context_type = Some(match ca_sds {
            Some(ca) => Vct::CombinedValidationContext(
                tlsv3::common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(sans),
                    validation_context_sds_secret_config: Some(tls::sds(&ca)),
                    ..Default::default()
                },
            ),
            None => Vct::ValidationContext(tlsv3::CertificateValidationContext {
                trusted_ca: tls::file(t.ca_certificates.as_deref().unwrap_or_default()),
                ..sans
            }),
        });
    }
    tls::socket(tlsv3::DownstreamTlsContext {
        common_tls_context: Some(ctx),
        require_client_certificate: boolv(mutual),
        ..Default::default()
    })
}

/// The network a gateway proxy is on (node metadata, label, else the mesh's).
pub fn network_of(world: &World, proxy: &Proxy) -> String {
    if !proxy.network.is_empty() {
        return proxy.network.clone();
    }
    proxy
        .labels
        .get("topology.istio.io/network")
        .cloned()
        .unwrap_or_else(|| world.mesh.network.clone())
}

/// A gateway with an AUTO_PASSTHROUGH server needs the SNI clusters.
pub fn has_auto_passthrough(world: &World, proxy: &Proxy) -> bool {
    selecting(world, proxy).iter().any(|g| {
        g.servers.iter().any(|s| {
            s.port.protocol.eq_ignore_ascii_case("TLS")
                && s.tls.as_ref().and_then(|t| t.mode.as_deref()) == Some("AUTO_PASSTHROUGH")
        })
    })
}

/// Istio's SNI clusters of an east-west gateway: `outbound_.<port>_.<subset>_.<host>` for
/// every service port and subset of the registry, with the endpoints on the gateway's own
/// network only, in plaintext TCP (the sidecars' mTLS passes through).
pub fn sni_clusters(
    world: &World,
    network: &str,
) -> (Vec<Cluster>, Vec<ep::ClusterLoadAssignment>) {
    let mut clusters = Vec::new();
    let mut cla = Vec::new();
    for svc in world
        .services
        .values()
        .filter(|s| s.resolution == crate::model::Resolution::Static && !s.mesh_external)
    {
        let dr = world.destination_rules.get(&svc.hostname);
        let subsets: Vec<(&str, Option<&BTreeMap<String, String>>)> = std::iter::once(("", None))
            .chain(
                dr.map(|d| d.spec.subsets.as_slice())
                    .unwrap_or_default()
                    .iter()
                    .map(|s| (s.name.as_str(), Some(&s.labels))),
            )
            .collect();
        for sp in &svc.ports {
            for (subset, labels) in &subsets {
                let name = tls::istio_sni(sp.port, subset, &svc.hostname);
                let lb_endpoints: Vec<ep::LbEndpoint> = svc
                    .endpoints
                    .iter()
                    .filter(|e| e.network == network)
                    .filter(|e| labels.is_none_or(|l| crate::model::selects(l, &e.labels)))
                    .map(|e| endpoint::lb_endpoint(&e.address, svc.endpoint_port(sp, e), e.weight))
                    .collect();
                clusters.push(Cluster {
                    name: name.clone(),
                    cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                        cluster::DiscoveryType::Eds as i32,
                    )),
                    eds_cluster_config: Some(cluster::EdsClusterConfig {
                        eds_config: ads(),
                        service_name: name.clone(),
                    }),
                    connect_timeout: Some(secs(10)),
                    ..Default::default()
                });
                cla.push(ep::ClusterLoadAssignment {
                    cluster_name: name,
                    endpoints: if lb_endpoints.is_empty() {
                        Vec::new()
                    } else {
                        vec![ep::LocalityLbEndpoints {
                            lb_endpoints,
                            ..Default::default()
                        }]
                    },
                    ..Default::default()
                });
            }
        }
    }
    (clusters, cla)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_hosts() {
        assert!(covers("*", "a.example.com"));
        assert!(covers("*.example.com", "a.example.com"));
        assert!(covers("*.example.com", "*.b.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("a.example.com", "b.example.com"));
        assert!(covers("a.example.com", "a.example.com"));
    }

    #[test]
    fn server_names_drop_namespaces_and_any() {
        assert_eq!(
            server_names(&["ns/a.com".into(), "b.com".into()]),
            vec!["a.com".to_string(), "b.com".to_string()]
        );
        assert!(server_names(&["*/*".into()]).is_empty());
    }
}

//! LDS: the virtual outbound listener on 15001 (original destination), one outbound
//! listener per service port (`0.0.0.0_<port>`, RDS route config `<port>`), and the virtual
//! inbound listener on 15006 with a filter chain per port of the proxy's own workload.

use super::telemetry::LogTo;
use super::*;
use crate::model::{MtlsMode, PathNormalization, PortPolicies, Protocol};
use envoy_types::pb::envoy::config::listener::v3::{
    self as ls, Filter, FilterChain, FilterChainMatch, ListenerFilter,
};
use envoy_types::pb::envoy::config::route::v3 as rt;
use envoy_types::pb::envoy::extensions::filters::http::{
    cors::v3 as cors, fault::v3 as fault, router::v3 as router,
};
use envoy_types::pb::envoy::extensions::filters::listener::{
    http_inspector::v3 as http_inspector, original_dst::v3 as original_dst,
    tls_inspector::v3 as tls_inspector,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use prost::{Message, Name};
use std::collections::BTreeMap;

pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
pub const VIRTUAL_INBOUND: &str = "virtualInbound";
const HCM_NAME: &str = "envoy.filters.network.http_connection_manager";
const TCP_NAME: &str = "envoy.filters.network.tcp_proxy";

pub(crate) fn filter<T: Message + Name>(name: &str, m: T) -> Filter {
    Filter {
        name: name.into(),
        config_type: Some(ls::filter::ConfigType::TypedConfig(any(m))),
    }
}

pub(crate) fn http_filter<T: Message + Name>(name: &str, m: T) -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: name.into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(m))),
        ..Default::default()
    }
}

pub fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Filter {
    tcp_proxy_logged(stat_prefix, cluster, None)
}

/// A TCP proxy whose connections are logged to pilotfish (`log`).
pub fn tcp_proxy_logged(stat_prefix: &str, cluster: &str, log: Option<LogTo>) -> Filter {
    filter(
        TCP_NAME,
        with_tcp_log(
            tcp::TcpProxy {
                stat_prefix: stat_prefix.into(),
                cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
                ..Default::default()
            },
            log,
        ),
    )
}

fn with_tcp_log(mut t: tcp::TcpProxy, log: Option<LogTo>) -> tcp::TcpProxy {
    if let Some(to) = log {
        t.access_log = vec![super::telemetry::tcp_log(to)];
        t.access_log_options = Some(super::telemetry::tcp_log_options());
    }
    t
}

/// Where a TCP service's connections go: its own cluster, or what a VirtualService's
/// `tcp` routes say (one destination, or weighted ones).
pub struct TcpTarget {
    pub stat: String,
    pub clusters: Vec<(String, u32)>,
}

impl TcpTarget {
    pub fn filter(&self) -> Filter {
        self.filter_logged(None)
    }

    pub fn filter_logged(&self, log: Option<LogTo>) -> Filter {
        if self.clusters.len() == 1 {
            return tcp_proxy_logged(&self.stat, &self.clusters[0].0, log);
        }
        let clusters = self
            .clusters
            .iter()
            .map(
                |(name, weight)| tcp::tcp_proxy::weighted_cluster::ClusterWeight {
                    name: name.clone(),
                    weight: *weight,
                    ..Default::default()
                },
            )
            .collect();
        filter(
            TCP_NAME,
            with_tcp_log(
                tcp::TcpProxy {
                    stat_prefix: self.stat.clone(),
                    cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::WeightedClusters(
                        tcp::tcp_proxy::WeightedCluster { clusters },
                    )),
                    ..Default::default()
                },
                log,
            ),
        )
    }
}

/// The first `tcp` route of the host's VirtualService that applies to this port (matches
/// by port; an empty match list applies everywhere), else the service's own cluster.
pub fn tcp_target(world: &World, svc: &crate::model::Service, port: u32) -> TcpTarget {
    let own = outbound_name(port, "", &svc.hostname);
    let vs = world.virtual_service_for(&svc.hostname);
    let route = vs.and_then(|vs| {
        vs.spec.tcp.iter().find(|t| {
            t.matches.is_empty()
                || t.matches.iter().any(|m| {
                    m.port.is_none_or(|p| p == port)
                        && (m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
                })
        })
    });
    let Some(route) = route else {
        return TcpTarget {
            stat: own.clone(),
            clusters: vec![(own, 1)],
        };
    };
    TcpTarget {
        stat: own,
        clusters: tcp_clusters(world, &route.route, port),
    }
}

/// The `tls` routes of the host's (mesh) VirtualService that apply to this port: each
/// route's SNI names (not claimed by an earlier route) and where they go.
pub fn tls_routes(
    world: &World,
    svc: &crate::model::Service,
    port: u32,
) -> Vec<(Vec<String>, TcpTarget)> {
    let Some(vs) = world.virtual_service_for(&svc.hostname) else {
        return Vec::new();
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for t in &vs.spec.tls {
        let mut names = Vec::new();
        for m in t.matches.iter().filter(|m| {
            m.port.is_none_or(|p| p == port)
                && (m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
        }) {
            for sni in &m.sni_hosts {
                let sni = sni.to_ascii_lowercase();
                if seen.insert(sni.clone()) {
                    names.push(sni);
                }
            }
        }
        let clusters = tcp_clusters(world, &t.route, port);
        if names.is_empty() || clusters.is_empty() {
            continue;
        }
        out.push((
            names,
            TcpTarget {
                stat: clusters[0].0.clone(),
                clusters,
            },
        ));
    }
    out
}

/// The weighted clusters of a TCP route's destinations.
pub fn tcp_clusters(
    world: &World,
    route: &[crate::api::networking::RouteDestination],
    port: u32,
) -> Vec<(String, u32)> {
    route
        .iter()
        .filter(|d| route.len() == 1 || d.weight > 0)
        .map(|d| {
            (
                super::route::dest_cluster(world, &d.destination, port),
                d.weight.max(1) as u32,
            )
        })
        .collect()
}

pub enum RouteSource {
    Rds(String),
    Inline(rt::RouteConfiguration),
}

pub fn http_connection_manager(stat_prefix: &str, route: RouteSource, outbound: bool) -> Filter {
    hcm_with(
        stat_prefix,
        route,
        outbound,
        Vec::new(),
        PathNormalization::MergeSlashes,
        None,
    )
}

/// The connection manager with `authz` HTTP filters before the router, normalizing paths
/// as `norm` says (see `PathNormalization`).
pub fn hcm_with(
    stat_prefix: &str,
    route: RouteSource,
    outbound: bool,
    authz: Vec<hcm::HttpFilter>,
    norm: PathNormalization,
    log: Option<LogTo>,
) -> Filter {
    let mut http_filters = authz;
    if outbound {
        http_filters.push(http_filter(
            "envoy.filters.http.fault",
            fault::HttpFault::default(),
        ));
        http_filters.push(http_filter(
            "envoy.filters.http.cors",
            cors::Cors::default(),
        ));
    }
    http_filters.push(http_filter(
        "envoy.filters.http.router",
        router::Router::default(),
    ));
    let route_specifier = match route {
        RouteSource::Rds(name) => hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
            config_source: ads(),
            route_config_name: name,
        }),
        RouteSource::Inline(rc) => hcm::http_connection_manager::RouteSpecifier::RouteConfig(rc),
    };
    filter(
        HCM_NAME,
        hcm::HttpConnectionManager {
            stat_prefix: stat_prefix.into(),
            codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
            http_filters,
            route_specifier: Some(route_specifier),
            normalize_path: boolv(norm != PathNormalization::None),
            merge_slashes: matches!(
                norm,
                PathNormalization::MergeSlashes | PathNormalization::DecodeAndMergeSlashes
            ),
            path_with_escaped_slashes_action: if outbound {
                0
            } else if norm == PathNormalization::DecodeAndMergeSlashes {
                hcm::http_connection_manager::PathWithEscapedSlashesAction::UnescapeAndForward
                    as i32
            } else {
                hcm::http_connection_manager::PathWithEscapedSlashesAction::KeepUnchanged as i32
            },
            access_log: log.map(super::telemetry::http_log).into_iter().collect(),
            use_remote_address: boolv(false),
            // Inbound: the app learns the verified peer identity from
            // x-forwarded-client-cert; whatever a client sent in that header is dropped.
            forward_client_cert_details: if outbound {
                0
            } else {
                hcm::http_connection_manager::ForwardClientCertDetails::SanitizeSet as i32
            },
            set_current_client_cert_details: (!outbound).then(|| {
                hcm::http_connection_manager::SetCurrentClientCertDetails {
                    uri: true,
                    ..Default::default()
                }
            }),
            ..Default::default()
        },
    )
}

pub(crate) fn listener_filter<T: Message + Name>(name: &str, m: T) -> ListenerFilter {
    ListenerFilter {
        name: name.into(),
        config_type: Some(ls::listener_filter::ConfigType::TypedConfig(any(m))),
        ..Default::default()
    }
}

fn http_chain_match() -> Option<FilterChainMatch> {
    Some(FilterChainMatch {
        application_protocols: vec!["http/1.1".into(), "h2c".into()],
        ..Default::default()
    })
}

/// Outbound listeners: 15001 plus one per service port.
pub fn outbound(world: &World, scope: &crate::model::Scope, mtls: bool) -> Vec<ls::Listener> {
    let log = super::telemetry::log_cluster(&world.mesh, mtls).map(|cluster| LogTo {
        cluster,
        inbound: false,
    });
    let fallback = if scope.allow_any {
        PASSTHROUGH
    } else {
        BLACKHOLE
    };
    let mut out = vec![ls::Listener {
        name: VIRTUAL_OUTBOUND.into(),
        address: socket("0.0.0.0", 15001),
        use_original_dst: boolv(true),
        traffic_direction: core::TrafficDirection::Outbound as i32,
        default_filter_chain: Some(FilterChain {
            name: "PassthroughFilterChain".into(),
            filters: vec![tcp_proxy(fallback, fallback)],
            ..Default::default()
        }),
        ..Default::default()
    }];
    // port → (has http, tcp services: their tcp_proxy target, VIPs, and the host name
    // matched by SNI where the service has no address of its own)
    type TcpSvc = (
        TcpTarget,
        Vec<String>,
        Option<String>,
        Vec<(Vec<String>, TcpTarget)>,
    );
    let mut ports: BTreeMap<u32, (bool, Vec<TcpSvc>)> = BTreeMap::new();
    for svc in world
        .services
        .values()
        .filter(|s| scope.includes(&s.hostname))
    {
        for sp in svc
            .ports
            .iter()
            .filter(|sp| scope.includes_on(&svc.hostname, sp.port))
        {
            let e = ports.entry(sp.port).or_default();
            if sp.protocol.is_http() || sp.protocol == Protocol::Unknown {
                e.0 = true;
            }
            if !sp.protocol.is_http() {
                // An auto-allocated address (sidecar DNS answers it) is the service's too.
                let vips = svc.vips.iter().chain(&svc.auto_vip).cloned().collect();
                // TLS to a ServiceEntry host without addresses (wildcards too): the app
                // dials whatever its DNS said, so the SNI tells the host (as Istio). Not
                // for headless Kubernetes services: there the app picks the pod.
                let sni = (sp.protocol == Protocol::Tls
                    && svc.vips.is_empty()
                    && svc.origin.kind == crate::api::Kind::ServiceEntry)
                    .then(|| svc.hostname.clone());
                let tls = if sp.protocol == Protocol::Tls {
                    tls_routes(world, svc, sp.port)
                } else {
                    Vec::new()
                };
                e.1.push((tcp_target(world, svc, sp.port), vips, sni, tls));
            }
        }
    }
    for (port, (has_http, tcp_svcs)) in ports {
        // A Sidecar egress listener with a bind address (or capture mode NONE: the app
        // calls it directly) listens there.
        let ps = scope.ports.get(&port);
        let bind = ps.and_then(|p| p.bind.as_deref()).unwrap_or("0.0.0.0");
        let name = format!("{bind}_{port}");
        let mut l = ls::Listener {
            name: name.clone(),
            address: socket(bind, port),
            bind_to_port: boolv(ps.is_some_and(|p| p.bind_to_port)),
            traffic_direction: core::TrafficDirection::Outbound as i32,
            ..Default::default()
        };
        // A lone TCP service takes the port's unmatched connections, unless it is matched
        // by SNI (then anything else is not it).
        let tcp_default = if !has_http
            && tcp_svcs.len() == 1
            && tcp_svcs[0].2.is_none()
            && tcp_svcs[0].3.is_empty()
        {
            Some(&tcp_svcs[0].0)
        } else {
            None
        };
        let mut tls_seen = std::collections::BTreeSet::new();
        for (target, vips, sni, tls) in &tcp_svcs {
            let ranges: Vec<core::CidrRange> = vips
                .iter()
                .filter_map(|v| v.parse::<std::net::IpAddr>().ok())
                .map(|ip| core::CidrRange {
                    address_prefix: ip.to_string(),
                    prefix_len: u32v(if ip.is_ipv4() { 32 } else { 128 }),
                })
                .collect();
            let mut sni_chain =
                |name: String, names: Vec<String>, ranges: &[core::CidrRange], t: &TcpTarget| {
                    l.filter_chains.push(FilterChain {
                        name,
                        filter_chain_match: Some(FilterChainMatch {
                            prefix_ranges: ranges.to_vec(),
                            server_names: names,
                            transport_protocol: "tls".into(),
                            ..Default::default()
                        }),
                        filters: vec![t.filter_logged(log)],
                        ..Default::default()
                    });
                };
            // VirtualService `tls` routes: by SNI, on the service's addresses and, where
            // it has none of its own, on any address. (The first service to claim an SNI
            // without addresses keeps it.)
            let mut claimed = Vec::new();
            for (i, (names, t)) in tls.iter().enumerate() {
                claimed.extend(names.iter().cloned());
                if !ranges.is_empty() {
                    sni_chain(format!("{}_tls{i}", target.stat), names.clone(), &ranges, t);
                }
                if sni.is_some() {
                    let free: Vec<String> = names
                        .iter()
                        .filter(|n| tls_seen.insert((*n).clone()))
                        .cloned()
                        .collect();
                    if !free.is_empty() {
                        sni_chain(format!("{}_tls{i}_sni", target.stat), free, &[], t);
                    }
                }
            }
            if let Some(host) = sni.as_ref().filter(|h| !claimed.contains(h)) {
                if tls_seen.insert(host.clone()) {
                    sni_chain(
                        format!("{}_sni", target.stat),
                        vec![host.clone()],
                        &[],
                        target,
                    );
                }
            }
            if !ranges.is_empty() {
                l.filter_chains.push(FilterChain {
                    name: target.stat.clone(),
                    filter_chain_match: Some(FilterChainMatch {
                        prefix_ranges: ranges,
                        ..Default::default()
                    }),
                    filters: vec![target.filter_logged(log)],
                    ..Default::default()
                });
            }
        }
        let hcm_filter = || {
            hcm_with(
                &format!("outbound_0.0.0.0_{port}"),
                RouteSource::Rds(port.to_string()),
                true,
                Vec::new(),
                PathNormalization::MergeSlashes,
                log,
            )
        };
        let fallback_filter = tcp_default
            .map(|t| t.filter_logged(log))
            .unwrap_or_else(|| tcp_proxy(fallback, fallback));
        if tcp_svcs
            .iter()
            .any(|(_, _, sni, tls)| sni.is_some() || !tls.is_empty())
        {
            l.listener_filters.push(listener_filter(
                "envoy.filters.listener.tls_inspector",
                tls_inspector::TlsInspector::default(),
            ));
        }
        if has_http {
            // Sniff: HTTP goes to the route table, anything else passes through.
            l.listener_filters.push(listener_filter(
                "envoy.filters.listener.http_inspector",
                http_inspector::HttpInspector::default(),
            ));
            l.filter_chains.push(FilterChain {
                name: format!("{name}_http"),
                filter_chain_match: http_chain_match(),
                filters: vec![hcm_filter()],
                ..Default::default()
            });
        }
        l.default_filter_chain = Some(FilterChain {
            name: format!("{name}_tcp"),
            filters: vec![fallback_filter],
            ..Default::default()
        });
        out.push(l);
    }
    out
}

/// Ports the proxy's own workload serves (target ports of the services that select it).
pub fn inbound_ports(world: &World, proxy: &Proxy) -> Vec<(u32, Protocol)> {
    let mut ports: BTreeMap<u32, Protocol> = BTreeMap::new();
    for ip in &proxy.ips {
        for (svc, ep) in world.instances_of(ip) {
            if svc.mesh_external {
                continue;
            }
            for sp in &svc.ports {
                let p = svc.endpoint_port(sp, ep);
                let e = ports.entry(p).or_insert(sp.protocol);
                if *e != sp.protocol && !e.is_http() {
                    *e = sp.protocol;
                }
            }
        }
    }
    ports.into_iter().collect()
}

/// Everything the inbound side of a proxy depends on: the ports its workload serves, their
/// protocols and the mTLS mode each accepts, and the mode for other ports. It is the memo
/// key of the inbound resources, so it must hold every input they are built from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InboundKey {
    pub ports: Vec<(u32, Protocol, MtlsMode)>,
    /// Where the app answers each port (same order as `ports`): loopback and the port
    /// itself, or a Sidecar ingress listener's `defaultEndpoint`.
    pub endpoints: Vec<(String, u32)>,
    pub default_mode: MtlsMode,
    /// The proxy has certificates (see `Proxy::mtls`).
    pub mtls: bool,
    /// AuthorizationPolicies per served port (same order as `ports`), and for traffic to
    /// any other port (the passthrough chain).
    pub authz: Vec<PortPolicies>,
    pub default_authz: PortPolicies,
    /// How inbound connection managers normalize paths before authorization.
    pub path_normalization: PathNormalization,
    /// The ext_authz providers CUSTOM policies can name (mesh config order).
    pub providers: Vec<crate::model::ExtAuthzProvider>,
    /// JWT rules (RequestAuthentications) applying to the workload, with their keys.
    pub jwt: Vec<crate::model::JwtProviderCfg>,
    /// Where access logs go (None: telemetry off).
    pub log: Option<&'static str>,
}

pub fn inbound_key(world: &World, proxy: &Proxy) -> InboundKey {
    // A Sidecar with ingress listeners says which ports the workload serves, and where.
    let ingress = world
        .sidecar_for(&proxy.namespace, &proxy.labels)
        .map(|s| s.ingress.clone())
        .filter(|i| !i.is_empty());
    let (ports, endpoints): (Vec<(u32, Protocol)>, Vec<(String, u32)>) = match ingress {
        Some(i) => i
            .into_iter()
            .map(|(port, proto, host, target)| {
                // `0.0.0.0:PORT` (an app on every address): reached on loopback. Istio
                // dials the pod's address; from the proxy that would loop back through
                // the inbound capture (no 127.0.0.6 bind on inbound clusters yet).
                let host = if host == "0.0.0.0" {
                    "127.0.0.1".to_string()
                } else {
                    host
                };
                ((port, proto), (host, target))
            })
            .unzip(),
        None => {
            let ports = inbound_ports(world, proxy);
            let eps = ports
                .iter()
                .map(|(p, _)| ("127.0.0.1".to_string(), *p))
                .collect();
            (ports, eps)
        }
    };
    let workload = world.authz_for_workload(&proxy.namespace, &proxy.labels);
    InboundKey {
        authz: ports
            .iter()
            .map(|(port, _)| world.authz_for_port(proxy, &workload, *port))
            .collect(),
        default_authz: workload,
        path_normalization: world.mesh.path_normalization,
        providers: world.authz_providers(),
        jwt: world.jwt_for_workload(&proxy.namespace, &proxy.labels),
        ports: ports
            .into_iter()
            .map(|(port, proto)| {
                (
                    port,
                    proto,
                    world.mtls_mode(&proxy.namespace, &proxy.labels, port),
                )
            })
            .collect(),
        default_mode: world.mtls_mode(&proxy.namespace, &proxy.labels, 0),
        endpoints,
        mtls: proxy.mtls,
        log: super::telemetry::log_cluster(&world.mesh, proxy.mtls),
    }
}

/// The virtual inbound listener on 15006.
pub fn inbound(world: &World, proxy: &Proxy) -> ls::Listener {
    inbound_from(&inbound_key(world, proxy))
}

/// Route configurations of the inbound HTTP ports (`inbound|<port>||`, over RDS), each
/// carrying its port's authorization as per-route RBAC: a policy change is a route update,
/// which applies to the next request, kept-alive connections included (a listener update
/// reaches only new connections while old ones drain).
pub fn inbound_routes(key: &InboundKey) -> Vec<rt::RouteConfiguration> {
    key.ports
        .iter()
        .zip(&key.authz)
        .filter(|((_, proto, _), _)| proto.is_http() || *proto == Protocol::Unknown)
        .map(|(&(port, _, _), policies)| {
            inbound_route(port, &inbound_name(port), policies, &key.providers)
        })
        .collect()
}

fn inbound_route(
    port: u32,
    cluster: &str,
    policies: &PortPolicies,
    providers: &[crate::model::ExtAuthzProvider],
) -> rt::RouteConfiguration {
    rt::RouteConfiguration {
        name: cluster.to_string(),
        validate_clusters: boolv(false),
        virtual_hosts: vec![rt::VirtualHost {
            name: format!("inbound|http|{port}"),
            domains: vec!["*".into()],
            typed_per_filter_config: super::authz::http_per_route(policies, providers),
            routes: vec![rt::Route {
                name: "default".into(),
                r#match: Some(rt::RouteMatch {
                    path_specifier: Some(rt::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(rt::route::Action::Route(rt::RouteAction {
                    cluster_specifier: Some(rt::route_action::ClusterSpecifier::Cluster(
                        cluster.to_string(),
                    )),
                    timeout: Some(secs(0)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Filter chains per port: plaintext (`raw_buffer`) unless STRICT, where plaintext is
/// refused; mutual TLS (`tls`, client certificate required) unless DISABLE.
pub fn inbound_from(key: &InboundKey) -> ls::Listener {
    let mut chains = Vec::new();
    let log = key.log.map(|cluster| LogTo {
        cluster,
        inbound: true,
    });
    for (i, &(port, proto, mode)) in key.ports.iter().enumerate() {
        let policies = &key.authz[i];
        let tcp = |stat: &str, cluster: &str| {
            let mut f = super::authz::network_filters(policies, &key.providers);
            f.push(tcp_proxy_logged(stat, cluster, log));
            f
        };
        let cluster = inbound_name(port);
        let stat = format!("inbound_0.0.0.0_{port}");
        let http = proto.is_http() || proto == Protocol::Unknown;
        let m = |transport: &str, sniffed_http: bool| {
            Some(FilterChainMatch {
                destination_port: u32v(port),
                transport_protocol: transport.into(),
                application_protocols: if sniffed_http {
                    vec!["http/1.1".into(), "h2c".into()]
                } else {
                    vec![]
                },
                ..Default::default()
            })
        };
        let hcm = || {
            hcm_with(
                &stat,
                RouteSource::Rds(cluster.clone()),
                false,
                super::jwt::filter(&key.jwt)
                    .into_iter()
                    .chain(super::authz::http_filters(&key.providers))
                    .collect(),
                key.path_normalization,
                log,
            )
        };
        if mode == MtlsMode::Strict {
            chains.push(FilterChain {
                name: format!("{cluster}plaintext-refused"),
                filter_chain_match: m("raw_buffer", false),
                filters: vec![tcp_proxy(&stat, BLACKHOLE)],
                ..Default::default()
            });
        } else {
            if http {
                chains.push(FilterChain {
                    name: format!("{cluster}http"),
                    filter_chain_match: m("raw_buffer", proto == Protocol::Unknown),
                    filters: vec![hcm()],
                    ..Default::default()
                });
            }
            if !proto.is_http() {
                chains.push(FilterChain {
                    name: format!("{cluster}tcp"),
                    filter_chain_match: m("raw_buffer", false),
                    filters: tcp(&stat, &cluster),
                    ..Default::default()
                });
            }
        }
        if mode != MtlsMode::Disable && key.mtls {
            // Inside TLS the protocol cannot be sniffed: unknown ports are taken as HTTP.
            let filters = if http {
                vec![hcm()]
            } else {
                tcp(&stat, &cluster)
            };
            chains.push(FilterChain {
                name: format!("{cluster}mtls"),
                filter_chain_match: m("tls", false),
                filters,
                transport_socket: Some(super::tls::istio_downstream()),
                ..Default::default()
            });
        }
    }
    let default_chain = if key.default_mode == MtlsMode::Strict {
        FilterChain {
            name: "InboundStrictRefused".into(),
            filters: vec![tcp_proxy(BLACKHOLE, BLACKHOLE)],
            ..Default::default()
        }
    } else {
        // Ports no service declares: policies still apply, in their TCP form.
        let mut filters = super::authz::network_filters(&key.default_authz, &key.providers);
        filters.push(tcp_proxy(INBOUND_PASSTHROUGH, INBOUND_PASSTHROUGH));
        FilterChain {
            name: "InboundPassthroughFilterChain".into(),
            filters,
            ..Default::default()
        }
    };
    ls::Listener {
        name: VIRTUAL_INBOUND.into(),
        address: socket("0.0.0.0", 15006),
        traffic_direction: core::TrafficDirection::Inbound as i32,
        listener_filters: vec![
            listener_filter(
                "envoy.filters.listener.original_dst",
                original_dst::OriginalDst::default(),
            ),
            listener_filter(
                "envoy.filters.listener.tls_inspector",
                tls_inspector::TlsInspector::default(),
            ),
            listener_filter(
                "envoy.filters.listener.http_inspector",
                http_inspector::HttpInspector::default(),
            ),
        ],
        filter_chains: chains,
        default_filter_chain: Some(default_chain),
        ..Default::default()
    }
}

fn chains(l: &ls::Listener) -> impl Iterator<Item = &FilterChain> {
    l.filter_chains.iter().chain(l.default_filter_chain.iter())
}

fn typed<T: Message + Name + Default>(f: &Filter) -> Option<T> {
    match &f.config_type {
        Some(ls::filter::ConfigType::TypedConfig(a)) if a.type_url == T::type_url() => {
            T::decode(a.value.as_slice()).ok()
        }
        _ => None,
    }
}

/// Clusters named by tcp_proxy filters and inline route configs.
pub fn referenced_clusters(listeners: &[ls::Listener]) -> Vec<String> {
    let mut out = Vec::new();
    for f in listeners
        .iter()
        .flat_map(chains)
        .flat_map(|c| c.filters.iter())
    {
        if let Some(t) = typed::<tcp::TcpProxy>(f) {
            match t.cluster_specifier {
                Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(c)) => out.push(c),
                Some(tcp::tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
                    out.extend(w.clusters.into_iter().map(|c| c.name))
                }
                None => {}
            }
        }
        if let Some(h) = typed::<hcm::HttpConnectionManager>(f) {
            if let Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(rc)) =
                h.route_specifier
            {
                out.extend(super::route::referenced_clusters(&[rc]));
            }
        }
    }
    out
}

/// RDS names the listeners ask for.
pub fn referenced_routes(listeners: &[ls::Listener]) -> Vec<String> {
    listeners
        .iter()
        .flat_map(chains)
        .flat_map(|c| c.filters.iter())
        .filter_map(typed::<hcm::HttpConnectionManager>)
        .filter_map(|h| match h.route_specifier {
            Some(hcm::http_connection_manager::RouteSpecifier::Rds(r)) => Some(r.route_config_name),
            _ => None,
        })
        .collect()
}

//! CDS: outbound clusters per service port and DestinationRule subset, the inbound clusters
//! of the proxy's own workload, and the passthrough / blackhole clusters.

use super::tls;
use super::*;
use crate::api::networking::{
    ConnectionPoolSettings, LoadBalancerSettings, OutlierDetection, TrafficPolicy,
};
use crate::model::{DestRule, Protocol, Resolution, Scope, Service, ServicePort};
use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds, cluster, CircuitBreakers, OutlierDetection as EnvoyOutlier,
    UpstreamConnectionOptions,
};
use envoy_types::pb::envoy::config::endpoint::v3 as ep;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as uphttp;

/// The traffic policy in force for one (host, subset, port): subset settings override the
/// top level, port-level settings override both at their level (Istio's merge order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effective {
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<crate::api::networking::ClientTlsSettings>,
}

fn overlay(e: &mut Effective, tp: &TrafficPolicy, port: u32) {
    if tp.load_balancer.is_some() {
        e.load_balancer = tp.load_balancer.clone();
    }
    if tp.connection_pool.is_some() {
        e.connection_pool = tp.connection_pool.clone();
    }
    if tp.outlier_detection.is_some() {
        e.outlier_detection = tp.outlier_detection.clone();
    }
    if tp.tls.is_some() {
        e.tls = tp.tls.clone();
    }
    for p in &tp.port_level_settings {
        if p.port.as_ref().map(|p| p.number) == Some(port) {
            if p.load_balancer.is_some() {
                e.load_balancer = p.load_balancer.clone();
            }
            if p.connection_pool.is_some() {
                e.connection_pool = p.connection_pool.clone();
            }
            if p.outlier_detection.is_some() {
                e.outlier_detection = p.outlier_detection.clone();
            }
            if p.tls.is_some() {
                e.tls = p.tls.clone();
            }
        }
    }
}

pub fn effective(dr: Option<&DestRule>, subset: &str, port: u32) -> Effective {
    let mut e = Effective::default();
    let Some(dr) = dr else { return e };
    if let Some(tp) = &dr.spec.traffic_policy {
        overlay(&mut e, tp, port);
    }
    if let Some(tp) = dr
        .spec
        .subsets
        .iter()
        .find(|s| s.name == subset)
        .and_then(|s| s.traffic_policy.as_ref())
    {
        overlay(&mut e, tp, port);
    }
    e
}

pub fn is_eds(c: &Cluster) -> bool {
    c.eds_cluster_config.is_some()
}

fn discovery(t: cluster::DiscoveryType) -> Option<cluster::ClusterDiscoveryType> {
    Some(cluster::ClusterDiscoveryType::Type(t as i32))
}

/// All outbound clusters (identical for every sidecar of one mTLS capability until Sidecar
/// scoping arrives). `mtls`: the proxy has certificates, so auto mTLS applies.
pub fn outbound(world: &World, scope: &Scope, mtls: bool) -> Vec<Cluster> {
    let mut out = vec![passthrough(), blackhole()];
    if super::telemetry::log_cluster(&world.mesh, mtls) == Some(super::telemetry::TELEMETRY_CLUSTER)
    {
        out.extend(super::telemetry::cluster(&world.mesh));
    }
    for svc in world
        .services
        .values()
        .filter(|s| scope.includes(&s.hostname))
    {
        let dr = world.destination_rules.get(&svc.hostname).map(|d| &**d);
        for sp in &svc.ports {
            out.push(service_cluster(world, mtls, svc, sp, dr, ""));
            if let Some(dr) = dr {
                for s in &dr.spec.subsets {
                    out.push(service_cluster(world, mtls, svc, sp, Some(dr), &s.name));
                }
            }
        }
    }
    out
}

fn service_cluster(
    world: &World,
    mtls: bool,
    svc: &Service,
    sp: &ServicePort,
    dr: Option<&DestRule>,
    subset: &str,
) -> Cluster {
    let name = outbound_name(sp.port, subset, &svc.hostname);
    let eff = effective(dr, subset, sp.port);
    let mut c = Cluster {
        name: name.clone(),
        connect_timeout: Some(secs(10)),
        ..Default::default()
    };
    match svc.resolution {
        Resolution::Static => {
            c.cluster_discovery_type = discovery(cluster::DiscoveryType::Eds);
            c.eds_cluster_config = Some(cluster::EdsClusterConfig {
                eds_config: ads(),
                service_name: name.clone(),
            });
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            c.cluster_discovery_type = discovery(if svc.resolution == Resolution::Dns {
                cluster::DiscoveryType::StrictDns
            } else {
                cluster::DiscoveryType::LogicalDns
            });
            c.dns_lookup_family = cluster::DnsLookupFamily::V4Only as i32;
            c.load_assignment = Some(crate::translate::endpoint::assignment(
                world, &name, svc, sp, dr, subset, None, None,
            ));
        }
        Resolution::Passthrough => {
            c.cluster_discovery_type = discovery(cluster::DiscoveryType::OriginalDst);
            c.lb_policy = cluster::LbPolicy::ClusterProvided as i32;
        }
    }
    if svc.resolution != Resolution::Passthrough {
        apply_lb(&mut c, eff.load_balancer.as_ref());
        // `distribute` weighs localities (the weights come with each proxy's endpoints).
        if crate::translate::endpoint::locality_lb(dr, subset, sp.port)
            .is_some_and(|l| !l.distribute.is_empty())
        {
            c.common_lb_config = Some(cluster::CommonLbConfig {
                locality_config_specifier: Some(
                    cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                        cluster::common_lb_config::LocalityWeightedLbConfig {},
                    ),
                ),
                ..c.common_lb_config.take().unwrap_or_default()
            });
        }
    }
    apply_pool(&mut c, eff.connection_pool.as_ref(), sp.protocol);
    if let Some(od) = &eff.outlier_detection {
        apply_outlier(&mut c, od);
    }
    apply_tls(world, mtls, &mut c, svc, sp.port, subset, eff.tls.as_ref());
    c
}

/// Upstream TLS: what a DestinationRule says, else auto mTLS (Istio's): mTLS to the
/// endpoints marked as speaking it (their metadata says `tlsMode: istio`, set when the
/// workload has a sidecar and its PeerAuthentication accepts mTLS), plaintext to the rest.
fn apply_tls(
    world: &World,
    mtls: bool,
    c: &mut Cluster,
    svc: &Service,
    port: u32,
    subset: &str,
    t: Option<&crate::api::networking::ClientTlsSettings>,
) {
    let sni = tls::istio_sni(port, subset, &svc.hostname);
    let extra = world
        .objects
        .get(&svc.origin)
        .and_then(|r| match &r.spec {
            crate::api::Spec::ServiceEntry(se) => Some(se.subject_alt_names.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let sans = || tls::expected_identities(svc, &world.mesh.trust_domain, &extra);
    match t.and_then(|t| t.mode.as_deref()) {
        // An explicit `sni` wins: the egress gateway pattern routes on it.
        Some("ISTIO_MUTUAL") => {
            let sni = t.and_then(|t| t.sni.clone()).unwrap_or(sni);
            c.transport_socket = Some(tls::istio_upstream(&sni, &sans()))
        }
        Some("SIMPLE") | Some("MUTUAL")
            if t.and_then(|t| t.credential_name.as_deref()).is_some() =>
        {
            let t = t.unwrap();
            c.transport_socket = Some(tls::credential_upstream(
                t,
                t.credential_name.as_deref().unwrap(),
                &svc.hostname,
            ))
        }
        Some("SIMPLE") | Some("MUTUAL") => {
            c.transport_socket = Some(tls::file_upstream(t.unwrap(), &svc.hostname))
        }
        Some(_) => {}
        None => {
            if mtls && !svc.mesh_external && svc.endpoints.iter().any(|e| e.in_mesh()) {
                c.transport_socket_matches = vec![cluster::TransportSocketMatch {
                    name: "tlsMode-istio".into(),
                    r#match: Some(endpoint::tls_mode_match()),
                    transport_socket: Some(tls::istio_upstream(&sni, &sans())),
                }];
            }
        }
    }
}

fn apply_lb(c: &mut Cluster, lb: Option<&LoadBalancerSettings>) {
    use cluster::LbPolicy;
    // Istio's default is LEAST_REQUEST.
    c.lb_policy = LbPolicy::LeastRequest as i32;
    let Some(lb) = lb else { return };
    if let Some(s) = &lb.simple {
        c.lb_policy = match s.as_str() {
            "ROUND_ROBIN" => LbPolicy::RoundRobin,
            "RANDOM" => LbPolicy::Random,
            _ => LbPolicy::LeastRequest,
        } as i32;
    }
    if let Some(ch) = &lb.consistent_hash {
        if let Some(m) = &ch.maglev {
            c.lb_policy = LbPolicy::Maglev as i32;
            c.lb_config = Some(cluster::LbConfig::MaglevLbConfig(cluster::MaglevLbConfig {
                table_size: m.table_size.map(|v| pbw::UInt64Value { value: v }),
            }));
        } else {
            c.lb_policy = LbPolicy::RingHash as i32;
            let min = ch
                .ring_hash
                .as_ref()
                .and_then(|r| r.minimum_ring_size)
                .or(ch.minimum_ring_size)
                .unwrap_or(1024);
            c.lb_config = Some(cluster::LbConfig::RingHashLbConfig(
                cluster::RingHashLbConfig {
                    minimum_ring_size: Some(pbw::UInt64Value { value: min }),
                    ..Default::default()
                },
            ));
        }
    }
}

fn clamp(v: Option<i64>) -> Option<pbw::UInt32Value> {
    // Istio's defaults are "unlimited" (2^32-1), not Envoy's 1024.
    u32v(
        v.map(|v| v.clamp(0, u32::MAX as i64) as u32)
            .unwrap_or(u32::MAX),
    )
}

fn apply_pool(c: &mut Cluster, cp: Option<&ConnectionPoolSettings>, proto: Protocol) {
    let tcp = cp.and_then(|c| c.tcp.as_ref());
    let http = cp.and_then(|c| c.http.as_ref());
    c.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![Thresholds {
            max_connections: clamp(tcp.and_then(|t| t.max_connections)),
            max_pending_requests: clamp(http.and_then(|h| h.http1_max_pending_requests)),
            max_requests: clamp(http.and_then(|h| h.http2_max_requests)),
            max_retries: clamp(http.and_then(|h| h.max_retries)),
            track_remaining: true,
            ..Default::default()
        }],
        ..Default::default()
    });
    if let Some(t) = tcp {
        if let Some(d) = dur_str(&t.connect_timeout) {
            c.connect_timeout = Some(d);
        }
        if let Some(k) = &t.tcp_keepalive {
            c.upstream_connection_options = Some(UpstreamConnectionOptions {
                tcp_keepalive: Some(core::TcpKeepalive {
                    keepalive_probes: k.probes.and_then(u32v),
                    keepalive_time: dur_str(&k.time).and_then(|d| u32v(d.seconds as u32)),
                    keepalive_interval: dur_str(&k.interval).and_then(|d| u32v(d.seconds as u32)),
                }),
                ..Default::default()
            });
        }
    }
    if !(proto.is_http() || proto == Protocol::Unknown) {
        return;
    }
    let h2 = matches!(proto, Protocol::Http2 | Protocol::Grpc)
        || http.and_then(|h| h.h2_upgrade_policy.as_deref()) == Some("UPGRADE");
    let mut common = core::HttpProtocolOptions::default();
    let mut any_common = false;
    if let Some(h) = http {
        if let Some(d) = dur_str(&h.idle_timeout) {
            common.idle_timeout = Some(d);
            any_common = true;
        }
        if let Some(n) = h.max_requests_per_connection.filter(|n| *n > 0) {
            common.max_requests_per_connection = u32v(n.min(u32::MAX as i64) as u32);
            any_common = true;
        }
    }
    if let Some(d) = tcp.and_then(|t| dur_str(&t.max_connection_duration)) {
        common.max_connection_duration = Some(d);
        any_common = true;
    }
    if !h2 && !any_common {
        return;
    }
    let explicit = if h2 {
        let mut o = core::Http2ProtocolOptions::default();
        if let Some(n) = http
            .and_then(|h| h.max_concurrent_streams)
            .filter(|n| *n > 0)
        {
            o.max_concurrent_streams = u32v(n.min(u32::MAX as i64) as u32);
        }
        uphttp::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(o)
    } else {
        uphttp::http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
            core::Http1ProtocolOptions::default(),
        )
    };
    let opts = uphttp::HttpProtocolOptions {
        common_http_protocol_options: any_common.then_some(common),
        upstream_protocol_options: Some(
            uphttp::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                uphttp::http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(explicit),
                },
            ),
        ),
        ..Default::default()
    };
    c.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        any(opts),
    );
}

fn apply_outlier(c: &mut Cluster, od: &OutlierDetection) {
    let mut o = EnvoyOutlier {
        interval: dur_str(&od.interval).or(Some(secs(10))),
        base_ejection_time: dur_str(&od.base_ejection_time).or(Some(secs(30))),
        max_ejection_percent: u32v(od.max_ejection_percent.unwrap_or(10)),
        // Istio turns off the success-rate algorithm; only consecutive errors eject.
        enforcing_success_rate: u32v(0),
        enforcing_consecutive_5xx: u32v(0),
        enforcing_consecutive_gateway_failure: u32v(0),
        ..Default::default()
    };
    if let Some(n) = od.consecutive_5xx_errors.or(od.consecutive_errors) {
        o.consecutive_5xx = u32v(n);
        o.enforcing_consecutive_5xx = u32v(if n > 0 { 100 } else { 0 });
    }
    if let Some(n) = od.consecutive_gateway_errors {
        o.consecutive_gateway_failure = u32v(n);
        o.enforcing_consecutive_gateway_failure = u32v(if n > 0 { 100 } else { 0 });
    }
    if od.split_external_local_origin_errors == Some(true) {
        o.split_external_local_origin_errors = true;
        o.consecutive_local_origin_failure =
            u32v(od.consecutive_local_origin_failures.unwrap_or(5));
        o.enforcing_consecutive_local_origin_failure = u32v(100);
    }
    c.outlier_detection = Some(o);
    // Kept with what is there (the locality-weighted config of `distribute`).
    c.common_lb_config
        .get_or_insert_with(Default::default)
        .healthy_panic_threshold = Some(envoy_types::pb::envoy::r#type::v3::Percent {
        value: od.min_health_percent.unwrap_or(0) as f64,
    });
}

pub fn passthrough() -> Cluster {
    Cluster {
        name: PASSTHROUGH.into(),
        cluster_discovery_type: discovery(cluster::DiscoveryType::OriginalDst),
        lb_policy: cluster::LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(secs(10)),
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                max_connections: u32v(u32::MAX),
                max_pending_requests: u32v(u32::MAX),
                max_requests: u32v(u32::MAX),
                max_retries: u32v(u32::MAX),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn blackhole() -> Cluster {
    Cluster {
        name: BLACKHOLE.into(),
        cluster_discovery_type: discovery(cluster::DiscoveryType::Static),
        connect_timeout: Some(secs(10)),
        ..Default::default()
    }
}

/// Inbound clusters: one per port the proxy's workload serves, to the app on loopback.
pub fn inbound(world: &World, proxy: &Proxy) -> Vec<Cluster> {
    inbound_from(&listener::inbound_key(world, proxy))
}

/// Inbound clusters from the inbound key (see `listener::InboundKey`).
pub fn inbound_from(key: &listener::InboundKey) -> Vec<Cluster> {
    let mut out = vec![Cluster {
        name: INBOUND_PASSTHROUGH.into(),
        cluster_discovery_type: discovery(cluster::DiscoveryType::OriginalDst),
        lb_policy: cluster::LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(secs(10)),
        // Source 127.0.0.6 keeps the proxy's own connection out of the inbound redirect.
        upstream_bind_config: Some(core::BindConfig {
            source_address: socket("127.0.0.6", 0).and_then(|a| match a.address {
                Some(core::address::Address::SocketAddress(s)) => Some(s),
                _ => None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }];
    for (i, &(port, proto, _)) in key.ports.iter().enumerate() {
        let name = inbound_name(port);
        let (host, target) = key
            .endpoints
            .get(i)
            .map(|(h, p)| (h.as_str(), *p))
            .unwrap_or(("127.0.0.1", port));
        let mut c = Cluster {
            name: name.clone(),
            cluster_discovery_type: discovery(cluster::DiscoveryType::Static),
            connect_timeout: Some(secs(10)),
            load_assignment: Some(ep::ClusterLoadAssignment {
                cluster_name: name,
                endpoints: vec![ep::LocalityLbEndpoints {
                    lb_endpoints: vec![endpoint::lb_endpoint(host, target, 1)],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        apply_pool(&mut c, None, proto);
        out.push(c);
    }
    if let Some(p) = key.providers.iter().find(|p| p.builtin) {
        out.push(super::authz::builtin_cluster(&p.service, key.mtls));
    }
    out
}

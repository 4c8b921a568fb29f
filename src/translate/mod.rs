//! Pure translation: `(&World, &Proxy)` → Envoy resources. No IO, no clocks, no globals:
//! the arguments are the whole input, so they are also the cache key.
//!
//! ```text
//!  World ─┬─ cluster::outbound   (shared by every sidecar)     CDS
//!         ├─ endpoint::all       (shared)                       EDS
//!         ├─ listener::outbound  (shared)                       LDS
//!         ├─ route::outbound     (per source namespace+labels)  RDS
//!         └─ listener/cluster::inbound (per workload instances) LDS, CDS
//! ```

pub mod authz;
pub mod canon;
pub mod cluster;
pub mod dns;
pub mod endpoint;
pub mod ext_authz;
pub mod gateway;
pub mod jwt;
pub mod listener;
pub mod rbac;
pub mod route;
pub mod secret;
pub mod telemetry;
pub mod tls;

use crate::model::{Proxy, World};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf as pbw;
use std::collections::BTreeSet;

/// Envoy resources for one proxy, each list sorted by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyConfig {
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
}

pub const PASSTHROUGH: &str = "PassthroughCluster";
pub const BLACKHOLE: &str = "BlackHoleCluster";
pub const INBOUND_PASSTHROUGH: &str = "InboundPassthroughCluster";

/// `outbound|<port>|<subset>|<host>`, Istio's cluster name.
pub fn outbound_name(port: u32, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// `inbound|<port>||`, Istio's inbound cluster name.
pub fn inbound_name(port: u32) -> String {
    format!("inbound|{port}||")
}

/// The scope of a gateway: the whole registry (Sidecar resources do not apply).
pub fn gateway_scope(world: &World) -> crate::model::Scope {
    crate::model::Scope {
        sidecar: None,
        hosts: None,
        allow_any: world.mesh.allow_any,
        ports: Default::default(),
        default_hosts: None,
    }
}

/// Generate the whole config of one proxy (a sidecar, or a gateway).
pub fn generate(world: &World, proxy: &Proxy) -> ProxyConfig {
    if proxy.router {
        let scope = gateway_scope(world);
        let (mut listeners, mut routes) = gateway::generate(world, proxy);
        listeners.sort_by(|a, b| a.name.cmp(&b.name));
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        let mut clusters = cluster::outbound(world, &scope, proxy.mtls);
        let mut endpoints = endpoint::all(
            world,
            &scope,
            world.locality_class(proxy).as_ref(),
            world.network_class(proxy),
        );
        if gateway::has_auto_passthrough(world, proxy) {
            let (c, e) = gateway::sni_clusters(world, &gateway::network_of(world, proxy));
            clusters.extend(c);
            endpoints.extend(e);
            clusters.sort_by(|a, b| a.name.cmp(&b.name));
            endpoints.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
        }
        return ProxyConfig {
            clusters,
            endpoints,
            listeners,
            routes,
        };
    }
    let scope = world.scope(&proxy.namespace, &proxy.labels);
    let mut clusters = cluster::outbound(world, &scope, proxy.mtls);
    clusters.extend(cluster::inbound(world, proxy));
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    let mut listeners = listener::outbound(world, &scope, proxy.mtls);
    if proxy.dns {
        listeners.push(dns::listener(world, &scope));
    }
    let key = listener::inbound_key(world, proxy);
    listeners.push(listener::inbound_from(&key));
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    let mut routes = route::outbound(world, proxy);
    routes.extend(listener::inbound_routes(&key));
    routes.sort_by(|a, b| a.name.cmp(&b.name));
    ProxyConfig {
        clusters,
        endpoints: endpoint::all(
            world,
            &scope,
            world.locality_class(proxy).as_ref(),
            world.network_class(proxy),
        ),
        listeners,
        routes,
    }
}

/// Consistency check before serving: every cluster a route or listener names exists, every
/// EDS cluster has endpoints, every RDS name exists, no name appears twice.
pub fn check(cfg: &ProxyConfig) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    let mut dup = |kind: &str, names: Vec<&str>| {
        let mut seen = BTreeSet::new();
        for n in names {
            if !seen.insert(n) {
                errs.push(format!("duplicate {kind} {n}"));
            }
        }
    };
    dup(
        "cluster",
        cfg.clusters.iter().map(|c| c.name.as_str()).collect(),
    );
    dup(
        "listener",
        cfg.listeners.iter().map(|c| c.name.as_str()).collect(),
    );
    dup(
        "route",
        cfg.routes.iter().map(|c| c.name.as_str()).collect(),
    );
    dup(
        "endpoints",
        cfg.endpoints
            .iter()
            .map(|c| c.cluster_name.as_str())
            .collect(),
    );
    let clusters: BTreeSet<&str> = cfg.clusters.iter().map(|c| c.name.as_str()).collect();
    let eds: BTreeSet<&str> = cfg
        .endpoints
        .iter()
        .map(|c| c.cluster_name.as_str())
        .collect();
    for c in &cfg.clusters {
        if cluster::is_eds(c) && !eds.contains(c.name.as_str()) {
            errs.push(format!("EDS cluster {} has no endpoints resource", c.name));
        }
    }
    for name in route::referenced_clusters(&cfg.routes)
        .into_iter()
        .chain(listener::referenced_clusters(&cfg.listeners))
    {
        if !clusters.contains(name.as_str()) {
            errs.push(format!("cluster {name} is referenced but not generated"));
        }
    }
    let routes: BTreeSet<&str> = cfg.routes.iter().map(|r| r.name.as_str()).collect();
    for r in listener::referenced_routes(&cfg.listeners) {
        if !routes.contains(r.as_str()) {
            errs.push(format!("route {r} is referenced but not generated"));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

pub(crate) fn dur(d: std::time::Duration) -> pbw::Duration {
    pbw::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub(crate) fn secs(s: i64) -> pbw::Duration {
    pbw::Duration {
        seconds: s,
        nanos: 0,
    }
}

/// Parse an already validated duration (validation guarantees success).
pub(crate) fn dur_str(s: &Option<String>) -> Option<pbw::Duration> {
    s.as_deref()
        .and_then(|s| crate::api::parse_duration(s).ok())
        .map(dur)
}

pub(crate) fn u32v(v: u32) -> Option<pbw::UInt32Value> {
    Some(pbw::UInt32Value { value: v })
}

pub(crate) fn boolv(v: bool) -> Option<pbw::BoolValue> {
    Some(pbw::BoolValue { value: v })
}

pub(crate) fn socket(addr: &str, port: u32) -> Option<core::Address> {
    Some(core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: addr.to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

pub(crate) fn ads() -> Option<core::ConfigSource> {
    Some(core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    })
}

pub(crate) fn any<T: prost::Message + prost::Name>(m: T) -> envoy_types::pb::google::protobuf::Any {
    envoy_types::util::pack_any(m)
}

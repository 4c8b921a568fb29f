//! EDS: one ClusterLoadAssignment per EDS cluster, endpoints filtered by subset labels.

use super::*;
use crate::api::networking::LocalityLoadBalancerSetting;
use crate::model::{selects, DestRule, Origin, Resolution, Service, ServicePort};
use envoy_types::pb::envoy::config::endpoint::v3 as ep;
use std::collections::BTreeMap;

/// `{tlsMode: istio}`: the transport-socket-match key auto mTLS uses.
pub fn tls_mode_match() -> pbw::Struct {
    let mut fields = std::collections::HashMap::new();
    fields.insert(
        "tlsMode".to_string(),
        pbw::Value {
            kind: Some(pbw::value::Kind::StringValue("istio".into())),
        },
    );
    pbw::Struct { fields }
}

pub fn lb_endpoint(addr: &str, port: u32, weight: u32) -> ep::LbEndpoint {
    lb_endpoint_tls(addr, port, weight, false)
}

/// An endpoint; `mtls` marks it for auto mTLS.
pub fn lb_endpoint_tls(addr: &str, port: u32, weight: u32, mtls: bool) -> ep::LbEndpoint {
    let metadata = mtls.then(|| {
        let mut filter_metadata = std::collections::HashMap::new();
        filter_metadata.insert("envoy.transport_socket_match".to_string(), tls_mode_match());
        core::Metadata {
            filter_metadata,
            ..Default::default()
        }
    });
    ep::LbEndpoint {
        metadata,
        host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(ep::Endpoint {
            address: socket(addr, port),
            ..Default::default()
        })),
        health_status: core::HealthStatus::Healthy as i32,
        load_balancing_weight: u32v(weight.max(1)),
        ..Default::default()
    }
}

/// The locality-aware load balancing in force for one (host, subset, port), if any: as in
/// Istio, it applies where the effective policy has outlier detection (which is what moves
/// traffic on when local endpoints fail) and is not disabled.
pub fn locality_lb(
    dr: Option<&DestRule>,
    subset: &str,
    port: u32,
) -> Option<LocalityLoadBalancerSetting> {
    let e = super::cluster::effective(dr, subset, port);
    e.outlier_detection.as_ref()?;
    let setting = e
        .load_balancer
        .and_then(|lb| lb.locality_lb_setting)
        .unwrap_or_default();
    (setting.enabled != Some(false)).then_some(setting)
}

/// `pattern` (`region/zone/subzone`, `*` or missing parts match anything) matches `loc`.
fn locality_matches(pattern: &str, loc: &str) -> bool {
    let mut l = loc.split('/');
    for p in pattern.split('/') {
        let part = l.next().unwrap_or("");
        if p == "*" {
            return true;
        }
        if p != part {
            return false;
        }
    }
    true
}

fn parts(loc: &str) -> [&str; 3] {
    let mut it = loc.split('/');
    [
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
    ]
}

/// Priority (0 first) of endpoints in `to` for a proxy in `from`, as Istio orders them:
/// the same subzone, zone, region, a failover region, then the rest. Dense after sorting.
fn locality_level(from: &str, to: &str, setting: &LocalityLoadBalancerSetting) -> u32 {
    let (f, t) = (parts(from), parts(to));
    if f[0] == t[0] && f[1] == t[1] && f[2] == t[2] {
        0
    } else if f[0] == t[0] && f[1] == t[1] {
        1
    } else if f[0] == t[0] {
        2
    } else if setting
        .failover
        .iter()
        .any(|fo| fo.from == f[0] && fo.to == t[0])
    {
        3
    } else {
        4
    }
}

/// Endpoints of one (service, port, subset), grouped by locality; for a proxy in `from`
/// where locality-aware load balancing applies, with priorities (failover) or weights
/// (distribute) relative to it.
pub fn assignment(
    world: &World,
    name: &str,
    svc: &Service,
    sp: &ServicePort,
    dr: Option<&DestRule>,
    subset: &str,
    from: Option<&Origin>,
    net: Option<&str>,
) -> ep::ClusterLoadAssignment {
    let labels = dr
        .and_then(|d| d.spec.subsets.iter().find(|s| s.name == subset))
        .map(|s| &s.labels);
    // A proxy with no locality has nothing to prefer, unless `failoverPriority` compares
    // labels.
    let setting = from.and_then(|f| {
        let s = locality_lb(dr, subset, sp.port)?;
        (!f.locality.is_empty() || !s.failover_priority.is_empty()).then_some((f, s))
    });
    // `failoverPriority`: how many of its labels, in order, an endpoint shares with the
    // proxy decides its priority (0: all); localities are split by it.
    let label_priority = |locality: &str, network: &str, labels: &BTreeMap<String, String>| {
        let Some((f, s)) = &setting else { return 0 };
        let n = s.failover_priority.len() as u32;
        for (i, entry) in s.failover_priority.iter().enumerate() {
            let (key, want) = match entry.split_once('=') {
                Some((k, v)) => (k, v),
                None => (
                    entry.as_str(),
                    f.labels.get(entry).map(String::as_str).unwrap_or(""),
                ),
            };
            if crate::model::topology_label(key, locality, network, labels) != want {
                return n - i as u32;
            }
        }
        0
    };
    let mut by_locality: BTreeMap<(u32, &str), Vec<ep::LbEndpoint>> = Default::default();
    // Endpoints on another network than the proxy's: reached through that network's
    // east-west gateway (mutual TLS, the SNI names the cluster), weighted by how many there
    // are; without a gateway, or without a sidecar to speak mTLS, they are left out.
    let mut remote: BTreeMap<(u32, &str, &str), u32> = Default::default();
    for e in svc
        .endpoints
        .iter()
        .filter(|e| labels.is_none_or(|l| selects(l, &e.labels)))
    {
        let level = label_priority(&e.locality, &e.network, &e.labels);
        if let Some(n) = net {
            if e.network != n {
                if e.in_mesh() && !svc.mesh_external {
                    let w = remote
                        .entry((level, e.locality.as_str(), e.network.as_str()))
                        .or_default();
                    *w = w.saturating_add(e.weight.max(1));
                }
                continue;
            }
        }
        let port = svc.endpoint_port(sp, e);
        // Auto mTLS only where the workload has a sidecar and accepts mTLS on the port.
        let mtls = !svc.mesh_external
            && e.in_mesh()
            && world.mtls_mode(&e.namespace, &e.labels, port) != crate::model::MtlsMode::Disable;
        by_locality
            .entry((level, e.locality.as_str()))
            .or_default()
            .push(lb_endpoint_tls(&e.address, port, e.weight, mtls));
    }
    for ((level, loc, network), weight) in remote {
        for (addr, port) in world.network_gateways.get(network).into_iter().flatten() {
            by_locality
                .entry((level, loc))
                .or_default()
                .push(lb_endpoint_tls(addr, *port, weight, true));
        }
    }
    let mut groups: Vec<ep::LocalityLbEndpoints> = Vec::new();
    let distribute = setting.as_ref().and_then(|(f, s)| {
        s.distribute
            .iter()
            .find(|d| locality_matches(&d.from, &f.locality))
    });
    // The cluster weighs localities whenever `distribute` is set (see `cluster.rs`): a
    // proxy no rule's `from` matches (or with no locality) weighs them equally, rather
    // than leaving them unweighted (no traffic).
    let weighted = locality_lb(dr, subset, sp.port).is_some_and(|l| !l.distribute.is_empty());
    for ((level, loc), lb_endpoints) in by_locality {
        let [region, zone, sub_zone] = parts(loc);
        let mut g = ep::LocalityLbEndpoints {
            locality: (!loc.is_empty()).then(|| core::Locality {
                region: region.into(),
                zone: zone.into(),
                sub_zone: sub_zone.into(),
            }),
            lb_endpoints,
            ..Default::default()
        };
        if let Some(d) = distribute {
            // Each `to` weight is shared by the endpoint localities it matches; localities
            // no `to` names get nothing (as in Istio).
            let all: Vec<&str> = svc.endpoints.iter().map(|e| e.locality.as_str()).collect();
            let mut weight = 0u32;
            for (pattern, w) in &d.to {
                if locality_matches(pattern, loc) {
                    let mut matched: Vec<&str> = all
                        .iter()
                        .copied()
                        .filter(|l| locality_matches(pattern, l))
                        .collect();
                    matched.sort();
                    matched.dedup();
                    weight =
                        weight.saturating_add(w.saturating_mul(1000) / matched.len().max(1) as u32);
                }
            }
            if weight == 0 {
                continue;
            }
            g.load_balancing_weight = u32v(weight);
        } else if weighted {
            g.load_balancing_weight = u32v(1);
        } else if let Some((f, s)) = &setting {
            g.priority = if s.failover_priority.is_empty() {
                locality_level(&f.locality, loc, s)
            } else {
                level
            };
        }
        groups.push(g);
    }
    // Envoy wants priorities 0..n without gaps.
    let mut levels: Vec<u32> = groups.iter().map(|g| g.priority).collect();
    levels.sort();
    levels.dedup();
    for g in &mut groups {
        g.priority = levels.iter().position(|l| *l == g.priority).unwrap_or(0) as u32;
    }
    ep::ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: groups,
        ..Default::default()
    }
}

/// Every EDS resource of the mesh (shared by all sidecars of a scope, and of a locality
/// where locality-aware load balancing applies), sorted by name.
pub fn all(
    world: &World,
    scope: &crate::model::Scope,
    from: Option<&Origin>,
    net: Option<&str>,
) -> Vec<ep::ClusterLoadAssignment> {
    let mut out: Vec<_> = services(world, scope)
        .flat_map(|svc| for_service(world, svc, from, net))
        .collect();
    out.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    out
}

/// The services of a scope that have EDS clusters.
pub fn services<'a>(
    world: &'a World,
    scope: &'a crate::model::Scope,
) -> impl Iterator<Item = &'a Service> + 'a {
    world
        .services
        .values()
        .filter(|s| s.resolution == Resolution::Static && scope.includes(&s.hostname))
        .map(|s| &**s)
}

/// The EDS cluster names of a service: per port, the default cluster and one per subset.
pub fn names(svc: &Service, dr: Option<&DestRule>) -> Vec<String> {
    let subsets = dr.map(|d| d.spec.subsets.as_slice()).unwrap_or_default();
    svc.ports
        .iter()
        .flat_map(|sp| {
            std::iter::once(outbound_name(sp.port, "", &svc.hostname)).chain(
                subsets
                    .iter()
                    .map(|s| outbound_name(sp.port, &s.name, &svc.hostname)),
            )
        })
        .collect()
}

/// The assignments of one service (see `names`). They read the service, its
/// DestinationRule and the mTLS settings of its endpoints' namespaces, nothing else.
pub fn for_service(
    world: &World,
    svc: &Service,
    from: Option<&Origin>,
    net: Option<&str>,
) -> Vec<ep::ClusterLoadAssignment> {
    let dr = world.destination_rules.get(&svc.hostname).map(|d| &**d);
    let mut out = Vec::new();
    for sp in &svc.ports {
        out.push(assignment(
            world,
            &outbound_name(sp.port, "", &svc.hostname),
            svc,
            sp,
            dr,
            "",
            from,
            net,
        ));
        for s in dr.map(|d| d.spec.subsets.as_slice()).unwrap_or_default() {
            out.push(assignment(
                world,
                &outbound_name(sp.port, &s.name, &svc.hostname),
                svc,
                sp,
                dr,
                &s.name,
                from,
                net,
            ));
        }
    }
    out
}

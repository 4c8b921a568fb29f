//! EDS: one ClusterLoadAssignment per EDS cluster, endpoints filtered by subset labels.

use super::*;
use crate::model::{selects, DestRule, Resolution, Service, ServicePort};
use envoy_types::pb::envoy::config::endpoint::v3 as ep;

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

/// Endpoints of one (service, port, subset).
pub fn assignment(
    world: &World,
    name: &str,
    svc: &Service,
    sp: &ServicePort,
    dr: Option<&DestRule>,
    subset: &str,
) -> ep::ClusterLoadAssignment {
    let labels = dr
        .and_then(|d| d.spec.subsets.iter().find(|s| s.name == subset))
        .map(|s| &s.labels);
    let lb_endpoints: Vec<ep::LbEndpoint> = svc
        .endpoints
        .iter()
        .filter(|e| labels.is_none_or(|l| selects(l, &e.labels)))
        .map(|e| {
            let port = svc.endpoint_port(sp, e);
            // Auto mTLS only where the workload has a sidecar and accepts mTLS on the port.
            let mtls = !svc.mesh_external
                && e.in_mesh()
                && world.mtls_mode(&e.namespace, &e.labels, port)
                    != crate::model::MtlsMode::Disable;
            lb_endpoint_tls(&e.address, port, e.weight, mtls)
        })
        .collect();
    ep::ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: if lb_endpoints.is_empty() {
            vec![]
        } else {
            vec![ep::LocalityLbEndpoints {
                lb_endpoints,
                ..Default::default()
            }]
        },
        ..Default::default()
    }
}

/// Every EDS resource of the mesh (shared by all sidecars), sorted by name.
pub fn all(world: &World, scope: &crate::model::Scope) -> Vec<ep::ClusterLoadAssignment> {
    let mut out: Vec<_> = services(world, scope)
        .flat_map(|svc| for_service(world, svc))
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
pub fn for_service(world: &World, svc: &Service) -> Vec<ep::ClusterLoadAssignment> {
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
        ));
        for s in dr.map(|d| d.spec.subsets.as_slice()).unwrap_or_default() {
            out.push(assignment(
                world,
                &outbound_name(sp.port, &s.name, &svc.hostname),
                svc,
                sp,
                dr,
                &s.name,
            ));
        }
    }
    out
}

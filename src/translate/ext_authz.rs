//! ext_authz for CUSTOM policies: the HTTP and network `ext_authz` filters of each provider
//! (enabled only for the requests its CUSTOM rules selected, by the metadata of their shadow
//! RBAC), and the cluster of pilotfish's own provider.

use super::authz::custom_prefix;
use super::rbac::wildcard;
use super::*;
use crate::model::ExtAuthzProvider;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3 as ext_authz;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    metadata_matcher, value_matcher, ListStringMatcher, MetadataMatcher, ValueMatcher,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;

/// The cluster sidecars reach pilotfish's ext_authz service by: its TLS port, with the
/// sidecar's own certificate (mutual TLS) when it has one, checking pilotfish's DNS name.
pub fn builtin_cluster(
    address: &str,
    mtls: bool,
) -> envoy_types::pb::envoy::config::cluster::v3::Cluster {
    use envoy_types::pb::envoy::config::cluster::v3 as cl;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3 as uphttp;
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "15012"));
    let port: u32 = port.parse().unwrap_or(15012);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = host.parse::<std::net::IpAddr>().is_ok();
    let opts = uphttp::HttpProtocolOptions {
        upstream_protocol_options: Some(
            uphttp::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                uphttp::http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        uphttp::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Default::default(),
                        ),
                    ),
                },
            ),
        ),
        ..Default::default()
    };
    cl::Cluster {
        name: BUILTIN_CLUSTER.into(),
        cluster_discovery_type: Some(cl::cluster::ClusterDiscoveryType::Type(if ip {
            cl::cluster::DiscoveryType::Static as i32
        } else {
            cl::cluster::DiscoveryType::StrictDns as i32
        })),
        connect_timeout: Some(secs(5)),
        load_assignment: Some(
            envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
                cluster_name: BUILTIN_CLUSTER.into(),
                endpoints: vec![
                    envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints {
                        lb_endpoints: vec![super::endpoint::lb_endpoint(host, port, 1)],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
        ),
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            any(opts),
        )]
        .into(),
        transport_socket: mtls
            .then(|| super::tls::istio_upstream("pilotfish", &["pilotfish".into()])),
        ..Default::default()
    }
}

pub(super) fn enabled_by(namespace: &str, i: usize) -> MetadataMatcher {
    MetadataMatcher {
        filter: namespace.into(),
        path: vec![metadata_matcher::PathSegment {
            segment: Some(metadata_matcher::path_segment::Segment::Key(format!(
                "{}shadow_effective_policy_id",
                custom_prefix(i)
            ))),
        }],
        value: Some(ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::PresentMatch(true)),
        }),
        invert: false,
    }
}

fn list(names: &[String]) -> Option<ListStringMatcher> {
    (!names.is_empty()).then(|| ListStringMatcher {
        patterns: names.iter().map(|n| wildcard(n, true)).collect(),
    })
}

/// The cluster of pilotfish's own ext_authz service (see `builtin_cluster`).
pub const BUILTIN_CLUSTER: &str = "pilotfish-authz";

pub(super) fn grpc_service(p: &ExtAuthzProvider) -> core::GrpcService {
    let (cluster, authority) = if p.builtin {
        (BUILTIN_CLUSTER.to_string(), "pilotfish".to_string())
    } else {
        (outbound_name(p.port, "", &p.service), p.service.clone())
    };
    core::GrpcService {
        target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
            core::grpc_service::EnvoyGrpc {
                cluster_name: cluster,
                authority,
                ..Default::default()
            },
        )),
        timeout: Some(dur(std::time::Duration::from_millis(p.timeout_ms))),
        ..Default::default()
    }
}

/// The HTTP ext_authz filter of provider `i`, enabled by its CUSTOM rules' metadata.
pub(super) fn ext_authz_http(p: &ExtAuthzProvider, i: usize) -> ext_authz::ExtAuthz {
    use ext_authz::ext_authz::Services;
    let services = if p.http {
        Services::HttpService(ext_authz::HttpService {
            server_uri: Some(core::HttpUri {
                uri: format!("http://{}:{}", p.service, p.port),
                http_upstream_type: Some(core::http_uri::HttpUpstreamType::Cluster(outbound_name(
                    p.port, "", &p.service,
                ))),
                timeout: Some(dur(std::time::Duration::from_millis(p.timeout_ms))),
            }),
            path_prefix: p.path_prefix.clone(),
            authorization_request: Some(ext_authz::AuthorizationRequest {
                headers_to_add: p
                    .additional_headers
                    .iter()
                    .map(|(k, v)| core::HeaderValue {
                        key: k.clone(),
                        value: v.clone(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            authorization_response: Some(ext_authz::AuthorizationResponse {
                allowed_upstream_headers: list(&p.upstream_on_allow),
                allowed_client_headers: list(&p.downstream_on_deny),
                allowed_client_headers_on_success: list(&p.downstream_on_allow),
                ..Default::default()
            }),
            ..Default::default()
        })
    } else {
        Services::GrpcService(grpc_service(p))
    };
    ext_authz::ExtAuthz {
        services: Some(services),
        transport_api_version: core::ApiVersion::V3 as i32,
        failure_mode_allow: p.fail_open,
        status_on_error: Some(HttpStatus {
            code: p.status_on_error as i32,
        }),
        with_request_body: p
            .body
            .map(|(max, partial, bytes)| ext_authz::BufferSettings {
                max_request_bytes: max,
                allow_partial_message: partial,
                pack_as_bytes: bytes,
            }),
        allowed_headers: list(&p.include_request_headers),
        // The built-in provider reads which CUSTOM rule selected the request and the
        // verified JWT payload.
        metadata_context_namespaces: if p.builtin {
            vec![
                "envoy.filters.http.rbac".into(),
                "envoy.filters.http.jwt_authn".into(),
            ]
        } else {
            vec![]
        },
        filter_enabled_metadata: Some(enabled_by("envoy.filters.http.rbac", i)),
        stat_prefix: format!("ext_authz_{i}"),
        ..Default::default()
    }
}

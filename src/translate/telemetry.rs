//! Access logs to pilotfish: every sidecar's inbound and outbound HTTP connection managers
//! and TCP proxies stream their entries to pilotfish's AccessLogService (`http_grpc` /
//! `tcp_grpc`, stock Envoy), from which it builds Istio's request metrics and the service
//! graph (`crate::telemetry`).
//!
//! A sidecar with certificates logs over the TLS port with its own certificate (cluster
//! `pilotfish-telemetry`, mutual TLS; pilotfish checks the certificate's identity against
//! the node's claims, so a proxy can only report as itself); one without logs over the
//! bootstrap's plaintext `xds-grpc` cluster (development and loopback setups). The logger's
//! name says the direction (`pilotfish-inbound` / `pilotfish-outbound`).

use super::*;
use crate::model::MeshConfig;
use envoy_types::pb::envoy::config::accesslog::v3 as al;
use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3 as grpc_al;

pub const TELEMETRY_CLUSTER: &str = "pilotfish-telemetry";
/// The bootstrap's plaintext cluster to pilotfish (pilotfish's and Istio's bootstraps).
pub const XDS_CLUSTER: &str = "xds-grpc";
pub const LOG_INBOUND: &str = "pilotfish-inbound";
pub const LOG_OUTBOUND: &str = "pilotfish-outbound";

/// The cluster a proxy's access logs go to, or None when telemetry is off (or a proxy
/// with certificates has no TLS address of pilotfish to log to).
pub fn log_cluster(mesh: &MeshConfig, mtls: bool) -> Option<&'static str> {
    if !mesh.telemetry {
        return None;
    }
    if mtls {
        mesh.builtin_authz.as_ref().map(|_| TELEMETRY_CLUSTER)
    } else {
        Some(XDS_CLUSTER)
    }
}

/// Where a proxy's logs go (the cluster) and which way the listener faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LogTo {
    pub cluster: &'static str,
    pub inbound: bool,
}

fn common(to: LogTo) -> grpc_al::CommonGrpcAccessLogConfig {
    grpc_al::CommonGrpcAccessLogConfig {
        log_name: if to.inbound {
            LOG_INBOUND
        } else {
            LOG_OUTBOUND
        }
        .into(),
        grpc_service: Some(core::GrpcService {
            target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
                core::grpc_service::EnvoyGrpc {
                    cluster_name: to.cluster.into(),
                    authority: "pilotfish".into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        transport_api_version: core::ApiVersion::V3 as i32,
        buffer_flush_interval: Some(pbw::Duration {
            seconds: 0,
            nanos: 500_000_000,
        }),
        ..Default::default()
    }
}

/// The HTTP logger of a connection manager. `content-type` tells gRPC from HTTP; the gRPC
/// status comes in a header (trailers-only answers) or a trailer.
pub fn http_log(to: LogTo) -> al::AccessLog {
    al::AccessLog {
        name: "envoy.access_loggers.http_grpc".into(),
        config_type: Some(al::access_log::ConfigType::TypedConfig(any(
            grpc_al::HttpGrpcAccessLogConfig {
                common_config: Some(common(to)),
                additional_request_headers_to_log: vec!["content-type".into()],
                additional_response_headers_to_log: vec!["grpc-status".into()],
                additional_response_trailers_to_log: vec!["grpc-status".into()],
            },
        ))),
        ..Default::default()
    }
}

/// The TCP logger of a TCP proxy (with `tcp_log_options`: an entry when the upstream
/// connects, every 5 s, and at the end).
pub fn tcp_log(to: LogTo) -> al::AccessLog {
    al::AccessLog {
        name: "envoy.access_loggers.tcp_grpc".into(),
        config_type: Some(al::access_log::ConfigType::TypedConfig(any(
            grpc_al::TcpGrpcAccessLogConfig {
                common_config: Some(common(to)),
            },
        ))),
        ..Default::default()
    }
}

pub fn tcp_log_options(
) -> envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::TcpAccessLogOptions
{
    envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::TcpAccessLogOptions {
        access_log_flush_interval: Some(pbw::Duration {
            seconds: 5,
            nanos: 0,
        }),
        flush_access_log_on_connected: true,
        flush_access_log_on_start: false,
    }
}

/// The cluster of the TLS sink (proxies with certificates; see `log_cluster`).
pub fn cluster(mesh: &MeshConfig) -> Option<Cluster> {
    let addr = mesh.builtin_authz.as_ref().filter(|_| mesh.telemetry)?;
    let mut c = super::authz::builtin_cluster(addr, true);
    c.name = TELEMETRY_CLUSTER.into();
    if let Some(la) = &mut c.load_assignment {
        la.cluster_name = TELEMETRY_CLUSTER.into();
    }
    Some(c)
}

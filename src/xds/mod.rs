//! xDS: the encoded resource cache and the ADS server (state of the world and delta).
//!
//! ```text
//!  World ──► Generation (shared resources encoded once; per-class memo) ──watch──► streams
//! ```
pub mod auth;
pub mod cache;
pub mod claims;
pub mod http2;
pub mod server;
pub mod services;
pub mod status;
pub mod wire;

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// Virtual hosts of route configurations that use VHDS (delta ADS streams only).
pub const VHOST: &str = "type.googleapis.com/envoy.config.route.v3.VirtualHost";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Push order that keeps make-before-break: clusters, endpoints, listeners, routes, then the
/// virtual hosts of routes (a route configuration must be ACKed before its virtual hosts
/// can be delivered).
pub const ORDER: [&str; 5] = [CLUSTER, ENDPOINT, LISTENER, ROUTE, VHOST];

/// Short name of a type URL for logs, metrics and debug pages.
pub fn short(type_url: &str) -> &'static str {
    match type_url {
        CLUSTER => "cds",
        ENDPOINT => "eds",
        LISTENER => "lds",
        ROUTE => "rds",
        VHOST => "vhds",
        SECRET => "sds",
        _ => "unknown",
    }
}

/// Wildcard types: the client gets the full set; a missing name means deleted. Envoy asks
/// for virtual hosts with a wildcard too, once, and expects those of each route
/// configuration it holds.
pub fn is_wildcard_type(type_url: &str) -> bool {
    matches!(type_url, CLUSTER | LISTENER | VHOST)
}

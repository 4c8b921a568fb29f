//! The non-aggregated xDS services (CDS, EDS, LDS, RDS, SDS), for clients configured with a
//! separate gRPC stream per type: each is the ADS machinery with the type fixed (see
//! `wire::XdsService`), plus the unary fetch below.

use super::cache::{set_version, Res};
use super::is_wildcard_type;
use super::server::{proxy_from_node, XdsServer};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tonic::Status;

impl XdsServer {
    /// Unary fetch: the current resources of one type for the requesting node.
    pub fn fetch(
        &self,
        req: DiscoveryRequest,
        type_url: &'static str,
    ) -> Result<DiscoveryResponse, Status> {
        let p = self
            .current
            .borrow()
            .clone()
            .ok_or_else(|| Status::unavailable("configuration not loaded yet"))?;
        let node = req
            .node
            .ok_or_else(|| Status::invalid_argument("node is required"))?;
        let proxy = proxy_from_node(&node);
        let all = p.gen.for_proxy(&proxy);
        let wildcard = is_wildcard_type(type_url)
            && (req.resource_names.is_empty() || req.resource_names.iter().any(|n| n == "*"));
        let chosen: Vec<Res> = all
            .values(type_url)
            .into_iter()
            .filter(|r| wildcard || req.resource_names.contains(&r.name))
            .collect();
        p.gen.forget(&proxy);
        Ok(DiscoveryResponse {
            version_info: set_version(chosen.iter()),
            resources: chosen.iter().map(|r| r.any.clone()).collect(),
            type_url: type_url.to_string(),
            ..Default::default()
        })
    }
}

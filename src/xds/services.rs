//! The non-aggregated xDS services (CDS, EDS, LDS, RDS, SDS), for clients configured with a
//! separate gRPC stream per type: each is the ADS machinery with the type fixed (see
//! `wire::XdsService`), plus the unary fetch below.

use super::cache::{Names, View};
use super::is_wildcard_type;
use super::server::{proxy_from_node, XdsServer};
use super::wire::Plan;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tonic::Status;

impl XdsServer {
    /// Unary fetch: the current resources of one type for the requesting node, resolved
    /// like a stream's (same version for the same resources).
    pub fn fetch(&self, req: DiscoveryRequest, type_url: &'static str) -> Result<Plan, Status> {
        let p = self
            .current
            .borrow()
            .clone()
            .ok_or_else(|| Status::unavailable("configuration not loaded yet"))?;
        let node = req
            .node
            .ok_or_else(|| Status::invalid_argument("node is required"))?;
        let wildcard = is_wildcard_type(type_url)
            && (req.resource_names.is_empty() || req.resource_names.iter().any(|n| n == "*"));
        let view = View {
            layers: p
                .gen
                .for_proxy(&proxy_from_node(&node))
                .layers(type_url)
                .to_vec(),
            filter: (!wildcard).then(|| Names::intern(req.resource_names.into_iter().collect())),
            extra: Vec::new(),
        };
        let resolved = view.resolve(&p.gen);
        let head = DiscoveryResponse {
            version_info: resolved.version.clone(),
            type_url: type_url.to_string(),
            ..Default::default()
        };
        Ok(Plan::sotw(&head, resolved.items.clone()))
    }
}

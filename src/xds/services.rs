//! The non-aggregated xDS services (CDS, EDS, LDS, RDS), for clients configured with a
//! separate gRPC stream per type. Each is the ADS machinery with the type fixed.

use super::cache::{set_version, Res};
use super::server::{proxy_from_node, XdsServer};
use super::{is_wildcard_type, CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server::{
    ClusterDiscoveryService, ClusterDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::{
    EndpointDiscoveryService, EndpointDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_server::{
    ListenerDiscoveryService, ListenerDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::route::v3::route_discovery_service_server::{
    RouteDiscoveryService, RouteDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use std::pin::Pin;
use tonic::{Request, Response, Status, Streaming};

type SotwStream = Pin<Box<dyn futures::Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream =
    Pin<Box<dyn futures::Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

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

macro_rules! service {
    ($wrapper:ident, $trait:ident, $server:ident, $type:expr, $sotw_t:ident, $sotw:ident, $delta_t:ident, $delta:ident, $fetch:ident) => {
        #[derive(Clone)]
        pub struct $wrapper(pub XdsServer);

        impl $wrapper {
            pub fn into_service(self) -> $server<$wrapper> {
                $server::new(self).max_decoding_message_size(super::server::MAX_MESSAGE)
            }
        }

        #[tonic::async_trait]
        impl $trait for $wrapper {
            type $sotw_t = SotwStream;
            type $delta_t = DeltaStream;
            async fn $sotw(
                &self,
                req: Request<Streaming<DiscoveryRequest>>,
            ) -> Result<Response<SotwStream>, Status> {
                self.0.sotw(req, Some($type))
            }
            async fn $delta(
                &self,
                req: Request<Streaming<DeltaDiscoveryRequest>>,
            ) -> Result<Response<DeltaStream>, Status> {
                self.0.delta(req, Some($type))
            }
            async fn $fetch(
                &self,
                req: Request<DiscoveryRequest>,
            ) -> Result<Response<DiscoveryResponse>, Status> {
                self.0.fetch(req.into_inner(), $type).map(Response::new)
            }
        }
    };
}

service!(
    Cds,
    ClusterDiscoveryService,
    ClusterDiscoveryServiceServer,
    CLUSTER,
    StreamClustersStream,
    stream_clusters,
    DeltaClustersStream,
    delta_clusters,
    fetch_clusters
);
service!(
    Eds,
    EndpointDiscoveryService,
    EndpointDiscoveryServiceServer,
    ENDPOINT,
    StreamEndpointsStream,
    stream_endpoints,
    DeltaEndpointsStream,
    delta_endpoints,
    fetch_endpoints
);
service!(
    Lds,
    ListenerDiscoveryService,
    ListenerDiscoveryServiceServer,
    LISTENER,
    StreamListenersStream,
    stream_listeners,
    DeltaListenersStream,
    delta_listeners,
    fetch_listeners
);
service!(
    Rds,
    RouteDiscoveryService,
    RouteDiscoveryServiceServer,
    ROUTE,
    StreamRoutesStream,
    stream_routes,
    DeltaRoutesStream,
    delta_routes,
    fetch_routes
);
service!(
    Sds,
    SecretDiscoveryService,
    SecretDiscoveryServiceServer,
    SECRET,
    StreamSecretsStream,
    stream_secrets,
    DeltaSecretsStream,
    delta_secrets,
    fetch_secrets
);

//! `networking.istio.io` resource specs (v1, v1beta1, v1alpha3 share one schema).
//!
//! Field names follow Istio's protobuf JSON names. Every struct denies unknown fields so a
//! typo is reported by name instead of being silently ignored.

use super::{Percent, StringMatch};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

macro_rules! spec {
    ($(#[$m:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name { $($body)* }
    };
}
pub(crate) use spec;

spec! {
    /// VirtualService: how requests to a set of hosts are routed.
    pub struct VirtualService {
        #[serde(default)] pub hosts: Vec<String>,
        #[serde(default)] pub gateways: Vec<String>,
        #[serde(default)] pub http: Vec<HttpRoute>,
        #[serde(default)] pub tcp: Vec<TcpRoute>,
        #[serde(default)] pub tls: Vec<TlsRoute>,
        #[serde(default)] pub export_to: Vec<String>,
    }
}

spec! {
    pub struct HttpRoute {
        #[serde(default)] pub name: String,
        #[serde(default, rename = "match")] pub matches: Vec<HttpMatchRequest>,
        #[serde(default)] pub route: Vec<HttpRouteDestination>,
        pub redirect: Option<HttpRedirect>,
        pub direct_response: Option<HttpDirectResponse>,
        pub delegate: Option<Delegate>,
        pub rewrite: Option<HttpRewrite>,
        pub timeout: Option<String>,
        pub retries: Option<HttpRetry>,
        pub fault: Option<HttpFaultInjection>,
        pub mirror: Option<Destination>,
        #[serde(default)] pub mirrors: Vec<HttpMirrorPolicy>,
        pub mirror_percentage: Option<Percent>,
        pub mirror_percent: Option<u32>,
        pub cors_policy: Option<CorsPolicy>,
        pub headers: Option<Headers>,
    }
}

spec! {
    pub struct Delegate {
        #[serde(default)] pub name: String,
        #[serde(default)] pub namespace: String,
    }
}

spec! {
    pub struct HttpMatchRequest {
        #[serde(default)] pub name: String,
        pub uri: Option<StringMatch>,
        pub scheme: Option<StringMatch>,
        pub method: Option<StringMatch>,
        pub authority: Option<StringMatch>,
        #[serde(default)] pub headers: BTreeMap<String, StringMatch>,
        pub port: Option<u32>,
        #[serde(default)] pub source_labels: BTreeMap<String, String>,
        #[serde(default)] pub gateways: Vec<String>,
        #[serde(default)] pub query_params: BTreeMap<String, StringMatch>,
        #[serde(default)] pub ignore_uri_case: bool,
        #[serde(default)] pub without_headers: BTreeMap<String, StringMatch>,
        #[serde(default)] pub source_namespace: String,
        #[serde(default)] pub stat_prefix: String,
    }
}

spec! {
    pub struct HttpRouteDestination {
        pub destination: Destination,
        #[serde(default)] pub weight: i64,
        pub headers: Option<Headers>,
    }
}

spec! {
    pub struct Destination {
        pub host: String,
        #[serde(default)] pub subset: String,
        pub port: Option<PortSelector>,
    }
}

spec! {
    pub struct PortSelector {
        pub number: u32,
    }
}

spec! {
    pub struct Headers {
        pub request: Option<HeaderOperations>,
        pub response: Option<HeaderOperations>,
    }
}

spec! {
    pub struct HeaderOperations {
        #[serde(default)] pub set: BTreeMap<String, String>,
        #[serde(default)] pub add: BTreeMap<String, String>,
        #[serde(default)] pub remove: Vec<String>,
    }
}

spec! {
    pub struct HttpRedirect {
        #[serde(default)] pub uri: String,
        #[serde(default)] pub authority: String,
        pub port: Option<u32>,
        pub derive_port: Option<String>,
        #[serde(default)] pub scheme: String,
        pub redirect_code: Option<u32>,
    }
}

spec! {
    pub struct HttpDirectResponse {
        pub status: u32,
        pub body: Option<HttpBody>,
    }
}

spec! {
    pub struct HttpBody {
        pub string: Option<String>,
        pub bytes: Option<String>,
    }
}

spec! {
    pub struct HttpRewrite {
        #[serde(default)] pub uri: String,
        #[serde(default)] pub authority: String,
        pub uri_regex_rewrite: Option<RegexRewrite>,
    }
}

spec! {
    pub struct RegexRewrite {
        #[serde(rename = "match")] pub pattern: String,
        pub rewrite: String,
    }
}

spec! {
    pub struct HttpRetry {
        #[serde(default)] pub attempts: i64,
        pub per_try_timeout: Option<String>,
        #[serde(default)] pub retry_on: String,
        pub retry_remote_localities: Option<bool>,
    }
}

spec! {
    pub struct HttpFaultInjection {
        pub delay: Option<FaultDelay>,
        pub abort: Option<FaultAbort>,
    }
}

spec! {
    pub struct FaultDelay {
        pub fixed_delay: Option<String>,
        pub exponential_delay: Option<String>,
        pub percentage: Option<Percent>,
        pub percent: Option<u32>,
    }
}

spec! {
    pub struct FaultAbort {
        pub http_status: Option<u32>,
        pub grpc_status: Option<String>,
        pub http2_error: Option<String>,
        pub percentage: Option<Percent>,
    }
}

spec! {
    pub struct HttpMirrorPolicy {
        pub destination: Destination,
        pub percentage: Option<Percent>,
    }
}

spec! {
    pub struct CorsPolicy {
        #[serde(default)] pub allow_origins: Vec<StringMatch>,
        #[serde(default)] pub allow_origin: Vec<String>,
        #[serde(default)] pub allow_methods: Vec<String>,
        #[serde(default)] pub allow_headers: Vec<String>,
        #[serde(default)] pub expose_headers: Vec<String>,
        pub max_age: Option<String>,
        pub allow_credentials: Option<bool>,
        pub unmatched_preflights: Option<String>,
    }
}

spec! {
    pub struct TcpRoute {
        #[serde(default, rename = "match")] pub matches: Vec<L4MatchAttributes>,
        #[serde(default)] pub route: Vec<RouteDestination>,
    }
}

spec! {
    pub struct TlsRoute {
        #[serde(default, rename = "match")] pub matches: Vec<TlsMatchAttributes>,
        #[serde(default)] pub route: Vec<RouteDestination>,
    }
}

spec! {
    pub struct L4MatchAttributes {
        #[serde(default)] pub destination_subnets: Vec<String>,
        pub port: Option<u32>,
        #[serde(default)] pub source_labels: BTreeMap<String, String>,
        #[serde(default)] pub gateways: Vec<String>,
        #[serde(default)] pub source_namespace: String,
    }
}

spec! {
    pub struct TlsMatchAttributes {
        #[serde(default)] pub sni_hosts: Vec<String>,
        #[serde(default)] pub destination_subnets: Vec<String>,
        pub port: Option<u32>,
        #[serde(default)] pub source_labels: BTreeMap<String, String>,
        #[serde(default)] pub gateways: Vec<String>,
        #[serde(default)] pub source_namespace: String,
    }
}

spec! {
    pub struct RouteDestination {
        pub destination: Destination,
        #[serde(default)] pub weight: i64,
    }
}

spec! {
    /// DestinationRule: what happens to traffic after routing picked a host.
    pub struct DestinationRule {
        pub host: String,
        pub traffic_policy: Option<TrafficPolicy>,
        #[serde(default)] pub subsets: Vec<Subset>,
        #[serde(default)] pub export_to: Vec<String>,
        pub workload_selector: Option<WorkloadSelector>,
    }
}

spec! {
    pub struct WorkloadSelector {
        #[serde(default)] pub match_labels: BTreeMap<String, String>,
    }
}

spec! {
    pub struct TrafficPolicy {
        pub load_balancer: Option<LoadBalancerSettings>,
        pub connection_pool: Option<ConnectionPoolSettings>,
        pub outlier_detection: Option<OutlierDetection>,
        pub tls: Option<ClientTlsSettings>,
        #[serde(default)] pub port_level_settings: Vec<PortTrafficPolicy>,
        pub tunnel: Option<serde_json::Value>,
        pub proxy_protocol: Option<serde_json::Value>,
    }
}

spec! {
    pub struct PortTrafficPolicy {
        pub port: Option<PortSelector>,
        pub load_balancer: Option<LoadBalancerSettings>,
        pub connection_pool: Option<ConnectionPoolSettings>,
        pub outlier_detection: Option<OutlierDetection>,
        pub tls: Option<ClientTlsSettings>,
    }
}

spec! {
    pub struct Subset {
        pub name: String,
        #[serde(default)] pub labels: BTreeMap<String, String>,
        pub traffic_policy: Option<TrafficPolicy>,
    }
}

spec! {
    pub struct LoadBalancerSettings {
        pub simple: Option<String>,
        pub consistent_hash: Option<ConsistentHash>,
        pub locality_lb_setting: Option<LocalityLoadBalancerSetting>,
        pub warmup_duration_secs: Option<String>,
    }
}

spec! {
    /// Locality-aware load balancing (Istio's `LocalityLoadBalancerSetting`).
    pub struct LocalityLoadBalancerSetting {
        #[serde(default)] pub distribute: Vec<LocalityDistribute>,
        #[serde(default)] pub failover: Vec<LocalityFailover>,
        #[serde(default)] pub failover_priority: Vec<String>,
        pub enabled: Option<bool>,
    }
}

spec! {
    /// Traffic from `from` (`region/zone/subzone`, `*` wildcards) is spread over the `to`
    /// localities by weight (percent).
    pub struct LocalityDistribute {
        #[serde(default)] pub from: String,
        #[serde(default)] pub to: BTreeMap<String, u32>,
    }
}

spec! {
    /// When a region's endpoints are unhealthy, go to this region next.
    pub struct LocalityFailover {
        #[serde(default)] pub from: String,
        #[serde(default)] pub to: String,
    }
}

spec! {
    pub struct ConsistentHash {
        pub http_header_name: Option<String>,
        pub http_cookie: Option<HttpCookie>,
        pub use_source_ip: Option<bool>,
        pub http_query_parameter_name: Option<String>,
        pub ring_hash: Option<RingHash>,
        pub maglev: Option<Maglev>,
        pub minimum_ring_size: Option<u64>,
    }
}

spec! {
    pub struct HttpCookie {
        pub name: String,
        #[serde(default)] pub path: String,
        pub ttl: Option<String>,
    }
}

spec! {
    pub struct RingHash {
        pub minimum_ring_size: Option<u64>,
    }
}

spec! {
    pub struct Maglev {
        pub table_size: Option<u64>,
    }
}

spec! {
    pub struct ConnectionPoolSettings {
        pub tcp: Option<TcpSettings>,
        pub http: Option<HttpSettings>,
    }
}

spec! {
    pub struct TcpSettings {
        pub max_connections: Option<i64>,
        pub connect_timeout: Option<String>,
        pub tcp_keepalive: Option<TcpKeepalive>,
        pub max_connection_duration: Option<String>,
        pub idle_timeout: Option<String>,
    }
}

spec! {
    pub struct TcpKeepalive {
        pub probes: Option<u32>,
        pub time: Option<String>,
        pub interval: Option<String>,
    }
}

spec! {
    pub struct HttpSettings {
        pub http1_max_pending_requests: Option<i64>,
        pub http2_max_requests: Option<i64>,
        pub max_requests_per_connection: Option<i64>,
        pub max_retries: Option<i64>,
        pub idle_timeout: Option<String>,
        pub h2_upgrade_policy: Option<String>,
        pub use_client_protocol: Option<bool>,
        pub max_concurrent_streams: Option<i64>,
    }
}

spec! {
    pub struct OutlierDetection {
        pub split_external_local_origin_errors: Option<bool>,
        pub consecutive_local_origin_failures: Option<u32>,
        pub consecutive_gateway_errors: Option<u32>,
        #[serde(rename = "consecutive5xxErrors")]
        pub consecutive_5xx_errors: Option<u32>,
        pub consecutive_errors: Option<u32>,
        pub interval: Option<String>,
        pub base_ejection_time: Option<String>,
        pub max_ejection_percent: Option<u32>,
        pub min_health_percent: Option<u32>,
    }
}

spec! {
    pub struct ClientTlsSettings {
        pub mode: Option<String>,
        pub client_certificate: Option<String>,
        pub private_key: Option<String>,
        pub ca_certificates: Option<String>,
        pub credential_name: Option<String>,
        #[serde(default)] pub subject_alt_names: Vec<String>,
        pub sni: Option<String>,
        pub insecure_skip_verify: Option<bool>,
        pub ca_crl: Option<String>,
    }
}

spec! {
    /// ServiceEntry: adds a service to the registry (outside Kubernetes, or external).
    pub struct ServiceEntry {
        #[serde(default)] pub hosts: Vec<String>,
        #[serde(default)] pub addresses: Vec<String>,
        #[serde(default)] pub ports: Vec<ServicePort>,
        pub location: Option<String>,
        pub resolution: Option<String>,
        #[serde(default)] pub endpoints: Vec<WorkloadEntry>,
        pub workload_selector: Option<LabelSelector>,
        #[serde(default)] pub export_to: Vec<String>,
        #[serde(default)] pub subject_alt_names: Vec<String>,
    }
}

spec! {
    pub struct LabelSelector {
        #[serde(default)] pub labels: BTreeMap<String, String>,
    }
}

spec! {
    pub struct ServicePort {
        pub number: u32,
        #[serde(default)] pub protocol: String,
        #[serde(default)] pub name: String,
        pub target_port: Option<u32>,
    }
}

spec! {
    /// WorkloadEntry: one workload (VM, process, or a pod described by hand).
    pub struct WorkloadEntry {
        #[serde(default)] pub address: String,
        #[serde(default)] pub ports: BTreeMap<String, u32>,
        #[serde(default)] pub labels: BTreeMap<String, String>,
        #[serde(default)] pub network: String,
        #[serde(default)] pub locality: String,
        pub weight: Option<u32>,
        #[serde(default)] pub service_account: String,
    }
}

spec! {
    pub struct Gateway {
        #[serde(default)] pub servers: Vec<GatewayServer>,
        #[serde(default)] pub selector: BTreeMap<String, String>,
    }
}

spec! {
    pub struct GatewayServer {
        pub port: ServicePort,
        #[serde(default)] pub bind: String,
        #[serde(default)] pub hosts: Vec<String>,
        pub tls: Option<ServerTlsSettings>,
        #[serde(default)] pub default_endpoint: String,
        #[serde(default)] pub name: String,
    }
}

spec! {
    /// A Gateway server's TLS settings (Istio's `ServerTLSSettings`).
    pub struct ServerTlsSettings {
        #[serde(default)] pub https_redirect: bool,
        pub mode: Option<String>,
        pub server_certificate: Option<String>,
        pub private_key: Option<String>,
        pub ca_certificates: Option<String>,
        pub ca_crl: Option<String>,
        pub credential_name: Option<String>,
        #[serde(default)] pub credential_names: Vec<String>,
        #[serde(default)] pub tls_certificates: Vec<serde_json::Value>,
        #[serde(default)] pub subject_alt_names: Vec<String>,
        #[serde(default)] pub verify_certificate_spki: Vec<String>,
        #[serde(default)] pub verify_certificate_hash: Vec<String>,
        pub min_protocol_version: Option<String>,
        pub max_protocol_version: Option<String>,
        #[serde(default)] pub cipher_suites: Vec<String>,
    }
}

spec! {
    pub struct Sidecar {
        pub workload_selector: Option<LabelSelector>,
        #[serde(default)] pub ingress: Vec<IstioIngressListener>,
        #[serde(default)] pub egress: Vec<IstioEgressListener>,
        pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
        pub inbound_connection_pool: Option<ConnectionPoolSettings>,
    }
}

spec! {
    /// A Sidecar's inbound port: traffic to `port` goes to `defaultEndpoint`.
    pub struct IstioIngressListener {
        pub port: ServicePort,
        #[serde(default)] pub bind: String,
        pub capture_mode: Option<String>,
        #[serde(default)] pub default_endpoint: String,
        pub tls: Option<serde_json::Value>,
        pub connection_pool: Option<serde_json::Value>,
    }
}

spec! {
    pub struct IstioEgressListener {
        pub port: Option<ServicePort>,
        #[serde(default)] pub bind: String,
        pub capture_mode: Option<String>,
        #[serde(default)] pub hosts: Vec<String>,
    }
}

spec! {
    pub struct OutboundTrafficPolicy {
        pub mode: Option<String>,
        pub egress_proxy: Option<Destination>,
    }
}

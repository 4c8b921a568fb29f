//! The IO-free domain model: services, endpoints, workloads, proxies, and the immutable
//! `World` snapshot that translation reads.
//!
//! ```text
//!  Index (single writer: apply_file / remove_file)
//!     └─ build() ──► World { services, virtual_services, destination_rules, errors, version }
//! ```

mod authz;
mod build;
pub mod gateway_api;
mod index;
pub mod remote;

pub use authz::{
    AuthzAction, AuthzPolicy, AuthzTarget, JwtProviderCfg, PortPolicies, RequestAuthn,
};

pub use build::build_world;
pub use index::Index;

use crate::api::{networking, ConfigError, ObjectKey, Resource};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Mesh-wide settings (from flags; later from a MeshConfig).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct MeshConfig {
    /// DNS suffix, `cluster.local` by default.
    pub domain: String,
    /// `ALLOW_ANY` passes unknown destinations through; `REGISTRY_ONLY` blocks them.
    pub allow_any: bool,
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// Where mesh-wide policy lives (Istio: `istio-system`).
    pub root_namespace: String,
    /// How sidecars normalize request paths before authorization.
    pub path_normalization: PathNormalization,
    /// ext_authz servers CUSTOM policies may name (MeshConfig `extensionProviders`).
    pub ext_authz: Vec<ExtAuthzProvider>,
    /// Names of other extension providers (tracing, logging): not usable by CUSTOM.
    pub other_providers: Vec<String>,
    /// Where sidecars reach pilotfish's own ext_authz service (`host:port`, the TLS port):
    /// None disables the built-in provider.
    pub builtin_authz: Option<String>,
    /// Sidecars stream access logs to pilotfish (`--telemetry`); off in a bare MeshConfig.
    pub telemetry: bool,
    /// Where ServiceEntries without addresses get their virtual IPs for the sidecars' DNS
    /// (`--dns-vip-range`, Istio's `240.240.0.0/16`): (network address, prefix length).
    pub dns_vip_range: (u32, u8),
    /// This cluster's network (`--network`): endpoints and proxies without one are on it.
    pub network: String,
    /// Global names `name.ns.<suffix>` (`--global-suffix`, `global`; empty: none) name a
    /// Kubernetes service across clusters, in sidecar DNS and virtual hosts.
    pub global_suffix: String,
}

/// An ext_authz server (MeshConfig `envoyExtAuthzGrpc` / `envoyExtAuthzHttp`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct ExtAuthzProvider {
    pub name: String,
    /// `envoyExtAuthzHttp`; else gRPC.
    pub http: bool,
    /// Host name of the service (registry FQDN), and its port.
    pub service: String,
    pub port: u32,
    pub timeout_ms: u64,
    pub fail_open: bool,
    pub status_on_error: u32,
    pub path_prefix: String,
    pub include_request_headers: Vec<String>,
    pub additional_headers: BTreeMap<String, String>,
    pub upstream_on_allow: Vec<String>,
    pub downstream_on_deny: Vec<String>,
    pub downstream_on_allow: Vec<String>,
    /// includeRequestBodyInCheck: (maxRequestBytes, allowPartialMessage, packAsBytes).
    pub body: Option<(u32, bool, bool)>,
    /// pilotfish itself (`service` is the address sidecars dial).
    pub builtin: bool,
}

impl MeshConfig {
    /// Apply a parsed MeshConfig file (already checked by `api::mesh::parse_mesh`) over
    /// these settings: what the file sets wins.
    pub fn apply_file(&mut self, m: crate::api::mesh::MeshFile) {
        if let Some(r) = m.root_namespace {
            self.root_namespace = r;
        }
        if let Some(t) = m.trust_domain {
            self.trust_domain = t;
        }
        if let Some(mode) = m.outbound_traffic_policy.and_then(|o| o.mode) {
            self.allow_any = mode != "REGISTRY_ONLY";
        }
        if let Some(n) = m.path_normalization.and_then(|p| p.normalization) {
            if let Some(n) = PathNormalization::parse(&n) {
                self.path_normalization = n;
            }
        }
        let ms = |t: &Option<String>| {
            t.as_deref()
                .and_then(|t| crate::api::parse_duration(t).ok())
                .map(|d| d.as_millis() as u64)
                .unwrap_or(600_000)
        };
        let status = |s: &Option<String>| s.as_deref().and_then(|s| s.parse().ok()).unwrap_or(403);
        let host = |s: &str| s.rsplit('/').next().unwrap_or(s).to_string();
        let body = |b: &Option<crate::api::mesh::BodyCfg>| {
            b.as_ref().map(|b| {
                (
                    b.max_request_bytes.unwrap_or(8192),
                    b.allow_partial_message,
                    b.pack_as_bytes,
                )
            })
        };
        for p in m.extension_providers {
            let (service, port, timeout, fail_open, status_on_error, body_cfg) =
                match (&p.envoy_ext_authz_grpc, &p.envoy_ext_authz_http) {
                    (Some(g), _) => (
                        &g.service,
                        g.port,
                        &g.timeout,
                        g.fail_open,
                        &g.status_on_error,
                        &g.include_request_body_in_check,
                    ),
                    (None, Some(h)) => (
                        &h.service,
                        h.port,
                        &h.timeout,
                        h.fail_open,
                        &h.status_on_error,
                        &h.include_request_body_in_check,
                    ),
                    (None, None) => {
                        self.other_providers.push(p.name.clone());
                        continue;
                    }
                };
            let mut e = ExtAuthzProvider {
                name: p.name.clone(),
                service: host(service),
                port,
                timeout_ms: ms(timeout),
                fail_open,
                status_on_error: status(status_on_error),
                body: body(body_cfg),
                ..Default::default()
            };
            if let Some(h) = &p.envoy_ext_authz_http {
                e.http = true;
                e.path_prefix = h.path_prefix.clone();
                e.include_request_headers = h.include_request_headers_in_check.clone();
                e.additional_headers = h.include_additional_headers_in_check.clone();
                e.upstream_on_allow = h.headers_to_upstream_on_allow.clone();
                e.downstream_on_deny = h.headers_to_downstream_on_deny.clone();
                e.downstream_on_allow = h.headers_to_downstream_on_allow.clone();
            }
            self.ext_authz.push(e);
        }
    }

    /// The built-in provider as an ext_authz provider entry (gRPC to pilotfish).
    pub fn builtin_provider(&self) -> Option<ExtAuthzProvider> {
        Some(ExtAuthzProvider {
            name: crate::api::mesh::BUILTIN_PROVIDER.into(),
            service: self.builtin_authz.clone()?,
            timeout_ms: 2_000,
            status_on_error: 403,
            builtin: true,
            ..Default::default()
        })
    }
}

/// Istio's `meshConfig.pathNormalization.normalization`, applied by every inbound connection
/// manager before authorization policies look at the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
pub enum PathNormalization {
    /// Paths as received (Istio `NONE`): authorization can be bypassed; not recommended.
    None,
    /// RFC 3986 normalization: dot segments, `\` to `/`, percent-decoding of unreserved
    /// characters (Istio `BASE`, its `DEFAULT`).
    Base,
    /// BASE, and `//` merged to `/`.
    MergeSlashes,
    /// MERGE_SLASHES, and `%2F`/`%5C` decoded to `/` and `\` first. pilotfish's default:
    /// stricter than Istio's, so `/public%2F..%2Fadmin` cannot pass a `DENY /admin*`.
    #[default]
    DecodeAndMergeSlashes,
}

impl PathNormalization {
    pub fn parse(s: &str) -> Option<PathNormalization> {
        Some(match s {
            "NONE" => PathNormalization::None,
            "BASE" | "DEFAULT" => PathNormalization::Base,
            "MERGE_SLASHES" => PathNormalization::MergeSlashes,
            "DECODE_AND_MERGE_SLASHES" => PathNormalization::DecodeAndMergeSlashes,
            _ => return None,
        })
    }
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            domain: "cluster.local".into(),
            allow_any: true,
            trust_domain: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            path_normalization: PathNormalization::default(),
            ext_authz: Vec::new(),
            other_providers: Vec::new(),
            builtin_authz: None,
            telemetry: false,
            dns_vip_range: (u32::from(std::net::Ipv4Addr::new(240, 240, 0, 0)), 16),
            network: String::new(),
            global_suffix: "global".into(),
        }
    }
}

/// A server's mutual TLS mode (PeerAuthentication).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum MtlsMode {
    /// Plaintext only.
    Disable,
    /// mTLS and plaintext on the same port.
    Permissive,
    /// mTLS only.
    Strict,
}

impl MtlsMode {
    /// `None` for UNSET (inherit).
    pub fn parse(s: Option<&str>) -> Option<MtlsMode> {
        match s {
            Some("DISABLE") => Some(MtlsMode::Disable),
            Some("PERMISSIVE") => Some(MtlsMode::Permissive),
            Some("STRICT") => Some(MtlsMode::Strict),
            _ => None,
        }
    }
}

/// A Sidecar resource, resolved: which hosts its workloads see.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SidecarCfg {
    pub key: ObjectKey,
    pub namespace: String,
    /// None: the namespace default (or the mesh default in the root namespace).
    pub selector: Option<BTreeMap<String, String>>,
    /// `namespace/host` patterns of every egress listener; empty: everything.
    pub egress_hosts: Vec<String>,
    /// The egress listeners (port, bind address, capture mode NONE, host patterns).
    pub egress: Vec<EgressCfg>,
    /// Ingress listeners: port, protocol, and where the app listens (`defaultEndpoint`).
    pub ingress: Vec<(u32, Protocol, String, u32)>,
    /// outboundTrafficPolicy override (true: ALLOW_ANY).
    pub allow_any: Option<bool>,
}

/// One egress listener of a Sidecar.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EgressCfg {
    pub port: Option<u32>,
    pub bind: String,
    /// captureMode NONE: the listener binds its port (the app calls it directly).
    pub capture_none: bool,
    pub hosts: Vec<String>,
}

/// The hosts one egress listener port sees, and how it listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortScope {
    pub hosts: std::collections::BTreeSet<String>,
    pub bind: Option<String>,
    pub bind_to_port: bool,
}

/// What one proxy sees of the mesh (Sidecar scoping). The hosts set already includes every
/// destination a visible VirtualService routes to, so no route names a missing cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub sidecar: Option<ObjectKey>,
    /// Every host any egress listener sees (clusters, endpoints, DNS); None: every host.
    pub hosts: Option<std::collections::BTreeSet<String>>,
    pub allow_any: bool,
    /// Egress listeners with a port: what that port's listener and routes see.
    pub ports: BTreeMap<u32, PortScope>,
    /// What the other ports see (the egress listener without a port; empty when there is
    /// none); None: `hosts`.
    pub default_hosts: Option<std::collections::BTreeSet<String>>,
}

impl Scope {
    pub fn includes(&self, host: &str) -> bool {
        self.hosts.as_ref().is_none_or(|h| h.contains(host))
    }

    /// `host` is visible on the outbound listener of `port`.
    pub fn includes_on(&self, host: &str, port: u32) -> bool {
        match self.ports.get(&port) {
            Some(p) => p.hosts.contains(host),
            None => match &self.default_hosts {
                Some(d) => d.contains(host),
                None => self.includes(host),
            },
        }
    }
}

fn egress_match(pattern: &str, sidecar_ns: &str, svc: &Service, domain: &str) -> bool {
    let Some((ns, host)) = pattern.split_once('/') else {
        return false;
    };
    let ns_ok = match ns {
        "*" => true,
        "~" => false,
        "." => svc.namespace == sidecar_ns,
        n => svc.namespace == n,
    };
    let host_ok = if host == "*" {
        true
    } else if let Some(suffix) = host.strip_prefix("*.") {
        svc.hostname.ends_with(&format!(".{suffix}"))
    } else {
        svc.hostname == host
            || (!host.contains('.')
                && svc.hostname == format!("{host}.{}.svc.{domain}", svc.namespace))
    };
    ns_ok && host_ok
}

/// A PeerAuthentication, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerAuthn {
    pub key: ObjectKey,
    pub namespace: String,
    /// None: namespace-wide (or mesh-wide in the root namespace).
    pub selector: Option<BTreeMap<String, String>>,
    pub mode: Option<MtlsMode>,
    pub port_modes: BTreeMap<u32, MtlsMode>,
}

/// Application protocol of a service port, as Istio derives it from the port name or
/// `appProtocol` (`http-web`, `grpc`, `tcp-db`, ...). `Unknown` ports are sniffed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
    Tls,
    Unknown,
}

impl Protocol {
    pub fn from_name(name: &str, app_protocol: &str) -> Protocol {
        let p = if !app_protocol.is_empty() {
            app_protocol
        } else {
            name.split('-').next().unwrap_or("")
        };
        match p.to_ascii_lowercase().as_str() {
            "http" | "http1" | "http/1.1" => Protocol::Http,
            "http2" | "h2c" | "kubernetes.io/h2c" => Protocol::Http2,
            "grpc" | "grpc-web" => Protocol::Grpc,
            "tcp" | "mongo" | "mysql" | "redis" => Protocol::Tcp,
            "https" | "tls" => Protocol::Tls,
            _ => Protocol::Unknown,
        }
    }
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ServicePort {
    pub name: String,
    pub port: u32,
    pub protocol: Protocol,
    /// Port on the workload when the endpoint has no named port mapping.
    pub target_port: Option<u32>,
    /// Named target port (`targetPort: http`), resolved per endpoint.
    pub target_port_name: Option<String>,
}

/// How a service's endpoints are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Resolution {
    /// Endpoints are listed (EDS).
    Static,
    /// Envoy resolves the endpoint names by DNS and uses every address (STRICT_DNS).
    Dns,
    /// Envoy resolves the one endpoint name and uses its first address for new
    /// connections (LOGICAL_DNS; ServiceEntry `DNS_ROUND_ROBIN`, as Istio).
    DnsRoundRobin,
    /// Envoy forwards to the original destination address.
    Passthrough,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Endpoint {
    pub address: String,
    /// Port per service port name (WorkloadEntry `ports`, Endpoints port names).
    pub ports: BTreeMap<String, u32>,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub namespace: String,
    pub weight: u32,
    /// Where it came from (`WorkloadEntry ns/name`, `Pod ns/name`, `Endpoints ns/name`).
    pub origin: String,
    /// `region/zone/subzone` (empty parts unknown): WorkloadEntry `locality`, else the
    /// `topology.kubernetes.io/region|zone` and `topology.istio.io/subzone` labels, else
    /// Istio's `istio-locality` label (`region.zone.subzone`).
    pub locality: String,
    /// The network it is on: WorkloadEntry `network`, else the `topology.istio.io/network`
    /// label, else the mesh's own network.
    pub network: String,
}

/// A config error on `r` (its file and name) at `field`, with the object to blame.
pub(crate) fn blame(
    r: &Resource,
    field: impl Into<String>,
    reason: impl Into<String>,
) -> (ObjectKey, ConfigError) {
    (
        r.key.clone(),
        ConfigError {
            file: r.origin.clone(),
            object: r.key.to_string(),
            field: field.into(),
            reason: reason.into(),
        },
    )
}

/// Where a proxy's endpoints are computed from (see `World::locality_class`): its
/// locality (`region/zone/subzone`) and its values of the `failoverPriority` label keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    pub locality: String,
    pub labels: BTreeMap<String, String>,
}

/// The value of label `key` of a workload, as `failoverPriority` compares them: the
/// topology keys are read from its locality and network (as Istio adds them to its
/// endpoints' and proxies' labels), any other from its labels; missing is empty.
pub fn topology_label<'a>(
    key: &str,
    locality: &'a str,
    network: &'a str,
    labels: &'a BTreeMap<String, String>,
) -> &'a str {
    let part = |i: usize| locality.split('/').nth(i).unwrap_or("");
    match key {
        "topology.kubernetes.io/region" => part(0),
        "topology.kubernetes.io/zone" => part(1),
        "topology.istio.io/subzone" => part(2),
        "topology.istio.io/network" => network,
        _ => labels.get(key).map(String::as_str).unwrap_or(""),
    }
}

/// A workload's locality from its labels (see `Endpoint::locality`), `explicit` first.
pub fn locality_of(explicit: &str, labels: &BTreeMap<String, String>) -> String {
    if !explicit.is_empty() {
        return explicit.to_string();
    }
    let l = |k: &str| labels.get(k).cloned().unwrap_or_default();
    let (r, z, s) = (
        l("topology.kubernetes.io/region"),
        l("topology.kubernetes.io/zone"),
        l("topology.istio.io/subzone"),
    );
    if !(r.is_empty() && z.is_empty() && s.is_empty()) {
        return format!("{r}/{z}/{s}").trim_end_matches('/').to_string();
    }
    l("istio-locality").replace('.', "/")
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Service {
    /// Fully qualified host name.
    pub hostname: String,
    pub name: String,
    pub namespace: String,
    pub vips: Vec<String>,
    pub ports: Vec<ServicePort>,
    pub resolution: Resolution,
    pub mesh_external: bool,
    pub endpoints: Vec<Endpoint>,
    /// The object that defined it.
    pub origin: ObjectKey,
    /// A ServiceEntry host without addresses: the virtual IP sidecar DNS answers with
    /// (allocated from the mesh's range, stable across restarts).
    pub auto_vip: Option<String>,
}

impl Endpoint {
    /// The workload runs a sidecar that speaks Istio mTLS (`security.istio.io/tlsMode: istio`,
    /// the label Istio's injector sets; add it to WorkloadEntries and Pods by hand).
    pub fn in_mesh(&self) -> bool {
        self.labels
            .get("security.istio.io/tlsMode")
            .map(String::as_str)
            == Some("istio")
    }
}

impl Service {
    /// A Kubernetes service's other names, valid from any namespace: `name.ns.svc`,
    /// `name.ns`, and the global `name.ns.<suffix>` (none for other services).
    pub fn kube_names(&self, mesh: &MeshConfig) -> Vec<String> {
        let suffix = format!(".{}.svc.{}", self.namespace, mesh.domain);
        let Some(short) = self.hostname.strip_suffix(&suffix) else {
            return Vec::new();
        };
        let ns = &self.namespace;
        let mut v = vec![format!("{short}.{ns}.svc"), format!("{short}.{ns}")];
        if !mesh.global_suffix.is_empty() {
            v.push(format!("{short}.{ns}.{}", mesh.global_suffix));
        }
        v
    }

    pub fn port(&self, n: u32) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == n)
    }
    /// The workload port an endpoint listens on for a service port.
    pub fn endpoint_port(&self, sp: &ServicePort, ep: &Endpoint) -> u32 {
        if let Some(p) = ep.ports.get(&sp.name) {
            return *p;
        }
        if let Some(n) = &sp.target_port_name {
            if let Some(p) = ep.ports.get(n) {
                return *p;
            }
        }
        sp.target_port.unwrap_or(sp.port)
    }
}

/// A DestinationRule resolved to its host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestRule {
    pub key: ObjectKey,
    pub host: String,
    pub spec: networking::DestinationRule,
}

/// A VirtualService with its hosts and destinations resolved to FQDNs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VirtualSvc {
    pub key: ObjectKey,
    /// FQDN hosts this VirtualService applies to.
    pub hosts: Vec<String>,
    /// Spec with every destination host rewritten to its FQDN.
    pub spec: networking::VirtualService,
    /// What it is bound to: `mesh` (sidecars) and gateways as `namespace/name`.
    pub gateways: Vec<String>,
    /// For an HTTPRoute, each `http` route's place in the Gateway API's precedence, as
    /// routes of several HTTPRoutes for one host are ordered (see `RouteOrder`); empty for
    /// a VirtualService (its routes keep their order, before any HTTPRoute's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub order: Vec<RouteOrder>,
}

/// The Gateway API's route precedence, smallest first: path kind (exact, prefix, regex),
/// longer prefix (inverted length), a method (0), more headers and more query parameters
/// (inverted counts), then the route (`namespace/name`), its rule and match.
pub type RouteOrder = (u8, u64, u8, u64, u64, String, u32, u32);

impl VirtualSvc {
    /// Bound to the gateway `ns/name`.
    pub fn binds(&self, gateway: &str) -> bool {
        self.gateways.iter().any(|g| g == gateway)
    }
}

/// A Gateway: the standalone proxies it selects (by labels, in any namespace, as Istio
/// does by default) and its servers, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GatewayCfg {
    pub key: ObjectKey,
    pub selector: BTreeMap<String, String>,
    /// Selects proxies of its own namespace only (a Kubernetes Gateway's listener).
    pub namespace_only: bool,
    pub servers: Vec<networking::GatewayServer>,
}

impl GatewayCfg {
    /// `namespace/name`, as VirtualServices bind it.
    pub fn name(&self) -> String {
        format!("{}/{}", self.key.namespace, self.key.name)
    }
}

/// What differs between two Worlds' route inputs (see `World::route_change`).
#[derive(Debug, PartialEq)]
pub enum RouteChange {
    None,
    /// Only the virtual hosts of these hosts can differ.
    Hosts(std::collections::BTreeSet<String>),
    All,
}

/// How a World differs from the previous one: what generation and the consistency check
/// can skip (see `World::change_since`).
#[derive(Debug, PartialEq)]
pub struct Change {
    pub routes: RouteChange,
    /// Only VirtualServices differ: everything not derived from them is the same.
    pub only_virtual_services: bool,
}

/// One immutable, internally consistent snapshot of everything translation needs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct World {
    /// Increases with every rebuild.
    pub version: u64,
    pub mesh: MeshConfig,
    /// Services by FQDN.
    pub services: BTreeMap<String, Arc<Service>>,
    /// VirtualServices in (namespace, name) order; the first to claim a host wins it.
    pub virtual_services: Vec<Arc<VirtualSvc>>,
    /// DestinationRules by host FQDN.
    pub destination_rules: BTreeMap<String, Arc<DestRule>>,
    /// PeerAuthentications, in (namespace, name) order.
    pub peer_authn: Vec<Arc<PeerAuthn>>,
    /// Sidecars, in (namespace, name) order.
    pub sidecars: Vec<Arc<SidecarCfg>>,
    /// Gateways, in (namespace, name) order.
    pub gateways: Vec<Arc<GatewayCfg>>,
    /// Each network's east-west gateways (address, port): Services labelled
    /// `topology.istio.io/network` with port 15443 and external addresses.
    pub network_gateways: BTreeMap<String, Vec<(String, u32)>>,
    /// Some DestinationRule has outlier detection: load balancing is locality-aware, and
    /// endpoints depend on the proxy's locality (see `locality_class`).
    pub locality_aware: bool,
    /// The label keys DestinationRules' `failoverPriority` compare between a proxy and the
    /// endpoints (those without a `=value`): endpoints depend on the proxy's values of them.
    pub failover_keys: Vec<String>,
    /// Endpoints are on more than one network (see `network_class`).
    pub multi_network: bool,
    /// AuthorizationPolicies, in (namespace, name) order.
    pub authz: Vec<Arc<AuthzPolicy>>,
    /// RequestAuthentications, in (namespace, name) order.
    pub request_authn: Vec<Arc<RequestAuthn>>,
    /// Fetched JSON Web Key Sets by URI (`Err`: the last fetch failed, with why).
    pub jwks: BTreeMap<String, Result<Arc<str>, String>>,
    /// Every accepted object (for /debug/configz).
    #[serde(skip)]
    pub objects: BTreeMap<ObjectKey, Arc<Resource>>,
    /// Every config error: parse, validation and cross-reference.
    pub errors: Vec<ConfigError>,
    /// Endpoint address → (service host, endpoint index), built on first use.
    #[serde(skip)]
    pub by_address: std::sync::OnceLock<HashMap<String, Vec<(String, usize)>>>,
}

impl World {
    /// How what route generation reads (services without their endpoints, VirtualServices,
    /// DestinationRules, Sidecars, mesh settings) differs from `o`: endpoint churn changes
    /// none of it. When only VirtualServices differ,
    /// only the virtual hosts of the hosts they name (before or after) can differ: a host's
    /// virtual host reads the first VirtualService naming it, plus services,
    /// DestinationRules and the mesh settings, which are then equal.
    pub fn route_change(&self, o: &World) -> RouteChange {
        let rest_same = self.mesh == o.mesh
            && self.destination_rules == o.destination_rules
            && self.sidecars == o.sidecars
            && self.services.len() == o.services.len()
            && self
                .services
                .iter()
                .zip(&o.services)
                .all(|((ka, a), (kb, b))| {
                    ka == kb
                        && (Arc::ptr_eq(a, b)
                            || (a.hostname == b.hostname
                                && a.name == b.name
                                && a.namespace == b.namespace
                                && a.vips == b.vips
                                && a.ports == b.ports
                                && a.resolution == b.resolution
                                && a.mesh_external == b.mesh_external
                                && a.origin == b.origin))
                });
        if !rest_same {
            return RouteChange::All;
        }
        if self.virtual_services == o.virtual_services {
            return RouteChange::None;
        }
        let by_key = |w: &'_ World| -> BTreeMap<ObjectKey, Arc<VirtualSvc>> {
            w.virtual_services
                .iter()
                .map(|v| (v.key.clone(), v.clone()))
                .collect()
        };
        let (mine, theirs) = (by_key(self), by_key(o));
        let mut hosts = std::collections::BTreeSet::new();
        for key in mine.keys().chain(theirs.keys()) {
            let (a, b) = (mine.get(key), theirs.get(key));
            let same = match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                _ => false,
            };
            if !same {
                for v in a.into_iter().chain(b) {
                    hosts.extend(v.hosts.iter().cloned());
                }
            }
        }
        RouteChange::Hosts(hosts)
    }

    /// What differs from `prev` (everything, without one).
    pub fn change_since(&self, prev: Option<&World>) -> Change {
        match prev {
            Some(p) => Change {
                routes: self.route_change(p),
                only_virtual_services: self.only_virtual_services_differ(p),
            },
            None => Change {
                routes: RouteChange::All,
                only_virtual_services: false,
            },
        }
    }

    /// Whether the two Worlds differ in VirtualServices only: a World is made from its
    /// objects and the mesh settings alone, so everything not derived from VirtualServices
    /// (clusters, endpoints, secrets) is the same for both.
    pub fn only_virtual_services_differ(&self, o: &World) -> bool {
        use crate::api::Kind;
        if self.mesh != o.mesh {
            return false;
        }
        let vs = |k: &ObjectKey| k.kind == Kind::VirtualService;
        let (mut a, mut b) = (self.objects.iter().peekable(), o.objects.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => return true,
                (Some((ka, _)), None) => {
                    if !vs(ka) {
                        return false;
                    }
                    a.next();
                }
                (None, Some((kb, _))) => {
                    if !vs(kb) {
                        return false;
                    }
                    b.next();
                }
                (Some((ka, ra)), Some((kb, rb))) => match ka.cmp(kb) {
                    std::cmp::Ordering::Less => {
                        if !vs(ka) {
                            return false;
                        }
                        a.next();
                    }
                    std::cmp::Ordering::Greater => {
                        if !vs(kb) {
                            return false;
                        }
                        b.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if !vs(ka) && !Arc::ptr_eq(ra, rb) && ra != rb {
                            return false;
                        }
                        a.next();
                        b.next();
                    }
                },
            }
        }
    }

    /// The label keys that can change what a proxy's routes look like: those used by
    /// VirtualService `sourceLabels` and by Sidecar workload selectors. Route generation is
    /// memoized per namespace and these labels only, so pods that differ in other labels
    /// share one route class.
    pub fn route_label_keys(&self) -> std::collections::BTreeSet<String> {
        let mut keys = std::collections::BTreeSet::new();
        for vs in &self.virtual_services {
            for h in &vs.spec.http {
                for m in &h.matches {
                    keys.extend(m.source_labels.keys().cloned());
                }
            }
        }
        for sc in &self.sidecars {
            if let Some(sel) = &sc.selector {
                keys.extend(sel.keys().cloned());
            }
        }
        keys
    }

    /// The Sidecar that applies to a workload: one selecting it in its namespace, else its
    /// namespace's default, else the mesh default in the root namespace.
    pub fn sidecar_for(
        &self,
        ns: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<&Arc<SidecarCfg>> {
        self.sidecars
            .iter()
            .find(|s| {
                s.namespace == ns
                    && s.selector
                        .as_ref()
                        .is_some_and(|sel| !sel.is_empty() && selects(sel, labels))
            })
            .or_else(|| {
                self.sidecars
                    .iter()
                    .find(|s| s.namespace == ns && s.selector.as_ref().is_none_or(|s| s.is_empty()))
            })
            .or_else(|| {
                self.sidecars.iter().find(|s| {
                    s.namespace == self.mesh.root_namespace
                        && s.selector.as_ref().is_none_or(|s| s.is_empty())
                })
            })
    }

    /// Where a proxy's endpoints are computed from: its locality and its values of the
    /// `failoverPriority` labels, when some DestinationRule makes load balancing
    /// locality-aware (outlier detection, as in Istio); else None, and every proxy of a
    /// scope shares one set of endpoints.
    pub fn locality_class(&self, proxy: &Proxy) -> Option<Origin> {
        if !self.locality_aware || (proxy.locality.is_empty() && self.failover_keys.is_empty()) {
            return None;
        }
        let network = self.proxy_network(proxy);
        Some(Origin {
            locality: proxy.locality.clone(),
            labels: self
                .failover_keys
                .iter()
                .map(|k| {
                    let v = topology_label(k, &proxy.locality, network, &proxy.labels);
                    (k.clone(), v.to_string())
                })
                .collect(),
        })
    }

    /// The network a proxy is on: node metadata `NETWORK`, else its
    /// `topology.istio.io/network` label, else the mesh's.
    pub fn proxy_network<'p>(&'p self, proxy: &'p Proxy) -> &'p str {
        if !proxy.network.is_empty() {
            proxy.network.as_str()
        } else {
            proxy
                .labels
                .get("topology.istio.io/network")
                .map(String::as_str)
                .unwrap_or(&self.mesh.network)
        }
    }

    /// The network a proxy's endpoints are computed for: its own, when endpoints are on
    /// more than one network (then those of other networks are reached through their
    /// network's gateway); else None.
    pub fn network_class<'p>(&'p self, proxy: &'p Proxy) -> Option<&'p str> {
        self.multi_network.then(|| self.proxy_network(proxy))
    }

    /// What a workload sees of the mesh.
    pub fn scope(&self, ns: &str, labels: &BTreeMap<String, String>) -> Scope {
        let Some(sc) = self.sidecar_for(ns, labels) else {
            return Scope {
                sidecar: None,
                hosts: None,
                allow_any: self.mesh.allow_any,
                ports: BTreeMap::new(),
                default_hosts: None,
            };
        };
        let allow_any = sc.allow_any.unwrap_or(self.mesh.allow_any);
        if sc.egress_hosts.is_empty() {
            return Scope {
                sidecar: Some(sc.key.clone()),
                hosts: None,
                allow_any,
                ports: BTreeMap::new(),
                default_hosts: None,
            };
        }
        let mut union = std::collections::BTreeSet::new();
        let mut ports = BTreeMap::new();
        let mut default_hosts = std::collections::BTreeSet::new();
        for e in &sc.egress {
            let set = self.visible(sc, &e.hosts);
            union.extend(set.iter().cloned());
            match e.port {
                Some(p) => {
                    ports.insert(
                        p,
                        PortScope {
                            hosts: set,
                            bind: (!e.bind.is_empty())
                                .then(|| e.bind.clone())
                                .or_else(|| e.capture_none.then(|| "127.0.0.1".to_string())),
                            bind_to_port: e.capture_none,
                        },
                    );
                }
                None => default_hosts = set,
            }
        }
        Scope {
            sidecar: Some(sc.key.clone()),
            hosts: Some(union),
            allow_any,
            ports,
            default_hosts: Some(default_hosts),
        }
    }

    /// The hosts egress `patterns` of a Sidecar see, with every destination a visible
    /// VirtualService routes or mirrors to.
    fn visible(&self, sc: &SidecarCfg, patterns: &[String]) -> std::collections::BTreeSet<String> {
        let mut hosts: std::collections::BTreeSet<String> = self
            .services
            .values()
            .filter(|svc| {
                patterns
                    .iter()
                    .any(|p| egress_match(p, &sc.namespace, svc, &self.mesh.domain))
            })
            .map(|svc| svc.hostname.clone())
            .collect();
        // Whatever a visible VirtualService routes or mirrors to is visible too.
        for vs in &self.virtual_services {
            if vs.hosts.iter().any(|h| hosts.contains(h)) {
                let dests = vs.spec.http.iter().flat_map(|h| {
                    h.route
                        .iter()
                        .map(|d| d.destination.host.clone())
                        .chain(h.mirror.iter().map(|m| m.host.clone()))
                        .chain(h.mirrors.iter().map(|m| m.destination.host.clone()))
                });
                let tcp = vs
                    .spec
                    .tcp
                    .iter()
                    .flat_map(|t| t.route.iter().map(|d| d.destination.host.clone()));
                hosts.extend(dests.chain(tcp).collect::<Vec<_>>());
            }
        }
        hosts
    }

    /// The mutual TLS mode a workload's port accepts: workload policy (port level, then
    /// workload level), namespace policy, mesh policy, else PERMISSIVE. UNSET inherits.
    pub fn mtls_mode(&self, ns: &str, labels: &BTreeMap<String, String>, port: u32) -> MtlsMode {
        let workload = self.peer_authn.iter().find(|p| {
            p.namespace == ns
                && p.selector
                    .as_ref()
                    .is_some_and(|s| !s.is_empty() && selects(s, labels))
        });
        if let Some(p) = workload {
            if let Some(m) = p.port_modes.get(&port) {
                return *m;
            }
            if let Some(m) = p.mode {
                return m;
            }
        }
        let unselected = |n: &str| {
            self.peer_authn
                .iter()
                .find(|p| p.namespace == n && p.selector.as_ref().is_none_or(|s| s.is_empty()))
                .and_then(|p| p.mode)
        };
        unselected(ns)
            .or_else(|| unselected(&self.mesh.root_namespace))
            .unwrap_or(MtlsMode::Permissive)
    }

    /// The VirtualService that owns `host`, if any (first by namespace/name).
    pub fn virtual_service_for(&self, host: &str) -> Option<&Arc<VirtualSvc>> {
        self.virtual_services
            .iter()
            .find(|v| v.hosts.iter().any(|h| h == host))
    }
    /// Builds the address index `instances_of` uses (once; later calls are free).
    pub fn index_addresses(&self) -> &HashMap<String, Vec<(String, usize)>> {
        self.by_address.get_or_init(|| {
            let mut m: HashMap<String, Vec<(String, usize)>> = HashMap::new();
            for (host, s) in &self.services {
                for (i, e) in s.endpoints.iter().enumerate() {
                    m.entry(e.address.clone())
                        .or_default()
                        .push((host.clone(), i));
                }
            }
            m
        })
    }

    /// Services whose endpoints include the given address (the proxy's own instances).
    pub fn instances_of<'a>(
        &'a self,
        ip: &'a str,
    ) -> impl Iterator<Item = (&'a Service, &'a Endpoint)> + 'a {
        let index = self.index_addresses();
        index.get(ip).into_iter().flatten().map(move |(host, i)| {
            let s = &*self.services[host];
            (s, &s.endpoints[*i])
        })
    }
}

/// What the control plane knows of a connected proxy (from its node id and metadata).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Proxy {
    pub id: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<String>,
    pub service_account: String,
    pub workload_name: String,
    /// The proxy authenticated and can get certificates over SDS: it may speak mTLS.
    /// Without it, no config refers to a secret it would wait for in vain.
    pub mtls: bool,
    /// A standalone gateway (node type `router`), configured by Gateway resources rather
    /// than as a sidecar.
    pub router: bool,
    /// The proxy answers its workload's DNS (node metadata `DNS_CAPTURE: "true"`, as
    /// Istio's `ISTIO_META_DNS_CAPTURE`): it gets the DNS listener.
    pub dns: bool,
    /// `region/zone/subzone` (the node's locality, else its labels'): where locality-aware
    /// load balancing starts from.
    pub locality: String,
    /// Node metadata `NETWORK` (Istio's `ISTIO_META_NETWORK`); empty: the mesh's network.
    pub network: String,
}

impl Proxy {
    /// Parse an Istio node id `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local` plus metadata.
    pub fn from_node(id: &str, meta: &BTreeMap<String, serde_json::Value>) -> Proxy {
        let mut p = Proxy {
            id: id.to_string(),
            ..Default::default()
        };
        let parts: Vec<&str> = id.split('~').collect();
        if parts.len() == 4 {
            p.router = parts[0] == "router";
            p.ips = vec![parts[1].to_string()];
            if let Some((pod, ns)) = parts[2].rsplit_once('.') {
                p.workload_name = pod.to_string();
                p.namespace = ns.to_string();
            }
        }
        let s = |k: &str| meta.get(k).and_then(|v| v.as_str()).map(str::to_string);
        if let Some(ns) = s("NAMESPACE") {
            p.namespace = ns;
        }
        if let Some(sa) = s("SERVICE_ACCOUNT") {
            p.service_account = sa;
        }
        if let Some(w) = s("WORKLOAD_NAME") {
            p.workload_name = w;
        }
        p.dns = s("DNS_CAPTURE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        p.network = s("NETWORK").unwrap_or_default();
        if let Some(ips) = s("INSTANCE_IPS") {
            p.ips = ips
                .split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect();
        }
        if let Some(serde_json::Value::Object(l)) = meta.get("LABELS") {
            p.labels = l
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect();
        }
        if p.namespace.is_empty() {
            p.namespace = "default".into();
        }
        p
    }
}

/// `labels` contain every pair of `selector`.
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(yaml: &str) -> World {
        let (res, errs) = crate::api::parse_file("t.yaml", yaml);
        assert!(errs.is_empty(), "{errs:?}");
        let mut ix = Index::new(MeshConfig::default());
        ix.apply_file("t.yaml", res, vec![]);
        let w = ix.snapshot();
        assert!(w.errors.is_empty(), "{:?}", w.errors);
        w
    }

    fn entry(host: &str) -> String {
        format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {n}}}\nspec:\n  hosts: [{host}]\n  resolution: DNS\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n---\n", n = host.replace('.', "-"))
    }

    #[test]
    fn auto_allocated_addresses_are_stable_and_distinct() {
        let hosts: Vec<String> = (0..300).map(|i| format!("h{i}.example")).collect();
        let all: String = hosts.iter().map(|h| entry(h)).collect();
        let vip = |w: &World, h: &str| w.services[h].auto_vip.clone().unwrap();
        let a = world(&all);
        let b = world(&all);
        let mut seen = std::collections::BTreeSet::new();
        for h in &hosts {
            assert_eq!(vip(&a, h), vip(&b, h), "same input, same address");
            assert!(vip(&a, h).starts_with("240.240."), "{}", vip(&a, h));
            assert!(seen.insert(vip(&a, h)), "distinct");
        }
        // Hosts coming and going leave the others' addresses (no collisions on the way).
        let fewer: String = hosts[..150].iter().map(|h| entry(h)).collect();
        let c = world(&fewer);
        let kept = hosts[..150]
            .iter()
            .filter(|h| vip(&a, h) == vip(&c, h))
            .count();
        assert!(kept >= 145, "{kept} of 150 kept their address");
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn mtls_mode_precedence_port_workload_namespace_mesh_default() {
        let none = world("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n");
        assert_eq!(
            none.mtls_mode("default", &labels(&[]), 80),
            MtlsMode::Permissive,
            "default PERMISSIVE"
        );
        let w = world(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: mesh, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n---\n\
             apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: ns, namespace: legacy}\nspec: {mtls: {mode: DISABLE}}\n---\n\
             apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: unset, namespace: inherit}\nspec: {mtls: {mode: UNSET}}\n---\n\
             apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: app, namespace: legacy}\nspec:\n  selector: {matchLabels: {app: web}}\n  mtls: {mode: PERMISSIVE}\n  portLevelMtls: {\"9000\": {mode: STRICT}}\n",
        );
        assert_eq!(
            w.mtls_mode("default", &labels(&[]), 80),
            MtlsMode::Strict,
            "mesh-wide"
        );
        assert_eq!(
            w.mtls_mode("inherit", &labels(&[]), 80),
            MtlsMode::Strict,
            "UNSET inherits the mesh"
        );
        assert_eq!(
            w.mtls_mode("legacy", &labels(&[]), 80),
            MtlsMode::Disable,
            "namespace beats mesh"
        );
        assert_eq!(
            w.mtls_mode("legacy", &labels(&[("app", "web")]), 80),
            MtlsMode::Permissive,
            "workload beats namespace"
        );
        assert_eq!(
            w.mtls_mode("legacy", &labels(&[("app", "web")]), 9000),
            MtlsMode::Strict,
            "port beats workload"
        );
    }

    #[test]
    fn sidecar_precedence_and_scope() {
        let w = world(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: mesh, namespace: istio-system}\nspec: {egress: [{hosts: [\"*/*\"]}]}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: ns, namespace: a}\nspec: {egress: [{hosts: [\"./*\"]}]}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: web, namespace: a}\nspec:\n  workloadSelector: {labels: {app: web}}\n  egress: [{hosts: [\"b/*.b.svc.cluster.local\"]}]\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: a}\nspec: {ports: [{name: http, port: 80}]}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: t, namespace: b}\nspec: {ports: [{name: http, port: 80}]}\n",
        );
        assert_eq!(
            w.sidecar_for("a", &labels(&[("app", "web")]))
                .unwrap()
                .key
                .name,
            "web"
        );
        assert_eq!(w.sidecar_for("a", &labels(&[])).unwrap().key.name, "ns");
        assert_eq!(w.sidecar_for("c", &labels(&[])).unwrap().key.name, "mesh");
        let web = w.scope("a", &labels(&[("app", "web")]));
        assert!(web.includes("t.b.svc.cluster.local") && !web.includes("s.a.svc.cluster.local"));
        let ns = w.scope("a", &labels(&[]));
        assert!(ns.includes("s.a.svc.cluster.local") && !ns.includes("t.b.svc.cluster.local"));
        assert!(w.scope("c", &labels(&[])).includes("t.b.svc.cluster.local"));
    }
}

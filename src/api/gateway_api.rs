//! The Kubernetes Gateway API (`gateway.networking.k8s.io` v1): Gateway and HTTPRoute, the
//! fields of the standard channel. pilotfish turns them into Istio Gateways and
//! VirtualServices (`model::gateway_api`), as istiod does; fields it does not translate
//! are refused by name (`validate.rs`).
use super::networking::spec;
use serde::{Deserialize, Serialize};

spec! {
    /// Gateway: listeners a gateway proxy opens.
    pub struct KubeGateway {
        #[serde(default)] pub gateway_class_name: String,
        #[serde(default)] pub listeners: Vec<Listener>,
        #[serde(default)] pub addresses: Vec<serde_json::Value>,
        pub infrastructure: Option<serde_json::Value>,
        pub backend_tls: Option<serde_json::Value>,
        pub allowed_listeners: Option<serde_json::Value>,
    }
}

spec! {
    pub struct Listener {
        #[serde(default)] pub name: String,
        pub hostname: Option<String>,
        pub port: u32,
        #[serde(default)] pub protocol: String,
        pub tls: Option<ListenerTls>,
        pub allowed_routes: Option<AllowedRoutes>,
    }
}

spec! {
    pub struct ListenerTls {
        pub mode: Option<String>,
        #[serde(default)] pub certificate_refs: Vec<SecretRef>,
        #[serde(default)] pub options: std::collections::BTreeMap<String, String>,
        pub frontend_validation: Option<serde_json::Value>,
    }
}

spec! {
    pub struct SecretRef {
        pub group: Option<String>,
        pub kind: Option<String>,
        #[serde(default)] pub name: String,
        pub namespace: Option<String>,
    }
}

spec! {
    pub struct AllowedRoutes {
        pub namespaces: Option<RouteNamespaces>,
        #[serde(default)] pub kinds: Vec<RouteGroupKind>,
    }
}

spec! {
    pub struct RouteNamespaces {
        pub from: Option<String>,
        pub selector: Option<serde_json::Value>,
    }
}

spec! {
    pub struct RouteGroupKind {
        pub group: Option<String>,
        #[serde(default)] pub kind: String,
    }
}

spec! {
    /// HTTPRoute: how HTTP requests arriving at its parent Gateways are routed.
    pub struct HttpRouteSpec {
        #[serde(default)] pub parent_refs: Vec<ParentRef>,
        #[serde(default)] pub hostnames: Vec<String>,
        #[serde(default)] pub rules: Vec<HttpRouteRule>,
    }
}

spec! {
    pub struct ParentRef {
        pub group: Option<String>,
        pub kind: Option<String>,
        pub namespace: Option<String>,
        #[serde(default)] pub name: String,
        pub section_name: Option<String>,
        pub port: Option<u32>,
    }
}

spec! {
    pub struct HttpRouteRule {
        pub name: Option<String>,
        #[serde(default)] pub matches: Vec<HttpRouteMatch>,
        #[serde(default)] pub filters: Vec<HttpRouteFilter>,
        #[serde(default)] pub backend_refs: Vec<HttpBackendRef>,
        pub timeouts: Option<HttpRouteTimeouts>,
        pub session_persistence: Option<serde_json::Value>,
        pub retry: Option<serde_json::Value>,
    }
}

spec! {
    pub struct HttpRouteMatch {
        pub path: Option<HttpPathMatch>,
        #[serde(default)] pub headers: Vec<HttpValueMatch>,
        #[serde(default)] pub query_params: Vec<HttpValueMatch>,
        pub method: Option<String>,
    }
}

spec! {
    pub struct HttpPathMatch {
        #[serde(rename = "type")] pub kind: Option<String>,
        pub value: Option<String>,
    }
}

spec! {
    /// A header or query parameter match.
    pub struct HttpValueMatch {
        #[serde(rename = "type")] pub kind: Option<String>,
        #[serde(default)] pub name: String,
        #[serde(default)] pub value: String,
    }
}

spec! {
    pub struct HttpRouteFilter {
        #[serde(rename = "type", default)] pub kind: String,
        pub request_header_modifier: Option<HeaderModifier>,
        pub response_header_modifier: Option<HeaderModifier>,
        pub request_redirect: Option<RequestRedirect>,
        pub url_rewrite: Option<UrlRewrite>,
        pub request_mirror: Option<RequestMirror>,
        pub extension_ref: Option<serde_json::Value>,
        pub cors: Option<serde_json::Value>,
        pub external_auth: Option<serde_json::Value>,
    }
}

spec! {
    pub struct HeaderModifier {
        #[serde(default)] pub set: Vec<HttpHeader>,
        #[serde(default)] pub add: Vec<HttpHeader>,
        #[serde(default)] pub remove: Vec<String>,
    }
}

spec! {
    pub struct HttpHeader {
        #[serde(default)] pub name: String,
        #[serde(default)] pub value: String,
    }
}

spec! {
    pub struct RequestRedirect {
        pub scheme: Option<String>,
        pub hostname: Option<String>,
        pub path: Option<PathModifier>,
        pub port: Option<u32>,
        pub status_code: Option<u32>,
    }
}

spec! {
    pub struct PathModifier {
        #[serde(rename = "type", default)] pub kind: String,
        pub replace_full_path: Option<String>,
        pub replace_prefix_match: Option<String>,
    }
}

spec! {
    pub struct UrlRewrite {
        pub hostname: Option<String>,
        pub path: Option<PathModifier>,
    }
}

spec! {
    pub struct RequestMirror {
        pub backend_ref: BackendRef,
        pub percent: Option<u32>,
        pub fraction: Option<serde_json::Value>,
    }
}

spec! {
    pub struct BackendRef {
        pub group: Option<String>,
        pub kind: Option<String>,
        #[serde(default)] pub name: String,
        pub namespace: Option<String>,
        pub port: Option<u32>,
    }
}

spec! {
    pub struct HttpBackendRef {
        pub group: Option<String>,
        pub kind: Option<String>,
        #[serde(default)] pub name: String,
        pub namespace: Option<String>,
        pub port: Option<u32>,
        pub weight: Option<u32>,
        #[serde(default)] pub filters: Vec<HttpRouteFilter>,
    }
}

spec! {
    pub struct HttpRouteTimeouts {
        pub request: Option<String>,
        pub backend_request: Option<String>,
    }
}

//! Istio and Kubernetes resource types, parsing from multi-document YAML/JSON, and
//! validation. No IO: callers hand in the file name and its text.
//!
//! ```text
//!  text ──split──► documents ──serde (path-tracking)──► Resource ──validate──► ok | ConfigError
//! ```
//! A document that fails is reported with file, object and field path; the others in the
//! same file still load.

pub mod crds;
pub mod gateway_api;
pub mod k8s;
pub mod mesh;
pub mod networking;
pub mod security;
mod validate;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

pub use validate::{parse_duration, validate};

/// Istio's `StringMatch`: exactly one of exact, prefix, regex.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

/// Istio's `Percent` message: `{value: 12.5}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    pub value: f64,
}

/// The kinds pilotfish reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    Gateway,
    ServiceEntry,
    WorkloadEntry,
    Sidecar,
    PeerAuthentication,
    AuthorizationPolicy,
    RequestAuthentication,
    Service,
    Endpoints,
    EndpointSlice,
    Pod,
    Namespace,
    Secret,
    /// `gateway.networking.k8s.io` Gateway.
    #[serde(rename = "Gateway.gateway.networking.k8s.io")]
    KubeGateway,
    /// `gateway.networking.k8s.io` HTTPRoute.
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
}

impl Kind {
    /// Map `apiVersion` + `kind` to a supported kind, or explain why not.
    pub fn from_type(api_version: &str, kind: &str) -> Result<Kind, String> {
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        let version = api_version.rsplit('/').next().unwrap_or("");
        let k = match (group, kind) {
            ("networking.istio.io", "VirtualService") => Kind::VirtualService,
            ("networking.istio.io", "DestinationRule") => Kind::DestinationRule,
            ("networking.istio.io", "Gateway") => Kind::Gateway,
            ("networking.istio.io", "ServiceEntry") => Kind::ServiceEntry,
            ("networking.istio.io", "WorkloadEntry") => Kind::WorkloadEntry,
            ("networking.istio.io", "Sidecar") => Kind::Sidecar,
            ("security.istio.io", "PeerAuthentication") => Kind::PeerAuthentication,
            ("security.istio.io", "AuthorizationPolicy") => Kind::AuthorizationPolicy,
            ("security.istio.io", "RequestAuthentication") => Kind::RequestAuthentication,
            ("", "Service") => Kind::Service,
            ("", "Endpoints") => Kind::Endpoints,
            ("", "Pod") => Kind::Pod,
            ("", "Namespace") => Kind::Namespace,
            ("", "Secret") => Kind::Secret,
            ("discovery.k8s.io", "EndpointSlice") => Kind::EndpointSlice,
            ("gateway.networking.k8s.io", "Gateway") => Kind::KubeGateway,
            ("gateway.networking.k8s.io", "HTTPRoute") => Kind::HttpRoute,
            _ => {
                return Err(format!(
                    "unsupported kind {kind} in apiVersion {api_version:?}"
                ))
            }
        };
        let ok = match group {
            "networking.istio.io" => matches!(version, "v1" | "v1beta1" | "v1alpha3"),
            "security.istio.io" => matches!(version, "v1" | "v1beta1"),
            "discovery.k8s.io" => version == "v1",
            "gateway.networking.k8s.io" => matches!(version, "v1" | "v1beta1"),
            _ => version == "v1",
        };
        if !ok {
            return Err(format!(
                "unsupported apiVersion {api_version:?} for kind {kind}"
            ));
        }
        Ok(k)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // As kubectl names them where Istio has a kind of the same name.
            Kind::KubeGateway => f.write_str("Gateway.gateway.networking.k8s.io"),
            Kind::HttpRoute => f.write_str("HTTPRoute"),
            k => fmt::Debug::fmt(k, f),
        }
    }
}

/// The part of Kubernetes `metadata` pilotfish uses; other metadata fields are ignored.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// Identity of a config object: kind, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A typed spec, one variant per kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Spec {
    VirtualService(networking::VirtualService),
    DestinationRule(networking::DestinationRule),
    Gateway(networking::Gateway),
    ServiceEntry(networking::ServiceEntry),
    WorkloadEntry(networking::WorkloadEntry),
    Sidecar(networking::Sidecar),
    PeerAuthentication(security::PeerAuthentication),
    AuthorizationPolicy(security::AuthorizationPolicy),
    RequestAuthentication(security::RequestAuthentication),
    Service(k8s::ServiceSpec),
    Endpoints(Vec<k8s::EndpointSubset>),
    EndpointSlice(k8s::EndpointSliceBody),
    Pod(k8s::PodBody),
    Namespace,
    Secret(k8s::SecretBody),
    KubeGateway(gateway_api::KubeGateway),
    HttpRoute(gateway_api::HttpRouteSpec),
}

/// One parsed, validated config object and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resource {
    pub key: ObjectKey,
    pub meta: ObjectMeta,
    pub spec: Spec,
    /// File the object was read from (or `kube` for the API server path).
    pub origin: String,
}

/// A user-facing config error: file, object, field path, reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    pub file: String,
    /// `Kind namespace/name`, or `document N` when the object could not be identified.
    pub object: String,
    /// Dotted field path inside the object (`spec.http[0].route[1].weight`), or empty.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.object)?;
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Largest file pilotfish reads (a guard against accidents, not a tuning knob).
pub const MAX_FILE_BYTES: usize = 16 << 20;

/// Split multi-document YAML on `---` separator lines. JSON text is one document.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut start_line = 1;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- ") {
            docs.push((start_line, std::mem::take(&mut cur)));
            start_line = i + 2;
            continue;
        }
        if t == "..." {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    docs.push((start_line, cur));
    docs.into_iter()
        .filter(|(_, d)| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

/// Parse every document of one file. Good documents come back even when others fail.
pub fn parse_file(file: &str, text: &str) -> (Vec<Resource>, Vec<ConfigError>) {
    let mut out = Vec::new();
    let mut errs = Vec::new();
    if text.len() > MAX_FILE_BYTES {
        errs.push(ConfigError {
            file: file.into(),
            object: "file".into(),
            field: String::new(),
            reason: format!(
                "file is {} bytes, over the {} byte limit",
                text.len(),
                MAX_FILE_BYTES
            ),
        });
        return (out, errs);
    }
    for (n, (line, doc)) in split_documents(text).into_iter().enumerate() {
        // JSON is YAML too, but serde_json gives better messages for real JSON; a YAML flow
        // mapping (`{apiVersion: v1, ...}`) falls through to the YAML parser.
        let value: Result<serde_json::Value, String> = match doc.trim_start().starts_with('{') {
            true => serde_json::from_str(&doc)
                .or_else(|je| serde_saphyr::from_str(&doc).map_err(|_| je.to_string())),
            false => serde_saphyr::from_str(&doc).map_err(|e| e.to_string()),
        };
        let value = match value {
            Ok(v) => v,
            Err(e) => {
                errs.push(ConfigError {
                    file: file.into(),
                    object: format!("document {} (line {line})", n + 1),
                    field: String::new(),
                    reason: format!("malformed YAML/JSON: {}", first_line(&e)),
                });
                continue;
            }
        };
        parse_value(file, n, line, value, &mut out, &mut errs);
    }
    (out, errs)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

fn parse_value(
    file: &str,
    n: usize,
    line: usize,
    value: serde_json::Value,
    out: &mut Vec<Resource>,
    errs: &mut Vec<ConfigError>,
) {
    let doc_name = || format!("document {} (line {line})", n + 1);
    let err = |object: String, field: &str, reason: String| ConfigError {
        file: file.into(),
        object,
        field: field.into(),
        reason,
    };
    let serde_json::Value::Object(mut map) = value else {
        if !value.is_null() {
            errs.push(err(
                doc_name(),
                "",
                "a document must be a mapping with apiVersion and kind".into(),
            ));
        }
        return;
    };
    let api_version = map
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let kind_s = map
        .get("kind")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    if kind_s == "List" && api_version == "v1" {
        if let Some(serde_json::Value::Array(items)) = map.remove("items") {
            for item in items {
                parse_value(file, n, line, item, out, errs);
            }
        }
        return;
    }
    if api_version.is_empty() || kind_s.is_empty() {
        let missing = if api_version.is_empty() {
            "apiVersion"
        } else {
            "kind"
        };
        errs.push(err(doc_name(), missing, "missing".into()));
        return;
    }
    let kind = match Kind::from_type(&api_version, &kind_s) {
        Ok(k) => k,
        Err(e) => {
            errs.push(err(doc_name(), "kind", e));
            return;
        }
    };
    let Some(meta_v) = map.remove("metadata").filter(|m| !m.is_null()) else {
        errs.push(err(
            format!("{kind} {}", doc_name()),
            "metadata.name",
            "missing (the document has no metadata)".into(),
        ));
        return;
    };
    let mut meta: ObjectMeta = match serde_path_to_error::deserialize(meta_v) {
        Ok(m) => m,
        Err(e) => {
            errs.push(err(
                format!("{kind} {}", doc_name()),
                &format!("metadata.{}", e.path()),
                e.inner().to_string(),
            ));
            return;
        }
    };
    if meta.namespace.is_empty() {
        meta.namespace = "default".into();
    }
    if kind == Kind::Namespace {
        meta.namespace = String::new();
    }
    let key = ObjectKey {
        kind,
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
    };
    if meta.name.is_empty() {
        errs.push(err(
            format!("{kind} {}", doc_name()),
            "metadata.name",
            "missing".into(),
        ));
        return;
    }
    let obj = key.to_string();
    // Istio objects are exactly apiVersion, kind, metadata, spec (and status from a cluster):
    // anything else is a typo that would otherwise be dropped silently.
    if matches!(
        kind,
        Kind::VirtualService
            | Kind::DestinationRule
            | Kind::Gateway
            | Kind::ServiceEntry
            | Kind::WorkloadEntry
            | Kind::Sidecar
            | Kind::PeerAuthentication
            | Kind::AuthorizationPolicy
            | Kind::RequestAuthentication
            | Kind::KubeGateway
            | Kind::HttpRoute
    ) {
        let unknown: Vec<&String> = map
            .keys()
            .filter(|k| !matches!(k.as_str(), "apiVersion" | "kind" | "spec" | "status"))
            .collect();
        if let Some(k) = unknown.first() {
            errs.push(err(
                obj,
                k,
                format!("unknown field `{k}`, expected one of apiVersion, kind, metadata, spec"),
            ));
            return;
        }
    }
    fn de<T: serde::de::DeserializeOwned>(
        v: serde_json::Value,
        prefix: &str,
    ) -> Result<T, (String, String)> {
        serde_path_to_error::deserialize(v).map_err(|e| {
            let p = e.path().to_string();
            let field = if p == "." || p.is_empty() {
                prefix.to_string()
            } else {
                format!("{prefix}.{p}")
            };
            (field, e.inner().to_string())
        })
    }
    let spec_v = map
        .remove("spec")
        .unwrap_or(serde_json::Value::Object(Default::default()));
    let body = serde_json::Value::Object(map.clone());
    let spec = match kind {
        Kind::VirtualService => de(spec_v, "spec").map(Spec::VirtualService),
        Kind::DestinationRule => de(spec_v, "spec").map(Spec::DestinationRule),
        Kind::Gateway => de(spec_v, "spec").map(Spec::Gateway),
        Kind::ServiceEntry => de(spec_v, "spec").map(Spec::ServiceEntry),
        Kind::WorkloadEntry => de(spec_v, "spec").map(Spec::WorkloadEntry),
        Kind::Sidecar => de(spec_v, "spec").map(Spec::Sidecar),
        Kind::PeerAuthentication => de(spec_v, "spec").map(Spec::PeerAuthentication),
        Kind::AuthorizationPolicy => de(spec_v, "spec").map(Spec::AuthorizationPolicy),
        Kind::RequestAuthentication => de(spec_v, "spec").map(Spec::RequestAuthentication),
        Kind::Service => de(spec_v, "spec").map(Spec::Service),
        Kind::Endpoints => de(
            map.get("subsets")
                .cloned()
                .unwrap_or_else(|| serde_json::json!([])),
            "subsets",
        )
        .map(Spec::Endpoints),
        Kind::EndpointSlice => de(body, "").map(Spec::EndpointSlice),
        Kind::Pod => {
            let mut b = body;
            b["spec"] = spec_v;
            de(b, "").map(Spec::Pod)
        }
        Kind::Namespace => Ok(Spec::Namespace),
        Kind::Secret => de(body, "").map(Spec::Secret),
        Kind::KubeGateway => de(spec_v, "spec").map(Spec::KubeGateway),
        Kind::HttpRoute => de(spec_v, "spec").map(Spec::HttpRoute),
    };
    let spec = match spec {
        Ok(s) => s,
        Err((field, reason)) => {
            errs.push(err(obj, field.trim_start_matches('.'), reason));
            return;
        }
    };
    let res = Resource {
        key,
        meta,
        spec,
        origin: file.to_string(),
    };
    let problems = validate(&res);
    if problems.is_empty() {
        out.push(res);
    } else {
        for (field, reason) in problems {
            errs.push(err(obj.clone(), &field, reason));
        }
    }
}

/// Fully qualify a host name written in an object of namespace `ns`
/// (`reviews` → `reviews.ns.svc.cluster.local`); names with a dot are taken as
/// fully qualified, as Istio does.
pub fn fqdn(host: &str, ns: &str, domain: &str) -> String {
    if host.starts_with('*') || host.contains(".svc.") || host.ends_with(".svc") {
        return host.to_string();
    }
    if host.contains('.') {
        host.to_string()
    } else {
        format!("{host}.{ns}.svc.{domain}")
    }
}

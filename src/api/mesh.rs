//! Istio's MeshConfig YAML (`--mesh-config FILE`, the `mesh` key of Istio's ConfigMap): the
//! fields pilotfish uses are read and checked; Istio fields it does not use are listed as
//! ignored (a warning each); anything else is an error naming the field.

use serde::Deserialize;
use std::collections::BTreeMap;

/// The fields pilotfish reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshFile {
    pub root_namespace: Option<String>,
    pub trust_domain: Option<String>,
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    pub path_normalization: Option<PathNormalizationCfg>,
    #[serde(default)]
    pub extension_providers: Vec<ExtensionProviderCfg>,
    /// Everything else, checked against `IGNORED`.
    #[serde(flatten)]
    pub rest: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    pub mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathNormalizationCfg {
    pub normalization: Option<String>,
}

/// One `extensionProviders` entry: an ext_authz server, or a provider kind pilotfish does
/// not use (tracing, logging: kept so CUSTOM policies naming them get a clear error).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProviderCfg {
    pub name: String,
    pub envoy_ext_authz_grpc: Option<ExtAuthzGrpcCfg>,
    pub envoy_ext_authz_http: Option<ExtAuthzHttpCfg>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BodyCfg {
    pub max_request_bytes: Option<u32>,
    #[serde(default)]
    pub allow_partial_message: bool,
    #[serde(default)]
    pub pack_as_bytes: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzGrpcCfg {
    pub service: String,
    pub port: u32,
    pub timeout: Option<String>,
    #[serde(default)]
    pub fail_open: bool,
    pub status_on_error: Option<String>,
    pub include_request_body_in_check: Option<BodyCfg>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzHttpCfg {
    pub service: String,
    pub port: u32,
    pub timeout: Option<String>,
    #[serde(default)]
    pub path_prefix: String,
    #[serde(default)]
    pub fail_open: bool,
    pub status_on_error: Option<String>,
    #[serde(default)]
    pub include_request_headers_in_check: Vec<String>,
    #[serde(default)]
    pub include_additional_headers_in_check: BTreeMap<String, String>,
    #[serde(default)]
    pub headers_to_upstream_on_allow: Vec<String>,
    #[serde(default)]
    pub headers_to_downstream_on_deny: Vec<String>,
    #[serde(default)]
    pub headers_to_downstream_on_allow: Vec<String>,
    pub include_request_body_in_check: Option<BodyCfg>,
}

/// Istio MeshConfig fields pilotfish accepts and does not use (they configure Istio's agent,
/// telemetry or features handled elsewhere).
pub const IGNORED: &[&str] = &[
    "accessLogEncoding",
    "accessLogFile",
    "accessLogFormat",
    "defaultConfig",
    "defaultProviders",
    "discoverySelectors",
    "enableAutoMtls",
    "enablePrometheusMerge",
    "enableTracing",
    "ingressClass",
    "ingressControllerMode",
    "ingressService",
    "localityLbSetting",
    "protocolDetectionTimeout",
    "trustDomainAliases",
];

/// The name of pilotfish's own ext_authz provider (no mesh config entry needed).
pub const BUILTIN_PROVIDER: &str = "pilotfish";

/// Parse a MeshConfig file: the settings, warnings (ignored fields), or errors naming fields.
pub fn parse_mesh(text: &str) -> Result<(MeshFile, Vec<String>), Vec<String>> {
    let v: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| {
        vec![format!(
            "malformed YAML: {}",
            e.to_string().lines().next().unwrap_or("")
        )]
    })?;
    let v = if v.is_null() {
        serde_json::json!({})
    } else {
        v
    };
    let m: MeshFile = serde_path_to_error::deserialize(v)
        .map_err(|e| vec![format!("{}: {}", e.path(), e.inner())])?;
    let mut errs = Vec::new();
    let mut warnings = Vec::new();
    for k in m.rest.keys() {
        if IGNORED.contains(&k.as_str()) {
            warnings.push(format!("{k}: not used by pilotfish (ignored)"));
        } else {
            errs.push(format!("{k}: unknown or unsupported MeshConfig field"));
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, p) in m.extension_providers.iter().enumerate() {
        let f = format!("extensionProviders[{i}]");
        if p.name.is_empty() {
            errs.push(format!("{f}.name: required"));
        }
        if p.name == BUILTIN_PROVIDER {
            errs.push(format!(
                "{f}.name: {BUILTIN_PROVIDER:?} is pilotfish's built-in provider"
            ));
        }
        if !names.insert(p.name.clone()) {
            errs.push(format!("{f}.name: duplicate provider {:?}", p.name));
        }
        let kinds = p.envoy_ext_authz_grpc.is_some() as usize
            + p.envoy_ext_authz_http.is_some() as usize
            + p.other.len();
        if kinds != 1 {
            errs.push(format!("{f}: exactly one provider kind must be set"));
        }
        let mut check = |kind: &str,
                         service: &str,
                         port: u32,
                         timeout: &Option<String>,
                         status: &Option<String>| {
            if service.is_empty() {
                errs.push(format!("{f}.{kind}.service: required"));
            }
            if port == 0 || port > 65535 {
                errs.push(format!("{f}.{kind}.port: {port} out of range 1-65535"));
            }
            if let Some(t) = timeout {
                if let Err(e) = super::parse_duration(t) {
                    errs.push(format!("{f}.{kind}.timeout: {e}"));
                }
            }
            if let Some(s) = status {
                match s.parse::<u32>() {
                    Ok(c) if (200..600).contains(&c) => {}
                    _ => errs.push(format!(
                        "{f}.{kind}.statusOnError: {s:?} is not an HTTP status"
                    )),
                }
            }
        };
        if let Some(g) = &p.envoy_ext_authz_grpc {
            check(
                "envoyExtAuthzGrpc",
                &g.service,
                g.port,
                &g.timeout,
                &g.status_on_error,
            );
        }
        if let Some(h) = &p.envoy_ext_authz_http {
            check(
                "envoyExtAuthzHttp",
                &h.service,
                h.port,
                &h.timeout,
                &h.status_on_error,
            );
            if !h.path_prefix.is_empty() && !h.path_prefix.starts_with('/') {
                errs.push(format!(
                    "{f}.envoyExtAuthzHttp.pathPrefix: must start with `/`"
                ));
            }
        }
    }
    if let Some(n) = m
        .path_normalization
        .as_ref()
        .and_then(|p| p.normalization.as_deref())
    {
        if !matches!(
            n,
            "NONE" | "BASE" | "DEFAULT" | "MERGE_SLASHES" | "DECODE_AND_MERGE_SLASHES"
        ) {
            errs.push(format!(
                "pathNormalization.normalization: {n:?} (expected NONE, BASE, DEFAULT, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES)"
            ));
        }
    }
    if let Some(mode) = m
        .outbound_traffic_policy
        .as_ref()
        .and_then(|o| o.mode.as_deref())
    {
        if !matches!(mode, "ALLOW_ANY" | "REGISTRY_ONLY") {
            errs.push(format!(
                "outboundTrafficPolicy.mode: {mode:?} (expected ALLOW_ANY or REGISTRY_ONLY)"
            ));
        }
    }
    if errs.is_empty() {
        Ok((m, warnings))
    } else {
        Err(errs)
    }
}

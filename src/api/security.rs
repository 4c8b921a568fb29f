//! `security.istio.io` resource specs (v1, v1beta1) and their validation.
//!
//! Authorization fails closed: a field or value pilotfish does not enforce is a config error
//! naming it (`not enforced yet`), never accepted and ignored.

use super::networking::{spec, WorkloadSelector};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

spec! {
    pub struct PeerAuthentication {
        pub selector: Option<WorkloadSelector>,
        pub mtls: Option<MtlsMode>,
        #[serde(default)] pub port_level_mtls: BTreeMap<String, MtlsMode>,
    }
}

spec! {
    pub struct MtlsMode {
        pub mode: Option<String>,
    }
}

spec! {
    pub struct PolicyTargetReference {
        #[serde(default)] pub group: String,
        pub kind: String,
        pub name: String,
        #[serde(default)] pub namespace: String,
    }
}

spec! {
    pub struct AuthorizationPolicy {
        pub selector: Option<WorkloadSelector>,
        pub target_ref: Option<PolicyTargetReference>,
        #[serde(default)] pub target_refs: Vec<PolicyTargetReference>,
        #[serde(default)] pub rules: Vec<Rule>,
        pub action: Option<String>,
        pub provider: Option<ExtensionProvider>,
    }
}

spec! {
    pub struct ExtensionProvider {
        pub name: String,
    }
}

spec! {
    #[derive(Eq, Hash)]
    pub struct Rule {
        #[serde(default)] pub from: Vec<RuleFrom>,
        #[serde(default)] pub to: Vec<RuleTo>,
        #[serde(default)] pub when: Vec<Condition>,
    }
}

spec! {
    #[derive(Eq, Hash)]
    pub struct RuleFrom {
        pub source: Source,
    }
}

spec! {
    #[derive(Eq, Hash)]
    pub struct RuleTo {
        pub operation: Operation,
    }
}

spec! {
    #[derive(Eq, Hash)]
    pub struct Source {
        #[serde(default)] pub principals: Vec<String>,
        #[serde(default)] pub not_principals: Vec<String>,
        #[serde(default)] pub request_principals: Vec<String>,
        #[serde(default)] pub not_request_principals: Vec<String>,
        #[serde(default)] pub namespaces: Vec<String>,
        #[serde(default)] pub not_namespaces: Vec<String>,
        #[serde(default)] pub service_accounts: Vec<String>,
        #[serde(default)] pub not_service_accounts: Vec<String>,
        #[serde(default)] pub ip_blocks: Vec<String>,
        #[serde(default)] pub not_ip_blocks: Vec<String>,
        #[serde(default)] pub remote_ip_blocks: Vec<String>,
        #[serde(default)] pub not_remote_ip_blocks: Vec<String>,
    }
}

spec! {
    #[derive(Eq, Hash)]
    pub struct Operation {
        #[serde(default)] pub hosts: Vec<String>,
        #[serde(default)] pub not_hosts: Vec<String>,
        #[serde(default)] pub ports: Vec<String>,
        #[serde(default)] pub not_ports: Vec<String>,
        #[serde(default)] pub methods: Vec<String>,
        #[serde(default)] pub not_methods: Vec<String>,
        #[serde(default)] pub paths: Vec<String>,
        #[serde(default)] pub not_paths: Vec<String>,
    }
}

spec! {
    #[derive(Eq, Hash)]
    pub struct Condition {
        pub key: String,
        #[serde(default)] pub values: Vec<String>,
        #[serde(default)] pub not_values: Vec<String>,
    }
}

spec! {
    pub struct RequestAuthentication {
        pub selector: Option<WorkloadSelector>,
        pub target_ref: Option<PolicyTargetReference>,
        #[serde(default)] pub target_refs: Vec<PolicyTargetReference>,
        #[serde(default)] pub jwt_rules: Vec<JwtRule>,
    }
}

spec! {
    #[derive(Eq, Hash)]
    pub struct JwtRule {
        pub issuer: String,
        #[serde(default)] pub audiences: Vec<String>,
        pub jwks_uri: Option<String>,
        pub jwks: Option<String>,
        #[serde(default)] pub from_headers: Vec<JwtHeader>,
        #[serde(default)] pub from_params: Vec<String>,
        #[serde(default)] pub from_cookies: Vec<String>,
        pub output_payload_to_header: Option<String>,
        pub forward_original_token: Option<bool>,
        #[serde(default)] pub output_claim_to_headers: Vec<ClaimToHeader>,
        pub timeout: Option<String>,
    }
}

spec! {
    #[derive(Eq, Hash)]
    pub struct JwtHeader {
        pub name: String,
        #[serde(default)] pub prefix: String,
    }
}

spec! {
    #[derive(Eq, Hash)]
    pub struct ClaimToHeader {
        pub header: String,
        pub claim: String,
    }
}

/// The claim names of a `request.auth.claims[a][b]...` key (nested claims).
pub fn claim_path(key: &str) -> Option<Vec<&str>> {
    let mut rest = key.strip_prefix("request.auth.claims")?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        let name = &inner[..end];
        if name.is_empty() || name.contains('[') {
            return None;
        }
        out.push(name);
        rest = &inner[end + 1..];
    }
    (!out.is_empty()).then_some(out)
}

/// A request principal `<iss>/<sub>`: `*`, `iss/sub`, `iss/*` or `*/sub`.
fn request_principal(v: &str) -> Result<(), String> {
    if v == "*" {
        return Ok(());
    }
    let Some((iss, sub)) = v.rsplit_once('/') else {
        return Err(format!("{v:?}: expected `<issuer>/<subject>` or `*`"));
    };
    let ok = |s: &str, wild: bool| !s.is_empty() && (!s.contains('*') || (wild && s == "*"));
    if ok(iss, true) && ok(sub, true) && !(iss == "*" && sub == "*") {
        Ok(())
    } else {
        Err(format!(
            "{v:?}: supported forms are `*`, `<issuer>/<subject>`, `<issuer>/*` and `*/<subject>`"
        ))
    }
}

/// An address or CIDR block as Istio writes them (`10.0.0.1`, `10.0.0.0/16`, `::1/128`).
pub fn parse_cidr(s: &str) -> Result<(std::net::IpAddr, u32), String> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => match l.parse::<u32>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("{s:?}: prefix length must be 0-{max}")),
        },
    };
    Ok((ip, len))
}

/// Istio's string forms: `*` (anything), `*suffix`, `prefix*`, or exact. `*` elsewhere is
/// refused (Istio would take it literally, which is never what was meant).
pub fn check_wildcard(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("empty value".into());
    }
    if v == "*" {
        return Ok(());
    }
    let inner = v.strip_prefix('*').unwrap_or(v);
    let inner = inner.strip_suffix('*').unwrap_or(inner);
    if inner.contains('*') || (v.starts_with('*') && v.ends_with('*')) {
        return Err(format!(
            "{v:?}: `*` is allowed only as the whole value, or at its start or its end"
        ));
    }
    Ok(())
}

/// The header name of a `request.headers[name]` key.
pub fn header_key(key: &str) -> Option<&str> {
    key.strip_prefix("request.headers[")?
        .strip_suffix(']')
        .filter(|h| !h.is_empty())
}

type Problems = Vec<(String, String)>;

fn values(p: &mut Problems, f: &str, vals: &[String], check: impl Fn(&str) -> Result<(), String>) {
    for (i, v) in vals.iter().enumerate() {
        if let Err(e) = check(v) {
            p.push((format!("{f}[{i}]"), e));
        }
    }
}

fn cidr(v: &str) -> Result<(), String> {
    parse_cidr(v).map(|_| ())
}

fn port(v: &str) -> Result<(), String> {
    match v.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(()),
        _ => Err(format!("{v:?} is not a port number (1-65535)")),
    }
}

fn path(v: &str) -> Result<(), String> {
    if v.contains('{') || v.contains('}') {
        return Err(format!(
            "{v:?}: path templates ({{*}}, {{**}}) are not enforced yet; use `prefix*` or `*suffix`"
        ));
    }
    check_wildcard(v)?;
    if !(v.starts_with('/') || v.starts_with('*')) {
        return Err(format!("{v:?}: a path starts with `/` (or is a `*` form)"));
    }
    Ok(())
}

fn service_account(v: &str) -> Result<(), String> {
    match v.split_once('/') {
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
            if ns.contains('*') || sa.contains('*') {
                Err(format!(
                    "{v:?}: wildcards are not allowed in service accounts"
                ))
            } else {
                Ok(())
            }
        }
        _ => Err(format!("{v:?}: expected `namespace/service-account`")),
    }
}

/// Validate an AuthorizationPolicy. Every problem names its field path under `spec`.
pub fn validate_authorization_policy(ap: &AuthorizationPolicy) -> Problems {
    let mut p: Problems = Vec::new();
    let action = ap.action.as_deref().unwrap_or("ALLOW");
    match action {
        "ALLOW" | "DENY" | "AUDIT" => {
            if ap.provider.is_some() {
                p.push((
                    "spec.provider".into(),
                    format!("only the CUSTOM action takes a provider, not {action}"),
                ));
            }
        }
        "CUSTOM" => {
            if ap.provider.as_ref().is_none_or(|p| p.name.is_empty()) {
                p.push((
                    "spec.provider.name".into(),
                    "a CUSTOM policy names its ext_authz provider".into(),
                ));
            }
            if ap.rules.is_empty() {
                p.push((
                    "spec.rules".into(),
                    "a CUSTOM policy needs rules (which requests its provider checks)".into(),
                ));
            }
            // As Istio: the provider sees the request, not the peer identity.
            for (i, rule) in ap.rules.iter().enumerate() {
                for (j, from) in rule.from.iter().enumerate() {
                    let s = &from.source;
                    for (name, set) in [
                        ("principals", !s.principals.is_empty()),
                        ("notPrincipals", !s.not_principals.is_empty()),
                        ("namespaces", !s.namespaces.is_empty()),
                        ("notNamespaces", !s.not_namespaces.is_empty()),
                        ("serviceAccounts", !s.service_accounts.is_empty()),
                        ("notServiceAccounts", !s.not_service_accounts.is_empty()),
                    ] {
                        if set {
                            p.push((
                                format!("spec.rules[{i}].from[{j}].source.{name}"),
                                "not supported by the CUSTOM action (as in Istio)".into(),
                            ));
                        }
                    }
                }
                for (j, c) in rule.when.iter().enumerate() {
                    if matches!(c.key.as_str(), "source.namespace" | "source.principal") {
                        p.push((
                            format!("spec.rules[{i}].when[{j}].key"),
                            format!(
                                "{} is not supported by the CUSTOM action (as in Istio)",
                                c.key
                            ),
                        ));
                    }
                }
            }
        }
        other => p.push((
            "spec.action".into(),
            format!("unknown action {other:?} (expected ALLOW, DENY, AUDIT or CUSTOM)"),
        )),
    }
    if action == "DENY" && ap.rules.is_empty() {
        p.push((
            "spec.rules".into(),
            "a DENY policy needs rules (`rules: [{}]` denies everything)".into(),
        ));
    }
    let refs: Vec<(String, &PolicyTargetReference)> = ap
        .target_ref
        .iter()
        .map(|r| ("spec.targetRef".to_string(), r))
        .chain(
            ap.target_refs
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)),
        )
        .collect();
    if ap.target_ref.is_some() && !ap.target_refs.is_empty() {
        p.push((
            "spec.targetRef".into(),
            "set targetRef or targetRefs, not both".into(),
        ));
    }
    if ap.selector.is_some() && !refs.is_empty() {
        p.push((
            "spec.selector".into(),
            "selector and targetRef(s) are mutually exclusive".into(),
        ));
    }
    for (f, r) in &refs {
        match (r.group.as_str(), r.kind.as_str()) {
            ("" | "core", "Service") => {}
            (g, k) => p.push((
                format!("{f}.kind"),
                format!(
                    "targetRef to {k} (group {g:?}) is not enforced yet: only a Service \
                     (group \"\") selects sidecars here"
                ),
            )),
        }
        if r.name.is_empty() {
            p.push((format!("{f}.name"), "required".into()));
        }
    }
    for (i, rule) in ap.rules.iter().enumerate() {
        let rf = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().enumerate() {
            let f = format!("{rf}.from[{j}].source");
            let s = &from.source;
            if *s == Source::default() {
                p.push((f.clone(), "must not be empty".into()));
            }
            for (name, vals) in [
                ("principals", &s.principals),
                ("notPrincipals", &s.not_principals),
                ("namespaces", &s.namespaces),
                ("notNamespaces", &s.not_namespaces),
            ] {
                values(&mut p, &format!("{f}.{name}"), vals, check_wildcard);
            }
            for (name, vals) in [
                ("serviceAccounts", &s.service_accounts),
                ("notServiceAccounts", &s.not_service_accounts),
            ] {
                values(&mut p, &format!("{f}.{name}"), vals, service_account);
            }
            if !(s.service_accounts.is_empty() && s.not_service_accounts.is_empty())
                && !(s.principals.is_empty()
                    && s.not_principals.is_empty()
                    && s.namespaces.is_empty()
                    && s.not_namespaces.is_empty())
            {
                p.push((
                    format!("{f}.serviceAccounts"),
                    "cannot be set together with principals or namespaces".into(),
                ));
            }
            for (name, vals) in [
                ("ipBlocks", &s.ip_blocks),
                ("notIpBlocks", &s.not_ip_blocks),
                ("remoteIpBlocks", &s.remote_ip_blocks),
                ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
            ] {
                values(&mut p, &format!("{f}.{name}"), vals, cidr);
            }
            for (name, vals) in [
                ("requestPrincipals", &s.request_principals),
                ("notRequestPrincipals", &s.not_request_principals),
            ] {
                values(&mut p, &format!("{f}.{name}"), vals, request_principal);
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let f = format!("{rf}.to[{j}].operation");
            let o = &to.operation;
            if *o == Operation::default() {
                p.push((f.clone(), "must not be empty".into()));
            }
            for (name, vals) in [("hosts", &o.hosts), ("notHosts", &o.not_hosts)] {
                values(&mut p, &format!("{f}.{name}"), vals, check_wildcard);
            }
            for (name, vals) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
                values(&mut p, &format!("{f}.{name}"), vals, port);
            }
            for (name, vals) in [("methods", &o.methods), ("notMethods", &o.not_methods)] {
                values(&mut p, &format!("{f}.{name}"), vals, |v| {
                    if v.is_empty() || v.contains('*') {
                        Err(format!("{v:?}: a method is a plain name such as GET"))
                    } else {
                        Ok(())
                    }
                });
            }
            for (name, vals) in [("paths", &o.paths), ("notPaths", &o.not_paths)] {
                values(&mut p, &format!("{f}.{name}"), vals, path);
            }
        }
        for (j, c) in rule.when.iter().enumerate() {
            let f = format!("{rf}.when[{j}]");
            if c.values.is_empty() && c.not_values.is_empty() {
                p.push((f.clone(), "needs values or notValues".into()));
            }
            let all = c.values.iter().chain(&c.not_values);
            let check: fn(&str) -> Result<(), String> = match c.key.as_str() {
                "source.ip" | "remote.ip" | "destination.ip" => cidr,
                "destination.port" => port,
                "source.namespace" | "source.principal" | "connection.sni" => check_wildcard,
                k if header_key(k).is_some() => check_wildcard,
                "request.auth.principal" => request_principal,
                "request.auth.audiences" | "request.auth.presenter" => check_wildcard,
                k if claim_path(k).is_some() => check_wildcard,
                k if k.starts_with("request.auth.") => {
                    p.push((
                        format!("{f}.key"),
                        format!(
                            "{k:?}: expected request.auth.principal, .audiences, .presenter or \
                             .claims[name] (nested: .claims[a][b])"
                        ),
                    ));
                    continue;
                }
                k if k.starts_with("request.headers") => {
                    p.push((
                        format!("{f}.key"),
                        format!("{k:?}: expected request.headers[<name>]"),
                    ));
                    continue;
                }
                k if k.starts_with("experimental.") => {
                    p.push((
                        format!("{f}.key"),
                        format!("{k:?}: experimental keys are not enforced"),
                    ));
                    continue;
                }
                k => {
                    p.push((
                        format!("{f}.key"),
                        format!(
                            "unknown key {k:?} (supported: request.headers[...], source.ip, \
                             remote.ip, source.namespace, source.principal, destination.ip, \
                             destination.port, connection.sni)"
                        ),
                    ));
                    continue;
                }
            };
            for (k, v) in all.enumerate() {
                if let Err(e) = check(v) {
                    let (name, i) = if k < c.values.len() {
                        ("values", k)
                    } else {
                        ("notValues", k - c.values.len())
                    };
                    p.push((format!("{f}.{name}[{i}]"), e));
                }
            }
        }
    }
    p
}

/// Validate a RequestAuthentication: each rule names its issuer and where its keys come
/// from (inline `jwks` or `jwksUri`; OIDC discovery is not done).
pub fn validate_request_authentication(ra: &RequestAuthentication) -> Problems {
    let mut p = Problems::new();
    if ra.selector.is_some() && (ra.target_ref.is_some() || !ra.target_refs.is_empty()) {
        p.push((
            "spec.selector".into(),
            "selector and targetRef(s) are mutually exclusive".into(),
        ));
    }
    if ra.target_ref.is_some() || !ra.target_refs.is_empty() {
        let f = if ra.target_ref.is_some() {
            "spec.targetRef"
        } else {
            "spec.targetRefs"
        };
        p.push((
            f.into(),
            "not enforced yet for RequestAuthentication: use a selector".into(),
        ));
    }
    let mut issuers = std::collections::BTreeSet::new();
    for (i, r) in ra.jwt_rules.iter().enumerate() {
        let f = format!("spec.jwtRules[{i}]");
        if r.issuer.is_empty() {
            p.push((format!("{f}.issuer"), "required".into()));
        } else if !issuers.insert(r.issuer.clone()) {
            p.push((
                format!("{f}.issuer"),
                format!("issuer {:?} appears twice", r.issuer),
            ));
        }
        match (&r.jwks, &r.jwks_uri) {
            (Some(_), Some(_)) => p.push((f.clone(), "set jwks or jwksUri, not both".into())),
            (None, None) => p.push((
                format!("{f}.jwksUri"),
                "required (or inline jwks): OpenID discovery from the issuer is not done".into(),
            )),
            (Some(j), None) => {
                if let Err(e) = check_jwks(j) {
                    p.push((format!("{f}.jwks"), e));
                }
            }
            (None, Some(u)) => {
                if !(u.starts_with("https://") || u.starts_with("http://")) || u.len() > 2048 {
                    p.push((
                        format!("{f}.jwksUri"),
                        format!("{u:?} is not an http(s) URL"),
                    ));
                }
            }
        }
        for (j, h) in r.from_headers.iter().enumerate() {
            if h.name.is_empty() {
                p.push((format!("{f}.fromHeaders[{j}].name"), "required".into()));
            }
        }
        for (j, c) in r.output_claim_to_headers.iter().enumerate() {
            if c.header.is_empty() || c.claim.is_empty() {
                p.push((
                    format!("{f}.outputClaimToHeaders[{j}]"),
                    "header and claim are required".into(),
                ));
            }
        }
        if let Some(t) = &r.timeout {
            if let Err(e) = super::parse_duration(t) {
                p.push((format!("{f}.timeout"), e));
            }
        }
    }
    p
}

/// A JSON Web Key Set: an object with a non-empty `keys` array of objects with `kty`.
pub fn check_jwks(text: &str) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    let keys = v["keys"]
        .as_array()
        .ok_or("not a JSON Web Key Set: no `keys` array")?;
    if keys.is_empty() {
        return Err("the key set has no keys".into());
    }
    if keys.iter().any(|k| k["kty"].as_str().is_none()) {
        return Err("every key needs `kty`".into());
    }
    Ok(())
}

/// Annotation prefix of the built-in provider's settings on a CUSTOM policy.
pub const BUILTIN_ANNOTATION: &str = "authz.pilotfish.io/";

/// What a CUSTOM policy with `provider: {name: pilotfish}` asks of the built-in provider,
/// beyond the mesh's own ALLOW/DENY decision (which in-proxy RBAC cannot do):
///
/// | annotation (`authz.pilotfish.io/…`) | meaning |
/// |---|---|
/// | `deny-status` | status of a denial (default 403) |
/// | `deny-body` | body of a denial |
/// | `request-headers-to-add` | `name=value` pairs, comma separated, set on allowed requests |
/// | `request-headers-to-remove` | header names, comma separated, removed from allowed requests |
/// | `rate-limit` | `N/s`, `N/m` or `N/h`: a token bucket per quota key (429 when empty) |
/// | `rate-limit-burst` | bucket size (default N) |
/// | `rate-limit-by` | quota key: any of `source`, `destination`, `path` (default `source,destination`) |
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct BuiltinSettings {
    pub deny_status: u32,
    pub deny_body: String,
    pub add_headers: Vec<(String, String)>,
    pub remove_headers: Vec<String>,
    pub rate: Option<RateLimit>,
}

/// A token bucket: `tokens` per `per_ms`, holding at most `burst`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct RateLimit {
    pub tokens: u32,
    pub per_ms: u64,
    pub burst: u32,
    pub by_source: bool,
    pub by_destination: bool,
    pub by_path: bool,
}

fn header_name_ok(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Parse the built-in provider's annotations; problems name `metadata.annotations.<key>`.
pub fn builtin_settings(
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<Option<BuiltinSettings>, Problems> {
    let mut p = Problems::new();
    let mut s = BuiltinSettings {
        deny_status: 403,
        ..Default::default()
    };
    let mut any = false;
    let mut rate: Option<(u32, u64)> = None;
    let mut burst: Option<u32> = None;
    let mut by: Option<(bool, bool, bool)> = None;
    for (k, v) in annotations {
        let Some(name) = k.strip_prefix(BUILTIN_ANNOTATION) else {
            continue;
        };
        any = true;
        let f = format!("metadata.annotations.{k}");
        match name {
            "deny-status" => match v.trim().parse::<u32>() {
                Ok(c) if (200..600).contains(&c) => s.deny_status = c,
                _ => p.push((f, format!("{v:?} is not an HTTP status"))),
            },
            "deny-body" => {
                if v.len() > 4096 {
                    p.push((f, "longer than 4096 bytes".into()));
                }
                s.deny_body = v.clone();
            }
            "request-headers-to-add" => {
                for pair in v.split(',').map(str::trim).filter(|x| !x.is_empty()) {
                    match pair.split_once('=') {
                        Some((n, val)) if header_name_ok(n.trim()) => {
                            s.add_headers.push((n.trim().into(), val.trim().into()))
                        }
                        _ => p.push((
                            f.clone(),
                            format!(
                                "{pair:?}: expected `name=value` with a lower-case header name"
                            ),
                        )),
                    }
                }
            }
            "request-headers-to-remove" => {
                for n in v.split(',').map(str::trim).filter(|x| !x.is_empty()) {
                    if header_name_ok(n) {
                        s.remove_headers.push(n.into());
                    } else {
                        p.push((f.clone(), format!("{n:?} is not a lower-case header name")));
                    }
                }
            }
            "rate-limit" => {
                let parsed = v.trim().split_once('/').and_then(|(n, unit)| {
                    let n: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
                    let ms = match unit.trim() {
                        "s" => 1_000,
                        "m" => 60_000,
                        "h" => 3_600_000,
                        _ => return None,
                    };
                    Some((n, ms))
                });
                match parsed {
                    Some(r) => rate = Some(r),
                    None => p.push((f, format!("{v:?}: expected N/s, N/m or N/h with N > 0"))),
                }
            }
            "rate-limit-burst" => match v.trim().parse::<u32>() {
                Ok(b) if b > 0 => burst = Some(b),
                _ => p.push((f, format!("{v:?} is not a positive number"))),
            },
            "rate-limit-by" => {
                let mut d = (false, false, false);
                for part in v.split(',').map(str::trim) {
                    match part {
                        "source" => d.0 = true,
                        "destination" => d.1 = true,
                        "path" => d.2 = true,
                        other => p.push((
                            f.clone(),
                            format!("{other:?}: expected source, destination or path"),
                        )),
                    }
                }
                by = Some(d);
            }
            other => p.push((
                f,
                format!(
                    "unknown annotation {other:?} (deny-status, deny-body, request-headers-to-add, \
                     request-headers-to-remove, rate-limit, rate-limit-burst, rate-limit-by)"
                ),
            )),
        }
    }
    if rate.is_none() && (burst.is_some() || by.is_some()) {
        p.push((
            format!("metadata.annotations.{BUILTIN_ANNOTATION}rate-limit"),
            "required by rate-limit-burst / rate-limit-by".into(),
        ));
    }
    if let Some((tokens, per_ms)) = rate {
        let (src, dst, path) = by.unwrap_or((true, true, false));
        s.rate = Some(RateLimit {
            tokens,
            per_ms,
            burst: burst.unwrap_or(tokens),
            by_source: src,
            by_destination: dst,
            by_path: path,
        });
    }
    if !p.is_empty() {
        return Err(p);
    }
    Ok(any.then_some(s))
}

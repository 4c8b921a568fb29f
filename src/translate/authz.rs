//! AuthorizationPolicy → Envoy RBAC, enforced inside the sidecar on the inbound side.
//!
//! ```text
//!  HTTP chain:  rbac(AUDIT, shadow) → rbac(DENY) → rbac(ALLOW) → router
//!               (rules per route: route configuration `inbound|<port>||` over RDS)
//!  TCP chain:   rbac(AUDIT, shadow) → rbac(DENY) → rbac(ALLOW) → tcp_proxy
//! ```
//! A rule is `from` AND `to` AND `when`; list entries are ORed, a field's values are ORed,
//! `not*` fields negate the OR of their values. Principals are the verified mTLS peer's
//! SPIFFE URI (`authenticated`), so plaintext callers never match one.
//!
//! Case, the safe way round: hosts are compared ignoring case (DNS names are); a DENY (or
//! AUDIT) policy matches paths ignoring case and excludes (`notPaths`) case-sensitively, an
//! ALLOW policy the other way, so `/ADMIN` cannot slip past `DENY /admin*` to an app that
//! ignores case. Hosts match with and without a port (`Host: b:8080` is host `b`).
//!
//! On TCP chains the HTTP-only fields (hosts, methods, paths, `request.headers`) cannot be
//! checked: as in Istio, an ALLOW rule using one matches nothing (allows less) and a DENY
//! rule drops them (denies more).

use super::*;
use crate::api::security::{
    claim_path, header_key, parse_cidr, Condition, Operation, Rule, Source,
};
use crate::model::{AuthzAction, AuthzPolicy, ExtAuthzProvider};
use envoy_types::pb::envoy::config::rbac::v3 as rbac;
use envoy_types::pb::envoy::config::route::v3::{header_matcher, HeaderMatcher};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3 as ext_authz;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3 as net_ext_authz;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3 as net_rbac;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    list_matcher, metadata_matcher, value_matcher, ListMatcher, ListStringMatcher, MetadataMatcher,
    ValueMatcher,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    path_matcher, string_matcher::MatchPattern, PathMatcher, StringMatcher,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use rbac::permission::Rule as P;
use rbac::principal::Identifier as I;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;

/// The inbound HTTP RBAC filters' names (per-route configs are keyed by them).
pub const AUDIT_FILTER: &str = "pilotfish.authz.audit";
pub const DENY_FILTER: &str = "pilotfish.authz.deny";
pub const ALLOW_FILTER: &str = "pilotfish.authz.allow";
pub const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
/// Stat prefix of the AUDIT filter's shadow rules (`..rbac.istio_audit_shadow_denied`
/// counts requests an AUDIT rule matched).
pub const AUDIT_STAT_PREFIX: &str = "istio_audit_";

/// Which side of an Envoy RBAC filter a generated rule is for.
#[derive(Clone, Copy, PartialEq)]
enum Form {
    Http,
    Tcp,
}

/// What the generation of one rule needs to know.
#[derive(Clone, Copy)]
struct Ctx {
    form: Form,
    action: AuthzAction,
}

impl Ctx {
    /// Positive matches ignore case when matching more is the safe side (DENY, AUDIT).
    fn broad(self) -> bool {
        self.action != AuthzAction::Allow
    }
}

/// Istio's policy name in Envoy: `ns[NS]-policy[NAME]-rule[I]`.
pub fn policy_name(p: &AuthzPolicy, i: usize) -> String {
    format!("ns[{}]-policy[{}]-rule[{i}]", p.namespace, p.key.name)
}

/// The Envoy RBAC config of each action present, in evaluation order (AUDIT, DENY, ALLOW);
/// `shadow` is set for AUDIT.
pub struct Rbacs {
    pub audit: Option<rbac::Rbac>,
    pub deny: Option<rbac::Rbac>,
    pub allow: Option<rbac::Rbac>,
    /// CUSTOM rules per provider (index in `Providers`): which requests its ext_authz
    /// filter checks.
    pub custom: BTreeMap<usize, rbac::Rbac>,
}

/// The ext_authz providers a proxy can use, in filter order (the mesh config's, then the
/// built-in one).
pub type Providers = [ExtAuthzProvider];

fn provider_index(providers: &Providers, name: &str) -> Option<usize> {
    providers.iter().position(|p| p.name == name)
}

fn rbacs(policies: &[Arc<AuthzPolicy>], form: Form, providers: &Providers) -> Rbacs {
    let mut out = Rbacs {
        audit: None,
        deny: None,
        allow: None,
        custom: BTreeMap::new(),
    };
    for p in policies {
        let (slot, action) = match p.action {
            AuthzAction::Allow => (&mut out.allow, rbac::rbac::Action::Allow),
            AuthzAction::Deny => (&mut out.deny, rbac::rbac::Action::Deny),
            // Shadow rules with DENY: a match counts as `shadow_denied`, nothing is refused.
            AuthzAction::Audit => (&mut out.audit, rbac::rbac::Action::Deny),
            AuthzAction::Custom => {
                // Validated against the mesh config: a missing provider is a config error.
                let Some(i) = p
                    .provider
                    .as_deref()
                    .and_then(|n| provider_index(providers, n))
                else {
                    continue;
                };
                let slot = out.custom.entry(i).or_insert_with(|| rbac::Rbac {
                    action: rbac::rbac::Action::Deny as i32,
                    ..Default::default()
                });
                let cx = Ctx {
                    form,
                    // CUSTOM widens like DENY on TCP (more is checked).
                    action: AuthzAction::Custom,
                };
                for (i, rule) in p.rules.iter().enumerate() {
                    if let Some(policy) = rule_policy(rule, cx) {
                        slot.policies.insert(policy_name(p, i), policy);
                    }
                }
                continue;
            }
        };
        // An ALLOW policy with no rules still creates the filter: nothing is allowed.
        let r = slot.get_or_insert_with(|| rbac::Rbac {
            action: action as i32,
            policies: HashMap::new(),
            ..Default::default()
        });
        let cx = Ctx {
            form,
            action: p.action,
        };
        for (i, rule) in p.rules.iter().enumerate() {
            if let Some(policy) = rule_policy(rule, cx) {
                r.policies.insert(policy_name(p, i), policy);
            }
        }
    }
    if out.audit.as_ref().is_some_and(|a| a.policies.is_empty()) {
        out.audit = None;
    }
    if out.deny.as_ref().is_some_and(|a| a.policies.is_empty()) {
        out.deny = None;
    }
    out
}

/// The inbound connection manager's RBAC filters (before the router), in evaluation order.
/// Their own config enforces nothing: each inbound route carries its port's rules
/// (`http_per_route`), so a policy change never touches the listener.
pub fn http_filters(providers: &Providers) -> Vec<hcm::HttpFilter> {
    // The stats of a filter keep its own config's prefixes (`..rbac.istio_deny_denied`).
    let prefixed = |shadow: &str, rules: &str| http_rbac::Rbac {
        shadow_rules_stat_prefix: shadow.into(),
        rules_stat_prefix: rules.into(),
        ..Default::default()
    };
    let mut out = Vec::new();
    // CUSTOM first: per provider, a shadow RBAC marks the requests its policies select
    // (per route), and the provider's ext_authz filter checks only those.
    for (i, p) in providers.iter().enumerate() {
        out.push(listener::http_filter(
            &custom_filter(i),
            prefixed(&custom_prefix(i), ""),
        ));
        out.push(listener::http_filter(
            &format!("pilotfish.ext_authz.{}", p.name),
            ext_authz_http(p, i),
        ));
    }
    out.extend([
        listener::http_filter(AUDIT_FILTER, prefixed(AUDIT_STAT_PREFIX, "")),
        listener::http_filter(DENY_FILTER, prefixed("", "istio_deny_")),
        listener::http_filter(ALLOW_FILTER, prefixed("", "istio_allow_")),
    ]);
    out
}

/// The cluster sidecars reach pilotfish's ext_authz service by: its TLS port, with the
/// sidecar's own certificate (mutual TLS) when it has one, checking pilotfish's DNS name.
pub fn builtin_cluster(
    address: &str,
    mtls: bool,
) -> envoy_types::pb::envoy::config::cluster::v3::Cluster {
    use envoy_types::pb::envoy::config::cluster::v3 as cl;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3 as uphttp;
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "15012"));
    let port: u32 = port.parse().unwrap_or(15012);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = host.parse::<std::net::IpAddr>().is_ok();
    let opts = uphttp::HttpProtocolOptions {
        upstream_protocol_options: Some(
            uphttp::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                uphttp::http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        uphttp::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Default::default(),
                        ),
                    ),
                },
            ),
        ),
        ..Default::default()
    };
    cl::Cluster {
        name: BUILTIN_CLUSTER.into(),
        cluster_discovery_type: Some(cl::cluster::ClusterDiscoveryType::Type(if ip {
            cl::cluster::DiscoveryType::Static as i32
        } else {
            cl::cluster::DiscoveryType::StrictDns as i32
        })),
        connect_timeout: Some(secs(5)),
        load_assignment: Some(
            envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
                cluster_name: BUILTIN_CLUSTER.into(),
                endpoints: vec![
                    envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints {
                        lb_endpoints: vec![super::endpoint::lb_endpoint(host, port, 1)],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
        ),
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            any(opts),
        )]
        .into(),
        transport_socket: mtls
            .then(|| super::tls::istio_upstream("pilotfish", &["pilotfish".into()])),
        ..Default::default()
    }
}

/// An `RBACPerRoute`, encoded deterministically (see `canon`).
fn per_route(r: &http_rbac::Rbac) -> pbw::Any {
    super::canon::any_of::<http_rbac::RbacPerRoute>(super::canon::http_rbac_per_route(r))
}

fn custom_filter(i: usize) -> String {
    format!("pilotfish.authz.custom.{i}")
}

/// Stat prefix of provider `i`'s shadow rules; their dynamic metadata key is
/// `<prefix>shadow_effective_policy_id`.
fn custom_prefix(i: usize) -> String {
    format!("istio_ext_authz_{i}_")
}

fn enabled_by(namespace: &str, i: usize) -> MetadataMatcher {
    MetadataMatcher {
        filter: namespace.into(),
        path: vec![metadata_matcher::PathSegment {
            segment: Some(metadata_matcher::path_segment::Segment::Key(format!(
                "{}shadow_effective_policy_id",
                custom_prefix(i)
            ))),
        }],
        value: Some(ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::PresentMatch(true)),
        }),
        invert: false,
    }
}

fn list(names: &[String]) -> Option<ListStringMatcher> {
    (!names.is_empty()).then(|| ListStringMatcher {
        patterns: names.iter().map(|n| wildcard(n, true)).collect(),
    })
}

/// The cluster of pilotfish's own ext_authz service (see `builtin_cluster`).
pub const BUILTIN_CLUSTER: &str = "pilotfish-authz";

fn grpc_service(p: &ExtAuthzProvider) -> core::GrpcService {
    let (cluster, authority) = if p.builtin {
        (BUILTIN_CLUSTER.to_string(), "pilotfish".to_string())
    } else {
        (outbound_name(p.port, "", &p.service), p.service.clone())
    };
    core::GrpcService {
        target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
            core::grpc_service::EnvoyGrpc {
                cluster_name: cluster,
                authority,
                ..Default::default()
            },
        )),
        timeout: Some(dur(std::time::Duration::from_millis(p.timeout_ms))),
        ..Default::default()
    }
}

/// The HTTP ext_authz filter of provider `i`, enabled by its CUSTOM rules' metadata.
fn ext_authz_http(p: &ExtAuthzProvider, i: usize) -> ext_authz::ExtAuthz {
    use ext_authz::ext_authz::Services;
    let services = if p.http {
        Services::HttpService(ext_authz::HttpService {
            server_uri: Some(core::HttpUri {
                uri: format!("http://{}:{}", p.service, p.port),
                http_upstream_type: Some(core::http_uri::HttpUpstreamType::Cluster(outbound_name(
                    p.port, "", &p.service,
                ))),
                timeout: Some(dur(std::time::Duration::from_millis(p.timeout_ms))),
            }),
            path_prefix: p.path_prefix.clone(),
            authorization_request: Some(ext_authz::AuthorizationRequest {
                headers_to_add: p
                    .additional_headers
                    .iter()
                    .map(|(k, v)| core::HeaderValue {
                        key: k.clone(),
                        value: v.clone(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            authorization_response: Some(ext_authz::AuthorizationResponse {
                allowed_upstream_headers: list(&p.upstream_on_allow),
                allowed_client_headers: list(&p.downstream_on_deny),
                allowed_client_headers_on_success: list(&p.downstream_on_allow),
                ..Default::default()
            }),
            ..Default::default()
        })
    } else {
        Services::GrpcService(grpc_service(p))
    };
    ext_authz::ExtAuthz {
        services: Some(services),
        transport_api_version: core::ApiVersion::V3 as i32,
        failure_mode_allow: p.fail_open,
        status_on_error: Some(HttpStatus {
            code: p.status_on_error as i32,
        }),
        with_request_body: p
            .body
            .map(|(max, partial, bytes)| ext_authz::BufferSettings {
                max_request_bytes: max,
                allow_partial_message: partial,
                pack_as_bytes: bytes,
            }),
        allowed_headers: list(&p.include_request_headers),
        // The built-in provider reads which CUSTOM rule selected the request and the
        // verified JWT payload.
        metadata_context_namespaces: if p.builtin {
            vec![
                "envoy.filters.http.rbac".into(),
                "envoy.filters.http.jwt_authn".into(),
            ]
        } else {
            vec![]
        },
        filter_enabled_metadata: Some(enabled_by("envoy.filters.http.rbac", i)),
        stat_prefix: format!("ext_authz_{i}"),
        ..Default::default()
    }
}

/// Per-route configs of the three RBAC filters for a port's policies (absent: no policy of
/// that action applies).
pub fn http_per_route(
    policies: &[Arc<AuthzPolicy>],
    providers: &Providers,
) -> HashMap<String, pbw::Any> {
    let r = rbacs(policies, Form::Http, providers);
    let mut out = HashMap::new();
    for (i, rules) in r.custom {
        out.insert(
            custom_filter(i),
            per_route(&http_rbac::Rbac {
                shadow_rules: Some(rules),
                shadow_rules_stat_prefix: custom_prefix(i),
                ..Default::default()
            }),
        );
    }
    let mut put = |name: &str, rbac: http_rbac::Rbac| {
        out.insert(name.to_string(), per_route(&rbac));
    };
    if let Some(a) = r.audit {
        put(
            AUDIT_FILTER,
            http_rbac::Rbac {
                shadow_rules: Some(a),
                shadow_rules_stat_prefix: AUDIT_STAT_PREFIX.into(),
                ..Default::default()
            },
        );
    }
    if let Some(d) = r.deny {
        put(
            DENY_FILTER,
            http_rbac::Rbac {
                rules: Some(d),
                ..Default::default()
            },
        );
    }
    if let Some(a) = r.allow {
        put(
            ALLOW_FILTER,
            http_rbac::Rbac {
                rules: Some(a),
                ..Default::default()
            },
        );
    }
    out
}

/// Network RBAC filters for an inbound TCP chain (before tcp_proxy).
pub fn network_filters(policies: &[Arc<AuthzPolicy>], providers: &Providers) -> Vec<ls::Filter> {
    let r = rbacs(policies, Form::Tcp, providers);
    let mut out = Vec::new();
    for (i, rules) in r.custom {
        let p = &providers[i];
        if p.http {
            // An HTTP provider cannot check a TCP connection: what its policies select is
            // refused (fail closed).
            out.push(net_filter(net_rbac::Rbac {
                rules: Some(rules),
                stat_prefix: format!("tcp.ext_authz_{i}_unavailable."),
                ..Default::default()
            }));
            continue;
        }
        out.push(net_filter(net_rbac::Rbac {
            shadow_rules: Some(rules),
            shadow_rules_stat_prefix: custom_prefix(i),
            stat_prefix: "tcp.".into(),
            ..Default::default()
        }));
        out.push(listener::filter(
            "envoy.filters.network.ext_authz",
            net_ext_authz::ExtAuthz {
                stat_prefix: format!("ext_authz_{i}"),
                grpc_service: Some(grpc_service(p)),
                failure_mode_allow: p.fail_open,
                transport_api_version: core::ApiVersion::V3 as i32,
                filter_enabled_metadata: Some(enabled_by("envoy.filters.network.rbac", i)),
                ..Default::default()
            },
        ));
    }
    if let Some(a) = r.audit {
        out.push(net_filter(net_rbac::Rbac {
            shadow_rules: Some(a),
            shadow_rules_stat_prefix: AUDIT_STAT_PREFIX.into(),
            stat_prefix: "tcp.".into(),
            ..Default::default()
        }));
    }
    for rules in [r.deny, r.allow].into_iter().flatten() {
        out.push(net_filter(net_rbac::Rbac {
            rules: Some(rules),
            stat_prefix: "tcp.".into(),
            ..Default::default()
        }));
    }
    out
}

use envoy_types::pb::envoy::config::listener::v3 as ls;

/// A network RBAC filter, encoded deterministically (see `canon`).
fn net_filter(r: net_rbac::Rbac) -> ls::Filter {
    ls::Filter {
        name: NETWORK_RBAC.into(),
        config_type: Some(ls::filter::ConfigType::TypedConfig(super::canon::any_of::<
            net_rbac::Rbac,
        >(
            super::canon::net_rbac(&r),
        ))),
    }
}

/// One rule: (OR of `to`) AND `when` permissions; (OR of `from`) AND `when` principals.
/// None: the rule can never match here (an ALLOW rule using HTTP-only fields on TCP).
fn rule_policy(rule: &Rule, cx: Ctx) -> Option<rbac::Policy> {
    let mut perms: Vec<rbac::Permission> = Vec::new();
    let mut ids: Vec<rbac::Principal> = Vec::new();
    if !rule.to.is_empty() {
        let ops: Vec<rbac::Permission> = rule
            .to
            .iter()
            .filter_map(|t| operation(&t.operation, cx))
            .collect();
        if ops.is_empty() {
            return None;
        }
        perms.push(perm_or(ops));
    }
    if !rule.from.is_empty() {
        let sources: Vec<rbac::Principal> = rule
            .from
            .iter()
            .filter_map(|f| source(&f.source, cx))
            .collect();
        if sources.is_empty() {
            return None;
        }
        ids.push(id_or(sources));
    }
    for c in &rule.when {
        match condition(c, cx)? {
            Cond::Perm(p) => perms.push(p),
            Cond::Id(i) => ids.push(i),
            Cond::Skip => {}
        }
    }
    Some(rbac::Policy {
        permissions: vec![perm_and(perms)],
        principals: vec![id_and(ids)],
        ..Default::default()
    })
}

fn perm(r: P) -> rbac::Permission {
    rbac::Permission { rule: Some(r) }
}
fn id(i: I) -> rbac::Principal {
    rbac::Principal {
        identifier: Some(i),
    }
}
fn perm_and(mut v: Vec<rbac::Permission>) -> rbac::Permission {
    match v.len() {
        0 => perm(P::Any(true)),
        1 => v.pop().unwrap(),
        _ => perm(P::AndRules(rbac::permission::Set { rules: v })),
    }
}
fn perm_or(mut v: Vec<rbac::Permission>) -> rbac::Permission {
    match v.len() {
        1 => v.pop().unwrap(),
        _ => perm(P::OrRules(rbac::permission::Set { rules: v })),
    }
}
fn perm_not(p: rbac::Permission) -> rbac::Permission {
    perm(P::NotRule(Box::new(p)))
}
fn id_and(mut v: Vec<rbac::Principal>) -> rbac::Principal {
    match v.len() {
        0 => id(I::Any(true)),
        1 => v.pop().unwrap(),
        _ => id(I::AndIds(rbac::principal::Set { ids: v })),
    }
}
fn id_or(mut v: Vec<rbac::Principal>) -> rbac::Principal {
    match v.len() {
        1 => v.pop().unwrap(),
        _ => id(I::OrIds(rbac::principal::Set { ids: v })),
    }
}
fn id_not(p: rbac::Principal) -> rbac::Principal {
    id(I::NotId(Box::new(p)))
}

/// `values` ORed, and NOT(`not_values` ORed), ANDed onto `acc`.
fn push_perm(
    acc: &mut Vec<rbac::Permission>,
    values: &[String],
    not_values: &[String],
    f: impl Fn(&str, bool) -> rbac::Permission,
) {
    if !values.is_empty() {
        acc.push(perm_or(values.iter().map(|v| f(v, false)).collect()));
    }
    if !not_values.is_empty() {
        acc.push(perm_not(perm_or(
            not_values.iter().map(|v| f(v, true)).collect(),
        )));
    }
}
fn push_id(
    acc: &mut Vec<rbac::Principal>,
    values: &[String],
    not_values: &[String],
    f: impl Fn(&str) -> rbac::Principal,
) {
    if !values.is_empty() {
        acc.push(id_or(values.iter().map(|v| f(v)).collect()));
    }
    if !not_values.is_empty() {
        acc.push(id_not(id_or(not_values.iter().map(|v| f(v)).collect())));
    }
}

fn sm(p: MatchPattern, ignore_case: bool) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(p),
        ignore_case,
    }
}

/// Istio's `*` forms as a string matcher (`*` alone is handled by callers as presence).
fn wildcard(v: &str, ignore_case: bool) -> StringMatcher {
    if v == "*" {
        return sm(MatchPattern::Prefix(String::new()), false);
    }
    if let Some(s) = v.strip_prefix('*') {
        sm(MatchPattern::Suffix(s.into()), ignore_case)
    } else if let Some(p) = v.strip_suffix('*') {
        sm(MatchPattern::Prefix(p.into()), ignore_case)
    } else {
        sm(MatchPattern::Exact(v.into()), ignore_case)
    }
}

fn header(name: &str, m: StringMatcher) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(m)),
        ..Default::default()
    }
}

fn present(name: &str) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true)),
        ..Default::default()
    }
}

fn cidr(v: &str) -> core::CidrRange {
    let (ip, len) = parse_cidr(v).expect("validated");
    core::CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: u32v(len),
    }
}

/// The verified peer's SPIFFE URI, from an Istio principal (`td/ns/x/sa/y`, `*` forms).
fn principal(v: &str) -> rbac::Principal {
    let m = if v == "*" {
        sm(MatchPattern::Prefix("spiffe://".into()), false)
    } else if let Some(s) = v.strip_prefix('*') {
        sm(MatchPattern::Suffix(s.into()), false)
    } else if let Some(p) = v.strip_suffix('*') {
        sm(MatchPattern::Prefix(format!("spiffe://{p}")), false)
    } else {
        sm(MatchPattern::Exact(format!("spiffe://{v}")), false)
    };
    authenticated(m)
}

fn authenticated(m: StringMatcher) -> rbac::Principal {
    id(I::Authenticated(rbac::principal::Authenticated {
        principal_name: Some(m),
    }))
}

fn regex(re: String) -> StringMatcher {
    use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
    sm(
        MatchPattern::SafeRegex(RegexMatcher {
            regex: re,
            ..Default::default()
        }),
        false,
    )
}

/// The namespace of the verified peer's SPIFFE URI (`spiffe://<td>/ns/<ns>/sa/<sa>`).
fn namespace(v: &str) -> rbac::Principal {
    let seg = |s: &str| regex_syntax::escape(s);
    let ns = if v == "*" {
        "[^/]+".to_string()
    } else if let Some(s) = v.strip_prefix('*') {
        format!("[^/]*{}", seg(s))
    } else if let Some(p) = v.strip_suffix('*') {
        format!("{}[^/]*", seg(p))
    } else {
        seg(v)
    };
    authenticated(regex(format!("^spiffe://[^/]+/ns/{ns}/sa/[^/]+$")))
}

fn service_account(v: &str) -> rbac::Principal {
    let (ns, sa) = v.split_once('/').expect("validated");
    authenticated(regex(format!(
        "^spiffe://[^/]+/ns/{}/sa/{}$",
        regex_syntax::escape(ns),
        regex_syntax::escape(sa)
    )))
}

/// One `from.source`; None when it can never match on this form (request principals are
/// HTTP-only: on TCP an ALLOW source using them matches nothing, a DENY drops them).
fn source(s: &Source, cx: Ctx) -> Option<rbac::Principal> {
    let mut acc = Vec::new();
    let jwt = !(s.request_principals.is_empty() && s.not_request_principals.is_empty());
    if jwt && cx.form == Form::Tcp {
        if cx.action == AuthzAction::Allow {
            return None;
        }
    } else {
        push_id(
            &mut acc,
            &s.request_principals,
            &s.not_request_principals,
            request_principal,
        );
    }
    push_id(&mut acc, &s.principals, &s.not_principals, principal);
    push_id(&mut acc, &s.namespaces, &s.not_namespaces, namespace);
    push_id(
        &mut acc,
        &s.service_accounts,
        &s.not_service_accounts,
        service_account,
    );
    push_id(&mut acc, &s.ip_blocks, &s.not_ip_blocks, |v| {
        id(I::DirectRemoteIp(cidr(v)))
    });
    push_id(
        &mut acc,
        &s.remote_ip_blocks,
        &s.not_remote_ip_blocks,
        |v| id(I::RemoteIp(cidr(v))),
    );
    Some(id_and(acc))
}

/// Where jwt_authn puts a verified token's payload (dynamic metadata of
/// `envoy.filters.http.jwt_authn`, under this key).
pub const JWT_PAYLOAD: &str = "payload";

/// A claim of the verified token's payload (`path` below the payload) matched as a string,
/// or as one element of a list (`aud`, `groups`).
fn claim(path: &[&str], v: &str) -> rbac::Principal {
    let meta = |value: ValueMatcher| {
        id(I::SourcedMetadata(rbac::SourcedMetadata {
            metadata_matcher: Some(MetadataMatcher {
                filter: "envoy.filters.http.jwt_authn".into(),
                path: std::iter::once(JWT_PAYLOAD)
                    .chain(path.iter().copied())
                    .map(|k| metadata_matcher::PathSegment {
                        segment: Some(metadata_matcher::path_segment::Segment::Key(k.into())),
                    })
                    .collect(),
                value: Some(value),
                invert: false,
            }),
            metadata_source: 0,
        }))
    };
    if v == "*" {
        return meta(ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::PresentMatch(true)),
        });
    }
    let string = ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::StringMatch(wildcard(v, false))),
    };
    id_or(vec![
        meta(string.clone()),
        meta(ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
                ListMatcher {
                    match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(string))),
                },
            ))),
        }),
    ])
}

/// A request principal `<iss>/<sub>` (forms: `*`, `iss/sub`, `iss/*`, `*/sub`).
fn request_principal(v: &str) -> rbac::Principal {
    if v == "*" {
        return claim(&["iss"], "*");
    }
    let (iss, sub) = v.rsplit_once('/').expect("validated");
    id_and(vec![claim(&["iss"], iss), claim(&["sub"], sub)])
}

/// `:authority` equal to the host, with or without a port (`Host: a.com:8080`) and with or
/// without the root's trailing dot (`a.com.`, the same name).
fn host(v: &str, ignore_case: bool) -> rbac::Permission {
    if v == "*" {
        return perm(P::Header(present(":authority")));
    }
    let auth = |m: MatchPattern| perm(P::Header(header(":authority", sm(m, ignore_case))));
    let forms = if let Some(s) = v.strip_prefix('*') {
        vec![
            MatchPattern::Suffix(s.into()),
            MatchPattern::Suffix(format!("{s}.")),
            MatchPattern::Contains(format!("{s}:")),
            MatchPattern::Contains(format!("{s}.:")),
        ]
    } else if let Some(p) = v.strip_suffix('*') {
        vec![MatchPattern::Prefix(p.into())]
    } else {
        vec![
            MatchPattern::Exact(v.into()),
            MatchPattern::Exact(format!("{v}.")),
            MatchPattern::Prefix(format!("{v}:")),
            MatchPattern::Prefix(format!("{v}.:")),
        ]
    };
    perm_or(forms.into_iter().map(auth).collect())
}

fn path(v: &str, ignore_case: bool) -> rbac::Permission {
    perm(P::UrlPath(PathMatcher {
        rule: Some(path_matcher::Rule::Path(wildcard(v, ignore_case))),
    }))
}

/// One `to.operation`; None when it can never match on this form.
fn operation(o: &Operation, cx: Ctx) -> Option<rbac::Permission> {
    let mut acc = Vec::new();
    let http_only = !(o.hosts.is_empty()
        && o.not_hosts.is_empty()
        && o.methods.is_empty()
        && o.not_methods.is_empty()
        && o.paths.is_empty()
        && o.not_paths.is_empty());
    if cx.form == Form::Tcp && http_only && cx.action == AuthzAction::Allow {
        return None;
    }
    if cx.form == Form::Http {
        // A positive match ignores case when matching more is safe; an exclusion when
        // excluding more is.
        let broad = cx.broad();
        // Host names are case-insensitive (DNS): matched so either way, as Istio does.
        push_perm(&mut acc, &o.hosts, &o.not_hosts, |v, _| host(v, true));
        push_perm(&mut acc, &o.methods, &o.not_methods, |v, _| {
            perm(P::Header(header(
                ":method",
                sm(MatchPattern::Exact(v.into()), false),
            )))
        });
        push_perm(&mut acc, &o.paths, &o.not_paths, |v, neg| {
            path(v, broad != neg)
        });
    }
    push_perm(&mut acc, &o.ports, &o.not_ports, |v, _| {
        perm(P::DestinationPort(v.parse().expect("validated")))
    });
    Some(perm_and(acc))
}

enum Cond {
    Perm(rbac::Permission),
    Id(rbac::Principal),
    /// An HTTP-only condition dropped from a DENY rule on TCP.
    Skip,
}

/// One `when` condition; None when the rule can never match on this form.
fn condition(c: &Condition, cx: Ctx) -> Option<Cond> {
    let mut ids = Vec::new();
    let mut perms = Vec::new();
    match c.key.as_str() {
        "source.ip" => push_id(&mut ids, &c.values, &c.not_values, |v| {
            id(I::DirectRemoteIp(cidr(v)))
        }),
        "remote.ip" => push_id(&mut ids, &c.values, &c.not_values, |v| {
            id(I::RemoteIp(cidr(v)))
        }),
        "source.namespace" => push_id(&mut ids, &c.values, &c.not_values, namespace),
        "source.principal" => push_id(&mut ids, &c.values, &c.not_values, principal),
        "destination.ip" => push_perm(&mut perms, &c.values, &c.not_values, |v, _| {
            perm(P::DestinationIp(cidr(v)))
        }),
        "destination.port" => push_perm(&mut perms, &c.values, &c.not_values, |v, _| {
            perm(P::DestinationPort(v.parse().expect("validated")))
        }),
        "connection.sni" => push_perm(&mut perms, &c.values, &c.not_values, |v, _| {
            perm(P::RequestedServerName(wildcard(v, false)))
        }),
        k if k.starts_with("request.auth.") => {
            if cx.form == Form::Tcp {
                return match cx.action {
                    AuthzAction::Allow => None,
                    _ => Some(Cond::Skip),
                };
            }
            match k {
                "request.auth.principal" => {
                    push_id(&mut ids, &c.values, &c.not_values, request_principal)
                }
                "request.auth.audiences" => {
                    push_id(&mut ids, &c.values, &c.not_values, |v| claim(&["aud"], v))
                }
                "request.auth.presenter" => {
                    push_id(&mut ids, &c.values, &c.not_values, |v| claim(&["azp"], v))
                }
                k => {
                    let path = claim_path(k).expect("validated");
                    push_id(&mut ids, &c.values, &c.not_values, |v| claim(&path, v))
                }
            }
        }
        k => {
            let h = header_key(k).expect("validated");
            if cx.form == Form::Tcp {
                return match cx.action {
                    AuthzAction::Allow => None,
                    _ => Some(Cond::Skip),
                };
            }
            push_id(&mut ids, &c.values, &c.not_values, |v| {
                if v == "*" {
                    id(I::Header(present(h)))
                } else {
                    id(I::Header(header(h, wildcard(v, false))))
                }
            });
        }
    }
    Some(if !ids.is_empty() {
        Cond::Id(id_and(ids))
    } else {
        Cond::Perm(perm_and(perms))
    })
}

#[cfg(test)]
mod tests {
    use crate::model::{MeshConfig, Proxy};

    const REGISTRY: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  clusterIP: 10.1.1.1\n  selector: {app: b}\n  ports: [{name: http, port: 8080}]\n---\n\
        apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: b-1}\nspec:\n  address: 10.2.2.2\n  serviceAccount: b\n  labels: {app: b, security.istio.io/tlsMode: istio}\n---\n";

    fn inbound_json(policies: &str) -> String {
        let text = format!("{REGISTRY}{policies}");
        let w = crate::app::world_from_files(&[("t.yaml", text.as_str())], MeshConfig::default());
        assert!(w.errors.is_empty(), "{:?}", w.errors);
        let proxy = Proxy {
            namespace: "default".into(),
            ips: vec!["10.2.2.2".into()],
            labels: [("app".to_string(), "b".to_string())].into(),
            mtls: true,
            ..Default::default()
        };
        let key = crate::translate::listener::inbound_key(&w, &proxy);
        let routes = crate::translate::listener::inbound_routes(&key);
        serde_json::to_string(
            &routes
                .iter()
                .map(crate::envoy_json::to_json)
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn policies_reach_the_inbound_chains() {
        let j = inbound_json(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: marker-0}\nspec:\n  action: AUDIT\n  rules: [{to: [{operation: {paths: [\"/__marker\"]}}]}]\n",
        );
        assert!(j.contains("policy[marker-0]"), "{j}");
    }
}

//! RDS: one route configuration per outbound HTTP port, named by the port. A virtual host
//! per service on that port answers its short name, `name.ns`, the FQDN and the VIPs, each
//! with and without the port. A VirtualService owning the host replaces the default route
//! with its own, in order (first match wins).

use super::cluster::effective;
use super::*;
use crate::api::networking::{self as net, Destination, HeaderOperations, HttpRoute};
use crate::api::StringMatch;
use crate::model::{selects, Service};
use envoy_types::pb::envoy::config::route::v3 as rt;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as cfault;
use envoy_types::pb::envoy::extensions::filters::http::{cors::v3 as cors, fault::v3 as fault};
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::envoy::r#type::v3 as etype;
use std::collections::{BTreeMap, BTreeSet};

/// Route configurations for one proxy (source namespace and labels matter for matches).
pub fn outbound(world: &World, proxy: &Proxy) -> Vec<rt::RouteConfiguration> {
    layout(world, proxy)
        .into_iter()
        .map(|l| {
            let mut rc = settings(l.port);
            rc.virtual_hosts = l
                .hosts
                .iter()
                .map(|(svc, domains)| service_vhost(world, proxy, svc, l.port, domains.clone()))
                .chain([fallback_vhost(l.allow_any)])
                .collect();
            rc
        })
        .collect()
}

/// What a proxy's route configuration of one port is made of, before any route is built:
/// the services in its scope with the host names each answers (a name goes to the first
/// service that claims it), and the fallback for unknown hosts. Generation can then build
/// (or reuse) one virtual host at a time.
pub struct Layout<'w> {
    pub port: u32,
    pub allow_any: bool,
    pub hosts: Vec<(&'w Service, Vec<String>)>,
}

pub fn layout<'w>(world: &'w World, proxy: &Proxy) -> Vec<Layout<'w>> {
    let scope = world.scope(&proxy.namespace, &proxy.labels);
    let mut by_port: BTreeMap<u32, Vec<&Service>> = BTreeMap::new();
    for svc in world
        .services
        .values()
        .filter(|s| scope.includes(&s.hostname))
    {
        for sp in svc
            .ports
            .iter()
            .filter(|sp| scope.includes_on(&svc.hostname, sp.port))
        {
            if sp.protocol.is_http() || sp.protocol == crate::model::Protocol::Unknown {
                by_port.entry(sp.port).or_default().push(svc);
            }
        }
    }
    by_port
        .into_iter()
        .map(|(port, svcs)| {
            let mut used = BTreeSet::new();
            let hosts = svcs
                .into_iter()
                .filter_map(|svc| {
                    let domains: Vec<String> = domains(svc, port, &proxy.namespace, &world.mesh)
                        .into_iter()
                        .filter(|d| used.insert(d.clone()))
                        .collect();
                    (!domains.is_empty()).then_some((svc, domains))
                })
                .collect();
            Layout {
                port,
                allow_any: scope.allow_any,
                hosts,
            }
        })
        .collect()
}

/// A route configuration's own settings (its virtual hosts go in separately).
pub fn settings(port: u32) -> rt::RouteConfiguration {
    rt::RouteConfiguration {
        name: port.to_string(),
        validate_clusters: boolv(false),
        ..Default::default()
    }
}

/// The virtual host of one service on one port: its VirtualService's routes, or the
/// default route to the service.
pub fn service_vhost(
    world: &World,
    proxy: &Proxy,
    svc: &Service,
    port: u32,
    domains: Vec<String>,
) -> rt::VirtualHost {
    let routes = match world.virtual_service_for(&svc.hostname) {
        Some(vs) => vs_routes(world, proxy, &vs.spec, port, "mesh"),
        None => vec![default_route(world, svc, port)],
    };
    rt::VirtualHost {
        name: format!("{}:{port}", svc.hostname),
        domains,
        routes,
        include_request_attempt_count: true,
        ..Default::default()
    }
}

/// The last virtual host: everything no service claims goes out as is (ALLOW_ANY) or gets
/// a 502 (REGISTRY_ONLY).
pub fn fallback_vhost(allow_any: bool) -> rt::VirtualHost {
    let fallback = if allow_any {
        route_to(PASSTHROUGH, "allow_any")
    } else {
        rt::Route {
            name: "block_all".into(),
            r#match: prefix_match("/"),
            action: Some(rt::route::Action::DirectResponse(
                rt::DirectResponseAction {
                    status: 502,
                    ..Default::default()
                },
            )),
            ..Default::default()
        }
    };
    rt::VirtualHost {
        name: if allow_any {
            "allow_any".into()
        } else {
            "block_all".into()
        },
        domains: vec!["*".into()],
        routes: vec![fallback],
        ..Default::default()
    }
}

/// Host names a virtual host answers, as Istio lays them out.
pub fn domains(
    svc: &Service,
    port: u32,
    proxy_ns: &str,
    mesh: &crate::model::MeshConfig,
) -> Vec<String> {
    let mut names = vec![svc.hostname.clone()];
    names.extend(svc.kube_names(mesh));
    // The bare name, from the service's own namespace.
    let kube_suffix = format!(".{}.svc.{}", svc.namespace, mesh.domain);
    if let Some(short) = svc.hostname.strip_suffix(&kube_suffix) {
        if svc.namespace == proxy_ns {
            names.push(short.to_string());
        }
    }
    names.extend(svc.vips.iter().cloned());
    let mut out = Vec::new();
    for n in names {
        out.push(format!("{n}:{port}"));
        out.push(n);
    }
    out
}

fn prefix_match(p: &str) -> Option<rt::RouteMatch> {
    Some(rt::RouteMatch {
        path_specifier: Some(rt::route_match::PathSpecifier::Prefix(p.into())),
        ..Default::default()
    })
}

fn route_to(cluster: &str, name: &str) -> rt::Route {
    rt::Route {
        name: name.into(),
        r#match: prefix_match("/"),
        action: Some(rt::route::Action::Route(rt::RouteAction {
            cluster_specifier: Some(rt::route_action::ClusterSpecifier::Cluster(cluster.into())),
            timeout: Some(secs(0)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Istio's default retry policy: 2 attempts on connection failures and 503.
fn default_retry() -> rt::RetryPolicy {
    rt::RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
            .into(),
        num_retries: u32v(2),
        retriable_status_codes: vec![503],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

fn default_route(world: &World, svc: &Service, port: u32) -> rt::Route {
    let cluster = outbound_name(port, "", &svc.hostname);
    let mut r = route_to(&cluster, "default");
    if let Some(rt::route::Action::Route(a)) = &mut r.action {
        a.retry_policy = Some(default_retry());
        a.hash_policy = hash_policy(world, &svc.hostname, "", port);
    }
    r
}

/// Consistent-hash load balancing needs a hash policy on the route.
fn hash_policy(
    world: &World,
    host: &str,
    subset: &str,
    port: u32,
) -> Vec<rt::route_action::HashPolicy> {
    use rt::route_action::hash_policy::{self as hp, PolicySpecifier};
    let dr = world.destination_rules.get(host).map(|d| &**d);
    let Some(ch) = effective(dr, subset, port)
        .load_balancer
        .and_then(|l| l.consistent_hash)
    else {
        return vec![];
    };
    let spec = if let Some(h) = ch.http_header_name {
        PolicySpecifier::Header(hp::Header {
            header_name: h.to_ascii_lowercase(),
            regex_rewrite: None,
        })
    } else if let Some(c) = ch.http_cookie {
        PolicySpecifier::Cookie(hp::Cookie {
            name: c.name,
            path: c.path,
            ttl: dur_str(&c.ttl),
            ..Default::default()
        })
    } else if ch.use_source_ip == Some(true) {
        PolicySpecifier::ConnectionProperties(hp::ConnectionProperties { source_ip: true })
    } else if let Some(q) = ch.http_query_parameter_name {
        PolicySpecifier::QueryParameter(hp::QueryParameter { name: q })
    } else {
        return vec![];
    };
    vec![rt::route_action::HashPolicy {
        policy_specifier: Some(spec),
        terminal: false,
    }]
}

/// Resolve the port of a destination: its own, the service's only port, or the listener's.
fn dest_port(world: &World, d: &Destination, listener_port: u32) -> u32 {
    if let Some(p) = &d.port {
        return p.number;
    }
    match world.services.get(&d.host) {
        Some(s) if s.ports.len() == 1 => s.ports[0].port,
        Some(s) if s.port(listener_port).is_some() => listener_port,
        Some(s) if !s.ports.is_empty() => s.ports[0].port,
        _ => listener_port,
    }
}

pub(crate) fn dest_cluster(world: &World, d: &Destination, listener_port: u32) -> String {
    outbound_name(dest_port(world, d, listener_port), &d.subset, &d.host)
}

fn string_matcher(m: &StringMatch, ignore_case: bool) -> matcher::StringMatcher {
    use matcher::string_matcher::MatchPattern;
    let pattern = if let Some(e) = &m.exact {
        MatchPattern::Exact(e.clone())
    } else if let Some(p) = &m.prefix {
        MatchPattern::Prefix(p.clone())
    } else {
        MatchPattern::SafeRegex(matcher::RegexMatcher {
            regex: m.regex.clone().unwrap_or_default(),
            ..Default::default()
        })
    };
    matcher::StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    }
}

fn header_matcher(name: &str, m: &StringMatch, invert: bool) -> rt::HeaderMatcher {
    rt::HeaderMatcher {
        name: name.to_ascii_lowercase(),
        header_match_specifier: Some(rt::header_matcher::HeaderMatchSpecifier::StringMatch(
            string_matcher(m, false),
        )),
        invert_match: invert,
        ..Default::default()
    }
}

fn route_match(m: Option<&net::HttpMatchRequest>) -> rt::RouteMatch {
    use rt::route_match::PathSpecifier;
    let Some(m) = m else {
        return prefix_match("/").unwrap();
    };
    let path = match &m.uri {
        Some(StringMatch { exact: Some(e), .. }) => PathSpecifier::Path(e.clone()),
        Some(StringMatch {
            prefix: Some(p), ..
        }) => PathSpecifier::Prefix(p.clone()),
        Some(StringMatch { regex: Some(r), .. }) => {
            PathSpecifier::SafeRegex(matcher::RegexMatcher {
                regex: r.clone(),
                ..Default::default()
            })
        }
        _ => PathSpecifier::Prefix("/".into()),
    };
    let mut headers = Vec::new();
    for (name, sm) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(sm) = sm {
            headers.push(header_matcher(name, sm, false));
        }
    }
    headers.extend(m.headers.iter().map(|(k, v)| header_matcher(k, v, false)));
    headers.extend(
        m.without_headers
            .iter()
            .map(|(k, v)| header_matcher(k, v, true)),
    );
    let query_parameters = m
        .query_params
        .iter()
        .map(|(k, v)| rt::QueryParameterMatcher {
            name: k.clone(),
            query_parameter_match_specifier: Some(
                rt::query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                    string_matcher(v, false),
                ),
            ),
        })
        .collect();
    rt::RouteMatch {
        path_specifier: Some(path),
        case_sensitive: if m.ignore_uri_case {
            boolv(false)
        } else {
            None
        },
        headers,
        query_parameters,
        ..Default::default()
    }
}

fn header_ops(ops: Option<&HeaderOperations>) -> (Vec<core::HeaderValueOption>, Vec<String>) {
    let Some(ops) = ops else {
        return (vec![], vec![]);
    };
    let mut add = Vec::new();
    for (k, v, action) in ops
        .set
        .iter()
        .map(|(k, v)| {
            (
                k,
                v,
                core::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd,
            )
        })
        .chain(ops.add.iter().map(|(k, v)| {
            (
                k,
                v,
                core::header_value_option::HeaderAppendAction::AppendIfExistsOrAdd,
            )
        }))
    {
        add.push(core::HeaderValueOption {
            header: Some(core::HeaderValue {
                key: k.clone(),
                value: v.clone(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        });
    }
    (add, ops.remove.clone())
}

fn fraction(pct: f64) -> etype::FractionalPercent {
    etype::FractionalPercent {
        numerator: (pct.clamp(0.0, 100.0) * 10_000.0).round() as u32,
        denominator: etype::fractional_percent::DenominatorType::Million as i32,
    }
}

fn fault_config(f: &net::HttpFaultInjection) -> fault::HttpFault {
    let delay = f.delay.as_ref().map(|d| cfault::FaultDelay {
        fault_delay_secifier: dur_str(&d.fixed_delay)
            .map(cfault::fault_delay::FaultDelaySecifier::FixedDelay),
        percentage: Some(fraction(
            d.percentage
                .as_ref()
                .map(|p| p.value)
                .or(d.percent.map(f64::from))
                .unwrap_or(100.0),
        )),
        ..Default::default()
    });
    let abort = f.abort.as_ref().map(|a| fault::FaultAbort {
        error_type: a.http_status.map(fault::fault_abort::ErrorType::HttpStatus),
        percentage: Some(fraction(
            a.percentage.as_ref().map(|p| p.value).unwrap_or(100.0),
        )),
        ..Default::default()
    });
    fault::HttpFault {
        delay,
        abort,
        ..Default::default()
    }
}

fn cors_config(c: &net::CorsPolicy) -> cors::CorsPolicy {
    let mut origins: Vec<matcher::StringMatcher> = c
        .allow_origins
        .iter()
        .map(|o| string_matcher(o, false))
        .collect();
    origins.extend(c.allow_origin.iter().map(|o| {
        string_matcher(
            &StringMatch {
                exact: Some(o.clone()),
                ..Default::default()
            },
            false,
        )
    }));
    cors::CorsPolicy {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: dur_str(&c.max_age)
            .map(|d| d.seconds.to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.and_then(boolv),
        forward_not_matching_preflights: match c.unmatched_preflights.as_deref() {
            Some("IGNORE") => boolv(false),
            _ => None,
        },
        ..Default::default()
    }
}

fn retry_policy(r: Option<&net::HttpRetry>) -> Option<rt::RetryPolicy> {
    let Some(r) = r else {
        return Some(default_retry());
    };
    if r.attempts == 0 {
        return None;
    }
    let mut on = Vec::new();
    let mut codes = Vec::new();
    let spec = if r.retry_on.is_empty() {
        "connect-failure,refused-stream,unavailable,cancelled,503"
    } else {
        &r.retry_on
    };
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u32>() {
            Ok(code) => codes.push(code),
            Err(_) => on.push(part.to_string()),
        }
    }
    if !codes.is_empty() && !on.iter().any(|o| o == "retriable-status-codes") {
        on.push("retriable-status-codes".into());
    }
    Some(rt::RetryPolicy {
        retry_on: on.join(","),
        num_retries: u32v(r.attempts.clamp(0, u32::MAX as i64) as u32),
        per_try_timeout: dur_str(&r.per_try_timeout),
        retriable_status_codes: codes,
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    })
}

fn source_applies(m: &net::HttpMatchRequest, proxy: &Proxy, port: u32, bound: &str) -> bool {
    (m.gateways.is_empty() || m.gateways.iter().any(|g| g == bound))
        && (m.source_labels.is_empty() || selects(&m.source_labels, &proxy.labels))
        && (m.source_namespace.is_empty() || m.source_namespace == proxy.namespace)
        && m.port.is_none_or(|p| p == port)
}

/// Routes of a VirtualService for one listener port, where it is bound as `bound` (`mesh`
/// for sidecars, `ns/name` for a gateway). Each match block becomes one Envoy route, in
/// order; match blocks not applicable to this proxy, port or gateway are dropped (a route
/// whose every match block is for elsewhere is dropped with them).
pub fn vs_routes(
    world: &World,
    proxy: &Proxy,
    vs: &net::VirtualService,
    port: u32,
    bound: &str,
) -> Vec<rt::Route> {
    let mut out = Vec::new();
    for (i, h) in vs.http.iter().enumerate() {
        let matches: Vec<Option<&net::HttpMatchRequest>> = if h.matches.is_empty() {
            vec![None]
        } else {
            h.matches
                .iter()
                .filter(|m| source_applies(m, proxy, port, bound))
                .map(Some)
                .collect()
        };
        for m in matches {
            out.push(http_route(world, h, m, i, port));
        }
    }
    out
}

fn http_route(
    world: &World,
    h: &HttpRoute,
    m: Option<&net::HttpMatchRequest>,
    i: usize,
    port: u32,
) -> rt::Route {
    let name = if !h.name.is_empty() {
        h.name.clone()
    } else {
        format!("route-{i}")
    };
    let (req_add, req_remove) = header_ops(h.headers.as_ref().and_then(|x| x.request.as_ref()));
    let (resp_add, resp_remove) = header_ops(h.headers.as_ref().and_then(|x| x.response.as_ref()));
    let mut r = rt::Route {
        name,
        r#match: Some(route_match(m)),
        request_headers_to_add: req_add,
        request_headers_to_remove: req_remove,
        response_headers_to_add: resp_add,
        response_headers_to_remove: resp_remove,
        ..Default::default()
    };
    if let Some(f) = &h.fault {
        r.typed_per_filter_config
            .insert("envoy.filters.http.fault".into(), any(fault_config(f)));
    }
    if let Some(c) = &h.cors_policy {
        r.typed_per_filter_config
            .insert("envoy.filters.http.cors".into(), any(cors_config(c)));
    }
    if let Some(rd) = &h.redirect {
        use rt::redirect_action::*;
        let code = match rd.redirect_code.unwrap_or(301) {
            302 => RedirectResponseCode::Found,
            303 => RedirectResponseCode::SeeOther,
            307 => RedirectResponseCode::TemporaryRedirect,
            308 => RedirectResponseCode::PermanentRedirect,
            _ => RedirectResponseCode::MovedPermanently,
        };
        r.action = Some(rt::route::Action::Redirect(rt::RedirectAction {
            host_redirect: rd.authority.clone(),
            port_redirect: rd.port.unwrap_or(0),
            scheme_rewrite_specifier: (!rd.scheme.is_empty())
                .then(|| SchemeRewriteSpecifier::SchemeRedirect(rd.scheme.clone())),
            path_rewrite_specifier: (!rd.uri.is_empty())
                .then(|| PathRewriteSpecifier::PathRedirect(rd.uri.clone())),
            response_code: code as i32,
            ..Default::default()
        }));
        return r;
    }
    if let Some(d) = &h.direct_response {
        let body = d.body.as_ref().map(|b| core::DataSource {
            specifier: Some(match (&b.string, &b.bytes) {
                (Some(s), _) => core::data_source::Specifier::InlineString(s.clone()),
                // Validation guarantees valid base64.
                (None, Some(b)) => core::data_source::Specifier::InlineBytes(
                    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b)
                        .unwrap_or_default(),
                ),
                (None, None) => core::data_source::Specifier::InlineString(String::new()),
            }),
            ..Default::default()
        });
        r.action = Some(rt::route::Action::DirectResponse(
            rt::DirectResponseAction {
                status: d.status,
                body,
                ..Default::default()
            },
        ));
        return r;
    }
    let dests: Vec<&net::HttpRouteDestination> = if h.route.len() > 1 {
        h.route.iter().filter(|d| d.weight > 0).collect()
    } else {
        h.route.iter().collect()
    };
    let mut a = rt::RouteAction {
        timeout: Some(dur_str(&h.timeout).unwrap_or(secs(0))),
        retry_policy: retry_policy(h.retries.as_ref()),
        ..Default::default()
    };
    if dests.len() == 1 {
        let d = dests[0];
        a.cluster_specifier = Some(rt::route_action::ClusterSpecifier::Cluster(dest_cluster(
            world,
            &d.destination,
            port,
        )));
        let (add, rm) = header_ops(d.headers.as_ref().and_then(|x| x.request.as_ref()));
        r.request_headers_to_add.extend(add);
        r.request_headers_to_remove.extend(rm);
        let (add, rm) = header_ops(d.headers.as_ref().and_then(|x| x.response.as_ref()));
        r.response_headers_to_add.extend(add);
        r.response_headers_to_remove.extend(rm);
    } else {
        let clusters = dests
            .iter()
            .map(|d| {
                let (req_add, req_rm) =
                    header_ops(d.headers.as_ref().and_then(|x| x.request.as_ref()));
                let (resp_add, resp_rm) =
                    header_ops(d.headers.as_ref().and_then(|x| x.response.as_ref()));
                rt::weighted_cluster::ClusterWeight {
                    name: dest_cluster(world, &d.destination, port),
                    weight: u32v(d.weight as u32),
                    request_headers_to_add: req_add,
                    request_headers_to_remove: req_rm,
                    response_headers_to_add: resp_add,
                    response_headers_to_remove: resp_rm,
                    ..Default::default()
                }
            })
            .collect();
        a.cluster_specifier = Some(rt::route_action::ClusterSpecifier::WeightedClusters(
            rt::WeightedCluster {
                clusters,
                ..Default::default()
            },
        ));
    }
    if let Some(d) = dests.first() {
        a.hash_policy = hash_policy(
            world,
            &d.destination.host,
            &d.destination.subset,
            dest_port(world, &d.destination, port),
        );
    }
    if let Some(rw) = &h.rewrite {
        if !rw.uri.is_empty() {
            a.prefix_rewrite = rw.uri.clone();
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            a.regex_rewrite = Some(matcher::RegexMatchAndSubstitute {
                pattern: Some(matcher::RegexMatcher {
                    regex: rr.pattern.clone(),
                    ..Default::default()
                }),
                substitution: rr.rewrite.clone(),
            });
        }
        if !rw.authority.is_empty() {
            a.host_rewrite_specifier = Some(
                rt::route_action::HostRewriteSpecifier::HostRewriteLiteral(rw.authority.clone()),
            );
        }
    }
    let mut mirrors: Vec<(&Destination, f64)> = Vec::new();
    if let Some(m) = &h.mirror {
        let pct = h
            .mirror_percentage
            .as_ref()
            .map(|p| p.value)
            .or(h.mirror_percent.map(f64::from))
            .unwrap_or(100.0);
        mirrors.push((m, pct));
    }
    for m in &h.mirrors {
        mirrors.push((
            &m.destination,
            m.percentage.as_ref().map(|p| p.value).unwrap_or(100.0),
        ));
    }
    a.request_mirror_policies = mirrors
        .into_iter()
        .map(|(d, pct)| rt::route_action::RequestMirrorPolicy {
            cluster: dest_cluster(world, d, port),
            runtime_fraction: Some(core::RuntimeFractionalPercent {
                default_value: Some(fraction(pct)),
                runtime_key: String::new(),
            }),
            trace_sampled: boolv(false),
            ..Default::default()
        })
        .collect();
    r.action = Some(rt::route::Action::Route(a));
    r
}

/// Every cluster the route configurations name (routes, weighted clusters, mirrors).
/// The Virtual Host Discovery form of a route configuration's settings (VHDS; Envoy
/// accepts it on delta ADS only): the configuration names ADS as its VHDS source, and each
/// of its virtual hosts travels as a resource of its own named by `vhds_name`. One
/// VirtualService edit then changes one small resource instead of its port's whole
/// configuration.
pub fn vhds_settings(mut rc: rt::RouteConfiguration) -> rt::RouteConfiguration {
    rc.vhds = Some(rt::Vhds {
        config_source: ads(),
    });
    rc
}

/// A virtual host's VHDS resource name, `<configuration>/<virtual host>`: Envoy hands a
/// VHDS resource to the configuration its prefix names, and removes a virtual host only if
/// its `name` equals the resource name.
pub fn vhds_name(config: &str, vhost: &str) -> String {
    format!("{config}/{vhost}")
}

pub fn referenced_clusters(rcs: &[rt::RouteConfiguration]) -> Vec<String> {
    vhost_clusters(rcs.iter().flat_map(|rc| rc.virtual_hosts.iter()))
}

/// Clusters the routes of these virtual hosts send or mirror to.
pub fn vhost_clusters<'a>(vhosts: impl Iterator<Item = &'a rt::VirtualHost>) -> Vec<String> {
    let mut out = Vec::new();
    for r in vhosts.flat_map(|v| v.routes.iter()) {
        if let Some(rt::route::Action::Route(a)) = &r.action {
            match &a.cluster_specifier {
                Some(rt::route_action::ClusterSpecifier::Cluster(c)) => out.push(c.clone()),
                Some(rt::route_action::ClusterSpecifier::WeightedClusters(w)) => {
                    out.extend(w.clusters.iter().map(|c| c.name.clone()))
                }
                _ => {}
            }
            out.extend(a.request_mirror_policies.iter().map(|m| m.cluster.clone()));
        }
    }
    out
}

//! The Kubernetes Gateway API as Istio config, as istiod translates it: each listener of a
//! Gateway of class `istio` (or `pilotfish`) is a one-server Istio Gateway selecting the
//! gateway proxies of its namespace labelled `gateway.networking.k8s.io/gateway-name`, and
//! each HTTPRoute is a VirtualService bound to the listeners that accept it, its rules in
//! the Gateway API's precedence order.
use super::*;
use crate::api::gateway_api::{HttpRouteFilter, HttpRouteMatch, HttpRouteRule, KubeGateway};
use crate::api::networking as net;
use crate::api::{Kind, Spec, StringMatch};

/// The label a Gateway's proxies carry (as on the pods Istio deploys for it).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The GatewayClasses whose Gateways pilotfish serves; others belong to another controller.
pub const CLASSES: &[&str] = &["istio", "pilotfish"];

/// The Istio Gateway name of one listener (`namespace/<gateway>:<listener>` binds it).
fn listener_name(gateway: &str, listener: &str) -> String {
    format!("{gateway}:{listener}")
}

pub struct Converted {
    pub gateways: Vec<Arc<GatewayCfg>>,
    pub virtual_services: Vec<Arc<VirtualSvc>>,
    pub errors: Vec<(ObjectKey, ConfigError)>,
}

use super::blame as error;

/// Which namespaces' routes a listener takes: `Same` (the default) or `All`.
fn routes_from(l: &crate::api::gateway_api::Listener) -> &str {
    l.allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref())
        .and_then(|n| n.from.as_deref())
        .unwrap_or("Same")
}

/// `pattern` (a host, `*.suffix` a wildcard) and `host` can name the same host.
fn intersects(a: &str, b: &str) -> bool {
    let covers = |w: &str, h: &str| match w.strip_prefix('*') {
        Some(suffix) => h.ends_with(suffix) && h.len() > suffix.len(),
        None => w == h,
    };
    a == b || covers(a, b) || covers(b, a)
}

pub fn convert<'a>(
    gateways: impl Iterator<Item = &'a Arc<Resource>>,
    routes: impl Iterator<Item = &'a Arc<Resource>>,
    services: &BTreeMap<String, Arc<Service>>,
    domain: &str,
) -> Converted {
    let mut out = Converted {
        gateways: Vec::new(),
        virtual_services: Vec::new(),
        errors: Vec::new(),
    };
    // Ours, by (namespace, name).
    let mut ours: BTreeMap<(String, String), &KubeGateway> = BTreeMap::new();
    for r in gateways {
        let Spec::KubeGateway(g) = &r.spec else {
            continue;
        };
        if !CLASSES.contains(&g.gateway_class_name.as_str()) {
            continue;
        }
        ours.insert((r.key.namespace.clone(), r.key.name.clone()), g);
        for l in &g.listeners {
            let ns = if routes_from(l) == "All" { "*" } else { "." };
            let host = l.hostname.as_deref().unwrap_or("*");
            let tls = (l.protocol == "HTTPS").then(|| net::ServerTlsSettings {
                mode: Some("SIMPLE".into()),
                credential_name: l
                    .tls
                    .as_ref()
                    .and_then(|t| t.certificate_refs.first())
                    .map(|c| c.name.clone()),
                ..Default::default()
            });
            out.gateways.push(Arc::new(GatewayCfg {
                key: ObjectKey {
                    kind: Kind::KubeGateway,
                    namespace: r.key.namespace.clone(),
                    name: listener_name(&r.key.name, &l.name),
                },
                selector: BTreeMap::from([(GATEWAY_NAME_LABEL.to_string(), r.key.name.clone())]),
                namespace_only: true,
                servers: vec![net::GatewayServer {
                    port: net::ServicePort {
                        number: l.port,
                        protocol: l.protocol.clone(),
                        name: l.name.clone(),
                        target_port: None,
                    },
                    hosts: vec![format!("{ns}/{host}")],
                    tls,
                    ..Default::default()
                }],
            }));
        }
    }

    for r in routes {
        let Spec::HttpRoute(hr) = &r.spec else {
            continue;
        };
        let ns = &r.key.namespace;
        let mut bound = Vec::new();
        let mut bad = Vec::new();
        // Mesh routing (GAMMA): Service parents are the hosts the sidecars route.
        let mut mesh_hosts = Vec::new();
        for (i, p) in hr.parent_refs.iter().enumerate() {
            if p.kind.as_deref() == Some("Service") {
                let host = format!("{}.{ns}.svc.{domain}", p.name);
                if services.contains_key(&host) {
                    mesh_hosts.push(host);
                } else {
                    bad.push(error(
                        r,
                        format!("spec.parentRefs[{i}]"),
                        format!("Service {ns}/{} not found", p.name),
                    ));
                }
                continue;
            }
            let gw_ns = p.namespace.clone().unwrap_or_else(|| ns.clone());
            let Some(g) = ours.get(&(gw_ns.clone(), p.name.clone())) else {
                // Another controller's Gateway, or none (yet): nothing of ours to bind.
                continue;
            };
            let before = bound.len();
            for l in &g.listeners {
                let from = routes_from(l);
                let accepts = p.section_name.as_ref().is_none_or(|s| *s == l.name)
                    && p.port.is_none_or(|port| port == l.port)
                    && (from == "All" || gw_ns == *ns)
                    && l.hostname.as_ref().is_none_or(|lh| {
                        hr.hostnames.is_empty() || hr.hostnames.iter().any(|h| intersects(h, lh))
                    });
                if accepts {
                    bound.push(format!("{gw_ns}/{}", listener_name(&p.name, &l.name)));
                }
            }
            if bound.len() == before {
                bad.push(error(
                    r,
                    format!("spec.parentRefs[{i}]"),
                    format!(
                        "no listener of Gateway {gw_ns}/{} accepts this route (sectionName, port, allowedRoutes, hostnames)",
                        p.name
                    ),
                ));
            }
        }
        let mut http = Vec::new();
        for (i, rule) in hr.rules.iter().enumerate() {
            match rule_routes(r, i, rule, services, domain) {
                Ok(routes) => http.extend(routes),
                Err(e) => bad.push(e),
            }
        }
        if !bad.is_empty() {
            out.errors.extend(bad);
            continue;
        }
        // The Gateway API's precedence: exact paths, then longer prefixes, then a method,
        // more header matches, more query matches; then rule order.
        http.sort_by(|a, b| a.0.cmp(&b.0));
        if !mesh_hosts.is_empty() {
            out.virtual_services.push(Arc::new(VirtualSvc {
                key: r.key.clone(),
                hosts: mesh_hosts.clone(),
                order: Vec::new(),
                spec: net::VirtualService {
                    hosts: mesh_hosts,
                    gateways: vec!["mesh".into()],
                    http: http.into_iter().map(|(_, h)| h).collect(),
                    ..Default::default()
                },
                gateways: vec!["mesh".into()],
            }));
            continue;
        }
        if bound.is_empty() {
            continue;
        }
        let hosts = if hr.hostnames.is_empty() {
            vec!["*".to_string()]
        } else {
            hr.hostnames.clone()
        };
        out.virtual_services.push(Arc::new(VirtualSvc {
            key: r.key.clone(),
            hosts: Vec::new(),
            order: http.iter().map(|(k, _)| k.clone()).collect(),
            spec: net::VirtualService {
                hosts,
                gateways: bound.clone(),
                http: http.into_iter().map(|(_, h)| h).collect(),
                ..Default::default()
            },
            gateways: bound,
        }));
    }
    out
}

type Precedence = RouteOrder;

/// The VirtualService routes of one rule: one per match (two for a path prefix other than
/// `/`: the path itself and what is under it, as the Gateway API's prefixes are whole
/// path segments).
fn rule_routes(
    r: &Resource,
    i: usize,
    rule: &HttpRouteRule,
    services: &BTreeMap<String, Arc<Service>>,
    domain: &str,
) -> Result<Vec<(Precedence, net::HttpRoute)>, (ObjectKey, ConfigError)> {
    let f = format!("spec.rules[{i}]");
    let ns = &r.key.namespace;
    let dest = |name: &str, port: Option<u32>, field: String| {
        let host = format!("{name}.{ns}.svc.{domain}");
        let port = port.unwrap_or(0);
        match services.get(&host) {
            Some(s) if s.ports.iter().any(|p| p.port == port) => Ok(net::Destination {
                host,
                subset: String::new(),
                port: Some(net::PortSelector { number: port }),
            }),
            Some(_) => Err(error(
                r,
                field,
                format!("Service {ns}/{name} has no port {port}"),
            )),
            None => Err(error(r, field, format!("Service {ns}/{name} not found"))),
        }
    };
    let mut route = Vec::new();
    for (j, b) in rule.backend_refs.iter().enumerate() {
        route.push(net::HttpRouteDestination {
            destination: dest(&b.name, b.port, format!("{f}.backendRefs[{j}]"))?,
            weight: i64::from(b.weight.unwrap_or(1)),
            headers: None,
        });
    }
    let mut base = net::HttpRoute {
        name: format!("{}.{i}", r.key.name),
        ..Default::default()
    };
    let redirect = rule.filters.iter().any(|x| x.kind == "RequestRedirect");
    if route.iter().all(|d| d.weight == 0) && !redirect {
        // No backend (or all weighted 0): the Gateway API answers 500.
        base.direct_response = Some(net::HttpDirectResponse {
            status: 500,
            body: None,
        });
    } else {
        base.route = route;
    }
    if let Some(t) = &rule.timeouts {
        base.timeout = t.request.clone().or_else(|| t.backend_request.clone());
    }
    let mut prefix_rewrite = None;
    for (j, flt) in rule.filters.iter().enumerate() {
        apply_filter(&mut base, flt, &mut prefix_rewrite, |b| {
            dest(
                &b.name,
                b.port,
                format!("{f}.filters[{j}].requestMirror.backendRef"),
            )
        })?;
    }
    let default_match = [HttpRouteMatch::default()];
    let matches = if rule.matches.is_empty() {
        &default_match[..]
    } else {
        &rule.matches[..]
    };
    let mut out = Vec::new();
    for (k, m) in matches.iter().enumerate() {
        let kind = m
            .path
            .as_ref()
            .and_then(|p| p.kind.as_deref())
            .unwrap_or("PathPrefix");
        let value = m
            .path
            .as_ref()
            .and_then(|p| p.value.as_deref())
            .unwrap_or("/");
        let common = net::HttpMatchRequest {
            method: m.method.as_ref().map(|x| StringMatch {
                exact: Some(x.clone()),
                ..Default::default()
            }),
            headers: m
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        value_match(h.kind.as_deref(), &h.value),
                    )
                })
                .collect(),
            query_params: m
                .query_params
                .iter()
                .map(|q| (q.name.clone(), value_match(q.kind.as_deref(), &q.value)))
                .collect(),
            ..Default::default()
        };
        let inv = |n: usize| u64::MAX - n as u64;
        let key = |rank: u8| -> Precedence {
            (
                rank,
                inv(if rank == 1 { value.len() } else { 0 }),
                u8::from(m.method.is_none()),
                inv(m.headers.len()),
                inv(m.query_params.len()),
                format!("{}/{}", r.key.namespace, r.key.name),
                i as u32,
                k as u32,
            )
        };
        let with = |uri: StringMatch, common: &net::HttpMatchRequest| net::HttpMatchRequest {
            uri: Some(uri),
            ..common.clone()
        };
        if prefix_rewrite.is_some() && kind != "PathPrefix" {
            return Err(error(
                r,
                format!("{f}.filters"),
                "URLRewrite ReplacePrefixMatch needs PathPrefix matches",
            ));
        }
        match kind {
            "Exact" => {
                let mut h = base.clone();
                h.matches = vec![with(sm_exact(value), &common)];
                out.push((key(0), h));
            }
            "RegularExpression" => {
                let mut h = base.clone();
                h.matches = vec![with(
                    StringMatch {
                        regex: Some(value.to_string()),
                        ..Default::default()
                    },
                    &common,
                )];
                out.push((key(2), h));
            }
            _ => {
                let trimmed = value.trim_end_matches('/');
                // `/foo` matches `/foo` and `/foo/...`, never `/foobar`.
                if !trimmed.is_empty() {
                    let mut h = base.clone();
                    h.matches = vec![with(sm_exact(trimmed), &common)];
                    if let (Some(rw), Some(r)) = (&prefix_rewrite, h.rewrite.as_mut()) {
                        r.uri = rw.clone();
                    }
                    out.push((key(1), h));
                }
                let mut h = base.clone();
                let under = format!("{trimmed}/");
                h.matches = vec![with(
                    StringMatch {
                        prefix: Some(under),
                        ..Default::default()
                    },
                    &common,
                )];
                if let (Some(rw), Some(r)) = (&prefix_rewrite, h.rewrite.as_mut()) {
                    r.uri = if rw.ends_with('/') {
                        rw.clone()
                    } else {
                        format!("{rw}/")
                    };
                }
                out.push((key(1), h));
            }
        }
    }
    Ok(out)
}

fn sm_exact(v: &str) -> StringMatch {
    StringMatch {
        exact: Some(v.to_string()),
        ..Default::default()
    }
}

fn value_match(kind: Option<&str>, value: &str) -> StringMatch {
    match kind {
        Some("RegularExpression") => StringMatch {
            regex: Some(value.to_string()),
            ..Default::default()
        },
        _ => sm_exact(value),
    }
}

/// One filter onto the route (validated already).
fn apply_filter(
    h: &mut net::HttpRoute,
    flt: &HttpRouteFilter,
    prefix_rewrite: &mut Option<String>,
    mirror_dest: impl Fn(
        &crate::api::gateway_api::BackendRef,
    ) -> Result<net::Destination, (ObjectKey, ConfigError)>,
) -> Result<(), (ObjectKey, ConfigError)> {
    let ops = |m: &crate::api::gateway_api::HeaderModifier| net::HeaderOperations {
        set: m
            .set
            .iter()
            .map(|x| (x.name.clone(), x.value.clone()))
            .collect(),
        add: m
            .add
            .iter()
            .map(|x| (x.name.clone(), x.value.clone()))
            .collect(),
        remove: m.remove.clone(),
    };
    if let Some(m) = &flt.request_header_modifier {
        h.headers.get_or_insert_with(Default::default).request = Some(ops(m));
    }
    if let Some(m) = &flt.response_header_modifier {
        h.headers.get_or_insert_with(Default::default).response = Some(ops(m));
    }
    if let Some(rd) = &flt.request_redirect {
        h.route.clear();
        h.direct_response = None;
        h.redirect = Some(net::HttpRedirect {
            uri: rd
                .path
                .as_ref()
                .and_then(|p| p.replace_full_path.clone())
                .unwrap_or_default(),
            authority: rd.hostname.clone().unwrap_or_default(),
            port: rd.port,
            derive_port: None,
            scheme: rd.scheme.clone().unwrap_or_default(),
            // The Gateway API's default is 302 (Istio's 301).
            redirect_code: Some(rd.status_code.unwrap_or(302)),
        });
    }
    if let Some(u) = &flt.url_rewrite {
        let mut rw = net::HttpRewrite {
            authority: u.hostname.clone().unwrap_or_default(),
            ..Default::default()
        };
        if let Some(p) = &u.path {
            if let Some(full) = &p.replace_full_path {
                rw.uri_regex_rewrite = Some(net::RegexRewrite {
                    pattern: "^.*$".into(),
                    rewrite: full.clone(),
                });
            } else if let Some(prefix) = &p.replace_prefix_match {
                *prefix_rewrite = Some(prefix.clone());
            }
        }
        h.rewrite = Some(rw);
    }
    if let Some(m) = &flt.request_mirror {
        h.mirrors.push(net::HttpMirrorPolicy {
            destination: mirror_dest(&m.backend_ref)?,
            percentage: m.percent.map(|p| crate::api::Percent {
                value: f64::from(p),
            }),
        });
    }
    Ok(())
}

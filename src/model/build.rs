//! Pure construction of a `World` from accepted objects: the service registry (Kubernetes
//! Service + Endpoints/EndpointSlice/Pod, ServiceEntry + WorkloadEntry) and the routing
//! config, with every cross reference checked.

use super::*;
use crate::api::{fqdn, k8s, Kind, Spec};
use std::collections::{BTreeMap, BTreeSet};

type Objects = BTreeMap<ObjectKey, Arc<Resource>>;

struct Ctx<'a> {
    objects: &'a Objects,
    domain: &'a str,
    mesh: &'a MeshConfig,
    /// Cross-reference problems: the object to blame and its error.
    bad: Vec<(ObjectKey, ConfigError)>,
    /// Workloads by (namespace, label key, label value): WorkloadEntries in key order, then
    /// Pods. A selector looks up the workloads carrying its first label instead of scanning
    /// its namespace (1,000 services × 3,000 workloads was most of a rebuild).
    by_label: std::collections::HashMap<(&'a str, &'a str, &'a str), Vec<&'a Resource>>,
}

/// Objects of one kind: keys sort by (kind, namespace, name), so a range, not a scan.
fn of_kind(objects: &Objects, kind: Kind) -> impl Iterator<Item = &Arc<Resource>> + '_ {
    let start = ObjectKey {
        kind,
        namespace: String::new(),
        name: String::new(),
    };
    objects
        .range(start..)
        .take_while(move |(k, _)| k.kind == kind)
        .map(|(_, r)| r)
}

fn workload_labels(r: &Resource) -> Option<&BTreeMap<String, String>> {
    match &r.spec {
        Spec::WorkloadEntry(w) => Some(&w.labels),
        Spec::Pod(_) => Some(&r.meta.labels),
        _ => None,
    }
}

fn label_index(objects: &Objects) -> std::collections::HashMap<(&str, &str, &str), Vec<&Resource>> {
    let mut m: std::collections::HashMap<_, Vec<&Resource>> = Default::default();
    for kind in [Kind::WorkloadEntry, Kind::Pod] {
        for r in of_kind(objects, kind) {
            let Some(labels) = workload_labels(r) else {
                continue;
            };
            for (k, v) in labels {
                m.entry((r.key.namespace.as_str(), k.as_str(), v.as_str()))
                    .or_default()
                    .push(&**r);
            }
        }
    }
    m
}

impl<'a> Ctx<'a> {
    fn err(&mut self, r: &Resource, field: impl Into<String>, reason: impl Into<String>) {
        self.bad.push(super::blame(r, field, reason));
    }
    fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &'a Arc<Resource>> + 'a {
        of_kind(self.objects, kind)
    }
}

/// Build a snapshot. Returns the world and the objects that failed cross-reference checks
/// (they are already excluded from the world's routing config).
pub fn build_world(
    objects: &Objects,
    mesh: &MeshConfig,
    version: u64,
) -> (World, Vec<(ObjectKey, ConfigError)>) {
    let mut cx = Ctx {
        objects,
        domain: &mesh.domain,
        mesh,
        bad: Vec::new(),
        by_label: label_index(objects),
    };
    let mut services: BTreeMap<String, Arc<Service>> = BTreeMap::new();
    for s in kube_services(&cx)
        .into_iter()
        .chain(service_entries(&mut cx))
    {
        if let Some(prev) = services.get_mut(&s.hostname) {
            // The same Kubernetes Service in several clusters is one service: its
            // endpoints are all of theirs (the first cluster's addresses stay its VIPs).
            if prev.origin.kind == Kind::Service && s.origin.kind == Kind::Service {
                let p = Arc::make_mut(prev);
                p.endpoints.extend(s.endpoints);
                dedup_endpoints(&mut p.endpoints);
                continue;
            }
            let r = objects[&s.origin].clone();
            let reason = format!("host {} is already defined by {}", s.hostname, prev.origin);
            cx.err(&r, "", reason);
            continue;
        }
        services.insert(s.hostname.clone(), Arc::new(s));
    }

    allocate_vips(&mut services, mesh.dns_vip_range);
    // Endpoints without a network: their label's, else this cluster's.
    for svc in services.values_mut() {
        if svc.endpoints.iter().any(|e| e.network.is_empty()) {
            for e in &mut Arc::make_mut(svc).endpoints {
                if e.network.is_empty() {
                    e.network = e
                        .labels
                        .get("topology.istio.io/network")
                        .cloned()
                        .unwrap_or_else(|| mesh.network.clone());
                }
            }
        }
    }
    let network_gateways = network_gateways(&cx);
    let multi_network = services
        .values()
        .flat_map(|s| s.endpoints.iter())
        .any(|e| e.network != mesh.network);

    let mut destination_rules: BTreeMap<String, Arc<DestRule>> = BTreeMap::new();
    let drs: Vec<_> = cx.of_kind(Kind::DestinationRule).cloned().collect();
    for r in drs {
        let Spec::DestinationRule(dr) = &r.spec else {
            continue;
        };
        let host = fqdn(&dr.host, &r.key.namespace, cx.domain);
        if let Some(prev) = destination_rules.get(&host) {
            let reason = format!(
                "host {host} already has DestinationRule {}; merging is not supported",
                prev.key
            );
            cx.err(&r, "spec.host", reason);
            continue;
        }
        if !credentials_ok(&mut cx, &r, dr) {
            continue;
        }
        destination_rules.insert(
            host.clone(),
            Arc::new(DestRule {
                key: r.key.clone(),
                host,
                spec: dr.clone(),
            }),
        );
    }

    let mut peer_authn = Vec::new();
    for r in cx.of_kind(Kind::PeerAuthentication) {
        let Spec::PeerAuthentication(pa) = &r.spec else {
            continue;
        };
        peer_authn.push(Arc::new(PeerAuthn {
            key: r.key.clone(),
            namespace: r.key.namespace.clone(),
            selector: pa.selector.as_ref().map(|s| s.match_labels.clone()),
            mode: MtlsMode::parse(pa.mtls.as_ref().and_then(|m| m.mode.as_deref())),
            port_modes: pa
                .port_level_mtls
                .iter()
                .filter_map(|(p, m)| Some((p.parse().ok()?, MtlsMode::parse(m.mode.as_deref())?)))
                .collect(),
        }));
    }

    let mut sidecars = Vec::new();
    for r in cx.of_kind(Kind::Sidecar) {
        let Spec::Sidecar(sc) = &r.spec else { continue };
        sidecars.push(Arc::new(SidecarCfg {
            key: r.key.clone(),
            namespace: r.key.namespace.clone(),
            selector: sc.workload_selector.as_ref().map(|s| s.labels.clone()),
            egress_hosts: sc
                .egress
                .iter()
                .flat_map(|e| e.hosts.iter().cloned())
                .collect(),
            egress: sc
                .egress
                .iter()
                .map(|e| EgressCfg {
                    port: e.port.as_ref().map(|p| p.number),
                    bind: e.bind.clone(),
                    capture_none: e.capture_mode.as_deref() == Some("NONE"),
                    hosts: e.hosts.clone(),
                })
                .collect(),
            ingress: sc
                .ingress
                .iter()
                .filter_map(|l| {
                    let (host, port) = l.default_endpoint.rsplit_once(':')?;
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    Some((
                        l.port.number,
                        Protocol::from_name(&l.port.protocol.to_ascii_lowercase(), ""),
                        // 0.0.0.0: the pod's own address (the proxy's, see `inbound_key`).
                        host.to_string(),
                        port.parse().ok()?,
                    ))
                })
                .collect(),
            allow_any: sc
                .outbound_traffic_policy
                .as_ref()
                .and_then(|o| o.mode.as_deref())
                .map(|m| m != "REGISTRY_ONLY"),
        }));
    }

    let gateways = cx
        .of_kind(Kind::Gateway)
        .filter_map(|r| {
            let Spec::Gateway(g) = &r.spec else {
                return None;
            };
            Some(Arc::new(GatewayCfg {
                key: r.key.clone(),
                selector: g.selector.clone(),
                namespace_only: false,
                servers: g.servers.clone(),
            }))
        })
        .collect::<Vec<_>>();
    // The Kubernetes Gateway API, as Istio Gateways and VirtualServices.
    let kube = super::gateway_api::convert(
        cx.of_kind(Kind::KubeGateway),
        cx.of_kind(Kind::HttpRoute),
        &services,
        cx.domain,
    );
    let mut gateways = gateways;
    gateways.extend(kube.gateways);
    cx.bad.extend(kube.errors);

    let authz = authorization_policies(&mut cx, &services);
    let mut request_authn = Vec::new();
    for r in cx.of_kind(Kind::RequestAuthentication) {
        let Spec::RequestAuthentication(ra) = &r.spec else {
            continue;
        };
        request_authn.push(Arc::new(RequestAuthn {
            key: r.key.clone(),
            namespace: r.key.namespace.clone(),
            target: match ra.selector.as_ref().map(|s| &s.match_labels) {
                Some(sel) if !sel.is_empty() => AuthzTarget::Selector(sel.clone()),
                _ => AuthzTarget::Namespace,
            },
            rules: ra.jwt_rules.iter().cloned().map(Arc::new).collect(),
            inline_jwks: ra
                .jwt_rules
                .iter()
                .map(|r| r.jwks.as_deref().map(Arc::from))
                .collect(),
        }));
    }

    let mut virtual_services = Vec::new();
    let mut claimed: BTreeMap<String, ObjectKey> = BTreeMap::new();
    let vss: Vec<_> = cx.of_kind(Kind::VirtualService).cloned().collect();
    for r in vss {
        if let Some(v) = virtual_service(&mut cx, &r, &services, &destination_rules, &mut claimed) {
            virtual_services.push(Arc::new(v));
        }
    }

    // HTTPRoutes of Services (mesh routing) claim their hosts after the VirtualServices.
    for v in kube.virtual_services {
        if let Some((host, by)) = v
            .hosts
            .iter()
            .find_map(|h| claimed.get(h).map(|k| (h.clone(), k.clone())))
        {
            if let Some(r) = objects.get(&v.key) {
                cx.err(
                    r,
                    "spec.parentRefs",
                    format!("host {host} is already routed by {by} (object not served)"),
                );
            }
            continue;
        }
        for h in &v.hosts {
            claimed.insert(h.clone(), v.key.clone());
        }
        virtual_services.push(v);
    }
    let bad = cx.bad;
    let locality_aware = locality_aware(&destination_rules);
    let failover_keys = failover_keys(&destination_rules);
    let world = World {
        version,
        mesh: mesh.clone(),
        services,
        virtual_services,
        destination_rules,
        peer_authn,
        sidecars,
        gateways,
        network_gateways,
        locality_aware,
        failover_keys,
        multi_network,
        authz,
        request_authn,
        jwks: Default::default(),
        objects: objects.clone(),
        errors: bad.iter().map(|(_, e)| e.clone()).collect(),
        by_address: Default::default(),
    };
    (world, bad)
}

/// AuthorizationPolicies (validated already): a targetRef must name an existing Service
/// of the policy's namespace.
fn authorization_policies(
    cx: &mut Ctx<'_>,
    services: &BTreeMap<String, Arc<Service>>,
) -> Vec<Arc<AuthzPolicy>> {
    let mut out = Vec::new();
    let aps: Vec<_> = cx.of_kind(Kind::AuthorizationPolicy).cloned().collect();
    for r in aps {
        let Spec::AuthorizationPolicy(ap) = &r.spec else {
            continue;
        };
        let Some(action) = AuthzAction::parse(ap.action.as_deref()) else {
            continue;
        };
        let ns = &r.key.namespace;
        let refs: Vec<(String, &crate::api::security::PolicyTargetReference)> = ap
            .target_ref
            .iter()
            .map(|t| ("spec.targetRef".to_string(), t))
            .chain(
                ap.target_refs
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (format!("spec.targetRefs[{i}]"), t)),
            )
            .collect();
        let target = if !refs.is_empty() {
            let mut hosts = Vec::new();
            let mut ok = true;
            for (f, t) in refs {
                if !t.namespace.is_empty() && t.namespace != *ns {
                    cx.err(
                        &r,
                        format!("{f}.namespace"),
                        "must be the policy's own namespace",
                    );
                    ok = false;
                    continue;
                }
                let host = format!("{}.{ns}.svc.{}", t.name, cx.domain);
                if !services.contains_key(&host) {
                    cx.err(
                        &r,
                        format!("{f}.name"),
                        format!("no Service {ns}/{}", t.name),
                    );
                    ok = false;
                    continue;
                }
                hosts.push(host);
            }
            if !ok {
                continue;
            }
            AuthzTarget::Services(hosts)
        } else {
            match ap.selector.as_ref().map(|s| &s.match_labels) {
                Some(sel) if !sel.is_empty() => AuthzTarget::Selector(sel.clone()),
                _ => AuthzTarget::Namespace,
            }
        };
        let provider = ap.provider.as_ref().map(|p| p.name.clone());
        if action == AuthzAction::Custom {
            let name = provider.as_deref().unwrap_or("");
            let mesh = cx.mesh;
            let reason = if name == crate::api::mesh::BUILTIN_PROVIDER {
                mesh.builtin_authz.is_none().then(|| {
                    format!(
                        "the built-in provider {name:?} is off: pilotfish serve \
                         --authz-advertise-address (where sidecars reach its TLS port) enables it"
                    )
                })
            } else if let Some(p) = mesh.ext_authz.iter().find(|p| p.name == name) {
                let host = &p.service;
                match services.get(host) {
                    Some(s) if s.port(p.port).is_some() => None,
                    Some(_) => Some(format!(
                        "provider {name:?}: service {host} has no port {}",
                        p.port
                    )),
                    None => Some(format!(
                        "provider {name:?}: service {host} is not in the registry"
                    )),
                }
            } else if mesh.other_providers.iter().any(|p| p == name) {
                Some(format!("provider {name:?} is not an ext_authz provider"))
            } else {
                Some(format!(
                    "no extension provider {name:?} in the mesh config (nor the built-in {:?})",
                    crate::api::mesh::BUILTIN_PROVIDER
                ))
            };
            if let Some(reason) = reason {
                cx.err(&r, "spec.provider.name", reason);
                continue;
            }
        }
        out.push(Arc::new(AuthzPolicy {
            key: r.key.clone(),
            namespace: ns.clone(),
            target,
            action,
            provider,
            rules: ap.rules.clone(),
            builtin: crate::api::security::builtin_settings(&r.meta.annotations)
                .ok()
                .flatten(),
        }));
    }
    out
}

fn ports_of(r: &Resource) -> BTreeMap<String, u32> {
    match &r.spec {
        Spec::WorkloadEntry(w) => w.ports.clone(),
        _ => BTreeMap::new(),
    }
}

/// Workloads (WorkloadEntries and Pods with an IP) in `ns` whose labels match `selector`.
fn selected_workloads(
    cx: &Ctx<'_>,
    ns: &str,
    selector: &BTreeMap<String, String>,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    let Some((k, v)) = selector.iter().next() else {
        return out;
    };
    let candidates = cx
        .by_label
        .get(&(ns, k.as_str(), v.as_str()))
        .map(Vec::as_slice)
        .unwrap_or_default();
    for r in candidates {
        match &r.spec {
            Spec::WorkloadEntry(w) if selects(selector, &w.labels) && !w.address.is_empty() => out
                .push(Endpoint {
                    address: w.address.clone(),
                    ports: ports_of(r),
                    labels: w.labels.clone(),
                    service_account: if w.service_account.is_empty() {
                        "default".into()
                    } else {
                        w.service_account.clone()
                    },
                    namespace: ns.to_string(),
                    weight: w.weight.unwrap_or(1).max(1),
                    origin: r.key.to_string(),
                    locality: locality_of(&w.locality, &w.labels),
                    network: w.network.clone(),
                }),
            Spec::Pod(p) if selects(selector, &r.meta.labels) && !p.status.pod_ip.is_empty() => {
                out.push(pod_endpoint(r, p))
            }
            _ => {}
        }
    }
    out
}

fn pod_endpoint(r: &Resource, p: &k8s::PodBody) -> Endpoint {
    Endpoint {
        address: p.status.pod_ip.clone(),
        ports: BTreeMap::new(),
        labels: r.meta.labels.clone(),
        service_account: if p.spec.service_account_name.is_empty() {
            "default".into()
        } else {
            p.spec.service_account_name.clone()
        },
        namespace: r.key.namespace.clone(),
        weight: 1,
        origin: r.key.to_string(),
        locality: locality_of("", &r.meta.labels),
        network: String::new(),
    }
}

/// Labels and service account of the Pod an Endpoints address points at, if known.
fn target_pod(
    cx: &Ctx<'_>,
    ns: &str,
    t: &Option<k8s::ObjectReference>,
) -> Option<(BTreeMap<String, String>, String)> {
    let t = t.as_ref()?;
    let ns = if t.namespace.is_empty() {
        ns
    } else {
        &t.namespace
    };
    let key = ObjectKey {
        kind: Kind::Pod,
        namespace: ns.to_string(),
        name: t.name.clone(),
    };
    let r = cx.objects.get(&key)?;
    let Spec::Pod(p) = &r.spec else { return None };
    Some((r.meta.labels.clone(), p.spec.service_account_name.clone()))
}

fn kube_services(cx: &Ctx<'_>) -> Vec<Service> {
    let mut out = Vec::new();
    for r in cx.of_kind(Kind::Service) {
        let Spec::Service(spec) = &r.spec else {
            continue;
        };
        let ns = &r.key.namespace;
        let ports: Vec<ServicePort> = spec
            .ports
            .iter()
            .map(|p| ServicePort {
                name: p.name.clone(),
                port: p.port,
                protocol: Protocol::from_name(&p.name, &p.app_protocol),
                target_port: match &p.target_port {
                    Some(k8s::IntOrString::Int(n)) => Some(*n),
                    Some(k8s::IntOrString::String(s)) => s.parse().ok(),
                    None => None,
                },
                target_port_name: match &p.target_port {
                    Some(k8s::IntOrString::String(s)) if s.parse::<u32>().is_err() => {
                        Some(s.clone())
                    }
                    _ => None,
                },
            })
            .collect();
        let mut endpoints = Vec::new();
        let mut have_endpoint_objects = false;
        // An endpoint's network: its pod's label, else the Service's (a remote cluster's
        // Services carry their cluster's), else this cluster's (filled in later).
        let svc_network = r.meta.labels.get("topology.istio.io/network");
        let network_of = |labels: &BTreeMap<String, String>| {
            labels
                .get("topology.istio.io/network")
                .or(svc_network)
                .cloned()
                .unwrap_or_default()
        };
        let slice_start = ObjectKey {
            kind: Kind::EndpointSlice,
            namespace: ns.clone(),
            name: String::new(),
        };
        for e in cx
            .objects
            .range(slice_start..)
            .take_while(|(k, _)| k.kind == Kind::EndpointSlice && &k.namespace == ns)
            .map(|(_, e)| e)
            .filter(|e| e.meta.labels.get("kubernetes.io/service-name") == Some(&r.key.name))
        {
            let Spec::EndpointSlice(s) = &e.spec else {
                continue;
            };
            have_endpoint_objects = true;
            let pmap: BTreeMap<String, u32> =
                s.ports.iter().map(|p| (p.name.clone(), p.port)).collect();
            for ep in &s.endpoints {
                if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                let (labels, sa) = target_pod(cx, ns, &ep.target_ref).unwrap_or_default();
                for a in &ep.addresses {
                    endpoints.push(Endpoint {
                        address: a.clone(),
                        ports: pmap.clone(),
                        labels: labels.clone(),
                        service_account: if sa.is_empty() {
                            "default".into()
                        } else {
                            sa.clone()
                        },
                        namespace: ns.clone(),
                        weight: 1,
                        origin: e.key.to_string(),
                        locality: locality_of("", &labels),
                        network: network_of(&labels),
                    });
                }
            }
        }
        let ekey = ObjectKey {
            kind: Kind::Endpoints,
            namespace: ns.clone(),
            name: r.key.name.clone(),
        };
        if let Some(e) = cx.objects.get(&ekey).filter(|_| !have_endpoint_objects) {
            have_endpoint_objects = true;
            if let Spec::Endpoints(subsets) = &e.spec {
                for sub in subsets {
                    let pmap: BTreeMap<String, u32> =
                        sub.ports.iter().map(|p| (p.name.clone(), p.port)).collect();
                    for a in &sub.addresses {
                        let (labels, sa) = target_pod(cx, ns, &a.target_ref).unwrap_or_default();
                        endpoints.push(Endpoint {
                            address: a.ip.clone(),
                            ports: pmap.clone(),
                            locality: locality_of("", &labels),
                            network: network_of(&labels),
                            labels,
                            service_account: if sa.is_empty() { "default".into() } else { sa },
                            namespace: ns.clone(),
                            weight: 1,
                            origin: e.key.to_string(),
                        });
                    }
                }
            }
        }
        for w in selected_workloads(cx, ns, &spec.selector) {
            let is_pod = w.origin.starts_with("Pod ");
            if is_pod && have_endpoint_objects {
                continue; // Endpoints already list the pods.
            }
            endpoints.push(w);
        }
        dedup_endpoints(&mut endpoints);
        let vips = if spec.cluster_ip.is_empty() || spec.cluster_ip == "None" {
            vec![]
        } else {
            vec![spec.cluster_ip.clone()]
        };
        // A remote cluster's objects are named `<name>@<cluster>` (see `remote`).
        let base = r.key.name.split('@').next().unwrap_or_default();
        out.push(Service {
            hostname: format!("{}.{}.svc.{}", base, ns, cx.domain),
            name: base.to_string(),
            namespace: ns.clone(),
            vips,
            ports,
            resolution: Resolution::Static,
            mesh_external: false,
            endpoints,
            origin: r.key.clone(),
            auto_vip: None,
        });
    }
    out
}

fn dedup_endpoints(eps: &mut Vec<Endpoint>) {
    let mut seen = BTreeSet::new();
    eps.retain(|e| seen.insert(e.address.clone()));
    eps.sort_by(|a, b| a.address.cmp(&b.address));
}

fn service_entries(cx: &mut Ctx<'_>) -> Vec<Service> {
    let mut out = Vec::new();
    let ses: Vec<_> = cx.of_kind(Kind::ServiceEntry).cloned().collect();
    for r in ses {
        let Spec::ServiceEntry(se) = &r.spec else {
            continue;
        };
        let ns = &r.key.namespace;
        let resolution = match se.resolution.as_deref().unwrap_or("NONE") {
            "DNS" => Resolution::Dns,
            "DNS_ROUND_ROBIN" => Resolution::DnsRoundRobin,
            "STATIC" => Resolution::Static,
            _ => Resolution::Passthrough,
        };
        let ports: Vec<ServicePort> = se
            .ports
            .iter()
            .map(|p| ServicePort {
                name: p.name.clone(),
                port: p.number,
                protocol: Protocol::from_name(&p.protocol, ""),
                target_port: p.target_port,
                target_port_name: None,
            })
            .collect();
        let mut endpoints: Vec<Endpoint> = se
            .endpoints
            .iter()
            .map(|w| Endpoint {
                address: w.address.clone(),
                ports: w.ports.clone(),
                labels: w.labels.clone(),
                service_account: if w.service_account.is_empty() {
                    "default".into()
                } else {
                    w.service_account.clone()
                },
                namespace: ns.clone(),
                weight: w.weight.unwrap_or(1).max(1),
                origin: r.key.to_string(),
                locality: locality_of(&w.locality, &w.labels),
                network: w.network.clone(),
            })
            .collect();
        if let Some(sel) = &se.workload_selector {
            endpoints.extend(selected_workloads(cx, ns, &sel.labels));
        }
        if resolution == Resolution::Static
            && se
                .endpoints
                .iter()
                .any(|w| w.address.parse::<std::net::IpAddr>().is_err())
        {
            cx.err(
                &r,
                "spec.endpoints",
                "resolution STATIC needs IP addresses; use DNS for host names",
            );
        }
        if resolution == Resolution::DnsRoundRobin && endpoints.len() > 1 {
            cx.err(
                &r,
                "spec.endpoints",
                "resolution DNS_ROUND_ROBIN takes at most one endpoint (Envoy's LOGICAL_DNS uses one name); use DNS for several",
            );
        }
        dedup_endpoints(&mut endpoints);
        for h in &se.hosts {
            let hostname = fqdn(h, ns, cx.domain);
            let mut eps = endpoints.clone();
            let dns = matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin);
            if dns && eps.is_empty() && !hostname.starts_with('*') {
                eps.push(Endpoint {
                    address: hostname.clone(),
                    ports: BTreeMap::new(),
                    labels: BTreeMap::new(),
                    service_account: String::new(),
                    namespace: ns.clone(),
                    weight: 1,
                    origin: r.key.to_string(),
                    locality: String::new(),
                    network: String::new(),
                });
            }
            out.push(Service {
                hostname: hostname.clone(),
                name: hostname.split('.').next().unwrap_or("").to_string(),
                namespace: ns.clone(),
                vips: se.addresses.clone(),
                ports: ports.clone(),
                resolution,
                mesh_external: se.location.as_deref() != Some("MESH_INTERNAL"),
                endpoints: eps,
                origin: r.key.clone(),
                auto_vip: None,
            });
        }
    }
    out
}

fn virtual_service(
    cx: &mut Ctx<'_>,
    r: &Arc<Resource>,
    services: &BTreeMap<String, Arc<Service>>,
    drs: &BTreeMap<String, Arc<DestRule>>,
    claimed: &mut BTreeMap<String, ObjectKey>,
) -> Option<VirtualSvc> {
    let Spec::VirtualService(vs) = &r.spec else {
        return None;
    };
    let ns = r.key.namespace.clone();
    let before = cx.bad.len();
    let mut spec = vs.clone();
    let check = |cx: &mut Ctx<'_>, field: String, d: &mut networking::Destination| {
        d.host = fqdn(&d.host, &ns, cx.domain);
        let Some(svc) = services.get(&d.host) else {
            cx.err(
                r,
                format!("{field}.host"),
                format!("host {} is not in the service registry", d.host),
            );
            return;
        };
        if let Some(p) = &d.port {
            if svc.port(p.number).is_none() {
                let have: Vec<_> = svc.ports.iter().map(|p| p.port).collect();
                cx.err(
                    r,
                    format!("{field}.port.number"),
                    format!(
                        "service {} has no port {} (ports {have:?})",
                        d.host, p.number
                    ),
                );
            }
        }
        if !d.subset.is_empty() {
            let ok = drs
                .get(&d.host)
                .is_some_and(|dr| dr.spec.subsets.iter().any(|s| s.name == d.subset));
            if !ok {
                cx.err(
                    r,
                    format!("{field}.subset"),
                    format!(
                        "subset {:?} of host {} is not defined by any DestinationRule",
                        d.subset, d.host
                    ),
                );
            }
        }
    };
    for (i, h) in spec.http.iter_mut().enumerate() {
        for (j, d) in h.route.iter_mut().enumerate() {
            check(
                cx,
                format!("spec.http[{i}].route[{j}].destination"),
                &mut d.destination,
            );
        }
        if let Some(m) = &mut h.mirror {
            check(cx, format!("spec.http[{i}].mirror"), m);
        }
        for (j, m) in h.mirrors.iter_mut().enumerate() {
            check(
                cx,
                format!("spec.http[{i}].mirrors[{j}].destination"),
                &mut m.destination,
            );
        }
    }
    for (i, t) in spec.tcp.iter_mut().enumerate() {
        for (j, d) in t.route.iter_mut().enumerate() {
            check(
                cx,
                format!("spec.tcp[{i}].route[{j}].destination"),
                &mut d.destination,
            );
        }
    }
    for (i, t) in spec.tls.iter_mut().enumerate() {
        for (j, d) in t.route.iter_mut().enumerate() {
            check(
                cx,
                format!("spec.tls[{i}].route[{j}].destination"),
                &mut d.destination,
            );
        }
    }
    // `name` and `ns/name` bind gateways (a short name is of the VirtualService's
    // namespace); `mesh`, or no gateways at all, binds the sidecars. Match blocks name
    // gateways the same way: resolved here, translation compares whole names.
    let resolve = |g: &String| {
        if g == "mesh" || g.contains('/') {
            g.clone()
        } else {
            format!("{ns}/{g}")
        }
    };
    let gateways: Vec<String> = if vs.gateways.is_empty() {
        vec!["mesh".to_string()]
    } else {
        vs.gateways.iter().map(resolve).collect()
    };
    for h in spec.http.iter_mut() {
        for m in h.matches.iter_mut() {
            m.gateways = m.gateways.iter().map(resolve).collect();
        }
    }
    for t in spec.tls.iter_mut() {
        for m in t.matches.iter_mut() {
            m.gateways = m.gateways.iter().map(resolve).collect();
        }
    }
    for t in spec.tcp.iter_mut() {
        for m in t.matches.iter_mut() {
            m.gateways = m.gateways.iter().map(resolve).collect();
        }
    }
    let mut hosts = Vec::new();
    for (i, h) in vs.hosts.iter().enumerate() {
        let f = fqdn(h, &ns, cx.domain);
        if let Some(owner) = claimed.get(&f) {
            let reason = format!("host {f} is already routed by {owner}");
            cx.err(r, format!("spec.hosts[{i}]"), reason);
            continue;
        }
        hosts.push(f);
    }
    if cx.bad.len() > before {
        return None;
    }
    // Only VirtualServices bound to the mesh (no gateways, or "mesh") apply to sidecars.
    if !gateways.iter().any(|g| g == "mesh") {
        hosts.clear();
    }
    for h in &hosts {
        claimed.insert(h.clone(), r.key.clone());
    }
    Some(VirtualSvc {
        key: r.key.clone(),
        hosts,
        spec,
        gateways,
        order: Vec::new(),
    })
}

/// Every `credentialName` of a DestinationRule names a Secret of its namespace that holds
/// what the mode needs (`tls.crt` + `tls.key` for MUTUAL, `ca.crt` unless verification is off).
fn credentials_ok(cx: &mut Ctx<'_>, r: &Arc<Resource>, dr: &networking::DestinationRule) -> bool {
    let mut settings: Vec<(String, &networking::ClientTlsSettings)> = Vec::new();
    fn collect<'a>(
        settings: &mut Vec<(String, &'a networking::ClientTlsSettings)>,
        prefix: String,
        tp: &'a Option<networking::TrafficPolicy>,
    ) {
        if let Some(tp) = tp {
            if let Some(t) = &tp.tls {
                settings.push((format!("{prefix}.tls"), t));
            }
            for (i, p) in tp.port_level_settings.iter().enumerate() {
                if let Some(t) = &p.tls {
                    settings.push((format!("{prefix}.portLevelSettings[{i}].tls"), t));
                }
            }
        }
    }
    collect(
        &mut settings,
        "spec.trafficPolicy".into(),
        &dr.traffic_policy,
    );
    for (i, sub) in dr.subsets.iter().enumerate() {
        collect(
            &mut settings,
            format!("spec.subsets[{i}].trafficPolicy"),
            &sub.traffic_policy,
        );
    }
    let before = cx.bad.len();
    for (field, t) in settings {
        let Some(name) = &t.credential_name else {
            continue;
        };
        let key = ObjectKey {
            kind: Kind::Secret,
            namespace: r.key.namespace.clone(),
            name: name.clone(),
        };
        let secret = cx.objects.get(&key).and_then(|o| match &o.spec {
            Spec::Secret(s) => Some(s.clone()),
            _ => None,
        });
        let Some(secret) = secret else {
            cx.err(
                r,
                format!("{field}.credentialName"),
                format!("Secret {}/{name} not found", r.key.namespace),
            );
            continue;
        };
        let mut need = vec![];
        if t.mode.as_deref() == Some("MUTUAL") {
            need.extend(["tls.crt", "tls.key"]);
        }
        if t.insecure_skip_verify != Some(true) {
            need.push("ca.crt");
        }
        for k in need {
            if secret.get(k).is_none() {
                cx.err(
                    r,
                    format!("{field}.credentialName"),
                    format!("Secret {}/{name} has no {k}", r.key.namespace),
                );
            }
        }
    }
    cx.bad.len() == before
}

/// Virtual IPs for ServiceEntry hosts without addresses (not wildcards), for the sidecars'
/// DNS: each host starts at a slot from a hash of its name in the range and takes the next
/// free one, hosts in name order. The same hosts always get the same addresses (across
/// restarts and replicas); a host keeps its address when others come and go unless they
/// collide on the way to it.
pub fn allocate_vips(services: &mut BTreeMap<String, Arc<Service>>, range: (u32, u8)) {
    use sha2::{Digest, Sha256};
    let (base, prefix) = range;
    let size = 1u64 << (32 - u32::from(prefix.min(30)));
    // Not the network's first and last addresses.
    let usable = size - 2;
    let mut taken: BTreeSet<u64> = BTreeSet::new();
    for svc in services.values_mut() {
        // Not for resolution NONE: traffic to the address would pass through to it.
        let wants = svc.origin.kind == Kind::ServiceEntry
            && svc.vips.is_empty()
            && svc.resolution != Resolution::Passthrough
            && !svc.hostname.starts_with('*');
        if !wants || taken.len() as u64 >= usable {
            continue;
        }
        let d = Sha256::digest(svc.hostname.as_bytes());
        let mut slot = u64::from_be_bytes(d[..8].try_into().unwrap()) % usable;
        while !taken.insert(slot) {
            slot = (slot + 1) % usable;
        }
        let ip = std::net::Ipv4Addr::from(base.wrapping_add(1 + slot as u32));
        Arc::make_mut(svc).auto_vip = Some(ip.to_string());
    }
}

/// East-west gateways by network: Services labelled `topology.istio.io/network` with a
/// port 15443, at their external addresses (`externalIPs`).
fn network_gateways(cx: &Ctx<'_>) -> BTreeMap<String, Vec<(String, u32)>> {
    let mut out: BTreeMap<String, Vec<(String, u32)>> = BTreeMap::new();
    for r in cx.of_kind(Kind::Service) {
        let Spec::Service(s) = &r.spec else { continue };
        let Some(net) = r.meta.labels.get("topology.istio.io/network") else {
            continue;
        };
        if !s.ports.iter().any(|p| p.port == 15443) {
            continue;
        }
        for ip in &s.external_ips {
            out.entry(net.clone())
                .or_default()
                .push((ip.clone(), 15443));
        }
    }
    for v in out.values_mut() {
        v.sort();
        v.dedup();
    }
    out
}

/// The label keys some DestinationRule's `failoverPriority` compares with the proxy's
/// (any level; `key=value` entries compare with the value, not the proxy), sorted.
fn failover_keys(drs: &BTreeMap<String, Arc<DestRule>>) -> Vec<String> {
    let mut keys = BTreeSet::new();
    let mut add = |tp: &networking::TrafficPolicy| {
        let lbs = std::iter::once(&tp.load_balancer)
            .chain(tp.port_level_settings.iter().map(|p| &p.load_balancer));
        for lb in lbs.flatten() {
            for k in lb
                .locality_lb_setting
                .iter()
                .flat_map(|l| &l.failover_priority)
            {
                if !k.contains('=') {
                    keys.insert(k.clone());
                }
            }
        }
    };
    for d in drs.values() {
        let subsets = d
            .spec
            .subsets
            .iter()
            .filter_map(|s| s.traffic_policy.as_ref());
        for tp in d.spec.traffic_policy.iter().chain(subsets) {
            add(tp);
        }
    }
    keys.into_iter().collect()
}

/// Some DestinationRule has outlier detection (top level, subset or port level): Istio's
/// condition for locality-aware load balancing.
fn locality_aware(drs: &BTreeMap<String, Arc<DestRule>>) -> bool {
    let tp_has = |tp: &networking::TrafficPolicy| {
        tp.outlier_detection.is_some()
            || tp
                .port_level_settings
                .iter()
                .any(|p| p.outlier_detection.is_some())
    };
    drs.values().any(|d| {
        d.spec.traffic_policy.as_ref().is_some_and(tp_has)
            || d.spec
                .subsets
                .iter()
                .any(|s| s.traffic_policy.as_ref().is_some_and(tp_has))
    })
}

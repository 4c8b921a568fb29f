//! Who is who in an access-log entry: workloads by IP address and services by cluster name
//! or authority, from pilotfish's registry (the served snapshot) and, for workloads no
//! service selects, from the proxies connected over xDS (whose namespace and service account
//! were authenticated). Never from a header a client could send.

use crate::model::{Proxy, World};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The labels Istio gives one side of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub principal: String,
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub cluster: String,
    /// It runs a sidecar that speaks Istio mTLS (`security.istio.io/tlsMode: istio`).
    pub in_mesh: bool,
}

impl Workload {
    pub fn unknown() -> Workload {
        Workload {
            name: "unknown".into(),
            namespace: "unknown".into(),
            principal: "unknown".into(),
            app: "unknown".into(),
            version: "unknown".into(),
            canonical_service: "unknown".into(),
            canonical_revision: "latest".into(),
            cluster: "unknown".into(),
            in_mesh: false,
        }
    }

    /// From a namespace, service account, labels and a workload name.
    pub fn of(
        trust_domain: &str,
        cluster: &str,
        name: &str,
        namespace: &str,
        service_account: &str,
        labels: &BTreeMap<String, String>,
    ) -> Workload {
        let l = |keys: &[&str]| keys.iter().find_map(|k| labels.get(*k)).cloned();
        let name = l(&["service.istio.io/workload-name"]).unwrap_or_else(|| name.to_string());
        Workload {
            principal: if service_account.is_empty() {
                "unknown".into()
            } else {
                spiffe(trust_domain, namespace, service_account)
            },
            app: l(&["app", "app.kubernetes.io/name"]).unwrap_or_else(|| "unknown".into()),
            version: l(&["version", "app.kubernetes.io/version"])
                .unwrap_or_else(|| "unknown".into()),
            canonical_service: l(&[
                "service.istio.io/canonical-name",
                "app.kubernetes.io/name",
                "app",
            ])
            .unwrap_or_else(|| name.clone()),
            canonical_revision: l(&[
                "service.istio.io/canonical-revision",
                "app.kubernetes.io/version",
                "version",
            ])
            .unwrap_or_else(|| "latest".into()),
            in_mesh: labels
                .get("security.istio.io/tlsMode")
                .is_some_and(|m| m == "istio"),
            name,
            namespace: namespace.to_string(),
            cluster: cluster.to_string(),
        }
    }
}

pub fn spiffe(trust_domain: &str, ns: &str, sa: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}")
}

/// The workload name of an endpoint from where it came from: a WorkloadEntry's name; a
/// Pod's name without the ReplicaSet and pod suffixes Kubernetes adds
/// (`reviews-v1-7f99cc4496-x2x9z` → `reviews-v1`), as Istio names a Deployment's pods.
pub fn workload_name(origin: &str) -> String {
    let name = origin.rsplit('/').next().unwrap_or(origin);
    if !origin.starts_with("Pod ") {
        return name.to_string();
    }
    let parts: Vec<&str> = name.split('-').collect();
    let is_suffix = |s: &str, lens: &[usize]| {
        lens.contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    if parts.len() >= 3
        && is_suffix(parts[parts.len() - 1], &[5])
        && is_suffix(parts[parts.len() - 2], &[8, 9, 10])
    {
        return parts[..parts.len() - 2].join("-");
    }
    name.to_string()
}

/// What the registry and the connected proxies say, indexed for one snapshot.
pub struct Resolver {
    pub world: Arc<World>,
    by_ip: HashMap<String, Arc<Workload>>,
    pub cluster: String,
}

impl Resolver {
    pub fn new(world: Arc<World>, proxies: &[Proxy], cluster: &str) -> Resolver {
        let td = world.mesh.trust_domain.clone();
        let mut by_ip: HashMap<String, Arc<Workload>> = HashMap::new();
        for p in proxies {
            let w = Arc::new(Workload::of(
                &td,
                cluster,
                &p.workload_name,
                &p.namespace,
                &p.service_account,
                &p.labels,
            ));
            for ip in &p.ips {
                by_ip.insert(ip.clone(), w.clone());
            }
        }
        // The registry wins over what a proxy said of itself (its first endpoint at an
        // address).
        let mut seen = std::collections::HashSet::new();
        for s in world.services.values() {
            for ep in &s.endpoints {
                if !seen.insert(ep.address.as_str()) {
                    continue;
                }
                by_ip.insert(
                    ep.address.clone(),
                    Arc::new(Workload::of(
                        &td,
                        cluster,
                        &workload_name(&ep.origin),
                        &ep.namespace,
                        &ep.service_account,
                        &ep.labels,
                    )),
                );
            }
        }
        Resolver {
            world,
            by_ip,
            cluster: cluster.to_string(),
        }
    }

    /// The workload at `ip`, if any is known.
    pub fn workload(&self, ip: &str) -> Option<&Arc<Workload>> {
        self.by_ip.get(ip)
    }

    /// The service an outbound cluster name (`outbound|port|subset|host`) points at:
    /// (FQDN, name, namespace).
    pub fn service_of_cluster(&self, cluster: &str) -> Option<(String, String, String)> {
        let host = cluster.strip_prefix("outbound|")?.splitn(3, '|').nth(2)?;
        Some(self.service_named(host))
    }

    fn service_named(&self, host: &str) -> (String, String, String) {
        match self.world.services.get(host) {
            Some(s) => (s.hostname.clone(), s.name.clone(), s.namespace.clone()),
            None => (host.to_string(), host.to_string(), "unknown".into()),
        }
    }

    /// Whether a proxy with certificates speaks Istio mTLS to `dst` of `host`: what the
    /// host's DestinationRule says (`ISTIO_MUTUAL`, or another mode: no), else auto mTLS
    /// (the endpoint runs a sidecar).
    pub fn mutual_tls_to(&self, host: &str, port: u32, dst: &Workload) -> bool {
        let policy = self
            .world
            .destination_rules
            .get(host)
            .and_then(|dr| dr.spec.traffic_policy.as_ref());
        let mode = policy.and_then(|p| {
            p.port_level_settings
                .iter()
                .find(|pl| pl.port.as_ref().is_some_and(|n| n.number == port))
                .and_then(|pl| pl.tls.as_ref())
                .or(p.tls.as_ref())
                .and_then(|t| t.mode.clone())
        });
        match mode.as_deref() {
            Some("ISTIO_MUTUAL") => true,
            Some(_) => false,
            None => dst.in_mesh,
        }
    }

    /// The service an inbound request at workload `ip` on `port` was for: the one its
    /// authority names among the services selecting the workload, else the first of them
    /// with that port.
    pub fn inbound_service(
        &self,
        ip: &str,
        port: u32,
        authority: &str,
    ) -> Option<(String, String, String)> {
        let host = authority
            .rsplit_once(':')
            .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
            .map(|(h, _)| h)
            .unwrap_or(authority)
            .to_ascii_lowercase();
        let mut first = None;
        for (s, ep) in self.world.instances_of(ip) {
            let serves_port = s.ports.iter().any(|sp| s.endpoint_port(sp, ep) == port);
            let named = !host.is_empty()
                && (s.hostname == host
                    || s.hostname
                        .strip_prefix(host.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
                    || s.vips.iter().any(|v| *v == host));
            if named {
                return Some((s.hostname.clone(), s.name.clone(), s.namespace.clone()));
            }
            if serves_port && first.is_none() {
                first = Some((s.hostname.clone(), s.name.clone(), s.namespace.clone()));
            }
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_lose_their_replicaset_suffixes() {
        assert_eq!(
            workload_name("Pod default/reviews-v1-7f99cc4496-x2x9z"),
            "reviews-v1"
        );
        assert_eq!(workload_name("Pod default/ratings"), "ratings");
        assert_eq!(workload_name("WorkloadEntry default/b-1"), "b-1");
    }

    #[test]
    fn canonical_names_follow_istios_label_order() {
        let l: BTreeMap<String, String> = [("app", "reviews"), ("version", "v2")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let w = Workload::of(
            "cluster.local",
            "Kubernetes",
            "reviews-v2",
            "default",
            "bookinfo",
            &l,
        );
        assert_eq!(w.principal, "spiffe://cluster.local/ns/default/sa/bookinfo");
        assert_eq!((w.app.as_str(), w.version.as_str()), ("reviews", "v2"));
        assert_eq!(w.canonical_service, "reviews");
        assert_eq!(w.canonical_revision, "v2");
        let w = Workload::of("td", "c", "x", "ns", "", &BTreeMap::new());
        assert_eq!(
            (
                w.principal.as_str(),
                w.canonical_service.as_str(),
                w.canonical_revision.as_str()
            ),
            ("unknown", "x", "latest")
        );
    }
}

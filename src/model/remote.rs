//! Remote clusters (`pilotfish serve --remote-cluster NAME=DIR`): what pilotfish reads of
//! another cluster is its registry only (Services, Endpoints, EndpointSlices, Pods,
//! WorkloadEntries), as istiod reads remote clusters; routing and policy come from this
//! cluster's config. Each object is renamed `<name>@<cluster>` (so it never collides with
//! this cluster's object of the same name) and labelled with its cluster and network; a
//! Service of the same namespace and name in several clusters is one service whose
//! endpoints are all of theirs (see `build::build_world`).

use crate::api::{Kind, Resource};

/// A remote cluster: its name, where its registry is read (a directory, or a Kubernetes
/// API server), and the network its workloads are on (empty: this one's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCluster {
    pub name: String,
    /// The directory (empty when read from an API server).
    pub dir: std::path::PathBuf,
    /// The kubeconfig of its API server (`NAME=kubeconfig:PATH`).
    pub kubeconfig: Option<std::path::PathBuf>,
    pub network: String,
}

/// `NAME=DIR[,network=NET]` or `NAME=kubeconfig:PATH[,network=NET]`.
pub fn parse_remote(s: &str) -> Result<RemoteCluster, String> {
    let (name, rest) = s.split_once('=').ok_or_else(|| {
        format!("{s:?}: expected NAME=DIR[,network=NET] or NAME=kubeconfig:PATH[,network=NET]")
    })?;
    let mut parts = rest.split(',');
    let mut dir = parts.next().unwrap_or_default();
    let mut kubeconfig = None;
    if let Some(p) = dir.strip_prefix("kubeconfig:") {
        kubeconfig = Some(std::path::PathBuf::from(p));
        dir = p;
    }
    let mut network = String::new();
    for p in parts {
        match p.split_once('=') {
            Some(("network", n)) => network = n.to_string(),
            _ => return Err(format!("{s:?}: unknown option {p:?} (network=NET)")),
        }
    }
    let ok = |x: &str| {
        !x.is_empty()
            && x.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    };
    if !ok(name) || dir.is_empty() {
        return Err(format!(
            "{s:?}: a cluster name ([A-Za-z0-9._-]) and a directory or kubeconfig:PATH"
        ));
    }
    Ok(RemoteCluster {
        name: name.to_string(),
        dir: if kubeconfig.is_some() {
            Default::default()
        } else {
            dir.into()
        },
        kubeconfig,
        network,
    })
}

/// Keeps the registry objects of a remote cluster's file, renamed and labelled.
pub fn as_remote(resources: &mut Vec<Resource>, cluster: &RemoteCluster) {
    resources.retain(|r| {
        matches!(
            r.key.kind,
            Kind::Service | Kind::Endpoints | Kind::EndpointSlice | Kind::Pod | Kind::WorkloadEntry
        )
    });
    for r in resources.iter_mut() {
        r.key.name = format!("{}@{}", r.key.name, cluster.name);
        r.meta.name = r.key.name.clone();
        let labels = &mut r.meta.labels;
        labels.insert("topology.istio.io/cluster".into(), cluster.name.clone());
        if !cluster.network.is_empty() && matches!(r.key.kind, Kind::Pod | Kind::WorkloadEntry) {
            labels
                .entry("topology.istio.io/network".into())
                .or_insert_with(|| cluster.network.clone());
        }
        if let Some(svc) = labels.get_mut("kubernetes.io/service-name") {
            *svc = format!("{svc}@{}", cluster.name);
        }
        // A remote Service speaks for its own cluster's network only.
        if r.key.kind == Kind::Service && !cluster.network.is_empty() {
            labels.insert("topology.istio.io/network".into(), cluster.network.clone());
        }
        // Endpoints name their pods: the renamed ones of the same cluster.
        let rename = |t: &mut Option<crate::api::k8s::ObjectReference>| {
            if let Some(t) = t.as_mut().filter(|t| t.kind.is_empty() || t.kind == "Pod") {
                t.name = format!("{}@{}", t.name, cluster.name);
            }
        };
        match &mut r.spec {
            crate::api::Spec::Endpoints(subsets) => {
                for a in subsets.iter_mut().flat_map(|s| {
                    s.addresses
                        .iter_mut()
                        .chain(s.not_ready_addresses.iter_mut())
                }) {
                    rename(&mut a.target_ref);
                }
            }
            crate::api::Spec::EndpointSlice(s) => {
                for e in &mut s.endpoints {
                    rename(&mut e.target_ref);
                }
            }
            _ => {}
        }
        // A WorkloadEntry's endpoint labels are its spec's.
        if let crate::api::Spec::WorkloadEntry(w) = &mut r.spec {
            w.labels
                .insert("topology.istio.io/cluster".into(), cluster.name.clone());
            if w.network.is_empty() {
                w.network = cluster.network.clone();
            }
        }
    }
}

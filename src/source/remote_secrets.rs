//! Remote clusters as Istio adds them at run time: Secrets of pilotfish's own namespace
//! labelled `istio/multiCluster: "true"` (what `istioctl create-remote-secret` makes), each
//! key a cluster name and its value that cluster's kubeconfig. For each, pilotfish watches
//! that API server's registry (as `--remote-cluster NAME=kubeconfig:PATH`); a cluster whose
//! Secret (or key) goes is dropped with everything read from it. The cluster's network is
//! the `topology.istio.io/network` label of its namespace of the same name as pilotfish's
//! (Istio labels its system namespace so), read when the cluster is added.
use super::kube::{run_kinds, Pending, REMOTE_KINDS};
use crate::model::remote::RemoteCluster;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

/// The label of remote Secrets.
pub const LABEL: &str = "istio/multiCluster";

/// One remote cluster being watched.
pub struct Remote {
    pub cluster: RemoteCluster,
    pub pending: Arc<Pending>,
    task: tokio::task::AbortHandle,
    /// Hash of its kubeconfig: a changed one restarts the watch.
    config_hash: u64,
}

/// The remote clusters of remote Secrets, shared with the config loop.
#[derive(Default)]
pub struct Remotes {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    live: BTreeMap<String, Arc<Remote>>,
    /// Clusters dropped since the config loop last looked (their objects must go).
    gone: BTreeSet<String>,
}

impl Remotes {
    /// The clusters being watched, and those dropped since the last call.
    pub fn take(&self) -> (Vec<Arc<Remote>>, Vec<String>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let gone = std::mem::take(&mut s.gone).into_iter().collect();
        (s.live.values().cloned().collect(), gone)
    }

    /// The clusters being watched.
    pub fn live(&self) -> Vec<Arc<Remote>> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.live.values().cloned().collect()
    }

    /// Names of the clusters being watched.
    pub fn names(&self) -> Vec<String> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.live.keys().cloned().collect()
    }

    fn drop_cluster(&self, name: &str) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = s.live.remove(name) {
            r.task.abort();
            s.gone.insert(name.to_string());
            info!(cluster = name, "remote cluster removed");
        }
    }
}

fn hash(b: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// A client for a kubeconfig given as text (never logged: it holds credentials).
async fn client_of(text: &str) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::from_yaml(text)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// Watches the remote Secrets of `namespace` until the process ends, keeping `remotes`
/// to what they say; `wake` tells the config loop.
pub async fn watch(
    client: kube::Client,
    namespace: String,
    local_names: BTreeSet<String>,
    remotes: Arc<Remotes>,
    wake: Arc<dyn Fn() + Send + Sync>,
) {
    use futures::StreamExt;
    let api: kube::Api<Secret> = kube::Api::namespaced(client, &namespace);
    let cfg = watcher::Config::default().labels(&format!("{LABEL}=true"));
    let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
    // Secret name → the clusters it names (with their kubeconfigs).
    let mut secrets: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, BTreeMap<String, String>>> = None;
    let mut failing = false;
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => {
                failing = false;
                ev
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "watching remote cluster Secrets failed; retrying");
                }
                failing = true;
                continue;
            }
        };
        let clusters_of = |s: &Secret| -> BTreeMap<String, String> {
            s.data
                .iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
                .collect()
        };
        match ev {
            Event::Init => listing = Some(BTreeMap::new()),
            Event::InitApply(s) => {
                let name = s.metadata.name.clone().unwrap_or_default();
                listing
                    .get_or_insert_with(Default::default)
                    .insert(name, clusters_of(&s));
                continue;
            }
            Event::InitDone => secrets = listing.take().unwrap_or_default(),
            Event::Apply(s) => {
                let name = s.metadata.name.clone().unwrap_or_default();
                secrets.insert(name, clusters_of(&s));
            }
            Event::Delete(s) => {
                secrets.remove(&s.metadata.name.clone().unwrap_or_default());
            }
        }
        // Reconcile: every cluster named by some Secret (the first Secret in name order
        // wins a name two of them use), nothing else.
        let mut wanted: BTreeMap<String, String> = BTreeMap::new();
        for (secret, clusters) in &secrets {
            for (cluster, text) in clusters {
                let valid = !cluster.is_empty()
                    && cluster
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if !valid {
                    warn!(secret = %secret, key = %cluster, "remote Secret key is not a cluster name; ignored");
                } else if local_names.contains(cluster) {
                    warn!(secret = %secret, cluster = %cluster, "remote Secret names a cluster given with --remote-cluster; ignored");
                } else {
                    wanted
                        .entry(cluster.clone())
                        .or_insert_with(|| text.clone());
                }
            }
        }
        for name in remotes.names() {
            if !wanted.contains_key(&name) {
                remotes.drop_cluster(&name);
            }
        }
        for (name, text) in wanted {
            let h = hash(text.as_bytes());
            let same = {
                let s = remotes.state.lock().unwrap_or_else(|p| p.into_inner());
                s.live.get(&name).is_some_and(|r| r.config_hash == h)
            };
            if same {
                continue;
            }
            remotes.drop_cluster(&name);
            let client = match client_of(&text).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(cluster = %name, error = %e, "remote cluster's kubeconfig is not usable; ignored");
                    continue;
                }
            };
            // Its network: the label of its namespace named as pilotfish's.
            let ns_api: kube::Api<Namespace> = kube::Api::all(client.clone());
            let network = match ns_api.get_opt(&namespace).await {
                Ok(ns) => ns
                    .and_then(|n| n.metadata.labels)
                    .and_then(|l| l.get("topology.istio.io/network").cloned())
                    .unwrap_or_default(),
                Err(e) => {
                    warn!(cluster = %name, error = %e, "remote cluster's network label not read (its endpoints are taken as on this network)");
                    String::new()
                }
            };
            let pending = Arc::new(Pending::remote(&name));
            let task = tokio::spawn(run_kinds(
                client,
                pending.clone(),
                wake.clone(),
                REMOTE_KINDS,
            ))
            .abort_handle();
            info!(cluster = %name, network = %network, "remote cluster added from a Secret");
            let mut s = remotes.state.lock().unwrap_or_else(|p| p.into_inner());
            s.gone.remove(&name);
            s.live.insert(
                name.clone(),
                Arc::new(Remote {
                    cluster: RemoteCluster {
                        name,
                        dir: Default::default(),
                        kubeconfig: None,
                        network,
                    },
                    pending,
                    task,
                    config_hash: h,
                }),
            );
        }
        wake();
    }
}

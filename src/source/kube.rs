//! The Kubernetes source: one watcher (kube-runtime) per kind pilotfish reads, feeding the
//! same index as the file source. Each object is a "file" of its own in the index, named
//! `kube:<Kind>/<namespace>/<name>`, so errors name it and a broken object keeps serving its
//! last good version, exactly as a broken file does.
//!
//! ```text
//!   API server ──watch──▶ watcher(kind) ──▶ Pending ──wake──▶ config loop ──▶ Index
//!                          (list, then watch;   (per-object texts,   (apply / remove /
//!                           relist on 410 Gone)  relists per kind)    reset a kind)
//! ```
//!
//! A relist (the first list, or after a lost watch or a 410 Gone) replaces everything the
//! source holds for that kind at once; objects not listed go. Until every kind has listed
//! once, `synced()` is false and pilotfish does not serve (streams get `Unavailable`).

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

/// The kinds read from the API server: Istio's (at the version stored) and Kubernetes'.
pub const KINDS: &[(&str, &str, &str)] = &[
    ("networking.istio.io", "v1", "VirtualService"),
    ("networking.istio.io", "v1", "DestinationRule"),
    ("networking.istio.io", "v1", "Gateway"),
    ("networking.istio.io", "v1", "ServiceEntry"),
    ("networking.istio.io", "v1", "WorkloadEntry"),
    ("networking.istio.io", "v1", "Sidecar"),
    ("security.istio.io", "v1", "PeerAuthentication"),
    ("security.istio.io", "v1", "AuthorizationPolicy"),
    ("security.istio.io", "v1", "RequestAuthentication"),
    ("", "v1", "Service"),
    ("", "v1", "Pod"),
    ("", "v1", "Namespace"),
    ("discovery.k8s.io", "v1", "EndpointSlice"),
    // TLS Secrets only (field selector below): `credentialName` of gateways and
    // DestinationRules; served over SDS to proxies of the Secret's namespace only.
    ("", "v1", "Secret"),
    // The Kubernetes Gateway API (served as empty where its CRDs are not installed).
    ("gateway.networking.k8s.io", "v1", "Gateway"),
    ("gateway.networking.k8s.io", "v1", "HTTPRoute"),
];

/// How a kind is named in index names and the sync state: its kind, qualified by its
/// group where another group has a kind of the same name (the Gateway API's Gateway).
pub fn kind_id(group: &str, kind: &str) -> String {
    if group == "gateway.networking.k8s.io" {
        format!("{kind}.{group}")
    } else {
        kind.to_string()
    }
}

/// What a kind's watch lists: every object, except Secrets (the TLS ones only: a service
/// account token or an app's password is never read).
fn watch_config(kind: &str) -> watcher::Config {
    match kind {
        "Secret" => watcher::Config::default().fields("type=kubernetes.io/tls"),
        _ => watcher::Config::default(),
    }
}

/// What a remote cluster's watchers read: its registry only (see `model::remote`).
pub const REMOTE_KINDS: &[(&str, &str, &str)] = &[
    ("", "v1", "Service"),
    ("", "v1", "Pod"),
    ("discovery.k8s.io", "v1", "EndpointSlice"),
    ("networking.istio.io", "v1", "WorkloadEntry"),
];

/// What the watchers saw since the config loop last looked.
#[derive(Default)]
pub struct Pending {
    state: Mutex<PendingState>,
    /// Index names start with this: `kube:` for this cluster (empty means that), and
    /// `kube@<cluster>:` for a remote cluster's.
    prefix: String,
}

#[derive(Default)]
struct PendingState {
    /// Objects changed (text) or deleted (None), by index name, in arrival order.
    changes: BTreeMap<String, Option<String>>,
    /// Kinds relisted: every object of the kind (index names and texts).
    relists: BTreeMap<String, Vec<(String, String)>>,
    /// Kinds that listed at least once.
    synced: std::collections::BTreeSet<String>,
    /// Istio objects as last seen: generation and the `Accepted` condition they carry (for
    /// the status writer, `status`).
    istio: BTreeMap<String, super::status::Seen>,
}

/// One batch for the index.
#[derive(Default)]
pub struct Batch {
    /// Kind → every object of it (the kind was relisted).
    pub relists: BTreeMap<String, Vec<(String, String)>>,
    /// Index name → new text, or None: deleted (applied after the relists).
    pub changes: BTreeMap<String, Option<String>>,
}

impl Pending {
    /// The watchers of a remote cluster (`--remote-cluster NAME=kubeconfig:PATH`).
    pub fn remote(cluster: &str) -> Pending {
        Pending {
            prefix: format!("kube@{cluster}:"),
            ..Default::default()
        }
    }

    /// The prefix of this source's index names.
    pub fn prefix(&self) -> &str {
        if self.prefix.is_empty() {
            PREFIX
        } else {
            &self.prefix
        }
    }

    /// The index name of an object of this source (see `index_name`).
    pub fn index_name(&self, kind: &str, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) => format!("{}{kind}/{ns}/{name}", self.prefix()),
            None => format!("{}{kind}/{name}", self.prefix()),
        }
    }

    /// The prefix of one kind's index names in this source.
    pub fn kind_prefix(&self, kind: &str) -> String {
        format!("{}{kind}/", self.prefix())
    }

    /// The kinds that have listed at least once.
    pub fn synced_kinds(&self) -> Vec<String> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.synced.iter().cloned().collect()
    }

    /// Every kind of `kinds` has listed once.
    pub fn synced_all(&self, kinds: &[(&str, &str, &str)]) -> bool {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        kinds
            .iter()
            .all(|(g, _, k)| s.synced.contains(&kind_id(g, k)))
    }

    /// Everything since the last call.
    pub fn take(&self) -> Batch {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Batch {
            relists: std::mem::take(&mut s.relists),
            changes: std::mem::take(&mut s.changes),
        }
    }

    /// Every Istio object in the cluster as last seen, by index name.
    pub fn istio_objects(&self) -> BTreeMap<String, super::status::Seen> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.istio.clone()
    }

    /// Every kind has listed once.
    pub fn synced(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        KINDS
            .iter()
            .all(|(g, _, k)| s.synced.contains(&kind_id(g, k)))
    }
}

/// The index name of an object: `kube:<Kind>/<namespace>/<name>` (`<name>` alone for
/// cluster-scoped kinds).
pub fn index_name(kind: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{}{kind}/{ns}/{name}", PREFIX),
        None => format!("{}{kind}/{name}", PREFIX),
    }
}

/// Index names of this source start with this.
pub const PREFIX: &str = "kube:";

/// The prefix of one kind's index names.
pub fn kind_prefix(kind: &str) -> String {
    format!("{PREFIX}{kind}/")
}

/// Watches every kind until the process ends; `wake` is called after each change so the
/// config loop picks it up.
pub async fn run(client: kube::Client, pending: Arc<Pending>, wake: Arc<dyn Fn() + Send + Sync>) {
    run_kinds(client, pending, wake, KINDS).await
}

/// Watches `kinds` until the process ends (a remote cluster's: `REMOTE_KINDS`).
pub async fn run_kinds(
    client: kube::Client,
    pending: Arc<Pending>,
    wake: Arc<dyn Fn() + Send + Sync>,
    kinds: &'static [(&'static str, &'static str, &'static str)],
) {
    let tasks: Vec<_> = kinds
        .iter()
        .map(|(group, version, kind)| {
            let gvk = GroupVersionKind::gvk(group, version, kind);
            let ar = ApiResource::from_gvk(&gvk);
            tokio::spawn(watch_kind(
                client.clone(),
                ar,
                pending.clone(),
                wake.clone(),
            ))
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

async fn watch_kind(
    client: kube::Client,
    ar: ApiResource,
    pending: Arc<Pending>,
    wake: Arc<dyn Fn() + Send + Sync>,
) {
    use futures::StreamExt;
    let api: kube::Api<DynamicObject> = kube::Api::all_with(client, &ar);
    let kind = kind_id(&ar.group, &ar.kind);
    let mut stream = watcher::watcher(api, watch_config(&ar.kind))
        .default_backoff()
        .boxed();
    // Objects of a relist in progress.
    let mut listing: Option<Vec<(String, String)>> = None;
    // Objects whose status pilotfish writes: Istio's and the Gateway API's.
    let istio = ar.group.ends_with("istio.io") || ar.group == "gateway.networking.k8s.io";
    let optional = ar.group == "gateway.networking.k8s.io";
    let mut relisted_istio = BTreeMap::new();
    let mut failing = false;
    let mut missing = false;
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => {
                if failing && !matches!(ev, Event::Init) {
                    info!(%kind, "Kubernetes watch restored");
                    failing = false;
                    missing = false;
                }
                ev
            }
            Err(e) => {
                // The kind is not installed (no CRD): served as empty, so pilotfish is not
                // held back by a kind nobody uses; the watcher keeps retrying and a CRD
                // installed later is picked up with a relist.
                let code = match &e {
                    watcher::Error::InitialListFailed(kube::Error::Api(s)) => s.code,
                    _ => 0,
                };
                // The Gateway API is optional: forbidden to an account an older chart made,
                // it is served as empty too (with a warning) rather than holding back the
                // rest of the mesh.
                let not_found = code == 404 || (code == 403 && optional);
                if not_found && !missing {
                    missing = true;
                    if code == 403 {
                        warn!(%kind, "listing this kind is forbidden to pilotfish's account (grant get/list/watch on gateway.networking.k8s.io to use the Gateway API); served as empty until it is allowed");
                    } else {
                        warn!(%kind, "kind not installed in the cluster (CRD missing?); served as empty until it is");
                    }
                    let mut s = pending.state.lock().unwrap_or_else(|p| p.into_inner());
                    if s.synced.insert(kind.clone()) {
                        s.relists.insert(kind.clone(), Vec::new());
                        drop(s);
                        wake();
                    }
                } else if !failing && !not_found {
                    // The watcher retries with backoff (and relists after a 410 Gone);
                    // what is served stays as it is meanwhile.
                    warn!(%kind, error = %e, "Kubernetes watch failed; retrying, the served config stays");
                }
                failing = true;
                continue;
            }
        };
        let relisting = {
            let mut s = pending.state.lock().unwrap_or_else(|p| p.into_inner());
            match ev {
                Event::Init => {
                    listing = Some(Vec::new());
                    relisted_istio.clear();
                }
                Event::InitApply(obj) => {
                    let seen = istio.then(|| super::status::Seen::of(&obj));
                    if let Some((name, text)) = object_text(&pending, &ar, obj) {
                        if let Some(seen) = seen {
                            relisted_istio.insert(name.clone(), seen);
                        }
                        listing.get_or_insert_with(Vec::new).push((name, text));
                    }
                }
                Event::InitDone => {
                    let objects = listing.take().unwrap_or_default();
                    // A relist replaces the kind: changes queued before it are stale.
                    let prefix = pending.kind_prefix(&kind);
                    s.changes.retain(|n, _| !n.starts_with(&prefix));
                    if istio {
                        s.istio.retain(|n, _| !n.starts_with(&prefix));
                        s.istio.append(&mut relisted_istio);
                    }
                    s.relists.insert(kind.clone(), objects);
                    s.synced.insert(kind.clone());
                }
                Event::Apply(obj) => {
                    let seen = istio.then(|| super::status::Seen::of(&obj));
                    if let Some((name, text)) = object_text(&pending, &ar, obj) {
                        if let Some(seen) = seen {
                            s.istio.insert(name.clone(), seen);
                        }
                        s.changes.insert(name, Some(text));
                    }
                }
                Event::Delete(obj) => {
                    let name = pending.index_name(
                        &kind,
                        obj.metadata.namespace.as_deref(),
                        obj.metadata.name.as_deref().unwrap_or(""),
                    );
                    s.istio.remove(&name);
                    s.changes.insert(name, None);
                }
            }
            listing.is_some()
        };
        if !relisting {
            wake();
        }
    }
}

/// An object as the text the parser reads (JSON), with its type set (list items come
/// without it) and the metadata pilotfish does not read left out.
fn object_text(
    pending: &Pending,
    ar: &ApiResource,
    mut obj: DynamicObject,
) -> Option<(String, String)> {
    let name = obj.metadata.name.clone()?;
    let index = pending.index_name(
        &kind_id(&ar.group, &ar.kind),
        obj.metadata.namespace.as_deref(),
        &name,
    );
    obj.types = Some(kube::api::TypeMeta {
        api_version: ar.api_version.clone(),
        kind: ar.kind.clone(),
    });
    obj.metadata.managed_fields = None;
    // What pilotfish itself writes (an Istio object's status) and what changes with it (the
    // resource version) are left out, so a status write is no change to the config.
    // A Pod's status (its IP, its phase) is config.
    if ar.group.ends_with("istio.io") || ar.group == "gateway.networking.k8s.io" {
        if let Some(m) = obj.data.as_object_mut() {
            m.remove("status");
        }
    }
    obj.metadata.resource_version = None;
    let text = serde_json::to_string(&obj).ok()?;
    Some((index, text))
}

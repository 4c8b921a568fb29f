//! Encoded, content-hashed resources. A `Generation` is built once per `World`: the
//! resources every sidecar shares are encoded once, and per-proxy parts are memoized by the
//! inputs they depend on (source namespace + labels for routes, inbound ports for the
//! inbound listener and clusters), so proxies of one class share the same bytes.

use super::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use crate::model::{Proxy, Scope, World};
use crate::translate;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// One encoded resource: its name, content hash (the version) and packed bytes.
#[derive(Debug, PartialEq)]
pub struct Encoded {
    pub name: String,
    pub version: String,
    pub any: Any,
    /// Clusters this resource names (routes and listeners), for make-before-break.
    pub refs: Vec<String>,
}

pub type Res = Arc<Encoded>;

fn encode<T: Message + Name>(name: &str, m: &T) -> Res {
    encode_with(name, m, Vec::new())
}

fn encode_with<T: Message + Name>(name: &str, m: &T, refs: Vec<String>) -> Res {
    let value = m.encode_to_vec();
    let digest = Sha256::digest(&value);
    Arc::new(Encoded {
        name: name.to_string(),
        version: hex::encode(&digest[..8]),
        any: Any {
            type_url: T::type_url(),
            value,
        },
        refs,
    })
}

/// Resources of one type, by name.
pub type TypeMap = BTreeMap<String, Res>;

/// A proxy's complete view: for each type, layers of shared maps (the outbound set of its
/// scope, its route class, its inbound class). The maps are shared by every proxy of the same
/// class, so a connected proxy costs a few pointers, not a copy of the mesh.
#[derive(Debug, Default)]
pub struct ProxyResources {
    pub by_type: HashMap<&'static str, Vec<Arc<TypeMap>>>,
}

impl ProxyResources {
    /// Every resource of a type, sorted by name.
    pub fn values(&self, type_url: &str) -> Vec<Res> {
        let mut v: Vec<Res> = self
            .by_type
            .get(type_url)
            .into_iter()
            .flatten()
            .flat_map(|m| m.values().cloned())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn contains(&self, type_url: &str, name: &str) -> bool {
        self.by_type
            .get(type_url)
            .is_some_and(|layers| layers.iter().any(|m| m.contains_key(name)))
    }

    pub fn len(&self, type_url: &str) -> usize {
        self.by_type
            .get(type_url)
            .map(|l| l.iter().map(|m| m.len()).sum())
            .unwrap_or(0)
    }
}

/// Version of a set of resources: a hash of their names and versions.
pub fn set_version<'a>(items: impl Iterator<Item = &'a Res>) -> String {
    let mut h = Sha256::new();
    for r in items {
        h.update(r.name.as_bytes());
        h.update([0]);
        h.update(r.version.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

type RouteKey = (String, BTreeMap<String, String>);

/// Everything derived from one World.
pub struct Generation {
    pub world: Arc<World>,
    /// Outbound clusters, endpoints and listeners per (scope, mTLS capability): shared by
    /// every proxy that sees the same part of the mesh.
    outbound: Mutex<HashMap<(Scope, bool), Arc<Outbound>>>,
    /// Route configurations per (namespace, labels): the whole input of route generation
    /// (sourceLabels matches and the Sidecar scope derive from them).
    routes: Mutex<HashMap<RouteKey, Arc<TypeMap>>>,
    /// Inbound clusters and listener per inbound key (its whole input).
    inbound: Mutex<HashMap<translate::listener::InboundKey, (Arc<TypeMap>, Arc<TypeMap>)>>,
    per_proxy: Mutex<HashMap<Proxy, Arc<ProxyResources>>>,
    /// Label keys that matter to route generation (see `World::route_label_keys`).
    route_label_keys: std::collections::BTreeSet<String>,
}

struct Outbound {
    clusters: Arc<TypeMap>,
    endpoints: Arc<TypeMap>,
    listeners: Arc<TypeMap>,
}

impl Generation {
    /// Builds the outbound set of the unscoped, certificate-less class eagerly (the common
    /// case); other classes are built on first use.
    pub fn new(world: Arc<World>) -> Generation {
        let g = Generation {
            world,
            outbound: Default::default(),
            routes: Default::default(),
            inbound: Default::default(),
            per_proxy: Default::default(),
            route_label_keys: Default::default(),
        };
        let g = Generation {
            route_label_keys: g.world.route_label_keys(),
            ..g
        };
        let scope = g.world.scope("", &BTreeMap::new());
        g.outbound_for(scope, false);
        g
    }

    fn outbound_for(&self, scope: Scope, mtls: bool) -> Arc<Outbound> {
        let mut memo = self.outbound.lock().unwrap();
        let w = &*self.world;
        memo.entry((scope, mtls))
            .or_insert_with_key(|(scope, mtls)| {
                Arc::new(Outbound {
                    clusters: Arc::new(map(translate::cluster::outbound(w, scope, *mtls), |c| {
                        &c.name
                    })),
                    endpoints: Arc::new(map(translate::endpoint::all(w, scope), |e| {
                        &e.cluster_name
                    })),
                    listeners: Arc::new(listener_map(translate::listener::outbound(w, scope))),
                })
            })
            .clone()
    }

    /// The resources for one proxy, memoized.
    pub fn for_proxy(&self, proxy: &Proxy) -> Arc<ProxyResources> {
        if let Some(r) = self.per_proxy.lock().unwrap().get(proxy) {
            return r.clone();
        }
        let w = &*self.world;
        let out = self.outbound_for(w.scope(&proxy.namespace, &proxy.labels), proxy.mtls);
        // Routes depend on the namespace and the route-relevant labels only; generating for a
        // class proxy built from exactly the key keeps the key the whole input.
        let labels: BTreeMap<String, String> = proxy
            .labels
            .iter()
            .filter(|(k, _)| self.route_label_keys.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let rkey = (proxy.namespace.clone(), labels);
        let routes = {
            let mut memo = self.routes.lock().unwrap();
            memo.entry(rkey)
                .or_insert_with_key(|(ns, labels)| {
                    let class = Proxy {
                        namespace: ns.clone(),
                        labels: labels.clone(),
                        ..Default::default()
                    };
                    Arc::new(route_map(translate::route::outbound(w, &class)))
                })
                .clone()
        };
        // The key is the whole input of the inbound resources (no implicit inputs).
        let key = translate::listener::inbound_key(w, proxy);
        let (in_clusters, in_listeners) = {
            let mut memo = self.inbound.lock().unwrap();
            memo.entry(key.clone())
                .or_insert_with(|| {
                    (
                        Arc::new(map(translate::cluster::inbound_from(&key), |c| &c.name)),
                        Arc::new(listener_map(vec![translate::listener::inbound_from(&key)])),
                    )
                })
                .clone()
        };
        let mut by_type = HashMap::new();
        by_type.insert(CLUSTER, vec![out.clusters.clone(), in_clusters]);
        by_type.insert(ENDPOINT, vec![out.endpoints.clone()]);
        by_type.insert(LISTENER, vec![out.listeners.clone(), in_listeners]);
        by_type.insert(ROUTE, vec![routes]);
        let res = Arc::new(ProxyResources { by_type });
        self.per_proxy
            .lock()
            .unwrap()
            .insert(proxy.clone(), res.clone());
        res
    }

    /// Forget per-proxy entries of disconnected proxies (class memos stay).
    pub fn forget(&self, proxy: &Proxy) {
        self.per_proxy.lock().unwrap().remove(proxy);
    }
}

fn map<T: Message + Name>(items: Vec<T>, name: impl Fn(&T) -> &str) -> TypeMap {
    items
        .iter()
        .map(|m| (name(m).to_string(), encode(name(m), m)))
        .collect()
}

/// Encode an SDS secret (per identity, not part of a generation).
pub fn encode_secret(
    s: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret,
) -> Res {
    encode(&s.name, s)
}

fn route_map(items: Vec<envoy_types::pb::envoy::config::route::v3::RouteConfiguration>) -> TypeMap {
    items
        .iter()
        .map(|r| {
            let refs = translate::route::referenced_clusters(std::slice::from_ref(r));
            (r.name.clone(), encode_with(&r.name, r, refs))
        })
        .collect()
}

fn listener_map(items: Vec<envoy_types::pb::envoy::config::listener::v3::Listener>) -> TypeMap {
    items
        .iter()
        .map(|l| {
            let refs = translate::listener::referenced_clusters(std::slice::from_ref(l));
            (l.name.clone(), encode_with(&l.name, l, refs))
        })
        .collect()
}

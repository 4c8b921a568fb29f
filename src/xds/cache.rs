//! Encoded, content-hashed resources. A `Generation` is built once per `World`: the
//! resources every sidecar shares are encoded once, and per-proxy parts are memoized by the
//! inputs they depend on (source namespace + labels for routes, inbound ports for the
//! inbound listener and clusters), so proxies of one class share the same bytes.

use super::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use crate::model::{Proxy, World};
use crate::translate::{self, ProxyConfig};
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

/// A proxy's complete view: every type's resources.
#[derive(Debug, Default)]
pub struct ProxyResources {
    pub by_type: HashMap<&'static str, TypeMap>,
    /// Problems found by the consistency check (served anyway minus the broken pieces).
    pub problems: Vec<String>,
}

impl ProxyResources {
    pub fn get(&self, type_url: &str) -> Option<&TypeMap> {
        self.by_type.get(type_url)
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
    /// Outbound clusters for proxies without certificates (plaintext everywhere).
    shared_clusters: TypeMap,
    /// Outbound clusters with auto mTLS, built on first use.
    mtls_clusters: std::sync::OnceLock<TypeMap>,
    shared_listeners: TypeMap,
    endpoints: TypeMap,
    routes: Mutex<HashMap<RouteKey, TypeMap>>,
    inbound: Mutex<HashMap<translate::listener::InboundKey, (TypeMap, TypeMap)>>,
    per_proxy: Mutex<HashMap<Proxy, Arc<ProxyResources>>>,
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

impl Generation {
    pub fn new(world: Arc<World>) -> Generation {
        let shared_clusters = map(translate::cluster::outbound(&world, false), |c| &c.name);
        let shared_listeners = listener_map(translate::listener::outbound(&world));
        let endpoints = map(translate::endpoint::all(&world), |e| &e.cluster_name);
        Generation {
            world,
            shared_clusters,
            mtls_clusters: std::sync::OnceLock::new(),
            shared_listeners,
            endpoints,
            routes: Default::default(),
            inbound: Default::default(),
            per_proxy: Default::default(),
        }
    }

    /// The resources for one proxy, memoized.
    pub fn for_proxy(&self, proxy: &Proxy) -> Arc<ProxyResources> {
        if let Some(r) = self.per_proxy.lock().unwrap().get(proxy) {
            return r.clone();
        }
        let w = &*self.world;
        let rkey = (proxy.namespace.clone(), proxy.labels.clone());
        let routes = {
            let mut memo = self.routes.lock().unwrap();
            memo.entry(rkey)
                .or_insert_with(|| route_map(translate::route::outbound(w, proxy)))
                .clone()
        };
        // The key is the whole input of the inbound resources (no implicit inputs).
        let key = translate::listener::inbound_key(w, proxy);
        let (in_clusters, in_listeners) = {
            let mut memo = self.inbound.lock().unwrap();
            memo.entry(key.clone())
                .or_insert_with(|| {
                    (
                        map(translate::cluster::inbound_from(&key), |c| &c.name),
                        listener_map(vec![translate::listener::inbound_from(&key)]),
                    )
                })
                .clone()
        };
        let mut clusters = if proxy.mtls {
            self.mtls_clusters
                .get_or_init(|| map(translate::cluster::outbound(w, true), |c| &c.name))
                .clone()
        } else {
            self.shared_clusters.clone()
        };
        clusters.extend(in_clusters);
        let mut listeners = self.shared_listeners.clone();
        listeners.extend(in_listeners);
        let mut by_type = HashMap::new();
        by_type.insert(CLUSTER, clusters);
        by_type.insert(ENDPOINT, self.endpoints.clone());
        by_type.insert(LISTENER, listeners);
        by_type.insert(ROUTE, routes);
        let res = Arc::new(ProxyResources {
            by_type,
            problems: Vec::new(),
        });
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

/// Decode a proxy's resources back into typed config (for config_dump and checks).
pub fn decode(res: &ProxyResources) -> ProxyConfig {
    fn all<T: Message + Default>(m: Option<&TypeMap>) -> Vec<T> {
        m.map(|m| {
            m.values()
                .filter_map(|r| T::decode(r.any.value.as_slice()).ok())
                .collect()
        })
        .unwrap_or_default()
    }
    ProxyConfig {
        clusters: all(res.get(CLUSTER)),
        endpoints: all(res.get(ENDPOINT)),
        listeners: all(res.get(LISTENER)),
        routes: all(res.get(ROUTE)),
    }
}

//! Encoded, content-hashed resources. A `Generation` is built once per `World`: the
//! resources every sidecar shares are encoded once, and per-proxy parts are memoized by the
//! inputs they depend on (source namespace + labels for routes, inbound ports for the
//! inbound listener and clusters), so proxies of one class share the same bytes.

use super::{CLUSTER, ENDPOINT, LISTENER, ROUTE, VHOST};
use crate::model::{Change, Origin, Proxy, RouteChange, Scope, World};
use crate::translate;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock, Mutex, Weak};

/// One encoded resource: its name, content hash (the version) and packed bytes.
#[derive(Debug, PartialEq)]
pub struct Encoded {
    pub name: String,
    pub version: String,
    /// The `google.protobuf.Any` it travels in: type URL and the encoded message, shared
    /// (responses send large ones without copying them).
    pub type_url: String,
    pub value: bytes::Bytes,
    /// Clusters this resource names (routes and listeners), for make-before-break.
    pub refs: Vec<String>,
}

impl Encoded {
    /// The resource as a protobuf `Any` (a copy; for debug output and tests).
    pub fn any(&self) -> Any {
        Any {
            type_url: self.type_url.clone(),
            value: self.value.to_vec(),
        }
    }
}

pub type Res = Arc<Encoded>;

fn encode<T: Message + Name>(name: &str, m: &T) -> Res {
    encode_with(name, m, Vec::new())
}

fn encode_with<T: Message + Name>(name: &str, m: &T, refs: Vec<String>) -> Res {
    encoded(name, T::type_url(), m.encode_to_vec(), refs)
}

/// A resource from its encoding; the version is a hash of the bytes.
fn encoded(name: &str, type_url: String, value: Vec<u8>, refs: Vec<String>) -> Res {
    let digest = Sha256::digest(&value);
    Arc::new(Encoded {
        name: name.to_string(),
        version: hex::encode(&digest[..8]),
        type_url,
        value: value.into(),
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

    /// The shared maps of a type (empty for a type this proxy has none of).
    pub fn layers(&self, type_url: &str) -> &[Arc<TypeMap>] {
        self.by_type
            .get(type_url)
            .map(Vec::as_slice)
            .unwrap_or_default()
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
fn set_version<'a>(items: impl Iterator<Item = &'a Res>) -> String {
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
/// An outbound class: the proxy's scope, whether it has certificates, and its locality
/// where locality-aware load balancing applies (see `World::locality_class`), and its
/// network where endpoints are on several (see `World::network_class`).
type OutKey = (Scope, bool, Option<Origin>, Option<String>);
type GatewayKey = (String, BTreeMap<String, String>, Vec<String>, bool, String);
/// A gateway class's listeners, routes, and its SNI clusters and their endpoints
/// (east-west gateways; empty otherwise).
type GatewayMaps = (Arc<TypeMap>, Arc<TypeMap>, Arc<TypeMap>, Arc<TypeMap>);

/// A set of resource names a proxy subscribed to, interned: the 2,000 proxies of a class
/// that ask for the same 6,000 endpoint names share one set instead of holding a copy each.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub set: BTreeSet<String>,
    /// The names as `DiscoveryRequest.resource_names` fields, in order (SotW only, made on
    /// first use): an ACK that repeats them byte for byte is recognized with one comparison.
    wire: std::sync::OnceLock<Vec<u8>>,
}

static INTERNED: LazyLock<Mutex<HashMap<u64, Vec<Weak<Names>>>>> = LazyLock::new(Default::default);

impl Names {
    /// The shared set equal to `set`.
    pub fn intern(set: BTreeSet<String>) -> Arc<Names> {
        let mut h = std::hash::DefaultHasher::new();
        set.hash(&mut h);
        let key = h.finish();
        let mut map = INTERNED.lock().unwrap();
        let slot = map.entry(key).or_default();
        slot.retain(|w| w.strong_count() > 0);
        if let Some(found) = slot.iter().filter_map(Weak::upgrade).find(|n| n.set == set) {
            return found;
        }
        let n = Arc::new(Names {
            set,
            wire: Default::default(),
        });
        slot.push(Arc::downgrade(&n));
        // Drop slots whose sets are all gone, now and then.
        if map.len() > 64 && map.len().is_power_of_two() {
            map.retain(|_, v| v.iter().any(|w| w.strong_count() > 0));
        }
        n
    }

    pub fn contains(&self, name: &str) -> bool {
        self.set.contains(name)
    }

    /// The set encoded as `resource_names` fields, in order.
    pub fn wire(&self) -> &[u8] {
        self.wire.get_or_init(|| {
            let mut w = Vec::new();
            for name in &self.set {
                prost::encoding::string::encode(3, name, &mut w);
            }
            w
        })
    }
}

/// What a proxy holds, or is to hold, of one type: layers of a generation (shared), an
/// optional name filter (shared), and the few resources kept for make-before-break. A
/// stream keeps one per type: a handful of pointers, not a copy of the names.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub layers: Vec<Arc<TypeMap>>,
    /// Only these names (None: every resource of the layers).
    pub filter: Option<Arc<Names>>,
    /// Resources outside the layers, sorted by name (make-before-break, secrets).
    pub extra: Vec<Res>,
}

fn ptr<T>(a: &Arc<T>) -> usize {
    Arc::as_ptr(a) as *const () as usize
}

impl View {
    pub fn wanted(&self, name: &str) -> bool {
        self.filter.as_ref().is_none_or(|f| f.contains(name))
    }

    pub fn get(&self, name: &str) -> Option<&Res> {
        if !self.wanted(name) {
            return None;
        }
        self.layers.iter().find_map(|m| m.get(name)).or_else(|| {
            self.extra
                .binary_search_by(|r| r.name.as_str().cmp(name))
                .ok()
                .map(|i| &self.extra[i])
        })
    }

    /// Same layers, filter and kept resources: nothing differs.
    pub fn same(&self, o: &View) -> bool {
        self.same_layers(&o.layers)
            && self.same_shape(o)
            && self.extra.len() == o.extra.len()
            && self
                .extra
                .iter()
                .zip(&o.extra)
                .all(|(a, b)| Arc::ptr_eq(a, b) || (a.name == b.name && a.version == b.version))
    }

    /// Same filter and layer count, nothing kept: a layer-by-layer diff is exact.
    fn same_shape(&self, o: &View) -> bool {
        self.layers.len() == o.layers.len()
            && match (&self.filter, &o.filter) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }

    pub fn same_layers(&self, layers: &[Arc<TypeMap>]) -> bool {
        self.layers.len() == layers.len()
            && self
                .layers
                .iter()
                .zip(layers)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }

    /// Every resource, sorted by name (layers and kept ones), with the set's version.
    pub fn resolve(&self, gen: &Generation) -> Arc<Resolved> {
        if !self.extra.is_empty() {
            return Arc::new(self.resolve_now());
        }
        let mut key = Vec::with_capacity(self.layers.len() + 2);
        self.push_key(&mut key);
        if let Some((r, _)) = gen.resolved.lock().unwrap().get(&key) {
            return r.clone();
        }
        let r = Arc::new(self.resolve_now());
        // The entry keeps the view alive, so its addresses keep naming it.
        gen.resolved
            .lock()
            .unwrap()
            .insert(key, (r.clone(), self.clone()));
        r
    }

    fn resolve_now(&self) -> Resolved {
        let mut items: Vec<Res> = match &self.filter {
            Some(f) if f.set.len() < self.layers.iter().map(|m| m.len()).sum::<usize>() => f
                .set
                .iter()
                .filter_map(|n| self.layers.iter().find_map(|m| m.get(n)))
                .cloned()
                .collect(),
            _ => self
                .layers
                .iter()
                .flat_map(|m| m.values())
                .filter(|r| self.wanted(&r.name))
                .cloned()
                .collect(),
        };
        items.extend(self.extra.iter().filter(|r| self.wanted(&r.name)).cloned());
        items.sort_by(|a, b| a.name.cmp(&b.name));
        items.dedup_by(|a, b| a.name == b.name);
        let version = set_version(items.iter());
        Resolved {
            items,
            version,
            fingerprint: Default::default(),
        }
    }

    /// What changed from `old` (what the proxy holds) to `self`: resources to send (new or
    /// with another version) and names no longer present. Layer pairs are diffed once per
    /// generation and shared by every proxy that makes the same step.
    pub fn diff(&self, old: &View, gen: &Generation) -> Arc<Diff> {
        if self.same(old) {
            return Arc::default();
        }
        if !self.extra.is_empty() || !old.extra.is_empty() {
            return Arc::new(self.diff_now(old, gen));
        }
        let mut key = Vec::with_capacity(old.layers.len() + self.layers.len() + 4);
        old.push_key(&mut key);
        self.push_key(&mut key);
        if let Some((d, _)) = gen.view_diffs.lock().unwrap().get(&key) {
            return d.clone();
        }
        let d = Arc::new(self.diff_now(old, gen));
        // The entry keeps both views alive, so their addresses keep naming them.
        gen.view_diffs
            .lock()
            .unwrap()
            .insert(key, (d.clone(), (old.clone(), self.clone())));
        d
    }

    /// Appends what names this view in memo keys (its layers and filter, by address; the
    /// memo entry must keep them alive), then a separator.
    fn push_key(&self, key: &mut Vec<usize>) {
        key.extend(self.layers.iter().map(ptr));
        key.push(self.filter.as_ref().map(ptr).unwrap_or(0));
        key.push(usize::MAX);
    }

    fn diff_now(&self, old: &View, gen: &Generation) -> Diff {
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        if self.same_shape(old) && self.extra.is_empty() && old.extra.is_empty() {
            for (o, n) in old.layers.iter().zip(&self.layers) {
                if Arc::ptr_eq(o, n) {
                    continue;
                }
                let d = gen.layer_diff(o, n);
                changed.extend(d.changed.iter().filter(|r| self.wanted(&r.name)).cloned());
                removed.extend(
                    d.removed
                        .iter()
                        .filter(|n| self.wanted(n) && self.get(n).is_none())
                        .cloned(),
                );
            }
            // A resource that moved between layers unchanged is not news.
            changed.retain(|r| old.get(&r.name).is_none_or(|h| h.version != r.version));
        } else {
            let new = self.resolve(gen);
            for r in &new.items {
                if old.get(&r.name).is_none_or(|h| h.version != r.version) {
                    changed.push(r.clone());
                }
            }
            for r in &old.resolve(gen).items {
                if self.get(&r.name).is_none() {
                    removed.push(r.name.clone());
                }
            }
        }
        changed.sort_by(|a, b| a.name.cmp(&b.name));
        changed.dedup_by(|a, b| a.name == b.name);
        removed.sort();
        removed.dedup();
        (changed, removed)
    }
}

/// A view's resources in name order and the version of the set.
#[derive(Debug)]
pub struct Resolved {
    pub items: Vec<Res>,
    pub version: String,
    /// Of the (name, version) pairs, made on first use: compared with a reconnecting delta
    /// proxy's claims (see `claims`).
    fingerprint: std::sync::OnceLock<super::claims::Fingerprint>,
}

impl Resolved {
    pub fn fingerprint(&self) -> super::claims::Fingerprint {
        *self.fingerprint.get_or_init(|| {
            super::claims::Fingerprint::of(
                self.items
                    .iter()
                    .map(|r| (r.name.as_str(), r.version.as_str())),
            )
        })
    }
}

/// The difference between two maps of one type.
struct LayerDiff {
    changed: Vec<Res>,
    removed: Vec<String>,
    /// Keeps the old map alive while the entry exists, so its address stays its own.
    _old: Arc<TypeMap>,
}

/// Missing names, and the maps they were computed for (kept alive: their addresses key it).
type MissingEntry = (Arc<Vec<String>>, Vec<Arc<TypeMap>>);

/// Everything derived from one World.
pub struct Generation {
    pub world: Arc<World>,
    /// Outbound clusters, endpoints and listeners per (scope, mTLS capability): shared by
    /// every proxy that sees the same part of the mesh.
    outbound: Mutex<HashMap<OutKey, Arc<Outbound>>>,
    /// Route configurations per (namespace, labels): the whole input of route generation
    /// (sourceLabels matches and the Sidecar scope derive from them).
    /// A cell per class, filled outside the lock: classes build in parallel, and streams of
    /// one class wait for its single build.
    routes: Mutex<HashMap<RouteKey, RouteCell>>,
    /// Inbound clusters and listener per inbound key (its whole input).
    inbound: Mutex<HashMap<translate::listener::InboundKey, InboundMaps>>,
    /// Gateway listeners and route configurations per (namespace, labels, addresses, mTLS):
    /// the whole input of gateway generation besides the World. Rebuilt with every generation
    /// (gateways are few).
    gateways: Mutex<HashMap<GatewayKey, GatewayMaps>>,
    /// Label keys that matter to route generation (see `World::route_label_keys`).
    route_label_keys: std::collections::BTreeSet<String>,
    /// Resolved views (sorted resources + version) per (layers, filter).
    resolved: Mutex<HashMap<Vec<usize>, (Arc<Resolved>, View)>>,
    /// Diffs from an older generation's map to this one's, per (old, new) map.
    diffs: Mutex<HashMap<(usize, usize), Arc<LayerDiff>>>,
    /// Clusters that a held route/listener map names but the new cluster maps lack, per
    /// (holder map, cluster maps): the make-before-break check, once per map step.
    missing: Mutex<HashMap<Vec<usize>, MissingEntry>>,
    /// Whole-view diffs from an older view to one of this generation's, per (old, new)
    /// layers and filters: proxies of one class making the same step share one diff.
    view_diffs: Mutex<HashMap<Vec<usize>, ViewDiffEntry>>,
    /// The previous generation's outbound sets and World: what did not change is reused
    /// (same pointers, no re-encoding) instead of rebuilt.
    carry: Option<Carry>,
}

type ViewDiffEntry = (Arc<Diff>, (View, View));

type RouteCell = Arc<std::sync::OnceLock<Arc<RouteClass>>>;

/// The route configurations of one route class, kept per virtual host: each virtual host is
/// encoded once, in its VHDS form (named `<configuration>/<virtual host>`), and both forms
/// of the class are assembled from those bytes on first use. VHDS (delta ADS): each
/// configuration's settings naming VHDS, plus the virtual hosts as they are. Inline (state
/// of the world, and streams without VHDS): each configuration with its virtual hosts
/// inside, spliced from the same bytes. A VirtualService edit rebuilds only the virtual
/// hosts of the hosts it names; every other one keeps its encoding (see `build_routes`).
pub struct RouteClass {
    parts: Arc<RouteParts>,
    inline: std::sync::OnceLock<Arc<TypeMap>>,
    vhds: std::sync::OnceLock<VhdsForm>,
}

/// The route configurations of a class, and the scope they were laid out for.
struct RouteParts {
    scope: Scope,
    parts: Vec<RoutePart>,
}

/// One route configuration of a class.
struct RoutePart {
    port: u32,
    /// The configuration's own settings (no virtual hosts).
    settings: envoy_types::pb::envoy::config::route::v3::RouteConfiguration,
    /// Its virtual hosts in order, VHDS-named, each with the service host it is for
    /// (empty for the fallback).
    vhosts: Vec<(String, Res)>,
}

/// Route configurations that name VHDS, and their virtual hosts (`<config>/<vhost>`).
struct VhdsForm {
    configs: Arc<TypeMap>,
    vhosts: Arc<TypeMap>,
}

impl RouteClass {
    /// Some stream still holds one of its maps (not only the memo).
    fn live(&self) -> bool {
        let held = |m: &Arc<TypeMap>| Arc::strong_count(m) > 1;
        self.inline.get().is_some_and(held)
            || self
                .vhds
                .get()
                .is_some_and(|f| held(&f.configs) || held(&f.vhosts))
    }

    fn inline(&self) -> &Arc<TypeMap> {
        self.inline.get_or_init(|| {
            Arc::new(
                self.parts
                    .parts
                    .iter()
                    .map(|p| {
                        let r = inline_config(p);
                        (r.name.clone(), r)
                    })
                    .collect(),
            )
        })
    }

    fn vhds_form(&self) -> &VhdsForm {
        self.vhds.get_or_init(|| {
            let mut configs = TypeMap::new();
            let mut vhosts = TypeMap::new();
            for p in self.parts.parts.iter() {
                if p.vhosts.is_empty() {
                    // Envoy would wait for a first virtual host in vain.
                    let r = inline_config(p);
                    configs.insert(r.name.clone(), r);
                    continue;
                }
                let rc = translate::route::vhds_settings(p.settings.clone());
                configs.insert(rc.name.clone(), encode(&rc.name, &rc));
                vhosts.extend(p.vhosts.iter().map(|(_, r)| (r.name.clone(), r.clone())));
            }
            VhdsForm {
                configs: Arc::new(configs),
                vhosts: Arc::new(vhosts),
            }
        })
    }
}

/// Builds a route class from the layout of its configurations. With `prev` (the same
/// class in the previous generation, and the hosts whose virtual hosts may differ since:
/// only VirtualServices changed) and the same scope, the layout is the same: every other
/// virtual host is taken as it was, encoding and all, so an edit of one VirtualService
/// translates and encodes one virtual host per port.
fn build_routes(
    w: &World,
    class: &Proxy,
    prev: Option<(&RouteParts, &BTreeSet<String>)>,
) -> RouteClass {
    use envoy_types::pb::envoy::config::route::v3::VirtualHost;
    use translate::route::{fallback_vhost, layout, service_vhost, settings, vhds_name};
    let scope = w.scope(&class.namespace, &class.labels);
    let vhost = |port: u32, name: &str, svc: &crate::model::Service, domains: Vec<String>| {
        let mut v = service_vhost(w, class, svc, port, domains);
        v.name = vhds_name(name, &v.name);
        encode_vhost(&v)
    };
    let parts = match prev.filter(|(p, _)| p.scope == scope) {
        Some((p, changed)) => p
            .parts
            .iter()
            .map(|part| {
                let vhosts = part
                    .vhosts
                    .iter()
                    .map(|(host, r)| {
                        let svc = w.services.get(host).filter(|_| changed.contains(host));
                        let Some(svc) = svc else {
                            return (host.clone(), r.clone());
                        };
                        // Same services: it answers the same names as before.
                        let domains = VirtualHost::decode(r.value.as_ref())
                            .expect("own encoding")
                            .domains;
                        let name = &part.settings.name;
                        (host.clone(), vhost(part.port, name, svc, domains))
                    })
                    .collect();
                RoutePart {
                    port: part.port,
                    settings: part.settings.clone(),
                    vhosts,
                }
            })
            .collect(),
        None => layout(w, class)
            .into_iter()
            .map(|l| {
                let settings = settings(l.port);
                let mut vhosts: Vec<(String, Res)> = l
                    .hosts
                    .into_iter()
                    .map(|(svc, domains)| {
                        let r = vhost(l.port, &settings.name, svc, domains);
                        (svc.hostname.clone(), r)
                    })
                    .collect();
                let mut v = fallback_vhost(l.allow_any);
                v.name = vhds_name(&settings.name, &v.name);
                vhosts.push((String::new(), encode_vhost(&v)));
                RoutePart {
                    port: l.port,
                    settings,
                    vhosts,
                }
            })
            .collect(),
    };
    RouteClass {
        parts: Arc::new(RouteParts { scope, parts }),
        inline: Default::default(),
        vhds: Default::default(),
    }
}

fn encode_vhost(v: &envoy_types::pb::envoy::config::route::v3::VirtualHost) -> Res {
    let refs = translate::route::vhost_clusters(std::iter::once(v));
    encode_with(&v.name, v, refs)
}

/// A configuration with its virtual hosts inside, spliced from their VHDS encodings: each
/// starts with its name (field 1), which is swapped for the inline name; the rest of its
/// bytes are used as they are. Then the configuration's other settings.
fn inline_config(p: &RoutePart) -> Res {
    use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
    let name = &p.settings.name;
    let cut = name.len() + 1;
    let mut buf = Vec::new();
    prost::encoding::string::encode(1, name, &mut buf);
    let mut refs = Vec::new();
    for (_, v) in &p.vhosts {
        let mut head = Vec::with_capacity(v.name.len() + 4);
        prost::encoding::string::encode(1, &v.name, &mut head);
        let inline_name = &v.name[cut..];
        let body = match v.value.strip_prefix(head.as_slice()) {
            Some(rest) => std::borrow::Cow::Borrowed(rest),
            // Not laid out as expected: take the long way.
            None => {
                let mut vh = VirtualHost::decode(v.value.as_ref()).expect("own encoding");
                vh.name.clear();
                std::borrow::Cow::Owned(vh.encode_to_vec())
            }
        };
        let inner =
            1 + encoded_len_varint(inline_name.len() as u64) + inline_name.len() + body.len();
        encode_key(2, WireType::LengthDelimited, &mut buf);
        encode_varint(inner as u64, &mut buf);
        encode_key(1, WireType::LengthDelimited, &mut buf);
        encode_varint(inline_name.len() as u64, &mut buf);
        buf.extend_from_slice(inline_name.as_bytes());
        buf.extend_from_slice(&body);
        refs.extend(v.refs.iter().cloned());
    }
    RouteConfiguration {
        name: String::new(),
        ..p.settings.clone()
    }
    .encode(&mut buf)
    .expect("a Vec grows");
    encoded(name, RouteConfiguration::type_url(), buf, refs)
}

/// Inbound clusters and the inbound listener of one inbound class.
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

/// Inbound clusters, listener and route configurations of one inbound class.
type InboundMaps = (Arc<TypeMap>, Arc<TypeMap>, Arc<TypeMap>);

/// Resources to send (new, or another version) and names no longer present.
pub type Diff = (Vec<Res>, Vec<String>);

/// What `endpoint_map` compares against: the previous World's endpoint inputs (not the
/// whole World: its objects and indexes need not outlive it) and its outbound sets.
struct Carry {
    inputs: EndpointInputs,
    outbound: HashMap<OutKey, Arc<Outbound>>,
    /// The previous route classes' virtual hosts, and the hosts whose virtual hosts may
    /// have changed since (None: any of them).
    routes: HashMap<RouteKey, Arc<RouteParts>>,
    changed_hosts: Option<BTreeSet<String>>,
    /// Only VirtualServices changed: clusters and endpoints are the previous ones (only
    /// listeners read VirtualServices, for TCP routes).
    only_vs: bool,
}

/// Everything a ClusterLoadAssignment reads from the World.
struct EndpointInputs {
    services: BTreeMap<String, Arc<crate::model::Service>>,
    destination_rules: BTreeMap<String, Arc<crate::model::DestRule>>,
    peer_authn: Vec<Arc<crate::model::PeerAuthn>>,
    mesh: crate::model::MeshConfig,
    network_gateways: BTreeMap<String, Vec<(String, u32)>>,
}

struct Outbound {
    clusters: Arc<TypeMap>,
    endpoints: Arc<TypeMap>,
    listeners: Arc<TypeMap>,
    /// The DNS listener, for proxies that capture DNS.
    dns: Arc<TypeMap>,
}

impl Generation {
    /// Builds the outbound set of the unscoped, certificate-less class eagerly (the common
    /// case); other classes are built on first use.
    pub fn new(world: Arc<World>) -> Generation {
        Generation::next(world, None)
    }

    /// The generation after `prev`: what did not change is carried over (see `next_with`).
    pub fn next(world: Arc<World>, prev: Option<&Generation>) -> Generation {
        let change = world.change_since(prev.map(|p| &*p.world));
        Generation::next_with(world, prev, change)
    }

    /// The generation after `prev`, given what changed since (see `World::change_since`). Route classes carry over when nothing routes read changed
    /// (endpoint churn), so they are neither rebuilt nor resent; when only VirtualServices
    /// changed, rebuilt classes take every virtual host of other hosts as it was. Inbound
    /// classes still in use carry over (their key is their whole input); outbound maps reuse
    /// the previous encoding of every resource whose bytes are unchanged, and the endpoints
    /// of services whose inputs are unchanged are not even translated again.
    pub fn next_with(world: Arc<World>, prev: Option<&Generation>, change: Change) -> Generation {
        let route_label_keys = world.route_label_keys();
        let mut g = Generation {
            world,
            outbound: Default::default(),
            routes: Default::default(),
            inbound: Default::default(),
            gateways: Default::default(),
            route_label_keys,
            resolved: Default::default(),
            diffs: Default::default(),
            missing: Default::default(),
            view_diffs: Default::default(),
            carry: None,
        };
        if let Some(p) = prev {
            // Classes no stream holds any more (only the memo points at them) are dropped.
            let live = |m: &Arc<TypeMap>| Arc::strong_count(m) > 1;
            let routes = p.routes.lock().unwrap();
            let same_keys = g.route_label_keys == p.route_label_keys;
            let mut prev_routes = HashMap::new();
            let mut changed_hosts = None;
            match change.routes {
                RouteChange::None if same_keys => {
                    *g.routes.get_mut().unwrap() = routes
                        .iter()
                        .filter(|(_, c)| c.get().is_some_and(|c| c.live()))
                        .map(|(k, c)| (k.clone(), c.clone()))
                        .collect();
                }
                RouteChange::Hosts(hosts) if same_keys => {
                    prev_routes = routes
                        .iter()
                        .filter_map(|(k, c)| Some((k.clone(), c.get()?.parts.clone())))
                        .collect();
                    changed_hosts = Some(hosts);
                }
                _ => {}
            }
            drop(routes);
            let inbound = p.inbound.lock().unwrap();
            *g.inbound.get_mut().unwrap() = inbound
                .iter()
                .filter(|(_, (c, l, r))| live(c) || live(l) || live(r))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let pw = &p.world;
            g.carry = Some(Carry {
                inputs: EndpointInputs {
                    services: pw.services.clone(),
                    destination_rules: pw.destination_rules.clone(),
                    peer_authn: pw.peer_authn.clone(),
                    mesh: pw.mesh.clone(),
                    network_gateways: pw.network_gateways.clone(),
                },
                outbound: p.outbound.lock().unwrap().clone(),
                routes: prev_routes,
                changed_hosts,
                only_vs: change.only_virtual_services,
            });
        }
        // Streams look up their own instances by address; build that index here, on the
        // config thread, not on the first async worker that asks.
        let _ = g.world.index_addresses();
        let scope = g.world.scope("", &BTreeMap::new());
        g.outbound_for((scope, false, None, None));
        g
    }

    fn outbound_for(&self, key: OutKey) -> Arc<Outbound> {
        let mut memo = self.outbound.lock().unwrap();
        let w = &*self.world;
        memo.entry(key)
            .or_insert_with_key(|key| {
                let (scope, mtls, locality, network) = key;
                let prev = self
                    .carry
                    .as_ref()
                    .and_then(|c| Some((c, c.outbound.get(key)?)));
                let listeners = listener_map(translate::listener::outbound(w, scope, *mtls));
                let dns = listener_map(vec![translate::dns::listener(w, scope)]);
                if let Some((_, o)) = prev.filter(|(c, _)| c.only_vs) {
                    return Arc::new(Outbound {
                        clusters: o.clusters.clone(),
                        endpoints: o.endpoints.clone(),
                        listeners: reuse(listeners, Some(&o.listeners)),
                        dns: reuse(dns, Some(&o.dns)),
                    });
                }
                let clusters = map(translate::cluster::outbound(w, scope, *mtls), |c| &c.name);
                Arc::new(Outbound {
                    clusters: reuse(clusters, prev.map(|(_, o)| &o.clusters)),
                    endpoints: reuse(
                        endpoint_map(
                            w,
                            scope,
                            prev.map(|(c, o)| (&c.inputs, &*o.endpoints)),
                            locality.as_ref(),
                            network.as_deref(),
                        ),
                        prev.map(|(_, o)| &o.endpoints),
                    ),
                    listeners: reuse(listeners, prev.map(|(_, o)| &o.listeners)),
                    dns: reuse(dns, prev.map(|(_, o)| &o.dns)),
                })
            })
            .clone()
    }

    /// The resources for one proxy: pointers to its classes' maps (built on first use).
    /// A stream keeps the result for as long as it serves this generation.
    /// Route configurations are inline: see `for_stream` for VHDS.
    pub fn for_proxy(&self, proxy: &Proxy) -> Arc<ProxyResources> {
        self.for_stream(proxy, false)
    }

    /// The resources for one proxy's stream; with `vhds`, route configurations in their
    /// VHDS form and their virtual hosts as a type of their own.
    pub fn for_stream(&self, proxy: &Proxy, vhds: bool) -> Arc<ProxyResources> {
        self.lookup(proxy, true, vhds).expect("built on demand")
    }

    /// The proxy's resources if every class it belongs to is built already (a few map
    /// lookups), else None: the caller builds with `for_stream`, off the async workers.
    pub fn built_for(&self, proxy: &Proxy, vhds: bool) -> Option<Arc<ProxyResources>> {
        self.lookup(proxy, false, vhds)
    }

    fn lookup(&self, proxy: &Proxy, build: bool, vhds: bool) -> Option<Arc<ProxyResources>> {
        if proxy.router {
            return self.lookup_gateway(proxy, build);
        }
        let w = &*self.world;
        let out = self.outbound_of(w.scope(&proxy.namespace, &proxy.labels), proxy, build)?;
        // Routes depend on the namespace and the route-relevant labels only; generating for a
        // class proxy built from exactly the key keeps the key the whole input.
        let labels: BTreeMap<String, String> = proxy
            .labels
            .iter()
            .filter(|(k, _)| self.route_label_keys.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let rkey: RouteKey = (proxy.namespace.clone(), labels);
        let cell = {
            let mut memo = lock_or_skip(&self.routes, build)?;
            match memo.get(&rkey) {
                Some(c) => c.clone(),
                None if !build => return None,
                None => memo.entry(rkey.clone()).or_default().clone(),
            }
        };
        let class = match cell.get() {
            Some(r) => r.clone(),
            // Another stream is building it (or nobody yet): not a lookup.
            None if !build => return None,
            None => cell
                .get_or_init(|| {
                    let (ns, labels) = rkey.clone();
                    let class = Proxy {
                        namespace: ns,
                        labels,
                        ..Default::default()
                    };
                    let prev = self
                        .carry
                        .as_ref()
                        .and_then(|c| Some((&**c.routes.get(&rkey)?, c.changed_hosts.as_ref()?)));
                    Arc::new(build_routes(w, &class, prev))
                })
                .clone(),
        };
        // Assembling a form is work too: left to a caller that may build.
        let (routes, vhosts) = if vhds {
            if class.vhds.get().is_none() && !build {
                return None;
            }
            let form = class.vhds_form();
            (form.configs.clone(), Some(form.vhosts.clone()))
        } else {
            if class.inline.get().is_none() && !build {
                return None;
            }
            (class.inline().clone(), None)
        };
        // The key is the whole input of the inbound resources (no implicit inputs).
        let key = translate::listener::inbound_key(w, proxy);
        let (in_clusters, in_listeners, in_routes) = {
            let mut memo = lock_or_skip(&self.inbound, build)?;
            if !build && !memo.contains_key(&key) {
                return None;
            }
            memo.entry(key.clone())
                .or_insert_with(|| {
                    (
                        Arc::new(map(translate::cluster::inbound_from(&key), |c| &c.name)),
                        Arc::new(listener_map(vec![translate::listener::inbound_from(&key)])),
                        Arc::new(route_map(translate::listener::inbound_routes(&key))),
                    )
                })
                .clone()
        };
        let mut by_type = HashMap::new();
        by_type.insert(CLUSTER, vec![out.clusters.clone(), in_clusters]);
        by_type.insert(ENDPOINT, vec![out.endpoints.clone()]);
        let mut listeners = vec![out.listeners.clone(), in_listeners];
        if proxy.dns {
            listeners.push(out.dns.clone());
        }
        by_type.insert(LISTENER, listeners);
        by_type.insert(ROUTE, vec![routes, in_routes]);
        if let Some(v) = vhosts {
            by_type.insert(VHOST, vec![v]);
        }
        Some(Arc::new(ProxyResources { by_type }))
    }

    /// The outbound class of a proxy seeing `scope` (built on demand when `build`).
    fn outbound_of(&self, scope: Scope, proxy: &Proxy, build: bool) -> Option<Arc<Outbound>> {
        let w = &*self.world;
        let okey = (
            scope,
            proxy.mtls,
            w.locality_class(proxy),
            w.network_class(proxy).map(str::to_string),
        );
        let built = lock_or_skip(&self.outbound, build)?.get(&okey).cloned();
        match built {
            Some(o) => Some(o),
            None if build => Some(self.outbound_for(okey)),
            None => None,
        }
    }

    /// A gateway's resources: the unscoped outbound clusters and endpoints (shared with
    /// sidecars of that class) and its own listeners and routes (inline, also on VHDS
    /// streams: the listeners name route configurations, not VHDS).
    fn lookup_gateway(&self, proxy: &Proxy, build: bool) -> Option<Arc<ProxyResources>> {
        let w = &*self.world;
        let out = self.outbound_of(translate::gateway_scope(w), proxy, build)?;
        let gkey: GatewayKey = (
            proxy.namespace.clone(),
            proxy.labels.clone(),
            proxy.ips.clone(),
            proxy.mtls,
            proxy.network.clone(),
        );
        let (listeners, routes, sni_clusters, sni_endpoints) = {
            let mut memo = lock_or_skip(&self.gateways, build)?;
            if !build && !memo.contains_key(&gkey) {
                return None;
            }
            memo.entry(gkey)
                .or_insert_with_key(|(ns, labels, ips, mtls, network)| {
                    let class = Proxy {
                        namespace: ns.clone(),
                        labels: labels.clone(),
                        ips: ips.clone(),
                        mtls: *mtls,
                        network: network.clone(),
                        router: true,
                        ..Default::default()
                    };
                    let (l, r) = translate::gateway::generate(w, &class);
                    let (c, e) = if translate::gateway::has_auto_passthrough(w, &class) {
                        translate::gateway::sni_clusters(
                            w,
                            &translate::gateway::network_of(w, &class),
                        )
                    } else {
                        Default::default()
                    };
                    (
                        Arc::new(listener_map(l)),
                        Arc::new(route_map(r)),
                        Arc::new(map(c, |c| &c.name)),
                        Arc::new(map(e, |e| &e.cluster_name)),
                    )
                })
                .clone()
        };
        let mut by_type = HashMap::new();
        by_type.insert(CLUSTER, vec![out.clusters.clone(), sni_clusters]);
        by_type.insert(ENDPOINT, vec![out.endpoints.clone(), sni_endpoints]);
        by_type.insert(LISTENER, vec![listeners]);
        by_type.insert(ROUTE, vec![routes]);
        Some(Arc::new(ProxyResources { by_type }))
    }

    /// The consistency check on what this generation serves `proxy`, for a World whose
    /// clusters and endpoints are those of a checked one (only VirtualServices changed):
    /// every cluster a route or listener names exists, every route configuration a
    /// listener names exists. Reads the encodings (no second translation).
    pub fn check_references(&self, proxy: &Proxy) -> Result<(), Vec<String>> {
        use envoy_types::pb::envoy::config::listener::v3::Listener;
        let res = self.for_proxy(proxy);
        let names = |t: &str| -> BTreeSet<&str> {
            res.layers(t)
                .iter()
                .flat_map(|m| m.keys().map(String::as_str))
                .collect()
        };
        let (clusters, routes) = (names(CLUSTER), names(ROUTE));
        let mut errs = Vec::new();
        for r in res
            .layers(ROUTE)
            .iter()
            .chain(res.layers(LISTENER))
            .flat_map(|m| m.values())
        {
            for c in &r.refs {
                if !clusters.contains(c.as_str()) {
                    errs.push(format!("cluster {c} is referenced but not generated"));
                }
            }
        }
        let listeners: Vec<Listener> = res
            .layers(LISTENER)
            .iter()
            .flat_map(|m| m.values())
            .map(|r| Listener::decode(r.value.as_ref()).expect("own encoding"))
            .collect();
        for r in translate::listener::referenced_routes(&listeners) {
            if !routes.contains(r.as_str()) {
                errs.push(format!("route {r} is referenced but not generated"));
            }
        }
        errs.sort();
        errs.dedup();
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    fn layer_diff(&self, old: &Arc<TypeMap>, new: &Arc<TypeMap>) -> Arc<LayerDiff> {
        let key = (ptr(old), ptr(new));
        if let Some(d) = self.diffs.lock().unwrap().get(&key) {
            return d.clone();
        }
        let changed = new
            .values()
            .filter(|r| {
                old.get(&r.name)
                    .is_none_or(|o| !Arc::ptr_eq(o, r) && o.version != r.version)
            })
            .cloned()
            .collect();
        let removed = old
            .keys()
            .filter(|n| !new.contains_key(*n))
            .cloned()
            .collect();
        let d = Arc::new(LayerDiff {
            changed,
            removed,
            _old: old.clone(),
        });
        self.diffs.lock().unwrap().insert(key, d.clone());
        d
    }

    /// Names the `holders` (routes and listeners a proxy holds) refer to that none of
    /// `layers` (the clusters it is to get) has. Worked out per holder map and shared by
    /// every proxy holding that map: proxies of one route class differ in their inbound
    /// listener, so a whole-view memo would be per proxy. (A holder's name filter is not
    /// applied: keeping a cluster an unsubscribed route names is the safe side.)
    pub fn missing_refs(&self, holders: &[&View], layers: &[Arc<TypeMap>]) -> Arc<Vec<String>> {
        let mut parts: Vec<Arc<Vec<String>>> = holders
            .iter()
            .flat_map(|h| h.layers.iter())
            .map(|l| self.layer_missing(l, layers))
            .filter(|m| !m.is_empty())
            .collect();
        let extra: Vec<String> = holders
            .iter()
            .flat_map(|h| h.extra.iter())
            .flat_map(|r| r.refs.iter())
            .filter(|n| !layers.iter().any(|l| l.contains_key(*n)))
            .cloned()
            .collect();
        if extra.is_empty() && parts.len() <= 1 {
            return parts.pop().unwrap_or_default();
        }
        let mut all: Vec<String> = parts.iter().flat_map(|p| p.iter().cloned()).collect();
        all.extend(extra);
        all.sort();
        all.dedup();
        Arc::new(all)
    }

    fn layer_missing(&self, holder: &Arc<TypeMap>, layers: &[Arc<TypeMap>]) -> Arc<Vec<String>> {
        let mut key = vec![ptr(holder)];
        key.extend(layers.iter().map(ptr));
        if let Some((m, _)) = self.missing.lock().unwrap().get(&key) {
            return m.clone();
        }
        let mut m: Vec<String> = holder
            .values()
            .flat_map(|r| r.refs.iter())
            .filter(|n| !layers.iter().any(|l| l.contains_key(*n)))
            .cloned()
            .collect();
        m.sort();
        m.dedup();
        let m = Arc::new(m);
        // The entry keeps the maps alive, so their addresses keep naming them.
        let keep = std::iter::once(holder.clone())
            .chain(layers.iter().cloned())
            .collect();
        self.missing.lock().unwrap().insert(key, (m.clone(), keep));
        m
    }
}

/// The memo behind `m`; without `build`, one another thread holds (building a class) is a
/// miss, not a wait: an async worker must not block on it.
fn lock_or_skip<T>(m: &Mutex<T>, build: bool) -> Option<std::sync::MutexGuard<'_, T>> {
    if build {
        return Some(m.lock().unwrap());
    }
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(e)) => panic!("{e}"),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// `new`, with each resource whose bytes `old` already has replaced by old's pointer; `old`
/// itself when nothing differs (so views and diffs see an unchanged layer by pointer).
fn reuse(mut new: TypeMap, old: Option<&Arc<TypeMap>>) -> Arc<TypeMap> {
    let Some(old) = old else {
        return Arc::new(new);
    };
    let mut same = new.len() == old.len();
    for (name, r) in new.iter_mut() {
        match old.get(name) {
            Some(o) if o.version == r.version => *r = o.clone(),
            _ => same = false,
        }
    }
    if same {
        old.clone()
    } else {
        Arc::new(new)
    }
}

/// The endpoints of `scope`, translating only services whose inputs changed since `prev`
/// (the previous World and its endpoints map for the same class): the others' assignments
/// are taken as they were.
fn endpoint_map(
    w: &World,
    scope: &Scope,
    prev: Option<(&EndpointInputs, &TypeMap)>,
    locality: Option<&Origin>,
    network: Option<&str>,
) -> TypeMap {
    // Assignments read the service, its DestinationRule and the mTLS settings.
    let prev = prev.filter(|(pw, _)| {
        pw.peer_authn == w.peer_authn
            && pw.mesh == w.mesh
            && pw.network_gateways == w.network_gateways
    });
    let mut out = TypeMap::new();
    for svc in translate::endpoint::services(w, scope) {
        let dr = w.destination_rules.get(&svc.hostname);
        if let Some((pw, pm)) = prev {
            if pw.services.get(&svc.hostname).is_some_and(|p| **p == *svc)
                && pw.destination_rules.get(&svc.hostname) == dr
            {
                let names = translate::endpoint::names(svc, dr.map(|d| &**d));
                let old: Vec<&Res> = names.iter().filter_map(|n| pm.get(n)).collect();
                if old.len() == names.len() {
                    out.extend(old.into_iter().map(|r| (r.name.clone(), r.clone())));
                    continue;
                }
            }
        }
        for cla in translate::endpoint::for_service(w, svc, locality, network) {
            let r = encode(&cla.cluster_name, &cla);
            out.insert(cla.cluster_name, r);
        }
    }
    out
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

fn route_map(items: Vec<RouteConfiguration>) -> TypeMap {
    use prost::Name;
    items
        .iter()
        .map(|r| {
            let refs = translate::route::referenced_clusters(std::slice::from_ref(r));
            // Per-route filter configs are a map: encoded sorted, so equal is equal.
            let bytes = translate::canon::route_configuration(r);
            (
                r.name.clone(),
                encoded(&r.name, RouteConfiguration::type_url(), bytes, refs),
            )
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

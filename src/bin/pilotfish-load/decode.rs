//! Decoding received resources into envoy-types messages and extracting what an Envoy
//! would act on: a cluster's EDS name, the RDS names a listener's HTTP connection managers
//! ask for, whether a route configuration names VHDS, and the markers (route header values
//! in a route configuration's or a VHDS virtual host's routes, churned endpoint addresses)
//! that show which config version a resource belongs to.
//!
//! The types, by index: CDS, EDS, LDS, RDS and VHDS (`VirtualHost` resources, delta only).
//!
//! `--decode cached` decodes each distinct resource content once per process and reuses the
//! result for identical bytes (keyed by type, length and a 128-bit content hash): the tool
//! plays thousands of proxies on the same 2 cores as the control plane, and re-decoding
//! identical bytes thousands of times would measure the tool, not the control plane.
//! `--decode full` decodes every resource of every response.

use crate::config::{churn_of, parse_marker, MARKER_HEADER};
use crate::track::Slot;
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::address;
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::{filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use prost::{Message, Name};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

pub const CDS: usize = 0;
pub const EDS: usize = 1;
pub const LDS: usize = 2;
pub const RDS: usize = 3;
/// Virtual hosts of route configurations that name VHDS (delta ADS only).
pub const VHDS: usize = 4;
/// Number of types.
pub const NTYPES: usize = 5;
/// Short names, as `/debug/syncz` shows them.
pub const SHORT: [&str; NTYPES] = ["cds", "eds", "lds", "rds", "vhds"];

pub fn type_url(t: usize) -> &'static str {
    static URLS: std::sync::OnceLock<[String; NTYPES]> = std::sync::OnceLock::new();
    &URLS.get_or_init(|| {
        [
            Cluster::type_url(),
            ClusterLoadAssignment::type_url(),
            Listener::type_url(),
            RouteConfiguration::type_url(),
            VirtualHost::type_url(),
        ]
    })[t]
}

pub fn type_index(url: &str) -> Option<usize> {
    (0..NTYPES).find(|t| type_url(*t) == url)
}

/// What the tool keeps of one resource.
#[derive(Debug, Default)]
pub struct Extracted {
    pub name: String,
    /// Clusters: the EDS service name when the cluster is EDS.
    pub eds: Option<String>,
    /// Listeners: route config names requested over RDS.
    pub rds: Vec<String>,
    /// Route configurations: their virtual hosts come over VHDS.
    pub vhds: bool,
    /// Markers: (slot, seq) seen in this resource.
    pub obs: Vec<(Slot, u32)>,
}

fn hcm_rds(chains: &[&FilterChain], out: &mut Vec<String>) -> Result<(), String> {
    for fc in chains {
        for f in &fc.filters {
            if let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type {
                if any.type_url == HttpConnectionManager::type_url() {
                    let h = HttpConnectionManager::decode(any.value.as_slice())
                        .map_err(|e| format!("listener filter {}: {e}", f.name))?;
                    if let Some(RouteSpecifier::Rds(r)) = &h.route_specifier {
                        out.push(r.route_config_name.clone());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Decodes one resource of type `t`.
pub fn extract(t: usize, any_type: &str, bytes: &[u8]) -> Result<Extracted, String> {
    if any_type != type_url(t) {
        return Err(format!(
            "resource of type {any_type} in a {} response",
            SHORT[t]
        ));
    }
    let mut x = Extracted::default();
    match t {
        CDS => {
            let c = Cluster::decode(bytes).map_err(|e| format!("cluster: {e}"))?;
            let eds = matches!(c.cluster_discovery_type,
                Some(cluster::ClusterDiscoveryType::Type(d)) if d == cluster::DiscoveryType::Eds as i32);
            if eds {
                let svc = c
                    .eds_cluster_config
                    .as_ref()
                    .map(|e| e.service_name.clone())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| c.name.clone());
                x.eds = Some(svc);
            }
            x.name = c.name;
        }
        EDS => {
            let c = ClusterLoadAssignment::decode(bytes)
                .map_err(|e| format!("cluster load assignment: {e}"))?;
            for le in c.endpoints.iter().flat_map(|l| l.lb_endpoints.iter()) {
                if let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &le.host_identifier {
                    if let Some(address::Address::SocketAddress(sa)) =
                        ep.address.as_ref().and_then(|a| a.address.as_ref())
                    {
                        if let Some((k, seq)) = churn_of(&sa.address) {
                            x.obs.push((Slot::Ep(k), seq));
                        }
                    }
                }
            }
            x.name = c.cluster_name;
        }
        LDS => {
            let l = Listener::decode(bytes).map_err(|e| format!("listener: {e}"))?;
            let mut chains: Vec<&FilterChain> = l.filter_chains.iter().collect();
            if let Some(d) = &l.default_filter_chain {
                chains.push(d);
            }
            hcm_rds(&chains, &mut x.rds).map_err(|e| format!("listener {}: {e}", l.name))?;
            x.rds.sort();
            x.rds.dedup();
            x.name = l.name;
        }
        RDS => {
            let r = RouteConfiguration::decode(bytes)
                .map_err(|e| format!("route configuration: {e}"))?;
            x.obs = route_markers(&r.virtual_hosts);
            x.vhds = r.vhds.is_some();
            x.name = r.name;
        }
        _ => {
            let v = VirtualHost::decode(bytes).map_err(|e| format!("virtual host: {e}"))?;
            x.obs = route_markers(std::slice::from_ref(&v));
            x.name = v.name;
        }
    }
    Ok(x)
}

/// Markers of virtual hosts' routes: the lowest seq per service.
fn route_markers(vhosts: &[VirtualHost]) -> Vec<(Slot, u32)> {
    let mut min: HashMap<u32, u32> = HashMap::new();
    for route in vhosts.iter().flat_map(|v| v.routes.iter()) {
        for h in route
            .response_headers_to_add
            .iter()
            .filter_map(|h| h.header.as_ref())
        {
            if h.key == MARKER_HEADER {
                if let Some((k, seq)) = parse_marker(&h.value) {
                    let e = min.entry(k).or_insert(seq);
                    *e = (*e).min(seq);
                }
            }
        }
    }
    min.into_iter().map(|(k, s)| (Slot::Route(k), s)).collect()
}

/// 128-bit content hash (two multiply-rotate lanes); a difference in one 8-byte word always
/// changes the result, since every step is a bijection of the state.
pub fn hash128(b: &[u8]) -> (u64, u64) {
    const K1: u64 = 0x9E37_79B9_7F4A_7C15;
    const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    let mut h1: u64 = 0x243F_6A88_85A3_08D3 ^ b.len() as u64;
    let mut h2: u64 = 0x1319_8A2E_0370_7344;
    let mut chunks = b.chunks_exact(16);
    for c in &mut chunks {
        let a = u64::from_le_bytes(c[..8].try_into().unwrap());
        let d = u64::from_le_bytes(c[8..].try_into().unwrap());
        h1 = (h1 ^ a).wrapping_mul(K1).rotate_left(31);
        h2 = (h2 ^ d).wrapping_mul(K2).rotate_left(27);
    }
    let mut tail = [0u8; 16];
    let r = chunks.remainder();
    tail[..r.len()].copy_from_slice(r);
    let a = u64::from_le_bytes(tail[..8].try_into().unwrap());
    let d = u64::from_le_bytes(tail[8..].try_into().unwrap());
    h1 = (h1 ^ a).wrapping_mul(K1).rotate_left(31);
    h2 = (h2 ^ d).wrapping_mul(K2).rotate_left(27);
    let f = |mut x: u64| {
        x ^= x >> 33;
        x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        x ^= x >> 33;
        x
    };
    (f(h1 ^ h2.rotate_left(17)), f(h2 ^ h1.rotate_left(41)))
}

type Key = (usize, usize, u64, u64);
const SHARDS: usize = 16;

/// One response, decoded: its resources and what the proxy acts on.
#[derive(Debug, Default)]
pub struct Decoded {
    pub items: Vec<Arc<Extracted>>,
    /// Markers, the lowest seq per slot.
    pub obs: Vec<(Slot, u32)>,
    /// CDS: EDS names of the clusters; LDS: RDS names of the listeners.
    pub eds: Arc<BTreeSet<String>>,
    pub rds: Arc<BTreeSet<String>>,
    /// RDS: some route configuration names VHDS.
    pub vhds: bool,
}

impl Decoded {
    fn of(t: usize, items: Vec<Arc<Extracted>>) -> Result<Decoded, String> {
        let mut names = HashSet::with_capacity(items.len());
        for x in &items {
            if !names.insert(x.name.as_str()) {
                return Err(format!("duplicate {} resource {}", SHORT[t], x.name));
            }
        }
        let mut min: HashMap<Slot, u32> = HashMap::new();
        for (s, q) in items.iter().flat_map(|x| x.obs.iter()) {
            let e = min.entry(*s).or_insert(*q);
            *e = (*e).min(*q);
        }
        Ok(Decoded {
            obs: min.into_iter().collect(),
            eds: Arc::new(items.iter().filter_map(|x| x.eds.clone()).collect()),
            rds: Arc::new(items.iter().flat_map(|x| x.rds.iter().cloned()).collect()),
            vhds: items.iter().any(|x| x.vhds),
            items,
        })
    }
}

/// Results by content, shared by every simulated proxy: per resource and per response
/// (proxies of one class get byte-identical responses; one lookup serves all of them).
pub struct Cache {
    shards: Vec<Mutex<HashMap<Key, Arc<Extracted>>>>,
    responses: Vec<Mutex<HashMap<Key, Arc<Decoded>>>>,
    pub full: bool,
}

impl Cache {
    pub fn new(full: bool) -> Cache {
        Cache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            responses: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            full,
        }
    }

    /// Decodes a response's resources (`None`: a resource without a body); the first
    /// failure is the NACK message.
    pub fn response<'a>(
        &self,
        t: usize,
        items: impl Iterator<Item = Option<(&'a str, &'a [u8])>>,
    ) -> Result<Arc<Decoded>, String> {
        let items: Vec<(&str, &[u8])> = items
            .map(|i| i.ok_or_else(|| "resource without a body".to_string()))
            .collect::<Result<_, _>>()?;
        if self.full {
            let xs = items
                .iter()
                .map(|(ty, b)| extract(t, ty, b).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()?;
            return Decoded::of(t, xs).map(Arc::new);
        }
        let hashes: Vec<(u64, u64)> = items.iter().map(|(_, b)| hash128(b)).collect();
        let mut key = (t, items.len(), 0x5bd1_e995_u64, 0x27d4_eb2f_u64);
        for ((ty, b), (h1, h2)) in items.iter().zip(&hashes) {
            let tyh = if *ty == type_url(t) {
                0
            } else {
                hash128(ty.as_bytes()).0
            };
            key.2 = (key.2 ^ h1 ^ tyh)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(23)
                ^ b.len() as u64;
            key.3 = (key.3 ^ h2)
                .wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
                .rotate_left(29);
        }
        let shard = &self.responses[(key.2 as usize) % SHARDS];
        if let Some(d) = shard.lock().unwrap().get(&key) {
            return Ok(d.clone());
        }
        let xs = items
            .iter()
            .zip(&hashes)
            .map(|((ty, b), h)| self.get_hashed(t, ty, b, *h))
            .collect::<Result<Vec<_>, _>>()?;
        let d = Arc::new(Decoded::of(t, xs)?);
        let mut g = shard.lock().unwrap();
        // Small: with incremental EDS/RDS, proxies a generation apart get different
        // responses, and a large cache of them cost the tool gigabytes under churn.
        if g.len() > 256 {
            g.clear();
        }
        g.insert(key, d.clone());
        Ok(d)
    }

    fn get_hashed(
        &self,
        t: usize,
        any_type: &str,
        bytes: &[u8],
        (h1, h2): (u64, u64),
    ) -> Result<Arc<Extracted>, String> {
        if any_type != type_url(t) {
            return extract(t, any_type, bytes).map(Arc::new);
        }
        let key = (t, bytes.len(), h1, h2);
        let shard = &self.shards[(h1 as usize) % SHARDS];
        if let Some(x) = shard.lock().unwrap().get(&key) {
            return Ok(x.clone());
        }
        let x = Arc::new(extract(t, any_type, bytes)?);
        let mut g = shard.lock().unwrap();
        if g.len() > 200_000 {
            g.clear();
        }
        g.insert(key, x.clone());
        Ok(x)
    }
}

//! What a delta proxy holds of one type (resource name → version, and what the proxy acts
//! on: a cluster's EDS name, a listener's RDS names), shared between proxies holding the
//! same thing.
//!
//! Each proxy of a class holds the same ~12,000 names and versions at 1,000 services; kept
//! per proxy as maps of strings, that was megabytes per simulated proxy. A [`Held`] is
//! immutable once built and interned by its content: an order-independent 128-bit hash of
//! its entries (the wrapping sum of each entry's hash), updated entry by entry as a
//! response is applied. A proxy applying a response computes the new content's hash from
//! its old one and takes the `Held` another proxy already built for it, or builds it
//! (in place when nobody else holds the old one). What is derived from a `Held` (the EDS or
//! RDS names to subscribe to, the encoded `initial_resource_versions`) is built once per
//! `Held` too.

use crate::decode::{hash128, Extracted};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};

/// One held resource.
pub struct Entry {
    pub version: Arc<str>,
    pub x: Arc<Extracted>,
    h: (u64, u64),
}

#[derive(Default)]
pub struct Held {
    map: HashMap<Arc<str>, Entry>,
    sum: (u64, u64),
    /// Clusters: their EDS names; listeners: their RDS names.
    links: OnceLock<Arc<BTreeSet<String>>>,
    /// `initial_resource_versions` (field 5 of a `DeltaDiscoveryRequest`), encoded.
    irv: OnceLock<bytes::Bytes>,
}

type Key = (usize, u64, u64, usize);

struct Interned {
    map: HashMap<Key, Weak<Held>>,
    sweep_at: usize,
}

static INTERNED: LazyLock<Mutex<Interned>> = LazyLock::new(|| {
    Mutex::new(Interned {
        map: HashMap::new(),
        sweep_at: 1024,
    })
});

fn add(a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
    (a.0.wrapping_add(b.0), a.1.wrapping_add(b.1))
}

fn sub(a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
    (a.0.wrapping_sub(b.0), a.1.wrapping_sub(b.1))
}

/// An entry's hash: its name, version and what the proxy acts on.
fn entry_hash(scratch: &mut Vec<u8>, name: &str, version: &str, x: &Extracted) -> (u64, u64) {
    scratch.clear();
    for s in [name, version] {
        scratch.extend_from_slice(&(s.len() as u32).to_le_bytes());
        scratch.extend_from_slice(s.as_bytes());
    }
    match &x.eds {
        Some(e) => {
            scratch.push(1);
            scratch.extend_from_slice(&(e.len() as u32).to_le_bytes());
            scratch.extend_from_slice(e.as_bytes());
        }
        None => scratch.push(0),
    }
    scratch.push(x.vhds as u8);
    for r in &x.rds {
        scratch.extend_from_slice(&(r.len() as u32).to_le_bytes());
        scratch.extend_from_slice(r.as_bytes());
    }
    hash128(scratch)
}

impl Held {
    #[cfg(test)]
    pub fn empty() -> Arc<Held> {
        Arc::new(Held::default())
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.map.iter().map(|(k, v)| (&**k, v))
    }

    /// Clusters: the EDS names of the EDS clusters; listeners: the route configuration
    /// names their HTTP connection managers ask for over RDS.
    pub fn links(&self) -> Arc<BTreeSet<String>> {
        self.links
            .get_or_init(|| {
                Arc::new(
                    self.map
                        .values()
                        .flat_map(|e| e.x.eds.iter().chain(e.x.rds.iter()))
                        .cloned()
                        .collect(),
                )
            })
            .clone()
    }

    /// `initial_resource_versions` of a reconnect, encoded once per `Held`: map field 5,
    /// each entry a message of key (1) and value (2).
    pub fn irv_wire(&self) -> bytes::Bytes {
        self.irv
            .get_or_init(|| {
                use prost::encoding::{encode_varint, encoded_len_varint};
                let mut b = Vec::new();
                let mut names: Vec<(&str, &str)> =
                    self.iter().map(|(n, e)| (n, &*e.version)).collect();
                names.sort_unstable();
                for (n, v) in names {
                    let inner = 1
                        + encoded_len_varint(n.len() as u64)
                        + n.len()
                        + 1
                        + encoded_len_varint(v.len() as u64)
                        + v.len();
                    b.push(5 << 3 | 2);
                    encode_varint(inner as u64, &mut b);
                    b.push(1 << 3 | 2);
                    encode_varint(n.len() as u64, &mut b);
                    b.extend_from_slice(n.as_bytes());
                    b.push(2 << 3 | 2);
                    encode_varint(v.len() as u64, &mut b);
                    b.extend_from_slice(v.as_bytes());
                }
                bytes::Bytes::from(b)
            })
            .clone()
    }
}

/// Applies a response to what a proxy holds of type `t`: `upserts` (name, version, what
/// it decoded to) in order, then `removes`. Shares the result with every proxy holding the
/// same content.
pub fn apply(
    t: usize,
    held: &mut Arc<Held>,
    upserts: &[(&str, &str, &Arc<Extracted>)],
    removes: &[&str],
) {
    if upserts.is_empty() && removes.is_empty() {
        return;
    }
    // The new content's hash and size, from the old ones and the entries touched.
    let mut scratch = Vec::new();
    let mut touched: HashMap<&str, Option<(u64, u64)>> =
        HashMap::with_capacity(upserts.len() + removes.len());
    let (mut sum, mut len) = (held.sum, held.map.len());
    let mut hashes = Vec::with_capacity(upserts.len());
    for (n, v, x) in upserts {
        let h = entry_hash(&mut scratch, n, v, x);
        hashes.push(h);
        let cur = match touched.get(n) {
            Some(c) => *c,
            None => held.map.get(*n).map(|e| e.h),
        };
        match cur {
            Some(old) => sum = sub(sum, old),
            None => len += 1,
        }
        sum = add(sum, h);
        touched.insert(n, Some(h));
    }
    for n in removes {
        let cur = match touched.get(n) {
            Some(c) => *c,
            None => held.map.get(*n).map(|e| e.h),
        };
        if let Some(old) = cur {
            sum = sub(sum, old);
            len -= 1;
            touched.insert(n, None);
        }
    }
    drop(touched);
    if sum == held.sum && len == held.map.len() {
        return;
    }
    let key = (t, sum.0, sum.1, len);
    let old_key = (t, held.sum.0, held.sum.1, held.map.len());
    {
        let mut g = INTERNED.lock().unwrap();
        if let Some(h) = g.map.get(&key).and_then(Weak::upgrade) {
            *held = h;
            return;
        }
        // Nobody else holds the old content: it is updated in place (and forgotten).
        if Arc::strong_count(held) == 1
            && g.map
                .get(&old_key)
                .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(held)))
        {
            g.map.remove(&old_key);
        }
    }
    if let Some(h) = Arc::get_mut(held) {
        h.links = OnceLock::new();
        h.irv = OnceLock::new();
        update(h, upserts, &hashes, removes, sum);
    } else {
        let mut fresh = Held {
            map: held
                .map
                .iter()
                .map(|(k, e)| {
                    let e = Entry {
                        version: e.version.clone(),
                        x: e.x.clone(),
                        h: e.h,
                    };
                    (k.clone(), e)
                })
                .collect(),
            ..Default::default()
        };
        update(&mut fresh, upserts, &hashes, removes, sum);
        *held = Arc::new(fresh);
    }
    debug_assert_eq!(held.map.len(), len);
    let mut g = INTERNED.lock().unwrap();
    // Built meanwhile by another proxy: share that one.
    if let Some(other) = g.map.get(&key).and_then(Weak::upgrade) {
        *held = other;
        return;
    }
    if g.map.len() >= g.sweep_at {
        g.map.retain(|_, w| w.strong_count() > 0);
        g.sweep_at = (g.map.len() * 2).max(1024);
    }
    g.map.insert(key, Arc::downgrade(held));
}

fn update(
    h: &mut Held,
    upserts: &[(&str, &str, &Arc<Extracted>)],
    hashes: &[(u64, u64)],
    removes: &[&str],
    sum: (u64, u64),
) {
    for ((n, v, x), eh) in upserts.iter().zip(hashes) {
        let e = Entry {
            version: Arc::from(*v),
            x: (*x).clone(),
            h: *eh,
        };
        match h.map.get_mut(*n) {
            Some(old) => *old = e,
            None => {
                h.map.insert(Arc::from(*n), e);
            }
        }
    }
    for n in removes {
        h.map.remove(*n);
    }
    h.sum = sum;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(eds: Option<&str>) -> Arc<Extracted> {
        Arc::new(Extracted {
            eds: eds.map(str::to_string),
            ..Default::default()
        })
    }

    #[test]
    fn same_content_is_shared_whatever_the_path() {
        let (a, b) = (x(Some("ea")), x(None));
        let mut p = Held::empty();
        let mut q = Held::empty();
        apply(90, &mut p, &[("a", "1", &a), ("b", "1", &b)], &[]);
        apply(90, &mut q, &[("b", "1", &b)], &[]);
        apply(90, &mut q, &[("a", "1", &a)], &[]);
        assert!(Arc::ptr_eq(&p, &q));
        assert_eq!(p.links().iter().collect::<Vec<_>>(), ["ea"]);
        // An update leaves the other holder's content alone.
        apply(90, &mut q, &[("a", "2", &a)], &["b"]);
        assert_eq!(q.len(), 1);
        assert_eq!(p.len(), 2);
        assert_eq!(&*p.map["a"].version, "1");
        assert_eq!(&*q.map["a"].version, "2");
        // Back to what p holds: p's again.
        apply(90, &mut q, &[("a", "1", &a), ("b", "1", &b)], &[]);
        assert!(Arc::ptr_eq(&p, &q));
    }

    #[test]
    fn sole_holder_updates_in_place() {
        let a = x(None);
        let mut p = Held::empty();
        apply(91, &mut p, &[("a", "1", &a)], &[]);
        let before = Arc::as_ptr(&p);
        apply(91, &mut p, &[("a", "2", &a), ("b", "1", &a)], &[]);
        assert_eq!(Arc::as_ptr(&p), before);
        assert_eq!(p.len(), 2);
        apply(91, &mut p, &[], &["a", "b", "c"]);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn initial_resource_versions_decode() {
        use prost::Message;
        let a = x(None);
        let mut p = Held::empty();
        apply(92, &mut p, &[("a", "1", &a), ("bb", "22", &a)], &[]);
        let req = envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest::decode(
            p.irv_wire(),
        )
        .unwrap();
        assert_eq!(req.initial_resource_versions.len(), 2);
        assert_eq!(req.initial_resource_versions["bb"], "22");
    }
}

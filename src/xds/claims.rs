//! Delta requests as the server reads them: `initial_resource_versions` (what a reconnecting
//! proxy says it holds: ~14,000 name → version pairs per stream in a 1,000-service mesh)
//! stay in the received bytes instead of becoming a map of owned strings. Usually every
//! claim is current; an order-independent fingerprint of the pairs, compared with the same
//! fingerprint of what the proxy should have, shows that without a lookup per claim. Only a
//! reconnect with something stale or gone builds a map (of slices).
//!
//! ```text
//!  request bytes ──► other fields: prost ──► DeltaDiscoveryRequest (no field 5)
//!               └──► field 5 entries: offsets ──► Claims { fingerprint, get(), names() }
//! ```

use super::cache::Names as NameSet;
use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use prost::encoding::{decode_key, decode_varint, WireType};
use prost::Message;
use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::{Arc, OnceLock};

/// `DeltaDiscoveryRequest.initial_resource_versions`.
const CLAIMS_TAG: u32 = 5;

/// A delta request: the message without its claims, and the claims.
#[derive(Debug, Default)]
pub struct DeltaRequest {
    pub msg: DeltaDiscoveryRequest,
    pub claims: Claims,
}

/// The name → version pairs a request claims, as ranges of the received bytes.
#[derive(Debug, Default)]
pub struct Claims {
    buf: Bytes,
    /// (name start, name end, version start, version end), in wire order.
    entries: Vec<[u32; 4]>,
    /// Name → version, built on first lookup (a later duplicate wins, as in a proto map).
    map: OnceLock<HashMap<Bytes, Bytes>>,
}

impl Claims {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn slice(&self, a: u32, b: u32) -> Bytes {
        self.buf.slice(a as usize..b as usize)
    }

    fn map(&self) -> &HashMap<Bytes, Bytes> {
        self.map.get_or_init(|| {
            self.entries
                .iter()
                .map(|e| (self.slice(e[0], e[1]), self.slice(e[2], e[3])))
                .collect()
        })
    }

    /// How many distinct names are claimed.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// The version claimed for `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.map().get(name.as_bytes()).map(|v| v.as_ref())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map().contains_key(name.as_bytes())
    }

    /// Every claimed name (lossy for names that are not UTF-8: they match nothing anyway).
    pub fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.map()
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    }

    /// Forget a name (the client unsubscribed from it).
    pub fn remove(&mut self, name: &str) {
        self.map();
        if let Some(m) = self.map.get_mut() {
            m.remove(name.as_bytes());
        }
    }

    /// Order-independent fingerprint of the (name, version) pairs, and their count. Equal to
    /// `Fingerprint::of` the same pairs in any order. Duplicated names (never sent by Envoy)
    /// make it differ, so the caller falls back to lookups.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut f = Fingerprint::default();
        for e in &self.entries {
            let b = &self.buf;
            f.add(
                &b[e[0] as usize..e[1] as usize],
                &b[e[2] as usize..e[3] as usize],
            );
        }
        f
    }

    /// Whether exactly `names` are claimed (each once), by fingerprint.
    pub fn same_names(&self, names: &std::collections::BTreeSet<String>) -> bool {
        if self.entries.len() != names.len() {
            return false;
        }
        let mut a = Fingerprint::default();
        for e in &self.entries {
            a.add(&self.buf[e[0] as usize..e[1] as usize], b"");
        }
        let mut b = Fingerprint::default();
        for n in names {
            b.add(n.as_bytes(), b"");
        }
        a == b
    }
}

/// Order-independent fingerprint of a set of (name, version) pairs: two sums of 64-bit
/// hashes (differently keyed) and the count.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    sum: u64,
    sum2: u64,
    count: usize,
}

impl Fingerprint {
    pub fn add(&mut self, name: &[u8], version: &[u8]) {
        let hash = |salt: u8| {
            let mut h = std::hash::DefaultHasher::new();
            h.write_u8(salt);
            h.write(name);
            h.write_u8(0xff);
            h.write(version);
            h.finish()
        };
        self.sum = self.sum.wrapping_add(hash(1));
        self.sum2 = self.sum2.wrapping_add(hash(2));
        self.count += 1;
    }

    pub fn of<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Fingerprint {
        let mut f = Fingerprint::default();
        for (n, v) in pairs {
            f.add(n.as_bytes(), v.as_bytes());
        }
        f
    }
}

impl super::wire::Decode for DeltaRequest {
    fn decode_from(b: Bytes, _: &[Arc<NameSet>]) -> Result<Self, String> {
        decode(b)
    }
}

fn err(what: &str) -> String {
    format!("DeltaDiscoveryRequest: {what}")
}

/// Splits the claims out of a delta request: every other field is handed to prost as it
/// was received (in order); each claim entry is read in place.
fn decode(b: Bytes) -> Result<DeltaRequest, String> {
    let mut rest: Vec<u8> = Vec::new();
    let mut entries = Vec::new();
    let mut cur: &[u8] = &b;
    while !cur.is_empty() {
        let start = b.len() - cur.len();
        let (tag, wt) = decode_key(&mut cur).map_err(|e| e.to_string())?;
        if tag == CLAIMS_TAG && wt == WireType::LengthDelimited {
            let len = decode_varint(&mut cur).map_err(|e| e.to_string())? as usize;
            if len > cur.len() {
                return Err(err("claim entry past the end"));
            }
            let at = b.len() - cur.len();
            entries.push(entry(&b[at..at + len], at)?);
            cur = &cur[len..];
        } else {
            skip(wt, &mut cur)?;
            let end = b.len() - cur.len();
            rest.extend_from_slice(&b[start..end]);
        }
    }
    let msg = DeltaDiscoveryRequest::decode(rest.as_slice()).map_err(|e| e.to_string())?;
    Ok(DeltaRequest {
        msg,
        claims: Claims {
            buf: b,
            entries,
            map: OnceLock::new(),
        },
    })
}

/// One map entry (key = 1, value = 2, both strings), as offsets from the message start.
fn entry(e: &[u8], base: usize) -> Result<[u32; 4], String> {
    let mut cur = e;
    let (mut key, mut val) = ((base, base), (base, base));
    while !cur.is_empty() {
        let (tag, wt) = decode_key(&mut cur).map_err(|e| e.to_string())?;
        if wt != WireType::LengthDelimited {
            skip(wt, &mut cur)?;
            continue;
        }
        let len = decode_varint(&mut cur).map_err(|e| e.to_string())? as usize;
        if len > cur.len() {
            return Err(err("claim field past the end"));
        }
        let at = base + (e.len() - cur.len());
        let bytes = &cur[..len];
        if std::str::from_utf8(bytes).is_err() {
            return Err(err("claim is not UTF-8"));
        }
        match tag {
            1 => key = (at, at + len),
            2 => val = (at, at + len),
            _ => {}
        }
        cur = &cur[len..];
    }
    let u = |x: usize| u32::try_from(x).map_err(|_| err("message too large"));
    Ok([u(key.0)?, u(key.1)?, u(val.0)?, u(val.1)?])
}

/// Moves past one field's value.
fn skip(wt: WireType, cur: &mut &[u8]) -> Result<(), String> {
    let n = match wt {
        WireType::Varint => {
            decode_varint(cur).map_err(|e| e.to_string())?;
            0
        }
        WireType::SixtyFourBit => 8,
        WireType::ThirtyTwoBit => 4,
        WireType::LengthDelimited => decode_varint(cur).map_err(|e| e.to_string())? as usize,
        WireType::StartGroup | WireType::EndGroup => return Err(err("groups are not used by xDS")),
    };
    if n > cur.len() {
        return Err(err("field past the end"));
    }
    *cur = &cur[n..];
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(claims: &[(&str, &str)]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: "t".into(),
            resource_names_subscribe: vec!["a".into(), "b".into()],
            response_nonce: "n".into(),
            initial_resource_versions: claims
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn claims_are_split_out_and_fingerprinted_in_any_order() {
        let m = req(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let d = decode(m.encode_to_vec().into()).unwrap();
        let mut without = m.clone();
        without.initial_resource_versions.clear();
        assert_eq!(d.msg, without, "every other field as prost decodes it");
        assert_eq!(d.claims.len(), 3);
        assert_eq!(d.claims.get("b"), Some(&b"2"[..]));
        assert!(!d.claims.contains("z"));
        let ours = Fingerprint::of([("c", "3"), ("a", "1"), ("b", "2")].into_iter());
        assert_eq!(d.claims.fingerprint(), ours);
        let stale = Fingerprint::of([("c", "3"), ("a", "1"), ("b", "9")].into_iter());
        assert_ne!(d.claims.fingerprint(), stale);
        assert!(d
            .claims
            .same_names(&["a", "b", "c"].map(String::from).into()));
        assert!(!d.claims.same_names(&["a", "b"].map(String::from).into()));
    }

    #[test]
    fn bad_claims_are_errors_not_panics() {
        let good = req(&[("a", "1")]).encode_to_vec();
        for cut in 1..good.len() {
            let _ = decode(Bytes::copy_from_slice(&good[..cut]));
        }
        // A claim entry whose length runs past the end, and one that is not UTF-8.
        assert!(decode(Bytes::from_static(&[0x2a, 0x05, 0x0a, 0x01])).is_err());
        assert!(decode(Bytes::from_static(&[0x2a, 0x03, 0x0a, 0x01, 0xff])).is_err());
    }
}

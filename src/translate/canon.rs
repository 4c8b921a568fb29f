//! Deterministic encodings for messages with map fields. prost encodes a `HashMap` in its
//! iteration order, which differs from one map to the next: the same policies would then
//! encode to other bytes, get another version, and be pushed again (a listener update
//! drains connections). These encoders write every map's entries sorted by key, after the
//! message's other fields (protobuf parsers take fields in any order).

use envoy_types::pb::envoy::config::rbac::v3 as rbac;
use envoy_types::pb::envoy::config::route::v3 as rt;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3 as jwt;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3 as net_rbac;
use envoy_types::pb::google::protobuf::Any;
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::{Message, Name};
use std::collections::{BTreeMap, HashMap};

/// A length-delimited field `tag` holding `bytes`.
fn field(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

/// Map entries `{1: key, 2: value}` under `tag`, by key; values already encoded.
fn sorted_entries(tag: u32, entries: BTreeMap<&String, Vec<u8>>, buf: &mut Vec<u8>) {
    for (k, v) in entries {
        let mut e = Vec::new();
        field(1, k.as_bytes(), &mut e);
        field(2, &v, &mut e);
        field(tag, &e, buf);
    }
}

fn sorted<V: Message>(tag: u32, m: &HashMap<String, V>, buf: &mut Vec<u8>) {
    sorted_entries(
        tag,
        m.iter().map(|(k, v)| (k, v.encode_to_vec())).collect(),
        buf,
    );
}

pub fn any_of<T: Name>(value: Vec<u8>) -> Any {
    Any {
        type_url: T::type_url(),
        value,
    }
}

pub fn rbac(r: &rbac::Rbac) -> Vec<u8> {
    let mut c = r.clone();
    let policies = std::mem::take(&mut c.policies);
    let mut b = c.encode_to_vec();
    sorted(2, &policies, &mut b);
    b
}

/// `base` (a message encoded without its RBAC fields) with `rules` as field 1 and
/// `shadow_rules` as field 2, as both RBAC filters number them.
fn with_rules(mut base: Vec<u8>, rules: Option<rbac::Rbac>, shadow: Option<rbac::Rbac>) -> Vec<u8> {
    if let Some(x) = rules {
        field(1, &rbac(&x), &mut base);
    }
    if let Some(x) = shadow {
        field(2, &rbac(&x), &mut base);
    }
    base
}

pub fn http_rbac(r: &http_rbac::Rbac) -> Vec<u8> {
    let mut c = r.clone();
    let (rules, shadow) = (c.rules.take(), c.shadow_rules.take());
    with_rules(c.encode_to_vec(), rules, shadow)
}

pub fn http_rbac_per_route(r: &http_rbac::Rbac) -> Vec<u8> {
    let mut b = Vec::new();
    field(2, &http_rbac(r), &mut b);
    b
}

pub fn net_rbac(r: &net_rbac::Rbac) -> Vec<u8> {
    let mut c = r.clone();
    let (rules, shadow) = (c.rules.take(), c.shadow_rules.take());
    with_rules(c.encode_to_vec(), rules, shadow)
}

pub fn jwt_authn(j: &jwt::JwtAuthentication) -> Vec<u8> {
    let mut c = j.clone();
    let providers = std::mem::take(&mut c.providers);
    let mut b = c.encode_to_vec();
    sorted(1, &providers, &mut b);
    b
}

/// A route configuration whose virtual hosts' `typed_per_filter_config` maps are sorted.
pub fn route_configuration(r: &rt::RouteConfiguration) -> Vec<u8> {
    let mut c = r.clone();
    let vhosts = std::mem::take(&mut c.virtual_hosts);
    let mut b = c.encode_to_vec();
    for v in vhosts {
        let mut vc = v;
        let tpfc = std::mem::take(&mut vc.typed_per_filter_config);
        let mut vb = vc.encode_to_vec();
        sorted(15, &tpfc, &mut vb);
        field(2, &vb, &mut b);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies(order: &[usize]) -> rbac::Rbac {
        let mut p = HashMap::new();
        for i in order {
            p.insert(
                format!("policy-{i}"),
                rbac::Policy {
                    permissions: vec![rbac::Permission {
                        rule: Some(rbac::permission::Rule::DestinationPort(*i as u32)),
                    }],
                    ..Default::default()
                },
            );
        }
        rbac::Rbac {
            action: 1,
            policies: p,
            ..Default::default()
        }
    }

    #[test]
    fn maps_encode_the_same_whatever_their_order_and_decode_back() {
        let a: Vec<usize> = (0..40).collect();
        let b: Vec<usize> = (0..40).rev().collect();
        let (ra, rb) = (policies(&a), policies(&b));
        assert_eq!(rbac(&ra), rbac(&rb));
        assert_eq!(rbac::Rbac::decode(rbac(&ra).as_slice()).unwrap(), ra);
        let h = http_rbac::Rbac {
            rules: Some(ra.clone()),
            shadow_rules: Some(rb.clone()),
            rules_stat_prefix: "x_".into(),
            ..Default::default()
        };
        assert_eq!(
            http_rbac::Rbac::decode(http_rbac(&h).as_slice()).unwrap(),
            h
        );
        let per_route =
            http_rbac::RbacPerRoute::decode(http_rbac_per_route(&h).as_slice()).unwrap();
        assert_eq!(per_route.rbac.unwrap(), h);
        let mut tpfc = HashMap::new();
        for i in 0..5 {
            tpfc.insert(format!("f{i}"), any_of::<http_rbac::Rbac>(http_rbac(&h)));
        }
        let rc = rt::RouteConfiguration {
            name: "inbound|80||".into(),
            virtual_hosts: vec![rt::VirtualHost {
                name: "v".into(),
                domains: vec!["*".into()],
                typed_per_filter_config: tpfc,
                ..Default::default()
            }],
            ..Default::default()
        };
        let bytes = route_configuration(&rc);
        assert_eq!(
            rt::RouteConfiguration::decode(bytes.as_slice()).unwrap(),
            rc
        );
        assert_eq!(bytes, route_configuration(&rc.clone()));
    }
}

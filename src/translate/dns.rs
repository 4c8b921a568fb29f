//! DNS without an agent: a sidecar whose node metadata asks for it (`DNS_CAPTURE: "true"`,
//! as Istio's `ISTIO_META_DNS_CAPTURE`) gets a UDP listener on 127.0.0.1:15053 running
//! stock Envoy's DNS filter. `pilotfish iptables --redirect-dns` sends the app's UDP 53
//! there (the proxy's own lookups excepted).
//!
//! ```text
//!  app ──UDP 53──► iptables REDIRECT ──► 127.0.0.1:15053 dns_filter
//!                                          ├─ mesh names (table below) → answered here
//!                                          └─ anything else → the pod's resolv.conf
//!                                             resolvers (c-ares, as uid 1337: not captured)
//! ```
//!
//! The table: every service in the proxy's scope, by its FQDN (and `name.ns.svc`,
//! `name.ns` for Kubernetes services; bare names come from the resolver's search list),
//! answering its virtual IPs, else the auto-allocated IP of a ServiceEntry without
//! addresses, else its endpoints' addresses.

use super::*;
use crate::model::{Resolution, Scope};
use envoy_types::pb::envoy::config::listener::v3::{self as ls, ListenerFilter};
use envoy_types::pb::envoy::data::dns::v3 as dns;
use envoy_types::pb::envoy::extensions::filters::udp::dns_filter::v3 as dns_filter;
use envoy_types::pb::envoy::extensions::network::dns_resolver::cares::v3 as cares;
use std::collections::BTreeSet;

pub const DNS_LISTENER: &str = "dns";
pub const DNS_PORT: u32 = 15053;

/// The names and addresses the sidecars of a scope answer for, in name order.
pub fn table(world: &World, scope: &Scope) -> Vec<(String, Vec<String>)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for svc in world
        .services
        .values()
        .filter(|s| scope.includes(&s.hostname) && !s.hostname.starts_with('*'))
    {
        let vips: Vec<String> = svc
            .vips
            .iter()
            .filter(|v| v.parse::<std::net::IpAddr>().is_ok())
            .cloned()
            .collect();
        let addrs = if !vips.is_empty() {
            vips
        } else if let Some(v) = &svc.auto_vip {
            vec![v.clone()]
        } else if svc.resolution == Resolution::Static {
            let mut a: Vec<String> = svc
                .endpoints
                .iter()
                .map(|e| e.address.clone())
                .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
                .collect();
            a.sort();
            a.dedup();
            a
        } else {
            Vec::new()
        };
        if addrs.is_empty() {
            continue;
        }
        let mut names = vec![svc.hostname.clone()];
        names.extend(svc.kube_names(&world.mesh));
        for n in names {
            if seen.insert(n.clone()) {
                out.push((n, addrs.clone()));
            }
        }
    }
    out.sort();
    out
}

/// The DNS listener of the sidecars of a scope.
pub fn listener(world: &World, scope: &Scope) -> ls::Listener {
    let virtual_domains = table(world, scope)
        .into_iter()
        .map(|(name, address)| dns::dns_table::DnsVirtualDomain {
            name,
            endpoint: Some(dns::dns_table::DnsEndpoint {
                endpoint_config: Some(dns::dns_table::dns_endpoint::EndpointConfig::AddressList(
                    dns::dns_table::AddressList { address },
                )),
            }),
            answer_ttl: Some(secs(30)),
        })
        .collect();
    let config = dns_filter::DnsFilterConfig {
        stat_prefix: "dns".into(),
        server_config: Some(dns_filter::dns_filter_config::ServerContextConfig {
            config_source: Some(
                dns_filter::dns_filter_config::server_context_config::ConfigSource::InlineDnsTable(
                    dns::DnsTable {
                        virtual_domains,
                        ..Default::default()
                    },
                ),
            ),
        }),
        // Names not in the table: the resolvers of the pod's resolv.conf.
        client_config: Some(dns_filter::dns_filter_config::ClientContextConfig {
            resolver_timeout: Some(secs(5)),
            typed_dns_resolver_config: Some(core::TypedExtensionConfig {
                name: "envoy.network.dns_resolver.cares".into(),
                typed_config: Some(any(cares::CaresDnsResolverConfig::default())),
            }),
            max_pending_lookups: 256,
            ..Default::default()
        }),
        ..Default::default()
    };
    ls::Listener {
        name: DNS_LISTENER.into(),
        address: Some(core::Address {
            address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                protocol: core::socket_address::Protocol::Udp as i32,
                address: "127.0.0.1".into(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(DNS_PORT)),
                ..Default::default()
            })),
        }),
        udp_listener_config: Some(ls::UdpListenerConfig::default()),
        listener_filters: vec![ListenerFilter {
            name: "envoy.filters.udp.dns_filter".into(),
            config_type: Some(ls::listener_filter::ConfigType::TypedConfig(any(config))),
            ..Default::default()
        }],
        traffic_direction: core::TrafficDirection::Outbound as i32,
        ..Default::default()
    }
}

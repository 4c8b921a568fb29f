//! AuthorizationPolicy → Envoy filters on the sidecar's inbound side.
//!
//! ```text
//!  HTTP chain:  jwt_authn → per provider: rbac(CUSTOM, shadow) → ext_authz
//!               → rbac(AUDIT, shadow) → rbac(DENY) → rbac(ALLOW) → router
//!               (the rules travel per route: route configuration `inbound|<port>||`,
//!                over RDS, so a policy change reaches the next request)
//!  TCP chain:   per provider: rbac(CUSTOM, shadow) → ext_authz (gRPC providers)
//!               → rbac(AUDIT, shadow) → rbac(DENY) → rbac(ALLOW) → tcp_proxy
//! ```
//! A rule is `from` AND `to` AND `when`; list entries are ORed, a field's values are ORed,
//! `not*` fields negate the OR of their values (`translate::rbac` builds them). Principals
//! are the verified mTLS peer's SPIFFE URI (`authenticated`), so plaintext callers never
//! match one.
//!
//! Case, the safe way round: hosts are compared ignoring case (DNS names are), with and
//! without a port and a trailing dot; a DENY (or AUDIT) policy matches paths ignoring case
//! and excludes (`notPaths`) case-sensitively, an ALLOW policy the other way, so `/ADMIN`
//! cannot slip past `DENY /admin*` to an app that ignores case.
//!
//! On TCP chains the HTTP-only fields (hosts, methods, paths, `request.headers`, request
//! principals, `request.auth.*`) cannot be checked: as in Istio, an ALLOW rule using one
//! matches nothing (allows less) and a DENY rule drops them (denies more).

pub use super::ext_authz::{builtin_cluster, BUILTIN_CLUSTER};
use super::ext_authz::{enabled_by, ext_authz_http, grpc_service};
pub use super::rbac::JWT_PAYLOAD;
use super::rbac::{rule_policy, Ctx, Form};
use super::*;
use crate::model::{AuthzAction, AuthzPolicy, ExtAuthzProvider};
use envoy_types::pb::envoy::config::listener::v3 as ls;
use envoy_types::pb::envoy::config::rbac::v3 as rbac;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3 as net_ext_authz;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3 as net_rbac;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;

/// The inbound HTTP RBAC filters' names (per-route configs are keyed by them).
pub const AUDIT_FILTER: &str = "pilotfish.authz.audit";
pub const DENY_FILTER: &str = "pilotfish.authz.deny";
pub const ALLOW_FILTER: &str = "pilotfish.authz.allow";
pub const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
/// Stat prefix of the AUDIT filter's shadow rules (`..rbac.istio_audit_shadow_denied`
/// counts requests an AUDIT rule matched).
pub const AUDIT_STAT_PREFIX: &str = "istio_audit_";

/// Istio's policy name in Envoy: `ns[NS]-policy[NAME]-rule[I]`.
pub fn policy_name(p: &AuthzPolicy, i: usize) -> String {
    format!("ns[{}]-policy[{}]-rule[{i}]", p.namespace, p.key.name)
}

/// The Envoy RBAC config of each action present, in evaluation order (AUDIT, DENY, ALLOW);
/// `shadow` is set for AUDIT.
struct Rbacs {
    audit: Option<rbac::Rbac>,
    deny: Option<rbac::Rbac>,
    allow: Option<rbac::Rbac>,
    /// CUSTOM rules per provider (index in `Providers`): which requests its ext_authz
    /// filter checks.
    custom: BTreeMap<usize, Option<rbac::Rbac>>,
}

/// The ext_authz providers a proxy can use, in filter order (the mesh config's, then the
/// built-in one).
pub type Providers = [ExtAuthzProvider];

fn provider_index(providers: &Providers, name: &str) -> Option<usize> {
    providers.iter().position(|p| p.name == name)
}

fn rbacs(policies: &[Arc<AuthzPolicy>], form: Form, providers: &Providers) -> Rbacs {
    let mut out = Rbacs {
        audit: None,
        deny: None,
        allow: None,
        custom: BTreeMap::new(),
    };
    for p in policies {
        // Shadow rules with DENY (AUDIT, CUSTOM): a match counts as `shadow_denied` and sets
        // the metadata CUSTOM's ext_authz filter is enabled by; nothing is refused.
        let (slot, action) = match p.action {
            AuthzAction::Allow => (&mut out.allow, rbac::rbac::Action::Allow),
            AuthzAction::Deny => (&mut out.deny, rbac::rbac::Action::Deny),
            AuthzAction::Audit => (&mut out.audit, rbac::rbac::Action::Deny),
            AuthzAction::Custom => {
                // Validated against the mesh config: a missing provider is a config error.
                let Some(i) = p
                    .provider
                    .as_deref()
                    .and_then(|n| provider_index(providers, n))
                else {
                    continue;
                };
                (out.custom.entry(i).or_default(), rbac::rbac::Action::Deny)
            }
        };
        // An ALLOW policy with no rules still creates the filter: nothing is allowed.
        let r = slot.get_or_insert_with(|| rbac::Rbac {
            action: action as i32,
            ..Default::default()
        });
        // CUSTOM widens like DENY on TCP (more is checked).
        let cx = Ctx {
            form,
            action: p.action,
        };
        for (i, rule) in p.rules.iter().enumerate() {
            if let Some(policy) = rule_policy(rule, cx) {
                r.policies.insert(policy_name(p, i), policy);
            }
        }
    }
    if out.audit.as_ref().is_some_and(|a| a.policies.is_empty()) {
        out.audit = None;
    }
    if out.deny.as_ref().is_some_and(|a| a.policies.is_empty()) {
        out.deny = None;
    }
    out
}

/// The inbound connection manager's RBAC filters (before the router), in evaluation order.
/// Their own config enforces nothing: each inbound route carries its port's rules
/// (`http_per_route`), so a policy change never touches the listener.
pub fn http_filters(providers: &Providers) -> Vec<hcm::HttpFilter> {
    // The stats of a filter keep its own config's prefixes (`..rbac.istio_deny_denied`).
    let prefixed = |shadow: &str, rules: &str| http_rbac::Rbac {
        shadow_rules_stat_prefix: shadow.into(),
        rules_stat_prefix: rules.into(),
        ..Default::default()
    };
    let mut out = Vec::new();
    // CUSTOM first: per provider, a shadow RBAC marks the requests its policies select
    // (per route), and the provider's ext_authz filter checks only those.
    for (i, p) in providers.iter().enumerate() {
        out.push(listener::http_filter(
            &custom_filter(i),
            prefixed(&custom_prefix(i), ""),
        ));
        out.push(listener::http_filter(
            &format!("pilotfish.ext_authz.{}", p.name),
            ext_authz_http(p, i),
        ));
    }
    out.extend([
        listener::http_filter(AUDIT_FILTER, prefixed(AUDIT_STAT_PREFIX, "")),
        listener::http_filter(DENY_FILTER, prefixed("", "istio_deny_")),
        listener::http_filter(ALLOW_FILTER, prefixed("", "istio_allow_")),
    ]);
    out
}

/// An `RBACPerRoute`, encoded deterministically (see `canon`).
fn per_route(r: &http_rbac::Rbac) -> pbw::Any {
    super::canon::any_of::<http_rbac::RbacPerRoute>(super::canon::http_rbac_per_route(r))
}

fn custom_filter(i: usize) -> String {
    format!("pilotfish.authz.custom.{i}")
}

/// Stat prefix of provider `i`'s shadow rules; their dynamic metadata key is
/// `<prefix>shadow_effective_policy_id`.
pub(super) fn custom_prefix(i: usize) -> String {
    format!("istio_ext_authz_{i}_")
}

/// Per-route configs of the three RBAC filters for a port's policies (absent: no policy of
/// that action applies).
pub fn http_per_route(
    policies: &[Arc<AuthzPolicy>],
    providers: &Providers,
) -> HashMap<String, pbw::Any> {
    let r = rbacs(policies, Form::Http, providers);
    let mut out = HashMap::new();
    for (i, rules) in r.custom.into_iter().filter_map(|(i, r)| Some((i, r?))) {
        out.insert(
            custom_filter(i),
            per_route(&http_rbac::Rbac {
                shadow_rules: Some(rules),
                shadow_rules_stat_prefix: custom_prefix(i),
                ..Default::default()
            }),
        );
    }
    let mut put = |name: &str, rbac: http_rbac::Rbac| {
        out.insert(name.to_string(), per_route(&rbac));
    };
    if let Some(a) = r.audit {
        put(
            AUDIT_FILTER,
            http_rbac::Rbac {
                shadow_rules: Some(a),
                shadow_rules_stat_prefix: AUDIT_STAT_PREFIX.into(),
                ..Default::default()
            },
        );
    }
    if let Some(d) = r.deny {
        put(
            DENY_FILTER,
            http_rbac::Rbac {
                rules: Some(d),
                ..Default::default()
            },
        );
    }
    if let Some(a) = r.allow {
        put(
            ALLOW_FILTER,
            http_rbac::Rbac {
                rules: Some(a),
                ..Default::default()
            },
        );
    }
    out
}

/// Network RBAC filters for an inbound TCP chain (before tcp_proxy).
pub fn network_filters(policies: &[Arc<AuthzPolicy>], providers: &Providers) -> Vec<ls::Filter> {
    let r = rbacs(policies, Form::Tcp, providers);
    let mut out = Vec::new();
    for (i, rules) in r.custom.into_iter().filter_map(|(i, r)| Some((i, r?))) {
        let p = &providers[i];
        if p.http {
            // An HTTP provider cannot check a TCP connection: what its policies select is
            // refused (fail closed).
            out.push(net_filter(net_rbac::Rbac {
                rules: Some(rules),
                stat_prefix: format!("tcp.ext_authz_{i}_unavailable."),
                ..Default::default()
            }));
            continue;
        }
        out.push(net_filter(net_rbac::Rbac {
            shadow_rules: Some(rules),
            shadow_rules_stat_prefix: custom_prefix(i),
            stat_prefix: "tcp.".into(),
            ..Default::default()
        }));
        out.push(listener::filter(
            "envoy.filters.network.ext_authz",
            net_ext_authz::ExtAuthz {
                stat_prefix: format!("ext_authz_{i}"),
                grpc_service: Some(grpc_service(p)),
                failure_mode_allow: p.fail_open,
                transport_api_version: core::ApiVersion::V3 as i32,
                filter_enabled_metadata: Some(enabled_by("envoy.filters.network.rbac", i)),
                ..Default::default()
            },
        ));
    }
    if let Some(a) = r.audit {
        out.push(net_filter(net_rbac::Rbac {
            shadow_rules: Some(a),
            shadow_rules_stat_prefix: AUDIT_STAT_PREFIX.into(),
            stat_prefix: "tcp.".into(),
            ..Default::default()
        }));
    }
    for rules in [r.deny, r.allow].into_iter().flatten() {
        out.push(net_filter(net_rbac::Rbac {
            rules: Some(rules),
            stat_prefix: "tcp.".into(),
            ..Default::default()
        }));
    }
    out
}

/// A network RBAC filter, encoded deterministically (see `canon`).
fn net_filter(r: net_rbac::Rbac) -> ls::Filter {
    ls::Filter {
        name: NETWORK_RBAC.into(),
        config_type: Some(ls::filter::ConfigType::TypedConfig(super::canon::any_of::<
            net_rbac::Rbac,
        >(
            super::canon::net_rbac(&r),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{MeshConfig, Proxy};

    const REGISTRY: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  clusterIP: 10.1.1.1\n  selector: {app: b}\n  ports: [{name: http, port: 8080}]\n---\n\
        apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: b-1}\nspec:\n  address: 10.2.2.2\n  serviceAccount: b\n  labels: {app: b, security.istio.io/tlsMode: istio}\n---\n";

    fn inbound_json(policies: &str) -> String {
        let text = format!("{REGISTRY}{policies}");
        let w = crate::app::world_from_files(&[("t.yaml", text.as_str())], MeshConfig::default());
        assert!(w.errors.is_empty(), "{:?}", w.errors);
        let proxy = Proxy {
            namespace: "default".into(),
            ips: vec!["10.2.2.2".into()],
            labels: [("app".to_string(), "b".to_string())].into(),
            mtls: true,
            ..Default::default()
        };
        let key = crate::translate::listener::inbound_key(&w, &proxy);
        let routes = crate::translate::listener::inbound_routes(&key);
        serde_json::to_string(
            &routes
                .iter()
                .map(crate::envoy_json::to_json)
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    /// Istio's `pathNormalization` table: each option gives the connection manager fields.
    #[test]
    fn path_normalization_options_set_the_connection_manager_as_istio() {
        use crate::model::PathNormalization as N;
        use crate::translate::listener::{hcm_with, RouteSource};
        use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
        use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
        use prost::Message;
        let keep = hcm::http_connection_manager::PathWithEscapedSlashesAction::KeepUnchanged as i32;
        let decode =
            hcm::http_connection_manager::PathWithEscapedSlashesAction::UnescapeAndForward as i32;
        for (opt, normalize, merge, slashes) in [
            (N::None, false, false, keep),
            (N::Base, true, false, keep),
            (N::MergeSlashes, true, true, keep),
            (N::DecodeAndMergeSlashes, true, true, decode),
        ] {
            let f = hcm_with("s", RouteSource::Rds("r".into()), false, vec![], opt, None);
            let Some(ConfigType::TypedConfig(any)) = f.config_type else {
                panic!("typed config")
            };
            let h = hcm::HttpConnectionManager::decode(any.value.as_slice()).unwrap();
            assert_eq!(
                (
                    h.normalize_path.map(|b| b.value),
                    h.merge_slashes,
                    h.path_with_escaped_slashes_action
                ),
                (Some(normalize), merge, slashes),
                "{opt:?}"
            );
        }
        assert_eq!(N::parse("DEFAULT"), Some(N::Base));
    }

    #[test]
    fn policies_reach_the_inbound_chains() {
        let j = inbound_json(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: marker-0}\nspec:\n  action: AUDIT\n  rules: [{to: [{operation: {paths: [\"/__marker\"]}}]}]\n",
        );
        assert!(j.contains("policy[marker-0]"), "{j}");
    }
}

//! AuthorizationPolicy rules → Envoy RBAC policies (`config.rbac.v3.Policy`): the matchers
//! for every `from` / `to` / `when` field, in Istio's shapes (see `translate::authz` for
//! the filters that carry them and the rules of case and TCP).

use super::*;
use crate::api::security::{
    claim_path, header_key, parse_cidr, Condition, Operation, Rule, Source,
};
use crate::model::AuthzAction;
use envoy_types::pb::envoy::config::rbac::v3 as rbac;
use envoy_types::pb::envoy::config::route::v3::{header_matcher, HeaderMatcher};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    list_matcher, metadata_matcher, path_matcher, string_matcher::MatchPattern, value_matcher,
    ListMatcher, MetadataMatcher, PathMatcher, StringMatcher, ValueMatcher,
};
use rbac::permission::Rule as P;
use rbac::principal::Identifier as I;

/// Which side of an Envoy RBAC filter a generated rule is for.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Form {
    Http,
    Tcp,
}

/// What the generation of one rule needs to know.
#[derive(Clone, Copy)]
pub(super) struct Ctx {
    pub(super) form: Form,
    pub(super) action: AuthzAction,
}

impl Ctx {
    /// Positive matches ignore case when matching more is the safe side (DENY, AUDIT).
    fn broad(self) -> bool {
        self.action != AuthzAction::Allow
    }
}

/// One rule: (OR of `to`) AND `when` permissions; (OR of `from`) AND `when` principals.
/// None: the rule can never match here (an ALLOW rule using HTTP-only fields on TCP).
pub(super) fn rule_policy(rule: &Rule, cx: Ctx) -> Option<rbac::Policy> {
    let mut perms: Vec<rbac::Permission> = Vec::new();
    let mut ids: Vec<rbac::Principal> = Vec::new();
    if !rule.to.is_empty() {
        let ops: Vec<rbac::Permission> = rule
            .to
            .iter()
            .filter_map(|t| operation(&t.operation, cx))
            .collect();
        if ops.is_empty() {
            return None;
        }
        perms.push(perm_or(ops));
    }
    if !rule.from.is_empty() {
        let sources: Vec<rbac::Principal> = rule
            .from
            .iter()
            .filter_map(|f| source(&f.source, cx))
            .collect();
        if sources.is_empty() {
            return None;
        }
        ids.push(id_or(sources));
    }
    for c in &rule.when {
        match condition(c, cx)? {
            Cond::Perm(p) => perms.push(p),
            Cond::Id(i) => ids.push(i),
            Cond::Skip => {}
        }
    }
    Some(rbac::Policy {
        permissions: vec![perm_and(perms)],
        principals: vec![id_and(ids)],
        ..Default::default()
    })
}

fn perm(r: P) -> rbac::Permission {
    rbac::Permission { rule: Some(r) }
}
fn id(i: I) -> rbac::Principal {
    rbac::Principal {
        identifier: Some(i),
    }
}
fn perm_and(mut v: Vec<rbac::Permission>) -> rbac::Permission {
    match v.len() {
        0 => perm(P::Any(true)),
        1 => v.pop().unwrap(),
        _ => perm(P::AndRules(rbac::permission::Set { rules: v })),
    }
}
fn perm_or(mut v: Vec<rbac::Permission>) -> rbac::Permission {
    match v.len() {
        1 => v.pop().unwrap(),
        _ => perm(P::OrRules(rbac::permission::Set { rules: v })),
    }
}
fn perm_not(p: rbac::Permission) -> rbac::Permission {
    perm(P::NotRule(Box::new(p)))
}
fn id_and(mut v: Vec<rbac::Principal>) -> rbac::Principal {
    match v.len() {
        0 => id(I::Any(true)),
        1 => v.pop().unwrap(),
        _ => id(I::AndIds(rbac::principal::Set { ids: v })),
    }
}
fn id_or(mut v: Vec<rbac::Principal>) -> rbac::Principal {
    match v.len() {
        1 => v.pop().unwrap(),
        _ => id(I::OrIds(rbac::principal::Set { ids: v })),
    }
}
fn id_not(p: rbac::Principal) -> rbac::Principal {
    id(I::NotId(Box::new(p)))
}

/// `values` ORed, and NOT(`not_values` ORed), ANDed onto `acc`.
fn push_perm(
    acc: &mut Vec<rbac::Permission>,
    values: &[String],
    not_values: &[String],
    f: impl Fn(&str, bool) -> rbac::Permission,
) {
    if !values.is_empty() {
        acc.push(perm_or(values.iter().map(|v| f(v, false)).collect()));
    }
    if !not_values.is_empty() {
        acc.push(perm_not(perm_or(
            not_values.iter().map(|v| f(v, true)).collect(),
        )));
    }
}
fn push_id(
    acc: &mut Vec<rbac::Principal>,
    values: &[String],
    not_values: &[String],
    f: impl Fn(&str) -> rbac::Principal,
) {
    if !values.is_empty() {
        acc.push(id_or(values.iter().map(|v| f(v)).collect()));
    }
    if !not_values.is_empty() {
        acc.push(id_not(id_or(not_values.iter().map(|v| f(v)).collect())));
    }
}

fn sm(p: MatchPattern, ignore_case: bool) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(p),
        ignore_case,
    }
}

/// Istio's `*` forms as a string matcher (`*` alone is handled by callers as presence).
pub(super) fn wildcard(v: &str, ignore_case: bool) -> StringMatcher {
    if v == "*" {
        return sm(MatchPattern::Prefix(String::new()), false);
    }
    if let Some(s) = v.strip_prefix('*') {
        sm(MatchPattern::Suffix(s.into()), ignore_case)
    } else if let Some(p) = v.strip_suffix('*') {
        sm(MatchPattern::Prefix(p.into()), ignore_case)
    } else {
        sm(MatchPattern::Exact(v.into()), ignore_case)
    }
}

fn header(name: &str, m: StringMatcher) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(m)),
        ..Default::default()
    }
}

fn present(name: &str) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true)),
        ..Default::default()
    }
}

fn cidr(v: &str) -> core::CidrRange {
    let (ip, len) = parse_cidr(v).expect("validated");
    core::CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: u32v(len),
    }
}

/// The verified peer's SPIFFE URI, from an Istio principal (`td/ns/x/sa/y`, `*` forms).
fn principal(v: &str) -> rbac::Principal {
    let m = if v == "*" {
        sm(MatchPattern::Prefix("spiffe://".into()), false)
    } else if let Some(s) = v.strip_prefix('*') {
        sm(MatchPattern::Suffix(s.into()), false)
    } else if let Some(p) = v.strip_suffix('*') {
        sm(MatchPattern::Prefix(format!("spiffe://{p}")), false)
    } else {
        sm(MatchPattern::Exact(format!("spiffe://{v}")), false)
    };
    authenticated(m)
}

fn authenticated(m: StringMatcher) -> rbac::Principal {
    id(I::Authenticated(rbac::principal::Authenticated {
        principal_name: Some(m),
    }))
}

fn regex(re: String) -> StringMatcher {
    use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
    sm(
        MatchPattern::SafeRegex(RegexMatcher {
            regex: re,
            ..Default::default()
        }),
        false,
    )
}

/// The namespace of the verified peer's SPIFFE URI (`spiffe://<td>/ns/<ns>/sa/<sa>`).
fn namespace(v: &str) -> rbac::Principal {
    let seg = |s: &str| regex_syntax::escape(s);
    let ns = if v == "*" {
        "[^/]+".to_string()
    } else if let Some(s) = v.strip_prefix('*') {
        format!("[^/]*{}", seg(s))
    } else if let Some(p) = v.strip_suffix('*') {
        format!("{}[^/]*", seg(p))
    } else {
        seg(v)
    };
    authenticated(regex(format!("^spiffe://[^/]+/ns/{ns}/sa/[^/]+$")))
}

fn service_account(v: &str) -> rbac::Principal {
    let (ns, sa) = v.split_once('/').expect("validated");
    authenticated(regex(format!(
        "^spiffe://[^/]+/ns/{}/sa/{}$",
        regex_syntax::escape(ns),
        regex_syntax::escape(sa)
    )))
}

/// One `from.source`; None when it can never match on this form (request principals are
/// HTTP-only: on TCP an ALLOW source using them matches nothing, a DENY drops them).
fn source(s: &Source, cx: Ctx) -> Option<rbac::Principal> {
    let mut acc = Vec::new();
    let jwt = !(s.request_principals.is_empty() && s.not_request_principals.is_empty());
    if jwt && cx.form == Form::Tcp {
        if cx.action == AuthzAction::Allow {
            return None;
        }
    } else {
        push_id(
            &mut acc,
            &s.request_principals,
            &s.not_request_principals,
            request_principal,
        );
    }
    push_id(&mut acc, &s.principals, &s.not_principals, principal);
    push_id(&mut acc, &s.namespaces, &s.not_namespaces, namespace);
    push_id(
        &mut acc,
        &s.service_accounts,
        &s.not_service_accounts,
        service_account,
    );
    push_id(&mut acc, &s.ip_blocks, &s.not_ip_blocks, |v| {
        id(I::DirectRemoteIp(cidr(v)))
    });
    push_id(
        &mut acc,
        &s.remote_ip_blocks,
        &s.not_remote_ip_blocks,
        |v| id(I::RemoteIp(cidr(v))),
    );
    Some(id_and(acc))
}

/// Where jwt_authn puts a verified token's payload (dynamic metadata of
/// `envoy.filters.http.jwt_authn`, under this key).
pub const JWT_PAYLOAD: &str = "payload";

/// A claim of the verified token's payload (`path` below the payload) matched as a string,
/// or as one element of a list (`aud`, `groups`).
fn claim(path: &[&str], v: &str) -> rbac::Principal {
    let meta = |value: ValueMatcher| {
        id(I::SourcedMetadata(rbac::SourcedMetadata {
            metadata_matcher: Some(MetadataMatcher {
                filter: "envoy.filters.http.jwt_authn".into(),
                path: std::iter::once(JWT_PAYLOAD)
                    .chain(path.iter().copied())
                    .map(|k| metadata_matcher::PathSegment {
                        segment: Some(metadata_matcher::path_segment::Segment::Key(k.into())),
                    })
                    .collect(),
                value: Some(value),
                invert: false,
            }),
            metadata_source: 0,
        }))
    };
    if v == "*" {
        return meta(ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::PresentMatch(true)),
        });
    }
    let string = ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::StringMatch(wildcard(v, false))),
    };
    id_or(vec![
        meta(string.clone()),
        meta(ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
                ListMatcher {
                    match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(string))),
                },
            ))),
        }),
    ])
}

/// A request principal `<iss>/<sub>` (forms: `*`, `iss/sub`, `iss/*`, `*/sub`).
fn request_principal(v: &str) -> rbac::Principal {
    if v == "*" {
        return claim(&["iss"], "*");
    }
    let (iss, sub) = v.rsplit_once('/').expect("validated");
    id_and(vec![claim(&["iss"], iss), claim(&["sub"], sub)])
}

/// `:authority` equal to the host, with or without a port (`Host: a.com:8080`) and with or
/// without the root's trailing dot (`a.com.`, the same name).
fn host(v: &str, ignore_case: bool) -> rbac::Permission {
    if v == "*" {
        return perm(P::Header(present(":authority")));
    }
    let auth = |m: MatchPattern| perm(P::Header(header(":authority", sm(m, ignore_case))));
    let forms = if let Some(s) = v.strip_prefix('*') {
        vec![
            MatchPattern::Suffix(s.into()),
            MatchPattern::Suffix(format!("{s}.")),
            MatchPattern::Contains(format!("{s}:")),
            MatchPattern::Contains(format!("{s}.:")),
        ]
    } else if let Some(p) = v.strip_suffix('*') {
        vec![MatchPattern::Prefix(p.into())]
    } else {
        vec![
            MatchPattern::Exact(v.into()),
            MatchPattern::Exact(format!("{v}.")),
            MatchPattern::Prefix(format!("{v}:")),
            MatchPattern::Prefix(format!("{v}.:")),
        ]
    };
    perm_or(forms.into_iter().map(auth).collect())
}

fn path(v: &str, ignore_case: bool) -> rbac::Permission {
    perm(P::UrlPath(PathMatcher {
        rule: Some(path_matcher::Rule::Path(wildcard(v, ignore_case))),
    }))
}

/// One `to.operation`; None when it can never match on this form.
fn operation(o: &Operation, cx: Ctx) -> Option<rbac::Permission> {
    let mut acc = Vec::new();
    let http_only = !(o.hosts.is_empty()
        && o.not_hosts.is_empty()
        && o.methods.is_empty()
        && o.not_methods.is_empty()
        && o.paths.is_empty()
        && o.not_paths.is_empty());
    if cx.form == Form::Tcp && http_only && cx.action == AuthzAction::Allow {
        return None;
    }
    if cx.form == Form::Http {
        // A positive match ignores case when matching more is safe; an exclusion when
        // excluding more is.
        let broad = cx.broad();
        // Host names are case-insensitive (DNS): matched so either way, as Istio does.
        push_perm(&mut acc, &o.hosts, &o.not_hosts, |v, _| host(v, true));
        push_perm(&mut acc, &o.methods, &o.not_methods, |v, _| {
            perm(P::Header(header(
                ":method",
                sm(MatchPattern::Exact(v.into()), false),
            )))
        });
        push_perm(&mut acc, &o.paths, &o.not_paths, |v, neg| {
            path(v, broad != neg)
        });
    }
    push_perm(&mut acc, &o.ports, &o.not_ports, |v, _| {
        perm(P::DestinationPort(v.parse().expect("validated")))
    });
    Some(perm_and(acc))
}

enum Cond {
    Perm(rbac::Permission),
    Id(rbac::Principal),
    /// An HTTP-only condition dropped from a DENY rule on TCP.
    Skip,
}

/// One `when` condition; None when the rule can never match on this form.
fn condition(c: &Condition, cx: Ctx) -> Option<Cond> {
    let mut ids = Vec::new();
    let mut perms = Vec::new();
    match c.key.as_str() {
        "source.ip" => push_id(&mut ids, &c.values, &c.not_values, |v| {
            id(I::DirectRemoteIp(cidr(v)))
        }),
        "remote.ip" => push_id(&mut ids, &c.values, &c.not_values, |v| {
            id(I::RemoteIp(cidr(v)))
        }),
        "source.namespace" => push_id(&mut ids, &c.values, &c.not_values, namespace),
        "source.principal" => push_id(&mut ids, &c.values, &c.not_values, principal),
        "destination.ip" => push_perm(&mut perms, &c.values, &c.not_values, |v, _| {
            perm(P::DestinationIp(cidr(v)))
        }),
        "destination.port" => push_perm(&mut perms, &c.values, &c.not_values, |v, _| {
            perm(P::DestinationPort(v.parse().expect("validated")))
        }),
        "connection.sni" => push_perm(&mut perms, &c.values, &c.not_values, |v, _| {
            perm(P::RequestedServerName(wildcard(v, false)))
        }),
        k if k.starts_with("request.auth.") => {
            if cx.form == Form::Tcp {
                return match cx.action {
                    AuthzAction::Allow => None,
                    _ => Some(Cond::Skip),
                };
            }
            match k {
                "request.auth.principal" => {
                    push_id(&mut ids, &c.values, &c.not_values, request_principal)
                }
                "request.auth.audiences" => {
                    push_id(&mut ids, &c.values, &c.not_values, |v| claim(&["aud"], v))
                }
                "request.auth.presenter" => {
                    push_id(&mut ids, &c.values, &c.not_values, |v| claim(&["azp"], v))
                }
                k => {
                    let path = claim_path(k).expect("validated");
                    push_id(&mut ids, &c.values, &c.not_values, |v| claim(&path, v))
                }
            }
        }
        k => {
            let h = header_key(k).expect("validated");
            if cx.form == Form::Tcp {
                return match cx.action {
                    AuthzAction::Allow => None,
                    _ => Some(Cond::Skip),
                };
            }
            push_id(&mut ids, &c.values, &c.not_values, |v| {
                if v == "*" {
                    id(I::Header(present(h)))
                } else {
                    id(I::Header(header(h, wildcard(v, false))))
                }
            });
        }
    }
    Some(if !ids.is_empty() {
        Cond::Id(id_and(ids))
    } else {
        Cond::Perm(perm_and(perms))
    })
}

//! The central authorization decision: the AuthorizationPolicies of a workload port applied
//! to one request or connection, pure (no IO, no async).
//!
//! ```text
//!  DENY (any rule matches: deny) → ALLOW (none applies: allow; else a rule must match) → verdict
//!  AUDIT: every matching rule is listed, the verdict never changes
//! ```
//! It mirrors what `translate::authz` makes Envoy's RBAC filters enforce, so a decision here
//! and one in a sidecar agree:
//! - a rule is `from` AND `to` AND `when`; list entries are ORed, a field's values ORed,
//!   `not*` fields match when none of their values does (so a plaintext peer, which matches
//!   no principal, matches `notPrincipals`);
//! - hosts ignore case and match with or without `:port` and the trailing dot; paths ignore
//!   the query, and ignore case for positive matches of DENY/AUDIT and for `notPaths` of
//!   ALLOW (the safe side either way); methods, principals and headers are case-sensitive;
//! - on a TCP connection (`Request::http` None) an ALLOW rule using an HTTP-only field
//!   (hosts, methods, paths, `request.headers`, request principals, `request.auth.*`)
//!   never matches, a DENY/AUDIT rule drops it;
//! - request principals and `request.auth.*` read the verified JWT payload (`Request::jwt`).

use crate::api::security::{
    claim_path, header_key, parse_cidr, Condition, Operation, Rule, Source,
};
use crate::api::ObjectKey;
use crate::model::{AuthzAction, AuthzPolicy};
use std::net::IpAddr;
use std::sync::Arc;

/// What a decision reads about a request (or a plain TCP connection).
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    /// Verified peer SPIFFE URI (`spiffe://cluster.local/ns/default/sa/a`); None: plaintext.
    pub source_principal: Option<&'a str>,
    /// Direct peer address (`ipBlocks`, `source.ip`).
    pub source_ip: Option<IpAddr>,
    /// Original client address (X-Forwarded-For etc.); None: `source_ip`.
    pub remote_ip: Option<IpAddr>,
    pub destination_ip: Option<IpAddr>,
    pub destination_port: u32,
    /// TLS server name; None is matched as the empty name (as Envoy does).
    pub sni: Option<&'a str>,
    /// None: a plain TCP connection.
    pub http: Option<HttpAttrs<'a>>,
    /// The verified JWT payload (jwt_authn's), if the request carried a valid token.
    pub jwt: Option<&'a serde_json::Value>,
}

/// The HTTP side of a request.
#[derive(Debug, Clone, Copy)]
pub struct HttpAttrs<'a> {
    pub method: &'a str,
    /// Normalized by the caller; a `?query` (or `#fragment`) is ignored.
    pub path: &'a str,
    /// `:authority` / `Host`, possibly with a port.
    pub host: &'a str,
    /// Lower-case names; pseudo-headers (`:method`, `:path`, `:authority`) come from above.
    pub headers: &'a [(String, String)],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// Human text: which policy and rule decided, or why none did.
    pub reason: String,
    /// The policy whose rule decided (None: no rule decided).
    pub policy: Option<ObjectKey>,
    /// That rule's index in the policy.
    pub rule: Option<usize>,
    /// Every matching AUDIT rule (policy, rule index), in policy order.
    pub audited: Vec<(ObjectKey, usize)>,
}

/// Istio order: DENY policies first (any matching rule denies), then ALLOW (no ALLOW policy:
/// allow; else at least one rule of one ALLOW policy must match, an ALLOW policy without
/// rules matches nothing), AUDIT never changes the verdict but its matching rules are
/// listed. `policies` are those applying to the destination workload port; CUSTOM ones are
/// their ext_authz provider's business and not evaluated here.
pub fn decide(policies: &[Arc<AuthzPolicy>], req: &Request) -> Decision {
    let of = |a: AuthzAction| policies.iter().filter(move |p| p.action == a);
    let first = |a| of(a).find_map(|p| matching(p, req).first().map(|i| (p, *i)));
    let audited: Vec<(ObjectKey, usize)> = of(AuthzAction::Audit)
        .flat_map(|p| matching(p, req).into_iter().map(|i| (p.key.clone(), i)))
        .collect();
    let allows = of(AuthzAction::Allow).count();
    let hit = first(AuthzAction::Deny)
        .map(|h| (Verdict::Deny, h))
        .or_else(|| first(AuthzAction::Allow).map(|h| (Verdict::Allow, h)));
    let name = |p: &AuthzPolicy, i| format!("{} rule[{i}] ({})", p.key, p.action.name());
    let (verdict, reason) = match hit {
        Some((Verdict::Deny, (p, i))) => (Verdict::Deny, format!("denied by {}", name(p, i))),
        Some((v, (p, i))) => (v, format!("allowed by {}", name(p, i))),
        None if allows == 0 => (Verdict::Allow, "allowed: no ALLOW policy applies".into()),
        None => (Verdict::Deny, "denied: no ALLOW rule matched".into()),
    };
    Decision {
        verdict,
        reason,
        policy: hit.map(|(_, (p, _))| p.key.clone()),
        rule: hit.map(|(_, (_, i))| i),
        audited,
    }
}

/// The indices of the rules of `p` that match.
fn matching(p: &AuthzPolicy, req: &Request) -> Vec<usize> {
    let rules = p.rules.iter().enumerate();
    rules
        .filter(|(_, r)| rule_matches(r, p.action, req))
        .map(|(i, _)| i)
        .collect()
}

/// (from empty or any source) AND (to empty or any operation) AND every condition.
fn rule_matches(rule: &Rule, action: AuthzAction, req: &Request) -> bool {
    (rule.from.is_empty() || rule.from.iter().any(|f| source(&f.source, action, req)))
        && (rule.to.is_empty() || rule.to.iter().any(|t| operation(&t.operation, action, req)))
        && rule.when.iter().all(|c| condition(c, action, req))
}

/// `values` empty or any matches, and none of `not_values` matches; `f(value, negated)`.
fn field(values: &[String], not_values: &[String], f: impl Fn(&str, bool) -> bool) -> bool {
    (values.is_empty() || values.iter().any(|v| f(v, false)))
        && !not_values.iter().any(|v| f(v, true))
}

/// Istio's string forms: `*` (anything), `*suffix`, `prefix*`, exact.
fn wild(v: &str, s: &str, ignore_case: bool) -> bool {
    if v == "*" {
        return true;
    }
    let (v, s) = if ignore_case {
        (v.to_ascii_lowercase(), s.to_ascii_lowercase())
    } else {
        (v.to_string(), s.to_string())
    };
    if let Some(suffix) = v.strip_prefix('*') {
        s.ends_with(suffix)
    } else if let Some(prefix) = v.strip_suffix('*') {
        s.starts_with(prefix)
    } else {
        s == v
    }
}

fn in_cidr(v: &str, ip: Option<IpAddr>) -> bool {
    let (Ok((net, len)), Some(ip)) = (parse_cidr(v), ip) else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// The verified peer against an Istio principal (`td/ns/x/sa/y`, `*` forms).
fn principal(v: &str, req: &Request) -> bool {
    let Some(p) = req.source_principal else {
        return false;
    };
    if v == "*" {
        p.starts_with("spiffe://")
    } else if let Some(suffix) = v.strip_prefix('*') {
        p.ends_with(suffix)
    } else if let Some(prefix) = v.strip_suffix('*') {
        p.strip_prefix("spiffe://")
            .is_some_and(|r| r.starts_with(prefix))
    } else {
        p.strip_prefix("spiffe://") == Some(v)
    }
}

/// (namespace, service account) of `spiffe://<td>/ns/<ns>/sa/<sa>` as the translated regex
/// `^spiffe://[^/]+/ns/<ns>/sa/[^/]+$` splits it.
fn spiffe_parts(p: &str) -> Option<(&str, &str)> {
    let (td, rest) = p.strip_prefix("spiffe://")?.split_once('/')?;
    let (mid, sa) = rest.strip_prefix("ns/")?.rsplit_once('/')?;
    let ns = mid.strip_suffix("/sa")?;
    (!td.is_empty() && !sa.is_empty()).then_some((ns, sa))
}

/// The verified peer's namespace against a value (`*` forms stay within one segment).
fn namespace(v: &str, req: &Request) -> bool {
    let Some((ns, _)) = req.source_principal.and_then(spiffe_parts) else {
        return false;
    };
    if v == "*" {
        !ns.is_empty() && !ns.contains('/')
    } else if let Some(suffix) = v.strip_prefix('*') {
        ns.strip_suffix(suffix).is_some_and(|r| !r.contains('/'))
    } else if let Some(prefix) = v.strip_suffix('*') {
        ns.strip_prefix(prefix).is_some_and(|r| !r.contains('/'))
    } else {
        ns == v
    }
}

/// `ns/sa` against the verified peer.
fn service_account(v: &str, req: &Request) -> bool {
    let Some(want) = v.split_once('/') else {
        return false;
    };
    req.source_principal.and_then(spiffe_parts) == Some(want)
}

/// A claim of the verified token (`path` below the payload): a string, or a list with an
/// element that matches; `*`: present.
fn claim(path: &[&str], v: &str, req: &Request) -> bool {
    let Some(mut cur) = req.jwt else {
        return false;
    };
    for k in path {
        match cur.get(k) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    if v == "*" {
        return true;
    }
    match cur {
        serde_json::Value::String(s) => wild(v, s, false),
        serde_json::Value::Array(items) => items
            .iter()
            .any(|i| i.as_str().is_some_and(|s| wild(v, s, false))),
        _ => false,
    }
}

/// `<iss>/<sub>` against the verified token (forms: `*`, `iss/sub`, `iss/*`, `*/sub`).
fn request_principal(v: &str, req: &Request) -> bool {
    if v == "*" {
        return claim(&["iss"], "*", req);
    }
    let Some((iss, sub)) = v.rsplit_once('/') else {
        return false;
    };
    claim(&["iss"], iss, req) && claim(&["sub"], sub, req)
}

fn source(s: &Source, action: AuthzAction, req: &Request) -> bool {
    let f =
        |vals: &[String], nots: &[String], m: &dyn Fn(&str) -> bool| field(vals, nots, |v, _| m(v));
    let remote = req.remote_ip.or(req.source_ip);
    f(&s.principals, &s.not_principals, &|v| principal(v, req))
        && f(&s.namespaces, &s.not_namespaces, &|v| namespace(v, req))
        && f(&s.service_accounts, &s.not_service_accounts, &|v| {
            service_account(v, req)
        })
        && f(&s.ip_blocks, &s.not_ip_blocks, &|v| {
            in_cidr(v, req.source_ip)
        })
        && f(&s.remote_ip_blocks, &s.not_remote_ip_blocks, &|v| {
            in_cidr(v, remote)
        })
        && match req.http {
            // Request principals are HTTP-only: on TCP an ALLOW source using them never
            // matches, a DENY/AUDIT source drops them.
            None => {
                action != AuthzAction::Allow
                    || (s.request_principals.is_empty() && s.not_request_principals.is_empty())
            }
            Some(_) => f(&s.request_principals, &s.not_request_principals, &|v| {
                request_principal(v, req)
            }),
        }
}

/// The host with and without a port and the root's trailing dot, ignoring case.
fn host(v: &str, authority: &str) -> bool {
    if v == "*" {
        return true;
    }
    let (v, a) = (v.to_ascii_lowercase(), authority.to_ascii_lowercase());
    if let Some(s) = v.strip_prefix('*') {
        a.ends_with(s)
            || a.ends_with(&format!("{s}."))
            || a.contains(&format!("{s}:"))
            || a.contains(&format!("{s}.:"))
    } else if let Some(p) = v.strip_suffix('*') {
        a.starts_with(p)
    } else {
        a == v
            || a == format!("{v}.")
            || a.starts_with(&format!("{v}:"))
            || a.starts_with(&format!("{v}.:"))
    }
}

/// One `to.operation`.
fn operation(o: &Operation, action: AuthzAction, req: &Request) -> bool {
    let http_fields = [
        &o.hosts,
        &o.not_hosts,
        &o.methods,
        &o.not_methods,
        &o.paths,
        &o.not_paths,
    ];
    let http_only = http_fields.iter().any(|f| !f.is_empty());
    let http_ok = match &req.http {
        // TCP: an ALLOW rule using HTTP-only fields matches nothing; DENY/AUDIT drop them.
        None => !(http_only && action == AuthzAction::Allow),
        Some(h) => {
            // A positive match ignores case when matching more is safe (DENY, AUDIT); an
            // exclusion when excluding more is (ALLOW).
            let broad = action != AuthzAction::Allow;
            let path = h.path.split(['?', '#']).next().unwrap_or("");
            field(&o.hosts, &o.not_hosts, |v, _| host(v, h.host))
                && field(&o.methods, &o.not_methods, |v, _| v == h.method)
                && field(&o.paths, &o.not_paths, |v, neg| wild(v, path, broad != neg))
        }
    };
    http_ok && field(&o.ports, &o.not_ports, |v, _| port_is(v, req))
}

fn port_is(v: &str, req: &Request) -> bool {
    v.parse::<u32>() == Ok(req.destination_port)
}

/// A header's value as Envoy matches it: all of its values joined by `,`.
fn header_value(h: &HttpAttrs, name: &str) -> Option<String> {
    let name = name.to_ascii_lowercase();
    match name.as_str() {
        ":method" => return Some(h.method.into()),
        ":path" => return Some(h.path.into()),
        ":authority" => return Some(h.host.into()),
        _ => {}
    }
    let vals: Vec<&str> = h
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(&name))
        .map(|(_, v)| v.as_str())
        .collect();
    (!vals.is_empty()).then(|| vals.join(","))
}

/// One `when` condition.
fn condition(c: &Condition, action: AuthzAction, req: &Request) -> bool {
    let f = |m: &dyn Fn(&str) -> bool| field(&c.values, &c.not_values, |v, _| m(v));
    match c.key.as_str() {
        "source.ip" => f(&|v| in_cidr(v, req.source_ip)),
        "remote.ip" => f(&|v| in_cidr(v, req.remote_ip.or(req.source_ip))),
        "source.namespace" => f(&|v| namespace(v, req)),
        "source.principal" => f(&|v| principal(v, req)),
        "destination.ip" => f(&|v| in_cidr(v, req.destination_ip)),
        "destination.port" => f(&|v| port_is(v, req)),
        "connection.sni" => f(&|v| wild(v, req.sni.unwrap_or(""), false)),
        k if k.starts_with("request.auth.") && req.http.is_some() => match k {
            "request.auth.principal" => f(&|v| request_principal(v, req)),
            "request.auth.audiences" => f(&|v| claim(&["aud"], v, req)),
            "request.auth.presenter" => f(&|v| claim(&["azp"], v, req)),
            k => match claim_path(k) {
                Some(path) => f(&|v| claim(&path, v, req)),
                None => action != AuthzAction::Allow,
            },
        },
        k => match (header_key(k), &req.http) {
            (Some(name), Some(h)) => {
                let val = header_value(h, name);
                f(&|v| match &val {
                    None => false,
                    Some(_) if v == "*" => true,
                    Some(x) => wild(v, x, false),
                })
            }
            // TCP: an ALLOW rule never matches, DENY/AUDIT drop the condition. An unknown
            // key (refused by validation) fails closed the same way.
            _ => action != AuthzAction::Allow,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parse_file;
    use crate::model::{Index, MeshConfig};

    const PEER: &str = "spiffe://cluster.local/ns/default/sa/a";

    /// Policies from lines `<name> <ACTION> <rules YAML>`, validated and resolved.
    fn policies(spec: &str) -> Vec<Arc<AuthzPolicy>> {
        let mut text = String::new();
        for line in spec.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let mut parts = line.splitn(3, ' ');
            let (name, action) = (parts.next().unwrap(), parts.next().unwrap());
            let rules = parts.next().unwrap();
            text += &format!(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                 metadata: {{name: {name}, namespace: default}}\n\
                 spec:\n  action: {action}\n  rules: {rules}\n---\n"
            );
        }
        let (res, errs) = parse_file("t.yaml", &text);
        assert!(errs.is_empty(), "{errs:?}");
        let mut ix = Index::new(MeshConfig::default());
        ix.apply_file("t.yaml", res, errs);
        let w = ix.snapshot();
        assert!(w.errors.is_empty(), "{:?}", w.errors);
        w.authz.clone()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    /// Decide on a request written as words: `GET /path` (or `TCP` for a plain
    /// connection), then `host=` (default `b`), `peer=` (`none`: plaintext; default
    /// PEER), `ip=` (default 10.0.0.1), `remote=`, `port=` (default 8080), `sni=`, and
    /// `h:<name>=<value>` headers. The destination is 10.2.2.2.
    fn on(ps: &[Arc<AuthzPolicy>], spec: &str) -> Decision {
        let mut words = spec.split_whitespace();
        let method = words.next().expect("a method or TCP");
        let path = (method != "TCP").then(|| words.next().expect("a path"));
        let mut req = Request {
            source_principal: Some(PEER),
            source_ip: ip("10.0.0.1"),
            destination_ip: ip("10.2.2.2"),
            destination_port: 8080,
            ..Default::default()
        };
        let (mut host, mut headers) = ("b", Vec::new());
        for w in words {
            match w.split_once('=').expect("key=value") {
                ("host", v) => host = v,
                ("peer", v) => req.source_principal = (v != "none").then_some(v),
                ("ip", v) => req.source_ip = ip(v),
                ("remote", v) => req.remote_ip = ip(v),
                ("port", v) => req.destination_port = v.parse().unwrap(),
                ("sni", v) => req.sni = Some(v),
                (k, v) => {
                    let name = k.strip_prefix("h:").expect("a known key");
                    headers.push((name.to_string(), v.to_string()));
                }
            }
        }
        let headers = &headers;
        req.http = path.map(|path| HttpAttrs {
            method,
            path,
            host,
            headers,
        });
        decide(ps, &req)
    }

    /// Lines of a table: `ALLOW|DENY|AUDIT <rules YAML>` sets the one policy; the lines
    /// after it hold `;`-separated cases `allow <request>` / `deny <request>`; `#` comments.
    fn table(spec: &str) {
        let (mut ps, mut rules) = (Vec::new(), "");
        for line in spec.lines().map(str::trim).filter(|l| !l.is_empty()) {
            match line.split(' ').next().unwrap() {
                "#" => {}
                "ALLOW" | "DENY" | "AUDIT" => (ps, rules) = (policies(&format!("p {line}")), line),
                _ => {
                    for case in line.split(';') {
                        let (want, req) = case.trim().split_once(' ').unwrap();
                        let d = on(&ps, req);
                        let got = format!("{:?}", d.verdict).to_lowercase();
                        assert_eq!(got, want, "{rules}: {req}: {d:?}");
                    }
                }
            }
        }
    }

    /// `<verdict> [<deciding policy>/<rule>] [+<audited policy>/<rule>...]`.
    fn who(d: &Decision) -> String {
        let mut s = format!("{:?}", d.verdict).to_lowercase();
        if let (Some(k), Some(i)) = (&d.policy, d.rule) {
            s += &format!(" {}/{i}", k.name);
        }
        for (k, i) in &d.audited {
            s += &format!(" +{}/{i}", k.name);
        }
        s
    }

    #[test]
    fn no_policy_allows() {
        assert_eq!(who(&on(&[], "GET /")), "allow");
        assert_eq!(who(&on(&[], "TCP peer=none")), "allow");
    }

    #[test]
    fn deny_beats_allow() {
        let ps = policies(
            "a-allow ALLOW [{}]
             b-deny DENY [{}, {to: [{operation: {paths: [/admin]}}]}]",
        );
        assert_eq!(who(&on(&ps[..1], "GET /admin")), "allow a-allow/0");
        let d = on(&ps, "GET /admin");
        assert_eq!(who(&d), "deny b-deny/0", "the first matching rule");
        assert!(d.reason.contains("default/b-deny rule[0]"), "{}", d.reason);
    }

    #[test]
    fn allow_without_rules_denies() {
        table("ALLOW []\n deny GET /; deny TCP");
        assert_eq!(who(&on(&policies("p ALLOW []"), "GET /")), "deny");
    }

    #[test]
    fn allow_with_nothing_matching_denies() {
        let ps = policies(
            "a ALLOW [{from: [{source: {principals: [cluster.local/ns/x/sa/z]}}]}]
             b ALLOW [{to: [{operation: {methods: [PUT]}}]}, {to: [{operation: {methods: [POST]}}]}]",
        );
        assert_eq!(who(&on(&ps, "GET /")), "deny");
        assert_eq!(who(&on(&ps, "POST /")), "allow b/1");
    }

    #[test]
    fn audit_changes_nothing_but_is_listed() {
        let ps = policies(
            "audit AUDIT [{to: [{operation: {methods: [PUT]}}]}, {}]
             deny DENY [{to: [{operation: {paths: [/x]}}]}]",
        );
        assert_eq!(who(&on(&ps, "GET /")), "allow +audit/1");
        assert_eq!(who(&on(&ps, "PUT /x")), "deny deny/0 +audit/0 +audit/1");
        table("AUDIT [{}]\n allow GET /; allow TCP");
    }

    #[test]
    fn not_paths_not_methods_not_principals() {
        table(
            "# ALLOW notPaths ignore case (excluding more is the safe side)
            ALLOW [{to: [{operation: {notPaths: ['/private*']}}]}]
            allow GET /public; deny GET /private/x; deny GET /PRIVATE/x
            ALLOW [{to: [{operation: {notMethods: [DELETE]}}]}]
            allow GET /; deny DELETE /
            # a plaintext peer matches no principal, so it matches notPrincipals
            DENY [{from: [{source: {notPrincipals: [cluster.local/ns/default/sa/a]}}]}]
            allow GET /; deny GET / peer=none
            deny GET / peer=spiffe://cluster.local/ns/default/sa/b",
        );
    }

    #[test]
    fn principals_forms() {
        table(
            "# `*` is any authenticated peer (with a SPIFFE identity)
            ALLOW [{from: [{source: {principals: ['*']}}]}]
            allow GET /; deny GET / peer=none; deny GET / peer=b.example
            ALLOW [{from: [{source: {principals: ['*/sa/a']}}]}]
            allow GET /; deny GET / peer=none; deny GET / peer=spiffe://t/ns/a/sa/b
            ALLOW [{from: [{source: {principals: ['cluster.local/ns/def*']}}]}]
            allow GET /; deny GET / peer=spiffe://cluster.local/ns/d
            ALLOW [{from: [{source: {principals: [cluster.local/ns/default/sa/a]}}]}]
            allow GET /; deny GET / peer=spiffe://x/ns/default/sa/a
            ALLOW [{from: [{source: {principals: ['other.td/*']}}]}]
            deny GET /
            ALLOW [{when: [{key: source.principal, notValues: ['*']}]}]
            deny GET /; allow GET / peer=none",
        );
    }

    #[test]
    fn namespaces_and_wildcards() {
        table(
            "ALLOW [{from: [{source: {namespaces: [default]}}]}]
            allow GET /; deny GET / peer=none; deny GET / peer=spiffe://td/ns/prod/sa/a
            ALLOW [{from: [{source: {namespaces: ['*']}}]}]
            allow GET /; allow GET / peer=spiffe://td/ns/prod/sa/a; deny GET / peer=none
            # `*` is one non-empty path segment, as in the translated regex
            deny GET / peer=spiffe://td/ns/default/x/sa/a; deny GET / peer=spiffe://td/ns//sa/a
            ALLOW [{from: [{source: {namespaces: ['def*']}}]}]
            allow GET /; deny GET / peer=spiffe://td/ns/prod/sa/a
            ALLOW [{from: [{source: {namespaces: ['*ault']}}]}]
            allow GET /; deny GET / peer=spiffe://td/ns/prod/sa/a; deny GET / peer=spiffe://td/ns/x/default/sa/a
            ALLOW [{from: [{source: {notNamespaces: [default]}}]}]
            deny GET /; allow GET / peer=spiffe://td/ns/prod/sa/a
            ALLOW [{when: [{key: source.namespace, values: ['def*']}]}]
            allow GET /; deny GET / peer=spiffe://td/ns/prod/sa/a",
        );
    }

    #[test]
    fn service_accounts() {
        table(
            "ALLOW [{from: [{source: {serviceAccounts: [default/a]}}]}]
            allow GET /; deny GET / peer=none; deny GET / peer=spiffe://td/ns/prod/sa/a
            deny GET / peer=spiffe://cluster.local/ns/default/sa/ab
            DENY [{from: [{source: {notServiceAccounts: [default/a]}}]}]
            allow GET /; deny GET / peer=spiffe://td/ns/prod/sa/a",
        );
    }

    #[test]
    fn ip_blocks_and_remote_ip_blocks() {
        table(
            "# ipBlocks are the direct peer's address, whatever the forwarded one
            ALLOW [{from: [{source: {ipBlocks: ['10.0.0.0/8']}}]}]
            allow GET /; deny GET / ip=192.168.1.1; deny GET / ip=::1; allow TCP
            allow GET / remote=203.0.113.9
            DENY [{from: [{source: {notIpBlocks: ['10.0.0.1']}}]}]
            allow GET /; deny GET / ip=10.0.0.2
            ALLOW [{from: [{source: {ipBlocks: ['0.0.0.0/0', '::/0']}}]}]
            allow GET / ip=192.168.1.1; allow GET / ip=::1
            # the remote address defaults to the direct peer's
            ALLOW [{from: [{source: {remoteIpBlocks: ['203.0.113.0/24']}}]}]
            deny GET /; allow GET / remote=203.0.113.9; allow GET / ip=203.0.113.1
            ALLOW [{from: [{source: {notRemoteIpBlocks: ['203.0.113.0/24']}}]}]
            allow GET /; deny GET / remote=203.0.113.9",
        );
    }

    #[test]
    fn hosts_port_case_trailing_dot() {
        table(
            "ALLOW [{to: [{operation: {hosts: [b.example.com]}}]}]
            allow GET / host=b.example.com; allow GET / host=B.Example.COM
            allow GET / host=b.example.com:8080; allow GET / host=b.example.com.
            allow GET / host=b.example.com.:80; deny GET / host=c.example.com
            deny GET / host=b.example.com.evil; deny GET / host=xb.example.com
            ALLOW [{to: [{operation: {hosts: ['*.example.com']}}]}]
            allow GET / host=a.EXAMPLE.com; allow GET / host=a.example.com:9
            allow GET / host=a.example.com.; deny GET / host=example.org
            ALLOW [{to: [{operation: {hosts: ['B*']}}]}]
            allow GET / host=b.x; deny GET / host=c.b
            DENY [{to: [{operation: {notHosts: [b]}}]}]
            allow GET / host=B:8080; deny GET / host=c",
        );
    }

    #[test]
    fn path_case_rules() {
        table(
            "# DENY paths ignore case: /ADMIN cannot slip past to an app that ignores case
            DENY [{to: [{operation: {paths: ['/admin*']}}]}]
            deny GET /admin/x; deny GET /ADMIN; deny GET /Admin/x; allow GET /public
            # ALLOW paths are case-sensitive: allowing less is the safe side
            ALLOW [{to: [{operation: {paths: ['/admin*']}}]}]
            allow GET /admin/x; deny GET /ADMIN
            # DENY notPaths are case-sensitive: excluding less from the denial
            DENY [{to: [{operation: {notPaths: ['/ok']}}]}]
            allow GET /ok; deny GET /OK
            ALLOW [{to: [{operation: {paths: ['*.css']}}]}]
            allow GET /a/b.css; deny GET /a/b.CSS",
        );
    }

    #[test]
    fn query_is_ignored() {
        table(
            "ALLOW [{to: [{operation: {paths: ['/api']}}]}]
            allow GET /api?x=1; allow GET /api#f; deny GET /api/x?y; deny GET /x?/api
            DENY [{to: [{operation: {paths: ['*.php']}}]}]
            deny GET /x.php?a=b; allow GET /x?a.php",
        );
    }

    #[test]
    fn ports_and_methods() {
        table(
            "# methods are case-sensitive
            ALLOW [{to: [{operation: {ports: ['8080'], methods: [GET, HEAD]}}]}]
            allow GET /; allow HEAD /; deny get /; deny GET / port=9090
            DENY [{to: [{operation: {notPorts: ['8080']}}]}]
            allow GET /; deny GET / port=9090",
        );
    }

    #[test]
    fn when_conditions() {
        let req = "GET / h:x-team=blue h:x-multi=a h:x-multi=b sni=b.default.svc";
        for case in [
            "allow request.headers[x-team] values: ['*']",
            "deny request.headers[x-none] values: ['*']",
            "allow request.headers[X-Team] values: ['blu*']",
            "allow request.headers[x-team] values: ['*lue']",
            "deny request.headers[x-team] values: [Blue]",
            "allow request.headers[x-team] notValues: [red]",
            "allow request.headers[x-none] notValues: [red]",
            "allow request.headers[x-multi] values: ['a,b']",
            "allow source.ip values: ['10.0.0.0/24']",
            "deny source.ip notValues: ['10.0.0.0/8']",
            "allow remote.ip values: ['10.0.0.1']",
            "allow source.principal values: [cluster.local/ns/default/sa/a]",
            "deny source.namespace notValues: [default]",
            "allow destination.ip values: ['10.2.2.0/24']",
            "deny destination.ip values: ['10.3.0.0/16']",
            "allow destination.port values: ['80', '8080']",
            "deny destination.port values: ['80']",
            "allow connection.sni values: ['*.svc']",
            "deny connection.sni values: [other]",
        ] {
            let mut parts = case.splitn(3, ' ');
            let (want, key) = (parts.next().unwrap(), parts.next().unwrap());
            let cond = parts.next().unwrap();
            table(&format!(
                "ALLOW [{{when: [{{key: '{key}', {cond}}}]}}]\n{want} {req}"
            ));
        }
        table(
            "# every condition must match
            ALLOW [{when: [{key: source.ip, values: ['10.0.0.1']}, {key: destination.port, values: ['1']}]}]
            deny GET /
            # no SNI is the empty name, which `*` matches (as in Envoy)
            ALLOW [{when: [{key: connection.sni, values: ['*']}]}]
            allow GET /
            ALLOW [{when: [{key: connection.sni, values: ['*.svc']}]}]
            deny GET /",
        );
    }

    #[test]
    fn from_to_entries_are_ored_and_fields_anded() {
        table(
            "ALLOW [{from: [{source: {namespaces: [prod]}}, {source: {ipBlocks: ['10.0.0.1']}}], to: [{operation: {methods: [POST]}}, {operation: {paths: ['/']}}]}]
            allow GET /; deny GET /x; allow POST /x; deny POST / ip=10.0.0.2
            ALLOW [{from: [{source: {namespaces: [default], ipBlocks: ['192.168.0.0/16']}}]}]
            deny GET /; allow GET / ip=192.168.3.4",
        );
    }

    #[test]
    fn tcp_allow_with_http_fields_never_matches() {
        table(
            "ALLOW [{to: [{operation: {methods: [GET]}}]}]
            deny TCP; allow GET /
            ALLOW [{to: [{operation: {hosts: [b]}}]}]
            deny TCP; allow GET /
            ALLOW [{when: [{key: 'request.headers[x]', notValues: [z]}]}]
            deny TCP; allow GET /
            # ports do apply to TCP, and another operation of the rule may still match
            ALLOW [{to: [{operation: {ports: ['8080']}}]}]
            allow TCP; deny TCP port=1
            ALLOW [{to: [{operation: {paths: ['/x']}}, {operation: {ports: ['8080']}}]}]
            allow TCP
            ALLOW [{to: [{operation: {paths: ['/x'], ports: ['8080']}}]}]
            deny TCP
            ALLOW [{from: [{source: {principals: ['*']}}]}]
            allow TCP; deny TCP peer=none",
        );
    }

    #[test]
    fn tcp_deny_drops_http_fields() {
        table(
            "DENY [{to: [{operation: {paths: ['/admin']}}]}]
            deny TCP; allow GET /x
            DENY [{to: [{operation: {paths: ['/admin'], ports: ['9090']}}]}]
            allow TCP; deny TCP port=9090
            DENY [{when: [{key: 'request.headers[x]', values: [z]}]}]
            deny TCP; allow GET /",
        );
        let audit = policies("p AUDIT [{to: [{operation: {methods: [GET]}}]}]");
        assert_eq!(on(&audit, "TCP").audited.len(), 1);
    }

    #[test]
    fn spiffe_parts_split_like_the_regex() {
        assert_eq!(spiffe_parts(PEER), Some(("default", "a")));
        assert_eq!(spiffe_parts("spiffe://td/ns/a/b/sa/c"), Some(("a/b", "c")));
        let bad = "spiffe:///ns/a/sa/c spiffe://td/ns/a/sa/ spiffe://td/ns/sa/c td/ns/a/sa/c";
        for bad in bad.split(' ') {
            assert_eq!(spiffe_parts(bad), None, "{bad}");
        }
    }
}

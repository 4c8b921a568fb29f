//! The built-in provider's decision (Mixer's role), pure: for a request a CUSTOM policy
//! with `provider: {name: pilotfish}` selected, the mesh's own ALLOW/DENY decision for the
//! destination workload, shaped by that policy's annotations (deny status and body, headers
//! to add and remove, a rate quota). The quota's token bucket is the server's state.
//!
//! ```text
//!  CheckInput ─► destination workload (registry, by address) ─► its port's policies
//!             ─► decide() ─► deny: status/body │ allow: quota key, header mutations
//! ```

use super::decide::{decide, HttpAttrs, Request, Verdict};
use crate::api::security::{BuiltinSettings, RateLimit};
use crate::api::ObjectKey;
use crate::model::{AuthzAction, AuthzPolicy, World};
use std::net::IpAddr;
use std::sync::Arc;

/// What the built-in provider reads of one Check.
#[derive(Debug, Clone, Default)]
pub struct CheckInput<'a> {
    pub source_principal: Option<&'a str>,
    pub source_ip: Option<IpAddr>,
    pub destination_ip: Option<IpAddr>,
    pub destination_port: u32,
    pub sni: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub host: &'a str,
    pub headers: Vec<(String, String)>,
    pub jwt: Option<&'a serde_json::Value>,
    /// The RBAC policy id of the CUSTOM rule that selected the request
    /// (`ns[NS]-policy[NAME]-rule[I]`).
    pub custom_rule: Option<&'a str>,
}

/// The built-in provider's answer before the quota is charged.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// Status and body of a denial.
    pub status: u32,
    pub body: String,
    pub add_headers: Vec<(String, String)>,
    pub remove_headers: Vec<String>,
    /// Charge one token of this bucket (key, limit) before allowing.
    pub quota: Option<(String, RateLimit)>,
    pub reason: String,
    /// The CUSTOM policy whose settings applied.
    pub custom: Option<ObjectKey>,
}

/// `ns[NS]-policy[NAME]-rule[I]` → (namespace, name).
fn parse_rule_id(id: &str) -> Option<(&str, &str)> {
    let ns = id.strip_prefix("ns[")?;
    let (ns, rest) = ns.split_once("]-policy[")?;
    let (name, _) = rest.rsplit_once("]-rule[")?;
    Some((ns, name))
}

fn denied(status: u32, body: &str, reason: String, custom: Option<ObjectKey>) -> Outcome {
    Outcome {
        verdict: Verdict::Deny,
        status,
        body: body.into(),
        add_headers: vec![],
        remove_headers: vec![],
        quota: None,
        reason,
        custom,
    }
}

/// Decide one Check from the World.
pub fn check(world: &World, input: &CheckInput) -> Outcome {
    let Some(dest) = input.destination_ip else {
        return denied(403, "", "no destination address".into(), None);
    };
    let dest_s = dest.to_string();
    let Some((_, policies)) = world.authz_at(&dest_s, input.destination_port) else {
        return denied(
            403,
            "",
            format!("{dest_s} is no workload of the registry"),
            None,
        );
    };
    let builtin = |p: &&Arc<AuthzPolicy>| {
        p.action == AuthzAction::Custom
            && p.provider.as_deref() == Some(crate::api::mesh::BUILTIN_PROVIDER)
    };
    // The CUSTOM policy that selected the request (named by its RBAC rule id), else the
    // first built-in one applying here.
    let custom = input
        .custom_rule
        .and_then(parse_rule_id)
        .and_then(|(ns, name)| {
            policies
                .iter()
                .filter(builtin)
                .find(|p| p.key.namespace == ns && p.key.name == name)
        })
        .or_else(|| policies.iter().find(builtin));
    let settings = custom
        .and_then(|p| p.builtin.clone())
        .unwrap_or(BuiltinSettings {
            deny_status: 403,
            ..Default::default()
        });
    let custom_key = custom.map(|p| p.key.clone());
    let req = Request {
        source_principal: input.source_principal,
        source_ip: input.source_ip,
        remote_ip: None,
        destination_ip: Some(dest),
        destination_port: input.destination_port,
        sni: input.sni,
        http: Some(HttpAttrs {
            method: input.method,
            path: input.path,
            host: input.host,
            headers: &input.headers,
        }),
        jwt: input.jwt,
    };
    let d = decide(&policies, &req);
    if d.verdict == Verdict::Deny {
        return denied(
            settings.deny_status,
            &settings.deny_body,
            d.reason,
            custom_key,
        );
    }
    let quota = settings.rate.clone().map(|r| {
        let mut key = custom_key
            .as_ref()
            .map(|k| format!("{}/{}", k.namespace, k.name))
            .unwrap_or_default();
        if r.by_source {
            key.push_str(&format!(
                "|src={}",
                input
                    .source_principal
                    .map(str::to_string)
                    .or(input.source_ip.map(|i| i.to_string()))
                    .unwrap_or_default()
            ));
        }
        if r.by_destination {
            key.push_str(&format!("|dst={dest_s}:{}", input.destination_port));
        }
        if r.by_path {
            key.push_str(&format!(
                "|path={}",
                input.path.split(['?', '#']).next().unwrap_or("")
            ));
        }
        (key, r)
    });
    Outcome {
        verdict: Verdict::Allow,
        status: 200,
        body: String::new(),
        add_headers: settings.add_headers,
        remove_headers: settings.remove_headers,
        quota,
        reason: d.reason,
        custom: custom_key,
    }
}

/// Token buckets shared by every stream of one pilotfish (Mixer's memquota), bounded: when
/// full, buckets that are full again (idle) are dropped first, then the oldest.
pub struct Quotas {
    buckets: std::collections::HashMap<String, Bucket>,
    max: usize,
}

struct Bucket {
    tokens: f64,
    at: std::time::Instant,
}

impl Quotas {
    pub fn new(max: usize) -> Quotas {
        Quotas {
            buckets: Default::default(),
            max,
        }
    }

    /// Take one token from `key`'s bucket at time `now`; false when it is empty.
    pub fn take(&mut self, key: &str, limit: &RateLimit, now: std::time::Instant) -> bool {
        let rate = limit.tokens as f64 / limit.per_ms as f64; // tokens per ms
        let burst = limit.burst as f64;
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max {
            self.evict(now, rate, burst);
        }
        let b = self.buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64() * 1000.0;
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn evict(&mut self, now: std::time::Instant, rate: f64, burst: f64) {
        let full: Vec<String> = self
            .buckets
            .iter()
            .filter(|(_, b)| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * 1000.0 * rate
                    >= burst
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in full {
            self.buckets.remove(&k);
        }
        while self.buckets.len() >= self.max {
            let oldest = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.at)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.buckets.remove(&k);
                }
                None => break,
            }
        }
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MeshConfig;
    use std::time::{Duration, Instant};

    const REGISTRY: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  selector: {app: b}\n  ports: [{name: http, port: 8080}]\n---\n\
        apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: b-1}\nspec:\n  address: 10.2.2.2\n  serviceAccount: b\n  labels: {app: b}\n---\n";

    fn world(policies: &str) -> World {
        let text = format!("{REGISTRY}{policies}");
        let mesh = MeshConfig {
            builtin_authz: Some("10.0.0.1:15012".into()),
            ..Default::default()
        };
        let w = crate::app::world_from_files(&[("t.yaml", text.as_str())], mesh);
        assert!(w.errors.is_empty(), "{:?}", w.errors);
        w
    }

    const CUSTOM: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: quota\n  annotations:\n    authz.pilotfish.io/deny-status: \"418\"\n    authz.pilotfish.io/deny-body: teapot\n    authz.pilotfish.io/request-headers-to-add: \"x-checked=pilotfish\"\n    authz.pilotfish.io/request-headers-to-remove: x-secret\n    authz.pilotfish.io/rate-limit: 2/s\n    authz.pilotfish.io/rate-limit-by: source,path\nspec:\n  selector: {matchLabels: {app: b}}\n  action: CUSTOM\n  provider: {name: pilotfish}\n  rules: [{to: [{operation: {paths: [\"/api/*\"]}}]}]\n---\n";
    const DENY_C: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-c}\nspec:\n  selector: {matchLabels: {app: b}}\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/c]}}]}]\n";

    fn input<'a>(principal: &'a str, path: &'a str) -> CheckInput<'a> {
        CheckInput {
            source_principal: Some(principal),
            destination_ip: Some("10.2.2.2".parse().unwrap()),
            destination_port: 8080,
            method: "GET",
            path,
            host: "b",
            custom_rule: Some("ns[default]-policy[quota]-rule[0]"),
            ..Default::default()
        }
    }

    #[test]
    fn allow_carries_headers_and_quota_deny_carries_status_and_body() {
        let w = world(&format!("{CUSTOM}{DENY_C}"));
        let ok = check(
            &w,
            &input("spiffe://cluster.local/ns/default/sa/a", "/api/x?q=1"),
        );
        assert_eq!(ok.verdict, Verdict::Allow, "{}", ok.reason);
        assert_eq!(
            ok.add_headers,
            vec![("x-checked".into(), "pilotfish".into())]
        );
        assert_eq!(ok.remove_headers, vec!["x-secret".to_string()]);
        let (key, limit) = ok.quota.unwrap();
        assert_eq!(
            key,
            "default/quota|src=spiffe://cluster.local/ns/default/sa/a|path=/api/x"
        );
        assert_eq!((limit.tokens, limit.per_ms, limit.burst), (2, 1000, 2));
        let no = check(
            &w,
            &input("spiffe://cluster.local/ns/default/sa/c", "/api/x"),
        );
        assert_eq!(
            (no.verdict, no.status, no.body.as_str()),
            (Verdict::Deny, 418, "teapot")
        );
        assert!(no.reason.contains("deny-c"), "{}", no.reason);
    }

    #[test]
    fn unknown_destination_is_denied() {
        let w = world(CUSTOM);
        let mut i = input("spiffe://cluster.local/ns/default/sa/a", "/api/x");
        i.destination_ip = Some("10.9.9.9".parse().unwrap());
        assert_eq!(check(&w, &i).verdict, Verdict::Deny);
    }

    #[test]
    fn token_bucket_refills_and_is_bounded() {
        let limit = RateLimit {
            tokens: 2,
            per_ms: 1000,
            burst: 2,
            ..Default::default()
        };
        let mut q = Quotas::new(3);
        let t0 = Instant::now();
        assert!(q.take("k", &limit, t0));
        assert!(q.take("k", &limit, t0));
        assert!(!q.take("k", &limit, t0), "burst spent");
        assert!(
            q.take("k", &limit, t0 + Duration::from_millis(500)),
            "one token refilled"
        );
        assert!(!q.take("k", &limit, t0 + Duration::from_millis(500)));
        for i in 0..10 {
            q.take(
                &format!("other{i}"),
                &limit,
                t0 + Duration::from_millis(600),
            );
        }
        assert!(q.len() <= 3, "bounded: {}", q.len());
    }
}

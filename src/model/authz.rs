//! AuthorizationPolicies resolved to what a workload's inbound side enforces: which
//! policies apply to which workload port, with Istio's scopes (mesh: the root namespace
//! without a selector; namespace; workload by selector; service by targetRef).

use super::*;
use crate::api::security::Rule;

/// What a policy does when a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum AuthzAction {
    Allow,
    Deny,
    /// Logged and counted; never changes the decision.
    Audit,
    /// Asks an ext_authz provider (`AuthzPolicy::provider`) first.
    Custom,
}

impl AuthzAction {
    pub fn parse(s: Option<&str>) -> Option<AuthzAction> {
        match s.unwrap_or("ALLOW") {
            "ALLOW" => Some(AuthzAction::Allow),
            "DENY" => Some(AuthzAction::Deny),
            "AUDIT" => Some(AuthzAction::Audit),
            "CUSTOM" => Some(AuthzAction::Custom),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            AuthzAction::Allow => "ALLOW",
            AuthzAction::Deny => "DENY",
            AuthzAction::Audit => "AUDIT",
            AuthzAction::Custom => "CUSTOM",
        }
    }
}

/// Which workloads a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum AuthzTarget {
    /// No selector: every workload of its namespace (of the mesh, in the root namespace).
    Namespace,
    /// Workloads whose labels carry the selector (in any namespace, from the root namespace).
    Selector(BTreeMap<String, String>),
    /// The workloads behind these services (FQDNs), on those services' ports only.
    Services(Vec<String>),
}

/// One AuthorizationPolicy, validated and resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct AuthzPolicy {
    pub key: ObjectKey,
    pub namespace: String,
    pub target: AuthzTarget,
    pub action: AuthzAction,
    /// CUSTOM: the ext_authz provider's name.
    pub provider: Option<String>,
    pub rules: Vec<Rule>,
    /// CUSTOM with the built-in provider: its annotations' settings.
    pub builtin: Option<crate::api::security::BuiltinSettings>,
}

/// One RequestAuthentication, resolved (its target is never `Services`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RequestAuthn {
    pub key: ObjectKey,
    pub namespace: String,
    pub target: AuthzTarget,
    pub rules: Vec<Arc<crate::api::security::JwtRule>>,
    /// Each rule's inline `jwks`, shared (not copied per proxy).
    pub inline_jwks: Vec<Option<Arc<str>>>,
}

/// A JWT rule with the keys it verifies with: inline, fetched, or `Err` (not fetched yet or
/// the fetch failed: tokens of this issuer are refused).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct JwtProviderCfg {
    /// `<namespace>/<name>/<rule index>`.
    pub name: String,
    pub rule: Arc<crate::api::security::JwtRule>,
    pub jwks: Result<Arc<str>, String>,
}

/// The policies that apply to one workload port, in (namespace, name) order.
pub type PortPolicies = Vec<Arc<AuthzPolicy>>;

impl World {
    /// Policies applying to a workload (namespace and labels) whatever the port: mesh-wide,
    /// namespace-wide and selector policies. Service-targeted ones come from
    /// `authz_for_port`.
    pub fn authz_for_workload(&self, ns: &str, labels: &BTreeMap<String, String>) -> PortPolicies {
        let root = &self.mesh.root_namespace;
        self.authz
            .iter()
            .filter(|p| match &p.target {
                AuthzTarget::Namespace => p.namespace == ns || p.namespace == *root,
                AuthzTarget::Selector(sel) => {
                    (p.namespace == ns || p.namespace == *root) && selects(sel, labels)
                }
                AuthzTarget::Services(_) => false,
            })
            .cloned()
            .collect()
    }

    /// The JWT rules of the RequestAuthentications applying to a workload (mesh, namespace,
    /// selector), each with its keys.
    pub fn jwt_for_workload(
        &self,
        ns: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<JwtProviderCfg> {
        let root = &self.mesh.root_namespace;
        let mut out = Vec::new();
        for ra in &self.request_authn {
            let applies = (ra.namespace == ns || ra.namespace == *root)
                && match &ra.target {
                    AuthzTarget::Namespace => true,
                    AuthzTarget::Selector(sel) => selects(sel, labels),
                    AuthzTarget::Services(_) => false,
                };
            if !applies {
                continue;
            }
            for (i, rule) in ra.rules.iter().enumerate() {
                let jwks = match (&ra.inline_jwks[i], &rule.jwks_uri) {
                    (Some(j), _) => Ok(j.clone()),
                    (None, Some(u)) => self
                        .jwks
                        .get(u)
                        .cloned()
                        .unwrap_or_else(|| Err(format!("{u} not fetched yet"))),
                    (None, None) => Err("no keys".into()),
                };
                out.push(JwtProviderCfg {
                    name: format!("{}/{}/{i}", ra.namespace, ra.key.name),
                    rule: rule.clone(),
                    jwks,
                });
            }
        }
        out
    }

    /// Every JWKS URI a RequestAuthentication names, with its fetch timeout (the rule's
    /// `timeout`, else 5 s): what the fetcher keeps current.
    pub fn jwks_wanted(&self) -> BTreeMap<String, std::time::Duration> {
        self.request_authn
            .iter()
            .flat_map(|r| r.rules.iter())
            .filter_map(|j| {
                let t = j
                    .timeout
                    .as_deref()
                    .and_then(|t| crate::api::parse_duration(t).ok())
                    .unwrap_or(std::time::Duration::from_secs(5));
                Some((j.jwks_uri.clone()?, t))
            })
            .collect()
    }

    /// The workload listening at `ip` (its registry endpoint) and the policies applying to
    /// its `port`, as its sidecar has them.
    pub fn authz_at<'a>(&'a self, ip: &'a str, port: u32) -> Option<(&'a Endpoint, PortPolicies)> {
        let (_, ep) = self.instances_of(ip).next()?;
        let proxy = Proxy {
            namespace: ep.namespace.clone(),
            labels: ep.labels.clone(),
            ips: vec![ip.to_string()],
            ..Default::default()
        };
        let workload = self.authz_for_workload(&proxy.namespace, &proxy.labels);
        Some((ep, self.authz_for_port(&proxy, &workload, port)))
    }

    /// The ext_authz providers the sidecars' filters name: the mesh config's, and the
    /// built-in one when it is on. All of them are always in the filter chain (a CUSTOM
    /// policy only enables one per route), so a new CUSTOM policy never changes a listener
    /// and reaches kept-alive connections too.
    pub fn authz_providers(&self) -> Vec<crate::model::ExtAuthzProvider> {
        let mut out = self.mesh.ext_authz.clone();
        out.extend(self.mesh.builtin_provider());
        out
    }

    /// Every policy that applies to workload port `port` of the proxy: the workload's own
    /// plus those targeting a service that has this proxy as an endpoint on that port.
    pub fn authz_for_port(
        &self,
        proxy: &Proxy,
        workload: &PortPolicies,
        port: u32,
    ) -> PortPolicies {
        let mut out = workload.clone();
        for p in &self.authz {
            let AuthzTarget::Services(hosts) = &p.target else {
                continue;
            };
            let hit = proxy.ips.iter().any(|ip| {
                self.instances_of(ip).any(|(svc, ep)| {
                    hosts.contains(&svc.hostname)
                        && svc.ports.iter().any(|sp| svc.endpoint_port(sp, ep) == port)
                })
            });
            if hit {
                out.push(p.clone());
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }
}

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

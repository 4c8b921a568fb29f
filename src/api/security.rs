//! `security.istio.io` resource specs (v1, v1beta1). Parsed and validated now; enforced by
//! the security and authorization issues.

use super::networking::{spec, WorkloadSelector};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

spec! {
    pub struct PeerAuthentication {
        pub selector: Option<WorkloadSelector>,
        pub mtls: Option<MtlsMode>,
        #[serde(default)] pub port_level_mtls: BTreeMap<String, MtlsMode>,
    }
}

spec! {
    pub struct MtlsMode {
        pub mode: Option<String>,
    }
}

spec! {
    pub struct PolicyTargetReference {
        #[serde(default)] pub group: String,
        pub kind: String,
        pub name: String,
        #[serde(default)] pub namespace: String,
    }
}

spec! {
    pub struct AuthorizationPolicy {
        pub selector: Option<WorkloadSelector>,
        pub target_ref: Option<PolicyTargetReference>,
        #[serde(default)] pub target_refs: Vec<PolicyTargetReference>,
        #[serde(default)] pub rules: Vec<Rule>,
        pub action: Option<String>,
        pub provider: Option<ExtensionProvider>,
    }
}

spec! {
    pub struct ExtensionProvider {
        pub name: String,
    }
}

spec! {
    pub struct Rule {
        #[serde(default)] pub from: Vec<RuleFrom>,
        #[serde(default)] pub to: Vec<RuleTo>,
        #[serde(default)] pub when: Vec<Condition>,
    }
}

spec! {
    pub struct RuleFrom {
        pub source: Source,
    }
}

spec! {
    pub struct RuleTo {
        pub operation: Operation,
    }
}

spec! {
    pub struct Source {
        #[serde(default)] pub principals: Vec<String>,
        #[serde(default)] pub not_principals: Vec<String>,
        #[serde(default)] pub request_principals: Vec<String>,
        #[serde(default)] pub not_request_principals: Vec<String>,
        #[serde(default)] pub namespaces: Vec<String>,
        #[serde(default)] pub not_namespaces: Vec<String>,
        #[serde(default)] pub service_accounts: Vec<String>,
        #[serde(default)] pub not_service_accounts: Vec<String>,
        #[serde(default)] pub ip_blocks: Vec<String>,
        #[serde(default)] pub not_ip_blocks: Vec<String>,
        #[serde(default)] pub remote_ip_blocks: Vec<String>,
        #[serde(default)] pub not_remote_ip_blocks: Vec<String>,
    }
}

spec! {
    pub struct Operation {
        #[serde(default)] pub hosts: Vec<String>,
        #[serde(default)] pub not_hosts: Vec<String>,
        #[serde(default)] pub ports: Vec<String>,
        #[serde(default)] pub not_ports: Vec<String>,
        #[serde(default)] pub methods: Vec<String>,
        #[serde(default)] pub not_methods: Vec<String>,
        #[serde(default)] pub paths: Vec<String>,
        #[serde(default)] pub not_paths: Vec<String>,
    }
}

spec! {
    pub struct Condition {
        pub key: String,
        #[serde(default)] pub values: Vec<String>,
        #[serde(default)] pub not_values: Vec<String>,
    }
}

spec! {
    pub struct RequestAuthentication {
        pub selector: Option<WorkloadSelector>,
        pub target_ref: Option<PolicyTargetReference>,
        #[serde(default)] pub target_refs: Vec<PolicyTargetReference>,
        #[serde(default)] pub jwt_rules: Vec<JwtRule>,
    }
}

spec! {
    pub struct JwtRule {
        pub issuer: String,
        #[serde(default)] pub audiences: Vec<String>,
        pub jwks_uri: Option<String>,
        pub jwks: Option<String>,
        #[serde(default)] pub from_headers: Vec<JwtHeader>,
        #[serde(default)] pub from_params: Vec<String>,
        #[serde(default)] pub from_cookies: Vec<String>,
        pub output_payload_to_header: Option<String>,
        pub forward_original_token: Option<bool>,
        #[serde(default)] pub output_claim_to_headers: Vec<ClaimToHeader>,
        pub timeout: Option<String>,
    }
}

spec! {
    pub struct JwtHeader {
        pub name: String,
        #[serde(default)] pub prefix: String,
    }
}

spec! {
    pub struct ClaimToHeader {
        pub header: String,
        pub claim: String,
    }
}

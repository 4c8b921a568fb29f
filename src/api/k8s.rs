//! The Kubernetes core kinds the registry reads: Service, Endpoints, EndpointSlice, Pod,
//! Namespace. Unknown fields are tolerated here (objects exported from a cluster carry
//! `status`, `clusterIP`, managed fields ...); only what the registry needs is typed.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default)]
    pub ports: Vec<K8sServicePort>,
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: String,
    #[serde(default, rename = "type")]
    pub service_type: String,
    /// External addresses (an east-west gateway's, for multi-network meshes).
    #[serde(default, rename = "externalIPs")]
    pub external_ips: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct K8sServicePort {
    #[serde(default)]
    pub name: String,
    pub port: u32,
    pub target_port: Option<IntOrString>,
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub app_protocol: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(u32),
    String(String),
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSubset {
    #[serde(default)]
    pub addresses: Vec<EndpointAddress>,
    #[serde(default)]
    pub not_ready_addresses: Vec<EndpointAddress>,
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointAddress {
    pub ip: String,
    pub target_ref: Option<ObjectReference>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    #[serde(default)]
    pub name: String,
    pub port: u32,
    #[serde(default)]
    pub protocol: String,
}

/// The top-level body of an EndpointSlice (it has no `spec`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSliceBody {
    #[serde(default)]
    pub address_type: String,
    #[serde(default)]
    pub endpoints: Vec<SliceEndpoint>,
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceEndpoint {
    #[serde(default)]
    pub addresses: Vec<String>,
    pub conditions: Option<SliceConditions>,
    pub target_ref: Option<ObjectReference>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceConditions {
    pub ready: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodBody {
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub service_account_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default, rename = "podIP")]
    pub pod_ip: String,
}

/// A Kubernetes Secret (for DestinationRule `credentialName`). The values are secret: the
/// `Serialize` impl shows only the key names, so debug pages never print them.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretBody {
    #[serde(default, rename = "type")]
    pub secret_type: String,
    /// base64 values, as in Kubernetes.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    #[serde(default)]
    pub string_data: BTreeMap<String, String>,
}

impl SecretBody {
    /// A value, decoded (`stringData` wins, as in Kubernetes).
    pub fn get(&self, key: &str) -> Option<String> {
        if let Some(v) = self.string_data.get(key) {
            return Some(v.clone());
        }
        let v = self.data.get(key)?;
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, v.trim()).ok()?;
        String::from_utf8(bytes).ok()
    }
}

impl std::fmt::Debug for SecretBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&String> = self.data.keys().chain(self.string_data.keys()).collect();
        f.debug_struct("SecretBody")
            .field("type", &self.secret_type)
            .field("keys", &keys)
            .finish()
    }
}

impl Serialize for SecretBody {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let keys: Vec<&String> = self.data.keys().chain(self.string_data.keys()).collect();
        let mut st = s.serialize_struct("Secret", 3)?;
        st.serialize_field("type", &self.secret_type)?;
        st.serialize_field("keys", &keys)?;
        st.serialize_field("values", "<redacted>")?;
        st.end()
    }
}

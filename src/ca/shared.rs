//! On Kubernetes the CA's root (and the key that signs pilotfish's own tokens) lives in the
//! Secret `pilotfish-ca` of pilotfish's namespace, so every replica signs under the same root
//! and a restart with an empty state directory (a pod's emptyDir) changes nothing.
//!
//! At start: the Secret's files are written into the state directory when it exists; the CA
//! then loads (or creates) them; a root made here is published by creating the Secret. When
//! two replicas race to create it, the loser takes the winner's and loads again.
//! Not done: root rotation (`pilotfish rotate-root`) is not shared through the Secret.

use anyhow::Context;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use std::collections::BTreeMap;
use std::path::Path;

pub const SECRET: &str = "pilotfish-ca";
const FILES: &[&str] = &["root-cert.pem", "root-key.pem", "token-key.pem"];

/// Writes the Secret's files into `state_dir`; false when there is no Secret yet.
pub async fn pull(
    client: &kube::Client,
    namespace: &str,
    state_dir: &Path,
) -> anyhow::Result<bool> {
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let Some(s) = api
        .get_opt(SECRET)
        .await
        .with_context(|| format!("reading Secret {namespace}/{SECRET}"))?
    else {
        return Ok(false);
    };
    let data = s.data.unwrap_or_default();
    std::fs::create_dir_all(state_dir)?;
    for f in FILES {
        let Some(v) = data.get(*f) else {
            anyhow::bail!("Secret {namespace}/{SECRET} has no {f}");
        };
        crate::source::last_good::write_owner_only(&state_dir.join(f), &v.0)?;
    }
    Ok(true)
}

/// Creates the Secret from `state_dir`'s files; false when another replica created it
/// first (then `pull` and load again).
pub async fn publish(
    client: &kube::Client,
    namespace: &str,
    state_dir: &Path,
) -> anyhow::Result<bool> {
    let mut data = BTreeMap::new();
    for f in FILES {
        let bytes = std::fs::read(state_dir.join(f)).with_context(|| format!("reading {f}"))?;
        data.insert(f.to_string(), ByteString(bytes));
    }
    let secret = Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(SECRET.into()),
            namespace: Some(namespace.into()),
            labels: Some(
                [(
                    "app.kubernetes.io/part-of".to_string(),
                    "pilotfish".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    match api.create(&Default::default(), &secret).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating Secret {namespace}/{SECRET}")),
    }
}

//! On Kubernetes the CA's root (and the key that signs pilotfish's own tokens) lives in the
//! Secret `pilotfish-ca` of pilotfish's namespace, so every replica signs under the same root
//! and a restart with an empty state directory (a pod's emptyDir) changes nothing.
//!
//! At start: the Secret's files are written into the state directory when it exists; the CA
//! then loads (or creates) them; a root made here is published by creating the Secret. When
//! two replicas race to create it, the loser takes the winner's and loads again.
//!
//! Root rotation is shared the same way. `pilotfish rotate-root --kubernetes` puts the next
//! root (and when it began) into the Secret; every replica mirrors the Secret into its state
//! directory every few seconds and adopts it (`Ca::adopt_state`); only the leader (the Lease
//! holder) takes the rotation's steps (promote the next root after the grace, retire the
//! old one once its leaves have expired) and writes them back (`push`), so all replicas
//! trust, and then sign with, the same roots at the same time.

use anyhow::Context;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use std::collections::BTreeMap;
use std::path::Path;

pub const SECRET: &str = "pilotfish-ca";
const FILES: &[&str] = &["root-cert.pem", "root-key.pem", "token-key.pem"];
/// A root rotation under way: present only then.
const ROTATION: &[&str] = &[
    "next-root-cert.pem",
    "next-root-key.pem",
    "next-root.since",
    "retired-root-cert.pem",
    "retired-root.until",
];

/// Writes the Secret's files into `state_dir`; false when there is no Secret yet.
///
/// A rotation started in the state directory (`pilotfish rotate-root --state-dir` in a
/// pod) while the Secret shows none, under the same root, is not undone: it is put into
/// the Secret first, so every replica takes it.
pub async fn pull(
    client: &kube::Client,
    namespace: &str,
    state_dir: &Path,
) -> anyhow::Result<bool> {
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let Some(mut s) = api
        .get_opt(SECRET)
        .await
        .with_context(|| format!("reading Secret {namespace}/{SECRET}"))?
    else {
        return Ok(false);
    };
    let mut data = s.data.take().unwrap_or_default();
    let local = |f: &str| std::fs::read(state_dir.join(f)).ok();
    let local_rotation = ["next-root-cert.pem", "next-root-key.pem"]
        .iter()
        .all(|f| local(f).is_some())
        && !ROTATION.iter().any(|f| data.contains_key(*f))
        && data.get("root-cert.pem").map(|b| &b.0) == local("root-cert.pem").as_ref();
    if local_rotation {
        for f in ["next-root-cert.pem", "next-root-key.pem", "next-root.since"] {
            if let Some(b) = local(f) {
                data.insert(f.to_string(), ByteString(b));
            }
        }
        s.data = Some(data.clone());
        api.replace(SECRET, &Default::default(), &s)
            .await
            .with_context(|| format!("writing Secret {namespace}/{SECRET}"))?;
        tracing::info!("a root rotation started in the state directory is now shared");
    }
    std::fs::create_dir_all(state_dir)?;
    for f in FILES {
        let Some(v) = data.get(*f) else {
            anyhow::bail!("Secret {namespace}/{SECRET} has no {f}");
        };
        write_if_changed(&state_dir.join(f), &v.0)?;
    }
    for f in ROTATION {
        let path = state_dir.join(f);
        match data.get(*f) {
            Some(v) => write_if_changed(&path, &v.0)?,
            None if path.exists() => std::fs::remove_file(&path)?,
            None => {}
        }
    }
    Ok(true)
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).ok().as_deref() == Some(bytes) {
        return Ok(());
    }
    crate::source::last_good::write_owner_only(path, bytes)
}

/// The Secret's data as `state_dir`'s files say (required files and any rotation files).
fn local_data(state_dir: &Path) -> anyhow::Result<BTreeMap<String, ByteString>> {
    let mut data = BTreeMap::new();
    for f in FILES {
        let bytes = std::fs::read(state_dir.join(f)).with_context(|| format!("reading {f}"))?;
        data.insert(f.to_string(), ByteString(bytes));
    }
    for f in ROTATION {
        if let Ok(bytes) = std::fs::read(state_dir.join(f)) {
            data.insert(f.to_string(), ByteString(bytes));
        }
    }
    Ok(data)
}

/// Writes `state_dir`'s CA state (after a rotation step the leader took) into the Secret;
/// nothing when it already says the same. Retries on a conflicting write.
pub async fn push(client: &kube::Client, namespace: &str, state_dir: &Path) -> anyhow::Result<()> {
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let data = local_data(state_dir)?;
    for _ in 0..3 {
        let mut s = api
            .get(SECRET)
            .await
            .with_context(|| format!("reading Secret {namespace}/{SECRET}"))?;
        if s.data.as_ref() == Some(&data) {
            return Ok(());
        }
        s.data = Some(data.clone());
        match api.replace(SECRET, &Default::default(), &s).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("writing Secret {namespace}/{SECRET}"))
            }
        }
    }
    anyhow::bail!("writing Secret {namespace}/{SECRET}: kept conflicting")
}

/// `pilotfish rotate-root --kubernetes`: puts a next root into the Secret (refused while a
/// rotation is under way). Every replica trusts it within seconds; the leader promotes it
/// after the grace period.
pub async fn start_rotation(
    client: &kube::Client,
    namespace: &str,
    trust_domain: &str,
) -> anyhow::Result<()> {
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let mut s = api.get(SECRET).await.with_context(|| {
        format!("reading Secret {namespace}/{SECRET} (is pilotfish running with --kubernetes?)")
    })?;
    let mut data = s.data.take().unwrap_or_default();
    if ROTATION.iter().any(|f| data.contains_key(*f)) {
        anyhow::bail!("a root rotation is already under way (Secret {namespace}/{SECRET})");
    }
    let (cert, key) = super::new_root(trust_domain)?;
    data.insert("next-root-cert.pem".into(), ByteString(cert.into_bytes()));
    data.insert("next-root-key.pem".into(), ByteString(key.into_bytes()));
    data.insert(
        "next-root.since".into(),
        ByteString(super::since_now().into_bytes()),
    );
    s.data = Some(data);
    api.replace(SECRET, &Default::default(), &s)
        .await
        .with_context(|| format!("writing Secret {namespace}/{SECRET}"))?;
    Ok(())
}

/// Creates the Secret from `state_dir`'s files; false when another replica created it
/// first (then `pull` and load again).
pub async fn publish(
    client: &kube::Client,
    namespace: &str,
    state_dir: &Path,
) -> anyhow::Result<bool> {
    let data = local_data(state_dir)?;
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

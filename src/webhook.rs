//! The validating admission webhook (Galley's gate): the API server asks, over TLS on
//! 15017, whether an Istio object may be stored; pilotfish answers with the same parse and
//! validation the directory source and `pilotfish validate` run, so `kubectl apply` of an
//! invalid VirtualService fails with the message pilotfish would log for it.
//!
//! ```text
//!  kubectl apply ──▶ kube-apiserver ──AdmissionReview (HTTPS, caBundle = pilotfish's root)──▶ /validate
//!                                    ◀── allowed, or denied: "<object>: <field>: <reason>" ──┘
//! ```
//!
//! pilotfish keeps the `ValidatingWebhookConfiguration` (`pilotfish-validator`) in place
//! itself, with its CA's root as `caBundle`. Only the object itself is checked (as Istio's
//! webhook does): references to other objects are checked when the config is built.

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::routing::post;
use axum::{Json, Router};
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// The webhook configuration's name.
pub const CONFIG_NAME: &str = "pilotfish-validator";
/// Largest AdmissionReview read (the API server's own request limit is 3 MiB).
const MAX_BODY: usize = 4 << 20;

/// The injection webhook configuration's name.
pub const INJECTOR_NAME: &str = "pilotfish-injector";

/// The router: `POST /validate`, and `POST /inject` with an injector.
pub fn router(injector: Option<Arc<crate::inject::Injector>>) -> Router {
    let mut r = Router::new().route("/validate", post(validate));
    if let Some(inj) = injector {
        r = r.route(
            "/inject",
            post(move |body: axum::body::Bytes| {
                let inj = inj.clone();
                async move {
                    let review = tokio::task::spawn_blocking(move || inj.review(&body))
                        .await
                        .unwrap_or_else(|_| {
                            AdmissionResponse::invalid("pilotfish: injection failed internally")
                                .into_review()
                        });
                    Json(review)
                }
            }),
        );
    }
    r.layer(DefaultBodyLimit::max(MAX_BODY))
}

async fn validate(body: axum::body::Bytes) -> Json<AdmissionReview<DynamicObject>> {
    // Parsing and validation are CPU work: off the I/O threads.
    let review = tokio::task::spawn_blocking(move || review(&body))
        .await
        .unwrap_or_else(|_| {
            AdmissionResponse::invalid("pilotfish: validation failed internally").into_review()
        });
    Json(review)
}

/// The answer to one AdmissionReview (pure: no IO).
pub fn review(body: &[u8]) -> AdmissionReview<DynamicObject> {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return AdmissionResponse::invalid(format!("malformed AdmissionReview: {e}"))
                .into_review()
        }
    };
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            return AdmissionResponse::invalid(format!("malformed AdmissionReview: {e}"))
                .into_review()
        }
    };
    let resp = AdmissionResponse::from(&req);
    if matches!(req.operation, Operation::Delete | Operation::Connect) {
        return resp.into_review();
    }
    let Some(mut obj) = req.object.clone() else {
        return resp.into_review();
    };
    if obj.metadata.namespace.is_none() && !req.namespace.as_deref().unwrap_or("").is_empty() {
        obj.metadata.namespace = req.namespace.clone();
    }
    if obj.metadata.name.is_none() {
        obj.metadata.name = Some(req.name.clone()).filter(|n| !n.is_empty());
    }
    obj.types = Some(kube::api::TypeMeta {
        api_version: if req.kind.group.is_empty() {
            req.kind.version.clone()
        } else {
            format!("{}/{}", req.kind.group, req.kind.version)
        },
        kind: req.kind.kind.clone(),
    });
    obj.metadata.managed_fields = None;
    let Ok(text) = serde_json::to_string(&obj) else {
        return resp
            .deny("pilotfish: the object cannot be read")
            .into_review();
    };
    let name = crate::source::kube::index_name(
        &crate::source::kube::kind_id(&req.kind.group, &req.kind.kind),
        obj.metadata.namespace.as_deref(),
        obj.metadata.name.as_deref().unwrap_or(""),
    );
    let (_, errors) = crate::api::parse_file(&name, &text);
    if errors.is_empty() {
        return resp.into_review();
    }
    // The message `pilotfish validate` prints for the object, without the file part.
    let msg: Vec<String> = errors
        .iter()
        .map(|e| {
            if e.field.is_empty() {
                format!("{}: {}", e.object, e.reason)
            } else {
                format!("{}: {}: {}", e.object, e.field, e.reason)
            }
        })
        .collect();
    resp.deny(format!("pilotfish: {}", msg.join("; ")))
        .into_review()
}

/// Where the API server reaches the webhook.
pub enum Endpoint {
    /// A URL (pilotfish outside the cluster, or behind an address of its own).
    Url(String),
    /// A Service in the cluster: namespace, name, port.
    Service(String, String, u16),
}

/// Serves the webhook over TLS on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    injector: Option<Arc<crate::inject::Injector>>,
    mut stop: watch::Receiver<bool>,
) {
    let app = router(injector);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    _ => {
                        debug!(%peer, "webhook TLS handshake failed or timed out");
                        return;
                    }
                };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await
            {
                debug!(%peer, error = %e, "webhook connection ended");
            }
        });
    }
}

/// Keeps the ValidatingWebhookConfiguration in place (server-side apply), with `ca_bundle`
/// (PEM) as its trust anchor; `fail_closed` sets `failurePolicy: Fail`. Called at start and
/// whenever the root changes.
pub async fn apply_config(
    client: &kube::Client,
    endpoint: &Endpoint,
    ca_bundle: &str,
    fail_closed: bool,
    injecting: bool,
) -> anyhow::Result<()> {
    use base64::Engine;
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
    };
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_bundle);
    let client_config = |path: &str| match endpoint {
        // A URL names the validating path; the injector is its sibling.
        Endpoint::Url(u) => {
            let base = u.trim_end_matches("/validate").trim_end_matches('/');
            serde_json::json!({"url": format!("{base}{path}"), "caBundle": bundle})
        }
        Endpoint::Service(ns, name, port) => serde_json::json!({
            "service": {"namespace": ns, "name": name, "path": path, "port": port},
            "caBundle": bundle,
        }),
    };
    let policy = if fail_closed { "Fail" } else { "Ignore" };
    if injecting {
        let cfg = serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": INJECTOR_NAME, "labels": {"app.kubernetes.io/part-of": "pilotfish"}},
            "webhooks": [{
                "name": "sidecar-injector.pilotfish.io",
                "clientConfig": client_config("/inject"),
                "rules": [{
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "resources": ["pods"],
                    "operations": ["CREATE"],
                }],
                "namespaceSelector": {"matchLabels": {"istio-injection": "enabled"}},
                "objectSelector": {"matchExpressions": [
                    {"key": crate::inject::INJECT, "operator": "NotIn", "values": ["false"]}
                ]},
                "failurePolicy": policy,
                "reinvocationPolicy": "Never",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10,
            }],
        });
        apply::<MutatingWebhookConfiguration>(client, INJECTOR_NAME, cfg).await?;
    }
    let cfg = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": CONFIG_NAME, "labels": {"app.kubernetes.io/part-of": "pilotfish"}},
        "webhooks": [{
            "name": "validation.pilotfish.io",
            "clientConfig": client_config("/validate"),
            "rules": [{
                "apiGroups": ["networking.istio.io", "security.istio.io"],
                "apiVersions": ["*"],
                "resources": ["*"],
                "operations": ["CREATE", "UPDATE"],
            }],
            "failurePolicy": policy,
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
        }],
    });
    apply::<ValidatingWebhookConfiguration>(client, CONFIG_NAME, cfg).await
}

/// Puts a cluster-scoped object pilotfish owns in place. One that exists (the Helm chart
/// installs both webhook configurations, and the chart's RBAC lets pilotfish patch them by
/// name, not create them) gets a JSON merge patch, which replaces the `webhooks` list
/// whole: a server-side apply would merge fields other managers own into it (the chart's
/// `service` next to pilotfish's `url`, which the API server refuses). A missing one is
/// created by server-side apply.
async fn apply<K>(client: &kube::Client, name: &str, obj: serde_json::Value) -> anyhow::Result<()>
where
    K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: kube::Api<K> = kube::Api::all(client.clone());
    let what = || format!("applying {} {name}", K::kind(&Default::default()));
    let exists = api.get_opt(name).await.with_context(what)?.is_some();
    let patch = if exists {
        Patch::Merge(serde_json::json!({
            "metadata": {"labels": obj["metadata"]["labels"]},
            "webhooks": obj["webhooks"],
        }))
    } else {
        Patch::Apply(obj)
    };
    let params = if exists {
        PatchParams::default()
    } else {
        PatchParams::apply("pilotfish").force()
    };
    api.patch(name, &params, &patch).await.with_context(what)?;
    Ok(())
}

/// While this replica holds the leader Lease (`leader`), applies the webhook
/// configurations now, again whenever `roots` changes (root rotation), and again on
/// becoming leader; retrying on failure. Other replicas leave them alone.
pub async fn keep_config(
    client: kube::Client,
    endpoint: Endpoint,
    roots: Arc<dyn Fn() -> String + Send + Sync>,
    mut rotated: watch::Receiver<u64>,
    mut leader: watch::Receiver<bool>,
    fail_closed: bool,
    injecting: bool,
) {
    loop {
        if leader.wait_for(|l| *l).await.is_err() {
            return;
        }
        let bundle = roots();
        let mut delay = Duration::from_millis(500);
        while *leader.borrow() {
            match apply_config(&client, &endpoint, &bundle, fail_closed, injecting).await {
                Ok(()) => {
                    info!(injecting, "webhook configurations applied");
                    break;
                }
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "webhook configurations not applied; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
        // Next: a rotation, or leadership lost and won again.
        tokio::select! {
            r = rotated.changed() => if r.is_err() { return },
            r = async {
                let _ = leader.wait_for(|l| !*l).await;
                leader.wait_for(|l| *l).await.map(|_| ())
            } => if r.is_err() { return },
        }
    }
}

/// Takes part in leader election through the Lease `pilotfish-leader` in `namespace`
/// (kube-lease-manager: 15 s lease, renewed well before it ends); the receiver says whether
/// this replica leads (false until the Lease could be used at all: a missing namespace or
/// permission is retried and logged). Singleton work (the webhook configurations) runs
/// only on the leader.
pub fn leader_election(client: kube::Client, namespace: &str) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let namespace = namespace.to_string();
    let identity = format!(
        "{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "pilotfish".into()),
        std::process::id()
    );
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(500);
        let manager = loop {
            let built =
                kube_lease_manager::LeaseManagerBuilder::new(client.clone(), "pilotfish-leader")
                    .with_namespace(namespace.clone())
                    .with_identity(identity.clone())
                    .with_duration(15)
                    .with_grace(5)
                    .build()
                    .await;
            match built {
                Ok(m) => break m,
                Err(e) => {
                    warn!(%namespace, error = %e, "leader Lease unusable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        };
        let (mut leads, _task) = manager.watch().await;
        loop {
            let now = *leads.borrow_and_update();
            info!(%identity, leader = now, "leader election");
            if tx.send(now).is_err() {
                return;
            }
            if leads.changed().await.is_err() {
                let _ = tx.send(false);
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::review;

    fn req(op: &str, obj: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u1",
                "kind": {"group": "networking.istio.io", "version": "v1", "kind": "VirtualService"},
                "resource": {"group": "networking.istio.io", "version": "v1", "resource": "virtualservices"},
                "name": "r",
                "namespace": "ns1",
                "operation": op,
                "userInfo": {},
                "object": obj,
            }
        }))
        .unwrap()
    }

    fn allowed(
        r: &kube::core::admission::AdmissionReview<kube::api::DynamicObject>,
    ) -> (bool, String) {
        let resp = r.response.as_ref().unwrap();
        (resp.allowed, resp.result.message.clone())
    }

    #[test]
    fn answers_with_pilotfish_validation() {
        let good = serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "r"}, "spec": {"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}}]}]}});
        assert_eq!(allowed(&review(&req("CREATE", good.clone()))).0, true);
        let mut bad = good.clone();
        bad["spec"]["http"][0]["timeout"] = "soon".into();
        let (ok, msg) = allowed(&review(&req("UPDATE", bad.clone())));
        assert!(!ok);
        // The request's namespace is the object's when the object has none.
        assert!(
            msg.contains("VirtualService ns1/r: spec.http[0].timeout"),
            "{msg}"
        );
        // Deleting is never refused, whatever the object.
        assert!(allowed(&review(&req("DELETE", bad))).0);
        // Garbage is refused with a message, not a panic.
        for junk in [&b"{"[..], b"null", b"{\"request\": 5}", &[0xff; 64][..]] {
            assert!(!allowed(&review(junk)).0);
        }
    }
}

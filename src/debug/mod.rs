//! Monitoring and debug HTTP (port 15014): `/ready`, `/metrics` and Istio's `/debug/*`
//! pages. Read-only views of the published generation, the connections and the metrics.
//! No page shows a private key or a token.

use crate::envoy_json::any_to_json;
use crate::metrics::Metrics;
use crate::xds::server::Published;
use crate::xds::status::Connections;
use crate::xds::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone)]
pub struct DebugState {
    pub current: watch::Receiver<Option<Published>>,
    pub metrics: Arc<Metrics>,
    pub conns: Arc<Connections>,
    pub ca: Option<Arc<crate::ca::Ca>>,
    /// Istio's request metrics, appended to /metrics.
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    /// Bearer token the debug pages need (None: open, the port is on loopback).
    pub token: Option<Arc<str>>,
    /// Paths open without the token (`/ready`, `/healthz`, `/metrics` by default).
    pub open_paths: Arc<Vec<String>>,
    /// Remote clusters: those given with `--remote-cluster` (with their watches' state
    /// when read from an API server) and those of remote Secrets.
    pub remotes: Arc<RemoteView>,
}

/// What `/debug/clusterz` shows of remote clusters.
#[derive(Default)]
pub struct RemoteView {
    pub flags: Vec<(
        crate::model::remote::RemoteCluster,
        Option<Arc<crate::source::kube::Pending>>,
    )>,
    pub secrets: Option<Arc<crate::source::remote_secrets::Remotes>>,
}

pub fn router(state: DebugState) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/debug", get(index))
        .route("/debug/syncz", get(syncz))
        .route("/debug/adsz", get(adsz))
        .route("/debug/configz", get(configz))
        .route("/debug/registryz", get(registryz))
        .route("/debug/endpointz", get(endpointz))
        .route("/debug/clusterz", get(clusterz))
        .route("/debug/config_dump", get(config_dump))
        .route("/debug/push_status", get(push_status))
        .route("/debug/certz", get(certz))
        .route("/debug/authorizationz", get(authorizationz))
        .route("/debug/graphz", get(graphz))
        .route("/debug/telemetryz", get(telemetryz))
        .route(
            "/ui",
            get(|| async { ui_asset("text/html; charset=utf-8", UI_HTML) }),
        )
        .route(
            "/ui/",
            get(|| async { ui_asset("text/html; charset=utf-8", UI_HTML) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { ui_asset("text/javascript; charset=utf-8", UI_JS) }),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .with_state(state)
}

/// The dashboard (`/ui`): a static page and its script, built into the binary. They hold no
/// data (the script fetches the debug pages, with the token when one is needed), so they are
/// served without the token; nothing is loaded from anywhere else (CSP `'self'`).
const UI_HTML: &str = include_str!("ui/index.html");
const UI_JS: &str = include_str!("ui/app.js");

fn ui_asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:",
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Outside loopback the debug pages need `authorization: Bearer <token>` (compared in
/// constant time); the open paths (probes, metrics) do not. A refusal says nothing else.
async fn authenticate(
    State(s): State<DebugState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = &s.token else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if s.open_paths.iter().any(|p| p == path) || path == "/ui" || path.starts_with("/ui/") {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .unwrap_or("");
    // Equal digests, compared without an early exit: the time says nothing of the token.
    use sha2::Digest;
    let (a, b) = (
        sha2::Sha256::digest(given.as_bytes()),
        sha2::Sha256::digest(token.as_bytes()),
    );
    if a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
    {
        return next.run(req).await;
    }
    (
        axum::http::StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a bearer token is required (see --debug-token-file)\n",
    )
        .into_response()
}

/// Per connected proxy (or the one `proxyID` names): which AuthorizationPolicies and
/// RequestAuthentications apply to each of its ports, and the Envoy RBAC that results
/// (the per-route HTTP rules and the network filters). JWKS appear as a status, never keys.
async fn authorizationz(
    State(s): State<DebugState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let p = match published(&s) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let w = &p.gen.world;
    let want = q.get("proxyID").filter(|v| !v.is_empty());
    let mut out = Vec::new();
    for c in s.conns.snapshot() {
        if want.is_some_and(|id| !c.proxy.id.contains(id.as_str())) {
            continue;
        }
        let proxy = &c.proxy;
        let key = crate::translate::listener::inbound_key(w, proxy);
        let names = |ps: &crate::model::PortPolicies| -> Vec<serde_json::Value> {
            ps.iter()
                .map(|p| json!({"policy": p.key.to_string(), "action": p.action.name(), "provider": p.provider}))
                .collect()
        };
        let rbac_json = |m: HashMap<String, envoy_types::pb::google::protobuf::Any>| {
            m.into_iter()
                .map(|(k, v)| (k, any_to_json(&v)))
                .collect::<serde_json::Map<_, _>>()
        };
        let filters_json = |fs: Vec<envoy_types::pb::envoy::config::listener::v3::Filter>| {
            fs.iter()
                .map(|f| crate::envoy_json::to_json(f))
                .collect::<Vec<_>>()
        };
        let ports: Vec<serde_json::Value> = key
            .ports
            .iter()
            .zip(&key.authz)
            .map(|((port, proto, mode), ps)| {
                let http = proto.is_http() || *proto == crate::model::Protocol::Unknown;
                json!({
                    "port": port,
                    "protocol": format!("{proto:?}"),
                    "mtls": format!("{mode:?}"),
                    "policies": names(ps),
                    "http_rbac_per_route": if http { json!(rbac_json(crate::translate::authz::http_per_route(ps, &key.providers))) } else { json!(null) },
                    "network_filters": filters_json(crate::translate::authz::network_filters(ps, &key.providers)),
                })
            })
            .collect();
        let jwt: Vec<serde_json::Value> = key
            .jwt
            .iter()
            .map(|j| {
                let jwks = match (&j.rule.jwks, &j.jwks) {
                    (Some(_), _) => "inline".to_string(),
                    (None, Ok(_)) => "fetched".to_string(),
                    (None, Err(e)) => format!("unavailable (tokens refused): {e}"),
                };
                json!({"provider": j.name, "issuer": j.rule.issuer, "jwks_uri": j.rule.jwks_uri, "jwks": jwks})
            })
            .collect();
        out.push(json!({
            "proxy": proxy.id,
            "namespace": proxy.namespace,
            "labels": proxy.labels,
            "ports": ports,
            "other_ports": {"policies": names(&key.default_authz), "network_filters": filters_json(crate::translate::authz::network_filters(&key.default_authz, &key.providers))},
            "request_authentication": jwt,
            "ext_authz_providers": key.providers.iter().map(|p| json!({"name": p.name, "service": p.service, "port": p.port, "fail_open": p.fail_open})).collect::<Vec<_>>(),
        }));
    }
    Json(json!({"version": w.version, "proxies": out})).into_response()
}

/// Issued workload certificates: identity, serial, expiry, holders. Never a key.
async fn certz(State(s): State<DebugState>) -> Json<serde_json::Value> {
    match &s.ca {
        Some(ca) => Json(
            json!({"trust_domain": ca.trust_domain, "roots": ca.roots(), "issued": ca.issued()}),
        ),
        None => Json(json!({"issued": []})),
    }
}

async fn index() -> Json<serde_json::Value> {
    Json(json!({"endpoints": [
        "/ready", "/metrics", "/debug/syncz", "/debug/adsz", "/debug/configz", "/debug/registryz",
        "/debug/endpointz", "/debug/clusterz", "/debug/config_dump?proxyID=", "/debug/push_status", "/debug/certz",
        "/debug/authorizationz?proxyID="
    ]}))
}

async fn ready(State(s): State<DebugState>) -> Response {
    if s.current.borrow().is_some() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "configuration not loaded yet\n",
        )
            .into_response()
    }
}

async fn metrics(State(s): State<DebugState>) -> Response {
    let mut head = s.metrics.encode();
    let eof = head.rfind("# EOF").unwrap_or(head.len());
    let tail = head.split_off(eof);
    // The Istio series can be hundreds of megabytes of text: streamed in chunks from a
    // snapshot, never held whole.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::convert::Infallible>>(4);
    let telemetry = s.telemetry.clone();
    tokio::task::spawn_blocking(move || {
        let send = |t: String| tx.blocking_send(Ok(bytes::Bytes::from(t))).is_ok();
        if !send(head) {
            return;
        }
        if let Some(t) = telemetry {
            let mut open = true;
            t.render(256 * 1024, &mut |chunk| {
                if open && !chunk.is_empty() {
                    open = send(chunk);
                }
            });
            if !open {
                return;
            }
        }
        send(tail);
    });
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}

/// The access-log pipeline's own figures (entries, drops, series, queue).
async fn telemetryz(State(s): State<DebugState>) -> Response {
    match &s.telemetry {
        Some(t) => Json(t.status()).into_response(),
        None => (axum::http::StatusCode::NOT_FOUND, "telemetry is off\n").into_response(),
    }
}

#[derive(serde::Deserialize)]
struct GraphQuery {
    window: Option<String>,
}

/// The service graph: `?window=1m|5m|1h` (default 5m).
async fn graphz(
    State(s): State<DebugState>,
    axum::extract::Query(q): axum::extract::Query<GraphQuery>,
) -> Response {
    let window = match q.window.as_deref().unwrap_or("5m") {
        "1m" => 60,
        "5m" => 300,
        "1h" => 3600,
        other => {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                format!("window must be 1m, 5m or 1h, not {other:?}\n"),
            )
                .into_response()
        }
    };
    match &s.telemetry {
        Some(t) => Json(t.graph_view(window)).into_response(),
        None => (axum::http::StatusCode::NOT_FOUND, "telemetry is off\n").into_response(),
    }
}

async fn syncz(State(s): State<DebugState>) -> Json<serde_json::Value> {
    let rows: Vec<_> = s
        .conns
        .snapshot()
        .into_iter()
        .map(|c| json!({"proxy": c.proxy.id, "conn_id": c.conn_id, "delta": c.delta, "world_version": c.world_version, "types": c.types}))
        .collect();
    Json(json!(rows))
}

async fn adsz(State(s): State<DebugState>) -> Json<serde_json::Value> {
    Json(json!({"connected": s.conns.len(), "clients": s.conns.snapshot()}))
}

fn published(s: &DebugState) -> Result<Published, Response> {
    s.current.borrow().clone().ok_or_else(|| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "configuration not loaded yet\n",
        )
            .into_response()
    })
}

async fn configz(State(s): State<DebugState>) -> Response {
    let p = match published(&s) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let w = &p.gen.world;
    let objects: Vec<_> = w
        .objects
        .values()
        .map(|r| json!({"kind": r.key.kind, "namespace": r.key.namespace, "name": r.key.name, "file": r.origin, "spec": r.spec}))
        .collect();
    Json(json!({"version": w.version, "errors": w.errors, "objects": objects})).into_response()
}

async fn registryz(State(s): State<DebugState>) -> Response {
    let p = match published(&s) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let svcs: Vec<_> = p
        .gen
        .world
        .services
        .values()
        .map(|s| json!({"hostname": s.hostname, "namespace": s.namespace, "vips": s.vips, "ports": s.ports, "resolution": s.resolution, "mesh_external": s.mesh_external, "origin": s.origin.to_string()}))
        .collect();
    Json(json!(svcs)).into_response()
}

async fn endpointz(State(s): State<DebugState>) -> Response {
    let p = match published(&s) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let svcs: Vec<_> = p
        .gen
        .world
        .services
        .values()
        .map(|s| json!({"hostname": s.hostname, "endpoints": s.endpoints}))
        .collect();
    Json(json!(svcs)).into_response()
}

/// Remote clusters: where each is read from, its network, which of its kinds have listed
/// (an API server's), and what of it is served (objects, endpoints). Never a kubeconfig.
async fn clusterz(State(s): State<DebugState>) -> Response {
    let p = match published(&s) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let w = &p.gen.world;
    let served = |name: &str| {
        let suffix = format!("@{name}");
        let objects = w
            .objects
            .keys()
            .filter(|k| k.name.ends_with(&suffix))
            .count();
        let endpoints = w
            .services
            .values()
            .flat_map(|svc| &svc.endpoints)
            .filter(|e| e.origin.ends_with(&suffix))
            .count();
        (objects, endpoints)
    };
    let kinds = crate::source::kube::REMOTE_KINDS;
    let row = |c: &crate::model::remote::RemoteCluster,
               source: &str,
               pending: Option<&crate::source::kube::Pending>| {
        let (objects, endpoints) = served(&c.name);
        let synced = pending.map(|p| p.synced_kinds());
        json!({
            "name": c.name,
            "source": source,
            "network": c.network,
            "synced_kinds": synced,
            "synced": pending.map(|p| p.synced_all(kinds)),
            "objects": objects,
            "endpoints": endpoints,
        })
    };
    let mut out: Vec<serde_json::Value> = s
        .remotes
        .flags
        .iter()
        .map(|(c, pending)| {
            let source = match &c.kubeconfig {
                Some(_) => "kubeconfig".to_string(),
                None => format!("directory {}", c.dir.display()),
            };
            row(c, &source, pending.as_deref())
        })
        .collect();
    if let Some(rs) = &s.remotes.secrets {
        for r in rs.live() {
            out.push(row(&r.cluster, "remote secret", Some(&r.pending)));
        }
    }
    Json(json!(out)).into_response()
}

async fn push_status(State(s): State<DebugState>) -> Response {
    let p = match published(&s) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let conns = s.conns.snapshot();
    let behind = conns
        .iter()
        .filter(|c| c.world_version != p.gen.world.version)
        .count();
    Json(json!({
        "world_version": p.gen.world.version,
        "since_change_ms": p.changed_at.elapsed().as_millis() as u64,
        "connected": conns.len(),
        "proxies_on_older_version": behind,
        "config_errors": p.gen.world.errors.len(),
    }))
    .into_response()
}

async fn config_dump(
    State(s): State<DebugState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let p = match published(&s) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Some(id) = q.get("proxyID").filter(|v| !v.is_empty()) else {
        return (StatusCode::BAD_REQUEST, "proxyID is required\n").into_response();
    };
    let Some(proxy) = s.conns.find_proxy(id) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no connected proxy matches {id:?}\n"),
        )
            .into_response();
    };
    let res = p.gen.for_proxy(&proxy);
    let dump = |t: &str, field: &str| -> Vec<serde_json::Value> {
        res.values(t)
            .iter()
            .map(|r| json!({"version_info": r.version, field: any_to_json(&r.any())}))
            .collect()
    };
    Json(json!({"configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "dynamic_active_clusters": dump(CLUSTER, "cluster")},
        {"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump", "dynamic_endpoint_configs": dump(ENDPOINT, "endpoint_config")},
        {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "dynamic_listeners": dump(LISTENER, "active_state")},
        {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", "dynamic_route_configs": dump(ROUTE, "route_config")},
    ]}))
    .into_response()
}

//! pilotfish as an ext_authz server (`envoy.service.auth.v3.Authorization/Check`): the thin
//! gRPC side of the built-in provider. It reads the Check into a `builtin::CheckInput`,
//! asks `builtin::check` (pure) against the current World, charges the rate quota (token
//! buckets shared by every stream of this pilotfish) and answers.
//!
//! On the TLS port only callers with a certificate of the mesh may ask (a sidecar over
//! mutual TLS); the plaintext port is for loopback.

use super::builtin::{self, CheckInput, Quotas};
use super::decide::Verdict;
use crate::metrics::Metrics;
use crate::xds::server::Published;
use envoy_types::pb::envoy::config::core::v3::{
    address, header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::{
    check_response::HttpResponse, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::protobuf as pbw;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// Most quota buckets kept at once.
pub const MAX_BUCKETS: usize = 100_000;

#[derive(Clone)]
pub struct AuthzService {
    pub current: watch::Receiver<Option<Published>>,
    pub quotas: Arc<Mutex<Quotas>>,
    pub metrics: Arc<Metrics>,
    /// Refuse callers without a verified client certificate (the TLS port).
    pub require_peer: bool,
}

fn ip_of(a: &Option<envoy_types::pb::envoy::config::core::v3::Address>) -> (Option<IpAddr>, u32) {
    match a.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => {
            let port = match s.port_specifier {
                Some(
                    envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p),
                ) => p,
                _ => 0,
            };
            (s.address.parse().ok(), port)
        }
        _ => (None, 0),
    }
}

/// google.protobuf.Struct → JSON (the JWT payload jwt_authn put in metadata).
fn to_json(s: &pbw::Struct) -> serde_json::Value {
    fn value(v: &pbw::Value) -> serde_json::Value {
        use pbw::value::Kind;
        match &v.kind {
            Some(Kind::StringValue(s)) => s.clone().into(),
            Some(Kind::NumberValue(n)) => serde_json::json!(n),
            Some(Kind::BoolValue(b)) => (*b).into(),
            Some(Kind::StructValue(s)) => to_json(s),
            Some(Kind::ListValue(l)) => l.values.iter().map(value).collect(),
            _ => serde_json::Value::Null,
        }
    }
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), value(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn header(k: &str, v: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn denied(rpc: i32, status: u32, body: String, headers: Vec<HeaderValueOption>) -> CheckResponse {
    CheckResponse {
        status: Some(RpcStatus {
            code: rpc,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: status as i32,
            }),
            headers,
            body,
        })),
        ..Default::default()
    }
}

impl AuthzService {
    /// Answer one Check (the whole of it, without gRPC): the result label and the response.
    pub fn answer(&self, req: &CheckRequest) -> (&'static str, CheckResponse) {
        let Some(p) = self.current.borrow().as_ref().map(|p| p.gen.clone()) else {
            return (
                "error",
                denied(14, 503, "configuration not loaded yet".into(), vec![]),
            );
        };
        let world = &p.world;
        let attrs = req.attributes.clone().unwrap_or_default();
        let source = attrs.source.unwrap_or_default();
        let (source_ip, _) = ip_of(&source.address);
        let (destination_ip, destination_port) =
            ip_of(&attrs.destination.as_ref().and_then(|d| d.address.clone()));
        let http = attrs.request.and_then(|r| r.http).unwrap_or_default();
        let meta = attrs.metadata_context.unwrap_or_default().filter_metadata;
        let custom_rule = meta.get("envoy.filters.http.rbac").and_then(|s| {
            s.fields
                .iter()
                .filter(|(k, _)| {
                    k.starts_with("istio_ext_authz_") && k.ends_with("shadow_effective_policy_id")
                })
                .find_map(|(_, v)| match &v.kind {
                    Some(pbw::value::Kind::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
        });
        let jwt = meta
            .get("envoy.filters.http.jwt_authn")
            .and_then(|s| s.fields.get(crate::translate::authz::JWT_PAYLOAD))
            .and_then(|v| match &v.kind {
                Some(pbw::value::Kind::StructValue(s)) => Some(to_json(s)),
                _ => None,
            });
        let sni = attrs.tls_session.map(|t| t.sni).filter(|s| !s.is_empty());
        let input = CheckInput {
            source_principal: Some(source.principal.as_str()).filter(|p| !p.is_empty()),
            source_ip,
            destination_ip,
            destination_port,
            sni: sni.as_deref(),
            method: &http.method,
            path: &http.path,
            host: &http.host,
            headers: http
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            jwt: jwt.as_ref(),
            custom_rule: custom_rule.as_deref(),
        };
        let out = builtin::check(world, &input);
        if out.verdict == Verdict::Deny {
            return ("deny", denied(7, out.status, out.body, vec![]));
        }
        if let Some((key, limit)) = &out.quota {
            let ok = self.quotas.lock().unwrap().take(key, limit, Instant::now());
            if !ok {
                let retry = (limit.per_ms / limit.tokens.max(1) as u64)
                    .div_ceil(1000)
                    .max(1);
                return (
                    "quota",
                    denied(
                        8,
                        429,
                        "rate quota exhausted\n".into(),
                        vec![header("retry-after", &retry.to_string())],
                    ),
                );
            }
        }
        let ok = CheckResponse {
            status: Some(RpcStatus::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: out.add_headers.iter().map(|(k, v)| header(k, v)).collect(),
                headers_to_remove: out.remove_headers.clone(),
                ..Default::default()
            })),
            ..Default::default()
        };
        ("allow", ok)
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        req: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let t = Instant::now();
        let has_cert = req.peer_certs().is_some_and(|c| !c.is_empty())
            || req
                .extensions()
                .get::<crate::xds::http2::PeerCerts>()
                .is_some_and(|c| !c.0.is_empty());
        if self.require_peer && !has_cert {
            self.metrics.authz_check("unauthenticated", t.elapsed());
            return Err(tonic::Status::unauthenticated(
                "a mesh certificate is required to ask for authorization",
            ));
        }
        let (result, resp) = self.answer(req.get_ref());
        self.metrics.authz_check(result, t.elapsed());
        Ok(tonic::Response::new(resp))
    }
}

//! Envoy's AccessLogService (`StreamAccessLogs`), served next to xDS on both ports.
//!
//! On the TLS port a stream must come with the proxy's mesh certificate, and the identity
//! in it must be the namespace and service account the node claims (as an xDS stream's
//! token must): a proxy reports only as itself, and its principal label is the proven one.
//! On the plaintext port (loopback, or opened for development) the node's word is taken.

use super::{Batch, Entries, Reporter, Telemetry};
use crate::model::Proxy;
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::AccessLogService;
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
use envoy_types::pb::envoy::service::accesslog::v3::{
    StreamAccessLogsMessage, StreamAccessLogsResponse,
};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

#[derive(Clone)]
pub struct Sink {
    pub telemetry: Arc<Telemetry>,
    /// The TLS port: a mesh certificate matching the node is required.
    pub require_peer: bool,
    pub trust_domain: String,
}

/// (namespace, service account) of the first SPIFFE URI SAN of a DER certificate.
pub fn spiffe_identity(der: &[u8], trust_domain: &str) -> Option<(String, String)> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = c.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => {
            let rest = u.strip_prefix(&format!("spiffe://{trust_domain}/ns/"))?;
            let (ns, sa) = rest.split_once("/sa/")?;
            Some((ns.to_string(), sa.to_string()))
        }
        _ => None,
    })
}

impl Sink {
    fn refuse(&self, why: &str) -> Status {
        self.telemetry
            .counts
            .refused_streams
            .fetch_add(1, Ordering::Relaxed);
        Status::permission_denied(why.to_string())
    }

    fn reporter(
        &self,
        id: envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::Identifier,
        peer: Option<(String, String)>,
    ) -> Result<Reporter, Status> {
        let node = id.node.unwrap_or_default();
        let meta: BTreeMap<String, serde_json::Value> = node
            .metadata
            .as_ref()
            .map(crate::xds::server::struct_to_json)
            .unwrap_or_default();
        let proxy = Proxy::from_node(&node.id, &meta);
        let principal = match (self.require_peer, peer) {
            (true, None) => {
                return Err(self.refuse("a mesh certificate is required to send access logs"))
            }
            (true, Some((ns, sa))) => {
                if proxy.namespace != ns || proxy.service_account != sa {
                    warn!(proxy = %proxy.id, cert_ns = %ns, cert_sa = %sa, "access-log stream refused: the node claims another identity than its certificate");
                    return Err(self.refuse("the node's identity differs from its certificate's"));
                }
                super::labels::spiffe(&self.trust_domain, &ns, &sa)
            }
            (false, _) if proxy.service_account.is_empty() => "unknown".to_string(),
            (false, _) => {
                super::labels::spiffe(&self.trust_domain, &proxy.namespace, &proxy.service_account)
            }
        };
        Ok(Reporter {
            mtls: self.require_peer,
            ip: proxy.ips.first().cloned().unwrap_or_default(),
            principal,
            inbound: id.log_name == crate::translate::telemetry::LOG_INBOUND,
            proxy,
        })
    }
}

#[tonic::async_trait]
impl AccessLogService for Sink {
    async fn stream_access_logs(
        &self,
        req: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        let peer = req
            .extensions()
            .get::<crate::xds::http2::PeerCerts>()
            .and_then(|c| c.0.first().cloned())
            .and_then(|c| spiffe_identity(&c, &self.trust_domain));
        let mut stream = req.into_inner();
        let mut reporter: Option<Arc<Reporter>> = None;
        loop {
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    let who = reporter
                        .as_ref()
                        .map(|r| r.proxy.id.clone())
                        .unwrap_or_default();
                    warn!(proxy = %who, error = %e, "access-log stream failed");
                    return Err(e);
                }
            };
            if let Some(id) = msg.identifier {
                if reporter.is_none() {
                    reporter = Some(Arc::new(self.reporter(id, peer.clone())?));
                }
            }
            let Some(r) = &reporter else {
                return Err(Status::invalid_argument(
                    "the first message must carry the identifier",
                ));
            };
            let entries = match msg.log_entries {
                Some(LogEntries::HttpLogs(h)) => Entries::Http(h.log_entry),
                Some(LogEntries::TcpLogs(t)) => Entries::Tcp(t.log_entry),
                None => continue,
            };
            self.telemetry.submit(Batch {
                reporter: r.clone(),
                entries,
            });
        }
        debug!(proxy = %reporter.as_ref().map(|r| r.proxy.id.clone()).unwrap_or_default(), "access-log stream ended");
        Ok(Response::new(StreamAccessLogsResponse {}))
    }
}

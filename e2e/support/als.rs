//! A synthetic fleet of sidecars for pilotfish's access-log sink: pre-encoded
//! `StreamAccessLogs` messages sent over raw HTTP/2 (the `h2` crate) at a paced, open-loop
//! rate, so the sender spends little CPU and the sink's own cost is what gets measured.
//!
//! A message the sink's flow control does not take in time is not sent and counted as
//! `pushed_back` (what Envoy's gRPC logger would count as dropped on the sidecar).

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::{
    address::Address as AddressKind, socket_address::PortSpecifier, Address, Node, SocketAddress,
};
use envoy_types::pb::envoy::data::accesslog::v3 as data;
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::{
    HttpAccessLogEntries, Identifier, LogEntries,
};
use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use envoy_types::pb::google::protobuf::{self as pbw, value::Kind};
use prost::Message;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One synthetic sidecar.
#[derive(Clone, Debug)]
pub struct Sidecar {
    pub ip: String,
    pub pod: String,
    pub namespace: String,
    pub service_account: String,
    /// Its entries are its inbound side's (reporter=destination).
    pub inbound: bool,
}

fn addr(ip: &str, port: u32) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// An HTTP entry: from `src_ip` to `dst_ip` through `cluster`, answered `code`.
pub fn entry(
    src_ip: &str,
    dst_ip: &str,
    cluster: &str,
    code: u32,
    ms: u32,
) -> data::HttpAccessLogEntry {
    data::HttpAccessLogEntry {
        common_properties: Some(data::AccessLogCommon {
            downstream_remote_address: Some(addr(src_ip, 40000)),
            downstream_local_address: Some(addr(dst_ip, 9080)),
            upstream_remote_address: Some(addr(dst_ip, 9080)),
            upstream_cluster: cluster.into(),
            time_to_last_downstream_tx_byte: Some(pbw::Duration {
                seconds: (ms / 1000) as i64,
                nanos: ((ms % 1000) * 1_000_000) as i32,
            }),
            access_log_type: data::AccessLogType::DownstreamEnd as i32,
            ..Default::default()
        }),
        protocol_version: data::http_access_log_entry::HttpVersion::Http11 as i32,
        request: Some(data::HttpRequestProperties {
            request_method: 1,
            authority: "svc:9080".into(),
            path: "/api/v1/items".into(),
            request_body_bytes: 120,
            request_headers_bytes: 300,
            ..Default::default()
        }),
        response: Some(data::HttpResponseProperties {
            response_code: Some(pbw::UInt32Value { value: code }),
            response_body_bytes: 2048,
            response_headers_bytes: 200,
            ..Default::default()
        }),
    }
}

/// A message of `entries`, with the identifier when `first`; gRPC-framed.
pub fn message(s: &Sidecar, entries: Vec<data::HttpAccessLogEntry>, first: bool) -> Bytes {
    let meta = |k: &str, v: &str| {
        (
            k.to_string(),
            pbw::Value {
                kind: Some(Kind::StringValue(v.into())),
            },
        )
    };
    let m = StreamAccessLogsMessage {
        identifier: first.then(|| Identifier {
            node: Some(Node {
                id: format!(
                    "sidecar~{}~{}.{}~{}.svc.cluster.local",
                    s.ip, s.pod, s.namespace, s.namespace
                ),
                metadata: Some(pbw::Struct {
                    fields: [
                        meta("NAMESPACE", &s.namespace),
                        meta("SERVICE_ACCOUNT", &s.service_account),
                    ]
                    .into(),
                }),
                ..Default::default()
            }),
            log_name: if s.inbound {
                "pilotfish-inbound"
            } else {
                "pilotfish-outbound"
            }
            .into(),
        }),
        log_entries: Some(LogEntries::HttpLogs(HttpAccessLogEntries {
            log_entry: entries,
        })),
    };
    let body = m.encode_to_vec();
    let mut b = BytesMut::with_capacity(body.len() + 5);
    b.put_u8(0);
    b.put_u32(body.len() as u32);
    b.put_slice(&body);
    b.freeze()
}

/// What a flood did.
#[derive(Default)]
pub struct Sent {
    pub entries: AtomicU64,
    pub pushed_back: AtomicU64,
}

/// One stream of `s` to `addr` (plaintext): the first message, then `batches` round-robin
/// at `entries_per_second` (each batch holds `per_batch` entries) for `dur`.
pub async fn stream(
    addr: String,
    first: Bytes,
    batches: Arc<Vec<Bytes>>,
    per_batch: u64,
    entries_per_second: f64,
    dur: Duration,
    sent: Arc<Sent>,
) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .handshake::<_, Bytes>(tcp)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.map_err(|e| e.to_string())?;
    let req = http::Request::post(format!(
        "http://{addr}/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (_resp, mut tx) = client.send_request(req, false).map_err(|e| e.to_string())?;
    let send = |tx: &mut h2::SendStream<Bytes>, b: Bytes| -> bool {
        tx.reserve_capacity(b.len());
        if tx.capacity() < b.len() {
            return false;
        }
        tx.send_data(b, false).is_ok()
    };
    // The first message may wait for the window.
    tx.reserve_capacity(first.len());
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        futures::future::poll_fn(|cx| tx.poll_capacity(cx)),
    )
    .await;
    tx.send_data(first, false).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let every = Duration::from_secs_f64(per_batch as f64 / entries_per_second);
    let mut i = 0usize;
    let mut due = start;
    while start.elapsed() < dur {
        due += every;
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        } else if now - due > Duration::from_millis(200) {
            // Far behind (the sender is saturated): skip, do not burst.
            due = now;
        }
        let b = batches[i % batches.len()].clone();
        i += 1;
        // Let the connection task move what was queued.
        let _ = tokio::time::timeout(
            Duration::from_millis(1),
            futures::future::poll_fn(|cx| tx.poll_capacity(cx)),
        )
        .await;
        if send(&mut tx, b) {
            sent.entries.fetch_add(per_batch, Ordering::Relaxed);
        } else {
            sent.pushed_back.fetch_add(per_batch, Ordering::Relaxed);
        }
    }
    let _ = tx.send_data(Bytes::new(), true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

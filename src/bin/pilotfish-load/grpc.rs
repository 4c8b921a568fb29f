//! A thin gRPC client over HTTP/2 (the `h2` crate) for the one ADS stream of a simulated
//! proxy, in place of tonic's.
//!
//! Why not tonic: its streaming decoder keeps one receive buffer per stream whose capacity
//! is that of the largest message received (2–5 MB at 1,000 services), and its encoder one
//! as large as the largest request, both for the life of the stream. At thousands of
//! simulated proxies those buffers were most of the tool's memory. Here each received
//! message is assembled into a buffer of exactly its size (or sliced out of the received
//! frame when it fits in one) and dropped once decoded; requests go out as `Bytes` that
//! may be shared between streams (a SotW name list, a delta `initial_resource_versions`).
//!
//! The connection is configured like the tonic endpoint it replaces (hyper's HTTP/2 client
//! defaults, 64 MiB stream and connection windows, no push, 5 s connect timeout, no Nagle).

use bytes::{Buf, Bytes};
use h2::client::{ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};
use std::time::Duration;
use tokio::net::TcpStream;
use tonic::Code;

pub const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
pub const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// A gRPC status: from `grpc-status`/`grpc-message`, or made from an HTTP/2 error.
#[derive(Debug, Clone)]
pub struct Status {
    pub code: Code,
    pub message: String,
}

impl Status {
    fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }

    /// As tonic maps HTTP/2 errors (`Status::from_h2_error`), I/O errors as Unavailable.
    fn from_h2(e: &h2::Error) -> Status {
        let code = if e.is_io() {
            Code::Unavailable
        } else {
            match e.reason() {
                Some(h2::Reason::REFUSED_STREAM) => Code::Unavailable,
                Some(h2::Reason::CANCEL) => Code::Cancelled,
                Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
                Some(h2::Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
                Some(_) => Code::Internal,
                None => Code::Unknown,
            }
        };
        Status::new(code, format!("h2: {e}"))
    }

    /// `grpc-status` (and `grpc-message`) of a header block, if it has one.
    fn from_headers(h: &http::HeaderMap) -> Option<Status> {
        let code = h.get("grpc-status")?;
        let code = code
            .to_str()
            .ok()
            .and_then(|c| c.parse::<i32>().ok())
            .map(Code::from_i32)
            .unwrap_or(Code::Unknown);
        let message = h
            .get("grpc-message")
            .map(|m| percent_decode(m.as_bytes()))
            .unwrap_or_default();
        Some(Status { code, message })
    }
}

fn percent_decode(b: &[u8]) -> String {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An HTTP/2 connection; its I/O runs in a task of its own, ended when this is dropped.
pub struct Conn {
    send: SendRequest<Bytes>,
    authority: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects to `authority` (`host:port`).
pub async fn connect(authority: &str) -> Result<Conn, String> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(authority))
        .await
        .map_err(|_| format!("connect {authority}: timed out"))?
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (send, conn) = h2::client::Builder::new()
        .initial_max_send_streams(100)
        .initial_window_size(64 << 20)
        .initial_connection_window_size(64 << 20)
        .max_frame_size(16 << 10)
        .max_header_list_size(16 << 10)
        .max_send_buffer_size(1 << 20)
        .enable_push(false)
        .handshake::<_, Bytes>(tcp)
        .await
        .map_err(|e| format!("connect {authority}: HTTP/2 handshake: {e}"))?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn {
        send,
        authority: authority.to_string(),
        task,
    })
}

impl Conn {
    /// Opens a bidirectional streaming call: requests can be sent at once; the response
    /// (headers, then messages) comes from `Pending::response`.
    pub async fn call(&mut self, path: &str) -> Result<(Sender, Pending), Status> {
        let send = self.send.clone();
        let mut send = send.ready().await.map_err(|e| Status::from_h2(&e))?;
        let req = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("http://{}{path}", self.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", "pilotfish-load")
            .body(())
            .map_err(|e| Status::new(Code::Internal, e.to_string()))?;
        let (resp, stream) = send
            .send_request(req, false)
            .map_err(|e| Status::from_h2(&e))?;
        Ok((Sender { stream }, Pending { resp }))
    }
}

/// The request half of a call.
pub struct Sender {
    stream: SendStream<Bytes>,
}

impl Sender {
    /// Sends one message given as its encoding in parts: the gRPC prefix is written
    /// before `head`, each of `tail` goes out as is (no copy; protobuf fields may come in
    /// any order). HTTP/2 flow control buffers what the peer's window does not take yet,
    /// as tonic's body did.
    pub fn send(&mut self, head: &[u8], tail: &[Bytes]) -> Result<(), Status> {
        let len = head.len() + tail.iter().map(Bytes::len).sum::<usize>();
        let mut first = Vec::with_capacity(5 + head.len());
        first.push(0);
        first.extend_from_slice(&(len as u32).to_be_bytes());
        first.extend_from_slice(head);
        self.stream
            .send_data(Bytes::from(first), false)
            .map_err(|e| Status::from_h2(&e))?;
        for t in tail.iter().filter(|t| !t.is_empty()) {
            self.stream
                .send_data(t.clone(), false)
                .map_err(|e| Status::from_h2(&e))?;
        }
        Ok(())
    }
}

/// A call whose response headers have not arrived yet.
pub struct Pending {
    resp: ResponseFuture,
}

impl Pending {
    /// Waits for the response headers. A trailers-only response with a non-OK
    /// `grpc-status` (admission control's ResourceExhausted) is an error, as with tonic.
    pub async fn response(self) -> Result<Receiver, Status> {
        let resp = self.resp.await.map_err(|e| Status::from_h2(&e))?;
        let (parts, body) = resp.into_parts();
        if let Some(s) = Status::from_headers(&parts.headers) {
            if s.code != Code::Ok {
                return Err(s);
            }
        }
        if parts.status != http::StatusCode::OK {
            let code = match parts.status.as_u16() {
                400 => Code::Internal,
                401 => Code::Unauthenticated,
                403 => Code::PermissionDenied,
                404 => Code::Unimplemented,
                429 | 502 | 503 | 504 => Code::Unavailable,
                _ => Code::Unknown,
            };
            return Err(Status::new(code, format!("HTTP status {}", parts.status)));
        }
        Ok(Receiver {
            body,
            pending: Bytes::new(),
            prefix: [0; 5],
            prefix_len: 0,
            msg: None,
        })
    }
}

/// The response half of a call: gRPC messages, each in a buffer of its own size.
pub struct Receiver {
    body: RecvStream,
    /// Received, not yet consumed.
    pending: Bytes,
    prefix: [u8; 5],
    prefix_len: usize,
    /// The message being assembled and its length.
    msg: Option<(Vec<u8>, usize)>,
}

impl Receiver {
    /// The next message; `None` when the server ended the stream with status OK. Cancel
    /// safe: what was received stays in `self`.
    pub async fn message(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if let Some(m) = self.take()? {
                return Ok(Some(m));
            }
            match self.body.data().await {
                Some(Ok(chunk)) => {
                    let _ = self.body.flow_control().release_capacity(chunk.len());
                    self.pending = chunk;
                }
                Some(Err(e)) => return Err(Status::from_h2(&e)),
                None => {
                    if self.prefix_len > 0 || self.msg.is_some() {
                        return Err(Status::new(
                            Code::Internal,
                            "response stream ended inside a message",
                        ));
                    }
                    let trailers = self
                        .body
                        .trailers()
                        .await
                        .map_err(|e| Status::from_h2(&e))?;
                    return match trailers.as_ref().and_then(Status::from_headers) {
                        Some(s) if s.code != Code::Ok => Err(s),
                        _ => Ok(None),
                    };
                }
            }
        }
    }

    /// A complete message from what is pending, if there is one.
    fn take(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if let Some((buf, want)) = &mut self.msg {
                let n = (*want - buf.len()).min(self.pending.len());
                buf.extend_from_slice(&self.pending[..n]);
                self.pending.advance(n);
                if buf.len() < *want {
                    return Ok(None);
                }
                let (buf, _) = self.msg.take().unwrap();
                return Ok(Some(Bytes::from(buf)));
            }
            if self.pending.is_empty() {
                return Ok(None);
            }
            let n = (5 - self.prefix_len).min(self.pending.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&self.pending[..n]);
            self.prefix_len += n;
            self.pending.advance(n);
            if self.prefix_len < 5 {
                return Ok(None);
            }
            self.prefix_len = 0;
            if self.prefix[0] != 0 {
                return Err(Status::new(
                    Code::Internal,
                    "compressed response messages are not supported",
                ));
            }
            let want = u32::from_be_bytes(self.prefix[1..5].try_into().unwrap()) as usize;
            if self.pending.len() >= want {
                // All in this frame: a slice of it, no copy.
                return Ok(Some(self.pending.split_to(want)));
            }
            self.msg = Some((Vec::with_capacity(want), want));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn grpc_message_is_percent_decoded() {
        assert_eq!(percent_decode(b"a%20b%"), "a b%");
        assert_eq!(percent_decode(b"%zz%41"), "%zzA");
    }
}

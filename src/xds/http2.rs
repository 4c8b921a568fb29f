//! The plaintext xDS port's HTTP/2 server, written for idle memory.
//!
//! hyper's HTTP/2 stack keeps ~44 kB per connection for its whole life (a 16 KiB write
//! buffer, a read buffer that keeps the size of the largest frame, a frame decoder, a slab
//! of received frames), more than everything else pilotfish holds for a connected proxy.
//! This server is just enough HTTP/2 (RFC 9113) for gRPC: prior-knowledge cleartext, one
//! task per connection, and nothing buffered between bursts. Input is read into a buffer
//! that is freed once every complete frame in it was handled; output is queued as shared
//! `Bytes` (large resources are never copied) and the queue is freed once written. Flow
//! control is honoured both ways; request bytes are granted back to the client only as
//! the stream's task consumes them, so a client cannot make the server buffer more than
//! one window per stream.
//!
//! Streams are served by [`super::wire::open_call`], the same entry point tonic's server
//! uses on the TLS port: the request bytes go through an [`Inbox`], the response is the
//! stream's [`XdsBody`].

use super::server::XdsServer;
use super::wire::{open_call, Source, XdsBody};
use bytes::{BufMut, Bytes, BytesMut};
use http_body::Body;
use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tracing::debug;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types.
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const PRIORITY_FRAME: u8 = 2;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;

// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Not a wire flag: marks a header block whose HEADERS frame made the stream depend on
/// itself (set on HEADERS flags after the undefined bits were cleared).
const SELF_DEPENDENT: u8 = 0x80;

// Error codes.
const NO_ERROR: u32 = 0;
const PROTOCOL_ERROR: u32 = 1;
const FLOW_CONTROL_ERROR: u32 = 3;
const STREAM_CLOSED: u32 = 5;
const FRAME_SIZE_ERROR: u32 = 6;
const REFUSED_STREAM: u32 = 7;
const COMPRESSION_ERROR: u32 = 9;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Largest frame payload accepted (the protocol's default; we never raise it).
const MAX_FRAME: usize = 16_384;
/// Streams a connection may have open at once (Envoy opens one, or one per type).
const MAX_STREAMS: usize = 100;
/// Streams we reset whose late frames are still ignored (older ones are forgotten).
const MAX_RESETS: usize = 16;
/// `content-length` not given.
const NO_LENGTH: u64 = u64::MAX;
/// The HPACK dynamic table size the client's encoder may use (the default; we never
/// advertise SETTINGS_HEADER_TABLE_SIZE).
const HEADER_TABLE: usize = 4096;
/// Request bytes a stream may have in flight before its task consumed them.
const STREAM_WINDOW: u32 = 1 << 20;
/// The same for the whole connection: what a client can make us hold without any window
/// granted beyond the initial one (a delta reconnect's requests, ~1 MB at 12,000
/// resources, fit).
const CONN_WINDOW: u32 = 1 << 20;
/// Most a message announcement reserves up front (larger ones grow as they arrive).
const RESERVE_MAX: usize = 4 << 20;
/// Window is granted back in steps of this much consumed data.
const GRANT_STEP: usize = 128 * 1024;
/// Largest header block accepted (the request's headers, all continuation frames).
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Largest decoded header list (RFC 9113 section 6.5.2 size: name, value and 32 bytes a
/// field), advertised as SETTINGS_MAX_HEADER_LIST_SIZE. A small block can decode to far
/// more through references to the HPACK table (an HPACK bomb): past this, decoding goes on
/// (the table must follow) but keeps nothing, and the connection is closed.
const MAX_HEADER_LIST: usize = 64 * 1024;
/// Request body bytes a non-gRPC request may send before it is answered (and discarded).
const MAX_PLAIN_BODY: usize = 64 * 1024;
/// Most CONTINUATION frames one header block may take: a full 64 KiB block needs five
/// frames of the default size; more is a flood (CVE-2024-27316 and kin).
const MAX_CONTINUATIONS: u32 = 32;
/// Queued output above which the connection stops pulling from its streams (and stops
/// reading, so a client cannot queue replies to its pings without bound).
const OUT_HIGH: usize = 256 * 1024;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;
/// A connection silent for this long gets a ping; one that does not answer in
/// `PING_TIMEOUT` is closed (as tonic's keepalive did on this port).
const KEEPALIVE: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a connection past its maximum age keeps its streams after the GOAWAY.
const MAX_AGE_GRACE: Duration = Duration::from_secs(10);
/// How long a closing connection waits for the client to close after our GOAWAY.
const LINGER: Duration = Duration::from_secs(1);
/// A new connection must send the client preface and its first SETTINGS within this long
/// (a slowloris connection that sends nothing, or only the magic, is closed).
const HANDSHAKE: Duration = Duration::from_secs(10);
/// A header block (HEADERS and its CONTINUATION frames) must end within this long.
const HEADER_DEADLINE: Duration = Duration::from_secs(10);
/// The window the per-connection rates below are counted in.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Streams a connection may have reset or refused per window: the client's RST_STREAM on a
/// stream still open, and streams we refused or answered with an error at once. Past
/// this, GOAWAY ENHANCE_YOUR_CALM: bounds Rapid Reset (CVE-2023-44487). Streams that
/// complete (a sidecar's ext_authz checks, thousands a second) do not count.
const RESETS_PER_WINDOW: u32 = 500;
/// xDS streams a connection may open per window (an Envoy opens one, and reopens it with
/// backoff); past this they are refused with RESOURCE_EXHAUSTED before they reach the
/// server's shared admission bucket.
const CALLS_PER_WINDOW: u32 = 32;
/// PING, SETTINGS, PRIORITY, WINDOW_UPDATE, RST_STREAM and empty DATA frames a connection
/// may send per window: past this, GOAWAY ENHANCE_YOUR_CALM (floods answered at our cost).
const CONTROL_PER_WINDOW: u32 = 10_000;
/// Request bytes one connection may have buffered (received and not yet taken as whole
/// messages by its streams): one largest message and a stream window.
const CONN_HELD_MAX: usize = super::server::MAX_MESSAGE + 5 + STREAM_WINDOW as usize;
/// The bytes held beyond the initial windows (granted as part of a message larger than a
/// window) for all connections together: past it, a connection holding more than its
/// initial window (`HELD_FREE`) is closed. Within the initial windows a connection is
/// never closed for holding bytes: a reconnect storm of 2,000 proxies legitimately holds
/// ~1 MB each while their streams' tasks catch up.
const HELD_MAX: usize = 32 << 20;
const HELD_FREE: usize = CONN_WINDOW as usize + 64 * 1024;

/// Request bytes buffered by every connection beyond its initial window (see `HELD_MAX`).
static HELD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Each worker thread's read buffer, shared by the connections it polls.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A frame's payload length, from its header.
fn frame_len(h: &[u8]) -> usize {
    (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize
}

/// Live connections, for the shutdown drain.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// A gRPC service other than xDS served on the same port (the TLS port's ext_authz): the
/// path prefix it answers (`/service.Name/`) and the call.
pub struct Extra {
    pub prefix: &'static str,
    pub call: Box<dyn Fn(http::Request<tonic::body::Body>) -> ServiceFuture + Send + Sync>,
}

pub type ServiceFuture =
    Pin<Box<dyn Future<Output = http::Response<tonic::body::Body>> + Send + 'static>>;

/// The peer's certificate chain on a TLS connection, in every request's extensions (tonic's
/// `TlsConnectInfo` cannot be built outside tonic).
#[derive(Clone)]
pub struct PeerCerts(pub Arc<Vec<rustls::pki_types::CertificateDer<'static>>>);

/// What every connection of one port shares.
struct Shared {
    srv: XdsServer,
    stopping: AtomicBool,
    extra: Vec<Extra>,
    /// Connections older than this (±10 %) get GOAWAY; `MAX_AGE_GRACE` later they close.
    max_age: Option<Duration>,
}

/// Serves gRPC over cleartext HTTP/2 on `listener` until `stop` becomes true; then waits
/// (at most `drain`) for connections to close after their streams ended.
pub async fn serve(
    listener: TcpListener,
    srv: XdsServer,
    stop: watch::Receiver<bool>,
    drain: Duration,
) {
    serve_with(listener, None, srv, Vec::new(), stop, drain, None).await
}

/// `serve` with a maximum connection age: a connection that lived `max_age` (±10 %) gets
/// GOAWAY and is closed `MAX_AGE_GRACE` later, streams and all, so its proxy reconnects,
/// possibly to another replica (gRPC's MAX_CONNECTION_AGE, as istiod uses it).
pub async fn serve_aged(
    listener: TcpListener,
    srv: XdsServer,
    stop: watch::Receiver<bool>,
    drain: Duration,
    max_age: Option<Duration>,
) {
    serve_with(listener, None, srv, Vec::new(), stop, drain, max_age).await
}

/// `serve_aged` with other gRPC services next to xDS (`extra`).
pub async fn serve_plain(
    listener: TcpListener,
    srv: XdsServer,
    extra: Vec<Extra>,
    stop: watch::Receiver<bool>,
    drain: Duration,
    max_age: Option<Duration>,
) {
    serve_with(listener, None, srv, extra, stop, drain, max_age).await
}

/// The same over TLS (`acceptor`; ALPN `h2`), with `extra` served next to xDS. A client
/// certificate, when one is presented and verified, reaches the services as [`PeerCerts`].
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    srv: XdsServer,
    extra: Vec<Extra>,
    stop: watch::Receiver<bool>,
    drain: Duration,
    max_age: Option<Duration>,
) {
    serve_with(listener, Some(acceptor), srv, extra, stop, drain, max_age).await
}

async fn serve_with(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    srv: XdsServer,
    extra: Vec<Extra>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
    max_age: Option<Duration>,
) {
    let shared = Arc::new(Shared {
        srv,
        stopping: AtomicBool::new(false),
        extra,
        max_age,
    });
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((io, peer)) => {
                    let _ = io.set_nodelay(true);
                    let local = io.local_addr().ok();
                    match &tls {
                        None => {
                            tokio::spawn(Conn::new(io, peer, local, shared.clone(), None));
                        }
                        Some(acceptor) => {
                            let (acceptor, shared) = (acceptor.clone(), shared.clone());
                            tokio::spawn(async move {
                                // The handshake has the same deadline as the preface.
                                let tls = match tokio::time::timeout(HANDSHAKE, acceptor.accept(io)).await {
                                    Ok(Ok(tls)) => tls,
                                    Ok(Err(e)) => {
                                        debug!(%peer, error = %e, "TLS handshake failed");
                                        return;
                                    }
                                    Err(_) => {
                                        debug!(%peer, "TLS handshake timed out");
                                        return;
                                    }
                                };
                                let certs = tls
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .filter(|c| !c.is_empty())
                                    .map(|c| PeerCerts(Arc::new(c.to_vec())));
                                Conn::new(tls, peer, local, shared, certs).await
                            });
                        }
                    }
                }
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            _ = stopped(&mut stop) => break,
        }
    }
    shared.stopping.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + drain;
    while LIVE.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Request bytes of one stream on their way from the connection to the stream's task,
/// gathered in one buffer so a message is decoded where it landed (one copy from the
/// socket buffer, no per-frame allocations).
#[derive(Default)]
pub struct Inbox {
    state: Mutex<InboxState>,
    /// The connection's buffered request bytes (see `CONN_HELD_MAX`).
    held: Arc<AtomicUsize>,
}

#[derive(Default)]
struct InboxState {
    buf: BytesMut,
    /// Size of the message at the front, once its prefix arrived (0: not known).
    want: usize,
    /// Bytes at the end of `buf` not yet counted as consumed (held back by flow control).
    held: usize,
    /// The client ended its side (`Some(true)`: cleanly, `Some(false)`: reset).
    end: Option<bool>,
    /// Bytes counted as consumed and not yet granted back to the client.
    consumed: usize,
    reader: Option<Waker>,
    conn: Option<Waker>,
}

impl InboxState {
    /// Counts buffered bytes as consumed while the buffer holds no more than the message
    /// being received (or a window's worth): a client that sends more than the stream
    /// reads is held back by its window, and one large message still flows.
    fn settle(&mut self) {
        let cap = self.want.max(STREAM_WINDOW as usize);
        let over = self.buf.len().saturating_sub(cap);
        if self.held > over {
            self.consumed += self.held - over;
            self.held = over;
        }
        if self.consumed >= GRANT_STEP {
            if let Some(w) = self.conn.take() {
                w.wake();
            }
        }
    }
}

impl Inbox {
    fn new(held: Arc<AtomicUsize>) -> Inbox {
        Inbox {
            state: Default::default(),
            held,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `n` bytes buffered (`more`) or released: the connection's total, and in
    /// `HELD` the part of it beyond the connection's initial window. (Each update's share
    /// comes from the value it replaced, so concurrent updates still add up.)
    fn account(&self, n: usize, more: bool) {
        if n == 0 {
            return;
        }
        let (old, new) = if more {
            let old = self.held.fetch_add(n, Ordering::Relaxed);
            (old, old + n)
        } else {
            let old = self.held.fetch_sub(n, Ordering::Relaxed);
            (old, old - n)
        };
        let beyond = |v: usize| v.saturating_sub(CONN_WINDOW as usize);
        let (was, now) = (beyond(old), beyond(new));
        if now > was {
            HELD.fetch_add(now - was, Ordering::Relaxed);
        } else if was > now {
            HELD.fetch_sub(was - now, Ordering::Relaxed);
        }
    }

    /// The stream's task: the next gRPC message (without its 5-byte prefix), `None` at
    /// the clean end of the stream.
    pub fn poll_message(
        &self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, Status>> {
        let mut s = self.lock();
        if s.end == Some(false) {
            return Poll::Ready(Err(Status::cancelled("stream reset by the client")));
        }
        if s.buf.len() >= 5 {
            if s.buf[0] != 0 {
                return Poll::Ready(Err(Status::unimplemented(
                    "compressed xDS requests are not supported",
                )));
            }
            let len = u32::from_be_bytes([s.buf[1], s.buf[2], s.buf[3], s.buf[4]]) as usize;
            if len > max {
                return Poll::Ready(Err(Status::resource_exhausted(format!(
                    "request of {len} bytes is over the {max} byte limit"
                ))));
            }
            if s.buf.len() >= 5 + len {
                let mut msg = s.buf.split_to(5 + len).freeze();
                self.account(5 + len, false);
                if s.buf.is_empty() {
                    // The rest of the allocation goes with the message.
                    s.buf = BytesMut::new();
                }
                s.want = 0;
                s.settle();
                return Poll::Ready(Ok(Some(msg.split_off(5))));
            }
            if s.want != 5 + len {
                s.want = 5 + len;
                // Room for the whole message at once, not grown step by step.
                let more = (5 + len).min(RESERVE_MAX).saturating_sub(s.buf.len());
                s.buf.reserve(more);
                s.settle();
            }
        }
        match s.end {
            Some(_) if s.buf.is_empty() => Poll::Ready(Ok(None)),
            Some(_) => Poll::Ready(Err(Status::internal(
                "request stream ended inside a message",
            ))),
            None => {
                if !s.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    s.reader = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    fn push(&self, b: &[u8]) {
        let mut s = self.lock();
        if s.buf.is_empty() && b.len() >= 5 {
            // A message starts here: room for all of it (up to a bound) in one allocation.
            let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
            s.want = 5 + len;
            s.buf.reserve((5 + len).min(RESERVE_MAX).max(b.len()));
        }
        s.buf.extend_from_slice(b);
        self.account(b.len(), true);
        s.held += b.len();
        s.settle();
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }

    /// Bytes that count as consumed without reaching the reader (padding).
    fn credit(&self, n: usize) {
        self.lock().consumed += n;
    }

    fn end(&self, clean: bool) {
        let mut s = self.lock();
        if s.end.is_none() {
            s.end = Some(clean);
        }
        if !clean {
            self.account(s.buf.len(), false);
            s.buf = BytesMut::new();
        }
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }

    /// The connection: consumed bytes to grant back once they reach a step (the inbox
    /// wakes `waker` then).
    fn take_consumed(&self, waker: &Waker) -> usize {
        let mut s = self.lock();
        if !s.conn.as_ref().is_some_and(|w| w.will_wake(waker)) {
            s.conn = Some(waker.clone());
        }
        if s.consumed >= GRANT_STEP {
            std::mem::take(&mut s.consumed)
        } else {
            0
        }
    }

    /// Bytes received and never granted back, when the stream goes.
    fn outstanding(&self) -> usize {
        let s = self.lock();
        s.consumed + s.held
    }
}

/// A stream's request as an HTTP body for another service ([`Extra`]): its gRPC messages,
/// each with its prefix again.
struct InboxBody(Arc<Inbox>);

impl Body for InboxBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        self.0
            .poll_message(cx, super::server::MAX_MESSAGE)
            .map(|r| match r {
                Ok(Some(m)) => {
                    let mut b = BytesMut::with_capacity(5 + m.len());
                    b.put_u8(0);
                    b.put_u32(m.len() as u32);
                    b.put_slice(&m);
                    Some(Ok(http_body::Frame::data(b.freeze())))
                }
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            })
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let n = self.lock().buf.len();
        self.account(n, false);
    }
}

struct Stream {
    id: u32,
    send_window: i64,
    recv_window: i64,
    body: Reply,
    /// Response bytes taken from the body and not yet framed.
    pending: Option<Bytes>,
    /// Trailers written: nothing more to send.
    done: bool,
    /// The client ended its side.
    recv_closed: bool,
    /// Request bytes the client's `content-length` still announces (`NO_LENGTH`: none).
    content_left: u64,
    inbox: Arc<Inbox>,
}

/// What a stream answers with.
enum Reply {
    /// An xDS call's response.
    Grpc(XdsBody),
    /// A call to another service ([`Extra`]): the call until it answers, then its body.
    Service {
        call: Option<ServiceFuture>,
        body: Option<tonic::body::Body>,
    },
    /// A request that is not gRPC, answered as an HTTP server would (404 and a body) once
    /// the whole request was read (its body is discarded): answering earlier would race a
    /// malformed request's stream error, and a body keeps the stream subject to flow
    /// control as HTTP/2 clients (and h2spec) expect. `discarded`: body bytes read.
    Http { discarded: usize, answered: bool },
}

/// The connection's task is the connection itself (no async fn around it, which would
/// hold a second copy of its state).
impl<IO: AsyncRead + AsyncWrite + Unpin> Future for Conn<IO> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        match this.drive(cx) {
            Poll::Ready(r) => {
                if let Err(e) = r {
                    debug!(peer = %this.peer, error = %e, "xDS connection ended");
                }
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO> Drop for Conn<IO> {
    fn drop(&mut self) {
        for s in self.streams.drain(..) {
            s.inbox.end(false);
        }
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection error: GOAWAY with this code, then close.
struct ConnError(u32, &'static str);

struct Conn<IO> {
    io: IO,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    shared: Arc<Shared>,
    /// The client's certificate chain (TLS with a client certificate).
    certs: Option<PeerCerts>,
    /// Received bytes not yet handled (a partial frame); empty and unallocated when idle.
    rbuf: BytesMut,
    preface: bool,
    read_closed: bool,
    hpack: loona_hpack::Decoder<'static>,
    /// A header block waiting for CONTINUATION frames: stream, HEADERS flags, block.
    cont: Option<(u32, u8, Vec<u8>)>,
    /// CONTINUATION frames received for `cont` (a flood of tiny or empty ones would keep a
    /// header block open for ever).
    cont_frames: u32,
    streams: Vec<Stream>,
    last_stream: u32,
    /// Streams we ended with RST_STREAM that the client has not ended: frames it sent
    /// before seeing the reset are ignored, not errors (RFC 9113 section 5.1, "closed").
    /// With each, the `content-length` bytes still due. Empty (unallocated) when idle.
    resets: Vec<(u32, u64)>,
    /// Small frames being assembled; sealed into `out` before writing.
    wb: BytesMut,
    out: VecDeque<Bytes>,
    out_len: usize,
    send_window: i64,
    recv_window: i64,
    /// Connection-level bytes to grant back (padding, data of closed streams, consumed).
    conn_grant: usize,
    peer_window: i64,
    peer_max_frame: usize,
    /// GOAWAY sent or received: no new streams; close when the last one ends.
    closing: bool,
    last_read: Instant,
    ping_sent: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    /// When the connection was accepted (the handshake deadline counts from here).
    born: Instant,
    /// The client's first SETTINGS frame arrived (the preface is complete).
    settings_seen: bool,
    /// When the header block in `cont` started.
    cont_since: Instant,
    /// Closing: until when input is drained, and the error to report.
    linger: Option<(Instant, Option<&'static str>)>,
    /// When the connection reaches its maximum age; then (after the GOAWAY) when it closes.
    old_at: Option<Instant>,
    retire_at: Option<Instant>,
    /// This connection's buffered request bytes (shared with its streams' inboxes).
    held: Arc<AtomicUsize>,
    /// The current rate window: its start, and streams, gRPC calls and control frames
    /// counted in it.
    win_start: Instant,
    win_resets: u32,
    win_calls: u32,
    win_control: u32,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    fn new(
        io: IO,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        shared: Arc<Shared>,
        certs: Option<PeerCerts>,
    ) -> Conn<IO> {
        let now = Instant::now();
        let mut c = Conn {
            io,
            peer,
            local,
            shared,
            certs,
            rbuf: BytesMut::new(),
            preface: false,
            read_closed: false,
            hpack: loona_hpack::Decoder::new(),
            cont: None,
            cont_frames: 0,
            streams: Vec::new(),
            last_stream: 0,
            resets: Vec::new(),
            wb: BytesMut::new(),
            out: VecDeque::new(),
            out_len: 0,
            send_window: 65_535,
            recv_window: 65_535,
            conn_grant: 0,
            peer_window: 65_535,
            peer_max_frame: MAX_FRAME,
            closing: false,
            last_read: now,
            ping_sent: None,
            timer: Box::pin(tokio::time::sleep_until(now + HANDSHAKE)),
            born: now,
            settings_seen: false,
            cont_since: now,
            linger: None,
            old_at: None,
            retire_at: None,
            held: Arc::new(AtomicUsize::new(0)),
            win_start: now,
            win_resets: 0,
            win_calls: 0,
            win_control: 0,
        };
        // Server preface: our settings, then the connection window raised.
        let settings: [(u16, u32); 3] = [
            (3, MAX_STREAMS as u32),
            (4, STREAM_WINDOW),
            (6, MAX_HEADER_LIST as u32),
        ];
        c.frame_head(settings.len() * 6, SETTINGS, 0, 0);
        for (id, v) in settings {
            c.wb.put_u16(id);
            c.wb.put_u32(v);
        }
        c.window_update(0, CONN_WINDOW - 65_535);
        c.hpack.set_max_allowed_table_size(HEADER_TABLE);
        c.recv_window = CONN_WINDOW as i64;
        // ±10 %, so connections made together (a reconnect storm) do not age out together.
        c.old_at = c
            .shared
            .max_age
            .map(|a| now + a.mul_f64(0.9 + 0.2 * rand::random::<f64>()));
        LIVE.fetch_add(1, Ordering::SeqCst);
        c
    }

    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        loop {
            if self.linger.is_some() {
                return self.poll_linger(cx);
            }
            let mut progress = false;
            // Read what is there (unless output is backed up).
            if !self.read_closed && self.queued() < OUT_HIGH {
                match self.poll_read(cx) {
                    Poll::Ready(Ok(true)) => progress = true,
                    Poll::Ready(Ok(false)) => {
                        // EOF: the client is gone; nothing more can be delivered.
                        self.read_closed = true;
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Ready(Err(e)) => {
                        self.close_with(e.0, Some(e.1));
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            if let Some(e) = self.timers(cx) {
                self.close_with(e.0, Some(e.1));
                continue;
            }
            if self.shared.stopping.load(Ordering::Relaxed) && !self.closing {
                self.closing = true;
                self.goaway(NO_ERROR);
            }
            self.grant(cx);
            self.fill(cx);
            match self.poll_flush(cx) {
                Poll::Ready(Ok(wrote)) => progress |= wrote,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.to_string())),
                Poll::Pending => {}
            }
            if self.closing && self.streams.is_empty() && self.queued() == 0 {
                // Our GOAWAY went out and every stream ended: close, lingering.
                self.linger = Some((Instant::now() + LINGER, None));
                continue;
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// A connection error: GOAWAY with `code`, then the lingering close.
    fn close_with(&mut self, code: u32, why: Option<&'static str>) {
        self.goaway(code);
        self.linger = Some((Instant::now() + LINGER, why));
    }

    /// Closing: the queued output (the GOAWAY) is written, the write side shut, and input
    /// read and dropped until the client closes or `LINGER` passes. Closing at once with
    /// unread input would make the kernel send a reset, which can destroy the GOAWAY
    /// before the client reads it.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        let Some((deadline, why)) = self.linger else {
            return Poll::Ready(Ok(()));
        };
        let done = |why: Option<&'static str>| Poll::Ready(why.map_or(Ok(()), |w| Err(w.into())));
        if self.queued() > 0 {
            match self.poll_flush(cx) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(_)) => return done(why),
                Poll::Pending => {}
            }
        }
        if self.queued() == 0 && !self.read_closed {
            match Pin::new(&mut self.io).poll_shutdown(cx) {
                Poll::Ready(_) => {}
                Poll::Pending => {}
            }
            // Input is dropped until EOF.
            let mut buf = [0u8; 4096];
            loop {
                let mut rb = tokio::io::ReadBuf::new(&mut buf);
                match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => return done(why),
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(_)) => return done(why),
                    Poll::Pending => break,
                }
            }
        }
        if Instant::now() >= deadline {
            return done(why);
        }
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => done(why),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Reads once and handles every complete frame. `Ok(false)` at EOF.
    ///
    /// The read goes into a scratch buffer of the worker thread; frames are handled from
    /// there, and only a frame cut by the end of the read is kept, in `rbuf`, until the
    /// rest arrives. A connection between bursts holds no read buffer at all.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, ConnError>> {
        SCRATCH.with(|cell| {
            let mut own = Vec::new();
            let mut shared = cell.try_borrow_mut();
            let scratch: &mut Vec<u8> = match shared.as_deref_mut() {
                Ok(v) => v,
                Err(_) => &mut own, // never nested in practice; stay correct if it is
            };
            if scratch.len() < READ_CHUNK {
                scratch.resize(READ_CHUNK, 0);
            }
            let mut rb = tokio::io::ReadBuf::new(&mut scratch[..]);
            let n = match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(false)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(Ok(false)),
                Poll::Ready(Ok(())) => rb.filled().len(),
            };
            self.last_read = Instant::now();
            self.ping_sent = None;
            Poll::Ready(self.input(&scratch[..n]).map(|()| true))
        })
    }

    /// Handles freshly read bytes: first completes the unit (preface or frame) left over
    /// from the last read, then every whole frame, then keeps what is cut off.
    fn input(&mut self, mut data: &[u8]) -> Result<(), ConnError> {
        while !self.rbuf.is_empty() {
            let have = self.rbuf.len();
            let need = if !self.preface {
                PREFACE.len() - have
            } else if have < 9 {
                9 - have
            } else {
                let len = frame_len(&self.rbuf);
                if len > MAX_FRAME {
                    return Err(ConnError(FRAME_SIZE_ERROR, "frame larger than advertised"));
                }
                9 + len - have
            };
            let take = need.min(data.len());
            self.rbuf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if take < need {
                // Still incomplete; a cut preface is checked as far as it goes.
                if !self.preface && !PREFACE.starts_with(&self.rbuf) {
                    return Err(ConnError(PROTOCOL_ERROR, "not an HTTP/2 client preface"));
                }
                return Ok(());
            }
            let whole = !self.preface
                || self.rbuf.len() >= 9 && self.rbuf.len() == 9 + frame_len(&self.rbuf);
            if whole {
                let unit = std::mem::take(&mut self.rbuf);
                self.handle_input(&unit)?;
            }
        }
        let used = self.complete_prefix(data)?;
        self.handle_input(&data[..used])?;
        if used < data.len() {
            self.rbuf = BytesMut::with_capacity(MAX_FRAME + 9);
            self.rbuf.extend_from_slice(&data[used..]);
        }
        Ok(())
    }

    /// How many bytes at the start of `buf` are the preface (if due) and whole frames.
    fn complete_prefix(&self, buf: &[u8]) -> Result<usize, ConnError> {
        let mut pos = 0;
        if !self.preface {
            let n = buf.len().min(PREFACE.len());
            if buf[..n] != PREFACE[..n] {
                return Err(ConnError(PROTOCOL_ERROR, "not an HTTP/2 client preface"));
            }
            if n < PREFACE.len() {
                return Ok(0);
            }
            pos = PREFACE.len();
        }
        while buf.len() - pos >= 9 {
            let len = frame_len(&buf[pos..]);
            if len > MAX_FRAME {
                return Err(ConnError(FRAME_SIZE_ERROR, "frame larger than advertised"));
            }
            if buf.len() - pos < 9 + len {
                break;
            }
            pos += 9 + len;
        }
        Ok(pos)
    }

    /// Handles `buf`: whole frames (after the preface, the first time).
    fn handle_input(&mut self, buf: &[u8]) -> Result<(), ConnError> {
        let mut pos = 0;
        if buf.is_empty() {
            return Ok(());
        }
        if !self.preface {
            if !buf.starts_with(PREFACE) {
                return Err(ConnError(PROTOCOL_ERROR, "not an HTTP/2 client preface"));
            }
            self.preface = true;
            pos = PREFACE.len();
        }
        while buf.len() - pos >= 9 {
            let h = &buf[pos..pos + 9];
            let len = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
            let (ty, flags) = (h[3], h[4]);
            let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            self.frame(ty, flags, id, &buf[pos + 9..pos + 9 + len])?;
            pos += 9 + len;
        }
        Ok(())
    }

    fn frame(&mut self, ty: u8, flags: u8, id: u32, p: &[u8]) -> Result<(), ConnError> {
        if let Some((cid, _, block)) = &mut self.cont {
            if ty != CONTINUATION || id != *cid {
                return Err(ConnError(PROTOCOL_ERROR, "expected CONTINUATION"));
            }
            if block.len() + p.len() > MAX_HEADER_BLOCK {
                return Err(ConnError(ENHANCE_YOUR_CALM, "header block too large"));
            }
            self.cont_frames += 1;
            if self.cont_frames > MAX_CONTINUATIONS {
                return Err(ConnError(
                    ENHANCE_YOUR_CALM,
                    "header block in too many frames",
                ));
            }
            block.extend_from_slice(p);
            if flags & END_HEADERS != 0 {
                let (cid, hflags, block) = self.cont.take().unwrap_or_default();
                self.header_block(cid, hflags, &block)?;
            }
            return Ok(());
        }
        if matches!(
            ty,
            PRIORITY_FRAME | RST_STREAM | SETTINGS | PING | WINDOW_UPDATE
        ) || ty > CONTINUATION
            || ty == DATA && p.is_empty() && flags & END_STREAM == 0
        {
            self.control()?;
        }
        match ty {
            DATA => self.data(flags, id, p),
            HEADERS => {
                if id == 0 {
                    return Err(ConnError(PROTOCOL_ERROR, "HEADERS on stream 0"));
                }
                let mut p = strip_padding(flags, p)?;
                let mut flags = flags & (END_STREAM | END_HEADERS | PADDED | PRIORITY);
                if flags & PRIORITY != 0 {
                    if p.len() < 5 {
                        return Err(ConnError(FRAME_SIZE_ERROR, "short HEADERS priority"));
                    }
                    if u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff == id {
                        flags |= SELF_DEPENDENT;
                    }
                    p = &p[5..];
                }
                if flags & END_HEADERS != 0 {
                    self.header_block(id, flags, p)
                } else {
                    self.cont = Some((id, flags, p.to_vec()));
                    self.cont_frames = 0;
                    self.cont_since = Instant::now();
                    Ok(())
                }
            }
            PRIORITY_FRAME => {
                if id == 0 {
                    return Err(ConnError(PROTOCOL_ERROR, "PRIORITY on stream 0"));
                }
                // Priorities are otherwise ignored, and allowed in every stream state.
                if p.len() != 5 {
                    self.stream_error(id, FRAME_SIZE_ERROR);
                } else if u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff == id {
                    self.stream_error(id, PROTOCOL_ERROR);
                }
                Ok(())
            }
            RST_STREAM => {
                if p.len() != 4 {
                    return Err(ConnError(FRAME_SIZE_ERROR, "RST_STREAM of the wrong size"));
                }
                if id == 0 {
                    return Err(ConnError(PROTOCOL_ERROR, "RST_STREAM on stream 0"));
                }
                if id > self.last_stream {
                    return Err(ConnError(PROTOCOL_ERROR, "RST_STREAM on an idle stream"));
                }
                let open = self.find(id);
                if let Some(i) = open {
                    let s = self.streams.swap_remove(i);
                    self.conn_grant += s.inbox.outstanding();
                    s.inbox.end(false);
                }
                // Both sides ended it: any later frame on it is the client's error.
                self.forget_reset(id);
                if open.is_some() {
                    self.strike()?;
                }
                Ok(())
            }
            SETTINGS => self.settings(flags, id, p),
            PUSH_PROMISE => Err(ConnError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")),
            PING => {
                if id != 0 {
                    return Err(ConnError(PROTOCOL_ERROR, "PING on a stream"));
                }
                if p.len() != 8 {
                    return Err(ConnError(FRAME_SIZE_ERROR, "PING of the wrong size"));
                }
                if flags & ACK == 0 {
                    self.frame_head(8, PING, ACK, 0);
                    self.wb.put_slice(p);
                }
                Ok(())
            }
            GOAWAY => {
                if id != 0 {
                    return Err(ConnError(PROTOCOL_ERROR, "GOAWAY on a stream"));
                }
                if p.len() < 8 {
                    return Err(ConnError(FRAME_SIZE_ERROR, "GOAWAY too short"));
                }
                // The client opens no more streams; it closes the connection when it is
                // done (answering its pings meanwhile, as RFC 9113 section 6.8 expects).
                Ok(())
            }
            WINDOW_UPDATE => {
                if p.len() != 4 {
                    return Err(ConnError(
                        FRAME_SIZE_ERROR,
                        "WINDOW_UPDATE of the wrong size",
                    ));
                }
                let inc = (u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff) as i64;
                if id == 0 {
                    if inc == 0 {
                        return Err(ConnError(PROTOCOL_ERROR, "WINDOW_UPDATE of zero"));
                    }
                    self.send_window += inc;
                    if self.send_window > i32::MAX as i64 {
                        return Err(ConnError(FLOW_CONTROL_ERROR, "connection window overflow"));
                    }
                } else if id > self.last_stream {
                    return Err(ConnError(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream"));
                } else if inc == 0 {
                    self.stream_error(id, PROTOCOL_ERROR);
                } else if let Some(i) = self.find(id) {
                    let s = &mut self.streams[i];
                    s.send_window += inc;
                    if s.send_window > i32::MAX as i64 {
                        let s = self.streams.swap_remove(i);
                        self.reset(s, FLOW_CONTROL_ERROR);
                    }
                }
                // (On a closed stream it may be late, and is ignored.)
                Ok(())
            }
            CONTINUATION => Err(ConnError(PROTOCOL_ERROR, "CONTINUATION without HEADERS")),
            _ => Ok(()), // unknown types are ignored
        }
    }

    fn data(&mut self, flags: u8, id: u32, p: &[u8]) -> Result<(), ConnError> {
        if id == 0 {
            return Err(ConnError(PROTOCOL_ERROR, "DATA on stream 0"));
        }
        self.recv_window -= p.len() as i64;
        if self.recv_window < 0 {
            return Err(ConnError(FLOW_CONTROL_ERROR, "connection window exceeded"));
        }
        let body = strip_padding(flags, p)?;
        let padding = p.len() - body.len();
        let end = flags & END_STREAM != 0;
        let Some(i) = self.find(id) else {
            // Not open: its data only counts against the connection window.
            self.conn_grant += p.len();
            if id > self.last_stream {
                return Err(ConnError(PROTOCOL_ERROR, "DATA on an idle stream"));
            }
            match self.resets.iter().position(|r| r.0 == id) {
                // Sent before the client saw our reset: ignored, though a body that
                // contradicts its content-length is still an error.
                Some(r) => {
                    let left = self.resets[r].1;
                    if !content_fits(left, body.len(), end) {
                        self.rst(id, PROTOCOL_ERROR);
                    } else if end {
                        self.resets.swap_remove(r);
                    } else if left != NO_LENGTH {
                        self.resets[r].1 = left - body.len() as u64;
                    }
                }
                None => self.rst(id, STREAM_CLOSED),
            }
            return Ok(());
        };
        let s = &mut self.streams[i];
        if s.recv_closed {
            // Half-closed (remote): the client already ended its side.
            let s = self.streams.swap_remove(i);
            self.conn_grant += p.len();
            self.reset(s, STREAM_CLOSED);
            return Ok(());
        }
        s.recv_window -= p.len() as i64;
        if s.recv_window < 0 {
            let s = self.streams.swap_remove(i);
            self.conn_grant += p.len();
            self.reset(s, FLOW_CONTROL_ERROR);
            return Ok(());
        }
        if !content_fits(s.content_left, body.len(), end) {
            let s = self.streams.swap_remove(i);
            self.conn_grant += p.len();
            self.reset(s, PROTOCOL_ERROR);
            return Ok(());
        }
        if s.content_left != NO_LENGTH {
            s.content_left -= body.len() as u64;
        }
        match &mut s.body {
            Reply::Grpc(_) | Reply::Service { .. } => {
                let mine = self.held.load(Ordering::Relaxed) + body.len();
                if mine > CONN_HELD_MAX {
                    return Err(ConnError(
                        ENHANCE_YOUR_CALM,
                        "unfinished requests over the connection's limit",
                    ));
                }
                if mine > HELD_FREE && HELD.load(Ordering::Relaxed) + body.len() > HELD_MAX {
                    return Err(ConnError(
                        ENHANCE_YOUR_CALM,
                        "unfinished requests over the server's total",
                    ));
                }
                if padding > 0 {
                    s.inbox.credit(padding);
                }
                if !body.is_empty() {
                    s.inbox.push(body);
                }
            }
            Reply::Http { discarded, .. } => {
                *discarded += body.len();
                s.inbox.credit(p.len());
            }
        }
        if end {
            s.recv_closed = true;
            s.inbox.end(true);
        }
        Ok(())
    }

    fn settings(&mut self, flags: u8, id: u32, p: &[u8]) -> Result<(), ConnError> {
        if id != 0 {
            return Err(ConnError(PROTOCOL_ERROR, "SETTINGS on a stream"));
        }
        self.settings_seen = true;
        if flags & ACK != 0 {
            if !p.is_empty() {
                return Err(ConnError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload"));
            }
            return Ok(());
        }
        if p.len() % 6 != 0 {
            return Err(ConnError(FRAME_SIZE_ERROR, "SETTINGS of the wrong size"));
        }
        for e in p.chunks(6) {
            let v = u32::from_be_bytes([e[2], e[3], e[4], e[5]]);
            match u16::from_be_bytes([e[0], e[1]]) {
                2 if v > 1 => {
                    return Err(ConnError(PROTOCOL_ERROR, "ENABLE_PUSH other than 0 or 1"));
                }
                4 => {
                    if v > i32::MAX as u32 {
                        return Err(ConnError(FLOW_CONTROL_ERROR, "initial window too large"));
                    }
                    let delta = v as i64 - self.peer_window;
                    self.peer_window = v as i64;
                    for s in &mut self.streams {
                        s.send_window += delta;
                        if s.send_window > i32::MAX as i64 {
                            return Err(ConnError(FLOW_CONTROL_ERROR, "stream window overflow"));
                        }
                    }
                }
                5 => {
                    if !(16_384..=16_777_215).contains(&v) {
                        return Err(ConnError(PROTOCOL_ERROR, "bad MAX_FRAME_SIZE"));
                    }
                    self.peer_max_frame = v as usize;
                }
                _ => {} // we never index response headers; the rest does not apply
            }
        }
        self.frame_head(0, SETTINGS, ACK, 0);
        Ok(())
    }

    fn header_block(&mut self, id: u32, flags: u8, block: &[u8]) -> Result<(), ConnError> {
        // Decoded even when ignored: the HPACK table must follow every block.
        let mut head = Head::default();
        self.hpack
            .decode_with_cb(block, |n, v| head.field(&n, &v))
            .map_err(|_| ConnError(COMPRESSION_ERROR, "bad header block"))?;
        if head.too_large() {
            return Err(ConnError(
                ENHANCE_YOUR_CALM,
                "decoded header list over SETTINGS_MAX_HEADER_LIST_SIZE",
            ));
        }
        let end = flags & END_STREAM != 0;
        let self_dependent = flags & SELF_DEPENDENT != 0;
        if let Some(i) = self.find(id) {
            // A second header block: the request's trailers.
            let s = &self.streams[i];
            let code = if s.recv_closed {
                Some(STREAM_CLOSED) // half-closed (remote)
            } else if self_dependent
                || head.trailer_error(end).is_some()
                || s.content_left > 0 && s.content_left != NO_LENGTH
            {
                Some(PROTOCOL_ERROR)
            } else {
                None
            };
            match code {
                Some(code) => {
                    let s = self.streams.swap_remove(i);
                    self.reset(s, code);
                }
                None => {
                    let s = &mut self.streams[i];
                    s.recv_closed = true;
                    s.inbox.end(true);
                }
            }
            return Ok(());
        }
        if id % 2 == 0 {
            return Err(ConnError(
                PROTOCOL_ERROR,
                "stream id from a client must be odd",
            ));
        }
        if id <= self.last_stream {
            let Some(r) = self.resets.iter().position(|r| r.0 == id) else {
                // Closed, or skipped over (ids only go up).
                return Err(if id == self.last_stream {
                    ConnError(STREAM_CLOSED, "HEADERS on a closed stream")
                } else {
                    ConnError(PROTOCOL_ERROR, "stream id lower than a previous one")
                });
            };
            // Trailers sent before the client saw our reset: ignored unless malformed.
            let left = self.resets[r].1;
            if self_dependent || head.trailer_error(end).is_some() || left > 0 && left != NO_LENGTH
            {
                self.rst(id, PROTOCOL_ERROR);
            } else {
                self.resets.swap_remove(r);
            }
            return Ok(());
        }
        self.last_stream = id;
        if self_dependent || head.request_error().is_some() {
            // Malformed: a stream error (RFC 9113 section 8.1.1).
            self.rst(id, PROTOCOL_ERROR);
            return self.strike();
        }
        if end && head.content_length.is_some_and(|n| n > 0) {
            self.rst(id, PROTOCOL_ERROR);
            return self.strike();
        }
        let Head {
            path,
            method,
            headers,
            content_length,
            ..
        } = head;
        let path = path.map(|p| String::from_utf8_lossy(&p).into_owned());
        let method_post = method.as_deref() == Some(b"POST");
        let content_left = content_length.unwrap_or(NO_LENGTH);
        if self.closing || self.streams.len() >= MAX_STREAMS {
            self.rst(id, REFUSED_STREAM);
            return self.strike();
        }
        let inbox = Arc::new(Inbox::new(self.held.clone()));
        if end {
            inbox.end(true);
        }
        let grpc = headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"));
        if !grpc {
            self.streams.push(Stream {
                id,
                send_window: self.peer_window,
                recv_window: STREAM_WINDOW as i64,
                body: Reply::Http {
                    discarded: 0,
                    answered: false,
                },
                pending: None,
                done: false,
                recv_closed: end,
                content_left,
                inbox,
            });
            return Ok(());
        }
        let mut req = http::Request::new(());
        if let Some(uri) = path.as_deref().and_then(|p| p.parse().ok()) {
            *req.uri_mut() = uri;
        }
        *req.headers_mut() = headers;
        req.extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo {
                local_addr: self.local,
                remote_addr: Some(self.peer),
            });
        if let Some(certs) = &self.certs {
            req.extensions_mut().insert(certs.clone());
        }
        let path = path.as_deref().unwrap_or("");
        let shared = self.shared.clone();
        let extra = shared.extra.iter().find(|e| path.starts_with(e.prefix));
        let opened = if !method_post {
            Err(Status::unimplemented("gRPC calls are POST"))
        } else if let Some(extra) = extra {
            // Another service: its response head comes when its future resolves.
            let body = tonic::body::Body::new(InboxBody(inbox.clone()));
            let (parts, ()) = req.into_parts();
            Ok(Reply::Service {
                call: Some((extra.call)(http::Request::from_parts(parts, body))),
                body: None,
            })
        } else if !self.count(|c| &mut c.win_calls, CALLS_PER_WINDOW) {
            // Before the server's shared admission bucket: one connection opening xDS
            // streams in a loop cannot drain it.
            Err(Status::resource_exhausted(
                "too many xDS streams on this connection; retry with backoff",
            ))
        } else {
            open_call(&shared.srv, path, req, Source::Inbox(inbox.clone())).map(|rx| {
                self.headers(id, 0, &response_head());
                Reply::Grpc(XdsBody::new(rx))
            })
        };
        match opened {
            Ok(body) => {
                self.streams.push(Stream {
                    id,
                    send_window: self.peer_window,
                    recv_window: STREAM_WINDOW as i64,
                    body,
                    pending: None,
                    done: false,
                    recv_closed: end,
                    content_left,
                    inbox,
                });
            }
            Err(status) => {
                // Trailers-only response.
                let mut block = response_head();
                trailer_fields(&mut block, &status_trailers(&status));
                self.headers(id, END_STREAM, &block);
                if !end {
                    self.rst_left(id, NO_ERROR, content_left);
                }
                inbox.end(false);
                return self.strike();
            }
        }
        Ok(())
    }

    fn find(&self, id: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.id == id)
    }

    /// Ends a stream with RST_STREAM; what it received and did not grant goes back to the
    /// connection window.
    fn reset(&mut self, s: Stream, code: u32) {
        self.conn_grant += s.inbox.outstanding();
        s.inbox.end(false);
        let left = if s.recv_closed { 0 } else { s.content_left };
        self.rst_left(s.id, code, left);
        if s.recv_closed {
            self.forget_reset(s.id); // the client ended it: nothing more may come
        }
    }

    /// A stream error on `id` in any state: the stream is reset if open.
    fn stream_error(&mut self, id: u32, code: u32) {
        match self.find(id) {
            Some(i) => {
                let s = self.streams.swap_remove(i);
                self.reset(s, code);
            }
            None => self.rst(id, code),
        }
    }

    fn forget_reset(&mut self, id: u32) {
        self.resets.retain(|r| r.0 != id);
        if self.resets.is_empty() {
            self.resets = Vec::new();
        }
    }

    /// Grants window for request bytes the streams' tasks consumed.
    fn grant(&mut self, cx: &mut Context<'_>) {
        for i in 0..self.streams.len() {
            let n = self.streams[i].inbox.take_consumed(cx.waker());
            if n > 0 {
                let id = self.streams[i].id;
                if !self.streams[i].recv_closed {
                    self.streams[i].recv_window += n as i64;
                    self.window_update(id, n as u32);
                }
                self.conn_grant += n;
            }
        }
        if self.conn_grant >= GRANT_STEP {
            let n = std::mem::take(&mut self.conn_grant);
            self.recv_window += n as i64;
            self.window_update(0, n as u32);
        }
    }

    /// Moves response bytes from the streams into the output, as windows allow.
    fn fill(&mut self, cx: &mut Context<'_>) {
        let mut i = 0;
        while i < self.streams.len() {
            loop {
                if self.queued() >= OUT_HIGH {
                    return;
                }
                let s = &mut self.streams[i];
                if s.pending.is_none() {
                    if s.done {
                        break;
                    }
                    let polled = match &mut s.body {
                        Reply::Grpc(body) => Pin::new(body).poll_frame(cx),
                        Reply::Service { call, body } => {
                            if let Some(c) = call {
                                let Poll::Ready(resp) = c.as_mut().poll(cx) else {
                                    break;
                                };
                                *call = None;
                                let (parts, b) = resp.into_parts();
                                let end = b.is_end_stream();
                                *body = Some(b);
                                let id = s.id;
                                let mut block = Vec::new();
                                hpack_int(&mut block, 0x00, 4, 8); // :status, indexed name
                                hpack_str(&mut block, parts.status.as_str().as_bytes());
                                trailer_fields(&mut block, &parts.headers);
                                if end {
                                    // Trailers-only (an error status in the head).
                                    s.done = true;
                                    self.headers(id, END_STREAM, &block);
                                    break;
                                }
                                self.headers(id, 0, &block);
                                continue;
                            }
                            match body {
                                Some(b) => Pin::new(b).poll_frame(cx),
                                None => break,
                            }
                        }
                        Reply::Http { answered: true, .. } => break,
                        Reply::Http {
                            discarded,
                            answered,
                        } => {
                            // Answered once the request ended (or sent too much).
                            let too_much = *discarded > MAX_PLAIN_BODY;
                            if !s.recv_closed && !too_much {
                                break;
                            }
                            *answered = true;
                            // :status 400 and 404, indexed.
                            let (status, text) = if too_much {
                                (0x8c, "pilotfish: request body too large\n")
                            } else {
                                (0x8d, "pilotfish: not a gRPC method of this port\n")
                            };
                            s.pending = Some(Bytes::from_static(text.as_bytes()));
                            let id = s.id;
                            let mut block = vec![status];
                            hpack_int(&mut block, 0x00, 4, 31);
                            hpack_str(&mut block, b"text/plain; charset=utf-8");
                            self.headers(id, 0, &block);
                            continue;
                        }
                    };
                    let trailers = match polled {
                        Poll::Ready(Some(Ok(f))) => match f.into_data() {
                            Ok(d) => {
                                if !d.is_empty() {
                                    s.pending = Some(d);
                                }
                                continue;
                            }
                            Err(f) => f.into_trailers().unwrap_or_default(),
                        },
                        Poll::Ready(Some(Err(status))) => status_trailers(&status),
                        Poll::Ready(None) => super::wire::trailers(None),
                        Poll::Pending => break,
                    };
                    let id = s.id;
                    s.done = true;
                    let mut block = Vec::new();
                    trailer_fields(&mut block, &trailers);
                    self.headers(id, END_STREAM, &block);
                    break;
                }
                let n = {
                    let p = s.pending.as_ref().map_or(0, |p| p.len());
                    (p as i64)
                        .min(s.send_window)
                        .min(self.send_window)
                        .min(self.peer_max_frame as i64)
                };
                if n <= 0 {
                    break; // blocked by flow control; a WINDOW_UPDATE wakes us
                }
                let n = n as usize;
                let Some(p) = s.pending.as_mut() else { break };
                let chunk = p.split_to(n);
                let mut flags = 0;
                if p.is_empty() {
                    s.pending = None;
                    if matches!(s.body, Reply::Http { .. }) {
                        // The whole answer: the body's last frame ends the stream.
                        flags = END_STREAM;
                        s.done = true;
                    }
                }
                s.send_window -= n as i64;
                self.send_window -= n as i64;
                let id = s.id;
                self.frame_head(n, DATA, flags, id);
                if n < 4096 {
                    self.wb.put_slice(&chunk);
                } else {
                    self.seal();
                    self.out_len += chunk.len();
                    self.out.push_back(chunk);
                }
            }
            let s = &self.streams[i];
            if s.done && s.pending.is_none() {
                let s = self.streams.swap_remove(i);
                if !s.recv_closed {
                    self.reset(s, NO_ERROR);
                } else {
                    self.conn_grant += s.inbox.outstanding();
                    s.inbox.end(false);
                }
                continue;
            }
            i += 1;
        }
    }

    /// Writes queued output; `Ok(true)` when something was written.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        self.seal();
        let mut wrote = false;
        while !self.out.is_empty() {
            let mut iov = [IoSlice::new(&[]); 32];
            let mut k = 0;
            for b in self.out.iter().take(iov.len()) {
                iov[k] = IoSlice::new(b);
                k += 1;
            }
            match Pin::new(&mut self.io).poll_write_vectored(cx, &iov[..k]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(mut n)) => {
                    wrote = true;
                    self.out_len -= n;
                    while n > 0 {
                        let Some(front) = self.out.front_mut() else {
                            break;
                        };
                        if front.len() <= n {
                            n -= front.len();
                            self.out.pop_front();
                        } else {
                            let _ = front.split_to(n);
                            n = 0;
                        }
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // A TLS stream keeps records it could not write yet: flushed here (a no-op on TCP).
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        if self.out.capacity() > 8 {
            self.out = VecDeque::new();
        }
        if self.wb.capacity() > 0 {
            self.wb = BytesMut::new();
        }
        Poll::Ready(Ok(wrote))
    }

    /// The connection's deadlines: the handshake, an unfinished header block, and
    /// keepalive (a silent peer is pinged; one that does not answer is given up on).
    fn timers(&mut self, cx: &mut Context<'_>) -> Option<ConnError> {
        loop {
            let now = Instant::now();
            if !self.settings_seen && now >= self.born + HANDSHAKE {
                return Some(ConnError(
                    PROTOCOL_ERROR,
                    "no client preface and SETTINGS within the handshake deadline",
                ));
            }
            if self.cont.is_some() && now >= self.cont_since + HEADER_DEADLINE {
                return Some(ConnError(
                    ENHANCE_YOUR_CALM,
                    "header block not finished within its deadline",
                ));
            }
            if self.old_at.is_some_and(|t| now >= t) {
                // Maximum age: no new streams, and the ones open end after the grace.
                self.old_at = None;
                if !self.closing {
                    self.closing = true;
                    self.goaway(NO_ERROR);
                }
                self.retire_at = Some(now + MAX_AGE_GRACE);
            }
            if self.retire_at.is_some_and(|t| now >= t) {
                return Some(ConnError(NO_ERROR, "maximum connection age"));
            }
            let mut next = match self.ping_sent {
                Some(sent) if now >= sent + PING_TIMEOUT => {
                    return Some(ConnError(NO_ERROR, "keepalive ping not answered"));
                }
                Some(sent) => sent + PING_TIMEOUT,
                None if now >= self.last_read + KEEPALIVE => {
                    // Silent this long: nothing sent before our resets is still on its way.
                    self.resets = Vec::new();
                    self.frame_head(8, PING, 0, 0);
                    self.wb.put_u64(0x7069_6c6f_7466_6973); // "pilotfis"
                    self.ping_sent = Some(now);
                    now + PING_TIMEOUT
                }
                None => self.last_read + KEEPALIVE,
            };
            if !self.settings_seen {
                next = next.min(self.born + HANDSHAKE);
            }
            if self.cont.is_some() {
                next = next.min(self.cont_since + HEADER_DEADLINE);
            }
            for t in [self.old_at, self.retire_at].into_iter().flatten() {
                next = next.min(t);
            }
            if self.timer.deadline() != next {
                self.timer.as_mut().reset(next);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
        }
    }

    /// Counts one of a per-window budget (`which` picks the counter); `false` past `max`.
    fn count(&mut self, which: fn(&mut Self) -> &mut u32, max: u32) -> bool {
        let now = Instant::now();
        if now >= self.win_start + RATE_WINDOW {
            self.win_start = now;
            (self.win_resets, self.win_calls, self.win_control) = (0, 0, 0);
        }
        let n = which(self);
        *n += 1;
        *n <= max
    }

    /// A stream reset by the client or refused by us: within the window's budget, or the
    /// connection is resetting streams in a loop (Rapid Reset).
    fn strike(&mut self) -> Result<(), ConnError> {
        if self.count(|c| &mut c.win_resets, RESETS_PER_WINDOW) {
            Ok(())
        } else {
            Err(ConnError(
                ENHANCE_YOUR_CALM,
                "too many streams reset or refused",
            ))
        }
    }

    /// A control frame: within the window's budget, or the connection is flooding.
    fn control(&mut self) -> Result<(), ConnError> {
        if self.count(|c| &mut c.win_control, CONTROL_PER_WINDOW) {
            Ok(())
        } else {
            Err(ConnError(ENHANCE_YOUR_CALM, "control frame flood"))
        }
    }

    /// Output bytes waiting to be written.
    fn queued(&self) -> usize {
        self.out_len + self.wb.len()
    }

    fn seal(&mut self) {
        if !self.wb.is_empty() {
            let b = self.wb.split().freeze();
            self.out_len += b.len();
            self.out.push_back(b);
        }
    }

    fn frame_head(&mut self, len: usize, ty: u8, flags: u8, id: u32) {
        if self.wb.capacity() - self.wb.len() < 9 + 64 {
            self.wb.reserve(4096);
        }
        self.wb.put_u8((len >> 16) as u8);
        self.wb.put_u16(len as u16);
        self.wb.put_u8(ty);
        self.wb.put_u8(flags);
        self.wb.put_u32(id);
    }

    fn window_update(&mut self, id: u32, n: u32) {
        self.frame_head(4, WINDOW_UPDATE, 0, id);
        self.wb.put_u32(n);
    }

    fn rst(&mut self, id: u32, code: u32) {
        self.rst_left(id, code, NO_LENGTH);
    }

    /// RST_STREAM, remembering the stream (with the `content-length` bytes still due) so
    /// that frames the client sent before seeing it are not taken for errors.
    fn rst_left(&mut self, id: u32, code: u32, content_left: u64) {
        self.frame_head(4, RST_STREAM, 0, id);
        self.wb.put_u32(code);
        if id > self.last_stream {
            return; // an idle stream (a bad PRIORITY frame): nothing can follow
        }
        self.resets.retain(|r| r.0 != id);
        if self.resets.len() >= MAX_RESETS {
            self.resets.remove(0);
        }
        self.resets.push((id, content_left));
    }

    fn goaway(&mut self, code: u32) {
        self.frame_head(8, GOAWAY, 0, 0);
        self.wb.put_u32(self.last_stream);
        self.wb.put_u32(code);
    }

    /// A header block as HEADERS plus CONTINUATION frames when it is larger than a frame.
    fn headers(&mut self, id: u32, flags: u8, block: &[u8]) {
        let max = self.peer_max_frame;
        let mut chunks = block.chunks(max).peekable();
        let first = chunks.next().unwrap_or(&[]);
        let last = chunks.peek().is_none();
        self.frame_head(
            first.len(),
            HEADERS,
            flags | if last { END_HEADERS } else { 0 },
            id,
        );
        self.wb.put_slice(first);
        while let Some(c) = chunks.next() {
            let last = chunks.peek().is_none();
            self.frame_head(
                c.len(),
                CONTINUATION,
                if last { END_HEADERS } else { 0 },
                id,
            );
            self.wb.put_slice(c);
        }
    }
}

/// Whether `n` more request bytes agree with a `content-length` that still announces
/// `left` (`NO_LENGTH`: none), `end` meaning they are the last.
fn content_fits(left: u64, n: usize, end: bool) -> bool {
    left == NO_LENGTH || (n as u64 <= left && (!end || n as u64 == left))
}

/// A decoded header block, checked as it is decoded (RFC 9113 section 8.2 and 8.3).
#[derive(Default)]
struct Head {
    method: Option<Vec<u8>>,
    scheme: Option<Vec<u8>>,
    path: Option<Vec<u8>>,
    authority: Option<Vec<u8>>,
    /// A pseudo-header field was seen.
    pseudo: bool,
    /// A regular field was seen.
    regular: bool,
    content_length: Option<u64>,
    headers: http::HeaderMap,
    /// The first reason the block is malformed, wherever it is used.
    bad: Option<&'static str>,
    /// The decoded list's size so far (RFC 9113 section 6.5.2).
    size: usize,
}

impl Head {
    fn field(&mut self, n: &[u8], v: &[u8]) {
        self.size = self.size.saturating_add(n.len() + v.len() + 32);
        if self.too_large() {
            return; // nothing more is kept (an HPACK bomb decodes to nothing)
        }
        if self.bad.is_none() {
            if let Err(e) = self.check(n, v) {
                self.bad = Some(e);
            }
        }
    }

    fn check(&mut self, n: &[u8], v: &[u8]) -> Result<(), &'static str> {
        if v.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
            return Err("NUL, CR or LF in a field value");
        }
        if let Some(p) = n.strip_prefix(b":") {
            self.pseudo = true;
            if self.regular {
                return Err("pseudo-header field after a regular field");
            }
            let slot = match p {
                b"method" => &mut self.method,
                b"scheme" => &mut self.scheme,
                b"path" => &mut self.path,
                b"authority" => &mut self.authority,
                _ => return Err("unknown or response pseudo-header field"),
            };
            if slot.is_some() {
                return Err("duplicate pseudo-header field");
            }
            *slot = Some(v.to_vec());
            return Ok(());
        }
        self.regular = true;
        if n.is_empty()
            || n.iter()
                .any(|&b| b <= 0x20 || b >= 0x7f || b.is_ascii_uppercase())
        {
            return Err("invalid field name");
        }
        match n {
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding"
            | b"upgrade" => return Err("connection-specific field"),
            b"te" if v != b"trailers" => return Err("te other than \"trailers\""),
            b"content-length" => {
                let len = std::str::from_utf8(v)
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                    .filter(|&l| l != NO_LENGTH)
                    .ok_or("invalid content-length")?;
                if self.content_length.is_some_and(|l| l != len) {
                    return Err("conflicting content-length");
                }
                self.content_length = Some(len);
            }
            _ => {}
        }
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(n),
            http::HeaderValue::from_bytes(v),
        ) {
            self.headers.append(n, v);
        }
        Ok(())
    }

    /// Past SETTINGS_MAX_HEADER_LIST_SIZE.
    fn too_large(&self) -> bool {
        self.size > MAX_HEADER_LIST
    }

    /// Why the block is not a well-formed request head, if it is not.
    fn request_error(&self) -> Option<&'static str> {
        if self.bad.is_some() {
            return self.bad;
        }
        if self.method.as_deref() == Some(b"CONNECT") {
            // RFC 9113 section 8.5: only :method and :authority.
            if self.authority.is_none() || self.scheme.is_some() || self.path.is_some() {
                return Some("malformed CONNECT request");
            }
            return None;
        }
        if self.method.as_deref().is_none_or(<[u8]>::is_empty)
            || self.scheme.as_deref().is_none_or(<[u8]>::is_empty)
            || self.path.as_deref().is_none_or(<[u8]>::is_empty)
        {
            return Some("missing or empty :method, :scheme or :path");
        }
        None
    }

    /// Why the block is not well-formed trailers (`end`: it ended the stream), if it is not.
    fn trailer_error(&self, end: bool) -> Option<&'static str> {
        if self.bad.is_some() {
            self.bad
        } else if self.pseudo {
            Some("pseudo-header field in trailers")
        } else if !end {
            Some("trailers without END_STREAM")
        } else {
            None
        }
    }
}

/// The payload without its padding (PADDED flag).
fn strip_padding(flags: u8, p: &[u8]) -> Result<&[u8], ConnError> {
    if flags & PADDED == 0 {
        return Ok(p);
    }
    let Some((&pad, rest)) = p.split_first() else {
        return Err(ConnError(
            PROTOCOL_ERROR,
            "padded frame without a pad length",
        ));
    };
    if pad as usize > rest.len() {
        return Err(ConnError(PROTOCOL_ERROR, "padding longer than the frame"));
    }
    Ok(&rest[..rest.len() - pad as usize])
}

/// HPACK integer with an `prefix`-bit prefix after the bits in `first`.
fn hpack_int(buf: &mut Vec<u8>, first: u8, prefix: u8, mut v: usize) {
    let max = (1usize << prefix) - 1;
    if v < max {
        buf.push(first | v as u8);
        return;
    }
    buf.push(first | max as u8);
    v -= max;
    while v >= 128 {
        buf.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    buf.push(v as u8);
}

/// HPACK string literal, not Huffman coded.
fn hpack_str(buf: &mut Vec<u8>, s: &[u8]) {
    hpack_int(buf, 0x00, 7, s.len());
    buf.extend_from_slice(s);
}

/// `:status 200` (indexed) and `content-type: application/grpc` (literal, indexed name).
fn response_head() -> Vec<u8> {
    let mut block = vec![0x88];
    hpack_int(&mut block, 0x00, 4, 31);
    hpack_str(&mut block, b"application/grpc");
    block
}

/// Header fields as literals without indexing (the response never touches the table).
fn trailer_fields(buf: &mut Vec<u8>, h: &http::HeaderMap) {
    for (n, v) in h {
        buf.push(0x00);
        hpack_str(buf, n.as_str().as_bytes());
        hpack_str(buf, v.as_bytes());
    }
}

fn status_trailers(s: &Status) -> http::HeaderMap {
    super::wire::trailers(Some(s).filter(|s| s.code() != tonic::Code::Ok))
}

/// Entry points for the fuzz targets (`e2e/fuzz.rs`): the frame reader and the gRPC
/// message framer driven in memory, with the invariants a run must keep.
#[doc(hidden)]
pub mod fuzz {
    use super::*;

    /// Feeds `input` to a fresh connection's frame reader, cut where `cuts` says (as reads
    /// from the socket would cut it), lets the streams it opened run, and frames their
    /// answers. `io` is a connected socket (a duplicate of it is used; nothing is written).
    /// Must be called inside a tokio runtime; `run` drives the stream tasks.
    /// Panics if the request bytes the connection buffered are not all released when it
    /// goes.
    pub fn frames(
        srv: &XdsServer,
        io: &std::net::TcpStream,
        input: &[u8],
        cuts: &[usize],
        run: &mut dyn FnMut(),
    ) {
        let before = HELD.load(Ordering::SeqCst);
        let io = TcpStream::from_std(io.try_clone().expect("dup")).expect("register");
        let peer = io.peer_addr().expect("peer");
        let shared = Arc::new(Shared {
            srv: srv.clone(),
            stopping: AtomicBool::new(false),
            extra: Vec::new(),
            max_age: None,
        });
        let mut c = Conn::new(io, peer, None, shared, None);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut rest = input;
        for &cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at(cut.min(rest.len()));
            rest = later;
            if c.input(now).is_err() {
                break;
            }
            run();
            c.grant(&mut cx);
            c.fill(&mut cx);
            // What a write would take: the queue is dropped as if sent.
            c.seal();
            c.out.clear();
            c.out_len = 0;
        }
        drop(c);
        let after = HELD.load(Ordering::SeqCst);
        assert_eq!(after, before, "buffered request bytes not released");
    }

    /// The gRPC message framer: `chunks` pushed into a stream's inbox (then ended cleanly
    /// or by a reset), and every message read with the size limit `max`. Returns the
    /// messages read and whether the stream ended in an error. Panics if a message is not
    /// what was sent or buffered bytes stay counted.
    pub fn inbox(chunks: &[&[u8]], end: Option<bool>, max: usize) -> (Vec<Bytes>, bool) {
        let before = HELD.load(Ordering::SeqCst);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let inbox = Inbox::default();
        let mut got = Vec::new();
        let mut failed = false;
        let mut read = |inbox: &Inbox, got: &mut Vec<Bytes>| loop {
            match inbox.poll_message(&mut cx, max) {
                Poll::Ready(Ok(Some(m))) => got.push(m),
                Poll::Ready(Ok(None)) | Poll::Pending => return false,
                Poll::Ready(Err(_)) => return true,
            }
        };
        for c in chunks {
            inbox.push(c);
            let _ = inbox.take_consumed(&waker);
            if read(&inbox, &mut got) {
                failed = true;
                break;
            }
        }
        if !failed {
            if let Some(clean) = end {
                inbox.end(clean);
            }
            failed = read(&inbox, &mut got);
        }
        // Every message read is one the sender framed, in order.
        let sent: Vec<u8> = chunks.concat();
        let mut pos = 0;
        for m in &got {
            assert!(m.len() <= max);
            assert_eq!(sent[pos], 0);
            let len =
                u32::from_be_bytes([sent[pos + 1], sent[pos + 2], sent[pos + 3], sent[pos + 4]]);
            assert_eq!(len as usize, m.len());
            assert_eq!(&sent[pos + 5..pos + 5 + m.len()], &m[..]);
            pos += 5 + m.len();
        }
        drop(inbox);
        assert_eq!(
            HELD.load(Ordering::SeqCst),
            before,
            "inbox bytes still counted"
        );
        (got, failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpack_integers_follow_the_rfc_examples() {
        // RFC 7541 C.1.1 and C.1.2.
        let mut b = Vec::new();
        hpack_int(&mut b, 0, 5, 10);
        assert_eq!(b, [10]);
        b.clear();
        hpack_int(&mut b, 0, 5, 1337);
        assert_eq!(b, [31, 154, 10]);
        // Our response headers decode with a real HPACK decoder.
        let mut block = response_head();
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from(5));
        t.insert(
            "grpc-message",
            http::HeaderValue::from_static("no such thing"),
        );
        trailer_fields(&mut block, &t);
        let got = loona_hpack::Decoder::new().decode(&block).unwrap();
        let got: Vec<(String, String)> = got
            .into_iter()
            .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("grpc-status", "5"),
                ("grpc-message", "no such thing"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }

    #[test]
    fn inbox_grants_a_large_message_and_holds_back_unread_ones() {
        let inbox = Inbox::default();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        // A 3 MiB message (three stream windows): once its prefix is seen, every byte of
        // it is counted as consumed on arrival, so the client's window keeps opening.
        let len = 3 << 20;
        let mut prefix = vec![0u8];
        prefix.extend((len as u32).to_be_bytes());
        inbox.push(&prefix);
        assert!(inbox.poll_message(&mut cx, 64 << 20).is_pending());
        for _ in 0..len / 16_384 {
            inbox.push(&[7u8; 16_384]);
        }
        assert_eq!(inbox.lock().held, 0);
        assert_eq!(inbox.outstanding(), 5 + len);
        match inbox.poll_message(&mut cx, 64 << 20) {
            Poll::Ready(Ok(Some(m))) => assert!(m.len() == len && m.iter().all(|&b| b == 7)),
            other => panic!(
                "expected the message, got {:?}",
                other.map(|r| r.map(|m| m.map(|b| b.len())))
            ),
        }
        assert_eq!(inbox.take_consumed(&waker), 5 + len);
        // Small messages nobody reads: past a window's worth they are not granted.
        let small = [0, 0, 0, 0, 10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        for _ in 0..200_000 {
            inbox.push(&small);
        }
        let held = inbox.lock().held;
        assert_eq!(held, 200_000 * small.len() - STREAM_WINDOW as usize);
        // Reading them releases the rest.
        let mut n = 0;
        while let Poll::Ready(Ok(Some(m))) = inbox.poll_message(&mut cx, 64 << 20) {
            assert_eq!(&m[..], &small[5..]);
            n += 1;
        }
        assert_eq!(n, 200_000);
        assert_eq!(inbox.lock().held, 0);
        // Over the size limit: an error, not an allocation.
        let big = Inbox::default();
        big.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            big.poll_message(&mut cx, 64 << 20),
            Poll::Ready(Err(_))
        ));
        // A reset stream ends the reader with an error; a clean end inside a message too.
        let r = Inbox::default();
        r.end(false);
        assert!(matches!(r.poll_message(&mut cx, 64), Poll::Ready(Err(_))));
        let e = Inbox::default();
        e.push(&[0, 0, 0, 0, 9, 1]);
        e.end(true);
        assert!(matches!(e.poll_message(&mut cx, 64), Poll::Ready(Err(_))));
    }

    fn head(fields: &[(&str, &str)]) -> Head {
        let mut h = Head::default();
        for (n, v) in fields {
            h.field(n.as_bytes(), v.as_bytes());
        }
        h
    }

    const GRPC: [(&str, &str); 5] = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/a.B/C"),
        (":authority", "x"),
        ("te", "trailers"),
    ];

    #[test]
    fn request_heads_are_checked() {
        let ok = head(&GRPC);
        assert_eq!(ok.request_error(), None);
        assert_eq!(ok.headers.get("te").unwrap(), "trailers");
        let with = |extra: (&'static str, &'static str)| {
            let mut f = GRPC.to_vec();
            f.push(extra);
            head(&f).request_error()
        };
        let without = |name: &str| {
            let f: Vec<_> = GRPC.iter().copied().filter(|(n, _)| *n != name).collect();
            head(&f).request_error()
        };
        let replaced = |name: &str, v: &'static str| {
            let f: Vec<_> = GRPC
                .iter()
                .map(|&(n, old)| (n, if n == name { v } else { old }))
                .collect();
            head(&f).request_error()
        };
        for bad in [
            ("X-Upper", "a"),
            ("connection", "keep-alive"),
            ("keep-alive", "1"),
            ("proxy-connection", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("te", "trailers, deflate"),
            ("content-length", "-1"),
            ("content-length", "1 "),
            ("x-value", "a\r\nb"),
            (":method", "POST"), // duplicate, and after a regular field
            (":status", "200"),
            (":unknown", "x"),
        ] {
            assert!(with(bad).is_some(), "{bad:?} accepted");
        }
        assert_eq!(with(("content-length", "12")), None);
        assert_eq!(with(("user-agent", "grpc-go/1.0")), None);
        for name in [":method", ":scheme", ":path"] {
            assert!(without(name).is_some(), "{name} missing accepted");
        }
        assert!(replaced(":path", "").is_some());
        // Pseudo-header fields after a regular one, and duplicated.
        let mut f = vec![("user-agent", "x")];
        f.extend(GRPC);
        assert!(head(&f).request_error().is_some());
        let mut f = GRPC.to_vec();
        f.insert(1, (":path", "/other"));
        assert!(head(&f).request_error().is_some());
        let cl = head(&[("content-length", "5"), ("content-length", "6")]);
        assert!(cl.bad.is_some());
        // CONNECT carries :authority and no :scheme or :path.
        assert_eq!(
            head(&[(":method", "CONNECT"), (":authority", "x:1")]).request_error(),
            None
        );
        assert!(head(&[
            (":method", "CONNECT"),
            (":authority", "x:1"),
            (":path", "/")
        ])
        .request_error()
        .is_some());
    }

    #[test]
    fn trailers_and_content_length_are_checked() {
        assert_eq!(head(&[("x-a", "b")]).trailer_error(true), None);
        assert!(head(&[("x-a", "b")]).trailer_error(false).is_some());
        assert!(head(&[(":path", "/")]).trailer_error(true).is_some());
        assert!(head(&[("X-A", "b")]).trailer_error(true).is_some());
        assert!(content_fits(NO_LENGTH, 10, true));
        assert!(content_fits(4, 4, true));
        assert!(content_fits(4, 3, false));
        assert!(!content_fits(4, 3, true));
        assert!(!content_fits(1, 4, false));
    }

    #[test]
    fn padding_is_stripped_and_checked() {
        assert_eq!(
            strip_padding(PADDED, &[2, 1, 2, 0, 0]).ok(),
            Some(&[1u8, 2][..])
        );
        assert!(strip_padding(PADDED, &[5, 1]).is_err());
        assert_eq!(strip_padding(0, &[2, 1]).ok(), Some(&[2u8, 1][..]));
    }
}

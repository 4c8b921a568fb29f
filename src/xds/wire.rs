//! gRPC framing of the xDS services, written for memory.
//!
//! tonic's generated servers keep, per stream, an encode buffer as large as the largest
//! response ever sent and a decode buffer as large as the largest request: with a 4 MB
//! cluster set and a 300 kB endpoint subscription that is megabytes per connected proxy,
//! for the life of the stream. Here a response is a [`Plan`]: the shared, already encoded
//! resources plus a few header fields. The response body writes it out lazily in 64 KiB
//! chunks as HTTP/2 flow control lets it, and requests are decoded from a buffer that is
//! released between messages. An idle stream holds no copy of its configuration.

use super::cache::{Names as NameSet, Res};
use super::server::{XdsServer, MAX_MESSAGE};
use super::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message;
use std::convert::Infallible;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;
use tonic::Status;

/// One response to write: the message's scalar fields already encoded (`head`), then its
/// resources, each encoded from the shared bytes when the body is polled.
pub struct Plan {
    head: Vec<u8>,
    items: Vec<Res>,
    delta: bool,
}

const RESOURCES_TAG: u32 = 2; // `resources` in both DiscoveryResponse and DeltaDiscoveryResponse

impl Plan {
    /// A state-of-the-world response; `resp.resources` must be empty (they are `items`).
    pub fn sotw(resp: &DiscoveryResponse, items: Vec<Res>) -> Plan {
        Plan {
            head: resp.encode_to_vec(),
            items,
            delta: false,
        }
    }

    /// A delta response; `resp.resources` must be empty (they are `items`).
    pub fn delta(resp: &DeltaDiscoveryResponse, items: Vec<Res>) -> Plan {
        Plan {
            head: resp.encode_to_vec(),
            items,
            delta: true,
        }
    }

    pub fn resources(&self) -> usize {
        self.items.len()
    }

    /// Bytes of resource payload (for metrics).
    pub fn payload_bytes(&self) -> usize {
        self.items.iter().map(|r| r.value.len()).sum()
    }

    /// Length of one resource's entry body (without its key and length prefix).
    fn body_len(&self, r: &Res) -> usize {
        if self.delta {
            // envoy.service.discovery.v3.Resource: version = 1, resource = 2, name = 3.
            let a = any_len(r);
            prost::encoding::string::encoded_len(1, &r.version)
                + key_len(2)
                + encoded_len_varint(a as u64)
                + a
                + prost::encoding::string::encoded_len(3, &r.name)
        } else {
            any_len(r)
        }
    }

    fn entry_len(&self, r: &Res) -> usize {
        let b = self.body_len(r);
        key_len(RESOURCES_TAG) + encoded_len_varint(b as u64) + b
    }

    /// One entry up to the resource's bytes: its key and length, (delta) the version and
    /// the `Resource.resource` key and length, then `Any.type_url` and the key and length
    /// of `Any.value`. The caller writes the value, then `write_after`.
    fn write_before(&self, r: &Res, buf: &mut Vec<u8>) {
        encode_key(RESOURCES_TAG, WireType::LengthDelimited, buf);
        encode_varint(self.body_len(r) as u64, buf);
        if self.delta {
            prost::encoding::string::encode(1, &r.version, buf);
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(any_len(r) as u64, buf);
        }
        prost::encoding::string::encode(1, &r.type_url, buf);
        encode_key(2, WireType::LengthDelimited, buf);
        encode_varint(r.value.len() as u64, buf);
    }

    /// What follows the resource's bytes in its entry (delta: the name).
    fn write_after(&self, r: &Res, buf: &mut Vec<u8>) {
        if self.delta {
            prost::encoding::string::encode(3, &r.name, buf);
        }
    }

    /// The encoded message length (fields may come in any order on the wire).
    pub fn encoded_len(&self) -> usize {
        self.head.len() + self.items.iter().map(|r| self.entry_len(r)).sum::<usize>()
    }
}

/// `google.protobuf.Any` as written here: type_url = 1, value = 2, both always present.
fn any_len(r: &Res) -> usize {
    prost::encoding::string::encoded_len(1, &r.type_url)
        + key_len(2)
        + encoded_len_varint(r.value.len() as u64)
        + r.value.len()
}

/// Bytes per body chunk: big enough to keep syscalls few, small enough that a stream never
/// holds more than this (plus the HTTP/2 window) of its response at a time.
const CHUNK: usize = 64 * 1024;

/// Resources at least this large go out as frames of their own, straight from the shared
/// encoding: copying a 1.2 MB route configuration into a fresh buffer for each of 2,000
/// proxies was a quarter of an edit's CPU (the copies were fresh mmaps, faulted and zeroed
/// by the kernel page by page).
const SHARED_FRAME: usize = 32 * 1024;

struct Cursor {
    plan: Plan,
    next: usize,
    started: bool,
    remaining: usize,
}

/// The response body of a streaming (or unary) xDS call: plans from the stream's task,
/// written out chunk by chunk, then the gRPC status as trailers.
pub struct XdsBody {
    rx: mpsc::Receiver<Result<Plan, Status>>,
    cur: Option<Cursor>,
    /// Frames ready to go, in order.
    frames: std::collections::VecDeque<Bytes>,
    /// The last byte of a response, sent as a frame of its own (see `poll_frame`).
    tail: Option<Bytes>,
    done: bool,
}

impl XdsBody {
    pub fn new(rx: mpsc::Receiver<Result<Plan, Status>>) -> XdsBody {
        XdsBody {
            rx,
            cur: None,
            frames: Default::default(),
            tail: None,
            done: false,
        }
    }
}

pub(crate) fn trailers(status: Option<&Status>) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    let (code, msg) = match status {
        Some(s) => (s.code() as i32, s.message().to_string()),
        None => (0, String::new()),
    };
    h.insert("grpc-status", http::HeaderValue::from(code));
    if !msg.is_empty() {
        // gRPC percent-encodes the message; anything outside printable ASCII is escaped.
        let enc: String = msg
            .bytes()
            .map(|b| {
                if (0x20..0x7f).contains(&b) && b != b'%' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        if let Ok(v) = http::HeaderValue::from_str(&enc) {
            h.insert("grpc-message", v);
        }
    }
    h
}

impl http_body::Body for XdsBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if let Some(f) = this.frames.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(f))));
            }
            if let Some(t) = this.tail.take() {
                return Poll::Ready(Some(Ok(Frame::data(t))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(c) = &mut this.cur {
                let mut buf = Vec::with_capacity(c.remaining.min(CHUNK + 1024));
                if !c.started {
                    let len = c.plan.encoded_len();
                    buf.push(0); // not compressed
                    buf.extend_from_slice(&(len as u32).to_be_bytes());
                    buf.extend_from_slice(&c.plan.head);
                    c.started = true;
                }
                let mut shared = 0;
                while c.next < c.plan.items.len() && buf.len() < CHUNK {
                    let r = &c.plan.items[c.next];
                    c.next += 1;
                    c.plan.write_before(r, &mut buf);
                    if r.value.len() >= SHARED_FRAME {
                        this.frames.push_back(Bytes::from(std::mem::take(&mut buf)));
                        this.frames.push_back(r.value.clone());
                        shared = r.value.len();
                        c.plan.write_after(r, &mut buf);
                        break;
                    }
                    buf.extend_from_slice(&r.value);
                    c.plan.write_after(r, &mut buf);
                }
                c.remaining = c.remaining.saturating_sub(buf.len() + shared);
                if !buf.is_empty() {
                    this.frames.push_back(Bytes::from(buf));
                }
                if c.next >= c.plan.items.len() {
                    this.cur = None;
                    // h2 keeps the last DATA frame it wrote (and so the whole buffer behind
                    // it) until the connection writes again, which on an idle stream is
                    // never: ~11 kB per connected proxy, or a whole shared resource. Ending
                    // every response with a one-byte frame of its own leaves only that
                    // byte held.
                    if let Some(mut last) = this.frames.pop_back() {
                        let n = last.len();
                        if n > 0 {
                            this.tail = Some(Bytes::copy_from_slice(&last[n - 1..]));
                            last.truncate(n - 1);
                        }
                        if !last.is_empty() {
                            this.frames.push_back(last);
                        }
                    }
                }
                continue;
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(plan))) => {
                    let remaining = 5 + plan.encoded_len();
                    this.cur = Some(Cursor {
                        plan,
                        next: 0,
                        started: false,
                        remaining,
                    });
                }
                Poll::Ready(Some(Err(status))) => {
                    this.done = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers(Some(&status))))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers(None)))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// Where a stream's request bytes come from: tonic's HTTP/2 server (the TLS port) or
/// pilotfish's own ([`super::http2`], the plaintext xDS port).
pub enum Source {
    Tonic(tonic::body::Body),
    Inbox(std::sync::Arc<super::http2::Inbox>),
}

impl Source {
    /// The next chunk of request bytes (tonic's body); `None` at the end of the stream.
    async fn chunk(body: &mut tonic::body::Body) -> Option<Result<Bytes, Status>> {
        loop {
            match body.frame().await? {
                Ok(f) => {
                    if let Ok(data) = f.into_data() {
                        return Some(Ok(data));
                    }
                }
                Err(e) => return Some(Err(Status::unknown(format!("request stream: {e}")))),
            }
        }
    }
}

/// Requests of one stream, decoded from the request body. The buffer is released when it
/// empties, so a large subscription does not stay allocated for the life of the stream.
pub struct Requests<T> {
    /// Name sets the next requests are likely to repeat (the stream's subscriptions).
    pub hints: Vec<Arc<NameSet>>,
    body: Source,
    buf: bytes::BytesMut,
    eof: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T: Decode> Requests<T> {
    pub fn new(body: Source) -> Requests<T> {
        Requests {
            hints: Vec::new(),
            body,
            buf: bytes::BytesMut::new(),
            eof: false,
            _t: PhantomData,
        }
    }

    /// The next request; `None` when the client half-closed. Cancel safe: data read so far
    /// stays in the buffer. Boxed: a stream's task holds requests across awaits, and a
    /// `DiscoveryRequest` inline is ~600 bytes in every suspended stream.
    pub async fn message(&mut self) -> Result<Option<Box<T>>, Status> {
        self.next().await.map(|m| m.map(Box::new))
    }

    async fn next(&mut self) -> Result<Option<T>, Status> {
        let body = match &mut self.body {
            Source::Inbox(inbox) => {
                let inbox = &**inbox;
                let msg = std::future::poll_fn(|cx| inbox.poll_message(cx, MAX_MESSAGE)).await?;
                return match msg {
                    Some(m) => T::decode_from(m, &self.hints)
                        .map(Some)
                        .map_err(|e| Status::invalid_argument(format!("bad request: {e}"))),
                    None => Ok(None),
                };
            }
            Source::Tonic(body) => body,
        };
        loop {
            if self.buf.len() >= 5 {
                if self.buf[0] != 0 {
                    return Err(Status::unimplemented(
                        "compressed xDS requests are not supported",
                    ));
                }
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if len > MAX_MESSAGE {
                    return Err(Status::resource_exhausted(format!(
                        "request of {len} bytes is over the {MAX_MESSAGE} byte limit"
                    )));
                }
                if self.buf.len() >= 5 + len {
                    // Decoded from `Bytes` (no copy) so `bytes` fields borrow.
                    let mut msg = self.buf.split_to(5 + len).freeze();
                    let msg = T::decode_from(msg.split_off(5), &self.hints)
                        .map_err(|e| Status::invalid_argument(format!("bad request: {e}")))?;
                    if self.buf.is_empty() {
                        // What is left of the allocation goes with the message.
                        self.buf = bytes::BytesMut::new();
                    }
                    return Ok(Some(msg));
                }
                // Grow once to the message's size, not step by step.
                self.buf.reserve(5 + len - self.buf.len());
            }
            if self.eof {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Status::internal("request stream ended inside a message"))
                };
            }
            match Source::chunk(body).await {
                Some(Ok(data)) => self.buf.extend_from_slice(&data),
                Some(Err(e)) => return Err(e),
                None => self.eof = true,
            }
        }
    }
}

/// A message the request decoder can build from one received gRPC message.
pub trait Decode: Sized {
    /// The message, or what is wrong with it. `hints`: name sets the stream expects to see
    /// repeated (see [`SotwRequest`]).
    fn decode_from(b: Bytes, hints: &[Arc<NameSet>]) -> Result<Self, String>;
}

impl Decode for DiscoveryRequest {
    fn decode_from(b: Bytes, _: &[Arc<NameSet>]) -> Result<Self, String> {
        Message::decode(b).map_err(|e| e.to_string())
    }
}

/// A state-of-the-world request as the server reads it: the fields of `DiscoveryRequest`,
/// but the resource names stay where they are in the received message. Envoy repeats every
/// name (6,000 endpoint names here) in every ACK, in one run of fields: the decoder only
/// walks that run to find its end, and the names are read from it when asked for.
#[derive(Debug, Default)]
pub struct SotwRequest {
    pub version_info: String,
    pub node: Option<envoy_types::pb::envoy::config::core::v3::Node>,
    pub type_url: String,
    pub response_nonce: String,
    pub error_detail: Option<envoy_types::pb::google::rpc::Status>,
    raw: Bytes,
    /// Where the names' fields lie in `raw` when nothing else is between them (Envoy
    /// writes fields in number order, so they do): compared as one slice.
    names_region: Option<(u32, u32)>,
    /// (offset, length) of each name, only when they are not in one run.
    scattered: Vec<(u32, u32)>,
    count: usize,
    /// The hint these names equal, byte for byte.
    pub matched: Option<Arc<NameSet>>,
}

/// `resource_names` (field 3, length-delimited) as its one-byte key.
const NAME_KEY: u8 = 3 << 3 | 2;

/// The names in a run of `resource_names` fields.
pub struct NameRun<'a> {
    raw: &'a [u8],
    pos: usize,
    left: usize,
}

impl<'a> Iterator for NameRun<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Checked when the run was found: key, varint length, then the name.
        let (len, n) = varint_at(self.raw, self.pos + 1)?;
        let start = self.pos + 1 + n;
        self.pos = start + len;
        self.raw.get(start..start + len)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for NameRun<'_> {}

/// A varint at `at`: its value and its length in bytes.
fn varint_at(raw: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let b = *raw.get(at + i)?;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Some((v as usize, i + 1));
        }
    }
    None
}

/// The end of the run of name fields starting at `start`, and how many there are.
fn name_run(raw: &[u8], start: usize) -> Result<(usize, usize), &'static str> {
    let (mut pos, mut count) = (start, 0);
    while raw.get(pos) == Some(&NAME_KEY) {
        // Names under 128 bytes (all of Envoy's) have a one-byte length.
        if let Some(&l) = raw.get(pos + 1).filter(|&&l| l < 0x80) {
            pos += 2 + l as usize;
            if pos > raw.len() {
                return Err("resource name past the end of the request");
            }
            count += 1;
            continue;
        }
        let (len, n) = varint_at(raw, pos + 1).ok_or("bad resource name length")?;
        let end = (pos + 1 + n)
            .checked_add(len)
            .filter(|&e| e <= raw.len())
            .ok_or("resource name past the end of the request")?;
        pos = end;
        count += 1;
    }
    Ok((pos, count))
}

pub enum Names<'a> {
    Run(NameRun<'a>),
    Scattered(&'a [u8], std::slice::Iter<'a, (u32, u32)>),
}

impl<'a> Iterator for Names<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        match self {
            Names::Run(r) => r.next(),
            Names::Scattered(raw, it) => {
                it.next().map(|&(o, l)| &raw[o as usize..(o + l) as usize])
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Names::Run(r) => r.size_hint(),
            Names::Scattered(_, it) => it.size_hint(),
        }
    }
}

impl ExactSizeIterator for Names<'_> {}

impl SotwRequest {
    /// The resource names, as received.
    pub fn name_bytes(&self) -> Names<'_> {
        match self.names_region {
            Some((a, _)) => Names::Run(NameRun {
                raw: &self.raw,
                pos: a as usize,
                left: self.count,
            }),
            None => Names::Scattered(&self.raw, self.scattered.iter()),
        }
    }

    /// The encoded `resource_names` fields as one slice, when they are contiguous.
    pub fn names_wire(&self) -> Option<&[u8]> {
        self.names_region
            .map(|(a, b)| &self.raw[a as usize..b as usize])
    }

    /// The names as strings (invalid UTF-8 replaced; Envoy sends UTF-8).
    pub fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.name_bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

impl Decode for SotwRequest {
    fn decode_from(raw: Bytes, hints: &[Arc<NameSet>]) -> Result<Self, String> {
        decode_sotw(raw, hints).map_err(|e| e.to_string())
    }
}

fn decode_sotw(
    raw: Bytes,
    hints: &[Arc<NameSet>],
) -> Result<SotwRequest, Box<dyn std::error::Error>> {
    use bytes::Buf;
    use prost::encoding::{decode_key, decode_varint, message, skip_field, string};
    let ctx = prost::encoding::DecodeContext::default;
    let mut r = SotwRequest::default();
    let mut buf: &[u8] = &raw[..];
    while buf.has_remaining() {
        let key_at = raw.len() - buf.len();
        let (tag, wt) = decode_key(&mut buf)?;
        match tag {
            1 => string::merge(wt, &mut r.version_info, &mut buf, ctx())?,
            2 => message::merge(
                wt,
                r.node.get_or_insert_with(Default::default),
                &mut buf,
                ctx(),
            )?,
            3 if wt == WireType::LengthDelimited => {
                if r.count == 0 && r.scattered.is_empty() {
                    // The names the stream has now, byte for byte (an ACK): one comparison.
                    let rest = &raw[key_at..];
                    if let Some(h) = hints.iter().find(|h| {
                        let w = h.wire();
                        !w.is_empty() && rest.starts_with(w) && rest.get(w.len()) != Some(&NAME_KEY)
                    }) {
                        let end = key_at + h.wire().len();
                        r.names_region = Some((key_at as u32, end as u32));
                        r.count = h.set.len();
                        r.matched = Some(h.clone());
                        buf.advance(end - (raw.len() - buf.len()));
                        continue;
                    }
                    // The run of names, walked without reading them.
                    let (end, n) = name_run(&raw, key_at)?;
                    if n > 0 {
                        r.names_region = Some((key_at as u32, end as u32));
                        r.count = n;
                        buf.advance(end - (raw.len() - buf.len()));
                        continue;
                    }
                }
                // Another name after other fields: keep each name's place.
                if let Some((a, _)) = r.names_region.take() {
                    let run = NameRun {
                        raw: &raw,
                        pos: a as usize,
                        left: r.count,
                    };
                    r.scattered = run
                        .map(|n| {
                            let off = n.as_ptr() as usize - raw.as_ptr() as usize;
                            (off as u32, n.len() as u32)
                        })
                        .collect();
                }
                let len = decode_varint(&mut buf)? as usize;
                if len > buf.len() {
                    return Err("resource name past the end of the request".into());
                }
                let off = raw.len() - buf.len();
                r.scattered.push((off as u32, len as u32));
                r.count += 1;
                buf.advance(len);
            }
            4 => string::merge(wt, &mut r.type_url, &mut buf, ctx())?,
            5 => string::merge(wt, &mut r.response_nonce, &mut buf, ctx())?,
            6 => message::merge(
                wt,
                r.error_detail.get_or_insert_with(Default::default),
                &mut buf,
                ctx(),
            )?,
            _ => skip_field(wt, tag, &mut buf, ctx())?,
        }
    }
    r.raw = raw;
    Ok(r)
}

/// Which gRPC service a [`XdsService`] answers: ADS or one of the per-type services.
pub trait Kind: Send + Sync + 'static {
    const NAME: &'static str;
    /// The type of a per-type service (None: ADS, the type is in every request).
    const FIXED: Option<&'static str>;
    const STREAM: &'static str;
    const DELTA: &'static str;
    /// The unary fetch method (not on ADS).
    const FETCH: &'static str = "";
}

macro_rules! kind {
    ($t:ident, $name:expr, $fixed:expr, $stream:expr, $delta:expr, $fetch:expr) => {
        pub struct $t;
        impl Kind for $t {
            const NAME: &'static str = $name;
            const FIXED: Option<&'static str> = $fixed;
            const STREAM: &'static str = $stream;
            const DELTA: &'static str = $delta;
            const FETCH: &'static str = $fetch;
        }
    };
}

kind!(
    Ads,
    "envoy.service.discovery.v3.AggregatedDiscoveryService",
    None,
    "StreamAggregatedResources",
    "DeltaAggregatedResources",
    ""
);
kind!(
    Cds,
    "envoy.service.cluster.v3.ClusterDiscoveryService",
    Some(CLUSTER),
    "StreamClusters",
    "DeltaClusters",
    "FetchClusters"
);
kind!(
    Eds,
    "envoy.service.endpoint.v3.EndpointDiscoveryService",
    Some(ENDPOINT),
    "StreamEndpoints",
    "DeltaEndpoints",
    "FetchEndpoints"
);
kind!(
    Lds,
    "envoy.service.listener.v3.ListenerDiscoveryService",
    Some(LISTENER),
    "StreamListeners",
    "DeltaListeners",
    "FetchListeners"
);
kind!(
    Rds,
    "envoy.service.route.v3.RouteDiscoveryService",
    Some(ROUTE),
    "StreamRoutes",
    "DeltaRoutes",
    "FetchRoutes"
);
kind!(
    Sds,
    "envoy.service.secret.v3.SecretDiscoveryService",
    Some(SECRET),
    "StreamSecrets",
    "DeltaSecrets",
    "FetchSecrets"
);

/// One xDS gRPC service (ADS, CDS, EDS, LDS, RDS or SDS) on the memory-lean framing.
pub struct XdsService<K> {
    srv: XdsServer,
    _k: PhantomData<fn() -> K>,
}

impl<K> Clone for XdsService<K> {
    fn clone(&self) -> Self {
        XdsService {
            srv: self.srv.clone(),
            _k: PhantomData,
        }
    }
}

impl<K: Kind> XdsService<K> {
    pub fn new(srv: XdsServer) -> XdsService<K> {
        XdsService {
            srv,
            _k: PhantomData,
        }
    }
}

impl<K: Kind> NamedService for XdsService<K> {
    const NAME: &'static str = K::NAME;
}

type HttpResponse = http::Response<tonic::body::Body>;

fn response(rx: mpsc::Receiver<Result<Plan, Status>>) -> HttpResponse {
    let mut r = http::Response::new(tonic::body::Body::new(XdsBody::new(rx)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    r
}

impl<K: Kind> Service<http::Request<tonic::body::Body>> for XdsService<K> {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<HttpResponse, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let srv = self.srv.clone();
        let (parts, body) = req.into_parts();
        let method = parts
            .uri
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        let head = http::Request::from_parts(parts, ());
        let result = open_method::<K>(&srv, &method, head, Source::Tonic(body));
        Box::pin(async move { Ok(result.map(response).unwrap_or_else(|s| s.into_http())) })
    }
}

/// Opens the call `path` (`/<service>/<method>`) names: the receiver of its responses.
pub fn open_call(
    srv: &XdsServer,
    path: &str,
    head: http::Request<()>,
    body: Source,
) -> Result<mpsc::Receiver<Result<Plan, Status>>, Status> {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match service {
        Ads::NAME => open_method::<Ads>(srv, method, head, body),
        Cds::NAME => open_method::<Cds>(srv, method, head, body),
        Eds::NAME => open_method::<Eds>(srv, method, head, body),
        Lds::NAME => open_method::<Lds>(srv, method, head, body),
        Rds::NAME => open_method::<Rds>(srv, method, head, body),
        Sds::NAME => open_method::<Sds>(srv, method, head, body),
        _ => Err(Status::unimplemented(format!("no service {service}"))),
    }
}

/// Opens `method` of the service `K`.
fn open_method<K: Kind>(
    srv: &XdsServer,
    method: &str,
    head: http::Request<()>,
    body: Source,
) -> Result<mpsc::Receiver<Result<Plan, Status>>, Status> {
    let head = tonic::Request::from_http(head);
    if method == K::STREAM {
        srv.sotw(&head, Requests::new(body), K::FIXED)
    } else if method == K::DELTA {
        srv.delta(&head, Requests::new(body), K::FIXED)
    } else if !K::FETCH.is_empty() && method == K::FETCH {
        let (tx, rx) = mpsc::channel(1);
        let srv = srv.clone();
        let type_url = K::FIXED.unwrap_or_default();
        tokio::spawn(async move {
            let _ = tx
                .send(fetch(&srv, Requests::new(body), type_url).await)
                .await;
        });
        Ok(rx)
    } else {
        Err(Status::unimplemented(format!(
            "{} has no method {method}",
            K::NAME
        )))
    }
}

async fn fetch(
    srv: &XdsServer,
    mut body: Requests<DiscoveryRequest>,
    type_url: &'static str,
) -> Result<Plan, Status> {
    let req = body
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("fetch needs a request"))?;
    srv.fetch(*req, type_url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::ResourceLocator;

    /// The body's bytes for `plan`, then the decoded message (gRPC prefix checked).
    async fn written<M: Message + Default>(plan: Plan) -> (Vec<Bytes>, M) {
        let (tx, rx) = mpsc::channel(1);
        tx.send(Ok(plan)).await.unwrap();
        drop(tx);
        let mut body = XdsBody::new(rx);
        let mut frames = Vec::new();
        while let Some(f) = body.frame().await {
            if let Ok(d) = f.unwrap().into_data() {
                frames.push(d);
            }
        }
        let all: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        assert_eq!(all[0], 0);
        let len = u32::from_be_bytes(all[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, all.len() - 5, "length prefix");
        (frames, M::decode(&all[5..]).unwrap())
    }

    #[tokio::test]
    async fn responses_with_large_resources_are_framed_exactly() {
        use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
            secret, GenericSecret, Secret,
        };
        let secret = |name: &str, size: usize| {
            crate::xds::cache::encode_secret(&Secret {
                name: name.into(),
                r#type: Some(secret::Type::GenericSecret(GenericSecret {
                    secret: Some(DataSource {
                        specifier: Some(data_source::Specifier::InlineBytes(vec![7; size])),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
            })
        };
        // Small, large (its own frame, not copied), small, large last (split for the tail).
        let items = vec![
            secret("a", 10),
            secret("b", 100_000),
            secret("c", 20),
            secret("d", 40_000),
        ];
        let head = DiscoveryResponse {
            version_info: "v".into(),
            type_url: SECRET.into(),
            nonce: "1".into(),
            ..Default::default()
        };
        let (frames, r): (_, DiscoveryResponse) = written(Plan::sotw(&head, items.clone())).await;
        assert_eq!(r.version_info, "v");
        assert_eq!(r.resources.len(), 4);
        for (got, want) in r.resources.iter().zip(&items) {
            assert_eq!(got, &want.any());
        }
        assert!(
            frames.iter().any(|f| f.as_ptr() == items[1].value.as_ptr()),
            "the large resource is written from the shared bytes"
        );
        assert_eq!(frames.last().unwrap().len(), 1, "one-byte last frame");
        let dhead = DeltaDiscoveryResponse {
            system_version_info: "v".into(),
            type_url: SECRET.into(),
            nonce: "2".into(),
            ..Default::default()
        };
        let (_, d): (_, DeltaDiscoveryResponse) = written(Plan::delta(&dhead, items.clone())).await;
        assert_eq!(d.resources.len(), 4);
        for (got, want) in d.resources.iter().zip(&items) {
            assert_eq!(got.name, want.name);
            assert_eq!(got.version, want.version);
            assert_eq!(got.resource.as_ref(), Some(&want.any()));
        }
    }

    #[test]
    fn sotw_request_reads_every_field_and_keeps_names_in_place() {
        let full = DiscoveryRequest {
            version_info: "v1".into(),
            node: Some(Node {
                id: "sidecar~10.0.0.1~p.ns~ns.svc.cluster.local".into(),
                ..Default::default()
            }),
            resource_names: vec!["a".into(), "bé".into(), String::new()],
            resource_locators: vec![ResourceLocator {
                name: "ignored".into(),
                ..Default::default()
            }],
            type_url: super::super::ENDPOINT.into(),
            response_nonce: "7".into(),
            error_detail: Some(envoy_types::pb::google::rpc::Status {
                code: 3,
                message: "bad".into(),
                ..Default::default()
            }),
        };
        let r = SotwRequest::decode_from(Bytes::from(full.encode_to_vec()), &[]).unwrap();
        assert_eq!(r.version_info, "v1");
        assert_eq!(r.node.as_ref().unwrap().id, full.node.as_ref().unwrap().id);
        assert_eq!(r.type_url, full.type_url);
        assert_eq!(r.response_nonce, "7");
        assert_eq!(r.error_detail.as_ref().unwrap().message, "bad");
        assert_eq!(r.names().collect::<Vec<_>>(), full.resource_names);
        // The names' fields in one slice, as the shared name set encodes them.
        let only_names = DiscoveryRequest {
            resource_names: full.resource_names.clone(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(r.names_wire(), Some(only_names.as_slice()));
        // Names interleaved with another field: no single slice (names still read).
        let mut mixed = Vec::new();
        prost::encoding::string::encode(3, &"a".to_string(), &mut mixed);
        prost::encoding::string::encode(4, &"t".to_string(), &mut mixed);
        prost::encoding::string::encode(3, &"b".to_string(), &mut mixed);
        let m = SotwRequest::decode_from(Bytes::from(mixed), &[]).unwrap();
        assert_eq!(m.names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(m.names_wire(), None);
        // A hint equal to the names is recognised without reading them; one that is only
        // a prefix of them is not.
        let set = |v: &[&str]| NameSet::intern(v.iter().map(|s| s.to_string()).collect());
        let ab = DiscoveryRequest {
            resource_names: vec!["a".into(), "b".into()],
            type_url: "t".into(),
            ..Default::default()
        };
        let hinted = SotwRequest::decode_from(
            Bytes::from(ab.encode_to_vec()),
            &[set(&["x"]), set(&["a", "b"])],
        )
        .unwrap();
        assert!(hinted.matched.as_ref().is_some_and(|m| m.set.len() == 2));
        assert_eq!(hinted.names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(hinted.type_url, "t");
        let prefix =
            SotwRequest::decode_from(Bytes::from(ab.encode_to_vec()), &[set(&["a"])]).unwrap();
        assert!(prefix.matched.is_none());
        assert_eq!(prefix.names().collect::<Vec<_>>(), ["a", "b"]);
        // A key written in two bytes (valid protobuf, never Envoy's): read all the same.
        let odd = [0x9a, 0x00, 1, b'x', 0x1a, 1, b'y'];
        let o = SotwRequest::decode_from(Bytes::copy_from_slice(&odd), &[]).unwrap();
        assert_eq!(o.names().collect::<Vec<_>>(), ["x", "y"]);
        assert_eq!(o.name_bytes().len(), 2);
        // A name running past the end is an error, not a panic.
        let mut bad = full.encode_to_vec();
        bad.truncate(bad.len() - 3);
        assert!(SotwRequest::decode_from(Bytes::from(bad), &[]).is_err());
    }
}

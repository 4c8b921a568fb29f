//! Raw HTTP/2 frames for tests that talk to the xDS port below any client library
//! (protocol, attacks, fuzzing). Include with
//! `#[path = "support/h2.rs"] mod h2;`.
#![allow(dead_code)]

/// The ADS method's path.
pub const ADS: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// One frame: type, flags, stream id, payload.
pub fn frame(ty: u8, flags: u8, id: u32, p: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + p.len());
    f.extend_from_slice(&(p.len() as u32).to_be_bytes()[1..]);
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(p);
    f
}

/// The client preface: the magic and a SETTINGS frame with `settings`.
pub fn preface(settings: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in settings {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &p));
    out
}

/// HPACK literals without indexing, new names (each name and value under 127 bytes).
pub fn literal_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in fields {
        b.push(0);
        for s in [n, v] {
            assert!(s.len() < 127);
            b.push(s.len() as u8);
            b.extend_from_slice(s.as_bytes());
        }
    }
    b
}

/// A gRPC call's request headers for `path`.
pub fn grpc_headers(path: &str) -> Vec<u8> {
    literal_block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "x"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ])
}

/// A gRPC message: the 5-byte prefix and the body.
pub fn grpc(msg: &[u8]) -> Vec<u8> {
    let mut m = vec![0];
    m.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    m.extend_from_slice(msg);
    m
}

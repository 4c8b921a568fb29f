//! Fuzzing driven by `cargo test` (no nightly here for cargo-fuzz): each target mutates a
//! seed corpus with a seeded RNG (bit flips, byte changes, inserts, deletes, truncation,
//! splices, varint extremes) and feeds every input to a decoder that faces the network or
//! the user. A panic is a failure that prints the target, the seed and the input (hex), to
//! become a regression test. `PILOTFISH_FUZZ_ITERS` (default: a few seconds per target) runs longer
//! on demand; each target prints how many executions ran clean.
//!
//! Targets: the state-of-the-world request decoder (`wire::SotwRequest`, names read in
//! place), the delta request decoder with its claims (`claims::DeltaRequest`), the config
//! parser through validation, the World build and translation, the MeshConfig parser, the
//! plaintext xDS port's HTTP/2 frame reader (a connection fed in memory, its streams run)
//! and its gRPC message framer.

#[path = "support/h2.rs"]
mod h2;

use pilotfish::api::{mesh::parse_mesh, parse_file};
use pilotfish::model::{Index, MeshConfig, Proxy};
use pilotfish::xds::cache::Names;
use pilotfish::xds::claims::DeltaRequest;
use pilotfish::xds::wire::{Decode, SotwRequest};
use prost::Message;
use rand::{Rng, RngCore, SeedableRng};
use std::sync::Arc;
use std::time::Instant;

/// `PILOTFISH_FUZZ_ITERS` when set, else the target's default (a few seconds in CI).
fn iters(default: usize) -> usize {
    std::env::var("PILOTFISH_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One mutation of `input` (sometimes spliced with another corpus entry).
fn mutate(rng: &mut rand::rngs::StdRng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = v.len();
        match rng.random_range(0..9) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] = rng.random();
            }
            2 => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..16);
                let mut b = vec![0u8; n];
                rng.fill_bytes(&mut b);
                v.splice(i..i, b);
            }
            3 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(32));
                v.drain(i..i + n);
            }
            4 if len > 0 => v.truncate(rng.random_range(0..len)),
            5 if len > 0 => {
                // A varint extreme where a length or tag is likely.
                let i = rng.random_range(0..len);
                let x: &[u8] = [
                    &[0xff, 0xff, 0xff, 0xff, 0x0f][..],
                    &[0x80; 10][..],
                    &[0][..],
                ][rng.random_range(0..3)];
                v.splice(i..(i + 1).min(len), x.iter().copied());
            }
            6 if !corpus.is_empty() => {
                let o = &corpus[rng.random_range(0..corpus.len())];
                if !o.is_empty() {
                    let (a, b) = (rng.random_range(0..=len), rng.random_range(0..o.len()));
                    v.truncate(a);
                    v.extend_from_slice(&o[b..]);
                }
            }
            7 if len > 1 => {
                // Duplicate a chunk (repeated fields, repeated documents).
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(64));
                let chunk = v[i..i + n].to_vec();
                v.splice(i..i, chunk);
            }
            _ => {}
        }
    }
    v
}

/// Run `f` on `iters()` mutations of the corpus; a panic fails with the input.
fn fuzz(
    target: &str,
    default_iters: usize,
    corpus: Vec<Vec<u8>>,
    f: impl Fn(&[u8]) + std::panic::RefUnwindSafe,
) {
    let seed = 0x5eed_0000 + target.len() as u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let t = Instant::now();
    let n = iters(default_iters);
    for c in &corpus {
        f(c);
    }
    for i in 0..n {
        let base = &corpus[rng.random_range(0..corpus.len())];
        let input = mutate(&mut rng, base, &corpus);
        if std::panic::catch_unwind(|| f(&input)).is_err() {
            panic!(
                "fuzz {target}: panic at execution {i} (seed {seed:#x}); input ({} bytes): {}",
                input.len(),
                hex::encode(&input)
            );
        }
    }
    println!(
        "fuzz {target}: {} executions clean in {} ms",
        n + corpus.len(),
        t.elapsed().as_millis()
    );
}

fn names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("outbound|9080||svc{i}.ns{}.svc.cluster.local", i % 3))
        .collect()
}

#[test]
fn sotw_request_decoder() {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    let ns = names(40);
    let hints = vec![Names::intern(ns.iter().cloned().collect())];
    let req = |names: Vec<String>, nonce: &str| {
        DiscoveryRequest {
            version_info: "v1".into(),
            type_url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment".into(),
            response_nonce: nonce.into(),
            resource_names: names,
            ..Default::default()
        }
        .encode_to_vec()
    };
    let corpus = vec![
        req(ns.clone(), "3"),
        req(ns[..5].to_vec(), ""),
        req(vec![], "1"),
    ];
    fuzz("sotw_request", 50_000, corpus, |b| {
        if let Ok(r) = SotwRequest::decode_from(bytes::Bytes::copy_from_slice(b), &hints) {
            let _ = r.names().count();
            let _ = r.names_wire();
        }
    });
}

#[test]
fn delta_request_decoder() {
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    let ns = names(30);
    let claims: std::collections::HashMap<String, String> = ns
        .iter()
        .map(|n| (n.clone(), format!("{:016x}", n.len())))
        .collect();
    let corpus = vec![
        DeltaDiscoveryRequest {
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            resource_names_subscribe: ns.clone(),
            initial_resource_versions: claims,
            ..Default::default()
        }
        .encode_to_vec(),
        DeltaDiscoveryRequest {
            response_nonce: "7".into(),
            resource_names_unsubscribe: ns[..3].to_vec(),
            ..Default::default()
        }
        .encode_to_vec(),
    ];
    fuzz("delta_request", 50_000, corpus, |b| {
        if let Ok(mut r) = DeltaRequest::decode_from(bytes::Bytes::copy_from_slice(b), &[]) {
            let names: Vec<String> = r.claims.names().collect();
            let _ = r.claims.fingerprint();
            for n in names.iter().take(3) {
                let _ = r.claims.get(n);
                r.claims.remove(n);
            }
            let _ = r.claims.len();
        }
    });
}

fn yaml_corpus() -> Vec<Vec<u8>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in [
        "examples/bookinfo",
        "e2e/testdata/golden/authz",
        "e2e/testdata/golden/mtls_policies",
        "e2e/testdata/golden/fault",
    ] {
        let Ok(rd) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "yaml") {
                out.push(std::fs::read(&p).unwrap());
            }
        }
    }
    assert!(out.len() >= 3, "seed corpus missing");
    out
}

#[test]
fn config_parser_validation_and_translation() {
    let proxy = Proxy {
        namespace: "default".into(),
        ips: vec!["10.0.0.3".into()],
        labels: [("app".to_string(), "ratings".to_string())].into(),
        mtls: true,
        ..Default::default()
    };
    fuzz("config", 2_000, yaml_corpus(), |b| {
        let text = String::from_utf8_lossy(b);
        let (res, errs) = parse_file("f.yaml", &text);
        for e in &errs {
            assert!(
                !e.file.is_empty() && !e.object.is_empty(),
                "incomplete error {e:?}"
            );
        }
        if res.is_empty() {
            return;
        }
        let mut ix = Index::new(MeshConfig::default());
        ix.apply_file("f.yaml", res, errs);
        let w = ix.snapshot();
        let cfg = pilotfish::translate::generate(&w, &proxy);
        let _ = pilotfish::translate::check(&cfg);
    });
}

#[test]
fn mesh_config_parser() {
    let corpus = vec![
        b"rootNamespace: istio-system\npathNormalization: {normalization: MERGE_SLASHES}\nextensionProviders:\n- name: a\n  envoyExtAuthzGrpc: {service: a.b.svc.cluster.local, port: 9000, timeout: 1s, failOpen: true}\n- name: h\n  envoyExtAuthzHttp: {service: h, port: 80, includeRequestHeadersInCheck: [x], headersToUpstreamOnAllow: [y], pathPrefix: /check}\n".to_vec(),
        b"accessLogFile: /dev/stdout\noutboundTrafficPolicy: {mode: REGISTRY_ONLY}\n".to_vec(),
    ];
    fuzz("mesh_config", 5_000, corpus, |b| {
        if let Ok((m, _)) = parse_mesh(&String::from_utf8_lossy(b)) {
            let mut mesh = MeshConfig::default();
            mesh.apply_file(m);
            let _ = Arc::new(mesh);
        }
    });
}

/// A server with a published config, for the frame reader's streams to open on.
fn xds_server() -> pilotfish::xds::server::XdsServer {
    use pilotfish::xds::server::{Admission, Published, XdsServer};
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports: [{name: http, port: 80}]\n";
    let w = pilotfish::app::world_from_files(&[("a.yaml", yaml)], MeshConfig::default());
    let gen = Arc::new(pilotfish::xds::cache::Generation::new(Arc::new(w)));
    let (tx, rx) = tokio::sync::watch::channel(Some(Published {
        gen,
        changed_at: Instant::now(),
    }));
    std::mem::forget(tx);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    std::mem::forget(stop_tx);
    XdsServer {
        current: rx,
        metrics: Arc::new(pilotfish::metrics::Metrics::new()),
        conns: Arc::new(pilotfish::xds::status::Connections::default()),
        stop,
        security: None,
        require_auth: false,
        admission: Arc::new(Admission::unlimited()),
        vhds: true,
    }
}

fn frames_corpus() -> Vec<Vec<u8>> {
    use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
    use h2::{frame, grpc, grpc_headers, literal_block, preface, ADS};
    let node = Some(envoy_types::pb::envoy::config::core::v3::Node {
        id: "sidecar~10.0.0.3~a.default~default.svc.cluster.local".into(),
        ..Default::default()
    });
    let sotw = DiscoveryRequest {
        node: node.clone(),
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let delta = DeltaDiscoveryRequest {
        node,
        type_url: "type.googleapis.com/envoy.config.listener.v3.Listener".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let delta_path =
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
    let mut a = preface(&[(4, 65_535), (5, 16_384)]);
    a.extend(frame(1, 0x4, 1, &grpc_headers(ADS)));
    a.extend(frame(0, 0, 1, &grpc(&sotw)));
    a.extend(frame(8, 0, 0, &1000u32.to_be_bytes()));
    a.extend(frame(6, 0, 0, b"12345678"));
    a.extend(frame(0, 1, 1, &[]));
    // Delta, the message cut over two DATA frames (one padded), a header block in pieces.
    let mut b = preface(&[]);
    let block = grpc_headers(delta_path);
    b.extend(frame(1, 0, 3, &block[..10]));
    b.extend(frame(9, 0x4, 3, &block[10..]));
    let m = grpc(&delta);
    b.extend(frame(0, 0, 3, &m[..7]));
    let mut padded = vec![4];
    padded.extend_from_slice(&m[7..]);
    padded.extend_from_slice(&[0; 4]);
    b.extend(frame(0, 0x8, 3, &padded));
    b.extend(frame(3, 0, 3, &8u32.to_be_bytes()));
    // Trailers, priority, a second stream, indexing, a table size update, GOAWAY.
    let mut c = preface(&[(1, 4096), (3, 10)]);
    let mut idx = vec![0x20, 0x40, 4];
    idx.extend_from_slice(b"x-ab");
    idx.extend_from_slice(&[3]);
    idx.extend_from_slice(b"one");
    idx.extend(grpc_headers(ADS));
    idx.push(0xbe);
    c.extend(frame(
        1,
        0x4 | 0x20,
        5,
        &[&[0, 0, 0, 0, 16][..], &idx].concat(),
    ));
    c.extend(frame(0, 0, 5, &grpc(&sotw)));
    c.extend(frame(1, 0x5, 5, &literal_block(&[("x-trailer", "1")])));
    c.extend(frame(2, 0, 7, &[0, 0, 0, 5, 20]));
    c.extend(frame(
        1,
        0x5,
        7,
        &literal_block(&[(":method", "GET"), (":scheme", "http"), (":path", "/")]),
    ));
    c.extend(frame(7, 0, 0, &[0, 0, 0, 5, 0, 0, 0, 0]));
    vec![a, b, c]
}

/// The plaintext xDS port's frame reader, on a connection fed in memory: every input is
/// cut into reads at places it chooses itself, the streams it opens run (request framing
/// and decoding included), their answers are framed; buffered request bytes must all be
/// released when the connection goes. Then the gRPC message framer alone.
#[test]
fn http2_frame_reader_and_grpc_framer() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let srv = xds_server();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (io, _) = listener.accept().unwrap();
    io.set_nonblocking(true).unwrap();
    let run = std::cell::RefCell::new(move || {
        for _ in 0..4 {
            rt.block_on(tokio::task::yield_now());
        }
    });
    let ctx = std::panic::AssertUnwindSafe((&srv, &io, &run));
    fuzz("http2_frames", 20_000, frames_corpus(), |b| {
        let (srv, io, run) = *ctx;
        // Reads cut where the input's own bytes say (so mutations move them too).
        let cuts: Vec<usize> = b.iter().step_by(97).map(|&x| 1 + x as usize * 7).collect();
        let mut run = run.borrow_mut();
        pilotfish::xds::http2::fuzz::frames(srv, io, b, &cuts, &mut *run);
    });
    // The inputs reached the server: streams opened, requests decoded, config sent.
    let sent = srv.metrics.bytes_sent.get();
    println!("fuzz http2_frames: {sent} response bytes generated");
    assert!(
        sent > 0,
        "no stream ever got an answer: the target fuzzes nothing"
    );
    drop(client);

    // The framer: messages cut at every place, with size limits and ends of both kinds.
    let msgs: Vec<Vec<u8>> = vec![
        h2::grpc(b"hello"),
        [h2::grpc(&[]), h2::grpc(&[7; 300]), h2::grpc(b"x")].concat(),
        h2::grpc(&[1; 70_000]),
    ];
    fuzz("grpc_framer", 50_000, msgs, |b| {
        let k = b.first().copied().unwrap_or(0) as usize;
        let cut = (k * 13).min(b.len());
        let (x, y) = b.split_at(cut);
        let end = match k % 3 {
            0 => Some(true),
            1 => Some(false),
            _ => None,
        };
        let max = [64, 1 << 20, 16 << 20][k % 3];
        let _ = pilotfish::xds::http2::fuzz::inbox(&[x, y], end, max);
    });
}

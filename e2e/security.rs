//! Proxy authentication and SDS with an in-process client: no token, bad tokens and node
//! claims that disagree with the token are refused; an identity gets its own certificate
//! and the roots, and nothing else, with a cold and a warm certificate cache; an
//! unauthenticated stream never receives a secret; rotation pushes a new certificate.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use pilotfish::ca::token::LocalTokens;
use pilotfish::ca::{Ca, CaConfig, Identity};
use pilotfish::metrics::Metrics;
use pilotfish::model::MeshConfig;
use pilotfish::xds::auth::Security;
use pilotfish::xds::cache::Generation;
use pilotfish::xds::server::{Published, XdsServer};
use pilotfish::xds::status::Connections;
use pilotfish::xds::SECRET;
use prost::Message;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const WAIT: Duration = Duration::from_secs(10);

struct H {
    addr: String,
    plain_addr: String,
    tokens: Arc<LocalTokens>,
    sec: Arc<Security>,
    ca: Arc<Ca>,
    rotation: watch::Sender<u64>,
    _dir: tempfile::TempDir,
    _stop: watch::Sender<bool>,
}

async fn serve(srv: XdsServer) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(
                pilotfish::xds::wire::XdsService::<pilotfish::xds::wire::Sds>::new(srv.clone()),
            )
            .add_service(pilotfish::xds::wire::XdsService::<pilotfish::xds::wire::Ads>::new(srv))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await
            .unwrap();
    });
    addr
}

async fn start(ttl: Duration) -> H {
    start_with(ttl, &[]).await
}

async fn start_with(ttl: Duration, files: &[(&str, &str)]) -> H {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(
        Ca::load_or_create(&CaConfig {
            state_dir: dir.path().to_path_buf(),
            trust_domain: "cluster.local".into(),
            workload_ttl: ttl,
            ca_cert: None,
            ca_key: None,
            ca_chain: None,
            ..Default::default()
        })
        .unwrap(),
    );
    let tokens = Arc::new(LocalTokens::load_or_create(dir.path()).unwrap());
    let (rotation_tx, rotation) = watch::channel(0);
    let sec = Arc::new(Security {
        ca: ca.clone(),
        verifier: tokens.clone(),
        rotation,
        refusals: Default::default(),
        sds_denied: Default::default(),
    });
    let w = pilotfish::app::world_from_files(files, MeshConfig::default());
    assert!(w.errors.is_empty(), "{:?}", w.errors);
    let gen = Arc::new(Generation::new(Arc::new(w)));
    let (_tx, rx) = watch::channel(Some(Published {
        gen,
        changed_at: Instant::now(),
    }));
    std::mem::forget(_tx);
    let (stop_tx, stop) = watch::channel(false);
    let srv = XdsServer {
        current: rx,
        metrics: Arc::new(Metrics::new()),
        conns: Arc::new(Connections::default()),
        stop,
        security: Some(sec.clone()),
        require_auth: true,
        admission: Arc::new(pilotfish::xds::server::Admission::unlimited()),
        vhds: true,
    };
    let plain = XdsServer {
        require_auth: false,
        ..srv.clone()
    };
    H {
        addr: serve(srv).await,
        plain_addr: serve(plain).await,
        tokens,
        sec,
        ca,
        rotation: rotation_tx,
        _dir: dir,
        _stop: stop_tx,
    }
}

fn node(ns: &str, sa: Option<&str>) -> Option<Node> {
    let mut fields = std::collections::HashMap::new();
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.into())),
    };
    fields.insert("NAMESPACE".to_string(), s(ns));
    if let Some(sa) = sa {
        fields.insert("SERVICE_ACCOUNT".to_string(), s(sa));
    }
    Some(Node {
        id: format!("sidecar~10.0.0.1~pod.{ns}~{ns}.svc.cluster.local"),
        metadata: Some(Struct { fields }),
        ..Default::default()
    })
}

fn sds(names: &[&str], n: Option<Node>, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: n,
        type_url: SECRET.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

/// A stream whose first message (read to see whether the stream was refused) is kept.
struct Conn {
    first: Option<DiscoveryResponse>,
    s: Streaming<DiscoveryResponse>,
    tx: mpsc::Sender<DiscoveryRequest>,
}

impl Conn {
    /// ACK a secret response, as Envoy does (the next push waits for it).
    async fn ack(&self, r: &DiscoveryResponse, names: &[&str]) {
        let mut req = sds(names, None, &r.nonce);
        req.version_info = r.version_info.clone();
        self.tx.send(req).await.unwrap();
    }

    async fn next(&mut self) -> DiscoveryResponse {
        if let Some(m) = self.first.take() {
            return m;
        }
        tokio::time::timeout(WAIT, self.s.message())
            .await
            .expect("timed out")
            .unwrap()
            .expect("stream ended")
    }
}

async fn open(
    addr: &str,
    token: Option<&str>,
    first: DiscoveryRequest,
) -> Result<Conn, tonic::Status> {
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.unwrap();
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let mut c = AggregatedDiscoveryServiceClient::connect(addr.to_string())
        .await
        .unwrap();
    let mut s = c.stream_aggregated_resources(req).await?.into_inner();
    // Refusals after the first request arrive as the stream's first item.
    match tokio::time::timeout(Duration::from_millis(300), s.message()).await {
        Ok(Err(status)) => Err(status),
        Ok(Ok(first)) => Ok(Conn { first, s, tx }),
        Err(_) => Ok(Conn { first: None, s, tx }),
    }
}

fn secrets(r: &DiscoveryResponse) -> Vec<Secret> {
    r.resources
        .iter()
        .map(|a| Secret::decode(a.value.as_slice()).unwrap())
        .collect()
}

fn cert_of(s: &Secret) -> (String, String) {
    match &s.r#type {
        Some(secret::Type::TlsCertificate(t)) => {
            let pem = match &t.certificate_chain.as_ref().unwrap().specifier {
                Some(
                    envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString(
                        s,
                    ),
                ) => s.clone(),
                _ => panic!("inline chain expected"),
            };
            let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
            let c = p.parse_x509().unwrap();
            let san = c.subject_alternative_name().unwrap().unwrap();
            let uri = san
                .value
                .general_names
                .iter()
                .find_map(|g| match g {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .unwrap();
            (uri, c.raw_serial_as_string())
        }
        _ => panic!("not a certificate: {}", s.name),
    }
}

fn id(ns: &str, sa: &str) -> Identity {
    Identity {
        namespace: ns.into(),
        service_account: sa.into(),
    }
}

#[tokio::test]
async fn streams_without_a_valid_token_are_refused() {
    let h = start(Duration::from_secs(3600)).await;
    let e = open(
        &h.addr,
        None,
        sds(&["default"], node("default", Some("a")), ""),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = open(
        &h.addr,
        Some("garbage.token.here"),
        sds(&["default"], node("default", Some("a")), ""),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = open(
        &h.addr,
        Some(""),
        sds(&["default"], node("default", Some("a")), ""),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // The refusal text never echoes the token.
    let t = h.tokens.sign(&id("default", "a"), Duration::from_secs(60));
    let forged = format!("{}x", &t[..t.len() - 1]);
    let e = open(
        &h.addr,
        Some(&forged),
        sds(&["default"], node("default", Some("a")), ""),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(!e.message().contains(&forged[..30]));
    assert!(
        h.sec
            .refusals
            .get_or_create(&pilotfish::xds::auth::ReasonLabel {
                reason: "token".into()
            })
            .get()
            >= 4
    );
}

#[tokio::test]
async fn node_claims_must_match_the_token() {
    let h = start(Duration::from_secs(3600)).await;
    let c = h.tokens.sign(&id("default", "c"), Duration::from_secs(600));
    // Token C, node claiming B.
    let e = open(
        &h.addr,
        Some(&c),
        sds(&["default"], node("default", Some("b")), ""),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    // Token C, node claiming another namespace.
    let e = open(
        &h.addr,
        Some(&c),
        sds(&["default"], node("other", Some("c")), ""),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    // Token C, node with no SERVICE_ACCOUNT: a missing claim is a refusal, not a skipped check.
    let e = open(
        &h.addr,
        Some(&c),
        sds(&["default"], node("default", None), ""),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn an_identity_gets_its_own_certificate_and_nothing_else() {
    for warm in [false, true] {
        let h = start(Duration::from_secs(3600)).await;
        if warm {
            // B is connected first, so B's certificate is in the CA's cache.
            let b = h.tokens.sign(&id("default", "b"), Duration::from_secs(600));
            let mut sb = open(
                &h.addr,
                Some(&b),
                sds(&["default"], node("default", Some("b")), ""),
            )
            .await
            .unwrap();
            let r = sb.next().await;
            assert_eq!(
                cert_of(&secrets(&r)[0]).0,
                "spiffe://cluster.local/ns/default/sa/b"
            );
        }
        let a = h.tokens.sign(&id("default", "a"), Duration::from_secs(600));
        let mut s = open(
            &h.addr,
            Some(&a),
            sds(
                &[
                    "default",
                    "ROOTCA",
                    "spiffe://cluster.local/ns/default/sa/b",
                    "b",
                    "kubernetes://b",
                ],
                node("default", Some("a")),
                "",
            ),
        )
        .await
        .unwrap();
        let r = s.next().await;
        let got = secrets(&r);
        let mut names: Vec<&str> = got.iter().map(|s| s.name.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["ROOTCA", "default"], "warm={warm}");
        let (uri, _) = cert_of(got.iter().find(|s| s.name == "default").unwrap());
        assert_eq!(uri, "spiffe://cluster.local/ns/default/sa/a", "warm={warm}");
        assert!(
            h.sec.sds_denied.get() >= 3,
            "the foreign names are refused and counted"
        );
        let ca_pem = match &got.iter().find(|s| s.name == "ROOTCA").unwrap().r#type {
            Some(secret::Type::ValidationContext(v)) => format!("{:?}", v.trusted_ca),
            _ => panic!(),
        };
        assert!(ca_pem.contains("BEGIN CERTIFICATE") && !ca_pem.contains("PRIVATE"));
        // Nothing was ever served for B's identity on A's stream.
        for r in &r.resources {
            let s = Secret::decode(r.value.as_slice()).unwrap();
            if let Some(secret::Type::TlsCertificate(_)) = s.r#type {
                assert!(!cert_of(&s).0.ends_with("/sa/b"));
            }
        }
    }
}

#[tokio::test]
async fn unauthenticated_streams_never_receive_a_secret() {
    let h = start(Duration::from_secs(3600)).await;
    // The plaintext server accepts the stream (config is not secret) but serves no secret.
    let mut s = open(
        &h.plain_addr,
        None,
        sds(&["default", "ROOTCA"], node("default", Some("a")), ""),
    )
    .await
    .unwrap();
    let r = s.next().await;
    assert!(
        r.resources.is_empty(),
        "no secret on an unauthenticated stream: {r:?}"
    );
    assert!(h.sec.sds_denied.get() >= 1);
    // Delta likewise.
    let (tx, rx) = mpsc::channel(4);
    tx.send(DeltaDiscoveryRequest {
        node: node("default", Some("a")),
        type_url: SECRET.into(),
        resource_names_subscribe: vec!["default".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut c = AggregatedDiscoveryServiceClient::connect(h.plain_addr.clone())
        .await
        .unwrap();
    let mut d = c
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let r = tokio::time::timeout(WAIT, d.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        r.resources.is_empty(),
        "no secret on an unauthenticated delta stream"
    );
    assert_eq!(r.removed_resources, vec!["default".to_string()]);
    drop(tx);
}

#[tokio::test]
async fn rotation_pushes_a_new_certificate_before_expiry() {
    let h = start(Duration::from_secs(10)).await;
    let a = h.tokens.sign(&id("default", "a"), Duration::from_secs(600));
    let mut s = open(
        &h.addr,
        Some(&a),
        sds(&["default"], node("default", Some("a")), ""),
    )
    .await
    .unwrap();
    let r = s.next().await;
    let (_, serial1) = cert_of(&secrets(&r)[0]);
    s.ack(&r, &["default"]).await;
    // Half life is 5 s: the CA's sweep marks it due, the streams are told.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut serial2 = serial1.clone();
    while Instant::now() < deadline && serial2 == serial1 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if h.ca.expire_due() {
            h.rotation.send_modify(|v| *v += 1);
            let r2 = s.next().await;
            serial2 = cert_of(&secrets(&r2)[0]).1;
        }
    }
    assert_ne!(
        serial1, serial2,
        "a new certificate arrives at half life, before expiry"
    );
    assert!(h.ca.rotations_total.get() >= 1);
}

#[tokio::test]
async fn standalone_sds_service_serves_only_the_own_identity() {
    use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
    let h = start(Duration::from_secs(3600)).await;
    let a = h.tokens.sign(&id("default", "a"), Duration::from_secs(600));
    let (tx, rx) = mpsc::channel(4);
    tx.send(sds(&["default"], node("default", Some("a")), ""))
        .await
        .unwrap();
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {a}").parse().unwrap());
    let mut c = SecretDiscoveryServiceClient::connect(h.addr.clone())
        .await
        .unwrap();
    let mut s = c.stream_secrets(req).await.unwrap().into_inner();
    let r = tokio::time::timeout(WAIT, s.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let got = secrets(&r);
    assert_eq!(got.len(), 1);
    assert_eq!(cert_of(&got[0]).0, "spiffe://cluster.local/ns/default/sa/a");
    drop(tx);
    // Without a token the standalone service refuses too.
    let (tx, rx) = mpsc::channel(4);
    tx.send(sds(&["default"], node("default", Some("a")), ""))
        .await
        .unwrap();
    // (The token is checked in the stream's task: the refusal is its first item.)
    let e = match c.stream_secrets(ReceiverStream::new(rx)).await {
        Err(e) => e,
        Ok(r) => r.into_inner().message().await.err().expect("not refused"),
    };
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // Fetch never hands out secrets (it carries no stream identity).
    let f = c
        .fetch_secrets(sds(&["default"], node("default", Some("a")), ""))
        .await;
    assert!(f
        .map(|r| r.into_inner().resources.is_empty())
        .unwrap_or(true));
}

#[test]
fn plaintext_xds_outside_loopback_needs_an_explicit_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pilotfish"))
        .args(["serve", "--config-dir"])
        .arg(dir.path())
        .args([
            "--xds-address",
            "0.0.0.0:0",
            "--http-address",
            "127.0.0.1:0",
            "--secure-xds-address",
            "127.0.0.1:0",
        ])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plaintext xDS has no authentication"), "{err}");
}

const CREDS: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: api-client, namespace: shop}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: CERT-PEM\n  tls.key: KEY-PEM-SECRET\n  ca.crt: CA-PEM\n---\n\
apiVersion: v1\nkind: Secret\nmetadata: {name: webhook-tls, namespace: shop}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: WEBHOOK-CERT\n  tls.key: WEBHOOK-KEY\n---\n\
apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api, namespace: shop}\nspec:\n  hosts: [api.example.com]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  ports: [{number: 443, name: tls, protocol: TLS}]\n---\n\
apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: api, namespace: shop}\nspec:\n  host: api.example.com\n  trafficPolicy:\n    tls: {mode: MUTUAL, credentialName: api-client}\n";

#[tokio::test]
async fn credential_secrets_go_only_to_their_namespace_and_never_to_debug_pages() {
    let h = start_with(Duration::from_secs(3600), &[("creds.yaml", CREDS)]).await;
    let names = ["kubernetes://api-client", "kubernetes://api-client-cacert"];
    // A proxy of namespace shop gets both.
    let t = h.tokens.sign(&id("shop", "web"), Duration::from_secs(600));
    let mut s = open(
        &h.addr,
        Some(&t),
        sds(&names, node("shop", Some("web")), ""),
    )
    .await
    .unwrap();
    let got = secrets(&s.next().await);
    let mut n: Vec<&str> = got.iter().map(|s| s.name.as_str()).collect();
    n.sort();
    assert_eq!(n, names.to_vec());
    let dump = format!("{got:?}");
    assert!(dump.contains("KEY-PEM-SECRET") && dump.contains("CA-PEM"));
    // A TLS Secret of the same namespace that no config names (a webhook's) is not served.
    let mut s1 = open(
        &h.addr,
        Some(&t),
        sds(&["kubernetes://webhook-tls"], node("shop", Some("web")), ""),
    )
    .await
    .unwrap();
    assert!(
        secrets(&s1.next().await).is_empty(),
        "a Secret no config names must not be served"
    );
    // A proxy of another namespace asking for the same names gets nothing.
    let o = h.tokens.sign(&id("other", "web"), Duration::from_secs(600));
    let mut s2 = open(
        &h.addr,
        Some(&o),
        sds(&names, node("other", Some("web")), ""),
    )
    .await
    .unwrap();
    assert!(
        secrets(&s2.next().await).is_empty(),
        "another namespace's Secret must not be served"
    );
    // An unauthenticated stream gets nothing either.
    let mut s3 = open(
        &h.plain_addr,
        None,
        sds(&names, node("shop", Some("web")), ""),
    )
    .await
    .unwrap();
    assert!(secrets(&s3.next().await).is_empty());
    // The debug view of the object shows key names only.
    let w = pilotfish::app::world_from_files(&[("creds.yaml", CREDS)], MeshConfig::default());
    let shown =
        serde_json::to_string(&w.objects.values().map(|r| &r.spec).collect::<Vec<_>>()).unwrap();
    assert!(
        shown.contains("tls.key")
            && !shown.contains("KEY-PEM-SECRET")
            && !shown.contains("CERT-PEM"),
        "{shown}"
    );
    assert!(!format!("{:?}", w.objects).contains("KEY-PEM-SECRET"));
}

/// A `pilotfish serve` on free loopback ports with the debug port at `http` (extra flags);
/// killed on drop.
struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve_process(dir: &std::path::Path, http: &str, extra: &[&str]) -> Serve {
    std::fs::create_dir_all(dir.join("config")).unwrap();
    let p = |n: u16| format!("127.0.0.1:{n}");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_pilotfish"))
        .args(["serve", "--config-dir"])
        .arg(dir.join("config"))
        .args(["--xds-address", &p(free_port()), "--http-address", http])
        .args([
            "--secure-xds-address",
            &p(free_port()),
            "--authz-address",
            "",
        ])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    Serve(child)
}

/// Waits (30 s at most) until `/ready` on `addr` answers 200.
fn wait_ready(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(addr, "/ready", None).0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (status, body) of GET `path` on `addr`, with a bearer token when given.
fn get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut r = ureq::get(&format!("http://{addr}{path}")).timeout(Duration::from_secs(5));
    if let Some(t) = token {
        r = r.set("authorization", &format!("Bearer {t}"));
    }
    match r.call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// Outside loopback the debug pages need a bearer token (made into the state directory,
/// mode 0600, or given by file); probes and metrics stay open; on loopback all is open.
#[test]
fn debug_pages_outside_loopback_need_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _s = serve_process(dir.path(), &format!("0.0.0.0:{port}"), &[]);
    let addr = format!("127.0.0.1:{port}");
    wait_ready(&addr);
    for open in ["/ready", "/healthz", "/metrics"] {
        assert_eq!(get(&addr, open, None).0, 200, "{open} is open");
    }
    let token_file = dir.path().join("state").join("debug-token");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_file).unwrap();
    for page in [
        "/debug/configz",
        "/debug/syncz",
        "/debug/certz",
        "/debug/graphz",
        "/debug",
    ] {
        let (code, body) = get(&addr, page, None);
        assert_eq!(code, 401, "{page} without a token: {body}");
        assert!(!body.contains('{'), "a refusal shows nothing: {body}");
        assert_eq!(
            get(&addr, page, Some("not-the-token-at-all")).0,
            401,
            "{page}"
        );
        assert_eq!(
            get(&addr, page, Some(&token)).0,
            200,
            "{page} with the token"
        );
    }
    assert!(
        !get(&addr, "/metrics", None).1.contains(&token),
        "the token leaks"
    );

    // A token given by file; a short one is refused at start.
    let d2 = tempfile::tempdir().unwrap();
    let f = d2.path().join("t");
    std::fs::write(&f, "0123456789abcdef0123\n").unwrap();
    let port2 = free_port();
    let _s2 = serve_process(
        d2.path(),
        &format!("0.0.0.0:{port2}"),
        &["--debug-token-file", f.to_str().unwrap()],
    );
    let addr2 = format!("127.0.0.1:{port2}");
    wait_ready(&addr2);
    assert_eq!(
        get(&addr2, "/debug/configz", Some("0123456789abcdef0123")).0,
        200
    );
    assert_eq!(get(&addr2, "/debug/configz", None).0, 401);
    std::fs::write(&f, "short").unwrap();
    let d3 = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d3.path().join("config")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pilotfish"))
        .args(["serve", "--config-dir"])
        .arg(d3.path().join("config"))
        .args([
            "--http-address",
            &format!("0.0.0.0:{}", free_port()),
            "--debug-token-file",
        ])
        .arg(&f)
        .arg("--state-dir")
        .arg(d3.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16"));

    // Loopback: open.
    let d4 = tempfile::tempdir().unwrap();
    let port4 = free_port();
    let _s4 = serve_process(d4.path(), &format!("127.0.0.1:{port4}"), &[]);
    let addr4 = format!("127.0.0.1:{port4}");
    wait_ready(&addr4);
    assert_eq!(get(&addr4, "/debug/configz", None).0, 200);
}

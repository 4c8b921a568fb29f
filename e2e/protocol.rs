//! xDS protocol tests with an in-process tonic ADS client against the real server:
//! ACK, NACK without a resend loop, stale nonces, wildcard CDS/LDS, EDS by name, delta
//! subscribe/unsubscribe/removed/initial versions, push order, no duplicate names,
//! `Unavailable` before the first load, and a stalled client not delaying another.

#[path = "support/h2.rs"]
mod h2;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc;
use h2::{frame, grpc_headers, literal_block, ADS};
use pilotfish::metrics::Metrics;
use pilotfish::model::MeshConfig;
use pilotfish::xds::cache::Generation;
use pilotfish::xds::server::{Published, XdsServer};
use pilotfish::xds::status::Connections;
use pilotfish::xds::{CLUSTER, ENDPOINT, LISTENER, ROUTE, VHOST};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const QUIET: Duration = Duration::from_millis(400);
const WAIT: Duration = Duration::from_secs(10);

fn svc_yaml(names: &[&str]) -> String {
    let mut s = String::new();
    for n in names {
        // The address depends on the name only, so a service is unchanged across worlds.
        let ip = format!(
            "10.1.{}.{}",
            n.len(),
            n.bytes().map(u32::from).sum::<u32>() % 250 + 1
        );
        s.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {n}}}\nspec:\n  selector: {{app: {n}}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {n}-1}}\nspec:\n  address: {ip}\n  labels: {{app: {n}, version: v1}}\n---\n"
        ));
    }
    s
}

struct Harness {
    tx: watch::Sender<Option<Published>>,
    addr: String,
    metrics: Arc<Metrics>,
    conns: Arc<Connections>,
}

impl Harness {
    /// A server on pilotfish's own HTTP/2 transport (the plaintext xDS port's).
    async fn start(initial: Option<&str>) -> Harness {
        Harness::start_with(initial, false).await
    }

    /// The own transport with a maximum connection age.
    async fn start_aged(initial: Option<&str>, max_age: Duration) -> Harness {
        Harness::start_full(initial, false, Some(max_age)).await
    }

    /// `tonic`: on tonic's HTTP/2 server instead (the TLS port's transport).
    async fn start_with(initial: Option<&str>, tonic: bool) -> Harness {
        Harness::start_full(initial, tonic, None).await
    }

    async fn start_full(initial: Option<&str>, tonic: bool, max_age: Option<Duration>) -> Harness {
        let (tx, rx) = watch::channel(None);
        let metrics = Arc::new(Metrics::new());
        let conns = Arc::new(Connections::default());
        let (stop_tx, stop) = watch::channel(false);
        std::mem::forget(stop_tx);
        let srv = XdsServer {
            current: rx,
            metrics: metrics.clone(),
            conns: conns.clone(),
            stop: stop.clone(),
            security: None,
            require_auth: false,
            admission: Arc::new(pilotfish::xds::server::Admission::unlimited()),
            vhds: true,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        if tonic {
            tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(
                        pilotfish::xds::wire::XdsService::<pilotfish::xds::wire::Cds>::new(
                            srv.clone(),
                        ),
                    )
                    .add_service(
                        pilotfish::xds::wire::XdsService::<pilotfish::xds::wire::Rds>::new(
                            srv.clone(),
                        ),
                    )
                    .add_service(
                        pilotfish::xds::wire::XdsService::<pilotfish::xds::wire::Ads>::new(srv),
                    )
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                    .await
                    .unwrap();
            });
        } else {
            tokio::spawn(pilotfish::xds::http2::serve_aged(
                listener,
                srv,
                stop,
                Duration::from_secs(1),
                max_age,
            ));
        }
        let h = Harness {
            tx,
            addr,
            metrics,
            conns,
        };
        if let Some(y) = initial {
            h.publish(y);
        }
        h
    }

    fn publish(&self, yaml: &str) {
        let w = pilotfish::app::world_from_files(&[("test.yaml", yaml)], MeshConfig::default());
        assert!(w.errors.is_empty(), "{:?}", w.errors);
        let gen = Arc::new(Generation::new(Arc::new(w)));
        self.tx.send_replace(Some(Published {
            gen,
            changed_at: Instant::now(),
        }));
    }

    async fn client(&self) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
        AggregatedDiscoveryServiceClient::connect(self.addr.clone())
            .await
            .unwrap()
    }

    async fn sotw(&self) -> (mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>) {
        let (tx, rx) = mpsc::channel(16);
        let resp = self
            .client()
            .await
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap();
        (tx, resp.into_inner())
    }

    async fn delta(
        &self,
    ) -> (
        mpsc::Sender<DeltaDiscoveryRequest>,
        Streaming<DeltaDiscoveryResponse>,
    ) {
        let (tx, rx) = mpsc::channel(16);
        let resp = self
            .client()
            .await
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap();
        (tx, resp.into_inner())
    }
}

fn node() -> Option<Node> {
    Some(Node {
        id: "sidecar~10.1.0.99~client.default~default.svc.cluster.local".into(),
        ..Default::default()
    })
}

fn req(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: node(),
        type_url: type_url.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

async fn next<T>(s: &mut Streaming<T>) -> T {
    tokio::time::timeout(WAIT, s.message())
        .await
        .expect("timed out waiting for a response")
        .unwrap()
        .expect("stream ended")
}

async fn nothing<T: std::fmt::Debug>(s: &mut Streaming<T>) {
    if let Ok(m) = tokio::time::timeout(QUIET, s.message()).await {
        panic!("expected no response, got {m:?}");
    }
}

fn names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|a| name_of(&r.type_url, &a.value))
        .collect()
}

fn name_of(type_url: &str, bytes: &[u8]) -> String {
    use prost::Message;
    match type_url {
        CLUSTER => {
            envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(bytes)
                .unwrap()
                .name
        }
        LISTENER => {
            envoy_types::pb::envoy::config::listener::v3::Listener::decode(bytes)
                .unwrap()
                .name
        }
        ROUTE => {
            envoy_types::pb::envoy::config::route::v3::RouteConfiguration::decode(bytes)
                .unwrap()
                .name
        }
        ENDPOINT => {
            envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(bytes)
                .unwrap()
                .cluster_name
        }
        _ => panic!("unknown type"),
    }
}

#[tokio::test]
async fn unavailable_before_first_load() {
    let h = Harness::start(None).await;
    let (tx, rx) = mpsc::channel(1);
    tx.send(req(CLUSTER, &[], "", "")).await.unwrap();
    let err = h
        .client()
        .await
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .err()
        .expect("must fail");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let (tx, rx) = mpsc::channel(1);
    tx.send(DeltaDiscoveryRequest {
        node: node(),
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = h
        .client()
        .await
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .err()
        .expect("must fail");
    assert_eq!(err.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn sotw_wildcard_ack_and_no_resend() {
    sotw_wildcard_ack_and_no_resend_on(false).await;
}

/// The same conversation on tonic's transport (the TLS port's).
#[tokio::test]
async fn sotw_wildcard_ack_and_no_resend_on_tonic() {
    sotw_wildcard_ack_and_no_resend_on(true).await;
}

async fn sotw_wildcard_ack_and_no_resend_on(tonic: bool) {
    let h = Harness::start_with(Some(&svc_yaml(&["a", "b"])), tonic).await;
    let (tx, mut rx) = h.sotw().await;
    tx.send(req(CLUSTER, &[], "", "")).await.unwrap();
    let r = next(&mut rx).await;
    let n = names(&r);
    assert!(
        n.contains(&"outbound|8080||a.default.svc.cluster.local".to_string()),
        "{n:?}"
    );
    assert!(n.contains(&"outbound|8080||b.default.svc.cluster.local".to_string()));
    let unique: BTreeSet<_> = n.iter().collect();
    assert_eq!(unique.len(), n.len(), "duplicate names in one response");
    assert!(!r.nonce.is_empty() && !r.version_info.is_empty());
    // ACK: nothing more is sent.
    tx.send(req(CLUSTER, &[], &r.version_info, &r.nonce))
        .await
        .unwrap();
    nothing(&mut rx).await;
    // Legacy "*" wildcard gets the same set.
    let (tx2, mut rx2) = h.sotw().await;
    tx2.send(req(LISTENER, &["*"], "", "")).await.unwrap();
    let l = next(&mut rx2).await;
    assert!(names(&l).contains(&"virtualOutbound".to_string()));
    assert!(names(&l).contains(&"0.0.0.0_8080".to_string()));
    // Unchanged republish: no resend.
    h.publish(&svc_yaml(&["a", "b"]));
    nothing(&mut rx).await;
    // A real change: a new response with a new nonce and version; the deleted cluster is gone.
    h.publish(&svc_yaml(&["a"]));
    let r2 = next(&mut rx).await;
    assert_ne!(r2.nonce, r.nonce);
    assert_ne!(r2.version_info, r.version_info);
    assert!(
        !names(&r2).iter().any(|n| n.contains("b.default")),
        "b must be gone: {:?}",
        names(&r2)
    );
}

#[tokio::test]
async fn nack_is_recorded_and_not_resent() {
    let h = Harness::start(Some(&svc_yaml(&["a"]))).await;
    let (tx, mut rx) = h.sotw().await;
    tx.send(req(CLUSTER, &[], "", "")).await.unwrap();
    let r = next(&mut rx).await;
    let mut nack = req(CLUSTER, &[], "", &r.nonce);
    nack.error_detail = Some(rpc::Status {
        code: 3,
        message: "bad cluster".into(),
        details: vec![],
    });
    tx.send(nack).await.unwrap();
    nothing(&mut rx).await;
    assert_eq!(h.metrics.total_rejects.get(), 1);
    let st = h.conns.snapshot();
    let cds = &st[0].types["cds"];
    assert_eq!(cds.nack_error, "bad cluster");
    assert_eq!(cds.nacked_version, r.version_info);
    assert!(h.metrics.encode().contains("pilot_xds_cds_reject_total 1"));
    // Only a config change brings a new version.
    h.publish(&svc_yaml(&["a", "c"]));
    let r2 = next(&mut rx).await;
    assert_ne!(r2.version_info, r.version_info);
}

#[tokio::test]
async fn stale_nonce_is_ignored() {
    let h = Harness::start(Some(&svc_yaml(&["a", "b"]))).await;
    let (tx, mut rx) = h.sotw().await;
    tx.send(req(
        ENDPOINT,
        &["outbound|8080||a.default.svc.cluster.local"],
        "",
        "",
    ))
    .await
    .unwrap();
    let r = next(&mut rx).await;
    assert_eq!(
        names(&r),
        vec!["outbound|8080||a.default.svc.cluster.local"]
    );
    // A request carrying an old nonce changes nothing, even with new names.
    tx.send(req(
        ENDPOINT,
        &["outbound|8080||b.default.svc.cluster.local"],
        "",
        "bogus",
    ))
    .await
    .unwrap();
    nothing(&mut rx).await;
    assert!(h.metrics.stale_nonces.get() >= 1);
    // With the current nonce the new subscription is honoured.
    tx.send(req(
        ENDPOINT,
        &["outbound|8080||b.default.svc.cluster.local"],
        &r.version_info,
        &r.nonce,
    ))
    .await
    .unwrap();
    let r2 = next(&mut rx).await;
    assert_eq!(
        names(&r2),
        vec!["outbound|8080||b.default.svc.cluster.local"]
    );
}

#[tokio::test]
async fn eds_names_that_appear_later_are_pushed() {
    let h = Harness::start(Some(&svc_yaml(&["a"]))).await;
    let (tx, mut rx) = h.sotw().await;
    let want = [
        "outbound|8080||a.default.svc.cluster.local",
        "outbound|8080||late.default.svc.cluster.local",
    ];
    tx.send(req(ENDPOINT, &want, "", "")).await.unwrap();
    let r = next(&mut rx).await;
    assert_eq!(names(&r), vec![want[0]]);
    tx.send(req(ENDPOINT, &want, &r.version_info, &r.nonce))
        .await
        .unwrap();
    nothing(&mut rx).await;
    h.publish(&svc_yaml(&["a", "late"]));
    let r2 = next(&mut rx).await;
    // Incremental EDS: the unchanged assignment of `a` is not resent (Envoy keeps it).
    assert_eq!(names(&r2), vec![want[1]]);
    assert_ne!(r2.version_info, r.version_info);
}

#[tokio::test]
async fn push_order_is_cds_eds_lds_rds() {
    let h = Harness::start(Some(&svc_yaml(&["a"]))).await;
    let (tx, mut rx) = h.sotw().await;
    // Subscribe in the "wrong" order; acknowledge each response.
    let subs: [(&str, Vec<&str>); 4] = [
        (ROUTE, vec!["8080"]),
        (LISTENER, vec![]),
        (
            ENDPOINT,
            vec![
                "outbound|8080||a.default.svc.cluster.local",
                "outbound|8080||b.default.svc.cluster.local",
            ],
        ),
        (CLUSTER, vec![]),
    ];
    for (t, n) in &subs {
        tx.send(req(t, n, "", "")).await.unwrap();
        let r = next(&mut rx).await;
        assert_eq!(&r.type_url, t);
        tx.send(req(t, n, &r.version_info, &r.nonce)).await.unwrap();
    }
    nothing(&mut rx).await;
    // One change touching every type: responses come clusters, endpoints, listeners, routes.
    h.publish(&(svc_yaml(&["a", "b"]) + "apiVersion: v1\nkind: Service\nmetadata: {name: t}\nspec:\n  ports: [{name: tcp, port: 9000}]\n"));
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next(&mut rx).await.type_url);
    }
    assert_eq!(got, vec![CLUSTER, ENDPOINT, LISTENER, ROUTE]);
}

#[tokio::test]
async fn reconnect_with_current_version_gets_no_resend() {
    let h = Harness::start(Some(&svc_yaml(&["a"]))).await;
    let (tx, mut rx) = h.sotw().await;
    tx.send(req(CLUSTER, &[], "", "")).await.unwrap();
    let r = next(&mut rx).await;
    drop(tx);
    drop(rx);
    // Content-derived versions: a proxy that reconnects holding them is not re-sent anything.
    let (tx, mut rx) = h.sotw().await;
    tx.send(req(CLUSTER, &[], &r.version_info, ""))
        .await
        .unwrap();
    nothing(&mut rx).await;
    // A different version on reconnect gets the full set.
    let (tx, mut rx) = h.sotw().await;
    tx.send(req(CLUSTER, &[], "old", "")).await.unwrap();
    assert_eq!(next(&mut rx).await.version_info, r.version_info);
    drop(tx);
}

fn dreq(type_url: &str, sub: &[&str], unsub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: node(),
        type_url: type_url.into(),
        resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
        resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn dnames(r: &DeltaDiscoveryResponse) -> Vec<String> {
    r.resources.iter().map(|x| x.name.clone()).collect()
}

#[tokio::test]
async fn delta_wildcard_changes_and_removals() {
    let h = Harness::start(Some(&svc_yaml(&["a", "b"]))).await;
    let (tx, mut rx) = h.delta().await;
    tx.send(dreq(CLUSTER, &[], &[], "")).await.unwrap();
    let r = next(&mut rx).await;
    let all = dnames(&r);
    assert!(all.contains(&"outbound|8080||a.default.svc.cluster.local".to_string()));
    assert!(r.removed_resources.is_empty());
    tx.send(dreq(CLUSTER, &[], &[], &r.nonce)).await.unwrap();
    nothing(&mut rx).await;
    // Remove b, add c: only c is sent, b is in removed_resources.
    h.publish(&svc_yaml(&["a", "c"]));
    let r2 = next(&mut rx).await;
    assert_eq!(
        dnames(&r2),
        vec!["outbound|8080||c.default.svc.cluster.local"]
    );
    assert_eq!(
        r2.removed_resources,
        vec!["outbound|8080||b.default.svc.cluster.local"]
    );
}

#[tokio::test]
async fn delta_subscribe_unsubscribe_and_initial_versions() {
    let h = Harness::start(Some(&svc_yaml(&["a", "b"]))).await;
    let a = "outbound|8080||a.default.svc.cluster.local";
    let b = "outbound|8080||b.default.svc.cluster.local";
    let missing = "outbound|8080||nope.default.svc.cluster.local";
    let (tx, mut rx) = h.delta().await;
    tx.send(dreq(ENDPOINT, &[a, missing], &[], ""))
        .await
        .unwrap();
    let r = next(&mut rx).await;
    assert_eq!(dnames(&r), vec![a]);
    assert_eq!(
        r.removed_resources,
        vec![missing],
        "a name that does not exist is reported removed"
    );
    let a_version = r.resources[0].version.clone();
    // Subscribing to a name the client already has is still answered.
    tx.send(dreq(ENDPOINT, &[a], &[], &r.nonce)).await.unwrap();
    let r2 = next(&mut rx).await;
    assert_eq!(dnames(&r2), vec![a]);
    // Unsubscribing a name never subscribed is ignored; unsubscribing a stops its updates.
    tx.send(dreq(ENDPOINT, &[], &["never"], &r2.nonce))
        .await
        .unwrap();
    nothing(&mut rx).await;
    tx.send(dreq(ENDPOINT, &[b], &[a], &r2.nonce))
        .await
        .unwrap();
    let r3 = next(&mut rx).await;
    assert_eq!(dnames(&r3), vec![b]);
    tx.send(dreq(ENDPOINT, &[], &[], &r3.nonce)).await.unwrap();
    h.publish(&svc_yaml(&["b"])); // a disappears, but the client no longer watches it
    nothing(&mut rx).await;
    drop(tx);
    // Reconnect with initial_resource_versions: unchanged resources are not resent.
    h.publish(&svc_yaml(&["a", "b"]));
    let (tx, mut rx) = h.delta().await;
    let mut first = dreq(ENDPOINT, &[a, b], &[], "");
    first
        .initial_resource_versions
        .insert(a.to_string(), a_version.clone());
    first
        .initial_resource_versions
        .insert(b.to_string(), "stale".into());
    tx.send(first).await.unwrap();
    let r4 = next(&mut rx).await;
    assert_eq!(
        dnames(&r4),
        vec![b],
        "only the resource whose version differs is sent"
    );
    // A claimed resource that no longer exists is reported removed on reconnect (wildcard).
    let gone = "outbound|8080||gone.default.svc.cluster.local";
    let (tx, mut rx) = h.delta().await;
    let mut first = dreq(CLUSTER, &[], &[], "");
    first
        .initial_resource_versions
        .insert(gone.to_string(), "v".into());
    tx.send(first).await.unwrap();
    let r5 = next(&mut rx).await;
    assert_eq!(r5.removed_resources, vec![gone]);
    assert!(dnames(&r5).contains(&a.to_string()), "{:?}", dnames(&r5));
}

fn vs_yaml(host: &str, timeout: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {host}}}\nspec:\n  hosts: [{host}]\n  http:\n  - timeout: {timeout}\n    route:\n    - destination: {{host: {host}}}\n---\n"
    )
}

fn decode_rc(bytes: &[u8]) -> envoy_types::pb::envoy::config::route::v3::RouteConfiguration {
    prost::Message::decode(bytes).unwrap()
}

/// Delta ADS gets route configurations in their VHDS form: the configuration names VHDS, and
/// each virtual host is a resource `<config>/<vhost>` sent only once the proxy has ACKed the
/// configuration (Envoy drops virtual hosts of a configuration it has not applied). A
/// VirtualService edit then sends one virtual host and no route configuration. SotW keeps
/// them inline.
#[tokio::test]
async fn delta_ads_routes_travel_as_virtual_hosts() {
    let a = "8080/a.default.svc.cluster.local:8080";
    let b = "8080/b.default.svc.cluster.local:8080";
    let fallback = "8080/allow_any";
    let h = Harness::start(Some(&(svc_yaml(&["a", "b"]) + &vs_yaml("a", "5s")))).await;
    let (tx, mut rx) = h.delta().await;
    tx.send(dreq(ROUTE, &["8080"], &[], "")).await.unwrap();
    let r = next(&mut rx).await;
    assert_eq!(dnames(&r), vec!["8080"]);
    let rc = decode_rc(&r.resources[0].resource.as_ref().unwrap().value);
    assert!(rc.vhds.is_some(), "the configuration names VHDS");
    assert!(rc.virtual_hosts.is_empty());
    let rc_version = r.resources[0].version.clone();
    // Envoy asks for virtual hosts (a wildcard) before it ACKs the configuration: nothing
    // is sent until the ACK.
    tx.send(dreq(VHOST, &[], &[], "")).await.unwrap();
    nothing(&mut rx).await;
    tx.send(dreq(ROUTE, &[], &[], &r.nonce)).await.unwrap();
    let v = next(&mut rx).await;
    assert_eq!(v.type_url, VHOST);
    assert_eq!(dnames(&v), vec![a, fallback, b]);
    let mut versions = std::collections::HashMap::new();
    for res in &v.resources {
        let vh: envoy_types::pb::envoy::config::route::v3::VirtualHost =
            prost::Message::decode(res.resource.as_ref().unwrap().value.as_slice()).unwrap();
        assert_eq!(vh.name, res.name, "Envoy removes by VirtualHost.name");
        versions.insert(res.name.clone(), res.version.clone());
    }
    tx.send(dreq(VHOST, &[], &[], &v.nonce)).await.unwrap();
    nothing(&mut rx).await;
    // An edit of a's VirtualService: only a's virtual host goes out.
    h.publish(&(svc_yaml(&["a", "b"]) + &vs_yaml("a", "7s")));
    let v2 = next(&mut rx).await;
    assert_eq!(v2.type_url, VHOST, "no route configuration is resent");
    assert_eq!(dnames(&v2), vec![a]);
    tx.send(dreq(VHOST, &[], &[], &v2.nonce)).await.unwrap();
    nothing(&mut rx).await;
    let a_version = v2.resources[0].version.clone();
    // b goes: its virtual host is removed.
    h.publish(&(svc_yaml(&["a"]) + &vs_yaml("a", "7s")));
    let v3 = next(&mut rx).await;
    assert_eq!(v3.type_url, VHOST);
    assert!(v3.resources.is_empty());
    assert_eq!(v3.removed_resources, vec![b]);
    drop(tx);

    // Reconnect, virtual hosts asked first (Envoy's order varies): claims are checked once
    // the configurations are known; only the stale claim is answered, b (gone) is removed.
    let (tx, mut rx) = h.delta().await;
    let mut vreq = dreq(VHOST, &[], &[], "");
    vreq.initial_resource_versions = [
        (a.to_string(), "stale".to_string()),
        (b.to_string(), versions[b].clone()),
        (fallback.to_string(), versions[fallback].clone()),
    ]
    .into();
    tx.send(vreq).await.unwrap();
    nothing(&mut rx).await;
    let mut rreq = dreq(ROUTE, &["8080"], &[], "");
    rreq.initial_resource_versions = [("8080".to_string(), rc_version.clone())].into();
    tx.send(rreq).await.unwrap();
    let v4 = next(&mut rx).await;
    assert_eq!(
        v4.type_url, VHOST,
        "the configuration is current: not resent"
    );
    assert_eq!(dnames(&v4), vec![a]);
    assert_eq!(v4.resources[0].version, a_version);
    assert_eq!(v4.removed_resources, vec![b]);

    // State of the world: inline virtual hosts, no VHDS.
    let (tx, mut rx) = h.sotw().await;
    tx.send(req(ROUTE, &["8080"], "", "")).await.unwrap();
    let r = next(&mut rx).await;
    let rc = decode_rc(&r.resources[0].value);
    assert!(rc.vhds.is_none());
    assert_eq!(rc.virtual_hosts.len(), 2);
}

#[tokio::test]
async fn stalled_client_does_not_delay_others() {
    let h = Harness::start(Some(&svc_yaml(&["a"]))).await;
    // A client that subscribes and then never reads.
    let (stalled_tx, _stalled_rx) = h.sotw().await;
    stalled_tx.send(req(CLUSTER, &[], "", "")).await.unwrap();
    let (tx, mut rx) = h.sotw().await;
    tx.send(req(CLUSTER, &[], "", "")).await.unwrap();
    let mut r = next(&mut rx).await;
    // Many large pushes: the stalled stream's queue fills up; the healthy one keeps up.
    let many: Vec<String> = (0..300).map(|i| format!("svc{i}")).collect();
    for round in 0..20 {
        let refs: Vec<&str> = many
            .iter()
            .take(200 + round * 5)
            .map(|s| s.as_str())
            .collect();
        h.publish(&svc_yaml(&refs));
        tx.send(req(CLUSTER, &[], &r.version_info, &r.nonce))
            .await
            .unwrap();
        r = next(&mut rx).await;
        let outbound = names(&r)
            .iter()
            .filter(|n| n.starts_with("outbound|"))
            .count();
        assert_eq!(outbound, refs.len(), "round {round}");
    }
    assert_eq!(h.conns.len(), 2);
}

#[tokio::test]
async fn non_aggregated_cds_stream_and_rds_fetch() {
    use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::route::v3::route_discovery_service_client::RouteDiscoveryServiceClient;
    let h = Harness::start(Some(&svc_yaml(&["a"]))).await;
    let (tx, rx) = mpsc::channel(4);
    // The type is implied by the service: type_url may be empty.
    tx.send(req("", &[], "", "")).await.unwrap();
    let mut c = ClusterDiscoveryServiceClient::connect(h.addr.clone())
        .await
        .unwrap();
    let mut s = c
        .stream_clusters(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let r = next(&mut s).await;
    assert_eq!(r.type_url, CLUSTER);
    assert!(names(&r).contains(&"outbound|8080||a.default.svc.cluster.local".to_string()));
    let mut rc = RouteDiscoveryServiceClient::connect(h.addr.clone())
        .await
        .unwrap();
    let f = rc
        .fetch_routes(req(ROUTE, &["8080"], "", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&f), vec!["8080"]);
}

fn subset_yaml(subsets: &[&str], route_to: &str) -> String {
    let subs: Vec<String> = subsets
        .iter()
        .map(|s| format!("{{name: {s}, labels: {{version: {s}}}}}"))
        .collect();
    svc_yaml(&["a"])
        + &format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: a}}\nspec:\n  host: a\n  subsets: [{}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: a}}\nspec:\n  hosts: [a]\n  http:\n  - route:\n    - destination: {{host: a, subset: {route_to}}}\n",
            subs.join(", ")
        )
}

/// Removing a subset that routes still name: the cluster stays until the proxy has ACKed
/// routes that no longer name it (make before break), then it goes.
#[tokio::test]
async fn removed_subset_cluster_outlives_the_routes_naming_it() {
    let v2 = "outbound|8080|v2|a.default.svc.cluster.local";
    let h = Harness::start(Some(&subset_yaml(&["v1", "v2"], "v2"))).await;
    for delta in [false, true] {
        h.publish(&subset_yaml(&["v1", "v2"], "v2"));
        if !delta {
            let (tx, mut rx) = h.sotw().await;
            let mut last = std::collections::HashMap::new();
            for (t, n) in [(CLUSTER, vec![]), (ROUTE, vec!["8080"])] {
                tx.send(req(t, &n, "", "")).await.unwrap();
                let r = next(&mut rx).await;
                tx.send(req(t, &n, &r.version_info, &r.nonce))
                    .await
                    .unwrap();
                last.insert(t, r);
            }
            assert!(names(&last[CLUSTER]).contains(&v2.to_string()));
            h.publish(&subset_yaml(&["v1"], "v1"));
            // The clusters do not change yet (v2 is kept while the proxy's routes name it):
            // the first response is the new routes.
            let r = next(&mut rx).await;
            assert_eq!(
                r.type_url, ROUTE,
                "no cluster change may come before the routes move"
            );
            tx.send(req(ROUTE, &["8080"], &r.version_info, &r.nonce))
                .await
                .unwrap();
            // Once the new routes are ACKed, v2 goes.
            let c2 = next(&mut rx).await;
            assert_eq!(c2.type_url, CLUSTER);
            assert!(
                !names(&c2).contains(&v2.to_string()),
                "v2 must go once no route names it"
            );
        } else {
            // Delta ADS: routes travel as virtual hosts (VHDS); they hold the clusters.
            let (tx, mut rx) = h.delta().await;
            for t in [CLUSTER, ROUTE] {
                let sub: Vec<&str> = if t == ROUTE { vec!["8080"] } else { vec![] };
                tx.send(dreq(t, &sub, &[], "")).await.unwrap();
                let r = next(&mut rx).await;
                tx.send(dreq(t, &[], &[], &r.nonce)).await.unwrap();
            }
            tx.send(dreq(VHOST, &[], &[], "")).await.unwrap();
            let r = next(&mut rx).await;
            assert_eq!(r.type_url, VHOST);
            tx.send(dreq(VHOST, &[], &[], &r.nonce)).await.unwrap();
            h.publish(&subset_yaml(&["v1"], "v1"));
            let r = next(&mut rx).await;
            assert_eq!(
                r.type_url, VHOST,
                "no cluster change may come before the routes move"
            );
            assert_eq!(dnames(&r), vec!["8080/a.default.svc.cluster.local:8080"]);
            tx.send(dreq(VHOST, &[], &[], &r.nonce)).await.unwrap();
            let c = next(&mut rx).await;
            assert_eq!(c.type_url, CLUSTER);
            assert_eq!(c.removed_resources, vec![v2.to_string()]);
        }
    }
}

#[test]
fn admission_rate_limits_new_streams() {
    let a = pilotfish::xds::server::Admission::new(2, 3);
    let admitted = (0..10).filter(|_| a.try_admit(None)).count();
    assert_eq!(
        admitted, 3,
        "the burst is admitted at once, the rest refused"
    );
    assert_eq!(a.rejected.get(), 7);
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert!(a.try_admit(None), "tokens refill at the rate");
    let unlimited = pilotfish::xds::server::Admission::unlimited();
    assert!((0..10_000).all(|_| unlimited.try_admit(None)));
}

#[tokio::test]
async fn excess_streams_get_resource_exhausted() {
    let h = Harness::start(Some(&svc_yaml(&["a"]))).await;
    // A second server on the same state with a tiny admission budget.
    let (stop_tx, stop) = watch::channel(false);
    std::mem::forget(stop_tx);
    let srv = XdsServer {
        current: h.tx.subscribe(),
        metrics: h.metrics.clone(),
        conns: h.conns.clone(),
        stop,
        security: None,
        require_auth: false,
        admission: Arc::new(pilotfish::xds::server::Admission::new(1, 1)),
        vhds: true,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(pilotfish::xds::wire::XdsService::<pilotfish::xds::wire::Ads>::new(srv))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let mut c = AggregatedDiscoveryServiceClient::connect(addr)
        .await
        .unwrap();
    let (tx1, rx1) = mpsc::channel(4);
    tx1.send(req(CLUSTER, &[], "", "")).await.unwrap();
    let mut first = c
        .stream_aggregated_resources(ReceiverStream::new(rx1))
        .await
        .unwrap()
        .into_inner();
    assert!(!next(&mut first).await.resources.is_empty());
    let (tx2, rx2) = mpsc::channel(4);
    tx2.send(req(CLUSTER, &[], "", "")).await.unwrap();
    let e = c
        .stream_aggregated_resources(ReceiverStream::new(rx2))
        .await
        .err()
        .expect("refused");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    // After a second the budget refills and the retry gets in.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (tx3, rx3) = mpsc::channel(4);
    tx3.send(req(CLUSTER, &[], "", "")).await.unwrap();
    let mut third = c
        .stream_aggregated_resources(ReceiverStream::new(rx3))
        .await
        .unwrap()
        .into_inner();
    assert!(!next(&mut third).await.resources.is_empty());
    drop((tx1, tx2, tx3));
}

#[test]
fn route_classes_ignore_labels_no_rule_looks_at() {
    let yaml = svc_yaml(&["a"])
        + "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  hosts: [a]\n  http:\n  - match: [{sourceLabels: {tier: canary}}]\n    route: [{destination: {host: a}}]\n    timeout: 1s\n  - route: [{destination: {host: a}}]\n";
    let w = pilotfish::app::world_from_files(&[("t.yaml", &yaml)], MeshConfig::default());
    assert!(w.errors.is_empty(), "{:?}", w.errors);
    let gen = Generation::new(Arc::new(w));
    let proxy = |name: &str, labels: &[(&str, &str)]| pilotfish::model::Proxy {
        id: format!("sidecar~10.9.0.1~{name}.default~default.svc.cluster.local"),
        namespace: "default".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let p1 = gen.for_proxy(&proxy(
        "p1",
        &[("app", "web"), ("pod-template-hash", "abc")],
    ));
    let p2 = gen.for_proxy(&proxy(
        "p2",
        &[("app", "web"), ("pod-template-hash", "xyz")],
    ));
    let canary = gen.for_proxy(&proxy("p3", &[("app", "web"), ("tier", "canary")]));
    let routes = |r: &pilotfish::xds::cache::ProxyResources| r.by_type[ROUTE][0].clone();
    assert!(
        Arc::ptr_eq(&routes(&p1), &routes(&p2)),
        "pods differing only in unused labels share one route class"
    );
    assert!(
        !Arc::ptr_eq(&routes(&p1), &routes(&canary)),
        "a label a sourceLabels match uses makes its own class"
    );
    let r8080 = |r: &pilotfish::xds::cache::ProxyResources| r.values(ROUTE)[0].version.clone();
    assert_ne!(
        r8080(&p1),
        r8080(&canary),
        "and its routes differ (the canary match applies)"
    );
}

/// The World of one file of YAML, which must be free of config errors.
fn valid_world(yaml: &str) -> Arc<pilotfish::model::World> {
    let w = pilotfish::app::world_from_files(&[("t.yaml", yaml)], MeshConfig::default());
    assert!(w.errors.is_empty(), "{:?}", w.errors);
    Arc::new(w)
}

/// A sidecar in namespace default with no labels and no instances.
fn default_ns_proxy() -> pilotfish::model::Proxy {
    pilotfish::model::Proxy {
        id: "sidecar~10.9.0.1~p.default~default.svc.cluster.local".into(),
        namespace: "default".into(),
        ..Default::default()
    }
}

#[test]
fn endpoint_churn_keeps_route_classes() {
    let world = |ip: &str, timeout: &str| {
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: a}}\nspec:\n  selector: {{app: a}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: a-1}}\nspec:\n  address: {ip}\n  labels: {{app: a}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: a}}\nspec:\n  hosts: [a]\n  http:\n  - route: [{{destination: {{host: a}}}}]\n    timeout: {timeout}\n"
        );
        valid_world(&yaml)
    };
    let proxy = default_ns_proxy();
    let g1 = Generation::new(world("10.1.0.1", "1s"));
    let r1 = g1.for_proxy(&proxy);
    let g2 = Generation::next(world("10.1.0.2", "1s"), Some(&g1));
    let r2 = g2.for_proxy(&proxy);
    let g3 = Generation::next(world("10.1.0.2", "2s"), Some(&g2));
    let r3 = g3.for_proxy(&proxy);
    assert!(
        Arc::ptr_eq(&r1.by_type[ROUTE][0], &r2.by_type[ROUTE][0]),
        "an endpoint change reuses the route class (nothing rebuilt, nothing resent)"
    );
    assert_ne!(
        r1.values(ENDPOINT)[0].version,
        r2.values(ENDPOINT)[0].version,
        "the endpoints did change"
    );
    assert!(
        !Arc::ptr_eq(&r2.by_type[ROUTE][0], &r3.by_type[ROUTE][0]),
        "a VirtualService change rebuilds routes"
    );
    assert_ne!(r2.values(ROUTE)[0].version, r3.values(ROUTE)[0].version);
}

#[test]
fn endpoint_churn_reuses_what_did_not_change() {
    // Services a and b; a's endpoint moves. Clusters and listeners are byte-identical, so
    // the new generation hands out the previous maps themselves (views and diffs see no
    // change by pointer); b's assignment is not translated again (same pointer); a's is new.
    let world = |ip_a: &str| {
        let mut yaml = String::new();
        for (s, ip) in [("a", ip_a), ("b", "10.2.0.1")] {
            yaml.push_str(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {s}}}\nspec:\n  selector: {{app: {s}}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
                 apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {s}-1}}\nspec:\n  address: {ip}\n  labels: {{app: {s}}}\n---\n"
            ));
        }
        valid_world(&yaml)
    };
    let proxy = default_ns_proxy();
    let g1 = Generation::new(world("10.1.0.1"));
    let r1 = g1.for_proxy(&proxy);
    let g2 = Generation::next(world("10.1.0.2"), Some(&g1));
    let r2 = g2.for_proxy(&proxy);
    for t in [CLUSTER, LISTENER, ROUTE] {
        assert!(
            Arc::ptr_eq(&r1.by_type[t][0], &r2.by_type[t][0]),
            "{t}: unchanged, so the same map"
        );
    }
    let cla = |r: &pilotfish::xds::cache::ProxyResources, host: &str| {
        r.values(ENDPOINT)
            .into_iter()
            .find(|e| e.name == format!("outbound|8080||{host}.default.svc.cluster.local"))
            .unwrap()
    };
    assert!(Arc::ptr_eq(&cla(&r1, "b"), &cla(&r2, "b")), "b untouched");
    assert_ne!(cla(&r1, "a").version, cla(&r2, "a").version, "a moved");
    // Nothing changed at all: the whole endpoints map is the previous one.
    let g3 = Generation::next(world("10.1.0.2"), Some(&g2));
    let r3 = g3.for_proxy(&proxy);
    assert!(Arc::ptr_eq(
        &r2.by_type[ENDPOINT][0],
        &r3.by_type[ENDPOINT][0]
    ));
}

/// A VirtualService edit rebuilds only the virtual hosts of the hosts it names: every other
/// virtual host keeps its encoding (same pointer), and both forms of the new class are
/// exactly what translating the whole new World gives (inline: the configurations as
/// translated; VHDS: the same virtual hosts, one resource each).
#[test]
fn virtual_service_edit_rebuilds_only_its_virtual_hosts() {
    use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
    use prost::Message;
    let world = |timeout: &str| {
        valid_world(&(svc_yaml(&["a", "b", "c"]) + &vs_yaml("a", timeout) + &vs_yaml("b", "9s")))
    };
    let proxy = default_ns_proxy();
    let g1 = Generation::new(world("5s"));
    let v1 = g1.for_stream(&proxy, true);
    let (w2, g2);
    {
        w2 = world("7s");
        g2 = Generation::next(w2.clone(), Some(&g1));
    }
    let v2 = g2.for_stream(&proxy, true);
    let hosts = |r: &pilotfish::xds::cache::ProxyResources| r.values(VHOST);
    let (h1, h2) = (hosts(&v1), hosts(&v2));
    assert_eq!(h1.len(), 4, "a, b, c and the fallback");
    for (o, n) in h1.iter().zip(&h2) {
        assert_eq!(o.name, n.name);
        if o.name == "8080/a.default.svc.cluster.local:8080" {
            assert_ne!(o.version, n.version, "a's VirtualService changed");
        } else {
            assert!(Arc::ptr_eq(o, n), "{}: reused as it was", o.name);
        }
    }
    // The forms match a translation of the whole new World.
    let expected = pilotfish::translate::route::outbound(&w2, &proxy);
    let inline: Vec<RouteConfiguration> = g2
        .for_proxy(&proxy)
        .values(ROUTE)
        .iter()
        .map(|r| RouteConfiguration::decode(r.value.as_ref()).unwrap())
        .collect();
    assert_eq!(
        inline, expected,
        "inline form, spliced from the virtual hosts"
    );
    let mut from_vhds: Vec<VirtualHost> = h2
        .iter()
        .map(|r| VirtualHost::decode(r.value.as_ref()).unwrap())
        .collect();
    for v in &mut from_vhds {
        v.name = v.name.strip_prefix("8080/").unwrap().to_string();
    }
    let mut want = expected[0].virtual_hosts.clone();
    want.sort_by(|a, b| a.name.cmp(&b.name));
    from_vhds.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(from_vhds, want, "VHDS form: the same virtual hosts");
    let configs = v2.values(ROUTE);
    let rc = RouteConfiguration::decode(configs[0].value.as_ref()).unwrap();
    assert!(rc.vhds.is_some() && rc.virtual_hosts.is_empty());
}

#[tokio::test]
async fn a_proxy_that_has_not_acked_gets_the_newest_state_once_it_does() {
    let h = Harness::start(Some(&svc_yaml(&["a"]))).await;
    let (tx, mut rx) = h.sotw().await;
    tx.send(req(CLUSTER, &[], "", "")).await.unwrap();
    let r = next(&mut rx).await;
    // Two changes while the first response is not ACKed: no backlog of pushes.
    h.publish(&svc_yaml(&["a", "b"]));
    nothing(&mut rx).await;
    h.publish(&svc_yaml(&["a", "b", "c"]));
    nothing(&mut rx).await;
    tx.send(req(CLUSTER, &[], &r.version_info, &r.nonce))
        .await
        .unwrap();
    // The ACK releases one response with everything that changed meanwhile.
    let r2 = next(&mut rx).await;
    let got = names(&r2);
    for s in ["a", "b", "c"] {
        let c = format!("outbound|8080||{s}.default.svc.cluster.local");
        assert!(got.contains(&c), "{c} in {got:?}");
    }
    tx.send(req(CLUSTER, &[], &r2.version_info, &r2.nonce))
        .await
        .unwrap();
    nothing(&mut rx).await;
}

/// pilotfish's HTTP/2 transport honours a client's small flow-control windows (responses
/// far larger than the window arrive whole) and grants a request larger than the stream
/// window back as the stream consumes it.
#[tokio::test]
async fn http2_small_client_windows_and_a_request_larger_than_the_window() {
    let owned: Vec<String> = (0..2000).map(|i| format!("svc{i}")).collect();
    let svcs: Vec<&str> = owned.iter().map(|s| s.as_str()).collect();
    let h = Harness::start(Some(&svc_yaml(&svcs))).await;
    let ch = tonic::transport::Endpoint::from_shared(h.addr.clone())
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    let mut rx_stream = AggregatedDiscoveryServiceClient::new(ch)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(req(CLUSTER, &[], "", "")).await.unwrap();
    let r = next(&mut rx_stream).await;
    let bytes: usize = r.resources.iter().map(|a| a.value.len()).sum();
    assert!(
        bytes > 3 * 65_535,
        "response of {bytes} bytes should exceed the window"
    );
    let got = names(&r);
    for n in &svcs {
        let want = format!("outbound|8080||{n}.default.svc.cluster.local");
        assert!(got.contains(&want), "{want} missing");
    }
    tx.send(req(CLUSTER, &[], &r.version_info, &r.nonce))
        .await
        .unwrap();
    // An endpoint subscription of ~2.4 MB (the stream window is 1 MiB).
    let mut sub: Vec<String> = svcs
        .iter()
        .map(|n| format!("outbound|8080||{n}.default.svc.cluster.local"))
        .collect();
    sub.extend((0..40_000).map(|i| format!("outbound|9|unknown-{i:06}|nothing.example.com")));
    let sub_ref: Vec<&str> = sub.iter().map(|s| s.as_str()).collect();
    tx.send(req(ENDPOINT, &sub_ref, "", "")).await.unwrap();
    let e = next(&mut rx_stream).await;
    assert_eq!(e.type_url, ENDPOINT);
    assert_eq!(
        e.resources.len(),
        2000,
        "one load assignment per known service"
    );
    // The same again (an ACK repeats every name): still served.
    tx.send(req(ENDPOINT, &sub_ref, &e.version_info, &e.nonce))
        .await
        .unwrap();
    nothing(&mut rx_stream).await;
    h.publish(&svc_yaml(&svcs[..1999]));
    let c = next(&mut rx_stream).await;
    assert_eq!(c.type_url, CLUSTER);
    assert_eq!(h.conns.len(), 1);
    // A client that goes away (RST_STREAM) ends the server's stream.
    drop(tx);
    drop(rx_stream);
    let t = Instant::now();
    while !h.conns.is_empty() {
        assert!(
            t.elapsed() < WAIT,
            "server stream outlived the client's reset"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP/2 frame.

/// The next frame (type, flags, stream, payload); `None` once closed or silent.
async fn read_frame(s: &mut tokio::net::TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut h = [0u8; 9];
    tokio::time::timeout(WAIT, s.read_exact(&mut h))
        .await
        .ok()?
        .ok()?;
    let len = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
    let mut p = vec![0; len];
    s.read_exact(&mut p).await.ok()?;
    Some((h[3], h[4], u32::from_be_bytes([h[5], h[6], h[7], h[8]]), p))
}

/// A header block of literals without indexing (new names, no Huffman coding).

/// Raw HTTP/2 against pilotfish's transport: settings are acknowledged, pings answered,
/// an unknown method gets a trailers-only UNIMPLEMENTED, and a non-HTTP/2 client is
/// closed with GOAWAY.
#[tokio::test]
async fn http2_raw_frames() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::start(Some(&svc_yaml(&["a"]))).await;
    let addr = h.addr.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(frame(6, 0, 0, b"12345678"));
    // HEADERS (literals without indexing, new names) for a method that does not exist.
    let block = literal_block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (
            ":path",
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/Nope",
        ),
        (":authority", "x"),
        ("content-type", "application/grpc"),
    ]);
    out.extend(frame(1, 0x4 | 0x1, 1, &block));
    // Written a few bytes at a time, so the server sees the preface and frames cut at
    // many places.
    s.set_nodelay(true).unwrap();
    for piece in out.chunks(3) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (mut settings_ack, mut pong, mut status) = (false, false, None);
    while !(settings_ack && pong && status.is_some()) {
        let (ty, flags, id, p) = read_frame(&mut s).await.expect("server stopped answering");
        match ty {
            4 if flags & 1 != 0 => settings_ack = true,
            6 => {
                assert_eq!(flags & 1, 1, "a ping answer carries ACK");
                assert_eq!(p, b"12345678");
                pong = true;
            }
            1 => {
                assert_eq!(id, 1);
                assert_eq!(flags & 0x1, 0x1, "trailers-only response ends the stream");
                let fields = loona_hpack::Decoder::new().decode(&p).unwrap();
                status = fields
                    .into_iter()
                    .find(|(n, _)| n == b"grpc-status")
                    .map(|(_, v)| String::from_utf8(v).unwrap());
            }
            _ => {}
        }
    }
    assert_eq!(status.as_deref(), Some("12"), "UNIMPLEMENTED");
    // Not HTTP/2: GOAWAY, then the connection closes.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut saw_goaway = false;
    while let Some((ty, _, _, p)) = read_frame(&mut s).await {
        if ty == 7 {
            assert_eq!(
                u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
                1,
                "PROTOCOL_ERROR"
            );
            saw_goaway = true;
        }
    }
    assert!(saw_goaway);
}

/// Malformed frames and requests on pilotfish's transport (RFC 9113): connection errors
/// end the connection with GOAWAY and the right code, stream errors reset only the
/// stream, and frames a client sent before seeing our reset are ignored.
#[tokio::test]
async fn http2_protocol_errors() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::start(Some(&svc_yaml(&["a"]))).await;
    let addr = h.addr.trim_start_matches("http://").to_string();
    let req = |path: &'static str, extra: &[(&'static str, &'static str)]| {
        let mut f = vec![
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "x"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ];
        f.extend_from_slice(extra);
        literal_block(&f)
    };
    async fn connect(addr: &str, frames: &[Vec<u8>]) -> tokio::net::TcpStream {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(4, 0, 0, &[]));
        for f in frames {
            out.extend_from_slice(f);
        }
        s.write_all(&out).await.unwrap();
        s
    }
    // Connection errors: (what is sent, GOAWAY code).
    let mut size_update = vec![0x3f, 0xe2, 0x1f]; // dynamic table size 4097
    size_update.extend(req(ADS, &[]));
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        ("PING on a stream", frame(6, 0, 3, b"12345678"), 1),
        ("PING of 7 bytes", frame(6, 0, 0, b"1234567"), 6),
        (
            "SETTINGS ACK with a payload",
            frame(4, 1, 0, &[0, 4, 0, 0, 0, 1]),
            6,
        ),
        ("ENABLE_PUSH 2", frame(4, 0, 0, &[0, 2, 0, 0, 0, 2]), 1),
        (
            "RST_STREAM on an idle stream",
            frame(3, 0, 1, &[0, 0, 0, 8]),
            1,
        ),
        ("RST_STREAM on stream 0", frame(3, 0, 0, &[0, 0, 0, 8]), 1),
        ("RST_STREAM of 3 bytes", frame(3, 0, 1, &[0, 0, 8]), 6),
        (
            "WINDOW_UPDATE on an idle stream",
            frame(8, 0, 1, &[0, 0, 0, 1]),
            1,
        ),
        (
            "WINDOW_UPDATE of 0 on stream 0",
            frame(8, 0, 0, &[0, 0, 0, 0]),
            1,
        ),
        ("PRIORITY on stream 0", frame(2, 0, 0, &[0, 0, 0, 1, 9]), 1),
        ("DATA on an idle stream", frame(0, 1, 1, b"x"), 1),
        (
            "table size over the setting",
            frame(1, 5, 1, &size_update),
            9,
        ),
        (
            "a second HEADERS on a closed stream",
            [
                frame(1, 5, 1, &req("/x.Y/Z", &[])),
                frame(1, 5, 1, &req("/x.Y/Z", &[])),
            ]
            .concat(),
            5,
        ),
        (
            "a CONTINUATION flood (a header block that never ends)",
            std::iter::once(frame(1, 0, 1, &req(ADS, &[])))
                .chain((0..1000).map(|_| frame(9, 0, 1, &[])))
                .collect::<Vec<_>>()
                .concat(),
            0xb,
        ),
        (
            "stream ids going backwards",
            [
                frame(1, 5, 5, &req("/x.Y/Z", &[])),
                frame(1, 5, 3, &req("/x.Y/Z", &[])),
            ]
            .concat(),
            1,
        ),
    ];
    for (what, frames, code) in cases {
        let mut s = connect(&addr, &[frames]).await;
        let mut goaway = None;
        while let Some((ty, _, _, p)) = read_frame(&mut s).await {
            if ty == 7 {
                goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
            }
        }
        assert_eq!(goaway, Some(code), "{what}: GOAWAY code, then close");
    }

    // Stream errors: the stream is reset, the connection lives on.
    let mut self_dep = vec![0, 0, 0, 23, 16];
    self_dep.extend(req(ADS, &[]));
    let frames = vec![
        frame(1, 5, 1, &req(ADS, &[("X-Upper", "a")])),
        frame(
            1,
            5,
            3,
            &literal_block(&[(":method", "POST"), (":scheme", "http")]),
        ),
        frame(1, 5, 5, &req(ADS, &[("connection", "keep-alive")])),
        frame(1, 5, 7, &req(ADS, &[("te", "trailers, deflate")])),
        frame(1, 5, 9, &req(ADS, &[(":status", "200")])),
        frame(2, 0, 11, &[0, 0, 0, 11, 16]), // PRIORITY on itself (idle)
        frame(2, 0, 11, &[0, 0, 0, 1]),      // PRIORITY of 4 bytes
        frame(1, 0x25, 23, &self_dep),       // HEADERS depending on itself
        frame(1, 5, 25, &req("/x.Y/Z", &[])), // closed at once (trailers-only)
        frame(0, 1, 25, b"late"),            // DATA on it: STREAM_CLOSED
        frame(1, 4, 27, &req(ADS, &[("content-length", "3")])),
        frame(0, 0, 27, b"four"), // more than content-length
        frame(1, 4, 29, &req(ADS, &[])),
        frame(8, 0, 29, &[0, 0, 0, 0]), // WINDOW_UPDATE of 0
        frame(1, 4, 31, &req(ADS, &[])),
        frame(8, 0, 31, &[0x7f, 0xff, 0xff, 0xff]), // window over 2^31-1
        frame(1, 4, 33, &req(ADS, &[])),
        frame(1, 4, 33, &literal_block(&[("x-t", "1")])), // trailers without END_STREAM
        frame(1, 4, 35, &req(ADS, &[])),
        frame(1, 5, 35, &literal_block(&[(":path", "/")])), // pseudo-header in trailers
        // Reset by the server (trailers-only, then RST_STREAM NO_ERROR): the data the
        // client sent before seeing that is ignored.
        frame(1, 4, 37, &req("/x.Y/Z", &[])),
        frame(0, 0, 37, b"in flight"),
        frame(0, 1, 37, b"last"),
        frame(6, 0, 0, b"barrier!"),
    ];
    let mut s = connect(&addr, &frames).await;
    let mut resets = std::collections::BTreeMap::new();
    loop {
        let (ty, flags, id, p) = read_frame(&mut s).await.expect("connection closed");
        match ty {
            3 => {
                let code = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
                resets.entry(id).or_insert_with(Vec::new).push(code);
            }
            6 if flags & 1 != 0 && p == b"barrier!" => break,
            7 => panic!("GOAWAY {p:?}"),
            _ => {}
        }
    }
    let want: std::collections::BTreeMap<u32, Vec<u32>> = [
        (1, vec![1]),
        (3, vec![1]),
        (5, vec![1]),
        (7, vec![1]),
        (9, vec![1]),
        (11, vec![1, 6]),
        (23, vec![1]),
        (25, vec![5]),
        (27, vec![1]),
        (29, vec![1]),
        (31, vec![3]),
        (33, vec![1]),
        (35, vec![1]),
        (37, vec![0]),
    ]
    .into_iter()
    .collect();
    assert_eq!(resets, want, "RST_STREAM codes by stream");
    // Still serving: a valid request on the same connection gets its response headers.
    s.write_all(&frame(1, 4, 39, &req(ADS, &[]))).await.unwrap();
    loop {
        let (ty, _, id, _) = read_frame(&mut s).await.expect("no response");
        assert_ne!(ty, 3, "stream {id} reset");
        if ty == 1 && id == 39 {
            break;
        }
    }
}

/// A connection past its maximum age gets GOAWAY (NO_ERROR) and, with its ADS stream still
/// open, is closed after the grace: its proxy reconnects, possibly to another replica.
#[tokio::test]
async fn connections_past_their_maximum_age_are_retired() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::start_aged(Some(&svc_yaml(&["a"])), Duration::from_secs(1)).await;
    let addr = h.addr.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(frame(1, 0x4, 1, &grpc_headers(ADS))); // an ADS stream left open
    s.write_all(&out).await.unwrap();
    let t = Instant::now();
    let (mut goaway_at, mut closed_at) = (None, None);
    while t.elapsed() < Duration::from_secs(20) {
        match tokio::time::timeout(Duration::from_secs(20), read_frame_any(&mut s)).await {
            Ok(Some((7, _, _, p))) => {
                assert_eq!(u32::from_be_bytes([p[4], p[5], p[6], p[7]]), 0, "NO_ERROR");
                goaway_at.get_or_insert(t.elapsed());
            }
            Ok(Some((6, flags, _, p))) if flags & 1 == 0 => {
                // Answer keepalive pings like a live client.
                let _ = s.write_all(&frame(6, 1, 0, &p)).await;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                closed_at = Some(t.elapsed());
                break;
            }
        }
    }
    println!("max age 1 s: GOAWAY after {goaway_at:?}, closed after {closed_at:?} (grace 10 s)");
    let g = goaway_at.expect("no GOAWAY");
    assert!(
        g >= Duration::from_millis(800) && g < Duration::from_secs(5),
        "GOAWAY at {g:?}"
    );
    let c = closed_at.expect("the connection was not closed");
    assert!(
        c >= g + Duration::from_secs(9),
        "closed before the grace: {c:?}"
    );
}

/// A frame, waiting as long as it takes (None at EOF).
async fn read_frame_any(s: &mut tokio::net::TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut h = [0u8; 9];
    s.read_exact(&mut h).await.ok()?;
    let len = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
    let mut p = vec![0; len];
    s.read_exact(&mut p).await.ok()?;
    Some((h[3], h[4], u32::from_be_bytes([h[5], h[6], h[7], h[8]]), p))
}

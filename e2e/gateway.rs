//! Ingress gateway end to end: a standalone stock Envoy (`pilotfish bootstrap --gateway`,
//! node type `router`) configured by a Gateway resource, reached from a pod outside the mesh
//! (no sidecar): HTTP redirected to HTTPS, HTTPS with a certificate from a Secret (over
//! SDS) and from files, MUTUAL refusing clients without an accepted certificate, SNI
//! passthrough to a TLS backend, and a VirtualService bound to the gateway splitting 80/20.
#[path = "support/mod.rs"]
mod support;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use support::{need_root, wait_until, write_file as write, ControlPlane, Mesh, Pod, PodSpec};

const READY: Duration = Duration::from_secs(60);

/// A test CA standing for a public one, and leaf certificates it signs.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name
            .push(DnType::CommonName, "gateway test CA");
        let cert = p.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// An intermediate CA under this one: (certificate PEM, key PEM).
    fn intermediate(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// (certificate PEM, key PEM) for these DNS names.
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn config(mesh: &Mesh, ca: &TestCa, shop: &(String, String), files: &Path) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec:\n  clusterIP: {vb}\n  selector: {{app: b}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: b-v1}}\nspec:\n  address: {b1}\n  serviceAccount: b\n  labels: {{app: b, version: v1, security.istio.io/tlsMode: istio}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: b-v2}}\nspec:\n  address: {b2}\n  serviceAccount: b\n  labels: {{app: b, version: v2, security.istio.io/tlsMode: istio}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: b}}\nspec:\n  host: b\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: tlsback}}\nspec:\n  clusterIP: {vt}\n  selector: {{app: tlsback}}\n  ports: [{{name: tls, port: 8443}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: tlsback}}\nspec:\n  address: {t}\n  labels: {{app: tlsback}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: shop-cert}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: {crt}\n  tls.key: {key}\n  ca.crt: {cacrt}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: shop}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n\
         \x20 - port: {{number: 8080, name: http, protocol: HTTP}}\n    hosts: [shop.example.com]\n    tls: {{httpsRedirect: true}}\n\
         \x20 - port: {{number: 8080, name: http-plain, protocol: HTTP}}\n    hosts: [plain.example.com]\n\
         \x20 - port: {{number: 8443, name: https, protocol: HTTPS}}\n    hosts: [shop.example.com]\n    tls: {{mode: SIMPLE, credentialName: shop-cert}}\n\
         \x20 - port: {{number: 8443, name: https-files, protocol: HTTPS}}\n    hosts: [files.example.com]\n    tls: {{mode: SIMPLE, serverCertificate: {fc}, privateKey: {fk}}}\n\
         \x20 - port: {{number: 9443, name: https-mutual, protocol: HTTPS}}\n    hosts: [partner.example.com]\n    tls: {{mode: MUTUAL, credentialName: shop-cert, subjectAltNames: [partner.example]}}\n\
         \x20 - port: {{number: 9444, name: https-optional, protocol: HTTPS}}\n    hosts: [optional.example.com]\n    tls: {{mode: OPTIONAL_MUTUAL, credentialName: shop-cert}}\n\
         \x20 - port: {{number: 10443, name: tls-passthrough, protocol: TLS}}\n    hosts: [\"*.backend.example.com\"]\n    tls: {{mode: PASSTHROUGH}}\n\
         \x20 - port: {{number: 31400, name: tcp, protocol: TCP}}\n    hosts: [\"*\"]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: tcp-b}}\nspec:\n  hosts: [\"*\"]\n  gateways: [shop]\n  tcp:\n  - match: [{{port: 31400}}]\n    route: [{{destination: {{host: b, subset: v2, port: {{number: 8080}}}}}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: shop}}\nspec:\n  hosts: [shop.example.com, files.example.com, partner.example.com, plain.example.com, optional.example.com]\n  gateways: [shop]\n  http:\n  - route:\n    - {{destination: {{host: b, subset: v1}}, weight: 80}}\n    - {{destination: {{host: b, subset: v2}}, weight: 20}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: backend}}\nspec:\n  hosts: [secure.backend.example.com]\n  gateways: [default/shop]\n  tls:\n  - match: [{{sniHosts: [secure.backend.example.com]}}]\n    route: [{{destination: {{host: tlsback, port: {{number: 8443}}}}}}]\n",
        vb = mesh.vip(0),
        vt = mesh.vip(1),
        b1 = mesh.addr(11),
        b2 = mesh.addr(12),
        t = mesh.addr(13),
        crt = yaml_str(&shop.0),
        key = yaml_str(&shop.1),
        cacrt = yaml_str(&ca.pem),
        fc = files.join("tls.crt").display(),
        fk = files.join("tls.key").display(),
    )
}

/// curl from the outside client to the gateway, `host` resolved to the gateway's address.
fn call(client: &Pod, gw: &Pod, url: &str, host_port: &str, extra: &[&str]) -> (u16, String) {
    let resolve = format!("{host_port}:{}", gw.ip);
    let mut args = vec!["-m", "5", "--resolve", &resolve];
    args.extend_from_slice(extra);
    client.curl(url, &args)
}

/// The app that answered (`e2e/app.py` puts its name in the body).
fn answered_by(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["name"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn ingress_gateway_serves_http_https_mutual_and_passthrough() {
    if !need_root("gateway") {
        return;
    }
    let mesh = Mesh::new();
    let ca = TestCa::new();
    let shop = ca.leaf(&[
        "shop.example.com",
        "partner.example.com",
        "optional.example.com",
    ]);
    let files_cert = ca.leaf(&["files.example.com"]);
    let backend = ca.leaf(&["secure.backend.example.com"]);
    let partner = ca.leaf(&["partner.example"]);
    let stranger = ca.leaf(&["stranger.example"]);
    let rogue = TestCa::new().leaf(&["partner.example"]);

    // Files the gateway's Envoy (uid 1337) and the pods read.
    let certs = write_certs(
        &mesh,
        &[
            ("tls.crt", files_cert.0.as_str()),
            ("tls.key", files_cert.1.as_str()),
            ("backend.crt", backend.0.as_str()),
            ("backend.key", backend.1.as_str()),
            ("ca.pem", ca.pem.as_str()),
            ("partner.crt", partner.0.as_str()),
            ("partner.key", partner.1.as_str()),
            ("stranger.crt", stranger.0.as_str()),
            ("stranger.key", stranger.1.as_str()),
            ("rogue.crt", rogue.0.as_str()),
            ("rogue.key", rogue.1.as_str()),
        ],
    );

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "shop.yaml", &config(&mesh, &ca, &shop, &certs));
    let cp = ControlPlane::start_with(&mesh, dir.path(), &["--debounce-ms", "50"]);
    assert_eq!(
        support::config_errors(&cp),
        serde_json::json!([]),
        "the config is valid"
    );

    let _b1 = mesh.start_pod(
        PodSpec::new("b-v1")
            .host(11)
            .label("app", "b")
            .label("version", "v1")
            .service_account("b")
            .secure(&cp),
    );
    let _b2 = mesh.start_pod(
        PodSpec::new("b-v2")
            .host(12)
            .label("app", "b")
            .label("version", "v2")
            .service_account("b")
            .secure(&cp),
    );
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let _tlsback = mesh.start_pod(tls_app("tlsback", 13, &certs, "backend"));
    let gw = mesh.start_pod(
        PodSpec::new("ingress")
            .host(20)
            .port(7070)
            .label("istio", "ingressgateway")
            .service_account("ingress")
            .gateway()
            .secure(&cp),
    );
    let client = mesh.start_pod(PodSpec::new("client").host(30).sidecar(false));
    let cacert = s(&certs.join("ca.pem"));

    // HTTPS with the Secret's certificate (SDS), verified against the test CA.
    let up = wait_until(READY, || {
        call(
            &client,
            &gw,
            "https://shop.example.com:8443/",
            "shop.example.com:8443",
            &["--cacert", &cacert],
        )
        .0 == 200
    });
    assert!(
        up,
        "the gateway never served HTTPS\n{}\n--- gateway ---\n{}",
        cp.log_tail(30),
        gw.logs()
    );

    // The VirtualService bound to the gateway splits 80/20 across the subsets.
    let mut v1 = 0;
    let n = 100;
    for _ in 0..n {
        let (code, body) = call(
            &client,
            &gw,
            "https://shop.example.com:8443/",
            "shop.example.com:8443",
            &["--cacert", &cacert],
        );
        assert_eq!(code, 200, "{body}");
        match answered_by(&body).as_str() {
            "b-v1" => v1 += 1,
            "b-v2" => {}
            other => panic!("answered by {other:?}: {body}"),
        }
    }
    println!("80/20 split at the gateway: {v1} of {n} to v1");
    assert!(
        (65..=93).contains(&v1),
        "{v1} of {n} to v1, expected about 80"
    );

    // The file certificate (the Secret's does not name files.example.com, so a verified
    // handshake shows the file one was served).
    let (code, body) = call(
        &client,
        &gw,
        "https://files.example.com:8443/",
        "files.example.com:8443",
        &["--cacert", &cacert],
    );
    assert_eq!(code, 200, "file certificate: {body}");

    // HTTP: redirected to HTTPS for shop.example.com, served for plain.example.com.
    let (code, body) = call(
        &client,
        &gw,
        "http://shop.example.com:8080/",
        "shop.example.com:8080",
        &["-D", "-"],
    );
    assert_eq!(code, 301, "{body}");
    assert!(
        body.to_ascii_lowercase()
            .contains("location: https://shop.example.com"),
        "{body}"
    );
    let (code, body) = call(
        &client,
        &gw,
        "http://plain.example.com:8080/",
        "plain.example.com:8080",
        &[],
    );
    assert_eq!(code, 200, "{body}");
    assert!(answered_by(&body).starts_with("b-v"), "{body}");
    // A host no VirtualService binds: 404 from the gateway.
    let (code, _) = call(
        &client,
        &gw,
        "http://other.example.com:8080/",
        "other.example.com:8080",
        &[],
    );
    assert_eq!(code, 404);

    // MUTUAL: no client certificate, or one without the accepted SAN, is refused; the
    // partner's certificate passes.
    // `who`'s client certificate (None: none) to the server of `host_port`.
    let with_cert = |host_port: &str, who: Option<&str>| {
        let url = format!("https://{host_port}/");
        let mut args = vec!["--cacert".to_string(), cacert.clone()];
        if let Some(who) = who {
            args.extend([
                "--cert".to_string(),
                s(&certs.join(format!("{who}.crt"))),
                "--key".to_string(),
                s(&certs.join(format!("{who}.key"))),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        call(&client, &gw, &url, host_port, &args)
    };
    let hp = "partner.example.com:9443";
    let (code, body) = with_cert(hp, None);
    assert_ne!(code, 200, "no client certificate: {body}");
    let (code, body) = with_cert(hp, Some("stranger"));
    assert_ne!(code, 200, "a certificate without the SAN: {body}");
    let (code, body) = with_cert(hp, Some("partner"));
    assert_eq!(code, 200, "the partner's certificate: {body}");

    // OPTIONAL_MUTUAL: without a certificate the client is let in; a certificate it does
    // present is verified against the CA.
    let hp = "optional.example.com:9444";
    let (code, body) = with_cert(hp, None);
    assert_eq!(code, 200, "optional: no client certificate: {body}");
    let (code, body) = with_cert(hp, Some("partner"));
    assert_eq!(code, 200, "optional: a certificate of the CA: {body}");
    let (code, body) = with_cert(hp, Some("rogue"));
    assert_ne!(code, 200, "optional: a certificate of another CA: {body}");

    // PASSTHROUGH: the backend's own certificate (verified for its name) answers, so the
    // gateway routed by SNI without terminating TLS.
    let (code, body) = call(
        &client,
        &gw,
        "https://secure.backend.example.com:10443/",
        "secure.backend.example.com:10443",
        &["--cacert", &cacert],
    );
    assert_eq!(code, 200, "passthrough: {body}");
    assert_eq!(answered_by(&body), "tlsback", "{body}");

    // A TCP server: the VirtualService's tcp route takes any bytes to b's v2.
    let (code, body) = call(
        &client,
        &gw,
        "http://anything.example:31400/",
        "anything.example:31400",
        &[],
    );
    assert_eq!((code, answered_by(&body).as_str()), (200, "b-v2"), "{body}");

    // The gateway's names are Istio's.
    let dump = gw.envoy_admin("/config_dump");
    for name in [
        "0.0.0.0_8080",
        "0.0.0.0_8443",
        "0.0.0.0_9443",
        "0.0.0.0_10443",
        "http.8080",
        "https.8443.https.shop.default",
        "https.8443.https-files.shop.default",
        "https.9443.https-mutual.shop.default",
        "outbound|8080|v1|b.default.svc.cluster.local",
    ] {
        assert!(dump.contains(name), "no {name} in the gateway's config");
    }
    assert!(
        !dump.contains("BEGIN PRIVATE KEY"),
        "config_dump shows no keys"
    );

    // A Gateway with a mode pilotfish does not translate (TLS termination on a TLS server)
    // is an error naming the field, and what is served stays as it was.
    write(
        dir.path(),
        "broken.yaml",
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: eastwest}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 15443, name: tls, protocol: TLS}\n    hosts: [\"*.local\"]\n    tls: {mode: SIMPLE, credentialName: shop-cert}\n",
    );
    let reported = wait_until(Duration::from_secs(10), || {
        support::config_errors(&cp)
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["field"] == "spec.servers[0].tls.mode"))
    });
    assert!(reported, "{}", support::config_errors(&cp));
    let (code, body) = call(
        &client,
        &gw,
        "https://shop.example.com:8443/",
        "shop.example.com:8443",
        &["--cacert", &cacert],
    );
    assert_eq!(code, 200, "still served: {body}");
    assert!(!gw.envoy_admin("/config_dump").contains("0.0.0.0_15443"));
}

fn egress_config(mesh: &Mesh, ca_path: &Path, with_entry: bool) -> String {
    let registry = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: istio-egressgateway}}\nspec:\n  clusterIP: {vg}\n  selector: {{istio: egressgateway}}\n  ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n  - {{name: https, port: 443, targetPort: 8443}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: istio-egressgateway}}\nspec:\n  address: {g}\n  serviceAccount: istio-egressgateway\n  labels: {{istio: egressgateway, security.istio.io/tlsMode: istio}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: istio-egressgateway}}\nspec:\n  selector: {{istio: egressgateway}}\n  servers:\n  - port: {{number: 80, name: https-port-for-tls-origination, protocol: HTTPS}}\n    hosts: [api.external.example]\n    tls: {{mode: ISTIO_MUTUAL}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: egressgateway-for-external}}\nspec:\n  host: istio-egressgateway\n  subsets:\n  - name: external\n    trafficPolicy:\n      portLevelSettings:\n      - port: {{number: 80}}\n        tls: {{mode: ISTIO_MUTUAL, sni: api.external.example}}\n",
        vg = mesh.vip(0),
        g = mesh.addr(20),
    );
    if !with_entry {
        return registry;
    }
    // Istio's "egress gateway with TLS origination" task, with a test CA standing for the
    // public ones and a static address for the external host (no DNS here).
    format!(
        "{registry}---\n\
         apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: external}}\nspec:\n  hosts: [api.external.example]\n  addresses: [240.240.0.5]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  ports:\n  - {{number: 80, name: http, protocol: HTTP}}\n  - {{number: 443, name: https, protocol: HTTPS}}\n  endpoints:\n  - {{address: {ext}, ports: {{http: 8080, https: 8443}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: direct-external-through-egress-gateway}}\nspec:\n  hosts: [api.external.example]\n  gateways: [istio-egressgateway, mesh]\n  http:\n  - match: [{{gateways: [mesh], port: 80}}]\n    route:\n    - destination: {{host: istio-egressgateway.default.svc.cluster.local, subset: external, port: {{number: 80}}}}\n  - match: [{{gateways: [istio-egressgateway], port: 80}}]\n    route:\n    - destination: {{host: api.external.example, port: {{number: 443}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: wildcard}}\nspec:\n  hosts: [\"*.wild.example\"]\n  location: MESH_EXTERNAL\n  resolution: NONE\n  ports:\n  - {{number: 8443, name: tls, protocol: TLS}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: originate-tls-for-external}}\nspec:\n  host: api.external.example\n  trafficPolicy:\n    portLevelSettings:\n    - port: {{number: 443}}\n      tls: {{mode: SIMPLE, caCertificates: {ca}, sni: api.external.example}}\n",
        ext = mesh.addr(13),
        ca = ca_path.display(),
    )
}

/// Istio's egress-gateway pattern under REGISTRY_ONLY: the sidecar sends plain HTTP for an
/// external host to the egress gateway over mutual TLS (SNI the external host), and the
/// gateway originates TLS to the external server (verified with the CA the
/// DestinationRule names). Without the ServiceEntry the call fails, and the external
/// server's address is not reachable directly.
#[test]
fn egress_gateway_originates_tls_under_registry_only() {
    if !need_root("gateway") {
        return;
    }
    let mesh = Mesh::new();
    let ca = TestCa::new();
    let external = ca.leaf(&["api.external.example", "api.wild.example", "other.example"]);
    let certs = write_certs(
        &mesh,
        &[
            ("ca.pem", ca.pem.as_str()),
            ("ext.crt", external.0.as_str()),
            ("ext.key", external.1.as_str()),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "egress.yaml",
        &egress_config(&mesh, &certs.join("ca.pem"), true),
    );
    let (cp, _meshcfg) = registry_only(&mesh, dir.path());
    assert_eq!(support::config_errors(&cp), serde_json::json!([]));
    let ext = mesh.start_pod(tls_app("external", 13, &certs, "ext"));
    let egw = mesh.start_pod(
        PodSpec::new("egress")
            .host(20)
            .port(7070)
            .label("istio", "egressgateway")
            .service_account("istio-egressgateway")
            .gateway()
            .secure(&cp),
    );
    let a = mesh.start_pod(PodSpec::new("a").host(10).service_account("a").secure(&cp));
    a.hosts(&[("api.external.example", "240.240.0.5")]);

    let url = "http://api.external.example/";
    let ok = wait_until(READY, || {
        let (code, body) = a.curl(url, &["-m", "5"]);
        code == 200 && answered_by(&body) == "external"
    });
    assert!(
        ok,
        "the external host is not reached through the egress gateway: {:?}\n{}\n{}\n{}",
        a.curl(url, &["-m", "5"]),
        cp.log_tail(20),
        egw.logs(),
        a.logs()
    );
    // The gateway listens on the Service's target port (80 -> 8080), took the request over
    // mutual TLS, and sent it on over TLS; the sidecar went to the gateway, not direct.
    let dump = egw.envoy_admin("/config_dump");
    assert!(dump.contains("0.0.0.0_8080"), "bound to the target port");
    let gw_rq = egw
        .envoy_stat("cluster.outbound|443||api.external.example.upstream_rq_total")
        .unwrap_or(0);
    assert!(gw_rq >= 1, "the gateway's stats show the request");
    let gw_tls = egw
        .envoy_stat("cluster.outbound|443||api.external.example.ssl.handshake")
        .unwrap_or(0);
    assert!(gw_tls >= 1, "the gateway originated TLS");
    let via = a
        .envoy_stat(
            "cluster.outbound|80|external|istio-egressgateway.default.svc.cluster.local.upstream_rq_total",
        )
        .unwrap_or(0);
    assert!(via >= 1, "the sidecar sent it to the egress gateway");
    let listener_ssl = egw
        .envoy_stats("listener.0.0.0.0_8080.ssl.handshake")
        .iter()
        .map(|(_, v)| *v)
        .sum::<u64>();
    assert!(
        listener_ssl >= 1,
        "the sidecar's connection to the gateway is TLS"
    );
    println!(
        "egress: sidecar->gateway requests {via}, gateway->external requests {gw_rq}, TLS handshakes in {listener_ssl} out {gw_tls}"
    );

    // REGISTRY_ONLY: the external server's own address is not reachable from the pod.
    let (code, _) = a.curl(&format!("https://{}:8443/", ext.ip), &["-m", "5", "-k"]);
    assert_ne!(code, 200, "a direct call to the external address passes");

    // A wildcard ServiceEntry (resolution NONE) for TLS: the app dials the address its
    // DNS gave, the sidecar matches the SNI; a host it does not cover stays blocked.
    let ca_pem = certs.join("ca.pem");
    let tls = |host: &str| {
        a.curl(
            &format!("https://{host}:8443/"),
            &["-m", "5", "--cacert", ca_pem.to_str().unwrap()],
        )
    };
    a.hosts(&[
        ("api.external.example", "240.240.0.5"),
        ("api.wild.example", &ext.ip.to_string()),
        ("other.example", &ext.ip.to_string()),
    ]);
    let (code, body) = tls("api.wild.example");
    assert_eq!(
        (code, answered_by(&body).as_str()),
        (200, "external"),
        "{body}"
    );
    let sni = a
        .envoy_stat("cluster.outbound|8443||*.wild.example.upstream_cx_total")
        .unwrap_or(0);
    assert!(sni >= 1, "went through the wildcard's cluster");
    assert_ne!(
        tls("other.example").0,
        200,
        "a host no ServiceEntry covers passes"
    );

    // Without the ServiceEntry (and the rules naming it) the call fails.
    write(
        dir.path(),
        "egress.yaml",
        &egress_config(&mesh, &certs.join("ca.pem"), false),
    );
    let blocked = wait_until(Duration::from_secs(20), || {
        a.curl(url, &["-m", "5"]).0 != 200
    });
    assert!(blocked, "still reachable without the ServiceEntry");
}

/// Multi-network on one bridge: b's endpoint is on network n2, the client on n1. The
/// client's sidecar reaches b only through n2's east-west gateway (AUTO_PASSTHROUGH on
/// 15443, SNI-routed), with mutual TLS end to end: b's sidecar sees the client's own
/// identity, and the gateway holds no certificate in the path. (Two bridges that cannot
/// route to each other, and remote registries: not done yet.)
#[test]
fn east_west_gateway_carries_mtls_between_networks() {
    if !need_root("gateway") {
        return;
    }
    let mesh = Mesh::new();
    let gw_ip = mesh.addr(20);
    let config = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec:\n  clusterIP: {vb}\n  selector: {{app: b}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: b-1}}\nspec:\n  address: {b}\n  network: n2\n  serviceAccount: b\n  labels: {{app: b, security.istio.io/tlsMode: istio}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: istio-eastwestgateway, labels: {{topology.istio.io/network: n2}}}}\nspec:\n  selector: {{istio: eastwestgateway}}\n  externalIPs: [{gw_ip}]\n  ports: [{{name: tls, port: 15443}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: cross-network-gateway}}\nspec:\n  selector: {{istio: eastwestgateway}}\n  servers:\n  - port: {{number: 15443, name: tls, protocol: TLS}}\n    tls: {{mode: AUTO_PASSTHROUGH}}\n    hosts: [\"*.local\"]\n",
        vb = mesh.vip(0),
        b = mesh.addr(11),
    );
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "mesh.yaml", &config);
    let cp = ControlPlane::start_with(
        &mesh,
        dir.path(),
        &["--debounce-ms", "50", "--network", "n1"],
    );
    assert_eq!(support::config_errors(&cp), serde_json::json!([]));
    let _b = mesh.start_pod(
        PodSpec::new("b")
            .host(11)
            .service_account("b")
            .network("n2")
            .secure(&cp),
    );
    let gw = mesh.start_pod(
        PodSpec::new("eastwest")
            .host(20)
            .port(7070)
            .label("istio", "eastwestgateway")
            .service_account("istio-eastwestgateway")
            .network("n2")
            .gateway()
            .secure(&cp),
    );
    let a = mesh.start_pod(PodSpec::new("a").host(10).service_account("a").secure(&cp));
    a.hosts(&[("b", &mesh.vip(0).to_string())]);
    let ok = wait_until(READY, || a.curl("http://b:8080/", &["-m", "5"]).0 == 200);
    assert!(
        ok,
        "{:?}\n{}\n{}",
        a.curl("http://b:8080/", &["-m", "5"]),
        cp.log_tail(20),
        gw.logs()
    );
    // The client's only endpoint for b is the gateway; the gateway's SNI cluster took it.
    let clusters = a.envoy_admin("/clusters");
    assert!(
        clusters.contains(&format!(
            "outbound|8080||b.default.svc.cluster.local::{gw_ip}:15443"
        )),
        "b is reached through the gateway"
    );
    assert!(
        !clusters.contains(&format!(
            "outbound|8080||b.default.svc.cluster.local::{}:8080",
            mesh.addr(11)
        )),
        "not directly"
    );
    let via = gw
        .envoy_stat("cluster.outbound_.8080_._.b.default.svc.cluster.local.upstream_cx_total")
        .unwrap_or(0);
    assert!(via >= 1, "the gateway's SNI cluster carried the connection");
    // mTLS end to end: b's sidecar saw a's certificate (the gateway did not terminate).
    let (_, body) = a.curl("http://b:8080/", &["-m", "5"]);
    assert!(
        body.contains("spiffe://cluster.local/ns/default/sa/a"),
        "b sees a's identity: {body}"
    );
    println!("east-west: {via} connection(s) through the gateway, mTLS end to end");
}

/// Writes certificate files where the pods' processes (the gateway's Envoy runs as 1337)
/// can read them: `<mesh dir>/certs/<name>`.
fn write_certs(mesh: &Mesh, files: &[(&str, &str)]) -> std::path::PathBuf {
    let certs = mesh.dir().join("certs");
    fs::create_dir_all(&certs).unwrap();
    fs::set_permissions(&certs, fs::Permissions::from_mode(0o755)).unwrap();
    for (name, text) in files {
        let p = certs.join(name);
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    }
    certs
}

/// pilotfish on `config` with the mesh's outbound policy REGISTRY_ONLY (the mesh config's
/// directory is returned: it must live as long as pilotfish).
fn registry_only(mesh: &Mesh, config: &Path) -> (ControlPlane, tempfile::TempDir) {
    let meshcfg = tempfile::tempdir().unwrap();
    write(
        meshcfg.path(),
        "mesh.yaml",
        "outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
    );
    let mesh_file = meshcfg.path().join("mesh.yaml");
    let cp = ControlPlane::start_with(
        mesh,
        config,
        &[
            "--debounce-ms",
            "50",
            "--mesh-config",
            mesh_file.to_str().unwrap(),
        ],
    );
    (cp, meshcfg)
}

/// A pod outside the mesh whose app also serves HTTPS on 8443 with `<stem>.crt/.key`.
fn tls_app(name: &str, host: u8, certs: &Path, stem: &str) -> PodSpec {
    let f = |ext: &str| {
        certs
            .join(format!("{stem}.{ext}"))
            .to_str()
            .unwrap()
            .to_string()
    };
    PodSpec::new(name)
        .host(host)
        .sidecar(false)
        .app_arg("--tls-port")
        .app_arg("8443")
        .app_arg("--tls-cert")
        .app_arg(&f("crt"))
        .app_arg("--tls-key")
        .app_arg(&f("key"))
}

/// A pilotfish of one cluster, signing under its own intermediate of the shared root.
fn cluster_cp(
    mesh: &Mesh,
    config: &Path,
    root: &TestCa,
    name: &str,
    extra: &[&str],
) -> ControlPlane {
    let (cert, key) = root.intermediate(&format!("{name} intermediate"));
    let ca = mesh.dir().join(format!("{name}-ca"));
    fs::create_dir_all(&ca).unwrap();
    for (f, t) in [
        ("ca-cert.pem", &cert),
        ("ca-key.pem", &key),
        ("cert-chain.pem", &root.pem),
    ] {
        fs::write(ca.join(f), t).unwrap();
    }
    let s = |f: &str| ca.join(f).to_str().unwrap().to_string();
    let (c, k, ch) = (s("ca-cert.pem"), s("ca-key.pem"), s("cert-chain.pem"));
    let mut args = vec![
        "--debounce-ms",
        "50",
        "--ca-cert",
        &c,
        "--ca-key",
        &k,
        "--ca-chain",
        &ch,
    ];
    args.extend_from_slice(extra);
    let cp = ControlPlane::start_with(mesh, config, &args);
    // Pods verify pilotfish's serving certificate against the shared root.
    fs::write(cp.state_dir().join("root-cert.pem"), &root.pem).unwrap();
    cp
}

/// One mesh over two clusters on two networks (two bridges with no route between them):
/// each cluster's pilotfish reads the other's registry (`--remote-cluster`), both sign
/// under intermediates of one root, and cluster 2's east-west gateway (its only address
/// cluster 1 can reach) carries cluster 1's calls to cluster 2's endpoints with mTLS end to
/// end. A VirtualService of cluster 1 sends `jason` to cluster 2's v2 only; other requests
/// reach both clusters.
#[test]
fn two_clusters_on_two_networks_are_one_mesh() {
    if !need_root("gateway") {
        return;
    }
    let m1 = Mesh::new();
    let m2 = m1.another();
    let root = TestCa::new();
    // Cluster 2's east-west gateway: on cluster 2's bridge, plus an address on cluster 1's
    // (standing for a public address).
    let ew_public = m1.addr(250).to_string();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let reviews_dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n";
    write(
        d1.path(),
        "cluster1.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: reviews}}\nspec:\n  clusterIP: {v}\n  selector: {{app: reviews}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: reviews-v1}}\nspec:\n  address: {r1}\n  serviceAccount: reviews\n  labels: {{app: reviews, version: v1, security.istio.io/tlsMode: istio}}\n---\n\
             {reviews_dr}---\n\
             apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n    route: [{{destination: {{host: reviews, subset: v2}}}}]\n  - route: [{{destination: {{host: reviews}}}}]\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: ratings}}\nspec:\n  clusterIP: {vr}\n  selector: {{app: ratings}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: ratings-1}}\nspec:\n  address: {ra}\n  serviceAccount: ratings\n  labels: {{app: ratings, security.istio.io/tlsMode: istio}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: istio-eastwestgateway, labels: {{topology.istio.io/network: n1}}}}\nspec:\n  selector: {{istio: eastwestgateway}}\n  externalIPs: [{ew1_public}]\n  ports: [{{name: tls, port: 15443}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: cross-network-gateway}}\nspec:\n  selector: {{istio: eastwestgateway}}\n  servers:\n  - port: {{number: 15443, name: tls, protocol: TLS}}\n    tls: {{mode: AUTO_PASSTHROUGH}}\n    hosts: [\"*.local\"]\n",
            v = m1.vip(0),
            r1 = m1.addr(11),
            vr = m1.vip(1),
            ra = m1.addr(12),
            ew1_public = m2.addr(251),
        ),
    );
    write(
        d2.path(),
        "cluster2.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: reviews}}\nspec:\n  clusterIP: {v}\n  selector: {{app: reviews}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: reviews-v2}}\nspec:\n  address: {r2}\n  serviceAccount: reviews\n  labels: {{app: reviews, version: v2, security.istio.io/tlsMode: istio}}\n---\n\
             {reviews_dr}---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: istio-eastwestgateway, labels: {{topology.istio.io/network: n2}}}}\nspec:\n  selector: {{istio: eastwestgateway}}\n  externalIPs: [{ew_public}]\n  ports: [{{name: tls, port: 15443}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: cross-network-gateway}}\nspec:\n  selector: {{istio: eastwestgateway}}\n  servers:\n  - port: {{number: 15443, name: tls, protocol: TLS}}\n    tls: {{mode: AUTO_PASSTHROUGH}}\n    hosts: [\"*.local\"]\n",
            v = m2.vip(0),
            r2 = m2.addr(11),
        ),
    );
    let remote2 = format!("c2={},network=n2", d2.path().display());
    let remote1 = format!("c1={},network=n1", d1.path().display());
    let cp1 = cluster_cp(
        &m1,
        d1.path(),
        &root,
        "c1",
        &["--network", "n1", "--remote-cluster", &remote2],
    );
    let cp2 = cluster_cp(
        &m2,
        d2.path(),
        &root,
        "c2",
        &["--network", "n2", "--remote-cluster", &remote1],
    );
    assert_eq!(support::config_errors(&cp1), serde_json::json!([]));
    assert_eq!(support::config_errors(&cp2), serde_json::json!([]));

    let _r1 = m1.start_pod(
        PodSpec::new("reviews-v1")
            .host(11)
            .label("app", "reviews")
            .label("version", "v1")
            .service_account("reviews")
            .secure(&cp1),
    );
    let _r2 = m2.start_pod(
        PodSpec::new("reviews-v2")
            .host(11)
            .label("app", "reviews")
            .label("version", "v2")
            .service_account("reviews")
            .secure(&cp2),
    );
    let ew = m2.start_pod(
        PodSpec::new("eastwest")
            .host(20)
            .port(7070)
            .label("istio", "eastwestgateway")
            .service_account("istio-eastwestgateway")
            .gateway()
            .secure(&cp2),
    );
    // The gateway's public leg, on cluster 1's bridge.
    public_leg(&ew, &m1, &m2, &ew_public);
    // Cluster 1's east-west gateway and ratings, which cluster 2 does not have at all.
    let _ratings = m1.start_pod(
        PodSpec::new("ratings-1")
            .host(12)
            .label("app", "ratings")
            .service_account("ratings")
            .secure(&cp1),
    );
    let ew1 = m1.start_pod(
        PodSpec::new("eastwest")
            .host(20)
            .port(7070)
            .label("istio", "eastwestgateway")
            .service_account("istio-eastwestgateway")
            .gateway()
            .secure(&cp1),
    );
    public_leg(&ew1, &m2, &m1, &m2.addr(251).to_string());
    let sleep2 = m2.start_pod(
        PodSpec::new("sleep2")
            .host(10)
            .service_account("sleep2")
            .secure(&cp2),
    );
    sleep2.hosts(&[("ratings", &m1.vip(1).to_string())]);
    let sleep = m1.start_pod(
        PodSpec::new("sleep")
            .host(10)
            .service_account("sleep")
            .secure(&cp1),
    );
    sleep.hosts(&[("reviews", &m1.vip(0).to_string())]);

    // The networks cannot reach each other except through the gateway's public address.
    let (code, _) = sleep.curl(&format!("http://{}:8080/", m2.addr(11)), &["-m", "3"]);
    assert_ne!(code, 200, "cluster 2's pod is reachable directly");

    let who = |extra: &[&str]| {
        let mut args = vec!["-m", "5"];
        args.extend_from_slice(extra);
        let (code, body) = sleep.curl("http://reviews:8080/", &args);
        let name = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["name"].as_str().map(str::to_string))
            .unwrap_or_default();
        (code, name, body)
    };
    let up = wait_until(READY, || who(&["-H", "end-user: jason"]).1 == "reviews-v2");
    assert!(
        up,
        "jason never reached cluster 2: {:?}\n{}\n{}",
        who(&["-H", "end-user: jason"]),
        cp1.log_tail(20),
        ew.logs()
    );
    for _ in 0..10 {
        let (code, name, body) = who(&["-H", "end-user: jason"]);
        assert_eq!((code, name.as_str()), (200, "reviews-v2"), "{body}");
        assert!(
            body.contains("spiffe://cluster.local/ns/default/sa/sleep"),
            "mTLS end to end: cluster 2's sidecar sees the caller: {body}"
        );
    }
    let (mut v1, mut v2) = (0, 0);
    for _ in 0..40 {
        match who(&[]).1.as_str() {
            "reviews-v1" => v1 += 1,
            "reviews-v2" => v2 += 1,
            other => panic!("answered by {other:?}"),
        }
    }
    println!("two clusters: without the header, {v1} to cluster 1's v1, {v2} to cluster 2's v2");
    assert!(v1 > 0 && v2 > 0, "both clusters answer: {v1} / {v2}");
    let via = ew
        .envoy_stat(
            "cluster.outbound_.8080_.v2_.reviews.default.svc.cluster.local.upstream_cx_total",
        )
        .unwrap_or(0);
    assert!(
        via >= 1,
        "the gateway's v2 SNI cluster carried jason's calls"
    );

    // A pod of cluster 2, which has no ratings at all, reaches cluster 1's through cluster
    // 1's east-west gateway.
    let up = wait_until(READY, || {
        let (code, body) = sleep2.curl("http://ratings:8080/", &["-m", "5"]);
        code == 200 && body.contains("\"ratings-1\"")
    });
    assert!(
        up,
        "cluster 2 never reached ratings: {:?}\n{}",
        sleep2.curl("http://ratings:8080/", &["-m", "5"]),
        ew1.logs()
    );
    let (_, body) = sleep2.curl("http://ratings:8080/", &["-m", "5"]);
    assert!(
        body.contains("spiffe://cluster.local/ns/default/sa/sleep2"),
        "mTLS end to end from cluster 2: {body}"
    );
}

/// Gives a gateway pod of `own` mesh a second interface on `other`'s bridge at `addr`: the
/// address the other network reaches it at (standing for a public one).
fn public_leg(gw: &Pod, other: &Mesh, own: &Mesh, addr: &str) {
    let host_if = format!("pf{}ew{}", other.n(), own.n());
    let ok = |args: &[&str]| {
        let o = support::run(
            std::process::Command::new(args[0]).args(&args[1..]),
            Duration::from_secs(10),
        );
        assert!(o.ok(), "{args:?}: {}", o.describe());
    };
    ok(&[
        "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth1", "netns", &gw.netns,
    ]);
    ok(&["ip", "link", "set", &host_if, "master", other.bridge()]);
    ok(&["ip", "link", "set", &host_if, "up"]);
    let cidr = format!("{addr}/24");
    ok(&[
        "ip", "netns", "exec", &gw.netns, "ip", "addr", "add", &cidr, "dev", "eth1",
    ]);
    ok(&[
        "ip", "netns", "exec", &gw.netns, "ip", "link", "set", "eth1", "up",
    ]);
}

/// VirtualService `tls` routes on a sidecar (`mesh`): the app calls `secure.example` over
/// TLS at the address its own DNS gave (no VIP), and its sidecar, matching the SNI, splits
/// the connections 50/50 between two external TLS servers; the TLS is the app's, end to end
/// (its CA verifies the servers). Under REGISTRY_ONLY.
#[test]
fn sidecar_routes_tls_by_sni() {
    if !need_root("gateway") {
        return;
    }
    let mesh = Mesh::new();
    let ca = TestCa::new();
    let leaf = ca.leaf(&["secure.example"]);
    let certs = write_certs(
        &mesh,
        &[
            ("ca.pem", ca.pem.as_str()),
            ("s.crt", leaf.0.as_str()),
            ("s.key", leaf.1.as_str()),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: secure}}\nspec:\n  hosts: [secure.example]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  ports: [{{number: 8443, name: tls, protocol: TLS}}]\n  endpoints: [{{address: {v1}}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: secure-v2}}\nspec:\n  hosts: [secure-v2.example]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  ports: [{{number: 8443, name: tls, protocol: TLS}}]\n  endpoints: [{{address: {v2}}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: secure}}\nspec:\n  hosts: [secure.example]\n  tls:\n  - match: [{{port: 8443, sniHosts: [secure.example]}}]\n    route:\n    - {{destination: {{host: secure.example}}, weight: 50}}\n    - {{destination: {{host: secure-v2.example}}, weight: 50}}\n",
        v1 = mesh.addr(13),
        v2 = mesh.addr(14),
    );
    write(dir.path(), "tls.yaml", &config);
    let (cp, _meshcfg) = registry_only(&mesh, dir.path());
    assert_eq!(support::config_errors(&cp), serde_json::json!([]));
    let _v1 = mesh.start_pod(tls_app("v1", 13, &certs, "s"));
    let _v2 = mesh.start_pod(tls_app("v2", 14, &certs, "s"));
    let a = mesh.start_pod(PodSpec::new("a").host(10).control_plane(&cp));
    // The app's DNS answers the first server's own address.
    a.hosts(&[("secure.example", &mesh.addr(13).to_string())]);
    let ca_pem = certs.join("ca.pem");
    let call = || {
        let (code, body) = a.curl(
            "https://secure.example:8443/",
            &["-m", "5", "--cacert", ca_pem.to_str().unwrap()],
        );
        (code, answered_by(&body))
    };
    let up = wait_until(READY, || call().0 == 200);
    assert!(up, "{:?}\n{}\n{}", call(), cp.log_tail(20), a.logs());
    let (mut v1, mut v2) = (0, 0);
    for _ in 0..30 {
        match call() {
            (200, n) if n == "v1" => v1 += 1,
            (200, n) if n == "v2" => v2 += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    println!("tls route 50/50 by SNI: v1 {v1}, v2 {v2}");
    assert!(
        v1 >= 5 && v2 >= 5,
        "both destinations answer: v1 {v1}, v2 {v2}"
    );
    // Another name on the same address is no ServiceEntry's: refused.
    a.hosts(&[
        ("secure.example", &mesh.addr(13).to_string()),
        ("other.example", &mesh.addr(13).to_string()),
    ]);
    let (code, _) = a.curl("https://other.example:8443/", &["-m", "5", "-k"]);
    assert_ne!(code, 200, "an uncovered SNI passes under REGISTRY_ONLY");
}

/// The Kubernetes Gateway API (Istio's getting-started Bookinfo gateway and more) with a
/// real gateway Envoy labelled `gateway.networking.k8s.io/gateway-name`: HTTPRoute exact
/// and segment-wise prefix paths, a prefix rewrite with a request header set, an 80/20
/// weighted split, a 302 redirect, and an HTTPS listener terminating with a Secret's
/// certificate where two HTTPRoutes for one host are merged in precedence order.
#[test]
fn kubernetes_gateway_api_routes_http_and_https() {
    if !need_root("gateway") {
        return;
    }
    let mesh = Mesh::new();
    let ca = TestCa::new();
    let cert = ca.leaf(&["bookinfo.example.com"]);
    let certs = write_certs(&mesh, &[("ca.pem", ca.pem.as_str())]);
    let svc = |name: &str, vip: u8, host: u8| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  clusterIP: {vip}\n  selector: {{app: {name}}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}}}\nspec:\n  address: {addr}\n  serviceAccount: {name}\n  labels: {{app: {name}, security.istio.io/tlsMode: istio}}\n---\n",
            vip = mesh.vip(vip),
            addr = mesh.addr(host),
        )
    };
    let config = format!(
        "{p}{r1}{r2}\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: bookinfo-cert}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: {crt}\n  tls.key: {key}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: bookinfo-gateway}}\nspec:\n  gatewayClassName: istio\n  listeners:\n\
         \x20 - {{name: http, port: 8080, protocol: HTTP, allowedRoutes: {{namespaces: {{from: Same}}}}}}\n\
         \x20 - name: https\n    hostname: bookinfo.example.com\n    port: 8443\n    protocol: HTTPS\n    tls: {{mode: Terminate, certificateRefs: [{{kind: Secret, name: bookinfo-cert}}]}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: bookinfo}}\nspec:\n  parentRefs: [{{name: bookinfo-gateway}}]\n  rules:\n\
         \x20 - matches:\n    - path: {{type: Exact, value: /productpage}}\n    - path: {{type: PathPrefix, value: /static}}\n    backendRefs: [{{name: productpage, port: 8080}}]\n\
         \x20 - matches:\n    - path: {{type: PathPrefix, value: /reviews}}\n    filters:\n    - type: URLRewrite\n      urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /api}}}}\n    - type: RequestHeaderModifier\n      requestHeaderModifier: {{set: [{{name: x-gateway, value: pilotfish}}]}}\n    backendRefs:\n    - {{name: reviews-v1, port: 8080, weight: 80}}\n    - {{name: reviews-v2, port: 8080, weight: 20}}\n\
         \x20 - matches:\n    - path: {{type: Exact, value: /old}}\n    filters:\n    - type: RequestRedirect\n      requestRedirect: {{path: {{type: ReplaceFullPath, replaceFullPath: /productpage}}}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: secure}}\nspec:\n  parentRefs: [{{name: bookinfo-gateway, sectionName: https}}]\n  hostnames: [bookinfo.example.com]\n  rules:\n  - backendRefs: [{{name: reviews-v2, port: 8080}}]\n",
        p = svc("productpage", 0, 11),
        r1 = svc("reviews-v1", 1, 12),
        r2 = svc("reviews-v2", 2, 13),
        crt = yaml_str(&cert.0),
        key = yaml_str(&cert.1),
    );
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bookinfo.yaml", &config);
    let cp = ControlPlane::start_with(&mesh, dir.path(), &["--debounce-ms", "50"]);
    assert_eq!(support::config_errors(&cp), serde_json::json!([]));
    let _pods: Vec<Pod> = [("productpage", 11), ("reviews-v1", 12), ("reviews-v2", 13)]
        .iter()
        .map(|(n, h)| mesh.start_pod(PodSpec::new(n).host(*h).service_account(n).secure(&cp)))
        .collect();
    let gw = mesh.start_pod(
        PodSpec::new("bookinfo-gateway-istio")
            .host(20)
            .port(7070)
            .label("gateway.networking.k8s.io/gateway-name", "bookinfo-gateway")
            .service_account("bookinfo-gateway-istio")
            .gateway()
            .secure(&cp),
    );
    let client = mesh.start_pod(PodSpec::new("client").host(30).sidecar(false));
    let get = |path: &str| {
        let (code, body) = call(
            &client,
            &gw,
            &format!("http://bookinfo.example.com:8080{path}"),
            "bookinfo.example.com:8080",
            &[],
        );
        (code, answered_by(&body), body)
    };
    let up = wait_until(READY, || get("/productpage").0 == 200);
    assert!(
        up,
        "{:?}\n{}\n{}",
        get("/productpage"),
        cp.log_tail(30),
        gw.logs()
    );
    assert_eq!(get("/productpage").1, "productpage");
    assert_eq!(get("/static/app.js").1, "productpage");
    // Prefixes are whole path segments: /static is not /statics.
    assert_eq!(get("/statics").0, 404);
    assert_eq!(get("/productpage/x").0, 404, "Exact is exact");

    // The rewrite (the matched prefix replaced) and the header set reach the backend.
    let (code, who, body) = get("/reviews/1");
    assert_eq!(code, 200, "{body}");
    assert!(who.starts_with("reviews-v"), "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["path"], "/api/1", "{body}");
    assert_eq!(doc["headers"]["x-gateway"], "pilotfish", "{body}");
    let (mut v1, mut v2) = (0, 0);
    for _ in 0..100 {
        match get("/reviews").1.as_str() {
            "reviews-v1" => v1 += 1,
            "reviews-v2" => v2 += 1,
            other => panic!("answered by {other:?}"),
        }
    }
    println!("gateway api 80/20: reviews-v1 {v1}, reviews-v2 {v2}");
    assert!((62..=94).contains(&v1), "v1 {v1} of 100");

    // The redirect's default is 302 (the Gateway API's, where Istio's is 301).
    let (code, out) = client.curl(
        "http://bookinfo.example.com:8080/old",
        &[
            "-m",
            "5",
            "--resolve",
            &format!("bookinfo.example.com:8080:{}", gw.ip),
            "-o",
            "/dev/null",
            "-w",
            "%{redirect_url}\n%{http_code}",
        ],
    );
    assert_eq!(code, 302);
    assert_eq!(out.trim(), "http://bookinfo.example.com:8080/productpage");

    // HTTPS with the Secret's certificate; both routes attach to the listener and are
    // merged: the exact /productpage of one before the catch-all of the other.
    let cacert = certs.join("ca.pem");
    let https = |path: &str| {
        let (code, body) = call(
            &client,
            &gw,
            &format!("https://bookinfo.example.com:8443{path}"),
            "bookinfo.example.com:8443",
            &["--cacert", cacert.to_str().unwrap()],
        );
        (code, answered_by(&body))
    };
    let up = wait_until(READY, || https("/productpage").0 == 200);
    assert!(up, "{:?}\n{}", https("/productpage"), gw.logs());
    assert_eq!(https("/productpage").1, "productpage");
    assert_eq!(https("/anything").1, "reviews-v2");
}

/// Mesh routing with the Gateway API (GAMMA): an HTTPRoute whose parent is the Service `b`
/// routes the sidecars' traffic to b: a header sends it to `b-v2`, the rest to `b-v1`.
#[test]
fn gamma_httproute_routes_mesh_traffic() {
    if !need_root("gateway") {
        return;
    }
    let mesh = Mesh::new();
    let svc = |name: &str, vip: u8, host: Option<u8>| {
        let mut y = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  clusterIP: {vip}\n  selector: {{app: {name}}}\n  ports: [{{name: http, port: 8080}}]\n---\n",
            vip = mesh.vip(vip),
        );
        if let Some(h) = host {
            y.push_str(&format!(
                "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}}}\nspec:\n  address: {addr}\n  labels: {{app: {name}}}\n---\n",
                addr = mesh.addr(h),
            ));
        }
        y
    };
    let config = format!(
        "{b}{v1}{v2}\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: b}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: b}}]\n  rules:\n\
         \x20 - matches: [{{headers: [{{name: x-version, value: v2}}]}}]\n    backendRefs: [{{name: b-v2, port: 8080}}]\n\
         \x20 - backendRefs: [{{name: b-v1, port: 8080}}]\n",
        b = svc("b", 0, None),
        v1 = svc("b-v1", 1, Some(11)),
        v2 = svc("b-v2", 2, Some(12)),
    );
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "gamma.yaml", &config);
    let cp = ControlPlane::start_with(&mesh, dir.path(), &["--debounce-ms", "50"]);
    assert_eq!(support::config_errors(&cp), serde_json::json!([]));
    let _v1 = mesh.start_pod(PodSpec::new("b-v1").host(11).control_plane(&cp));
    let _v2 = mesh.start_pod(PodSpec::new("b-v2").host(12).control_plane(&cp));
    let a = mesh.start_pod(PodSpec::new("a").host(10).control_plane(&cp));
    a.hosts(&[("b", &mesh.vip(0).to_string())]);
    let who = |extra: &[&str]| {
        let mut args = vec!["-m", "5"];
        args.extend_from_slice(extra);
        let (code, body) = a.curl("http://b:8080/", &args);
        (code, answered_by(&body))
    };
    let up = wait_until(READY, || who(&[]).0 == 200);
    assert!(up, "{:?}\n{}\n{}", who(&[]), cp.log_tail(20), a.logs());
    for _ in 0..5 {
        assert_eq!(who(&[]), (200, "b-v1".to_string()));
        assert_eq!(who(&["-H", "x-version: v2"]), (200, "b-v2".to_string()));
    }
}

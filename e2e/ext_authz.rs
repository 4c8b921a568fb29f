//! CUSTOM authorization end to end: MeshConfig `extensionProviders` name ext_authz servers,
//! CUSTOM AuthorizationPolicies send the requests they select (and only those) to them, and
//! the sidecar enforces the answer. Real Envoy sidecars, an HTTP provider (the test app in
//! `--ext-authz` mode, in a pod) and a gRPC provider (Envoy's `Authorization` service on
//! tonic, in this test process, reached across the bridge).
#[path = "support/mod.rs"]
mod support;

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{
    check_response::HttpResponse, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{need_root, wait_until, write_file as write, ControlPlane, Mesh, Pod, PodSpec};

const READY: Duration = Duration::from_secs(40);
const HOST_B: &str = "b.default.svc.cluster.local";
const HOST_T: &str = "t.default.svc.cluster.local";
const GRPC_PORT: u16 = 19191;

/// The gRPC provider: `x-ext-authz: allow` → OK, adding `x-ext-authz-grpc: allowed` and
/// removing `x-remove-me`; `quota` → 429; anything else → 418 with a body. Counts checks.
#[derive(Default)]
struct Provider {
    checks: AtomicU64,
}

struct Server(Arc<Provider>);

#[tonic::async_trait]
impl Authorization for Server {
    async fn check(
        &self,
        req: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        self.0.checks.fetch_add(1, Ordering::SeqCst);
        let attrs = req.into_inner().attributes.unwrap_or_default();
        let principal = attrs.source.map(|s| s.principal).unwrap_or_default();
        let http = attrs.request.and_then(|r| r.http);
        let verdict = match &http {
            // A TCP connection (network ext_authz): only service account a gets through.
            None if principal.ends_with("/sa/a") => "allow".to_string(),
            None => "deny".to_string(),
            // includeRequestBodyInCheck: the body decides.
            Some(h) if h.headers.get("x-ext-authz").map(String::as_str) == Some("body") => {
                if h.body == "let me in" {
                    "allow"
                } else {
                    "deny"
                }
                .to_string()
            }
            Some(h) => h.headers.get("x-ext-authz").cloned().unwrap_or_default(),
        };
        let header = |k: &str, v: &str| HeaderValueOption {
            header: Some(HeaderValue {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let resp = match verdict.as_str() {
            "allow" => CheckResponse {
                status: Some(RpcStatus {
                    code: 0,
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![header("x-ext-authz-grpc", "allowed")],
                    headers_to_remove: vec!["x-remove-me".into()],
                    ..Default::default()
                })),
                ..Default::default()
            },
            other => CheckResponse {
                status: Some(RpcStatus {
                    code: 7, // PERMISSION_DENIED
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: if other == "quota" { 429 } else { 418 },
                    }),
                    headers: vec![header("x-ext-authz-grpc", "denied")],
                    body: "denied by the grpc provider".into(),
                })),
                ..Default::default()
            },
        };
        Ok(tonic::Response::new(resp))
    }
}

/// The gRPC provider serving on `addr` until the returned sender is dropped.
fn start_grpc(addr: std::net::SocketAddr, p: Arc<Provider>) -> tokio::sync::oneshot::Sender<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = loop {
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            };
            tonic::transport::Server::builder()
                .add_service(AuthorizationServer::new(Server(p)))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async move {
                        let _ = rx.await;
                    },
                )
                .await
                .unwrap();
        });
    });
    tx
}

fn mesh_config() -> String {
    format!(
        "extensionProviders:\n\
         - name: ext-http\n  envoyExtAuthzHttp:\n    service: ext-http.default.svc.cluster.local\n    port: 8000\n    pathPrefix: /check\n    includeRequestHeadersInCheck: [x-ext-authz]\n    includeAdditionalHeadersInCheck: {{x-from-mesh: \"yes\"}}\n    headersToUpstreamOnAllow: [x-ext-authz-check-result]\n    headersToDownstreamOnDeny: [x-ext-authz-check-result, x-ext-authz-saw]\n    headersToDownstreamOnAllow: [x-ext-authz-saw]\n\
         - name: ext-grpc\n  envoyExtAuthzGrpc:\n    service: ext-grpc.test\n    port: {GRPC_PORT}\n    timeout: 2s\n    includeRequestBodyInCheck: {{maxRequestBytes: 1024}}\n\
         - name: ext-grpc-open\n  envoyExtAuthzGrpc: {{service: ext-grpc.test, port: {GRPC_PORT}, timeout: 2s, failOpen: true}}\n\
         - name: ext-grpc-503\n  envoyExtAuthzGrpc: {{service: ext-grpc.test, port: {GRPC_PORT}, timeout: 2s, statusOnError: \"503\"}}\n\
         accessLogFile: /dev/stdout\n"
    )
}

fn registry(mesh: &Mesh) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec:\n  clusterIP: {vb}\n  selector: {{app: b}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: b-1}}\nspec:\n  address: {b}\n  serviceAccount: b\n  labels: {{app: b, security.istio.io/tlsMode: istio}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: ext-http}}\nspec:\n  clusterIP: {vh}\n  selector: {{app: ext-http}}\n  ports: [{{name: http, port: 8000}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: ext-http-1}}\nspec:\n  address: {h}\n  labels: {{app: ext-http}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ext-grpc}}\nspec:\n  hosts: [ext-grpc.test]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  ports: [{{name: grpc, number: {GRPC_PORT}, protocol: GRPC}}]\n  endpoints: [{{address: {gw}}}]\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: custom-http}}\nspec:\n  selector: {{matchLabels: {{app: b}}}}\n  action: CUSTOM\n  provider: {{name: ext-http}}\n  rules: [{{to: [{{operation: {{paths: [\"/http/*\"]}}}}]}}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: t}}\nspec:\n  clusterIP: {vt}\n  selector: {{app: t}}\n  ports: [{{name: tcp, port: 9000}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: t-1}}\nspec:\n  address: {t}\n  serviceAccount: t\n  labels: {{app: t, security.istio.io/tlsMode: istio}}\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: custom-grpc-tcp}}\nspec:\n  selector: {{matchLabels: {{app: t}}}}\n  action: CUSTOM\n  provider: {{name: ext-grpc}}\n  rules: [{{to: [{{operation: {{ports: [\"9000\"]}}}}]}}]\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: custom-grpc-open}}\nspec:\n  selector: {{matchLabels: {{app: b}}}}\n  action: CUSTOM\n  provider: {{name: ext-grpc-open}}\n  rules: [{{to: [{{operation: {{paths: [\"/grpc-open/*\"]}}}}]}}]\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: custom-grpc-503}}\nspec:\n  selector: {{matchLabels: {{app: b}}}}\n  action: CUSTOM\n  provider: {{name: ext-grpc-503}}\n  rules: [{{to: [{{operation: {{paths: [\"/grpc-503/*\"]}}}}]}}]\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: custom-grpc}}\nspec:\n  selector: {{matchLabels: {{app: b}}}}\n  action: CUSTOM\n  provider: {{name: ext-grpc}}\n  rules: [{{to: [{{operation: {{paths: [\"/grpc/*\"]}}}}]}}]\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-grpc-admin}}\nspec:\n  selector: {{matchLabels: {{app: b}}}}\n  action: DENY\n  rules: [{{to: [{{operation: {{paths: [\"/grpc/admin\"]}}}}]}}]\n",
        vb = mesh.vip(0),
        vh = mesh.vip(1),
        vt = mesh.vip(2),
        t = mesh.addr(13),
        b = mesh.addr(11),
        h = mesh.addr(12),
        gw = mesh.gateway(),
    )
}

/// A request from `a` to b through both sidecars: `headers` are `name: value` headers, or
/// curl options (`-i`, `-d BODY`) when they start with `-`.
fn get(a: &Pod, path: &str, headers: &[&str]) -> (u16, String) {
    let mut args = vec!["-m", "5"];
    let mut it = headers.iter();
    while let Some(h) = it.next() {
        if h.starts_with('-') {
            args.push(h);
            if *h == "-d" {
                args.extend(it.next());
            }
        } else {
            args.extend(["-H", h]);
        }
    }
    a.curl(&format!("http://{HOST_B}:8080{path}"), &args)
}

/// A response header's value (curl `-i` output: head, then body).
fn response_header(out: &str, name: &str) -> Option<String> {
    out.lines()
        .take_while(|l| !l.trim().is_empty())
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
}

fn upstream_header(body: &str, name: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["headers"][name].as_str().map(str::to_string)
}

#[test]
fn custom_policies_ask_external_providers() {
    if !need_root("ext_authz providers") {
        return;
    }
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config");
    std::fs::create_dir(&cfg).unwrap();
    write(&cfg, "registry.yaml", &registry(&mesh));
    let mesh_file = dir.path().join("mesh.yaml");
    std::fs::write(&mesh_file, mesh_config()).unwrap();
    let provider = Arc::new(Provider::default());
    let grpc_addr: std::net::SocketAddr =
        format!("{}:{GRPC_PORT}", mesh.gateway()).parse().unwrap();
    let mut grpc = Some(start_grpc(grpc_addr, provider.clone()));
    let cp = ControlPlane::start_with(
        &mesh,
        &cfg,
        &[
            "--debounce-ms",
            "50",
            "--mesh-config",
            mesh_file.to_str().unwrap(),
        ],
    );
    assert_eq!(
        support::config_errors(&cp),
        serde_json::json!([]),
        "config errors"
    );
    let b = mesh.start_pod(
        PodSpec::new("b")
            .host(11)
            .port(8080)
            .service_account("b")
            .label("app", "b")
            .secure(&cp),
    );
    let _ext = mesh.start_pod(
        PodSpec::new("ext-http")
            .host(12)
            .port(8000)
            .sidecar(false)
            .app_arg("--ext-authz"),
    );
    let _t = mesh.start_pod(
        PodSpec::new("t")
            .host(13)
            .port(9000)
            .service_account("t")
            .label("app", "t")
            .secure(&cp),
    );
    let a = mesh.start_pod(PodSpec::new("a").host(20).service_account("a").secure(&cp));
    let c = mesh.start_pod(PodSpec::new("c").host(21).service_account("c").secure(&cp));
    for p in [&a, &c] {
        p.hosts(&[
            (HOST_B, &mesh.vip(0).to_string()),
            (HOST_T, &mesh.vip(2).to_string()),
        ]);
    }
    assert!(
        wait_until(READY, || get(&a, "/other", &[]).0 == 200),
        "a never reached b: {:?}\n{}",
        get(&a, "/other", &[]),
        cp.log_tail(20)
    );

    // Only requests a CUSTOM rule selects are checked.
    let before = provider.checks.load(Ordering::SeqCst);
    assert_eq!(get(&a, "/other", &["x-ext-authz: deny"]).0, 200);
    assert_eq!(
        provider.checks.load(Ordering::SeqCst),
        before,
        "/other was sent to the provider"
    );

    // HTTP provider: allow adds its header upstream; deny answers with its status and body.
    let (code, body) = get(&a, "/http/x", &["x-ext-authz: allow"]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        upstream_header(&body, "x-ext-authz-check-result").as_deref(),
        Some("allowed"),
        "{body}"
    );
    let (code, body) = get(&a, "/http/x", &["x-ext-authz: deny"]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("\"denied_by\": \"ext-http\""), "{body}");
    let (code, _) = get(&a, "/http/x", &[]);
    assert_eq!(code, 403, "no verdict header: denied");
    // What the provider received (pathPrefix, includeAdditionalHeadersInCheck) comes back
    // to the client on allow (headersToDownstreamOnAllow) and on deny
    // (headersToDownstreamOnDeny).
    let seen = "path=/check/http/x;from-mesh=yes";
    let (code, out) = get(&a, "/http/x", &["x-ext-authz: allow", "-i"]);
    assert_eq!(code, 200, "{out}");
    assert_eq!(
        response_header(&out, "x-ext-authz-saw").as_deref(),
        Some(seen),
        "{out}"
    );
    let (code, out) = get(&a, "/http/x", &["x-ext-authz: deny", "-i"]);
    assert_eq!(code, 403, "{out}");
    assert_eq!(
        response_header(&out, "x-ext-authz-saw").as_deref(),
        Some(seen),
        "{out}"
    );
    assert_eq!(
        response_header(&out, "x-ext-authz-check-result").as_deref(),
        Some("denied"),
        "{out}"
    );

    // gRPC provider: header mutation on allow, status and body on deny, 429. Its first
    // call may find b's connection pool to the provider still cold (seen once as a
    // timeout on a loaded machine): wait for one answer before checking the details.
    assert!(
        wait_until(READY, || get(&a, "/grpc/x", &["x-ext-authz: allow"]).0
            == 200),
        "the gRPC provider never answered: {}",
        b.envoy_stats("ext_authz_1")
            .iter()
            .map(|(k, v)| format!("{k}: {v}\n"))
            .collect::<String>()
    );
    let (code, body) = get(&a, "/grpc/x", &["x-ext-authz: allow", "x-remove-me: 1"]);
    assert_eq!(
        code,
        200,
        "{body}\n{}",
        b.exec_as_proxy(&format!("curl -sv --http2-prior-knowledge -m 3 -X POST -H 'content-type: application/grpc' http://{grpc_addr}/envoy.service.auth.v3.Authorization/Check 2>&1")).describe()
    );
    assert_eq!(
        upstream_header(&body, "x-ext-authz-grpc").as_deref(),
        Some("allowed"),
        "{body}"
    );
    assert_eq!(upstream_header(&body, "x-remove-me"), None, "{body}");
    let (code, body) = get(&a, "/grpc/x", &["x-ext-authz: no"]);
    assert_eq!((code, body.trim()), (418, "denied by the grpc provider"));
    assert_eq!(get(&a, "/grpc/x", &["x-ext-authz: quota"]).0, 429);
    // includeRequestBodyInCheck: the provider sees the body.
    for (body, want) in [("let me in", 200), ("nope", 418)] {
        let (code, out) = get(&a, "/grpc/x", &["x-ext-authz: body", "-d", body]);
        assert_eq!(code, want, "body {body:?}: {out}");
    }
    // A TCP port: the gRPC provider checks the connection (network ext_authz) and lets
    // only service account a through.
    let tcp = |p: &Pod| p.curl(&format!("http://{HOST_T}:9000/"), &["-m", "5"]).0;
    assert!(
        wait_until(READY, || tcp(&a) == 200),
        "a never reached t through the provider: {}",
        tcp(&a)
    );
    assert_eq!(tcp(&c), 0, "c's connection must be refused");
    // The HTTP provider cannot check a TCP connection: what its policy selects is refused.
    write(
        &cfg,
        "custom-http-tcp.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: custom-http-tcp}\nspec:\n  selector: {matchLabels: {app: t}}\n  action: CUSTOM\n  provider: {name: ext-http}\n  rules: [{to: [{operation: {ports: [\"9000\"]}}]}]\n",
    );
    assert!(
        wait_until(READY, || tcp(&a) == 0),
        "an HTTP provider's TCP policy must refuse: {}",
        tcp(&a)
    );
    // CUSTOM is asked first, then DENY: an allowed request can still be denied.
    assert_eq!(get(&a, "/grpc/admin", &["x-ext-authz: allow"]).0, 403);

    // Provider down: fail closed (statusOnError 403); back up: passes again.
    drop(grpc.take());
    assert!(
        wait_until(READY, || get(&a, "/grpc/x", &["x-ext-authz: allow"]).0
            == 403),
        "with the provider down the request must be denied: {:?}",
        get(&a, "/grpc/x", &["x-ext-authz: allow"])
    );
    // The same provider with failOpen lets requests through; with statusOnError, its code.
    assert_eq!(
        get(&a, "/grpc-open/x", &["x-ext-authz: deny"]).0,
        200,
        "failOpen"
    );
    assert_eq!(
        get(&a, "/grpc-503/x", &["x-ext-authz: allow"]).0,
        503,
        "statusOnError"
    );
    let _grpc = start_grpc(grpc_addr, provider.clone());
    assert!(
        wait_until(READY, || get(&a, "/grpc/x", &["x-ext-authz: allow"]).0
            == 200),
        "provider back up: {:?}",
        get(&a, "/grpc/x", &["x-ext-authz: allow"])
    );
}

const BUILTIN_POLICIES: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: central\n  annotations:\n    authz.pilotfish.io/deny-status: \"418\"\n    authz.pilotfish.io/deny-body: teapot says no\n    authz.pilotfish.io/request-headers-to-add: x-checked-by=pilotfish\n    authz.pilotfish.io/request-headers-to-remove: x-remove-me\n    authz.pilotfish.io/rate-limit: 3/m\n    authz.pilotfish.io/rate-limit-by: source,path\nspec:\n  selector: {matchLabels: {app: b}}\n  action: CUSTOM\n  provider: {name: pilotfish}\n  rules: [{to: [{operation: {paths: [\"/api/*\"]}}]}]\n---\n\
    apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-c-admin}\nspec:\n  selector: {matchLabels: {app: b}}\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/c]}}], to: [{operation: {paths: [\"/api/admin\"]}}]}]\n";

fn metric(cp: &ControlPlane, line_start: &str) -> u64 {
    let (_, m) = cp.get("/metrics").unwrap();
    m.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

#[test]
fn builtin_provider_decides_centrally() {
    if !need_root("built-in ext_authz provider") {
        return;
    }
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    let reg = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec:\n  clusterIP: {vb}\n  selector: {{app: b}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: b-1}}\nspec:\n  address: {b}\n  serviceAccount: b\n  labels: {{app: b, security.istio.io/tlsMode: istio}}\n---\n{BUILTIN_POLICIES}",
        vb = mesh.vip(0),
        b = mesh.addr(11)
    );
    write(dir.path(), "config.yaml", &reg);
    let cp = ControlPlane::start_with(&mesh, dir.path(), &["--debounce-ms", "50"]);
    assert_eq!(
        support::config_errors(&cp),
        serde_json::json!([]),
        "config errors"
    );
    let b = mesh.start_pod(
        PodSpec::new("b")
            .host(11)
            .port(8080)
            .service_account("b")
            .label("app", "b")
            .secure(&cp),
    );
    let a = mesh.start_pod(PodSpec::new("a").host(20).service_account("a").secure(&cp));
    let c = mesh.start_pod(PodSpec::new("c").host(21).service_account("c").secure(&cp));
    for p in [&a, &c] {
        p.hosts(&[(HOST_B, &mesh.vip(0).to_string())]);
    }
    assert!(
        wait_until(READY, || get(&a, "/other", &[]).0 == 200),
        "a never reached b: {:?}\n{}",
        get(&a, "/other", &[]),
        cp.log_tail(20)
    );
    let checks = || {
        ["allow", "deny", "quota"]
            .iter()
            .map(|r| {
                metric(
                    &cp,
                    &format!("pilotfish_authz_checks_total{{result=\"{r}\"}}"),
                )
            })
            .sum::<u64>()
    };
    let before = checks();
    assert_eq!(get(&a, "/other", &[]).0, 200);
    assert_eq!(
        checks(),
        before,
        "/other is not selected by the CUSTOM rule"
    );

    // The server sidecar's cluster to pilotfish's provider (b checks the requests it
    // receives) must have warmed (its client certificate arrives over SDS) before a check
    // can go through: until then Envoy fails the check closed.
    for p in [&b] {
        assert!(
            wait_until(READY, || p
                .envoy_stat("cluster.pilotfish-authz.membership_healthy")
                .is_some_and(|n| n >= 1)),
            "pod {}: the pilotfish-authz cluster never warmed",
            p.name
        );
    }
    // Allowed centrally: the headers are changed on the way to the app.
    let (code, body) = get(&a, "/api/x", &["x-remove-me: 1"]);
    assert_eq!(
        code,
        200,
        "{body}\n{:?}\n{}",
        b.envoy_stats(
            "pilotfish-authz.upstream_(rq|cx)_total|pilotfish-authz.membership|ext_authz|rbac"
        ),
        cp.log_tail(20)
    );
    assert_eq!(
        upstream_header(&body, "x-checked-by").as_deref(),
        Some("pilotfish"),
        "{body}"
    );
    assert_eq!(upstream_header(&body, "x-remove-me"), None, "{body}");
    // Denied centrally (the mesh's DENY policy) with the policy's status and body.
    let (code, body) = get(&c, "/api/admin", &[]);
    assert_eq!((code, body.trim()), (418, "teapot says no"));
    // The rate quota: 3 per minute per source and path; a spent one above.
    let codes: Vec<u16> = (0..4).map(|_| get(&a, "/api/x", &[]).0).collect();
    assert_eq!(codes, vec![200, 200, 429, 429], "quota per source and path");
    assert_eq!(
        get(&a, "/api/y", &[]).0,
        200,
        "another path has its own bucket"
    );
    assert_eq!(
        get(&c, "/api/x", &[]).0,
        200,
        "another source has its own bucket"
    );
    assert!(metric(&cp, "pilotfish_authz_checks_total{result=\"quota\"}") >= 2);
    assert!(metric(&cp, "pilotfish_authz_checks_total{result=\"deny\"}") >= 1);
    assert!(metric(&cp, "pilotfish_authz_check_duration_seconds_count") >= 7);

    // The TLS port answers Check only to a caller with a mesh certificate.
    let refused = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let ch = cp.secure_channel().await;
        let client =
            envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(ch);
        let first = client.clone().check(CheckRequest::default()).await.unwrap_err();
        // A busy sidecar's checks on one connection (3,000, 50 at a time) are all answered
        // by the service: the xDS port's per-connection limits (xDS streams, resets) do not
        // cut them.
        let mut codes = std::collections::BTreeMap::new();
        for _ in 0..60 {
            let batch = (0..50).map(|_| {
                let mut c = client.clone();
                async move { c.check(CheckRequest::default()).await.unwrap_err().code() }
            });
            for code in futures::future::join_all(batch).await {
                *codes.entry(format!("{code:?}")).or_insert(0) += 1;
            }
        }
        (first, codes)
    });
    let (refused, codes) = refused;
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    println!("3,000 checks on one TLS connection: {codes:?}");
    assert_eq!(
        codes.get("Unauthenticated"),
        Some(&3000),
        "checks cut on a busy connection: {codes:?}"
    );
}

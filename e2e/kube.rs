//! The Kubernetes source against a real kube-apiserver and etcd (`support::kube`): Istio's
//! CRDs from `crds/` apply, Istio YAML applies unchanged with kubectl, and pilotfish
//! (outside the cluster, with a kubeconfig, next to a config directory) serves what was
//! created, updated and deleted; a bad object is an error naming it while its last good
//! version stays served.
#[path = "support/mod.rs"]
mod support;

use serde_json::Value;
use std::time::Duration;
use support::kube::KubeApi;
use support::{wait_until, write_file, ControlPlane};

const READY: Duration = Duration::from_secs(30);

#[test]
fn crds_dir_is_current() {
    let file = support::repo_root().join("crds").join("istio.yaml");
    let have = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        have == pilotfish::api::crds::render(),
        "crds/istio.yaml is stale: run `pilotfish crds > crds/istio.yaml`"
    );
}

/// The served objects (`/debug/configz`): (kind, namespace, name) → (origin, spec).
fn served(cp: &ControlPlane) -> (Vec<(String, String, String, String, Value)>, Value) {
    let Ok((_, text)) = cp.get("/debug/configz") else {
        return (vec![], Value::Null);
    };
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let objects = v["objects"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|o| {
                    let s = |k: &str| o[k].as_str().unwrap_or("").to_string();
                    (
                        s("kind"),
                        s("namespace"),
                        s("name"),
                        s("file"),
                        o["spec"].clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (objects, v["errors"].clone())
}

fn find(
    objects: &[(String, String, String, String, Value)],
    kind: &str,
    name: &str,
) -> Option<(String, Value)> {
    objects
        .iter()
        .find(|o| o.0 == kind && o.2 == name)
        .map(|o| (o.3.clone(), o.4.clone()))
}

/// Applies `crds/istio.yaml` and waits until the API server serves every kind.
fn with_crds(api: &KubeApi) {
    let crds = support::repo_root().join("crds").join("istio.yaml");
    let o = api.kubectl(&["apply", "-f", crds.to_str().unwrap()]);
    assert!(o.ok(), "CRDs refused: {}", o.describe());
    // `kubectl wait` fails outright on a CRD whose status the API server has not written yet
    // (".status.conditions accessor error"), so it is retried.
    let mut o = Default::default();
    let established = wait_until(Duration::from_secs(60), || {
        o = api.kubectl(&[
            "wait",
            "--for",
            "condition=established",
            "--timeout=30s",
            "crd",
            "--all",
        ]);
        o.ok()
    });
    assert!(established, "CRDs not established: {}", o.describe());
}

/// pilotfish with the API server as a source and its webhooks on a free loopback port that
/// the API server calls by URL (`extra`: more flags).
fn with_webhooks(api: &KubeApi, dir: &std::path::Path, extra: &[&str]) -> ControlPlane {
    // pilotfish's own namespace (its leader Lease and CA Secret live there).
    let _ = api.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: pilotfish-system}\n");
    let port = support::mesh::free_port(std::net::Ipv4Addr::LOCALHOST);
    let addr = format!("127.0.0.1:{port}");
    let url = format!("https://{addr}/validate");
    let mut args = vec![
        "--kubeconfig",
        api.kubeconfig.to_str().unwrap(),
        "--webhook-address",
        &addr,
        "--webhook-url",
        &url,
        "--tls-dns-names",
        "127.0.0.1",
    ];
    args.extend_from_slice(extra);
    ControlPlane::start_local(dir, &args)
}

const REVIEWS: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: default}\nspec:\n  selector: {app: reviews}\n  ports: [{name: http, port: 9080}]\n---\n\
apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\nspec:\n  host: reviews\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n---\n\
apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 90}\n    - {destination: {host: reviews, subset: v2}, weight: 10}\n";

#[test]
fn kubernetes_source_reflects_creates_updates_and_deletes() {
    let api = KubeApi::start();
    with_crds(&api);
    // Istio's YAML applies unchanged (a v1beta1 VirtualService too).
    let o = api.apply(REVIEWS);
    assert!(o.ok(), "Istio YAML refused: {}", o.describe());
    let bookinfo = support::repo_root().join("examples").join("bookinfo");
    let o = api.kubectl(&[
        "apply",
        "--dry-run=server",
        "-f",
        bookinfo.to_str().unwrap(),
    ]);
    assert!(o.ok(), "examples/bookinfo refused: {}", o.describe());

    // pilotfish with both sources: the directory's object and the cluster's (its own
    // namespace holds the leader Lease: the leader writes status).
    let o = api.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: pilotfish-system}\n");
    assert!(o.ok(), "{}", o.describe());
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        "ratings.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: ratings}\nspec:\n  ports: [{name: http, port: 9080}]\n",
    );
    let cp = ControlPlane::start_local(
        dir.path(),
        &[
            "--kubeconfig",
            api.kubeconfig.to_str().unwrap(),
            "--debounce-ms",
            "50",
            // The webhooks are another test's: off here.
            "--webhook-address",
            "",
        ],
    );
    let ok = wait_until(READY, || {
        let (objs, _) = served(&cp);
        find(&objs, "VirtualService", "reviews").is_some()
            && find(&objs, "DestinationRule", "reviews").is_some()
            && find(&objs, "Service", "reviews").is_some()
            && find(&objs, "Service", "ratings").is_some()
    });
    assert!(
        ok,
        "the cluster's objects are not served\n{}",
        cp.log_tail(30)
    );
    assert_eq!(cp.get("/healthz").map(|r| r.0), Ok(200), "liveness");
    let (objs, errors) = served(&cp);
    let (origin, _) = find(&objs, "VirtualService", "reviews").unwrap();
    assert_eq!(origin, "kube:VirtualService/default/reviews");
    assert_eq!(errors, Value::Array(vec![]), "errors: {errors}");

    // Update: the new weights are served.
    let t = std::time::Instant::now();
    let o = api.apply(
        &REVIEWS
            .replace("weight: 90", "weight: 50")
            .replace("weight: 10", "weight: 50"),
    );
    assert!(o.ok(), "{}", o.describe());
    let updated = wait_until(READY, || {
        let (objs, _) = served(&cp);
        find(&objs, "VirtualService", "reviews")
            .is_some_and(|(_, spec)| spec.to_string().contains("\"weight\":50"))
    });
    assert!(updated, "the update is not served\n{}", cp.log_tail(20));
    println!(
        "kubectl apply of an update to served config: {:?} (kubectl included)",
        t.elapsed()
    );

    // The CRD schemas come from pilotfish's types: the API server itself refuses a field of
    // the wrong type (no webhook runs in this test), names it, and stores nothing.
    let o = api.apply(
        &REVIEWS
            .replace("weight: 90", "weight: 50")
            .replace("weight: 10", "weight: 50")
            .replace("subset: v2}", "subset: v2, port: {number: seventy}}"),
    );
    assert!(
        !o.ok(),
        "a string port number was accepted: {}",
        o.describe()
    );
    assert!(
        o.describe()
            .contains("spec.http[0].route[1].destination.port.number"),
        "the API server's refusal names the field: {}",
        o.describe()
    );
    let o = api.kubectl(&["explain", "virtualservices.spec.http.route.destination"]);
    assert!(
        o.ok() && o.stdout.contains("subset"),
        "kubectl explain: {}",
        o.describe()
    );

    // A field pilotfish does not know is kept by the schema (not pruned on the way) and
    // refused by pilotfish: an error naming the object and the field; the last good version
    // stays served.
    let o = api.apply(
        &REVIEWS
            .replace("weight: 90", "weight: 50")
            .replace("weight: 10", "weight: 50")
            .replace("subset: v2}", "subset: v2, colour: red}"),
    );
    assert!(o.ok(), "{}", o.describe());
    let reported = wait_until(READY, || {
        let (_, errors) = served(&cp);
        errors
            .to_string()
            .contains("kube:VirtualService/default/reviews")
    });
    let (objs, errors) = served(&cp);
    println!("bad object reported: {errors}");
    // ... and on the object itself, for `kubectl get -o yaml` (the leader's status write).
    let accepted = |vs: &str| {
        let o = api.kubectl(&[
            "get",
            "virtualservice",
            vs,
            "-o",
            "jsonpath={.metadata.generation} {.status.observedGeneration} {.status.conditions[?(@.type==\"Accepted\")].status} {.status.conditions[?(@.type==\"Accepted\")].message}",
        ]);
        o.stdout
    };
    let mut st = String::new();
    let written = wait_until(READY, || {
        st = accepted("reviews");
        st.starts_with("3 3 False") && st.contains("colour")
    });
    println!("status of the bad object: {st}");
    assert!(
        written && st.contains("the last accepted version is still served"),
        "the object's status does not say it was refused: {st:?}\n{}",
        cp.log_tail(20)
    );
    assert!(reported, "the bad object is not reported: {errors}");
    assert!(
        errors.to_string().contains("colour"),
        "the field is named: {errors}"
    );
    assert!(
        find(&objs, "VirtualService", "reviews")
            .is_some_and(|(_, spec)| spec.to_string().contains("\"weight\":50")),
        "the last good version is not served"
    );

    // The API server goes away: the served config stays as it was (and the watch failure
    // is logged once); once it is back, changes flow again.
    let args = api.kill_apiserver();
    std::thread::sleep(Duration::from_secs(2));
    let (objs, _) = served(&cp);
    assert!(
        find(&objs, "VirtualService", "reviews")
            .is_some_and(|(_, spec)| spec.to_string().contains("\"weight\":50")),
        "config lost while the API server was down"
    );
    api.start_apiserver(&args);
    let o = api.apply(
        &REVIEWS
            .replace("weight: 90", "weight: 70")
            .replace("weight: 10", "weight: 30"),
    );
    assert!(o.ok(), "{}", o.describe());
    let resumed = wait_until(Duration::from_secs(60), || {
        let (objs, _) = served(&cp);
        find(&objs, "VirtualService", "reviews")
            .is_some_and(|(_, spec)| spec.to_string().contains("\"weight\":70"))
    });
    assert!(
        resumed,
        "changes after the API server restart are not served\n{}",
        cp.log_tail(30)
    );
    let mut st = String::new();
    let written = wait_until(READY, || {
        st = accepted("reviews");
        st.starts_with("4 4 True")
    });
    assert!(written, "the good version's status: {st:?}");
    let log = std::fs::read_to_string(cp.log_path()).unwrap_or_default();
    assert!(
        log.contains("Kubernetes watch failed"),
        "the outage is not logged"
    );

    // Delete: gone from the served config; the directory's object stays.
    let o = api.kubectl(&["delete", "virtualservice", "reviews"]);
    assert!(o.ok(), "{}", o.describe());
    let gone = wait_until(READY, || {
        let (objs, _) = served(&cp);
        find(&objs, "VirtualService", "reviews").is_none()
            && find(&objs, "Service", "ratings").is_some()
    });
    assert!(gone, "the delete is not reflected\n{}", cp.log_tail(20));
    let (_, errors) = served(&cp);
    assert!(
        !errors
            .to_string()
            .contains("VirtualService/default/reviews"),
        "the deleted object's error stays: {errors}"
    );
}

/// The validating webhook: the API server calls pilotfish over TLS (caBundle kept by
/// pilotfish) and `kubectl apply` of an invalid Istio object fails with pilotfish's message;
/// a valid one passes; with pilotfish gone, `failurePolicy: Fail` keeps refusing.
#[test]
fn invalid_istio_config_is_refused_at_kubectl_apply() {
    let api = KubeApi::start();
    with_crds(&api);
    let dir = tempfile::tempdir().unwrap();
    let mut cp = with_webhooks(&api, dir.path(), &["--root-rotation-grace", "2s"]);
    let configured = wait_until(READY, || {
        api.kubectl(&[
            "get",
            "validatingwebhookconfiguration",
            "pilotfish-validator",
        ])
        .ok()
    });
    assert!(configured, "no webhook configuration\n{}", cp.log_tail(20));

    // The same error `pilotfish validate` prints, minus the file name (a value the CRD
    // schema's types let through: a string that is no duration).
    let bad = REVIEWS.replace("  - route:", "  - timeout: ten\n    route:");
    let o = api.apply(&bad);
    println!("kubectl apply of a bad VirtualService: {}", o.stderr.trim());
    assert!(!o.ok(), "the bad VirtualService was stored");
    assert!(
        o.stderr
            .contains("admission webhook \"validation.pilotfish.io\" denied the request")
            && o.stderr.contains(
                "VirtualService default/reviews: spec.http[0].timeout: invalid duration \"ten\""
            ),
        "{}",
        o.describe()
    );
    // An unknown field, which the CRD schema keeps: refused too.
    let typo = REVIEWS.replace("  hosts: [reviews]", "  hosts: [reviews]\n  htpp: []");
    let o = api.apply(&typo);
    assert!(!o.ok() && o.stderr.contains("htpp"), "{}", o.describe());
    // Valid config passes (Service, DestinationRule, VirtualService).
    let o = api.apply(REVIEWS);
    assert!(o.ok(), "valid Istio YAML refused: {}", o.describe());

    // Oversized and malformed reviews are refused by the webhook itself.
    let jsonpath = |field: &str| {
        let o = api.kubectl(&[
            "get",
            "validatingwebhookconfiguration",
            "pilotfish-validator",
            "-o",
            &format!("jsonpath={{.webhooks[0].clientConfig.{field}}}"),
        ]);
        o.stdout.trim().to_string()
    };
    let url = jsonpath("url");
    let big = dir.path().join("big.json");
    std::fs::write(&big, vec![b' '; 5 << 20]).unwrap();
    let code = |data: &str| {
        support::run(
            std::process::Command::new("curl").args([
                "-sk",
                "--http1.1",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "content-type: application/json",
                "--data-binary",
                data,
                &url,
            ]),
            Duration::from_secs(30),
        )
        .stdout
    };
    assert_eq!(
        code(&format!("@{}", big.display())),
        "413",
        "a 5 MiB review"
    );
    assert_eq!(
        code("{not json"),
        "200",
        "garbage is answered (refused), not a crash"
    );
    // A root rotation: pilotfish re-applies the configuration with the new roots.
    let before = jsonpath("caBundle");
    let o = support::run(
        std::process::Command::new(support::pilotfish_bin())
            .arg("rotate-root")
            .arg("--state-dir")
            .arg(cp.state_dir()),
        Duration::from_secs(30),
    );
    assert!(o.ok(), "{}", o.describe());
    assert!(
        wait_until(READY, || jsonpath("caBundle") != before),
        "caBundle not re-applied after a root rotation\n{}",
        cp.log_tail(20)
    );

    // pilotfish gone: fail closed.
    cp.kill();
    let o = api.apply(
        &REVIEWS
            .replace("weight: 90", "weight: 80")
            .replace("weight: 10", "weight: 20"),
    );
    assert!(
        !o.ok(),
        "stored while the webhook was down (failurePolicy Fail)"
    );
    println!("with pilotfish down: {}", o.stderr.trim());
}

/// Sidecar injection: a pod created in a namespace labelled `istio-injection=enabled`
/// comes back from the API server with the init container, the Envoy container (its
/// bootstrap inline, naming the pod through the downward API) and the projected token; an
/// opted-out pod and a pod of an unlabelled namespace come back as they were.
#[test]
fn pods_in_labelled_namespaces_get_a_sidecar() {
    let api = KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let cp = with_webhooks(
        &api,
        dir.path(),
        &["--injection-token-audience", "pilotfish-test"],
    );
    let configured = wait_until(READY, || {
        api.kubectl(&["get", "mutatingwebhookconfiguration", "pilotfish-injector"])
            .ok()
    });
    assert!(configured, "no injector configuration\n{}", cp.log_tail(20));
    let o = api.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio-injection: enabled}}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n",
    );
    assert!(o.ok(), "{}", o.describe());
    let pod = |ns: &str, name: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: web, version: v1}}{extra}}}\nspec:\n  serviceAccountName: default\n  containers: [{{name: app, image: registry.invalid/app:1}}]\n"
        )
    };
    // The service account must exist for a pod to be admitted.
    for ns in ["shop", "plain"] {
        let _ = api.kubectl(&["create", "serviceaccount", "default", "-n", ns]);
    }
    let o = api.apply(
        &(pod("shop", "web-1", "")
            + "---\n"
            + &pod(
                "shop",
                "web-2",
                ", annotations: {sidecar.istio.io/inject: \"false\"}",
            )
            + "---\n"
            + &pod("plain", "web-3", "")),
    );
    assert!(o.ok(), "pods refused: {}", o.describe());
    let get = |ns: &str, name: &str| -> Value {
        let o = api.kubectl(&["get", "pod", name, "-n", ns, "-o", "json"]);
        assert!(o.ok(), "{}", o.describe());
        serde_json::from_str(&o.stdout).unwrap()
    };
    let names = |p: &Value, key: &str| -> Vec<String> {
        p["spec"][key]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| c["name"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let injected = get("shop", "web-1");
    assert_eq!(names(&injected, "containers"), ["app", "istio-proxy"]);
    assert_eq!(names(&injected, "initContainers"), ["istio-init"]);
    let proxy = &injected["spec"]["containers"][1];
    assert_eq!(proxy["image"], "envoyproxy/envoy:v1.40.0");
    let args: Vec<&str> = proxy["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "--config-yaml");
    let bootstrap: Value = serde_json::from_str(args[1]).expect("the bootstrap is JSON");
    assert_eq!(
        bootstrap["node"]["id"],
        "sidecar~$(INSTANCE_IP)~$(POD_NAME).$(POD_NAMESPACE)~$(POD_NAMESPACE).svc.cluster.local"
    );
    assert_eq!(bootstrap["node"]["metadata"]["NAMESPACE"], "shop");
    assert_eq!(bootstrap["node"]["metadata"]["LABELS"]["app"], "web");
    assert_eq!(
        bootstrap["dynamic_resources"]["ads_config"]["api_type"],
        "DELTA_GRPC"
    );
    let grpc = &bootstrap["dynamic_resources"]["ads_config"]["grpc_services"][0]["google_grpc"];
    assert!(
        grpc["channel_credentials"]["ssl_credentials"]["root_certs"]["inline_string"]
            .as_str()
            .is_some_and(|r| r.contains("BEGIN CERTIFICATE")),
        "the roots travel inline"
    );
    let env: Vec<&str> = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(env, ["POD_NAME", "POD_NAMESPACE", "INSTANCE_IP"]);
    let token = injected["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "pilotfish-token")
        .expect("token volume");
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "pilotfish-test"
    );
    assert!(injected["metadata"]["annotations"]["sidecar.istio.io/status"].is_string());
    // Opted out, and not in a labelled namespace: untouched.
    for (ns, name) in [("shop", "web-2"), ("plain", "web-3")] {
        let p = get(ns, name);
        assert_eq!(names(&p, "containers"), ["app"], "{ns}/{name} was injected");
        assert!(names(&p, "initContainers").is_empty());
    }
    println!(
        "injected: {:?} + {:?}",
        names(&injected, "initContainers"),
        names(&injected, "containers")
    );
}

/// Proxy authentication with TokenReview: a projected token from the TokenRequest API (the
/// kind injection mounts) authenticates a stream on the TLS port as its service account,
/// which then gets its own certificate over SDS; a token for another audience, or a node
/// claiming another service account than its token's, is refused.
#[test]
fn projected_tokens_authenticate_as_their_service_account() {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as PbValue};
    use prost::Message;
    let api = KubeApi::start();
    let o = api.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n");
    assert!(o.ok(), "{}", o.describe());
    for sa in ["web", "db"] {
        let o = api.kubectl(&["create", "serviceaccount", sa, "-n", "shop"]);
        assert!(o.ok(), "{}", o.describe());
    }
    let token = |sa: &str, aud: &str| {
        let o = api.kubectl(&["create", "token", sa, "-n", "shop", "--audience", aud]);
        assert!(o.ok(), "{}", o.describe());
        o.stdout.trim().to_string()
    };
    let (web, other_audience) = (token("web", "pilotfish"), token("web", "somebody-else"));
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_local(
        dir.path(),
        &[
            "--kubeconfig",
            api.kubeconfig.to_str().unwrap(),
            "--webhook-address",
            "",
        ],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    // One SDS request on the TLS port with `token`, the node claiming shop/`sa`: the first
    // answer (the certificate's SPIFFE ID) or the refusal.
    let ask = |token: String, sa: &str| -> Result<String, tonic::Status> {
        let sa = sa.to_string();
        let cp = &cp;
        rt.block_on(async move {
            let ch = cp.secure_channel().await;
            let s = |v: &str| PbValue {
                kind: Some(Kind::StringValue(v.into())),
            };
            let node = Node {
                id: "sidecar~10.1.0.5~web-1.shop~shop.svc.cluster.local".into(),
                metadata: Some(Struct {
                    fields: [
                        ("NAMESPACE".to_string(), s("shop")),
                        ("SERVICE_ACCOUNT".to_string(), s(&sa)),
                    ]
                    .into(),
                }),
                ..Default::default()
            };
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(DiscoveryRequest {
                node: Some(node),
                type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
                    .into(),
                resource_names: vec!["default".into()],
                ..Default::default()
            })
            .await
            .unwrap();
            let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            let mut s = AggregatedDiscoveryServiceClient::new(ch)
                .stream_aggregated_resources(req)
                .await?
                .into_inner();
            let r = tokio::time::timeout(Duration::from_secs(10), s.message())
                .await
                .map_err(|_| tonic::Status::deadline_exceeded("no answer"))??
                .ok_or_else(|| tonic::Status::aborted("stream ended"))?;
            let sec = Secret::decode(r.resources[0].value.as_slice()).unwrap();
            let Some(secret::Type::TlsCertificate(t)) = sec.r#type else {
                return Err(tonic::Status::internal("not a certificate"));
            };
            let pem = match t.certificate_chain.unwrap().specifier.unwrap() {
                envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString(
                    s,
                ) => s,
                _ => return Err(tonic::Status::internal("not inline")),
            };
            let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
            let c = p.parse_x509().unwrap();
            let san = c.subject_alternative_name().unwrap().unwrap();
            Ok(san
                .value
                .general_names
                .iter()
                .find_map(|g| match g {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .unwrap_or_default())
        })
    };
    let got = ask(web.clone(), "web");
    println!("projected token for shop/web: {got:?}");
    assert_eq!(got.unwrap(), "spiffe://cluster.local/ns/shop/sa/web");
    let wrong_audience = ask(other_audience, "web").unwrap_err();
    assert_eq!(
        wrong_audience.code(),
        tonic::Code::Unauthenticated,
        "{wrong_audience:?}"
    );
    let wrong_claim = ask(web, "db").unwrap_err();
    assert_eq!(
        wrong_claim.code(),
        tonic::Code::PermissionDenied,
        "{wrong_claim:?}"
    );
    let garbage = ask("not-a-token".into(), "web").unwrap_err();
    assert_eq!(garbage.code(), tonic::Code::Unauthenticated, "{garbage:?}");
}

/// The Helm chart: `helm lint` and `helm template` pass, its CRDs are the repository's,
/// and a real API server accepts every rendered object (`kubectl apply --dry-run=server`).
#[test]
fn helm_chart_lints_renders_and_is_accepted() {
    let chart = support::repo_root().join("helm").join("pilotfish");
    assert_eq!(
        std::fs::read_to_string(chart.join("crds").join("istio.yaml")).unwrap_or_default(),
        pilotfish::api::crds::render(),
        "helm/pilotfish/crds/istio.yaml is stale: copy crds/istio.yaml"
    );
    let helm = support::kube::helm_bin();
    let run = |args: &[&str]| {
        support::run(
            std::process::Command::new(&helm).args(args),
            Duration::from_secs(120),
        )
    };
    let lint = run(&["lint", chart.to_str().unwrap()]);
    assert!(lint.ok(), "helm lint: {}", lint.describe());
    let rendered = run(&[
        "template",
        "pilotfish",
        chart.to_str().unwrap(),
        "--namespace",
        "pilotfish-system",
        "--include-crds",
    ]);
    assert!(rendered.ok(), "helm template: {}", rendered.describe());
    let kinds: Vec<&str> = rendered
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect();
    for k in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
    ] {
        assert!(kinds.contains(&k), "no {k} rendered: {kinds:?}");
    }
    // A real API server takes the CRDs, then every other object (server-side dry run).
    let api = KubeApi::start();
    let crds = support::repo_root().join("crds").join("istio.yaml");
    assert!(api.kubectl(&["apply", "-f", crds.to_str().unwrap()]).ok());
    let o = api.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: pilotfish-system}\n");
    assert!(o.ok(), "{}", o.describe());
    let without_crds = run(&[
        "template",
        "pilotfish",
        chart.to_str().unwrap(),
        "--namespace",
        "pilotfish-system",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("chart.yaml");
    std::fs::write(&f, &without_crds.stdout).unwrap();
    let o = api.kubectl(&["apply", "--dry-run=server", "-f", f.to_str().unwrap()]);
    assert!(o.ok(), "the API server refused the chart: {}", o.describe());
    println!("chart accepted (server-side dry run):\n{}", o.stdout.trim());
}

/// Every connected proxy has ACKed what it was sent, at World version `v` or later
/// (`/debug/syncz`).
/// The first response of a sidecar's stream for `type_url` from `cp` (plaintext loopback
/// xDS), or the status the stream ended with.
fn first_xds(
    cp: &ControlPlane,
    type_url: &str,
) -> Result<envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse, tonic::Status> {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = AggregatedDiscoveryServiceClient::connect(format!(
            "http://127.0.0.1:{}",
            cp.xds_port()
        ))
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
        let req = DiscoveryRequest {
            node: Some(Node {
                id: "sidecar~10.1.0.99~client.default~default.svc.cluster.local".into(),
                ..Default::default()
            }),
            type_url: type_url.into(),
            ..Default::default()
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(req).await.unwrap();
        let mut s = c
            .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let r = tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("no xDS response"))??;
        drop(tx);
        r.ok_or_else(|| tonic::Status::unknown("stream ended"))
    })
}

/// The versions of the first CDS and LDS responses a sidecar gets from `cp`.
fn xds_versions(cp: &ControlPlane) -> Vec<String> {
    ["cluster.v3.Cluster", "listener.v3.Listener"]
        .iter()
        .map(|t| {
            first_xds(cp, &format!("type.googleapis.com/envoy.config.{t}"))
                .expect("an xDS response")
                .version_info
        })
        .collect()
}

fn all_synced(cp: &ControlPlane, v: u64) -> bool {
    let Ok((_, text)) = cp.get("/debug/syncz") else {
        return false;
    };
    let rows: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let Some(rows) = rows.as_array().filter(|r| !r.is_empty()) else {
        return false;
    };
    rows.iter().all(|r| {
        r["world_version"].as_u64().unwrap_or(0) >= v
            && r["types"]
                .as_object()
                .is_some_and(|t| t.values().all(|s| s["acked_version"] == s["sent_version"]))
    })
}

/// The served World version once `served` holds for `/debug/configz`.
fn version_when(cp: &ControlPlane, served: impl Fn(&Value) -> bool) -> Option<u64> {
    let mut v = None;
    wait_until(READY, || {
        let Ok((_, text)) = cp.get("/debug/configz") else {
            return false;
        };
        let c: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if served(&c) {
            v = c["version"].as_u64();
            true
        } else {
            false
        }
    });
    v
}

/// The core routing scenarios with real Envoy sidecars whose config comes from objects
/// applied to the API server (Service, Pods with their IPs, DestinationRule,
/// VirtualServices): an 80/20 split, a header match, a fault. Each `kubectl apply` is timed
/// to the last sidecar's ACK, and a change through the config directory in the same run.
#[test]
fn routing_scenarios_from_objects_applied_to_the_api_server() {
    if !support::need_root("kube routing") {
        return;
    }
    use support::{Mesh, PodSpec};
    let mesh = Mesh::new();
    let api = KubeApi::start_with_service_cidr(&format!("10.77.{}.0/24", mesh.n()));
    with_crds(&api);
    let _ = api.kubectl(&["create", "serviceaccount", "default"]);
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(
        &mesh,
        dir.path(),
        &[
            "--kubeconfig",
            api.kubeconfig.to_str().unwrap(),
            "--webhook-address",
            "",
            "--debounce-ms",
            "50",
        ],
    );
    let registry = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: reviews}}\nspec:\n  clusterIP: {vip}\n  selector: {{app: reviews}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews}}\nspec:\n  host: reviews\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n",
        vip = mesh.vip(0)
    );
    let o = api.apply(&registry);
    assert!(o.ok(), "{}", o.describe());
    for (i, v) in ["v1", "v2"].iter().enumerate() {
        let name = format!("reviews-{v}");
        let o = api.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: reviews, version: {v}}}}}\nspec:\n  containers: [{{name: app, image: registry.invalid/reviews:1}}]\n"
        ));
        assert!(o.ok(), "{}", o.describe());
        // No kubelet: the test writes the pod's status itself.
        let ip = mesh.addr(20 + i as u8);
        let o = api.kubectl(&[
            "patch", "pod", &name, "--subresource=status", "--type=merge", "-p",
            &format!("{{\"status\":{{\"phase\":\"Running\",\"podIP\":\"{ip}\",\"podIPs\":[{{\"ip\":\"{ip}\"}}],\"conditions\":[{{\"type\":\"Ready\",\"status\":\"True\"}}]}}}}"),
        ]);
        assert!(o.ok(), "{}", o.describe());
    }
    let backends: Vec<_> = ["v1", "v2"]
        .iter()
        .enumerate()
        .map(|(i, v)| {
            mesh.start_pod(
                PodSpec::new(&format!("reviews-{v}"))
                    .label("app", "reviews")
                    .label("version", v)
                    .host(20 + i as u8)
                    .delta(true)
                    .control_plane(&cp),
            )
        })
        .collect();
    let client = mesh.start_pod(PodSpec::new("client").delta(true).control_plane(&cp));
    client.hosts(&[("reviews", &mesh.vip(0).to_string())]);
    let who = |path: &str, hdr: &[&str]| -> (u16, String) {
        let mut args = vec!["-m", "5"];
        for h in hdr {
            args.extend(["-H", h]);
        }
        let (code, body) = client.curl(&format!("http://reviews:8080{path}"), &args);
        let name = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["name"].as_str().map(String::from))
            .unwrap_or_default();
        (code, name)
    };
    let both = wait_until(READY, || {
        let seen: std::collections::BTreeSet<String> = (0..20).map(|_| who("/", &[]).1).collect();
        seen.contains("reviews-v1") && seen.contains("reviews-v2")
    });
    assert!(both, "both versions never answered\n{}", cp.log_tail(20));

    let vs = |http: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n{http}")
    };
    // Apply `yaml` with kubectl; the time until every sidecar ACKed the World serving it.
    let timed_apply = |yaml: &str, marker: &str| -> Duration {
        let t = std::time::Instant::now();
        let o = api.apply(yaml);
        assert!(o.ok(), "{}", o.describe());
        let v = version_when(&cp, |c| c["objects"].to_string().contains(marker))
            .unwrap_or_else(|| panic!("{marker} never served\n{}", cp.log_tail(20)));
        assert!(
            wait_until(READY, || all_synced(&cp, v)),
            "sidecars never ACKed\n{}",
            cp.log_tail(20)
        );
        t.elapsed()
    };
    let mut timings = Vec::new();

    // An 80/20 split.
    let d = timed_apply(&vs("  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 80}\n    - {destination: {host: reviews, subset: v2}, weight: 20}\n"), "\"weight\":80");
    timings.push(("split 80/20", d));
    let n = 200;
    let v1 = (0..n)
        .filter(|_| who("/", &[]) == (200, "reviews-v1".into()))
        .count();
    println!("split: {v1} of {n} to v1");
    assert!((140..=180).contains(&v1), "v1 got {v1} of {n}");

    // A header match: jason to v2, everyone else to v1.
    let d = timed_apply(&vs("  - match: [{headers: {end-user: {exact: jason}}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n  - route: [{destination: {host: reviews, subset: v1}}]\n"), "jason");
    timings.push(("header match", d));
    assert!((0..20).all(|_| who("/", &["end-user: jason"]) == (200, "reviews-v2".into())));
    assert!((0..20).all(|_| who("/", &[]) == (200, "reviews-v1".into())));

    // A fault: /teapot answered 418 by the client's sidecar.
    let d = timed_apply(&vs("  - match: [{uri: {prefix: /teapot}}]\n    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}\n    route: [{destination: {host: reviews, subset: v1}}]\n  - route: [{destination: {host: reviews, subset: v1}}]\n"), "teapot");
    timings.push(("fault", d));
    assert!((0..10).all(|_| who("/teapot", &[]).0 == 418));
    assert!((0..10).all(|_| who("/", &[]) == (200, "reviews-v1".into())));

    // The same kind of change through the config directory, in the same run.
    let t = std::time::Instant::now();
    write_file(dir.path(), "details.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: details}\nspec:\n  ports: [{name: http, port: 9080}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: details}\nspec:\n  hosts: [details]\n  http:\n  - fault: {abort: {httpStatus: 503, percentage: {value: 100}}}\n    route: [{destination: {host: details}}]\n");
    let v = version_when(&cp, |c| c["objects"].to_string().contains("\"details\""))
        .expect("file change never served");
    assert!(wait_until(READY, || all_synced(&cp, v)));
    timings.push(("file source (for comparison)", t.elapsed()));
    for (what, d) in &timings {
        println!("apply to last sidecar ACK, {what}: {} ms", d.as_millis());
    }
    for p in backends.iter().chain(std::iter::once(&client)) {
        let nacks: Vec<_> = p
            .envoy_stats("update_rejected")
            .into_iter()
            .filter(|(_, v)| *v != 0)
            .collect();
        assert!(nacks.is_empty(), "pod {}: NACKs {nacks:?}", p.name);
    }
}

/// The CA root lives in a Secret: two replicas with their own state directories sign under
/// the same root, and a replica restarted with an empty state directory keeps it.
#[test]
fn replicas_share_the_ca_root_through_a_secret() {
    let api = KubeApi::start();
    let o = api.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: pilotfish-system}\n");
    assert!(o.ok(), "{}", o.describe());
    let args = [
        "--kubeconfig",
        api.kubeconfig.to_str().unwrap(),
        "--webhook-address",
        "",
        "--root-rotation-grace",
        "4s",
    ];
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut one = ControlPlane::start_local(d1.path(), &args);
    let two = ControlPlane::start_local(d2.path(), &args);
    let root =
        |cp: &ControlPlane| std::fs::read_to_string(cp.state_dir().join("root-cert.pem")).unwrap();
    assert_eq!(root(&one), root(&two), "the replicas have different roots");
    let o = api.kubectl(&["get", "secret", "pilotfish-ca", "-n", "pilotfish-system"]);
    assert!(o.ok(), "no Secret: {}", o.describe());
    // A restart with an empty state directory (a new pod) keeps the root.
    let before = root(&one);
    one.kill();
    for f in ["root-cert.pem", "root-key.pem", "token-key.pem"] {
        let _ = std::fs::remove_file(one.state_dir().join(f));
    }
    one.restart();
    assert_eq!(root(&one), before, "the root changed across a restart");
    println!("two replicas and a restart share one root");

    // A root rotation through the Secret: both replicas trust the next root within
    // seconds, and after the grace both sign with it (the leader's step, mirrored by the
    // other), with the old root kept as retired; a new replica starts on the new root.
    let roots = |cp: &ControlPlane| -> Vec<(String, String)> {
        let (_, body) = cp.get("/debug/certz").unwrap_or_default();
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        v["roots"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        (
                            r["role"].as_str().unwrap_or("").to_string(),
                            r["sha256"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let old = roots(&one);
    assert_eq!(old.len(), 1, "{old:?}");
    assert_eq!(roots(&two), old, "the replicas disagree");
    let o = support::run(
        std::process::Command::new(support::pilotfish_bin())
            .args(["rotate-root", "--kubeconfig"])
            .arg(&api.kubeconfig),
        Duration::from_secs(30),
    );
    assert!(o.ok(), "rotate-root: {}", o.describe());
    let t = std::time::Instant::now();
    let trusted = wait_until(Duration::from_secs(20), || {
        let (r1, r2) = (roots(&one), roots(&two));
        r1.len() == 2 && r1 == r2 && r1[1].0 == "next"
    });
    assert!(
        trusted,
        "the next root is not trusted by both: {:?} {:?}\n{}",
        roots(&one),
        roots(&two),
        two.log_tail(20)
    );
    println!("next root trusted by both replicas after {:?}", t.elapsed());
    let next = roots(&one)[1].1.clone();
    let promoted = wait_until(Duration::from_secs(30), || {
        let (r1, r2) = (roots(&one), roots(&two));
        r1 == r2
            && r1.first().map(|r| (r.0.as_str(), r.1.as_str())) == Some(("signing", &next))
            && r1.get(1).map(|r| (r.0.as_str(), r.1.as_str())) == Some(("retired", &old[0].1))
    });
    assert!(
        promoted,
        "the next root does not sign on both: {:?} {:?}\n{}\n{}",
        roots(&one),
        roots(&two),
        one.log_tail(20),
        two.log_tail(20)
    );
    println!("new root signing on both replicas after {:?}", t.elapsed());
    let d3 = tempfile::tempdir().unwrap();
    let three = ControlPlane::start_local(d3.path(), &args);
    assert_eq!(roots(&three), roots(&one), "a new replica's roots differ");
}

/// Two replicas: both serve the same config; one holds the leader Lease and keeps the
/// webhook configurations; when it dies the other takes the Lease over and the singleton
/// work with it (the webhook configuration then names the survivor, which refuses a bad
/// object).
#[test]
fn two_replicas_one_leader_takes_over() {
    let api = KubeApi::start();
    with_crds(&api);
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // As the chart runs them: the built-in ext_authz provider is reached through the
    // Service, not a replica's own address.
    let svc = [
        "--authz-advertise-address",
        "pilotfish.pilotfish-system.svc:15012",
    ];
    let mut a = with_webhooks(&api, d1.path(), &svc);
    let mut b = with_webhooks(&api, d2.path(), &svc);
    let holder = || {
        let o = api.kubectl(&[
            "get",
            "lease",
            "pilotfish-leader",
            "-n",
            "pilotfish-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        o.stdout.trim().to_string()
    };
    let pid_of = |cp: &ControlPlane| cp.pid().map(|p| format!("-{p}")).unwrap_or_default();
    assert!(
        wait_until(READY, || !holder().is_empty()),
        "nobody holds the Lease"
    );
    let first = holder();
    let a_leads = first.ends_with(&pid_of(&a));
    assert!(
        a_leads || first.ends_with(&pid_of(&b)),
        "holder {first} is neither replica"
    );
    // Both serve the same objects.
    assert!(api.apply(REVIEWS).ok());
    let same = wait_until(READY, || {
        let (x, _) = served(&a);
        let (y, _) = served(&b);
        !x.is_empty() && find(&x, "VirtualService", "reviews").is_some() && x == y
    });
    assert!(same, "the replicas serve different config");
    // ... under the same versions (content hashes), so a proxy moving over is sent nothing
    // it already has.
    let (va, vb) = (xds_versions(&a), xds_versions(&b));
    println!("CDS/LDS versions: {va:?} and {vb:?}");
    assert_eq!(va, vb, "the replicas serve different versions");
    // The leader goes; the other takes over.
    let (leader, survivor) = if a_leads { (&mut a, &b) } else { (&mut b, &a) };
    let t = std::time::Instant::now();
    leader.kill();
    let took_over = wait_until(Duration::from_secs(60), || {
        holder().ends_with(&pid_of(survivor))
    });
    assert!(took_over, "the Lease was not taken over: {}", holder());
    println!("Lease taken over in {:?} (lease 15 s)", t.elapsed());
    // Its singleton work: the webhook configuration now names the survivor, which answers.
    let refused = wait_until(Duration::from_secs(30), || {
        let o = api.apply(&REVIEWS.replace("  - route:", "  - timeout: ten\n    route:"));
        !o.ok() && o.stderr.contains("denied the request: pilotfish")
    });
    assert!(
        refused,
        "the survivor did not take over the webhook\n{}",
        survivor.log_tail(20)
    );
    // And status writes: a second VirtualService for the same host passes the webhook (it
    // checks one object alone) and the survivor's status write says why it is not served.
    conflicting_virtual_service_gets_a_status(&api, survivor);
}

/// Applies a second VirtualService for `reviews` (`reviews-2`) and waits for the leader's
/// status on it: generation 1, `Accepted` `False`, naming the VirtualService that has the
/// host.
fn conflicting_virtual_service_gets_a_status(api: &KubeApi, cp: &ControlPlane) {
    let o = api.apply(&REVIEWS.replace(
        "name: reviews, namespace: default}\nspec:\n  hosts",
        "name: reviews-2, namespace: default}\nspec:\n  hosts",
    ));
    assert!(o.ok(), "{}", o.describe());
    let mut st = String::new();
    let written = wait_until(READY, || {
        st = api
            .kubectl(&[
                "get",
                "virtualservice",
                "reviews-2",
                "-o",
                "jsonpath={.status.observedGeneration} {.status.conditions[0].type} {.status.conditions[0].status} {.status.conditions[0].message}",
            ])
            .stdout;
        st.starts_with("1 Accepted False")
    });
    assert!(
        written && st.contains("already routed by VirtualService default/reviews"),
        "no status written: {st:?}\n{}",
        cp.log_tail(20)
    );
}

/// A kubeconfig like the admin's that authenticates as the service account `sa` of
/// `pilotfish-system` (a TokenRequest token), written into `dir`.
fn kubeconfig_as(api: &KubeApi, sa: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let token = api.kubectl(&[
        "create",
        "token",
        sa,
        "-n",
        "pilotfish-system",
        "--duration",
        "1h",
    ]);
    assert!(token.ok(), "{}", token.describe());
    let admin = std::fs::read_to_string(&api.kubeconfig).unwrap();
    let admin_token = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .expect("the admin kubeconfig has a token")
        .to_string();
    let kubeconfig = dir.join(format!("kubeconfig-{sa}"));
    std::fs::write(
        &kubeconfig,
        admin.replace(&admin_token, token.stdout.trim()),
    )
    .unwrap();
    kubeconfig
}

/// The chart's least-privilege RBAC is enough: pilotfish running with the chart's service
/// account (a TokenRequest token, not admin) watches every kind, holds the Lease, keeps the
/// CA Secret and the webhook configurations, and writes status, with nothing forbidden.
#[test]
fn the_charts_rbac_is_enough_for_pilotfish() {
    let chart = support::repo_root().join("helm").join("pilotfish");
    let rendered = support::run(
        std::process::Command::new(support::kube::helm_bin()).args([
            "template",
            "pilotfish",
            chart.to_str().unwrap(),
            "--namespace",
            "pilotfish-system",
        ]),
        Duration::from_secs(120),
    );
    assert!(rendered.ok(), "helm template: {}", rendered.describe());
    // The whole chart, as `helm install` would apply it (the Deployment is stored and never
    // runs: there is no kubelet); pilotfish itself runs here, with the chart's account.
    let api = KubeApi::start();
    with_crds(&api);
    let o = api.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: pilotfish-system}\n");
    assert!(o.ok(), "{}", o.describe());
    let o = api.apply(&rendered.stdout);
    assert!(o.ok(), "the chart: {}", o.describe());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig_as(&api, "pilotfish", dir.path());

    let config = tempfile::tempdir().unwrap();
    let port = support::mesh::free_port(std::net::Ipv4Addr::LOCALHOST);
    let addr = format!("127.0.0.1:{port}");
    let url = format!("https://{addr}/validate");
    let cp = ControlPlane::start_local(
        config.path(),
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--webhook-address",
            &addr,
            "--webhook-url",
            &url,
            "--tls-dns-names",
            "127.0.0.1",
        ],
    );
    // pilotfish points the chart's webhook configurations at itself (patch by name).
    let configured = wait_until(READY, || {
        api.kubectl(&[
            "get",
            "validatingwebhookconfiguration",
            "pilotfish-validator",
            "-o",
            "jsonpath={.webhooks[0].clientConfig.url}",
        ])
        .stdout
            == url
    });
    assert!(
        configured,
        "the webhook configuration is not pilotfish's\n{}",
        cp.log_tail(10)
    );
    // Status needs the watch, the Lease and the status write; the second VirtualService
    // for one host is refused by pilotfish and says so.
    let o = api.apply(REVIEWS);
    assert!(o.ok(), "{}", o.describe());
    conflicting_virtual_service_gets_a_status(&api, &cp);
    let o = api.kubectl(&["get", "secret", "pilotfish-ca", "-n", "pilotfish-system"]);
    assert!(o.ok(), "no CA Secret: {}", o.describe());
    // credentialName from a Secret of the cluster: TLS Secrets are read (with the chart's
    // rights), other Secrets never; the key never shows on the debug pages.
    let o = api.apply(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: partner-tls, namespace: default}\ntype: kubernetes.io/tls\n\
         stringData:\n  tls.crt: \"-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n\"\n  tls.key: \"-----BEGIN PRIVATE KEY-----\\nKEY-MATERIAL-XYZ\\n-----END PRIVATE KEY-----\\n\"\n  ca.crt: \"-----BEGIN CERTIFICATE-----\\nBBBB\\n-----END CERTIFICATE-----\\n\"\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {name: app-password, namespace: default}\ntype: Opaque\nstringData: {password: hunter2-OPAQUE}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: partner, namespace: default}\nspec:\n  hosts: [api.partner.example]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  ports: [{number: 443, name: tls, protocol: TLS}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: partner, namespace: default}\nspec:\n  host: api.partner.example\n  trafficPolicy:\n    tls: {mode: MUTUAL, credentialName: partner-tls}\n",
    );
    assert!(o.ok(), "{}", o.describe());
    let read = wait_until(READY, || {
        let (_, body) = cp.get("/debug/configz").unwrap_or_default();
        body.contains("\"partner-tls\"")
            && body.contains("\"DestinationRule\"")
            && body.contains("\"partner\"")
    });
    let (_, body) = cp.get("/debug/configz").unwrap_or_default();
    assert!(
        read,
        "the TLS Secret and the DestinationRule were not read: {body}"
    );
    let errors = support::config_errors(&cp);
    assert!(
        !errors.to_string().contains("partner"),
        "credentialName resolves: {errors}"
    );
    assert!(!body.contains("app-password"), "an Opaque Secret was read");
    for leaked in ["KEY-MATERIAL-XYZ", "hunter2"] {
        assert!(!body.contains(leaked), "{leaked} shows on /debug/configz");
    }
    // The Kubernetes Gateway API, its CRDs installed after pilotfish started (served as
    // empty until then): a Gateway and an HTTPRoute are read with the chart's rights.
    let crds = support::repo_root().join("e2e/testdata/gateway-api-crds.yaml");
    let o = api.kubectl(&["apply", "-f", crds.to_str().unwrap()]);
    assert!(o.ok(), "{}", o.describe());
    let applied = wait_until(READY, || {
        api.apply(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: web, namespace: default}\nspec:\n  gatewayClassName: istio\n  listeners: [{name: http, port: 8080, protocol: HTTP}]\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: theirs, namespace: default}\nspec:\n  gatewayClassName: another-controller\n  listeners: [{name: http, port: 8080, protocol: HTTP}]\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web, namespace: default}\nspec:\n  parentRefs: [{name: web}]\n  rules: [{backendRefs: [{name: reviews, port: 9080}]}]\n",
        )
        .ok()
    });
    assert!(applied, "the Gateway API objects were not stored");
    let read = wait_until(READY, || {
        let (objects, _) = served(&cp);
        find(&objects, "HTTPRoute", "web").is_some()
            && find(&objects, "Gateway.gateway.networking.k8s.io", "web").is_some()
    });
    assert!(
        read,
        "the Gateway API objects were not read: {:?}",
        served(&cp)
    );
    let errors = support::config_errors(&cp).to_string();
    assert!(
        !errors.contains("HTTPRoute") && !errors.contains("Gateway.gateway"),
        "{errors}"
    );
    // Istio's getting-started step: wait until the Gateway is programmed; its listener
    // counts the HTTPRoute.
    let o = api.kubectl(&[
        "wait",
        "--for=condition=programmed",
        "gateways.gateway.networking.k8s.io/web",
        "--timeout=60s",
    ]);
    assert!(o.ok(), "{}\n{}", o.describe(), cp.log_tail(10));
    let attached = api
        .kubectl(&[
            "get",
            "gateways.gateway.networking.k8s.io",
            "web",
            "-o",
            "jsonpath={.status.listeners[0].attachedRoutes}",
        ])
        .stdout;
    assert_eq!(attached.trim(), "1");
    // The HTTPRoute's parent entry: accepted, its backend resolved.
    let route_cond = |kind: &str| {
        api.kubectl(&[
            "get",
            "httproutes.gateway.networking.k8s.io",
            "web",
            "-o",
            &format!("jsonpath={{.status.parents[?(@.controllerName==\"pilotfish.dev/gateway-controller\")].conditions[?(@.type==\"{kind}\")].status}}"),
        ])
        .stdout
    };
    assert!(
        wait_until(READY, || route_cond("Accepted") == "True"),
        "HTTPRoute status: {}",
        api.kubectl(&[
            "get",
            "httproutes.gateway.networking.k8s.io",
            "web",
            "-o",
            "yaml"
        ])
        .stdout
    );
    assert_eq!(route_cond("ResolvedRefs"), "True");
    // A backend that does not exist: ResolvedRefs goes False (the last good route stays).
    let o = api.apply(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web, namespace: default}\nspec:\n  parentRefs: [{name: web}]\n  rules: [{backendRefs: [{name: nothere, port: 9080}]}]\n",
    );
    assert!(o.ok(), "{}", o.describe());
    assert!(
        wait_until(READY, || route_cond("ResolvedRefs") == "False"),
        "HTTPRoute status: {}",
        api.kubectl(&[
            "get",
            "httproutes.gateway.networking.k8s.io",
            "web",
            "-o",
            "yaml"
        ])
        .stdout
    );
    let theirs = api
        .kubectl(&[
            "get",
            "gateways.gateway.networking.k8s.io",
            "theirs",
            "-o",
            "jsonpath={.status}",
        ])
        .stdout;
    assert!(
        !theirs.contains("pilotfish"),
        "another controller's Gateway got a status: {theirs}"
    );
    let log = std::fs::read_to_string(cp.log_path()).unwrap_or_default();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "something was forbidden:\n{}",
        log.lines()
            .filter(|l| l.to_lowercase().contains("forbidden"))
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Bookinfo-style task YAML (`e2e/testdata/bookinfo-networking`, in the shapes of Istio's
/// samples) applied in task order through the validating webhook: every file is accepted,
/// pilotfish serves the last state of every object with no error, and every object's
/// status says Accepted.
#[test]
fn bookinfo_task_yaml_applies_and_is_served() {
    let api = KubeApi::start();
    with_crds(&api);
    let dir = tempfile::tempdir().unwrap();
    let cp = with_webhooks(&api, dir.path(), &[]);
    let configured = wait_until(READY, || {
        api.kubectl(&[
            "get",
            "validatingwebhookconfiguration",
            "pilotfish-validator",
        ])
        .ok()
    });
    assert!(configured, "no webhook configuration\n{}", cp.log_tail(20));
    let samples = support::repo_root()
        .join("e2e")
        .join("testdata")
        .join("bookinfo-networking");
    let mut files: Vec<_> = std::fs::read_dir(&samples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 7);
    for f in &files {
        let o = api.kubectl(&["apply", "-f", f.to_str().unwrap()]);
        assert!(o.ok(), "{} refused: {}", f.display(), o.describe());
    }
    let done = wait_until(READY, || {
        let (objs, errors) = served(&cp);
        errors == Value::Array(vec![])
            && ["productpage", "reviews", "ratings", "details"]
                .iter()
                .all(|n| find(&objs, "DestinationRule", n).is_some())
            && find(&objs, "VirtualService", "reviews")
                .is_some_and(|(_, spec)| spec.to_string().contains("\"subset\":\"v3\""))
            && find(&objs, "VirtualService", "ratings")
                .is_some_and(|(_, spec)| spec.to_string().contains("\"httpStatus\":500"))
    });
    let (_, errors) = served(&cp);
    assert!(
        done,
        "not served as applied: errors {errors}\n{}",
        cp.log_tail(20)
    );
    let mut st = String::new();
    let accepted = wait_until(READY, || {
        st = api
            .kubectl(&[
                "get",
                "virtualservices,destinationrules",
                "-o",
                "jsonpath={range .items[*]}{.kind}/{.metadata.name}={.status.conditions[0].status} {end}",
            ])
            .stdout;
        st.split_whitespace().count() == 8 && st.split_whitespace().all(|x| x.ends_with("=True"))
    });
    assert!(accepted, "statuses: {st}");
    println!(
        "bookinfo task YAML: {} files applied, 8 objects Accepted",
        files.len()
    );
}

/// Nothing is served before every kind has listed once: with EndpointSlices forbidden to
/// pilotfish's account, `/ready` stays 503 and a sidecar's stream ends with `Unavailable`
/// (rather than getting config without endpoints); once the permission is granted the
/// watch's retry lists them and pilotfish serves.
#[test]
fn nothing_is_served_before_every_kind_has_listed() {
    let api = KubeApi::start();
    with_crds(&api);
    let rbac = |with_slices: bool| {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: pilotfish-system}}\n---\n\
             apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: limited, namespace: pilotfish-system}}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: limited}}\nrules:\n\
             - {{apiGroups: [networking.istio.io, security.istio.io], resources: ['*'], verbs: [get, list, watch]}}\n\
             - {{apiGroups: [''], resources: [services, pods, namespaces, secrets], verbs: [get, list, watch]}}\n{}\
             ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: limited}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: limited}}\n\
             subjects: [{{kind: ServiceAccount, name: limited, namespace: pilotfish-system}}]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: limited, namespace: pilotfish-system}}\nrules:\n\
             - {{apiGroups: [''], resources: [secrets], verbs: [get, create, update]}}\n\
             - {{apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get, create, update, patch]}}\n\
             ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: limited, namespace: pilotfish-system}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: limited}}\n\
             subjects: [{{kind: ServiceAccount, name: limited, namespace: pilotfish-system}}]\n",
            if with_slices {
                "- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [get, list, watch]}\n"
            } else {
                ""
            }
        )
    };
    let o = api.apply(&rbac(false));
    assert!(o.ok(), "{}", o.describe());
    assert!(api.apply(REVIEWS).ok());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig_as(&api, "limited", dir.path());
    let config = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_local_unready(
        config.path(),
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--webhook-address",
            "",
        ],
    );
    // Every other kind lists; EndpointSlices cannot.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        cp.get("/ready").map(|r| r.0),
        Ok(503),
        "ready without EndpointSlices"
    );
    let r = first_xds(&cp, "type.googleapis.com/envoy.config.cluster.v3.Cluster");
    assert_eq!(
        r.as_ref().map_err(|s| s.code()).err(),
        Some(tonic::Code::Unavailable),
        "a stream before sync: {r:?}"
    );
    let log = std::fs::read_to_string(cp.log_path()).unwrap_or_default();
    assert!(
        log.contains("Kubernetes watch failed") && log.contains("EndpointSlice"),
        "the failing watch is not logged\n{}",
        cp.log_tail(20)
    );
    // Granted: the watcher's retry lists them and pilotfish serves.
    let t = std::time::Instant::now();
    let o = api.apply(&rbac(true));
    assert!(o.ok(), "{}", o.describe());
    let ready = wait_until(Duration::from_secs(90), || {
        cp.get("/ready").map(|r| r.0) == Ok(200)
    });
    assert!(ready, "never ready after the grant\n{}", cp.log_tail(20));
    println!("ready {:?} after the grant", t.elapsed());
    let r = first_xds(&cp, "type.googleapis.com/envoy.config.cluster.v3.Cluster");
    assert!(
        r.as_ref().is_ok_and(|r| !r.resources.is_empty()),
        "no config after sync: {r:?}"
    );
    let (objs, _) = served(&cp);
    assert!(find(&objs, "VirtualService", "reviews").is_some());
}

/// A relist replaces the kind: an object deleted while pilotfish's watch was down (through
/// a second API server on the same etcd, so pilotfish sees no delete event) is gone once
/// its watch comes back (the fresh API server's watch cache answers the old resource
/// version with 410 Gone, and the watcher relists).
#[test]
fn a_relist_drops_objects_deleted_while_the_watch_was_down() {
    let api = KubeApi::start();
    with_crds(&api);
    assert!(api.apply(REVIEWS).ok());
    let extra = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: extra, namespace: default}\nspec:\n  hosts: [extra.example.com]\n  http:\n  - route:\n    - destination: {host: reviews}\n";
    assert!(api.apply(extra).ok());
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_local(
        dir.path(),
        &[
            "--kubeconfig",
            api.kubeconfig.to_str().unwrap(),
            "--webhook-address",
            "",
        ],
    );
    let both = wait_until(READY, || {
        let (objs, _) = served(&cp);
        find(&objs, "VirtualService", "extra").is_some()
            && find(&objs, "VirtualService", "reviews").is_some()
    });
    assert!(both, "not served\n{}", cp.log_tail(20));

    // The API server pilotfish watches goes; a second one on another port, on the same
    // etcd, deletes `extra`; it goes too, and the first comes back.
    let args = api.kill_apiserver();
    let port_at = args.iter().position(|a| a == "--secure-port").unwrap() + 1;
    let old_port = args[port_at].clone();
    let new_port = support::mesh::free_port(std::net::Ipv4Addr::LOCALHOST).to_string();
    let mut other = args.clone();
    other[port_at] = new_port.clone();
    api.start_apiserver_at(&other, &new_port);
    let kc = std::fs::read_to_string(&api.kubeconfig).unwrap();
    let other_kc = dir.path().join("other-kubeconfig");
    std::fs::write(
        &other_kc,
        kc.replace(&format!(":{old_port}"), &format!(":{new_port}")),
    )
    .unwrap();
    let o = support::run(
        std::process::Command::new(support::kube::kubectl_bin())
            .arg("--kubeconfig")
            .arg(&other_kc)
            .args(["delete", "virtualservice", "extra"]),
        Duration::from_secs(30),
    );
    assert!(
        o.ok(),
        "delete through the second API server: {}",
        o.describe()
    );
    let _ = api.kill_apiserver();
    let (objs, _) = served(&cp);
    assert!(
        find(&objs, "VirtualService", "extra").is_some(),
        "pilotfish cannot have seen the delete yet"
    );
    api.start_apiserver(&args);
    let gone = wait_until(Duration::from_secs(60), || {
        let (objs, _) = served(&cp);
        find(&objs, "VirtualService", "extra").is_none()
            && find(&objs, "VirtualService", "reviews").is_some()
    });
    assert!(
        gone,
        "the object deleted during the outage is still served\n{}",
        cp.log_tail(20)
    );
}

/// The endpoints pilotfish serves for `host` (`/debug/endpointz`): (address, network,
/// origin) sorted.
fn endpoints_of(cp: &ControlPlane, host: &str) -> Vec<(String, String, String)> {
    let Ok((_, text)) = cp.get("/debug/endpointz") else {
        return vec![];
    };
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let mut out: Vec<_> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["hostname"] == host)
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
            (s("address"), s("network"), s("origin"))
        })
        .collect();
    out.sort();
    out
}

/// A remote cluster read from its own API server (`--remote-cluster
/// c2=kubeconfig:PATH,network=n2`): its Service and EndpointSlice join this cluster's
/// `reviews` (one service, endpoints of both, the remote ones on n2), follow its changes,
/// and its routing config is never read (a VirtualService there changes nothing here).
#[test]
fn remote_cluster_registry_from_its_api_server() {
    let remote = KubeApi::start();
    with_crds(&remote);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("reviews.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec:\n  clusterIP: 10.96.0.20\n  selector: {app: reviews}\n  ports: [{name: http, port: 9080}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: reviews-local}\nspec:\n  address: 10.0.0.5\n  labels: {app: reviews}\n",
    )
    .unwrap();
    let slice = |addrs: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: reviews-abc\n  namespace: default\n  labels: {{kubernetes.io/service-name: reviews}}\naddressType: IPv4\nports: [{{name: http, port: 9080}}]\nendpoints:\n{addrs}"
        )
    };
    let o = remote.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  selector: {{app: reviews}}\n  ports: [{{name: http, port: 9080}}]\n---\n{}---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews]\n  http: [{{fault: {{abort: {{httpStatus: 503, percentage: {{value: 100}}}}}}, route: [{{destination: {{host: reviews}}}}]}}]\n",
        slice("- addresses: [10.9.0.5]\n  conditions: {ready: true}\n")
    ));
    assert!(o.ok(), "{}", o.describe());
    let remote_arg = format!(
        "c2=kubeconfig:{},network=n2",
        remote.kubeconfig.to_str().unwrap()
    );
    let cp = ControlPlane::start_local(dir.path(), &["--remote-cluster", &remote_arg]);
    let host = "reviews.default.svc.cluster.local";
    let want = |remote_addrs: &[&str]| {
        let mut w = vec![(
            "10.0.0.5".to_string(),
            String::new(),
            "WorkloadEntry default/reviews-local".to_string(),
        )];
        for a in remote_addrs {
            w.push((
                a.to_string(),
                "n2".to_string(),
                "EndpointSlice default/reviews-abc@c2".to_string(),
            ));
        }
        w.sort();
        w
    };
    let both = wait_until(READY, || endpoints_of(&cp, host) == want(&["10.9.0.5"]));
    assert!(
        both,
        "endpoints: {:?}\n{}",
        endpoints_of(&cp, host),
        cp.log_tail(20)
    );
    // /debug/clusterz: where c2 comes from, its network, its watches listed, what it gives.
    let (_, text) = cp.get("/debug/clusterz").unwrap();
    let clusters: Value = serde_json::from_str(&text).unwrap();
    let c2 = &clusters[0];
    assert_eq!(
        (
            &c2["name"],
            &c2["source"],
            &c2["network"],
            &c2["synced"],
            &c2["endpoints"]
        ),
        (
            &serde_json::json!("c2"),
            &serde_json::json!("kubeconfig"),
            &serde_json::json!("n2"),
            &serde_json::json!(true),
            &serde_json::json!(1)
        ),
        "{text}"
    );
    // The remote cluster's routing config is not read.
    let (objects, errors) = served(&cp);
    assert!(
        !objects.iter().any(|o| o.0 == "VirtualService"),
        "a remote VirtualService was read"
    );
    assert_eq!(errors, serde_json::json!([]));
    // A change in the remote cluster follows: a second endpoint, then the slice is gone.
    let o = remote.apply(&slice(
        "- addresses: [10.9.0.5]\n  conditions: {ready: true}\n- addresses: [10.9.0.6]\n  conditions: {ready: true}\n",
    ));
    assert!(o.ok(), "{}", o.describe());
    assert!(
        wait_until(READY, || endpoints_of(&cp, host)
            == want(&["10.9.0.5", "10.9.0.6"])),
        "{:?}",
        endpoints_of(&cp, host)
    );
    let o = remote.kubectl(&["delete", "endpointslice", "reviews-abc", "-n", "default"]);
    assert!(o.ok(), "{}", o.describe());
    assert!(
        wait_until(READY, || endpoints_of(&cp, host) == want(&[])),
        "{:?}",
        endpoints_of(&cp, host)
    );
}

/// Istio's multicluster model: a remote Secret (`istio/multiCluster: "true"`, key = cluster
/// name, value = its kubeconfig, as `istioctl create-remote-secret` makes) in pilotfish's
/// namespace adds the cluster at run time: its registry joins this cluster's `reviews`, on
/// the network its namespace's label names; deleting the Secret drops it.
#[test]
fn remote_secret_adds_and_removes_a_cluster() {
    let local = KubeApi::start();
    with_crds(&local);
    let remote = KubeApi::start();
    let slice = |addr: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: reviews-abc\n  namespace: default\n  labels: {{kubernetes.io/service-name: reviews}}\naddressType: IPv4\nports: [{{name: http, port: 9080}}]\nendpoints:\n- addresses: [{addr}]\n  conditions: {{ready: true}}\n"
        )
    };
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: default}\nspec:\n  selector: {app: reviews}\n  ports: [{name: http, port: 9080}]\n---\n";
    let o = local.apply(&format!("{svc}{}", slice("10.0.0.5")));
    assert!(o.ok(), "{}", o.describe());
    let o = remote.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: pilotfish-system\n  labels: {{topology.istio.io/network: n2}}\n---\n{svc}{}",
        slice("10.9.0.5")
    ));
    assert!(o.ok(), "{}", o.describe());
    let dir = tempfile::tempdir().unwrap();
    let cp = with_webhooks(&local, dir.path(), &[]);
    let host = "reviews.default.svc.cluster.local";
    let local_only = vec![(
        "10.0.0.5".to_string(),
        String::new(),
        "EndpointSlice default/reviews-abc".to_string(),
    )];
    assert!(
        wait_until(READY, || endpoints_of(&cp, host) == local_only),
        "{:?}",
        endpoints_of(&cp, host)
    );
    // The remote Secret, as istioctl makes it (the kubeconfig inline).
    let kubeconfig = std::fs::read_to_string(&remote.kubeconfig).unwrap();
    let indented: String = kubeconfig.lines().map(|l| format!("    {l}\n")).collect();
    let o = local.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: istio-remote-secret-c2\n  namespace: pilotfish-system\n  labels: {{istio/multiCluster: \"true\"}}\ntype: Opaque\nstringData:\n  c2: |\n{indented}"
    ));
    assert!(o.ok(), "{}", o.describe());
    let mut both = local_only.clone();
    both.push((
        "10.9.0.5".to_string(),
        "n2".to_string(),
        "EndpointSlice default/reviews-abc@c2".to_string(),
    ));
    both.sort();
    assert!(
        wait_until(READY, || endpoints_of(&cp, host) == both),
        "{:?}\n{}",
        endpoints_of(&cp, host),
        cp.log_tail(20)
    );
    // The kubeconfig never shows on the debug pages; the cluster does, on /debug/clusterz.
    let (_, clusters) = cp.get("/debug/clusterz").unwrap_or_default();
    assert!(
        clusters.contains("\"remote secret\"") && clusters.contains("\"c2\""),
        "{clusters}"
    );
    for leaked in ["certificate-authority", "token", "client-key"] {
        assert!(!clusters.contains(leaked), "{leaked} on /debug/clusterz");
    }
    let (_, body) = cp.get("/debug/configz").unwrap_or_default();
    assert!(
        !body.contains("istio-remote-secret"),
        "the remote Secret is shown"
    );
    let o = local.kubectl(&[
        "delete",
        "secret",
        "istio-remote-secret-c2",
        "-n",
        "pilotfish-system",
    ]);
    assert!(o.ok(), "{}", o.describe());
    assert!(
        wait_until(READY, || endpoints_of(&cp, host) == local_only),
        "{:?}",
        endpoints_of(&cp, host)
    );
}

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

const REVIEWS: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: default}\nspec:\n  selector: {app: reviews}\n  ports: [{name: http, port: 9080}]\n---\n\
apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\nspec:\n  host: reviews\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n---\n\
apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 90}\n    - {destination: {host: reviews, subset: v2}, weight: 10}\n";

#[test]
fn kubernetes_source_reflects_creates_updates_and_deletes() {
    let api = KubeApi::start();
    let crds = support::repo_root().join("crds").join("istio.yaml");
    let o = api.kubectl(&["apply", "-f", crds.to_str().unwrap()]);
    assert!(o.ok(), "CRDs refused: {}", o.describe());
    let o = api.kubectl(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=60s",
        "crd",
        "--all",
    ]);
    assert!(o.ok(), "CRDs not established: {}", o.describe());
    // Istio's YAML applies unchanged (a v1beta1 VirtualService too).
    let o = api.apply(REVIEWS);
    assert!(o.ok(), "Istio YAML refused: {}", o.describe());

    // pilotfish with both sources: the directory's object and the cluster's.
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

    // A VirtualService the CRD schema lets through but pilotfish refuses: an error naming
    // the object and the field; the last good version stays served.
    let o = api.apply(
        &REVIEWS
            .replace("weight: 90", "weight: 50")
            .replace("weight: 10", "weight: 50")
            .replace("subset: v2}", "subset: v2, port: {number: seventy}}"),
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
    assert!(reported, "the bad object is not reported: {errors}");
    assert!(
        errors.to_string().contains("port"),
        "the field is named: {errors}"
    );
    assert!(
        find(&objs, "VirtualService", "reviews")
            .is_some_and(|(_, spec)| spec.to_string().contains("\"weight\":50")),
        "the last good version is not served"
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
    let crds = support::repo_root().join("crds").join("istio.yaml");
    assert!(api.kubectl(&["apply", "-f", crds.to_str().unwrap()]).ok());
    assert!(api
        .kubectl(&[
            "wait",
            "--for",
            "condition=established",
            "--timeout=60s",
            "crd",
            "--all"
        ])
        .ok());
    let port = support::mesh::free_port(std::net::Ipv4Addr::LOCALHOST);
    let addr = format!("127.0.0.1:{port}");
    let url = format!("https://{addr}/validate");
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start_local(
        dir.path(),
        &[
            "--kubeconfig",
            api.kubeconfig.to_str().unwrap(),
            "--webhook-address",
            &addr,
            "--webhook-url",
            &url,
            "--tls-dns-names",
            "127.0.0.1",
        ],
    );
    let configured = wait_until(READY, || {
        api.kubectl(&[
            "get",
            "validatingwebhookconfiguration",
            "pilotfish-validator",
        ])
        .ok()
    });
    assert!(configured, "no webhook configuration\n{}", cp.log_tail(20));

    // The same error `pilotfish validate` prints, minus the file name.
    let bad = REVIEWS.replace("subset: v2}", "subset: v2, port: {number: seventy}}");
    let o = api.apply(&bad);
    println!("kubectl apply of a bad VirtualService: {}", o.stderr.trim());
    assert!(!o.ok(), "the bad VirtualService was stored");
    assert!(
        o.stderr.contains("admission webhook \"validation.pilotfish.io\" denied the request")
            && o.stderr.contains(
                "VirtualService default/reviews: spec.http[0].route[1].destination.port.number: invalid type"
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

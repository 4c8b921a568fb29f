//! Sidecar injection: the mutating admission webhook (`/inject` on 15017) that adds, to a
//! pod created in a namespace labelled `istio-injection=enabled`, Istio's init container
//! (`pilotfish iptables`, the interception rules), a stock Envoy container started with its
//! bootstrap inline (`--config-yaml`), and a projected service-account token for Envoy to
//! present to pilotfish. A pod opts out with `sidecar.istio.io/inject: "false"` (label or
//! annotation); host-network pods and pods already injected are left alone.
//!
//! The containers and volumes come from a template (`template.yaml`, replaceable with
//! `--injection-template`): YAML with placeholders filled in per pod. The bootstrap names
//! the pod through `$(POD_NAME)`, `$(POD_NAMESPACE)` and `$(INSTANCE_IP)`, environment
//! variables of the container that Kubernetes expands in its args, so a pod created from a
//! `generateName` still gets its own node id.

use crate::bootstrap::BootstrapArgs;
use kube::api::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::{json, Value};
use std::sync::Arc;

/// The default template.
pub const TEMPLATE: &str = include_str!("template.yaml");
/// Annotation (and label) that opts a pod out with "false".
pub const INJECT: &str = "sidecar.istio.io/inject";
/// Annotation marking a pod pilotfish injected.
pub const STATUS: &str = "sidecar.istio.io/status";
/// Where the projected token is mounted in the proxy container.
pub const TOKEN_DIR: &str = "/var/run/secrets/pilotfish";

/// How pods are injected: the template, and what fills it in.
pub struct Injector {
    template: Value,
    opts: Options,
}

/// What fills the template in.
pub struct Options {
    pub proxy_image: String,
    pub init_image: String,
    pub token_audience: String,
    /// Where sidecars reach pilotfish's TLS port (host:port).
    pub xds_address: String,
    /// The name in pilotfish's serving certificate the sidecar checks.
    pub xds_server_name: String,
    pub delta: bool,
    pub cluster_id: String,
    /// The mesh's trust roots (PEM), inlined in each bootstrap.
    pub roots: Arc<dyn Fn() -> String + Send + Sync>,
}

impl Injector {
    /// An injector with `template` (YAML; `TEMPLATE` when None). The template must parse
    /// and hold only `initContainers`, `containers` and `volumes` lists.
    pub fn new(template: Option<&str>, opts: Options) -> Result<Injector, String> {
        let text = template.unwrap_or(TEMPLATE);
        let v: Value =
            serde_saphyr::from_str(text).map_err(|e| format!("injection template: {e}"))?;
        let Some(map) = v.as_object() else {
            return Err("injection template: not a mapping".into());
        };
        for (k, val) in map {
            if !matches!(k.as_str(), "initContainers" | "containers" | "volumes") {
                return Err(format!(
                    "injection template: unknown key `{k}`, expected initContainers, containers, volumes"
                ));
            }
            if !val.is_array() {
                return Err(format!("injection template: `{k}` must be a list"));
            }
        }
        Ok(Injector { template: v, opts })
    }

    /// The Envoy bootstrap for a pod of `namespace` with `labels` and `service_account`.
    pub fn bootstrap(
        &self,
        namespace: &str,
        labels: &std::collections::BTreeMap<String, String>,
        service_account: &str,
    ) -> Value {
        let args = BootstrapArgs {
            namespace: namespace.to_string(),
            workload: "$(POD_NAME)".into(),
            ip: std::net::IpAddr::from([0, 0, 0, 0]),
            labels: Some(labels.clone()),
            service_account: service_account.to_string(),
            xds_address: self.opts.xds_address.clone(),
            cluster_id: self.opts.cluster_id.clone(),
            delta: self.opts.delta,
            admin_port: 15000,
            output: None,
            root_cert: Some("roots.pem".into()),
            token_file: Some(format!("{TOKEN_DIR}/token").into()),
            xds_server_name: self.opts.xds_server_name.clone(),
            gateway: false,
            dns_capture: true,
            locality: String::new(),
            network: String::new(),
        };
        let mut b = crate::bootstrap::render(&args);
        // The pod's own name and address, expanded by Kubernetes from the container's env.
        b["node"]["id"] = json!(format!(
            "sidecar~$(INSTANCE_IP)~$(POD_NAME).$(POD_NAMESPACE)~$(POD_NAMESPACE).svc.cluster.local"
        ));
        b["node"]["metadata"]["INSTANCE_IPS"] = json!("$(INSTANCE_IP)");
        // The roots travel inline: no file or ConfigMap to distribute.
        if let Some(g) = b
            .pointer_mut("/dynamic_resources/ads_config/grpc_services/0/google_grpc/channel_credentials/ssl_credentials")
        {
            g["root_certs"] = json!({ "inline_string": (self.opts.roots)() });
        }
        b
    }

    /// The JSON patch that injects `pod` (in `namespace`), or None when it is not injected.
    pub fn patch(&self, pod: &Value, namespace: &str) -> Option<Value> {
        let meta = &pod["metadata"];
        let off = |m: &Value| m.get(INJECT).and_then(Value::as_str) == Some("false");
        if off(&meta["annotations"]) || off(&meta["labels"]) {
            return None;
        }
        if meta["annotations"].get(STATUS).is_some()
            || pod["spec"]["hostNetwork"].as_bool() == Some(true)
            || pod["spec"]["containers"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == "istio-proxy"))
        {
            return None;
        }
        let labels: std::collections::BTreeMap<String, String> =
            serde_json::from_value(meta["labels"].clone()).unwrap_or_default();
        let sa = pod["spec"]["serviceAccountName"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("default");
        let bootstrap = serde_json::to_string(&self.bootstrap(namespace, &labels, sa)).ok()?;
        let fill = |s: &str| {
            s.replace("${PROXY_IMAGE}", &self.opts.proxy_image)
                .replace("${INIT_IMAGE}", &self.opts.init_image)
                .replace("${TOKEN_AUDIENCE}", &self.opts.token_audience)
                .replace("${TOKEN_DIR}", TOKEN_DIR)
                .replace("${BOOTSTRAP}", &bootstrap)
        };
        let filled = map_strings(&self.template, &fill);
        let mut ops = Vec::new();
        for (key, path) in [
            ("initContainers", "/spec/initContainers"),
            ("containers", "/spec/containers"),
            ("volumes", "/spec/volumes"),
        ] {
            let Some(items) = filled.get(key).and_then(Value::as_array) else {
                continue;
            };
            if pod["spec"][key].as_array().is_some_and(|a| !a.is_empty()) {
                for it in items {
                    ops.push(json!({"op": "add", "path": format!("{path}/-"), "value": it}));
                }
            } else {
                ops.push(json!({"op": "add", "path": path, "value": items}));
            }
        }
        let status = json!({"initContainers": ["istio-init"], "containers": ["istio-proxy"], "volumes": ["pilotfish-token"], "injector": "pilotfish"}).to_string();
        if meta["annotations"].is_object() {
            ops.push(json!({"op": "add", "path": "/metadata/annotations/sidecar.istio.io~1status", "value": status}));
        } else {
            ops.push(
                json!({"op": "add", "path": "/metadata/annotations", "value": {STATUS: status}}),
            );
        }
        Some(Value::Array(ops))
    }

    /// The answer to one AdmissionReview for a pod.
    pub fn review(&self, body: &[u8]) -> AdmissionReview<DynamicObject> {
        let req: AdmissionRequest<DynamicObject> = match serde_json::from_slice::<
            AdmissionReview<DynamicObject>,
        >(body)
        .map_err(|e| e.to_string())
        .and_then(|r| {
            r.try_into()
                .map_err(|e: kube::core::admission::ConvertAdmissionReviewError| e.to_string())
        }) {
            Ok(r) => r,
            Err(e) => {
                return AdmissionResponse::invalid(format!("malformed AdmissionReview: {e}"))
                    .into_review()
            }
        };
        let resp = AdmissionResponse::from(&req);
        if req.operation != Operation::Create || req.kind.kind != "Pod" {
            return resp.into_review();
        }
        let Some(obj) = &req.object else {
            return resp.into_review();
        };
        let Ok(pod) = serde_json::to_value(obj) else {
            return resp.into_review();
        };
        let namespace = req
            .namespace
            .clone()
            .or_else(|| obj.metadata.namespace.clone())
            .unwrap_or_else(|| "default".into());
        let Some(ops) = self.patch(&pod, &namespace) else {
            return resp.into_review();
        };
        match serde_json::from_value::<json_patch::Patch>(ops) {
            Ok(p) => match resp.clone().with_patch(p) {
                Ok(r) => r.into_review(),
                Err(e) => resp
                    .deny(format!("pilotfish: injection patch: {e}"))
                    .into_review(),
            },
            Err(e) => resp
                .deny(format!("pilotfish: injection patch: {e}"))
                .into_review(),
        }
    }
}

/// `v` with `f` applied to every string in it.
fn map_strings(v: &Value, f: &dyn Fn(&str) -> String) -> Value {
    match v {
        Value::String(s) => Value::String(f(s)),
        Value::Array(a) => Value::Array(a.iter().map(|x| map_strings(x, f)).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), map_strings(x, f)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn injector(template: Option<&str>) -> Result<Injector, String> {
        Injector::new(
            template,
            Options {
                proxy_image: "envoy:test".into(),
                init_image: "pilotfish:test".into(),
                token_audience: "aud".into(),
                xds_address: "pilotfish.istio-system.svc:15012".into(),
                xds_server_name: "pilotfish".into(),
                delta: true,
                cluster_id: "Kubernetes".into(),
                roots: Arc::new(|| "-----BEGIN CERTIFICATE-----\nx\n".into()),
            },
        )
    }

    fn pod(meta: Value, spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
    }

    #[test]
    fn injects_once_and_respects_opt_outs() {
        let inj = injector(None).unwrap();
        let p = pod(
            json!({"name": "a", "labels": {"app": "web"}}),
            json!({"containers": [{"name": "app", "image": "x"}], "serviceAccountName": "sa1"}),
        );
        let ops = inj.patch(&p, "ns1").unwrap();
        let ops = ops.as_array().unwrap();
        let paths: Vec<&str> = ops.iter().map(|o| o["path"].as_str().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "/spec/initContainers",
                "/spec/containers/-",
                "/spec/volumes",
                "/metadata/annotations"
            ]
        );
        let proxy = &ops[1]["value"];
        assert_eq!(proxy["image"], "envoy:test");
        let boot: Value = serde_json::from_str(proxy["args"][1].as_str().unwrap()).unwrap();
        assert_eq!(boot["node"]["metadata"]["SERVICE_ACCOUNT"], "sa1");
        assert_eq!(boot["node"]["metadata"]["NAMESPACE"], "ns1");
        // The patch applies, and the result is not injected again.
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.clone())).unwrap();
        let mut done = p.clone();
        json_patch::patch(&mut done, &patch).unwrap();
        assert_eq!(done["spec"]["containers"].as_array().unwrap().len(), 2);
        assert!(inj.patch(&done, "ns1").is_none(), "injected twice");
        // Opt-outs: annotation, label, host network.
        for p in [
            pod(
                json!({"name": "a", "annotations": {INJECT: "false"}}),
                json!({"containers": []}),
            ),
            pod(
                json!({"name": "a", "labels": {INJECT: "false"}}),
                json!({"containers": []}),
            ),
            pod(
                json!({"name": "a"}),
                json!({"hostNetwork": true, "containers": []}),
            ),
        ] {
            assert!(inj.patch(&p, "ns1").is_none(), "{p}");
        }
    }

    #[test]
    fn templates_are_checked() {
        let err = |t: &str| injector(Some(t)).err().unwrap_or_default();
        assert!(err("containers: []\nextra: []\n").contains("extra"));
        assert!(err("containers: {a: 1}\n").contains("list"));
        assert!(injector(Some(": :\n  - [")).is_err());
        // A custom template's placeholders are filled in.
        let inj = injector(Some(
            "containers:\n- {name: sidecar, image: \"${PROXY_IMAGE}\"}\n",
        ))
        .unwrap();
        let ops = inj
            .patch(
                &pod(
                    json!({"name": "a"}),
                    json!({"containers": [{"name": "app"}]}),
                ),
                "n",
            )
            .unwrap();
        assert_eq!(ops[0]["value"]["image"], "envoy:test");
    }
}

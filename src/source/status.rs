//! Status writes (Kubernetes, leader only): every Istio object in the cluster gets a
//! condition saying whether pilotfish accepted it, so `kubectl get vs reviews -o yaml`
//! shows a config error without a look at pilotfish's logs:
//!
//! ```yaml
//! status:
//!   observedGeneration: 3
//!   conditions:
//!   - type: Accepted
//!     status: "False"
//!     reason: Invalid
//!     message: 'spec.http[0].route[0].destination.subset: ... (the last accepted version is still served)'
//!     observedGeneration: 3
//!     lastTransitionTime: "2026-12-05T21:00:00Z"
//! ```
//!
//! The desired condition comes from the served snapshot (its errors for the object's unit);
//! the written one from the watch (`Seen`), so a write happens only when they differ, a
//! new leader rewrites nothing that is already right, and nothing loops: pilotfish's own
//! status write does not change the object's config text (`kube::object_text`).

use super::kube::{Pending, KINDS, PREFIX};
use crate::xds::server::Published;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, warn};

const GATEWAY_API: &str = "gateway.networking.k8s.io";

/// The condition type pilotfish owns.
pub const CONDITION: &str = "Accepted";
/// Longest message written (the whole error list is on `/debug/configz`).
const MAX_MESSAGE: usize = 2048;

/// What the watch last saw of an object: its generation and pilotfish's condition on it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    pub generation: i64,
    /// (status, reason, message, observedGeneration) of the `Accepted` condition.
    pub accepted: Option<(String, String, String, i64)>,
    pub last_transition: Option<String>,
    /// The whole status (a Gateway API Gateway's, compared whole).
    pub status: serde_json::Value,
}

impl Seen {
    pub fn of(obj: &DynamicObject) -> Seen {
        let cond = obj.data["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == CONDITION));
        Seen {
            generation: obj.metadata.generation.unwrap_or(0),
            accepted: cond.map(|c| {
                (
                    c["status"].as_str().unwrap_or("").to_string(),
                    c["reason"].as_str().unwrap_or("").to_string(),
                    c["message"].as_str().unwrap_or("").to_string(),
                    c["observedGeneration"].as_i64().unwrap_or(0),
                )
            }),
            last_transition: cond
                .and_then(|c| c["lastTransitionTime"].as_str())
                .map(String::from),
            status: obj.data["status"].clone(),
        }
    }
}

/// The condition pilotfish wants on the object `unit` (`kube:Kind/ns/name`) given `p`.
pub fn desired(p: &Published, unit: &str, generation: i64) -> (String, String, String, i64) {
    let w = &p.gen.world;
    let errors: Vec<String> = w
        .errors
        .iter()
        .filter(|e| e.file == unit)
        .map(|e| {
            if e.field.is_empty() {
                e.reason.clone()
            } else {
                format!("{}: {}", e.field, e.reason)
            }
        })
        .collect();
    if errors.is_empty() {
        return (
            "True".into(),
            "Accepted".into(),
            "parsed, validated and served by pilotfish".into(),
            generation,
        );
    }
    let mut message = errors.join("; ");
    if w.objects.values().any(|r| r.origin == unit) {
        message.push_str(" (the last accepted version is still served)");
    }
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    ("False".into(), "Invalid".into(), message, generation)
}

/// Keeps every Istio object's `Accepted` condition current while this replica leads.
/// Runs until the process ends.
pub async fn keep(
    client: kube::Client,
    mut current: watch::Receiver<Option<Published>>,
    pending: Arc<Pending>,
    mut leader: watch::Receiver<bool>,
) {
    let resources: BTreeMap<String, ApiResource> = KINDS
        .iter()
        .filter(|(g, _, _)| g.ends_with("istio.io") || *g == GATEWAY_API)
        .map(|(g, v, k)| {
            (
                super::kube::kind_id(g, k),
                ApiResource::from_gvk(&GroupVersionKind::gvk(g, v, k)),
            )
        })
        .collect();
    let mut failing = false;
    loop {
        // A new snapshot, leadership, or a resync every 10 s (a status someone else
        // changed is put back).
        tokio::select! {
            r = current.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        if !*leader.borrow() {
            continue;
        }
        let Some(p) = current.borrow().clone() else {
            continue;
        };
        let mut wrote = 0;
        for (unit, seen) in pending.istio_objects() {
            // `kube:Kind/ns/name`
            let mut parts = unit.trim_start_matches(PREFIX).splitn(3, '/');
            let (Some(kind), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Some(ar) = resources.get(kind) else {
                continue;
            };
            let patch = if ar.group == GATEWAY_API {
                // A Gateway of one of pilotfish's classes: its whole status; an HTTPRoute:
                // its parents that are such Gateways (other controllers' entries kept).
                let want = if ar.kind == "Gateway" {
                    gateway_status(&p, &unit, ns, name, &seen)
                } else {
                    route_status(&p, &unit, ns, name, &seen)
                };
                let Some(want) = want else {
                    continue;
                };
                if without_times(&want) == without_times(&seen.status) {
                    continue;
                }
                json!({ "status": want })
            } else {
                let want = desired(&p, &unit, seen.generation);
                if seen.accepted.as_ref() == Some(&want) {
                    continue;
                }
                // The transition time moves only when the status does.
                let since = match (&seen.accepted, &seen.last_transition) {
                    (Some(a), Some(t)) if a.0 == want.0 => t.clone(),
                    _ => now(),
                };
                json!({"status": {
                    "observedGeneration": want.3,
                    "conditions": [{
                        "type": CONDITION,
                        "status": want.0,
                        "reason": want.1,
                        "message": want.2,
                        "observedGeneration": want.3,
                        "lastTransitionTime": since,
                    }]
                }})
            };
            let api: kube::Api<DynamicObject> = kube::Api::namespaced_with(client.clone(), ns, ar);
            match api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    wrote += 1;
                    failing = false;
                }
                // Deleted meanwhile: the watch will say so.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    if !failing {
                        warn!(object = %unit, error = %e, "status write failed; retrying later");
                    }
                    failing = true;
                }
            }
        }
        if wrote > 0 {
            debug!(wrote, "status written");
        }
    }
}

fn object_key(kind: crate::api::Kind, ns: &str, name: &str) -> crate::api::ObjectKey {
    crate::api::ObjectKey {
        kind,
        namespace: ns.to_string(),
        name: name.to_string(),
    }
}

/// Now, as a condition's `lastTransitionTime`.
fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// A Gateway API condition; its transition time is `prev`'s (the conditions written
/// before) when that had the same status, else now.
fn condition(
    prev: &serde_json::Value,
    generation: i64,
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
) -> serde_json::Value {
    let since = prev
        .as_array()
        .and_then(|cs| {
            cs.iter()
                .find(|c| c["type"] == kind && c["status"] == status)
        })
        .and_then(|c| c["lastTransitionTime"].as_str())
        .map(String::from)
        .unwrap_or_else(now);
    json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": since,
    })
}

/// A status without its transition times (what a rewrite compares).
fn without_times(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.iter()
                .filter(|(k, _)| *k != "lastTransitionTime")
                .map(|(k, v)| (k.clone(), without_times(v)))
                .collect(),
        ),
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.iter().map(without_times).collect())
        }
        x => x.clone(),
    }
}

/// The status pilotfish wants on a Gateway API Gateway (`unit`), None when the Gateway is
/// not of one of its classes (another controller's, left alone): `Accepted` and
/// `Programmed` (its config is served to the proxies labelled with its name), and per
/// listener the routes attached and the same conditions, as `kubectl wait
/// --for=condition=programmed gateway/NAME` expects.
pub fn gateway_status(
    p: &Published,
    unit: &str,
    ns: &str,
    name: &str,
    seen: &Seen,
) -> Option<serde_json::Value> {
    use crate::api::{Kind, Spec};
    let w = &p.gen.world;
    let obj = w.objects.get(&object_key(Kind::KubeGateway, ns, name))?;
    let Spec::KubeGateway(g) = &obj.spec else {
        return None;
    };
    if !crate::model::gateway_api::CLASSES.contains(&g.gateway_class_name.as_str()) {
        return None;
    }
    let (accepted, reason, message) = {
        let (status, reason, message, _) = desired(p, unit, seen.generation);
        (status, reason, message)
    };
    let ok = accepted == "True";
    let cond = |prev: &serde_json::Value, kind: &str, status: &str, reason: &str, message: &str| {
        condition(prev, seen.generation, kind, status, reason, message)
    };
    let st = if ok { "True" } else { "False" };
    let programmed_reason = if ok { "Programmed" } else { "Invalid" };
    let programmed_message = if ok {
        format!("served by pilotfish to the gateway proxies of {ns} labelled gateway.networking.k8s.io/gateway-name={name}")
    } else {
        message.clone()
    };
    let prev = &seen.status["conditions"];
    let listeners: Vec<serde_json::Value> = g
        .listeners
        .iter()
        .map(|l| {
            let bound = format!("{ns}/{}", format_args!("{name}:{}", l.name));
            let attached = w
                .virtual_services
                .iter()
                .filter(|v| v.key.kind == Kind::HttpRoute && v.gateways.contains(&bound))
                .count();
            let lprev = seen.status["listeners"]
                .as_array()
                .and_then(|ls| ls.iter().find(|x| x["name"] == l.name.as_str()))
                .map(|x| x["conditions"].clone())
                .unwrap_or_default();
            json!({
                "name": l.name,
                "supportedKinds": [{"group": GATEWAY_API, "kind": "HTTPRoute"}],
                "attachedRoutes": attached,
                "conditions": [
                    cond(&lprev, "Accepted", st, if ok { "Accepted" } else { "Invalid" }, &message),
                    cond(&lprev, "Programmed", st, programmed_reason, &programmed_message),
                    cond(&lprev, "ResolvedRefs", st, if ok { "ResolvedRefs" } else { "Invalid" }, &message),
                ],
            })
        })
        .collect();
    Some(json!({
        "conditions": [
            cond(prev, "Accepted", &accepted, &reason, &message),
            cond(prev, "Programmed", st, programmed_reason, &programmed_message),
        ],
        "listeners": listeners,
    }))
}

/// The controller name pilotfish writes on the HTTPRoute parents it handles.
pub const CONTROLLER: &str = "pilotfish.dev/gateway-controller";

/// The status pilotfish wants on an HTTPRoute: for each parent that is a Gateway of its
/// classes, `Accepted` (a listener takes it) and `ResolvedRefs` (its backends exist); the
/// parents other controllers wrote stay. None when it has no such parent, or has never
/// been valid (nothing is known of its parents).
pub fn route_status(
    p: &Published,
    unit: &str,
    ns: &str,
    name: &str,
    seen: &Seen,
) -> Option<serde_json::Value> {
    use crate::api::{Kind, Spec};
    let w = &p.gen.world;
    let key = object_key;
    let obj = w.objects.get(&key(Kind::HttpRoute, ns, name))?;
    let Spec::HttpRoute(r) = &obj.spec else {
        return None;
    };
    let errors: Vec<&crate::api::ConfigError> =
        w.errors.iter().filter(|e| e.file == unit).collect();
    let prev_parents = seen.status["parents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut parents: Vec<serde_json::Value> = prev_parents
        .iter()
        .filter(|x| x["controllerName"] != CONTROLLER)
        .cloned()
        .collect();
    let mut ours = 0;
    for (i, pr) in r.parent_refs.iter().enumerate() {
        let gw_ns = pr.namespace.as_deref().unwrap_or(ns);
        let Some(gw) = w.objects.get(&key(Kind::KubeGateway, gw_ns, &pr.name)) else {
            continue;
        };
        let Spec::KubeGateway(g) = &gw.spec else {
            continue;
        };
        if !crate::model::gateway_api::CLASSES.contains(&g.gateway_class_name.as_str()) {
            continue;
        }
        ours += 1;
        let field = format!("spec.parentRefs[{i}]");
        let parent_err = errors.iter().find(|e| e.field.starts_with(&field));
        let ref_err = errors.iter().find(|e| e.field.contains("backendRefs"));
        let other_err = errors
            .iter()
            .find(|e| !e.field.starts_with("spec.parentRefs") && !e.field.contains("backendRefs"));
        let (accepted, a_reason, a_msg) = match (parent_err, other_err) {
            (Some(e), _) => ("False", "NoMatchingParent", e.reason.clone()),
            (None, Some(e)) => ("False", "Invalid", format!("{}: {}", e.field, e.reason)),
            (None, None) => ("True", "Accepted", "served by pilotfish".to_string()),
        };
        let (resolved, r_reason, r_msg) = match ref_err {
            Some(e) => (
                "False",
                "BackendNotFound",
                format!("{}: {}", e.field, e.reason),
            ),
            None => ("True", "ResolvedRefs", "every backend exists".to_string()),
        };
        // As the API server stores it (the CRD defaults group and kind).
        let mut parent_ref = json!({
            "group": pr.group.as_deref().unwrap_or(GATEWAY_API),
            "kind": pr.kind.as_deref().unwrap_or("Gateway"),
            "name": pr.name,
        });
        if let Some(n) = &pr.namespace {
            parent_ref["namespace"] = json!(n);
        }
        if let Some(sn) = &pr.section_name {
            parent_ref["sectionName"] = json!(sn);
        }
        if let Some(port) = pr.port {
            parent_ref["port"] = json!(port);
        }
        let prev = prev_parents
            .iter()
            .find(|x| x["controllerName"] == CONTROLLER && x["parentRef"] == parent_ref)
            .map(|x| x["conditions"].clone())
            .unwrap_or_default();
        let cond = |kind: &str, status: &str, reason: &str, message: &str| {
            condition(&prev, seen.generation, kind, status, reason, message)
        };
        parents.push(json!({
            "parentRef": parent_ref,
            "controllerName": CONTROLLER,
            "conditions": [
                cond("Accepted", accepted, a_reason, &a_msg),
                cond("ResolvedRefs", resolved, r_reason, &r_msg),
            ],
        }));
    }
    (ours > 0).then(|| json!({ "parents": parents }))
}

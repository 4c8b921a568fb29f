//! CustomResourceDefinitions for the Istio kinds pilotfish reads, as `pilotfish crds` prints
//! them and `crds/istio.yaml` holds (a test fails when that file is stale). Group, versions,
//! names and short names are Istio's, so existing YAML and `kubectl get vs` work unchanged.
//!
//! Each `spec` schema is generated from the Rust type pilotfish parses (schemars, with kube's
//! structural-schema rewrites), so the API server checks types (`weight: "ten"` is refused by
//! `kubectl apply` even with no webhook) and `kubectl explain` works. Every object in the
//! schema also keeps unknown fields (`x-kubernetes-preserve-unknown-fields`) instead of
//! letting the API server prune them silently: a field pilotfish does not know or enforce
//! must reach pilotfish and be refused by name (the webhook, `pilotfish validate`, and the
//! source's last-good rule), never dropped on the way; for an AuthorizationPolicy a
//! silently pruned field would fail open. Defaults are left out so stored objects stay as
//! the user wrote them.

use super::{networking, security, Kind};
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

/// One CRD: kind, plural, short names, and the generated schema of its spec.
struct Crd {
    kind: Kind,
    plural: &'static str,
    short: &'static [&'static str],
    schema: fn() -> Value,
}

const NETWORKING: (&str, &[&str]) = ("networking.istio.io", &["v1", "v1beta1", "v1alpha3"]);
const SECURITY: (&str, &[&str]) = ("security.istio.io", &["v1", "v1beta1"]);

const CRDS: &[Crd] = &[
    Crd {
        kind: Kind::DestinationRule,
        plural: "destinationrules",
        short: &["dr"],
        schema: schema_of::<networking::DestinationRule>,
    },
    Crd {
        kind: Kind::Gateway,
        plural: "gateways",
        short: &["gw"],
        schema: schema_of::<networking::Gateway>,
    },
    Crd {
        kind: Kind::ServiceEntry,
        plural: "serviceentries",
        short: &["se"],
        schema: schema_of::<networking::ServiceEntry>,
    },
    Crd {
        kind: Kind::Sidecar,
        plural: "sidecars",
        short: &[],
        schema: schema_of::<networking::Sidecar>,
    },
    Crd {
        kind: Kind::VirtualService,
        plural: "virtualservices",
        short: &["vs"],
        schema: schema_of::<networking::VirtualService>,
    },
    Crd {
        kind: Kind::WorkloadEntry,
        plural: "workloadentries",
        short: &["we"],
        schema: schema_of::<networking::WorkloadEntry>,
    },
    Crd {
        kind: Kind::AuthorizationPolicy,
        plural: "authorizationpolicies",
        short: &["ap"],
        schema: schema_of::<security::AuthorizationPolicy>,
    },
    Crd {
        kind: Kind::PeerAuthentication,
        plural: "peerauthentications",
        short: &["pa"],
        schema: schema_of::<security::PeerAuthentication>,
    },
    Crd {
        kind: Kind::RequestAuthentication,
        plural: "requestauthentications",
        short: &["ra"],
        schema: schema_of::<security::RequestAuthentication>,
    },
];

/// The structural OpenAPI v3 schema of `T`, as kube's `#[derive(CustomResource)]` makes it
/// (subschemas inlined, enums and `Option`s rewritten), then `keep_unknown`.
fn schema_of<T: JsonSchema>() -> Value {
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(schemars::transform::AddNullable::default())
        .with_transform(kube_core::schema::StructuralSchemaRewriter)
        .with_transform(kube_core::schema::OptionalEnum)
        .into_generator();
    let mut v = generator.into_root_schema_for::<T>().to_value();
    if let Value::Object(m) = &mut v {
        m.remove("title");
    }
    keep_unknown(&mut v);
    v
}

/// Rewrites a generated schema for the API server: objects keep unknown fields, a free-form
/// value (`serde_json::Value`) becomes an explicit preserve-unknown-fields node, and
/// `default`s go.
fn keep_unknown(v: &mut Value) {
    match v {
        Value::Bool(true) => *v = json!({"x-kubernetes-preserve-unknown-fields": true}),
        Value::Object(m) => {
            m.remove("default");
            if m.get("additionalProperties") == Some(&Value::Bool(false)) {
                m.remove("additionalProperties");
            }
            let free = !m.contains_key("type")
                && !m.contains_key("properties")
                && !m.contains_key("anyOf")
                && !m.contains_key("oneOf")
                && !m.contains_key("allOf");
            if m.contains_key("properties") || free {
                m.insert("x-kubernetes-preserve-unknown-fields".into(), true.into());
            }
            if let Some(Value::Object(props)) = m.get_mut("properties") {
                props.values_mut().for_each(keep_unknown);
            }
            for k in ["items", "additionalProperties"] {
                if let Some(sub) = m.get_mut(k) {
                    keep_unknown(sub);
                }
            }
        }
        _ => {}
    }
}

/// Every CRD as a JSON value (a `CustomResourceDefinition` each).
pub fn definitions() -> Vec<Value> {
    CRDS.iter()
        .map(|c| {
            let (group, versions) = match c.kind {
                Kind::AuthorizationPolicy
                | Kind::PeerAuthentication
                | Kind::RequestAuthentication => SECURITY,
                _ => NETWORKING,
            };
            let kind = c.kind.to_string();
            let spec = (c.schema)();
            let versions: Vec<Value> = versions
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    json!({
                        "name": v,
                        "served": true,
                        "storage": i == 0,
                        "subresources": {"status": {}},
                        "schema": {"openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": spec,
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": true
                                }
                            }
                        }}
                    })
                })
                .collect();
            let mut names = Map::new();
            names.insert("kind".into(), kind.clone().into());
            names.insert("listKind".into(), format!("{kind}List").into());
            names.insert("plural".into(), c.plural.into());
            names.insert("singular".into(), kind.to_lowercase().into());
            names.insert(
                "categories".into(),
                json!(["istio-io", group.replace('.', "-")]),
            );
            if !c.short.is_empty() {
                names.insert("shortNames".into(), json!(c.short));
            }
            json!({
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {
                    "name": format!("{}.{group}", c.plural),
                    "labels": {"app.kubernetes.io/part-of": "pilotfish"}
                },
                "spec": {
                    "group": group,
                    "scope": "Namespaced",
                    "names": names,
                    "versions": versions
                }
            })
        })
        .collect()
}

/// Every CRD as one multi-document YAML text.
pub fn render() -> String {
    let mut out = String::from(
        "# Generated by `pilotfish crds`: Istio's CustomResourceDefinitions for the kinds\n\
         # pilotfish reads, with spec schemas generated from pilotfish's Rust types.\n\
         # Do not edit; `cargo test` fails when this file is stale.\n",
    );
    for d in definitions() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&d).expect("a CRD serializes to YAML"));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_istio_kind_has_a_crd_that_parses() {
        let text = super::render();
        let docs: Vec<serde_json::Value> = text
            .split("\n---\n")
            .skip(1)
            .map(|d| serde_saphyr::from_str(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 9);
        let vs = docs
            .iter()
            .find(|d| d["spec"]["names"]["kind"] == "VirtualService")
            .unwrap();
        assert_eq!(
            vs["metadata"]["name"],
            "virtualservices.networking.istio.io"
        );
        assert_eq!(vs["spec"]["names"]["shortNames"][0], "vs");
        let stored: Vec<&serde_json::Value> = vs["spec"]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["storage"] == true)
            .collect();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0]["name"], "v1");
    }
}

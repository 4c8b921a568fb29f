//! Bad input never panics, and every error names the file, the object and the field.
//!
//! ```text
//!  text ──parse_file──► (resources, errors) ──Index──► World { errors, objects, ... }
//!                                 ▲ each error: file, object (Kind ns/name | document N), field path
//! ```
//! Covers parse errors (truncated YAML, wrong types, unknown fields, missing or unsupported
//! apiVersion/kind, huge values, deep nesting, binary garbage), validation (regexes,
//! weights), cross references (missing subsets, duplicate objects), the index's "keep the
//! last good version" rule, file deletion, and the `pilotfish validate` command.

use pilotfish::api::{parse_file, ConfigError, Kind, ObjectKey, Resource, Spec};
use pilotfish::model::{Index, MeshConfig, Proxy, World};
use std::path::Path;
use std::process::Command;

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: reviews
  namespace: default
spec:
  selector:
    app: reviews
  ports:
  - name: http
    port: 9080
";

const WORKLOADS: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: reviews-v1
spec:
  address: 10.1.0.11
  labels:
    app: reviews
    version: v1
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: reviews-v2
spec:
  address: 10.1.0.12
  labels:
    app: reviews
    version: v2
";

const DESTINATION_RULE: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
";

/// A VirtualService whose `http[0]` is `route` (indented YAML list items at 4 spaces).
fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews
  http:
{http}"
    )
}

/// A good VirtualService: everything to subset v1 with the given timeout.
fn good_vs(timeout: &str) -> String {
    vs(&format!(
        "  - timeout: {timeout}
    route:
    - destination:
        host: reviews
        subset: v1
"
    ))
}

fn join(docs: &[&str]) -> String {
    docs.join("---\n")
}

fn vs_key() -> ObjectKey {
    ObjectKey {
        kind: Kind::VirtualService,
        namespace: "default".into(),
        name: "reviews".into(),
    }
}

fn dump(errs: &[ConfigError]) -> String {
    errs.iter()
        .map(|e| format!("  {e}  [field={:?}]", e.field))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Exactly one error, on `object` and exactly `field`, in `file`; returns it.
fn one_error<'a>(
    errs: &'a [ConfigError],
    file: &str,
    object: &str,
    field: &str,
) -> &'a ConfigError {
    assert_eq!(errs.len(), 1, "expected one error, got:\n{}", dump(errs));
    let e = &errs[0];
    assert_eq!(e.file, file, "{e}");
    assert_eq!(e.object, object, "{e}");
    assert_eq!(e.field, field, "{e}");
    assert!(!e.reason.is_empty(), "{e}");
    e
}

/// Every error is complete: a file, an object, a reason.
fn well_formed(errs: &[ConfigError], file: &str) {
    for e in errs {
        assert_eq!(e.file, file, "{e}");
        assert!(!e.object.is_empty(), "error without object: {e}");
        assert!(!e.reason.is_empty(), "error without reason: {e}");
    }
}

fn world(files: &[(&str, &str)]) -> World {
    pilotfish::app::world_from_files(files, MeshConfig::default())
}

fn sleep_proxy() -> Proxy {
    Proxy {
        id: "sidecar~10.0.0.1~a.default~default.svc.cluster.local".into(),
        namespace: "default".into(),
        ips: vec!["10.0.0.1".into()],
        ..Default::default()
    }
}

/// Generation must not panic and must stay consistent, whatever the world holds.
fn generate_ok(w: &World) {
    let cfg = pilotfish::translate::generate(w, &sleep_proxy());
    if let Err(p) = pilotfish::translate::check(&cfg) {
        panic!("inconsistent config: {p:?}");
    }
}

/// The routes served for reviews:9080, as (route name, cluster) pairs.
fn reviews_routes(w: &World) -> Vec<(String, String)> {
    use envoy_types::pb::envoy::config::route::v3 as rt;
    let cfg = pilotfish::translate::generate(w, &sleep_proxy());
    let rc = cfg
        .routes
        .iter()
        .find(|r| r.name == "9080")
        .expect("route config 9080");
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.name == "reviews.default.svc.cluster.local:9080")
        .expect("reviews virtual host");
    vh.routes
        .iter()
        .map(|r| {
            let c = match &r.action {
                Some(rt::route::Action::Route(a)) => match &a.cluster_specifier {
                    Some(rt::route_action::ClusterSpecifier::Cluster(c)) => c.clone(),
                    other => format!("{other:?}"),
                },
                other => format!("{other:?}"),
            };
            (r.name.clone(), c)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Parse errors
// ---------------------------------------------------------------------------------------

#[test]
fn truncated_yaml_at_every_byte_never_panics() {
    let text = join(&[SERVICE, WORKLOADS, DESTINATION_RULE, &good_vs("5s")]);
    let mut malformed = 0;
    for cut in (0..=text.len()).filter(|i| text.is_char_boundary(*i)) {
        let prefix = &text[..cut];
        let (res, errs) = parse_file("cut.yaml", prefix);
        well_formed(&errs, "cut.yaml");
        malformed += errs
            .iter()
            .filter(|e| e.reason.contains("malformed"))
            .count();
        // Whatever loaded is a whole, valid object.
        for r in &res {
            assert!(pilotfish::api::validate(r).is_empty(), "{:?}", r.key);
        }
        let w = world(&[("cut.yaml", prefix)]);
        well_formed(&w.errors, "cut.yaml");
        generate_ok(&w);
    }
    assert!(malformed > 0, "some cuts must be malformed YAML");
}

#[test]
fn truncated_document_keeps_the_documents_before_it() {
    let text = join(&[
        SERVICE,
        WORKLOADS,
        &vs("  - route: [{destination: {host: revi"),
    ]);
    let (res, errs) = parse_file("cut.yaml", &text);
    let start = text
        .find("apiVersion: networking.istio.io/v1\nkind: VirtualService")
        .unwrap();
    let line = text[..start].lines().count() + 1;
    let e = one_error(&errs, "cut.yaml", &format!("document 4 (line {line})"), "");
    assert!(e.reason.contains("malformed YAML"), "{e}");
    let names: Vec<String> = res.iter().map(|r| r.key.to_string()).collect();
    assert_eq!(
        names,
        [
            "Service default/reviews",
            "WorkloadEntry default/reviews-v1",
            "WorkloadEntry default/reviews-v2"
        ]
    );
}

#[test]
fn wrong_types_name_the_field() {
    let cases: Vec<(String, &str, &str, &str)> = vec![
        (
            vs("  - route:
    - destination:
        host: reviews
      weight: \"abc\"
"),
            "VirtualService default/reviews",
            "spec.http[0].route[0].weight",
            "abc",
        ),
        (
            vs("  - match:
    - port: -1
    route:
    - destination:
        host: reviews
"),
            "VirtualService default/reviews",
            "spec.http[0].match[0].port",
            "-1",
        ),
        (
            SERVICE.replace("port: 9080", "port: -1"),
            "Service default/reviews",
            "spec.ports[0].port",
            "-1",
        ),
        (
            vs("  - timeout: [5s]
    route:
    - destination:
        host: reviews
"),
            "VirtualService default/reviews",
            "spec.http[0].timeout",
            "sequence",
        ),
        (
            vs("reviews\n").replace("  http:\nreviews\n", "  http: reviews\n"),
            "VirtualService default/reviews",
            "spec.http",
            "string",
        ),
        (
            DESTINATION_RULE.replace(
                "  subsets:",
                "  trafficPolicy:\n    connectionPool:\n      tcp:\n        maxConnections: lots\n  subsets:",
            ),
            "DestinationRule default/reviews",
            "spec.trafficPolicy.connectionPool.tcp.maxConnections",
            "lots",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n  labels: [a, b]\nspec:\n  hosts: [reviews]\n"
                .to_string(),
            "VirtualService document 1 (line 1)",
            "metadata.labels",
            "sequence",
        ),
    ];
    for (text, object, field, mention) in cases {
        let (res, errs) = parse_file("types.yaml", &text);
        assert!(res.is_empty(), "{text}");
        let e = one_error(&errs, "types.yaml", object, field);
        assert!(
            e.reason.contains(mention),
            "reason of {field} should mention {mention:?}: {e}"
        );
    }
}

#[test]
fn unknown_fields_are_reported_by_path() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            vs("  - rout:
    - destination:
        host: reviews
"),
            "VirtualService default/reviews",
            "spec.http[0].rout",
        ),
        (
            vs("  - route:
    - destination:
        host: reviews
        subsett: v1
"),
            "VirtualService default/reviews",
            "spec.http[0].route[0].destination.subsett",
        ),
        (
            DESTINATION_RULE.replace(
                "  subsets:",
                "  trafficPolicy:\n    loadBalancer:\n      simpel: RANDOM\n  subsets:",
            ),
            "DestinationRule default/reviews",
            "spec.trafficPolicy.loadBalancer.simpel",
        ),
        (
            DESTINATION_RULE.replace("  host: reviews", "  hots: reviews"),
            "DestinationRule default/reviews",
            "spec.hots",
        ),
    ];
    for (text, object, field) in cases {
        let (res, errs) = parse_file("unknown.yaml", &text);
        assert!(res.is_empty());
        let e = one_error(&errs, "unknown.yaml", object, field);
        let name = field.rsplit('.').next().unwrap();
        assert!(e.reason.contains(&format!("unknown field `{name}`")), "{e}");
    }
}

/// A misspelt top-level key (`spce`) leaves the object with an empty spec; for kinds whose
/// empty spec is valid, the typo would silently change meaning (here: no STRICT mTLS).
#[test]
fn unknown_top_level_field_is_reported() {
    let text = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict
spce:
  mtls:
    mode: STRICT
";
    let (res, errs) = parse_file("pa.yaml", text);
    assert!(
        res.is_empty(),
        "the misspelt object must not load as an empty policy"
    );
    one_error(
        &errs,
        "pa.yaml",
        "PeerAuthentication default/strict",
        "spce",
    );
}

#[test]
fn missing_api_version_or_kind() {
    let (res, errs) = parse_file("m.yaml", "kind: VirtualService\nmetadata:\n  name: x\n");
    assert!(res.is_empty());
    one_error(&errs, "m.yaml", "document 1 (line 1)", "apiVersion");

    let (_, errs) = parse_file(
        "m.yaml",
        "apiVersion: networking.istio.io/v1\nmetadata:\n  name: x\n",
    );
    one_error(&errs, "m.yaml", "document 1 (line 1)", "kind");

    let text = join(&[SERVICE, "apiVersion: v1\nmetadata:\n  name: nokind\n"]);
    let (res, errs) = parse_file("m.yaml", &text);
    assert_eq!(res.len(), 1, "the good document still loads");
    one_error(&errs, "m.yaml", "document 2 (line 13)", "kind");

    let (_, errs) = parse_file(
        "m.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  namespace: x\n",
    );
    one_error(
        &errs,
        "m.yaml",
        "Service document 1 (line 1)",
        "metadata.name",
    );
}

#[test]
fn missing_metadata_reports_metadata_name() {
    let (res, errs) = parse_file(
        "m.yaml",
        "apiVersion: v1\nkind: Service\nspec: {ports: [{port: 80}]}\n",
    );
    assert!(res.is_empty());
    let e = one_error(
        &errs,
        "m.yaml",
        "Service document 1 (line 1)",
        "metadata.name",
    );
    assert!(e.reason.contains("missing"), "{e}");
}

#[test]
fn unsupported_kinds_and_versions() {
    for (text, mention) in [
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "ConfigMap"),
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n", "Deployment"),
        ("apiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\nmetadata: {name: x}\n", "TLSRoute"),
        ("apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: HTTPRoute\nmetadata: {name: x}\n", "v1alpha2"),
        ("apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: x}\n", "networking.istio.io/v2"),
        ("apiVersion: security.istio.io/v1alpha3\nkind: PeerAuthentication\nmetadata: {name: x}\n", "v1alpha3"),
    ] {
        let (res, errs) = parse_file("k.yaml", text);
        assert!(res.is_empty());
        let e = one_error(&errs, "k.yaml", "document 1 (line 1)", "kind");
        assert!(e.reason.contains(mention), "{e}");
    }
    // Every supported version of an Istio kind parses.
    for v in ["v1", "v1beta1", "v1alpha3"] {
        let text = good_vs("1s").replace(
            "networking.istio.io/v1",
            &format!("networking.istio.io/{v}"),
        );
        let (res, errs) = parse_file("k.yaml", &text);
        assert!(errs.is_empty() && res.len() == 1, "{v}: {}", dump(&errs));
    }
}

#[test]
fn empty_and_comment_only_files_are_fine() {
    for text in [
        "",
        "\n\n",
        "# just a comment\n# and another\n",
        "---\n---\n",
        "---\n# c\n---\n...\n",
    ] {
        let (res, errs) = parse_file("empty.yaml", text);
        assert!(
            res.is_empty() && errs.is_empty(),
            "{text:?}: {}",
            dump(&errs)
        );
        let w = world(&[("empty.yaml", text)]);
        assert!(w.errors.is_empty() && w.objects.is_empty());
        generate_ok(&w);
    }
}

#[test]
fn kind_list_with_items() {
    let text = "apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata:
    name: reviews
  spec:
    ports:
    - name: http
      port: 9080
- apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata:
    name: reviews
  spec:
    host: reviews
- apiVersion: v1
  kind: Service
  metadata:
    name: broken
  spec:
    ports:
    - port: 0
- 42
";
    let (res, errs) = parse_file("list.yaml", text);
    let keys: Vec<String> = res.iter().map(|r| r.key.to_string()).collect();
    assert_eq!(
        keys,
        ["Service default/reviews", "DestinationRule default/reviews"]
    );
    assert_eq!(errs.len(), 2, "{}", dump(&errs));
    assert_eq!(errs[0].object, "Service default/broken");
    assert_eq!(errs[0].field, "spec.ports[0].port");
    assert!(errs[1].reason.contains("mapping"), "{}", errs[1]);
    well_formed(&errs, "list.yaml");
    let w = world(&[("list.yaml", text)]);
    assert!(w.services.contains_key("reviews.default.svc.cluster.local"));
    assert!(w
        .destination_rules
        .contains_key("reviews.default.svc.cluster.local"));
}

#[test]
fn huge_values_are_errors_not_overflows() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            SERVICE.replace("port: 9080", "port: 99999999999"),
            "Service default/reviews",
            "spec.ports[0].port",
        ),
        (
            SERVICE.replace("port: 9080", "port: 70000"),
            "Service default/reviews",
            "spec.ports[0].port",
        ),
        (
            vs("  - route:
    - destination:
        host: reviews
        port:
          number: 99999999999
"),
            "VirtualService default/reviews",
            "spec.http[0].route[0].destination.port.number",
        ),
        (
            vs("  - route:
    - destination:
        host: reviews
      weight: 99999999999999999999999
"),
            "VirtualService default/reviews",
            "spec.http[0].route[0].weight",
        ),
        (
            vs("  - timeout: 99999999999999h
    route:
    - destination:
        host: reviews
"),
            "VirtualService default/reviews",
            "spec.http[0].timeout",
        ),
        (
            vs("  - fault:
      abort:
        httpStatus: 503
        percentage:
          value: 1e308
    route:
    - destination:
        host: reviews
"),
            "VirtualService default/reviews",
            "spec.http[0].fault.abort.percentage",
        ),
        (
            WORKLOADS.replace(
                "  address: 10.1.0.11\n",
                "  address: 10.1.0.11\n  ports:\n    http: 99999999999\n",
            ),
            "WorkloadEntry default/reviews-v1",
            "spec.ports.http",
        ),
    ];
    for (text, object, field) in cases {
        let (_, errs) = parse_file("huge.yaml", &text);
        let errs: Vec<ConfigError> = errs.into_iter().filter(|e| e.object == object).collect();
        one_error(&errs, "huge.yaml", object, field);
    }
    // NaN is refused by the YAML reader itself.
    let nan = vs("  - fault:
      abort:
        httpStatus: 503
        percentage:
          value: .nan
    route:
    - destination:
        host: reviews
");
    let (res, errs) = parse_file("huge.yaml", &nan);
    assert!(res.is_empty());
    let e = one_error(&errs, "huge.yaml", "document 1 (line 1)", "");
    assert!(e.reason.contains("nan"), "{e}");

    // Large values that are legal are clamped in translation, not overflowed.
    let text = join(&[
        SERVICE,
        WORKLOADS,
        DESTINATION_RULE.replace(
            "  subsets:",
            "  trafficPolicy:\n    connectionPool:\n      tcp:\n        maxConnections: 9223372036854775807\n      http:\n        maxRequestsPerConnection: 99999999999\n  subsets:",
        )
        .as_str(),
        &vs("  - retries:
      attempts: 99999999999
    timeout: 9999999h
    route:
    - destination:
        host: reviews
        subset: v1
"),
    ]);
    let w = world(&[("big.yaml", &text)]);
    assert!(w.errors.is_empty(), "{}", dump(&w.errors));
    generate_ok(&w);
    let cfg = pilotfish::translate::generate(&w, &sleep_proxy());
    let c = cfg
        .clusters
        .iter()
        .find(|c| c.name == "outbound|9080||reviews.default.svc.cluster.local")
        .unwrap();
    let t = &c.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(t.max_connections.unwrap().value, u32::MAX);
}

#[test]
fn deeply_nested_garbage_is_an_error_not_a_stack_overflow() {
    let n = 100_000;
    let texts = [
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: a}}\nspec: {}1{}\n",
            "[".repeat(n),
            "]".repeat(n)
        ),
        format!("{}\n", "{a: ".repeat(n) + &"}".repeat(n)),
        (0..5_000)
            .map(|i| format!("{}a:\n", " ".repeat(i)))
            .collect(),
        (0..5_000)
            .map(|i| format!("{}- \n", "  ".repeat(i)))
            .collect(),
        format!(
            "{{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"spec\": {}1{}}}",
            "[".repeat(n),
            "]".repeat(n)
        ),
        "&a [*a, ".repeat(1000),
    ];
    for text in &texts {
        let (res, errs) = parse_file("deep.yaml", text);
        assert!(res.is_empty());
        assert_eq!(errs.len(), 1, "{}", dump(&errs));
        well_formed(&errs, "deep.yaml");
        generate_ok(&world(&[("deep.yaml", text)]));
    }
    // Nesting inside an otherwise good object names the object when it can.
    let text = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: {}\"reviews\"{}\n  http: []\n",
        "[".repeat(50),
        "]".repeat(50)
    );
    let (res, errs) = parse_file("deep.yaml", &text);
    assert!(res.is_empty());
    assert_eq!(errs.len(), 1, "{}", dump(&errs));
    well_formed(&errs, "deep.yaml");
}

/// "Billion laughs": nine levels of ten aliases each would expand to 10^9 strings.
#[test]
fn yaml_alias_bomb_is_bounded() {
    let mut text = String::from(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: lol\nspec:\n  l0: &l0 \"lol\"\n",
    );
    for i in 1..=9 {
        let refs = vec![format!("*l{}", i - 1); 10].join(", ");
        text.push_str(&format!("  l{i}: &l{i} [{refs}]\n"));
    }
    let start = std::time::Instant::now();
    let (res, errs) = parse_file("lol.yaml", &text);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert!(res.is_empty());
    assert_eq!(errs.len(), 1, "{}", dump(&errs));
    well_formed(&errs, "lol.yaml");
}

/// xorshift64*: deterministic bytes without a rand dependency.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|i| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let b = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8;
            if i % 97 == 0 {
                0
            } else {
                b
            }
        })
        .collect()
}

#[test]
fn binary_garbage_never_panics() {
    for seed in 1..=40u64 {
        let bytes = garbage(seed, 1 + (seed as usize * 997) % 20_000);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert!(text.contains('\0'));
        let (res, errs) = parse_file("bin.yaml", &text);
        assert!(res.is_empty(), "seed {seed} parsed into objects");
        well_formed(&errs, "bin.yaml");
        let w = world(&[("bin.yaml", &text)]);
        well_formed(&w.errors, "bin.yaml");
        generate_ok(&w);
        // Garbage as one document of a file does not take the good ones down.
        let mixed = format!("{SERVICE}---\n{text}\n---\n{DESTINATION_RULE}");
        let (res, errs) = parse_file("mixed.yaml", &mixed);
        well_formed(&errs, "mixed.yaml");
        let keys: Vec<String> = res.iter().map(|r| r.key.to_string()).collect();
        assert!(
            keys.contains(&"Service default/reviews".to_string()),
            "seed {seed}: {keys:?}"
        );
        assert!(
            keys.contains(&"DestinationRule default/reviews".to_string()),
            "seed {seed}: {keys:?}"
        );
    }
}

#[test]
fn oversized_file_is_rejected_whole() {
    let big = format!(
        "# {}\n{SERVICE}",
        "x".repeat(pilotfish::api::MAX_FILE_BYTES)
    );
    let (res, errs) = parse_file("big.yaml", &big);
    assert!(res.is_empty());
    let e = one_error(&errs, "big.yaml", "file", "");
    assert!(e.reason.contains("limit"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

fn uri_regex_vs(re: &str) -> String {
    vs(&format!(
        "  - match:
    - uri:
        regex: '{re}'
    route:
    - destination:
        host: reviews
"
    ))
}

#[test]
fn oversized_regexes_are_rejected_with_their_field() {
    for (re, mention) in [
        ("(a{1000}){1000}".to_string(), "too complex"),
        (format!("/{}", "a".repeat(4999)), "5000 characters"),
        ("(unclosed".to_string(), "invalid"),
    ] {
        let text = join(&[SERVICE, &uri_regex_vs(&re)]);
        let (res, errs) = parse_file("re.yaml", &text);
        assert_eq!(res.len(), 1, "the Service still loads");
        let e = one_error(
            &errs,
            "re.yaml",
            "VirtualService default/reviews",
            "spec.http[0].match[0].uri.regex",
        );
        assert!(e.reason.contains(mention), "{e}");
        let w = world(&[("re.yaml", &text)]);
        assert!(
            w.virtual_services.is_empty(),
            "the VirtualService is not served"
        );
        assert_eq!(
            reviews_routes(&w),
            [(
                "default".to_string(),
                "outbound|9080||reviews.default.svc.cluster.local".to_string()
            )]
        );
    }
    // Header and rewrite regexes get the same guard, with their own paths.
    let text = vs("  - match:
    - headers:
        end-user:
          regex: '(a{1000}){1000}'
    rewrite:
      uriRegexRewrite:
        match: '(b{1000}){1000}'
        rewrite: /x
    route:
    - destination:
        host: reviews
");
    let (_, errs) = parse_file("re.yaml", &text);
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.http[0].match[0].headers.end-user.regex",
            "spec.http[0].rewrite.uriRegexRewrite.match"
        ],
        "{}",
        dump(&errs)
    );
}

#[test]
fn weights_must_sum_to_100() {
    let two = |w1: &str, w2: &str| {
        vs(&format!(
            "  - route:
    - destination:
        host: reviews
        subset: v1
{w1}    - destination:
        host: reviews
        subset: v2
{w2}"
        ))
    };
    for (w1, w2, sum) in [
        ("      weight: 50\n", "      weight: 40\n", "90"),
        ("      weight: 80\n", "      weight: 80\n", "160"),
        // No weights on two destinations would give Envoy an empty weighted_clusters.
        ("", "", "0"),
        ("      weight: 100\n", "      weight: -10\n", "90"),
    ] {
        let (res, errs) = parse_file("w.yaml", &two(w1, w2));
        assert!(res.is_empty());
        let route_err: Vec<&ConfigError> = errs
            .iter()
            .filter(|e| e.field == "spec.http[0].route")
            .collect();
        assert_eq!(route_err.len(), 1, "{}", dump(&errs));
        assert!(
            route_err[0].reason.contains(&format!("sum to {sum}")),
            "{}",
            route_err[0]
        );
        assert_eq!(route_err[0].object, "VirtualService default/reviews");
    }
    // 100 with a zero weight is fine: the zero destination gets nothing.
    let ok = join(&[
        SERVICE,
        WORKLOADS,
        DESTINATION_RULE,
        &two("      weight: 100\n", "      weight: 0\n"),
    ]);
    let w = world(&[("w.yaml", &ok)]);
    assert!(w.errors.is_empty(), "{}", dump(&w.errors));
    assert_eq!(
        reviews_routes(&w)[0].1,
        "outbound|9080|v1|reviews.default.svc.cluster.local"
    );
    // TCP routes too.
    let tcp = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: db
spec:
  hosts: [db]
  tcp:
  - route:
    - destination: {host: db, subset: a}
      weight: 30
    - destination: {host: db, subset: b}
      weight: 30
";
    let (_, errs) = parse_file("w.yaml", tcp);
    let e = one_error(
        &errs,
        "w.yaml",
        "VirtualService default/db",
        "spec.tcp[0].route",
    );
    assert!(e.reason.contains("sum to 60"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Cross references and the index
// ---------------------------------------------------------------------------------------

fn missing_subset_vs() -> String {
    vs("  - route:
    - destination:
        host: reviews
        subset: v3
")
}

#[test]
fn route_to_missing_subset_is_an_error_and_not_served() {
    let text = join(&[SERVICE, WORKLOADS, DESTINATION_RULE, &missing_subset_vs()]);
    let w = world(&[("bookinfo.yaml", &text)]);
    let e = one_error(
        &w.errors,
        "bookinfo.yaml",
        "VirtualService default/reviews",
        "spec.http[0].route[0].destination.subset",
    );
    assert!(e.reason.contains("\"v3\""), "{e}");
    assert!(e.reason.contains("not served"), "{e}");
    assert!(w.virtual_services.iter().all(|v| v.key != vs_key()));
    assert!(!w.objects.contains_key(&vs_key()));
    // The host keeps its default route instead of a 503 to a missing cluster.
    assert_eq!(
        reviews_routes(&w),
        [(
            "default".to_string(),
            "outbound|9080||reviews.default.svc.cluster.local".to_string()
        )]
    );
    generate_ok(&w);
    // And a destination host that does not exist.
    let text = join(&[
        SERVICE,
        &vs("  - route:\n    - destination:\n        host: nope\n"),
    ]);
    let w = world(&[("bookinfo.yaml", &text)]);
    let e = one_error(
        &w.errors,
        "bookinfo.yaml",
        "VirtualService default/reviews",
        "spec.http[0].route[0].destination.host",
    );
    assert!(e.reason.contains("nope.default.svc.cluster.local"), "{e}");
}

#[test]
fn good_document_next_to_bad_document_loads() {
    let bad = vs("  - route:\n    - destination:\n        host: reviews\n      weight: abc\n");
    let text = join(&[SERVICE, &bad, WORKLOADS]);
    let w = world(&[("mixed.yaml", &text)]);
    one_error(
        &w.errors,
        "mixed.yaml",
        "VirtualService default/reviews",
        "spec.http[0].route[0].weight",
    );
    let svc = &w.services["reviews.default.svc.cluster.local"];
    assert_eq!(
        svc.endpoints.len(),
        2,
        "the WorkloadEntries after the bad document load"
    );
    assert!(w.virtual_services.is_empty());
}

#[test]
fn duplicate_objects_across_files() {
    let mut index = Index::new(MeshConfig::default());
    let a = join(&[SERVICE, WORKLOADS, DESTINATION_RULE, &good_vs("1s")]);
    let b = good_vs("9s");
    for (f, t) in [("a.yaml", a.as_str()), ("b.yaml", b.as_str())] {
        let (r, e) = parse_file(f, t);
        index.apply_file(f, r, e);
    }
    let w = index.snapshot();
    let e = one_error(
        &w.errors,
        "b.yaml",
        "VirtualService default/reviews",
        "metadata.name",
    );
    assert!(
        e.reason.contains("a.yaml"),
        "names the file that already defines it: {e}"
    );
    assert_eq!(
        w.objects[&vs_key()].origin,
        "a.yaml",
        "the first definition is served"
    );
    assert_eq!(vs_timeout(&w), Some("1s".into()));

    // Twice in one file.
    let text = join(&[SERVICE, SERVICE]);
    let w = world(&[("twice.yaml", &text)]);
    let e = one_error(
        &w.errors,
        "twice.yaml",
        "Service default/reviews",
        "metadata.name",
    );
    assert!(e.reason.contains("twice"), "{e}");
    assert!(w.services.contains_key("reviews.default.svc.cluster.local"));

    // Two ServiceEntries claiming one host: the second is reported.
    let se = |name: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\nspec:\n  hosts: [api.example.com]\n  ports: [{{number: 443, name: tls, protocol: TLS}}]\n  resolution: DNS\n"
        )
    };
    let w = world(&[("se.yaml", &join(&[&se("one"), &se("two")]))]);
    one_error(&w.errors, "se.yaml", "ServiceEntry default/two", "");
    assert_eq!(w.services["api.example.com"].origin.name, "one");
}

/// When the file that won a duplicate goes, the other definition is the only one left.
#[test]
fn duplicate_takes_over_when_the_first_file_is_deleted() {
    let mut index = Index::new(MeshConfig::default());
    let apply = |index: &mut Index, f: &str, t: &str| {
        let (r, e) = parse_file(f, t);
        index.apply_file(f, r, e);
    };
    apply(
        &mut index,
        "registry.yaml",
        &join(&[SERVICE, WORKLOADS, DESTINATION_RULE]),
    );
    apply(&mut index, "a.yaml", &good_vs("1s"));
    apply(&mut index, "b.yaml", &good_vs("9s"));
    assert_eq!(index.snapshot().errors.len(), 1);
    index.remove_file("a.yaml");
    let w = index.snapshot();
    assert!(w.errors.is_empty(), "{}", dump(&w.errors));
    assert_eq!(
        vs_timeout(&w),
        Some("9s".into()),
        "b.yaml's definition is served"
    );
}

fn vs_timeout(w: &World) -> Option<String> {
    let r: &Resource = w.objects.get(&vs_key())?;
    match &r.spec {
        Spec::VirtualService(v) => v.http[0].timeout.clone(),
        _ => None,
    }
}

#[test]
fn broken_edit_keeps_serving_the_previous_version() {
    let mut index = Index::new(MeshConfig::default());
    let apply = |index: &mut Index, f: &str, t: &str| {
        let (r, e) = parse_file(f, t);
        index.apply_file(f, r, e);
    };
    apply(
        &mut index,
        "registry.yaml",
        &join(&[SERVICE, WORKLOADS, DESTINATION_RULE]),
    );
    apply(&mut index, "vs.yaml", &good_vs("5s"));
    let w = index.snapshot();
    assert!(w.errors.is_empty(), "{}", dump(&w.errors));
    assert_eq!(vs_timeout(&w), Some("5s".into()));

    // A parse error in the new version: the old one stays, and the error says why.
    apply(
        &mut index,
        "vs.yaml",
        &vs("  - timeout: 7s\n    route:\n    - destination:\n        host: reviews\n      weight: abc\n"),
    );
    let w = index.snapshot();
    one_error(
        &w.errors,
        "vs.yaml",
        "VirtualService default/reviews",
        "spec.http[0].route[0].weight",
    );
    assert_eq!(
        vs_timeout(&w),
        Some("5s".into()),
        "previous version still in world.objects"
    );
    assert!(
        w.virtual_services.iter().any(|v| v.key == vs_key()),
        "and still routed"
    );
    assert_eq!(
        reviews_routes(&w)[0].1,
        "outbound|9080|v1|reviews.default.svc.cluster.local"
    );

    // Malformed YAML: same.
    apply(
        &mut index,
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews\n",
    );
    let w = index.snapshot();
    assert_eq!(w.errors.len(), 1, "{}", dump(&w.errors));
    assert!(w.errors[0].reason.contains("malformed"), "{}", w.errors[0]);
    assert_eq!(vs_timeout(&w), Some("5s".into()));

    // A cross-reference error in the new version: the old one stays, and the error says so.
    apply(&mut index, "vs.yaml", &missing_subset_vs());
    let w = index.snapshot();
    let e = one_error(
        &w.errors,
        "vs.yaml",
        "VirtualService default/reviews",
        "spec.http[0].route[0].destination.subset",
    );
    assert!(e.reason.contains("serving the previous version"), "{e}");
    assert_eq!(vs_timeout(&w), Some("5s".into()));
    assert_eq!(
        reviews_routes(&w)[0].1,
        "outbound|9080|v1|reviews.default.svc.cluster.local"
    );
    generate_ok(&w);

    // The fix replaces it.
    apply(&mut index, "vs.yaml", &good_vs("9s"));
    let w = index.snapshot();
    assert!(w.errors.is_empty(), "{}", dump(&w.errors));
    assert_eq!(vs_timeout(&w), Some("9s".into()));
}

#[test]
fn deleting_a_file_removes_its_objects_and_errors() {
    let mut index = Index::new(MeshConfig::default());
    let apply = |index: &mut Index, f: &str, t: &str| {
        let (r, e) = parse_file(f, t);
        index.apply_file(f, r, e);
    };
    apply(
        &mut index,
        "registry.yaml",
        &join(&[SERVICE, WORKLOADS, DESTINATION_RULE]),
    );
    apply(&mut index, "vs.yaml", &good_vs("5s"));
    apply(
        &mut index,
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 0}]}\n",
    );
    let w = index.snapshot();
    assert!(w.objects.contains_key(&vs_key()));
    assert_eq!(w.errors.len(), 1, "{}", dump(&w.errors));

    index.remove_file("vs.yaml");
    index.remove_file("broken.yaml");
    let w = index.snapshot();
    assert!(!w.objects.contains_key(&vs_key()));
    assert!(w.virtual_services.is_empty());
    assert!(
        w.errors.is_empty(),
        "the deleted file's errors go too: {}",
        dump(&w.errors)
    );
    assert!(
        w.services.contains_key("reviews.default.svc.cluster.local"),
        "other files stay"
    );

    index.remove_file("registry.yaml");
    let w = index.snapshot();
    assert!(w.objects.is_empty() && w.services.is_empty() && w.destination_rules.is_empty());
    generate_ok(&w);

    // A relist (reset) without a file removes it too.
    let mut index = Index::new(MeshConfig::default());
    let parsed = |f: &str, t: &str| {
        let (r, e) = parse_file(f, t);
        (f.to_string(), r, e)
    };
    let registry = join(&[SERVICE, WORKLOADS, DESTINATION_RULE]);
    index.reset(vec![
        parsed("a.yaml", &registry),
        parsed("b.yaml", &good_vs("1s")),
    ]);
    let w = index.snapshot();
    assert!(w.errors.is_empty(), "{}", dump(&w.errors));
    assert!(w.objects.contains_key(&vs_key()));
    index.reset(vec![parsed("a.yaml", &registry)]);
    let w = index.snapshot();
    assert!(!w.objects.contains_key(&vs_key()));
    assert_eq!(
        w.objects.len(),
        4,
        "Service, two WorkloadEntries, DestinationRule"
    );
}

// ---------------------------------------------------------------------------------------
// Documents that are valid YAML in unusual shapes
// ---------------------------------------------------------------------------------------

/// `{apiVersion: v1, ...}` is a YAML flow mapping (kubectl takes it), not JSON.
#[test]
fn yaml_flow_mapping_document_loads() {
    let (res, errs) = parse_file(
        "flow.yaml",
        "{apiVersion: v1, kind: Namespace, metadata: {name: shop}}\n",
    );
    assert!(errs.is_empty(), "{}", dump(&errs));
    assert_eq!(res.len(), 1);
}

#[test]
fn json_documents_load() {
    let text = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews"},
 "spec": {"ports": [{"name": "http", "port": 9080}]}}"#;
    let (res, errs) = parse_file("svc.json", text);
    assert!(errs.is_empty(), "{}", dump(&errs));
    assert_eq!(res[0].key.to_string(), "Service default/reviews");
    let (_, errs) = parse_file("svc.json", &text.replace("9080", "\"x\""));
    one_error(
        &errs,
        "svc.json",
        "Service default/reviews",
        "spec.ports[0].port",
    );
}

// ---------------------------------------------------------------------------------------
// `pilotfish validate`
// ---------------------------------------------------------------------------------------

fn pilotfish_validate(path: &Path) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_pilotfish"))
        .arg("validate")
        .arg(path)
        .output()
        .expect("running pilotfish validate");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn validate_command_reports_file_object_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("registry.yaml"),
        join(&[SERVICE, WORKLOADS]),
    )
    .unwrap();
    let bad = vs("  - route:\n    - destination:\n        host: reviews\n      weight: abc\n");
    let bad_path = dir.path().join("reviews-vs.yaml");
    std::fs::write(&bad_path, &bad).unwrap();
    let (code, out, err) = pilotfish_validate(dir.path());
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("reviews-vs.yaml"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line for the bad file:\n{out}");
    let line = lines[0];
    assert!(line.contains(&bad_path.display().to_string()), "{line}");
    assert!(line.contains("VirtualService default/reviews"), "{line}");
    assert!(line.contains("spec.http[0].route[0].weight"), "{line}");
    assert!(out.contains("1 error(s), 3 object(s) accepted"), "{out}");
}

#[test]
fn validate_command_accepts_bookinfo() {
    let (code, out, err) = pilotfish_validate(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join("bookinfo"),
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("valid object(s)") && !out.contains("error"),
        "{out}"
    );
}

/// Cross-reference errors (a route to a missing subset) are config errors too, and serve
/// reports them; `validate` promises "every error".
#[test]
fn validate_command_reports_cross_reference_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bookinfo.yaml"),
        join(&[SERVICE, WORKLOADS, DESTINATION_RULE, &missing_subset_vs()]),
    )
    .unwrap();
    let (code, out, _) = pilotfish_validate(dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("spec.http[0].route[0].destination.subset"),
        "{out}"
    );
}

#[test]
fn credential_name_must_name_a_secret_with_the_needed_keys() {
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: api}\nspec:\n  host: api.example.com\n  trafficPolicy:\n    tls: {mode: MUTUAL, credentialName: missing}\n";
    let w = pilotfish::app::world_from_files(&[("dr.yaml", dr)], MeshConfig::default());
    let e = w
        .errors
        .iter()
        .find(|e| e.field == "spec.trafficPolicy.tls.credentialName")
        .expect("an error on credentialName");
    assert!(
        e.reason.contains("Secret default/missing not found"),
        "{e:?}"
    );
    assert_eq!(e.object, "DestinationRule default/api");
    assert!(
        w.destination_rules.is_empty(),
        "the DestinationRule is not served"
    );
    let sec = "apiVersion: v1\nkind: Secret\nmetadata: {name: missing}\nstringData: {ca.crt: X}\n";
    let w = pilotfish::app::world_from_files(
        &[("dr.yaml", dr), ("s.yaml", sec)],
        MeshConfig::default(),
    );
    assert!(
        w.errors.iter().any(|e| e.reason.contains("has no tls.crt")),
        "{:?}",
        w.errors
    );
    let bad64 = "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\ndata: {ca.crt: \"***\"}\n";
    let (_, errs) = pilotfish::api::parse_file("s.yaml", bad64);
    assert!(errs.iter().any(|e| e.field == "data.ca.crt"), "{errs:?}");
}

/// Header names Envoy would NACK the whole route configuration for (pseudo-headers and
/// `host`) are config errors naming the field, not a NACK at the sidecar.
#[test]
fn unmodifiable_headers_are_refused_by_name() {
    for (ops, field) in [
        (
            "headers: {request: {set: {':path': /x}}}",
            "spec.http[0].headers.request.set.:path",
        ),
        (
            "headers: {request: {add: {Host: b}}}",
            "spec.http[0].headers.request.add.Host",
        ),
        (
            "headers: {response: {remove: [':status']}}",
            "spec.http[0].headers.response.remove.:status",
        ),
        (
            "headers: {request: {set: {'bad header': x}}}",
            "spec.http[0].headers.request.set.bad header",
        ),
    ] {
        let text = vs(&format!(
            "  - {ops}\n    route:\n    - destination:\n        host: reviews\n"
        ));
        let (_, errs) = pilotfish::api::parse_file("h.yaml", &text);
        one_error(&errs, "h.yaml", "VirtualService default/reviews", field);
    }
    // A per-destination header too; an ordinary one passes.
    let text = vs("  - route:\n    - destination:\n        host: reviews\n      headers: {request: {set: {':authority': x, x-ok: fine}}}\n");
    let (_, errs) = pilotfish::api::parse_file("h.yaml", &text);
    one_error(
        &errs,
        "h.yaml",
        "VirtualService default/reviews",
        "spec.http[0].route[0].headers.request.set.:authority",
    );
}

/// `pilotfish analyze`: validation plus the analyzers users rely on, with Istio's codes.
#[test]
fn analyze_reports_istios_everyday_findings() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        join(&[
            SERVICE,
            WORKLOADS,
            DESTINATION_RULE,
            // A host no service has.
            &vs("  - route:\n    - destination:\n        host: nowhere\n").replace("name: reviews\n  namespace", "name: lost\n  namespace"),
            // Two VirtualServices for one host.
            &good_vs("1s"),
            &good_vs("2s").replace("name: reviews\n  namespace", "name: reviews-again\n  namespace"),
            // A subset no DestinationRule defines.
            &vs("  - route:\n    - destination:\n        host: reviews\n        subset: v9\n").replace("hosts:\n  - reviews", "hosts:\n  - reviews.other").replace("name: reviews\n  namespace", "name: nosubset\n  namespace"),
            // A port without a protocol name.
            "apiVersion: v1\nkind: Service\nmetadata: {name: plain, namespace: default}\nspec:\n  ports: [{name: web, port: 80}]\n",
        ]),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_pilotfish"))
        .arg("analyze")
        .arg(dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    println!("{out}");
    assert_eq!(o.status.code(), Some(1), "{out}");
    let has = |code: &str, object: &str, text: &str| {
        out.lines()
            .any(|l| l.contains(&format!("[{code}]")) && l.contains(object) && l.contains(text))
    };
    assert!(
        has("IST0101", "VirtualService default/lost", "nowhere"),
        "{out}"
    );
    assert!(
        has(
            "IST0109",
            "VirtualService default/reviews-again",
            "already routed"
        ),
        "{out}"
    );
    assert!(
        has("IST0101", "VirtualService default/nosubset", "v9"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("Info [IST0118]")
            && l.contains("Service default/plain")
            && l.contains("\"web\"")),
        "{out}"
    );
    // A clean directory.
    let (code, _, _) = pilotfish_validate(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join("bookinfo"),
    );
    assert_eq!(code, 0);
    let o = Command::new(env!("CARGO_BIN_EXE_pilotfish"))
        .arg("analyze")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples")
                .join("bookinfo"),
        )
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("No validation issues found"), "{out}");
}

/// Gateway features that are not translated are config errors naming the field (fail
/// closed), each in a file of its own; the good Gateway beside them is still served.
#[test]
fn unsupported_gateway_features_are_errors_naming_the_field() {
    let gw = |servers: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n{servers}"
        )
    };
    let cases: &[(&str, &str)] = &[
        (
            "  - port: {number: 15443, name: tls, protocol: TLS}\n    hosts: [\"*.local\"]\n    tls: {mode: SIMPLE, credentialName: c}\n",
            "spec.servers[0].tls.mode",
        ),
        (
            "  - port: {number: 8443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: OPTIONAL_MUTUAL, credentialName: c, subjectAltNames: [x]}\n",
            "spec.servers[0].tls.subjectAltNames",
        ),
        (
            "  - port: {number: 8443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: SIMPLE}\n",
            "spec.servers[0].tls",
        ),
        (
            "  - port: {number: 8443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: SIMPLE, credentialName: c, cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256]}\n",
            "spec.servers[0].tls.cipherSuites",
        ),
        (
            "  - port: {number: 3306, name: mysql, protocol: MYSQL}\n    hosts: [\"*\"]\n",
            "spec.servers[0].port.protocol",
        ),
        (
            "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [a.example.com]\n    bind: 127.0.0.1\n",
            "spec.servers[0].bind",
        ),
        (
            "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [a.example.com]\n  - port: {number: 81, name: http, protocol: HTTP}\n    hosts: [b.example.com]\n",
            "spec.servers[1].port.name",
        ),
        (
            "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"a.*.com\"]\n",
            "spec.servers[0].hosts[0]",
        ),
    ];
    for (servers, field) in cases {
        let w = world(&[("gw.yaml", &gw(servers))]);
        one_error(&w.errors, "gw.yaml", "Gateway default/gw", field);
        assert!(w.gateways.is_empty(), "a refused Gateway is not served");
    }
    // TLS routes: weighted destinations must sum to 100.
    let vs = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\nspec:\n  hosts: [a.example.com, b.example.com]\n  resolution: NONE\n  ports: [{number: 443, name: tls, protocol: TLS}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: t}\nspec:\n  hosts: [a.example.com]\n  tls:\n  - match: [{sniHosts: [a.example.com]}]\n    route: [{destination: {host: a.example.com}, weight: 50}, {destination: {host: b.example.com}, weight: 40}]\n";
    let w = world(&[("vs.yaml", vs)]);
    one_error(
        &w.errors,
        "vs.yaml",
        "VirtualService default/t",
        "spec.tls[0].route",
    );
    let w = world(&[("vs.yaml", &vs.replace("weight: 40", "weight: 50"))]);
    assert!(w.errors.is_empty(), "{}", dump(&w.errors));
    generate_ok(&w);
}

#[test]
fn locality_settings_and_dns_round_robin_are_checked_by_field() {
    let dr = |lb: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r}}\nspec:\n  host: reviews\n  trafficPolicy:\n    outlierDetection: {{consecutive5xxErrors: 1}}\n    loadBalancer:\n      localityLbSetting:\n{lb}"
        )
    };
    let f = "spec.trafficPolicy.loadBalancer.localityLbSetting";
    let cases: &[(&str, String)] = &[
        (
            "        failoverPriority: [rack]\n        failover: [{from: us-east, to: us-west}]\n",
            format!("{f}.failoverPriority"),
        ),
        (
            "        failoverPriority: [rack]\n        distribute: [{from: \"us-east/*\", to: {\"us-east/*\": 100}}]\n",
            format!("{f}.failoverPriority"),
        ),
        (
            "        failoverPriority: [rack, zone, rack=r1]\n",
            format!("{f}.failoverPriority[2]"),
        ),
        ("        failoverPriority: [\"=r1\"]\n", format!("{f}.failoverPriority[0]")),
    ];
    for (lb, field) in cases {
        let w = world(&[("dr.yaml", &dr(lb))]);
        one_error(&w.errors, "dr.yaml", "DestinationRule default/r", field);
        assert!(
            w.destination_rules.is_empty(),
            "a refused rule is not served"
        );
    }
    let w = world(&[(
        "dr.yaml",
        &dr("        failoverPriority: [rack, topology.istio.io/network, tier=gold]\n"),
    )]);
    assert!(w.errors.is_empty(), "{}", dump(&w.errors));
    assert_eq!(w.failover_keys, ["rack", "topology.istio.io/network"]);

    // DNS_ROUND_ROBIN is Envoy's LOGICAL_DNS: one name.
    let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext}\nspec:\n  hosts: [ext.example.com]\n  resolution: DNS_ROUND_ROBIN\n  ports: [{number: 443, name: tls, protocol: TLS}]\n  endpoints: [{address: a.example.com}, {address: b.example.com}]\n";
    let w = world(&[("se.yaml", se)]);
    one_error(
        &w.errors,
        "se.yaml",
        "ServiceEntry default/ext",
        "spec.endpoints",
    );
    let one = se.replace(", {address: b.example.com}", "");
    let w = world(&[("se.yaml", &one)]);
    assert!(w.errors.is_empty(), "{}", dump(&w.errors));
    let cfg = pilotfish::translate::generate(&w, &sleep_proxy());
    let c = cfg
        .clusters
        .iter()
        .find(|c| c.name == "outbound|443||ext.example.com")
        .expect("cluster");
    let logical = envoy_types::pb::envoy::config::cluster::v3::cluster::DiscoveryType::LogicalDns;
    assert_eq!(
        c.cluster_discovery_type,
        Some(
            envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType::Type(
                logical as i32
            )
        )
    );
}

#[test]
fn gateway_api_fields_not_translated_are_errors_naming_the_field() {
    let gw = |listeners: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  gatewayClassName: istio\n  listeners:\n{listeners}"
        )
    };
    let obj = "Gateway.gateway.networking.k8s.io default/gw";
    let cases: &[(&str, &str)] = &[
        ("  - {name: tls, port: 443, protocol: TLS, tls: {mode: Passthrough}}\n", "spec.listeners[0].protocol"),
        ("  - {name: https, port: 443, protocol: HTTPS}\n", "spec.listeners[0].tls"),
        (
            "  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: c, namespace: other}]}}\n",
            "spec.listeners[0].tls.certificateRefs[0].namespace",
        ),
        (
            "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector}}}\n",
            "spec.listeners[0].allowedRoutes.namespaces.from",
        ),
        (
            "  - {name: http, port: 80, protocol: HTTP}\n  - {name: http, port: 81, protocol: HTTP}\n",
            "spec.listeners[1].name",
        ),
        ("  - {name: http, port: 80, protocol: HTTP, bogus: 1}\n", "spec.listeners[0].bogus"),
    ];
    for (listeners, field) in cases {
        let w = world(&[("gw.yaml", &gw(listeners))]);
        let e = one_error(&w.errors, "gw.yaml", obj, field);
        assert!(!e.reason.is_empty());
        assert!(
            w.gateways.is_empty(),
            "a refused Gateway is not served: {e}"
        );
    }

    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.96.0.9\n  ports: [{name: http, port: 8080}]\n---\n";
    let good_gw = gw("  - {name: http, port: 80, protocol: HTTP}\n");
    let route = |rules: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n{rules}"
        )
    };
    let cases: &[(&str, &str)] = &[
        (
            "  - filters: [{type: ExtensionRef, extensionRef: {group: x, kind: y, name: z}}]\n    backendRefs: [{name: web, port: 8080}]\n",
            "spec.rules[0].filters[0].type",
        ),
        (
            "  - backendRefs: [{name: web, port: 8080, namespace: other}]\n",
            "spec.rules[0].backendRefs[0].namespace",
        ),
        ("  - backendRefs: [{name: web}]\n", "spec.rules[0].backendRefs[0].port"),
        (
            "  - matches: [{path: {type: PathPrefix, value: nope}}]\n    backendRefs: [{name: web, port: 8080}]\n",
            "spec.rules[0].matches[0].path.value",
        ),
        // Cross references: a Service that does not exist, a port it does not have.
        ("  - backendRefs: [{name: nothere, port: 8080}]\n", "spec.rules[0].backendRefs[0]"),
        ("  - backendRefs: [{name: web, port: 9999}]\n", "spec.rules[0].backendRefs[0]"),
    ];
    for (rules, field) in cases {
        let w = world(&[
            ("gw.yaml", &format!("{svc}{good_gw}")),
            ("r.yaml", &route(rules)),
        ]);
        one_error(&w.errors, "r.yaml", "HTTPRoute default/r", field);
        assert!(
            !w.virtual_services.iter().any(|v| v.key.name == "r"),
            "a refused HTTPRoute is not served"
        );
    }
    // A listener the route names does not exist: an error on the parent reference.
    let w = world(&[
        ("gw.yaml", &format!("{svc}{good_gw}")),
        (
            "r.yaml",
            &route("  - backendRefs: [{name: web, port: 8080}]\n")
                .replace("[{name: gw}]", "[{name: gw, sectionName: https}]"),
        ),
    ]);
    one_error(
        &w.errors,
        "r.yaml",
        "HTTPRoute default/r",
        "spec.parentRefs[0]",
    );
    // Mesh routing (a Service parent, GAMMA): a mesh VirtualService for the Service; what
    // is not translated is refused by name; a host a VirtualService routes already is an
    // error on the HTTPRoute.
    let gamma = |parent: &str| {
        route("  - backendRefs: [{name: web, port: 8080}]\n").replace(
            "[{name: gw}]",
            &format!("[{{kind: Service, group: \"\", name: web{parent}}}]"),
        )
    };
    let w = world(&[("gw.yaml", svc), ("r.yaml", &gamma(""))]);
    assert!(w.errors.is_empty(), "{}", dump(&w.errors));
    let vs = w
        .virtual_services
        .iter()
        .find(|v| v.key.name == "r")
        .unwrap();
    assert_eq!(vs.hosts, ["web.default.svc.cluster.local"]);
    assert_eq!(vs.gateways, ["mesh"]);
    let w = world(&[("gw.yaml", svc), ("r.yaml", &gamma(", port: 8080"))]);
    one_error(
        &w.errors,
        "r.yaml",
        "HTTPRoute default/r",
        "spec.parentRefs[0].port",
    );
    let istio_vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\nspec:\n  hosts: [web]\n  http: [{route: [{destination: {host: web}}]}]\n";
    let w = world(&[
        ("gw.yaml", svc),
        ("vs.yaml", istio_vs),
        ("r.yaml", &gamma("")),
    ]);
    one_error(
        &w.errors,
        "r.yaml",
        "HTTPRoute default/r",
        "spec.parentRefs",
    );
    // Another controller's Gateway: not ours, no error, nothing served.
    let other = good_gw.replace("gatewayClassName: istio", "gatewayClassName: other");
    let w = world(&[
        ("gw.yaml", &format!("{svc}{other}")),
        (
            "r.yaml",
            &route("  - backendRefs: [{name: web, port: 8080}]\n"),
        ),
    ]);
    assert!(w.errors.is_empty(), "{}", dump(&w.errors));
    assert!(w.gateways.is_empty());
    assert!(!w.virtual_services.iter().any(|v| v.key.name == "r"));
    // And ours: one Istio Gateway per listener, the route bound to it.
    let w = world(&[
        ("gw.yaml", &format!("{svc}{good_gw}")),
        (
            "r.yaml",
            &route("  - backendRefs: [{name: web, port: 8080}]\n"),
        ),
    ]);
    assert!(w.errors.is_empty(), "{}", dump(&w.errors));
    assert_eq!(w.gateways.len(), 1);
    let vs = w
        .virtual_services
        .iter()
        .find(|v| v.key.name == "r")
        .unwrap();
    assert_eq!(vs.gateways, ["default/gw:http"]);
}

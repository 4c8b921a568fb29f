//! Bad security policies are config errors naming the file, the object and the field;
//! what is not enforced is refused (never accepted and ignored); the last good version of
//! a policy keeps being enforced when an edit breaks it.

use pilotfish::api::{parse_file, ConfigError};
use pilotfish::model::{Index, MeshConfig};

fn ap(spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: default}}\nspec:\n{spec}\n"
    )
}

fn errors(text: &str) -> Vec<ConfigError> {
    parse_file("policies.yaml", text).1
}

fn dump(errs: &[ConfigError]) -> String {
    errs.iter().map(|e| format!("  {e}\n")).collect()
}

/// (spec, field the one error must name, a word its reason must contain)
const CASES: &[(&str, &str, &str)] = &[
    ("  action: MAYBE", "spec.action", "unknown action"),
    ("  action: DENY", "spec.rules", "needs rules"),
    ("  actoin: DENY", "spec.actoin", "unknown field"),
    (
        "  rules: [{from: [{source: {principalz: [a]}}]}]",
        "spec.rules[0].from[0].source.principalz",
        "unknown field",
    ),
    (
        "  rules: [{from: [{source: {ipBlocks: [\"10.0.0.0/33\"]}}]}]",
        "spec.rules[0].from[0].source.ipBlocks[0]",
        "prefix length",
    ),
    (
        "  rules: [{from: [{source: {notIpBlocks: [\"not-an-ip\"]}}]}]",
        "spec.rules[0].from[0].source.notIpBlocks[0]",
        "not an IP",
    ),
    (
        "  rules: [{from: [{source: {remoteIpBlocks: [\"\"]}}]}]",
        "spec.rules[0].from[0].source.remoteIpBlocks[0]",
        "not an IP",
    ),
    (
        "  rules: [{from: [{source: {}}]}]",
        "spec.rules[0].from[0].source",
        "must not be empty",
    ),
    (
        "  rules: [{to: [{operation: {}}]}]",
        "spec.rules[0].to[0].operation",
        "must not be empty",
    ),
    (
        "  rules: [{from: [{source: {principals: [\"a*b\"]}}]}]",
        "spec.rules[0].from[0].source.principals[0]",
        "only as the whole value",
    ),
    (
        "  rules: [{from: [{source: {serviceAccounts: [\"a\"]}}]}]",
        "spec.rules[0].from[0].source.serviceAccounts[0]",
        "namespace/service-account",
    ),
    (
        "  rules: [{from: [{source: {serviceAccounts: [\"ns/a\"], principals: [x]}}]}]",
        "spec.rules[0].from[0].source.serviceAccounts",
        "together",
    ),
    (
        "  rules: [{to: [{operation: {ports: [\"http\"]}}]}]",
        "spec.rules[0].to[0].operation.ports[0]",
        "not a port",
    ),
    (
        "  rules: [{to: [{operation: {notPorts: [\"70000\"]}}]}]",
        "spec.rules[0].to[0].operation.notPorts[0]",
        "not a port",
    ),
    (
        "  rules: [{to: [{operation: {paths: [\"admin\"]}}]}]",
        "spec.rules[0].to[0].operation.paths[0]",
        "starts with `/`",
    ),
    (
        "  rules: [{to: [{operation: {paths: [\"/a/{*}/b\"]}}]}]",
        "spec.rules[0].to[0].operation.paths[0]",
        "not enforced yet",
    ),
    (
        "  rules: [{to: [{operation: {methods: [\"*\"]}}]}]",
        "spec.rules[0].to[0].operation.methods[0]",
        "plain name",
    ),
    (
        "  rules: [{when: [{key: \"request.headers[x]\"}]}]",
        "spec.rules[0].when[0]",
        "needs values",
    ),
    (
        "  rules: [{when: [{key: source.ip, values: [\"300.1.1.1\"]}]}]",
        "spec.rules[0].when[0].values[0]",
        "not an IP",
    ),
    (
        "  rules: [{when: [{key: destination.port, notValues: [\"x\"]}]}]",
        "spec.rules[0].when[0].notValues[0]",
        "not a port",
    ),
    (
        "  rules: [{when: [{key: destination.labels, values: [a]}]}]",
        "spec.rules[0].when[0].key",
        "unknown key",
    ),
    (
        "  rules: [{when: [{key: \"request.headers[]\", values: [a]}]}]",
        "spec.rules[0].when[0].key",
        "request.headers[<name>]",
    ),
    (
        "  rules: [{when: [{key: \"experimental.envoy.filters.a[b]\", values: [a]}]}]",
        "spec.rules[0].when[0].key",
        "not enforced",
    ),
    (
        "  rules: [{from: [{source: {requestPrincipals: [\"iss*\"]}}]}]",
        "spec.rules[0].from[0].source.requestPrincipals[0]",
        "expected `<issuer>/<subject>`",
    ),
    (
        "  rules: [{from: [{source: {notRequestPrincipals: [\"a/b*\"]}}]}]",
        "spec.rules[0].from[0].source.notRequestPrincipals[0]",
        "supported forms",
    ),
    (
        "  rules: [{when: [{key: \"request.auth.claims[]\", values: [a]}]}]",
        "spec.rules[0].when[0].key",
        ".claims[name]",
    ),
    (
        "  rules: [{when: [{key: \"request.auth.issuer\", values: [a]}]}]",
        "spec.rules[0].when[0].key",
        "request.auth.principal",
    ),
    ("  action: CUSTOM\n  rules: [{}]", "spec.provider.name", "names its ext_authz provider"),
    ("  action: CUSTOM\n  provider: {name: opa}", "spec.rules", "needs rules"),
    ("  action: CUSTOM\n  provider: {name: opa}\n  rules: [{from: [{source: {principals: [a]}}]}]", "spec.rules[0].from[0].source.principals", "not supported by the CUSTOM action"),
    ("  action: CUSTOM\n  provider: {name: opa}\n  rules: [{when: [{key: source.principal, values: [a]}]}]", "spec.rules[0].when[0].key", "not supported by the CUSTOM action"),
    (
        "  action: DENY\n  provider: {name: opa}\n  rules: [{}]",
        "spec.provider",
        "only the CUSTOM",
    ),
    (
        "  selector: {matchLabels: {app: a}}\n  targetRef: {kind: Service, name: a}",
        "spec.selector",
        "mutually exclusive",
    ),
    (
        "  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: a}",
        "spec.targetRef.kind",
        "not enforced yet",
    ),
    (
        "  targetRef: {kind: Service, name: a}\n  targetRefs: [{kind: Service, name: b}]",
        "spec.targetRef",
        "not both",
    ),
    (
        "  rules: [{from: [{source: {principals: 7}}]}]",
        "spec.rules[0].from[0].source.principals",
        "invalid type",
    ),
];

#[test]
fn every_bad_policy_names_its_field() {
    let mut failures = Vec::new();
    for (spec, field, word) in CASES {
        let errs = errors(&ap(spec));
        let ok = errs.len() == 1
            && errs[0].field == *field
            && errs[0].object == "AuthorizationPolicy default/p"
            && errs[0].file == "policies.yaml"
            && errs[0].reason.contains(word);
        if !ok {
            failures.push(format!("{spec}\n  want {field} ({word})\n{}", dump(&errs)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn good_policies_validate() {
    for spec in [
        "  {}",
        "  action: DENY\n  rules: [{}]",
        "  action: AUDIT\n  rules: [{to: [{operation: {paths: [\"/x*\", \"*.y\", \"*\"]}}]}]",
        "  selector: {matchLabels: {app: a}}\n  rules:\n  - from: [{source: {principals: [\"*\"], notNamespaces: [\"x-*\"]}}, {source: {ipBlocks: [\"10.0.0.0/8\", \"::1\"]}}]\n    to: [{operation: {hosts: [\"*.example.com\"], notMethods: [DELETE], ports: [\"80\"]}}]\n    when:\n    - {key: \"request.headers[x-a]\", values: [\"*\"]}\n    - {key: connection.sni, notValues: [\"evil.*\"]}\n    - {key: destination.ip, values: [\"10.1.0.0/16\"]}",
    ] {
        let errs = errors(&ap(spec));
        assert!(errs.is_empty(), "{spec}\n{}", dump(&errs));
    }
}

fn ra(rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt}}\nspec:\n{rules}\n"
    )
}

#[test]
fn bad_jwt_rules_name_their_field() {
    for (rules, field, word) in [
        ("  jwtRules: [{issuer: a}]", "spec.jwtRules[0].jwksUri", "OpenID discovery"),
        ("  jwtRules: [{issuer: a, jwksUri: ftp://x}]", "spec.jwtRules[0].jwksUri", "not an http(s) URL"),
        ("  jwtRules: [{issuer: a, jwks: \"{}\"}]", "spec.jwtRules[0].jwks", "no `keys` array"),
        ("  jwtRules: [{issuer: a, jwks: \"{\\\"keys\\\": []}\"}]", "spec.jwtRules[0].jwks", "no keys"),
        ("  jwtRules: [{issuer: a, jwks: \"nope\"}]", "spec.jwtRules[0].jwks", "not a JSON Web Key Set"),
        ("  jwtRules: [{issuer: \"\", jwksUri: \"https://x/j\"}]", "spec.jwtRules[0].issuer", "required"),
        ("  jwtRules: [{issuer: a, jwksUri: \"https://x/j\"}, {issuer: a, jwksUri: \"https://y/j\"}]", "spec.jwtRules[1].issuer", "twice"),
        ("  jwtRules: [{issuer: a, jwksUri: \"https://x/j\", timeout: later}]", "spec.jwtRules[0].timeout", "invalid duration"),
        ("  jwtRules: [{issuer: a, jwksUri: \"https://x/j\", fromHeaders: [{prefix: x}]}]", "spec.jwtRules[0].fromHeaders[0]", "missing field `name`"),
        ("  jwtRules: [{issuer: a, jwksUri: \"https://x/j\", isuer: b}]", "spec.jwtRules[0].isuer", "unknown field"),
        ("  targetRef: {kind: Service, name: b}\n  jwtRules: [{issuer: a, jwksUri: \"https://x/j\"}]", "spec.targetRef", "not enforced yet"),
    ] {
        let errs = errors(&ra(rules));
        let ok = errs.len() == 1 && errs[0].field.starts_with(field) && errs[0].reason.contains(word);
        assert!(ok, "{rules}\n  want {field} ({word})\n{}", dump(&errs));
    }
    let good = ra("  selector: {matchLabels: {app: b}}\n  jwtRules:\n  - issuer: https://issuer.example\n    jwksUri: https://issuer.example/jwks\n    audiences: [a]\n    fromHeaders: [{name: x-jwt, prefix: \"Bearer \"}]\n    fromParams: [token]\n    outputPayloadToHeader: x-payload\n    forwardOriginalToken: true\n    outputClaimToHeaders: [{header: x-sub, claim: sub}]");
    let errs = errors(&good);
    assert!(errs.is_empty(), "{}", dump(&errs));
}

#[test]
fn target_ref_to_a_missing_service_is_an_error() {
    let (res, errs) = parse_file(
        "p.yaml",
        &ap("  targetRefs: [{kind: Service, group: \"\", name: nosuch}]\n  action: DENY\n  rules: [{}]"),
    );
    assert!(errs.is_empty(), "{}", dump(&errs));
    let mut ix = Index::new(MeshConfig::default());
    ix.apply_file("p.yaml", res, errs);
    let w = ix.snapshot();
    assert_eq!(w.errors.len(), 1, "{}", dump(&w.errors));
    assert_eq!(w.errors[0].field, "spec.targetRefs[0].name");
    assert!(
        w.authz.is_empty(),
        "a policy with a broken target is not served"
    );
}

#[test]
fn broken_edit_keeps_enforcing_the_previous_version() {
    let good = ap("  action: DENY\n  rules: [{from: [{source: {ipBlocks: [\"10.0.0.0/8\"]}}]}]");
    let bad = ap("  action: DENY\n  rules: [{from: [{source: {ipBlocks: [\"10.0.0.0/80\"]}}]}]");
    let mut ix = Index::new(MeshConfig::default());
    let (res, errs) = parse_file("p.yaml", &good);
    ix.apply_file("p.yaml", res, errs);
    let w1 = ix.snapshot();
    assert_eq!(w1.authz.len(), 1);
    let (res, errs) = parse_file("p.yaml", &bad);
    assert_eq!(errs.len(), 1, "{}", dump(&errs));
    assert_eq!(errs[0].field, "spec.rules[0].from[0].source.ipBlocks[0]");
    ix.apply_file("p.yaml", res, errs);
    let w2 = ix.snapshot();
    assert_eq!(w2.errors.len(), 1, "{}", dump(&w2.errors));
    assert_eq!(w2.authz.len(), 1, "the previous version is still enforced");
    assert_eq!(w2.authz[0], w1.authz[0]);
}

fn world_with_mesh(mesh_yaml: &str, files: &str) -> pilotfish::model::World {
    let (m, _) = pilotfish::api::mesh::parse_mesh(mesh_yaml).expect("mesh config");
    let mut mesh = MeshConfig::default();
    mesh.apply_file(m);
    let (res, errs) = parse_file("p.yaml", files);
    assert!(errs.is_empty(), "{}", dump(&errs));
    let mut ix = Index::new(mesh);
    ix.apply_file("p.yaml", res, errs);
    ix.snapshot()
}

#[test]
fn custom_providers_must_exist_and_be_ext_authz() {
    let mesh = "extensionProviders:\n- name: opa\n  envoyExtAuthzGrpc: {service: opa.default.svc.cluster.local, port: 9191}\n- name: zipkin\n  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}\n";
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: opa}\nspec:\n  ports: [{name: grpc, port: 9191}]\n---\n";
    let custom = |p: &str| {
        ap(&format!(
            "  action: CUSTOM\n  provider: {{name: {p}}}\n  rules: [{{}}]"
        ))
    };
    let w = world_with_mesh(mesh, &format!("{svc}{}", custom("opa")));
    assert!(w.errors.is_empty(), "{}", dump(&w.errors));
    assert_eq!(w.authz.len(), 1);
    for (p, files, why) in [
        (
            "nosuch",
            format!("{svc}{}", custom("nosuch")),
            "no extension provider",
        ),
        (
            "zipkin",
            format!("{svc}{}", custom("zipkin")),
            "not an ext_authz provider",
        ),
        ("opa", custom("opa"), "not in the registry"),
        (
            "pilotfish",
            custom("pilotfish"),
            "--authz-advertise-address",
        ),
    ] {
        let w = world_with_mesh(mesh, &files);
        assert_eq!(w.errors.len(), 1, "{p}: {}", dump(&w.errors));
        assert_eq!(w.errors[0].field, "spec.provider.name", "{p}");
        assert!(w.errors[0].reason.contains(why), "{p}: {}", w.errors[0]);
        assert!(w.authz.is_empty(), "{p}: the policy must not be served");
    }
}

#[test]
fn mesh_config_errors_name_the_field() {
    use pilotfish::api::mesh::parse_mesh;
    for (yaml, want) in [
        ("rootNamespce: x", "rootNamespce: unknown"),
        ("extensionProviders: [{name: a, envoyExtAuthzGrpc: {service: s, port: 0}}]", "extensionProviders[0].envoyExtAuthzGrpc.port"),
        ("extensionProviders: [{name: a, envoyExtAuthzGrpc: {service: s, port: 1, failOpn: true}}]", "failOpn"),
        ("extensionProviders: [{name: a, envoyExtAuthzHttp: {service: s, port: 1, timeout: soon}}]", "extensionProviders[0].envoyExtAuthzHttp.timeout"),
        ("extensionProviders: [{name: a, envoyExtAuthzHttp: {service: s, port: 1, statusOnError: \"99\"}}]", "statusOnError"),
        ("extensionProviders: [{name: a}]", "exactly one provider kind"),
        ("extensionProviders: [{name: pilotfish, envoyExtAuthzGrpc: {service: s, port: 1}}]", "built-in"),
        ("extensionProviders: [{name: a, envoyExtAuthzGrpc: {service: s, port: 1}}, {name: a, envoyExtAuthzGrpc: {service: s, port: 1}}]", "duplicate provider"),
        ("pathNormalization: {normalization: SOMETIMES}", "pathNormalization.normalization"),
        ("outboundTrafficPolicy: {mode: MAYBE}", "outboundTrafficPolicy.mode"),
    ] {
        let errs = parse_mesh(yaml).expect_err(yaml);
        assert!(errs.iter().any(|e| e.contains(want)), "{yaml}: {errs:?}");
    }
    let (_, warnings) = parse_mesh("accessLogFile: /dev/stdout\nenableAutoMtls: true\n").unwrap();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
}

#[test]
fn validate_command_fails_on_a_bad_policy() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(
        &f,
        ap("  action: CUSTOM\n  provider: {name: x}\n  rules: [{}]"),
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pilotfish"))
        .arg("validate")
        .arg(&f)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(
            "AuthorizationPolicy default/p: spec.provider.name: no extension provider \"x\""
        ),
        "{out}"
    );
}

#[test]
fn check_command_names_the_deciding_policy() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("mesh.yaml");
    std::fs::write(
        &f,
        "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  selector: {app: b}\n  ports: [{name: http, port: 8080}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: b-1}\nspec:\n  address: 10.2.2.2\n  labels: {app: b}\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-a}\nspec:\n  selector: {matchLabels: {app: b}}\n  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/a]}}]}]\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-intruder}\nspec:\n  action: DENY\n  rules: [{when: [{key: \"request.auth.claims[role]\", values: [intruder]}]}]\n",
    )
    .unwrap();
    let check = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_pilotfish"))
            .arg("check")
            .arg(&f)
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let (code, out) = check(&[
        "--to",
        "default/b-1",
        "--port",
        "8080",
        "--from",
        "default/a",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("ALLOW: allowed by AuthorizationPolicy default/allow-a rule[0]"),
        "{out}"
    );
    let (code, out) = check(&[
        "--to",
        "10.2.2.2",
        "--port",
        "8080",
        "--from",
        "default/a",
        "--path",
        "/ADMIN/x",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("DENY: denied by AuthorizationPolicy default/deny-admin rule[0]"),
        "{out}"
    );
    let (code, out) = check(&["--to", "default/b-1", "--port", "8080"]);
    assert_eq!(code, Some(1), "plaintext caller: {out}");
    assert!(out.contains("no ALLOW rule matched"), "{out}");
    let (code, out) = check(&[
        "--to",
        "default/b-1",
        "--port",
        "8080",
        "--from",
        "default/a",
        "--jwt-claims",
        r#"{"iss": "i", "sub": "s", "role": "intruder"}"#,
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("denied by AuthorizationPolicy default/deny-intruder"),
        "{out}"
    );
    // On a TCP connection the DENY's HTTP-only paths drop out: it denies everything.
    let (code, out) = check(&[
        "--to",
        "default/b-1",
        "--port",
        "8080",
        "--from",
        "default/a",
        "--tcp",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("denied by AuthorizationPolicy default/deny-admin"),
        "{out}"
    );
    let (code, _) = check(&["--to", "default/nosuch", "--port", "8080"]);
    assert_eq!(code, Some(2));
}

#[test]
fn equal_policies_encode_to_equal_versions() {
    use pilotfish::xds::cache::Generation;
    use pilotfish::xds::{LISTENER, ROUTE};
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  selector: {app: b}\n  ports: [{name: http, port: 8080}, {name: tcp, port: 9000}]\n---\n\
        apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: b-1}\nspec:\n  address: 10.2.2.2\n  labels: {app: b}\n---\n\
        apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: j}\nspec:\n  jwtRules:\n  - {issuer: a, jwks: '{\"keys\":[{\"kty\":\"oct\",\"k\":\"AA\"}]}'}\n  - {issuer: b, jwks: '{\"keys\":[{\"kty\":\"oct\",\"k\":\"AA\"}]}'}\n  - {issuer: c, jwks: '{\"keys\":[{\"kty\":\"oct\",\"k\":\"AA\"}]}'}\n---\n";
    let mut policies = String::new();
    for i in 0..30 {
        policies.push_str(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{i}}}\nspec:\n  action: {}\n  rules: [{{to: [{{operation: {{paths: [\"/p{i}*\"]}}}}]}}, {{from: [{{source: {{ipBlocks: [\"10.{i}.0.0/16\"]}}}}]}}]\n---\n",
            ["ALLOW", "DENY", "AUDIT"][i % 3]
        ));
    }
    let versions = || {
        let w = pilotfish::app::world_from_files(
            &[("a.yaml", text), ("p.yaml", policies.as_str())],
            MeshConfig::default(),
        );
        assert!(w.errors.is_empty(), "{}", dump(&w.errors));
        let g = Generation::new(std::sync::Arc::new(w));
        let proxy = pilotfish::model::Proxy {
            namespace: "default".into(),
            ips: vec!["10.2.2.2".into()],
            labels: [("app".to_string(), "b".to_string())].into(),
            ..Default::default()
        };
        let r = g.for_proxy(&proxy);
        let mut v: Vec<(String, String)> = [LISTENER, ROUTE]
            .iter()
            .flat_map(|t| r.values(t))
            .map(|x| (x.name.clone(), x.version.clone()))
            .collect();
        v.sort();
        v
    };
    let first = versions();
    assert!(
        first.iter().any(|(n, _)| n == "inbound|8080||"),
        "{first:?}"
    );
    for _ in 0..5 {
        assert_eq!(
            versions(),
            first,
            "the same policies must give the same bytes"
        );
    }
}

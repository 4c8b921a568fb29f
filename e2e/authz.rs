//! Authorization end to end: AuthorizationPolicies enforced by real Envoy sidecars (RBAC
//! filters pilotfish generates), with real mTLS identities, between real pods.
//!
//! - `conformance_table`: every row a real request from a real caller (its SPIFFE identity
//!   from its certificate, or plaintext from a pod outside the mesh) to a real sidecar, and
//!   the status it must get. Printed as a table.
//! - `bypass_corpus`: path and host tricks against `DENY /admin*`, straight into the
//!   server's sidecar and through the caller's sidecar; zero may reach the app.
#[path = "support/mod.rs"]
mod support;

use std::time::Duration;
use support::{need_root, wait_until, write_file as write, ControlPlane, Mesh, Pod, PodSpec};

const READY: Duration = Duration::from_secs(40);
const HOST_B: &str = "b.default.svc.cluster.local";
const HOST_T: &str = "t.default.svc.cluster.local";

/// Services b (HTTP 8080) and t (TCP 9000) backed by sidecar pods at .11 and .12.
fn registry(mesh: &Mesh) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec:\n  clusterIP: {vb}\n  selector: {{app: b}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: b-1}}\nspec:\n  address: {b}\n  serviceAccount: b\n  labels: {{app: b, security.istio.io/tlsMode: istio}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: t}}\nspec:\n  clusterIP: {vt}\n  selector: {{app: t}}\n  ports: [{{name: tcp, port: 9000}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: t-1}}\nspec:\n  address: {t}\n  serviceAccount: t\n  labels: {{app: t, security.istio.io/tlsMode: istio}}\n",
        vb = mesh.vip(0),
        vt = mesh.vip(1),
        b = mesh.addr(11),
        t = mesh.addr(12),
    )
}

struct Bed {
    mesh: Mesh,
    dir: tempfile::TempDir,
    cp: ControlPlane,
    b: Pod,
    t: Pod,
    /// Callers: a, c (namespace default), x (namespace other), p (no sidecar).
    a: Pod,
    c: Pod,
    x: Pod,
    p: Pod,
}

fn bed() -> Bed {
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "registry.yaml", &registry(&mesh));
    let cp = ControlPlane::start_with(&mesh, dir.path(), &["--debounce-ms", "50"]);
    let server = |name: &str, host: u8, port: u16| {
        mesh.start_pod(
            PodSpec::new(name)
                .host(host)
                .port(port)
                .service_account(name)
                .label("app", name)
                .secure(&cp),
        )
    };
    let b = server("b", 11, 8080);
    let t = server("t", 12, 9000);
    let client = |name: &str, host: u8, ns: &str| {
        let p = mesh.start_pod(
            PodSpec::new(name)
                .host(host)
                .namespace(ns)
                .service_account(name)
                .secure(&cp),
        );
        p.hosts(&[
            (HOST_B, &mesh.vip(0).to_string()),
            (HOST_T, &mesh.vip(1).to_string()),
        ]);
        p
    };
    let a = client("a", 20, "default");
    let c = client("c", 21, "default");
    let x = client("x", 22, "other");
    let p = mesh.start_pod(PodSpec::new("p").host(23).sidecar(false));
    let bed = Bed {
        mesh,
        dir,
        cp,
        b,
        t,
        a,
        c,
        x,
        p,
    };
    for (who, caller) in [("a", &bed.a), ("c", &bed.c), ("x", &bed.x)] {
        let ok = wait_until(READY, || {
            send(&bed, caller, &Req::get(Target::B, "/")).0 == 200
                && send(&bed, caller, &Req::get(Target::T, "/")).0 == 200
        });
        assert!(ok, "{who} never reached b and t\n{}", bed.cp.log_tail(30));
    }
    bed
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Target {
    /// Service b through the caller's sidecar (or b's pod address for a caller without one).
    B,
    /// TCP service t, the same way.
    T,
}

#[derive(Clone, Debug)]
struct Req {
    target: Target,
    method: &'static str,
    /// Sent exactly (`--request-target`).
    path: &'static str,
    headers: Vec<&'static str>,
}

impl Req {
    fn get(target: Target, path: &'static str) -> Req {
        Req {
            target,
            method: "GET",
            path,
            headers: vec![],
        }
    }
    fn method(mut self, m: &'static str) -> Req {
        self.method = m;
        self
    }
    fn header(mut self, h: &'static str) -> Req {
        self.headers.push(h);
        self
    }
}

/// One request: (status, body); status 0 when the connection closed without an answer.
fn send(bed: &Bed, from: &Pod, r: &Req) -> (u16, String) {
    let host = match (r.target, from.sidecar) {
        (Target::B, true) => format!("{HOST_B}:8080"),
        (Target::T, true) => format!("{HOST_T}:9000"),
        (Target::B, false) => bed.b.addr(),
        (Target::T, false) => bed.t.addr(),
    };
    let mut args = vec![
        "-m".to_string(),
        "5".into(),
        "-X".into(),
        r.method.into(),
        "--path-as-is".into(),
        "--request-target".into(),
        r.path.into(),
    ];
    for h in &r.headers {
        args.push("-H".into());
        args.push(h.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    from.curl(&format!("http://{host}/"), &args)
}

struct Row {
    what: &'static str,
    from: &'static str,
    req: Req,
    want: u16,
}

fn row(what: &'static str, from: &'static str, req: Req, want: u16) -> Row {
    Row {
        what,
        from,
        req,
        want,
    }
}

struct Group {
    name: &'static str,
    /// AuthorizationPolicies (YAML documents); a marker policy is added to every group.
    policies: String,
    rows: Vec<Row>,
}

fn ap(name: &str, ns: &str, body: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}\n---\n"
    )
}

const SA_A: &str = "cluster.local/ns/default/sa/a";
const SA_C: &str = "cluster.local/ns/default/sa/c";

fn groups(mesh: &Mesh) -> Vec<Group> {
    use Target::*;
    let g = |name, policies: String, rows| Group {
        name,
        policies,
        rows,
    };
    let p_ip = format!("{}/32", mesh.addr(23));
    let subnet = format!("{}/24", mesh.gateway());
    vec![
        g("no policy", String::new(), vec![
            row("no policy: allowed", "a", Req::get(B, "/"), 200),
            row("no policy: plaintext allowed", "p", Req::get(B, "/"), 200),
            row("no policy: TCP allowed", "a", Req::get(T, "/"), 200),
        ]),
        g("allow principal a on b", ap("allow-a", "default", &format!(
            "  selector: {{matchLabels: {{app: b}}}}\n  action: ALLOW\n  rules: [{{from: [{{source: {{principals: [\"{SA_A}\"]}}}}]}}]")), vec![
            row("ALLOW principal matches", "a", Req::get(B, "/"), 200),
            row("ALLOW with nothing matching denies", "c", Req::get(B, "/"), 403),
            row("ALLOW principal: plaintext has none", "p", Req::get(B, "/"), 403),
            row("workload scope: t not selected", "a", Req::get(T, "/"), 200),
        ]),
        g("empty allow on b", ap("allow-nothing", "default",
            "  selector: {matchLabels: {app: b}}\n  action: ALLOW"), vec![
            row("ALLOW without rules denies all", "a", Req::get(B, "/"), 403),
            row("ALLOW without rules: other workload untouched", "a", Req::get(T, "/"), 200),
        ]),
        g("deny beats allow", ap("allow-all", "default",
            "  selector: {matchLabels: {app: b}}\n  rules: [{}]")
            + &ap("deny-c", "default", &format!(
            "  selector: {{matchLabels: {{app: b}}}}\n  action: DENY\n  rules: [{{from: [{{source: {{principals: [\"{SA_C}\"]}}}}]}}]")), vec![
            row("ALLOW all, DENY c: a passes", "a", Req::get(B, "/"), 200),
            row("DENY beats ALLOW", "c", Req::get(B, "/"), 403),
            row("DENY c: x in another namespace passes", "x", Req::get(B, "/"), 200),
        ]),
        g("deny paths", ap("deny-admin", "default",
            "  selector: {matchLabels: {app: b}}\n  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin*\", \"*.secret\", \"/exact\"]}}]}]"), vec![
            row("DENY prefix path", "a", Req::get(B, "/admin"), 403),
            row("DENY prefix path, deeper", "a", Req::get(B, "/admin/x"), 403),
            row("DENY suffix path", "a", Req::get(B, "/keys.secret"), 403),
            row("DENY exact path", "a", Req::get(B, "/exact"), 403),
            row("DENY exact path: longer passes", "a", Req::get(B, "/exactly"), 200),
            row("DENY paths: other path passes", "a", Req::get(B, "/public"), 200),
            row("DENY path ignores the query", "a", Req::get(B, "/admin?x=1"), 403),
        ]),
        g("deny notPaths", ap("deny-not-public", "default",
            "  selector: {matchLabels: {app: b}}\n  action: DENY\n  rules: [{to: [{operation: {notPaths: [\"/public*\"]}}]}]"), vec![
            row("DENY notPaths: excluded path passes", "a", Req::get(B, "/public/x"), 200),
            row("DENY notPaths: the rest denied", "a", Req::get(B, "/private"), 403),
        ]),
        g("allow methods and notPaths", ap("allow-get", "default",
            "  selector: {matchLabels: {app: b}}\n  rules: [{to: [{operation: {methods: [GET], notPaths: [\"/secret*\"]}}]}]"), vec![
            row("ALLOW GET", "a", Req::get(B, "/"), 200),
            row("ALLOW GET: POST denied", "a", Req::get(B, "/").method("POST"), 403),
            row("ALLOW notPaths: excluded path denied", "a", Req::get(B, "/secret"), 403),
            row("ALLOW notPaths ignores case when excluding", "a", Req::get(B, "/SECRET"), 403),
        ]),
        g("deny notMethods", ap("deny-not-get", "default",
            "  selector: {matchLabels: {app: b}}\n  action: DENY\n  rules: [{to: [{operation: {notMethods: [GET]}}]}]"), vec![
            row("DENY notMethods: GET passes", "a", Req::get(B, "/"), 200),
            row("DENY notMethods: DELETE denied", "a", Req::get(B, "/").method("DELETE"), 403),
        ]),
        g("deny notPrincipals", ap("deny-not-a", "default", &format!(
            "  selector: {{matchLabels: {{app: b}}}}\n  action: DENY\n  rules: [{{from: [{{source: {{notPrincipals: [\"{SA_A}\"]}}}}]}}]")), vec![
            row("DENY notPrincipals: a passes", "a", Req::get(B, "/"), 200),
            row("DENY notPrincipals: c denied", "c", Req::get(B, "/"), 403),
            row("DENY notPrincipals: plaintext denied", "p", Req::get(B, "/"), 403),
        ]),
        g("allow namespaces", ap("allow-other", "default",
            "  selector: {matchLabels: {app: b}}\n  rules: [{from: [{source: {namespaces: [other]}}]}]"), vec![
            row("ALLOW namespaces: x (other) passes", "x", Req::get(B, "/"), 200),
            row("ALLOW namespaces: a (default) denied", "a", Req::get(B, "/"), 403),
            row("ALLOW namespaces: plaintext denied", "p", Req::get(B, "/"), 403),
        ]),
        g("allow principal wildcards", ap("allow-wild", "default",
            "  selector: {matchLabels: {app: b}}\n  rules: [{from: [{source: {principals: [\"*/sa/a\", \"cluster.local/ns/other/*\"]}}]}]"), vec![
            row("ALLOW principal suffix *", "a", Req::get(B, "/"), 200),
            row("ALLOW principal prefix *", "x", Req::get(B, "/"), 200),
            row("ALLOW principal wildcards: c denied", "c", Req::get(B, "/"), 403),
        ]),
        g("allow ipBlocks", ap("allow-p-ip", "default", &format!(
            "  selector: {{matchLabels: {{app: b}}}}\n  rules: [{{from: [{{source: {{ipBlocks: [\"{p_ip}\"]}}}}]}}]")), vec![
            row("ALLOW ipBlocks: p's address passes", "p", Req::get(B, "/"), 200),
            row("ALLOW ipBlocks: a's address denied", "a", Req::get(B, "/"), 403),
        ]),
        g("deny notIpBlocks", ap("deny-outside", "default", &format!(
            "  selector: {{matchLabels: {{app: b}}}}\n  action: DENY\n  rules: [{{from: [{{source: {{notIpBlocks: [\"{subnet}\"]}}}}]}}]")), vec![
            row("DENY notIpBlocks: inside the block passes", "a", Req::get(B, "/"), 200),
        ]),
        g("deny remoteIpBlocks", ap("deny-remote", "default",
            "  selector: {matchLabels: {app: b}}\n  action: DENY\n  rules: [{from: [{source: {remoteIpBlocks: [\"192.0.2.7/32\"]}}]}]"), vec![
            row("DENY remoteIpBlocks: X-Forwarded-For in the block", "p", Req::get(B, "/").header("X-Forwarded-For: 192.0.2.7"), 403),
            row("DENY remoteIpBlocks: another client passes", "p", Req::get(B, "/"), 200),
        ]),
        g("allow hosts", ap("allow-host", "default", &format!(
            "  selector: {{matchLabels: {{app: b}}}}\n  rules: [{{to: [{{operation: {{hosts: [\"{HOST_B}\"]}}}}]}}]")), vec![
            row("ALLOW hosts: host with port", "a", Req::get(B, "/"), 200),
            row("ALLOW hosts: without port", "p", Req::get(B, "/").header("Host: b.default.svc.cluster.local"), 200),
            row("ALLOW hosts: case-insensitive", "p", Req::get(B, "/").header("Host: B.Default.SVC.cluster.local:8080"), 200),
            row("ALLOW hosts: another host denied", "p", Req::get(B, "/").header("Host: evil.example"), 403),
        ]),
        g("deny hosts", ap("deny-host", "default",
            "  selector: {matchLabels: {app: b}}\n  action: DENY\n  rules: [{to: [{operation: {hosts: [\"admin.example\", \"*.internal\"]}}]}]"), vec![
            row("DENY hosts: exact", "p", Req::get(B, "/").header("Host: admin.example"), 403),
            row("DENY hosts: upper case", "p", Req::get(B, "/").header("Host: ADMIN.Example"), 403),
            row("DENY hosts: with port", "p", Req::get(B, "/").header("Host: admin.example:8080"), 403),
            row("DENY hosts: suffix wildcard with port", "p", Req::get(B, "/").header("Host: db.internal:8080"), 403),
            row("DENY hosts: other host passes", "p", Req::get(B, "/").header("Host: public.example"), 200),
        ]),
        g("when headers", ap("allow-token", "default",
            "  selector: {matchLabels: {app: b}}\n  rules: [{when: [{key: \"request.headers[x-token]\", values: [secret, \"pre*\"]}]}]"), vec![
            row("when request.headers: value matches", "a", Req::get(B, "/").header("x-token: secret"), 200),
            row("when request.headers: prefix form", "a", Req::get(B, "/").header("x-token: prefixed"), 200),
            row("when request.headers: wrong value denied", "a", Req::get(B, "/").header("x-token: nope"), 403),
            row("when request.headers: missing denied", "a", Req::get(B, "/"), 403),
        ]),
        g("when source and destination", ap("deny-when", "default",
            "  selector: {matchLabels: {app: b}}\n  action: DENY\n  rules:\n  - when: [{key: source.principal, values: [\"cluster.local/ns/default/sa/c\"]}]\n  - when: [{key: source.namespace, values: [other]}, {key: destination.port, values: [\"8080\"]}]"), vec![
            row("when source.principal denies c", "c", Req::get(B, "/"), 403),
            row("when source.namespace + destination.port deny x", "x", Req::get(B, "/"), 403),
            row("when: a matches neither", "a", Req::get(B, "/"), 200),
        ]),
        g("when notValues", ap("deny-notvalues", "default",
            "  selector: {matchLabels: {app: b}}\n  action: DENY\n  rules: [{when: [{key: source.ip, notValues: [\"0.0.0.0/0\"]}]}]"), vec![
            row("when notValues: every IPv4 source excluded, passes", "a", Req::get(B, "/"), 200),
        ]),
        g("serviceAccounts", ap("allow-sa", "default",
            "  selector: {matchLabels: {app: b}}\n  rules: [{from: [{source: {serviceAccounts: [default/a]}}]}]"), vec![
            row("ALLOW serviceAccounts: a passes", "a", Req::get(B, "/"), 200),
            row("ALLOW serviceAccounts: c denied", "c", Req::get(B, "/"), 403),
        ]),
        g("audit", ap("audit-all", "default",
            "  selector: {matchLabels: {app: b}}\n  action: AUDIT\n  rules: [{to: [{operation: {paths: [\"/audited\"]}}]}]"), vec![
            row("AUDIT changes nothing (matching)", "c", Req::get(B, "/audited"), 200),
            row("AUDIT changes nothing (other)", "c", Req::get(B, "/"), 200),
        ]),
        g("namespace scope", ap("deny-all-default", "default",
            "  action: DENY\n  rules: [{}]")
            + &ap("deny-all-other", "other", "  action: DENY\n  rules: [{}]"), vec![
            row("namespace DENY all: b in it", "a", Req::get(B, "/"), 403),
            row("namespace DENY all: TCP t in it", "a", Req::get(T, "/"), 0),
        ]),
        g("other namespace scope", ap("deny-all-other", "other", "  action: DENY\n  rules: [{}]"), vec![
            row("a policy of another namespace does not apply", "a", Req::get(B, "/"), 200),
        ]),
        g("mesh scope", ap("deny-c-mesh", "istio-system", &format!(
            "  action: DENY\n  rules: [{{from: [{{source: {{principals: [\"{SA_C}\"]}}}}]}}]")), vec![
            row("root namespace DENY: b", "c", Req::get(B, "/"), 403),
            row("root namespace DENY: TCP t", "c", Req::get(T, "/"), 0),
            row("root namespace DENY: a untouched", "a", Req::get(B, "/"), 200),
        ]),
        g("mesh scope selector", ap("allow-b-mesh", "istio-system", &format!(
            "  selector: {{matchLabels: {{app: b}}}}\n  rules: [{{from: [{{source: {{principals: [\"{SA_A}\"]}}}}]}}]")), vec![
            row("root namespace selector applies in default", "c", Req::get(B, "/"), 403),
            row("root namespace selector: not t", "c", Req::get(T, "/"), 200),
        ]),
        g("targetRef service", ap("deny-c-svc", "default", &format!(
            "  targetRefs: [{{kind: Service, group: \"\", name: b}}]\n  action: DENY\n  rules: [{{from: [{{source: {{principals: [\"{SA_C}\"]}}}}]}}]")), vec![
            row("targetRef Service b: c denied", "c", Req::get(B, "/"), 403),
            row("targetRef Service b: t untouched", "c", Req::get(T, "/"), 200),
        ]),
        g("custom asked first", ap("allow-all-b", "default",
            "  selector: {matchLabels: {app: b}}\n  rules: [{}]")
            + &ap("deny-c-custom", "default", &format!(
            "  selector: {{matchLabels: {{app: b}}}}\n  action: DENY\n  rules: [{{from: [{{source: {{principals: [\"{SA_C}\"]}}}}], to: [{{operation: {{paths: [\"/custom*\"]}}}}]}}]"))
            + "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: central\n  namespace: default\n  annotations: {authz.pilotfish.io/deny-status: \"418\"}\nspec:\n  selector: {matchLabels: {app: b}}\n  action: CUSTOM\n  provider: {name: pilotfish}\n  rules: [{to: [{operation: {paths: [\"/custom*\"]}}]}]\n---\n", vec![
            row("CUSTOM answers before DENY (its own status)", "c", Req::get(B, "/custom/x"), 418),
            row("CUSTOM allows, nothing denies", "a", Req::get(B, "/custom/x"), 200),
            row("CUSTOM rules select: other paths not asked", "c", Req::get(B, "/other"), 200),
        ]),
        g("tcp allow principal", ap("allow-a-tcp", "default", &format!(
            "  selector: {{matchLabels: {{app: t}}}}\n  rules: [{{from: [{{source: {{principals: [\"{SA_A}\"]}}}}], to: [{{operation: {{ports: [\"9000\"]}}}}]}}]")), vec![
            row("TCP ALLOW principal + port: a passes", "a", Req::get(T, "/"), 200),
            row("TCP ALLOW principal: c refused", "c", Req::get(T, "/"), 0),
            row("TCP ALLOW principal: plaintext refused", "p", Req::get(T, "/"), 0),
        ]),
        g("tcp allow http-only", ap("allow-get-tcp", "default",
            "  selector: {matchLabels: {app: t}}\n  rules: [{to: [{operation: {methods: [GET]}}]}]"), vec![
            row("TCP ALLOW with HTTP-only field matches nothing", "a", Req::get(T, "/"), 0),
        ]),
        g("tcp deny http-only", ap("deny-admin-tcp", "default",
            "  selector: {matchLabels: {app: t}}\n  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin\"]}}]}]"), vec![
            row("TCP DENY drops HTTP-only fields: denies all", "a", Req::get(T, "/"), 0),
        ]),
        g("tcp deny notPorts", ap("deny-other-ports", "default",
            "  selector: {matchLabels: {app: t}}\n  action: DENY\n  rules: [{to: [{operation: {notPorts: [\"9000\"]}}]}]"), vec![
            row("TCP DENY notPorts: the port passes", "a", Req::get(T, "/"), 200),
        ]),
    ]
}

/// What `authz::decide` (the pure decision `pilotfish check` and the built-in provider use)
/// says of a row: true for allow.
fn central_decision(bed: &Bed, world: &pilotfish::model::World, r: &Row) -> bool {
    use pilotfish::authz::decide::{decide, HttpAttrs, Request, Verdict};
    let (server, port) = match r.req.target {
        Target::B => (&bed.b, 8080),
        Target::T => (&bed.t, 9000),
    };
    let server_ip = server.ip.to_string();
    let (_, policies) = world
        .authz_at(&server_ip, port)
        .expect("the server is a registry workload");
    let (principal, ip) = match r.from {
        "a" => (Some("spiffe://cluster.local/ns/default/sa/a"), bed.a.ip),
        "c" => (Some("spiffe://cluster.local/ns/default/sa/c"), bed.c.ip),
        "x" => (Some("spiffe://cluster.local/ns/other/sa/x"), bed.x.ip),
        _ => (None, bed.p.ip),
    };
    let headers: Vec<(String, String)> = r
        .req
        .headers
        .iter()
        .filter_map(|h| h.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let default_host = if principal.is_some() {
        format!("{HOST_B}:8080")
    } else {
        server.addr()
    };
    let host = header("host").unwrap_or(default_host);
    let req = Request {
        source_principal: principal,
        source_ip: Some(ip.into()),
        remote_ip: header("x-forwarded-for").and_then(|x| x.parse().ok()),
        destination_ip: Some(server.ip.into()),
        destination_port: port,
        http: (r.req.target == Target::B).then_some(HttpAttrs {
            method: r.req.method,
            path: r.req.path,
            host: &host,
            headers: &headers,
        }),
        ..Default::default()
    };
    decide(&policies, &req).verdict == Verdict::Allow
}

/// Marker AUDIT policy: when both servers' listeners carry it, the group is applied.
fn marker(i: usize) -> String {
    ap(
        &format!("marker-{i}"),
        "default",
        "  action: AUDIT\n  rules: [{to: [{operation: {paths: [\"/__marker\"]}}]}]",
    )
}

fn applied(pod: &Pod, i: usize) -> bool {
    pod.envoy_admin("/config_dump")
        .contains(&format!("policy[marker-{i}]"))
}

#[test]
fn conformance_table() {
    if !need_root("authz conformance") {
        return;
    }
    let bed = bed();
    let groups = groups(&bed.mesh);
    let mut table = Vec::new();
    let mut failed = 0;
    for (i, g) in groups.iter().enumerate() {
        write(
            bed.dir.path(),
            "policies.yaml",
            &(g.policies.clone() + &marker(i)),
        );
        let ok = wait_until(READY, || applied(&bed.b, i) && applied(&bed.t, i));
        assert!(
            ok,
            "group {:?} never reached the sidecars\n{}\n{}",
            g.name,
            bed.b
                .envoy_admin("/config_dump?resource=dynamic_route_configs"),
            bed.b
                .envoy_stats("listener_manager.lds")
                .iter()
                .map(|(k, v)| format!("{k}: {v}\n"))
                .collect::<String>()
        );
        assert_eq!(
            support::config_errors(&bed.cp),
            serde_json::json!([]),
            "group {:?}",
            g.name
        );
        // The same config, for the pure decision function (`pilotfish check`, the
        // built-in provider): it must agree with what the sidecars did.
        let world = pilotfish::app::world_from_files(
            &[
                ("registry.yaml", registry(&bed.mesh).as_str()),
                ("policies.yaml", g.policies.as_str()),
            ],
            Default::default(),
        );
        for r in &g.rows {
            let from = match r.from {
                "a" => &bed.a,
                "c" => &bed.c,
                "x" => &bed.x,
                "p" => &bed.p,
                other => panic!("no caller {other}"),
            };
            let (got, body) = send(&bed, from, &r.req);
            let central = central_decision(&bed, &world, r);
            let pass = got == r.want && central == (got == 200);
            failed += usize::from(!pass);
            table.push(format!(
                "{:<4} {:<26} {:<52} {:<2} {:<7} {:>4} {:>4} {:<5}{}",
                if pass { "ok" } else { "FAIL" },
                g.name,
                r.what,
                r.from,
                r.req.method,
                r.want,
                got,
                if central { "allow" } else { "deny" },
                if pass {
                    String::new()
                } else {
                    format!("  {}", body.lines().next().unwrap_or(""))
                }
            ));
        }
    }
    println!(
        "\n{:<4} {:<26} {:<52} {:<2} {:<7} {:>4} {:>4} {:<5}",
        "", "group", "row", "by", "method", "want", "got", "check"
    );
    println!("{}", table.join("\n"));
    println!("{} rows, {failed} failed", table.len());
    assert!(table.len() >= 40, "the table needs at least 40 rows");
    assert_eq!(failed, 0, "authorization rows failed (table above)");
    // AUDIT counted what it matched without refusing it.
    let audited: u64 = bed
        .b
        .envoy_stats("istio_audit_.*shadow_denied")
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert!(
        audited > 0,
        "AUDIT matches were not counted: {:?}",
        bed.b.envoy_stats("rbac")
    );
}

/// What the app would take the path for: decoded once, `\` as `/`, dot segments resolved,
/// slashes merged, lower case (an app that ignores case), query and fragment dropped.
fn app_view(raw: &str) -> String {
    let raw = raw.split(['?', '#']).next().unwrap_or("");
    let bytes = raw.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&raw[i + 1..i + 3], 16) {
                decoded.push(b);
                i += 3;
                continue;
            }
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let s = String::from_utf8_lossy(&decoded)
        .replace('\\', "/")
        .to_lowercase();
    let mut out: Vec<&str> = Vec::new();
    for seg in s.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    format!("/{}", out.join("/"))
}

#[test]
fn app_view_decodes_like_a_lenient_app() {
    assert_eq!(app_view("/public/%2e%2e/ADMIN?x"), "/admin");
    assert_eq!(app_view("/public%5C..%5Cadmin"), "/admin");
    assert_eq!(app_view("//a/./b#c"), "/a/b");
}

#[test]
fn bypass_corpus() {
    if !need_root("authz bypass corpus") {
        return;
    }
    let bed = bed();
    let policies = ap(
        "deny-admin",
        "default",
        "  selector: {matchLabels: {app: b}}\n  action: DENY\n  rules:\n  - to: [{operation: {paths: [\"/admin*\"]}}]\n  - to: [{operation: {hosts: [\"admin.example\"]}}]",
    ) + &marker(0);
    write(bed.dir.path(), "policies.yaml", &policies);
    assert!(
        wait_until(READY, || applied(&bed.b, 0)),
        "policy never reached b"
    );
    let paths: &[&'static str] = &[
        "/admin",
        "/admin/",
        "//admin",
        "///admin/x",
        "/./admin",
        "/public/../admin",
        "/public/./../admin",
        "/%61dmin",
        "/%41DMIN",
        "/admin%2F",
        "/%2Fadmin",
        "/public%2F..%2Fadmin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public%5C..%5Cadmin",
        "/public\\..\\admin",
        "/ADMIN",
        "/Admin/x",
        "/admin#x",
        "/admin?x",
        "/admin;x",
        "/admin%00",
        "/public%00/../admin",
    ];
    let hosts: &[&'static str] = &[
        "Host: admin.example",
        "Host: ADMIN.EXAMPLE",
        "Host: Admin.Example:8080",
        "Host: admin.example.",
        "Host: admin.example.:8080",
    ];
    let mut reqs: Vec<(String, Req)> = paths
        .iter()
        .map(|p| (p.to_string(), Req::get(Target::B, p)))
        .collect();
    reqs.extend(
        hosts
            .iter()
            .map(|h| (h.to_string(), Req::get(Target::B, "/").header(h))),
    );
    let mut table = Vec::new();
    let mut bypasses = 0;
    for (what, r) in &reqs {
        for (via, from) in [("direct", &bed.p), ("sidecar", &bed.a)] {
            // Through a's sidecar the Host header is the service's (a routes by it).
            if via == "sidecar" && !r.headers.is_empty() {
                continue;
            }
            let (code, body) = send(&bed, from, r);
            let seen = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["path"].as_str().map(str::to_string));
            let admin_path = seen
                .as_deref()
                .is_some_and(|p| app_view(p).starts_with("/admin"));
            let admin_host = r
                .headers
                .iter()
                .any(|h| h.to_lowercase().contains("admin.example"));
            let bypass = (200..400).contains(&code) && (admin_path || admin_host);
            bypasses += usize::from(bypass);
            table.push(format!(
                "{:<8} {:<28} {:<8} {:>4}  app saw {:<28} {}",
                if bypass { "BYPASS" } else { "held" },
                what,
                via,
                code,
                seen.unwrap_or_else(|| "-".into()),
                if code == 0 {
                    body.lines().next().unwrap_or("").to_string()
                } else {
                    String::new()
                }
            ));
            if what.contains("%00") {
                assert_eq!(code, 400, "{what} via {via} must be refused as malformed");
            }
        }
    }
    println!("\n{}", table.join("\n"));
    println!("{} requests, {bypasses} bypasses", table.len());
    assert_eq!(bypasses, 0, "bypasses of DENY /admin* (table above)");
    // The control row really is denied (the corpus is not passing for another reason).
    assert_eq!(send(&bed, &bed.p, &Req::get(Target::B, "/admin")).0, 403);
    assert_eq!(send(&bed, &bed.p, &Req::get(Target::B, "/public")).0, 200);
}

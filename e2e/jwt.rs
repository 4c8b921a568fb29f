//! RequestAuthentication end to end: pilotfish fetches the issuer's JSON Web Key Set from
//! its `jwksUri`, inlines it into the sidecar's `jwt_authn` filter, and real Envoy sidecars
//! refuse invalid tokens (401) while `requestPrincipals` and `request.auth.*` in
//! AuthorizationPolicies decide with the verified claims. Tokens are ES256, signed here.
#[path = "support/mod.rs"]
mod support;

use base64::Engine;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{need_root, wait_until, write_file as write, ControlPlane, Mesh, Pod, PodSpec};

const READY: Duration = Duration::from_secs(40);
const HOST_B: &str = "b.default.svc.cluster.local";
const ISS: &str = "https://issuer.test";
const ISS_DOWN: &str = "https://down.test";
/// An issuer whose tokens travel elsewhere (fromHeaders, fromParams, fromCookies) and are
/// forwarded to the app (forwardOriginalToken).
const ISS_ELSEWHERE: &str = "https://elsewhere.test";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

struct Key {
    pair: EcdsaKeyPair,
    kid: String,
}

impl Key {
    fn new(kid: &str) -> Key {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Key {
            pair: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .unwrap(),
            kid: kid.into(),
        }
    }
    fn jwk(&self) -> serde_json::Value {
        let p = self.pair.public_key().as_ref();
        serde_json::json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": b64(&p[1..33]), "y": b64(&p[33..65])})
    }
    fn sign(&self, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .pair
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(iss: &str, sub: &str, aud: &str, exp_in: i64) -> serde_json::Value {
    serde_json::json!({"iss": iss, "sub": sub, "aud": aud, "iat": now(),
        "exp": (now() as i64 + exp_in), "role": "reader", "org": {"team": "blue"}, "groups": ["dev", "ops"]})
}

/// A one-file HTTP server on loopback (the root namespace, where pilotfish runs).
fn serve_jwks(body: String) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, b) = if req.starts_with("GET /jwks.json ") {
                ("200 OK", body.as_str())
            } else {
                ("404 Not Found", "")
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                b.len()
            );
        }
    });
    port
}

fn config(mesh: &Mesh, jwks_port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec:\n  clusterIP: {vb}\n  selector: {{app: b}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: b-1}}\nspec:\n  address: {b}\n  serviceAccount: b\n  labels: {{app: b, security.istio.io/tlsMode: istio}}\n---\n\
         apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt}}\nspec:\n  selector: {{matchLabels: {{app: b}}}}\n  jwtRules:\n\
         \x20 - issuer: {ISS}\n    jwksUri: http://127.0.0.1:{jwks_port}/jwks.json\n    audiences: [pilotfish-test]\n    outputPayloadToHeader: x-jwt-payload\n    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]\n\
         \x20 - issuer: {ISS_DOWN}\n    jwksUri: http://127.0.0.1:1/jwks.json\n    timeout: 1s\n\
         \x20 - issuer: {ISS_ELSEWHERE}\n    jwksUri: http://127.0.0.1:{jwks_port}/jwks.json\n    fromHeaders: [{{name: x-jwt, prefix: \"Token \"}}]\n    fromParams: [tok]\n    fromCookies: [jwt]\n    forwardOriginalToken: true\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow}}\nspec:\n  selector: {{matchLabels: {{app: b}}}}\n  rules:\n\
         \x20 - to: [{{operation: {{paths: [\"/open*\"]}}}}]\n\
         \x20 - from: [{{source: {{requestPrincipals: [\"{ISS}/alice\"]}}}}]\n    to: [{{operation: {{paths: [\"/secure*\"]}}}}]\n\
         \x20 - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]\n    to: [{{operation: {{paths: [\"/any-token*\"]}}}}]\n\
         \x20 - to: [{{operation: {{paths: [\"/claims*\"]}}}}]\n    when:\n    - {{key: \"request.auth.claims[org][team]\", values: [blue]}}\n    - {{key: \"request.auth.claims[groups]\", values: [ops]}}\n    - {{key: request.auth.audiences, values: [pilotfish-test]}}\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-role}}\nspec:\n  selector: {{matchLabels: {{app: b}}}}\n  action: DENY\n  rules: [{{when: [{{key: \"request.auth.claims[role]\", values: [intruder]}}]}}]\n",
        vb = mesh.vip(0),
        b = mesh.addr(11),
    )
}

fn get(a: &Pod, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec!["-m", "5"];
    if let Some(h) = &auth {
        args.extend(["-H", h.as_str()]);
    }
    a.curl(&format!("http://{HOST_B}:8080{path}"), &args)
}

#[test]
fn jwt_tokens_are_verified_and_authorize() {
    if !need_root("jwt") {
        return;
    }
    let good = Key::new("k1");
    let forger = Key::new("k1"); // same kid, other key: a forgery
    let down_key = Key::new("k2");
    let jwks = serde_json::json!({"keys": [good.jwk()]}).to_string();
    let jwks_port = serve_jwks(jwks);
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "config.yaml", &config(&mesh, jwks_port));
    let cp = ControlPlane::start_with(&mesh, dir.path(), &["--debounce-ms", "50"]);
    let _b = mesh.start_pod(
        PodSpec::new("b")
            .host(11)
            .port(8080)
            .service_account("b")
            .label("app", "b")
            .secure(&cp),
    );
    let a = mesh.start_pod(PodSpec::new("a").host(20).service_account("a").secure(&cp));
    a.hosts(&[(HOST_B, &mesh.vip(0).to_string())]);
    let alice = good.sign(&claims(ISS, "alice", "pilotfish-test", 600));
    // Keys arrive once pilotfish fetched them: until then alice's token is refused.
    assert!(
        wait_until(READY, || get(&a, "/secure", Some(&alice)).0 == 200),
        "alice never got through: {:?}\n{}",
        get(&a, "/secure", Some(&alice)),
        cp.log_tail(20)
    );
    let mut alg_none = {
        let h = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let c = b64(claims(ISS, "alice", "pilotfish-test", 600)
            .to_string()
            .as_bytes());
        format!("{h}.{c}.")
    };
    let bob = good.sign(&claims(ISS, "bob", "pilotfish-test", 600));
    let rows: Vec<(&str, &str, Option<String>, u16)> = vec![
        ("missing token passes where no principal is required", "/open", None, 200),
        ("valid token passes", "/open", Some(alice.clone()), 200),
        ("requestPrincipals: alice", "/secure", Some(alice.clone()), 200),
        ("requestPrincipals: bob is not alice", "/secure", Some(bob.clone()), 403),
        ("requestPrincipals: no token", "/secure", None, 403),
        ("requestPrincipals *: any valid token", "/any-token", Some(bob.clone()), 200),
        ("requestPrincipals *: no token", "/any-token", None, 403),
        ("claims, nested claims, list claims, audiences", "/claims", Some(alice.clone()), 200),
        ("claims: no token", "/claims", None, 403),
        ("DENY on a claim", "/open", Some(good.sign(&serde_json::json!({"iss": ISS, "sub": "eve", "aud": "pilotfish-test", "exp": now() + 600, "role": "intruder"}))), 403),
        ("forged signature refused", "/open", Some(forger.sign(&claims(ISS, "alice", "pilotfish-test", 600))), 401),
        ("expired refused", "/open", Some(good.sign(&claims(ISS, "alice", "pilotfish-test", -600))), 401),
        ("wrong issuer refused", "/open", Some(good.sign(&claims("https://other.test", "alice", "pilotfish-test", 600))), 401),
        ("wrong audience refused (Envoy answers 403)", "/open", Some(good.sign(&claims(ISS, "alice", "someone-else", 600))), 403),
        ("alg none refused", "/open", Some(std::mem::take(&mut alg_none)), 401),
        ("garbage refused", "/open", Some("not.a.jwt".into()), 401),
        ("JWKS unreachable: the issuer's tokens are refused", "/open", Some(down_key.sign(&claims(ISS_DOWN, "alice", "x", 600))), 401),
    ];
    let mut failed = Vec::new();
    for (what, path, token, want) in &rows {
        let (got, body) = get(&a, path, token.as_deref());
        println!(
            "{:<4} {what:<50} {path:<10} {want} {got}",
            if got == *want { "ok" } else { "FAIL" }
        );
        if got != *want {
            failed.push(format!(
                "{what}: want {want}, got {got}: {}",
                body.lines().next().unwrap_or("")
            ));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
    // The app sees the payload and the claim header, and not the token (not forwarded).
    let (_, body) = get(&a, "/open", Some(&alice));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["headers"]["x-jwt-sub"], "alice", "{body}");
    assert!(v["headers"]["x-jwt-payload"].is_string(), "{body}");
    assert!(
        v["headers"]["authorization"].is_null(),
        "the token was forwarded: {body}"
    );
    // /debug/authorizationz: which rules apply to b, and the key sets' state (no keys).
    let (code, page) = cp.get("/debug/authorizationz?proxyID=b.default").unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&page).unwrap();
    let b = &v["proxies"][0];
    let jwt = b["request_authentication"].as_array().unwrap();
    assert_eq!(jwt.len(), 3, "{page}");
    assert_eq!(jwt[0]["jwks"], "fetched", "{page}");
    assert!(
        jwt[1]["jwks"].as_str().unwrap().starts_with("unavailable"),
        "{page}"
    );
    let policies = b["ports"][0]["policies"].to_string();
    assert!(
        policies.contains("AuthorizationPolicy default/allow")
            && policies.contains("default/deny-role"),
        "{page}"
    );
    assert!(
        b["ports"][0]["http_rbac_per_route"]["pilotfish.authz.allow"].is_object(),
        "{page}"
    );
    assert!(
        !page.contains("\"x\":"),
        "a key's coordinates are shown: {page}"
    );
    // Tokens found where the rule says: a header with its prefix, a query parameter, a
    // cookie (requestPrincipals `*` needs a verified token); forwarded to the app.
    let el = good.sign(&claims(ISS_ELSEWHERE, "carol", "x", 600));
    let via = |query: &str, args: Vec<String>| {
        let mut all: Vec<&str> = vec!["-m", "5"];
        all.extend(args.iter().map(String::as_str));
        a.curl(&format!("http://{HOST_B}:8080/any-token{query}"), &all)
    };
    let (code, body) = via("", vec!["-H".into(), format!("x-jwt: Token {el}")]);
    assert_eq!(code, 200, "fromHeaders with a prefix: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["headers"]["x-jwt"]
            .as_str()
            .is_some_and(|h| h.contains(&el)),
        "forwardOriginalToken: {body}"
    );
    assert_eq!(via(&format!("?tok={el}"), vec![]).0, 200, "fromParams");
    assert_eq!(
        via("", vec!["-b".into(), format!("jwt={el}")]).0,
        200,
        "fromCookies"
    );
    assert_eq!(
        via(
            "",
            vec![
                "-H".into(),
                format!("x-jwt: Token {}AAAAAAAAAA", &el[..el.len() - 10])
            ]
        )
        .0,
        401,
        "a broken token in the header is refused"
    );
    // Debug pages never show a token.
    for p in [
        "/debug/configz",
        "/debug/config_dump?proxyID=b",
        "/debug/authorizationz",
    ] {
        let (_, page) = cp.get(p).unwrap();
        assert!(!page.contains(&alice), "{p} shows a token");
    }
}

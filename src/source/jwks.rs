//! The JWKS source: fetches the JSON Web Key Sets that RequestAuthentication `jwksUri`s
//! name, so translation can inline them (Envoy never fetches keys itself).
//!
//! ```text
//!  config loop ──wanted URIs──► fetcher thread ──GET (timeout, size limit)──► fetched map
//!       ▲                                                                      │
//!       └──────────── wake (empty change event) + Index::set_jwks ◄────────────┘
//! ```
//! A set is refreshed every `REFRESH`; a failed fetch replaces the set with an error (the
//! issuer's tokens are refused until a fetch succeeds: never an old or fallback key) and is
//! retried every `RETRY`.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a fetched key set is fetched again.
pub const REFRESH: Duration = Duration::from_secs(20 * 60);
/// How soon a failed fetch is tried again.
pub const RETRY: Duration = Duration::from_secs(5);
/// The largest key set accepted.
pub const MAX_BYTES: u64 = 512 * 1024;

pub type Fetched = Arc<Mutex<BTreeMap<String, Result<Arc<str>, String>>>>;
/// URI → fetch timeout.
pub type Wanted = Arc<Mutex<BTreeMap<String, Duration>>>;

/// GET `uri` with a timeout and a size limit; the body must be a JSON Web Key Set.
pub fn fetch(uri: &str, timeout: Duration) -> Result<String, String> {
    let agent = ureq::AgentBuilder::new()
        .timeout(timeout)
        .redirects(0)
        .build();
    let resp = agent.get(uri).call().map_err(|e| match e {
        ureq::Error::Status(code, _) => format!("GET {uri}: HTTP {code}"),
        other => format!("GET {uri}: {other}"),
    })?;
    let mut body = String::new();
    resp.into_reader()
        .take(MAX_BYTES + 1)
        .read_to_string(&mut body)
        .map_err(|e| format!("GET {uri}: reading the body: {e}"))?;
    if body.len() as u64 > MAX_BYTES {
        return Err(format!("GET {uri}: key set over {MAX_BYTES} bytes"));
    }
    crate::api::security::check_jwks(&body).map_err(|e| format!("GET {uri}: {e}"))?;
    Ok(body)
}

/// Run the fetcher until `wake` is closed: keeps `fetched` to the URIs in `wanted`, and
/// calls `wake` after a change.
pub fn run(wanted: Wanted, fetched: Fetched, wake: impl Fn() -> bool) {
    run_every(wanted, fetched, wake, REFRESH, RETRY)
}

/// `run` with its intervals given (tests shorten them).
pub fn run_every(
    wanted: Wanted,
    fetched: Fetched,
    wake: impl Fn() -> bool,
    refresh: Duration,
    retry: Duration,
) {
    let mut last: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        let want = wanted.lock().unwrap().clone();
        let mut changed = false;
        {
            let mut f = fetched.lock().unwrap();
            let before = f.len();
            f.retain(|u, _| want.contains_key(u));
            last.retain(|u, _| want.contains_key(u));
            changed |= f.len() != before;
        }
        for (uri, timeout) in &want {
            let ok = matches!(fetched.lock().unwrap().get(uri), Some(Ok(_)));
            let due = match last.get(uri) {
                None => true,
                Some(t) => t.elapsed() >= if ok { refresh } else { retry },
            };
            if !due {
                continue;
            }
            let result = fetch(uri, *timeout).map(Arc::from);
            if let Err(e) = &result {
                tracing::warn!(uri = %uri, error = %e, "JWKS fetch failed: tokens of this issuer are refused");
            }
            last.insert(uri.clone(), Instant::now());
            let mut f = fetched.lock().unwrap();
            if f.get(uri) != Some(&result) {
                f.insert(uri.clone(), result);
                changed = true;
            }
        }
        if changed && !wake() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A key set that was fetched and then cannot be fetched again is dropped at the next
    /// refresh (the issuer's tokens are then refused), never kept.
    #[test]
    fn a_failed_refresh_replaces_the_old_key_set() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let uri = format!("http://{}/jwks.json", l.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            // Serve one fetch, then go away (the port refuses).
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = std::io::Read::read(&mut s, &mut buf);
            let body = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#;
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        });
        let wanted: Wanted = Default::default();
        wanted
            .lock()
            .unwrap()
            .insert(uri.clone(), Duration::from_secs(1));
        let fetched: Fetched = Default::default();
        let states = Arc::new(Mutex::new(Vec::new()));
        let (f, st, u) = (fetched.clone(), states.clone(), uri.clone());
        let runner = std::thread::spawn(move || {
            run_every(
                wanted,
                f.clone(),
                move || {
                    let ok = f.lock().unwrap().get(&u).map(|r| r.is_ok());
                    st.lock().unwrap().push(ok);
                    ok == Some(true) // stop once it failed
                },
                Duration::from_millis(50),
                Duration::from_millis(50),
            )
        });
        runner.join().unwrap();
        server.join().unwrap();
        assert_eq!(*states.lock().unwrap(), vec![Some(true), Some(false)]);
        assert!(fetched.lock().unwrap()[&uri].is_err());
    }
}

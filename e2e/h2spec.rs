//! HTTP/2 conformance of every port: h2spec (built from its Go module into a cache outside
//! the checkout) against the plaintext xDS port (pilotfish's own `xds::http2`), the TLS port
//! (xDS, SDS and the built-in ext_authz provider, on tonic/hyper) and the plaintext
//! ext_authz port, zero failures on each.
#[path = "support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;
use support::{h2spec_bin, run, ControlPlane};

/// pilotfish on a one-service config, on loopback ports.
fn control_plane() -> (tempfile::TempDir, ControlPlane) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("svc.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports: [{name: http, port: 80}]\n",
    )
    .unwrap();
    let cp = ControlPlane::start_local(dir.path(), &[]);
    (dir, cp)
}

/// (passed, skipped, failed) from h2spec's summary line, with its output.
fn h2spec(host_port: &str, tls: bool) -> ((u32, u32, u32), String) {
    let (host, port) = host_port.rsplit_once(':').unwrap();
    let mut c = Command::new(h2spec_bin());
    c.args(["-h", host, "-p", port, "-o", "3"]);
    if tls {
        c.args(["-t", "-k"]);
    }
    let o = run(&mut c, Duration::from_secs(300));
    let text = format!("{}{}", o.stdout, o.stderr);
    let summary = text
        .lines()
        .rev()
        .find(|l| l.contains(" tests, "))
        .unwrap_or_else(|| panic!("no h2spec summary:\n{text}"))
        .to_string();
    let num = |word: &str| -> u32 {
        summary
            .split(", ")
            .find(|p| p.ends_with(word))
            .and_then(|p| p.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    ((num("passed"), num("skipped"), num("failed")), text)
}

#[test]
fn every_port_passes_h2spec() {
    let (_dir, cp) = control_plane();
    for (name, addr, tls) in [
        (
            "plaintext xDS port (own HTTP/2 server)",
            cp.xds_address.clone(),
            false,
        ),
        (
            "TLS port (xDS, SDS, ext_authz)",
            cp.secure_address.clone(),
            true,
        ),
        ("plaintext ext_authz port", cp.authz_address.clone(), false),
    ] {
        let ((passed, skipped, failed), text) = h2spec(&addr, tls);
        println!("h2spec {name} {addr}: {passed} passed, {skipped} skipped, {failed} failed");
        let failures: Vec<&str> = text.lines().filter(|l| l.contains('×')).collect();
        assert_eq!(
            failed,
            0,
            "{name}: h2spec failures:\n{}",
            failures.join("\n")
        );
        assert!(passed >= 130, "{name}: only {passed} h2spec tests passed");
    }
}

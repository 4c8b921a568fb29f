//! The pure layers (`api`, `model`, `translate`, the authorization decision) must not reach
//! for IO frameworks:
//! no tokio, tonic, axum, kube client, notify or std::fs/net in their source.

use std::path::Path;

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn pure_layers_do_no_io() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let forbidden = [
        "tokio",
        "tonic",
        "axum",
        "kube::",
        "notify",
        "std::fs",
        "std::net::Tcp",
        "std::process",
        "reqwest",
        "hyper",
        "ureq",
    ];
    let mut bad = Vec::new();
    // The authorization decision is pure too (its gRPC server is `authz/server.rs`).
    for layer in [
        "api",
        "model",
        "translate",
        "authz/decide.rs",
        "authz/builtin.rs",
    ] {
        let mut fs = Vec::new();
        let path = root.join(layer);
        if path.is_file() {
            fs.push(path);
        } else {
            files(&path, &mut fs);
        }
        assert!(!fs.is_empty(), "no sources under src/{layer}");
        for f in fs {
            let text = std::fs::read_to_string(&f).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for word in forbidden {
                    if code.contains(word) {
                        bad.push(format!("{}:{}: uses {word}", f.display(), n + 1));
                    }
                }
            }
        }
    }
    assert!(bad.is_empty(), "IO in a pure layer:\n{}", bad.join("\n"));
}

//! Compiles a descriptor set of the Envoy API from envoy-types' own `.proto` copy, so the
//! binary can print Envoy's JSON form (config_dump, golden files) with prost-reflect.
//! Each root file gets its own protox compiler (a shared one resolves some relative names
//! differently from protoc).

use prost::Message;
use std::collections::BTreeMap;
use std::path::PathBuf;

const ROOTS: &[&str] = &[
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/config/bootstrap/v3/bootstrap.proto",
    "envoy/admin/v3/config_dump.proto",
    "envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/http/fault/v3/fault.proto",
    "envoy/extensions/filters/http/cors/v3/cors.proto",
    "envoy/extensions/filters/http/ext_authz/v3/ext_authz.proto",
    "envoy/extensions/filters/http/rbac/v3/rbac.proto",
    "envoy/extensions/filters/network/rbac/v3/rbac.proto",
    "envoy/extensions/filters/network/ext_authz/v3/ext_authz.proto",
    "envoy/extensions/filters/http/jwt_authn/v3/config.proto",
    "envoy/extensions/filters/listener/http_inspector/v3/http_inspector.proto",
    "envoy/extensions/filters/listener/original_dst/v3/original_dst.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/extensions/access_loggers/grpc/v3/als.proto",
    "envoy/extensions/access_loggers/file/v3/file.proto",
    "envoy/extensions/filters/udp/dns_filter/v3/dns_filter.proto",
    "envoy/extensions/filters/network/sni_cluster/v3/sni_cluster.proto",
    "envoy/extensions/network/dns_resolver/cares/v3/cares_dns_resolver.proto",
    "envoy/service/discovery/v3/discovery.proto",
];

fn envoy_types_proto_dir() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(PathBuf::from(&manifest).join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata json");
    let pkg = v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .expect("envoy-types in cargo metadata");
    PathBuf::from(pkg["manifest_path"].as_str().unwrap())
        .parent()
        .unwrap()
        .join("proto")
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let base = envoy_types_proto_dir();
    let includes: Vec<PathBuf> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    let data_plane = base.join("data-plane-api");
    let mut files: BTreeMap<String, prost_types::FileDescriptorProto> = BTreeMap::new();
    for root in ROOTS {
        let mut c = protox::Compiler::new(&includes).expect("protox compiler");
        c.include_imports(true);
        if let Err(e) = c.open_file(data_plane.join(root)) {
            panic!("compiling {root}: {e}");
        }
        for f in c.file_descriptor_set().file {
            files.entry(f.name().to_string()).or_insert(f);
        }
    }
    let set = prost_types::FileDescriptorSet {
        file: files.into_values().collect(),
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("envoy_descriptors.bin");
    std::fs::write(out, set.encode_to_vec()).unwrap();
}

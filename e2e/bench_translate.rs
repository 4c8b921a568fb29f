//! `cargo bench --bench translate`: translation of the full config for one sidecar with
//! 1,000 services and 1,000 VirtualServices (each with a header match, an 80/20 split across
//! two subsets, retries and a timeout), plus encoding into the shared xDS cache.
//! Prints figures; asserts nothing about time.

use pilotfish::model::{MeshConfig, Proxy};
use std::time::Instant;

fn config(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc{i}, namespace: ns{ns}}}\nspec:\n  selector: {{app: svc{i}}}\n  ports: [{{name: http, port: 8080}}, {{name: grpc, port: 9090}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: svc{i}-v1, namespace: ns{ns}}}\nspec: {{address: 10.{a}.{b}.1, labels: {{app: svc{i}, version: v1}}}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: svc{i}-v2, namespace: ns{ns}}}\nspec: {{address: 10.{a}.{b}.2, labels: {{app: svc{i}, version: v2}}}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc{i}, namespace: ns{ns}}}\nspec:\n  host: svc{i}\n  trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: 100}}}}, outlierDetection: {{consecutive5xxErrors: 5}}}}\n  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc{i}, namespace: ns{ns}}}\nspec:\n  hosts: [svc{i}]\n  http:\n  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n    route: [{{destination: {{host: svc{i}, subset: v2}}}}]\n  - route:\n    - {{destination: {{host: svc{i}, subset: v1}}, weight: 80}}\n    - {{destination: {{host: svc{i}, subset: v2}}, weight: 20}}\n    timeout: 5s\n    retries: {{attempts: 3, perTryTimeout: 2s}}\n---\n",
            ns = i % 10,
            a = i / 250,
            b = i % 250
        ));
    }
    s
}

fn main() {
    let n = std::env::var("BENCH_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let text = config(n);
    let t = Instant::now();
    let world = pilotfish::app::world_from_files(&[("bench.yaml", &text)], MeshConfig::default());
    let parse = t.elapsed();
    assert!(
        world.errors.is_empty(),
        "{:?}",
        &world.errors[..world.errors.len().min(3)]
    );
    let proxy = Proxy {
        id: "sidecar~10.0.0.1~a.ns0~ns0.svc.cluster.local".into(),
        namespace: "ns0".into(),
        ips: vec!["10.0.0.1".into()],
        ..Default::default()
    };
    let iters = 10;
    let mut best = f64::MAX;
    let mut total = 0.0;
    let mut sizes = (0, 0, 0, 0);
    for _ in 0..iters {
        let t = Instant::now();
        let cfg = pilotfish::translate::generate(&world, &proxy);
        let d = t.elapsed().as_secs_f64();
        best = best.min(d);
        total += d;
        sizes = (
            cfg.clusters.len(),
            cfg.endpoints.len(),
            cfg.listeners.len(),
            cfg.routes.len(),
        );
    }
    let routes: usize = {
        let cfg = pilotfish::translate::generate(&world, &proxy);
        cfg.routes
            .iter()
            .flat_map(|r| r.virtual_hosts.iter())
            .map(|v| v.routes.len())
            .sum()
    };
    let world = std::sync::Arc::new(world);
    let t = Instant::now();
    let gen = pilotfish::xds::cache::Generation::new(world.clone());
    let res = gen.for_proxy(&proxy);
    let encode = t.elapsed();
    let bytes: usize = [
        pilotfish::xds::CLUSTER,
        pilotfish::xds::ENDPOINT,
        pilotfish::xds::LISTENER,
        pilotfish::xds::ROUTE,
    ]
    .iter()
    .flat_map(|t| res.values(t))
    .map(|r| r.value.len())
    .sum();
    let t = Instant::now();
    let others = 100;
    for i in 0..others {
        let p = Proxy {
            id: format!("sidecar~10.0.9.{i}~p{i}.ns0~ns0.svc.cluster.local"),
            ips: vec![format!("10.0.9.{i}")],
            ..proxy.clone()
        };
        gen.for_proxy(&p);
    }
    let per_proxy_same_class = t.elapsed().as_secs_f64() / others as f64;
    println!(
        "translate: {n} services, {n} VirtualServices, {n} DestinationRules (parse+index {:.0} ms)",
        parse.as_secs_f64() * 1e3
    );
    println!(
        "translate: clusters={} endpoints={} listeners={} route_configs={} routes={routes}",
        sizes.0, sizes.1, sizes.2, sizes.3
    );
    println!("translate: full config for one sidecar: best {:.1} ms, mean {:.1} ms over {iters} runs (one core)", best * 1e3, total / iters as f64 * 1e3);
    println!(
        "translate: generation (translate + encode once) {:.1} ms, {:.2} MB encoded",
        encode.as_secs_f64() * 1e3,
        bytes as f64 / 1e6
    );
    println!(
        "translate: each further proxy of the same class: {:.3} ms (shared bytes, no re-encoding)",
        per_proxy_same_class * 1e3
    );
    vs_edit(&text, n);
    sidecar_scoping(&text, n);
}

/// Bytes one proxy gets with and without a Sidecar resource limiting it to its own
/// namespace (and istio-system): what Istio's Sidecar scoping saves, here as pilotfish
/// serves it (every type, encoded).
fn sidecar_scoping(text: &str, n: usize) {
    let sidecar = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: ns0}\nspec:\n  egress:\n  - hosts: [\"./*\", \"istio-system/*\"]\n";
    let proxy = Proxy {
        id: "sidecar~10.0.0.1~a.ns0~ns0.svc.cluster.local".into(),
        namespace: "ns0".into(),
        ips: vec!["10.0.0.1".into()],
        ..Default::default()
    };
    let measure = |files: &[(&str, &str)]| {
        let world = pilotfish::app::world_from_files(files, MeshConfig::default());
        assert!(world.errors.is_empty(), "{:?}", world.errors.first());
        let gen = pilotfish::xds::cache::Generation::new(std::sync::Arc::new(world));
        let res = gen.for_proxy(&proxy);
        let mut total = 0;
        let mut counts = Vec::new();
        for t in [
            pilotfish::xds::CLUSTER,
            pilotfish::xds::ENDPOINT,
            pilotfish::xds::LISTENER,
            pilotfish::xds::ROUTE,
        ] {
            let v = res.values(t);
            counts.push(v.len());
            total += v.iter().map(|r| r.value.len()).sum::<usize>();
        }
        (total, counts)
    };
    let (all, all_counts) = measure(&[("bench.yaml", text)]);
    let (scoped, scoped_counts) = measure(&[("bench.yaml", text), ("sidecar.yaml", sidecar)]);
    println!(
        "sidecar scoping: {n} services in 10 namespaces; a proxy of ns0 gets {:.2} MB (clusters/endpoints/listeners/routes {:?}) without a Sidecar, {:.2} MB ({:?}) with egress hosts [./*, istio-system/*]: {:.1}x less",
        all as f64 / 1e6,
        all_counts,
        scoped as f64 / 1e6,
        scoped_counts,
        all as f64 / scoped.max(1) as f64
    );
}

/// The control plane's work for one VirtualService edit, step by step (one core): the new
/// World, the consistency check, the next generation, and each namespace's route class in
/// its VHDS form (what delta sidecars of ten namespaces need before the push).
fn vs_edit(text: &str, n: usize) {
    use pilotfish::xds::cache::Generation;
    let class = |ns: usize| Proxy {
        id: format!("sidecar~10.0.8.{ns}~c.ns{ns}~ns{ns}.svc.cluster.local"),
        namespace: format!("ns{ns}"),
        ips: vec![format!("10.0.8.{ns}")],
        ..Default::default()
    };
    let w1 = std::sync::Arc::new(pilotfish::app::world_from_files(
        &[("bench.yaml", text)],
        MeshConfig::default(),
    ));
    let g1 = Generation::new(w1);
    for ns in 0..10 {
        g1.for_stream(&class(ns), true);
    }
    let mut best = [f64::MAX; 5];
    for round in 0..5 {
        let edited = text.replacen("timeout: 5s", &format!("timeout: {}s", 6 + round), 1);
        let t = Instant::now();
        let w2 =
            pilotfish::app::world_from_files(&[("bench.yaml", &edited)], MeshConfig::default());
        let world = t.elapsed().as_secs_f64();
        let t = Instant::now();
        pilotfish::app::consistency(&w2).expect("consistent");
        let check = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let g2 = Generation::next(std::sync::Arc::new(w2), Some(&g1));
        let next = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for ns in 0..10 {
            g2.for_stream(&class(ns), true);
        }
        let classes = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let default_ns = Proxy {
            namespace: "default".into(),
            ..Default::default()
        };
        g2.check_references(&default_ns).expect("consistent");
        let refs = t.elapsed().as_secs_f64();
        for (b, v) in best.iter_mut().zip([world, check, next, classes, refs]) {
            *b = b.min(v);
        }
    }
    println!(
        "vs edit: {n} services: world from all files {:.1} ms (the server parses only the edited file), \
         full consistency check {:.1} ms (not needed for this edit), next generation {:.1} ms, \
         10 route classes in VHDS form {:.1} ms, reference check of the new generation {:.1} ms (best of 5, one core)",
        best[0] * 1e3,
        best[1] * 1e3,
        best[2] * 1e3,
        best[3] * 1e3,
        best[4] * 1e3
    );
}

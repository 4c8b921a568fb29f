//! Semantic checks that serde cannot express: one-of fields, ranges, durations, regexes,
//! weights. Each problem is `(field path, reason)`.

use super::networking::*;
use super::{Percent, Resource, Spec, StringMatch};
use std::time::Duration;

/// Largest compiled regex accepted (Envoy's RE2 program-size guard serves the same end).
pub const MAX_REGEX_BYTES: usize = 1 << 16;
/// Longest regex source accepted.
pub const MAX_REGEX_LEN: usize = 1024;

type Problems = Vec<(String, String)>;

/// Parse a duration as Istio writes them: `1s`, `0.5s`, `250ms`, `1m`, `1h`, `10us`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (expected e.g. \"1s\" or \"250ms\")"))?;
    let secs = match unit {
        "h" => n * 3600.0,
        "m" => n * 60.0,
        "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "ns" => n / 1e9,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unit must be one of h, m, s, ms, us, ns"
            ))
        }
    };
    if !secs.is_finite() || secs < 0.0 || secs > 315_576_000_000.0 {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Envoy's default limit on a regex's RE2 program size (`re2.max_program_size.error_level`).
pub const MAX_RE2_PROGRAM: u64 = 100;

/// A conservative estimate of RE2's program size for a parsed regex (literal bytes, class
/// ranges, counted repetitions expanded), calibrated against Envoy's own figures: it is never
/// below the real size for the shapes measured, so an accepted regex is never NACKed.
pub(crate) fn re2_size(h: &regex_syntax::hir::Hir) -> u64 {
    fn cost(h: &regex_syntax::hir::Hir) -> u64 {
        use regex_syntax::hir::{Class, HirKind};
        match h.kind() {
            HirKind::Empty => 0,
            HirKind::Literal(l) => l.0.len() as u64,
            HirKind::Class(Class::Bytes(c)) => c.ranges().len() as u64,
            HirKind::Class(Class::Unicode(c)) => c.ranges().len() as u64,
            HirKind::Look(_) => 1,
            HirKind::Repetition(r) => {
                let c = cost(&r.sub);
                match r.max {
                    Some(m) => (m as u64).saturating_mul(c.saturating_add(1)),
                    None => (r.min.max(1) as u64).saturating_mul(c).saturating_add(1),
                }
            }
            HirKind::Capture(c) => cost(&c.sub).saturating_add(2),
            HirKind::Concat(v) => v.iter().map(cost).fold(0u64, u64::saturating_add),
            HirKind::Alternation(v) => v
                .iter()
                .map(cost)
                .fold(v.len() as u64 - 1, u64::saturating_add),
        }
    }
    cost(h).saturating_add(4)
}

/// Check a user regex the way Envoy will: RE2 syntax (ASCII Perl classes) and program size.
pub fn check_regex(re: &str) -> Result<(), String> {
    if re.len() > MAX_REGEX_LEN {
        return Err(format!(
            "regex is {} characters, over the limit of {MAX_REGEX_LEN}",
            re.len()
        ));
    }
    let hir = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .nest_limit(50)
        .build()
        .parse(re)
        .map_err(|e| {
            format!(
                "invalid regex: {}",
                e.to_string().lines().last().unwrap_or("")
            )
        })?;
    let size = re2_size(&hir);
    if size > MAX_RE2_PROGRAM {
        return Err(format!(
            "regex is too complex for Envoy: estimated RE2 program size {size} exceeds {MAX_RE2_PROGRAM}"
        ));
    }
    regex::RegexBuilder::new(re)
        .size_limit(MAX_REGEX_BYTES)
        .build()
        .map(|_| ())
        .map_err(|e| {
            format!(
                "invalid or too complex regex: {}",
                e.to_string().lines().last().unwrap_or("")
            )
        })
}

struct V {
    p: Problems,
}

impl V {
    fn bad(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.p.push((field.into(), reason.into()));
    }
    fn dur(&mut self, field: String, d: &Option<String>) {
        if let Some(d) = d {
            if let Err(e) = parse_duration(d) {
                self.bad(field, e);
            }
        }
    }
    fn pct(&mut self, field: String, p: &Option<Percent>) {
        if let Some(p) = p {
            if !(0.0..=100.0).contains(&p.value) || p.value.is_nan() {
                self.bad(
                    field,
                    format!("percentage {} must be between 0 and 100", p.value),
                );
            }
        }
    }
    fn sm(&mut self, field: String, m: &StringMatch) {
        let n = m.exact.is_some() as u8 + m.prefix.is_some() as u8 + m.regex.is_some() as u8;
        if n != 1 {
            self.bad(
                field.clone(),
                "exactly one of exact, prefix, regex must be set",
            );
        }
        if let Some(r) = &m.regex {
            if let Err(e) = check_regex(r) {
                self.bad(format!("{field}.regex"), e);
            }
        }
    }
    fn port(&mut self, field: String, p: u32) {
        if p == 0 || p > 65535 {
            self.bad(field, format!("port {p} out of range 1-65535"));
        }
    }
    fn dest(&mut self, f: String, d: &Destination) {
        if d.host.is_empty() {
            self.bad(format!("{f}.host"), "required");
        }
        if let Some(p) = &d.port {
            self.port(format!("{f}.port.number"), p.number);
        }
    }
}

/// Validate one resource; empty means valid.
pub fn validate(r: &Resource) -> Problems {
    let mut v = V { p: Vec::new() };
    match &r.spec {
        Spec::VirtualService(vs) => virtual_service(&mut v, vs),
        Spec::DestinationRule(dr) => destination_rule(&mut v, dr),
        Spec::ServiceEntry(se) => service_entry(&mut v, se),
        Spec::Sidecar(sc) => sidecar(&mut v, sc),
        Spec::Gateway(g) => gateway(&mut v, g),
        Spec::KubeGateway(g) => kube_gateway(&mut v, g),
        Spec::HttpRoute(r) => http_route(&mut v, r),
        Spec::PeerAuthentication(pa) => {
            let ok = |m: &Option<String>| {
                m.as_deref()
                    .is_none_or(|m| matches!(m, "UNSET" | "DISABLE" | "PERMISSIVE" | "STRICT"))
            };
            if let Some(m) = &pa.mtls {
                if !ok(&m.mode) {
                    v.bad(
                        "spec.mtls.mode",
                        format!("unknown mode {:?}", m.mode.as_deref().unwrap_or("")),
                    );
                }
            }
            for (port, m) in &pa.port_level_mtls {
                match port.parse::<u32>() {
                    Ok(p) if (1..=65535).contains(&p) => {}
                    _ => v.bad(format!("spec.portLevelMtls.{port}"), "not a port number"),
                }
                if !ok(&m.mode) {
                    v.bad(format!("spec.portLevelMtls.{port}.mode"), "unknown mode");
                }
            }
            if !pa.port_level_mtls.is_empty()
                && pa
                    .selector
                    .as_ref()
                    .is_none_or(|s| s.match_labels.is_empty())
            {
                v.bad(
                    "spec.portLevelMtls",
                    "needs a workload selector (as in Istio)",
                );
            }
        }
        Spec::AuthorizationPolicy(ap) => {
            v.p.extend(super::security::validate_authorization_policy(ap));
            match super::security::builtin_settings(&r.meta.annotations) {
                Err(problems) => v.p.extend(problems),
                Ok(Some(_)) => {
                    let builtin = ap.action.as_deref() == Some("CUSTOM")
                        && ap.provider.as_ref().map(|p| p.name.as_str())
                            == Some(super::mesh::BUILTIN_PROVIDER);
                    if !builtin {
                        v.bad(
                            "metadata.annotations",
                            format!(
                                "{}* annotations apply to CUSTOM policies with provider {:?} only",
                                super::security::BUILTIN_ANNOTATION,
                                super::mesh::BUILTIN_PROVIDER
                            ),
                        );
                    }
                }
                Ok(None) => {}
            }
        }
        Spec::RequestAuthentication(ra) => {
            v.p.extend(super::security::validate_request_authentication(ra))
        }
        Spec::Secret(sec) => {
            for (k, val) in &sec.data {
                if base64::Engine::decode(&base64::engine::general_purpose::STANDARD, val.trim())
                    .is_err()
                {
                    v.bad(format!("data.{k}"), "not valid base64");
                }
            }
        }
        Spec::Service(s) => {
            for (i, p) in s.ports.iter().enumerate() {
                v.port(format!("spec.ports[{i}].port"), p.port);
            }
        }
        _ => {}
    }
    v.p
}

/// Header names Envoy refuses to set or remove (it NACKs the whole route configuration):
/// pseudo-headers (`:path`, `:authority`, ...) and `host` (rewrite them with `rewrite`).
fn header_ops(v: &mut V, f: &str, h: Option<&super::networking::Headers>) {
    let Some(h) = h else {
        return;
    };
    for (side, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else {
            continue;
        };
        let names = ops
            .set
            .keys()
            .map(|k| ("set", k))
            .chain(ops.add.keys().map(|k| ("add", k)))
            .chain(ops.remove.iter().map(|k| ("remove", k)));
        for (op, k) in names {
            if k.is_empty() || k.starts_with(':') || k.eq_ignore_ascii_case("host") {
                v.bad(
                    format!("{f}.{side}.{op}.{k}"),
                    "pseudo-headers and host cannot be set or removed (use rewrite for the path and authority)",
                );
            } else if !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                v.bad(format!("{f}.{side}.{op}.{k}"), "invalid header name");
            }
        }
    }
}

fn virtual_service(v: &mut V, vs: &VirtualService) {
    if vs.hosts.is_empty() {
        v.bad("spec.hosts", "at least one host is required");
    }
    for (i, h) in vs.hosts.iter().enumerate() {
        if h.is_empty() || h.contains('/') || h.contains(' ') {
            v.bad(format!("spec.hosts[{i}]"), format!("invalid host {h:?}"));
        }
    }
    if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
        v.bad(
            "spec",
            "at least one of http, tcp or tls routes is required",
        );
    }
    for (i, h) in vs.http.iter().enumerate() {
        let f = format!("spec.http[{i}]");
        let actions = !h.route.is_empty() as u8
            + h.redirect.is_some() as u8
            + h.direct_response.is_some() as u8
            + h.delegate.is_some() as u8;
        if actions != 1 {
            v.bad(
                f.clone(),
                "exactly one of route, redirect, directResponse, delegate is required",
            );
        }
        if h.delegate.is_some() {
            v.bad(format!("{f}.delegate"), "delegate is not supported yet");
        }
        for (j, m) in h.matches.iter().enumerate() {
            let mf = format!("{f}.match[{j}]");
            for (name, sm) in [
                ("uri", &m.uri),
                ("scheme", &m.scheme),
                ("method", &m.method),
                ("authority", &m.authority),
            ] {
                if let Some(sm) = sm {
                    v.sm(format!("{mf}.{name}"), sm);
                }
            }
            for (k, sm) in &m.headers {
                v.sm(format!("{mf}.headers.{k}"), sm);
            }
            for (k, sm) in &m.without_headers {
                v.sm(format!("{mf}.withoutHeaders.{k}"), sm);
            }
            for (k, sm) in &m.query_params {
                v.sm(format!("{mf}.queryParams.{k}"), sm);
            }
            if let Some(p) = m.port {
                v.port(format!("{mf}.port"), p);
            }
        }
        let mut total = 0i64;
        header_ops(v, &format!("{f}.headers"), h.headers.as_ref());
        for (j, d) in h.route.iter().enumerate() {
            header_ops(v, &format!("{f}.route[{j}].headers"), d.headers.as_ref());
            v.dest(format!("{f}.route[{j}].destination"), &d.destination);
            if d.weight < 0 {
                v.bad(
                    format!("{f}.route[{j}].weight"),
                    "weight must not be negative",
                );
            }
            total += d.weight;
        }
        if h.route.len() > 1 && total != 100 {
            v.bad(
                format!("{f}.route"),
                format!("weights sum to {total}, not 100"),
            );
        }
        if let Some(rd) = &h.redirect {
            if let Some(c) = rd.redirect_code {
                if ![301, 302, 303, 307, 308].contains(&c) {
                    v.bad(
                        format!("{f}.redirect.redirectCode"),
                        format!("{c} is not a redirect status (301, 302, 303, 307, 308)"),
                    );
                }
            }
        }
        if let Some(b) = h.direct_response.as_ref().and_then(|d| d.body.as_ref()) {
            if b.string.is_some() && b.bytes.is_some() {
                v.bad(
                    format!("{f}.directResponse.body"),
                    "string and bytes are mutually exclusive",
                );
            }
            if let Some(bytes) = &b.bytes {
                if base64::Engine::decode(&base64::engine::general_purpose::STANDARD, bytes)
                    .is_err()
                {
                    v.bad(format!("{f}.directResponse.body.bytes"), "not valid base64");
                }
            }
        }
        if let Some(d) = &h.direct_response {
            if !(200..=599).contains(&d.status) {
                v.bad(
                    format!("{f}.directResponse.status"),
                    format!("{} is not an HTTP status (200-599)", d.status),
                );
            }
        }
        if let Some(rw) = &h.rewrite {
            if let Some(r) = &rw.uri_regex_rewrite {
                if let Err(e) = check_regex(&r.pattern) {
                    v.bad(format!("{f}.rewrite.uriRegexRewrite.match"), e);
                }
            }
            if !rw.uri.is_empty() && rw.uri_regex_rewrite.is_some() {
                v.bad(
                    format!("{f}.rewrite"),
                    "uri and uriRegexRewrite are mutually exclusive",
                );
            }
        }
        v.dur(format!("{f}.timeout"), &h.timeout);
        if let Some(r) = &h.retries {
            if r.attempts < 0 {
                v.bad(format!("{f}.retries.attempts"), "must not be negative");
            }
            v.dur(format!("{f}.retries.perTryTimeout"), &r.per_try_timeout);
        }
        if let Some(fault) = &h.fault {
            if fault.delay.is_none() && fault.abort.is_none() {
                v.bad(format!("{f}.fault"), "one of delay or abort is required");
            }
            if let Some(d) = &fault.delay {
                if d.fixed_delay.is_none() {
                    v.bad(
                        format!("{f}.fault.delay.fixedDelay"),
                        "required (exponentialDelay is not supported)",
                    );
                }
                v.dur(format!("{f}.fault.delay.fixedDelay"), &d.fixed_delay);
                v.pct(format!("{f}.fault.delay.percentage"), &d.percentage);
            }
            if let Some(a) = &fault.abort {
                match a.http_status {
                    Some(s) if (200..=599).contains(&s) => {}
                    Some(s) => v.bad(
                        format!("{f}.fault.abort.httpStatus"),
                        format!("{s} is not an HTTP status (200-599)"),
                    ),
                    None => v.bad(
                        format!("{f}.fault.abort.httpStatus"),
                        "required (grpcStatus and http2Error are not supported yet)",
                    ),
                }
                v.pct(format!("{f}.fault.abort.percentage"), &a.percentage);
            }
        }
        if let Some(m) = &h.mirror {
            v.dest(format!("{f}.mirror"), m);
        }
        for (j, m) in h.mirrors.iter().enumerate() {
            v.dest(format!("{f}.mirrors[{j}].destination"), &m.destination);
            v.pct(format!("{f}.mirrors[{j}].percentage"), &m.percentage);
        }
        v.pct(format!("{f}.mirrorPercentage"), &h.mirror_percentage);
        if let Some(c) = &h.cors_policy {
            for (j, o) in c.allow_origins.iter().enumerate() {
                v.sm(format!("{f}.corsPolicy.allowOrigins[{j}]"), o);
            }
            v.dur(format!("{f}.corsPolicy.maxAge"), &c.max_age);
        }
    }
    for (i, t) in vs.tcp.iter().enumerate() {
        let f = format!("spec.tcp[{i}]");
        if t.route.is_empty() {
            v.bad(format!("{f}.route"), "at least one destination is required");
        }
        let total: i64 = t.route.iter().map(|d| d.weight).sum();
        if t.route.len() > 1 && total != 100 {
            v.bad(
                format!("{f}.route"),
                format!("weights sum to {total}, not 100"),
            );
        }
        for (j, d) in t.route.iter().enumerate() {
            v.dest(format!("{f}.route[{j}].destination"), &d.destination);
        }
        for (j, m) in t.matches.iter().enumerate() {
            if !m.source_labels.is_empty()
                || !m.source_namespace.is_empty()
                || !m.destination_subnets.is_empty()
            {
                v.bad(
                    format!("{f}.match[{j}]"),
                    "only port and gateways matches are supported for TCP routes yet",
                );
            }
            if let Some(p) = m.port {
                v.port(format!("{f}.match[{j}].port"), p);
            }
        }
    }
    for (i, t) in vs.tls.iter().enumerate() {
        let f = format!("spec.tls[{i}]");
        if t.matches.is_empty() {
            v.bad(format!("{f}.match"), "required (sniHosts)");
        }
        for (j, m) in t.matches.iter().enumerate() {
            let mf = format!("{f}.match[{j}]");
            if m.sni_hosts.is_empty() {
                v.bad(format!("{mf}.sniHosts"), "required");
            }
            for (field, set) in [
                ("destinationSubnets", !m.destination_subnets.is_empty()),
                ("sourceLabels", !m.source_labels.is_empty()),
                ("sourceNamespace", !m.source_namespace.is_empty()),
            ] {
                if set {
                    v.bad(format!("{mf}.{field}"), "not supported yet");
                }
            }
            if let Some(p) = m.port {
                v.port(format!("{mf}.port"), p);
            }
        }
        if t.route.is_empty() {
            v.bad(format!("{f}.route"), "required");
        }
        if t.route.len() > 1 {
            let total: i64 = t.route.iter().map(|d| d.weight).sum();
            if total != 100 {
                v.bad(
                    format!("{f}.route"),
                    format!("weights sum to {total}, not 100"),
                );
            }
        }
        for (j, d) in t.route.iter().enumerate() {
            v.dest(format!("{f}.route[{j}].destination"), &d.destination);
        }
    }
}

/// A Gateway: what is translated, and a named error for everything else.
fn gateway(v: &mut V, g: &Gateway) {
    if g.servers.is_empty() {
        v.bad("spec.servers", "at least one server is required");
    }
    if g.selector.is_empty() {
        v.bad(
            "spec.selector",
            "required: the labels of the gateway proxies this applies to",
        );
    }
    let mut names = std::collections::BTreeSet::new();
    let mut port_names = std::collections::BTreeSet::new();
    for (i, s) in g.servers.iter().enumerate() {
        let f = format!("spec.servers[{i}]");
        v.port(format!("{f}.port.number"), s.port.number);
        if !s.name.is_empty() && !names.insert(s.name.clone()) {
            v.bad(format!("{f}.name"), "server names must be unique");
        }
        // Port names name the HTTPS route configurations (as in Istio, which requires
        // them unique too).
        if !s.port.name.is_empty() && !port_names.insert(s.port.name.clone()) {
            v.bad(
                format!("{f}.port.name"),
                format!("port name {:?} is used by another server", s.port.name),
            );
        }
        if !s.bind.is_empty() {
            v.bad(format!("{f}.bind"), "not supported yet");
        }
        if !s.default_endpoint.is_empty() {
            v.bad(format!("{f}.defaultEndpoint"), "not supported yet");
        }
        if s.port.target_port.is_some() {
            v.bad(format!("{f}.port.targetPort"), "not supported yet");
        }
        if s.hosts.is_empty() {
            v.bad(format!("{f}.hosts"), "at least one host is required");
        }
        for (j, h) in s.hosts.iter().enumerate() {
            let (ns, host) = h.split_once('/').unwrap_or(("*", h));
            let ns_ok = ns == "*"
                || ns == "."
                || (!ns.is_empty()
                    && ns.len() <= 63
                    && ns
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
            if !ns_ok {
                v.bad(
                    format!("{f}.hosts[{j}]"),
                    format!("namespace {ns:?} is not *, . or a namespace name"),
                );
            }
            let host_ok = host == "*"
                || (!host.is_empty()
                    && !host.chars().skip(1).any(|c| c == '*')
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*')));
            if !host_ok {
                v.bad(
                    format!("{f}.hosts[{j}]"),
                    format!("{host:?} is not a host name (a leading * is the only wildcard)"),
                );
            }
        }
        let proto = s.port.protocol.to_ascii_uppercase();
        let mode = s.tls.as_ref().and_then(|t| t.mode.as_deref()).unwrap_or("");
        match proto.as_str() {
            "HTTP" | "HTTP2" | "GRPC" => {
                if s.tls.as_ref().is_some_and(|t| t.mode.is_some()) {
                    v.bad(
                        format!("{f}.tls.mode"),
                        format!("a {proto} server takes no TLS mode (use HTTPS)"),
                    );
                }
            }
            "HTTPS" => {
                if !matches!(
                    mode,
                    "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL" | "ISTIO_MUTUAL"
                ) {
                    v.bad(
                        format!("{f}.tls.mode"),
                        format!(
                            "an HTTPS server needs mode SIMPLE, MUTUAL, OPTIONAL_MUTUAL or ISTIO_MUTUAL, not {mode:?}"
                        ),
                    );
                }
            }
            "TCP" => {
                if s.tls.is_some() {
                    v.bad(format!("{f}.tls"), "a TCP server takes no TLS settings");
                }
            }
            "TLS" => {
                if !matches!(mode, "PASSTHROUGH" | "AUTO_PASSTHROUGH") {
                    v.bad(
                        format!("{f}.tls.mode"),
                        format!(
                            "TLS servers support modes PASSTHROUGH and AUTO_PASSTHROUGH only yet, not {mode:?}"
                        ),
                    );
                }
            }
            _ => v.bad(
                format!("{f}.port.protocol"),
                format!(
                    "{:?} servers are not supported yet (HTTP, HTTP2, GRPC, HTTPS, TLS, TCP)",
                    s.port.protocol
                ),
            ),
        }
        let Some(t) = &s.tls else { continue };
        let tf = format!("{f}.tls");
        if t.https_redirect && proto != "HTTP" {
            v.bad(format!("{tf}.httpsRedirect"), "applies to HTTP servers");
        }
        for (field, set) in [
            ("caCrl", t.ca_crl.is_some()),
            ("credentialNames", !t.credential_names.is_empty()),
            ("tlsCertificates", !t.tls_certificates.is_empty()),
            (
                "verifyCertificateSpki",
                !t.verify_certificate_spki.is_empty(),
            ),
            (
                "verifyCertificateHash",
                !t.verify_certificate_hash.is_empty(),
            ),
            ("cipherSuites", !t.cipher_suites.is_empty()),
        ] {
            if set {
                v.bad(format!("{tf}.{field}"), "not supported yet");
            }
        }
        for (field, val) in [
            ("minProtocolVersion", &t.min_protocol_version),
            ("maxProtocolVersion", &t.max_protocol_version),
        ] {
            if let Some(x) = val {
                if !matches!(
                    x.as_str(),
                    "TLS_AUTO" | "TLSV1_0" | "TLSV1_1" | "TLSV1_2" | "TLSV1_3"
                ) {
                    v.bad(format!("{tf}.{field}"), format!("unknown version {x:?}"));
                }
            }
        }
        let files = t.server_certificate.is_some() || t.private_key.is_some();
        match mode {
            "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL" => {
                if t.credential_name.is_some() && (files || t.ca_certificates.is_some()) {
                    v.bad(
                        format!("{tf}.credentialName"),
                        "credentialName and certificate file paths are mutually exclusive",
                    );
                } else if t.credential_name.is_none()
                    && (t.server_certificate.is_none() || t.private_key.is_none())
                {
                    v.bad(
                        format!("{tf}"),
                        "needs credentialName, or serverCertificate and privateKey",
                    );
                }
                if mode != "SIMPLE" && t.credential_name.is_none() && t.ca_certificates.is_none() {
                    v.bad(
                        format!("{tf}.caCertificates"),
                        format!("{mode} needs the CA that signs client certificates"),
                    );
                }
                if mode == "SIMPLE" && !t.subject_alt_names.is_empty() {
                    v.bad(format!("{tf}.subjectAltNames"), "applies to MUTUAL only");
                }
                if mode == "OPTIONAL_MUTUAL" && !t.subject_alt_names.is_empty() {
                    // Envoy requires a client certificate as soon as SANs are checked.
                    v.bad(
                        format!("{tf}.subjectAltNames"),
                        "with OPTIONAL_MUTUAL Envoy would require every client's certificate; use MUTUAL, or drop the SANs",
                    );
                }
            }
            "ISTIO_MUTUAL" | "PASSTHROUGH" | "AUTO_PASSTHROUGH" => {
                if files || t.credential_name.is_some() || t.ca_certificates.is_some() {
                    v.bad(
                        format!("{tf}"),
                        format!("{mode} takes no certificates (credentialName or files)"),
                    );
                }
            }
            _ => {}
        }
    }
}

fn traffic_policy(v: &mut V, f: &str, tp: &TrafficPolicy) {
    if let Some(lb) = &tp.load_balancer {
        load_balancer(v, &format!("{f}.loadBalancer"), lb);
    }
    if let Some(cp) = &tp.connection_pool {
        connection_pool(v, &format!("{f}.connectionPool"), cp);
    }
    if let Some(od) = &tp.outlier_detection {
        outlier(v, &format!("{f}.outlierDetection"), od);
    }
    if let Some(t) = &tp.tls {
        let mode = t.mode.as_deref().unwrap_or("DISABLE");
        if !matches!(mode, "DISABLE" | "SIMPLE" | "MUTUAL" | "ISTIO_MUTUAL") {
            v.bad(format!("{f}.tls.mode"), format!("unknown mode {mode:?}"));
        }
        if t.credential_name.is_some() && !matches!(mode, "SIMPLE" | "MUTUAL") {
            v.bad(
                format!("{f}.tls.credentialName"),
                "credentialName goes with mode SIMPLE or MUTUAL",
            );
        }
        if t.credential_name.is_some()
            && (t.client_certificate.is_some()
                || t.private_key.is_some()
                || t.ca_certificates.is_some())
        {
            v.bad(
                format!("{f}.tls"),
                "credentialName and certificate file paths are mutually exclusive",
            );
        }
        if mode == "MUTUAL"
            && t.credential_name.is_none()
            && (t.client_certificate.is_none() || t.private_key.is_none())
        {
            v.bad(
                format!("{f}.tls"),
                "MUTUAL needs clientCertificate and privateKey",
            );
        }
        if mode == "ISTIO_MUTUAL"
            && (t.client_certificate.is_some()
                || t.private_key.is_some()
                || t.ca_certificates.is_some())
        {
            v.bad(
                format!("{f}.tls"),
                "ISTIO_MUTUAL uses pilotfish's certificates; file paths are not allowed",
            );
        }
    }
    if tp.tunnel.is_some() {
        v.bad(format!("{f}.tunnel"), "not supported");
    }
    if tp.proxy_protocol.is_some() {
        v.bad(format!("{f}.proxyProtocol"), "not supported");
    }
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        let pf = format!("{f}.portLevelSettings[{i}]");
        match &p.port {
            Some(port) => v.port(format!("{pf}.port.number"), port.number),
            None => v.bad(format!("{pf}.port"), "required"),
        }
        let sub = TrafficPolicy {
            load_balancer: p.load_balancer.clone(),
            connection_pool: p.connection_pool.clone(),
            outlier_detection: p.outlier_detection.clone(),
            tls: p.tls.clone(),
            ..Default::default()
        };
        traffic_policy(v, &pf, &sub);
    }
}

fn load_balancer(v: &mut V, f: &str, lb: &LoadBalancerSettings) {
    if let Some(s) = &lb.simple {
        if !matches!(
            s.as_str(),
            "UNSPECIFIED"
                | "LEAST_CONN"
                | "RANDOM"
                | "PASSTHROUGH"
                | "ROUND_ROBIN"
                | "LEAST_REQUEST"
        ) {
            v.bad(
                format!("{f}.simple"),
                format!("unknown load balancer {s:?}"),
            );
        }
        if s == "PASSTHROUGH" {
            v.bad(format!("{f}.simple"), "PASSTHROUGH is not supported yet");
        }
    }
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        v.bad(
            f.to_string(),
            "simple and consistentHash are mutually exclusive",
        );
    }
    if let Some(ch) = &lb.consistent_hash {
        let n = ch.http_header_name.is_some() as u8
            + ch.http_cookie.is_some() as u8
            + ch.use_source_ip.unwrap_or(false) as u8
            + ch.http_query_parameter_name.is_some() as u8;
        if n != 1 {
            v.bad(format!("{f}.consistentHash"), "exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName is required");
        }
        if let Some(c) = &ch.http_cookie {
            v.dur(format!("{f}.consistentHash.httpCookie.ttl"), &c.ttl);
        }
    }
    if let Some(l) = &lb.locality_lb_setting {
        let lf = format!("{f}.localityLbSetting");
        if !l.distribute.is_empty() && !l.failover.is_empty() {
            v.bad(
                lf.clone(),
                "distribute and failover are mutually exclusive (as in Istio)",
            );
        }
        for (i, d) in l.distribute.iter().enumerate() {
            if d.from.is_empty() || d.from.split('/').count() > 3 {
                v.bad(
                    format!("{lf}.distribute[{i}].from"),
                    "a locality region/zone/subzone (`*` matches any)",
                );
            }
            let total: u64 = d.to.values().map(|w| u64::from(*w)).sum();
            if total != 100 {
                v.bad(
                    format!("{lf}.distribute[{i}].to"),
                    format!("weights sum to {total}, not 100"),
                );
            }
            for k in d.to.keys() {
                if k.is_empty() || k.split('/').count() > 3 {
                    v.bad(
                        format!("{lf}.distribute[{i}].to.{k}"),
                        "a locality region/zone/subzone (`*` matches any)",
                    );
                }
            }
        }
        for (i, fo) in l.failover.iter().enumerate() {
            for (field, x) in [("from", &fo.from), ("to", &fo.to)] {
                if x.is_empty() || x.contains('/') {
                    v.bad(format!("{lf}.failover[{i}].{field}"), "a region (no zone)");
                }
            }
            if fo.from == fo.to {
                v.bad(format!("{lf}.failover[{i}].to"), "must differ from `from`");
            }
        }
        if !l.failover_priority.is_empty() && !l.failover.is_empty() {
            v.bad(
                format!("{lf}.failoverPriority"),
                "failover and failoverPriority together are not supported; use one",
            );
        }
        if !l.failover_priority.is_empty() && !l.distribute.is_empty() {
            v.bad(
                format!("{lf}.failoverPriority"),
                "distribute and failoverPriority are mutually exclusive (as in Istio)",
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, entry) in l.failover_priority.iter().enumerate() {
            let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
            if key.is_empty() || key.contains(char::is_whitespace) {
                v.bad(
                    format!("{lf}.failoverPriority[{i}]"),
                    "a label key, or key=value",
                );
            } else if !seen.insert(key) {
                v.bad(
                    format!("{lf}.failoverPriority[{i}]"),
                    format!("label {key:?} appears twice"),
                );
            }
        }
    }
}

fn connection_pool(v: &mut V, f: &str, cp: &ConnectionPoolSettings) {
    if let Some(t) = &cp.tcp {
        v.dur(format!("{f}.tcp.connectTimeout"), &t.connect_timeout);
        v.dur(
            format!("{f}.tcp.maxConnectionDuration"),
            &t.max_connection_duration,
        );
        v.dur(format!("{f}.tcp.idleTimeout"), &t.idle_timeout);
        if let Some(k) = &t.tcp_keepalive {
            v.dur(format!("{f}.tcp.tcpKeepalive.time"), &k.time);
            v.dur(format!("{f}.tcp.tcpKeepalive.interval"), &k.interval);
        }
        if t.max_connections.is_some_and(|n| n < 0) {
            v.bad(format!("{f}.tcp.maxConnections"), "must not be negative");
        }
    }
    if let Some(h) = &cp.http {
        v.dur(format!("{f}.http.idleTimeout"), &h.idle_timeout);
        for (name, val) in [
            ("http1MaxPendingRequests", h.http1_max_pending_requests),
            ("http2MaxRequests", h.http2_max_requests),
            ("maxRequestsPerConnection", h.max_requests_per_connection),
            ("maxRetries", h.max_retries),
            ("maxConcurrentStreams", h.max_concurrent_streams),
        ] {
            if val.is_some_and(|n| n < 0) {
                v.bad(format!("{f}.http.{name}"), "must not be negative");
            }
        }
    }
}

fn outlier(v: &mut V, f: &str, od: &OutlierDetection) {
    v.dur(format!("{f}.interval"), &od.interval);
    v.dur(format!("{f}.baseEjectionTime"), &od.base_ejection_time);
    for (name, val) in [
        ("maxEjectionPercent", od.max_ejection_percent),
        ("minHealthPercent", od.min_health_percent),
    ] {
        if val.is_some_and(|n| n > 100) {
            v.bad(format!("{f}.{name}"), "must be between 0 and 100");
        }
    }
}

fn destination_rule(v: &mut V, dr: &DestinationRule) {
    if dr.host.is_empty() {
        v.bad("spec.host", "required");
    }
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy(v, "spec.trafficPolicy", tp);
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        if s.name.is_empty() {
            v.bad(format!("spec.subsets[{i}].name"), "required");
        } else if !seen.insert(&s.name) {
            v.bad(
                format!("spec.subsets[{i}].name"),
                format!("duplicate subset {:?}", s.name),
            );
        }
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(v, &format!("spec.subsets[{i}].trafficPolicy"), tp);
        }
    }
    if dr.workload_selector.is_some() {
        v.bad("spec.workloadSelector", "not supported yet");
    }
}

fn service_entry(v: &mut V, se: &ServiceEntry) {
    if se.hosts.is_empty() {
        v.bad("spec.hosts", "at least one host is required");
    }
    for (i, p) in se.ports.iter().enumerate() {
        v.port(format!("spec.ports[{i}].number"), p.number);
    }
    if let Some(r) = &se.resolution {
        if !matches!(r.as_str(), "NONE" | "STATIC" | "DNS" | "DNS_ROUND_ROBIN") {
            v.bad("spec.resolution", format!("unknown resolution {r:?}"));
        }
    }
    if let Some(l) = &se.location {
        if !matches!(l.as_str(), "MESH_EXTERNAL" | "MESH_INTERNAL") {
            v.bad("spec.location", format!("unknown location {l:?}"));
        }
    }
    if !se.endpoints.is_empty() && se.workload_selector.is_some() {
        v.bad(
            "spec",
            "endpoints and workloadSelector are mutually exclusive",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RE2 program sizes Envoy 1.40 reported for these regexes (run with the runtime limit
    /// `re2.max_program_size.error_level` at 1): the estimate must never be below them.
    #[test]
    fn re2_estimate_is_never_below_envoys_figure() {
        let measured = [
            ("/x/[a-z]{1,100}", 206),
            ("^/api/v[0-9]+/users/[a-z0-9-]+$", 17),
            ("abc", 7),
            (".*", 6),
            ("/productpage.*", 18),
            ("(a|b|c)+", 8),
            ("[a-z]{1,10}", 23),
            (r"\d+", 6),
            ("(?i)hello", 9),
            (r"foo\.bar\.baz/(x|y|z){3,5}", 33),
        ];
        for (re, envoy) in measured {
            let hir = regex_syntax::ParserBuilder::new()
                .unicode(false)
                .utf8(false)
                .build()
                .parse(re)
                .unwrap();
            let est = re2_size(&hir);
            assert!(est >= envoy, "{re}: estimate {est} < Envoy's {envoy}");
            assert!(
                est <= envoy * 2 + 4,
                "{re}: estimate {est} far above Envoy's {envoy}"
            );
        }
        assert!(check_regex("/x/[a-z]{1,100}")
            .unwrap_err()
            .contains("too complex"));
        assert!(check_regex("^/api/v[0-9]+/users/[a-z0-9-]+$").is_ok());
        assert!(check_regex("(a{1000}){1000}").is_err());
        assert!(check_regex("((((a)").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("0.5s").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        for bad in ["", "1", "s", "1x", "-1s", "1e400s", "abc"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be rejected");
        }
    }
}

fn sidecar(v: &mut V, sc: &Sidecar) {
    let mut in_ports = std::collections::BTreeSet::new();
    for (i, l) in sc.ingress.iter().enumerate() {
        let f = format!("spec.ingress[{i}]");
        v.port(format!("{f}.port.number"), l.port.number);
        if !in_ports.insert(l.port.number) {
            v.bad(
                format!("{f}.port.number"),
                "another ingress listener has this port",
            );
        }
        for (field, set) in [
            ("bind", !l.bind.is_empty()),
            ("tls", l.tls.is_some()),
            ("connectionPool", l.connection_pool.is_some()),
            ("port.targetPort", l.port.target_port.is_some()),
        ] {
            if set {
                v.bad(format!("{f}.{field}"), "not supported yet");
            }
        }
        if let Some(m) = &l.capture_mode {
            if !matches!(m.as_str(), "DEFAULT" | "IPTABLES") {
                v.bad(
                    format!("{f}.captureMode"),
                    format!("{m:?} is not supported yet (DEFAULT, IPTABLES)"),
                );
            }
        }
        let ok = l.default_endpoint.rsplit_once(':').is_some_and(|(h, p)| {
            matches!(h, "127.0.0.1" | "0.0.0.0" | "[::1]") && p.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            v.bad(
                format!("{f}.defaultEndpoint"),
                "must be 127.0.0.1:PORT or 0.0.0.0:PORT (unix sockets are not supported yet)",
            );
        }
    }
    if sc.inbound_connection_pool.is_some() {
        v.bad("spec.inboundConnectionPool", "not supported yet");
    }
    let mut out_ports = std::collections::BTreeSet::new();
    let mut catch_all = 0;
    for (i, e) in sc.egress.iter().enumerate() {
        match &e.port {
            Some(p) => {
                v.port(format!("spec.egress[{i}].port.number"), p.number);
                if !out_ports.insert(p.number) {
                    v.bad(
                        format!("spec.egress[{i}].port.number"),
                        "another egress listener has this port",
                    );
                }
            }
            None => {
                catch_all += 1;
                if catch_all > 1 {
                    v.bad(
                        format!("spec.egress[{i}]"),
                        "only one egress listener may have no port",
                    );
                }
            }
        }
        if !e.bind.is_empty() && e.bind.parse::<std::net::IpAddr>().is_err() {
            v.bad(format!("spec.egress[{i}].bind"), "not an IP address");
        }
        if let Some(m) = &e.capture_mode {
            if !matches!(m.as_str(), "DEFAULT" | "IPTABLES" | "NONE") {
                v.bad(
                    format!("spec.egress[{i}].captureMode"),
                    format!("unknown mode {m:?}"),
                );
            }
            if m == "NONE" && e.port.is_none() {
                v.bad(
                    format!("spec.egress[{i}].captureMode"),
                    "NONE needs a port (the app calls the listener directly)",
                );
            }
        }
        if e.hosts.is_empty() {
            v.bad(
                format!("spec.egress[{i}].hosts"),
                "at least one host is required",
            );
        }
        for (j, h) in e.hosts.iter().enumerate() {
            match h.split_once('/') {
                Some((ns, host)) if !ns.is_empty() && !host.is_empty() && !host.contains('/') => {}
                _ => v.bad(
                    format!("spec.egress[{i}].hosts[{j}]"),
                    format!("{h:?} is not of the form namespace/host"),
                ),
            }
        }
    }
    if let Some(o) = &sc.outbound_traffic_policy {
        if let Some(m) = &o.mode {
            if !matches!(m.as_str(), "ALLOW_ANY" | "REGISTRY_ONLY") {
                v.bad(
                    "spec.outboundTrafficPolicy.mode",
                    format!("unknown mode {m:?}"),
                );
            }
        }
        if o.egress_proxy.is_some() {
            v.bad(
                "spec.outboundTrafficPolicy.egressProxy",
                "not supported yet",
            );
        }
    }
}

/// A host name of the Gateway API (`hostname`, `hostnames`): a DNS name, `*.` prefix the
/// only wildcard, no port, no IP.
fn gateway_api_hostname(v: &mut V, f: String, h: &str) {
    let rest = h.strip_prefix("*.").unwrap_or(h);
    let ok = !rest.is_empty()
        && rest.len() <= 253
        && rest.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && rest.parse::<std::net::IpAddr>().is_err();
    if !ok {
        v.bad(
            f,
            format!("{h:?} is not a host name (a leading `*.` is the only wildcard)"),
        );
    }
}

/// A Kubernetes Gateway: the listeners pilotfish translates, and a named error for the rest.
fn kube_gateway(v: &mut V, g: &super::gateway_api::KubeGateway) {
    if g.gateway_class_name.is_empty() {
        v.bad("spec.gatewayClassName", "required");
    }
    if !g.addresses.is_empty() {
        v.bad(
            "spec.addresses",
            "not supported: pilotfish deploys no gateway; run `pilotfish bootstrap --gateway` with the label gateway.networking.k8s.io/gateway-name=<name>",
        );
    }
    for (field, set) in [
        ("infrastructure", g.infrastructure.is_some()),
        ("backendTLS", g.backend_tls.is_some()),
        ("allowedListeners", g.allowed_listeners.is_some()),
    ] {
        if set {
            v.bad(format!("spec.{field}"), "not supported yet");
        }
    }
    if g.listeners.is_empty() {
        v.bad("spec.listeners", "at least one listener is required");
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, l) in g.listeners.iter().enumerate() {
        let f = format!("spec.listeners[{i}]");
        if l.name.is_empty() {
            v.bad(format!("{f}.name"), "required");
        } else if !names.insert(l.name.as_str()) {
            v.bad(
                format!("{f}.name"),
                format!("{:?} names another listener", l.name),
            );
        }
        v.port(format!("{f}.port"), l.port);
        if let Some(h) = &l.hostname {
            gateway_api_hostname(v, format!("{f}.hostname"), h);
        }
        match l.protocol.as_str() {
            "HTTP" => {
                if l.tls.is_some() {
                    v.bad(format!("{f}.tls"), "an HTTP listener takes no TLS settings");
                }
            }
            "HTTPS" => match &l.tls {
                None => v.bad(format!("{f}.tls"), "required for HTTPS (certificateRefs)"),
                Some(t) => {
                    let mode = t.mode.as_deref().unwrap_or("Terminate");
                    if mode != "Terminate" {
                        v.bad(
                            format!("{f}.tls.mode"),
                            format!("{mode:?}: HTTPS listeners terminate TLS (Passthrough needs TLSRoute, not supported yet)"),
                        );
                    }
                    if t.certificate_refs.is_empty() {
                        v.bad(format!("{f}.tls.certificateRefs"), "at least one is required");
                    }
                    if t.certificate_refs.len() > 1 {
                        v.bad(
                            format!("{f}.tls.certificateRefs"),
                            "one certificate per listener is supported yet",
                        );
                    }
                    for (j, c) in t.certificate_refs.iter().enumerate() {
                        let cf = format!("{f}.tls.certificateRefs[{j}]");
                        if c.kind.as_deref().is_some_and(|k| k != "Secret")
                            || c.group.as_deref().is_some_and(|g| !g.is_empty() && g != "core")
                        {
                            v.bad(format!("{cf}.kind"), "only Secrets are supported");
                        }
                        if c.name.is_empty() {
                            v.bad(format!("{cf}.name"), "required");
                        }
                        if c.namespace.is_some() {
                            v.bad(
                                format!("{cf}.namespace"),
                                "Secrets of another namespace (ReferenceGrant) are not supported yet; use the Gateway's namespace",
                            );
                        }
                    }
                    if !t.options.is_empty() {
                        v.bad(format!("{f}.tls.options"), "not supported yet");
                    }
                    if t.frontend_validation.is_some() {
                        v.bad(format!("{f}.tls.frontendValidation"), "not supported yet");
                    }
                }
            },
            p => v.bad(
                format!("{f}.protocol"),
                format!("{p:?} is not supported yet (HTTP and HTTPS; TLS and TCP need TLSRoute and TCPRoute)"),
            ),
        }
        if let Some(a) = &l.allowed_routes {
            if let Some(n) = &a.namespaces {
                match n.from.as_deref().unwrap_or("Same") {
                    "Same" | "All" => {}
                    "Selector" => v.bad(
                        format!("{f}.allowedRoutes.namespaces.from"),
                        "Selector is not supported yet (Same or All)",
                    ),
                    x => v.bad(
                        format!("{f}.allowedRoutes.namespaces.from"),
                        format!("unknown value {x:?}"),
                    ),
                }
            }
            for (j, k) in a.kinds.iter().enumerate() {
                if k.kind != "HTTPRoute"
                    || k.group
                        .as_deref()
                        .is_some_and(|g| g != "gateway.networking.k8s.io")
                {
                    v.bad(
                        format!("{f}.allowedRoutes.kinds[{j}]"),
                        "only HTTPRoute is supported",
                    );
                }
            }
        }
    }
}

/// A Gateway API path, header or redirect value and its fields.
fn http_route_filter(v: &mut V, f: &str, flt: &super::gateway_api::HttpRouteFilter) {
    let set = |name: &str| match name {
        "RequestHeaderModifier" => flt.request_header_modifier.is_some(),
        "ResponseHeaderModifier" => flt.response_header_modifier.is_some(),
        "RequestRedirect" => flt.request_redirect.is_some(),
        "URLRewrite" => flt.url_rewrite.is_some(),
        "RequestMirror" => flt.request_mirror.is_some(),
        _ => false,
    };
    match flt.kind.as_str() {
        k @ ("RequestHeaderModifier"
        | "ResponseHeaderModifier"
        | "RequestRedirect"
        | "URLRewrite"
        | "RequestMirror") => {
            if !set(k) {
                let field = match k {
                    "URLRewrite" => "urlRewrite".to_string(),
                    _ => {
                        let mut c = k.chars();
                        c.next()
                            .map(|h| h.to_ascii_lowercase().to_string() + c.as_str())
                            .unwrap_or_default()
                    }
                };
                v.bad(format!("{f}.{field}"), format!("required for type {k}"));
            }
        }
        "" => v.bad(format!("{f}.type"), "required"),
        k => v.bad(format!("{f}.type"), format!("{k:?} is not supported yet")),
    }
    for (name, m) in [
        ("requestHeaderModifier", &flt.request_header_modifier),
        ("responseHeaderModifier", &flt.response_header_modifier),
    ] {
        let Some(m) = m else { continue };
        for (j, h) in m.set.iter().chain(&m.add).enumerate() {
            if h.name.is_empty() {
                v.bad(format!("{f}.{name}"), format!("header {j} has no name"));
            }
        }
    }
    let path =
        |v: &mut V, field: String, p: &super::gateway_api::PathModifier, prefix_ok: bool| match p
            .kind
            .as_str()
        {
            "ReplaceFullPath" if p.replace_full_path.is_some() => {}
            "ReplacePrefixMatch" if p.replace_prefix_match.is_some() && prefix_ok => {}
            "ReplacePrefixMatch" if !prefix_ok => v.bad(
                field,
                "ReplacePrefixMatch in a redirect is not supported yet",
            ),
            k => v.bad(
                field,
                format!("type {k:?} needs its value (ReplaceFullPath or ReplacePrefixMatch)"),
            ),
        };
    if let Some(r) = &flt.request_redirect {
        if let Some(s) = &r.scheme {
            if !matches!(s.as_str(), "http" | "https") {
                v.bad(format!("{f}.requestRedirect.scheme"), "http or https");
            }
        }
        if let Some(p) = r.port {
            v.port(format!("{f}.requestRedirect.port"), p);
        }
        if let Some(c) = r.status_code {
            if !matches!(c, 301 | 302) {
                v.bad(format!("{f}.requestRedirect.statusCode"), "301 or 302");
            }
        }
        if let Some(p) = &r.path {
            path(v, format!("{f}.requestRedirect.path"), p, false);
        }
    }
    if let Some(u) = &flt.url_rewrite {
        if let Some(p) = &u.path {
            path(v, format!("{f}.urlRewrite.path"), p, true);
        }
    }
    if let Some(m) = &flt.request_mirror {
        backend_ref(
            v,
            &format!("{f}.requestMirror.backendRef"),
            m.backend_ref.kind.as_deref(),
            m.backend_ref.group.as_deref(),
            &m.backend_ref.name,
            m.backend_ref.namespace.is_some(),
            m.backend_ref.port,
        );
        if m.fraction.is_some() {
            v.bad(
                format!("{f}.requestMirror.fraction"),
                "not supported yet (use percent)",
            );
        }
        if m.percent.is_some_and(|p| p > 100) {
            v.bad(format!("{f}.requestMirror.percent"), "0 to 100");
        }
    }
}

fn backend_ref(
    v: &mut V,
    f: &str,
    kind: Option<&str>,
    group: Option<&str>,
    name: &str,
    namespaced: bool,
    port: Option<u32>,
) {
    if kind.is_some_and(|k| k != "Service") || group.is_some_and(|g| !g.is_empty() && g != "core") {
        v.bad(format!("{f}.kind"), "only Services are supported");
    }
    if name.is_empty() {
        v.bad(format!("{f}.name"), "required");
    }
    if namespaced {
        v.bad(
            format!("{f}.namespace"),
            "backends of another namespace (ReferenceGrant) are not supported yet",
        );
    }
    match port {
        None => v.bad(format!("{f}.port"), "required for a Service"),
        Some(p) => v.port(format!("{f}.port"), p),
    }
}

/// An HTTPRoute: what pilotfish translates, and a named error for the rest.
fn http_route(v: &mut V, r: &super::gateway_api::HttpRouteSpec) {
    if r.parent_refs.is_empty() {
        v.bad(
            "spec.parentRefs",
            "at least one parent (a Gateway or a Service) is required",
        );
    }
    let services = r
        .parent_refs
        .iter()
        .filter(|p| p.kind.as_deref() == Some("Service"))
        .count();
    if services > 0 && services < r.parent_refs.len() {
        v.bad(
            "spec.parentRefs",
            "Gateway and Service parents in one HTTPRoute are not supported yet; use two routes",
        );
    }
    for (i, p) in r.parent_refs.iter().enumerate() {
        let f = format!("spec.parentRefs[{i}]");
        match p.kind.as_deref().unwrap_or("Gateway") {
            "Gateway" => {
                if p.group
                    .as_deref()
                    .is_some_and(|g| g != "gateway.networking.k8s.io")
                {
                    v.bad(format!("{f}.group"), "gateway.networking.k8s.io");
                }
            }
            // Mesh routing (GAMMA): the Service's own traffic, from every sidecar.
            "Service" => {
                if p.group
                    .as_deref()
                    .is_some_and(|g| !g.is_empty() && g != "core")
                {
                    v.bad(format!("{f}.group"), "\"\" (core) for a Service");
                }
                if p.namespace.is_some() {
                    v.bad(
                        format!("{f}.namespace"),
                        "a Service of another namespace (consumer routes) is not supported yet",
                    );
                }
                if p.port.is_some() {
                    v.bad(format!("{f}.port"), "not supported yet for Service parents");
                }
                if p.section_name.is_some() {
                    v.bad(
                        format!("{f}.sectionName"),
                        "not supported yet for Service parents",
                    );
                }
            }
            k => v.bad(
                format!("{f}.kind"),
                format!("{k:?} is not a Gateway or a Service"),
            ),
        }
        if p.name.is_empty() {
            v.bad(format!("{f}.name"), "required");
        }
        if let Some(port) = p.port {
            v.port(format!("{f}.port"), port);
        }
    }
    for (i, h) in r.hostnames.iter().enumerate() {
        gateway_api_hostname(v, format!("spec.hostnames[{i}]"), h);
    }
    for (i, rule) in r.rules.iter().enumerate() {
        let f = format!("spec.rules[{i}]");
        for (j, m) in rule.matches.iter().enumerate() {
            let mf = format!("{f}.matches[{j}]");
            if let Some(p) = &m.path {
                let value = p.value.as_deref().unwrap_or("/");
                match p.kind.as_deref().unwrap_or("PathPrefix") {
                    "Exact" | "PathPrefix" => {
                        if !value.starts_with('/') {
                            v.bad(format!("{mf}.path.value"), "must start with /");
                        }
                    }
                    "RegularExpression" => {
                        if let Err(e) = check_regex(value) {
                            v.bad(format!("{mf}.path.value"), e);
                        }
                    }
                    k => v.bad(format!("{mf}.path.type"), format!("unknown type {k:?}")),
                }
            }
            for (what, list) in [("headers", &m.headers), ("queryParams", &m.query_params)] {
                for (k, h) in list.iter().enumerate() {
                    let hf = format!("{mf}.{what}[{k}]");
                    if h.name.is_empty() {
                        v.bad(format!("{hf}.name"), "required");
                    }
                    match h.kind.as_deref().unwrap_or("Exact") {
                        "Exact" => {}
                        "RegularExpression" => {
                            if let Err(e) = check_regex(&h.value) {
                                v.bad(format!("{hf}.value"), e);
                            }
                        }
                        t => v.bad(format!("{hf}.type"), format!("unknown type {t:?}")),
                    }
                }
            }
            if let Some(meth) = &m.method {
                if meth.is_empty() || !meth.chars().all(|c| c.is_ascii_uppercase()) {
                    v.bad(
                        format!("{mf}.method"),
                        format!("{meth:?} is not an HTTP method"),
                    );
                }
            }
        }
        let mut redirect = false;
        for (j, flt) in rule.filters.iter().enumerate() {
            let ff = format!("{f}.filters[{j}]");
            http_route_filter(v, &ff, flt);
            redirect |= flt.kind == "RequestRedirect";
            if rule.filters[..j].iter().any(|o| o.kind == flt.kind) && flt.kind != "RequestMirror" {
                v.bad(format!("{ff}.type"), format!("{} appears twice", flt.kind));
            }
        }
        if redirect && rule.filters.iter().any(|x| x.kind == "URLRewrite") {
            v.bad(
                format!("{f}.filters"),
                "RequestRedirect and URLRewrite are mutually exclusive",
            );
        }
        if redirect && !rule.backend_refs.is_empty() {
            v.bad(
                format!("{f}.backendRefs"),
                "a rule that redirects sends to no backend",
            );
        }
        for (j, b) in rule.backend_refs.iter().enumerate() {
            let bf = format!("{f}.backendRefs[{j}]");
            backend_ref(
                v,
                &bf,
                b.kind.as_deref(),
                b.group.as_deref(),
                &b.name,
                b.namespace.is_some(),
                b.port,
            );
            if !b.filters.is_empty() {
                v.bad(format!("{bf}.filters"), "not supported yet");
            }
        }
        if let Some(t) = &rule.timeouts {
            v.dur(format!("{f}.timeouts.request"), &t.request);
            v.dur(format!("{f}.timeouts.backendRequest"), &t.backend_request);
        }
        if rule.session_persistence.is_some() {
            v.bad(format!("{f}.sessionPersistence"), "not supported yet");
        }
        if rule.retry.is_some() {
            v.bad(format!("{f}.retry"), "not supported yet");
        }
    }
}

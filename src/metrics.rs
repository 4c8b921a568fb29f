//! Control-plane metrics with Istio's names, so Istio's dashboards work unchanged.
//! Convergence is measured from the push to the proxy's ACK (Istio's stops at the send).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Mutex;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub file: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    /// Built-in ext_authz checks by result (allow, deny, quota, error, unauthenticated).
    pub authz_checks: Family<ResultLabel, Counter>,
    pub authz_check_time: Histogram,
    /// Connected proxies (`pilot_xds`).
    pub connected: Gauge,
    pub pushes: Family<TypeLabel, Counter>,
    pub push_time: Family<TypeLabel, Histogram, fn() -> Histogram>,
    pub convergence: Histogram,
    pub total_rejects: Counter,
    pub rejects: Family<TypeLabel, Counter>,
    pub debounce: Histogram,
    pub config_errors: Gauge,
    pub config_updates: Counter,
    pub stale_nonces: Counter,
    pub bytes_sent: Counter,
}

fn hist() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            authz_checks: Family::default(),
            authz_check_time: Histogram::new(exponential_buckets(0.000_01, 2.0, 18)),
            connected: Gauge::default(),
            pushes: Family::default(),
            push_time: Family::new_with_constructor(hist as fn() -> Histogram),
            convergence: hist(),
            total_rejects: Counter::default(),
            rejects: Family::default(),
            debounce: hist(),
            config_errors: Gauge::default(),
            config_updates: Counter::default(),
            stale_nonces: Counter::default(),
            bytes_sent: Counter::default(),
        };
        {
            let mut r = m.registry.lock().unwrap();
            r.register("pilot_xds", "Connected xDS clients", m.connected.clone());
            r.register(
                "pilotfish_authz_checks",
                "Built-in ext_authz checks, by result",
                m.authz_checks.clone(),
            );
            r.register(
                "pilotfish_authz_check_duration_seconds",
                "Time to answer a built-in ext_authz check (s)",
                m.authz_check_time.clone(),
            );
            r.register(
                "pilot_xds_pushes",
                "xDS responses sent, by type",
                m.pushes.clone(),
            );
            r.register(
                "pilot_xds_push_time",
                "Time to generate and send a push, by type (s)",
                m.push_time.clone(),
            );
            r.register(
                "pilot_proxy_convergence_time",
                "Time from a config change to the proxy's ACK of it (s)",
                m.convergence.clone(),
            );
            r.register(
                "pilot_total_xds_rejects",
                "xDS responses NACKed by proxies",
                m.total_rejects.clone(),
            );
            r.register(
                "pilot_xds_rejects_by_type",
                "xDS responses NACKed, by type",
                m.rejects.clone(),
            );
            r.register(
                "pilot_debounce_time",
                "Time from the first change to the push (s)",
                m.debounce.clone(),
            );
            r.register(
                "pilotfish_config_errors",
                "Config errors currently reported",
                m.config_errors.clone(),
            );
            r.register(
                "pilotfish_config_updates",
                "Config snapshots published",
                m.config_updates.clone(),
            );
            r.register(
                "pilotfish_xds_stale_nonces",
                "xDS requests ignored for a stale nonce",
                m.stale_nonces.clone(),
            );
            r.register(
                "pilotfish_xds_sent_bytes",
                "Bytes of xDS resources sent",
                m.bytes_sent.clone(),
            );
        }
        m
    }

    /// Register a metric owned elsewhere (the CA's counters, the auth counters).
    /// Count one built-in ext_authz check.
    pub fn authz_check(&self, result: &str, took: std::time::Duration) {
        self.authz_checks
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        self.authz_check_time.observe(took.as_secs_f64());
    }

    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry.lock().unwrap().register(name, help, metric);
    }

    /// Count a NACK under Istio's names (`pilot_xds_cds_reject`, ...).
    pub fn reject(&self, short: &str) {
        self.total_rejects.inc();
        self.rejects
            .get_or_create(&TypeLabel {
                r#type: short.to_string(),
            })
            .inc();
    }

    /// Prometheus text format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry.lock().unwrap()).ok();
        // Istio's per-type reject gauges, derived from the family.
        for t in ["cds", "eds", "lds", "rds", "sds"] {
            let v = self
                .rejects
                .get_or_create(&TypeLabel { r#type: t.into() })
                .get();
            s = s.replacen(
                "# EOF\n",
                &format!(
                    "# TYPE pilot_xds_{t}_reject counter\npilot_xds_{t}_reject_total {v}\n# EOF\n"
                ),
                1,
            );
        }
        s
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

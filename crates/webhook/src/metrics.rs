//! Prometheus metrics (prefix `keyhole_webhook`): reviews by endpoint, kind and
//! outcome; review latency; certificate expiry and reload failures; config reloads. Beside
//! them, at the registry's root, what every keyhole server exposes
//! ([`keyhole_admin::metrics`]: build info, process).

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    pub endpoint: &'static str,
    pub kind: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

/// Upper bounds of the latency buckets, in seconds: fine below 10 ms, where
/// reviews are; then up to 30 s, the longest `timeoutSeconds` the API server
/// takes, so a review answered too late for it still lands in a bucket below +Inf.
pub const LATENCY_BUCKETS: [f64; 17] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

pub struct Metrics {
    /// The root: the shared families, and this server's below `keyhole_webhook`.
    pub registry: Registry,
    pub reviews: Family<ReviewLabels, Counter>,
    pub latency: Family<EndpointLabels, Histogram>,
    pub cert_expiry: Gauge<i64, AtomicI64>,
    pub cert_reload_failures: Counter,
    pub config_reload_failures: Counter,
    pub config_last_reload_successful: Gauge<i64, AtomicI64>,
    pub config_last_reload_success: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        keyhole_admin::metrics::register(&mut root);
        let registry = root.sub_registry_with_prefix("keyhole_webhook");
        let reviews = Family::<ReviewLabels, Counter>::default();
        registry.register("admission_reviews", "Admission reviews by endpoint, kind and outcome", reviews.clone());
        let latency = Family::<EndpointLabels, Histogram>::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS));
        registry.register("admission_duration_seconds", "Time to answer one admission review", latency.clone());
        let cert_expiry = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate in use, as a Unix time",
            cert_expiry.clone(),
        );
        let cert_reload_failures = Counter::default();
        registry.register(
            "tls_certificate_reload_failures",
            "Certificate files that changed but could not be loaded (the last good one stays)",
            cert_reload_failures.clone(),
        );
        let config_reload_failures = Counter::default();
        registry.register(
            "config_reload_failures",
            "Config files that changed but could not be loaded (the last good config stays)",
            config_reload_failures.clone(),
        );
        let config_last_reload_successful = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "config_last_reload_successful",
            "1 when the config file's current content is the config in use, 0 when it did not load",
            config_last_reload_successful.clone(),
        );
        let config_last_reload_success = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "When the config in use was loaded, as a Unix time",
            config_last_reload_success.clone(),
        );
        Metrics {
            registry: root,
            reviews,
            latency,
            cert_expiry,
            cert_reload_failures,
            config_reload_failures,
            config_last_reload_successful,
            config_last_reload_success,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encoding to a String");
        out
    }
}

//! The rotation controller's Prometheus metrics (prefix `keyhole_rotation`).

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub store: String,
    /// `AssumeRoleWithWebIdentity`, `DescribeParameters`, `login`, `mount`, `metadata`,
    /// `lookup-self` (after a 403), `revoke`.
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `recorded`, `rolled`, `deferred`, `up_to_date`, `lookup_failed`, `patch_failed`.
    pub outcome: &'static str,
}

pub struct RotationMetrics {
    pub registry: Registry,
    pub leader: Gauge<i64, AtomicI64>,
    pub workloads: Gauge<i64, AtomicI64>,
    pub polls: Counter,
    pub poll_duration: Histogram,
    pub backend_requests: Family<BackendLabels, Counter>,
    pub workload_outcomes: Family<OutcomeLabels, Counter>,
}

impl Default for RotationMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("keyhole_rotation");
        let leader = Gauge::<i64, AtomicI64>::default();
        registry.register("leader", "1 while this instance holds the lease", leader.clone());
        let workloads = Gauge::<i64, AtomicI64>::default();
        registry.register("workloads", "Workloads whose references are watched", workloads.clone());
        let polls = Counter::default();
        registry.register("polls", "Polls that looked up at least one version", polls.clone());
        let poll_duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        registry.register("poll_duration_seconds", "Time of one poll: look-ups and patches", poll_duration.clone());
        let backend_requests = Family::<BackendLabels, Counter>::default();
        registry.register(
            "backend_requests",
            "Requests to the backends, by store and operation",
            backend_requests.clone(),
        );
        let workload_outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register("workload_polls", "Workloads polled, by outcome", workload_outcomes.clone());
        RotationMetrics { registry, leader, workloads, polls, poll_duration, backend_requests, workload_outcomes }
    }
}

impl RotationMetrics {
    pub fn request(&self, store: &str, operation: &'static str) {
        self.backend_requests.get_or_create(&BackendLabels { store: store.to_owned(), operation }).inc();
    }
    pub fn outcome(&self, outcome: &'static str) {
        self.workload_outcomes.get_or_create(&OutcomeLabels { outcome }).inc();
    }
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encoding to a String");
        out
    }
}

impl keyhole_admin::Admin for RotationMetrics {
    fn metrics(&self) -> String {
        self.encode()
    }
}

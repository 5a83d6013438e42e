//! The rotation controller's Prometheus metrics (prefix `keyhole_rotation`),
//! and at the registry's root what every keyhole server exposes
//! ([`keyhole_admin::metrics`]: build info, process).

use std::sync::atomic::AtomicI64;

use keyhole_backends::retry::Class;

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
    /// How the request ended: [`Outcome::as_str`].
    pub outcome: &'static str,
}

/// How one backend request ended: `ok`, or its failure's [`Class`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The parameter, path or mount does not exist.
    NotFound,
    /// Refused to these credentials (HTTP 403, AccessDenied).
    Denied,
    /// The credentials were refused (expired, unknown; a failed login).
    Auth,
    /// Throttled, 5xx, connection refused or reset.
    Transient,
    /// No answer before the deadline.
    Timeout,
    /// Anything else: malformed, unexpected.
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::NotFound,
        Outcome::Denied,
        Outcome::Auth,
        Outcome::Transient,
        Outcome::Timeout,
        Outcome::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NotFound => "not_found",
            Outcome::Denied => "denied",
            Outcome::Auth => "auth",
            Outcome::Transient => "transient",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        }
    }

    /// A request's result as the backends crate reports it.
    pub fn of(result: Result<(), Class>) -> Outcome {
        match result {
            Ok(()) => Outcome::Ok,
            Err(Class::NotFound) => Outcome::NotFound,
            Err(Class::Denied) => Outcome::Denied,
            Err(Class::Auth) => Outcome::Auth,
            Err(Class::Transient) => Outcome::Transient,
            Err(Class::Timeout) => Outcome::Timeout,
            Err(Class::Permanent) => Outcome::Error,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `recorded`, `rolled`, `deferred`, `up_to_date`, `lookup_failed`, `patch_failed`.
    pub outcome: &'static str,
}

/// Upper bounds of the poll-duration buckets, in seconds: fine below a
/// second, then past [`crate::backend::ROUND_DEADLINE`] (30 s), which bounds
/// one store's look-ups, to a few minutes of patches after them.
pub const POLL_BUCKETS: [f64; 14] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];

pub struct RotationMetrics {
    /// The root: the shared families, and this controller's below `keyhole_rotation`.
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
        let mut root = Registry::default();
        keyhole_admin::metrics::register(&mut root);
        let registry = root.sub_registry_with_prefix("keyhole_rotation");
        let leader = Gauge::<i64, AtomicI64>::default();
        registry.register("leader", "1 while this instance holds the lease", leader.clone());
        let workloads = Gauge::<i64, AtomicI64>::default();
        registry.register("workloads", "Workloads whose references are watched", workloads.clone());
        let polls = Counter::default();
        registry.register("polls", "Polls that looked up at least one version", polls.clone());
        let poll_duration = Histogram::new(POLL_BUCKETS);
        registry.register("poll_duration_seconds", "Time of one poll: look-ups and patches", poll_duration.clone());
        let backend_requests = Family::<BackendLabels, Counter>::default();
        registry.register(
            "backend_requests",
            "Requests to the backends, by store, operation and outcome",
            backend_requests.clone(),
        );
        let workload_outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register("workload_polls", "Workloads polled, by outcome", workload_outcomes.clone());
        RotationMetrics { registry: root, leader, workloads, polls, poll_duration, backend_requests, workload_outcomes }
    }
}

impl RotationMetrics {
    /// One request to a backend, once it has ended.
    pub fn request(&self, store: &str, operation: &'static str, outcome: Outcome) {
        let labels = BackendLabels { store: store.to_owned(), operation, outcome: outcome.as_str() };
        self.backend_requests.get_or_create(&labels).inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_requests_are_counted_by_outcome() {
        let m = RotationMetrics::default();
        m.request("aws", "DescribeParameters", Outcome::Ok);
        m.request("aws", "DescribeParameters", Outcome::of(Err(Class::Denied)));
        m.request("aws", "DescribeParameters", Outcome::of(Err(Class::Denied)));
        let text = m.encode();
        let line = |outcome: &str| {
            format!(
                "keyhole_rotation_backend_requests_total{{store=\"aws\",operation=\"DescribeParameters\",outcome=\"{outcome}\"}}"
            )
        };
        assert!(text.contains(&format!("{} 1\n", line("ok"))), "{text}");
        assert!(text.contains(&format!("{} 2\n", line("denied"))), "{text}");
        assert!(text.contains("keyhole_build_info{"), "{text}");
        assert!(text.contains("keyhole_rotation_poll_duration_seconds_bucket{le=\"30.0\"}"), "{text}");
        let labels: std::collections::HashSet<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(labels.len(), Outcome::ALL.len());
    }
}

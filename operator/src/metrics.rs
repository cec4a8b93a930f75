//! The operator's Prometheus metrics: reconciles, how long they took, failures by a
//! low-cardinality label (the error's kind, never its message), leadership.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `error`: what kind of failure (see `controller::Error::metric_label`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub error: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    pub reconciles: Counter,
    /// Seconds per reconcile, failed ones included.
    pub reconcile_duration: Histogram,
    pub reconcile_failures: Family<ErrorLabel, Counter>,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Reconcile durations: 10 ms to about 40 s (a reconcile waits on Kafka's admin API and the
/// search engine, each with a 10 s timeout).
const DURATION_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0,
];

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self {
            reconciles: Counter::default(),
            reconcile_duration: Histogram::new(DURATION_BUCKETS),
            reconcile_failures: Family::default(),
            leader: Gauge::default(),
            registry: Registry::with_prefix("operator"),
        };
        let r = &mut m.registry;
        r.register("reconciles", "Reconciles started", m.reconciles.clone());
        r.register(
            "reconcile_duration_seconds",
            "How long reconciles took, failed ones included",
            m.reconcile_duration.clone(),
        );
        r.register(
            "reconcile_failures",
            "Reconciles that failed, by kind of error",
            m.reconcile_failures.clone(),
        );
        r.register(
            "leader",
            "1 while this replica is the leader",
            m.leader.clone(),
        );
        m
    }

    pub fn failed(&self, error: &'static str) {
        self.reconcile_failures
            .get_or_create(&ErrorLabel { error })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

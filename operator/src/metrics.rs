//! The operator's Prometheus metrics: reconciles, how long they took, failures by a
//! low-cardinality label (the error's kind, never its message), leadership; and each pipeline's
//! last audit (documents per class of divergence found and repaired, when it ended).

use k8s_openapi::jiff::Timestamp;
use messagepipeline_crd::{AuditStatus, DriftCounts};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::audit;

/// `error`: what kind of failure (see `controller::Error::metric_label`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub error: &'static str,
}

/// A pipeline's audit figure of one class (`missing`, `stale`, `resurrected`, `orphan`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuditLabels {
    pub namespace: String,
    pub pipeline: String,
    pub class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    pub namespace: String,
    pub pipeline: String,
}

#[derive(Debug)]
pub struct Metrics {
    pub reconciles: Counter,
    /// Seconds per reconcile, failed ones included.
    pub reconcile_duration: Histogram,
    pub reconcile_failures: Family<ErrorLabel, Counter>,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    pub audit_found: Family<AuditLabels, Gauge>,
    pub audit_repaired: Family<AuditLabels, Gauge>,
    pub audit_completion: Family<PipelineLabels, Gauge>,
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
            audit_found: Family::default(),
            audit_repaired: Family::default(),
            audit_completion: Family::default(),
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
        r.register(
            "index_audit_found_documents",
            "Divergent documents the pipeline's last audit found, by class",
            m.audit_found.clone(),
        );
        r.register(
            "index_audit_repaired_documents",
            "Divergent documents the pipeline's last audit repaired, by class",
            m.audit_repaired.clone(),
        );
        r.register(
            "index_audit_completion_timestamp_seconds",
            "When the pipeline's last audit ended (Unix time)",
            m.audit_completion.clone(),
        );
        m
    }

    /// The figures of a pipeline's last audit.
    pub fn audited(&self, namespace: &str, pipeline: &str, a: &AuditStatus) {
        let labels = |class| AuditLabels {
            namespace: namespace.to_owned(),
            pipeline: pipeline.to_owned(),
            class,
        };
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for ((class, found), (_, repaired)) in audit::classes(&a.found)
            .into_iter()
            .zip(audit::classes(&a.repaired))
        {
            self.audit_found
                .get_or_create(&labels(class))
                .set(gauge(found));
            self.audit_repaired
                .get_or_create(&labels(class))
                .set(gauge(repaired));
        }
        if let Ok(t) = a.completion_time.parse::<Timestamp>() {
            self.audit_completion
                .get_or_create(&PipelineLabels {
                    namespace: namespace.to_owned(),
                    pipeline: pipeline.to_owned(),
                })
                .set(t.as_second());
        }
    }

    /// A deleted pipeline's figures go.
    pub fn forget(&self, namespace: &str, pipeline: &str) {
        for (class, _) in audit::classes(&DriftCounts::default()) {
            let labels = AuditLabels {
                namespace: namespace.to_owned(),
                pipeline: pipeline.to_owned(),
                class,
            };
            self.audit_found.remove(&labels);
            self.audit_repaired.remove(&labels);
        }
        self.audit_completion.remove(&PipelineLabels {
            namespace: namespace.to_owned(),
            pipeline: pipeline.to_owned(),
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audit_s_figures_are_exported_per_class_and_go_with_the_pipeline() {
        let m = Metrics::new();
        let a = AuditStatus {
            completion_time: "2026-12-03T03:17:09Z".into(),
            found: DriftCounts {
                missing: 2,
                orphan: 1,
                ..DriftCounts::default()
            },
            repaired: DriftCounts {
                missing: 2,
                ..DriftCounts::default()
            },
            ..AuditStatus::default()
        };
        m.audited("shop", "orders", &a);
        let text = m.encode();
        for line in [
            r#"operator_index_audit_found_documents{namespace="shop",pipeline="orders",class="missing"} 2"#,
            r#"operator_index_audit_found_documents{namespace="shop",pipeline="orders",class="orphan"} 1"#,
            r#"operator_index_audit_repaired_documents{namespace="shop",pipeline="orders",class="missing"} 2"#,
            r#"operator_index_audit_repaired_documents{namespace="shop",pipeline="orders",class="orphan"} 0"#,
            r#"operator_index_audit_completion_timestamp_seconds{namespace="shop",pipeline="orders"} 1796267829"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        m.forget("shop", "orders");
        assert!(!m.encode().contains("orders"));
    }
}

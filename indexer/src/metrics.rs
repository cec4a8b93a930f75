//! The indexer's Prometheus metrics. Counters and gauges only move here; the pipeline calls the
//! methods, `/metrics` encodes the registry.

use std::sync::atomic::{AtomicBool, Ordering};

use pipeline_contract::access::RefusalLog;
use pipeline_contract::dlq::ErrorClass;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::breaker::BreakerState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub topic: String,
    pub partition: String,
}

#[derive(Debug)]
pub struct Metrics {
    pub consumed: Counter,
    pub indexed: Counter,
    pub already_newer: Counter,
    pub retried: Counter,
    pub dead_lettered: Family<ClassLabel, Counter>,
    pub breaker_failures: Counter,
    pub breaker_state: Family<StateLabel, Gauge>,
    pub batch_seconds: Histogram,
    pub freshness_seconds: Histogram,
    pub consumer_lag: Family<PartitionLabel, Gauge>,
    /// Kafka answered recently (from librdkafka's statistics): part of `/ready`.
    pub kafka_up: AtomicBool,
    /// The consume loop is running: part of `/ready`.
    pub running: AtomicBool,
    /// What refused the indexer's Kafka and search clients recently: part of `/ready`, and on
    /// the Lease.
    pub refusals: RefusalLog,
    registry: Registry,
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self {
            consumed: Counter::default(),
            indexed: Counter::default(),
            already_newer: Counter::default(),
            retried: Counter::default(),
            dead_lettered: Family::default(),
            breaker_failures: Counter::default(),
            breaker_state: Family::default(),
            batch_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            freshness_seconds: Histogram::new(exponential_buckets(0.005, 1.25, 48)),
            consumer_lag: Family::default(),
            kafka_up: AtomicBool::new(false),
            running: AtomicBool::new(false),
            refusals: RefusalLog::default(),
            registry: Registry::with_prefix("indexer"),
        };
        let r = &mut m.registry;
        r.register(
            "consumed",
            "Records taken from the topic",
            m.consumed.clone(),
        );
        r.register(
            "indexed",
            "Documents the search engine acknowledged",
            m.indexed.clone(),
        );
        r.register(
            "already_newer",
            "Items refused with a version conflict: the index already held them or newer",
            m.already_newer.clone(),
        );
        r.register(
            "retried",
            "Items sent again after an item-level 429/5xx",
            m.retried.clone(),
        );
        r.register(
            "dead_lettered",
            "Records written to the DLQ, by error class",
            m.dead_lettered.clone(),
        );
        r.register(
            "breaker_failures",
            "Whole-request failures counted by the circuit breaker",
            m.breaker_failures.clone(),
        );
        r.register(
            "breaker_state",
            "1 for the circuit breaker's current state",
            m.breaker_state.clone(),
        );
        r.register(
            "batch_duration_seconds",
            "Time to make one batch durable (indexed or dead-lettered)",
            m.batch_seconds.clone(),
        );
        r.register(
            "freshness_seconds",
            "Event timestamp header to search engine acknowledgement",
            m.freshness_seconds.clone(),
        );
        r.register(
            "consumer_lag",
            "Messages behind the partition's end, per partition",
            m.consumer_lag.clone(),
        );
        for class in ErrorClass::ALL {
            let _ = m.dead_lettered.get_or_create(&ClassLabel {
                class: class.to_string(),
            });
        }
        m.set_breaker(BreakerState::Closed);
        m
    }

    pub fn set_breaker(&self, phase: BreakerState) {
        for p in BreakerState::ALL {
            self.breaker_state
                .get_or_create(&StateLabel {
                    state: p.as_str().to_owned(),
                })
                .set(i64::from(p == phase));
        }
    }

    /// Dead letters of every class.
    pub fn dead_lettered_total(&self) -> u64 {
        ErrorClass::ALL
            .iter()
            .map(|c| {
                self.dead_lettered
                    .get_or_create(&ClassLabel {
                        class: c.to_string(),
                    })
                    .get()
            })
            .sum()
    }

    /// Whether the breaker is in `phase` now.
    pub fn breaker_is(&self, phase: BreakerState) -> bool {
        self.breaker_state
            .get_or_create(&StateLabel {
                state: phase.as_str().to_owned(),
            })
            .get()
            == 1
    }

    pub fn ready(&self) -> bool {
        self.running.load(Ordering::Relaxed)
            && self.kafka_up.load(Ordering::Relaxed)
            && self.refusals.current().is_none()
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

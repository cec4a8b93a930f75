//! The api-server's Prometheus metrics: requests by route and status, request latency, requests
//! refused by tenant limits, the size of create batches, and the
//! relay (published, failures, changes found by scans, pending by age, lag, dead peers adopted).
//! `/metrics` encodes them.

use std::sync::atomic::AtomicU64;

use pipeline_contract::access::RefusalLog;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The route template (`/v1/messages/{id}`), never the raw path: bounded cardinality.
    pub route: String,
    pub status: u16,
}

/// An age bucket of unpublished changes (`pipeline_contract::worker::lease::RelayBacklog`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgeLabels {
    pub age: String,
}

/// A tenant refused by its limits, and which limit (`rate` or `concurrency`). Tenants are
/// those of the API keys file: bounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ThrottleLabels {
    pub tenant: String,
    pub limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Debug)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<RouteLabels, Histogram>,
    pub tenant_throttled: Family<ThrottleLabels, Counter>,
    /// Documents per `insert_many` of the group commit.
    pub insert_batch: Histogram,
    /// MongoDB pings of the health probe (one a second, whatever asks `/ready`).
    pub mongodb_pings: Counter,
    /// Tombstones purged from MongoDB, and past the horizon but kept because the index still
    /// holds them (counted at each purge).
    pub tombstones_purged: Counter,
    pub tombstones_kept: Counter,
    pub relay_published: Counter,
    pub relay_failures: Counter,
    pub relay_recovered: Counter,
    pub relay_corrupt: Counter,
    pub relay_pending: Gauge,
    pub relay_unpublished: Family<AgeLabels, Gauge>,
    pub relay_lag_seconds: Gauge<f64, AtomicU64>,
    pub relay_orphans: Gauge,
    pub relay_adopted: Counter,
    /// What refused the relay's Kafka producer recently: on the Lease. (Not part of `/ready`:
    /// writes are still taken, kept in MongoDB until Kafka takes them.)
    pub refusals: RefusalLog,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            tenant_throttled: Family::default(),
            insert_batch: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            mongodb_pings: Counter::default(),
            tombstones_purged: Counter::default(),
            tombstones_kept: Counter::default(),
            relay_published: Counter::default(),
            relay_failures: Counter::default(),
            relay_recovered: Counter::default(),
            relay_corrupt: Counter::default(),
            relay_pending: Gauge::default(),
            relay_unpublished: Family::default(),
            relay_lag_seconds: Gauge::default(),
            relay_orphans: Gauge::default(),
            relay_adopted: Counter::default(),
            refusals: RefusalLog::default(),
            registry: Registry::with_prefix("api"),
        };
        m.register_requests();
        m.register_relay();
        m
    }

    /// Requests, their latency, tenant refusals and create batches.
    fn register_requests(&mut self) {
        let r = &mut self.registry;
        r.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            self.requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route",
            self.request_seconds.clone(),
        );
        r.register(
            "tenant_throttled_requests",
            "Requests answered 429 because their tenant was over a limit, by tenant and limit (rate, concurrency)",
            self.tenant_throttled.clone(),
        );
        r.register(
            "mongodb_insert_batch_size",
            "Creates written by one insert_many (group commit)",
            self.insert_batch.clone(),
        );
        r.register(
            "mongodb_pings",
            "MongoDB pings of the health probe that /ready and the Lease read",
            self.mongodb_pings.clone(),
        );
        r.register(
            "tombstones_purged",
            "Tombstones purged from MongoDB (past the horizon, published, gone from the index)",
            self.tombstones_purged.clone(),
        );
        r.register(
            "tombstones_kept",
            "Tombstones past the horizon kept by a purge because the index still holds them",
            self.tombstones_kept.clone(),
        );
    }

    /// The relay: published, failures, scans, backlog, lag, peers.
    fn register_relay(&mut self) {
        let r = &mut self.registry;
        r.register(
            "relay_published",
            "Change records Kafka acknowledged",
            self.relay_published.clone(),
        );
        r.register(
            "relay_publish_failures",
            "Sends that failed and will be retried",
            self.relay_failures.clone(),
        );
        r.register(
            "relay_recovered",
            "Unpublished changes found by scanning MongoDB (unknown outcome, overflow, adoption of a dead peer)",
            self.relay_recovered.clone(),
        );
        r.register(
            "relay_corrupt_documents",
            "Message documents the relay could not turn into an event (need a human)",
            self.relay_corrupt.clone(),
        );
        r.register(
            "relay_pending",
            "Changes held in memory, not yet acknowledged by Kafka",
            self.relay_pending.clone(),
        );
        r.register(
            "relay_unpublished",
            "Changes MongoDB acknowledged that this process holds and Kafka has not, by age (clear: under 10 s)",
            self.relay_unpublished.clone(),
        );
        r.register(
            "relay_lag_seconds",
            "Age of the oldest change not yet acknowledged by Kafka, a dead peer's included (0 when none)",
            self.relay_lag_seconds.clone(),
        );
        r.register(
            "relay_orphaned_replicas",
            "Registrations of api-servers presumed dead whose changes are not adopted yet",
            self.relay_orphans.clone(),
        );
        r.register(
            "relay_adopted_replicas",
            "Registrations of dead api-servers this process adopted (their changes published)",
            self.relay_adopted.clone(),
        );
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
